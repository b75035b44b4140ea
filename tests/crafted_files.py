"""A crafted pickle for the tests that files of tensors are read without running code (mmcl.records.load_tensors).

``pickle.loads`` of what :func:`plant_crafted_pickle` writes runs code: it creates a marker file. A
reader that loads the file with ``torch.load(weights_only=False)`` creates the marker; one that
refuses it does not.
"""
from __future__ import annotations

import pickle
from pathlib import Path


class _Trap:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def crafted_object(marker: Path) -> dict:
    """A dict shaped like the files of tensors whose unpickling creates ``marker``."""
    return {"labels": _Trap(marker), "inputs": {}}


def plant_crafted_pickle(path: Path, marker: Path | None = None) -> Path:
    """Write ``pickle.dumps`` of :func:`crafted_object` to ``path``; returns the marker's path
    (default: ``<path>.executed``), which exists only once something has unpickled the file."""
    marker = Path(marker or f"{path}.executed")
    Path(path).write_bytes(pickle.dumps(crafted_object(marker)))
    return marker
