"""Run folders: atomic writes, a folder lock, manifests, per-task JSON lines, checkpoints.

Layout of one run (scenario x benchmark x method x seed x profile)::

    <output_dir>/<profile>/<scenario>/<benchmark>/<method>[~<variant>][@<difference>]/seed<k>/
        .lock            held (``flock``) by the one process writing the folder; holds its pid,
                         host and start time for the message a second process prints
        config.yaml      resolved configuration
        manifest.json    package version, code version (git commit, dirty flag, source
                         fingerprint), library versions, device, CPU kernels (pinned or
                         native, the CPU model: mmcl.kernels.state), start time, run identity
        order.json       class order (and modality / domain order) drawn from the seed
        zero_shot.json   the frozen backbone's accuracy on every task (forward-transfer reference)
        tasks.jsonl      one line per finished task: accuracy rows, running metrics, timings,
                         memory (``peak_rss_mib``, ``rss_mib``, ``cuda_peak_mib``)
        checkpoints/     task_<t>.pt: method state + every task's row, to resume; the two newest
                         are kept (``runtime.keep_checkpoints: last``) so a damaged newest one
                         falls back to the one before it
        metrics.json     final metrics (and a memory summary); written last, so its presence
                         means "complete" (a damaged one, cut short by something other than
                         mmcl, is named in one warning line and means "incomplete": is_complete)

Every file is written to a temporary name (``.<name>.<random>.tmp``) and renamed into place
(:mod:`mmcl.atomic`), so a crash never leaves a half-written file under its final name; a
resumed run deletes the temporaries a killed one left behind. Only the holder of ``.lock``
writes the folder: the kernel releases an ``flock`` when its process dies, however it dies
(SIGKILL included), so a killed run never leaves a stale lock behind.

A write the storage refuses (a full disk, ``ENOSPC``; a quota, ``EDQUOT``; a read-only file
system or folder, ``EROFS`` / ``EACCES``; a file where a folder should be) raises
:class:`~mmcl.atomic.DiskWriteError`, an ``OSError`` whose text is one line naming the file,
e.g. ``no space left on device writing runs/.../metrics.json``: ``mmcl`` prints it as ``mmcl:
error: ...`` and exits with status 2, and a notebook cell shows it as its error. The temporary
is deleted and the final name keeps what it held before (nothing, for a new file), so the same
command, run again once there is room, resumes like a killed run. Run records, caches, prepared
data, tables and figures are all written this way.

Fault injection: the environment variable ``MMCL_FAULT`` (see :func:`~mmcl.atomic.fault_point`)
makes a run kill itself with SIGKILL at a named point, e.g. ``MMCL_FAULT=checkpoint-write:1 mmcl
run ...`` dies with task 1's checkpoint written to its temporary name but not yet renamed, and
``MMCL_FAULT=enospc:<n>`` (see :func:`~mmcl.atomic.disk_fault`) makes the n-th atomic write of
the process fail as on a full disk. The tests use it to check that a run killed or refused
anywhere resumes to the same numbers; users can use it to check the same on their own storage.

Files of tensors (checkpoints, benchmark caches, prepared data and its shards) hold only tensors
and plain data (dict, list, tuple, str, int, float, bool, None): :func:`atomic_torch_save` checks
that before writing, and :func:`load_tensors` reads them with ``torch.load(weights_only=True)``.
A ``.pt`` file is a pickle, and unpickling any other object runs code the file names, so a
checkpoint or cache copied from a shared folder could run commands when read; a file holding
other objects (a crafted one, or one of an older format with numpy arrays or classes in it) is
refused with a one-line :class:`RefusedFile`, never loaded.

A run's *identity* (see :func:`mmcl.runs.run_identity`) is a mapping of what can change its
numbers; :func:`identity_digest` names it and :func:`identity_difference` says how it differs
from the profile's defaults, as dotted keys. A run whose identity differs from the profile's
defaults lives in ``<method>@<8 hex digits of the difference>`` (:func:`run_name`).
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import pickle
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from mmcl import __version__, kernels
# Atomic writes, DiskWriteError and fault injection live in mmcl.atomic (no torch: the tables and
# figures write through them too); the run records use them as records.<name>.
from mmcl.atomic import (FAULT_VARIABLE, RUN_INCOMPLETE, DiskWriteError, Fault, atomic_write,  # noqa: F401
                         atomic_write_json, atomic_write_text, fault_point, read_json_record, writing)

LOCK_NAME = ".lock"


PLAIN_SCALARS = (str, int, float, bool, type(None))
PLAIN_CONTAINERS = (dict, OrderedDict, list, tuple)


def plain_data_problem(obj: Any, where: str = "") -> str | None:
    """Where ``obj`` holds something other than tensors and plain data (``PLAIN_SCALARS`` in
    ``PLAIN_CONTAINERS``), as ``<key path> is a <type>``; None when it holds nothing else.

    Exact types: a numpy scalar is a ``float`` subclass, a ``numpy.str_`` a ``str`` one, and both
    pickle as numpy objects that :func:`load_tensors` refuses."""
    kind = type(obj)
    if kind in PLAIN_SCALARS or isinstance(obj, torch.Tensor):
        return None
    if kind not in PLAIN_CONTAINERS:
        return f"{where or 'the object'} is a {kind.__module__}.{kind.__qualname__}"
    mapping = isinstance(obj, dict)
    for key, value in obj.items() if mapping else enumerate(obj):
        problem = (mapping and plain_data_problem(key, f"{where}[key {key!r}]")) \
            or plain_data_problem(value, f"{where}[{key!r}]")
        if problem:
            return problem
    return None


def atomic_torch_save(obj: Any, path: Path, fault: Fault | None = None) -> None:
    """Write ``obj`` with ``torch.save`` through a temporary file and a rename. ``obj`` may hold only
    tensors and plain data (else a ``TypeError`` names the first other value), so that
    :func:`load_tensors` reads the file back without running code."""
    problem = plain_data_problem(obj)
    if problem:
        raise TypeError(f"{path} not written: {problem}, not a tensor or plain data (dict, list, tuple, str, int, "
                        f"float, bool, None); convert it first, or load_tensors would refuse the file")

    def write(temporary: str) -> None:
        with open(temporary, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())  # a rename is only as durable as the data it points to

    atomic_write(path, write, fault)


class RefusedFile(ValueError):
    """:func:`load_tensors` did not load a file: it holds objects other than tensors and plain data."""


def load_tensors(path: str | Path, map_location: Any = None, rebuild: str = "delete it and make it again") -> Any:
    """What :func:`atomic_torch_save` wrote to ``path``, read with ``torch.load(weights_only=True)``.

    The weights-only unpickler builds tensors and plain data only and refuses any other object
    before calling anything, so reading a file never runs code from it. A refused file raises
    :class:`RefusedFile`, one line naming it and ending in ``rebuild`` (how the caller makes the
    file again); a damaged one (truncated, empty, text) raises what ``torch.load`` raises, for
    the caller's handling of damage.
    """
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it does not expect: noise here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # What the unpickler refused: a global (a function or class the file names) or an opcode.
        found = re.search(r"unsupported (?:global: )?(?:global \S+|operand \S+)", str(error), re.IGNORECASE)
        with open(path, "rb") as stream:
            pickled = stream.read(1) in (b"\x80", b"P")  # a pickle (protocol 2 or later), or torch's zip of one
        if not pickled and not (found and "global" in found.group(0).lower()):
            raise  # no pickle at all (text, noise): damaged, not refused
        detail = f" ({found.group(0)})" if found else ""
        raise RefusedFile(f"{path} holds objects other than tensors and plain data{detail}, so it was not loaded "
                          f"(loading them could run code; an older format, or not written by mmcl); {rebuild}") \
            from None


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Held while the cache file ``path`` is built: an ``flock`` on ``<path>.lock`` (released by the
    kernel if the holder dies). Processes sharing a cache (a sweep's pool workers, a cluster's jobs,
    the test suite's workers) build each file once: the others wait, then read what it wrote.
    Without a writable folder the build goes ahead unlocked."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing the only descriptor releases the flock


def write_jsonl(path: Path, rows: Iterable[dict], fault: Fault | None = None) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows), fault)


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.*.tmp``) that a killed writer left in ``run_dir``.

    Call only while holding the folder's lock (:func:`run_lock`): then no other process is
    writing one of them. Returns the deleted paths.
    """
    run_dir = Path(run_dir)
    stale = [*run_dir.glob(".*.tmp"), *(run_dir / "checkpoints").glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def clear_run_folder(run_dir: Path) -> None:
    """Delete everything in ``run_dir`` but its lock file (held by the caller: see :func:`run_lock`)."""
    for entry in Path(run_dir).iterdir():
        if entry.name == LOCK_NAME:
            continue  # deleting a held lock file would let a second process lock a new one
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# ------------------------------------------------------------------------------ the folder lock
class RunFolderInUse(RuntimeError):
    """Another live process holds the lock of a run folder."""


def _lock_holder(lock_path: Path) -> dict:
    try:
        holder = json.loads(lock_path.read_text())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}  # the holder has locked the file but not yet written who it is


