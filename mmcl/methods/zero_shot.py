"""Zero-shot: the frozen backbone and the class text embeddings, no training (the floor for FWT)."""
from __future__ import annotations

from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.heads import HeadConfig
from mmcl.methods.text_anchored import TextAnchoredConfig, TextAnchoredMethod


@register
class ZeroShot(TextAnchoredMethod):
    card = Card(name="zero-shot", family="reference",
                description="frozen backbone, text classifier from class-name templates")
    trains = False

    def __init__(self, encoder, context, hparams: TextAnchoredConfig):
        super().__init__(encoder, context, TextAnchoredConfig(trainable_blocks=0, head=HeadConfig(train=False)))
