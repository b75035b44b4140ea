"""Where the spread of a result over seeds comes from: the run seed, the backbone, the benchmark sample.

For each method on each main benchmark, the standard deviation of final accuracy and forgetting
over ``--values`` draws of one source at a time, the other two held at their seed-0 value:

- ``run``: the training run's seed (class order, initialisation, batch order), one backbone
  (``model.pretrain.per_run_seed=false``) and one benchmark sample;
- ``backbone``: the tiny CLIP's pre-training seed (``model.pretrain.seed``), run seed 0, one sample;
- ``sample``: the benchmark's generation seed (``data.benchmark_seed``: its samples and validation
  split), run seed 0, the one backbone (``model.pretrain.seed`` kept at the profile's benchmark seed).

The profile's runs draw all three sources together: seed k uses the backbone pre-trained with
seed k (``model.pretrain.per_run_seed``) on the one benchmark sample. This script says whether the
sample's spread is comparable to the other two (then seeds should draw samples too).

    python benchmarks/spread_sources.py --profile tiny                       # about 105 runs
    python benchmarks/spread_sources.py --profile smoke --methods finetune lwf --values 2

Runs go under ``--output-dir`` (default ``runs/spread``), each configuration in its own
``<method>@<digest>`` folder, so a second call reuses them; the table is printed and written to
``<output-dir>/<profile>/spread_sources.{csv,md}``.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import mmcl  # noqa: F401 - first: pins the CPU kernels

DEFAULT_METHODS = ["comm", "moe-adapters", "replay", "lwf", "ranpac"]  # the paper methods; rehearsal,
# regularisation and prototype rivals
SCENARIOS = ["class_incremental", "domain_incremental", "modality_incremental"]
METRICS = ("final_accuracy", "forgetting")


def source_overrides(source: str, value: int, base: int) -> tuple[list[str], int]:
    """(profile overrides, run seed) of draw ``value`` (0, 1, ...) of ``source``; ``base``: the
    profile's ``data.benchmark_seed``. Draw 0 of every source is the same run."""
    fixed = ["model.pretrain.per_run_seed=false", f"model.pretrain.seed={base}"]
    if source == "run":
        return fixed, value
    if source == "backbone":
        return ["model.pretrain.per_run_seed=false", f"model.pretrain.seed={base + value}"], 0
    if source == "sample":
        return [*fixed, f"data.benchmark_seed={base + value}"], 0
    raise ValueError(f"unknown source {source!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--values", type=int, default=3, help="draws per source (at least 2)")
    parser.add_argument("--output-dir", default="runs/spread")
    args = parser.parse_args()
    if args.values < 2:
        parser.error("--values: a spread needs at least 2 draws")

    import pandas as pd

    from mmcl import reproduce, results
    from mmcl.config import load_config
    from mmcl.executors import make_executor

    base = load_config(args.profile).data.benchmark_seed
    rows = []
    for source in ("run", "backbone", "sample"):
        for value in range(args.values):
            overrides, seed = source_overrides(source, value, base)
            config = load_config(args.profile, overrides)
            jobs = [job for scenario in SCENARIOS for job in reproduce.sweep_jobs(
                        config, scenario, args.methods, [seed], [config.scenarios[scenario].benchmark])
                    if "variant" not in job]
            folders = make_executor(config).run_jobs(config, jobs, args.output_dir, f"{source} {value}")
            for job, folder in zip(jobs, folders):
                run = results.load_runs(folder)
                for _, row in run.iterrows():
                    rows.append({"source": source, "draw": value, "scenario": job["scenario"],
                                 "benchmark": job["benchmark"], "method": job["method"], "mode": row["mode"],
                                 "source_fingerprint": row["source_fingerprint"], **{m: row[m] for m in METRICS}})
    draws = pd.DataFrame(rows)
    table = (draws.groupby(["scenario", "benchmark", "mode", "method", "source"])[list(METRICS)]
             .agg(lambda v: statistics.stdev(v) if len(v) > 1 else float("nan"))
             .unstack("source"))
    table.columns = [f"{metric} std ({source})" for metric, source in table.columns]
    table = table.reset_index()
    out = Path(args.output_dir) / args.profile
    out.mkdir(parents=True, exist_ok=True)
    draws.to_csv(out / "spread_draws.csv", index=False)
    table.to_csv(out / "spread_sources.csv", index=False)
    means = draws.groupby(["source", "scenario", "benchmark", "mode", "method"])[list(METRICS)].std() \
        .groupby("source").mean().round(2).reset_index()
    code = ", ".join(sorted({str(f)[:12] for f in draws["source_fingerprint"]}))
    text = (f"Standard deviation (points) over {args.values} draws of each source, profile {args.profile}, "
            f"seed-0 values of the others (`python benchmarks/spread_sources.py --profile {args.profile}`; "
            f"runs of source {code}):\n\n" + results.to_markdown(table.round(2))
            + "\n\nMean over methods, benchmarks and modes:\n\n" + results.to_markdown(means) + "\n")
    (out / "spread_sources.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
