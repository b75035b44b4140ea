"""Elastic Weight Consolidation (Kirkpatrick et al., 2017), online variant (Schwarz et al., 2018).

After each task the diagonal Fisher information of the trainable parameters is estimated on its
training data and accumulated with decay ``gamma``; training then adds
``lambda / 2 * sum_i F_i (theta_i - theta*_i)^2``.
"""
from __future__ import annotations

import warnings
from dataclasses import replace

import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch.func import grad, vmap
from torch.nn.utils.stateless import _reparametrize_module

from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.losses import targets_in
from mmcl.methods.text_anchored import TextAnchoredMethod, fuse, iterate_task_batches
from mmcl.models.towers import tower_of


@register
class EWC(TextAnchoredMethod):
    card = Card(name="ewc", family="classic", description="elastic weight consolidation (online)",
                tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "ewc_lambda": [100.0, 10000.0]},
                # The MoE adapters' head rule (rows of old classes frozen), for a fair class-incremental comparison.
                comparisons={"frozen-head": {"head": {"freeze_old_rows": True}}})

    @dataclass(config={"extra": "forbid"})
    class Config(TextAnchoredMethod.Config):
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
        loss = self.classification_loss(batch, task)
        penalty = self.penalty()
        return loss + penalty, {"ce": loss.item(), "ewc": penalty.item()}

    def end_task(self, task):
        """Empirical Fisher: per-sample squared gradients of the log-likelihood, averaged.

        Gradients are taken one sample at a time: squaring a batch-mean gradient would let the
        samples' gradients cancel and underestimate the Fisher by about the batch size. They are
        computed for many samples at once (:meth:`squared_gradients`, ``torch.func.vmap``).
        """
        space = self.context.seen_label_space()
        picks = torch.randperm(len(task.train))[: self.hparams.fisher_samples]
        data = task.train.subset(picks)
        estimates = self.squared_gradients(data, space)
        for index, (estimate, (_, parameter)) in enumerate(zip(estimates, self.tracked)):
            fisher = getattr(self, f"fisher_{index}")
            fisher.mul_(self.hparams.gamma).add_(estimate / max(len(data), 1))
            getattr(self, f"anchor_{index}").copy_(parameter.detach())
        self.tasks_consolidated += 1

    def squared_gradients(self, data, space: torch.Tensor) -> list[torch.Tensor]:
        """Per tracked parameter, the sum over ``data``'s samples of the squared gradient of each
        sample's own cross-entropy over ``space`` (what a loop of one-sample backward passes adds up).

        The frozen computation is done for a chunk of samples at once, without gradients: the
        embeddings of towers the method never changes, and the token states entering the first
        changed block (the prefix cache's, or the frozen blocks run here); only what follows runs
        per sample, under ``vmap`` of ``grad``, for as many samples as 256 MB of gradients hold.
        """
        encoder = self.encoder
        names = [name for name, _ in self.tracked]
        parameters = {name: p.detach() for name, p in self.tracked}
        totals = [torch.zeros_like(p) for _, p in self.tracked]
        per_sample_bytes = 4 * sum(p.numel() for p in parameters.values())
        chunk = max(1, min(self.context.config.train.eval_batch_size, (256 << 20) // per_sample_bytes))

        for batch in iterate_task_batches(data, chunk, space.device):
            states, tokens, text_ids, fixed = {}, {}, {}, {}
            with torch.no_grad():
                for modality, x in batch.inputs.items():
                    if self.frozen_weights(tower_of(modality)):  # no tracked parameter in this tower
                        states[modality], fixed[modality] = None, encoder.encode(modality, x).float()
                        continue
                    state = encoder.tower_input(modality, x)
                    states[modality] = state
                    tokens[modality] = state.tokens.reshape(len(x), -1, *state.tokens.shape[1:])
                    text_ids[modality] = state.text_ids if state.text_ids is not None else x

            def sample_loss(values, tokens, text_ids, fixed, target):
                embeddings = {}
                with _reparametrize_module(self, dict(zip(names, values))):
                    for modality, state in states.items():
                        if state is None:
                            embeddings[modality] = fixed[modality].unsqueeze(0)
                            continue
                        ids = text_ids[modality].unsqueeze(0) if state.text_ids is not None else None
                        one = replace(state, tokens=tokens[modality], text_ids=ids)
                        embeddings[modality] = encoder.tower_output(encoder.run_blocks(one))
                    logits = self.head(fuse(embeddings), space)
                return F.cross_entropy(logits, target.unsqueeze(0))

            with warnings.catch_warnings():  # attention has no batching rule: vmap loops over it, and says so
                warnings.filterwarnings("ignore", message="There is a performance drop")
                gradients = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0, 0))(
                    tuple(parameters.values()), tokens, text_ids, fixed, targets_in(space, batch.labels))
            for total, gradient in zip(totals, gradients):
                total += (gradient**2).sum(dim=0)
        return totals

