"""Joint training: at every task, train on the union of all data seen so far (upper bound)."""
from __future__ import annotations

from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.text_anchored import TextAnchoredMethod


@register
class Joint(TextAnchoredMethod):
    card = Card(name="joint", family="reference", description="joint training on all seen data (upper bound)",
                tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "trainable_blocks": [0, 1]})
    trains_on_all_seen_data = True

    def training_loss(self, batch, task):
        return self.classification_loss(batch, task)
