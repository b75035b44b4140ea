"""What ``runtime.compile`` (torch.compile, inductor, CPU) costs and saves per method family.

For each method: the steady training-step time with and without compilation (``mmcl.bench``'s
steps, in the scenario's second task, one thread), the one-off compile cost (the compiled
bench's wall time minus the eager one's, less the steps' difference) and the break-even number of
steps (compile cost over the time a compiled step saves; "never" when it saves nothing). Beside
it, the steps a run of the profile takes, so the break-even can be read against them.

    python benchmarks/compile_cost.py --profile tiny
    python benchmarks/compile_cost.py --profile tiny --methods finetune:class_incremental comm:class_incremental

The inductor's compiled graphs are cached on disk (``TORCHINDUCTOR_CACHE_DIR``); the first method
measured pays the most. Read the numbers with the machine's load in mind: say which CPU ran them.
"""
from __future__ import annotations

import argparse
import time

import mmcl  # noqa: F401 - first: pins the CPU kernels

DEFAULT = ["finetune:class_incremental", "l2p:modality_incremental", "aper:class_incremental",
           "comm:class_incremental", "moe-adapters:class_incremental"]


def run_steps(config, scenario: str, method: str) -> int:
    """Optimizer steps of a whole run of ``method`` on the scenario's benchmark (seed 0)."""
    from mmcl.engine import build_run

    _, stream = build_run(config, scenario, method, seed=0)
    batch = config.train.batch_size
    return config.train.epochs * sum(t.train.num_batches(batch) for t in stream.tasks)


def measure(profile: str, scenario: str, method: str, steps: int, warmup: int) -> dict:
    from mmcl.bench import bench_method
    from mmcl.config import load_config

    row = {"method": method, "scenario": scenario}
    for compiled in (False, True):
        config = load_config(profile, [f"runtime.compile={str(compiled).lower()}", "runtime.progress=false"])
        started = time.perf_counter()
        result = bench_method(config, method, scenario=scenario, steps=steps, warmup=warmup)
        row["wall_compiled" if compiled else "wall_eager"] = time.perf_counter() - started
        row["ms_compiled" if compiled else "ms_eager"] = result["train_ms_per_step"]
    saved_ms = row["ms_eager"] - row["ms_compiled"]
    row["compile_s"] = row["wall_compiled"] - row["wall_eager"] - (warmup + steps) * (-saved_ms) / 1000
    row["break_even_steps"] = row["compile_s"] * 1000 / saved_ms if saved_ms > 0 else float("inf")
    row["run_steps"] = run_steps(load_config(profile), scenario, method)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--methods", nargs="+", default=DEFAULT, help="method:scenario pairs")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    from mmcl.kernels import cpu_model, native_level

    print(f"profile {args.profile}; CPU: {cpu_model()}, native {native_level()}, kernels pinned to AVX2")
    print(f"{'method':14s} {'scenario':22s} {'eager ms':>9s} {'compiled ms':>12s} {'compile s':>10s} "
          f"{'break-even steps':>17s} {'steps per run':>14s}")
    for pair in args.methods:
        method, scenario = pair.split(":")
        row = measure(args.profile, scenario, method, args.steps, args.warmup)
        even = "never" if row["break_even_steps"] == float("inf") else f"{row['break_even_steps']:.0f}"
        print(f"{method:14s} {scenario:22s} {row['ms_eager']:9.1f} {row['ms_compiled']:12.1f} "
              f"{row['compile_s']:10.1f} {even:>17s} {row['run_steps']:14d}", flush=True)


if __name__ == "__main__":
    main()
