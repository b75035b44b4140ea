"""Learning without Forgetting (Li & Hoiem, 2017): distil the previous model's old-class logits."""
from __future__ import annotations

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.losses import distillation_loss
from mmcl.methods.snapshot import Snapshot
from mmcl.methods.text_anchored import TextAnchoredMethod


@register
class LwF(TextAnchoredMethod):
    card = Card(
        name="lwf", family="classic", description="learning without forgetting (logit distillation on old classes)",
        tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "distillation_weight": [0.5, 2.0]},
        ablations={"no-distillation": {"distillation_weight": 0.0}},
        # The MoE adapters' head rule (rows of old classes frozen), for a fair class-incremental comparison.
        comparisons={"frozen-head": {"head": {"freeze_old_rows": True}}})

    @dataclass(config={"extra": "forbid"})
    class Config(TextAnchoredMethod.Config):
        distillation_weight: float = Field(1.0, ge=0)
        temperature: float = Field(2.0, gt=0)

    def begin_task(self, task):
        super().begin_task(task)
        # Classes the previous model already knew: in domain-incremental streams, all of them.
        self.old_classes = sorted({c for earlier in self.context.tasks[: task.index] for c in earlier.classes})
        self.teacher = Snapshot(self) if self.old_classes else None

    def training_loss(self, batch, task):
        loss = self.classification_loss(batch, task)
        if self.teacher is None:
            return loss
        old = torch.tensor(self.old_classes, device=batch.labels.device)
        distill = distillation_loss(self.logits(batch, old), self.teacher.module.logits(batch, old),
                                    self.hparams.temperature)
        return loss + self.hparams.distillation_weight * distill, {"ce": loss.item(), "kd": distill.item()}
