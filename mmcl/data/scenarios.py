"""Scenarios: how a benchmark becomes a stream of tasks.

- ``class_incremental``: the classes, in a seed-drawn order, split into ``num_tasks`` equal
  groups; every task has all of the benchmark's modalities. Classes the benchmark groups (the
  embedded benchmark's twins, :meth:`Benchmark.class_groups`) stay in one task
  (:func:`grouped_class_order`), so no later class differs from an earlier one by a single cue.
- ``domain_incremental``: all classes in every task; task t is domain t, in the benchmark's order.
- ``modality_incremental`` (COMM): one modality per task, in a seed-drawn order; the classes, in a
  seed-drawn order (twins in one task, as above), split equally; a task's samples carry only its
  modality. When the data says
  which modality each class exists in (real streams: one dataset per modality), task m takes
  exactly the classes of modality m. A benchmark's ``modality_tasks`` gives a modality more than
  one task: the modality recurs (never twice in a row), each time with a new class group (real
  streams: the k-th task of a modality takes its k-th dataset's classes, ``class_sources``).

Labels are re-numbered to the run's class order (label k = the k-th class of the order), so that
task t of a class-incremental stream owns a contiguous block of labels.
"""
from __future__ import annotations

import numpy as np
import torch

from mmcl.config import SCENARIOS, ConfigError
from mmcl.data.benchmarks import Benchmark
from mmcl.data.dataset import MultiModalDataset
from mmcl.data.stream import Stream, Task


def class_order(num_classes: int, seed: int) -> list[int]:
    """The seed's class order (seed 0 included: every seed draws a permutation)."""
    return np.random.default_rng([seed, 7]).permutation(num_classes).tolist()


def grouped_class_order(groups: list[list[int]], num_tasks: int, seed: int, what: str = "classes") -> list[int]:
    """The seed's class order for ``num_tasks`` equal tasks that keeps every group in one task.

    The groups, in a seed-drawn order, go largest first to the task with the most room left (the
    first such task on a tie); then the tasks, and the classes within each, are put in a seed-drawn
    order. Every class is in exactly one group."""
    classes = sorted(c for group in groups for c in group)
    if classes != list(range(len(classes))):
        raise ValueError(f"{what}: the groups {groups} do not cover classes 0..{len(classes) - 1} once each")
    if len(classes) % num_tasks:
        raise ConfigError(f"{what}: {len(classes)} classes do not split evenly into {num_tasks} tasks")
    size = len(classes) // num_tasks
    rng = np.random.default_rng([seed, 7])
    drawn = sorted((groups[i] for i in rng.permutation(len(groups))), key=len, reverse=True)
    tasks: list[list[int]] = [[] for _ in range(num_tasks)]
    for group in drawn:
        task = max(range(num_tasks), key=lambda t: (size - len(tasks[t]), -t))
        if size - len(tasks[task]) < len(group):
            raise ConfigError(f"{what}: cannot keep groups of sizes {sorted(map(len, groups), reverse=True)} "
                              f"in one task each with {num_tasks} tasks of {size} classes")
        tasks[task] += group
    return [tasks[t][i] for t in rng.permutation(num_tasks) for i in rng.permutation(size)]


def modality_order(modalities: list[str], seed: int) -> list[str]:
    picks = np.random.default_rng([seed, 11]).permutation(len(modalities))
    return [modalities[i] for i in picks]


def modality_sequence(modalities: list[str], counts: dict[str, int], seed: int) -> list[str]:
    """The seed's order of a stream where modality ``m`` has ``counts.get(m, 1)`` tasks: the first
    seed-drawn permutation of the multiset (up to 1000 draws) in which no modality follows itself;
    with one task per modality it is :func:`modality_order`."""
    if all(counts.get(m, 1) == 1 for m in modalities):
        return modality_order(modalities, seed)
    items = [m for m in modalities for _ in range(counts.get(m, 1))]
    rng = np.random.default_rng([seed, 13])
    for _ in range(1000):
        order = [items[i] for i in rng.permutation(len(items))]
        if all(a != b for a, b in zip(order, order[1:])):
            return order
    raise ConfigError(f"modality_tasks {counts}: no order of {items} without a modality following itself")


def _split_evenly(items: list[int], parts: int, what: str) -> list[list[int]]:
    if parts > len(items):
        raise ConfigError(f"{what}: cannot split {len(items)} classes into {parts} tasks")
    if len(items) % parts:
        raise ConfigError(f"{what}: {len(items)} classes do not split evenly into {parts} tasks")
    size = len(items) // parts
    return [items[i * size:(i + 1) * size] for i in range(parts)]


