"""Fetch, verify and preprocess real datasets, once, into the folders the engine reads.

Notebook / library use::

    import data_prep
    summary = data_prep.prepare("ave", raw_dir="data/raw/ave", out_dir="data/processed/ave", config="paper")
    print(summary)              # counts, skipped files (by name), time

Command line: ``python -m data_prep ave --raw data/raw/ave --out data/processed/ave --profile paper``.
The processed folder is what ``benchmarks.<name>.path`` of a profile points to
(``source: processed``). See the README, section Datasets for each dataset's download, licence and layout,
and :mod:`data_prep.core` for the resumable, atomic preparation and the bad-data policy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import mmcl  # noqa: F401 - before numpy and torch: pins the CPU kernels of the preparation (mmcl.kernels)
from data_prep.ave import AVE
from data_prep.core import (
    CorruptSample,
    DatasetAdapter,
    MissingRawData,
    OnError,
    PrepError,
    PrepSummary,
    run_preparation,
)
from data_prep.modality_stream import ModalityStream, ModalityStreamRecurring
from data_prep.samsemo import SAMSEMO
from data_prep.uestc import UESTCMMEACL
from mmcl.config import Config, load_config

DATASETS: dict[str, type[DatasetAdapter]] = {cls.name: cls for cls in (AVE, UESTCMMEACL, SAMSEMO, ModalityStream,
                                                                  ModalityStreamRecurring)}
# The paper profile's benchmark that each dataset feeds (benchmarks.<name>.path).
BENCHMARK_OF = {"ave": "av-events", "uestc-mmea-cl": "ego-activities", "samsemo": "multilingual-emotion",
                "modality-stream": "modality-stream", "modality-stream-recurring": "modality-stream-recurring"}

__all__ = [
    "BENCHMARK_OF",
    "DATASETS",
    "CorruptSample",
    "MissingRawData",
    "PrepError",
    "PrepSummary",
    "adapter",
    "expected_layout",
    "fetch",
    "prepare",
]


def adapter(name: str, options: dict[str, Any] | None = None) -> DatasetAdapter:
    """The dataset adapter ``name`` with ``options`` (see each module's ``default_options``)."""
    if name not in DATASETS:
        raise PrepError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}")
    return DATASETS[name](options)


def expected_layout(name: str) -> str:
    """Where to download dataset ``name``, its licence, and the raw-folder layout it expects."""
    cls = DATASETS[name]
    return f"{cls.description}\nDownload: {cls.source}\nLicence: {cls.licence}\nLayout:\n{cls.layout}"


def fetch(name: str, raw_dir: str | Path, options: dict[str, Any] | None = None) -> Path:
    """Download ``name`` into ``raw_dir`` where a client exists (SAMSEMO: the Hugging Face hub);
    otherwise raise :class:`MissingRawData` with the manual steps."""
    raw_dir = Path(raw_dir).expanduser()
    raw_dir.mkdir(parents=True, exist_ok=True)
    adapter(name, options).fetch(raw_dir)
    return raw_dir


def prepare(name: str, raw_dir: str | Path, out_dir: str | Path, config: Config | str = "paper",
            options: dict[str, Any] | None = None, on_error: OnError = "skip", force: bool = False,
            shard_size: int = 64, progress: bool = False, overrides: list[str] | None = None,
            checksum_file: str | Path | None = None, max_skipped_fraction: float = 0.05) -> PrepSummary:
    """Prepare dataset ``name`` from ``raw_dir`` into ``out_dir`` at the sizes of ``config``.

    ``config``: a :class:`mmcl.config.Config` or a profile name/path (with ``overrides``); its
    ``data`` section (image size, frames, audio and inertial settings) shapes the tensors, so
    prepare with the profile you will train with. ``on_error``: ``"skip"`` leaves unreadable files
    out and lists them in the summary, ``"fail"`` stops at the first; skipping stops with an error
    when more than ``max_skipped_fraction`` of a split is unreadable or a class loses every sample
    of a split. A complete preparation with
    identical inputs and settings is reused unless ``force``; an interrupted one resumes.
    """
    if not isinstance(config, Config):
        config = load_config(config, overrides)
    return run_preparation(adapter(name, options), Path(raw_dir), Path(out_dir), config, on_error=on_error,
                           force=force, shard_size=shard_size, progress=progress,
                           checksum_file=Path(checksum_file) if checksum_file else None,
                           max_skipped_fraction=max_skipped_fraction)
