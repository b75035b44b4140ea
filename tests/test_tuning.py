"""`mmcl tune`'s search, by hand: the step beyond a grid's edge, scores averaged over seeds, edge
extension rounds, the method's bounds, and the check of a tuned-defaults file. The trial runner is
replaced by a table of scores, so nothing trains here (tests/test_validation.py tunes for real)."""
import json

import pytest
import yaml

from mmcl import hparams, tuned, tuning
from mmcl.cli import main
from mmcl.config import ConfigError, load_config
from mmcl.executors import locate_job
from mmcl.methods import REGISTRY


# ------------------------------------------------------------------------------ the step rule
@pytest.mark.parametrize("values, low, high", [
    ([0.3, 1.0, 3.0], 0.1, 10.0),  # the 1-3-10 series goes on (ratios 3.3 and 3: geometric)
    ([1.0, 3.0, 10.0], 0.3, 30.0),
    ([0.01, 0.1, 1.0], 0.001, 10.0),  # a constant ratio
    ([2, 4, 8], 1, 16),  # geometric integers stay integers
    ([1, 2, 3], 0, 4),  # a constant difference
    ([0.0, 0.5, 1.0], -0.5, 1.5),  # not all positive: arithmetic
    ([0.5, 1.0, 1.5], 0.0, 2.0),  # positive, but a constant difference: arithmetic
    ([3.0, 1.0, 0.3], 0.1, 10.0),  # the order the grid lists them in does not matter
])
def test_the_step_beyond_an_edge_is_geometric_or_arithmetic(values, low, high):
    assert tuning.step_beyond(values, "low") == low and tuning.step_beyond(values, "high") == high
    integer = all(isinstance(v, int) for v in values)
    assert all(isinstance(x, int) == integer for x in (tuning.step_beyond(values, "low"),
                                                        tuning.step_beyond(values, "high")))


def test_what_is_extended_and_how_the_window_moves():
    assert tuning.is_geometric([0.3, 1.0, 3.0]) and not tuning.is_geometric([1, 2, 3])
    assert not tuning.extendable([0.5, 2.0]) and not tuning.extendable(["a", "b", "c"])
    assert not tuning.extendable([True, False, True]) and tuning.extendable([0, 1, 2])
    with pytest.raises(ValueError, match="at least 3 distinct numbers"):
        tuning.step_beyond([0.5, 2.0], "high")
    # the window keeps its size: the value at the other end is dropped
    assert tuning.shifted_window([0.3, 1.0, 3.0], "high", 10.0) == [1.0, 3.0, 10.0]
    assert tuning.shifted_window([0.3, 1.0, 3.0], "low", 0.1) == [0.1, 0.3, 1.0]
    grid = {"lr_scale": [0.3, 1.0, 3.0], "trainable_blocks": [0, 1]}
    assert tuning.edge_sides(grid, {"lr_scale": 3.0, "trainable_blocks": 1}) == {"lr_scale": "high"}
    assert tuning.edge_sides(grid, {"lr_scale": 0.3, "trainable_blocks": 0}) == {"lr_scale": "low"}
    assert tuning.edge_sides(grid, {"lr_scale": 1.0, "trainable_blocks": 0}) == {}  # a 2-value key has no edge
    # a value the method's Config rejects is its bound
    finetune = REGISTRY["finetune"]
    assert tuning.bound_problem(finetune, grid, "lr_scale", 10.0) is None
    assert "methods.finetune.lr_scale" in tuning.bound_problem(finetune, grid, "lr_scale", 0.0)


# ------------------------------------------------------------------------------ searches, by hand
def _fake_runner(score, calls):
    """A stand-in for :func:`mmcl.tuning.run_trials`: ``score(values, seed)``; each sweep's requests
    are appended to ``calls`` as (values, seed) pairs."""
    def run_trials(config, requests, output_dir, executor, what):
        calls.append([(dict(r["values"]), r["seed"]) for r in requests])
        return [{"val_score": score(r["values"], r["seed"]), "run_dir": f"fake/{len(calls)}/{i}", "identity": None}
                for i, r in enumerate(requests)]
    return run_trials


@pytest.fixture
def config(tmp_path):
    return load_config("smoke", [f"runtime.output_dir={tmp_path / 'runs'}"])


