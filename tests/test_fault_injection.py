"""Runs survive real faults: SIGKILL anywhere, damaged checkpoints, a second process on the folder.

Every kill here is a real SIGKILL of a real ``mmcl run`` process (the command a user types),
either from inside at a named point (``MMCL_FAULT``, see :func:`mmcl.records.fault_point`) or
from outside. Running the same command again must give exactly the numbers of an uninterrupted
run, and at no moment may a half-written file sit under a final name.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmcl import engine, records, runs
from mmcl.config import load_config
from mmcl.results import load_runs

from crafted_files import plant_crafted_pickle

REPO = Path(__file__).resolve().parents[1]
# (method, scenario) pairs the kill tests cover: a plain baseline, the two paper methods, and two methods
# with per-task state of their own.
CASES = {"finetune": "class_incremental", "comm": "modality_incremental", "moe-adapters": "class_incremental",
         "coda-prompt": "class_incremental", "slca": "domain_incremental"}  # slca: a class's statistics recur


def mmcl_run_command(output_dir: Path, method: str) -> list[str]:
    return [sys.executable, "-m", "mmcl.cli", "run", "--profile", "smoke", "--scenario", CASES[method],
            "--method", method, "--seed", "0", "--output-dir", str(output_dir)]


def subprocess_environment(fault: str | None = None) -> dict[str, str]:
    """This test session's environment (MMCL_CACHE included), this checkout first on the path."""
    environment = {key: value for key, value in os.environ.items() if key != records.FAULT_VARIABLE}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    environment["OMP_NUM_THREADS"] = "1"  # the machine is shared; also keeps the numbers of every process alike
    if fault:
        environment[records.FAULT_VARIABLE] = fault
    return environment


