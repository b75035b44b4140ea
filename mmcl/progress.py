"""Progress that fits where it is shown: bars in a terminal, widgets in a live notebook, lines elsewhere.

Where the output goes decides how progress looks (:func:`display`):

- ``bars``: a terminal (the bars' stream, stderr, is a TTY). A bar per run (its tasks, and the steps
  of the task in training) and, for a sweep (:class:`SweepProgress`), a sweep bar with its ETA; each
  finished run's line is printed above the bars.
- ``widgets``: a Jupyter kernel with an interactive front end attached (JupyterLab, Notebook, VS Code):
  the same bars as tqdm's notebook widgets (``ipywidgets``). The kernel tells the two kinds of client
  apart by the execute request of the running cell: a front end with a person at it allows stdin
  (``input()`` reaches them), while papermill and nbclient, which execute notebooks unattended,
  never do. A notebook executed that way would keep widgets frozen at 0 % in its saved outputs.
- ``lines``: anything else: a log file or a pipe, a notebook executed by papermill or nbclient
  (``mmcl reproduce``), a pool worker or a submitit job. No bars at all, so no redraws in a log and
  no widgets in a saved notebook; a sweep prints one line per finished run with its ETA.

``MMCL_PROGRESS=bars|widgets|lines`` forces one. ``runtime.progress`` (the profile key; ``run(...,
progress=)``) keeps its meaning: whether a single run draws its bars (and the data generation and
backbone pre-training it may start); :func:`enabled` turns it off where no bar fits. A sweep always
reports its runs, as a bar or as lines.

The ETA of a sweep (:func:`sweep_eta`) is the time its unfinished runs take on its workers, each run
estimated from run seconds already known (:func:`estimate_seconds`): measured in this sweep first,
then recorded in the run records (``metrics.json``'s ``timing``) of runs the sweep reuses, by the same
run (benchmark, method, variant), then the same method, then any run.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tqdm.std import tqdm as _terminal_tqdm

SWITCH = "MMCL_PROGRESS"
DISPLAYS = ("bars", "widgets", "lines")
_active_sweeps = 0  # sweeps reporting in this process: their runs' bars are not left behind


def _front_end_attached() -> bool | None:
    """None outside a Jupyter kernel; in one, whether the cell running was sent by an interactive
    front end (its execute request allows stdin; papermill and nbclient never allow it)."""
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython  # already imported: the check above

        kernel = getattr(get_ipython(), "kernel", None)
    except Exception:  # noqa: BLE001 - a broken IPython is no kernel to draw widgets in
        return None
    if kernel is None:
        return None
    try:
        content = (kernel.get_parent("shell") or {}).get("content") or {}
        if "allow_stdin" in content:
            return bool(content["allow_stdin"])
    except Exception:  # noqa: BLE001 - older ipykernel: the flag it keeps for the running request
        pass
    return bool(getattr(kernel, "_allow_stdin", False))


def display(stream=None) -> str:
    """``bars``, ``widgets`` or ``lines``: how progress is shown here (see the module docstring).
    ``stream``: where bars would go (default: stderr)."""
    forced = os.environ.get(SWITCH, "").strip().lower()
    if forced in DISPLAYS:
        return forced
    attached = _front_end_attached()
    if attached is not None:
        if attached:
            import importlib.util

            if importlib.util.find_spec("ipywidgets") is not None:
                return "widgets"
        return "lines"
    stream = sys.stderr if stream is None else stream
    try:
        return "bars" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no stream, or a closed one
        return "lines"


def enabled(progress: bool) -> bool:
    """Whether a run asked for its progress (``runtime.progress``) draws it here: never as lines."""
    return bool(progress) and display() != "lines"


def sweep_active() -> bool:
    """Whether a sweep of this process is reporting (a run's bars then vanish when it ends)."""
    return _active_sweeps > 0


def bar(iterable: Iterable | None = None, **kwargs):
    """A tqdm bar of the right kind here: a notebook widget, a terminal bar, or none (disabled) where
    progress is shown as lines. Takes tqdm's arguments (``disable=True`` disables it anywhere)."""
    shown = display()
    if shown == "lines":
        kwargs["disable"] = True
    if shown == "widgets" and not kwargs.get("disable"):
        from tqdm.notebook import tqdm as widget_tqdm

        return widget_tqdm(iterable, **kwargs)
    return _terminal_tqdm(iterable, **kwargs)


def format_seconds(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``; ``unknown`` for None."""
    if seconds is None:
        return "unknown"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass(frozen=True)
class RunTime:
    """Seconds of one run: ``key`` (benchmark, method, variant), ``method``, and whether they were
    measured in this sweep (else read from a run record)."""

    key: tuple
    method: str
    seconds: float
    measured: bool


def estimate_seconds(key: tuple, method: str, known: Sequence[RunTime]) -> float | None:
    """The expected seconds of a run of ``key`` / ``method``: the mean of the first non-empty group of
    ``known`` run times, in this order: the same key measured in this sweep, the same key (recorded
    too), the same method measured, the same method, any run measured, any run. None when nothing is
    known."""
    levels: tuple[Callable[[RunTime], bool], ...] = (
        lambda t: t.key == key and t.measured, lambda t: t.key == key,
        lambda t: t.method == method and t.measured, lambda t: t.method == method,
        lambda t: t.measured, lambda t: True)
    for keep in levels:
        found = [t.seconds for t in known if keep(t)]
        if found:
            return sum(found) / len(found)
    return None


def makespan(durations: Sequence[float], workers: int = 1) -> float:
    """Seconds ``workers`` parallel workers take for runs of ``durations``, each run given, longest
    first, to the worker that is free first (one worker: their sum)."""
    loads = [0.0] * max(1, min(int(workers), len(durations)))
    for seconds in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += seconds
    return max(loads)


def sweep_eta(remaining: Sequence[tuple[tuple, str] | None], known: Sequence[RunTime],
              workers: int = 1) -> float | None:
    """The ETA of a sweep: :func:`makespan` over ``workers`` of the unfinished runs (``(key, method)``
    each; None for a run known to be reused, which takes no time), each :func:`estimate_seconds` from
    ``known``. None when some run has no estimate."""
    durations = []
    for run in remaining:
        if run is None:
            continue
        seconds = estimate_seconds(run[0], run[1], known)
        if seconds is None:
            return None
        durations.append(seconds)
    return makespan(durations, workers)


class SweepProgress:
    """The progress of a sweep of runs: a line per finished run, ``[what n/total] text, ETA ...``,
    printed as it is (``lines``) or above a sweep bar that shows the same ETA (``bars``, ``widgets``).

    ``runs``: ``(key, method)`` of every run, in the sweep's order; ``workers``: how many run at once.
    Executors call :meth:`reused` for a run known complete before it is reported (its recorded seconds,
    if any, inform the estimates of the others) and :meth:`finished` for every run as it finishes."""

    def __init__(self, what: str, runs: Sequence[tuple[tuple, str]], workers: int = 1,
                 known: Iterable[RunTime] = ()):
        global _active_sweeps
        self.what, self.runs, self.workers = what, list(runs), max(1, int(workers))
        self.known = list(known)
        self.unfinished = set(range(len(self.runs)))
        self.will_reuse: set[int] = set()
        self.number = 0
        self.shown = display()
        self.bar = None
        if self.shown != "lines" and self.runs:
            self.bar = bar(total=len(self.runs), desc=what, unit="run", postfix=f"ETA {format_seconds(self.eta())}",
                           bar_format="{desc}: {n_fmt}/{total_fmt} runs |{bar}| {elapsed}{postfix}")
        _active_sweeps += 1

    def reused(self, index: int, recorded_seconds: float | None = None) -> None:
        """Run ``index`` is complete already; ``recorded_seconds``: its record's run seconds."""
        self.will_reuse.add(index)
        if recorded_seconds:
            key, method = self.runs[index]
            self.known.append(RunTime(key, method, float(recorded_seconds), measured=False))

    def eta(self) -> float | None:
        """Seconds until the last unfinished run is done (:func:`sweep_eta`)."""
        remaining = [None if i in self.will_reuse else self.runs[i] for i in sorted(self.unfinished)]
        return sweep_eta(remaining, self.known, self.workers)

    def finished(self, index: int, text: str, seconds: float | None = None) -> str:
        """Run ``index`` finished (``seconds``: measured, for a run trained here; None when reused or
        failed); report ``text`` with the ETA. Returns the line."""
        self.unfinished.discard(index)
        if seconds is not None and seconds > 0:
            key, method = self.runs[index]
            self.known.append(RunTime(key, method, float(seconds), measured=True))
        self.number += 1
        eta = format_seconds(self.eta())
        line = f"[{self.what} {self.number}/{len(self.runs)}] {text}, ETA {eta}"
        if self.bar is None:
            print(line, flush=True)
        else:
            self.bar.set_postfix_str(f"ETA {eta}", refresh=False)
            self.bar.update()
            if self.shown == "bars":
                self.bar.write(line, file=sys.stdout)
            else:
                print(line, flush=True)
        return line

    def close(self) -> None:
        global _active_sweeps
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if _active_sweeps > 0:
            _active_sweeps -= 1

    def __enter__(self) -> SweepProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
