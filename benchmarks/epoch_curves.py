"""How many epochs: validation accuracy against epochs, one method per family, on the first tasks.

For each ``--epochs`` value it runs every method of ``--methods`` on each scenario's main benchmark
with ``train.epochs=<value>`` and ``train.eval_split=val`` (validation data only: test data is never
used for a choice), and reads two numbers per run from its accuracy matrix:

- ``first tasks``: the mean over the first ``--first-tasks`` tasks j of A[j][j], the validation
  accuracy on task j right after training it (what more epochs buy in learning, before forgetting);
- ``final``: the final average validation accuracy (what the tables would read).

The choice: per scenario, the smallest epochs at which the *median method*'s first-task accuracy is
within ``--tolerance`` points (default 1) of the median method's best over the grid; the printed
table says it, and a choice at the largest value tried means the grid must grow.

    python benchmarks/epoch_curves.py --profile tiny                     # 7 methods x 5 values x 3 scenarios
    python benchmarks/epoch_curves.py --profile tiny --epochs 2 3 5 8 12 --seeds 0 1
    python benchmarks/epoch_curves.py --profile smoke --methods finetune --epochs 1 2   # a quick try
    python benchmarks/epoch_curves.py --profile tiny --update-docs docs/benchmark.md    # rewrite its table
    python benchmarks/epoch_curves.py --profile tiny --set data.video_frames=2 --output-dir runs/epochs-frames2

Runs go under ``--output-dir`` (default ``runs/epochs``) and are reused by a second call; the table
is printed and written to ``<output-dir>/<profile>/epoch_curves.{csv,md}``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import mmcl  # noqa: F401 - first: pins the CPU kernels

# One trained method per family: the lower bound, regularisation, rehearsal, prototype (one that
# trains: APER's first-task adapter), prompt, the two paper methods, and the upper bound.
DEFAULT_METHODS = ["finetune", "lwf", "replay", "aper", "dualprompt", "comm", "moe-adapters", "joint"]
SCENARIOS = ["class_incremental", "domain_incremental", "modality_incremental"]


def first_tasks_accuracy(matrix: list[list[float]], count: int) -> float:
    """Mean of A[j][j] over the first ``count`` tasks (all of them when there are fewer)."""
    tasks = range(min(count, len(matrix)))
    return statistics.fmean(matrix[j][j] for j in tasks)


def plateau(curve: dict[int, float], tolerance: float) -> int:
    """The smallest epochs whose value is within ``tolerance`` of the curve's best."""
    best = max(curve.values())
    return min(e for e, value in curve.items() if value >= best - tolerance)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 3, 5, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--scenarios", nargs="+", default=SCENARIOS, choices=SCENARIOS)
    parser.add_argument("--first-tasks", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=1.0)
    parser.add_argument("--output-dir", default="runs/epochs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one profile key for every run, e.g. --set data.video_frames=2 (repeatable): "
                             "a budget to compare with the profile's")
    parser.add_argument("--update-docs", metavar="MARKDOWN",
                        help="also write the table between <!-- BLOCK:start --> and <!-- BLOCK:end --> of this file")
    parser.add_argument("--block", default="epochs",
                        help="the name of that block (default: epochs), one per budget compared")
    return parser.parse_args(argv)


def command_line(args: argparse.Namespace) -> str:
    """The command that makes these runs again (every option that decides them)."""
    return (f"python benchmarks/epoch_curves.py --profile {args.profile} --scenarios {' '.join(args.scenarios)} "
            f"--epochs {' '.join(map(str, sorted(set(args.epochs))))} --seeds {' '.join(map(str, args.seeds))} "
            f"--methods {' '.join(args.methods)}" + "".join(f" --set {o}" for o in args.overrides))


