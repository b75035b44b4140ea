"""Sequential fine-tuning: cross-entropy on each task in turn, nothing against forgetting."""
from __future__ import annotations

from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.text_anchored import TextAnchoredMethod


@register
class Finetune(TextAnchoredMethod):
    card = Card(name="finetune", family="classic", description="sequential fine-tuning (lower bound)",
                tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "trainable_blocks": [0, 1]})

    def training_loss(self, batch, task):
        return self.classification_loss(batch, task)
