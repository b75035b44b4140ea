"""The engine on the smoke profile: baselines learn (a strict xfail says where not), runs resume exactly,
records are complete."""
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mmcl import engine, hparams, records, reproduce, runs, training
from mmcl.config import ConfigError, load_config
from mmcl.data.benchmarks import load_benchmark
from mmcl.data.dataset import Batch, MultiModalDataset
from mmcl.data.stream import Task
from mmcl.methods import method_class
from mmcl.methods.base import Method
from mmcl.methods.heads import CosineClassifier, HeadConfig, apply_head_rules
from mmcl.methods.replay import ExemplarBuffer
from mmcl.metrics import forward_transfer
from mmcl.models.factory import build_encoder

from crafted_files import crafted_object, plant_crafted_pickle
from learning_check import assert_learning_verdict, learning_cases

LEARNERS = ["finetune", "joint", "lwf", "ewc", "replay"]  # zero-shot is the reference, not a learner


@pytest.mark.parametrize("method, scenario, trained", learning_cases(LEARNERS))
def test_every_baseline_learns_what_zero_shot_cannot_read(tmp_path, method, scenario, trained):
    assert_learning_verdict(method, scenario, trained, tmp_path / "runs")


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("method", ["finetune", "lwf", "ewc", "replay", "icarl", "derpp", "aper", "ranpac", "simplecil"])
def test_resume_after_interruption_equals_uninterrupted(smoke_config, tmp_path, monkeypatch, method):
    config = smoke_config.model_copy(update={"methods": {"replay": {"buffer_size": 10}}})
    uninterrupted = engine.run(config, "class_incremental", method, seed=1, output_dir=tmp_path / "a")

    real_evaluate_stream = engine.evaluate_stream

    def killed_during_second_task(method_obj, tasks, after, *args, **kwargs):
        # after the second task's training and end_task, before its evaluation and checkpoint
        # (every method passes here, also those that train nothing on a task)
        if after == 1:
            raise Interrupted
        return real_evaluate_stream(method_obj, tasks, after, *args, **kwargs)

    monkeypatch.setattr(engine, "evaluate_stream", killed_during_second_task)
    with pytest.raises(Interrupted):
        engine.run(config, "class_incremental", method, seed=1, output_dir=tmp_path / "b")
    run_dir = runs.locate_run(config, "class_incremental", method, seed=1, output_dir=tmp_path / "b").run_dir
    assert not records.is_complete(run_dir)
    assert len(records.read_jsonl(run_dir / "tasks.jsonl")) == 1
    monkeypatch.setattr(engine, "evaluate_stream", real_evaluate_stream)

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
    # What the run read, by content: the weights file's sha256 and the benchmark data's digest.
    weights = Path(manifest["backbone"]["pretrained"])
    assert manifest["backbone"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    data = load_benchmark(smoke_config, "modality-stream", build_encoder(smoke_config).tokenizer)
    assert manifest["data"] == {"benchmark": "modality-stream", "sha256": data.digest()}
    matrix = metrics["accuracy_matrix"]["modality_agnostic"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)  # upper triangle evaluated too
    assert metrics["modes"]["modality_agnostic"]["fwt"] == pytest.approx(
        forward_transfer(matrix, metrics["zero_shot"]["modality_agnostic"]))
    lines = records.read_jsonl(folder / "tasks.jsonl")
    assert [line["task"] for line in lines] == [0, 1] and lines[0]["modalities"] == [order["modality_order"][0]]
    # The replay buffer: 5 exemplars per class by default, its share of the training data.
    buffer = metrics["buffer"]
    classes = sorted(c for line in lines for c in line["classes"])
    assert buffer["per_class"] == 5 and buffer["buffer_size"] is None
    assert buffer["per_class_kept"] == {str(c): 5 for c in classes} and buffer["size"] == 5 * len(classes)
    assert buffer["share_of_training_data"] == pytest.approx(buffer["size"] / buffer["training_samples"])


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
    assert runs.locate_run(config, "class_incremental", "finetune", 0).run_dir == folder
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
                                           "methods.replay.per_class=2"])
    smaller = engine.run(smaller_config, "class_incremental", "replay", seed=0)
    assert not smaller.skipped
    assert re.fullmatch(r"replay@[0-9a-f]{8}", smaller.run_dir.parent.name)
    assert smaller.run_dir.parent.parent == default.run_dir.parent.parent
    assert smaller.accuracy_matrix != default.accuracy_matrix  # 2 stored samples per class, not 5
    manifest = json.loads((smaller.run_dir / "manifest.json").read_text())
    for record in (smaller.metrics["run"], manifest["run"]):
        assert record["difference"] == {"methods.replay.per_class": 2}
        assert record["identity"] != default.metrics["run"]["identity"]
    assert manifest["run"]["hparams"]["per_class"] == 2

    again = engine.run(smaller_config, "class_incremental", "replay", seed=0)
    assert again.skipped and again.run_dir == smaller.run_dir and again.metrics == smaller.metrics
    # Keys that cannot change this run's numbers: runtime, another method's hyper-parameters, and
    # this method's hyper-parameter set to the value it has anyway.
    for overrides in (["runtime.keep_checkpoints=all", "runtime.num_threads=1", "runtime.progress=true"],
                      ["methods.lwf.temperature=5.0"], ["methods.replay.per_class=5", "methods.replay.buffer_size=null"]):
        reused = engine.run(load_config("smoke", [f"runtime.output_dir={smoke_config.runtime.output_dir}",
                                                  *overrides]), "class_incremental", "replay", seed=0)
        assert reused.skipped and reused.run_dir == default.run_dir, overrides

    # A run recorded before identities were (no identity in its manifest) is still recognised.
    manifest_path = default.run_dir / "manifest.json"
    legacy = json.loads(manifest_path.read_text())
    for key in ("identity", "difference"):
        del legacy["run"][key]
    manifest_path.write_text(json.dumps(legacy))
    assert runs.stored_identity(default.run_dir)[0] == default.metrics["run"]["identity"]
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
        records.atomic_write(target, dies_half_way)
    assert not target.exists() and not list(tmp_path.iterdir())
    records.atomic_write_json(target, {"value": 1})
    assert json.loads(target.read_text()) == {"value": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_files_of_tensors_hold_only_plain_data_and_load_without_running_code(tmp_path):
    import pickle

    import numpy as np

    # What a checkpoint holds (rows, an exemplar buffer keyed by (class, task) tuples) round-trips.
    state = {"rows": [{"task": 0, "accuracy": [50.0], "domain": None, "memory": {"rss_mib": 1.5}}],
             "method_state": {"buffer": {(3, 0): [({"video": torch.ones(2)}, 3, 0)]}, "fitted": True}}
    records.atomic_torch_save(state, tmp_path / "plain.pt")
    loaded = records.load_tensors(tmp_path / "plain.pt")
    assert loaded["rows"] == state["rows"] and loaded["method_state"]["fitted"] is True
    assert torch.equal(loaded["method_state"]["buffer"][(3, 0)][0][0]["video"], torch.ones(2))
    # Anything else is refused before it is written, naming where it sits: a numpy RNG state, a numpy scalar.
    with pytest.raises(TypeError, match=r"\['rng'\]\[1\] is a numpy\.ndarray, not a tensor or plain data"):
        records.atomic_torch_save({"rng": np.random.get_state()}, tmp_path / "numpy.pt")
    with pytest.raises(TypeError, match=r"\['rows'\]\[0\]\['accuracy'\] is a numpy\.float64"):
        records.atomic_torch_save({"rows": [{"accuracy": np.float64(50.0)}]}, tmp_path / "numpy.pt")
    assert not (tmp_path / "numpy.pt").exists()

    # The crafted pickle runs code when unpickled; load_tensors refuses it, raw or in torch's zip format.
    marker = plant_crafted_pickle(tmp_path / "crafted.pt")
    pickle.loads((tmp_path / "crafted.pt").read_bytes())
    assert marker.exists()
    marker.unlink()
    torch.save(crafted_object(marker), tmp_path / "zipped.pt")
    for name, refused in (("crafted.pt", "Unsupported operand"), ("zipped.pt", "Unsupported global: GLOBAL exec")):
        with pytest.raises(records.RefusedFile) as error:
            records.load_tensors(tmp_path / name, rebuild="make it again")
        message = str(error.value)
        assert message.startswith(f"{tmp_path / name} holds objects other than tensors and plain data ({refused}")
        assert message.endswith("; make it again") and "\n" not in message
    assert not marker.exists()
    # An old-format file (numpy arrays pickled in) gets the same one-line refusal, not a load.
    torch.save({"labels": np.zeros(3)}, tmp_path / "old.pt")
    with pytest.raises(records.RefusedFile, match=r"old\.pt holds objects other than tensors and plain data \("
                                                  r"Unsupported global: GLOBAL numpy\S+\), so it was not loaded"):
        records.load_tensors(tmp_path / "old.pt")
    # A damaged file stays damaged (the readers' own handling), not refused.
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    with pytest.raises(pickle.UnpicklingError):
        records.load_tensors(tmp_path / "text.pt")


# --------------------------------------------------------------------- equal footing: head rules
class _HeadOnly(Method):
    """A method that is only a cosine head over 3 classes of 2-d features (for hand-computed steps)."""

    def __init__(self, rules):
        super().__init__(None, None, None)
        self.head = CosineClassifier(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), scale=1.0)
        self.rules = rules

    def training_loss(self, batch, task):
        space = torch.tensor([0, 1, 2])
        return torch.nn.functional.cross_entropy(self.head(batch.inputs["image"], space), batch.labels)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_frozen_old_rows_get_no_gradient_and_no_update_from_weight_decay_or_momentum(optimizer):
    config = load_config("smoke", [f"train.optimizer={optimizer}", "train.weight_decay=0.5", "train.lr=0.1",
                                   "train.momentum=0.9", "train.grad_clip=1.0"])
    method = _HeadOnly(HeadConfig(freeze_old_rows=True))
    first, second = Task(0, [0, 1], ["image"], None, None), Task(1, [2], ["image"], None, None)
    batch = Batch({"image": torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.8, 0.9]])}, torch.tensor([0, 1, 2]),
                  torch.zeros(3, dtype=torch.long))
    apply_head_rules(method.head, method.rules, first)
    assert method.head.frozen.tolist() == [False, False, True]  # the rows of later classes wait too
    opt = training.make_optimizer(method, config)
    training.train_step(method, batch, first, opt, config, torch.device("cpu"))
    assert torch.equal(method.head.weight[2], torch.tensor([1.0, 1.0]))
    assert not torch.equal(method.head.weight[0], torch.tensor([1.0, 0.0]))
    # Task 1 with the momentum of task 0's optimizer kept (the engine makes a new one; the rule
    # must hold even if a method kept its optimizer): rows 0 and 1 do not move at all.
    apply_head_rules(method.head, method.rules, second)
    old = method.head.weight[:2].detach().clone()
    for _ in range(3):
        training.train_step(method, batch, second, opt, config, torch.device("cpu"))
        assert torch.count_nonzero(method.head.weight.grad[:2]) == 0
    assert torch.equal(method.head.weight[:2], old)
    assert not torch.equal(method.head.weight[2], torch.tensor([1.0, 1.0]))
    # Without the rule every row trains (today's default of the baselines).
    apply_head_rules(method.head, HeadConfig(), second)
    training.train_step(method, batch, second, opt, config, torch.device("cpu"))
    assert not torch.equal(method.head.weight[:2], old)


