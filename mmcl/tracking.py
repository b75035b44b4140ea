"""Optional experiment tracking (``runtime.tracking``): ``none`` (default), ``tensorboard`` or ``mlflow``.

A tracker receives what the engine records anyway: the loss of every optimizer step, each task's
accuracies after training it, and the run's final metrics. Neither backend is a dependency:
``tensorboard`` (``pip install tensorboard``) writes event files into the run folder's
``tensorboard/``; ``mlflow`` (``pip install mlflow``) logs to ``MLFLOW_TRACKING_URI`` (unset:
MLflow's default, ``sqlite:///mlflow.db`` in the working directory since MLflow 3, which needs the
full ``mlflow`` package; a server ``http://...`` works with ``mlflow-skinny``; a file store
``file:./mlruns`` needs ``MLFLOW_ALLOW_FILE_STORE=true``), one MLflow run per mmcl run, named after
its folder. A store MLflow cannot open is a one-line error naming ``runtime.tracking``, and so is a
backend that is not installed (nothing here imports either package before a backend is asked for).
Like all of ``runtime``, the choice never changes a run's identity or numbers. The ``test`` extra
(requirements.lock) installs ``tensorboard`` and ``mlflow-skinny``: tests/test_tracking.py reads back
the event files and the MLflow file store they write.
"""
from __future__ import annotations

from pathlib import Path

from mmcl.config import ConfigError


class Tracker:
    """Does nothing (``runtime.tracking: none``); the backends override what they log."""

    steps = 0  # optimizer steps logged so far in this process (the x axis of the loss curve)

    def log_step(self, task: int, loss: float) -> None:
        """The loss of the next optimizer step, while training ``task``."""

    def log_task(self, task: int, row: dict) -> None:
        """A finished task's record (a line of tasks.jsonl): accuracy on each task, per mode."""

    def log_metrics(self, metrics: dict) -> None:
        """The run's final metrics (metrics.json): each mode's summary."""

    def close(self) -> None:
        pass


def _task_scalars(row: dict) -> dict[str, float]:
    scalars = {f"{mode}/average_accuracy": value for mode, value in row.get("average_accuracy", {}).items()}
    for mode, result in row.get("evaluation", {}).items():
        scalars |= {f"{mode}/accuracy_task{j}": float(a) for j, a in enumerate(result["accuracy"])}
    if "mean_loss" in row:
        scalars["train/mean_loss"] = float(row["mean_loss"])
    return scalars


def _final_scalars(metrics: dict) -> dict[str, float]:
    return {f"final/{mode}/{key}": float(value) for mode, summary in metrics.get("modes", {}).items()
            for key, value in summary.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path, run_record: dict):
        from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("run", ", ".join(f"{k}: {v}" for k, v in run_record.items()))

    def log_step(self, task, loss):
        self.steps += 1
        self.writer.add_scalar("train/loss", loss, self.steps)

    def log_task(self, task, row):
        for name, value in _task_scalars(row).items():
            self.writer.add_scalar(name, value, task)

    def log_metrics(self, metrics):
        for name, value in _final_scalars(metrics).items():
            self.writer.add_scalar(name, value, 0)

    def close(self):
        self.writer.close()


class MLflowTracker(Tracker):
    def __init__(self, run_dir: Path, run_record: dict):
        import mlflow  # optional: installed only where MLflow tracking is used

        self.mlflow = mlflow
        try:
            mlflow.set_experiment(f"mmcl-{run_record.get('profile', 'runs')}")
        except Exception as error:  # noqa: BLE001 - MLflow raises its own types for an unusable store
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"runtime.tracking: 'mlflow' cannot open its tracking store "
                              f"{mlflow.get_tracking_uri()!r} (set MLFLOW_TRACKING_URI): {first}") from error
        self.run = mlflow.start_run(run_name=str(Path(run_dir)))
        mlflow.log_params({k: str(v)[:250] for k, v in run_record.items()})

    def log_step(self, task, loss):
        self.steps += 1
        self.mlflow.log_metric("train.loss", loss, step=self.steps)

    def log_task(self, task, row):
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in _task_scalars(row).items()}, step=task)

    def log_metrics(self, metrics):
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in _final_scalars(metrics).items()})

    def close(self):
        self.mlflow.end_run()


BACKENDS = {"tensorboard": (TensorBoardTracker, "tensorboard"), "mlflow": (MLflowTracker, "mlflow")}


def open_tracker(name: str, run_dir: Path, run_record: dict) -> Tracker:
    """The tracker ``runtime.tracking`` names; a backend that is not installed is a ConfigError."""
    if name == "none":
        return Tracker()
    backend, package = BACKENDS[name]
    try:
        return backend(run_dir, run_record)
    except ImportError as error:
        raise ConfigError(f"runtime.tracking: {name!r} needs the {package} package, which is not installed "
                          f"(pip install {package}; {error})") from None