def test_the_mean_over_seeds_chooses_what_one_seed_would_not(config, monkeypatch):
    table = {(1.0, 0): {0: 60.0, 1: 40.0}, (1.0, 1): {0: 58.0, 1: 56.0}}  # every other point: 30

    def score(values, seed):
        return table.get((values["lr_scale"], values["trainable_blocks"]), {0: 30.0, 1: 30.0})[seed]

    calls = []
    monkeypatch.setattr(tuning, "run_trials", _fake_runner(score, calls))
    alone = tuning.tune(config, "class_incremental", "finetune", seeds=[0])
    assert alone["chosen"] == {"lr_scale": 1.0, "trainable_blocks": 0} and alone["chosen_score"] == 60.0
    both = tuning.tune(config, "class_incremental", "finetune")  # tuning.seeds: 0 and 1
    assert both["seeds"] == [0, 1] and both["selection"].startswith("mean over seeds 0, 1 of the final")
    assert both["chosen"] == {"lr_scale": 1.0, "trainable_blocks": 1} and both["chosen_score"] == 57.0
    row = next(t for t in both["trials"] if t["values"] == both["chosen"])
    assert row["seed_scores"] == [58.0, 56.0] and [run["seed"] for run in row["runs"]] == [0, 1]
    # lr_scale 1.0 is inside 0.3/1/3: one round, 6 points x 2 seeds, nothing at an edge
    assert len(both["rounds"]) == 1 and both["runs"] == 12 and len(calls[-1]) == 12
    assert both["at_edge"] is False and both["edges"] == []
    assert json.loads(open(both["record"]).read())["chosen"] == both["chosen"]  # written beside the runs


def test_an_edge_choice_extends_once_and_stops_when_the_new_choice_is_inside(config, monkeypatch):
    by_lr = {0.3: 10.0, 1.0: 20.0, 3.0: 30.0, 10.0: 25.0}
    calls = []
    monkeypatch.setattr(tuning, "run_trials", _fake_runner(
        lambda values, seed: by_lr[values["lr_scale"]] + 2 * values["trainable_blocks"] + seed, calls))
    record = tuning.tune(config, "class_incremental", "finetune")
    first, second = record["rounds"]  # exactly one extension round
    assert first["chosen"] == {"lr_scale": 3.0, "trainable_blocks": 1} and first["extended"] == {"lr_scale": 10.0}
    assert second["grid"] == record["grid"] == {"lr_scale": [1.0, 3.0, 10.0], "trainable_blocks": [0, 1]}
    assert record["declared_grid"] == REGISTRY["finetune"].tuning_grid
    # the second round has the same budget, and runs only the points it does not share with the first
    assert len(second["trials"]) == 6
    assert calls[1] == [({"lr_scale": 10.0, "trainable_blocks": b}, s) for b in (0, 1) for s in (0, 1)]
    assert [r["new_runs"] for r in record["rounds"]] == [12, 4] and record["runs"] == 16 and len(record["trials"]) == 8
    assert record["chosen"] == {"lr_scale": 3.0, "trainable_blocks": 1} and record["chosen_score"] == 32.5
    assert second["extended"] == {} and record["at_edge"] is False and record["edges"] == []
    assert (record["budget"], record["max_extensions"]) == (6, 3)  # the same for every method


def test_a_point_of_a_shifted_window_is_the_same_run(config):
    """Runs are identified by their resolved values: the engine finds, in a later round or command, the
    run a point had in an earlier one (and each seed is its own run)."""
    before = tuning.plan(config, "class_incremental", "finetune", [0, 1])
    after = tuning.plan(config, "class_incremental", "finetune", [0, 1],
                        grid={"lr_scale": [1.0, 3.0, 10.0], "trainable_blocks": [0, 1]})
    point = {"lr_scale": 3.0, "trainable_blocks": 1}
    old, new = (p["jobs"][p["points"].index(point)] for p in (before, after))
    for seed in (0, 1):
        a, b = locate_job(config, old[seed], None), locate_job(config, new[seed], None)
        assert (a.identity, a.run_dir) == (b.identity, b.run_dir)
    assert locate_job(config, old[0], None).run_dir != locate_job(config, old[1], None).run_dir


def test_a_bound_of_the_method_stops_the_extension(config, monkeypatch):
    # trainable_blocks 0/1/2: 0 chosen, the step below (-1) is no valid value (ge=0): a bound
    monkeypatch.setattr(REGISTRY["finetune"], "tuning_grid", {"lr_scale": [1.0, 3.0], "trainable_blocks": [0, 1, 2]})
    calls = []
    monkeypatch.setattr(tuning, "run_trials", _fake_runner(
        lambda values, seed: 50.0 - 10 * values["trainable_blocks"] + values["lr_scale"], calls))
    record = tuning.tune(config, "class_incremental", "finetune", seeds=[0])
    assert len(record["rounds"]) == 1 and len(calls) == 1
    assert record["chosen"] == {"lr_scale": 3.0, "trainable_blocks": 0}  # lr_scale has 2 values: no edge
    [edge] = record["edges"]
    assert (edge["key"], edge["value"], edge["side"], edge["at_edge"], edge["bound"]) == \
        ("trainable_blocks", 0, "low", True, True)
    assert edge["reason"].startswith("the method's bound: trainable_blocks=-1 is invalid")


