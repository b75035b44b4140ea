"""The engine on the smoke profile: baselines learn (a strict xfail says where not), runs resume exactly,
records are complete."""
import json

import pytest
import torch

from mmcl import engine, records
from mmcl.config import ConfigError
from mmcl.metrics import forward_transfer

from learning_check import assert_learning_verdict, learning_cases

LEARNERS = ["finetune", "joint", "lwf", "ewc", "replay"]  # zero-shot is the reference, not a learner


@pytest.mark.parametrize("method, scenario, trained", learning_cases(LEARNERS))
def test_every_baseline_learns_what_zero_shot_cannot_read(tmp_path, method, scenario, trained):
    assert_learning_verdict(method, scenario, trained, tmp_path / "runs")


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("method", ["finetune", "lwf", "ewc", "replay"])
def test_resume_after_interruption_equals_uninterrupted(smoke_config, tmp_path, monkeypatch, method):
    config = smoke_config.model_copy(update={"methods": {"replay": {"buffer_size": 10}}})
    uninterrupted = engine.run(config, "class_incremental", method, seed=1, output_dir=tmp_path / "a")

    real_train_task = engine.train_task

    def killed_during_second_task(method_obj, task, *args, **kwargs):
        stats = real_train_task(method_obj, task, *args, **kwargs)
        if task.index == 1:
            raise Interrupted
        return stats

    monkeypatch.setattr(engine, "train_task", killed_during_second_task)
    with pytest.raises(Interrupted):
        engine.run(config, "class_incremental", method, seed=1, output_dir=tmp_path / "b")
    run_dir = records.run_directory(tmp_path / "b", "smoke", "class_incremental", "av-events", method, 1)
    assert not records.is_complete(run_dir)
    assert len(records.read_jsonl(run_dir / "tasks.jsonl")) == 1
    monkeypatch.setattr(engine, "train_task", real_train_task)

    resumed = engine.run(config, "class_incremental", method, seed=1, output_dir=tmp_path / "b")
    assert resumed.accuracy_matrix == uninterrupted.accuracy_matrix
    assert resumed.metrics["modes"] == uninterrupted.metrics["modes"]


def test_run_folder_holds_the_whole_record(smoke_config):
    result = engine.run(smoke_config, "modality_incremental", "replay", seed=2)
    folder = result.run_dir
    assert folder.parts[-4:] == ("modality_incremental", "modality-stream", "replay", "seed2")
    for name in ("config.yaml", "manifest.json", "order.json", "tasks.jsonl", "metrics.json", "zero_shot.json"):
        assert (folder / name).is_file(), name
    # keep_checkpoints: last keeps the two newest, so a damaged newest one falls back one task
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["task_0.pt", "task_1.pt"]
    assert not list(folder.rglob("*.tmp"))
    metrics = json.loads((folder / "metrics.json").read_text())
    order = json.loads((folder / "order.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(metrics["modes"]) == {"modality_aware", "modality_agnostic"}
    assert set(metrics["modes"]["modality_aware"]["accuracy_by_modality"]) == set(order["modality_order"])
    assert manifest["run"]["method"] == "replay" and manifest["libraries"]["torch"] == torch.__version__
    assert manifest["backbone"]["model"] == "mmcl-micro" and manifest["backbone"]["file_bytes"] > 0
    matrix = metrics["accuracy_matrix"]["modality_agnostic"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)  # upper triangle evaluated too
    assert metrics["modes"]["modality_agnostic"]["fwt"] == pytest.approx(
        forward_transfer(matrix, metrics["zero_shot"]["modality_agnostic"]))
    lines = records.read_jsonl(folder / "tasks.jsonl")
    assert [line["task"] for line in lines] == [0, 1] and lines[0]["modalities"] == [order["modality_order"][0]]


def test_complete_runs_are_reused_and_force_reruns(smoke_config):
    first = engine.run(smoke_config, "class_incremental", "finetune", seed=0)
    again = engine.run(smoke_config, "class_incremental", "finetune", seed=0)
    assert again.skipped and again.metrics == first.metrics
    forced = engine.run(smoke_config, "class_incremental", "finetune", seed=0, force=True)
    assert not forced.skipped and forced.accuracy_matrix == first.accuracy_matrix  # deterministic


def test_unfinished_run_with_other_config_is_refused(smoke_config, monkeypatch):
    monkeypatch.setattr(engine, "train_task", lambda *a, **k: (_ for _ in ()).throw(Interrupted()))
    with pytest.raises(Interrupted):
        engine.run(smoke_config, "class_incremental", "finetune", seed=0)
    monkeypatch.undo()
    changed = smoke_config.model_copy(update={"train": smoke_config.train.model_copy(update={"lr": 0.1})})
    with pytest.raises(ConfigError, match="different configuration"):
        engine.run(changed, "class_incremental", "finetune", seed=0)


def test_variants_get_their_own_folder_and_hparams(smoke_config):
    result = engine.run(smoke_config, "class_incremental", "lwf", seed=0, variant="no-distillation",
                        hparams={"distillation_weight": 0.0})
    assert result.run_dir.parent.name == "lwf~no-distillation"
    assert result.metrics["run"]["hparams"]["distillation_weight"] == 0.0
    with pytest.raises(ValueError, match="variant name"):
        engine.run(smoke_config, "class_incremental", "lwf", seed=0, hparams={"temperature": 1.0})


def test_clear_errors_for_unknown_names(smoke_config):
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        engine.run(smoke_config, "class_incremental", "nope")
    with pytest.raises(ConfigError, match="unknown scenario"):
        engine.run(smoke_config, "task_incremental", "finetune")
    with pytest.raises(ConfigError, match=r"methods\.replay\.buffer_sise: unknown key"):
        engine.run(smoke_config.model_copy(update={"methods": {"replay": {"buffer_sise": 3}}}),
                   "class_incremental", "replay")


def test_atomic_writes_leave_no_partial_file_and_normal_permissions(tmp_path):
    import os

    target = tmp_path / "metrics.json"

    def dies_half_way(temporary):
        with open(temporary, "w") as stream:
            stream.write('{"final_accuracy": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        records._atomic(target, dies_half_way)
    assert not target.exists() and not list(tmp_path.iterdir())
    records.atomic_write_json(target, {"value": 1})
    assert json.loads(target.read_text()) == {"value": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
