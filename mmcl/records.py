"""Run folders: atomic writes, manifests, per-task JSON lines, checkpoints.

Layout of one run (scenario x benchmark x method x seed x profile)::

    <output_dir>/<profile>/<scenario>/<benchmark>/<method>/seed<k>/
        config.yaml      resolved configuration
        manifest.json    package version, git commit, library versions, device, start time
        order.json       class order (and modality / domain order) drawn from the seed
        tasks.jsonl      one line per finished task: accuracy rows, running metrics, timings
        checkpoints/     task_<t>.pt: method state + everything needed to resume
        metrics.json     final metrics; written last, so its presence means "complete"

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file under its final name.
"""
from __future__ import annotations

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
