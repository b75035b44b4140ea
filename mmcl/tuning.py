"""``mmcl tune``: the same validation budget for every method, and the defaults it chooses.

Every method declares a small grid of its hyper-parameters (``Method.tuning_grid``; the shared
``lr_scale`` multiplies ``train.lr`` and every rate a method sets on its own parameter groups).
A tuning of method M on scenario S runs ``tuning.trials`` grid points (the same number for every
method; every shipped grid has exactly that many points, so each is searched whole; a larger grid
is subsampled by a spread design, a smaller one is an error), each a normal engine run with
``train.eval_split=val`` (records, locks and resume apply) under
``<runs>/<profile>/tuning/<scenario>/<benchmark>/``; the trials of all methods tuned by one
command run as one sweep of the profile's executor (:func:`tune_many`). It chooses the point with the
best final average validation accuracy of the scenario's primary evaluation mode (the first
such point on a tie). The tuning record (grid, budget, every trial's values and score, the
chosen values, the code version) is written beside those runs as ``<method>.json``.

``--write-defaults`` copies the chosen values into ``mmcl/profiles/tuned/<profile>.yaml``
(per scenario and method, with where they came from). The engine resolves a method's
hyper-parameters as: the method's defaults < the tuned values < the profile's ``methods`` and
``--set`` overrides (:func:`mmcl.engine.resolved_method_values`); the resolved values are part of
every run's identity, so runs made before a tuning are not reused after it.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import fields
from pathlib import Path

import yaml

from mmcl import records
from mmcl.config import Config, ConfigError, parse_yaml

TUNED_DIR = Path(__file__).resolve().parent / "profiles" / "tuned"


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def trial_points(method_cls, trials: int) -> list[dict]:
    """The ``trials`` grid points tuned for ``method_cls``, in grid order: all of them when the grid
    has exactly that many; from a larger grid, a spread design (:func:`spread_points`)."""
    points = grid_points(method_cls.tuning_grid)
    if len(points) < trials:
        raise ConfigError(f"tuning.trials: method {method_cls.name!r} declares {len(points)} grid points "
                          f"({method_cls.tuning_grid}), fewer than the budget of {trials} trials")
    return [points[i] for i in spread_points(points, trials)]


def spread_points(points: list[dict], count: int) -> list[int]:
    """Indices of ``count`` of ``points``, sorted: chosen one by one, each time the point that adds
    the most (key, value) pairs not yet tried, then the one farthest (in keys that differ) from the
    points chosen, then the earliest. Every value of every key is tried as soon as the budget
    allows, and no two keys move together as they would with evenly spaced positions of the list
    (where the first key varies slowest)."""
    chosen: list[int] = []
    covered: set[tuple] = set()
    for _ in range(min(count, len(points))):
        def merit(i: int) -> tuple:
            pairs = set(points[i].items())
            distance = min((sum(points[i][k] != points[j][k] for k in points[i]) for j in chosen), default=0)
            return len(pairs - covered), distance, -i
        best = max((i for i in range(len(points)) if i not in chosen), key=merit)
        chosen.append(best)
        covered |= set(points[best].items())
    return sorted(chosen)


def check_grid(method_cls, minimum: int) -> None:
    """:class:`TypeError` unless a trainable method's grid names its hyper-parameters, holds valid
    values and has at least ``minimum`` points (called at registration with the default budget)."""
    grid = method_cls.tuning_grid
    if not method_cls.trains:
        if grid:
            raise TypeError(f"{method_cls.__name__} trains nothing but declares a tuning grid")
        return
    names = {f.name for f in fields(method_cls.Config)}
    unknown = [key for key in grid if key not in names]
    empty = [key for key, values in grid.items() if not isinstance(values, (list, tuple)) or not values]
    if unknown or empty:
        raise TypeError(f"{method_cls.__name__}.tuning_grid: unknown hyper-parameters {unknown} or empty value "
                        f"lists {empty}")
    points = grid_points(grid)
    if len(points) < minimum:
        raise TypeError(f"{method_cls.__name__}.tuning_grid has {len(points)} points, fewer than the default "
                        f"budget of {minimum} trials")
    for point in points:
        try:
            method_cls.Config(**point)
        except Exception as error:  # noqa: BLE001 - pydantic's ValidationError, reported as the grid's fault
            raise TypeError(f"{method_cls.__name__}.tuning_grid point {point} is invalid: {error}") from None


# ------------------------------------------------------------------------------ tuned defaults
def tuned_file(profile: str) -> Path:
    return TUNED_DIR / f"{profile}.yaml"


def read_tuned(profile: str) -> dict:
    """The tuned defaults of ``profile``: scenario -> method -> {"values", "source"} ({} when none)."""
    path = tuned_file(profile)
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
    """Write the chosen values of a tuning ``record`` into the tuned defaults of its profile."""
    path = Path(path) if path else tuned_file(record["profile"])
    data = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    data.setdefault(record["scenario"], {})[record["method"]] = {
        "values": dict(record["chosen"]),  # a copy: no YAML alias to a trial's values
        "source": {"benchmark": record["benchmark"], "seed": record["seed"], "trials": record["budget"],
                   "record": record["record"], "date": record["date"],
                   "code_version": record["code_version"]},
        # the tuning itself, so that a clone without the run tree still shows what was compared
        "grid": record["grid"], "selection": record["selection"],
        "scores": [{"values": dict(row["values"]), "val_score": round(float(row["val_score"]), 2)}
                   for row in record["trials"]]}
    header = ("# Tuned hyper-parameters (written by `mmcl tune --write-defaults`; do not edit by hand).\n"
              "# Resolution: method defaults < these values < the profile's `methods` and --set overrides.\n")
    records.atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=True))
    return path


# ------------------------------------------------------------------------------------- tuning
def tuning_root(config: Config, output_dir: str | Path | None = None) -> Path:
    """``<runs>/<profile>/tuning``: where validation runs and tuning records live."""
    return Path(output_dir or config.runtime.output_dir) / config.profile / "tuning"


def record_path(config: Config, scenario: str, benchmark: str, method: str,
                output_dir: str | Path | None = None) -> Path:
    return tuning_root(config, output_dir) / scenario / benchmark / f"{method}.json"


def plan(config: Config, scenario: str, method: str, seed: int = 0, benchmark: str | None = None,
         trials: int | None = None) -> dict:
    """The validation runs of one tuning (method on scenario): its grid points and, for each, an
    executor job (:mod:`mmcl.executors`) carrying the configuration with that point's values."""
    from mmcl.engine import evaluation_modes, scenario_benchmark, with_method_overrides
    from mmcl.methods.base import method_class

    method_cls = method_class(method)
    if not method_cls.trains:
        raise ConfigError(f"method {method!r} trains nothing: there is nothing to tune")
    if scenario not in method_cls.compatible_scenarios:
        raise ConfigError(f"method {method!r} is not compatible with scenario {scenario!r}")
    budget = trials or config.tuning.trials
    points = trial_points(method_cls, budget)
    benchmark = scenario_benchmark(config, scenario, benchmark)
    validation = config.model_copy(update={"train": config.train.model_copy(update={"eval_split": "val"})})
    jobs = [{"config": with_method_overrides(validation, method, point), "scenario": scenario, "method": method,
             "seed": seed, "benchmark": benchmark} for point in points]
    return {"scenario": scenario, "method": method, "seed": seed, "benchmark": benchmark, "budget": budget,
            "grid": method_cls.tuning_grid, "points": points, "jobs": jobs, "mode": evaluation_modes(scenario)[0]}


