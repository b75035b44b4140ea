"""Where and how a run computes: its device and torch threads, autocast, page-locked batches, the
compiled training loss and the evaluation batch size (the ``runtime`` and ``model.precision``
settings), and the global random generators (seeded per task, or left untouched by a diagnostic).
"""
from __future__ import annotations

import random
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch

from mmcl.config import Config, ConfigError
from mmcl.seeding import derived_seed

if TYPE_CHECKING:  # annotations only
    from mmcl.data.dataset import MultiModalDataset
    from mmcl.methods.base import Method


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device: {name!r} requested but CUDA is not available")
    return device


def run_threads(config: Config, device: torch.device) -> int:
    """The torch intra-op threads of one run: ``runtime.num_threads``, else 1 on CPU and torch's
    default on GPU. One thread on CPU whatever the executor: a reduction split over other thread
    counts rounds differently in the last bits (and can flip an argmax tie), so a run's numbers
    would depend on where it ran; several single-threaded runs at once (the pool executor) are
    also faster than one multi-threaded run at a time (docs/performance.md)."""
    if config.runtime.num_threads:
        return config.runtime.num_threads
    return torch.get_num_threads() if device.type == "cuda" else 1


def autocast_for(config: Config, device: torch.device):
    """bf16 autocast on GPU (unless ``model.precision: fp32``); full precision on CPU."""
    if device.type == "cuda" and config.model.precision in ("auto", "bf16"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def seed_everything(seed: int, task: int = 0) -> None:
    value = derived_seed(seed, "task", task)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def eval_batch_size(config: Config, method: Method, device: torch.device, data: MultiModalDataset) -> int:
    """``runtime.eval_batch_size``; "auto": ``train.eval_batch_size`` on CPU, and on a GPU as many
    samples as a quarter of the free memory holds (at least ``train.eval_batch_size``). Exact
    either way: evaluation has no batch statistics."""
    size = config.runtime.eval_batch_size
    if size != "auto":
        return int(size)
    if device.type != "cuda" or not len(data):
        return config.train.eval_batch_size
    free, _ = torch.cuda.mem_get_info(device)
    per_image = method.encoder.eval_bytes_per_image()
    frames = max((t.shape[1] for m, t in data.inputs.items() if m == "video"), default=1)
    return int(min(len(data), max(config.train.eval_batch_size, free // 4 // (per_image * frames))))


def compile_method(method: Method, config: Config) -> Method:
    """With ``runtime.compile``: the method's training loss through ``torch.compile`` (backend
    ``runtime.compile_backend``); the method itself otherwise. Numbers as without (up to the
    backend's float rounding): ``runtime`` does not change a run's identity."""
    if config.runtime.compile:
        method.training_loss = torch.compile(method.training_loss, backend=config.runtime.compile_backend)
    return method


def pins_memory(config: Config, device: torch.device) -> bool:
    """Whether batches go through page-locked memory: ``runtime.pin_memory``, else on for CUDA."""
    pin = config.runtime.pin_memory
    return device.type == "cuda" if pin is None else bool(pin and device.type == "cuda")


class Untouched:
    """``with Untouched(method, device):`` the block leaves no trace on the run: every module's
    train/eval flag and the global random generators (python, numpy, torch, CUDA) are put back as
    they were, and gradients are off inside it."""

    def __init__(self, method: Method, device: torch.device):
        self.method, self.device = method, device

    def __enter__(self):
        self.modes = [(module, module.training) for module in self.method.modules()]
        self.random = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                       torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None)
        self.grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        return self

    def __exit__(self, *exc):
        torch.set_grad_enabled(self.grad)
        python, numpy_state, torch_state, cuda_states = self.random
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        for module, training in self.modes:
            module.training = training


def probes_forgetting(config: Config, role: str | None) -> bool:
    """Whether a run of ``role`` (None: a method's defaults; "comparison"; "ablation") runs the
    forgetting decomposition's probe: ``runtime.forgetting_decomposition`` true or false, or "auto":
    every run but ablation variants, the runs the decomposition table reads
    (:func:`mmcl.results.decomposition_runs`)."""
    setting = config.runtime.forgetting_decomposition
    return role != "ablation" if setting == "auto" else bool(setting)
