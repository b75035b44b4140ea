"""Training-step throughput and memory of a method, beside the frozen forward pass as the floor,
and where a step's time goes.

``mmcl bench --method finetune --profile tiny`` builds the run as the engine would, enters the
scenario's second task (so methods with teachers, buffers or penalties do their full work), and
times optimizer steps at the profile's batch size. The floor is the forward pass of the frozen
backbone alone on the same batches: no method can step faster than that. The step is split into
its forward pass (frozen backbone included; minus the floor: the trainable part's forward),
backward pass and optimizer step (the phases :func:`mmcl.training.train_step` is made of); beside it, data
handling (batching and the copy to the device) and evaluation (prediction on the task's test
data, per sample). Threads: as a run's (:func:`mmcl.runtime.run_threads`: one on CPU).

How close a step comes to the hardware: the matrix FLOPs of one training step and of the frozen
forward pass are counted (:func:`count_flops`: matrix products, convolutions and attention, forward
and backward; elementwise work is not counted), divided by their measured times, and set beside the
rate of one large matrix product in the step's precision measured on the same device
(:func:`matmul_rate`) and, when given, a stated peak (``--peak-tflops``, e.g. a GPU's datasheet
bf16 figure).
"""
from __future__ import annotations

import resource
import time

import torch

from mmcl.config import Config
from mmcl.data.dataset import Batch, MultiModalDataset
from mmcl.data.stream import Task
from mmcl.engine import build_run
from mmcl.hparams import variant_overrides, with_method_overrides
from mmcl.runtime import autocast_for, pins_memory, resolve_device, run_threads
from mmcl.training import STEP_PHASES, backward_phase, forward_phase, make_optimizer, optimizer_phase, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count  # only when FLOPs are counted
    return sdpa_flop_count(query, key, value)


def _attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count  # only when FLOPs are counted
    return sdpa_backward_flop_count(grad_out, query, key, value)


