"""iCaRL (Rebuffi et al., "iCaRL: Incremental classifier and representation learning", CVPR 2017):
herding exemplars, distillation on old classes, nearest-mean-of-exemplars classification.

Training on a task: cross-entropy over the seen classes on the task's data and a replay batch of
exemplars, plus the distillation of the previous model's old-class logits on both (the shared
:func:`~mmcl.methods.losses.distillation_loss`, KL on temperature-softened logits: ours, where the paper
uses sigmoid binary cross-entropy on its sigmoid outputs). After the task, each of its classes keeps
``per_class`` exemplars chosen by herding (:func:`herding_order` on the L2-normalised fused features
of the current model), with replay's budget convention (``per_class``, optional total cap
``buffer_size``; a group shrinks by dropping its last-herded samples). Classification is by the
nearest exemplar mean (cosine to the normalised mean of the exemplars' normalised features, recomputed
with the current model after every task). ``nme: false`` classifies with the trained cosine head (the
paper's "hybrid1" variant; with ``train.epochs=0``, the learning checks' untrained control).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.losses import distillation_loss
from mmcl.methods.snapshot import Snapshot
from mmcl.methods.text_anchored import ExemplarConfig, TextAnchoredMethod
from mmcl.models.exemplars import BufferHooks, ExemplarBuffer, stack_items
from mmcl.models.prototypes import PrototypeBank
from mmcl.seeding import derived_seed, seeded_generator


def herding_order(features: torch.Tensor, count: int) -> torch.Tensor:
    """iCaRL's herding: the first ``count`` picks (indices into ``features`` ``[N, D]``, already
    normalised), each the sample whose addition brings the picks' mean closest to the mean of all
    (Algorithm 4, without repeats)."""
    target = features.mean(dim=0)
    chosen: list[int] = []
    running = torch.zeros_like(target)
    available = torch.ones(len(features), dtype=torch.bool)
    for k in range(1, min(count, len(features)) + 1):
        distances = (target - (running + features) / k).norm(dim=1)
        distances[~available] = float("inf")
        pick = int(distances.argmin())
        chosen.append(pick)
        running += features[pick]
        available[pick] = False
    return torch.tensor(chosen, dtype=torch.long)


@register
class ICaRL(BufferHooks, TextAnchoredMethod):
    card = Card(name="icarl", family="rehearsal",
                description="herding exemplars (5 per class), distillation, nearest-mean-of-exemplars",
                tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "distillation_weight": [0.5, 2.0]},
                ablations={"head-classifier": {"nme": False}, "no-distillation": {"distillation_weight": 0.0}})

    buffer_selection = "herding"  # in the run record

    @dataclass(config={"extra": "forbid"})
    class Config(ExemplarConfig):
        distillation_weight: float = Field(1.0, ge=0)
        temperature: float = Field(2.0, gt=0)
        nme: bool = True  # false: classify with the cosine head

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        self.buffer = ExemplarBuffer(hparams.per_class, hparams.buffer_size)
        self.generator = torch.Generator()
        self.means = PrototypeBank(self.head.weight.detach())
        self.teacher = None
        self.old_classes: list[int] = []

    def begin_task(self, task):
        super().begin_task(task)
        self.generator.manual_seed(derived_seed(self.context.config.seed, "task", task.index))
        self.old_classes = sorted({c for earlier in self.context.tasks[: task.index] for c in earlier.classes})
        buffer, self.buffer = self.buffer, None  # the teacher needs the model only, not a copy of the exemplars
        self.teacher = Snapshot(self) if self.old_classes and self.hparams.distillation_weight > 0 else None
        self.buffer = buffer

    def part_loss(self, batch, task) -> tuple[torch.Tensor, torch.Tensor]:
        ce = self.classification_loss(batch, task)
        if self.teacher is None:
            return ce, torch.zeros((), device=ce.device)
        old = torch.tensor(self.old_classes, device=batch.labels.device)
        return ce, distillation_loss(self.logits(batch, old), self.teacher.module.logits(batch, old),
                                     self.hparams.temperature)

    def training_loss(self, batch, task):
        size = self.hparams.replay_batch_size or self.context.config.train.batch_size
        parts = [(batch, *self.part_loss(batch, task))]
        for replayed in self.buffer.sample(size, self.generator):
            replayed = replayed.to(batch.labels.device)
            parts.append((replayed, *self.part_loss(replayed, task)))
        count = sum(len(b) for b, _, _ in parts)
        ce = sum(c * len(b) for b, c, _ in parts) / count
        kd = sum(k * len(b) for b, _, k in parts) / count
        return ce + self.hparams.distillation_weight * kd, {"ce": ce.item(), "kd": kd.item()}

    @torch.no_grad()
    def normalised_features(self, batch) -> torch.Tensor:
        return F.normalize(self.features(batch.to(self.context.device)).float(), dim=-1)

    @torch.no_grad()
    def end_task(self, task):
        was_training = self.training
        self.eval()
        features = torch.cat([self.normalised_features(b) for b in task.train.batches(
            self.context.config.train.eval_batch_size)]).cpu()
        generator = seeded_generator(self.context.config.seed, "exemplars", task.index)
        self.buffer.add_task(task.train, task.index, generator,
                             rank=lambda candidates, quota: candidates[herding_order(features[candidates], quota)])
        self.means.reset()  # class means of the exemplars, with the current model
        for group in self.buffer.groups.values():
            for _, batch in stack_items(group):
                self.means.add(self.normalised_features(batch), batch.labels)
        self.train(was_training)

    def classify(self, features, label_space):
        if not self.hparams.nme:
            return self.head(features, label_space)
        return self.means.logits(features, label_space, self.encoder.logit_scale)
