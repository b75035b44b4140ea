"""Run folders -> one pandas DataFrame -> the paper's tables (CSV, LaTeX booktabs, Markdown).

Every table and figure is built from :func:`load_runs`, which reads only what the engine wrote
into run folders (``metrics.json`` and ``order.json``; see :mod:`mmcl.records`), so every printed
number can be traced back to a run folder (the ``run_dir`` column).

The frame has one row per (run, evaluation mode): class- and domain-incremental runs have one
mode (``standard``), modality-incremental runs two (``modality_aware``, ``modality_agnostic``).
A run of an ablation variant has ``variant`` set and is labelled ``<method>~<variant>``. A run
whose configuration differs from the profile's defaults (its ``difference``, see
:func:`mmcl.runs.run_identity`) shows the difference in its label, ``replay (per_class=2)``,
so it is its own row in every table; runs of different identity are never averaged.

Every table carries the code version of its runs (source fingerprint and git commit, see
:func:`mmcl.records.code_version`): a ``code`` column in CSV, a footnote in LaTeX and Markdown.

This module imports no torch, so tables regenerate from stored records in seconds.
"""
from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mmcl import method_index
from mmcl.atomic import RUN_INCOMPLETE, atomic_write_text, read_json_record

log = logging.getLogger(__name__)

# The headline metrics of the main-results table, in column order.
MAIN_METRICS = ("final_accuracy", "average_incremental_accuracy", "forgetting")
SUMMARY_METRICS = ("final_accuracy", "average_incremental_accuracy", "forgetting", "bwt", "fwt",
                   "old_accuracy", "new_accuracy", "zero_shot_accuracy")
# The forgetting decomposition (metrics.json's ``forgetting_decomposition``, mmcl.metrics.
# forgetting_decomposition_summary): the column -> its key there. Absent (None) in runs recorded
# without it.
DECOMPOSITION_METRICS = {"own_old_accuracy": "final_own_old", "ncm_old_accuracy": "final_ncm_old",
                         "classifier_gap": "classifier_gap", "own_drop": "own_drop", "ncm_drop": "ncm_drop"}

# Short column headers with units; "higher is better" marks follow the usual CL convention.
METRIC_HEADERS = {
    "final_accuracy": "Final acc. (%)",
    "average_incremental_accuracy": "Avg. inc. acc. (%)",
    "forgetting": "Forgetting (pp)",
    "bwt": "BWT (pp)",
    "fwt": "FWT (pp)",
    "old_accuracy": "Old-class acc. (%)",
    "new_accuracy": "New-class acc. (%)",
    "zero_shot_accuracy": "Zero-shot acc. (%)",
    "delta_final_accuracy": "Δ final acc. (pp)",
    "own_old_accuracy": "Old acc., own (%)",
    "ncm_old_accuracy": "Old acc., NCM (%)",
    "classifier_gap": "NCM − own (pp)",
    "own_drop": "Own drop (pp)",
    "ncm_drop": "NCM drop (pp)",
}
HIGHER_IS_BETTER = {"final_accuracy": True, "average_incremental_accuracy": True, "forgetting": False,
                    "bwt": True, "fwt": True, "old_accuracy": True, "new_accuracy": True}

SCENARIO_TITLES = {"class_incremental": "Class-incremental", "domain_incremental": "Domain-incremental",
                   "modality_incremental": "Modality-incremental"}
MODE_TITLES = {"standard": "standard", "modality_aware": "modality-aware", "modality_agnostic": "modality-agnostic"}

# Reading order of methods in tables and legends: by family (a method's ``family``), the zero-shot
# floor first and the joint-training upper bound last (references: one that trains nothing opens the
# table, one that trains closes it), the reproduced papers' methods just before the bound. Within a
# family, METHOD_ORDER, then methods not listed there by name; unregistered methods come after all.
FAMILY_ORDER = ("reference-floor", "classic", "rehearsal", "fine-tuning", "prompt", "prototype", "paper",
                "reference-bound")
METHOD_ORDER = ("zero-shot", "finetune", "ewc", "lwf", "replay", "l2p", "moe-adapters", "comm", "joint")

COLUMNS = ["profile", "scenario", "benchmark", "method", "variant", "label", "seed", "mode", "num_tasks",
           *SUMMARY_METRICS, *DECOMPOSITION_METRICS, "accuracy_by_modality", "accuracy_matrix", "zero_shot",
           "task_names", "modality_order", "train_seconds", "eval_seconds", "run_seconds", "peak_rss_mib", "cuda_peak_mib",
           "identity", "difference", "source_fingerprint", "git_commit", "git_dirty", "backbone_sha256", "data_sha256",
           "run_dir", "role", "note", "buffer"]


def _value_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def difference_text(method: str, difference: dict | None) -> str:
    """``difference`` (dotted key -> value) as shown in a label: the method's own hyper-parameters
    by their short name (``per_class=2``), other keys dotted (``train.epochs=1``); "" for none."""
    own = f"methods.{method}."
    return ", ".join(f"{key.removeprefix(own)}={_value_text(value)}" for key, value in (difference or {}).items())


def method_label(method: str, variant: str | None = None, difference: dict | None = None) -> str:
    """The name a run is shown under: ``method``, ``method~variant`` for an ablation variant, and
    the difference from the profile in parentheses, ``replay (per_class=2)``, when there is one."""
    label = f"{method}~{variant}" if variant else method
    text = difference_text(method, difference)
    return f"{label} ({text})" if text else label


def label_parts(label: str) -> tuple[str, str | None, str | None]:
    """(method, variant, difference text) of a :func:`method_label`; None where absent."""
    name, _, difference = label.partition(" (")
    method, _, variant = name.partition("~")
    return method, (variant or None), (difference[:-1] if difference.endswith(")") else difference) or None


