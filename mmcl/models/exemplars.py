"""Exemplar memories shared by the rehearsal methods (replay, iCaRL, DER++, AV-CIL).

:class:`ExemplarBuffer` keeps a literature-sized number of samples per class (and per task where a
class recurs); which samples a class keeps is the method's choice (``rank``: random for replay,
herding for iCaRL). :class:`ReservoirBuffer` keeps a uniform sample of the stream (reservoir
sampling, Vitter's algorithm R) with a payload per sample (DER++: the logits at storage time).
Both hold samples on the CPU and hand them back as :class:`~mmcl.data.dataset.Batch` groups that
share a modality set (modality-incremental streams mix modality sets). :class:`BufferHooks` gives a
method that holds one its checkpoint and run-record hooks.
"""
from __future__ import annotations

from typing import Callable

import torch

from mmcl.data.dataset import Batch, MultiModalDataset

Item = tuple[dict[str, torch.Tensor], int, int]  # (inputs per modality, label, domain)


def stack_items(items: list[Item]) -> list[tuple[list[int], Batch]]:
    """``items`` as batches that share a modality set: (positions in ``items``, batch) per set."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for position, item in enumerate(items):
        groups.setdefault(tuple(item[0]), []).append(position)
    return [(positions, Batch({m: torch.stack([items[p][0][m] for p in positions]) for m in modalities},
                              torch.tensor([items[p][1] for p in positions]),
                              torch.tensor([items[p][2] for p in positions])))
            for modalities, positions in groups.items()]


def dataset_item(dataset: MultiModalDataset, index: int) -> Item:
    return ({m: x[index].detach().cpu().clone() for m, x in dataset.inputs.items()}, int(dataset.labels[index]),
            int(dataset.domains[index]))


class ExemplarBuffer:
    """Class-balanced exemplars, on the CPU: group ``(class, task)`` -> its kept samples, in rank order.

    ``rank(candidates, generator)`` orders a class's candidate indices (into the task's training
    data) by priority; a group keeps the first ``quota`` of them, so shrinking a group when new
    groups arrive drops its lowest-priority samples (iCaRL's ReduceExemplarSet). Default: random.
    """

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

    def add_task(self, dataset: MultiModalDataset, task_index: int, generator: torch.Generator,
                 rank: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> None:
        """Keep each class's top-ranked samples of one task's training data, then trim every group
        to the quota. ``rank(candidates, quota)`` returns (at least ``quota`` of) the candidates in
        priority order; by default a random permutation drawn from ``generator``."""
        labels = dataset.labels
        new = sorted(set(labels.tolist()))
        quota = self.quota(len(self.groups) + len(new))
        for label in new:
            candidates = torch.nonzero(labels == label).flatten()
            if rank is None:
                ordered = candidates[torch.randperm(len(candidates), generator=generator)]
            else:
                ordered = rank(candidates, quota)
            self.groups[(label, task_index)] = [dataset_item(dataset, i) for i in ordered[:quota].tolist()]
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
        return [batch for _, batch in stack_items([items[i] for i in picks])]

    def state(self) -> dict:
        return {"per_class": self.per_class, "capacity": self.capacity, "groups": self.groups}

    def load(self, state: dict) -> None:
        self.per_class, self.capacity, self.groups = state["per_class"], state["capacity"], state["groups"]


def buffer_record(buffer, tasks, per_class: int, buffer_size: int | None, selection: str | None = None) -> dict:
    """``metrics.json``'s ``buffer`` entry of a rehearsal method: the budget, what the buffer holds
    after the last task (in total and per class) and its share of the training data of ``tasks``."""
    seen = sum(len(task.train) for task in tasks)
    record = {"per_class": per_class, "buffer_size": buffer_size, "size": len(buffer),
              "per_class_kept": buffer.counts()}
    if selection:
        record["selection"] = selection
    return {"buffer": record | {"training_samples": seen, "share_of_training_data": len(buffer) / max(seen, 1)}}


class BufferHooks:
    """The hooks of a rehearsal method (a :class:`~mmcl.methods.base.Method` mixin, listed before its
    base) whose memory is ``self.buffer`` (an :class:`ExemplarBuffer` or a :class:`ReservoirBuffer`)
    and whose hyper-parameters have ``per_class``: checkpoints keep the buffer under ``"buffer"``;
    ``metrics.json`` reports it (:func:`buffer_record`, the budget being the buffer's capacity),
    with ``buffer_selection``, how its samples are chosen, where that is set."""

    buffer_selection: str | None = None

    def run_record(self) -> dict:
        """The buffer after the last task: per class, in total, and as a share of the training data."""
        return buffer_record(self.buffer, self.context.tasks, self.hparams.per_class, self.buffer.capacity,
                             self.buffer_selection)

    def get_extra_state(self):
        return {"buffer": self.buffer.state()}

    def set_extra_state(self, state):
        self.buffer.load(state["buffer"])


def reservoir_slot(seen: int, capacity: int, generator: torch.Generator) -> int | None:
    """Algorithm R: where the stream's sample number ``seen`` (0-based) goes in a reservoir of
    ``capacity`` slots, or None (dropped). Every sample of a stream of N ends up kept with
    probability ``capacity / N``."""
    if seen < capacity:
        return seen
    slot = int(torch.randint(0, seen + 1, (1,), generator=generator))
    return slot if slot < capacity else None


class ReservoirBuffer:
    """A uniform sample of the training stream with a payload tensor per sample (reservoir sampling)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.seen = 0
        self.items: list[Item] = []
        self.payloads: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, batch: Batch, payloads: torch.Tensor, generator: torch.Generator) -> None:
        for i in range(len(batch)):
            slot = reservoir_slot(self.seen, self.capacity, generator)
            self.seen += 1
            if slot is None:
                continue
            item = ({m: x[i].detach().cpu().clone() for m, x in batch.inputs.items()}, int(batch.labels[i]),
                    int(batch.domains[i]))
            payload = payloads[i].detach().float().cpu().clone()
            if slot == len(self.items):
                self.items.append(item), self.payloads.append(payload)
            else:
                self.items[slot], self.payloads[slot] = item, payload

    def sample(self, size: int, generator: torch.Generator) -> list[tuple[Batch, torch.Tensor]]:
        """A random batch (without replacement) as (batch, payloads) groups sharing a modality set."""
        if not self.items:
            return []
        picks = torch.randperm(len(self.items), generator=generator)[:size].tolist()
        chosen = [self.items[i] for i in picks]
        return [(batch, torch.stack([self.payloads[picks[p]] for p in positions]))
                for positions, batch in stack_items(chosen)]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, label, _ in self.items:
            counts[str(label)] = counts.get(str(label), 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: int(kv[0])))

    def state(self) -> dict:
        return {"capacity": self.capacity, "seen": self.seen, "items": self.items, "payloads": self.payloads}

    def load(self, state: dict) -> None:
        self.capacity, self.seen, self.items, self.payloads = (state["capacity"], state["seen"], state["items"],
                                                               state["payloads"])
