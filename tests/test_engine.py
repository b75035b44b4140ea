"""The engine on the smoke profile: baselines learn (a strict xfail says where not), runs resume exactly,
records are complete."""
import json
import re
import shutil

import pytest
import torch
import yaml

from mmcl import engine, records
from mmcl.config import ConfigError, load_config
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
    run_dir = engine.locate_run(config, "class_incremental", method, seed=1, output_dir=tmp_path / "b").run_dir
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
    # The code version, on the manifest and on every number (metrics.json).
    for record in (manifest, metrics["run"]):
        assert record["source_fingerprint"] == records.source_fingerprint()
        assert record["git_commit"] is None or len(record["git_commit"]) == 40
        assert record["git_dirty"] in (None, True, False)
    assert metrics["run"]["identity"] == manifest["run"]["identity"] and metrics["run"]["difference"] == {}
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


def test_a_changed_profile_file_never_reuses_or_resumes_the_old_run(tmp_path, monkeypatch):
    # A profile given as a YAML path: its defaults go to the default folder. Editing the file
    # changes what "default" means, so the old run there (unfinished or complete) is refused.
    profile = tmp_path / "mine.yaml"
    original = load_config("smoke").model_dump(mode="json")
    profile.write_text(yaml.safe_dump(original))
    config = load_config(profile, [f"runtime.output_dir={tmp_path / 'runs'}"])
    folder = tmp_path / "runs" / "smoke" / "class_incremental" / "av-events" / "finetune" / "seed0"
    assert engine.locate_run(config, "class_incremental", "finetune", 0).run_dir == folder
    monkeypatch.setattr(engine, "train_task", lambda *a, **k: (_ for _ in ()).throw(Interrupted()))
    with pytest.raises(Interrupted):
        engine.run(config, "class_incremental", "finetune", seed=0)
    monkeypatch.undo()

    changed_profile = yaml.safe_dump({**original, "train": {**original["train"], "lr": 0.1}})
    profile.write_text(changed_profile)
    changed = load_config(profile, [f"runtime.output_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError, match=r"holds an unfinished run with a different configuration \(it differs in "
                                          r"train\.lr\)"):
        engine.run(changed, "class_incremental", "finetune", seed=0)

    profile.write_text(yaml.safe_dump(original))  # back as it was: the run resumes and completes
    assert not engine.run(config, "class_incremental", "finetune", seed=0).skipped
    profile.write_text(changed_profile)
    with pytest.raises(ConfigError, match=r"holds a complete run with a different configuration"):
        engine.run(changed, "class_incremental", "finetune", seed=0)
    profile.write_text(yaml.safe_dump(original))
    assert engine.run(config, "class_incremental", "finetune", seed=0).skipped


def test_other_hyper_parameters_make_a_new_run_in_its_own_folder(smoke_config):
    # The README's example: a complete default run must not answer for another buffer size.
    default = engine.run(smoke_config, "class_incremental", "replay", seed=0)
    assert default.run_dir.parent.name == "replay" and default.metrics["run"]["difference"] == {}
    smaller_config = load_config("smoke", [f"runtime.output_dir={smoke_config.runtime.output_dir}",
                                           "methods.replay.buffer_size=10"])
    smaller = engine.run(smaller_config, "class_incremental", "replay", seed=0)
    assert not smaller.skipped
    assert re.fullmatch(r"replay@[0-9a-f]{8}", smaller.run_dir.parent.name)
    assert smaller.run_dir.parent.parent == default.run_dir.parent.parent
    assert smaller.accuracy_matrix != default.accuracy_matrix  # 10 stored samples, not the profile's 24
    manifest = json.loads((smaller.run_dir / "manifest.json").read_text())
    for record in (smaller.metrics["run"], manifest["run"]):
        assert record["difference"] == {"methods.replay.buffer_size": 10}
        assert record["identity"] != default.metrics["run"]["identity"]
    assert manifest["run"]["hparams"]["buffer_size"] == 10

    again = engine.run(smaller_config, "class_incremental", "replay", seed=0)
    assert again.skipped and again.run_dir == smaller.run_dir and again.metrics == smaller.metrics
    # Keys that cannot change this run's numbers: runtime, another method's hyper-parameters, and
    # this method's hyper-parameter set to the value it has anyway.
    for overrides in (["runtime.keep_checkpoints=all", "runtime.num_threads=1", "runtime.progress=true"],
                      ["methods.lwf.temperature=5.0"], ["methods.replay.buffer_size=24"]):
        reused = engine.run(load_config("smoke", [f"runtime.output_dir={smoke_config.runtime.output_dir}",
                                                  *overrides]), "class_incremental", "replay", seed=0)
        assert reused.skipped and reused.run_dir == default.run_dir, overrides

    # A run recorded before identities were (no identity in its manifest) is still recognised.
    manifest_path = default.run_dir / "manifest.json"
    legacy = json.loads(manifest_path.read_text())
    for key in ("identity", "difference"):
        del legacy["run"][key]
    manifest_path.write_text(json.dumps(legacy))
    assert engine.stored_identity(default.run_dir)[0] == default.metrics["run"]["identity"]
    assert engine.run(smoke_config, "class_incremental", "replay", seed=0).skipped


def test_source_fingerprint_covers_source_files_only(tmp_path):
    tree = tmp_path / "package"
    shutil.copytree(records.PACKAGE_DIR / "profiles", tree / "profiles")
    shutil.copy(records.PACKAGE_DIR / "metrics.py", tree / "metrics.py")
    (tree / "models").mkdir()
    shutil.copy(records.PACKAGE_DIR / "models" / "configs" / "mmcl-micro.json", tree / "models" / "micro.json")
    first = records.fingerprint_tree(tree)
    assert len(first) == 12 and int(first, 16) >= 0
    assert records.fingerprint_tree(tree) == first  # stable
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "metrics.cpython-312.pyc").write_bytes(b"compiled")
    (tree / "notes.txt").write_text("not source")
    assert records.fingerprint_tree(tree) == first  # caches and other files do not count
    edited = tree / "profiles" / "smoke.yaml"
    original = edited.read_text()
    assert "  epochs: " in original
    edited.write_text(original.replace("  epochs: ", "  epochs: 1"))  # e.g. 3 -> 13
    assert records.fingerprint_tree(tree) != first
    edited.write_text(original)
    assert records.fingerprint_tree(tree) == first
    (tree / "metrics.py").rename(tree / "metric.py")  # same bytes under another name
    assert records.fingerprint_tree(tree) != first
    (tree / "metric.py").rename(tree / "metrics.py")
    (tree / "models" / "micro.json").write_text((tree / "models" / "micro.json").read_text() + " ")
    assert records.fingerprint_tree(tree) != first
    assert records.source_fingerprint() == records.fingerprint_tree(records.PACKAGE_DIR)


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
