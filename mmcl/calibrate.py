"""``mmcl calibrate``: is the embedded benchmark hard enough, and transferable? (docs/benchmark.md)

For each main benchmark it runs zero-shot, joint, replay with :data:`REPLAY_PER_CLASS` exemplars
per class and sequential fine-tuning, then checks the calibration targets:

- joint training ends between :data:`JOINT_RANGE` final accuracy (not saturated, learnable);
- replay is at least :data:`REPLAY_GAP` points below joint;
- fine-tuning forgets at least :data:`FORGETTING_MIN` points (:data:`DOMAIN_FORGETTING_MIN` where the
  domains preserve labels: the class cues stay, so less is forgotten);
- domain-incremental: the domain gap is real: fine-tuned up to domain k, the model reads domain
  k + 1 at least :data:`DOMAIN_GAP_MIN` points worse before training on it than after (mean over k);
- modality-incremental: joint training reads every modality (each task's final joint accuracy at
  least :data:`MODALITY_JOINT_MIN`);
- zero-shot is below :data:`ZERO_SHOT_MAX` on every task, yet above chance on some task (transfer).

It writes ``calibration.{md,csv,tex}`` and ``calibration_zero_shot.{md,csv,tex}`` (zero-shot per
modality) through :func:`mmcl.results.write_table`, and can paste the Markdown into a document
between ``<!-- calibration:start -->`` and ``<!-- calibration:end -->``.

``mmcl calibrate --literature`` (:func:`calibrate_literature`) trains nothing: it checks that the
profile's stored runs keep the published orderings of the established methods
(:mod:`mmcl.literature`, ``docs/literature.md``) and writes ``calibration_literature{,_summary}.*``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mmcl import literature, method_index, records
from mmcl.config import SCENARIOS, Config, ConfigError
from mmcl.results import code_version_text, inputs_text, load_runs, write_table

# (scenario, benchmark) pairs whose targets the calibration checks, when the profile has them.
MAIN_BENCHMARKS = (
    ("class_incremental", "av-events"),
    ("class_incremental", "ego-activities"),
    ("domain_incremental", "multilingual-emotion"),
    ("modality_incremental", "modality-stream"),
)
JOINT_RANGE = (70.0, 92.0)
REPLAY_GAP = 3.0
FORGETTING_MIN = 30.0
DOMAIN_FORGETTING_MIN = 10.0
DOMAIN_GAP_MIN = 10.0
MODALITY_JOINT_MIN = 50.0
ZERO_SHOT_MAX = 80.0
REPLAY_PER_CLASS = 5
BLOCK = "calibration"  # the block of docs/benchmark.md the profile's own calibration is written into


def markers(block: str = BLOCK) -> tuple[str, str]:
    """The lines that open and close ``block`` in a Markdown document."""
    return f"<!-- {block}:start -->", f"<!-- {block}:end -->"


def main_pairs(config: Config) -> list[tuple[str, str]]:
    return [(s, b) for s, b in MAIN_BENCHMARKS if b in config.benchmarks]


def _with_replay_buffer(config: Config) -> Config:
    """Replay's own per-class budget, pinned to :data:`REPLAY_PER_CLASS` (no total cap)."""
    methods = {**config.methods, "replay": {**config.methods.get("replay", {}),
                                            "per_class": REPLAY_PER_CLASS, "buffer_size": None}}
    return config.model_copy(update={"methods": methods})


def _with_modalities(config: Config, benchmark: str, modalities: list[str]) -> Config:
    spec = config.benchmarks[benchmark].model_copy(update={"modalities": modalities})
    return config.model_copy(update={"benchmarks": {**config.benchmarks, benchmark: spec}})


def _first_mode(metrics: dict) -> str:
    return next(iter(metrics["modes"]))


def _zero_shot_tasks(metrics: dict, mode: str) -> list[float]:
    """Zero-shot accuracy of each task: on arrival (its classes so far) and at the end (all classes)."""
    arrival = metrics["zero_shot"][mode]
    final = metrics["accuracy_matrix"][mode][-1]
    return [max(a, f) for a, f in zip(arrival, final)]


