"""Experience replay with a class-balanced exemplar buffer (a literature-sized budget per class).

After each task, ``per_class`` training samples of each of its classes are drawn at random
(seeded by the run seed and the task) and kept; in a stream where a class recurs (domain-incremental)
each task's samples of the class are a group of their own, so every domain keeps exemplars. With a
total cap ``buffer_size`` every group keeps at most ``buffer_size // groups`` samples (the first ones
drawn; earlier groups shrink when new ones arrive). The default, 5 per class, is the exemplar budget
of the iCaRL baseline of UESTC-MMEA-CL. Every training step of later tasks adds a replay batch to
the current one. Samples of different modality sets (modality-incremental streams) are kept apart
and replayed group by group.
"""
from __future__ import annotations

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass

from mmcl.data.dataset import Batch, MultiModalDataset
from mmcl.methods.base import MethodConfig, TextAnchoredMethod, register

Item = tuple[dict[str, torch.Tensor], int, int]  # (inputs per modality, label, domain)


class ExemplarBuffer:
    """Class-balanced exemplars, on the CPU: group ``(class, task)`` -> its kept samples, in draw order."""

    def __init__(self, per_class: int, capacity: int | None = None):
        self.per_class, self.capacity = per_class, capacity
        self.groups: dict[tuple[int, int], list[Item]] = {}

    @property
    def items(self) -> list[Item]:
        return [item for group in self.groups.values() for item in group]

    def __len__(self) -> int:
        return sum(len(group) for group in self.groups.values())

    def quota(self, groups: int) -> int:
        """Samples kept per group when ``groups`` groups share the buffer."""
        return self.per_class if self.capacity is None else min(self.per_class, self.capacity // max(groups, 1))

    def add_task(self, dataset: MultiModalDataset, task_index: int, generator: torch.Generator) -> None:
        """Draw each class's exemplars of one task's training data, then trim every group to the quota."""
        labels = dataset.labels
        new = sorted(set(labels.tolist()))
        quota = self.quota(len(self.groups) + len(new))
        for label in new:
            candidates = torch.nonzero(labels == label).flatten()
            picks = candidates[torch.randperm(len(candidates), generator=generator)[:quota]].tolist()
            self.groups[(label, task_index)] = [
                ({m: x[i].detach().cpu().clone() for m, x in dataset.inputs.items()}, int(labels[i]), int(dataset.domains[i]))
                for i in picks]
        for key in self.groups:
            self.groups[key] = self.groups[key][:quota]

    def counts(self) -> dict[str, int]:
        """Kept samples per class (over its groups), keys as strings (JSON)."""
        counts: dict[str, int] = {}
        for (label, _), group in sorted(self.groups.items()):
            counts[str(label)] = counts.get(str(label), 0) + len(group)
        return counts

    def sample(self, size: int, generator: torch.Generator) -> list[Batch]:
        """A random replay batch, split into groups that share a modality set."""
        items = self.items
        if not items:
            return []
        picks = torch.randperm(len(items), generator=generator)[:size].tolist()
        groups: dict[tuple[str, ...], list] = {}
        for index in picks:
            groups.setdefault(tuple(items[index][0]), []).append(items[index])
        return [Batch({m: torch.stack([it[0][m] for it in chosen]) for m in modalities},
                      torch.tensor([it[1] for it in chosen]), torch.tensor([it[2] for it in chosen]))
                for modalities, chosen in groups.items()]

    def state(self) -> dict:
        return {"per_class": self.per_class, "capacity": self.capacity, "groups": self.groups}

    def load(self, state: dict) -> None:
        self.per_class, self.capacity, self.groups = state["per_class"], state["capacity"], state["groups"]


@register
class Replay(TextAnchoredMethod):
    name = "replay"
    family = "rehearsal"
    tuning_grid = {"lr_scale": [0.3, 1.0, 3.0], "trainable_blocks": [0, 1]}
    description = "experience replay, class-balanced exemplars (5 per class by default)"
    ablations = {"one-per-class": {"per_class": 1}, "twenty-per-class": {"per_class": 20}}

    @dataclass(config={"extra": "forbid"})
    class Config(MethodConfig):
        per_class: int = Field(5, ge=0)  # exemplars kept per class (per class and task where classes recur)
        buffer_size: int | None = Field(None, ge=0)  # optional cap on the total (None: per_class decides)
        replay_batch_size: int | None = Field(None, ge=1)  # default: the training batch size

    def __init__(self, encoder, context, hparams):
        super().__init__(encoder, context, hparams)
        self.buffer = ExemplarBuffer(hparams.per_class, hparams.buffer_size)
        self.generator = torch.Generator()

    def begin_task(self, task):
        super().begin_task(task)
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
        # Its own generator, so that the exemplars depend on the seed and the task only.
        generator = torch.Generator().manual_seed(self.context.config.seed * 1000 + 500 + task.index)
        self.buffer.add_task(task.train, task.index, generator)

    def run_record(self) -> dict:
        """The buffer after the last task: per class, in total, and as a share of the training data."""
        seen = sum(len(task.train) for task in self.context.tasks)
        return {"buffer": {"per_class": self.hparams.per_class, "buffer_size": self.hparams.buffer_size,
                           "size": len(self.buffer), "per_class_kept": self.buffer.counts(),
                           "training_samples": seen, "share_of_training_data": len(self.buffer) / max(seen, 1)}}

    def get_extra_state(self):
        return {"buffer": self.buffer.state()}

    def set_extra_state(self, state):
        self.buffer.load(state["buffer"])