def build_stream(scenario: str, benchmark: Benchmark, seed: int) -> Stream:
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}; known: {list(SCENARIOS)}")
    order = _run_class_order(scenario, benchmark, seed)
    names = [benchmark.class_names[i] for i in order]
    splits = _relabelled_splits(benchmark, order, names)
    labels = list(range(len(order)))
    modalities_in_order = domains_in_order = None
    if scenario == "class_incremental":
        tasks = _class_incremental_tasks(benchmark, labels, splits)
    elif scenario == "domain_incremental":
        tasks, domains_in_order = _domain_incremental_tasks(benchmark, labels, splits)
    else:
        tasks, modalities_in_order = _modality_incremental_tasks(benchmark, order, labels, splits, seed)
    _check_no_empty_split(tasks, benchmark, scenario)
    return Stream(scenario, benchmark.name, tasks, names, order, modalities_in_order, domains_in_order)


def _run_class_order(scenario: str, benchmark: Benchmark, seed: int) -> list[int]:
    """The benchmark class of each run label: a seed-drawn order, twins in one task where the
    classes split into equal tasks."""
    spec = benchmark.spec
    if scenario == "domain_incremental" or benchmark.class_modalities is not None:
        return class_order(len(benchmark.class_names), seed)  # every task has every class, or the data splits them
    # the classes split into equal tasks: twins stay in one
    num_tasks = spec.num_tasks if scenario == "class_incremental" else \
        sum(spec.modality_tasks.get(m, 1) for m in spec.modalities)
    return grouped_class_order(benchmark.class_groups(), num_tasks, seed, f"benchmarks.{benchmark.name}.num_tasks")


def _relabelled_splits(benchmark: Benchmark, order: list[int], names: list[str]
                       ) -> tuple[MultiModalDataset, MultiModalDataset, MultiModalDataset]:
    """(train, test, val) with labels re-numbered to ``order`` (label k = the k-th class of the order)."""
    mapping = torch.empty(len(order), dtype=torch.long)
    mapping[torch.tensor(order)] = torch.arange(len(order))
    train, test = benchmark.train.relabel(mapping, names), benchmark.test.relabel(mapping, names)
    if benchmark.val is None:
        raise ConfigError(f"benchmark {benchmark.name!r} has no validation split")
    return train, test, benchmark.val.relabel(mapping, names)


def _select(data: MultiModalDataset, classes: list[int], domain_index: int | None = None,
            modalities: list[str] | None = None) -> MultiModalDataset:
    """The samples of ``data`` of ``classes`` (and of domain ``domain_index``), with only ``modalities``."""
    keep = torch.isin(data.labels, torch.tensor(classes))
    if domain_index is not None:
        keep &= data.domains == domain_index
    return data.subset(torch.nonzero(keep).flatten(), modalities)


def _task(index: int, classes: list[int], modalities: list[str], splits: tuple, domain_index: int | None = None,
          only: list[str] | None = None, **fields) -> Task:
    """Task ``index`` of ``classes``: each of the (train, test, val) ``splits`` narrowed by :func:`_select`."""
    train, test, val = (_select(data, classes, domain_index, only) for data in splits)
    return Task(index, classes, modalities, train, test, val=val, **fields)


def _class_incremental_tasks(benchmark: Benchmark, labels: list[int], splits: tuple) -> list[Task]:
    spec = benchmark.spec
    groups = _split_evenly(labels, spec.num_tasks, f"benchmarks.{benchmark.name}.num_tasks")
    return [_task(index, classes, list(spec.modalities), splits, name=f"classes {classes[0]}-{classes[-1]}")
            for index, classes in enumerate(groups)]


def _domain_incremental_tasks(benchmark: Benchmark, labels: list[int], splits: tuple) -> tuple[list[Task], list[str]]:
    """(tasks, domain order): task t is domain t with every class."""
    spec = benchmark.spec
    if len(spec.domains) < 2:
        raise ConfigError(f"benchmarks.{benchmark.name}.domains: a domain-incremental stream needs at least "
                          f"two domains, got {spec.domains}")
    domains_in_order = list(spec.domains)
    tasks = [_task(index, labels, list(spec.modalities), splits, index, domain=domain, name=domain)
             for index, domain in enumerate(domains_in_order)]
    return tasks, domains_in_order