def calibration_runs(config: Config, seeds: Sequence[int], output_dir: str | Path,
                     pairs: Sequence[tuple[str, str]] | None = None, progress: bool = False) -> pd.DataFrame:
    """Run (or reuse) the calibration runs; one row per (benchmark, seed, run) with the numbers."""
    from mmcl.engine import run  # open_clip and the methods: `mmcl calibrate --literature` trains nothing

    rows = []
    for scenario, benchmark in pairs or main_pairs(config):
        spec = config.benchmarks[benchmark]
        if spec.source != "synthetic":
            raise ConfigError(f"benchmarks.{benchmark}: calibration is for the embedded generator")
        chance = 100.0 / spec.num_classes
        for seed in seeds:
            def go(method, cfg=config, **extra):
                result = run(cfg, scenario, method, seed=seed, benchmark=benchmark, output_dir=output_dir,
                             progress=progress)
                mode = _first_mode(result.metrics)
                summary = result.metrics["modes"][mode]
                record = result.metrics["run"]
                version = code_version_text(record.get("source_fingerprint"), record.get("git_commit"),
                                            record.get("git_dirty"))
                manifest = records.read_json(result.run_dir / "manifest.json")
                inputs = inputs_text((manifest.get("backbone") or {}).get("sha256"),
                                     (manifest.get("data") or {}).get("sha256"))
                rows.append({"scenario": scenario, "benchmark": benchmark, "seed": seed, "method": method,
                             "final": summary["final_accuracy"], "forgetting": summary["forgetting"],
                             "chance": chance, "run_dir": str(result.run_dir), "version": version,
                             "inputs": inputs, **extra,
                             "zero_shot_tasks": _zero_shot_tasks(result.metrics, mode) if method == "zero-shot" else None,
                             "task_names": result.metrics.get("task_names"),
                             "matrix": result.metrics["accuracy_matrix"][mode]})
            go("zero-shot", modality="all")
            go("joint")
            go("replay", _with_replay_buffer(config))
            go("finetune")
            if scenario != "modality_incremental":  # there each task is one modality already
                for modality in spec.modalities:
                    go("zero-shot", _with_modalities(config, benchmark, [modality]), modality=modality)
    return pd.DataFrame(rows)


def _versions(runs: pd.DataFrame) -> tuple:
    """(run folder, code version) of each run, the ``run_versions`` of :func:`mmcl.results.write_table`."""
    return tuple(sorted(set(zip(runs["run_dir"], runs["version"]))))


def _inputs(runs: pd.DataFrame) -> tuple:
    """(run folder, weights and data digests) of each run, the ``run_inputs`` of :func:`mmcl.results.write_table`."""
    if "inputs" not in runs:
        return ()
    return tuple(sorted(set(zip(runs["run_dir"], runs["inputs"]))))