def run_curves(args: argparse.Namespace):
    """One row per run: its scenario, method, seed, epochs, first-task and final validation accuracy."""
    import pandas as pd

    from mmcl import reproduce
    from mmcl.config import load_config
    from mmcl.executors import make_executor
    from mmcl.methods import method_class

    rows = []
    for epochs in sorted(set(args.epochs)):
        config = load_config(args.profile, [*args.overrides, f"train.epochs={epochs}", "train.eval_split=val"])
        jobs = [job for scenario in args.scenarios for job in reproduce.sweep_jobs(
                    config, scenario, [m for m in args.methods if scenario in method_class(m).compatible_scenarios],
                    args.seeds, [config.scenarios[scenario].benchmark]) if "variant" not in job]
        folders = make_executor(config).run_jobs(config, jobs, args.output_dir, f"{epochs} epochs")
        for job, folder in zip(jobs, folders):
            metrics = json.loads((Path(folder) / "metrics.json").read_text())
            mode = next(iter(metrics["accuracy_matrix"]))
            rows.append({"scenario": job["scenario"], "benchmark": job["benchmark"], "method": job["method"],
                         "seed": job["seed"], "epochs": epochs, "mode": mode,
                         "first_tasks": first_tasks_accuracy(metrics["accuracy_matrix"][mode], args.first_tasks),
                         "final": metrics["modes"][mode]["final_accuracy"],
                         "run_seconds": metrics.get("timing", {}).get("run_seconds_this_session"),
                         "source_fingerprint": metrics["run"].get("source_fingerprint")})
    return pd.DataFrame(rows)


def report(runs, args: argparse.Namespace) -> tuple[str, object]:
    """The markdown text (table, the plateau per scenario, run seconds) and the table itself."""
    from mmcl import results

    curves = runs.groupby(["scenario", "method", "epochs"])[["first_tasks", "final"]].mean().reset_index()
    lines = []
    for scenario, part in curves.groupby("scenario", sort=False):
        median = part.groupby("epochs")["first_tasks"].median().to_dict()
        chosen = plateau(median, args.tolerance)
        edge = " (the largest value tried: try more epochs)" if chosen == max(median) else ""
        lines.append(f"- {scenario}: the median method plateaus (within {args.tolerance:g} point) at "
                     f"{chosen} epochs{edge}; median first-task accuracy "
                     + ", ".join(f"{e}: {v:.1f}" for e, v in sorted(median.items())))
    table = curves.pivot_table(index=["scenario", "method"], columns="epochs", values=["first_tasks", "final"])
    table.columns = [f"{name} @{epochs}" for name, epochs in table.columns]
    table = table.round(1).reset_index()
    code = ", ".join(sorted({str(f)[:12] for f in runs["source_fingerprint"]}))
    seconds = runs.groupby("epochs")["run_seconds"].sum().round(0).to_dict()
    text = (f"Validation accuracy against epochs, profile {args.profile}, seeds {args.seeds} "
            f"(`{command_line(args)}`; runs of source {code}):\n\n"
            + results.to_markdown(table) + "\n\n" + "\n".join(lines)
            + "\n\nRun seconds of these runs per epochs value: "
            + ", ".join(f"{e}: {s:g}" for e, s in seconds.items()) + "\n")
    return text, table


def update_docs(path: Path, text: str, block: str = "epochs") -> None:
    """Replace the block between the epochs markers of ``path`` with ``text``."""
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    document = path.read_text()
    if start not in document or end not in document:
        raise SystemExit(f"{path}: no {start} ... {end} block to write the table into")
    head, rest = document.split(start, 1)
    path.write_text(f"{head}{start}\n{text}{end}{rest.split(end, 1)[1]}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = run_curves(args)
    text, table = report(runs, args)
    out = Path(args.output_dir) / args.profile
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "epoch_runs.csv", index=False)
    table.to_csv(out / "epoch_curves.csv", index=False)
    (out / "epoch_curves.md").write_text(text)
    if args.update_docs:
        update_docs(Path(args.update_docs), text, args.block)
    print(text)


if __name__ == "__main__":
    main()
