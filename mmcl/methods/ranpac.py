"""RanPAC (McDonnell et al., "RanPAC: Random projections and pre-trained models for continual learning",
NeurIPS 2023): frozen features, a fixed random projection with a nonlinearity, and a ridge-regression
classifier from second-order class statistics.

A sample's fused feature ``f`` (``[D]``, the shared fusion of frozen modality embeddings) becomes
``h = relu(f W)`` with ``W`` ``[D, M]`` drawn once from N(0, 1) (seeded by the run seed). Over all
tasks seen, the Gram matrix ``G = sum h h^T`` and the class sums ``C = sum h y^T`` (``y`` one-hot over
the run's classes) accumulate; after each task the classifier is ``W_o = (G + lambda I)^-1 C`` and
logits are ``h W_o``. As in the paper's code, ``lambda`` is chosen per task from 10^-8 .. 10^13 by
fitting on a random 80 % of the task's training features and scoring one-hot mean squared error on
the other 20 % (:func:`~mmcl.models.prototypes.choose_ridge`); no tuning grid.

Not reproduced: the paper's first-session parameter-efficient adaptation (RanPAC's phase 1) is
skipped, so this is RanPAC on the frozen backbone (the paper's "no PETL" ablation); APER covers
first-session adaptation. ``ridge: false`` scores with the class text embeddings (the zero-shot
model: the learning checks' untrained control).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.text_anchored import TextAnchoredMethod, iterate_task_batches
from mmcl.models.prototypes import choose_ridge, ridge_solution
from mmcl.seeding import seeded_generator

RIDGE_CANDIDATES = [10.0**k for k in range(-8, 14)]


@register
class RanPAC(TextAnchoredMethod):
    card = Card(name="ranpac", family="prototype",
                description="random projection + ReLU, ridge classifier from accumulated second-order statistics",
                head_defaults={"train": False}, ablations={"no-projection": {"projection_dim": 0}})
    trains = False

    @dataclass(config={"extra": "forbid"})
    class Config(TextAnchoredMethod.Config):
        trainable_blocks: int = Field(0, ge=0, le=0)  # the backbone stays frozen
        projection_dim: int = Field(2048, ge=0)  # M (the paper: 10000); 0: no projection (h = f)
        ridge: bool = True  # false: class text embeddings only (the zero-shot model)

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        dim, width = encoder.embed_dim, hparams.projection_dim or encoder.embed_dim
        generator = seeded_generator(context.config.seed, "projection")
        projection = torch.randn(dim, hparams.projection_dim, generator=generator) if hparams.projection_dim else None
        self.register_buffer("projection", projection, persistent=False)  # rebuilt from the seed
        self.register_buffer("gram", torch.zeros(width, width, dtype=torch.float64))
        self.register_buffer("class_sums", torch.zeros(width, context.num_classes, dtype=torch.float64))
        self.register_buffer("readout", torch.zeros(width, context.num_classes))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.ridges: list[float] = []

    def projected(self, batch) -> torch.Tensor:
        features = self.features(batch).float()
        return features if self.projection is None else torch.relu(features @ self.projection)

    @torch.no_grad()
    def end_task(self, task):
        if not self.hparams.ridge:
            return
        rows, targets = [], []
        for batch in iterate_task_batches(task.train, self.context.config.train.eval_batch_size, self.context.device):
            rows.append(self.projected(batch))
            targets.append(F.one_hot(batch.labels, self.context.num_classes).float())
        h, y = torch.cat(rows), torch.cat(targets)
        self.gram += h.double().T @ h.double()
        self.class_sums += h.double().T @ y.double()
        generator = seeded_generator(self.context.config.seed, "ridge-split", task.index)
        ridge, _ = choose_ridge(h, y, RIDGE_CANDIDATES, generator)
        self.ridges.append(ridge)
        self.readout.copy_(ridge_solution(self.gram, self.class_sums, ridge).float())
        self.fitted.fill_(True)

    def representation(self, batch, modality_known=True):
        return self.projected(batch) if bool(self.fitted) else self.features(batch)

    def classify(self, features, label_space):
        if not bool(self.fitted):
            return self.head(features, label_space)
        return features @ self.readout[:, label_space]

    def run_record(self) -> dict:
        return {"ranpac": {"projection_dim": self.hparams.projection_dim, "ridge_per_task": self.ridges}}

    def get_extra_state(self):
        return {"ridges": self.ridges}

    def set_extra_state(self, state):
        self.ridges = list(state["ridges"])