def _check(rows: list, scenario, benchmark, check, target, values, passed, runs):
    values = [v for v in values if v is not None and not math.isnan(v)]
    rows.append({"scenario": scenario, "benchmark": benchmark, "check": check, "target": target,
                 "seeds": len(values), "measured_mean": float(np.mean(values)) if values else math.nan,
                 "measured_std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                 "pass": "pass" if passed else "FAIL", "run_versions": _versions(runs), "run_inputs": _inputs(runs)})


def domain_gap(matrix: Sequence[Sequence[float]]) -> float:
    """Mean over k of (accuracy on task k + 1 after training on it) - (accuracy on it after task k,
    before training on it): what training on a new domain adds on that domain."""
    steps = [matrix[k + 1][k + 1] - matrix[k][k + 1] for k in range(len(matrix) - 1)]
    return float(np.mean(steps)) if steps else math.nan


def calibration_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each target of each benchmark with the measured value (mean ± std over seeds) and a verdict;
    a target passes when it holds for every seed."""
    rows: list[dict] = []
    for (scenario, benchmark), group in runs.groupby(["scenario", "benchmark"], sort=False):
        by = {m: g.sort_values("seed") for m, g in group.groupby("method")}
        zero = by["zero-shot"][by["zero-shot"]["modality"] == "all"]
        joint, replay, finetune = by["joint"], by["replay"], by["finetune"]
        low, high = JOINT_RANGE
        _check(rows, scenario, benchmark, "joint final accuracy", f"{low:g}-{high:g}", joint["final"].tolist(),
               all(low <= v <= high for v in joint["final"]), joint)
        gaps = (joint.set_index("seed")["final"] - replay.set_index("seed")["final"]).tolist()
        _check(rows, scenario, benchmark, f"joint - replay ({REPLAY_PER_CLASS}/class) final", f">= {REPLAY_GAP:g}",
               gaps, all(g >= REPLAY_GAP for g in gaps), pd.concat([joint, replay]))
        least = DOMAIN_FORGETTING_MIN if scenario == "domain_incremental" else FORGETTING_MIN
        _check(rows, scenario, benchmark, "finetune forgetting", f">= {least:g}",
               finetune["forgetting"].tolist(), all(v >= least for v in finetune["forgetting"]), finetune)
        if scenario == "domain_incremental" and "matrix" in finetune:
            gaps = [domain_gap(m) for m in finetune["matrix"]]
            _check(rows, scenario, benchmark, "finetune: next domain after - before training", f">= {DOMAIN_GAP_MIN:g}",
                   gaps, all(g >= DOMAIN_GAP_MIN for g in gaps), finetune)
        if scenario == "modality_incremental" and "matrix" in joint:
            weakest = [min(m[-1]) for m in joint["matrix"]]
            _check(rows, scenario, benchmark, "joint final, weakest modality", f">= {MODALITY_JOINT_MIN:g}",
                   weakest, all(v >= MODALITY_JOINT_MIN for v in weakest), joint)
        worst = [max(t) for t in zero["zero_shot_tasks"]]
        _check(rows, scenario, benchmark, "zero-shot, best-read task", f"< {ZERO_SHOT_MAX:g}", worst,
               all(v < ZERO_SHOT_MAX for v in worst), zero)
        chance = float(zero["chance"].iloc[0])
        _check(rows, scenario, benchmark, "zero-shot final, above chance", f"> {chance:.1f} (chance)",
               zero["final"].tolist(), all(v > chance for v in zero["final"]), zero)
    return pd.DataFrame(rows)


def zero_shot_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Zero-shot final accuracy per benchmark and modality (a modality-incremental stream: per task,
    each task being one modality), with chance."""
    rows = []
    zero = runs[runs["method"] == "zero-shot"]
    for (scenario, benchmark), group in zero.groupby(["scenario", "benchmark"], sort=False):
        chance = float(group["chance"].iloc[0])
        if scenario == "modality_incremental":  # the modality order, so each task's name, depends on the seed
            by_name: dict[str, list[float]] = {}
            fused = group[group["modality"] == "all"]
            for names, tasks in zip(fused["task_names"], fused["zero_shot_tasks"]):
                for name, value in zip(names, tasks):
                    by_name.setdefault(name, []).append(value)
            for name, values in by_name.items():
                rows.append((scenario, benchmark, name, values, chance, fused))
        else:
            for modality, part in group.groupby("modality", sort=False):
                rows.append((scenario, benchmark, modality, part["final"].tolist(), chance, part))
    return pd.DataFrame([{"scenario": s, "benchmark": b, "modality": m, "seeds": len(v),
                          "zero_shot_mean": float(np.mean(v)), "zero_shot_std": float(np.std(v, ddof=1)) if len(v) > 1 else math.nan,
                          "chance": round(c, 1), "run_versions": _versions(d)} for s, b, m, v, c, d in rows])


def paste_into(document: str | Path, markdown: str, block: str = BLOCK) -> None:
    """Replace the text between the markers of ``block`` (:func:`markers`) in ``document`` by ``markdown``."""
    path = Path(document)
    text = path.read_text() if path.is_file() else ""
    start, end = markers(block)
    if start not in text or end not in text:
        raise ConfigError(f"{path}: no {start} ... {end} block to write the calibration into")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    records.atomic_write_text(path, f"{head}{start}\n{markdown.strip()}\n{end}{tail}")


def calibrate(config: Config, seeds: Sequence[int], output_dir: str | Path, table_dir: str | Path,
              document: str | Path | None = None, command: str = "", progress: bool = False,
              block: str = BLOCK) -> pd.DataFrame:
    """Run the calibration, write its tables under ``table_dir`` (and into ``block`` of ``document``); returns
    the targets table."""
    runs = calibration_runs(config, seeds, output_dir, progress=progress)
    targets, zero = calibration_table(runs), zero_shot_table(runs)
    seeds_text = ", ".join(str(s) for s in seeds)
    first = write_table(targets, table_dir, "calibration", group_by="Benchmark",
                        title=f"Calibration targets, profile {config.profile}, seeds {seeds_text}")
    second = write_table(zero, table_dir, "calibration_zero_shot", group_by="Benchmark",
                         title=f"Zero-shot final accuracy per modality, profile {config.profile}, seeds {seeds_text}")
    if document:
        header = f"Written by `{command}`.\n\n" if command else ""
        paste_into(document, header + first["md"].read_text() + "\n" + second["md"].read_text(), block)
    return targets


# ---------------------------------------------------------------------- literature (--literature)
def _pairs_of(versions: dict, method_a: str, method_b: str) -> tuple:
    return tuple(sorted(set(versions.get(method_a, ())) | set(versions.get(method_b, ()))))


def literature_tables(checks: Sequence) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairs, summary) of :func:`calibrate_literature`'s checks, for :func:`mmcl.results.write_table`:
    one row per established pair (literature and testbed difference in points, outcome) and one per
    scenario (share of agreeing pairs, Kendall's tau, inversions, verdict). Numbers are written as
    text, as printed (``–`` for a missing run, ``n/a`` where nothing was compared), so that every
    format shows the same digits."""
    pair_rows, summary_rows = [], []
    for check in checks:
        versions, inputs = check.run_versions, check.run_inputs
        for pair in check.pairs:
            pair_rows.append({
                "scenario": check.scenario, "benchmark": check.benchmark,
                "literature order": f"{pair.better} > {pair.worse}",
                "literature difference (pp)": f"{pair.literature_difference:.2f}", "groups": pair.groups,
                "testbed difference (pp)": ("–" if pair.testbed_difference is None
                                            else f"{pair.testbed_difference:.2f}"),
                "outcome": pair.outcome, "run_versions": _pairs_of(versions, pair.better, pair.worse),
                "run_inputs": _pairs_of(inputs, pair.better, pair.worse)})
        summary_rows.append({
            "scenario": check.scenario, "benchmark": check.benchmark, "established pairs": len(check.pairs),
            "compared": len(check.compared),
            "agreeing (%)": "n/a" if check.share is None else f"{100 * check.share:.1f}",
            "Kendall's tau": "n/a" if check.tau is None else f"{check.tau:.3f}", "tau pairs": check.tau_pairs,
            "inversions": len(check.inversions), "verdict": check.verdict,
            "run_versions": tuple(sorted({p for pairs in versions.values() for p in pairs})),
            "run_inputs": tuple(sorted({p for pairs in inputs.values() for p in pairs}))})
    return pd.DataFrame(pair_rows), pd.DataFrame(summary_rows)


def calibrate_literature(config: Config, runs_dir: str | Path, table_dir: str | Path | None = None,
                         literature_file: str | Path | None = None) -> tuple[list, str]:
    """``mmcl calibrate --literature``: does the profile's stored runs keep the published orderings
    of the established methods (:mod:`mmcl.literature`)? Reads the runs of ``runs_dir/<profile>``
    (or of ``runs_dir`` itself) through :func:`mmcl.results.load_runs`: per scenario, its main
    benchmark's final accuracy, mean over the seeds present. Writes
    ``calibration_literature{,_summary}.{md,csv,tex}`` under ``table_dir`` (when given). Returns
    (the checks, the text to print)."""
    found = literature.load_literature(literature_file)
    root = Path(runs_dir)
    if (root / config.profile).is_dir():
        root = root / config.profile
    runs = load_runs(root)
    runs = runs[runs["profile"] == config.profile]
    index = method_index.methods()
    checks = []
    for scenario in [s for s in SCENARIOS if s in config.scenarios]:
        benchmark = config.scenarios[scenario].benchmark
        mode, table = literature.testbed_accuracy(runs, scenario, benchmark)
        testbed = {m: v for m, v in zip(table["method"], table["final_accuracy_mean"]) if not math.isnan(v)}
        compatible = [name for name, facts in index.items() if scenario in facts["compatible_scenarios"]]
        check = literature.compare(found.entries, testbed, scenario, compatible)
        check.benchmark, check.mode = benchmark, mode
        check.run_versions = dict(zip(table["method"], table["run_versions"]))
        check.run_inputs = dict(zip(table["method"], table["run_inputs"]))
        checks.append(check)
    numbers = len(found.entries)
    lines = [f"Literature check, profile {config.profile}, runs {root}: {numbers} published numbers from "
             f"{len(found.sources)} sources ({found.path}); a pair counts when every source orders it the "
             f"same way by >= {literature.SEPARATION:g} points; target >= {100 * literature.TARGET_SHARE:.0f} % "
             f"agreeing, no inversion > {literature.MAX_INVERSION:g} points"]
    for check in checks:
        lines += literature.format_check(check)
    outside = [f"{c.scenario}: {', '.join(c.not_in_mmcl)}" for c in checks if c.not_in_mmcl]
    if outside:
        lines.append(f"not run by mmcl in that scenario, their pairs skipped: {'; '.join(outside)}")
    missing = literature.missing_runs_line(checks, config.profile)
    if missing:
        lines.append(missing)
    if table_dir is not None:
        pairs, summary = literature_tables(checks)
        title = f"Literature check, profile {config.profile}"
        first = write_table(summary, table_dir, "calibration_literature_summary", title=title, group_by="Scenario")
        second = write_table(pairs, table_dir, "calibration_literature",
                             title=f"{title}: established pairs", group_by="Scenario")
        lines.append(f"tables: {first['md']}, {second['md']} (and .csv, .tex)")
    return checks, "\n".join(lines)
