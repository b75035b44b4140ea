"""Bad input stops the command line with one line naming the key or the task (exit 2), before any
run folder is written: method hyper-parameters out of range, a task left without test samples."""
import json

import pytest
import torch

from mmcl.cli import main
from mmcl.config import ConfigError, load_config
from mmcl.methods import method_class

from crafted_files import plant_crafted_pickle


def run_cli(tmp_path, scenario: str, method: str, *overrides: str) -> list[str]:
    args = ["run", "--profile", "smoke", "--scenario", scenario, "--method", method, "--output-dir", str(tmp_path / "runs")]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 2
    return args


def last_line(capsys) -> str:
    """The error line the CLI printed last on stderr (a log warning may come before it), and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("scenario, method, override, expected", [
    ("modality_incremental", "comm", "methods.comm.top_k=100", "methods.comm.top_k: must be at most pool_size (10), got 100"),
    ("modality_incremental", "comm", "methods.comm.self_reg_kappa=0", "methods.comm.self_reg_kappa: Input should be greater than 0"),
    ("modality_incremental", "comm", "methods.comm.prompt_momentum=1.5", "methods.comm.prompt_momentum: Input should be less than or equal to 1"),
    ("modality_incremental", "l2p", "methods.l2p.top_k=11", "methods.l2p.top_k: must be at most pool_size (10), got 11"),
    ("class_incremental", "moe-adapters", "methods.moe-adapters.adapter.top_k=5", "methods.moe-adapters.adapter.top_k: must be at most num_experts (4), got 5"),
    ("class_incremental", "moe-adapters", "methods.moe-adapters.num_experts=2", "methods.moe-adapters.num_experts: unknown key"),
    ("class_incremental", "moe-adapters", "methods.moe-adapters.adapter.attention_heads=3", "methods.moe-adapters.adapter.attention_heads: must divide attention_dim (32), got 3"),
    ("class_incremental", "moe-adapters", "methods.moe-adapters.kd_temperature=-1", "methods.moe-adapters.kd_temperature: Input should be greater than 0"),
    ("class_incremental", "lwf", "methods.lwf.temperature=-2", "methods.lwf.temperature: Input should be greater than 0"),
    ("class_incremental", "lwf", "methods.lwf.distillation_weight=-1", "methods.lwf.distillation_weight: Input should be greater than or equal to 0"),
    ("class_incremental", "ewc", "methods.ewc.ewc_lambda=-5", "methods.ewc.ewc_lambda: Input should be greater than or equal to 0"),
    ("class_incremental", "replay", "methods.replay.buffer_size=-1", "methods.replay.buffer_size: Input should be greater than or equal to 0"),
    ("class_incremental", "replay", "methods.replay.per_class=-1", "methods.replay.per_class: Input should be greater than or equal to 0"),
    ("class_incremental", "lwf", "methods.lwf.head.freeze_old_rows=maybe", "methods.lwf.head.freeze_old_rows: Input should be a valid boolean"),
    ("class_incremental", "moe-adapters", "methods.moe-adapters.head.frozen=1", "methods.moe-adapters.head.frozen: unknown key"),
    ("modality_incremental", "comm", "methods.comm.templates=own", "methods.comm.templates: Input should be 'shared' or 'modality'"),
    ("class_incremental", "finetune", "methods.finetune.trainable_blocks=-1", "methods.finetune.trainable_blocks: Input should be greater than or equal to 0"),
])
def test_out_of_range_hyper_parameter_is_one_line_naming_the_key(tmp_path, capsys, scenario, method, override, expected):
    run_cli(tmp_path, scenario, method, override)
    error = last_line(capsys)
    assert error.startswith("mmcl: error: invalid method hyper-parameters: ") and expected in error
    assert not (tmp_path / "runs").exists()  # nothing written that could look like a run


def test_prompt_depth_beyond_the_tower_is_named(tmp_path, capsys):
    run_cli(tmp_path, "modality_incremental", "comm", "methods.comm.prompt_depth=99")
    error = last_line(capsys)
    assert error.startswith("mmcl: error: methods.comm.prompt_depth: the backbone's vision tower has")
    assert error.endswith("got 99") and not (tmp_path / "runs").exists()


def test_defaults_and_every_ablation_are_in_range():
    for name in ("finetune", "joint", "lwf", "ewc", "replay", "l2p", "comm", "moe-adapters", "zero-shot"):
        cls = method_class(name)
        cls.make_config({})
        for overrides in [*cls.ablations.values(), *cls.comparisons.values()]:
            cls.make_config(overrides)
    with pytest.raises(ConfigError, match=r"prompt_style: prefix-tuning needs an even top_k x prompt_length.*got 9"):
        method_class("l2p").make_config({"prompt_style": "prefix", "top_k": 3, "prompt_length": 3})
    # Cross-field checks compare with the value given, not only the default.
    method_class("comm").make_config({"pool_size": 100, "top_k": 100})


def write_prepared(root, config, test_classes) -> None:
    """A prepared av-events folder (the format of mmcl.data.processed): the profile's classes, 2 samples
    each in train, and test samples only for ``test_classes``."""
    from data_prep.core import Settings

    def split(classes):
        labels = torch.tensor([c for c in classes for _ in range(2)], dtype=torch.long)
        n = len(labels)
        return {"inputs": {"video": torch.zeros(n, 2, 3, 32, 32, dtype=torch.uint8),
                           "audio": torch.zeros(n, 3, 32, 32, dtype=torch.uint8)},
                "labels": labels, "domains": torch.zeros(n, dtype=torch.long), "texts": {}, "keys": [str(i) for i in range(n)]}

    classes = config.benchmarks["av-events"].num_classes
    root.mkdir(parents=True)
    torch.save(split(range(classes)), root / "train.pt")
    torch.save(split(test_classes), root / "test.pt")
    (root / "meta.json").write_text(json.dumps({
        "format_version": 2, "dataset": "ave", "complete": True, "class_names": [f"event {k}" for k in range(classes)],
        "domain_names": ["default"], "modalities": ["video", "audio"], "class_modalities": None,
        "settings": Settings.from_config(config).fingerprint_fields()}))


def test_task_without_test_samples_is_named_at_stream_build(tmp_path, capsys):
    prepared = tmp_path / "prepared"
    write_prepared(prepared, load_config("smoke"), test_classes=[0])  # one class of one task has test data
    run_cli(tmp_path, "class_incremental", "finetune", "benchmarks.av-events.source=processed",
            f"benchmarks.av-events.path={prepared}")
    error = last_line(capsys)
    assert error.startswith("mmcl: error: benchmark 'av-events': task ") and "has no test samples" in error
    assert "of the class_incremental stream" in error
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("damaged", ["train.pt", "meta.json"])
def test_unreadable_prepared_file_is_one_line_naming_it(tmp_path, capsys, damaged):
    prepared = tmp_path / "prepared"
    write_prepared(prepared, load_config("smoke"), test_classes=range(4))
    (prepared / damaged).write_bytes((prepared / damaged).read_bytes()[:40])  # truncated
    run_cli(tmp_path, "class_incremental", "finetune", "benchmarks.av-events.source=processed",
            f"benchmarks.av-events.path={prepared}")
    error = last_line(capsys)
    assert error.startswith("mmcl: error: benchmark 'av-events': ") and str(prepared / damaged) in error
    assert error.endswith("re-run the preparation")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("planted", ["crafted", "old-format"])
def test_prepared_split_holding_other_objects_is_refused_in_one_line_naming_it(tmp_path, capsys, planted):
    prepared = tmp_path / "prepared"
    write_prepared(prepared, load_config("smoke"), test_classes=range(4))
    path, marker = prepared / "train.pt", tmp_path / "executed"
    if planted == "crafted":
        plant_crafted_pickle(path, marker)
    else:  # as an older format would have stored it: numpy arrays, not tensors
        stored = torch.load(path, weights_only=True)
        torch.save({**stored, "labels": stored["labels"].numpy(), "domains": stored["domains"].numpy()}, path)
    run_cli(tmp_path, "class_incremental", "finetune", "benchmarks.av-events.source=processed",
            f"benchmarks.av-events.path={prepared}")
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"mmcl: error: benchmark 'av-events': {path} holds objects other than tensors and plain "
                          f"data (")
    assert err.strip().endswith(f"re-run the preparation with --force (python -m data_prep ave --raw <raw folder> "
                                f"--out {prepared} --force)")
    assert not marker.exists() and not (tmp_path / "runs").exists()
