"""Validation split, the method contract without evaluation data, and `mmcl tune` on the smoke profile."""
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from mmcl import engine, hparams, runs, training, tuned, tuning
from mmcl.cli import main
from mmcl.config import ConfigError, available_profiles, load_config
from mmcl.data.benchmarks import carve_validation, load_benchmark
from mmcl.data.dataset import MultiModalDataset
from mmcl.data.scenarios import build_stream
from mmcl.data.stream import Task
from mmcl.methods import REGISTRY
from mmcl.methods.base import register
from mmcl.methods.card import Card
from mmcl.methods.text_anchored import TextAnchoredMethod


def _indexed(groups: list[tuple[int, int, int]]) -> MultiModalDataset:
    """(label, domain, count) groups; the "image" input of sample i is the number i."""
    labels = torch.tensor([label for label, _, n in groups for _ in range(n)])
    domains = torch.tensor([domain for _, domain, n in groups for _ in range(n)])
    return MultiModalDataset({"image": torch.arange(len(labels))}, labels, domains, ["a", "b"], ["x", "y"])


def test_validation_is_carved_per_class_and_domain_by_the_benchmark_seed():
    data = _indexed([(0, 0, 10), (0, 1, 10), (1, 0, 2), (1, 1, 1)])
    train, val = carve_validation(data, 0.2, seed=5)
    # round(0.2 x 10) = 2 of each group of 10; one of a group of 2; none of a group of 1
    counts = {(l, d): int(((val.labels == l) & (val.domains == d)).sum()) for l in (0, 1) for d in (0, 1)}
    assert counts == {(0, 0): 2, (0, 1): 2, (1, 0): 1, (1, 1): 0}
    ids_train, ids_val = set(train.inputs["image"].tolist()), set(val.inputs["image"].tolist())
    assert not ids_train & ids_val and ids_train | ids_val == set(range(23))  # an exact partition
    again = carve_validation(data, 0.2, seed=5)[1]
    assert again.inputs["image"].tolist() == val.inputs["image"].tolist()
    other = carve_validation(data, 0.2, seed=6)[1]
    assert other.inputs["image"].tolist() != val.inputs["image"].tolist()


def test_streams_carry_validation_and_an_empty_one_is_an_error():
    config = load_config("smoke")
    av = load_benchmark(config, "av-events")
    assert len(av.train) == 4 * 12 and len(av.val) == 4 * 3 and len(av.test) == 4 * 6
    stream = build_stream("class_incremental", av, seed=1)
    assert [t["val_size"] for t in stream.order_record()["tasks"]] == [6, 6]
    # the run seed orders classes; which samples validate is the benchmark's: the same for every seed
    other = build_stream("class_incremental", av, seed=2)
    assert sorted(map(float, torch.cat([t.val.inputs["audio"].float().sum((1, 2, 3)) for t in stream.tasks]))) == \
        sorted(map(float, torch.cat([t.val.inputs["audio"].float().sum((1, 2, 3)) for t in other.tasks])))
    first = stream.class_order[:3]  # benchmark classes of task 0
    keep = torch.nonzero(~torch.isin(av.val.labels, torch.tensor(first))).flatten()
    with pytest.raises(ConfigError, match=r"task 0 \(classes 0-1\).*has no val samples.*data.val_fraction"):
        build_stream("class_incremental", dataclasses.replace(av, val=av.val.subset(keep)), seed=1)
    with pytest.raises(ConfigError, match="data.val_fraction"):
        load_config("smoke", ["data.val_fraction=0"])


