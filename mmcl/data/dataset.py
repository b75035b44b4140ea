"""In-memory multi-modal datasets and batches.

A :class:`MultiModalDataset` holds N aligned samples: for each modality a tensor whose first
dimension is N (uint8 images ``[N, 3, S, S]``, videos ``[N, T, 3, S, S]``, tokens ``[N, L]``),
plus integer labels and domain indices. Batches are plain index gathers: no per-sample collate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch


@dataclass
class Batch:
    """One training or evaluation batch; ``inputs`` maps modality -> tensor with batch first."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    domains: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    def to(self, device: torch.device | str, pin_memory: bool = False) -> "Batch":
        """On ``device``; ``pin_memory``: through page-locked memory, so the copy to a GPU is asynchronous."""
        inputs = {k: v.pin_memory() if pin_memory else v for k, v in self.inputs.items()}
        return Batch({k: v.to(device, non_blocking=True) for k, v in inputs.items()},
                     self.labels.to(device), self.domains.to(device))


@dataclass
class MultiModalDataset:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    domains: torch.Tensor
    class_names: list[str]
    domain_names: list[str]
    texts: dict[str, list[str]] = field(default_factory=dict)  # raw strings behind token tensors

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name, tensor in self.inputs.items():
            if len(tensor) != n:
                raise ValueError(f"modality {name!r} has {len(tensor)} samples, labels have {n}")
        if len(self.domains) != n:
            raise ValueError(f"domains have {len(self.domains)} entries, labels have {n}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    def subset(self, indices: torch.Tensor, modalities: list[str] | tuple[str, ...] | None = None) -> "MultiModalDataset":
        """Samples ``indices`` restricted to ``modalities`` (all when None)."""
        keep = list(modalities) if modalities is not None else list(self.inputs)
        missing = [m for m in keep if m not in self.inputs]
        if missing:
            raise KeyError(f"dataset has no modality {missing}; it has {list(self.inputs)}")
        index_list = indices.tolist()
        return MultiModalDataset(
            {m: self.inputs[m][indices] for m in keep}, self.labels[indices], self.domains[indices],
            self.class_names, self.domain_names,
            {m: [self.texts[m][i] for i in index_list] for m in keep if m in self.texts},
        )

    def relabel(self, mapping: torch.Tensor, class_names: list[str]) -> "MultiModalDataset":
        """Map labels through ``mapping[old] = new`` (the run's class order)."""
        return MultiModalDataset(self.inputs, mapping[self.labels], self.domains, class_names,
                                 self.domain_names, self.texts)

    def batch(self, indices: torch.Tensor) -> Batch:
        return Batch({m: t[indices] for m, t in self.inputs.items()}, self.labels[indices], self.domains[indices])

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[Batch]:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start:start + batch_size])

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)


def concatenate(datasets: list[MultiModalDataset]) -> MultiModalDataset:
    """Concatenate datasets that share modalities (joint training over seen tasks)."""
    if not datasets:
        raise ValueError("nothing to concatenate")
    modalities = datasets[0].modalities
    if any(d.modalities != modalities for d in datasets):
        raise ValueError("datasets with different modalities cannot be concatenated; group them instead")
    return MultiModalDataset(
        {m: torch.cat([d.inputs[m] for d in datasets]) for m in modalities},
        torch.cat([d.labels for d in datasets]), torch.cat([d.domains for d in datasets]),
        datasets[0].class_names, datasets[0].domain_names,
        {m: sum((d.texts[m] for d in datasets), []) for m in datasets[0].texts},
    )
