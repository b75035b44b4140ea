"""Reader for real datasets prepared by ``data_prep/`` into the engine's format.

A prepared benchmark is a folder with ``meta.json`` and ``train.pt`` / ``test.pt``, and
``val.pt`` where the dataset publishes a validation list (else validation is carved from train).

``meta.json``: ``format_version``, ``dataset``, ``class_names``, ``domain_names``, ``modalities``,
``class_modalities`` (modality of each class, modality streams only, else null), ``settings``
(the data sizes it was prepared at), ``summary`` (counts, skipped files) and ``complete: true``.
It is written last, so a folder without it was interrupted and is never read as complete.

``train.pt`` / ``test.pt`` / ``val.pt`` (tensors and plain data only, read by
:func:`mmcl.records.load_tensors`, which refuses anything else: loading never runs code from the
file): a dict with ``inputs`` (modality -> uint8 tensor as made by
:mod:`mmcl.data.modalities`), ``labels`` and ``domains`` (``[N]`` long), ``texts`` (modality ->
list of N strings, for text modalities), ``keys`` (N sample ids, optional) and ``rows``
(optional, modality -> long indices): a modality listed in ``rows`` is stored only for the
samples that carry it (``inputs[m][k]`` belongs to sample ``rows[m][k]``) and is expanded here
with zero images for the others, so the engine sees the same dense tensors as before.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from mmcl.config import BenchmarkConfig, ConfigError, DataConfig, PreparedDataError
from mmcl.data.dataset import MultiModalDataset
from mmcl.data.storage import from_stored, processed_root, read_meta
from mmcl.records import RefusedFile, load_tensors

FORMAT_VERSION = 2
log = logging.getLogger(__name__)


def expand_rows(stored: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Sparse rows ``[K, ...]`` at indices ``rows`` -> dense ``[n, ...]`` with zeros elsewhere."""
    dense = torch.zeros(n, *stored.shape[1:], dtype=stored.dtype)
    dense[rows] = stored
    return dense


def _domain_mapping(spec: BenchmarkConfig, meta_domains: list[str], name: str) -> torch.Tensor | None:
    """Stored domain index -> the profile's domain index (-1: not used), matched by name.

    ``None`` when the profile keeps the prepared order (default domains or the same names).
    """
    wanted = [d.lower() for d in spec.domains]
    stored = [d.lower() for d in meta_domains]
    if wanted == ["default"] or wanted == stored:
        return None
    missing = [d for d, low in zip(spec.domains, wanted) if low not in stored]
    if missing:
        raise ConfigError(f"benchmarks.{name}.domains: {missing} not in the prepared domains {meta_domains}")
    return torch.tensor([wanted.index(d) if d in wanted else -1 for d in stored], dtype=torch.long)


def _settings_for(modalities: list[str]) -> list[str]:
    """The ``data`` keys that shape the stored tensors of ``modalities`` (dotted below ``data``)."""
    keys = ["image_size"] if any(m != "text" for m in modalities) else []
    if "video" in modalities:
        keys.append("video_frames")
    if "audio" in modalities:
        keys += ["spectrogram_render", *(f"audio.{k}" for k in DataConfig().audio.model_dump())]
    if "depth" in modalities:
        keys.append("depth_render")
    if "acc" in modalities or "gyro" in modalities:
        keys += [f"inertial.{k}" for k in DataConfig().inertial.model_dump()]
    return keys


def check_prepared_settings(meta: dict, data: DataConfig, modalities: list[str], name: str) -> None:
    """:class:`ConfigError` when the data was prepared at other sizes than the profile's ``data``.

    ``meta["settings"]`` records the sizes of the preparation; only the keys that shape the
    tensors of ``modalities`` are compared (folders without the record are not checked).
    """
    prepared = meta.get("settings")
    if not prepared:
        return
    profile = data.model_dump()
    mismatches = []
    for key in _settings_for(modalities):
        stored, wanted = prepared, profile
        for part in key.split("."):
            stored, wanted = stored.get(part) if isinstance(stored, dict) else None, wanted[part]
        if stored is not None and stored != wanted:
            mismatches.append((key, stored, wanted))
    if mismatches:
        found = "; ".join(f"data.{k}: prepared at {s}, profile says {w}" for k, s, w in mismatches)
        fix = " ".join(f"data.{k}={s}" for k, s, _ in mismatches)
        raise ConfigError(f"benchmark {name!r}: {found}; re-run the preparation with this profile or set {fix}")


