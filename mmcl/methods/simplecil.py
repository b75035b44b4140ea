"""SimpleCIL (Zhou et al., "Revisiting class-incremental learning with pre-trained models: generalizability
and adaptivity are all you need", 2023): a prototype classifier on the frozen backbone, no training.

After each task the fused features (the shared mean of the L2-normalised modality embeddings) of its
training data are added to per-class sums; a class's prototype is the mean of all its samples seen so
far (a class that recurs in a new domain or modality updates it); logits are the scaled cosine
between a sample's fused feature and each prototype. A class not seen yet is scored by its text
embedding (the zero-shot row). ``prototypes: false`` scores every class by its text embedding: the
zero-shot model (the learning checks' untrained control).
"""
from __future__ import annotations

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.text_anchored import TextAnchoredMethod, iterate_task_batches
from mmcl.models.prototypes import PrototypeBank


@register
class SimpleCIL(TextAnchoredMethod):
    card = Card(name="simplecil", family="prototype",
                description="class-mean prototypes of frozen fused features, cosine classifier (no training)",
                head_defaults={"train": False})
    trains = False

    @dataclass(config={"extra": "forbid"})
    class Config(TextAnchoredMethod.Config):
        trainable_blocks: int = Field(0, ge=0, le=0)  # the backbone stays frozen
        prototypes: bool = True  # false: class text embeddings only (the zero-shot model)

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        self.bank = PrototypeBank(self.head.weight.detach())

    @torch.no_grad()
    def end_task(self, task):
        if not self.hparams.prototypes:
            return
        for batch in iterate_task_batches(task.train, self.context.config.train.eval_batch_size, self.context.device):
            self.bank.add(self.features(batch), batch.labels)

    def classify(self, features, label_space):
        return self.bank.logits(features, label_space, self.encoder.logit_scale)

    def run_record(self) -> dict:
        return {"prototypes": {"samples_per_class": {str(c): int(n) for c, n in enumerate(self.bank.counts.tolist())
                                                     if n > 0}}}
