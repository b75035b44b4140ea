"""Progress that fits where it is shown (mmcl.progress): bars in a terminal, widgets in a live
notebook, and in a log or an executed notebook one line per finished run with the sweep's ETA,
no bar redraws and no widgets frozen at 0 %."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from mmcl import progress
from mmcl.progress import RunTime, SweepProgress, estimate_seconds, format_seconds, makespan, sweep_eta

LWF, REPLAY, EWC = ("av-events", "lwf", None), ("av-events", "replay", None), ("av-events", "ewc", None)
LINE = re.compile(r"^\[(?P<what>[\w-]+) (?P<n>\d+)/(?P<total>\d+)\] .+: +(\d+\.\d s|reused|FAILED), ETA (?P<eta>.+)$")


@pytest.fixture
def lines(monkeypatch):
    monkeypatch.setenv(progress.SWITCH, "lines")


def test_eta_formula_by_hand():
    known = [RunTime(LWF, "lwf", 10.0, True), RunTime(LWF, "lwf", 20.0, True), RunTime(REPLAY, "replay", 30.0, True),
             RunTime(("ego-activities", "lwf", None), "lwf", 40.0, False)]
    # Same key, measured in this sweep: (10 + 20) / 2; the record of lwf on another benchmark does not count.
    assert estimate_seconds(LWF, "lwf", known) == 15.0
    # Another benchmark's lwf: its key's record (40), before the method's measured runs.
    assert estimate_seconds(("ego-activities", "lwf", None), "lwf", known) == 40.0
    # lwf's variant, never run: the method's measured runs, (10 + 20) / 2.
    assert estimate_seconds(("av-events", "lwf", "frozen-head"), "lwf", known) == 15.0
    # ewc, never run: every measured run, (10 + 20 + 30) / 3.
    assert estimate_seconds(EWC, "ewc", known) == 20.0
    # Nothing measured: the records alone; nothing at all: unknown.
    assert estimate_seconds(EWC, "ewc", [RunTime(LWF, "lwf", 40.0, False)]) == 40.0
    assert estimate_seconds(EWC, "ewc", []) is None
    # Remaining lwf 15, replay 30, ewc 20 (and a run known reused: None, no time): one worker runs them
    # one after the other, 65 s; two take 30 | 20 + 15 = 35 s (longest first, to the worker free first);
    # three or more: the longest, 30 s.
    remaining = [(LWF, "lwf"), (REPLAY, "replay"), None, (EWC, "ewc")]
    assert sweep_eta(remaining, known, workers=1) == 65.0
    assert sweep_eta(remaining, known, workers=2) == 35.0
    assert sweep_eta(remaining, known, workers=8) == 30.0
    assert sweep_eta([], known) == 0.0 and sweep_eta([(EWC, "ewc")], []) is None
    assert makespan([5, 4, 3, 3, 3], 2) == 10.0  # 5 | 4, then 5 | 7, 8 | 7, 8 | 10
    assert [format_seconds(s) for s in (None, 0.4, 42, 185, 7620)] == ["unknown", "0 s", "42 s", "3 min 05 s",
                                                                         "2 h 07 min"]


def test_a_sweep_reports_a_line_per_run_with_its_eta(lines, capsys):
    runs = [(LWF, "lwf"), (LWF, "lwf"), (REPLAY, "replay"), (REPLAY, "replay")]
    with SweepProgress("demo", runs, workers=1) as sweep:
        sweep.reused(0, recorded_seconds=12.0)  # complete already; its record says 12 s
        out = [sweep.finished(0, "lwf · seed 0: reused")]
        out.append(sweep.finished(1, "lwf · seed 1:  10.0 s", seconds=10.0))
        out.append(sweep.finished(2, "replay · seed 0:  30.0 s", seconds=30.0))
        out.append(sweep.finished(3, "replay · seed 1: FAILED"))
    # After run 1: lwf seed 1 from lwf's record (12), replay twice from every run known (12): 36 s.
    # After run 2: lwf measured 10 s now; replays from it: 20 s. After run 3: replay measured, 30 s.
    assert [LINE.match(line)["eta"] for line in out] == ["36 s", "20 s", "30 s", "0 s"]
    assert capsys.readouterr().out.splitlines() == out
    assert not progress.sweep_active()


def test_where_progress_is_shown(monkeypatch):
    import IPython

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.delenv(progress.SWITCH, raising=False)
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert progress.display(Stream(True)) == "bars" and progress.display(Stream(False)) == "lines"
    # In a kernel: widgets when the running cell came from a front end that allows stdin (a person at
    # JupyterLab), lines when it came from papermill or nbclient (which never allow it).
    for allow, shown in ((True, "widgets"), (False, "lines")):
        kernel = types.SimpleNamespace(get_parent=lambda channel=None, a=allow: {"content": {"allow_stdin": a}})
        monkeypatch.setattr(IPython, "get_ipython", lambda k=kernel: types.SimpleNamespace(kernel=k))
        assert progress.display(Stream(True)) == shown
    monkeypatch.setenv(progress.SWITCH, "bars")
    assert progress.display(Stream(False)) == "bars"
    monkeypatch.setenv(progress.SWITCH, "lines")
    assert not progress.enabled(True) and progress.bar(range(3)).disable


def _run_logged(arguments: list[str], log: Path) -> str:
    """Run ``python arguments`` with stdout and stderr redirected to ``log`` (no TTY); its text."""
    env = {k: v for k, v in os.environ.items() if k != progress.SWITCH}
    with open(log, "w") as stream:
        subprocess.run([sys.executable, *arguments], stdout=stream, stderr=subprocess.STDOUT, check=True, env=env,
                       timeout=300)
    return log.read_text()


def test_a_sweep_logged_to_a_file_is_a_short_line_per_run(tmp_path, mmcl_cache):
    """A sweep with runtime.progress on, its output redirected to a file: one line per finished run
    with an ETA (a second sweep reuses every run: a line each too), no bar redraws."""
    code = ("import mmcl\n"
            "from mmcl.config import load_config\n"
            "from mmcl.reproduce import run_sweep\n"
            f"config = load_config('smoke', ['runtime.output_dir={tmp_path / 'runs'}', 'runtime.progress=true', "
            "'runtime.executor.name=local'])\n"
            "for _ in range(2):\n"
            "    run_sweep(config, 'class_incremental', methods=['zero-shot', 'finetune'], seeds=[0], "
            "benchmarks=['av-events'])\n")
    text = _run_logged(["-c", code], tmp_path / "sweep.log")
    assert "\r" not in text and "it/s" not in text and "%|" not in text, text
    lines = text.splitlines()
    runs = [line for line in lines if line.startswith("[")]
    assert len(runs) == 4 and all(LINE.match(line) for line in runs), text
    assert [LINE.match(line)["eta"] for line in runs][1::2] == ["0 s", "0 s"]
    assert sum(line.endswith("reused, ETA 0 s") for line in runs[2:]) == 2
    assert len(lines) == 6 and len(text.encode()) < 1024 * 4, text  # and two "2 runs in N s" lines

    # mmcl run with several seeds: one line per run, with the ETA of the others.
    text = _run_logged(["-m", "mmcl.cli", "run", "--scenario", "class_incremental", "--method", "finetune", "--seed", "0",
                        "--seed", "1", "--profile", "smoke", "--output-dir", str(tmp_path / "runs"), "--set",
                        "runtime.progress=true"], tmp_path / "run.log")
    assert "\r" not in text and "%|" not in text, text
    assert re.findall(r"^(?:finished|reused complete run): \S+ \((\d)/2, ETA [^)]+\)$", text, re.M) == ["1", "2"], text
    assert len(text.encode()) < 1024 * 2, text


def test_an_executed_notebook_keeps_no_progress_widgets(tmp_path, mmcl_cache, monkeypatch):
    """papermill executes a notebook whose sweep has runtime.progress on: the saved notebook holds the
    sweep's lines with their ETA, and no widget (frozen at 0 %) nor bar output."""
    from mmcl import reproduce

    monkeypatch.delenv(progress.SWITCH, raising=False)
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(
        "import mmcl\n"
        "from mmcl import progress\n"
        "from mmcl.config import load_config\n"
        "from mmcl.reproduce import prepare_data, run_sweep\n"
        f"config = load_config('smoke', ['runtime.output_dir={tmp_path / 'runs'}', 'runtime.progress=true', "
        "'runtime.executor.name=local'])\n"
        "prepare_data(config, ['av-events'], progress=True, seeds=[0])\n"
        "runs = run_sweep(config, 'class_incremental', methods=['finetune'], seeds=[0], benchmarks=['av-events'])\n"
        "print(progress.display())")]
    nbformat.write(notebook, tmp_path / "99_progress.ipynb")
    out = tmp_path / "out" / "99_progress.ipynb"
    reproduce.execute_notebook("99_progress", out, {}, notebook_dir=tmp_path, log_output=False)
    saved = json.loads(out.read_text())
    outputs = [o for cell in saved["cells"] if cell["cell_type"] == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] != "stream" or o["name"] != "stdout"], outputs
    assert "widgets" not in saved["metadata"]
    text = "".join("".join(o["text"]) if isinstance(o["text"], list) else o["text"] for o in outputs)
    assert re.search(r"^\[class_incremental 1/1\] class_incremental · av-events · finetune · seed 0: .+, ETA 0 s$",
                     text, re.M), text
    assert text.rstrip().endswith("lines") and "\r" not in text, text


def test_a_kernel_shows_widgets_only_to_a_front_end_that_allows_stdin(mmcl_cache):
    """A real kernel: a cell sent as JupyterLab sends it (stdin allowed) gets widgets; the same cell
    sent as papermill and nbclient send it (no stdin) gets lines."""
    from jupyter_client.manager import start_new_kernel

    env = {k: v for k, v in os.environ.items() if k != progress.SWITCH}
    manager, client = start_new_kernel(kernel_name="python3", env=env)
    try:
        shown = {}
        for allow in (True, False):
            texts = []

            def hook(message, texts=texts):
                if message["msg_type"] == "stream":
                    texts.append(message["content"]["text"])

            client.execute_interactive("from mmcl.progress import display\nprint(display())", allow_stdin=allow,
                                       output_hook=hook, timeout=120)
            shown[allow] = "".join(texts).strip()
        assert shown == {True: "widgets", False: "lines"}
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
