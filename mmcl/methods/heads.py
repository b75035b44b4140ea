"""The class head every method shares: a cosine classifier at the class text embeddings.

:class:`TextHead` is the component a method holds as ``self.head``: it builds the rows from the
class names (:meth:`TextHead.class_text`), applies the head rules (:class:`HeadConfig`:
``methods.<method>.head.*``) at the start of each task (:meth:`TextHead.begin_task`) and names
the classes of the training cross-entropy (:meth:`TextHead.label_space`, one knob: ``ce_over``).
It is a :class:`CosineClassifier`, so its state is ``head.weight``, as every checkpoint has it.
"""
from __future__ import annotations

from typing import Literal

import pydantic
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcl.methods.losses import targets_in

CeOver = Literal["current", "seen"]  # the classes of the training cross-entropy: the task's, or all seen


@pydantic.dataclasses.dataclass(config=pydantic.ConfigDict(extra="forbid"))
class HeadConfig:
    """Rules of the cosine class head (``methods.<method>.head.*``), the same options for every method.

    A method's own defaults for these keys are its card's ``head_defaults`` (the MoE adapters freeze old rows).
    """

    train: bool = True  # the rows (initialised at the class text embeddings) train
    freeze_old_rows: bool = False  # rows of classes absent from the current task get no update at all


class CosineClassifier(nn.Module):
    """Cosine-similarity head over all run classes, initialised at their text embeddings.

    ``weight`` is ``[C, D]``; logits are ``scale * cos(feature, weight[c])``. Classes are scored
    only where asked (the label space), so "growing" the head is adding classes to the space.

    Rows can be frozen (:meth:`freeze_rows`): the engine zeroes their gradient before every step
    (so neither gradient clipping nor the optimizer's moments see them) and puts their values back
    after it (so weight decay cannot move them either). The mask and the kept values are set at the
    start of each task, so they are not part of the checkpoint.
    """

    def __init__(self, text_embeddings: torch.Tensor, scale: float, trainable: bool = True):
        super().__init__()
        self.weight = nn.Parameter(text_embeddings.clone().float(), requires_grad=trainable)
        self.scale = scale
        self.register_buffer("frozen", torch.zeros(len(text_embeddings), dtype=torch.bool), persistent=False)
        self.register_buffer("frozen_values", torch.zeros_like(self.weight.detach()), persistent=False)

    def forward(self, features: torch.Tensor, label_space: torch.Tensor) -> torch.Tensor:
        weight = F.normalize(self.weight[label_space], dim=-1)
        return self.scale * F.normalize(features.float(), dim=-1) @ weight.T

    @torch.no_grad()
    def freeze_rows(self, rows: torch.Tensor) -> None:
        """Freeze exactly the rows where the boolean mask ``rows [C]`` is true, at their current values."""
        self.frozen.copy_(rows.to(self.frozen.device, torch.bool))
        self.frozen_values.copy_(self.weight.detach())

    @torch.no_grad()
    def mask_gradient(self) -> None:
        if self.weight.grad is not None and bool(self.frozen.any()):
            self.weight.grad[self.frozen] = 0

    @torch.no_grad()
    def restore_frozen_rows(self) -> None:
        if bool(self.frozen.any()):
            self.weight[self.frozen] = self.frozen_values[self.frozen]


def apply_head_rules(head: CosineClassifier, rules: HeadConfig, task) -> None:
    """The shared head rules at the start of ``task``: with ``freeze_old_rows`` only the rows of the
    task's classes train (class-incremental: every old class is frozen; domain-incremental: none,
    every class recurs); otherwise every row may train."""
    frozen = torch.full((len(head.frozen),), rules.freeze_old_rows, dtype=torch.bool)
    frozen[torch.tensor(task.classes, dtype=torch.long)] = False
    head.freeze_rows(frozen)


class TextHead(CosineClassifier):
    """The method's class head: rows at the class text embeddings, the head rules, the label space.

    Args:
        encoder: the run's :class:`~mmcl.models.backbone.MultiModalEncoder` (text tower, logit scale).
        context: the run's :class:`~mmcl.methods.base.RunContext` (class names, templates, seen classes).
        rules: the method's ``hparams.head``.
        ce_over: the classes of the training cross-entropy: ``"current"`` (the task's: the prompt
            papers' train-time mask) or ``"seen"`` (every class seen so far).
        rows: initial rows ``[C, D']`` instead of :meth:`class_text` (other templates, tiled rows).
    """

    def __init__(self, encoder, context, rules: HeadConfig, ce_over: CeOver = "seen",
                 rows: torch.Tensor | None = None):
        super().__init__(self.class_text(encoder, context) if rows is None else rows, encoder.logit_scale,
                         trainable=rules.train)
        self.rules, self.ce_over, self.context = rules, ce_over, context

    @staticmethod
    def class_text(encoder, context) -> torch.Tensor:
        """``[C, D]``: each run class's text embedding over the profile's ``model.classifier_templates``."""
        return encoder.class_text_embeddings(context.class_names, context.config.model.classifier_templates)

    def begin_task(self, task) -> None:
        """The head rules for ``task`` (:func:`apply_head_rules`); the method's ``begin_task`` calls it."""
        apply_head_rules(self, self.rules, task)

    def label_space(self, task) -> torch.Tensor:
        """The run labels the training cross-entropy of ``task`` scores (``ce_over``), sorted."""
        classes = task.classes if self.ce_over == "current" else self.context.seen_classes
        return torch.tensor(sorted(classes), dtype=torch.long, device=self.weight.device)

    def cross_entropy(self, features: torch.Tensor, labels: torch.Tensor, task, **options) -> torch.Tensor:
        """Cross-entropy of the head's logits of ``features`` over :meth:`label_space` of ``task``
        (``options``: those of :func:`torch.nn.functional.cross_entropy`, e.g. ``label_smoothing``)."""
        space = self.label_space(task)
        return F.cross_entropy(self(features, space), targets_in(space, labels), **options)
