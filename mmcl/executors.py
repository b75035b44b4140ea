"""Executors: where the runs of a sweep execute (``runtime.executor``; ``mmcl reproduce --executor``).

Every executor takes the same list of jobs (keyword arguments of :func:`mmcl.engine.run`) and
returns their run folders in the same order, reporting each run as it finishes with the sweep's ETA
(:class:`mmcl.progress.SweepProgress`: a line per run in a log or an executed notebook, a sweep bar
above those lines in a terminal or a live notebook):

- ``local`` (:class:`LocalExecutor`): in the calling process, one run after the other.
- ``pool`` (:class:`PoolExecutor`): a pool of ``runtime.executor.parallelism`` worker processes
  (``auto``: one per CPU core), spawned once per process and kept for later sweeps, each one
  single-threaded (``OMP_NUM_THREADS=1`` before torch is imported, one intra-op thread), one run per
  worker at a time. Complete runs are reused without a worker; a failed run is listed with its
  error and the others go on (:class:`SweepFailed`).
- ``auto`` (the default): ``pool`` on CPU when more than one run is missing and the machine has
  more than one core, else ``local`` (one GPU is shared best by one process). See
  docs/performance.md for the measurements behind this choice.
- ``submitit-local`` and ``slurm`` (:class:`SubmititExecutor`): one submitit job per run, local
  subprocesses or a SLURM job array. Complete runs are not submitted again (re-running the same
  command submits only the missing runs); the jobs write the same run folders as a local sweep, and
  :func:`mmcl.engine.run` holds each run folder's lock while it writes, so concurrent jobs (or a
  second sweep) cannot write one run twice. Failed jobs are listed with their log files
  (:class:`SweepFailed`).

Every executor gives the same numbers: :func:`mmcl.engine.run` runs every CPU run single-threaded
unless ``runtime.num_threads`` is set (:func:`mmcl.runtime.run_threads`), in this process or in a
worker. Another executor subclasses :class:`Executor` and implements ``execute``.
"""
from __future__ import annotations

import atexit
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmcl import engine, results
from mmcl.atomic import atomic_write_text
from mmcl.config import Config, ConfigError
from mmcl.progress import SWITCH as PROGRESS_SWITCH, SweepProgress
from mmcl.runs import is_reusable, locate_run
from mmcl.runtime import resolve_device


class SweepFailed(RuntimeError):
    """Some jobs of a sweep failed; the message lists each with its log file."""


@dataclass
class Outcome:
    """What became of one job: its run folder, ``reused`` / ``done`` / ``failed``, seconds, log."""

    job: dict
    run_dir: Path | None
    status: str
    seconds: float = 0.0
    log: Path | None = None
    error: str = ""
    extra: dict = field(default_factory=dict)


def job_label(job: dict) -> str:
    """One line naming a job: scenario · benchmark · method[~variant] · seed."""
    name = results.method_label(job["method"], job.get("variant"), None)
    return f"{job['scenario']} · {job.get('benchmark') or '-'} · {name} · seed {job['seed']}"


def split_job(config: Config, job: dict) -> tuple[Config, dict]:
    """(configuration, keyword arguments of :func:`mmcl.engine.run`) of one job. A job runs under
    the sweep's configuration unless it carries its own under ``"config"`` (a validation run of
    ``mmcl tune``: the sweep's configuration with one grid point's hyper-parameters)."""
    if "config" not in job:
        return config, job
    own = dict(job)
    return own.pop("config"), own


def locate_job(config: Config, job: dict, output_dir: str | Path | None):
    """:func:`mmcl.runs.locate_run` of one job."""
    job_config, arguments = split_job(config, job)
    return locate_run(job_config, output_dir=output_dir, **arguments)


def run_job(config: Config, job: dict, output_dir: str | Path | None) -> tuple[str, bool]:
    """The body of one job (in this process or a submitit subprocess): (run folder, reused)."""
    job_config, arguments = split_job(config, job)
    result = engine.run(job_config, output_dir=output_dir, **arguments)
    return str(result.run_dir), bool(result.skipped)


