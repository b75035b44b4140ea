"""The house's size limits, read from the source with :mod:`ast`: the engine runs the loop and no
more (``mmcl/engine.py`` at most 300 lines), and no function or method in ``mmcl/`` is longer than
60 lines (a longer one is split into named steps)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
MAX_ENGINE_LINES = 300


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (n lines)`` of every function in ``root/mmcl`` longer than ``limit`` lines
    (decorators not counted, the docstring counted)."""
    found = []
    for path in sorted((root / "mmcl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_mmcl_is_longer_than_60_lines():
    assert long_functions(ROOT) == []


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "mmcl").mkdir()
    (tmp_path / "mmcl" / "long.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path) == [f"mmcl/long.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"]


def test_the_engine_is_at_most_300_lines():
    assert len((ROOT / "mmcl" / "engine.py").read_text().splitlines()) <= MAX_ENGINE_LINES
