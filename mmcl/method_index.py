"""What ``mmcl list methods`` shows of each built-in method, read without importing torch.

The method classes (``mmcl/methods/*.py``) are where these facts live; importing them imports torch
and open_clip, seconds for a listing. :data:`INDEX_FILE` (``mmcl/methods/index.json``) is generated
from the registry, never edited by hand::

    python -m mmcl.method_index      # after adding a method, or changing its name, description,
                                     # scenarios, variants or comparisons

``tests/test_cli.py`` checks that the file equals what the registry says, so a method changed
without regenerating it fails the tests instead of being listed wrong. Without the file (a copy
that lacks it) the listing reads the registry itself: slower, never different.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from mmcl.atomic import atomic_write_text

INDEX_FILE = Path(__file__).resolve().parent / "methods" / "index.json"


def describe(cls) -> dict:
    """The listed facts of one method class: its description, scenarios, variant and comparison names,
    and its ``family`` and whether it ``trains`` (where tables place it, :func:`mmcl.results.family_rank`)."""
    return {"description": cls.description, "compatible_scenarios": list(cls.compatible_scenarios),
            "ablations": list(cls.ablations), "comparisons": list(cls.comparisons),
            "comparison_scenarios": list(cls.comparison_scenarios), "family": cls.family, "trains": cls.trains}


def from_registry() -> dict[str, dict]:
    """:func:`describe` of every registered method, by name (imports the methods, and torch)."""
    from mmcl.methods import REGISTRY  # torch and open_clip: only without the index (or to write it)

    return {name: describe(cls) for name, cls in sorted(REGISTRY.items())}


def methods() -> dict[str, dict]:
    """The index (:data:`INDEX_FILE`), or :func:`from_registry` where it is missing or unreadable."""
    try:
        return json.loads(INDEX_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return from_registry()


@functools.lru_cache(maxsize=1)
def _families() -> dict[str, tuple[str, bool]]:
    return {name: (entry["family"], entry["trains"]) for name, entry in methods().items()}


def family(method: str) -> tuple[str, bool] | None:
    """(``family``, ``trains``) of a built-in method, from the index (read once per process); None
    for a method the index does not list."""
    return _families().get(method)


def render() -> str:
    """The text of :data:`INDEX_FILE` as the registry makes it."""
    return json.dumps(from_registry(), indent=2, ensure_ascii=False) + "\n"


def write(path: Path = INDEX_FILE) -> bool:
    """Write :func:`render` to ``path``; whether it changed."""
    text = render()
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text)
    return True


if __name__ == "__main__":
    print(f"{'wrote' if write() else 'up to date:'} {INDEX_FILE}")