class Executor:
    """Runs a list of jobs; subclasses implement :meth:`execute`."""

    name = "base"

    def __init__(self, config: Config):
        self.settings = config.runtime.executor

    def check(self, config: Config, output_dir: str | Path | None) -> None:
        """Raise :class:`ConfigError` when this executor cannot run here (before any notebook runs)."""

    def execute(self, config: Config, jobs: list[dict], output_dir: str | Path | None, what: str) -> list[Outcome]:
        raise NotImplementedError

    def run_jobs(self, config: Config, jobs: list[dict], output_dir: str | Path | None, what: str) -> list[Path]:
        """Run ``jobs`` and return their run folders in order; raise :class:`SweepFailed` when any failed."""
        started = time.perf_counter()
        outcomes = self.execute(config, jobs, output_dir, what)
        failed = [o for o in outcomes if o.status == "failed"]
        print(f"{what}: {len(jobs)} runs in {time.perf_counter() - started:.0f} s", flush=True)
        if failed:
            lines = [f"  {job_label(o.job)}: {o.error}" + (f"\n    log: {o.log}" if o.log else "") for o in failed]
            raise SweepFailed(f"{what}: {len(failed)} of {len(jobs)} runs failed ({self.name} executor):\n"
                              + "\n".join(lines) + "\nrun the same command again: only the missing runs are "
                              "submitted")
        return [o.run_dir for o in outcomes]


def job_key(job: dict) -> tuple[tuple, str]:
    """(key, method) of a job for the sweep's ETA (:mod:`mmcl.progress`): key = (benchmark, method,
    variant); runs of one key take about the same time."""
    return (job.get("benchmark"), job["method"], job.get("variant")), job["method"]


def recorded_seconds(run_dir: Path | None) -> float | None:
    """The run seconds a complete run's record holds (``metrics.json``: ``timing``), or None."""
    if run_dir is None:
        return None
    try:
        timing = json.loads((Path(run_dir) / "metrics.json").read_text()).get("timing") or {}
        seconds = float(timing.get("run_seconds_this_session") or 0.0)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return seconds if seconds > 0 else None


def sweep_progress(what: str, jobs: list[dict], workers: int) -> SweepProgress:
    """The progress report of a sweep of ``jobs`` on ``workers`` at once."""
    return SweepProgress(what, [job_key(job) for job in jobs], workers)


def _report(sweep: SweepProgress, index: int, outcome: Outcome) -> None:
    status = "reused" if outcome.status == "reused" else f"{outcome.seconds:5.1f} s" \
        if outcome.status == "done" else "FAILED"
    sweep.finished(index, f"{job_label(outcome.job)}: {status}",
                   outcome.seconds if outcome.status == "done" else None)


def _mark_reused(sweep: SweepProgress, outcomes: Sequence[Outcome | None]) -> None:
    """Tell the sweep's ETA which runs are complete already, with their recorded seconds."""
    for i, outcome in enumerate(outcomes):
        if outcome is not None and outcome.status == "reused":
            sweep.reused(i, recorded_seconds(outcome.run_dir))


def _report_reused(sweep: SweepProgress, outcomes: Sequence[Outcome | None]) -> None:
    """Start a sweep whose complete runs are known: their seconds feed the ETA, each is reported."""
    _mark_reused(sweep, outcomes)
    for i, outcome in enumerate(outcomes):
        if outcome is not None:
            _report(sweep, i, outcome)


def _locate_all(config: Config, jobs: list[dict], output_dir) -> tuple[list, list[Outcome | None]]:
    """Each job's run location, and a ``reused`` outcome for each job whose run is complete (None for the others)."""
    locations = [locate_job(config, job, output_dir) for job in jobs]
    return locations, [Outcome(job, loc.run_dir, "reused") if is_reusable(loc) else None
                       for job, loc in zip(jobs, locations)]


