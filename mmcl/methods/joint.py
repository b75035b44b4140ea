"""Joint training: at every task, train on the union of all data seen so far (upper bound)."""
from __future__ import annotations

from mmcl.methods.base import TextAnchoredMethod, register


@register
class Joint(TextAnchoredMethod):
    name = "joint"
    family = "reference"
    tuning_grid = {"lr_scale": [0.3, 1.0, 3.0], "trainable_blocks": [0, 1]}
    trains_on_all_seen_data = True
    description = "joint training on all seen data (upper bound)"

    def training_loss(self, batch, task):
        loss, _, _ = self.classification_loss(batch)
        return loss