def count_flops(fn) -> int:
    """Matrix FLOPs (a multiply-add is two) of calling ``fn()``: ``torch.utils.flop_counter``'s
    matrix products, convolutions and attention kernels, plus the CPU flash-attention kernel, which
    it does not know (the same formula as the GPU's)."""
    from torch.utils.flop_counter import FlopCounterMode  # only when FLOPs are counted
    aten = torch.ops.aten
    custom = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _attention_flops
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _attention_backward_flops
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(config: Config, device: torch.device, size: int | None = None, repeats: int = 5) -> tuple[float, int]:
    """(FLOP/s, size) of one ``size x size`` matrix product on ``device`` in the precision a run's
    steps use there (under :func:`mmcl.runtime.autocast_for`): the reference the step's rate is set
    beside. ``size`` defaults to 1024 on CPU and 8192 on a GPU."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    with torch.no_grad(), autocast_for(config, device):
        for _ in range(2):
            a @ b
        _sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - started), size


def bench_method(config: Config, method: str, scenario: str = "class_incremental", steps: int = 20,
                 warmup: int = 3, seed: int = 0, variant: str | None = None,
                 peak_tflops: float | None = None) -> dict:
    """Samples/s and ms/step of training steps and of the frozen forward pass; peak memory.

    ``variant``: a named ablation or comparison of the method (``Method.ablations``,
    ``Method.comparisons``), e.g. the same trainable
    parameters without the method's extra machinery, to measure what that machinery costs.
    """
    if variant:
        config = with_method_overrides(config, method, variant_overrides(method, variant))
    device = resolve_device(config.runtime.device)
    torch.set_num_threads(run_threads(config, device))
    method_obj, stream = build_run(config, scenario, method, seed, device=device)
    task = _enter_second_task(method_obj)
    size = config.train.batch_size
    pin = pins_memory(config, device)
    batches, data_seconds = _device_batches(task, size, seed, device, pin)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def timed(step_fn) -> float:
        return _seconds_per_step(step_fn, batches, warmup, steps, device)

    result = {"method": method, "variant": variant, "profile": config.profile, "scenario": scenario,
              "device": str(device), "batch_size": size, "steps": steps, "modalities": list(task.modalities)}
    if method_obj.trains:
        result |= _bench_training(method_obj, task, batches, config, device, timed, steps)
    method_obj.eval()
    result |= _bench_frozen_forward(method_obj, batches, config, device, timed)
    rate, matmul_size = matmul_rate(config, device)
    result |= {"matmul_gflops": rate / 1e9, "matmul_size": matmul_size}
    if peak_tflops:
        result["peak_gflops"] = 1000 * peak_tflops
    result["data_ms_per_step"] = 1000 * data_seconds
    if "train_ms_per_step" in result:
        result["train_over_forward"] = result["train_ms_per_step"] / result["forward_ms_per_step"]
        result["step_trainable_forward_ms"] = max(0.0, result["step_forward_ms"] - result["forward_ms_per_step"])
    evaluation = stream.tasks[task.index].test  # the training view holds no test data
    result["eval_ms_per_sample"] = _eval_ms_per_sample(method_obj, evaluation, config, device, pin)
    result["trainable_parameters"] = sum(p.numel() for p in method_obj.parameters() if p.requires_grad)
    if device.type == "cuda":
        result["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["peak_process_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _enter_second_task(method_obj) -> Task:
    """Begin the stream's second task (or its only one), the first ended, as the engine would: the
    task whose steps are timed (training view)."""
    tasks = method_obj.context.tasks  # training views, as the engine passes them
    for task in tasks[: min(1, len(tasks) - 1) + 1]:  # begin the second task (or the only one)
        method_obj.context.seen_classes = sorted({c for t in tasks[: task.index + 1] for c in t.classes})
        method_obj.begin_task(task)
        if task.index == 0 and len(tasks) > 1:
            method_obj.end_task(task)
    return tasks[min(1, len(tasks) - 1)]


def _device_batches(task: Task, size: int, seed: int, device: torch.device, pin: bool) -> tuple[list[Batch], float]:
    """(the task's full training batches on ``device``, seconds per batch to make and move them)."""
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    batches = [b.to(device, pin_memory=pin) for b in task.train.batches(size, shuffle=True, generator=generator,
                                                                        drop_last=True)]
    _sync(device)
    data_seconds = (time.perf_counter() - started) / max(len(batches), 1)
    if not batches:
        raise ValueError(f"task {task.index} has {len(task.train)} samples, fewer than one batch of {size}")
    return batches, data_seconds


def _seconds_per_step(step_fn, batches: list[Batch], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per call of ``step_fn(batch)`` over ``steps`` calls, after ``warmup`` untimed ones."""
    for i in range(warmup):
        step_fn(batches[i % len(batches)])
    _sync(device)
    started = time.perf_counter()
    for i in range(steps):
        step_fn(batches[i % len(batches)])
    _sync(device)
    return (time.perf_counter() - started) / steps


def _phased_step(method_obj, batch: Batch, task: Task, optimizer, config: Config, device: torch.device
                 ) -> dict[str, float]:
    """:func:`mmcl.training.train_step`, phase by phase; returns each phase's seconds (a GPU
    synchronized between them)."""
    phases: dict[str, float] = {}
    last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        _sync(device)
        now = time.perf_counter()
        phases[name] = now - last
        last = now

    loss, _ = forward_phase(method_obj, batch, task, config, device)
    lap("forward")
    backward_phase(loss, optimizer)
    lap("backward")
    optimizer_phase(method_obj, task, optimizer, config)
    lap("optimizer")
    return phases


def _bench_training(method_obj, task: Task, batches: list[Batch], config: Config, device: torch.device,
                    timed, steps: int) -> dict:
    """The training step's time, its phases (averaged over the last ``steps`` calls: the timed steps,
    not the warm-up) and FLOPs."""
    size = config.train.batch_size
    optimizer = make_optimizer(method_obj, config)
    method_obj.train()
    method_obj.encoder.eval()
    laps: list[dict[str, float]] = []
    seconds = timed(lambda b: laps.append(_phased_step(method_obj, b, task, optimizer, config, device)))
    result = {"train_ms_per_step": 1000 * seconds, "train_samples_per_second": size / seconds}
    result |= {f"step_{name}_ms": 1000 * sum(lap[name] for lap in laps[-steps:]) / steps for name in STEP_PHASES}
    flops = count_flops(lambda: train_step(method_obj, batches[0], task, optimizer, config, device))
    return result | {"train_gflop_per_step": flops / 1e9, "train_gflops": flops / 1e9 / seconds}


def _bench_frozen_forward(method_obj, batches: list[Batch], config: Config, device: torch.device, timed) -> dict:
    """The floor: time and FLOPs of the frozen backbone's forward pass alone on the same batches."""
    size = config.train.batch_size

    @torch.no_grad()
    def frozen_forward(batch):
        with autocast_for(config, device):
            for modality, x in batch.inputs.items():
                method_obj.encoder.encode(modality, x)

    seconds = timed(frozen_forward)
    result = {"forward_ms_per_step": 1000 * seconds, "forward_samples_per_second": size / seconds}
    flops = count_flops(lambda: frozen_forward(batches[0]))
    return result | {"forward_gflop_per_step": flops / 1e9, "forward_gflops": flops / 1e9 / seconds}