class LocalExecutor(Executor):
    """In the calling process, one run after the other (an error stops the sweep at once)."""

    name = "local"

    complete: list | None = None  # the jobs' complete runs, when the caller looked them up already

    def execute(self, config, jobs, output_dir, what):
        outcomes = []
        with sweep_progress(what, jobs, 1) as sweep:
            complete = self.complete if self.complete is not None and len(self.complete) == len(jobs) else None
            _mark_reused(sweep, complete or _complete_runs(config, jobs, output_dir))
            for index, job in enumerate(jobs):
                begun = time.perf_counter()
                run_dir, reused = run_job(config, job, output_dir)
                outcomes.append(Outcome(job, Path(run_dir), "reused" if reused else "done",
                                        time.perf_counter() - begun))
                _report(sweep, index, outcomes[-1])
        return outcomes


def _complete_runs(config: Config, jobs: list[dict], output_dir, strict: bool = False) -> list[Outcome | None]:
    """``reused`` outcomes of the jobs whose runs are complete now (None for the others). A job that
    cannot be located raises with ``strict``; otherwise all are None (running the job says why)."""
    try:
        return _locate_all(config, jobs, output_dir)[1]
    except Exception:  # noqa: BLE001 - for the ETA only a guess; the run itself raises the error
        if strict:
            raise
        return [None] * len(jobs)


class SubmititExecutor(Executor):
    """One submitit job per missing run: local subprocesses (``submitit-local``) or SLURM (``slurm``)."""

    def __init__(self, config: Config, cluster: str):
        super().__init__(config)
        self.cluster = cluster
        self.name = "submitit-local" if cluster == "local" else "slurm"

    def folder(self, config: Config, output_dir: str | Path | None) -> Path:
        if self.settings.folder:
            return Path(self.settings.folder)
        return Path(output_dir or config.runtime.output_dir) / config.profile / "jobs"

    def check(self, config, output_dir):
        if self.cluster == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
            folder = self.folder(config, output_dir)
            preview = folder / "slurm-job-preview.sh"
            atomic_write_text(preview, slurm_script(self.settings, folder, 1))
            raise ConfigError(f"runtime.executor.name=slurm: no SLURM here (sbatch/srun not on PATH); the job "
                              f"script it would submit for each run is in {preview}")

    def submitit_executor(self, folder: Path):
        import submitit  # optional: installed only where submitit or SLURM runs the sweeps

        s = self.settings
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        parameters = {"name": "mmcl", "timeout_min": s.timeout_min, "cpus_per_task": s.cpus_per_task}
        if self.cluster == "slurm":
            parameters |= {"gpus_per_node": s.gpus_per_node, "slurm_array_parallelism": _array_parallelism(s)}
            parameters |= {f"slurm_{k}": v for k, v in (("partition", s.partition), ("account", s.account),
                                                          ("qos", s.qos), ("setup", s.setup)) if v}
            if s.mem_gb:
                parameters["mem_gb"] = s.mem_gb
        executor.update_parameters(**parameters)
        return executor

    def execute(self, config, jobs, output_dir, what):
        locations, outcomes = _locate_all(config, jobs, output_dir)
        missing = [i for i, o in enumerate(outcomes) if o is None]
        folder = self.folder(config, output_dir)
        # SLURM: one array, throttled by the array's %N; local: at most `parallelism` subprocesses.
        window = len(missing) if self.cluster == "slurm" else resolved_parallelism(self.settings)
        at_once = _array_parallelism(self.settings) if self.cluster == "slurm" else window
        with sweep_progress(what, jobs, at_once) as sweep:
            _report_reused(sweep, outcomes)
            if missing:
                self._submit(config, jobs, output_dir, what, outcomes, locations, missing, folder, window, sweep)
        return outcomes

    def _submit(self, config, jobs, output_dir, what, outcomes, locations, missing, folder, window, sweep):
        self.check(config, output_dir)
        executor = self.submitit_executor(folder)
        print(f"{what}: submitting {len(missing)} of {len(jobs)} runs as {self.name} jobs (logs in {folder})",
              flush=True)
        queue, running = list(missing), {}
        while queue or running:
            if queue and len(running) < window:
                chunk, queue = queue[:window - len(running)], queue[window - len(running):]
                with executor.batch():
                    submitted = [executor.submit(run_job, config, jobs[i], output_dir) for i in chunk]
                running.update({job: (i, time.perf_counter()) for job, i in zip(submitted, chunk)})
            finished = [job for job in running if job.done()]
            if not finished:
                time.sleep(0.5)
                continue
            for job in finished:
                i, begun = running.pop(job)
                try:
                    run_dir, reused = job.result()
                    outcomes[i] = Outcome(jobs[i], Path(run_dir), "reused" if reused else "done",
                                          time.perf_counter() - begun, Path(job.paths.stderr))
                except Exception as error:  # noqa: BLE001 - a failed job is listed, the others go on
                    message = str(error).strip().splitlines()
                    outcomes[i] = Outcome(jobs[i], locations[i].run_dir, "failed", time.perf_counter() - begun,
                                          Path(job.paths.stderr), _last_error_line(message))
                _report(sweep, i, outcomes[i])


