"""Optional experiment tracking (runtime.tracking): TensorBoard receives every step's loss, each
task's accuracies and the final metrics, equal to the run's records; it never changes the run's
identity; a backend that is not installed is a one-line error naming the key."""
from __future__ import annotations

import json
import sys

import pytest

from mmcl.config import ConfigError, load_config
from mmcl.engine import locate_run, run


def test_tensorboard_logs_what_the_records_hold(tmp_path):
    pytest.importorskip("tensorboard")  # optional: `pip install tensorboard`
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = load_config("smoke", [f"runtime.output_dir={tmp_path}", "runtime.tracking=tensorboard"])
    plain = load_config("smoke", [f"runtime.output_dir={tmp_path}"])
    assert locate_run(config, "class_incremental", "finetune", 0).identity == \
        locate_run(plain, "class_incremental", "finetune", 0).identity
    result = run(config, "class_incremental", "finetune", seed=0)
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    rows = [json.loads(line) for line in (result.run_dir / "tasks.jsonl").read_text().splitlines()]
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, sum(r["steps"] for r in rows) + 1))
    first_task = [e.value for e in losses[: rows[0]["steps"]]]
    assert sum(first_task) / len(first_task) == pytest.approx(rows[0]["mean_loss"], rel=1e-5)
    curve = events.Scalars("standard/average_accuracy")
    assert [e.step for e in curve] == [r["task"] for r in rows]
    assert [e.value for e in curve] == pytest.approx([r["average_accuracy"]["standard"] for r in rows])
    final = events.Scalars("final/standard/final_accuracy")
    assert final[0].value == pytest.approx(result.metrics["modes"]["standard"]["final_accuracy"])


def test_mlflow_logs_what_the_records_hold(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")  # optional: `pip install mlflow` (or mlflow-skinny)
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())  # a local file store
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # which recent MLflow refuses without this
    config = load_config("smoke", [f"runtime.output_dir={tmp_path / 'runs'}", "runtime.tracking=mlflow"])
    result = run(config, "class_incremental", "finetune", seed=0)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("mmcl-smoke")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == str(result.run_dir) and logged.info.status == "FINISHED"
    assert logged.data.params["method"] == "finetune" and logged.data.params["seed"] == "0"
    rows = [json.loads(line) for line in (result.run_dir / "tasks.jsonl").read_text().splitlines()]
    losses = client.get_metric_history(logged.info.run_id, "train.loss")
    assert sorted(m.step for m in losses) == list(range(1, sum(r["steps"] for r in rows) + 1))
    first_task = [m.value for m in sorted(losses, key=lambda m: m.step)[: rows[0]["steps"]]]
    assert sum(first_task) / len(first_task) == pytest.approx(rows[0]["mean_loss"], rel=1e-5)
    curve = sorted(client.get_metric_history(logged.info.run_id, "standard.average_accuracy"), key=lambda m: m.step)
    assert [m.step for m in curve] == [r["task"] for r in rows]
    assert [m.value for m in curve] == pytest.approx([r["average_accuracy"]["standard"] for r in rows])
    assert logged.data.metrics["final.standard.final_accuracy"] == \
        pytest.approx(result.metrics["modes"]["standard"]["final_accuracy"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://store")  # a store MLflow cannot open
    with pytest.raises(ConfigError, match=r"runtime.tracking: 'mlflow' cannot open its tracking store "
                                          r"'nosuchscheme://store' \(set MLFLOW_TRACKING_URI\)"):
        run(config, "class_incremental", "finetune", seed=1)


def test_a_backend_that_is_not_installed_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    config = load_config("smoke", [f"runtime.output_dir={tmp_path}", "runtime.tracking=mlflow"])
    with pytest.raises(ConfigError, match=r"runtime.tracking: 'mlflow' needs the mlflow package, which is not "
                                          r"installed \(pip install mlflow"):
        run(config, "class_incremental", "finetune", seed=0)
    with pytest.raises(ConfigError, match=r"runtime.tracking"):
        load_config("smoke", ["runtime.tracking=wandb"])
