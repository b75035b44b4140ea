"""``mmcl tune``: the same validation budget for every method, and the defaults it chooses.

Every method declares a small grid of its hyper-parameters (``Method.tuning_grid``; the shared
``lr_scale`` multiplies ``train.lr`` and every rate a method sets on its own parameter groups).
A tuning of method M on scenario S searches in rounds, with the same settings for every method:

- **A round** runs ``tuning.trials`` points of the round's grid (every shipped grid has exactly that
  many points, so each is searched whole; a larger grid is subsampled by a spread design, a smaller
  one is an error), each point once per seed of ``tuning.seeds`` (default 0 and 1). A trial is a
  normal engine run with ``train.eval_split=val`` (records, locks, resume and reuse apply) under
  ``<runs>/<profile>/tuning/<scenario>/<benchmark>/``; the runs of all methods tuned by one command
  go to one sweep of the profile's executor per round (:func:`tune_many`). A point's score is the
  mean over the seeds of the final average validation accuracy of the scenario's primary
  evaluation mode; the round chooses the best point (the first such point on a tie).
- **Edge extension.** After a round, every key whose grid has at least 3 (numeric) values and whose
  chosen value is the smallest or largest of them is moved one step beyond that edge
  (:func:`step_beyond`: by the grid's ratio when it is geometric, e.g. ``lr_scale`` 0.3/1/3 -> 10
  or 0.1, by its difference otherwise; integer keys stay integers), keeping the window's size
  (0.3/1/3 -> 1/3/10), and the next round searches the shifted grid with the same budget. A
  (point, seed) already run is not run again (and a later command reuses the finished run: a
  run's identity is its resolved values). The search stops when no choice is at such an edge, or
  after ``tuning.max_extensions`` extension rounds (default 3); a step the method's Config rejects
  (e.g. a probability above 1) is not taken: that edge is the method's bound. A choice still at an
  edge is recorded (``at_edge``, ``edges`` with the reason) and printed by ``mmcl tune``.
- **Cost** per (method, scenario): at most ``trials x len(seeds) x (1 + max_extensions)`` runs, and
  fewer, since an extension round reuses the points its window shares with the last one; with the
  shipped grids (3 ``lr_scale`` values x 2 of one knob) and the defaults: 12 runs without an
  extension, 4 more per extension round, 24 at most. To measure a profile's defaults again:
  ``mmcl tune --all --profile tiny --write-defaults`` (every trainable method on every scenario).

The tuning record (per round: grid, trial points, each point's mean and per-seed scores and runs,
choice, extension; every point run; seeds, budget, max_extensions; the choice, its grid and its
edges; the code version) is written beside the runs as ``<method>.json``.

``--write-defaults`` copies the chosen values into ``mmcl/profiles/tuned/<profile>.yaml``
(:func:`mmcl.tuned.write_defaults`: per scenario and method, with where they came from, the grid they
were chosen from, each round's grid and choice, and every point's scores). :func:`tuned_edges` lists every tuned value at
an edge of a >= 3-value grid in such a file, with its reason. The engine resolves a method's
hyper-parameters as: the method's defaults < the tuned values < the profile's ``methods`` and
``--set`` overrides (:func:`mmcl.hparams.resolved_method_values`); the resolved values are part of
every run's identity, so runs made before a tuning are not reused after it.
"""
from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

from mmcl import records
from mmcl.config import Config, ConfigError
from mmcl.engine import evaluation_modes
from mmcl.executors import make_executor
from mmcl.hparams import scenario_benchmark, with_method_overrides
from mmcl.methods import method_class
from mmcl.tuned import plain_grid, read_tuned


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def trial_points(method_cls, trials: int, grid: dict[str, list] | None = None) -> list[dict]:
    """The ``trials`` points tuned for ``method_cls`` in ``grid`` (default: its ``tuning_grid``; an
    extension round passes its shifted window), in grid order: all of them when the grid has exactly
    that many; from a larger grid, a spread design (:func:`spread_points`)."""
    grid = method_cls.tuning_grid if grid is None else grid
    points = grid_points(grid)
    if len(points) < trials:
        raise ConfigError(f"tuning.trials: method {method_cls.name!r} declares {len(points)} grid points "
                          f"({grid}), fewer than the budget of {trials} trials")
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


