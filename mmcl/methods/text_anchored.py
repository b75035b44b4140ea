"""The baselines' model: the backbone (its last vision blocks optionally trainable), the mean fusion of
the modalities, and the :class:`~mmcl.methods.heads.TextHead` at the class text embeddings."""
from __future__ import annotations

from typing import Iterator

import pydantic
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcl.data.dataset import Batch, MultiModalDataset
from mmcl.methods.base import Frozen, Method, MethodConfig, RunContext
from mmcl.methods.heads import TextHead
from mmcl.methods.losses import targets_in
from mmcl.models.backbone import MultiModalEncoder


def fuse(embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean of the L2-normalised modality embeddings ``[B, D]`` (the default fusion)."""
    return torch.stack([F.normalize(e.float(), dim=-1) for e in embeddings.values()]).mean(dim=0)


def unfreeze_last_blocks(encoder: MultiModalEncoder, count: int) -> list[nn.Parameter]:
    """Make the last ``count`` vision blocks (and the final norm and projection) trainable."""
    if count <= 0:
        return []
    visual = encoder.clip.visual
    modules = list(visual.transformer.resblocks)[-count:] + [visual.ln_post]
    parameters = [p for m in modules for p in m.parameters()] + ([visual.proj] if visual.proj is not None else [])
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def iterate_task_batches(dataset: MultiModalDataset, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Unshuffled batches of ``dataset`` on ``device`` (for statistics at the end of a task)."""
    for batch in dataset.batches(batch_size):
        yield batch.to(device)


@pydantic.dataclasses.dataclass(config=pydantic.ConfigDict(extra="forbid"))
class TextAnchoredConfig(MethodConfig):
    """The hyper-parameters of a :class:`TextAnchoredMethod` (its subclasses' ``Config`` extend it)."""

    trainable_blocks: int = pydantic.Field(1, ge=0)  # last vision-tower blocks unfrozen (0: head only)


@pydantic.dataclasses.dataclass(config=pydantic.ConfigDict(extra="forbid"))
class ExemplarConfig(TextAnchoredConfig):
    """A text-anchored method with a class-balanced exemplar buffer
    (:class:`~mmcl.models.exemplars.ExemplarBuffer`: replay, iCaRL, AV-CIL), replayed in batches."""

    per_class: int = pydantic.Field(5, ge=0)  # exemplars kept per class (per class and task where classes recur)
    buffer_size: int | None = pydantic.Field(None, ge=0)  # optional cap on the total (None: per_class decides)
    replay_batch_size: int | None = pydantic.Field(None, ge=1)  # default: the training batch size


class TextAnchoredMethod(Method):
    """The baselines' model: the last ``trainable_blocks`` vision blocks train, the modalities' embeddings
    are mean-fused (:meth:`features`), and ``self.head`` (a :class:`~mmcl.methods.heads.TextHead`)
    scores them. The head's training label space is the Config's ``ce_over`` where it declares one
    (SLCA), else every seen class. A subclass that overrides :meth:`begin_task` calls ``super()``."""

    Config = TextAnchoredConfig
    frozen = Frozen(trains_last={"vision": "trainable_blocks"})  # the text tower never trains

    def __init__(self, encoder: MultiModalEncoder, context: RunContext, hparams: TextAnchoredConfig):
        super().__init__(encoder, context, hparams)
        unfreeze_last_blocks(encoder, hparams.trainable_blocks)
        self.head = TextHead(encoder, context, hparams.head, getattr(hparams, "ce_over", "seen"))

    def begin_task(self, task) -> None:
        """Applies the head rules; a subclass that overrides this calls ``super().begin_task(task)``."""
        self.head.begin_task(task)

    def features(self, batch: Batch) -> torch.Tensor:
        """The fused features ``[B, D]`` the head reads."""
        return fuse({m: self.encoder.encode(m, x) for m, x in batch.inputs.items()})

    def logits(self, batch: Batch, label_space: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(batch), label_space)

    def classification_loss(self, batch: Batch, task=None) -> torch.Tensor:
        """Cross-entropy of the head over its training label space (every seen class, or with
        ``ce_over: current`` the classes of ``task``)."""
        space = self.head.label_space(task)
        return F.cross_entropy(self.logits(batch, space), targets_in(space, batch.labels))

    def representation(self, batch: Batch, modality_known: bool = True) -> torch.Tensor | None:
        """The fused features the cosine head reads (a subclass that predicts from other features overrides it)."""
        return self.features(batch)

    def classify(self, features: torch.Tensor, label_space: torch.Tensor) -> torch.Tensor:
        """The cosine head (a subclass with prototypes or a readout overrides it)."""
        return self.head(features, label_space)

