"""What :func:`mmcl.engine.train_task` trains a task with: its data (:func:`training_data`), the
optimizer (:func:`make_optimizer`) and one optimizer step (:func:`train_step`): a forward, a
backward and an optimizer phase, which ``mmcl bench`` also calls one by one to time them.
"""
from __future__ import annotations

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
               device: torch.device) -> tuple[torch.Tensor, dict]:
    """One optimizer step: :data:`STEP_PHASES` in order. Returns the (detached) loss and the
    method's loss parts."""
    loss, parts = forward_phase(method, batch, task, config, device)
    backward_phase(loss, optimizer)
    optimizer_phase(method, task, optimizer, config)
    return loss.detach(), parts


def forward_phase(method: Method, batch, task: Task, config: Config, device: torch.device
                  ) -> tuple[torch.Tensor, dict]:
    """The method's training loss on ``batch`` (frozen backbone included) and its parts."""
    with autocast_for(config, device):
        output = method.training_loss(batch, task)
    loss, parts = output if isinstance(output, tuple) else (output, {})
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{method.name}: non-finite loss at task {task.index} ({parts})")
    return loss, parts


def backward_phase(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()


def optimizer_phase(method: Method, task: Task, optimizer: torch.optim.Optimizer, config: Config) -> None:
    """Clip, step, then the method's after-step hook; frozen head rows neither step nor decay."""
    heads = method.class_heads()
    for head in heads:  # frozen head rows: no gradient, so no clipping share and no optimizer moments
        head.mask_gradient()
    if config.train.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.train.grad_clip)
    optimizer.step()
    for head in heads:  # ... and weight decay cannot move them either
        head.restore_frozen_rows()
    method.after_optimizer_step(task)


STEP_PHASES = ("forward", "backward", "optimizer")
"""The phases of :func:`train_step`, in order, as ``mmcl bench`` times them."""