def cpu_cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolved_parallelism(settings, cores: int | None = None) -> int:
    """``runtime.executor.parallelism``: its number, or for ``auto`` the machine's cores."""
    return cores or cpu_cores() if settings.parallelism == "auto" else int(settings.parallelism)


def _array_parallelism(settings) -> int:
    """A SLURM array's %N: ``parallelism``, or with ``auto`` submitit's default (256)."""
    return 256 if settings.parallelism == "auto" else int(settings.parallelism)


_SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _init_worker() -> None:
    """Each pool worker: one intra-op and one inter-op torch thread (the environment above is set
    before the worker starts, so before torch is imported). It ignores SIGINT: an interrupted
    Jupyter kernel (by Jupyter when it shuts one down, by ``mmcl reproduce`` stopped while a cell
    runs) interrupts its whole process group, and the workers, idle in the queue, would each print
    a KeyboardInterrupt traceback; the pool that owns them stops them at exit (:func:`shutdown_pools`).
    A worker draws no progress bar: it shares the terminal with the sweep's bar in the process that
    owns the pool, which reports each run as it finishes (:mod:`mmcl.progress`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ[PROGRESS_SWITCH] = "lines"

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (the worker ran parallel work before)
        pass


def _timed_job(config: Config, job: dict, output_dir) -> tuple[str, bool, float]:
    """:func:`run_job` in a pool worker, with its seconds (not counting the wait in the queue)."""
    begun = time.perf_counter()
    run_dir, reused = run_job(config, job, output_dir)
    return run_dir, reused, time.perf_counter() - begun


_POOLS: dict[tuple, object] = {}


def worker_pool(workers: int):
    """The process pool of ``workers`` spawned workers, kept for the next sweep of this process (a
    notebook runs several): torch is imported and the backbone cache read once per worker. The
    workers inherit the environment they were spawned with (``MMCL_CACHE``, ...): a sweep under
    another environment or another number of workers gets a fresh pool, the old one is stopped."""
    key = (workers, tuple(sorted(os.environ.items())))
    pool = _POOLS.get(key)
    if pool is None or getattr(pool, "_broken", False):
        shutdown_pools()
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
        _POOLS[key] = pool
    return pool


@atexit.register
def shutdown_pools() -> None:
    """Stop every kept worker pool (at exit; tests call it to start from a fresh pool)."""
    while _POOLS:
        _POOLS.popitem()[1].shutdown(wait=True, cancel_futures=True)


class PoolExecutor(Executor):
    """Missing runs in a pool of single-threaded worker processes; complete runs reused here."""

    name = "pool"

    def execute(self, config, jobs, output_dir, what):
        locations, outcomes = _locate_all(config, jobs, output_dir)
        missing = [i for i, o in enumerate(outcomes) if o is None]
        workers = resolved_parallelism(self.settings)
        with sweep_progress(what, jobs, workers) as sweep:
            _report_reused(sweep, outcomes)
            if missing:
                self._run_in_pool(config, jobs, output_dir, outcomes, locations, missing, workers, sweep)
        return outcomes

    def _run_in_pool(self, config, jobs, output_dir, outcomes, locations, missing, workers, sweep):
        saved = {key: os.environ.get(key) for key in _SINGLE_THREAD_ENV}
        os.environ.update(_SINGLE_THREAD_ENV)  # workers are spawned (on demand) with this environment
        try:
            pool = worker_pool(workers)
            running = {pool.submit(_timed_job, config, jobs[i], output_dir): i for i in missing}
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = running.pop(future)
                    try:
                        run_dir, reused, seconds = future.result()
                        outcomes[i] = Outcome(jobs[i], Path(run_dir), "reused" if reused else "done", seconds)
                    except Exception as error:  # noqa: BLE001 - a failed run is listed, the others go on
                        text = f"{type(error).__name__}: {error}".strip().splitlines()
                        outcomes[i] = Outcome(jobs[i], locations[i].run_dir, "failed", error=_last_error_line(text))
                    _report(sweep, i, outcomes[i])
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _last_error_line(lines: Sequence[str]) -> str:
    """The most telling line of a failed job's error: its last ``SomeError: ...`` line."""
    named = [line.strip() for line in lines if "Error" in line.split(":", 1)[0] or "Exception" in line.split(":", 1)[0]]
    return (named or [line.strip() for line in lines if line.strip()] or ["failed"])[-1]


