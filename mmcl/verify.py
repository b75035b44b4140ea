"""Expected results with tolerances: does a reproduction match ours?

``mmcl/profiles/expected/<profile>.yaml`` holds the expected main-table numbers of a profile: per
scenario, benchmark, evaluation mode and method (the rows of :func:`mmcl.results.main_table`), the
mean final accuracy and forgetting over seeds, with a tolerance from the seed spread:
``max(TOLERANCE_SIGMAS * std over seeds, MIN_TOLERANCE)`` (one seed: ``MIN_TOLERANCE``). It is
written from a runs folder by ``mmcl verify --write-expected`` (:func:`write_expected`); every
entry records its ``source``: ``measured`` (our runs) or ``paper`` (a number a paper reports,
entered with its citation in ``reference``). ``mmcl verify`` (:func:`verify`) compares a
reproduction's runs with the file: one row per entry, ``pass`` when the measured mean lies within
the tolerance, ``fail`` otherwise, ``missing`` when the reproduction has no such row.

The runs are those under ``<runs>/<profile>`` (:func:`profile_root`; ``--runs runs/tiny``, the
profile's folder itself, is taken as meant). A folder with no complete run of the profile is one
error line, not a table of every expected number missing; a run whose ``metrics.json`` is damaged
is named in one warning line and counts as incomplete (missing).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
import yaml

from mmcl import kernels, records, results
from mmcl.config import SCENARIOS, ConfigError
from mmcl.data.benchmarks import load_benchmark

EXPECTED_DIR = Path(__file__).resolve().parent / "profiles" / "expected"
METRICS = ("final_accuracy", "forgetting")
TOLERANCE_SIGMAS = 2.0  # seed standard deviations
MIN_TOLERANCE = 1.0  # percentage points: the least tolerance, also for one seed
KEYS = ("scenario", "benchmark", "mode", "method", "metric")
VERDICT_COLUMNS = [*KEYS, "source", "expected", "tolerance", "measured", "difference", "verdict"]


def expected_file(profile: str) -> Path:
    return EXPECTED_DIR / f"{profile}.yaml"


def tolerance(std: float, seeds: int) -> float:
    """The tolerance of an expected mean with seed standard deviation ``std`` over ``seeds`` seeds."""
    spread = TOLERANCE_SIGMAS * std if seeds > 1 and not math.isnan(std) else 0.0
    return round(max(spread, MIN_TOLERANCE), 2)


def expected_entries(runs: pd.DataFrame) -> list[dict]:
    """One measured entry per main-table row and metric of ``runs`` (every scenario they hold)."""
    entries = []
    for scenario in SCENARIOS:
        table = results.main_table(runs, scenario, METRICS)
        for row in table.itertuples(index=False):
            for metric in METRICS:
                mean, std = getattr(row, f"{metric}_mean"), getattr(row, f"{metric}_std")
                if math.isnan(mean):
                    continue
                entries.append({"scenario": scenario, "benchmark": row.benchmark, "mode": row.mode,
                                "method": row.method, "metric": metric, "source": "measured",
                                "expected": round(float(mean), 2),
                                "std": None if math.isnan(std) else round(float(std), 2),
                                "seeds": int(row.seeds), "tolerance": tolerance(std, int(row.seeds))})
    return entries


def write_expected(runs: pd.DataFrame, path: str | Path, profile: str, command: str,
                   keep_paper: bool = True) -> Path:
    """Write the expected numbers of ``runs`` to ``path`` (entries of ``source: paper`` already
    there are kept when ``keep_paper``)."""
    path = Path(path)
    paper = [e for e in read_expected(path)["results"] if e["source"] == "paper"] if keep_paper and path.is_file() else []
    entries = expected_entries(runs)
    feeding = feeding_runs(runs, entries)

    def distinct(column: str) -> list:
        return sorted({str(v) for v in feeding[column].dropna()}) if column in feeding else []

    document = {"profile": profile, "command": command,
                # what produced the numbers: the code (commit, dirty flag, source fingerprint) and the
                # inputs (backbone file and benchmark data digests) recorded by the runs' manifests
                "produced_by": {"git_commit": distinct("git_commit"), "git_dirty": distinct("git_dirty"),
                                "source_fingerprint": distinct("source_fingerprint"),
                                "backbone_sha256": distinct("backbone_sha256"),
                                "data_sha256": distinct("data_sha256")},
                "tolerance": f"max({TOLERANCE_SIGMAS:g} x seed std, {MIN_TOLERANCE:g} points); one seed: "
                             f"{MIN_TOLERANCE:g} points",
                "results": entries + paper}
    header = (f"# Expected main-table numbers of the {profile} profile (mmcl verify). Written by the command\n"
              f"# below from its runs; entries with source: paper are numbers a paper reports.\n")
    records.atomic_write_text(path, header + yaml.safe_dump(document, sort_keys=False, width=120))
    return path


def read_expected(path: str | Path) -> dict:
    """The expected-results file, checked: a bad entry is a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no expected results for this profile; `mmcl verify --write-expected "
                          f"--runs DIR` writes them from a reproduction")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not YAML ({error})") from None
    if not isinstance(document.get("results"), list):
        raise ConfigError(f"{path}: key 'results' must be a list of entries")
    for number, entry in enumerate(document["results"]):
        where = f"{path}: results[{number}]"
        missing = [k for k in (*KEYS, "source", "expected", "tolerance") if k not in (entry or {})]
        if missing:
            raise ConfigError(f"{where}: missing key {missing[0]!r}")
        if entry["source"] not in ("measured", "paper"):
            raise ConfigError(f"{where}.source: 'measured' or 'paper', got {entry['source']!r}")
        if entry["metric"] not in METRICS:
            raise ConfigError(f"{where}.metric: one of {list(METRICS)}, got {entry['metric']!r}")
        for key in ("expected", "tolerance"):
            if not isinstance(entry[key], (int, float)) or (key == "tolerance" and entry[key] < 0):
                raise ConfigError(f"{where}.{key}: a {'non-negative ' if key == 'tolerance' else ''}number, "
                                  f"got {entry[key]!r}")
    return document