@contextmanager
def run_lock(run_dir: Path, wait_seconds: float = 0.0) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` for the ``with`` block: only its holder writes the folder.

    The lock is ``fcntl.flock`` on ``<run_dir>/.lock``, which the kernel releases when the holding
    process ends, however it ends (SIGKILL included), so a lock is never stale and the file is
    never deleted. The holder writes its pid, host and start time into the file. When another
    process holds the lock, this waits up to ``wait_seconds`` (0: not at all) and then raises
    :class:`RunFolderInUse` with a one-line message naming the holder. ``flock`` works on local
    file systems and on NFS (Linux emulates it there with POSIX locks).
    """
    run_dir = Path(run_dir)
    lock_path = run_dir / LOCK_NAME
    with writing(lock_path):  # the run's first write: a read-only or full output folder stops it here
        run_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + max(wait_seconds, 0.0)
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _lock_holder(lock_path)
                    waited = f" (waited {wait_seconds:g} s)" if wait_seconds > 0 else ""
                    raise RunFolderInUse(
                        f"run folder {run_dir} is in use by another process (pid {holder.get('pid', '?')}, "
                        f"host {holder.get('host', '?')}, since {holder.get('since', '?')}){waited}; wait for it "
                        f"to finish or stop it, or let this run wait for it with "
                        f"--set runtime.wait_for_lock=SECONDS") from None
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))
        holder = {"pid": os.getpid(), "host": platform.node(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with writing(lock_path):
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, (json.dumps(holder) + "\n").encode(), 0)
        try:
            yield lock_path
        finally:
            os.ftruncate(descriptor, 0)  # released: no holder to name
    finally:
        os.close(descriptor)  # closing the only descriptor releases the flock


# ----------------------------------------------------------------------------------- memory
def memory_usage(device: torch.device | None = None) -> dict[str, float | None]:
    """This process's memory in MiB, for the per-task records.

    - ``peak_rss_mib``: peak resident set size (``getrusage`` ``ru_maxrss``) over the process's
      whole lifetime so far, not just the current task: it never decreases;
    - ``rss_mib``: resident set size now (``/proc/self/statm``; None where there is no /proc);
    - ``cuda_peak_mib``: ``torch.cuda.max_memory_allocated`` since the last
      ``torch.cuda.reset_peak_memory_stats`` (the engine resets it at each task start); None off CUDA.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mib = peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        rss_mib = round(resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        rss_mib = None
    cuda_peak_mib = None
    if device is not None and device.type == "cuda":
        cuda_peak_mib = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    # The kernel updates the peak lazily, so it can trail the current RSS by a few pages.
    peak_mib = max(peak_mib, rss_mib or 0.0)
    return {"peak_rss_mib": round(peak_mib, 1), "rss_mib": rss_mib, "cuda_peak_mib": cuda_peak_mib}


def memory_summary(rows: Iterable[dict]) -> dict[str, float | None]:
    """The maximum over tasks of each field of the rows' ``memory`` (None where no task has it)."""
    summary: dict[str, float | None] = {"peak_rss_mib": None, "rss_mib": None, "cuda_peak_mib": None}
    for row in rows:
        for key, value in (row.get("memory") or {}).items():
            if value is not None:
                summary[key] = value if summary.get(key) is None else max(summary[key], value)
    return summary


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_directory(output_dir: str | Path, profile: str, scenario: str, benchmark: str, method: str, seed: int) -> Path:
    """``<output_dir>/<profile>/<scenario>/<benchmark>/<method>/seed<seed>``; ``method`` is the
    folder name of :func:`run_name` (``replay``, ``lwf~no-distillation``, ``replay@1a2b3c4d``)."""
    return Path(output_dir) / profile / scenario / benchmark / method / f"seed{seed}"


def run_name(method: str, variant: str | None = None, difference: dict | None = None) -> str:
    """The folder name of a run: ``method[~variant]``, and ``@<8 hex digits>`` of ``difference``
    (dotted key -> value, see :func:`identity_difference`) when it is not empty."""
    name = f"{method}~{variant}" if variant else method
    return f"{name}@{_digest(difference)[:8]}" if difference else name


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one flat dict of dotted keys; lists and other values are leaves."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def identity_digest(identity: dict) -> str:
    """12 hex digits naming a run identity; equal identities, and only those, give equal digests."""
    return _digest(identity)[:12]


def identity_difference(identity: dict, default: dict) -> dict[str, Any]:
    """Where ``identity`` differs from ``default``, as ``{dotted key: value in identity}``, sorted by
    key; a key that ``identity`` lacks has the value None."""
    flat, reference = flatten(identity), flatten(default)
    keys = sorted(k for k in set(flat) | set(reference)
                  if (k in flat) != (k in reference) or flat.get(k) != reference.get(k))
    return {key: flat.get(key) for key in keys}


def is_complete(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run: its ``metrics.json`` (written last) reads as a JSON
    object. A damaged one (cut short or overwritten by something other than mmcl's atomic writes)
    is named in one warning line and the run counts as incomplete: running it again resumes it from
    its checkpoints and writes the file anew (:func:`mmcl.atomic.read_json_record`)."""
    return read_json_record(Path(run_dir) / "metrics.json", RUN_INCOMPLETE) is not None


PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_SUFFIXES = (".py", ".yaml", ".json")


def fingerprint_tree(root: str | Path) -> str:
    """sha256 (12 hex digits) over every ``*.py``, ``*.yaml`` and ``*.json`` file under ``root``,
    in the order of their relative paths, hashing each path and its bytes: any change of a
    source file, profile or model config changes it, and nothing else does (caches, ``.pyc``)."""
    root = Path(root)
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*")
                   if p.suffix in SOURCE_SUFFIXES and p.is_file())
    digest = hashlib.sha256()
    for relative, path in files:
        content = path.read_bytes()
        # Lengths frame each part, so moving bytes between a path and its content changes the hash.
        digest.update(f"{len(relative)}:{relative}:{len(content)}:".encode())
        digest.update(content)
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """:func:`fingerprint_tree` of the imported ``mmcl`` package, computed once per process."""
    return fingerprint_tree(PACKAGE_DIR)


# What of a checkout is a run's code, besides the package itself (paths beside the package folder):
# what prepares the data, the notebooks that drive the runs and compute the tables, and what fixes
# the environment. Not the documentation, tests, figures or runs: the pipeline itself rewrites the
# claims blocks of docs/methods/*.md and the calibration block of docs/benchmark.md, and a finished
# `make reproduce` would otherwise call the code of every later run dirty.
CODE_PATHS = ("data_prep", "notebooks", "pyproject.toml", "requirements.lock", "requirements.constraints.txt",
              "environment.yml", "Makefile")


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(commit hash, dirty) of the git checkout holding the package; (None, None) outside one.

    Dirty means tracked code differs from the commit: a file of the package, or one of
    :data:`CODE_PATHS` beside it; changes elsewhere (docs, tests, figures) do not count. Only a
    repository that tracks the package counts: an installed copy inside some other repository (a
    virtual environment in a project folder) is not that repository's code.
    """
    package = PACKAGE_DIR

    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *arguments], cwd=package, capture_output=True, text=True, timeout=5)

    try:
        head = git("rev-parse", "HEAD")
        top = git("rev-parse", "--show-toplevel")
        if (head.returncode != 0 or top.returncode != 0
                or git("ls-files", "--error-unmatch", "__init__.py").returncode != 0):
            return None, None
        checkout = Path(top.stdout.strip()).resolve()
        paths = [package] + [package.parent / name for name in CODE_PATHS if package.parent.is_relative_to(checkout)]
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *map(str, paths))
        return head.stdout.strip(), (bool(dirty.stdout.strip()) if dirty.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


def code_version() -> dict[str, Any]:
    """The code that makes a run: ``git_commit`` (plain hash or None), ``git_dirty`` (bool, or None
    outside a git checkout) and ``source_fingerprint`` (:func:`source_fingerprint`)."""
    commit, dirty = git_state()
    return {"git_commit": commit, "git_dirty": dirty, "source_fingerprint": source_fingerprint()}


def manifest(device: torch.device) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    libraries = {}
    for name in ("torch", "open_clip_torch", "numpy", "librosa", "pandas", "papermill"):
        try:
            libraries[name] = version(name)
        except PackageNotFoundError:
            libraries[name] = None
    libraries["torch"] = torch.__version__  # the build tag (+cu130, +cpu) matters for reproducibility
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "mmcl_version": libraries.get("mmcl") or _own_version(),
        **code_version(),
        "python": platform.python_version(),
        "libraries": libraries,
        "device": {"type": device.type, "name": device_name, "threads": torch.get_num_threads()},
        # Whether the CPU kernels were pinned (the numbers the same on every x86-64 machine) or native
        # (bound to this one), the CPU, and each library's kernels: mmcl.kernels.state.
        "kernels": kernels.state(),
        "host": platform.node(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _own_version() -> str:
    return __version__


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
