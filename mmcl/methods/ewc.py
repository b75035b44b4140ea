"""Elastic Weight Consolidation (Kirkpatrick et al., 2017), online variant (Schwarz et al., 2018).

After each task the diagonal Fisher information of the trainable parameters is estimated on its
training data and accumulated with decay ``gamma``; training then adds
``lambda / 2 * sum_i F_i (theta_i - theta*_i)^2``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.methods.base import MethodConfig, TextAnchoredMethod, iterate_task_batches, register, targets_in


@register
class EWC(TextAnchoredMethod):
    name = "ewc"
    family = "classic"
    tuning_grid = {"lr_scale": [0.3, 1.0, 3.0], "ewc_lambda": [100.0, 10000.0]}
    description = "elastic weight consolidation (online)"
    # The MoE adapters' head rule (rows of old classes frozen), for a fair class-incremental comparison.
    comparisons = {"frozen-head": {"head": {"freeze_old_rows": True}}}

    @dataclass(config={"extra": "forbid"})
    class Config(MethodConfig):
        ewc_lambda: float = Field(1000.0, ge=0)
        gamma: float = Field(1.0, ge=0, le=1)  # decay of earlier Fisher estimates (1: plain sum)
        fisher_samples: int = Field(256, ge=1)  # training samples used for the Fisher estimate (per task)

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        self.tracked = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        for index, (_, parameter) in enumerate(self.tracked):
            self.register_buffer(f"fisher_{index}", torch.zeros_like(parameter))
            self.register_buffer(f"anchor_{index}", parameter.detach().clone())
        self.register_buffer("tasks_consolidated", torch.zeros((), dtype=torch.long))

    def penalty(self) -> torch.Tensor:
        total = torch.zeros((), device=self.head.weight.device)
        if int(self.tasks_consolidated) == 0:
            return total
        for index, (_, parameter) in enumerate(self.tracked):
            fisher, anchor = getattr(self, f"fisher_{index}"), getattr(self, f"anchor_{index}")
            total = total + (fisher * (parameter - anchor) ** 2).sum()
        return 0.5 * self.hparams.ewc_lambda * total

    def training_loss(self, batch, task):
        loss, _, _ = self.classification_loss(batch)
        penalty = self.penalty()
        return loss + penalty, {"ce": loss.item(), "ewc": penalty.item()}

    def end_task(self, task):
        """Empirical Fisher: per-sample squared gradients of the log-likelihood, averaged.

        Gradients are taken one sample at a time: squaring a batch-mean gradient would let the
        samples' gradients cancel and underestimate the Fisher by about the batch size.
        """
        space = self.context.seen_label_space()
        estimates = [torch.zeros_like(p) for _, p in self.tracked]
        picks = torch.randperm(len(task.train))[: self.hparams.fisher_samples]
        data = task.train.subset(picks)
        for batch in iterate_task_batches(data, 1, space.device):
            self.zero_grad(set_to_none=True)
            F.cross_entropy(self.logits(batch, space), targets_in(space, batch.labels)).backward()
            for estimate, (_, parameter) in zip(estimates, self.tracked):
                if parameter.grad is not None:
                    estimate += parameter.grad.detach() ** 2
        self.zero_grad(set_to_none=True)
        for index, (estimate, (_, parameter)) in enumerate(zip(estimates, self.tracked)):
            fisher = getattr(self, f"fisher_{index}")
            fisher.mul_(self.hparams.gamma).add_(estimate / max(len(data), 1))
            getattr(self, f"anchor_{index}").copy_(parameter.detach())
        self.tasks_consolidated += 1
