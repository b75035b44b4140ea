"""Optional experiment tracking (runtime.tracking): TensorBoard and MLflow receive every step's loss,
each task's accuracies and the final metrics, equal to the run's records, read back from the real
files they wrote (event files; an MLflow file store); tracking never changes the run's identity; a
backend that is not installed is a one-line error naming the key, and mmcl imports and runs without
either. Both backends are in the test extra (requirements.lock: tensorboard, mlflow-skinny), so these
tests run in `make test` rather than skip; for users they stay optional extras."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmcl.config import ConfigError, load_config
from mmcl.engine import run
from mmcl.runs import locate_run


def test_tensorboard_logs_what_the_records_hold(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # the test extra

    config = load_config("smoke", [f"runtime.output_dir={tmp_path}", "runtime.tracking=tensorboard"])
    plain = load_config("smoke", [f"runtime.output_dir={tmp_path}"])
    assert locate_run(config, "class_incremental", "finetune", 0).identity == \
        locate_run(plain, "class_incremental", "finetune", 0).identity
    result = run(config, "class_incremental", "finetune", seed=0)
    assert len(list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
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
    from mlflow.tracking import MlflowClient  # the test extra: mlflow-skinny

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())  # a local file store
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # which recent MLflow refuses without this
    config = load_config("smoke", [f"runtime.output_dir={tmp_path / 'runs'}", "runtime.tracking=mlflow"])
    result = run(config, "class_incremental", "finetune", seed=0)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("mmcl-smoke")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == str(result.run_dir) and logged.info.status == "FINISHED"
    # The client read the file store the run wrote under tmp_path: one file per metric and param.
    stored = tmp_path / "mlruns" / experiment.experiment_id / logged.info.run_id
    assert (stored / "metrics" / "train.loss").is_file() and (stored / "params" / "method").read_text() == "finetune"
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


@pytest.mark.parametrize("backend", ["mlflow", "tensorboard"])
def test_a_backend_that_is_not_installed_is_named(tmp_path, monkeypatch, backend):
    monkeypatch.setitem(sys.modules, backend, None)  # as if it were not installed: `import backend` fails
    for name in [m for m in sys.modules if m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)  # imported by an earlier test: imported anew, it needs tensorboard
    config = load_config("smoke", [f"runtime.output_dir={tmp_path}", f"runtime.tracking={backend}"])
    with pytest.raises(ConfigError, match=rf"runtime.tracking: '{backend}' needs the {backend} package, which is "
                                          rf"not installed \(pip install {backend}") as raised:
        run(config, "class_incremental", "finetune", seed=0)
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match=r"runtime.tracking"):
        load_config("smoke", ["runtime.tracking=wandb"])


WITHOUT_TRACKERS = """
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):  # as if neither package were installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("mlflow", "tensorboard"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NotInstalled())
import mmcl.cli, mmcl.engine, mmcl.tracking
from mmcl.config import ConfigError
assert type(mmcl.tracking.open_tracker("none", ".", {})) is mmcl.tracking.Tracker
for backend in ("mlflow", "tensorboard"):
    try:
        mmcl.tracking.open_tracker(backend, ".", {})
    except ConfigError as error:
        print(error)
"""


def test_mmcl_imports_without_either_backend_and_names_the_missing_one(tmp_path):
    done = subprocess.run([sys.executable, "-c", WITHOUT_TRACKERS], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"runtime.tracking: {b!r} needs the {b} package, which is not installed (pip install {b}; "
        f"No module named {b!r})" for b in ("mlflow", "tensorboard")]