def test_first_adamw_step_of_a_trainable_row_by_hand():
    config = load_config("smoke", ["train.optimizer=adamw", "train.weight_decay=0.5", "train.lr=0.1",
                                   "train.grad_clip=null"])
    method = _HeadOnly(HeadConfig(freeze_old_rows=True))
    task = Task(0, [2], ["image"], None, None)
    batch = Batch({"image": torch.tensor([[0.8, 0.9]])}, torch.tensor([2]), torch.zeros(1, dtype=torch.long))
    apply_head_rules(method.head, method.rules, task)
    training.train_step(method, batch, task, training.make_optimizer(method, config), config, torch.device("cpu"))
    gradient = method.head.weight.grad[2]
    # AdamW, first step: p <- p (1 - lr wd) - lr g / (|g| + eps) = [1, 1] * 0.95 - 0.1 * sign(g)
    expected = torch.tensor([1.0, 1.0]) * 0.95 - 0.1 * torch.sign(gradient)
    assert torch.allclose(method.head.weight[2], expected, atol=1e-6)
    assert torch.equal(method.head.weight[:2], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_head_keys_are_validated_with_their_dotted_name(smoke_config):
    with pytest.raises(ConfigError, match=r"^invalid method hyper-parameters: methods\.lwf\.head\.freeze_old_rowz: "
                                          r"unknown key$"):
        engine.run(smoke_config.model_copy(update={"methods": {"lwf": {"head": {"freeze_old_rowz": True}}}}),
                   "class_incremental", "lwf", seed=0)
    # The MoE adapters default to frozen old rows; setting another head key keeps that default.
    hparams = method_class("moe-adapters").make_config({"head": {"train": False}})
    assert hparams.head == HeadConfig(train=False, freeze_old_rows=True)
    assert method_class("lwf").make_config(None).head == HeadConfig(train=True, freeze_old_rows=False)


def test_a_scenario_sweep_covers_its_benchmark_then_also_on_then_appendix():
    tiny = load_config("tiny")
    benchmarks = list(dict.fromkeys(j["benchmark"] for j in reproduce.sweep_jobs(tiny, "modality_incremental")))
    assert benchmarks == ["modality-stream", "modality-stream-recurring"]
    config = load_config("smoke", ["scenarios.domain_incremental.also_on=[multilingual-emotion-stress]",
                                   "scenarios.domain_incremental.appendix=[]"])
    jobs = reproduce.sweep_jobs(config, "domain_incremental", ["finetune"], seeds=[0])
    assert [j["benchmark"] for j in jobs] == ["multilingual-emotion", "multilingual-emotion-stress"]


def test_comparison_variants_run_in_the_main_class_incremental_sweep_only():
    config = load_config("smoke")
    jobs = reproduce.sweep_jobs(config, "class_incremental")
    variants = [(j["method"], j.get("variant")) for j in jobs if j.get("variant")]
    assert variants == [("ewc", "frozen-head"), ("lwf", "frozen-head"),
                        ("moe-adapters", "adapter-finetune"), ("moe-adapters", "adapter-lwf")]
    lwf = next(j for j in jobs if j.get("variant") == "frozen-head" and j["method"] == "lwf")
    assert lwf["hparams"] == {"head": {"freeze_old_rows": True}}
    assert not any(j.get("variant") for j in reproduce.sweep_jobs(config, "domain_incremental"))
    # adapter-lwf is adapter-finetune plus the method's distillation (LwF's loss), nothing else.
    comparisons = method_class("moe-adapters").comparisons
    finetune, lwf_adapter = comparisons["adapter-finetune"], comparisons["adapter-lwf"]
    assert {k: v for k, v in finetune.items() if k != "kd_weight"} == lwf_adapter
    assert method_class("moe-adapters").make_config(lwf_adapter).kd_weight > 0


def test_a_comparison_run_records_its_role_and_merges_nested_overrides(smoke_config):
    merged = hparams.with_method_overrides(
        smoke_config.model_copy(update={"methods": {"lwf": {"head": {"train": False}, "temperature": 3.0}}}),
        "lwf", {"head": {"freeze_old_rows": True}})
    assert merged.methods["lwf"] == {"head": {"train": False, "freeze_old_rows": True}, "temperature": 3.0}
    overrides = hparams.variant_overrides("lwf", "frozen-head")
    result = engine.run(smoke_config.model_copy(update={"train": smoke_config.train.model_copy(update={"epochs": 1})}),
                        "class_incremental", "lwf", seed=0, variant="frozen-head", hparams=overrides)
    run = result.metrics["run"]
    assert run["role"] == "comparison" and run["variant_overrides"] == {"head": {"freeze_old_rows": True}}
    assert run["hparams"]["head"] == {"train": True, "freeze_old_rows": True}
    assert result.run_dir.parts[-2].startswith("lwf~frozen-head@")  # its own folder (train.epochs=1 differs)


# ------------------------------------------------------------------ equal footing: replay buffer
def _dataset(labels, offset=0):
    labels = torch.tensor(labels)
    ids = torch.arange(len(labels), dtype=torch.float32) + offset
    return MultiModalDataset({"image": ids[:, None]}, labels, torch.zeros(len(labels), dtype=torch.long),
                             [str(c) for c in range(4)], ["d"])


def _kept(buffer):
    return {key: [int(item[0]["image"][0]) for item in group] for key, group in buffer.groups.items()}


def test_replay_buffer_is_class_balanced_and_deterministic_by_seed():
    first, second = _dataset([0, 1] * 6), _dataset([2] * 4 + [3] * 8, offset=100)
    buffer = ExemplarBuffer(per_class=3)
    buffer.add_task(first, 0, torch.Generator().manual_seed(7))
    # Exact contents: class 0 holds the even ids, class 1 the odd ones; 3 of each, drawn by the
    # task's generator in class order.
    generator = torch.Generator().manual_seed(7)
    expected_0 = [2 * int(i) for i in torch.randperm(6, generator=generator)[:3]]
    expected_1 = [2 * int(i) + 1 for i in torch.randperm(6, generator=generator)[:3]]
    assert _kept(buffer) == {(0, 0): expected_0, (1, 0): expected_1}
    buffer.add_task(second, 1, torch.Generator().manual_seed(8))
    kept = _kept(buffer)
    assert buffer.counts() == {"0": 3, "1": 3, "2": 3, "3": 3} and len(buffer) == 12
    assert all(100 <= i < 104 for i in kept[(2, 1)]) and all(104 <= i < 112 for i in kept[(3, 1)])
    assert all(len(set(ids)) == len(ids) for ids in kept.values())
    again = ExemplarBuffer(per_class=3)
    again.add_task(first, 0, torch.Generator().manual_seed(7))
    again.add_task(second, 1, torch.Generator().manual_seed(8))
    assert _kept(again) == kept
    # A total cap: 4 groups share 8 slots, 2 each, the earlier groups keep their first draws.
    capped = ExemplarBuffer(per_class=3, capacity=8)
    capped.add_task(first, 0, torch.Generator().manual_seed(7))
    assert _kept(capped) == {(0, 0): expected_0, (1, 0): expected_1}
    capped.add_task(second, 1, torch.Generator().manual_seed(8))
    assert _kept(capped) == {key: ids[:2] for key, ids in kept.items()}
