"""Zero-shot: the frozen backbone and the class text embeddings, no training (the floor for FWT)."""
from __future__ import annotations

from mmcl.methods.base import HeadConfig, MethodConfig, TextAnchoredMethod, register


@register
class ZeroShot(TextAnchoredMethod):
    name = "zero-shot"
    family = "reference"
    trains = False
    description = "frozen backbone, text classifier from class-name templates"

    def __init__(self, encoder, context, hparams: MethodConfig):
        super().__init__(encoder, context, MethodConfig(trainable_blocks=0, head=HeadConfig(train=False)))
