"""The tuned defaults: ``mmcl/profiles/tuned/<profile>.yaml``, what ``mmcl tune --write-defaults`` writes.

Per scenario and method: the chosen ``values``, where they came from (``source``), the grid they
were chosen from, each round's grid and choice, and every point's scores (:mod:`mmcl.tuning`
runs the tuning itself). The run's hyper-parameters read :func:`tuned_values`: a method's defaults
< these values < the profile's ``methods`` and ``--set`` overrides
(:func:`mmcl.hparams.resolved_method_values`).

Reading and writing these files imports neither the engine, the methods nor torch.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from mmcl.atomic import atomic_write_text
from mmcl.config import ConfigError, parse_yaml

TUNED_DIR = Path(__file__).resolve().parent / "profiles" / "tuned"


def tuned_file(profile: str) -> Path:
    return TUNED_DIR / f"{profile}.yaml"


def read_tuned(profile: str | None = None, path: str | Path | None = None) -> dict:
    """The tuned defaults of ``profile`` (or the file at ``path``): scenario -> method -> {"values",
    "source", "grid", ...} ({} when there is no file)."""
    path = Path(path) if path is not None else tuned_file(profile)
    if not path.is_file():
        return {}
    try:
        data = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping scenario -> method -> values")
    for scenario, methods in data.items():
        for method, entry in (methods or {}).items() if isinstance(methods, dict) else [(None, None)]:
            if not isinstance(entry, dict) or not isinstance(entry.get("values"), dict):
                raise ConfigError(f"{path}: {scenario}.{method}.values: expected a mapping of hyper-parameters")
    return data


def tuned_values(profile: str, scenario: str | None, method: str) -> dict:
    """The tuned hyper-parameter values of ``method`` in ``scenario`` for ``profile`` ({} when none)."""
    if scenario is None:
        return {}
    entry = (read_tuned(profile).get(scenario) or {}).get(method)
    return dict(entry["values"]) if entry else {}


def write_defaults(record: dict, path: Path | None = None) -> Path:
    """Write the chosen values of a tuning ``record`` into the tuned defaults of its profile: the
    values, where they came from, and the tuning itself (the grid they were chosen from, each
    round's grid and choice, every point's mean and per-seed validation scores, the edges)."""
    path = Path(path) if path else tuned_file(record["profile"])
    data = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    seeds = record.get("seeds", [record.get("seed", 0)])
    entry = {
        "values": dict(record["chosen"]),  # a copy: no YAML alias to a trial's values
        "source": {"benchmark": record["benchmark"], "seeds": list(seeds), "trials": record["budget"],
                   "max_extensions": record.get("max_extensions", 0), "record": record["record"],
                   "date": record["date"], "code_version": record["code_version"]},
        # the tuning itself, so that a clone without the run tree still shows what was compared
        "grid": plain_grid(record["grid"]), "selection": record["selection"],
        "scores": [{"values": dict(row["values"]), "val_score": round(float(row["val_score"]), 2),
                    **({"seed_scores": [round(float(x), 2) for x in row["seed_scores"]]}
                       if "seed_scores" in row else {})}
                   for row in record["trials"]]}
    if "rounds" in record:
        entry["rounds"] = [{"grid": plain_grid(r["grid"]), "chosen": dict(r["chosen"]),
                            "val_score": round(float(r["chosen_score"]), 2)} for r in record["rounds"]]
        if record.get("edges"):
            entry["edges"] = [dict(edge) for edge in record["edges"]]
    data.setdefault(record["scenario"], {})[record["method"]] = entry
    header = ("# Tuned hyper-parameters (written by `mmcl tune --write-defaults`; do not edit by hand).\n"
              "# Resolution: method defaults < these values < the profile's `methods` and --set overrides.\n")
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=True))
    return path


def plain_grid(grid: dict) -> dict:
    """A copy of ``grid`` (lists, no YAML aliases between entries)."""
    return {key: list(values) for key, values in grid.items()}
