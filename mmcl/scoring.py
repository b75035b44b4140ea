"""Correct predictions of a method on a task's evaluation data (``train.eval_split``: test, or
validation when tuning): by its own classifier (:func:`evaluate_task`, what
:func:`mmcl.engine.evaluate_stream` records), and by a nearest-class-mean classifier on its
representation (:func:`ncm_of_mode`, the probe of :func:`mmcl.engine.forgetting_decomposition`).
"""
from __future__ import annotations

import torch

from mmcl import forgetting
from mmcl.config import Config
from mmcl.data.stream import Task
from mmcl.methods.base import Method
from mmcl.runtime import autocast_for, eval_batch_size, pins_memory


@torch.no_grad()
def evaluate_task(method: Method, task: Task, label_space: list[int], modality_known: bool, config: Config,
                  device: torch.device, kept: list | None = None) -> tuple[int, int]:
    """(correct, total) of ``method`` on ``task``'s evaluation data (``train.eval_split``: test, or
    validation when tuning) over ``label_space``. With a list ``kept``, each batch's representation
    features and labels are appended to it where the predictions were computed from them
    (:meth:`~mmcl.methods.base.Method.predict_with_features`), for the forgetting probe; if any batch
    has none, ``kept`` ends empty and the probe computes them itself."""
    space = torch.tensor(sorted(label_space), dtype=torch.long, device=device)
    data = task.val if config.train.eval_split == "val" else task.test
    correct = 0
    with autocast_for(config, device):
        for batch in data.batches(eval_batch_size(config, method, device, data)):
            batch = batch.to(device, pin_memory=pins_memory(config, device))
            if kept is None:
                logits = method.predict(batch, space, modality_known=modality_known)
            else:
                logits, features = method.predict_with_features(batch, space, modality_known=modality_known)
                kept.append(None if features is None else (features.detach(), batch.labels))
            correct += int((space[logits.argmax(dim=-1)] == batch.labels).sum())
    if kept is not None and any(item is None for item in kept):
        kept.clear()
    return correct, len(data)


def ncm_of_mode(method: Method, seen_tasks: list[Task], classes: list[int], modality_known: bool,
                config: Config, device: torch.device, kept: list[list] | None = None) -> dict | None:
    """NCM correct counts and accuracies on ``seen_tasks``' evaluation data (see
    :func:`mmcl.engine.forgetting_decomposition`). ``kept[j]``: task j's evaluation features and labels,
    batch by batch, as the evaluation computed them (:func:`evaluate_task`); where empty or absent, the
    representation is computed here, the same bytes either way."""
    means = forgetting.ClassMeans()
    for task in seen_tasks:
        picks = forgetting.first_per_class(task.train.labels, config.runtime.forgetting_decomposition_per_class)
        size = eval_batch_size(config, method, device, task.train)
        for start in range(0, len(picks), size):
            batch = task.train.batch(picks[start:start + size]).to(device, pin_memory=pins_memory(config, device))
            features = method.representation(batch, modality_known=modality_known)
            if features is None:
                return None
            means.add(features, batch.labels)
    class_means = means.means(classes)
    row = {"ncm_accuracy": [], "ncm_correct": [], "count": []}
    for j, task in enumerate(seen_tasks):
        data = task.val if config.train.eval_split == "val" else task.test
        correct = 0
        for features, labels in (kept[j] if kept and kept[j] else _representations(method, data, modality_known,
                                                                                   config, device)):
            correct += forgetting.ncm_correct(features, labels, class_means, classes)
        row["ncm_accuracy"].append(100.0 * correct / len(data))
        row["ncm_correct"].append(correct)
        row["count"].append(len(data))
    return row


def _representations(method: Method, data, modality_known: bool, config: Config, device: torch.device):
    """(features, labels) of each evaluation batch of ``data``, by :meth:`~mmcl.methods.base.Method.representation`."""
    for batch in data.batches(eval_batch_size(config, method, device, data)):
        batch = batch.to(device, pin_memory=pins_memory(config, device))
        yield method.representation(batch, modality_known=modality_known), batch.labels