def verify(runs: pd.DataFrame, expected: dict) -> pd.DataFrame:
    """One row per expected entry (columns :data:`VERDICT_COLUMNS`): the measured mean, the
    difference measured - expected, and ``pass`` / ``fail`` / ``missing``."""
    measured = {tuple(e[k] for k in KEYS): e["expected"] for e in expected_entries(runs)} if len(runs) else {}
    rows = []
    for entry in expected["results"]:
        value = measured.get(tuple(entry[k] for k in KEYS))
        difference = None if value is None else round(value - entry["expected"], 2)
        verdict = "missing" if value is None else "pass" if abs(difference) <= entry["tolerance"] + 1e-9 else "fail"
        rows.append({**{k: entry[k] for k in KEYS}, "source": entry["source"], "expected": entry["expected"],
                     "tolerance": entry["tolerance"], "measured": value, "difference": difference, "verdict": verdict})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def feeding_runs(runs: pd.DataFrame, entries: list[dict]) -> pd.DataFrame:
    """The runs behind ``entries``' rows (same scenario, benchmark, mode and table label), not
    others in the same folder (e.g. ``mmcl calibrate``'s single-modality zero-shot runs)."""
    if runs.empty or not {"scenario", "benchmark", "mode", "label"} <= set(runs.columns):
        return runs
    keys = {(e["scenario"], e["benchmark"], e["mode"], e["method"]) for e in entries}
    rows = [key in keys for key in zip(runs["scenario"], runs["benchmark"], runs["mode"], runs["label"])]
    return runs[rows]


def inputs_note(runs: pd.DataFrame, expected: dict) -> str | None:
    """A line naming the inputs (backbone weights, benchmark data) the runs read that the expected
    numbers were not produced from (``produced_by`` of the file), or None when they agree or the file
    does not say. The tiny backbone and the benchmarks are generated on this machine with the kernels
    pinned (:mod:`mmcl.kernels`): the same bytes on every x86-64 CPU with AVX2 whose MKL computes on
    the pinned branch (``kernels.mkl_branch`` in the manifest); on another torch build, or where MKL
    could not be pinned, pre-training grows other last bits into other weights, and numbers may leave
    their tolerance."""
    produced = expected.get("produced_by") or {}
    runs = feeding_runs(runs, expected["results"])
    differ = []
    for column, name in (("backbone_sha256", "backbone"), ("data_sha256", "data")):
        known = set(produced.get(column) or [])
        ours = {str(v) for v in runs[column].dropna()} if column in runs else set()
        if known and ours - known:
            differ.append(f"{name} {', '.join(sorted(d[:12] for d in ours - known))} "
                          f"(expected file: {', '.join(sorted(d[:12] for d in known))})")
    if not differ:
        return None
    return ("note: these runs read other inputs than the expected numbers came from: " + "; ".join(differ)
            + ". With the kernels pinned, backbones and benchmarks are the same bytes on every x86-64 CPU with AVX2 "
              "whose MKL computes on the pinned branch (`mmcl inputs` says which branch: README, 'Same bytes on "
              "every machine'); on another torch build, numbers can move beyond a seed-spread tolerance.")


