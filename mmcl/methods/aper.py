"""APER with adapters (Zhou et al., "Revisiting class-incremental learning with pre-trained models:
generalizability and adaptivity are all you need", 2023; a.k.a. ADAM): adapt once, then prototypes.

On the first task only, a residual bottleneck adapter after every vision block
(:class:`~mmcl.models.adapters.BlockAdapters`, through the encoder's tower hooks) trains with the
cosine head (initialised at the class text embeddings) on cross-entropy; the backbone stays frozen
and nothing trains afterwards. After every task, each class's prototype accumulates the
concatenation ``[frozen fused feature, adapted fused feature]`` (each the shared fusion of
L2-normalised modality embeddings; the text tower, if a stream has text, is never adapted);
logits are the scaled cosine to the prototypes (SimpleCIL on the two models' features). A class not
seen yet is scored by ``[text, text]`` (its zero-shot row twice).

``prototypes: false`` scores with the trained cosine head on the adapted features (the learning
checks' untrained control, with ``train.epochs=0``: the zero-shot model, as the adapter starts at
the identity).
"""
from __future__ import annotations

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.methods.base import Frozen, register
from mmcl.methods.card import Card
from mmcl.methods.text_anchored import TextAnchoredMethod, fuse, iterate_task_batches
from mmcl.models.adapters import BlockAdapters
from mmcl.models.prototypes import PrototypeBank


@register
class APER(TextAnchoredMethod):
    card = Card(name="aper", family="prototype",
                description="first-task adapter tuning, then prototypes of [frozen, adapted] features",
                tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "adapter_scale": [0.1, 1.0]},
                ablations={"frozen-only": {"adapted_features": False}})
    frozen = Frozen(hooked_from={"vision": 0})  # an adapter after every vision block; no backbone weight trains

    @dataclass(config={"extra": "forbid"})
    class Config(TextAnchoredMethod.Config):
        trainable_blocks: int = Field(0, ge=0, le=0)  # the backbone stays frozen; the adapter trains
        bottleneck: int = Field(16, ge=1)  # the adapters' hidden width
        # the adapter branch's weight in the residual sum (AdaptFormer, as APER uses it: 0.1; with the
        # few first-task steps of the small profiles an adapter at 0.1 barely moves the features)
        adapter_scale: float = Field(1.0, gt=0)
        adapted_features: bool = True  # false: prototypes of the frozen features only (SimpleCIL)
        prototypes: bool = True  # false: the trained cosine head on the adapted features

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        self.adapters = BlockAdapters(len(encoder.vision_blocks), encoder.vision_width, hparams.bottleneck,
                                      hparams.adapter_scale)
        text = self.head.weight.detach()
        self.bank = PrototypeBank(torch.cat([text, text], dim=1) if hparams.adapted_features else text)

    def trains_on(self, task):
        return task.index == 0

    def adapted(self, batch) -> torch.Tensor:
        return fuse({m: self.encoder.encode(m, x, hooks=None if m == "text" else self.adapters)
                     for m, x in batch.inputs.items()})

    def features(self, batch) -> torch.Tensor:
        """The adapted model's fused features (what the cosine head reads during adaptation)."""
        return self.adapted(batch)

    def prototype_features(self, batch) -> torch.Tensor:
        frozen = fuse({m: self.encoder.encode(m, x) for m, x in batch.inputs.items()})
        return torch.cat([frozen, self.adapted(batch)], dim=1) if self.hparams.adapted_features else frozen

    def training_loss(self, batch, task):
        return self.classification_loss(batch, task)

    @torch.no_grad()
    def end_task(self, task):
        if not self.hparams.prototypes:
            return
        was_training = self.training
        self.eval()
        for batch in iterate_task_batches(task.train, self.context.config.train.eval_batch_size, self.context.device):
            self.bank.add(self.prototype_features(batch), batch.labels)
        self.train(was_training)

    def representation(self, batch, modality_known=True):
        return self.prototype_features(batch) if self.hparams.prototypes else self.features(batch)

    def classify(self, features, label_space):
        if not self.hparams.prototypes:
            return self.head(features, label_space)
        return self.bank.logits(features, label_space, self.encoder.logit_scale)