# ------------------------------------------------------------------------------ edge extension
def extendable(values: list) -> bool:
    """Whether a key's grid values take part in edge extension: at least 3 distinct finite numbers
    (booleans and strings have no "beyond")."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return len(values) >= 3 and len(numbers) == len(values) and len(set(values)) == len(values)


def _relative_spread(steps: list[float]) -> float:
    return (max(steps) - min(steps)) / (sum(steps) / len(steps))


def is_geometric(values: list) -> bool:
    """Whether extendable ``values`` step by a ratio rather than a difference: all positive, and their
    ratios vary less (relative to their mean, in log scale) than their differences do. 2/4/8,
    0.01/0.1/1 and 0.3/1/3 (the 1-3-10 series, ratios 3.3 and 3) are geometric; 1/2/3, 0/1/2 and
    0.5/1/1.5 are arithmetic."""
    v = sorted(values)
    if v[0] <= 0:
        return False
    logs = [math.log(b / a) for a, b in zip(v, v[1:])]
    return _relative_spread(logs) < _relative_spread([b - a for a, b in zip(v, v[1:])])


def step_beyond(values: list, side: str) -> int | float:
    """The value one step beyond the ``side`` ("low" or "high") edge of extendable ``values``.

    The step repeats the grid's pattern: the edge is moved as its neighbour was moved from the value
    after it (by that ratio for a geometric grid, :func:`is_geometric`; by that difference otherwise).
    With a constant ratio or difference that is the grid's own step; 0.3/1/3 gives 10 above and 0.1
    below (the 1-3-10 series goes on). Floats are rounded to 12 significant digits (3 x 1/0.3 is
    10.000000000000002, which would be another run identity than 10); when every value is an int
    the step is rounded to an int and moves at least 1 (integer keys stay integers)."""
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', got {side!r}")
    if not extendable(values):
        raise ValueError(f"{values}: only a key with at least 3 distinct numbers is extended")
    v = sorted(values)
    edge, near, far = (v[-1], v[-2], v[-3]) if side == "high" else (v[0], v[1], v[2])
    candidate = edge * near / far if is_geometric(v) else edge + (near - far)
    if all(isinstance(x, int) for x in v):
        stepped = int(round(candidate))
        return max(stepped, edge + 1) if side == "high" else min(stepped, edge - 1)
    return float(f"{candidate:.12g}")


def shifted_window(values: list, side: str, new) -> list:
    """``values`` (sorted) moved one step: ``new`` added beyond the ``side`` edge, the value at the
    other end dropped, so the window keeps its size (0.3/1/3, high, 10 -> 1/3/10)."""
    v = sorted(values)
    return v[1:] + [new] if side == "high" else [new] + v[:-1]


def edge_sides(grid: dict[str, list], chosen: dict) -> dict[str, str]:
    """key -> "low"/"high" for every key of ``grid`` with at least 3 (numeric) values whose chosen
    value is the smallest or the largest of them."""
    sides = {}
    for key, values in grid.items():
        if key in chosen and extendable(values):
            if chosen[key] == max(values):
                sides[key] = "high"
            elif chosen[key] == min(values):
                sides[key] = "low"
    return sides


def bound_problem(method_cls, grid: dict[str, list], key: str, value) -> str | None:
    """Why ``key`` = ``value`` is outside ``method_cls``'s hyper-parameters (its Config rejects a point
    of ``grid`` with that value), or None when every such point is valid: a method's bound."""
    others = {k: v for k, v in grid.items() if k != key}
    for point in grid_points({**others, key: [value]}):
        try:
            method_cls.make_config(point)
        except ConfigError as error:
            return str(error).removeprefix("invalid method hyper-parameters: ")
    return None