def summary(table: pd.DataFrame) -> str:
    """One line: how many entries pass, fail, are missing."""
    counts = table["verdict"].value_counts()
    passed = counts.get("pass", 0)
    return (f"{passed} of {len(table)} expected numbers reproduced within tolerance"
            f" ({counts.get('fail', 0)} fail, {counts.get('missing', 0)} missing)")


def profile_root(profile: str, runs_root: str | Path) -> Path:
    """The folder of ``profile``'s runs: ``<runs_root>/<profile>``, or ``runs_root`` itself when it
    already is that folder (named after the profile, holding scenario folders: ``--runs runs/tiny``).
    A ConfigError when ``runs_root`` is another profile's folder."""
    root = Path(runs_root)
    if (root / profile).is_dir() or not any((root / scenario).is_dir() for scenario in SCENARIOS):
        return root / profile
    if root.name == profile:
        return root
    raise ConfigError(f"--runs {root} holds the runs of one profile ({root.name}), not a runs folder with a "
                      f"{profile} folder in it; give --runs {root.parent} --profile {root.name}, or the folder "
                      f"above the {profile} runs")


def no_runs_error(profile: str, root: Path) -> ConfigError:
    """The one line of a runs folder that holds no complete run of ``profile``."""
    return ConfigError(f"no complete runs of the {profile} profile under {root}: nothing to verify (run "
                       f"`mmcl reproduce --profile {profile}` first, or give --runs the folder that holds "
                       f"{profile}/<scenario>/...)")


def profile_runs(profile: str, runs_root: str | Path) -> pd.DataFrame:
    """The complete runs under ``<runs_root>/<profile>`` (:func:`profile_root`; an empty frame when
    there are none)."""
    root = profile_root(profile, runs_root)
    return results.load_runs(root) if results.find_run_dirs(root) else pd.DataFrame()


def report(profile: str, runs_root: str | Path) -> pd.DataFrame | None:
    """For the figures notebook: print the verdict's summary line and return its table, or print
    that the profile has no expected results and return None."""
    path = expected_file(profile)
    if not path.is_file():
        print(f"no expected results for the {profile} profile ({path.name}); `mmcl verify --write-expected` "
              f"writes them from a reproduction")
        return None
    runs, expected = profile_runs(profile, runs_root), read_expected(path)
    table = verify(runs, expected)
    print(f"mmcl verify: {summary(table)}")
    note = inputs_note(runs, expected)
    if note:
        print(note)
    return table


def input_digests(config, benchmarks: list[str] | None = None, progress: bool = False,
                  seeds: list[int] | None = None) -> dict:
    """What a profile's runs read on this machine, made (and cached) if missing: the sha256 of the
    backbone's weights of each of ``seeds`` (default ``[config.seed]``; with
    ``model.pretrain.per_run_seed`` each seed has its own) and of each embedded (generated)
    benchmark's data, with the CPU and its kernels (:func:`mmcl.kernels.state`). Two machines that
    print the same digests compute the same numbers; ``mmcl inputs`` prints them, docs/benchmark.md
    lists those of our machines."""
    from mmcl.models.factory import build_encoder  # open_clip: only `mmcl inputs` builds a backbone

    kernels.require(config.runtime.portable_kernels)
    names = benchmarks or [name for name, spec in config.benchmarks.items() if spec.source == "synthetic"]
    backbones = {}
    for seed in seeds if seeds is not None else [config.seed]:
        encoder = build_encoder(config.model_copy(update={"seed": seed}), torch.device("cpu"), progress=progress)
        backbones[seed] = encoder.weights.get("sha256")
    data = {name: load_benchmark(config, name, encoder.tokenizer, progress=progress).digest() for name in names}
    return {"profile": config.profile, "backbones": backbones, "benchmarks": data, "kernels": kernels.state()}


def format_input_digests(found: dict) -> str:
    """The lines ``mmcl inputs`` prints: the machine and its kernels, then one digest per input."""
    state = found["kernels"]
    described = f"pinned to {state['level']}" if state["portable"] else "native: " + "; ".join(state["why_not"])
    if state["portable"] and not kernels.mkl_branch_honoured(state["cpu"]["vendor"]):
        described += f" (MKL's vendor answer: {state['kernels'].get('mkl_vendor', 'unknown')})"
    lines = [f"profile {found['profile']} on {state['cpu']['model']} (native {state['cpu']['native_level']}), "
             f"kernels {described}"]
    lines += [f"  {f'backbone, seed {seed}':28s} {digest}" for seed, digest in found["backbones"].items()]
    lines += [f"  {name:28s} {digest}" for name, digest in found["benchmarks"].items()]
    return "\n".join(lines)
