"""Speed machinery (docs/performance.md): runtime.compile changes no number, mmcl bench splits a
training step into its parts, mmcl reproduce ends with the time per notebook and the slowest runs,
and every CPU run is single-threaded unless runtime.num_threads says otherwise."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mmcl import engine, runtime
from mmcl.bench import bench_method, count_flops, format_bench
from mmcl.config import load_config
from mmcl.reproduce import time_report


def test_a_compiled_training_loss_equals_the_plain_one():
    """runtime.compile (backend eager, to stay fast on CPU): the method's training loss goes through
    torch.compile and gives the plain loss and gradients, up to float rounding (Adam's first step
    divides each gradient by its own size, so parameters after a step are not compared)."""
    results = {}
    for name, extra in (("plain", []), ("compiled", ["runtime.compile=true", "runtime.compile_backend=eager"])):
        config = load_config("smoke", extra)
        method, _ = engine.build_run(config, "class_incremental", "finetune", 0)
        assert hasattr(method.training_loss, "_torchdynamo_orig_callable") == (name == "compiled")
        task = method.context.tasks[0]
        method.context.seen_classes = sorted(task.classes)
        method.begin_task(task)
        method.train()
        method.encoder.eval()
        batch = next(task.train.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0)))
        loss = method.training_loss(batch, task)
        loss.backward()
        grads = {k: v.grad.clone() for k, v in method.named_parameters() if v.requires_grad and v.grad is not None}
        results[name] = (loss.item(), grads)
    assert results["compiled"][0] == pytest.approx(results["plain"][0], rel=1e-6)
    assert results["compiled"][1].keys() == results["plain"][1].keys() and results["plain"][1]
    assert all(torch.allclose(results["compiled"][1][k], g, rtol=1e-4, atol=1e-7) for k, g in results["plain"][1].items())


def _record(root, run: str, seconds: float, train: float, evaluation: float, probe: float | None = None) -> None:
    (root / run).mkdir(parents=True)
    timing = {"run_seconds_this_session": seconds, "train_seconds": train, "eval_seconds": evaluation}
    if probe is not None:  # records written before the probe was timed have no such key
        timing["forgetting_decomposition_seconds"] = probe
    (root / run / "metrics.json").write_text(json.dumps({"timing": timing}))


def test_reproduce_ends_with_the_time_per_notebook_and_the_slowest_runs(tmp_path):
    _record(tmp_path, "class_incremental/av-events/replay/seed0", 7.5, 6.0, 1.25, 0.25)
    _record(tmp_path, "class_incremental/av-events/finetune/seed0", 3.0, 2.0, 0.5)
    _record(tmp_path, "domain_incremental/multilingual-emotion/lwf/seed1", 9.0, 8.0, 0.75, 0.5)
    _record(tmp_path, "class_incremental/av-events/lwf~no-distillation@1a2b3c4d/seed0", 4.0, 3.0, 0.25)
    _record(tmp_path, "tuning/class_incremental/finetune/trial0/seed0", 99.0, 0.0, 0.0)  # validation runs: left out
    report = time_report({"10_class_incremental": 12.25, "30_figures_and_tables": 0.0}, tmp_path, count=2)
    assert report.splitlines() == [
        "time per notebook (s):",
        "  10_class_incremental          12.2",
        "  30_figures_and_tables          0.0  (up to date)",
        "  total                         12.2",
        f"slowest runs (s; run, of it training and evaluation), of 4 under {tmp_path}:",
        "      9.0     8.0     0.8  domain_incremental/multilingual-emotion/lwf/seed1",
        "      7.5     6.0     1.2  class_incremental/av-events/replay/seed0",
        "run seconds per method (runs; seconds, of it training, evaluation and the forgetting probe):",
        "  lwf                 2     13.0     11.0     1.0     0.5",
        "  replay              1      7.5      6.0     1.2     0.2",
        "  finetune            1      3.0      2.0     0.5     0.0",
        "  total               4     23.5     19.0     2.8     0.8"]


def test_every_cpu_run_is_single_threaded_unless_num_threads_is_set():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.run_threads(load_config("smoke", []), cpu) == 1
    assert runtime.run_threads(load_config("smoke", ["runtime.num_threads=3"]), cpu) == 3
    assert runtime.run_threads(load_config("smoke", []), cuda) == torch.get_num_threads()
    assert runtime.pins_memory(load_config("paper", []), cuda) and not runtime.pins_memory(load_config("paper", []), cpu)
    assert not runtime.pins_memory(load_config("smoke", ["runtime.pin_memory=false"]), cuda)


def test_bench_splits_a_training_step_into_its_parts():
    threads = torch.get_num_threads()
    try:
        result = bench_method(load_config("smoke", []), "finetune", steps=3, warmup=1)
    finally:
        torch.set_num_threads(threads)
    parts = [result[k] for k in ("step_forward_ms", "step_backward_ms", "step_optimizer_ms")]
    assert all(p > 0 for p in parts)
    # The parts are disjoint stretches of the timed steps: together at most the total, and nearly all of it.
    assert 0.8 * result["train_ms_per_step"] < sum(parts) <= result["train_ms_per_step"]
    assert result["step_trainable_forward_ms"] == max(0.0, result["step_forward_ms"] - result["forward_ms_per_step"])
    assert result["eval_ms_per_sample"] > 0 and result["data_ms_per_step"] > 0
    text = format_bench(result)
    assert "where a training step's time goes" in text and "evaluation" in text
    assert result["train_gflop_per_step"] > 0 and result["train_gflops"] > 0 and result["matmul_gflops"] > 0
    assert result["forward_gflop_per_step"] >= 0 and "matrix FLOPs" in text


def test_flops_are_counted_as_by_hand():
    """Matrix products and attention, forward and backward, CPU flash attention included: 2 FLOPs a
    multiply-add. Attention of q, k, v [b, h, s, d]: q kᵀ and the weighted sum of v forward, two
    products of 2bhs²d; backward five (the scores recomputed, the gradients to the scores, q, k, v)."""
    x, w = torch.randn(8, 16), torch.randn(16, 4, requires_grad=True)
    assert count_flops(lambda: x @ w) == 2 * 8 * 16 * 4
    assert count_flops(lambda: (x @ w).sum().backward()) == 2 * (2 * 8 * 16 * 4)  # and xᵀ g for w's gradient
    q, k, v = (torch.randn(1, 2, 5, 8, requires_grad=True) for _ in range(3))
    forward = 2 * 2 * 1 * 2 * 5 * 5 * 8
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == forward
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == forward + 5 * forward // 2
