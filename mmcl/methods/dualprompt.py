"""DualPrompt (Wang et al., ECCV 2022): a general prompt shared by all tasks and expert prompts per task.

On a frozen backbone, prompts enter the vision tower by prefix-tuning (extra keys and values in
the blocks' self-attention, :class:`~mmcl.models.prompts.PromptHooks`):

- the **G-prompt** (one, shared by every task) in blocks ``0 .. g_depth - 1``;
- the **E-prompts** (one per task, each with a key ``[D]``) in the next ``e_depth`` blocks.
  In training, task ``t`` uses its own E-prompt and its key is pulled toward the frozen query
  (loss ``1 - cos(q, k_t)``, weighted by ``matching_weight``); at test time each image takes the
  E-prompt whose key is most cosine-similar to its frozen query (the task is not known).

The prompted embedding goes to the cosine head initialised at the class text embeddings (as L2P);
cross-entropy over the current task's classes, as the paper (it masks the other tasks' logits:
``ce_over: current``); the ``unmasked`` variant (``ce_over: seen``) is L2P's in this package, see
docs/methods/prompts.md for what the mask does with a text-anchored head.
Multi-modal samples: every visual modality is prompted with the same G- and E-prompts, each image
choosing its E-prompt by its own query; text is encoded by the frozen text tower; the modality
embeddings are fused by the shared mean fusion.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from mmcl.config import ConfigError
from mmcl.methods.base import Frozen, Method, register
from mmcl.methods.card import Card
from mmcl.methods.heads import TextHead
from mmcl.methods.prompting import PromptConfig
from mmcl.methods.text_anchored import fuse
from mmcl.models.prompts import check_prompt_depth, encode_each_modality, encode_prompted, prompt_parameter_groups


def select_expert(query: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The E-prompt of each query: ``(indices [N], cosine [N])`` of the most similar key ``keys [E, D]``."""
    similarity = F.normalize(query.float(), dim=-1) @ F.normalize(keys.detach().float(), dim=-1).T
    best, indices = similarity.max(dim=-1)
    return indices, best


@register
class DualPrompt(Method):
    card = Card(
        name="dualprompt", family="prompt",
        description="DualPrompt: shared G-prompt in shallow blocks, task E-prompts chosen by key matching, prefix-tuning",
        tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "matching_weight": [0.5, 1.0]},
        ablations={"no-g-prompt": {"g_depth": 0}, "unmasked": {"ce_over": "seen"}})
    frozen = Frozen(hooked_from={"vision": 0})  # G-/E-prefixes from the first vision block; no backbone weight trains

    @dataclass(config={"extra": "forbid"})
    class Config(PromptConfig):
        g_depth: int = Field(1, ge=0)  # G-prompted blocks, from the first (paper: 2 of ViT-B's 12)
        e_depth: int = Field(1, ge=1)  # E-prompted blocks right after them (paper: 3)
        g_length: int = Field(4, ge=2, multiple_of=2)  # G-prefix tokens: half keys, half values (paper: 5 per half)
        e_length: int = Field(8, ge=2, multiple_of=2)  # E-prefix tokens (paper: 20)
        prompt_init_std: float = Field(0.02, ge=0)
        matching_weight: float = Field(0.5, ge=0)  # weight of the key-query matching loss (paper: 1.0)

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        check_prompt_depth(self.name, hparams.g_depth + hparams.e_depth, encoder)
        if not context.tasks:
            raise ConfigError(f"methods.{self.name}: the stream has no tasks (one E-prompt per task)")
        self.head = TextHead(encoder, context, hparams.head, hparams.ce_over)
        width, std, tasks = encoder.vision_width, hparams.prompt_init_std, len(context.tasks)
        self.pool = nn.ParameterDict({
            "g_prompt": nn.Parameter(torch.randn(hparams.g_depth, hparams.g_length, width) * std),
            "e_prompts": nn.Parameter(torch.randn(tasks, hparams.e_depth, hparams.e_length, width) * std),
            "e_keys": nn.Parameter(torch.empty(tasks, encoder.embed_dim).uniform_(-1.0, 1.0)),
        })

    def begin_task(self, task):
        self.head.begin_task(task)

    def layer_prompts(self, experts: torch.Tensor) -> list[torch.Tensor]:
        """Per-block prefixes ``[N, tokens, width]`` for images whose E-prompts are ``experts [N]``."""
        n = len(experts)
        general = [self.pool["g_prompt"][i].expand(n, -1, -1) for i in range(self.hparams.g_depth)]
        chosen = self.pool["e_prompts"][experts]  # [N, e_depth, e_length, width]
        return general + [chosen[:, i] for i in range(self.hparams.e_depth)]

    def embed(self, batch, task_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fused prompted embeddings [B, D], matching loss)``; E-prompt by ``task_index`` or by keys."""
        matching = []

        def prompted(modality, images, query):
            if task_index is None:
                experts, _ = select_expert(query, self.pool["e_keys"])
            else:
                experts = torch.full((len(images),), task_index, dtype=torch.long, device=images.device)
                key = F.normalize(self.pool["e_keys"][task_index], dim=-1)
                matching.append((1.0 - F.normalize(query.float(), dim=-1) @ key).mean())
            return encode_prompted(self.encoder, images, self.layer_prompts(experts), "prefix")

        embeddings = fuse(encode_each_modality(self.encoder, batch, prompted))
        loss = torch.stack(matching).mean() if matching else embeddings.new_zeros(())
        return embeddings, loss

    def training_loss(self, batch, task):
        embeddings, matching = self.embed(batch, task.index)
        ce = self.head.cross_entropy(embeddings, batch.labels, task)
        return ce + self.hparams.matching_weight * matching, {"ce": ce.item(), "match": matching.item()}

    def representation(self, batch, modality_known=True):
        return self.embed(batch, None)[0]

    def classify(self, features, label_space):
        return self.head(features, label_space)

    def optimizer_parameter_groups(self):
        return prompt_parameter_groups(self, self.context.config.train.lr * self.hparams.prompt_lr_scale)
