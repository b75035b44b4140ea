"""Run folders: atomic writes, manifests, per-task JSON lines, checkpoints.

Layout of one run (scenario x benchmark x method x seed x profile)::

    <output_dir>/<profile>/<scenario>/<benchmark>/<method>[~<variant>][@<difference>]/seed<k>/
        config.yaml      resolved configuration
        manifest.json    package version, code version (git commit, dirty flag, source
                         fingerprint), library versions, device, start time, run identity
        order.json       class order (and modality / domain order) drawn from the seed
        tasks.jsonl      one line per finished task: accuracy rows, running metrics, timings
        checkpoints/     task_<t>.pt: method state + everything needed to resume
        metrics.json     final metrics; written last, so its presence means "complete"

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file under its final name.

A run's *identity* (see :func:`mmcl.engine.run_identity`) is a mapping of what can change its
numbers; :func:`identity_digest` names it and :func:`identity_difference` says how it differs
from the profile's defaults, as dotted keys. A run whose identity differs from the profile's
defaults lives in ``<method>@<8 hex digits of the difference>`` (:func:`run_name`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import torch


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        # mkstemp creates 0600 files; records are shared with collaborators like any other file.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())

    _atomic(path, write)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda temporary: torch.save(obj, temporary))


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


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
    return (Path(run_dir) / "metrics.json").is_file()


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


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(commit hash, dirty) of the git checkout holding the package; (None, None) outside one.

    Dirty means tracked files differ from the commit. Only a repository that tracks the package
    counts: an installed copy inside some other repository (a virtual environment in a project
    folder) is not that repository's code.
    """
    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *arguments], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=5)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0 or git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None, None
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip(), (bool(dirty.stdout.strip()) if dirty.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


def code_version() -> dict[str, Any]:
    """The code that makes a run: ``git_commit`` (plain hash or None), ``git_dirty`` (bool, or None
    outside a git checkout) and ``source_fingerprint`` (:func:`source_fingerprint`)."""
    commit, dirty = git_state()
    return {"git_commit": commit, "git_dirty": dirty, "source_fingerprint": source_fingerprint()}


def git_commit() -> str | None:
    """The commit of the package's checkout with a ``-dirty`` suffix for local changes, or None."""
    commit, dirty = git_state()
    return None if commit is None else commit + ("-dirty" if dirty else "")


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
