"""Run folders: what a run is (its identity), where it lives, and the files the engine keeps in it.

A run's identity (:func:`run_identity`) picks its folder (:func:`locate_run`); the folder holds
``config.yaml``, ``order.json``, ``manifest.json``, ``zero_shot.json``, ``tasks.jsonl``, the
checkpoints (:func:`save_checkpoint`) and, last, ``metrics.json`` (:func:`write_metrics`).

Fault tolerance: one process at a time writes a run folder (:func:`mmcl.records.run_lock`, a
``flock`` on ``<run>/.lock`` that the kernel releases when its holder dies); a second one stops
with a one-line message, or waits ``runtime.wait_for_lock`` seconds and then reuses the run the
first one finished. On resume, temporaries left by a killed writer are deleted, and a damaged
newest checkpoint (truncated, garbage, missing keys) falls back to the one before it (two are
kept), or to task 0, with a one-line warning, and so does one holding objects other than tensors
and plain data (read by :func:`mmcl.records.load_tensors`, which runs no code from a file);
``tasks.jsonl`` is rewritten from the checkpoint's rows (:func:`resume`). A damaged run record
(``metrics.json``, ``manifest.json``, ``zero_shot.json`` cut short by something other than mmcl) is
named in one warning line and read as absent: the run counts as incomplete, resumes, and writes it
again (:func:`mmcl.atomic.read_json_record`). Each task's row records the process memory (peak and
current RSS, the task's CUDA peak), ``metrics.json`` their maximum. ``MMCL_FAULT`` kills a run at
named points, for tests (:func:`mmcl.records.fault_point`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import yaml

from mmcl import kernels, records
from mmcl.config import Config, ConfigError, config_to_yaml, parse_yaml, profile_defaults
from mmcl.data.stream import Stream, Task
from mmcl.hparams import resolved_method_values, scenario_benchmark, with_method_overrides
from mmcl.methods import method_class
from mmcl.methods.base import Method
from mmcl.metrics import forgetting_decomposition_summary, summarize
from mmcl.tuned import tuned_values

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    skipped: bool = False  # True when a complete run was found and reused

    @property
    def made_by_other_code(self) -> bool:
        """Whether the run's recorded source fingerprint differs from the running code's (or is unknown)."""
        return self.metrics.get("run", {}).get("source_fingerprint") != records.source_fingerprint()

    @property
    def accuracy_matrix(self) -> dict[str, list[list[float]]]:
        return self.metrics["accuracy_matrix"]


# ------------------------------------------------------------------------ identity and location
def run_identity(config: Config, method: str, benchmark: str, hparams: dict | None = None,
                 scenario: str | None = None) -> dict:
    """The identity of a run of ``method`` on ``benchmark`` with ``config`` (whose ``seed`` is the
    run's seed): what can change the run's numbers, as a JSON-able mapping.

    It is the resolved configuration with these left out: ``runtime`` (devices, threads, output
    folder, progress bars), ``data.cache_dir`` and ``benchmarks.<name>.path`` (where caches and
    prepared data lie, not what they hold), ``scenarios`` (it only names each scenario's default
    benchmark, which the run's folder already holds), every benchmark but this run's (without its
    ``description``) and every method but this one. The method's entry holds its *resolved*
    hyper-parameters (``hparams``, or the dataclass built from :func:`resolved_method_values` of
    ``scenario``: defaults < tuned values < ``config.methods``), so setting a hyper-parameter to
    its default value is no difference, and tuned defaults are part of the identity. ``tuning``
    (the trial budget of ``mmcl tune``) is left out; ``train.eval_split`` is in.
    """
    identity = config.model_dump(mode="json")
    for section in ("runtime", "scenarios", "tuning"):
        identity.pop(section, None)
    identity["data"].pop("cache_dir", None)
    entry = identity["benchmarks"].get(benchmark)
    if entry is not None:
        entry.pop("path", None)
        entry.pop("description", None)
    identity["benchmarks"] = {benchmark: entry}
    if hparams is None:
        values = resolved_method_values(config, scenario, method) if scenario else config.methods.get(method)
        hparams = asdict(method_class(method).make_config(values))
    identity["methods"] = {method: json.loads(json.dumps(hparams, default=str))}
    if not config.runtime.portable_kernels:  # numbers of this CPU's kernel level: not those of a portable run
        identity["kernels"] = kernels.machine_tag()
    return identity


@dataclass
class RunLocation:
    """Where a run lives and what it is: see :func:`locate_run`."""

    run_dir: Path
    config: Config  # the run's resolved configuration (method overrides merged, seed set)
    method: str
    benchmark: str
    identity: str  # records.identity_digest of the run's identity
    difference: dict  # dotted key -> value where the identity differs from the profile's defaults
    scenario: str | None = None


def locate_run(config: Config, scenario: str, method: str, seed: int | None = None, benchmark: str | None = None,
               output_dir: str | Path | None = None, variant: str | None = None,
               hparams: dict | None = None) -> RunLocation:
    """The folder and identity of a run (see :func:`mmcl.engine.run`), without touching the disk.

    The default folder ``<out>/<profile>/<scenario>/<benchmark>/<method>[~<variant>]/seed<k>``
    holds the run whose identity equals the profile's defaults (the profile loaded without
    overrides, plus the variant's ``hparams``, with portable kernels); any other identity goes to
    ``<method>[~<variant>]@<8 hex digits of the difference>/seed<k>``.
    """
    seed = config.seed if seed is None else seed
    if hparams and not variant:
        raise ValueError("hyper-parameter overrides need a variant name, so the run gets its own folder")
    config = with_method_overrides(config, method, hparams).model_copy(update={"seed": seed})
    benchmark = scenario_benchmark(config, scenario, benchmark)
    identity = run_identity(config, method, benchmark, scenario=scenario)  # fails fast on a bad method or key
    default = with_method_overrides(profile_defaults(config), method, hparams).model_copy(update={"seed": seed})
    # The default folder holds portable runs, even in a process whose kernels are native (MMCL_PORTABLE_KERNELS=0).
    default.runtime = default.runtime.model_copy(update={"portable_kernels": True})
    difference = records.identity_difference(identity, run_identity(default, method, benchmark, scenario=scenario))
    # Validation runs (mmcl tune) live apart, in <out>/<profile>/tuning/...: never read as reported runs.
    tree = f"{config.profile}/tuning" if config.train.eval_split == "val" else config.profile
    run_dir = records.run_directory(output_dir or config.runtime.output_dir, tree, scenario, benchmark,
                                    records.run_name(method, variant, difference), seed)
    return RunLocation(run_dir, config, method, benchmark, records.identity_digest(identity), difference, scenario)


MANIFEST_DAMAGED = "the run's identity is read from its config.yaml, and running the run writes the manifest again"


def stored_identity(run_dir: Path) -> tuple[str | None, dict | None]:
    """(identity digest, identity mapping) of the run recorded in ``run_dir``; None where unknown.

    The digest is the one the manifest records; runs made before identities were recorded get it
    from their ``config.yaml`` and recorded hyper-parameters, as :func:`run_identity` computes it.
    """
    manifest_path = run_dir / "manifest.json"
    # A damaged manifest (cut short by something other than mmcl) reads as absent; the run rewrites it.
    manifest = records.read_json_record(manifest_path, MANIFEST_DAMAGED) or {}
    run_record = manifest.get("run", {})
    mapping = None
    try:
        stored = Config.model_validate(parse_yaml((run_dir / "config.yaml").read_text()))
        # Without a manifest (a crash right after config.yaml), the folder names both:
        # <benchmark>/<method>[~<variant>][@<digest>]/seed<k>.
        method = run_record.get("method") or run_dir.parent.name.split("@")[0].split("~")[0]
        benchmark = run_record.get("benchmark") or run_dir.parent.parent.name
        mapping = run_identity(stored, method, benchmark, run_record.get("hparams"))
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        mapping = None  # unreadable or no longer valid: no identity can equal it
    digest = run_record.get("identity") or (records.identity_digest(mapping) if mapping is not None else None)
    return digest, mapping


def is_reusable(location: RunLocation) -> bool:
    """Whether ``location`` holds a complete run of exactly this identity."""
    return records.is_complete(location.run_dir) and stored_identity(location.run_dir)[0] == location.identity


def _other_configuration(location: RunLocation, state: str) -> ConfigError:
    _, mapping = stored_identity(location.run_dir)
    current = run_identity(location.config, location.method, location.benchmark, scenario=location.scenario)
    keys = list(records.identity_difference(current, mapping)) if mapping is not None else []
    differs = f" (it differs in {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})" if keys else ""
    return ConfigError(f"{location.run_dir} holds {state} run with a different configuration{differs}: the profile "
                       f"or the method's defaults changed since it started; pass force=True (CLI: --force; "
                       f"mmcl reproduce: --rerun-stale) to start it again")


def reused(location: RunLocation) -> RunResult:
    """The complete run at ``location``, which must be of the same identity."""
    if stored_identity(location.run_dir)[0] != location.identity:
        raise _other_configuration(location, "a complete")
    return RunResult(location.run_dir, records.read_json(location.run_dir / "metrics.json"), skipped=True)


# ------------------------------------------------------------------------ the run's records
def prepare_folder(location: RunLocation, force: bool) -> RunResult | None:
    """Make the run folder ready for this process to write (its lock held): emptied with ``force``;
    else the complete run when another process finished it while this one waited for the lock, or
    None after deleting the temporaries of a killed writer and checking that an unfinished run
    there is of this identity."""
    run_dir = location.run_dir
    if force:
        records.clear_run_folder(run_dir)
    elif records.is_complete(run_dir):  # another process finished the run while this one waited for the lock
        return reused(location)
    records.remove_temporaries(run_dir)  # left by a killed process; none is being written now
    if (run_dir / "config.yaml").is_file() and stored_identity(run_dir)[0] != location.identity:
        raise _other_configuration(location, "an unfinished")
    return None


def run_record(location: RunLocation, scenario: str, variant: str | None) -> dict:
    """What the run is, as ``manifest.json`` and ``metrics.json`` record it under ``run``."""
    config, method = location.config, location.method
    record = {"scenario": scenario, "benchmark": location.benchmark, "method": method, "variant": variant,
              "seed": config.seed, "profile": config.profile, "identity": location.identity,
              "difference": location.difference}
    method_cls = method_class(method)
    if method_cls.trains:  # whether its defaults came from the validation search (mmcl tune), for the tables
        record["tuned"] = bool(tuned_values(config.profile, scenario, method))
    if variant in method_cls.comparisons:  # a fair comparison: a row of the main tables, with what it is
        record |= {"role": "comparison", "variant_overrides": method_cls.comparisons[variant]}
    elif variant:
        record["role"] = "ablation"
    return record


def write_run_files(location: RunLocation, record: dict, method_obj: Method, stream: Stream,
                    device: torch.device) -> None:
    """``config.yaml``, ``order.json`` and, unless a readable one is there, ``manifest.json``."""
    run_dir = location.run_dir
    records.atomic_write_text(run_dir / "config.yaml", config_to_yaml(location.config))
    records.atomic_write_json(run_dir / "order.json", stream.order_record())
    if records.read_json_record(run_dir / "manifest.json", MANIFEST_DAMAGED) is None:
        records.atomic_write_json(run_dir / "manifest.json", records.manifest(device) | {
            "backbone": method_obj.encoder.weights,
            "data": {"benchmark": location.benchmark, "sha256": stream.data_sha256},
            "run": {**record, "hparams": method_obj.hparams_dict()}})


def resume(location: RunLocation, method_obj: Method, stream: Stream, device: torch.device,
           rebuild: Callable[[], tuple[Method, Stream]]) -> tuple[Method, Stream, list[dict]]:
    """The method and stream to go on with and the rows of the tasks already done: the newest
    checkpoint the method loads (:func:`readable_checkpoints`), or none (``[]``: from task 0).
    ``tasks.jsonl`` is rewritten to those rows. A checkpoint that does not fit the method is skipped
    with a warning, and the method built again (``rebuild()``), as the failed load may have changed it."""
    run_dir, rows = location.run_dir, []
    for checkpoint, state in readable_checkpoints(run_dir, device):
        try:
            method_obj.load_checkpoint_state(state["method_state"])
        except Exception as error:  # noqa: BLE001 - any mismatch means: not resumable from this file
            log.warning("checkpoint %s does not fit method %r (%s); ignoring it", checkpoint, location.method,
                        str(error).splitlines()[0] if str(error) else type(error).__name__)
            # The failed load may have changed some parameters: continue from a freshly built method.
            method_obj, stream = rebuild()
            continue
        rows = state["rows"]
        log.info("resuming %s after task %d", run_dir, len(rows) - 1)
        break
    if not rows and not checkpoints(run_dir) and (run_dir / "tasks.jsonl").is_file() \
            and (run_dir / "tasks.jsonl").stat().st_size:
        log.warning("%s records finished tasks but holds no checkpoint; starting again from task 0", run_dir)
    if rows or (run_dir / "tasks.jsonl").exists():
        # The rows of the checkpoint resumed from, which may be older than the file (a damaged newest
        # checkpoint, or a kill between writing the checkpoint and the file).
        records.write_jsonl(run_dir / "tasks.jsonl", rows)
    return method_obj, stream, rows


def write_metrics(location: RunLocation, record: dict, rows: list[dict], zero_shot: dict, modes: list[str],
                  tasks: list[Task], method_obj: Method, probes: bool, started: float) -> dict:
    """Write and return ``metrics.json`` of the finished run: its accuracy matrices and summaries
    (:func:`finalize`), the forgetting decomposition, what the run is, timing and memory."""
    config = location.config
    metrics = finalize(rows, zero_shot, modes, record["scenario"], tasks)
    metrics["forgetting_decomposition"] = forgetting_decomposition_record(
        rows, modes, probes, config.runtime.forgetting_decomposition_per_class)
    metrics["run"] = {**record, "hparams": method_obj.hparams_dict(), **records.code_version()}
    metrics.update(method_obj.run_record())
    metrics["timing"] = {"run_seconds_this_session": time.perf_counter() - started,
                         "train_seconds": sum(r.get("train_seconds", 0.0) for r in rows),
                         "eval_seconds": sum(r["eval_seconds"] for r in rows),
                         "forgetting_decomposition_seconds": sum(r.get("forgetting_decomposition_seconds", 0.0)
                                                                 for r in rows)}
    metrics["memory"] = records.memory_summary(rows)
    records.atomic_write_json(location.run_dir / "metrics.json", metrics, fault=("metrics-write", None))
    return metrics


def finalize(rows: list[dict], zero_shot: dict, modes: list[str], scenario: str, tasks: list[Task]) -> dict:
    task_modalities = [t.modality for t in tasks] if scenario == "modality_incremental" else None
    matrices, summaries = {}, {}
    for mode in modes:
        matrix = [row["evaluation"][mode]["accuracy"] for row in rows]
        final = rows[-1]["evaluation"][mode]
        matrices[mode] = matrix
        summaries[mode] = summarize(matrix, zero_shot[mode], final["correct"], final["count"], task_modalities)
        summaries[mode]["zero_shot_accuracy"] = float(np.mean(zero_shot[mode]))
    return {"modes": summaries, "accuracy_matrix": matrices, "zero_shot": zero_shot,
            "task_names": [t.name for t in tasks]}


def forgetting_decomposition_record(rows: list[dict], modes: list[str], enabled: bool,
                                    per_class: int | None = None) -> dict:
    """``metrics.json``'s ``forgetting_decomposition``: whether it was on (``runtime.forgetting_decomposition``),
    the training samples per class its class means read (``per_class``, None: all) and, per mode,
    :func:`mmcl.metrics.forgetting_decomposition_summary` of the rows' probes; ``modes`` is None with a
    ``note`` when some task lacks the probe (a run resumed with it switched on), and a mode is None
    where the method has no representation."""
    if not enabled:
        return {"enabled": False}
    record: dict = {"enabled": True, "per_class": per_class}
    missing = [r["task"] for r in rows if "forgetting_decomposition" not in r]
    if missing:
        return record | {"modes": None, "note": f"tasks {missing} were run without the probe"}
    record["modes"] = {}
    for mode in modes:
        probes = [r["forgetting_decomposition"].get(mode) for r in rows]
        record["modes"][mode] = None if any(p is None for p in probes) else forgetting_decomposition_summary(
            [r["evaluation"][mode]["accuracy"] for r in rows], [p["ncm_accuracy"] for p in probes],
            [p["own_old"] for p in probes], [p["ncm_old"] for p in probes])
    return record


# ------------------------------------------------------------------------ checkpoint files
def save_checkpoint(run_dir: Path, index: int, state: dict, keep: str) -> None:
    """Write task ``index``'s checkpoint, then delete the ones it makes obsolete.

    ``keep="last"`` keeps this checkpoint and the one before it, so that a damaged newest
    checkpoint costs one task of recomputation instead of the whole run; ``keep="all"`` keeps
    every earlier one. Checkpoints of *later* tasks are always deleted: they are left from before
    a resume that fell back to an earlier checkpoint, and no longer match this run's history.
    """
    records.atomic_torch_save(state, run_dir / "checkpoints" / f"task_{index}.pt", fault=("checkpoint-write", index))
    for old_index, old in checkpoints(run_dir):
        if old_index > index or (keep == "last" and old_index < index - 1):
            old.unlink(missing_ok=True)


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The (task index, path) of every checkpoint of ``run_dir``, oldest first."""
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("task_*.pt"):
        index = path.stem.removeprefix("task_")
        if index.isdigit():
            found.append((int(index), path))
    return sorted(found)


def _checkpoint_problem(state, index: int) -> str | None:
    """Why a loaded checkpoint of task ``index`` cannot be resumed from, or None when it can."""
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a checkpoint"
    missing = [key for key in ("method_state", "rows") if key not in state]
    if missing:
        return f"missing keys {missing}"
    rows = state["rows"]
    if not isinstance(state["method_state"], dict) or not isinstance(rows, list):
        return "method_state or rows of the wrong type"
    if len(rows) != index + 1 or not all(isinstance(r, dict) and r.get("task") == i for i, r in enumerate(rows)):
        return f"its rows are not those of tasks 0..{index}"
    return None


def readable_checkpoints(run_dir: Path, device: torch.device) -> Iterator[tuple[Path, dict]]:
    """The checkpoints of ``run_dir`` that load and hold what a resume needs, newest first.

    A damaged one (truncated, overwritten, unreadable by ``torch.load``, or missing keys) is
    skipped with a one-line warning naming the file and what the run falls back to (the previous
    checkpoint, or task 0). So is a refused one, with a warning saying it holds objects other
    than tensors and plain data: checkpoints are read by :func:`mmcl.records.load_tensors`, which
    never runs code from the file (a crafted one, or one of an older format). The caller stops at
    the first one it resumes from; if it asks for more after the oldest, a warning says the run
    starts again from task 0.
    """
    found = checkpoints(run_dir)
    for position in range(len(found) - 1, -1, -1):
        index, path = found[position]
        fallback = f"falling back to {found[position - 1][1].name}" if position else "starting again from task 0"
        try:
            state = records.load_tensors(path, map_location=device, rebuild=fallback)
            problem = _checkpoint_problem(state, index)
        except records.RefusedFile as error:
            log.warning("checkpoint %s", error)
            continue
        except Exception as error:  # noqa: BLE001 - torch.load raises many kinds on a damaged file
            first_line = str(error).splitlines()[0] if str(error) else "unreadable"
            state, problem = None, f"{type(error).__name__}: {first_line}"
        if problem is None:
            yield path, state
            if position == 0:  # the caller could not resume from the oldest one either
                log.warning("no usable checkpoint in %s; starting again from task 0", path.parent)
            continue
        log.warning("checkpoint %s is damaged (%s); %s", path, problem[:200], fallback)
