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

import torch

from mmcl.config import ConfigError
from mmcl.data.dataset import Batch
from mmcl.methods.base import Frozen, Method, register
from mmcl.methods.card import Card
from mmcl.methods.heads import TextHead
from mmcl.methods.prompting import PromptPoolConfig
from mmcl.models.prompts import (
    PromptPool,
    as_images,
    check_prompt_depth,
    encode_prompted,
    frozen_query,
    key_query_matching_loss,
    prompt_parameter_groups,
    single_modality,
)
from mmcl.models.towers import frames_of, mean_over_frames


@register
class L2P(Method):
    card = Card(
        name="l2p", family="prompt", description="learning to prompt: one shared prompt pool, top-k key-query selection",
        compatible_scenarios=("modality_incremental",),  # one modality per batch (see single_modality)
        tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "matching_weight": [0.1, 0.5]},
        # unmasked: cross-entropy over every seen class. Under L2P's mask the loss never sees the old
        # classes' logits, so nothing moves a new modality's samples out of them (docs/methods/comm.md,
        # "Does it learn what zero-shot cannot read?", measures where its predictions land).
        ablations={"no-matching-loss": {"matching_weight": 0.0}, "unmasked": {"ce_over": "seen"}})
    Config = PromptPoolConfig
    frozen = Frozen(hooked_from={"vision": 0})  # prompts from the first vision block; no backbone weight trains

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        check_prompt_depth(self.name, hparams.prompt_depth, encoder)
        if any("text" in t.modalities for t in context.tasks):
            raise ConfigError(f"methods.{self.name}: its prompt pool lives in the vision tower; the stream has a text task "
                              f"(run it on a stream without text)")
        self.head = TextHead(encoder, context, hparams.head, hparams.ce_over)
        self.pool = PromptPool(hparams.pool_size, hparams.prompt_length, hparams.prompt_depth, encoder.vision_width,
                               encoder.embed_dim, hparams.top_k, hparams.prompt_init_std)

    def begin_task(self, task):
        self.head.begin_task(task)

    def embed(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompted embeddings [B, D], key similarities of the chosen prompts [N, k])``."""
        modality, inputs = single_modality(batch)
        images = as_images(modality, inputs)
        prompts, _, similarity = self.pool(frozen_query(self.encoder, images))
        embeddings = encode_prompted(self.encoder, images, prompts, self.hparams.prompt_style)
        return mean_over_frames(embeddings, frames_of(modality, inputs)), similarity

    def training_loss(self, batch, task):
        embeddings, similarity = self.embed(batch)
        ce = self.head.cross_entropy(embeddings, batch.labels, task)
        matching = key_query_matching_loss(similarity)
        return ce + self.hparams.matching_weight * matching, {"ce": ce.item(), "match": matching.item()}

    def representation(self, batch, modality_known=True):
        return self.embed(batch)[0]

    def classify(self, features, label_space):
        return self.head(features, label_space)

    def optimizer_parameter_groups(self):
        return prompt_parameter_groups(self, self.context.config.train.lr * self.hparams.prompt_lr_scale)
