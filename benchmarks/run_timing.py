"""Where a run's seconds go outside training and evaluation, per method: each (method, scenario,
benchmark) run again from scratch (``force``), in this process, one after another.

For every run it prints the seconds of the whole run, of training, of evaluation, of the
forgetting probe and the rest (*other*: encoder and benchmark loading, end-of-task work such as
RanPAC's ridge choice or EWC's Fisher, checkpoints), and a digest of the accuracy matrix, so two
checkouts (``PYTHONPATH=<checkout>``) can be compared number for number and second for second.
Zero-shot and SimpleCIL, which train nothing, are the controls for the fixed cost.

    python benchmarks/run_timing.py --output-dir /tmp/timing --methods ranpac ewc zero-shot simplecil
    python benchmarks/run_timing.py --output-dir /tmp/timing --methods comm \\
        --pairs class_incremental:av-events modality_incremental:modality-stream

``--output-dir`` is required and its runs are overwritten: give it a scratch folder.
"""
from __future__ import annotations

import argparse
import hashlib
import json

import mmcl  # noqa: F401 - first: pins the CPU kernels

DEFAULT_PAIRS = ["class_incremental:av-events", "domain_incremental:multilingual-emotion",
                 "modality_incremental:modality-stream"]


def matrix_digest(metrics: dict) -> str:
    """The first 12 hex digits of the sha256 of the accuracy matrices (every mode), as JSON."""
    return hashlib.sha256(json.dumps(metrics["accuracy_matrix"], sort_keys=True).encode()).hexdigest()[:12]


def split(timing: dict) -> dict[str, float]:
    """A run's ``timing`` as run, train, eval, probe and other seconds (other: the rest)."""
    parts = {"run": timing["run_seconds_this_session"], "train": timing.get("train_seconds", 0.0),
             "eval": timing.get("eval_seconds", 0.0), "probe": timing.get("forgetting_decomposition_seconds", 0.0)}
    return parts | {"other": parts["run"] - parts["train"] - parts["eval"] - parts["probe"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, help="a scratch folder: its runs are overwritten")
    parser.add_argument("--methods", nargs="+", default=["ranpac", "ewc", "zero-shot", "simplecil"])
    parser.add_argument("--pairs", nargs="+", default=DEFAULT_PAIRS, metavar="SCENARIO:BENCHMARK")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from mmcl.config import load_config
    from mmcl.engine import run
    from mmcl.methods import method_class

    config = load_config(args.profile, [f"runtime.output_dir={args.output_dir}"])
    print(f"{'run':<58}{'run':>7}{'train':>7}{'eval':>7}{'probe':>7}{'other':>7}  matrices")
    for pair in args.pairs:
        scenario, _, benchmark = pair.partition(":")
        for method in args.methods:
            if scenario not in method_class(method).compatible_scenarios:
                continue
            metrics = run(config, scenario, method, seed=args.seed, benchmark=benchmark or None, force=True,
                          progress=False).metrics
            parts = split(metrics["timing"])
            print(f"{f'{scenario} {benchmark} {method}':<58}" + "".join(f"{v:7.1f}" for v in parts.values())
                  + f"  {matrix_digest(metrics)}", flush=True)


if __name__ == "__main__":
    main()
