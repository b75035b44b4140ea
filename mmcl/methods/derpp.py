"""DER++ (Buzzega et al., "Dark experience for general continual learning: a strong, simple baseline",
NeurIPS 2020): a reservoir buffer of past samples with the logits the model gave them.

Every training batch enters a reservoir (:class:`~mmcl.models.exemplars.ReservoirBuffer`, algorithm
R: each sample of the stream so far is kept with equal probability) together with its logits over
all the run's classes at that step (as Mammoth stores the network's whole output). The loss is
:func:`derpp_loss`: cross-entropy on the batch, plus ``alpha`` times the mean squared error between
the current logits of one buffer batch and their stored logits, plus ``beta`` times the
cross-entropy of another buffer batch's labels. The buffer holds ``per_class`` times the run's
number of classes samples (replay's literature budget, as one total; ``buffer_size`` overrides).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.losses import targets_in
from mmcl.methods.text_anchored import TextAnchoredMethod
from mmcl.models.exemplars import BufferHooks, ReservoirBuffer
from mmcl.seeding import derived_seed


def derpp_loss(logits: torch.Tensor, targets: torch.Tensor, replay_logits: torch.Tensor | None,
               stored_logits: torch.Tensor | None, replay2_logits: torch.Tensor | None,
               replay2_targets: torch.Tensor | None, alpha: float, beta: float) -> tuple[torch.Tensor, dict]:
    """``CE(logits, targets) + alpha * MSE(replay_logits, stored_logits) + beta * CE(replay2_logits,
    replay2_targets)``; a missing buffer batch (None) contributes nothing. Returns (loss, parts)."""
    ce = F.cross_entropy(logits, targets)
    mse = F.mse_loss(replay_logits, stored_logits) if replay_logits is not None else ce.new_zeros(())
    ce2 = F.cross_entropy(replay2_logits, replay2_targets) if replay2_logits is not None else ce.new_zeros(())
    return ce + alpha * mse + beta * ce2, {"ce": ce.item(), "logit_mse": mse.item(), "buffer_ce": ce2.item()}


@register
class DERpp(BufferHooks, TextAnchoredMethod):
    card = Card(name="derpp", family="rehearsal", description="dark experience replay++: reservoir buffer with stored logits",
                tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "alpha": [0.1, 0.5]},
                ablations={"der": {"beta": 0.0}, "labels-only": {"alpha": 0.0}})

    buffer_selection = "reservoir"  # in the run record

    @dataclass(config={"extra": "forbid"})
    class Config(TextAnchoredMethod.Config):
        per_class: int = Field(5, ge=0)  # buffer budget per run class (the total is per_class * classes)
        buffer_size: int | None = Field(None, ge=0)  # overrides the total
        replay_batch_size: int | None = Field(None, ge=1)  # default: the training batch size
        alpha: float = Field(0.1, ge=0)  # weight of the logit MSE
        beta: float = Field(0.5, ge=0)  # weight of the buffer labels' cross-entropy

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        capacity = hparams.buffer_size if hparams.buffer_size is not None else hparams.per_class * context.num_classes
        self.buffer = ReservoirBuffer(capacity)
        self.generator = torch.Generator()

    def begin_task(self, task):
        super().begin_task(task)
        self.generator.manual_seed(derived_seed(self.context.config.seed, "task", task.index))

    def buffer_batch(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(current logits over all classes, stored logits, labels) of one random buffer batch."""
        size = self.hparams.replay_batch_size or self.context.config.train.batch_size
        groups = self.buffer.sample(size, self.generator)
        if not groups:
            return None
        every = torch.arange(self.context.num_classes, device=device)
        logits = torch.cat([self.logits(batch.to(device), every) for batch, _ in groups])
        return (logits, torch.cat([stored for _, stored in groups]).to(device, logits.dtype),
                torch.cat([batch.labels for batch, _ in groups]).to(device))

    def training_loss(self, batch, task):
        device = batch.labels.device
        every = torch.arange(self.context.num_classes, device=device)
        space = self.context.seen_label_space()
        all_logits = self.logits(batch, every)
        first, second = self.buffer_batch(device), self.buffer_batch(device)
        loss, parts = derpp_loss(
            all_logits[:, space], targets_in(space, batch.labels),
            first[0] if first else None, first[1] if first else None,
            second[0][:, space] if second else None, targets_in(space, second[2]) if second else None,
            self.hparams.alpha, self.hparams.beta)
        self.buffer.add(batch, all_logits.detach(), self.generator)
        return loss, parts
