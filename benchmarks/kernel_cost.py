"""What pinning the CPU kernels (mmcl.kernels) costs: the same runs with pinned and with native kernels.

Each (method, kernels) run is one ``mmcl run`` process on a fresh output folder (seed 0), one after
the other; the backbone and the benchmarks are built first, once per kernel setting, so the runs
time training and evaluation only. Prints the run's own seconds (training, evaluation, from its
metrics.json) and the process's CPU seconds, pinned and native, and their ratio.

    python benchmarks/kernel_cost.py --profile tiny --methods finetune l2p comm moe-adapters

A method that does not declare ``--scenario`` runs on the first scenario it declares (L2P: modality-incremental).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from mmcl.methods import method_class

SETTINGS = {"pinned": "true", "native": "false"}


def _mmcl(*arguments: str) -> float:
    """Run ``mmcl ARGUMENTS``; the CPU seconds it took (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "mmcl.cli", *arguments], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"mmcl {' '.join(arguments)} failed:\n{done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--scenario", default="class_incremental")
    parser.add_argument("--methods", nargs="+", default=["finetune", "l2p", "comm", "moe-adapters"])
    parser.add_argument("--work", help="folder for the runs (default: a new temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="kernel-cost-"))
    rows = []
    for setting, portable in SETTINGS.items():
        common = ["--profile", args.profile, "--set", f"runtime.portable_kernels={portable}",
                  "--set", "runtime.progress=false"]
        _mmcl("inputs", *common)  # the backbone and the benchmarks of this setting, before any timing
        for method in args.methods:
            declared = method_class(method).compatible_scenarios
            scenario = args.scenario if args.scenario in declared else declared[0]
            out = work / setting / method
            cpu = _mmcl("run", "--scenario", scenario, "--method", method, "--seed", "0", "--output-dir", str(out),
                        *common)
            metrics = json.loads(next(out.rglob("metrics.json")).read_text())
            rows.append({"method": method, "scenario": scenario, "kernels": setting,
                         "train_s": metrics["timing"]["train_seconds"], "eval_s": metrics["timing"]["eval_seconds"],
                         "cpu_s": cpu, "final": metrics["modes"][next(iter(metrics["modes"]))]["final_accuracy"]})
    print(f"profile {args.profile}, seed 0, one thread per run; runs under {work}")
    print(f"{'method':14s} {'scenario':22s} {'train s pinned/native':>22s} {'eval s':>16s} {'process CPU s':>18s} "
          f"{'ratio':>6s}")
    for method in args.methods:
        pinned, native = (next(r for r in rows if r["method"] == method and r["kernels"] == s) for s in SETTINGS)
        print(f"{method:14s} {pinned['scenario']:22s} {pinned['train_s']:10.1f} / {native['train_s']:<9.1f} "
              f"{pinned['eval_s']:6.1f} / {native['eval_s']:<7.1f} {pinned['cpu_s']:7.1f} / {native['cpu_s']:<8.1f} "
              f"{pinned['cpu_s'] / native['cpu_s']:6.2f}")
    cpu = json.loads(next(work.rglob("manifest.json")).read_text())["kernels"]["cpu"]
    print(f"CPU: {cpu['model']}, native {cpu['native_level']}")


if __name__ == "__main__":
    main()