def split_label(label: str) -> tuple[str, str | None]:
    """(method, variant) of a :func:`method_label`; the variant is None for the base method."""
    return label_parts(label)[:2]


def family_rank(method: str) -> int:
    """Position of ``method``'s family in :data:`FAMILY_ORDER` (not a built-in method, or an unknown
    family: after all)."""
    known = method_index.family(method)
    if known is None:
        return len(FAMILY_ORDER)
    family, trains = known
    if family == "reference":
        family = "reference-bound" if trains else "reference-floor"
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)


def method_sort_key(label: str) -> tuple:
    """Sort key grouping methods by family (:data:`FAMILY_ORDER`), in :data:`METHOD_ORDER` within a
    family, each non-default configuration right after its method (or variant), each variant after
    its base method."""
    method, variant, difference = label_parts(label)
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return family_rank(method), rank, method, variant is not None, variant or "", difference or ""


def sort_methods(labels: Iterable[str]) -> list[str]:
    return sorted(set(labels), key=method_sort_key)


def find_run_dirs(*paths: str | Path) -> list[Path]:
    """Complete run folders (those holding a readable ``metrics.json``) at or below each path,
    sorted; the validation runs of ``mmcl tune`` (in a ``tuning`` folder below the path) are left
    out, and so is a run whose ``metrics.json`` is damaged (cut short or overwritten by something
    other than mmcl): one warning line names the file, and the run counts as incomplete."""
    found: set[Path] = set()
    for path in paths:
        path = Path(path)
        if (path / "metrics.json").is_file():
            found.add(path)
        elif path.is_dir():
            found.update(p.parent for p in path.rglob("metrics.json") if "tuning" not in p.relative_to(path).parts)
    return sorted(run_dir for run_dir in found if _metrics(run_dir) is not None)


def _metrics(run_dir: Path) -> dict | None:
    return read_json_record(run_dir / "metrics.json", RUN_INCOMPLETE)


def _rows_of_run(run_dir: Path) -> list[dict]:
    metrics = _metrics(run_dir)
    if metrics is None:  # damaged since find_run_dirs read it
        return []
    # order.json and manifest.json: a damaged one (named in one line) leaves its columns empty
    order = read_json_record(run_dir / "order.json", "its columns are left empty") or {}
    run = metrics["run"]
    timing = metrics.get("timing", {})
    memory = metrics.get("memory") or {}  # absent in runs recorded before memory was
    difference = run.get("difference") or {}
    manifest = read_json_record(run_dir / "manifest.json", "its columns are left empty") or {}
    decomposition = (metrics.get("forgetting_decomposition") or {}).get("modes") or {}
    rows = []
    for mode, summary in metrics["modes"].items():
        probe = decomposition.get(mode) or {}
        matrix = metrics["accuracy_matrix"][mode]
        row = {
            "profile": run["profile"], "scenario": run["scenario"], "benchmark": run["benchmark"],
            "method": run["method"], "variant": run.get("variant"),
            "label": method_label(run["method"], run.get("variant"), difference), "seed": int(run["seed"]),
            "mode": mode,
            "num_tasks": len(matrix),
            **{name: summary.get(name) for name in SUMMARY_METRICS},
            **{name: probe.get(key) for name, key in DECOMPOSITION_METRICS.items()},
            "accuracy_by_modality": summary.get("accuracy_by_modality"),
            "accuracy_matrix": matrix, "zero_shot": metrics.get("zero_shot", {}).get(mode),
            "task_names": metrics.get("task_names"), "modality_order": order.get("modality_order"),
            "train_seconds": timing.get("train_seconds"), "eval_seconds": timing.get("eval_seconds"),
            "run_seconds": timing.get("run_seconds_this_session"), "peak_rss_mib": memory.get("peak_rss_mib"),
            "cuda_peak_mib": memory.get("cuda_peak_mib"),
            # Runs recorded before identities and code versions were: None (unknown).
            "identity": run.get("identity"), "difference": difference,
            "source_fingerprint": run.get("source_fingerprint"), "git_commit": run.get("git_commit"),
            "git_dirty": run.get("git_dirty"),
            # What the run read: the backbone's weights and the benchmark's data, by content digest.
            "backbone_sha256": (manifest.get("backbone") or {}).get("sha256"),
            "data_sha256": (manifest.get("data") or {}).get("sha256"), "run_dir": str(run_dir),
        }
        row["role"], row["note"] = run.get("role"), run_note(row["label"], run, metrics)
        row["buffer"] = metrics.get("buffer")  # a rehearsal method's buffer (mmcl.models.exemplars.buffer_record)
        rows.append(row)
    return rows


def run_note(label: str, run: dict, metrics: dict) -> str | None:
    """What a table row is, where its label does not say it: a fair comparison's overrides,
    hyper-parameters that did not come from the validation search (``mmcl tune``) while a table's
    other rows may have. None when none applies. (The replay buffer is stated per benchmark by
    :func:`buffer_notes`, from the ``buffer`` column.)"""
    parts = []
    if run.get("role") == "comparison" and run.get("variant_overrides"):
        flat = _dotted(run["variant_overrides"])
        parts.append(f"{run['method']} with " + ", ".join(f"{k}={_value_text(v)}" for k, v in flat.items()))
    if run.get("tuned") is False:  # recorded for trained methods only; absent in older runs
        parts.append("not tuned: the method's own defaults, not chosen by the validation search")
    return f"{label}: " + "; ".join(parts) if parts else None


def _span(values: Sequence[float], text) -> str:
    """One number, or ``low–high`` when the seeds' records differ."""
    low, high = min(values), max(values)
    return text(low) if text(low) == text(high) else f"{text(low)}–{text(high)}"