def _eval_ms_per_sample(method_obj, evaluation: MultiModalDataset, config: Config, device: torch.device,
                        pin: bool) -> float:
    """Milliseconds per sample of predicting ``evaluation`` over the seen classes."""
    started = time.perf_counter()
    with torch.no_grad(), autocast_for(config, device):
        space = torch.tensor(method_obj.context.seen_classes, device=device)
        for batch in evaluation.batches(config.train.eval_batch_size):
            method_obj.predict(batch.to(device, pin_memory=pin), space)
    _sync(device)
    return 1000 * (time.perf_counter() - started) / max(len(evaluation), 1)


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
        lines.append("  where a training step's time goes (ms/step):")
        for label, key in (("forward (all)", "step_forward_ms"), ("  frozen (floor)", "forward_ms_per_step"),
                           ("  trainable", "step_trainable_forward_ms"), ("backward", "step_backward_ms"),
                           ("optimizer step", "step_optimizer_ms"), ("data handling", "data_ms_per_step")):
            lines.append(f"    {label:<17}{result[key]:10.2f}")
    else:
        lines.append(f"  data handling      {result['data_ms_per_step']:10.2f} ms/step")
    lines.append(f"  evaluation         {result['eval_ms_per_sample']:10.3f} ms/sample "
                 f"({1000 / max(result['eval_ms_per_sample'], 1e-9):.0f} samples/s)")
    lines.append(f"  matrix FLOPs (GFLOP/step, GFLOP/s achieved; one {result['matmul_size']}\u00b2 matrix product "
                 f"here: {result['matmul_gflops']:.1f} GFLOP/s"
                 + (f", stated peak {result['peak_gflops']:.0f}" if "peak_gflops" in result else "") + "):")
    for label, key in (("training step", "train"), ("frozen forward", "forward")):
        if f"{key}_gflops" not in result:
            continue
        if not result[f"{key}_gflop_per_step"]:
            lines.append(f"    {label:<17}{0:10.3f}  (read from the frozen-prefix cache)")
            continue
        shares = f"{result[f'{key}_gflops'] / result['matmul_gflops']:6.1%} of the matrix product"
        if "peak_gflops" in result:
            shares += f", {result[f'{key}_gflops'] / result['peak_gflops']:.1%} of the stated peak"
        lines.append(f"    {label:<17}{result[f'{key}_gflop_per_step']:10.3f}  {result[f'{key}_gflops']:10.1f}  {shares}")
    lines.append(f"  trainable params   {result['trainable_parameters']:10d}")
    if "peak_gpu_memory_mib" in result:
        lines.append(f"  peak GPU memory    {result['peak_gpu_memory_mib']:10.1f} MiB")
    lines.append(f"  peak process RSS   {result['peak_process_memory_mib']:10.1f} MiB")
    return "\n".join(lines)
