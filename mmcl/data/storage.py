"""How datasets lie on disk, for both sources of :mod:`mmcl.data.benchmarks`: the stored form of a
:class:`MultiModalDataset` (the generated benchmarks' cache files and the prepared ``train.pt`` /
``test.pt`` / ``val.pt``), and where a prepared benchmark lives with its ``meta.json``
(:mod:`mmcl.data.processed`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mmcl.config import BenchmarkConfig, ConfigError, PreparedDataError
from mmcl.data.dataset import MultiModalDataset


def to_stored(data: MultiModalDataset) -> dict:
    """What a cache file holds of ``data``: tensors and plain data (text as strings, tokenised at load time)."""
    return {"inputs": {k: v for k, v in data.inputs.items() if k != "text"}, "labels": data.labels,
            "domains": data.domains, "class_names": data.class_names, "domain_names": data.domain_names,
            "texts": data.texts}


def from_stored(stored: dict) -> MultiModalDataset:
    """The dataset of a stored dict (:func:`to_stored`, or a prepared split); text: a placeholder until tokenised."""
    n = len(stored["labels"])
    inputs = dict(stored["inputs"])
    if "text" in stored["texts"]:
        inputs["text"] = torch.zeros(n, 1, dtype=torch.long)  # placeholder until tokenised
    return MultiModalDataset(inputs, stored["labels"], stored["domains"], stored["class_names"],
                             stored["domain_names"], stored["texts"])


def processed_root(spec: BenchmarkConfig, name: str) -> Path:
    """The folder of the prepared benchmark ``name`` (``benchmarks.<name>.path``)."""
    if not spec.path:
        raise ConfigError(f"benchmarks.{name}.path: a processed benchmark needs the folder written by data_prep")
    return Path(spec.path).expanduser()


def read_meta(meta_path, name: str) -> dict:
    """A prepared benchmark's ``meta.json``; :class:`PreparedDataError` when it is unreadable."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as error:
        raise PreparedDataError(f"benchmark {name!r}: {meta_path} is unreadable ({error}); re-run the preparation") \
            from None
    if not isinstance(meta, dict):
        raise PreparedDataError(f"benchmark {name!r}: {meta_path} is not a JSON object; re-run the preparation")
    return meta
