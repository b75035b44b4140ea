"""The environment lock: ``requirements.lock`` (exact versions of every dependency, written by
``make lock`` with ``uv pip compile`` from pyproject.toml and ``requirements.constraints.txt``).

:func:`read_lock` parses it, :func:`lock_differences` compares it with the installed
distributions (``mmcl reproduce`` warns about those), :func:`unsatisfied_requirements` checks it
against pyproject.toml's requirements (a test keeps the two in agreement).
"""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = ROOT / "requirements.lock"  # a source checkout; an installed wheel has none


def normalise(name: str) -> str:
    """A distribution name in its canonical form (PEP 503): lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str | Path = LOCK_FILE) -> dict[str, str]:
    """Canonical distribution name -> exact version of every ``name==version`` line of the lock."""
    pins = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)(\s*;.*)?", line)
        if not match:
            raise ValueError(f"{path}:{number}: not an exact pin (name==version): {line!r}")
        pins[normalise(match.group(1))] = match.group(3)
    return pins


def lock_differences(path: str | Path = LOCK_FILE) -> list[tuple[str, str, str | None]]:
    """(name, locked version, installed version or None when missing) for every locked
    distribution installed at another version, sorted by name."""
    differences = []
    for name, locked in sorted(read_lock(path).items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != locked:
            differences.append((name, locked, installed))
    return differences


def warn_lock_differences(path: str | Path = LOCK_FILE, shown: int = 8) -> list[tuple[str, str, str | None]]:
    """Print one warning naming the installed versions that differ from the lock (the first
    ``shown``); nothing when there is no lock (an installed wheel) or every version agrees."""
    if not Path(path).is_file():
        return []
    differences = lock_differences(path)
    if differences:
        listed = ", ".join(f"{name} {installed or 'missing'} (lock {locked})" for name, locked, installed
                           in differences[:shown])
        more = f" and {len(differences) - shown} more" if len(differences) > shown else ""
        print(f"mmcl: warning: {len(differences)} installed versions differ from {Path(path).name}: {listed}{more}; "
              f"the runs record the installed ones (`make env` installs the lock)", flush=True)
    return differences


def project_requirements(pyproject: str | Path = ROOT / "pyproject.toml", extras: tuple[str, ...] = ("test",)) -> list:
    """pyproject.toml's dependencies and those of ``extras``, as packaging Requirements."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads(Path(pyproject).read_text())["project"]
    strings = list(project["dependencies"])
    for extra in extras:
        strings += project["optional-dependencies"][extra]
    return [Requirement(s) for s in strings]


def unsatisfied_requirements(lock: str | Path = LOCK_FILE, pyproject: str | Path = ROOT / "pyproject.toml",
                             extras: tuple[str, ...] = ("test",)) -> list[str]:
    """pyproject requirements the lock leaves out or pins outside their range, one line each."""
    pins = read_lock(lock)
    problems = []
    for requirement in project_requirements(pyproject, extras):
        pinned = pins.get(normalise(requirement.name))
        if pinned is None:
            problems.append(f"{requirement}: not in {Path(lock).name}")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{requirement}: {Path(lock).name} pins {pinned}")
    return problems