def slurm_script(settings, folder: str | Path, runs: int) -> str:
    """The sbatch script submitit submits for ``runs`` runs (one array task per run) with the
    ``runtime.executor`` ``settings``: rendered by submitit itself, without a cluster."""
    from submitit.slurm.slurm import _make_sbatch_string  # optional: installed only where submitit runs the sweeps

    parameters = {"job_name": "mmcl", "time": settings.timeout_min, "cpus_per_task": settings.cpus_per_task,
                  "gpus_per_node": settings.gpus_per_node, "array_parallelism": _array_parallelism(settings),
                  "partition": settings.partition, "account": settings.account, "qos": settings.qos,
                  "setup": settings.setup or None, "map_count": runs if runs > 1 else None}
    if settings.mem_gb:
        parameters["mem"] = f"{int(settings.mem_gb * 1024)}MB"
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=str(folder), **parameters)


def auto_executor_name(config: Config, missing: int, cores: int | None = None) -> str:
    """What ``runtime.executor.name=auto`` runs ``missing`` runs on: ``pool`` on CPU when more
    than one run is missing and there is more than one core (and parallelism), else ``local``."""
    cores = cores or cpu_cores()
    if resolve_device(config.runtime.device).type != "cpu" or missing < 2:
        return "local"
    return "pool" if min(cores, resolved_parallelism(config.runtime.executor, cores)) > 1 else "local"


class AutoExecutor(Executor):
    """``runtime.executor.name=auto``: :class:`PoolExecutor` or :class:`LocalExecutor`, chosen per
    sweep by :func:`auto_executor_name` from the device and the number of missing runs."""

    name = "auto"

    def execute(self, config, jobs, output_dir, what):
        complete = _complete_runs(config, jobs, output_dir, strict=True)
        missing = sum(outcome is None for outcome in complete)
        chosen = PoolExecutor(config) if auto_executor_name(config, missing) == "pool" else LocalExecutor(config)
        chosen.complete = complete
        self.name = f"auto: {chosen.name}"
        return chosen.execute(config, jobs, output_dir, what)


def make_executor(config: Config) -> Executor:
    """The executor ``config.runtime.executor.name`` names."""
    name = config.runtime.executor.name
    if name == "local":
        return LocalExecutor(config)
    if name == "pool":
        return PoolExecutor(config)
    if name == "auto":
        return AutoExecutor(config)
    return SubmititExecutor(config, "local" if name == "submitit-local" else "slurm")
