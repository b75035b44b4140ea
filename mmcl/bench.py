"""Training-step throughput and memory of a method, beside the frozen forward pass as the floor.

``mmcl bench --method finetune --profile tiny`` builds the run as the engine would, enters the
scenario's second task (so methods with teachers, buffers or penalties do their full work), and
times optimizer steps at the profile's batch size. The floor is the forward pass of the frozen
backbone alone on the same batches: no method can step faster than that.
"""
from __future__ import annotations

import resource
import time

import torch

from mmcl.config import Config
from mmcl.engine import (
    autocast_for,
    build_run,
    make_optimizer,
    resolve_device,
    train_step,
    variant_overrides,
    with_method_overrides,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_method(config: Config, method: str, scenario: str = "class_incremental", steps: int = 20,
                 warmup: int = 3, seed: int = 0, variant: str | None = None) -> dict:
    """Samples/s and ms/step of training steps and of the frozen forward pass; peak memory.

    ``variant``: a named ablation or comparison of the method (``Method.ablations``,
    ``Method.comparisons``), e.g. the same trainable
    parameters without the method's extra machinery, to measure what that machinery costs.
    """
    if variant:
        config = with_method_overrides(config, method, variant_overrides(method, variant))
    device = resolve_device(config.runtime.device)
    if config.runtime.num_threads:
        torch.set_num_threads(config.runtime.num_threads)
    method_obj, stream = build_run(config, scenario, method, seed, device=device)
    tasks = method_obj.context.tasks  # training views, as the engine passes them
    for task in tasks[: min(1, len(tasks) - 1) + 1]:  # begin the second task (or the only one)
        method_obj.context.seen_classes = sorted({c for t in tasks[: task.index + 1] for c in t.classes})
        method_obj.begin_task(task)
        if task.index == 0 and len(tasks) > 1:
            method_obj.end_task(task)
    task = tasks[min(1, len(tasks) - 1)]
    size = config.train.batch_size
    generator = torch.Generator().manual_seed(seed)
    batches = [b.to(device) for b in task.train.batches(size, shuffle=True, generator=generator, drop_last=True)]
    if not batches:
        raise ValueError(f"task {task.index} has {len(task.train)} samples, fewer than one batch of {size}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def timed(step_fn) -> float:
        for i in range(warmup):
            step_fn(batches[i % len(batches)])
        _sync(device)
        started = time.perf_counter()
        for i in range(steps):
            step_fn(batches[i % len(batches)])
        _sync(device)
        return (time.perf_counter() - started) / steps

    result = {"method": method, "variant": variant, "profile": config.profile, "scenario": scenario,
              "device": str(device), "batch_size": size, "steps": steps, "modalities": list(task.modalities)}
    if method_obj.trains:
        optimizer = make_optimizer(method_obj, config)
        method_obj.train()
        method_obj.encoder.eval()
        seconds = timed(lambda b: train_step(method_obj, b, task, optimizer, config, device))
        result |= {"train_ms_per_step": 1000 * seconds, "train_samples_per_second": size / seconds}
    method_obj.eval()

    @torch.no_grad()
    def frozen_forward(batch):
        with autocast_for(config, device):
            for modality, x in batch.inputs.items():
                method_obj.encoder.encode(modality, x)

    seconds = timed(frozen_forward)
    result |= {"forward_ms_per_step": 1000 * seconds, "forward_samples_per_second": size / seconds}
    if "train_ms_per_step" in result:
        result["train_over_forward"] = result["train_ms_per_step"] / result["forward_ms_per_step"]
    result["trainable_parameters"] = sum(p.numel() for p in method_obj.parameters() if p.requires_grad)
    if device.type == "cuda":
        result["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["peak_process_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def format_bench(result: dict) -> str:
    name = f"{result['method']}~{result['variant']}" if result.get("variant") else result["method"]
    lines = [f"mmcl bench: {name} on {result['profile']} / {result['scenario']} "
             f"({', '.join(result['modalities'])}), device {result['device']}, batch {result['batch_size']}, "
             f"{result['steps']} timed steps"]
    if "train_samples_per_second" in result:
        lines.append(f"  training step      {result['train_samples_per_second']:10.1f} samples/s  "
                     f"{result['train_ms_per_step']:8.2f} ms/step")
    lines.append(f"  frozen forward     {result['forward_samples_per_second']:10.1f} samples/s  "
                 f"{result['forward_ms_per_step']:8.2f} ms/step   (floor)")
    if "train_over_forward" in result:
        lines.append(f"  step / floor       {result['train_over_forward']:10.2f} x")
    lines.append(f"  trainable params   {result['trainable_parameters']:10d}")
    if "peak_gpu_memory_mib" in result:
        lines.append(f"  peak GPU memory    {result['peak_gpu_memory_mib']:10.1f} MiB")
    lines.append(f"  peak process RSS   {result['peak_process_memory_mib']:10.1f} MiB")
    return "\n".join(lines)
