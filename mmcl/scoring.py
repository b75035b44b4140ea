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
                  device: torch.device) -> tuple[int, int]:
    """(correct, total) of ``method`` on ``task``'s evaluation data (``train.eval_split``: test, or
    validation when tuning) over ``label_space``."""
    space = torch.tensor(sorted(label_space), dtype=torch.long, device=device)
    data = task.val if config.train.eval_split == "val" else task.test
    correct = 0
    with autocast_for(config, device):
        for batch in data.batches(eval_batch_size(config, method, device, data)):
            batch = batch.to(device, pin_memory=pins_memory(config, device))
            logits = method.predict(batch, space, modality_known=modality_known)
            correct += int((space[logits.argmax(dim=-1)] == batch.labels).sum())
    return correct, len(data)


def ncm_of_mode(method: Method, seen_tasks: list[Task], classes: list[int], modality_known: bool,
                config: Config, device: torch.device) -> dict | None:
    """NCM correct counts and accuracies on ``seen_tasks``' evaluation data (see
    :func:`mmcl.engine.forgetting_decomposition`)."""
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
    for task in seen_tasks:
        data = task.val if config.train.eval_split == "val" else task.test
        correct = 0
        for batch in data.batches(eval_batch_size(config, method, device, data)):
            batch = batch.to(device, pin_memory=pins_memory(config, device))
            correct += forgetting.ncm_correct(method.representation(batch, modality_known=modality_known),
                                              batch.labels, class_means, classes)
        row["ncm_accuracy"].append(100.0 * correct / len(data))
        row["ncm_correct"].append(correct)
        row["count"].append(len(data))
    return row
