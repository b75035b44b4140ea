"""The import graph of ``mmcl`` is acyclic, function-level imports included, and every import left
inside a function says why it is there.

Read from the source with :mod:`ast` (nothing is imported): an edge A -> B for every ``import`` or
``from ... import`` of an mmcl module in A, at module level, inside a function, or under
``if TYPE_CHECKING``; relative imports are resolved, ``from mmcl.x import name`` counts as
importing ``mmcl.x`` (and ``mmcl.x.name`` where that is a module). The implicit import of a
module's parent packages is not an edge. The layers, lowest first: errors, kernels, config; data;
models; methods; hparams, runtime, runs, training, scoring; engine; executors, tuning, reproduce;
cli.

A function-level import of an mmcl module or of a heavy library (:data:`HEAVY`) must carry a
comment (on its own lines, or on the line just above it or above the run of imports it belongs to)
naming what it keeps out of the importing module: torch for a command that needs none, an
optional package, a library numpy and torch must not precede.

``python tests/test_imports.py [ROOT]`` prints the cycles and the uncommented imports of the
checkout at ROOT (default: this one).
"""
from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "numpy", "pandas", "scipy", "matplotlib", "seaborn", "open_clip", "papermill", "nbformat",
         "nbclient", "jupyter_client", "IPython", "submitit", "mlflow", "tensorboard", "data_prep"}


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file of every ``mmcl/**/*.py`` under ``root``."""
    found = {}
    for path in sorted((root / "mmcl").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The dotted names an import statement imports (``from x import a`` gives ``x`` and ``x.a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parent = package
        for _ in range(node.level - 1):
            parent = parent.rpartition(".")[0]
        base = f"{parent}.{base}" if base else parent
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _function_imports(tree: ast.Module) -> set[int]:
    """ids of the import statements inside a function (at any depth)."""
    inside = set()
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(node) for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom))}
    return inside


def import_edges(root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """module -> {imported mmcl module -> ["file:line", ...]}."""
    found = modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, dict[str, list[str]]] = {name: {} for name in found}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in {resolve(t) for t in _imported(node, package) if t.split(".")[0] == "mmcl"}:
                    if target and target != name:
                        where = f"{path.relative_to(root)}:{node.lineno}"
                        edges[name].setdefault(target, []).append(where)
    return edges


def cycles(root: Path = ROOT) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    edges = import_edges(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(edges[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def cycle_path(component: list[str], edges: dict[str, dict[str, list[str]]]) -> list[str]:
    """One cycle through the first module of ``component`` (a shortest one), as ``A -> B (file:line)`` lines."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier and start not in previous:
        following = []
        for node in frontier:
            for target in sorted(edges[node]):
                if target in members and target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    path, node = [start], previous[start]
    while node != start:
        path.append(node)
        node = previous[node]
    path.append(start)
    path.reverse()
    return [f"{a} -> {b} ({edges[a][b][0]})" for a, b in zip(path, path[1:])]


def uncommented_function_imports(root: Path = ROOT) -> list[str]:
    """``file:line: import`` of every function-level import of an mmcl module or a heavy library
    without a comment saying why (see the module's docstring)."""
    problems = []
    for name, path in modules(root).items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        comments = {token.start[0] for token in tokenize.generate_tokens(io.StringIO(source).readline)
                    if token.type == tokenize.COMMENT}
        tree = ast.parse(source)
        inside = _function_imports(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def commented_above(line: int) -> bool:
            return line - 1 in comments and lines[line - 2].lstrip().startswith("#")

        for body in (getattr(node, field) for node in ast.walk(tree)
                     for field in ("body", "orelse", "finalbody") if isinstance(getattr(node, field, None), list)):
            block_start = block_end = None  # the run of imports on consecutive lines the statement is in
            for statement in body:
                if not isinstance(statement, (ast.Import, ast.ImportFrom)):
                    block_start = None
                    continue
                if block_start is None or statement.lineno != block_end + 1:
                    block_start = statement.lineno
                block_end = statement.end_lineno
                if id(statement) not in inside:
                    continue
                heavy = [t for t in _imported(statement, package)
                         if t.split(".")[0] == "mmcl" or t.split(".")[0] in HEAVY]
                own = any(line in comments for line in range(statement.lineno, statement.end_lineno + 1))
                if heavy and not (own or commented_above(statement.lineno) or commented_above(block_start)):
                    problems.append(f"{path.relative_to(root)}:{statement.lineno}: {lines[statement.lineno - 1].strip()}")
    return sorted(problems)


def test_the_import_graph_has_no_cycle():
    edges = import_edges()
    found = cycles()
    assert not found, "import cycles (module-level and function-level imports):\n" + "\n".join(
        f"  {len(c)} modules {c}:\n    " + "\n    ".join(cycle_path(c, edges)) for c in found)


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "mmcl"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from mmcl.sub import b  # why\n")
    (package / "sub" / "b.py").write_text("from .c import thing\n")
    (package / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n")
    assert cycles(tmp_path) == [["mmcl.a", "mmcl.sub.b", "mmcl.sub.c"]]
    assert uncommented_function_imports(tmp_path) == []
    (package / "a.py").write_text("def f():\n    from mmcl.sub import b\n    import torch\n")
    assert uncommented_function_imports(tmp_path) == ["mmcl/a.py:2: from mmcl.sub import b",
                                                      "mmcl/a.py:3: import torch"]
    (package / "a.py").write_text("def f():\n    # why: both\n    from mmcl.sub import b\n    import torch\n\n"
                                  "    import numpy\n    import json\n")
    assert uncommented_function_imports(tmp_path) == ["mmcl/a.py:6: import numpy"]


def test_every_function_level_import_says_why():
    problems = uncommented_function_imports()
    assert not problems, ("function-level imports of mmcl modules or heavy libraries without a comment saying "
                          "why (torch for a command that needs none, an optional package, ...); import them at "
                          "the top where the layers allow:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    graph = import_edges(root)
    for component in cycles(root):
        print(f"cycle of {len(component)} modules: {component}")
        print("  " + "\n  ".join(cycle_path(component, graph)))
    for problem in uncommented_function_imports(root):
        print(f"uncommented: {problem}")