def buffer_notes(runs: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(benchmark, label) -> the replay buffer its runs kept, as printed under a main table, from the
    records (``metrics.json``'s ``buffer``): ``"replay: buffer of 40 exemplars (5 per class), 5.0 % of
    the training data"``. Methods whose buffers hold the same on a benchmark share one line, each
    with its way of choosing exemplars where recorded (``"replay, icarl (herding): ..."``); the
    benchmark is named when ``runs`` hold several; a number that differs between seeds is shown as
    its range. Runs without a buffer give no entry."""
    has_buffer = [isinstance(b, dict) for b in runs.get("buffer", pd.Series([None] * len(runs), index=runs.index))]
    kept = runs[has_buffer].drop_duplicates("run_dir") if any(has_buffer) else runs.iloc[:0]
    several = runs["benchmark"].nunique() > 1
    lines: dict[tuple[str, str], list[str]] = {}  # (benchmark, buffer text) -> "label (selection)"
    for (benchmark, label), group in kept.groupby(["benchmark", "label"], sort=False):
        records = list(group["buffer"])
        caps = [r["buffer_size"] for r in records if r.get("buffer_size") is not None]
        cap = f", capped at {_span(caps, str)}" if caps else ""
        text = (f"buffer of {_span([r['size'] for r in records], str)} exemplars "
                f"({_span([r['per_class'] for r in records], str)} per class{cap}), "
                f"{_span([100 * r['share_of_training_data'] for r in records], lambda v: f'{v:.1f}')} % of the "
                "training data")
        selection = sorted({r["selection"] for r in records if r.get("selection")})
        lines.setdefault((benchmark, text), []).append(label + (f" ({', '.join(selection)})" if selection else ""))
    notes = {}
    for (benchmark, text), labels in lines.items():
        names = sorted(labels, key=lambda name: method_sort_key(name.split(" (")[0]))
        line = ", ".join(names) + (f" on {benchmark}" if several else "") + f": {text}"
        notes.update({(benchmark, name.split(" (")[0]): line for name in labels})
    return notes


def _dotted(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_runs(*paths: str | Path) -> pd.DataFrame:
    """Every complete run at or below ``paths`` as one DataFrame, one row per (run, evaluation mode).

    Columns: see :data:`COLUMNS`. Metric values are in percent (accuracies) or percentage points
    (forgetting, BWT, FWT). ``accuracy_matrix`` holds the run's T x T matrix (list of lists) for
    the row's mode. ``peak_rss_mib`` is the run's peak resident memory (MiB, the maximum over its
    tasks of the process's peak RSS; for a resumed run, of the processes that ran it) and
    ``cuda_peak_mib`` its peak CUDA allocation (None off CUDA). ``identity`` is the run's identity
    digest, ``difference`` how its configuration differs from the profile's defaults (dotted key
    -> value; shown in ``label``); ``source_fingerprint``, ``git_commit`` and ``git_dirty`` the
    code that made it (None for runs recorded before these were). Unfinished runs (no
    ``metrics.json``, or a damaged one, named in one warning line: :func:`find_run_dirs`) are ignored.

    Raises ValueError, naming both folders, when two runs share (profile, scenario, benchmark,
    mode, label, seed) but differ in identity: a table would average them as one.
    """
    rows = [row for run_dir in find_run_dirs(*paths) for row in _rows_of_run(run_dir)]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("variant", "identity", "source_fingerprint", "git_commit", "git_dirty", "backbone_sha256",
                   "data_sha256", "role", "note"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    require_single_identity(frame)
    return _ordered(frame, ["profile", "scenario", "benchmark", "mode", "label", "seed"])


IDENTITY_KEY = ["profile", "scenario", "benchmark", "mode", "label", "seed"]


def require_single_identity(runs: pd.DataFrame) -> None:
    """Raise ValueError naming two folders if runs that tables would treat as one (same
    :data:`IDENTITY_KEY`) differ in identity; an unrecorded identity counts as its own value."""
    if runs.empty or "identity" not in runs:
        return
    keyed = runs.assign(_identity=runs["identity"].map(lambda v: "unrecorded" if v is None else v))
    for keys, group in keyed.groupby(IDENTITY_KEY, sort=False, dropna=False):
        if group["_identity"].nunique() > 1:
            first = group.iloc[0]
            other = group[group["_identity"] != first["_identity"]].iloc[0]
            raise ValueError(
                f"runs {first['run_dir']} (identity {first['_identity']}) and {other['run_dir']} (identity "
                f"{other['_identity']}) are both {first['label']!r}, seed {first['seed']}, but differ in "
                f"configuration or come from different profile versions; load them separately or remove one")


def single_profile(runs: pd.DataFrame) -> str:
    """The one profile of ``runs``; mixing profiles in one table would compare unlike runs."""
    profiles = sorted(runs["profile"].unique())
    if len(profiles) != 1:
        raise ValueError(f"runs of several profiles {profiles}; select one first, e.g. runs[runs.profile == 'tiny']")
    return profiles[0]


# ---------------------------------------------------------------------------------- long frames
def accuracy_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Average accuracy on the seen tasks after each task, ``mean_{j<=i} A[i, j]``, one row per step.

    Columns: scenario, benchmark, mode, label, seed, task (1-based), accuracy (percent).
    """
    rows = []
    for run in runs.itertuples():
        matrix = np.asarray(run.accuracy_matrix, dtype=float)
        for i in range(len(matrix)):
            rows.append({"scenario": run.scenario, "benchmark": run.benchmark, "mode": run.mode, "label": run.label,
                         "seed": run.seed, "task": i + 1, "accuracy": float(matrix[i, : i + 1].mean())})
    return pd.DataFrame(rows, columns=["scenario", "benchmark", "mode", "label", "seed", "task", "accuracy"])


def modality_accuracy(runs: pd.DataFrame) -> pd.DataFrame:
    """Final accuracy per modality (modality-incremental runs), one row per (run, mode, modality)."""
    rows = []
    for run in runs.itertuples():
        for modality, accuracy in (run.accuracy_by_modality or {}).items():
            rows.append({"scenario": run.scenario, "benchmark": run.benchmark, "mode": run.mode, "label": run.label,
                         "seed": run.seed, "modality": modality, "accuracy": accuracy})
    return pd.DataFrame(rows, columns=["scenario", "benchmark", "mode", "label", "seed", "modality", "accuracy"])


def mean_accuracy_matrix(runs: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Element-wise mean of the accuracy matrices of ``runs`` (same method, different seeds).

    Entry (i, j) is the accuracy on the j-th task *of the stream* after training the i-th, which
    for different seeds holds different classes; the mean is over stream positions. Returns the
    mean matrix ``[T, T]`` and the number of runs averaged.
    """
    matrices = [np.asarray(m, dtype=float) for m in runs["accuracy_matrix"]]
    if not matrices:
        raise ValueError("no runs to average")
    shapes = {m.shape for m in matrices}
    if len(shapes) != 1:
        raise ValueError(f"accuracy matrices of different shapes {sorted(shapes)} cannot be averaged")
    return np.mean(matrices, axis=0), len(matrices)


# ------------------------------------------------------------------------------------- tables
def code_version_text(fingerprint: str | None, commit: str | None = None, dirty: bool | None = None) -> str:
    """``"a1b2c3d4e5f6 (commit 1234567, dirty)"``: a source fingerprint with the git commit when
    known; ``"unknown"`` for runs recorded before code versions were."""
    if not fingerprint:
        return "unknown"
    if not commit:
        return fingerprint
    return f"{fingerprint} (commit {commit[:7]}{', dirty' if dirty else ''})"


def _run_versions(group: pd.DataFrame) -> tuple[tuple[str, str], ...]:
    """(run folder, code version text) of every run of ``group``, sorted, each run once."""
    def column(name: str) -> list:
        return group[name].tolist() if name in group else [None] * len(group)

    versions = zip(column("source_fingerprint"), column("git_commit"), column("git_dirty"))
    return tuple(sorted({(str(run_dir), code_version_text(*version))
                         for run_dir, version in zip(column("run_dir"), versions)}))


def inputs_text(backbone: str | None, data: str | None) -> str:
    """``"backbone 1a2b3c4d5e6f, data 9f8e7d6c5b4a"``: the first 12 hex digits of the content digests
    of the weights and data a run read; ``"unrecorded"`` where a run predates these records."""
    return ", ".join(f"{what} {value[:12] if value else 'unrecorded'}" for what, value in
                     (("backbone", backbone), ("data", data)))


def _run_inputs(group: pd.DataFrame) -> tuple[tuple[str, str], ...]:
    """(run folder, :func:`inputs_text`) of every run of ``group``, sorted, each run once."""
    def column(name: str) -> list:
        return group[name].tolist() if name in group else [None] * len(group)

    texts = (inputs_text(b, d) for b, d in zip(column("backbone_sha256"), column("data_sha256")))
    return tuple(sorted({(str(run_dir), text) for run_dir, text in zip(column("run_dir"), texts)}))


def summarize_over_seeds(runs: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] = MAIN_METRICS) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) of ``metrics`` over seeds, grouped ``by``.

    Columns: ``by``, ``seeds`` (how many seeds), then ``<metric>_mean`` and ``<metric>_std`` for
    each metric, ``run_versions``: (run folder, code version) of every run averaged, from which
    :func:`write_table` states the code version, and ``run_inputs``: (run folder, weights and data
    digests, :func:`inputs_text`), from which it states what the runs read. With one seed the standard deviation is NaN
    (undefined), not 0. Raises ValueError if runs of different identity would share a row.
    """
    require_single_identity(runs)
    rows = []
    for keys, group in runs.groupby(list(by), sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = dict(zip(by, keys))
        row["seeds"] = group["seed"].nunique()
        for metric in metrics:
            values = pd.to_numeric(group[metric], errors="coerce").dropna()
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        row["run_versions"] = _run_versions(group)
        row["run_inputs"] = _run_inputs(group)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*by, "seeds", *[f"{m}_{s}" for m in metrics for s in ("mean", "std")],
                                       "run_versions", "run_inputs"])


def _sort_key(column: pd.Series) -> pd.Series:
    """Methods in reading order, modes aware-before-agnostic, everything else alphabetically."""
    if column.name in ("label", "method"):
        return column.map(method_sort_key)
    if column.name == "mode":
        return column.map(lambda m: list(MODE_TITLES).index(m) if m in MODE_TITLES else len(MODE_TITLES))
    return column


def _ordered(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    return table.sort_values(list(keys), key=_sort_key, ignore_index=True)


def main_table(runs: pd.DataFrame, scenario: str, metrics: Sequence[str] = MAIN_METRICS) -> pd.DataFrame:
    """Main results of one scenario: per benchmark, evaluation mode and method, mean ± std over seeds.

    Fair-comparison variants (``Method.comparisons``, run by the main sweeps) are rows of their own
    next to their method; ablation variants are left out (see :func:`ablation_table`). Columns:
    benchmark, mode, method, seeds, ``<metric>_mean``, ``<metric>_std``, ``run_versions`` and
    ``notes`` (what a comparison row is) and ``buffer_notes`` (the replay buffer a rehearsal method
    kept on the benchmark, :func:`buffer_notes`), written under the table by :func:`write_table`.
    """
    selected = runs[(runs["scenario"] == scenario) & (runs["variant"].isna() | is_comparison(runs))]
    if selected.empty:
        table = summarize_over_seeds(selected, ["benchmark", "mode", "label"], metrics)
        return table.assign(notes=[], buffer_notes=[]).rename(columns={"label": "method"})
    single_profile(selected)
    table = summarize_over_seeds(selected, ["benchmark", "mode", "label"], metrics)
    notes = selected.groupby(["benchmark", "mode", "label"], sort=False)["note"].agg(
        lambda values: tuple(sorted({v for v in values if isinstance(v, str)})))
    table["notes"] = [notes.get((b, m, label), ()) for b, m, label in zip(table["benchmark"], table["mode"],
                                                                         table["label"])]
    buffers = buffer_notes(selected)
    table["buffer_notes"] = [(buffers[(b, label)],) if (b, label) in buffers else ()
                             for b, label in zip(table["benchmark"], table["label"])]
    return _ordered(table, ["benchmark", "mode", "label"]).rename(columns={"label": "method"})


def is_paper_method(method: str) -> bool:
    """Whether ``method`` is a reproduced paper's method (``family == "paper"``: the MoE adapters, COMM)."""
    return method_family(method) == "paper"


def method_family(method: str) -> str | None:
    """The ``family`` a built-in method declares (rehearsal, prompt, ..., paper, reference), read from
    the method index (:mod:`mmcl.method_index`); None for a method the index does not list."""
    known = method_index.family(method)
    return known[0] if known is not None else None


def decomposition_runs(runs: pd.DataFrame, warn: bool = True) -> pd.DataFrame:
    """The main-table rows of ``runs`` (defaults and fair comparisons) that hold the forgetting
    decomposition; with ``warn``, one log line says how many runs were left out for lack of it (recorded
    before the probe, or with ``runtime.forgetting_decomposition`` off, or a mode without a representation)."""
    selected = runs[runs["variant"].isna() | is_comparison(runs)]
    recorded = pd.to_numeric(selected["ncm_old_accuracy"], errors="coerce").notna() if len(selected) else \
        pd.Series(dtype=bool)
    if warn and len(selected) and not recorded.all():
        missing = selected.loc[~recorded, "run_dir"].nunique()
        log.warning("forgetting decomposition: %d of %d runs hold none (recorded without the probe, or a mode "
                    "without a representation); left out", missing, selected["run_dir"].nunique())
    return selected[recorded] if len(selected) else selected


def forgetting_decomposition_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Old-class accuracy after the last task, the method's own classifier beside a nearest-class-mean
    probe on its representation (:mod:`mmcl.forgetting`), per scenario, benchmark, mode and method:
    mean ± std over seeds of :data:`DECOMPOSITION_METRICS` (``NCM − own``: how much better the old
    classes read from the representation than from the classifier; the drops: accuracy on old tasks
    when learned minus at the end, own and probe). Rows of runs without the diagnostic are left out
    (:func:`decomposition_runs`); empty when none has it."""
    selected = decomposition_runs(runs)
    keys = ["scenario", "benchmark", "mode", "label"]
    if selected.empty:
        return summarize_over_seeds(selected, keys, list(DECOMPOSITION_METRICS)).rename(columns={"label": "method"})
    single_profile(selected)
    table = summarize_over_seeds(selected, keys, list(DECOMPOSITION_METRICS))
    table["_scenario"] = table["scenario"].map(lambda s: list(SCENARIO_TITLES).index(s) if s in SCENARIO_TITLES else 9)
    table = _ordered(table, ["_scenario", *keys]).drop(columns="_scenario")
    return table.rename(columns={"label": "method"})


def is_comparison(runs: pd.DataFrame) -> pd.Series:
    """Rows of fair-comparison variants (recorded ``role``; absent in runs recorded before roles were)."""
    if "role" not in runs:
        return pd.Series(False, index=runs.index)
    return runs["role"].eq("comparison")


def ablation_table(runs: pd.DataFrame, metrics: Sequence[str] = MAIN_METRICS) -> pd.DataFrame:
    """Each ablation variant next to its base method (same scenario, benchmark and mode).

    Only methods with at least one variant run appear, and the full method only on the seeds its
    variants were run on. Columns: scenario, benchmark, mode, method,
    variant (``"full"`` for the base method), seeds, ``<metric>_mean`` / ``_std``,
    ``delta_final_accuracy``: the variant's mean final accuracy minus the base method's
    (positive: the variant is better), and ``run_versions`` (see :func:`summarize_over_seeds`).
    The base must have been run; otherwise the delta is NaN. A configuration other than the
    profile's defaults is its own row, its difference appended to the variant
    (``"full (train.epochs=1)"``), and compared with the full method of the same difference.
    """
    columns = ["scenario", "benchmark", "mode", "method", "variant", "seeds",
               *[f"{m}_{s}" for m in metrics for s in ("mean", "std")], "delta_final_accuracy", "run_versions",
               "run_inputs"]
    runs = runs[~is_comparison(runs)]  # fair comparisons are rows of the main tables
    if runs[runs["variant"].notna()].empty:
        return pd.DataFrame(columns=columns)
    differences = runs["difference"] if "difference" in runs else [None] * len(runs)
    runs = runs.assign(configuration=[difference_text(m, d) for m, d in zip(runs["method"], differences)],
                       is_full=runs["variant"].isna())
    variants = runs[runs["variant"].notna()]
    single_profile(variants)
    # The full method is compared on the seeds its variants were run on (ablations may use fewer
    # seeds than the main tables), so a difference is never a difference of class orders.
    keys = ["scenario", "benchmark", "mode", "method", "configuration", "seed"]
    selected = runs.merge(variants[keys].drop_duplicates(), on=keys)
    selected["variant"] = [(v if isinstance(v, str) else "full") + (f" ({d})" if d else "")
                           for v, d in zip(selected["variant"], selected["configuration"])]
    table = summarize_over_seeds(selected, ["scenario", "benchmark", "mode", "method", "configuration", "is_full",
                                            "variant"], metrics)
    base = table[table["is_full"].astype(bool)].set_index(["scenario", "benchmark", "mode", "method", "configuration"])
    reference = base["final_accuracy_mean"] if "final_accuracy_mean" in base else None
    table["delta_final_accuracy"] = [
        (row.final_accuracy_mean - reference.get((row.scenario, row.benchmark, row.mode, row.method, row.configuration),
                                                 math.nan))
        if reference is not None else math.nan for row in table.itertuples()]
    table["_full_first"] = ~table["is_full"].astype(bool)
    table = _ordered(table, ["scenario", "benchmark", "method", "mode", "configuration", "_full_first", "variant"])
    return table[columns]


def format_mean_std(mean: float, std: float, decimals: int = 1, plus_minus: str = " ± ") -> str:
    """``"72.3 ± 1.2"``; the mean alone when the std is undefined (one seed); ``"–"`` when missing."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    mean = round(mean, decimals) + 0.0  # + 0.0 turns a rounded -0.0 into 0.0
    if std is None or math.isnan(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f}{plus_minus}{std:.{decimals}f}"


def display_table(table: pd.DataFrame, decimals: int = 1, plus_minus: str = " ± ") -> pd.DataFrame:
    """A results table with ``<metric>_mean`` / ``_std`` pairs merged into ``"mean ± std"`` strings.

    Modes are shown by their titles; a ``mode`` column holding only ``standard`` is dropped, and
    so is ``run_versions`` (:func:`write_table` states the code version under the table).
    """
    shown = table.drop(columns=["run_versions", "run_inputs", "notes", "buffer_notes"], errors="ignore")
    metrics = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    for metric in metrics:
        shown[METRIC_HEADERS.get(metric, metric)] = [
            format_mean_std(m, s, decimals, plus_minus) for m, s in zip(table[f"{metric}_mean"], table[f"{metric}_std"])]
        shown = shown.drop(columns=[f"{metric}_mean", f"{metric}_std"])
    if "delta_final_accuracy" in shown:
        shown[METRIC_HEADERS["delta_final_accuracy"]] = [
            "–" if math.isnan(v) else f"{round(v, decimals) + 0.0:+.{decimals}f}" for v in shown.pop("delta_final_accuracy")]
    if "mode" in shown:
        if set(shown["mode"]) <= {"standard"}:
            shown = shown.drop(columns="mode")
        else:
            shown["mode"] = shown["mode"].map(lambda m: MODE_TITLES.get(m, m))
    if "scenario" in shown:
        shown["scenario"] = shown["scenario"].map(lambda s: SCENARIO_TITLES.get(s, s))
    return shown.rename(columns={c: c.capitalize() for c in ("scenario", "benchmark", "mode", "method",
                                                             "variant", "seeds")})


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def _latex_cell(text: str, bold: bool = False) -> str:
    text = str(text)
    if " ± " in text:
        mean, std = text.split(" ± ")
        return f"$\\mathbf{{{mean} \\pm {std}}}$" if bold else f"${mean} \\pm {std}$"
    cell = latex_escape(text).replace("Δ", r"$\Delta$").replace("–", "--").replace(PAPER_MARK, r"$^\dagger$")
    return f"\\textbf{{{cell}}}" if bold else cell


def to_latex(shown: pd.DataFrame, group_by: str | None = None, comment: str = "",
             footnotes: Sequence[str] = (), bold: set[tuple[int, str]] = frozenset()) -> str:
    """A booktabs ``tabular`` of a display table; a ``\\midrule`` separates groups of ``group_by``.

    Text columns are left-aligned, numbers right-aligned. Only the tabular is written, so a paper
    wraps it in its own ``table`` environment (``\\input{...}``). Needs ``\\usepackage{booktabs}``.
    Each of ``footnotes`` is a small full-width line under the bottom rule. The cells of ``bold``
    ((row position, column name) pairs) are set in bold.
    """
    text_columns = {"Scenario", "Benchmark", "Mode", "Method", "Variant"}
    align = "".join("l" if c in text_columns else "r" for c in shown.columns)
    lines = [f"% {line}" for line in comment.splitlines() if line] + [
        f"\\begin{{tabular}}{{{align}}}", r"\toprule",
        " & ".join(_latex_cell(c) for c in shown.columns) + r" \\", r"\midrule"]
    previous = None
    for position, (_, row) in enumerate(shown.iterrows()):
        if group_by is not None and previous is not None and row[group_by] != previous:
            lines.append(r"\midrule")
        previous = row[group_by] if group_by is not None else None
        lines.append(" & ".join(_latex_cell(v, (position, c) in bold) for c, v in row.items()) + r" \\")
    lines.append(r"\bottomrule")
    lines += [f"\\multicolumn{{{len(shown.columns)}}}{{l}}{{\\footnotesize {_latex_cell(note)}}} \\\\"
              for note in footnotes]
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


def to_markdown(shown: pd.DataFrame, bold: set[tuple[int, str]] = frozenset()) -> str:
    """A GitHub-flavoured Markdown table of a display table (numbers right-aligned); the cells of
    ``bold`` ((row position, column name) pairs) in bold."""
    text_columns = {"Scenario", "Benchmark", "Mode", "Method", "Variant", "Claim", "Rival", "Claimed", "Verdict"}

    def cell(value, strong: bool = False) -> str:
        text = str(value).replace("|", r"\|")
        return f"**{text}**" if strong else text

    header = "| " + " | ".join(cell(c) for c in shown.columns) + " |"
    rule = "|" + "|".join(":---" if c in text_columns else "---:" for c in shown.columns) + "|"
    body = ["| " + " | ".join(cell(v, (position, c) in bold) for c, v in zip(shown.columns, row)) + " |"
            for position, row in enumerate(shown.itertuples(index=False))]
    return "\n".join([header, rule, *body]) + "\n"


PAPER_MARK = "†"


def is_reference(method: str) -> bool:
    """Whether ``method`` is a bound rather than a competitor (``family == "reference"``: zero-shot, joint)."""
    return method_family(method) == "reference"


def highlight_main_table(table: pd.DataFrame, shown: pd.DataFrame,
                         decimals: int = 1) -> tuple[pd.DataFrame, set[tuple[int, str]], str]:
    """What a main table marks: the best mean of each metric column within each benchmark (and
    mode), the references (:func:`is_reference`) left out and ties at the printed precision all
    marked, and the reproduced papers' rows (:func:`is_paper_method`), whose method gets
    :data:`PAPER_MARK`. Returns (``shown`` with the marks, the bold cells as (row position, column
    name) pairs, the legend line under the table; "" when nothing is marked)."""
    shown = shown.copy()
    methods = table["method"].tolist()
    papers = [is_paper_method(split_label(m)[0]) for m in methods]
    if "Method" in shown:
        shown["Method"] = [f"{m}{PAPER_MARK}" if paper else m for m, paper in zip(shown["Method"], papers)]
    competing = np.array([not is_reference(split_label(m)[0]) for m in methods], dtype=bool)
    blocks = table[[c for c in ("benchmark", "mode") if c in table]].astype(str).agg(" ".join, axis=1) \
        if {"benchmark", "mode"} & set(table) else pd.Series("", index=table.index)
    bold = set()
    for metric, higher in HIGHER_IS_BETTER.items():
        if f"{metric}_mean" not in table or METRIC_HEADERS[metric] not in shown:
            continue
        means = pd.to_numeric(table[f"{metric}_mean"], errors="coerce").round(decimals).to_numpy(float)
        for block in blocks.unique():
            rows = np.flatnonzero((blocks == block).to_numpy() & competing & ~np.isnan(means))
            if len(rows) < 2:  # a block of one method: nothing to compare
                continue
            best = means[rows].max() if higher else means[rows].min()
            bold |= {(int(r), METRIC_HEADERS[metric]) for r in rows if means[r] == best}
    parts = []
    if any(papers):
        parts.append(f"{PAPER_MARK} a reproduced paper's method")
    if bold:
        where = " and mode" if "mode" in table and table["mode"].nunique() > 1 else ""
        parts.append(f"bold: the best mean of each column per benchmark{where} (references zero-shot and joint "
                     "not competing)")
    legend = "; ".join(parts) + "."
    return shown, bold, legend[0].upper() + legend[1:] if parts else ""


def table_notes(table: pd.DataFrame) -> list[str]:
    """The rows' notes (see :func:`main_table`), each once, in the table's order; the replay
    buffers (``buffer_notes``) after the others, together."""
    columns = [column for column in ("notes", "buffer_notes") if column in table]
    return list(dict.fromkeys(note for column in columns for notes in table[column] for note in notes))


def code_footnotes(table: pd.DataFrame) -> list[str]:
    """The code version of a table's runs (from its ``run_versions`` column), as footnote lines:
    ``["Code: source a1b2c3d4e5f6 (commit 1234567, dirty)"]``; when the runs come from several
    versions, a line saying so and one line per version with its number of runs."""
    if "run_versions" not in table:
        return []
    version_of_run = dict(pair for pairs in table["run_versions"] for pair in pairs)
    counts: dict[str, int] = {}
    for version in version_of_run.values():
        counts[version] = counts.get(version, 0) + 1
    if len(counts) == 1:
        return [f"Code: source {next(iter(counts))}"]
    if not counts:
        return []
    lines = [f"Code: mixed, the {len(version_of_run)} runs come from {len(counts)} code versions:"]
    lines += [f"source {version}: {count} run{'s' if count != 1 else ''}"
              for version, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    return lines


def _seed_of(run_dir: str) -> int | None:
    """The seed of a run folder (``.../seed<k>``, :func:`mmcl.records.run_dir`); None for another layout."""
    found = re.fullmatch(r"seed(\d+)", Path(run_dir).name)
    return int(found.group(1)) if found else None


def input_footnotes(table: pd.DataFrame) -> list[str]:
    """What a table's runs read (its ``run_inputs`` column), as footnote lines, one per benchmark
    when benchmarks differ: ``"Inputs: backbone 1a2b3c4d5e6f, data 9f8e7d6c5b4a"`` when every run
    read the same weights and data; ``"Inputs, one per seed: seed 0: backbone ..., data ...; seed
    1: ..."`` when each seed's runs read the same ones (each seed its own backbone,
    ``model.pretrain.per_run_seed``: the methods are compared within a seed); a line starting
    ``MIXED`` when runs of one seed read different weights or data (their numbers are not
    comparable: rebuild one cache)."""
    if "run_inputs" not in table:
        return []
    benchmarks = table["benchmark"] if "benchmark" in table else pd.Series([None] * len(table), index=table.index)
    by_benchmark: dict[str | None, dict[str, str]] = {}
    for benchmark, pairs in zip(benchmarks, table["run_inputs"]):
        by_benchmark.setdefault(benchmark, {}).update(dict(pairs))
    lines = []
    for benchmark, inputs in by_benchmark.items():
        where = f" ({benchmark})" if benchmark is not None and len(by_benchmark) > 1 else ""
        lines += _inputs_lines(inputs, where)
    return lines


def _inputs_lines(inputs: dict[str, str], where: str) -> list[str]:
    """The footnote lines of one benchmark's runs: {run folder: :func:`inputs_text`}."""
    counts: dict[str, int] = {}
    per_seed: dict[int | None, set[str]] = {}
    for run_dir, text in inputs.items():
        counts[text] = counts.get(text, 0) + 1
        per_seed.setdefault(_seed_of(run_dir), set()).add(text)
    if not counts:
        return []
    if len(counts) == 1:
        return [f"Inputs{where}: {next(iter(counts))}"]
    if None not in per_seed and all(len(texts) == 1 for texts in per_seed.values()):
        return [f"Inputs{where}, one per seed: "
                + "; ".join(f"seed {seed}: {next(iter(per_seed[seed]))}" for seed in sorted(per_seed))]
    log.warning("table runs%s read different weights or data: %s", where, counts)
    return [f"MIXED inputs{where}: the {len(inputs)} runs read {len(counts)} different weights/data; "
            "their numbers are not comparable:"] + [
        f"{text}: {count} run{'s' if count != 1 else ''}"
        for text, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]


def write_table(table: pd.DataFrame, directory: str | Path, name: str, title: str = "",
                group_by: str | None = "Benchmark", decimals: int = 1, highlight: bool = False) -> dict[str, Path]:
    """Write ``table`` as ``<name>.csv`` (numeric: means, stds, seed counts), ``<name>.tex``
    (booktabs) and ``<name>.md`` (both ``mean ± std``) under ``directory``; returns the paths.

    Every format states the code version of the runs behind the table (its ``run_versions``
    column, see :func:`summarize_over_seeds`): the CSV in a ``code`` column (each row's versions,
    ``; ``-separated), LaTeX and Markdown in a footnote (:func:`code_footnotes`). Each file is
    written atomically (:mod:`mmcl.atomic`): a full or read-only disk raises
    :class:`~mmcl.atomic.DiskWriteError` naming it and leaves no half-written table.

    ``highlight`` (main tables): LaTeX and Markdown mark the best number of each column and the
    reproduced papers' rows, with a legend line (:func:`highlight_main_table`).
    """
    directory = Path(directory)
    shown = display_table(table, decimals)
    if group_by not in shown.columns:
        group_by = None
    bold: set[tuple[int, str]] = set()
    legend = ""
    if highlight and "method" in table:
        shown, bold, legend = highlight_main_table(table, shown, decimals)
    footnotes = [legend] * bool(legend) + table_notes(table) + code_footnotes(table) + input_footnotes(table)
    comment = (f"{title}\n" if title else "") + "mean ± sample std over seeds; generated by mmcl.results from run records"
    paths = {"csv": directory / f"{name}.csv", "tex": directory / f"{name}.tex", "md": directory / f"{name}.md"}
    numbers = table.drop(columns=["run_versions", "run_inputs", "notes", "buffer_notes"], errors="ignore")
    if "run_versions" in table:
        numbers["code"] = ["; ".join(sorted({version for _, version in pairs})) for pairs in table["run_versions"]]
    if "run_inputs" in table:
        numbers["inputs"] = ["; ".join(sorted({text for _, text in pairs})) for pairs in table["run_inputs"]]
    atomic_write_text(paths["csv"], numbers.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(paths["tex"], to_latex(shown, group_by, comment, footnotes, bold))
    # Markdown: a paragraph under the table; the versions of a mixed table as a list.
    notes = "\n" + "".join(f"- {line}\n" for line in footnotes) if footnotes else ""
    heading = f"**{title}** (mean ± std over seeds)\n\n" if title else ""
    atomic_write_text(paths["md"], heading + to_markdown(shown, bold) + notes)
    return paths


def appendix_benchmarks(config) -> dict[str, list[str]]:
    """Scenario -> its appendix benchmarks (``scenarios.<name>.appendix`` of a profile)."""
    return {name: list(scenario.appendix) for name, scenario in config.scenarios.items() if scenario.appendix}


def write_tables(runs: pd.DataFrame, directory: str | Path,
                 appendix: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict[str, Path]]:
    """Every table of the paper from ``runs``: ``main_<scenario>`` per scenario present,
    ``ablations`` when variants were run, and ``forgetting_decomposition`` when runs hold it. Benchmarks of ``appendix`` (scenario -> names, see
    :func:`appendix_benchmarks`) are left out of those and reported in ``appendix_<scenario>``.
    Returns table name -> format -> path."""
    appendix = appendix or {}
    is_appendix = pd.Series([b in appendix.get(s, ()) for s, b in zip(runs["scenario"], runs["benchmark"])],
                            index=runs.index, dtype=bool)
    main_runs, appendix_runs = runs[~is_appendix], runs[is_appendix]
    written = {}
    for scenario in [s for s in SCENARIO_TITLES if s in set(main_runs["scenario"])]:
        table = main_table(main_runs, scenario)
        if not table.empty:
            written[f"main_{scenario}"] = write_table(table, directory, f"main_{scenario}",
                                                      f"{SCENARIO_TITLES[scenario]} learning: main results",
                                                      highlight=True)
    for scenario in [s for s in SCENARIO_TITLES if s in set(appendix_runs["scenario"])]:
        table = main_table(appendix_runs, scenario)
        if not table.empty:
            written[f"appendix_{scenario}"] = write_table(
                table, directory, f"appendix_{scenario}",
                f"{SCENARIO_TITLES[scenario]} learning: appendix benchmarks (stress tests, not in the main table or "
                "the claims)", highlight=True)
    ablations = ablation_table(main_runs)
    if not ablations.empty:
        written["ablations"] = write_table(ablations, directory, "ablations", "Ablations", group_by="Method")
    decomposition = forgetting_decomposition_table(main_runs)
    if not decomposition.empty:
        written["forgetting_decomposition"] = write_table(
            decomposition, directory, "forgetting_decomposition",
            "Why methods forget: old-class accuracy after the last task, own classifier vs a nearest-class-mean "
            "probe on the method's representation", group_by="Scenario")
    return written