def _reachable(root) -> list:
    """Every object reachable from ``root`` through attributes, containers and module trees."""
    seen, stack, found = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None), torch.Tensor, torch.device)):
            continue
        seen.add(id(obj))
        found.append(obj)
        if isinstance(obj, dict):
            stack += list(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack += list(obj)
        elif isinstance(obj, (nn.Module, MultiModalDataset, Task)) or dataclasses.is_dataclass(obj) \
                or type(obj).__module__.startswith("mmcl"):
            stack += list(vars(obj).values())
    return found


@pytest.mark.parametrize("method", ["lwf", "replay"])
def test_methods_never_hold_test_or_validation_data(smoke_config, monkeypatch, method):
    captured = {}
    evaluate = engine.evaluate_stream

    def spy(method_obj, tasks, *args, **kwargs):
        captured["method"], captured["tasks"] = method_obj, tasks
        return evaluate(method_obj, tasks, *args, **kwargs)

    monkeypatch.setattr(engine, "evaluate_stream", spy)
    config = smoke_config.model_copy(update={"train": smoke_config.train.model_copy(update={"epochs": 1})})
    engine.run(config, "class_incremental", method, seed=0)
    held_out = {id(d) for t in captured["tasks"] for d in (t.test, t.val)}
    reachable = _reachable(captured["method"])
    assert captured["method"].context in reachable  # the walk reaches the context and its tasks
    datasets = [o for o in reachable if isinstance(o, MultiModalDataset)]
    assert datasets and not [d for d in datasets if id(d) in held_out]
    assert all(t.test is None and t.val is None for t in reachable if isinstance(t, Task))
    if method == "replay":  # its buffer holds training samples: the walk does see data
        assert captured["method"].buffer is not None


def test_eval_split_is_part_of_the_run_identity_and_validation_runs_live_apart(smoke_config):
    val = load_config("smoke", [f"runtime.output_dir={smoke_config.runtime.output_dir}", "train.eval_split=val"])
    test_run = runs.locate_run(smoke_config, "class_incremental", "finetune", 0)
    val_run = runs.locate_run(val, "class_incremental", "finetune", 0)
    assert test_run.identity != val_run.identity and val_run.difference == {"train.eval_split": "val"}
    assert val_run.run_dir.parts[-6:-3] == ("smoke", "tuning", "class_incremental")
    assert test_run.run_dir.parts[-5:-3] == ("smoke", "class_incremental")


def test_every_method_gets_the_same_budget_and_small_grids_are_refused():
    for profile in available_profiles():
        trials = load_config(profile).tuning.trials
        for cls in REGISTRY.values():
            if cls.trains:
                points = tuning.trial_points(cls, trials)
                assert len(points) == trials and all(p in tuning.grid_points(cls.tuning_grid) for p in points)
            else:
                assert cls.tuning_grid == {}
            if cls.trains:  # the shipped grids are searched whole
                assert len(tuning.grid_points(cls.tuning_grid)) == trials, cls.name
    # 6 points, 4 trials, by hand: (0.3, 0) first; (1, 1) adds two new values; (3, 0) the last lr
    # value, nearer-first ties broken by order; then nothing new, all at distance 1: the earliest.
    assert tuning.trial_points(REGISTRY["finetune"], 4) == [
        {"lr_scale": 0.3, "trainable_blocks": 0}, {"lr_scale": 0.3, "trainable_blocks": 1},
        {"lr_scale": 1.0, "trainable_blocks": 1}, {"lr_scale": 3.0, "trainable_blocks": 0}]
    assert tuning.spread_points([{"a": 1, "b": 1}, {"a": 1, "b": 2}, {"a": 2, "b": 1}, {"a": 2, "b": 2}], 2) == [0, 3]
    with pytest.raises(ConfigError, match="declares 6 grid points.*budget of 7"):
        tuning.trial_points(REGISTRY["finetune"], 7)
    with pytest.raises(TypeError, match="2 points, fewer than the default budget of 6"):  # the card refuses it
        Card(name="two-points", family="classic", description="d", tuning_grid={"lr_scale": [1, 2]})
    with pytest.raises(TypeError, match="unknown hyper-parameters"):  # registration: the grid against the Config
        card = Card(name="unknown-grid", family="classic", description="d", tuning_grid={"nope": [1, 2, 3, 4, 5, 6]})
        register(type("Unknown", (TextAnchoredMethod,), {"card": card}))
    assert "two-points" not in REGISTRY and "unknown-grid" not in REGISTRY


def test_lr_scale_multiplies_every_rate(smoke_config):
    def rates(scale):
        config = hparams.with_method_overrides(smoke_config, "comm", {"lr_scale": scale})
        method, _ = engine.build_run(config, "modality_incremental", "comm", seed=0, device=torch.device("cpu"))
        return [group["lr"] for group in training.make_optimizer(method, config).param_groups]

    lr = smoke_config.train.lr
    assert rates(1.0) == pytest.approx([10 * lr, 100 * lr])  # COMM's own scales: prompts x10, relevance x100
    assert rates(0.5) == pytest.approx([5 * lr, 50 * lr])


def test_tuned_defaults_sit_between_method_defaults_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setattr(tuned, "TUNED_DIR", tmp_path / "tuned")
    config = load_config("smoke", [f"runtime.output_dir={tmp_path / 'runs'}", "train.epochs=0"])
    assert hparams.resolved_method_values(config, "class_incremental", "finetune") == {}
    before = engine.run(config, "class_incremental", "finetune", seed=0)
    assert before.metrics["run"]["tuned"] is False  # the tables say so (results.run_note)
    record = {"profile": "smoke", "scenario": "class_incremental", "benchmark": "av-events", "method": "finetune",
              "seed": 0, "budget": 4, "record": "r.json", "date": "d", "code_version": {"git_commit": "c"},
              "chosen": {"lr_scale": 0.3, "trainable_blocks": 0}, "grid": {"lr_scale": [0.3, 1.0]},
              "selection": "final average validation accuracy (standard)",
              "trials": [{"values": {"lr_scale": 0.3, "trainable_blocks": 0}, "val_score": 61.2345, "run_dir": "x"},
                         {"values": {"lr_scale": 1.0, "trainable_blocks": 0}, "val_score": 55.0, "run_dir": "y"}]}
    path = tuned.write_defaults(record)
    assert path == tmp_path / "tuned" / "smoke.yaml"
    stored = yaml.safe_load(path.read_text())
    assert stored["class_incremental"]["finetune"]["source"]["code_version"] == {"git_commit": "c"}
    # the packaged file is the tuning record too: the grid and every trial's score, rounded to 0.01
    assert stored["class_incremental"]["finetune"]["grid"] == {"lr_scale": [0.3, 1.0]}
    assert stored["class_incremental"]["finetune"]["scores"] == [
        {"values": {"lr_scale": 0.3, "trainable_blocks": 0}, "val_score": 61.23},
        {"values": {"lr_scale": 1.0, "trainable_blocks": 0}, "val_score": 55.0}]
    assert hparams.resolved_method_values(config, "class_incremental", "finetune") == \
        {"lr_scale": 0.3, "trainable_blocks": 0}
    assert hparams.resolved_method_values(config, "domain_incremental", "finetune") == {}  # per scenario
    explicit = load_config("smoke", ["methods.finetune.lr_scale=2.0"])
    assert hparams.resolved_method_values(explicit, "class_incremental", "finetune") == \
        {"lr_scale": 2.0, "trainable_blocks": 0}  # an explicit override beats the tuned value
    # The tuned values are the defaults now: same folder, another identity; the old run is not reused.
    after = runs.locate_run(config, "class_incremental", "finetune", 0)
    assert after.run_dir == before.run_dir and after.difference == {"train.epochs": 0}
    with pytest.raises(ConfigError, match="methods.finetune.lr_scale"):
        engine.run(config, "class_incremental", "finetune", seed=0)
    tuned_run = engine.run(config, "class_incremental", "finetune", seed=0, output_dir=tmp_path / "after")
    assert tuned_run.metrics["run"]["tuned"] is True and tuned_run.metrics["run"]["hparams"]["lr_scale"] == 0.3
    zero_shot = engine.run(config, "class_incremental", "zero-shot", seed=0, output_dir=tmp_path / "after")
    assert "tuned" not in zero_shot.metrics["run"]  # trains nothing: nothing to tune
    path.write_text("class_incremental: {finetune: [1, 2]}\n")
    with pytest.raises(ConfigError, match=r"smoke.yaml: class_incremental.finetune.values"):
        hparams.resolved_method_values(config, "class_incremental", "finetune")


def test_tune_on_smoke_records_every_trial_and_writes_defaults(tmp_path, monkeypatch, capsys):
    """The real path end to end: two trials per round, two seeds, at most one extension round. With
    no training step every point ties, so the first point is chosen: lr_scale 0.3, the low edge of
    0.3/1/3, moves the window to 0.1/0.3/1 for one more round, whose choice 0.1 is an edge again
    when the rounds have run out."""
    monkeypatch.setattr(tuned, "TUNED_DIR", tmp_path / "tuned")
    runs = tmp_path / "runs"
    command = ["tune", "--method", "finetune", "--scenario", "class_incremental", "--profile", "smoke",
               "--trials", "2", "--seeds", "0", "1", "--max-extensions", "1", "--write-defaults",
               "--set", f"runtime.output_dir={runs}", "--set", "train.epochs=0"]
    assert main(command) == 0
    path = runs / "smoke" / "tuning" / "class_incremental" / "av-events" / "finetune.json"
    record = json.loads(path.read_text())
    assert {k: record[k] for k in ("profile", "scenario", "benchmark", "method", "seeds", "budget",
                                   "max_extensions")} == \
        {"profile": "smoke", "scenario": "class_incremental", "benchmark": "av-events", "method": "finetune",
         "seeds": [0, 1], "budget": 2, "max_extensions": 1}
    first, second = record["rounds"]
    assert first["grid"] == record["declared_grid"] == REGISTRY["finetune"].tuning_grid
    assert first["points"] == [{"lr_scale": 0.3, "trainable_blocks": 0}, {"lr_scale": 1.0, "trainable_blocks": 1}]
    assert first["chosen"] == {"lr_scale": 0.3, "trainable_blocks": 0} and first["extended"] == {"lr_scale": 0.1}
    assert second["grid"] == record["grid"] == {"lr_scale": [0.1, 0.3, 1.0], "trainable_blocks": [0, 1]}
    assert second["points"] == [{"lr_scale": 0.1, "trainable_blocks": 0}, {"lr_scale": 0.3, "trainable_blocks": 1}]
    assert record["chosen"] == second["chosen"] == {"lr_scale": 0.1, "trainable_blocks": 0}
    assert record["at_edge"] is True and [(e["key"], e["value"], e["side"], e["bound"]) for e in record["edges"]] == \
        [("lr_scale", 0.1, "low", False)]
    assert "rounds ran out" in record["edges"][0]["reason"]
    assert [r["new_runs"] for r in record["rounds"]] == [4, 4]
    assert record["grid"] == record["rounds"][-1]["grid"]
    assert record["runs"] == 2 * len(record["trials"]) == sum(r["new_runs"] for r in record["rounds"])
    for trial in record["trials"]:  # normal runs, evaluated on validation data (9 samples per task)
        assert [run["seed"] for run in trial["runs"]] == [0, 1]
        assert trial["val_score"] == pytest.approx(sum(trial["seed_scores"]) / 2)
        for run in trial["runs"]:
            run_dir = Path(run["run_dir"])
            assert run_dir.parent.parent == path.parent and run_dir.name == f"seed{run['seed']}"
            metrics = json.loads((run_dir / "metrics.json").read_text())
            assert metrics["modes"]["standard"]["final_accuracy"] == run["val_score"]
            assert metrics["run"]["hparams"]["lr_scale"] == trial["values"]["lr_scale"]
            rows = [json.loads(line) for line in (run_dir / "tasks.jsonl").read_text().splitlines()]
            assert rows[-1]["evaluation"]["standard"]["count"] == [6, 6]
            assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["eval_split"] == "val"
    last = record["rounds"][-1]
    scores = [t["val_score"] for t in last["trials"]]
    assert record["chosen"] == last["trials"][scores.index(max(scores))]["values"] == last["chosen"]
    assert record["at_edge"] == bool(record["edges"])
    assert set(record["code_version"]) >= {"git_commit", "source_fingerprint"}
    written = yaml.safe_load((tmp_path / "tuned" / "smoke.yaml").read_text())
    assert written["class_incremental"]["finetune"]["values"] == record["chosen"]
    assert written["class_incremental"]["finetune"]["source"]["trials"] == 2
    assert written["class_incremental"]["finetune"]["source"]["seeds"] == [0, 1]
    assert tuned.tuned_values("smoke", "class_incremental", "finetune") == record["chosen"]
    out = capsys.readouterr().out
    assert "chose" in out and "defaults written to" in out
    assert "  at edge: lr_scale=0.1 (low end of [0.1, 0.3, 1.0]): rounds ran out" in out
    assert [(e["method"], e["key"], e["value"], e["reason"]) for e in tuning.tuned_edges("smoke")] == \
        [("finetune", "lr_scale", 0.1, record["edges"][0]["reason"])]
    # The same command again, with the tuned defaults as they were: every run is reused (a run's
    # identity is its resolved values), the same choice. (Written defaults would move the folders:
    # a run's folder is named by its difference from the profile's defaults, tuned values included.)
    monkeypatch.setattr(tuned, "TUNED_DIR", tmp_path / "tuned-before")
    assert main(command[:-5] + command[-4:]) == 0  # without --write-defaults
    progress = re.findall(r"^\[tuning[^\]]*\] .*: (reused|[0-9.]+ s)(?:, ETA .*)?$", capsys.readouterr().out, re.M)
    assert progress == ["reused"] * record["runs"]
    assert json.loads(path.read_text())["chosen"] == record["chosen"]
    # Nothing to train: skipped with a message; a missing method is a one-line error.
    assert main(["tune", "--method", "zero-shot", "--scenario", "class_incremental", "--profile", "smoke"]) == 0
    assert "skipped zero-shot" in capsys.readouterr().out
    assert main(["tune", "--profile", "smoke"]) == 2
    assert "--method M --scenario S, or --all" in capsys.readouterr().err