# ------------------------------------------------------------------------------ tuned defaults
BEFORE_EXTENSION = "not searched beyond: tuned before edge extension (one round, one seed)"


def tuned_edges(profile: str | None = None, path: str | Path | None = None) -> list[dict]:
    """Every tuned value of ``profile``'s tuned defaults (or the file at ``path``) that sits at an
    edge of a key's grid of at least 3 values: {scenario, method, key, value, side, grid, reason},
    in file order (scenarios, then methods, then keys, sorted).

    ``grid`` is the grid the value was chosen from (the last round's window). ``reason`` is the one
    the tuning recorded (the method's bound, or the rounds ran out), or :data:`BEFORE_EXTENSION`
    for an entry written before edge extension (no ``rounds``), or "not recorded" when a newer
    entry has an edge it does not explain (edited by hand)."""
    found = []
    for scenario, methods in sorted(read_tuned(profile, path).items()):
        for method, entry in sorted((methods or {}).items()):
            recorded = {edge["key"]: edge for edge in entry.get("edges") or []}
            for key, side in sorted(edge_sides(entry.get("grid") or {}, entry["values"]).items()):
                reason = recorded[key]["reason"] if key in recorded else \
                    "not recorded" if "rounds" in entry else BEFORE_EXTENSION
                found.append({"scenario": scenario, "method": method, "key": key, "value": entry["values"][key],
                              "side": side, "grid": sorted(entry["grid"][key]), "reason": reason})
    return found


# ------------------------------------------------------------------------------------- tuning
def tuning_root(config: Config, output_dir: str | Path | None = None) -> Path:
    """``<runs>/<profile>/tuning``: where validation runs and tuning records live."""
    return Path(output_dir or config.runtime.output_dir) / config.profile / "tuning"


def record_path(config: Config, scenario: str, benchmark: str, method: str,
                output_dir: str | Path | None = None) -> Path:
    return tuning_root(config, output_dir) / scenario / benchmark / f"{method}.json"


def plan(config: Config, scenario: str, method: str, seeds: list[int] | int = (0,), benchmark: str | None = None,
         trials: int | None = None, grid: dict[str, list] | None = None) -> dict:
    """The validation runs of one round of a tuning (method on scenario) over ``grid`` (default: the
    method's ``tuning_grid``): its trial points and, for each point and seed, an executor job
    (:mod:`mmcl.executors`) carrying the configuration with that point's values."""
    method_cls = method_class(method)
    if not method_cls.trains:
        raise ConfigError(f"method {method!r} trains nothing: there is nothing to tune")
    if scenario not in method_cls.compatible_scenarios:
        raise ConfigError(f"method {method!r} is not compatible with scenario {scenario!r}")
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    budget = trials or config.tuning.trials
    grid = plain_grid(method_cls.tuning_grid if grid is None else grid)
    points = trial_points(method_cls, budget, grid)
    benchmark = scenario_benchmark(config, scenario, benchmark)
    validation = config.model_copy(update={"train": config.train.model_copy(update={"eval_split": "val"})})
    jobs = [[{"config": with_method_overrides(validation, method, point), "scenario": scenario, "method": method,
              "seed": seed, "benchmark": benchmark} for seed in seeds] for point in points]
    return {"scenario": scenario, "method": method, "seeds": seeds, "benchmark": benchmark, "budget": budget,
            "grid": grid, "points": points, "jobs": jobs, "mode": evaluation_modes(scenario)[0]}


def run_trials(config: Config, requests: list[dict], output_dir: str | Path | None, executor, what: str) -> list[dict]:
    """Run the validation runs of ``requests`` (each {"job", "mode", "values", "seed"}) as one sweep
    of ``executor``; for each, in order, {"val_score": its final average validation accuracy in
    ``mode``, "run_dir", "identity"}. The one place where tuning trains (tests replace it)."""
    run_dirs = executor.run_jobs(config, [r["job"] for r in requests], output_dir, what)
    results = []
    for request, run_dir in zip(requests, run_dirs):
        metrics = records.read_json(Path(run_dir) / "metrics.json")
        results.append({"val_score": metrics["modes"][request["mode"]]["final_accuracy"], "run_dir": str(run_dir),
                        "identity": metrics["run"].get("identity")})
    return results


