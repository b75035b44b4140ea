"""A scenario's stream of tasks: what :func:`mmcl.data.scenarios.build_stream` makes of a benchmark.

:class:`Task` is one step of the stream (the engine keeps it whole; a method sees its
:meth:`~Task.training_view`), :class:`Stream` the whole sequence with the orders it was drawn in.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mmcl.data.dataset import MultiModalDataset


@dataclass
class Task:
    """One step of a scenario's stream. ``classes`` are run label ids (positions in the class order).

    The engine keeps the whole task (``val`` and ``test`` are evaluation data); a method sees
    :meth:`training_view` only: its ``test`` and ``val`` are None.
    """

    index: int
    classes: list[int]
    modalities: list[str]
    train: MultiModalDataset
    test: MultiModalDataset | None
    domain: str | None = None
    name: str = ""
    val: MultiModalDataset | None = None  # validation data (carved from training data): tuning only

    def training_view(self) -> "Task":
        """This task without its evaluation data: what the method contract exposes."""
        return dataclasses.replace(self, test=None, val=None)

    @property
    def modality(self) -> str:
        """The task's single modality (modality-incremental streams)."""
        if len(self.modalities) != 1:
            raise ValueError(f"task {self.index} has modalities {self.modalities}, not one")
        return self.modalities[0]


@dataclass
class Stream:
    scenario: str
    benchmark: str
    tasks: list[Task]
    class_names: list[str]  # in run order: class_names[label]
    class_order: list[int]  # benchmark class index of each run label
    modality_order: list[str] | None = None
    domain_order: list[str] | None = None
    data_sha256: str | None = None  # the benchmark's content digest (Benchmark.digest), for the manifest

    def order_record(self) -> dict:
        return {"scenario": self.scenario, "benchmark": self.benchmark, "class_order": self.class_order,
                "class_names": self.class_names, "modality_order": self.modality_order,
                "domain_order": self.domain_order,
                "tasks": [{"index": t.index, "name": t.name, "classes": t.classes, "modalities": t.modalities,
                           "domain": t.domain, "train_size": len(t.train), "val_size": len(t.val), "test_size": len(t.test)}
                          for t in self.tasks]}
