"""Learning to Prompt (L2P; Wang et al., CVPR 2022): one shared prompt pool on a frozen backbone.

The backbone stays frozen; a single :class:`~mmcl.models.prompts.PromptPool` serves every task.
Each image's frozen embedding is the query that picks its top-k prompts; the prompted embedding
goes to a cosine head initialised at the class text embeddings. Training loss: cross-entropy over
the current task's classes (L2P masks the other classes' logits) plus the key-query matching loss.
Keys, prompts and the head train at one learning rate, ``prompt_lr_scale`` x ``train.lr`` (L2P:
one Adam rate, 0.03, for all three): the engine's rate is set for fine-tuning backbone blocks, and
at it a text-anchored head does not leave the zero-shot solution in a few epochs (measured in
``docs/methods/comm.md``).
It ignores the modality ID, which makes it the shared-pool contrast to COMM's modality pools.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.config import ConfigError
from mmcl.data.dataset import Batch
from mmcl.methods.base import CosineClassifier, HeadConfig, Method, apply_head_rules, at_most, register, targets_in
from mmcl.models.prompts import (
    PromptPool,
    as_images,
    check_prompt_depth,
    encode_prompted,
    frozen_query,
    key_query_matching_loss,
    prefix_tokens_even,
    prompt_parameter_groups,
    single_modality,
)
from mmcl.models.towers import frames_of, mean_over_frames


@register
class L2P(Method):
    name = "l2p"
    hooked_from = {"vision": 0}  # prompts from the first vision block (the frozen prefix cache)
    family = "prompt"
    tuning_grid = {"lr_scale": [0.3, 1.0, 3.0], "matching_weight": [0.1, 0.5]}
    compatible_scenarios = ("modality_incremental",)  # one modality per batch (see single_modality)
    description = "learning to prompt: one shared prompt pool, top-k key-query selection"
    # unmasked: cross-entropy over every seen class. Under L2P's mask the loss never sees the old
    # classes' logits, so nothing moves a new modality's samples out of them (docs/methods/comm.md,
    # "Does it learn what zero-shot cannot read?", measures where its predictions land).
    ablations = {"no-matching-loss": {"matching_weight": 0.0}, "unmasked": {"ce_over": "seen"}}

    @dataclass(config={"extra": "forbid"})
    class Config:
        pool_size: int = Field(10, ge=1)  # prompts in the pool
        prompt_length: int = Field(4, ge=1)  # tokens per prompt
        top_k: int = Field(3, ge=1)  # prompts chosen per image
        prompt_depth: int = Field(1, ge=1)  # prompted blocks, from the first (L2P: the input only)
        prompt_style: Literal["prompt", "prefix"] = "prompt"  # prompt-tuning or prefix-tuning
        prompt_init_std: float = Field(0.02, ge=0)
        matching_weight: float = Field(0.5, ge=0)  # weight of the key-query matching loss
        lr_scale: float = Field(1.0, gt=0)  # shared by every method: multiplies every learning rate below
        prompt_lr_scale: float = Field(10.0, gt=0)  # learning rate of keys, prompts and head = this x train.lr
        head: HeadConfig = Field(default_factory=HeadConfig)  # the shared head rules (head.train, ...)
        ce_over: Literal["current", "seen"] = "current"  # classes in the training cross-entropy

        _top_k_fits = at_most("top_k", "pool_size")
        _prefix_splits = prefix_tokens_even()

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        check_prompt_depth(self.name, hparams.prompt_depth, encoder)
        if any("text" in t.modalities for t in context.tasks):
            raise ConfigError(f"methods.{self.name}: its prompt pool lives in the vision tower; the stream has a text task "
                              f"(run it on a stream without text)")
        text = encoder.class_text_embeddings(context.class_names, context.config.model.classifier_templates)
        self.head = CosineClassifier(text, encoder.logit_scale, trainable=hparams.head.train)
        self.pool = PromptPool(hparams.pool_size, hparams.prompt_length, hparams.prompt_depth, encoder.vision_width,
                               encoder.embed_dim, hparams.top_k, hparams.prompt_init_std)

    def begin_task(self, task):
        apply_head_rules(self.head, self.hparams.head, task)

    def embed(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompted embeddings [B, D], key similarities of the chosen prompts [N, k])``."""
        modality, inputs = single_modality(batch)
        images = as_images(modality, inputs)
        prompts, _, similarity = self.pool(frozen_query(self.encoder, images))
        embeddings = encode_prompted(self.encoder, images, prompts, self.hparams.prompt_style)
        return mean_over_frames(embeddings, frames_of(modality, inputs)), similarity

    def training_loss(self, batch, task):
        embeddings, similarity = self.embed(batch)
        classes = task.classes if self.hparams.ce_over == "current" else self.context.seen_classes
        space = torch.tensor(sorted(classes), device=batch.labels.device)
        ce = F.cross_entropy(self.head(embeddings, space), targets_in(space, batch.labels))
        matching = key_query_matching_loss(similarity)
        return ce + self.hparams.matching_weight * matching, {"ce": ce.item(), "match": matching.item()}

    def predict(self, batch, label_space, modality_known=True):
        return self.head(self.embed(batch)[0], label_space)

    def representation(self, batch, modality_known=True):
        return self.embed(batch)[0]

    def optimizer_parameter_groups(self):
        return prompt_parameter_groups(self, self.context.config.train.lr * self.hparams.prompt_lr_scale)
