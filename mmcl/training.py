"""What :func:`mmcl.engine.train_task` trains a task with: its data (:func:`training_data`), the
optimizer (:func:`make_optimizer`) and one optimizer step (:func:`train_step`), which ``mmcl bench``
also times phase by phase.
"""
from __future__ import annotations

import time

import torch

from mmcl.config import Config
from mmcl.data.dataset import MultiModalDataset, concatenate
from mmcl.data.stream import Task
from mmcl.methods.base import Method
from mmcl.runtime import autocast_for


def training_data(method: Method, tasks: list[Task], index: int) -> list[MultiModalDataset]:
    """The data of task ``index``; for joint training, all seen data grouped by modality set."""
    if not method.trains_on_all_seen_data:
        return [tasks[index].train]
    groups: dict[tuple[str, ...], list[MultiModalDataset]] = {}
    for task in tasks[: index + 1]:
        groups.setdefault(task.train.modalities, []).append(task.train)
    return [concatenate(group) for group in groups.values()]


def make_optimizer(method: Method, config: Config) -> torch.optim.Optimizer:
    groups = [g for g in method.optimizer_parameter_groups() if g["params"]]
    if not groups:
        raise RuntimeError(f"method {method.name!r} trains but has no trainable parameters")
    train = config.train
    # The shared ``lr_scale`` hyper-parameter multiplies every rate: train.lr and the rates a
    # method sets on its own groups (which keep their ratios to each other).
    scale = getattr(method.hparams, "lr_scale", 1.0)
    groups = [{**g, "lr": g["lr"] * scale} if "lr" in g else g for g in groups]
    lr = train.lr * scale
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay)


def train_step(method: Method, batch, task: Task, optimizer: torch.optim.Optimizer, config: Config,
               device: torch.device, phases: dict | None = None) -> tuple[torch.Tensor, dict]:
    """One optimizer step; returns the (detached) loss and the method's loss parts. ``phases``
    (``mmcl bench``): adds the seconds of the forward pass, the backward pass and the optimizer
    step to its keys ``forward``, ``backward``, ``optimizer`` (synchronizing a GPU between them)."""
    clock = _PhaseClock(phases, device)
    with autocast_for(config, device):
        output = method.training_loss(batch, task)
    loss, parts = output if isinstance(output, tuple) else (output, {})
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{method.name}: non-finite loss at task {task.index} ({parts})")
    clock.lap("forward")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clock.lap("backward")
    heads = method.class_heads()
    for head in heads:  # frozen head rows: no gradient, so no clipping share and no optimizer moments
        head.mask_gradient()
    if config.train.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.train.grad_clip)
    optimizer.step()
    for head in heads:  # ... and weight decay cannot move them either
        head.restore_frozen_rows()
    method.after_optimizer_step(task)
    clock.lap("optimizer")
    return loss.detach(), parts


class _PhaseClock:
    """Seconds between laps, added to ``phases[name]``; does nothing when ``phases`` is None."""

    def __init__(self, phases: dict | None, device: torch.device):
        self.phases, self.device = phases, device
        self.last = time.perf_counter() if phases is not None else 0.0

    def lap(self, name: str) -> None:
        if self.phases is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now