def mmcl_run(output_dir: Path, method: str, fault: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(mmcl_run_command(output_dir, method), env=subprocess_environment(fault),
                          capture_output=True, text=True, timeout=900)


def the_run_folder(output_dir: Path) -> Path:
    """The one run folder below ``output_dir`` (found, so the test does not restate the naming scheme)."""
    folders = {path.parent for path in output_dir.rglob(records.LOCK_NAME)}
    assert len(folders) == 1, folders
    return folders.pop()


def assert_no_half_written_record(run_dir: Path) -> None:
    """Every file under a final name is complete: JSON parses, JSON lines parse, checkpoints load."""
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        assert {"accuracy_matrix", "modes", "memory"} <= set(json.loads(metrics.read_text()))
    for name in ("manifest.json", "order.json", "zero_shot.json"):
        if (run_dir / name).exists():
            json.loads((run_dir / name).read_text())
    rows = records.read_jsonl(run_dir / "tasks.jsonl")
    assert [row["task"] for row in rows] == list(range(len(rows)))
    for index, path in runs.checkpoints(run_dir):
        state = records.load_tensors(path)  # tensors and plain data only
        assert len(state["rows"]) == index + 1 and state["method_state"]


def temporaries(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("*.tmp"))


class ReferenceRuns:
    """Uninterrupted ``mmcl run`` processes, one per method, made on first use and shared by the module."""

    def __init__(self, tmp_path_factory):
        self.factory = tmp_path_factory
        self.output_dirs: dict[str, Path] = {}

    def output_dir(self, method: str) -> Path:
        if method not in self.output_dirs:
            output_dir = self.factory.mktemp(f"reference-{method}")
            finished = mmcl_run(output_dir, method)
            assert finished.returncode == 0, finished.stderr
            self.output_dirs[method] = output_dir
        return self.output_dirs[method]

    def __call__(self, method: str) -> Path:
        """The run folder of ``method``'s uninterrupted run."""
        return the_run_folder(self.output_dir(method))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> ReferenceRuns:
    return ReferenceRuns(tmp_path_factory)


def assert_same_run(resumed_dir: Path, reference_dir: Path) -> None:
    resumed = json.loads((resumed_dir / "metrics.json").read_text())
    uninterrupted = json.loads((reference_dir / "metrics.json").read_text())
    assert resumed["accuracy_matrix"] == uninterrupted["accuracy_matrix"]
    assert resumed["modes"] == uninterrupted["modes"]
    resumed_rows = records.read_jsonl(resumed_dir / "tasks.jsonl")
    assert [r["evaluation"] for r in resumed_rows] == [r["evaluation"] for r in records.read_jsonl(
        reference_dir / "tasks.jsonl")]
    assert [p.name for p in sorted((resumed_dir / "checkpoints").iterdir())] == ["task_0.pt", "task_1.pt"]
    assert not temporaries(resumed_dir), "the resumed run left (or kept) temporary files"


# (method, MMCL_FAULT, tasks.jsonl rows after the kill). Each case costs two processes (~5 s each
# on an idle 2-core machine); one kill per method runs by default, the others are marked slow
# (`make test` runs them, `make test-fast` does not).
KILLS = [
    ("finetune", "checkpoint-write:1", 1),    # task 1's checkpoint written, not renamed
    ("comm", "train:1", 1),                   # half-way through the optimizer steps of the second task
    ("moe-adapters", "train:1", 1),
    pytest.param("finetune", "train:1", 1, marks=pytest.mark.slow),
    pytest.param("finetune", "tasks-write:0", 0, marks=pytest.mark.slow),   # task 0's row not renamed into place
    pytest.param("finetune", "metrics-write", 2, marks=pytest.mark.slow),   # all done, metrics.json not renamed
    pytest.param("comm", "checkpoint-write:1", 1, marks=pytest.mark.slow),
    pytest.param("moe-adapters", "checkpoint-write:1", 1, marks=pytest.mark.slow),
    # per-task state rebuilt in begin_task (CODA's frozen components) or end_task (SLCA's statistics)
    pytest.param("coda-prompt", "train:1", 1, marks=pytest.mark.slow),
    pytest.param("slca", "train:1", 1, marks=pytest.mark.slow),
]


def _case_id(case) -> str:
    method, fault, _ = case.values if hasattr(case, "values") else case
    return f"{method}-{fault}"


@pytest.mark.parametrize(("method", "fault", "rows_after_kill"), KILLS, ids=[_case_id(case) for case in KILLS])
def test_sigkill_at_a_fault_point_then_rerun_equals_uninterrupted(reference, tmp_path, method, fault,
                                                                  rows_after_kill):
    reference_dir = reference(method)
    killed = mmcl_run(tmp_path, method, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = the_run_folder(tmp_path)
    assert not records.is_complete(run_dir)
    assert_no_half_written_record(run_dir)
    assert len(records.read_jsonl(run_dir / "tasks.jsonl")) == rows_after_kill
    if "-write" in fault:
        assert temporaries(run_dir), "the kill was meant to land between writing a temporary file and renaming it"

    resumed = mmcl_run(tmp_path, method)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert_same_run(run_dir, reference_dir)


def test_sigkill_from_outside_then_rerun_equals_uninterrupted(reference, tmp_path):
    """No hook needed: the test itself SIGKILLs the process once task 0 is recorded."""
    reference_dir = reference("finetune")
    process = subprocess.Popen(mmcl_run_command(tmp_path, "finetune"), env=subprocess_environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            found = list(tmp_path.rglob("tasks.jsonl"))
            if found and len(records.read_jsonl(found[0])) == 1:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill: {stderr}"
    run_dir = the_run_folder(tmp_path)
    assert not records.is_complete(run_dir)
    assert_no_half_written_record(run_dir)

    resumed = mmcl_run(tmp_path, "finetune")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, reference_dir)


def test_damaged_checkpoint_is_reported_in_one_line_and_skipped(reference, tmp_path):
    """`mmcl run` on a folder whose newest checkpoint is garbage: a warning naming it, no traceback."""
    output_dir = tmp_path / "runs"
    shutil.copytree(reference.output_dir("finetune"), output_dir)
    run_dir = the_run_folder(output_dir)
    (run_dir / "metrics.json").unlink()  # as if killed while writing it
    (run_dir / "checkpoints" / "task_1.pt").write_bytes(os.urandom(4096))

    resumed = mmcl_run(output_dir, "finetune")
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    warnings = [line for line in resumed.stderr.splitlines() if "is damaged" in line]
    assert len(warnings) == 1, resumed.stderr
    assert warnings[0].startswith("WARNING") and str(run_dir / "checkpoints" / "task_1.pt") in warnings[0]
    assert "falling back to task_0.pt" in warnings[0]
    assert_same_run(run_dir, reference("finetune"))


# ------------------------------------------------------------------------------ damaged checkpoints
@pytest.fixture(scope="module")
def finished_in_process(tmp_path_factory):
    """A complete finetune run made in this process (config, run folder), to damage copies of."""
    output_dir = tmp_path_factory.mktemp("in-process")
    config = load_config("smoke", [f"runtime.output_dir={output_dir}"])
    result = engine.run(config, "class_incremental", "finetune", seed=0)
    return config, result.run_dir


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"not a checkpoint\n" * 100)


def without_method_state(path: Path) -> None:
    state = records.load_tensors(path)
    torch.save({"rows": state["rows"]}, path)


def crafted(path: Path) -> None:
    """A pickle whose loading would run code (create ``<path>.executed``)."""
    plant_crafted_pickle(path)


def old_format(path: Path) -> None:
    """As an older format would have stored it: numpy arrays, not tensors, in the method state."""
    state = records.load_tensors(path)
    state["method_state"] = {k: v.numpy() for k, v in state["method_state"].items()}
    torch.save(state, path)


@pytest.mark.parametrize("damage", [truncate, garbage, without_method_state, crafted, old_format])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(finished_in_process, tmp_path, monkeypatch,
                                                                  caplog, damage):
    config, reference_dir = finished_in_process
    output_dir = tmp_path / "runs"
    run_dir = output_dir / reference_dir.relative_to(config.runtime.output_dir)
    shutil.copytree(reference_dir, run_dir)
    (run_dir / "metrics.json").unlink()  # as if killed while writing it
    damage(run_dir / "checkpoints" / "task_1.pt")
    config = config.model_copy(update={"runtime": config.runtime.model_copy(update={"output_dir": str(output_dir)})})

    # Stop the resumed run in task 1's training: by then tasks.jsonl must hold the rows of the
    # checkpoint it fell back to (task 0 only), not the two rows of the damaged history.
    real_train_task = engine.train_task

    def stop_in_task_1(method_obj, task, *args, **kwargs):
        if task.index == 1:
            raise KeyboardInterrupt
        return real_train_task(method_obj, task, *args, **kwargs)

    monkeypatch.setattr(engine, "train_task", stop_in_task_1)
    with caplog.at_level(logging.WARNING, logger="mmcl.runs"), pytest.raises(KeyboardInterrupt):
        engine.run(config, "class_incremental", "finetune", seed=0)
    warnings = [r.getMessage() for r in caplog.records if r.name == "mmcl.runs" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(run_dir / "checkpoints" / "task_1.pt") in warnings[0], warnings
    assert "falling back to task_0.pt" in warnings[0] and "\n" not in warnings[0]
    # A file holding other objects is refused as such, and nothing in it ran.
    refused = f"checkpoint {run_dir / 'checkpoints' / 'task_1.pt'} holds objects other than tensors and plain data"
    assert warnings[0].startswith(refused) == (damage in (crafted, old_format)), warnings
    assert not (run_dir / "checkpoints" / "task_1.pt.executed").exists()
    assert [row["task"] for row in records.read_jsonl(run_dir / "tasks.jsonl")] == [0]
    monkeypatch.undo()

    resumed = engine.run(config, "class_incremental", "finetune", seed=0)
    reference = records.read_json(reference_dir / "metrics.json")
    assert resumed.accuracy_matrix == reference["accuracy_matrix"]
    assert resumed.metrics["modes"] == reference["modes"]
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["task_0.pt", "task_1.pt"]


@pytest.mark.parametrize("case", ["all-garbage", "all-deleted"])
def test_no_usable_checkpoint_restarts_from_task_0(finished_in_process, tmp_path, caplog, case):
    config, reference_dir = finished_in_process
    output_dir = tmp_path / "runs"
    run_dir = output_dir / reference_dir.relative_to(config.runtime.output_dir)
    shutil.copytree(reference_dir, run_dir)
    (run_dir / "metrics.json").unlink()
    for _, path in runs.checkpoints(run_dir):
        garbage(path) if case == "all-garbage" else path.unlink()
    config = config.model_copy(update={"runtime": config.runtime.model_copy(update={"output_dir": str(output_dir)})})

    with caplog.at_level(logging.WARNING, logger="mmcl.runs"):
        resumed = engine.run(config, "class_incremental", "finetune", seed=0)
    warnings = [r.getMessage() for r in caplog.records if r.name == "mmcl.runs" and r.levelno >= logging.WARNING]
    if case == "all-garbage":
        assert len(warnings) == 2 and "task_1.pt" in warnings[0] and "falling back to task_0.pt" in warnings[0]
        assert "task_0.pt" in warnings[1] and "starting again from task 0" in warnings[1]
    else:
        assert len(warnings) == 1 and "no checkpoint; starting again from task 0" in warnings[0]
    reference = records.read_json(reference_dir / "metrics.json")
    assert resumed.accuracy_matrix == reference["accuracy_matrix"]
    assert resumed.metrics["modes"] == reference["modes"]


def test_stale_later_checkpoints_are_deleted_when_an_earlier_task_is_saved(tmp_path):
    for index in (0, 1, 2, 3):
        (tmp_path / "checkpoints").mkdir(exist_ok=True)
        torch.save({"index": index}, tmp_path / "checkpoints" / f"task_{index}.pt")
    runs.save_checkpoint(tmp_path, 1, {"index": "new 1"}, keep="last")
    assert [i for i, _ in runs.checkpoints(tmp_path)] == [0, 1]  # 2 and 3 belonged to a discarded history
    runs.save_checkpoint(tmp_path, 2, {"index": "new 2"}, keep="last")
    assert [i for i, _ in runs.checkpoints(tmp_path)] == [1, 2]  # the two newest
    runs.save_checkpoint(tmp_path, 3, {"index": "new 3"}, keep="all")
    assert [i for i, _ in runs.checkpoints(tmp_path)] == [1, 2, 3]


# ------------------------------------------------------------------------------ the run-folder lock
HOLD_LOCK = """
import sys, time
from mmcl import records
with records.run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(run_dir: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the lock of ``run_dir`` for ``seconds`` (returns once it holds it)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir), str(seconds)],
                              env=subprocess_environment(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_process_stops_at_once_naming_the_holder(smoke_config, tmp_path):
    run_dir = records.run_directory(smoke_config.runtime.output_dir, "smoke", "class_incremental", "av-events",
                                    "finetune", 0)
    holder = hold_lock(run_dir, 600)
    try:
        started = time.monotonic()
        with pytest.raises(records.RunFolderInUse) as refused:
            engine.run(smoke_config, "class_incremental", "finetune", seed=0)
        assert time.monotonic() - started < 10  # no waiting by default
        message = str(refused.value)
        assert f"run folder {run_dir} is in use by another process (pid {holder.pid}, host " in message
        assert "since 20" in message and "\n" not in message
        assert not (run_dir / "config.yaml").exists()  # it wrote nothing

        cli = subprocess.run(mmcl_run_command(Path(smoke_config.runtime.output_dir), "finetune"),
                             env=subprocess_environment(), capture_output=True, text=True, timeout=600)
        assert cli.returncode == 2
        assert cli.stderr.strip().splitlines() == [f"mmcl: error: {message}"]
    finally:
        holder.kill()  # SIGKILL: the holder gets no chance to unlock
        holder.wait()
    # The kernel released the dead holder's lock: nothing stale is left to clean up.
    with records.run_lock(run_dir):
        pass


def test_lock_waits_when_asked(tmp_path):
    holder = hold_lock(tmp_path, 1.5)
    try:
        started = time.monotonic()
        with records.run_lock(tmp_path, wait_seconds=120):
            waited = time.monotonic() - started
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        assert 0.5 < waited < 60  # it waited for the holder's 1.5 s, not the 120 s it was allowed
        holder_2 = hold_lock(tmp_path, 600)
        try:
            started = time.monotonic()
            with pytest.raises(records.RunFolderInUse, match=r"\(waited 0.5 s\)"):
                with records.run_lock(tmp_path, wait_seconds=0.5):
                    pass
            assert time.monotonic() - started >= 0.5
        finally:
            holder_2.kill()
            holder_2.wait()
    finally:
        holder.kill()
        holder.wait()


def test_process_that_waited_reuses_the_run_the_holder_finished(smoke_config, tmp_path):
    """A real `mmcl run` holds the folder; a second run waits for it and reuses what it finished."""
    output_dir = Path(smoke_config.runtime.output_dir)
    first = subprocess.Popen(mmcl_run_command(output_dir, "finetune"), env=subprocess_environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = records.run_directory(output_dir, "smoke", "class_incremental", "av-events", "finetune", 0) / ".lock"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and first.poll() is None:
            if lock.is_file() and records._lock_holder(lock).get("pid") == first.pid:
                break
            time.sleep(0.01)
        assert first.poll() is None, "the first run ended before the second one started"
        waiting = smoke_config.model_copy(update={"runtime": smoke_config.runtime.model_copy(
            update={"wait_for_lock": 600.0})})
        second = engine.run(waiting, "class_incremental", "finetune", seed=0)
    finally:
        _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert second.skipped  # it did not train the run again
    assert second.metrics == records.read_json(second.run_dir / "metrics.json")


# ------------------------------------------------------------------------------------- memory
def test_memory_is_recorded_per_task_and_summarised(finished_in_process):
    _, run_dir = finished_in_process
    rows = records.read_jsonl(run_dir / "tasks.jsonl")
    metrics = records.read_json(run_dir / "metrics.json")
    for row in rows:
        memory = row["memory"]
        assert set(memory) == {"peak_rss_mib", "rss_mib", "cuda_peak_mib"}
        assert memory["cuda_peak_mib"] is None  # the smoke profile runs on CPU
        assert 50 < memory["rss_mib"] <= memory["peak_rss_mib"] < 64 * 1024  # a torch process, in MiB
    assert rows[1]["memory"]["peak_rss_mib"] >= rows[0]["memory"]["peak_rss_mib"]  # a lifetime peak
    assert metrics["memory"] == {"peak_rss_mib": max(r["memory"]["peak_rss_mib"] for r in rows),
                                 "rss_mib": max(r["memory"]["rss_mib"] for r in rows), "cuda_peak_mib": None}
    frame = load_runs(run_dir)
    assert frame["peak_rss_mib"].tolist() == [metrics["memory"]["peak_rss_mib"]]