def tune_many(config: Config, pairs: list[tuple[str, str]], seed: int = 0, benchmark: str | None = None,
              trials: int | None = None, output_dir: str | Path | None = None, executor=None) -> list[dict]:
    """Tune every (scenario, method) of ``pairs``; all their validation runs go to one sweep of
    ``executor`` (default: the profile's, :func:`mmcl.executors.make_executor`), so a pool keeps
    every core busy across methods. Returns (and writes) one tuning record per pair, in order."""
    from mmcl.executors import make_executor

    plans = [plan(config, scenario, method, seed, benchmark, trials) for scenario, method in pairs]
    jobs = [job for p in plans for job in p["jobs"]]
    run_dirs = (executor or make_executor(config)).run_jobs(config, jobs, output_dir, "tuning")
    tuned, position = [], 0
    for p in plans:
        rows = []
        for point in p["points"]:
            run_dir = Path(run_dirs[position])
            position += 1
            metrics = records.read_json(run_dir / "metrics.json")
            rows.append({"values": point, "val_score": metrics["modes"][p["mode"]]["final_accuracy"],
                         "run_dir": str(run_dir), "identity": metrics["run"].get("identity")})
        best = max(range(len(rows)), key=lambda i: (rows[i]["val_score"], -i))  # the first of equal scores
        path = record_path(config, p["scenario"], p["benchmark"], p["method"], output_dir)
        record = {"profile": config.profile, "scenario": p["scenario"], "benchmark": p["benchmark"],
                  "method": p["method"], "seed": p["seed"], "grid": p["grid"], "budget": p["budget"],
                  "selection": f"final average validation accuracy ({p['mode']})",
                  "trials": rows, "chosen": rows[best]["values"], "chosen_score": rows[best]["val_score"],
                  "record": str(path), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "code_version": records.code_version()}
        records.atomic_write_json(path, record)
        tuned.append(record)
    return tuned


def tune(config: Config, scenario: str, method: str, seed: int = 0, benchmark: str | None = None,
         trials: int | None = None, output_dir: str | Path | None = None, executor=None) -> dict:
    """Tune ``method`` on ``scenario``'s validation data; returns (and writes) the tuning record."""
    return tune_many(config, [(scenario, method)], seed, benchmark, trials, output_dir, executor)[0]