def test_rounds_run_out_at_an_edge_and_the_cli_and_the_defaults_say_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tuned, "TUNED_DIR", tmp_path / "tuned")
    calls = []
    monkeypatch.setattr(tuning, "run_trials", _fake_runner(lambda values, seed: values["lr_scale"], calls))
    assert main(["tune", "--method", "finetune", "--scenario", "class_incremental", "--profile", "smoke",
                 "--seed", "3", "--max-extensions", "2", "--write-defaults",
                 "--set", f"runtime.output_dir={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    assert [len(c) for c in calls] == [6, 2, 2]  # 0.3/1/3 -> 1/3/10 -> 3/10/30, one seed
    assert "mean over seeds 3; 6 trials per round, 3 rounds, 10 runs" in out
    assert "  at edge: lr_scale=30.0 (high end of [3.0, 10.0, 30.0]): rounds ran out: 2 extension(s) of " \
           "tuning.max_extensions=2 made; the next would try lr_scale=100.0" in out
    entry = yaml.safe_load((tmp_path / "tuned" / "smoke.yaml").read_text())["class_incremental"]["finetune"]
    assert entry["values"] == {"lr_scale": 30.0, "trainable_blocks": 0}
    assert entry["grid"] == {"lr_scale": [3.0, 10.0, 30.0], "trainable_blocks": [0, 1]}
    assert [r["grid"]["lr_scale"] for r in entry["rounds"]] == [[0.3, 1.0, 3.0], [1.0, 3.0, 10.0], [3.0, 10.0, 30.0]]
    assert entry["source"]["seeds"] == [3] and entry["source"]["max_extensions"] == 2
    assert len(entry["scores"]) == 10 and entry["scores"][0]["seed_scores"] == [0.3]
    assert entry["edges"][0]["at_edge"] is True
    assert tuning.tuned_edges("smoke") == [
        {"scenario": "class_incremental", "method": "finetune", "key": "lr_scale", "value": 30.0, "side": "high",
         "grid": [3.0, 10.0, 30.0], "reason": entry["edges"][0]["reason"]}]
    config = load_config("smoke")
    assert hparams.resolved_method_values(config, "class_incremental", "finetune") == entry["values"]
    # one seed or several, not both; distinct seeds
    assert main(["tune", "--method", "finetune", "--scenario", "class_incremental", "--profile", "smoke",
                 "--seed", "0", "--seeds", "1"]) == 2
    assert "--seeds or --seed" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="distinct"):
        load_config("smoke", ["tuning.seeds=[1, 1]"])


# ------------------------------------------------------------------------------ the tuned-defaults check
def test_tuned_edges_lists_the_values_at_an_edge_of_a_3_value_grid(tmp_path):
    path = tmp_path / "tiny.yaml"
    grid = {"lr_scale": [0.3, 1.0, 3.0], "alpha": [0.1, 0.5]}
    path.write_text(yaml.safe_dump({
        "class_incremental": {
            "a": {"values": {"lr_scale": 3.0, "alpha": 0.5}, "grid": grid},  # before edge extension
            "b": {"values": {"lr_scale": 1.0, "alpha": 0.1}, "grid": grid},  # inside; 2-value keys have no edge
            "c": {"values": {"lr_scale": 0.3, "alpha": 0.1}, "grid": grid, "rounds": [{"grid": grid}],
                  "edges": [{"key": "lr_scale", "value": 0.3, "side": "low", "at_edge": True, "bound": True,
                             "reason": "the method's bound"}]},
            "d": {"values": {"lr_scale": 3.0}, "grid": grid, "rounds": [{"grid": grid}]}},  # edited by hand
        "domain_incremental": {"a": {"values": {"lr_scale": 3.0}}}}))  # no grid: nothing to judge
    found = [(e["method"], e["key"], e["value"], e["side"], e["reason"]) for e in tuning.tuned_edges(path=path)]
    assert found == [("a", "lr_scale", 3.0, "high", tuning.BEFORE_EXTENSION),
                     ("c", "lr_scale", 0.3, "low", "the method's bound"),
                     ("d", "lr_scale", 3.0, "high", "not recorded")]


def test_the_packaged_tuned_defaults_resolve_and_no_choice_sits_at_an_edge():
    """mmcl/profiles/tuned/tiny.yaml: its values resolve in the engine, every choice was scored over
    two seeds with edge extension, and none sits at an edge of a >= 3-value grid."""
    packaged = tuned.read_tuned("tiny")
    assert packaged  # shipped
    config = load_config("tiny")
    for scenario, methods in packaged.items():
        for method, entry in methods.items():
            assert hparams.resolved_method_values(config, scenario, method) == \
                {**entry["values"], **config.methods.get(method, {})}
            REGISTRY[method].make_config(entry["values"])
            assert len(entry["source"]["seeds"]) >= 2 and "rounds" in entry, (scenario, method)
    assert tuning.tuned_edges("tiny") == []
