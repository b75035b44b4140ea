"""Run folders: atomic writes, a folder lock, manifests, per-task JSON lines, checkpoints.

Layout of one run (scenario x benchmark x method x seed x profile)::

    <output_dir>/<profile>/<scenario>/<benchmark>/<method>/seed<k>/
        .lock            held (``flock``) by the one process writing the folder; holds its pid,
                         host and start time for the message a second process prints
        config.yaml      resolved configuration
        manifest.json    package version, git commit, library versions, device, start time
        order.json       class order (and modality / domain order) drawn from the seed
        zero_shot.json   the frozen backbone's accuracy on every task (forward-transfer reference)
        tasks.jsonl      one line per finished task: accuracy rows, running metrics, timings,
                         memory (``peak_rss_mib``, ``rss_mib``, ``cuda_peak_mib``)
        checkpoints/     task_<t>.pt: method state + every task's row, to resume; the two newest
                         are kept (``runtime.keep_checkpoints: last``) so a damaged newest one
                         falls back to the one before it
        metrics.json     final metrics (and a memory summary); written last, so its presence
                         means "complete"

Every file is written to a temporary name (``.<name>.<random>.tmp``) and renamed into place, so a
crash never leaves a half-written file under its final name; a resumed run deletes the
temporaries a killed one left behind. Only the holder of ``.lock`` writes the folder: the kernel
releases an ``flock`` when its process dies, however it dies (SIGKILL included), so a killed run
never leaves a stale lock behind.

Fault injection: the environment variable ``MMCL_FAULT`` (see :func:`fault_point`) makes a run
kill itself with SIGKILL at a named point, e.g. ``MMCL_FAULT=checkpoint-write:1 mmcl run ...``
dies with task 1's checkpoint written to its temporary name but not yet renamed. The tests use it
to check that a run killed anywhere resumes to the same numbers; users can use it to check the
same on their own storage.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

FAULT_VARIABLE = "MMCL_FAULT"
LOCK_NAME = ".lock"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# A fault point: (point name, task index or None), see fault_point.
Fault = tuple[str, int | None]


def fault_point(name: str, task: int | None = None) -> None:
    """Kill this process with SIGKILL here when ``$MMCL_FAULT`` names this point (fault injection).

    ``MMCL_FAULT=<point>`` matches every call of that point, ``MMCL_FAULT=<point>:<task>`` only
    the call for task index ``<task>``. The points (called by :mod:`mmcl.engine`):

    - ``train``: half-way through the optimizer steps of a task;
    - ``checkpoint-write``: a task's checkpoint is in its temporary file, not yet renamed;
    - ``tasks-write``: ``tasks.jsonl`` with a task's row is in its temporary file, not yet renamed;
    - ``metrics-write``: ``metrics.json`` is in its temporary file, not yet renamed (no task index:
      use ``MMCL_FAULT=metrics-write``).

    SIGKILL cannot be caught: no ``finally``, no ``atexit`` runs, as when the out-of-memory
    killer or a scheduler's hard time limit ends a job. Running the same command again (without
    the variable) must then resume to the numbers of an uninterrupted run.
    """
    wanted = os.environ.get(FAULT_VARIABLE, "").strip()
    if not wanted:
        return
    point, _, index = wanted.partition(":")
    if point == name and (not index or (task is not None and index == str(task))):
        os.kill(os.getpid(), signal.SIGKILL)


def _atomic(path: Path, write, fault: Fault | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        # mkstemp creates 0600 files; records are shared with collaborators like any other file.
        os.chmod(temporary, 0o666 & ~_umask())
        if fault:
            fault_point(*fault)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, fault: Fault | None = None) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (``fault``: see :func:`fault_point`)."""
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())

    _atomic(path, write, fault)


def atomic_write_json(path: Path, data: Any, fault: Fault | None = None) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n", fault)


def atomic_torch_save(obj: Any, path: Path, fault: Fault | None = None) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())  # a rename is only as durable as the data it points to

    _atomic(path, write, fault)


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
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / LOCK_NAME
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
    return Path(output_dir) / profile / scenario / benchmark / method / f"seed{seed}"


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / "metrics.json").is_file()


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


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
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "libraries": libraries,
        "device": {"type": device.type, "name": device_name, "threads": torch.get_num_threads()},
        "host": platform.node(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _own_version() -> str:
    from mmcl import __version__

    return __version__


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