def require_prepared(spec: BenchmarkConfig, name: str) -> Path:
    """The ``meta.json`` of a prepared benchmark; a FileNotFoundError, one line saying where the data
    goes and how to prepare it, when there is none. Cheap (no data is read): a run checks it before
    it loads, or downloads, the backbone."""
    meta_path = processed_root(spec, name) / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"benchmark {name!r}: {meta_path} not found. Prepare the dataset first "
            f"(notebooks/00_data_prep.ipynb or `python -m data_prep --help`); an interrupted "
            f"preparation leaves no meta.json and is resumed by running it again."
        )
    return meta_path


def load_processed(spec: BenchmarkConfig, name: str, data: DataConfig | None = None
                   ) -> tuple[MultiModalDataset, MultiModalDataset]:
    """Train and test data of a prepared benchmark; ``data``: the profile's sizes, checked against the preparation's."""
    meta_path = require_prepared(spec, name)
    root = meta_path.parent
    meta = read_meta(meta_path, name)
    if not meta.get("complete"):
        raise ConfigError(f"benchmark {name!r}: {meta_path} says the preparation is incomplete")
    missing = [m for m in spec.modalities if m not in meta["modalities"]]
    if missing:
        raise ConfigError(f"benchmarks.{name}.modalities: {missing} not in prepared data {meta['modalities']}")
    if spec.num_classes != len(meta["class_names"]):
        raise ConfigError(f"benchmarks.{name}.num_classes: the prepared data in {root} has "
                          f"{len(meta['class_names'])} classes, the profile says {spec.num_classes}")
    if data is not None:
        check_prepared_settings(meta, data, list(spec.modalities), name)
    return _load_split(spec, name, meta, "train"), _load_split(spec, name, meta, "test")


def load_processed_val(spec: BenchmarkConfig, name: str) -> MultiModalDataset | None:
    """The publisher's validation split (``val.pt``, written by data_prep where the dataset has a
    validation list), or None when the preparation wrote none (it is then carved from train)."""
    root = processed_root(spec, name)
    if not (root / "val.pt").is_file():
        return None
    return _load_split(spec, name, read_meta(root / "meta.json", name), "val")


def _load_split(spec: BenchmarkConfig, name: str, meta: dict, split: str) -> MultiModalDataset:
    mapping = _domain_mapping(spec, meta["domain_names"], name)
    domain_names = list(spec.domains) if mapping is not None else meta["domain_names"]
    root = processed_root(spec, name)
    path = root / f"{split}.pt"
    # The preparation reuses a complete folder of the same inputs: only --force writes it again.
    again = (f"re-run the preparation with --force (python -m data_prep {meta.get('dataset', '<dataset>')} "
             f"--raw <raw folder> --out {root} --force)")
    try:
        stored = load_tensors(path, rebuild=again)
    except FileNotFoundError:
        raise FileNotFoundError(f"benchmark {name!r}: {path} is missing; re-run the preparation") from None
    except RefusedFile as error:
        raise PreparedDataError(f"benchmark {name!r}: {error}") from None
    except Exception as error:
        raise PreparedDataError(f"benchmark {name!r}: {path} is unreadable ({type(error).__name__}: "
                                f"{str(error).splitlines()[0] if str(error) else ''}); re-run the preparation") from None
    n = len(stored["labels"])
    rows = stored.get("rows") or {}
    stored["inputs"] = {m: expand_rows(stored["inputs"][m], rows[m], n) if m in rows else stored["inputs"][m]
                        for m in spec.modalities if m != "text"}
    stored.setdefault("texts", {})
    if mapping is not None:
        domains = mapping[stored["domains"]]
        keep = torch.nonzero(domains >= 0).flatten()
        stored["inputs"] = {m: t[keep] for m, t in stored["inputs"].items()}
        stored["labels"], stored["domains"] = stored["labels"][keep], domains[keep]
        stored["texts"] = {m: [v[i] for i in keep.tolist()] for m, v in stored["texts"].items()}
    stored["class_names"], stored["domain_names"] = meta["class_names"], domain_names
    return from_stored(stored)