def _modality_incremental_tasks(benchmark: Benchmark, order: list[int], labels: list[int], splits: tuple,
                                seed: int) -> tuple[list[Task], list[str]]:
    """(tasks, modality order): one modality per task (a recurring one named "image 2", ...)."""
    _check_modality_stream(benchmark)
    spec = benchmark.spec
    modalities_in_order = modality_sequence(list(spec.modalities), spec.modality_tasks, seed)
    if benchmark.class_modalities is not None:
        groups = _classes_by_modality(benchmark, order, labels, modalities_in_order)
    else:
        groups = _split_evenly(labels, len(modalities_in_order), f"benchmarks.{benchmark.name}.num_classes")
    tasks = []
    for index, (modality, classes) in enumerate(zip(modalities_in_order, groups)):
        occurrence = modalities_in_order[:index + 1].count(modality)
        name = modality if occurrence == 1 else f"{modality} {occurrence}"
        tasks.append(_task(index, classes, [modality], splits, only=[modality], name=name))
    return tasks, modalities_in_order


def _check_modality_stream(benchmark: Benchmark) -> None:
    """ConfigError unless the spec makes a modality-incremental stream: two modalities or more,
    ``modality_tasks`` of those, one task per modality and recurrence."""
    spec = benchmark.spec
    if len(spec.modalities) < 2:
        raise ConfigError(f"benchmarks.{benchmark.name}.modalities: a modality-incremental stream needs at "
                          f"least two modalities, got {spec.modalities}")
    unknown = [m for m in spec.modality_tasks if m not in spec.modalities]
    if unknown:
        raise ConfigError(f"benchmarks.{benchmark.name}.modality_tasks: modalities {unknown} are not in "
                          f"modalities {spec.modalities}")
    expected = sum(spec.modality_tasks.get(m, 1) for m in spec.modalities)
    if spec.num_tasks != expected:
        raise ConfigError(f"benchmarks.{benchmark.name}.num_tasks: a modality-incremental stream has one task "
                          f"per modality and recurrence ({expected}), got {spec.num_tasks}")


def _classes_by_modality(benchmark: Benchmark, order: list[int], labels: list[int],
                         modalities_in_order: list[str]) -> list[list[int]]:
    """The run labels of each task where the data says which modality each class exists in: task m
    takes the classes of modality m (of its k-th dataset, for the k-th task of a recurring modality)."""
    owner = [benchmark.class_modalities[original] for original in order]  # per run label
    if len(set(modalities_in_order)) < len(modalities_in_order):  # recurring
        groups = _classes_by_dataset(benchmark, order, labels, owner, modalities_in_order)
    else:
        groups = [[label for label in labels if owner[label] == m] for m in modalities_in_order]
    empty = [m for m, group in zip(modalities_in_order, groups) if not group]
    if empty:
        raise ConfigError(f"benchmark {benchmark.name!r}: no class exists in modalities {empty}")
    return groups


def _classes_by_dataset(benchmark: Benchmark, order: list[int], labels: list[int], owner: list[str],
                        modalities_in_order: list[str]) -> list[list[int]]:
    """A recurring modality's tasks: the k-th task of a modality takes the classes of its k-th dataset."""
    spec = benchmark.spec
    sources = benchmark.class_sources or list(benchmark.class_modalities)
    source = [sources[original] for original in order]
    datasets = {m: list(dict.fromkeys(sources[c] for c in range(len(sources))
                                      if benchmark.class_modalities[c] == m)) for m in spec.modalities}
    short = {m: len(datasets[m]) for m in spec.modalities if len(datasets[m]) != spec.modality_tasks.get(m, 1)}
    if short:
        raise ConfigError(f"benchmarks.{benchmark.name}.modality_tasks: the prepared data has "
                          f"{short} datasets for these modalities, not {spec.modality_tasks}")
    return [[label for label in labels if owner[label] == m
             and source[label] == datasets[m][modalities_in_order[:k + 1].count(m) - 1]]
            for k, m in enumerate(modalities_in_order)]


def _check_no_empty_split(tasks: list[Task], benchmark: Benchmark, scenario: str) -> None:
    for task in tasks:  # an empty split would train on nothing or divide by zero when evaluated
        for split, data in (("train", task.train), ("val", task.val), ("test", task.test)):
            if len(data) == 0:
                fix = "data.val_fraction or data.train_per_class" if split == "val" else f"data.{split}_per_class"
                raise ConfigError(f"benchmark {benchmark.name!r}: task {task.index} ({task.name}) of the {scenario} "
                                  f"stream has no {split} samples; check the prepared data or {fix}")
