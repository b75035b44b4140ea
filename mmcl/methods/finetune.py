"""Sequential fine-tuning: cross-entropy on each task in turn, nothing against forgetting."""
from __future__ import annotations

from mmcl.methods.base import TextAnchoredMethod, register


@register
class Finetune(TextAnchoredMethod):
    name = "finetune"
    family = "classic"
    tuning_grid = {"lr_scale": [0.3, 1.0, 3.0], "trainable_blocks": [0, 1]}
    description = "sequential fine-tuning (lower bound)"

    def training_loss(self, batch, task):
        loss, _, _ = self.classification_loss(batch)
        return loss
