"""Experience replay with a reservoir buffer (Vitter, 1985; Chaudhry et al., 2019).

After each task, its training samples pass through the reservoir once, so the buffer keeps at
most ``buffer_size`` samples and every sample seen so far had the same chance to be kept. Every
training step of later tasks adds a replay batch to the current one. Samples of different modality
sets (modality-incremental streams) are kept apart and replayed group by group.
"""
from __future__ import annotations

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.data.dataset import Batch
from mmcl.methods.base import MethodConfig, TextAnchoredMethod, register


class ReservoirBuffer:
    """Fixed-size reservoir of samples (inputs per modality, label, domain), on the CPU."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.seen = 0
        self.items: list[tuple[dict[str, torch.Tensor], int, int]] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, batch: Batch, generator: torch.Generator) -> None:
        for i in range(len(batch)):
            item = ({m: x[i].detach().cpu() for m, x in batch.inputs.items()}, int(batch.labels[i]), int(batch.domains[i]))
            if len(self.items) < self.capacity:
                self.items.append(item)
            else:
                slot = int(torch.randint(self.seen + 1, (1,), generator=generator))
                if slot < self.capacity:
                    self.items[slot] = item
            self.seen += 1

    def sample(self, size: int, generator: torch.Generator) -> list[Batch]:
        """A random replay batch, split into groups that share a modality set."""
        if not self.items:
            return []
        picks = torch.randperm(len(self.items), generator=generator)[:size].tolist()
        groups: dict[tuple[str, ...], list] = {}
        for index in picks:
            groups.setdefault(tuple(self.items[index][0]), []).append(self.items[index])
        return [Batch({m: torch.stack([it[0][m] for it in items]) for m in modalities},
                      torch.tensor([it[1] for it in items]), torch.tensor([it[2] for it in items]))
                for modalities, items in groups.items()]

    def state(self) -> dict:
        return {"capacity": self.capacity, "seen": self.seen, "items": self.items}

    def load(self, state: dict) -> None:
        self.capacity, self.seen, self.items = state["capacity"], state["seen"], state["items"]


@register
class Replay(TextAnchoredMethod):
    name = "replay"
    family = "rehearsal"
    tuning_grid = {"lr_scale": [0.3, 1.0, 3.0], "trainable_blocks": [0, 1]}
    description = "experience replay, reservoir buffer"
    ablations = {"buffer-quarter": {"buffer_size": 50}}

    @dataclass(config={"extra": "forbid"})
    class Config(MethodConfig):
        buffer_size: int = Field(200, ge=0)
        replay_batch_size: int | None = Field(None, ge=1)  # default: the training batch size

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        self.buffer = ReservoirBuffer(hparams.buffer_size)
        self.generator = torch.Generator()

    def begin_task(self, task):
        # Seeded per task, so a resumed run draws the same replay batches as an uninterrupted one.
        self.generator.manual_seed(self.context.config.seed * 1000 + task.index)

    def training_loss(self, batch, task):
        loss, _, _ = self.classification_loss(batch)
        total, count = loss * len(batch), len(batch)
        size = self.hparams.replay_batch_size or self.context.config.train.batch_size
        for replayed in self.buffer.sample(size, self.generator):
            replay_loss, _, _ = self.classification_loss(replayed.to(batch.labels.device))
            total, count = total + replay_loss * len(replayed), count + len(replayed)
        return total / count, {"ce": loss.item()}

    def end_task(self, task):
        for batch in task.train.batches(256):
            self.buffer.add(batch, self.generator)

    def get_extra_state(self):
        return {"buffer": self.buffer.state()}

    def set_extra_state(self, state):
        self.buffer.load(state["buffer"])