def _point_key(point: dict) -> tuple:
    return tuple(sorted(point.items()))


def tune_many(config: Config, pairs: list[tuple[str, str]], seed: int | None = None, benchmark: str | None = None,
              trials: int | None = None, output_dir: str | Path | None = None, executor=None,
              seeds: list[int] | None = None, max_extensions: int | None = None) -> list[dict]:
    """Tune every (scenario, method) of ``pairs``; returns (and writes) one tuning record per pair, in order.

    ``seeds`` (default ``tuning.seeds``; ``seed``: that one seed), ``trials`` (default
    ``tuning.trials``) and ``max_extensions`` (default ``tuning.max_extensions``) are the same for
    every pair. Each round runs, for every pair still searching, its trial points once per seed;
    the runs of all pairs in a round go to one sweep of ``executor`` (default: the profile's,
    :func:`mmcl.executors.make_executor`), so a pool keeps every core busy across methods. A (point,
    seed) already run in an earlier round is not run again."""
    seeds = list(seeds) if seeds is not None else [seed] if seed is not None else list(config.tuning.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"tuning seeds: give distinct seeds, got {seeds}")
    max_extensions = config.tuning.max_extensions if max_extensions is None else max_extensions
    if max_extensions < 0:
        raise ConfigError(f"tuning max_extensions: must be at least 0, got {max_extensions}")

    searches = []
    for scenario, method in pairs:
        first = plan(config, scenario, method, seeds, benchmark, trials)
        searches.append({"plan": first, "rounds": [], "scores": {}, "order": [], "edges": [], "runs": 0,
                         "method_cls": method_class(method)})
    active = list(range(len(searches)))
    number = 0
    while active:
        requests, owners = _round_requests(searches, active)
        if requests:
            if executor is None:
                executor = make_executor(config)
            results = run_trials(config, requests, output_dir, executor, "tuning" if number == 0 else
                                 f"tuning (extension {number})")
            _keep_results(searches, owners, requests, results)
        active = [i for i in active if _conclude_round(config, searches[i], number, max_extensions)]
        number += 1
    tuned = []
    for search in searches:
        record = _record(config, search, max_extensions, output_dir)
        records.atomic_write_json(Path(record["record"]), record)
        tuned.append(record)
    return tuned


def _round_requests(searches: list[dict], active: list[int]) -> tuple[list[dict], list[tuple[int, tuple]]]:
    """Open a round for each active search: (the runs it needs, {"job", "mode", "values", "seed"}
    each, and their owners (search index, (point key, seed))); a (point, seed) run before is not asked again."""
    requests, owners = [], []
    for i in active:
        search = searches[i]
        p = search["plan"]
        search["rounds"].append({"grid": p["grid"], "points": p["points"], "new_runs": 0})
        for point, jobs in zip(p["points"], p["jobs"]):
            for seed_value, job in zip(p["seeds"], jobs):
                key = (_point_key(point), seed_value)
                if key not in search["scores"]:
                    requests.append({"job": job, "mode": p["mode"], "values": point, "seed": seed_value})
                    owners.append((i, key))
                    search["scores"][key] = None  # requested: a point twice in a round runs once
    return requests, owners


def _keep_results(searches: list[dict], owners: list[tuple[int, tuple]], requests: list[dict],
                  results: list[dict]) -> None:
    """Each run's result into its search: its score, the round's and the search's run counts, the
    point in the order first run."""
    for (i, key), request, result in zip(owners, requests, results):
        searches[i]["scores"][key] = {**result, "seed": request["seed"]}
        searches[i]["rounds"][-1]["new_runs"] += 1
        searches[i]["runs"] += 1
        if key[0] not in searches[i]["order"]:
            searches[i]["order"].append(key[0])


