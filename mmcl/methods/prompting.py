"""The prompt family's hyper-parameters (L2P, DualPrompt, CODA-Prompt, COMM), declared once.

The machinery they share (prompt pools, prompted encoding, parameter groups) is in
:mod:`mmcl.models.prompts`; the head and its label space (``ce_over``) are the
:class:`~mmcl.methods.heads.TextHead`'s.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.methods.base import MethodConfig, at_most
from mmcl.methods.heads import CeOver
from mmcl.models.prompts import prefix_tokens_even


@dataclass(config={"extra": "forbid"})
class PromptConfig(MethodConfig):
    """What every prompt method has: the prompts' learning rate and the training label space."""

    # keys, prompts and head train at this x train.lr (L2P: one Adam rate, 0.03, for all three): the
    # engine's rate is set for fine-tuning backbone blocks, and at it a text-anchored head does not
    # leave the zero-shot solution in a few epochs (measured in docs/methods/comm.md)
    prompt_lr_scale: float = Field(10.0, gt=0)
    # classes in the training cross-entropy. The papers mask other tasks' logits ("current"); on
    # smoke that leaves the text-anchored head's old rows winning on new data (docs/methods/prompts.md)
    ce_over: CeOver = "current"


@dataclass(config={"extra": "forbid"})
class PromptPoolConfig(PromptConfig):
    """An L2P prompt pool (L2P's, and each of COMM's modality pools): top-k prompts by key-query matching."""

    pool_size: int = Field(10, ge=1)  # prompts in the pool
    prompt_length: int = Field(4, ge=1)  # tokens per prompt
    top_k: int = Field(3, ge=1)  # prompts chosen per image
    prompt_depth: int = Field(1, ge=1)  # prompted blocks, from the first (L2P: the input only)
    prompt_style: Literal["prompt", "prefix"] = "prompt"  # prompt-tuning or prefix-tuning
    prompt_init_std: float = Field(0.02, ge=0)
    matching_weight: float = Field(0.5, ge=0)  # weight of the key-query matching loss

    _top_k_fits = at_most("top_k", "pool_size")
    _prefix_splits = prefix_tokens_even()
