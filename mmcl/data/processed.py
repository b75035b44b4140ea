"""Reader for real datasets prepared by ``data_prep/`` into the engine's format.

A prepared benchmark is a folder with ``meta.json`` (``class_names``, ``domain_names``,
``modalities``, ``complete: true``) and ``train.pt`` / ``test.pt``, each a dict with ``inputs``
(modality -> tensor as made by :mod:`mmcl.data.modalities`), ``labels``, ``domains`` and
``texts`` (modality -> list of strings for text modalities). ``meta.json`` is written last,
so a folder without it was interrupted and is never read as complete.
"""
from __future__ import annotations

import json

import torch

from mmcl.config import BenchmarkConfig, ConfigError
from mmcl.data.dataset import MultiModalDataset


def load_processed(spec: BenchmarkConfig, name: str) -> tuple[MultiModalDataset, MultiModalDataset]:
    from mmcl.data.benchmarks import _from_stored, processed_root

    root = processed_root(spec, name)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"benchmark {name!r}: {meta_path} not found. Prepare the dataset first "
            f"(notebooks/00_data_prep.ipynb or `python -m data_prep --help`); an interrupted "
            f"preparation leaves no meta.json and is resumed by running it again."
        )
    meta = json.loads(meta_path.read_text())
    if not meta.get("complete"):
        raise ConfigError(f"benchmark {name!r}: {meta_path} says the preparation is incomplete")
    missing = [m for m in spec.modalities if m not in meta["modalities"]]
    if missing:
        raise ConfigError(f"benchmarks.{name}.modalities: {missing} not in prepared data {meta['modalities']}")
    splits = []
    for split in ("train", "test"):
        path = root / f"{split}.pt"
        try:
            stored = torch.load(path, weights_only=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"benchmark {name!r}: {path} is missing; re-run the preparation") from None
        except Exception as error:
            raise ValueError(f"benchmark {name!r}: {path} is unreadable ({error}); re-run the preparation") from error
        stored["inputs"] = {m: stored["inputs"][m] for m in spec.modalities if m != "text"}
        stored.setdefault("texts", {})
        stored["class_names"], stored["domain_names"] = meta["class_names"], meta["domain_names"]
        splits.append(_from_stored(stored))
    return splits[0], splits[1]