def _row(search: dict, point: dict) -> dict:
    """A trial point's row: its values, mean validation score over the seeds and each seed's run."""
    p = search["plan"]
    runs = [search["scores"][(_point_key(point), seed)] for seed in p["seeds"]]
    scores = [float(run["val_score"]) for run in runs]
    return {"values": dict(point), "val_score": sum(scores) / len(scores), "seed_scores": scores,
            "runs": [{"seed": run["seed"], "val_score": run["val_score"], "run_dir": run["run_dir"],
                      "identity": run["identity"]} for run in runs]}


def _conclude_round(config: Config, search: dict, number: int, max_extensions: int) -> bool:
    """Choose in the round just run; move the window when the choice is at an edge (True: search on)."""
    p, current = search["plan"], search["rounds"][-1]
    rows = [_row(search, point) for point in p["points"]]
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_score"], -i))  # the first of equal scores
    current |= {"trials": rows, "chosen": rows[best]["values"], "chosen_score": rows[best]["val_score"]}
    sides = edge_sides(p["grid"], current["chosen"])
    grid, extended, edges = dict(p["grid"]), {}, []
    for key, side in sides.items():
        value, beyond = current["chosen"][key], step_beyond(p["grid"][key], side)
        problem = bound_problem(search["method_cls"], p["grid"], key, beyond)
        if problem:
            edges.append({"key": key, "value": value, "side": side, "at_edge": True, "bound": True,
                          "reason": f"the method's bound: {key}={beyond} is invalid ({problem})"})
        elif number >= max_extensions:
            edges.append({"key": key, "value": value, "side": side, "at_edge": True, "bound": False,
                          "reason": f"rounds ran out: {number} extension(s) of tuning.max_extensions={max_extensions} "
                                    f"made; the next would try {key}={beyond}"})
        else:
            extended[key] = beyond
            grid[key] = shifted_window(p["grid"][key], side, beyond)
    current["extended"] = extended
    search["edges"] = edges
    if not extended:
        return False
    search["plan"] = plan(config, p["scenario"], p["method"], p["seeds"], p["benchmark"], p["budget"], grid)
    return True


def _record(config: Config, search: dict, max_extensions: int, output_dir) -> dict:
    p, rounds = search["plan"], search["rounds"]
    last = rounds[-1]
    every = [_row(search, dict(key)) for key in search["order"]]  # every point run, in the order first run
    seeds_text = ", ".join(map(str, p["seeds"]))
    path = record_path(config, p["scenario"], p["benchmark"], p["method"], output_dir)
    return {"profile": config.profile, "scenario": p["scenario"], "benchmark": p["benchmark"], "method": p["method"],
            "seeds": p["seeds"], "budget": p["budget"], "max_extensions": max_extensions,
            "selection": f"mean over seeds {seeds_text} of the final average validation accuracy ({p['mode']})",
            "grid": last["grid"], "declared_grid": rounds[0]["grid"],
            "rounds": [{"round": n, "grid": r["grid"], "points": r["points"], "new_runs": r["new_runs"],
                        "trials": r["trials"], "chosen": r["chosen"], "chosen_score": r["chosen_score"],
                        "extended": r["extended"]} for n, r in enumerate(rounds)],
            "trials": every, "runs": search["runs"], "chosen": last["chosen"], "chosen_score": last["chosen_score"],
            "at_edge": bool(search["edges"]), "edges": search["edges"],
            "record": str(path), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "code_version": records.code_version()}


def tune(config: Config, scenario: str, method: str, seed: int | None = None, benchmark: str | None = None,
         trials: int | None = None, output_dir: str | Path | None = None, executor=None,
         seeds: list[int] | None = None, max_extensions: int | None = None) -> dict:
    """Tune ``method`` on ``scenario``'s validation data; returns (and writes) the tuning record."""
    return tune_many(config, [(scenario, method)], seed, benchmark, trials, output_dir, executor, seeds,
                     max_extensions)[0]
