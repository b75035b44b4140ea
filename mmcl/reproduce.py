"""Batch reproduction: sweeps of runs for the notebooks, and the papermill sequence behind
``mmcl reproduce``.

The notebooks call :func:`prepare_data`, :func:`run_sweep` and :func:`run_ablations`; ``mmcl
reproduce`` executes the notebooks in order with papermill (:func:`reproduce`), writing each
executed notebook to ``<output_dir>/<profile>/notebooks/``, next to the runs. Complete runs of
the same identity are reused by the engine, so an interrupted reproduction resumes where it
stopped. Before the notebooks run, complete runs made by other code (another source fingerprint)
are listed (:func:`stale_runs`); ``rerun_stale`` removes them so the notebooks make them again.
The notebooks' list parameters (``seeds``, ``methods``, ``benchmarks``, ``scenarios``) may be
strings that parse to lists, as papermill's ``-p seeds "[0]"`` passes them
(:func:`mmcl.config.list_parameter`).
"""
from __future__ import annotations

import ast
import json
import logging
import multiprocessing
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from mmcl import environment, records, results, tuned
from mmcl.config import SCENARIOS, Config, ConfigError, list_parameter, load_config
from mmcl.data.benchmarks import generate_cached, load_benchmark, synthetic_cache_path
from mmcl.progress import enabled

NOTEBOOKS = ("00_data_prep", "10_class_incremental", "11_domain_incremental", "12_modality_incremental",
             "20_ablations", "30_figures_and_tables")
# The three scenario sweeps are one source notebook, executed once per scenario under the sequence's
# names (``--only 10_class_incremental``, runs/<profile>/notebooks/10_class_incremental.ipynb) with
# its ``scenario`` parameter injected: executed notebook -> (source notebook, injected parameters).
# A notebook not listed is its own source, with nothing injected.
SCENARIO_NOTEBOOK = "10_scenario"
NOTEBOOK_SOURCES: dict[str, tuple[str, dict]] = {
    "10_class_incremental": (SCENARIO_NOTEBOOK, {"scenario": "class_incremental"}),
    "11_domain_incremental": (SCENARIO_NOTEBOOK, {"scenario": "domain_incremental"}),
    "12_modality_incremental": (SCENARIO_NOTEBOOK, {"scenario": "modality_incremental"}),
}
SCENARIO_OF_NOTEBOOK = {name: injected["scenario"] for name, (_, injected) in NOTEBOOK_SOURCES.items()}
# The benchmarks of a scenario notebook whose ``benchmarks`` parameter is None, where they are not
# the profile's for the scenario (its benchmark, ``also_on`` and ``appendix``; :func:`sweep_jobs`):
# class-incremental learning runs on both class-incremental benchmarks.
SCENARIO_NOTEBOOK_BENCHMARKS = {"class_incremental": ["av-events", "ego-activities"]}
_PACKAGE_DIR = Path(__file__).resolve().parent
# An installed wheel ships the notebooks inside the package (mmcl/notebooks, see pyproject.toml);
# a source checkout (editable install, PYTHONPATH) has them in its top-level notebooks/ folder.
# The method pages whose claims blocks `mmcl reproduce --update-docs` rewrites (a source checkout).
DOCS_DIR = _PACKAGE_DIR.parent / "docs" / "methods"
NOTEBOOK_DIR = next((d for d in (_PACKAGE_DIR / "notebooks", _PACKAGE_DIR.parent / "notebooks") if d.is_dir()),
                    _PACKAGE_DIR.parent / "notebooks")


def compatible_methods(scenario: str, methods: Sequence[str] | None = None) -> list[str]:
    """Registered methods compatible with ``scenario`` (all of them when ``methods`` is None), in
    the reading order of the tables. A named method that is not compatible is left out."""
    from mmcl.methods import REGISTRY, method_class  # open_clip and the methods (seconds)

    names = list(REGISTRY) if methods is None else [method_class(m).name for m in methods]
    return results.sort_methods(m for m in names if scenario in REGISTRY[m].compatible_scenarios)


def _run_all(config: Config, jobs: list[dict], output_dir: str | Path | None, what: str) -> pd.DataFrame:
    """Run ``jobs`` (keyword arguments of :func:`mmcl.engine.run`) on the executor of
    ``config.runtime.executor`` (:mod:`mmcl.executors`), each reported as it finishes with the
    sweep's ETA (:mod:`mmcl.progress`: a line per run in a log or an executed notebook, a sweep bar
    in a terminal or a live notebook)."""
    from mmcl.executors import make_executor  # the engine: open_clip and the methods (seconds)

    return results.load_runs(*make_executor(config).run_jobs(config, jobs, output_dir, what))


def method_jobs(config: Config, scenario: str, method: str, benchmarks: Sequence[str],
                variants: Iterable[tuple[str, dict]], seeds: Sequence[int], name_full_run: bool = False
                ) -> list[dict]:
    """The runs of one method on one scenario (keyword arguments of :func:`mmcl.engine.run`): on each
    of ``benchmarks`` whose samples have what the method needs (:meth:`~mmcl.methods.base.Method.
    inapplicable`: e.g. av-cil on a benchmark without audio has no row, its docs say why), the full
    method and then each of ``variants`` (name, overrides), each on every seed in turn. A full-method
    job names ``variant`` and ``hparams`` as None when ``name_full_run`` (the ablation jobs), else
    leaves them out (the sweep jobs); a variant's job always names them."""
    from mmcl.methods import REGISTRY  # open_clip and the methods (seconds)

    cls = REGISTRY[method]
    jobs = []
    for benchmark in benchmarks:
        if benchmark in config.benchmarks and cls.inapplicable(config.benchmarks[benchmark].modalities):
            continue
        for variant, overrides in [(None, None), *variants]:
            for seed in seeds:
                job = {"scenario": scenario, "benchmark": benchmark, "method": method, "seed": int(seed)}
                jobs.append(job | ({"variant": variant, "hparams": overrides} if variant or name_full_run else {}))
    return jobs


def sweep_jobs(config: Config, scenario: str, methods: Sequence[str] | None = None, seeds: Sequence[int] = (0,),
               benchmarks: Sequence[str] | None = None) -> list[dict]:
    """The runs of a scenario sweep (keyword arguments of :func:`mmcl.engine.run`); with
    ``benchmarks=None`` the profile's benchmark for the scenario, its ``also_on`` benchmarks and its
    appendix benchmarks. Every
    compatible method (:attr:`~mmcl.methods.base.Method.required_modalities`: left out of a
    benchmark whose samples lack what it needs) runs with its defaults and, where the scenario is one of its
    ``comparison_scenarios``, with each of its fair-comparison variants (``Method.comparisons``).
    ``methods``, ``seeds`` and ``benchmarks`` may be strings that parse to lists (papermill's
    ``-p seeds "[0]"``, ``"0 1 2"``; :func:`mmcl.config.list_parameter`)."""
    # open_clip and the methods (seconds): `mmcl claims` imports this module for DOCS_DIR alone
    from mmcl.methods import REGISTRY

    methods, seeds = list_parameter(methods, "methods"), list_parameter(seeds, "seeds", int)
    benchmarks = list_parameter(benchmarks, "benchmarks") or profile_benchmarks(config, scenario)
    jobs = []
    for benchmark in benchmarks:
        for method in compatible_methods(scenario, methods):
            cls = REGISTRY[method]
            comparisons = cls.comparisons.items() if scenario in cls.comparison_scenarios else ()
            jobs += method_jobs(config, scenario, method, [benchmark], comparisons, seeds)
    return jobs


def profile_benchmarks(config: Config, scenario: str) -> list[str]:
    """The profile's benchmarks for ``scenario``: its benchmark, its ``also_on`` and its
    ``appendix`` benchmarks (``scenarios.<name>`` of the profile)."""
    # open_clip and the methods (seconds): `mmcl claims` imports this module for DOCS_DIR alone
    from mmcl.hparams import scenario_benchmark

    entry = config.scenarios.get(scenario)
    return [scenario_benchmark(config, scenario, None), *([*entry.also_on, *entry.appendix] if entry else [])]


def scenario_notebook_benchmarks(config: Config, scenario: str, benchmarks: Sequence[str] | str | None = None
                                 ) -> list[str]:
    """The benchmarks the scenario notebook sweeps for ``scenario``: ``benchmarks`` when given (a
    list, or a string that parses to one), else :data:`SCENARIO_NOTEBOOK_BENCHMARKS` of the scenario,
    else the profile's (:func:`profile_benchmarks`)."""
    if scenario not in SCENARIOS:
        raise ConfigError(f"scenario {scenario!r}: unknown; known: {list(SCENARIOS)}")
    chosen = list_parameter(benchmarks, "benchmarks") or SCENARIO_NOTEBOOK_BENCHMARKS.get(scenario)
    return list(chosen) if chosen else profile_benchmarks(config, scenario)


def run_sweep(config: Config, scenario: str, methods: Sequence[str] | None = None, seeds: Sequence[int] = (0,),
              benchmarks: Sequence[str] | None = None, output_dir: str | Path | None = None) -> pd.DataFrame:
    """Run (or reuse) every method x benchmark x seed of ``scenario``; return their results frame.

    ``methods=None``: every registered method compatible with the scenario. ``benchmarks=None``:
    the profile's benchmark for the scenario. Runs go to ``output_dir`` (default: the profile's
    ``runtime.output_dir``).
    """
    return _run_all(config, sweep_jobs(config, scenario, methods, seeds, benchmarks), output_dir, scenario)


def ablation_jobs(config: Config, methods: Sequence[str] | None = None, seeds: Sequence[int] = (0,),
                  scenarios: Sequence[str] | None = None) -> list[dict]:
    """The runs of an ablation study: for each method with ``ablations``, the full method and every
    variant, on each seed, on its scenarios (``scenarios=None``: the first scenario the method
    declares compatible), on the profile's benchmark for the scenario and the benchmarks of its
    ``scenarios.<name>.ablations_also_on``. ``methods``, ``seeds`` and ``scenarios`` may be strings
    that parse to lists (:func:`mmcl.config.list_parameter`)."""
    # open_clip and the methods (seconds): `mmcl claims` imports this module for DOCS_DIR alone
    from mmcl.hparams import scenario_benchmark
    from mmcl.methods import REGISTRY

    methods, seeds = list_parameter(methods, "methods"), list_parameter(seeds, "seeds", int)
    scenarios = list_parameter(scenarios, "scenarios")
    jobs = []
    for method in registered_methods(methods):
        cls = REGISTRY[method]
        if not cls.ablations:
            continue
        chosen = [s for s in cls.compatible_scenarios if scenarios is None or s in scenarios]
        for scenario in chosen[:1] if scenarios is None else chosen:
            also = config.scenarios[scenario].ablations_also_on if scenario in config.scenarios else []
            jobs += method_jobs(config, scenario, method, [scenario_benchmark(config, scenario, None), *also],
                                cls.ablations.items(), seeds, name_full_run=True)
    return jobs


def registered_methods(methods: Sequence[str] | None = None) -> list[str]:
    """Registered methods (all when ``methods`` is None), validated, in reading order."""
    from mmcl.methods import REGISTRY, method_class  # open_clip and the methods (seconds)

    return results.sort_methods(REGISTRY if methods is None else [method_class(m).name for m in methods])


def run_ablations(config: Config, methods: Sequence[str] | None = None, seeds: Sequence[int] = (0,),
                  scenarios: Sequence[str] | None = None, output_dir: str | Path | None = None) -> pd.DataFrame:
    """Run every registered ablation variant (see :func:`ablation_jobs`) and return the results of
    the variants and of their full methods. Full-method runs already made by the scenario
    notebooks (same profile, overrides, seeds and output folder) are reused, not re-run."""
    return _run_all(config, ablation_jobs(config, methods, seeds, scenarios), output_dir, "ablations")


def prepare_data(config: Config, benchmarks: Sequence[str] | None = None, raw_root: str | Path = "data/raw",
                 progress: bool = False, seeds: Sequence[int] | str | None = None) -> dict:
    """Make every benchmark of the profile ready and return them by name.

    Embedded (synthetic) benchmarks are generated and cached, and the self-pre-trained tiny
    backbone of each of ``seeds`` (default: the profile's ``runtime.seeds``; one backbone per seed
    with ``model.pretrain.per_run_seed``) is trained once and cached. Real (``source: processed``,
    the ``paper`` profile) benchmarks are prepared by ``data_prep`` from ``<raw_root>/<dataset>``
    into the folder the profile names, unless already complete.
    """
    # the backbone and the engine: open_clip and the methods (seconds)
    from mmcl.executors import cpu_cores
    from mmcl.models.factory import build_encoder
    from mmcl.models.pretraining import pretrain_tiny_clip, pretrained_backbone_missing, tiny_cache_path

    progress = enabled(progress)  # bars only in a terminal or a live notebook (mmcl.progress)
    names = list(list_parameter(benchmarks, "benchmarks") or config.benchmarks)
    processed = [n for n in names if config.benchmarks[n].source == "processed"]
    if processed:
        prepare_real_datasets(config, processed, raw_root)
    missing = [n for n in names if (path := synthetic_cache_path(config, n)) is not None and not path.is_file()]
    backbones = {}  # cache file -> the configuration that pre-trains it, one per distinct backbone
    for seed in list_parameter(seeds, "seeds", int) or config.runtime.seeds:
        seeded = config.model_copy(update={"seed": seed})
        if pretrained_backbone_missing(seeded):
            backbones.setdefault(tiny_cache_path(seeded), seeded)
    workers = min(cpu_cores(), len(missing) + len(backbones))
    if workers > 1:
        # Each pre-training runs on one thread in a spawned process, beside the others and the
        # benchmarks' generation. The processes inherit this one's environment as it is (no
        # single-thread settings, unlike the sweeps' workers): the generator's numpy products round
        # differently under another BLAS thread count, and the files must be the ones this process
        # would write. Pre-trainings first: they take longest.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(pretrain_tiny_clip, seeded) for seeded in backbones.values()]
            futures += [pool.submit(generate_cached, config, name) for name in missing]
            for future in futures:
                future.result()
    else:
        for seeded in backbones.values():
            pretrain_tiny_clip(seeded, progress=progress)
    encoder = build_encoder(config, "cpu", progress=progress)  # pre-trains and caches config.seed's backbone once
    return {name: load_benchmark(config, name, encoder.tokenizer, progress=progress) for name in names}


def prepare_real_datasets(config: Config, benchmarks: Sequence[str], raw_root: str | Path = "data/raw") -> list:
    """Prepare the real datasets behind ``benchmarks`` with ``data_prep.prepare`` (resumable; a
    complete preparation with the same settings is reused). Returns data_prep's summaries."""
    try:
        import data_prep  # the repository's data preparation package: absent from an installed wheel
    except ImportError as error:
        raise ConfigError("benchmarks " + ", ".join(benchmarks) + " are real datasets, prepared by the data_prep "
                          "package at the repository root: run from the repository root") from error
    dataset_of = {benchmark: dataset for dataset, benchmark in data_prep.BENCHMARK_OF.items()}
    summaries = []
    for benchmark in benchmarks:
        if benchmark not in dataset_of:
            raise ConfigError(f"benchmark {benchmark!r}: no data_prep dataset feeds it (known: {sorted(dataset_of)})")
        dataset = dataset_of[benchmark]
        out_dir = config.benchmarks[benchmark].path
        print(f"preparing {dataset} -> {out_dir}", flush=True)
        summaries.append(data_prep.prepare(dataset, Path(raw_root) / dataset, out_dir, config))
    return summaries


# ------------------------------------------------------------------------------------- papermill
class NotebookFailed(RuntimeError):
    """A notebook of the sequence raised; the message names the notebook and the cell."""


def _papermill_logging() -> None:
    """Stream the notebooks' progress lines (one per run, printed by :func:`_run_all`), not every
    table and figure they display, nor papermill's per-cell chatter."""
    logger = logging.getLogger("papermill")
    if any(getattr(h, "_mmcl", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler._mmcl = True
    handler.setFormatter(logging.Formatter("    %(message)s"))

    def keep(record: logging.LogRecord) -> bool:
        record.msg = str(record.msg).rstrip()  # cell output arrives with its own newline
        return record.msg.startswith(("[", "preparing ")) or " runs in " in record.msg or " submitting " in record.msg

    handler.addFilter(keep)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _kernel_manager() -> tuple[type, dict]:
    """The kernel manager class of one papermill execution, and the nbclient hooks it reads.

    Its kernel talks over local IPC sockets, not TCP: ipykernel warns on every kernel over TCP
    ("Kernel is running over TCP without encryption ..."), which papermill relays for each notebook;
    a kernel that papermill starts on the same machine needs no TCP ports at all.

    It interrupts the kernel only while a cell runs. jupyter_client interrupts the kernel's process
    group (SIGINT) first whenever it shuts a kernel down, to stop the code it may be running; but
    papermill, after the last cell, asks the kernel for its info and shuts it down as soon as the
    reply arrives, while the kernel may still be in that request's handler, where ipykernel lets
    SIGINT raise: a notebook that ran well then left "[IPKernelApp] ERROR | KeyboardInterrupt caught
    in kernel." in the log (a race, lost by a kernel descheduled for a millisecond). With no cell
    running the shutdown request alone stops the kernel; a cell still running (a reproduction
    interrupted with Ctrl-C, a timeout) is interrupted as before, so that it unwinds."""
    # papermill's kernel machinery: only when notebooks run
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    running: set[int] = set()  # the code cell papermill waits on: from its execute request to its reply

    class NotebookKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self) -> str:
            return "ipc"

        async def _async_interrupt_kernel(self) -> None:  # what shutdown_kernel calls first
            if running:
                await super()._async_interrupt_kernel()

    hooks = {"on_cell_execute": lambda cell_index, **_: running.add(cell_index),
             "on_cell_executed": lambda cell_index, **_: running.discard(cell_index)}
    return NotebookKernelManager, hooks


def notebook_source(name: str, notebook_dir: Path = NOTEBOOK_DIR) -> tuple[Path, dict]:
    """The source notebook that notebook ``name`` of the sequence is executed from, and the
    parameters injected into it (:data:`NOTEBOOK_SOURCES`); any other name is its own source."""
    source, injected = NOTEBOOK_SOURCES.get(name, (name, {}))
    return notebook_dir / f"{source}.ipynb", dict(injected)


def execute_notebook(name: str, output_path: Path, parameters: dict, notebook_dir: Path = NOTEBOOK_DIR,
                     kernel: str = "python3", log_output: bool = True) -> float:
    """Execute notebook ``name`` of the sequence (from its source, :func:`notebook_source`, with
    the source's injected parameters over ``parameters``) with papermill into ``output_path``;
    return its seconds. Raises :class:`NotebookFailed`."""
    # papermill (and nbclient, jupyter): only when notebooks run
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source, injected = notebook_source(name, notebook_dir)
    if not source.is_file():
        raise NotebookFailed(f"notebook {source} not found")
    parameters = parameters | injected  # the executed notebook's name fixes its scenario
    with records.writing(output_path):
        output_path.parent.mkdir(parents=True, exist_ok=True)
    manager, hooks = _kernel_manager()
    started = time.perf_counter()
    try:
        papermill.execute_notebook(str(source), str(output_path), parameters=parameters, kernel_name=kernel,
                                   progress_bar=False, log_output=log_output, cwd=str(Path.cwd()),
                                   kernel_manager_class=manager, **hooks)
    except PapermillExecutionError as error:
        first_line = next((line for line in error.source.splitlines() if line.strip()), "")
        raise NotebookFailed(
            f"notebook {name}.ipynb{'' if source.stem == name else f' (from {source.name})'} failed in cell "
            f"{error.cell_index} (execution count {error.exec_count}), "
            f"which starts with: {first_line!r}\n  {error.ename}: {error.evalue}\n"
            f"  the executed notebook with the full traceback: {output_path}") from None
    return time.perf_counter() - started


def _effective_parameters(source: Path, parameters: dict) -> dict:
    """The notebook's parameters-cell defaults with ``parameters`` applied."""
    import papermill  # only when notebooks run

    values = {}
    for name, spec in papermill.inspect_notebook(str(source)).items():
        try:
            values[name] = ast.literal_eval(spec["default"])
        except (ValueError, SyntaxError):
            values[name] = spec["default"]
    return values | parameters


def _runs_complete(name: str, source: Path, parameters: dict) -> bool:
    """Whether every run that notebook ``name`` would make with ``parameters`` is already complete
    (with the identity the notebook asks for)."""
    from mmcl.runs import is_reusable, locate_run  # open_clip and the methods (seconds)

    values = _effective_parameters(source, parameters)
    config = load_config(values["profile"], values.get("overrides") or [])
    if name in SCENARIO_OF_NOTEBOOK:
        scenario = values["scenario"]
        jobs = sweep_jobs(config, scenario, values.get("methods"), values["seeds"],
                          scenario_notebook_benchmarks(config, scenario, values.get("benchmarks")))
    elif name == "20_ablations":
        jobs = ablation_jobs(config, values.get("methods"), values["seeds"], values.get("scenarios"))
    else:
        return True
    root = values.get("output_dir") or config.runtime.output_dir
    return all(is_reusable(locate_run(config, output_dir=root, **job)) for job in jobs)


def up_to_date(name: str, executed: Path, parameters: dict, notebook_dir: Path = NOTEBOOK_DIR) -> bool:
    """A notebook need not run again when its executed copy finished without error, with the same
    parameters (those injected from :data:`NOTEBOOK_SOURCES` included), after the last change of its
    source notebook, and every run it makes is complete (the figures notebook: newer than every run
    record)."""
    import nbformat  # only when notebooks run

    source, injected = notebook_source(name, notebook_dir)
    parameters = parameters | injected
    if not executed.is_file() or executed.stat().st_mtime < source.stat().st_mtime:
        return False
    try:
        stored = nbformat.read(executed, as_version=4).metadata.get("papermill", {})
    except (OSError, ValueError):  # an unreadable executed copy is simply executed again
        return False
    if stored.get("exception") or stored.get("parameters") != parameters:
        return False
    if name == "30_figures_and_tables":
        runs = Path(parameters["output_dir"]) / parameters["profile"]
        newest = max((p.stat().st_mtime for p in runs.rglob("metrics.json")), default=0.0)
        return newest < executed.stat().st_mtime
    return _runs_complete(name, source, parameters)


def notebook_parameters(name: str, profile: str, overrides: list[str], output_dir: Path, figures_dir: Path,
                        seeds: list[int] | None, update_docs: bool = False) -> dict:
    """The papermill parameters of notebook ``name`` (only those its parameters cell declares), a
    scenario notebook's ``scenario`` included (:data:`NOTEBOOK_SOURCES`). ``update_docs``: the
    figures notebook also rewrites the claims blocks of docs/methods."""
    parameters: dict = {"profile": profile, "overrides": overrides, "output_dir": str(output_dir)}
    if seeds is not None and name != "30_figures_and_tables":  # data preparation: a backbone per seed
        parameters["seeds"] = list(seeds)
    if name == "30_figures_and_tables":
        parameters = {"profile": profile, "output_dir": str(output_dir), "figures_dir": str(figures_dir)}
        if update_docs:
            parameters["docs_dir"] = str(DOCS_DIR)
    if name == "00_data_prep":
        parameters.pop("output_dir")
    return parameters | NOTEBOOK_SOURCES.get(name, (name, {}))[1]


def stale_runs(root: str | Path, fingerprint: str | None = None) -> list[tuple[Path, str | None]]:
    """Complete runs at or below ``root`` made by other code: (run folder, its recorded source
    fingerprint, None when unrecorded), sorted by folder. ``fingerprint``: the current code's
    (default: :func:`mmcl.records.source_fingerprint`)."""
    current = fingerprint or records.source_fingerprint()
    stale = []
    for run_dir in results.find_run_dirs(root):
        try:
            recorded = json.loads((run_dir / "metrics.json").read_text()).get("run", {}).get("source_fingerprint")
        except (OSError, ValueError):
            recorded = None
        if recorded != current:
            stale.append((run_dir, recorded))
    return stale


def report_stale_runs(root: Path, remove: bool = False, shown: int = 10) -> list[Path]:
    """Print how many complete runs under ``root`` were made by other code, and the first
    ``shown`` of them (folder and source fingerprint); with ``remove``, delete those run folders
    so the notebooks make them again. Returns the stale run folders."""
    stale = stale_runs(root)
    if not stale:
        return []
    total = len(results.find_run_dirs(root))
    print(f"{len(stale)} of {total} complete runs under {root} were made by other code (their source "
          f"fingerprint differs from this code's {records.source_fingerprint()}):", flush=True)
    for run_dir, fingerprint in stale[:shown]:
        print(f"  {run_dir.relative_to(root)}  source {fingerprint or 'unknown'}", flush=True)
    if len(stale) > shown:
        print(f"  ... and {len(stale) - shown} more", flush=True)
    if remove:
        for run_dir, _ in stale:
            shutil.rmtree(run_dir)
        print(f"--rerun-stale: removed {len(stale)} run folder{'s' if len(stale) != 1 else ''}; the notebooks "
              f"train them again", flush=True)
    else:
        print("they are reused as they are; --rerun-stale removes them and trains them again", flush=True)
    return [run_dir for run_dir, _ in stale]


def _copy_tuned_defaults(profile: str, tuning_dir: Path) -> None:
    """Put the profile's tuned defaults (the packaged tuning records: grid, trials, scores and
    choice per scenario and method) beside the runs they configure, as ``tuned-defaults.yaml``."""
    source = tuned.tuned_file(profile)
    if source.is_file():
        records.atomic_write_text(tuning_dir / "tuned-defaults.yaml", source.read_text())


def reproduce(profile: str = "tiny", overrides: Sequence[str] = (), output_dir: str | Path | None = None,
              figures_dir: str | Path = "figures", seeds: Sequence[int] | None = None,
              notebooks: Sequence[str] = NOTEBOOKS, notebook_dir: Path = NOTEBOOK_DIR,
              kernel: str = "python3", extra_parameters: dict[str, dict] | None = None,
              rerun: bool = False, rerun_stale: bool = False, update_docs: bool = False) -> dict[str, float]:
    """Execute the notebook sequence with papermill; return seconds per notebook.

    Executed notebooks are written to ``<output_dir>/<profile>/notebooks/``; tables and figures
    to ``figures_dir``. The notebooks' kernels run unattended, so they show no bars
    (:mod:`mmcl.progress`): each sweep prints one line per run with its ETA, which this process relays.
    ``extra_parameters``: notebook name -> more papermill parameters (e.g. ``{"20_ablations":
    {"methods": ["lwf"]}}``). A notebook whose executed copy is :func:`up_to_date` is skipped
    (0 seconds) unless ``rerun``. Complete runs of the profile made by other code are listed
    first and, with ``rerun_stale``, removed so the notebooks train them again (see
    :func:`report_stale_runs`). ``seeds=None``: the profile's ``runtime.seeds``. ``update_docs``:
    the figures notebook rewrites the claims blocks of :data:`DOCS_DIR`. Raises
    :class:`NotebookFailed` naming the notebook and cell.
    """
    overrides = [*overrides, "runtime.progress=false"]
    config = load_config(profile, overrides)  # fail here, not in the first notebook, on a bad override
    output_dir = Path(output_dir or config.runtime.output_dir).resolve()
    figures_dir = Path(figures_dir).resolve()
    unknown = [n for n in notebooks if n not in NOTEBOOKS and not (notebook_dir / f"{n}.ipynb").is_file()]
    if unknown:
        raise ConfigError(f"unknown notebooks {unknown}; the sequence is {list(NOTEBOOKS)}")
    for source in [n for n in notebooks if n not in NOTEBOOKS]:  # 10_scenario: as each of its scenarios' names
        executed_as = [n for n, (s, _) in NOTEBOOK_SOURCES.items() if s == source]
        if executed_as:
            raise ConfigError(f"notebook {source} runs as {', '.join(executed_as)}, each with its scenario: name those")
    _papermill_logging()
    environment.warn_lock_differences()
    from mmcl.executors import make_executor  # the engine: open_clip and the methods (seconds)

    make_executor(config).check(config, output_dir)  # e.g. slurm without a cluster: fail before the notebooks
    stale = report_stale_runs(output_dir / config.profile, remove=rerun_stale)
    executed = output_dir / config.profile / "notebooks"
    _copy_tuned_defaults(config.profile, output_dir / config.profile / "tuning")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    for number, name in enumerate(notebooks, 1):
        parameters = notebook_parameters(name, profile, list(overrides), output_dir, figures_dir,
                                         list(config.runtime.seeds if seeds is None else seeds), update_docs)
        parameters.update((extra_parameters or {}).get(name, {}))
        target = executed / f"{name}.ipynb"
        # Removed stale runs must leave the tables too, even when no notebook makes them again.
        tables_lost_runs = rerun_stale and stale and name == "30_figures_and_tables"
        if not rerun and not tables_lost_runs and up_to_date(name, target, parameters, notebook_dir):
            timings[name] = 0.0
            print(f"[{number}/{len(notebooks)}] {name}: up to date, skipped (--rerun-notebooks runs it)", flush=True)
            continue
        print(f"[{number}/{len(notebooks)}] {name} (profile {config.profile})", flush=True)
        timings[name] = execute_notebook(name, target, parameters, notebook_dir, kernel)
        print(f"[{number}/{len(notebooks)}] {name} done in {timings[name]:.0f} s", flush=True)
    print(f"reproduced in {time.perf_counter() - started:.0f} s; runs and executed notebooks under "
          f"{output_dir / config.profile}, tables and figures in {figures_dir}", flush=True)
    print(time_report(timings, output_dir / config.profile), flush=True)
    return timings


def slowest_runs(root: str | Path, count: int | None = 10) -> list[dict]:
    """The ``count`` runs under ``root`` (None: all) with the most seconds (their metrics.json
    ``timing``: the session that finished them), slowest first: run folder, seconds, training,
    evaluation and forgetting-probe seconds."""
    rows = []
    for run_dir in results.find_run_dirs(root):
        try:
            timing = json.loads((run_dir / "metrics.json").read_text()).get("timing", {})
        except (OSError, ValueError):
            continue
        rows.append({"run": str(Path(run_dir).relative_to(root)), "seconds": timing.get("run_seconds_this_session", 0.0),
                     "train_seconds": timing.get("train_seconds", 0.0), "eval_seconds": timing.get("eval_seconds", 0.0),
                     "probe_seconds": timing.get("forgetting_decomposition_seconds", 0.0)})
    return sorted(rows, key=lambda r: -r["seconds"])[:count]


_SECONDS = ("seconds", "train_seconds", "eval_seconds", "probe_seconds")


def seconds_per_method(runs: list[dict]) -> list[dict]:
    """Run seconds summed per method (variants and hyper-parameter differences with their method)
    over ``runs`` (rows of :func:`slowest_runs`), most first: method, runs, seconds, training,
    evaluation and forgetting-probe seconds."""
    totals: dict[str, dict] = {}
    for row in runs:
        method = Path(row["run"]).parts[-2].split("@")[0].split("~")[0]
        total = totals.setdefault(method, {"method": method, "runs": 0} | dict.fromkeys(_SECONDS, 0.0))
        total["runs"] += 1
        for key in _SECONDS:
            total[key] += row.get(key, 0.0)
    return sorted(totals.values(), key=lambda t: (-t["seconds"], t["method"]))


def time_report(timings: dict[str, float], root: str | Path, count: int = 10) -> str:
    """The table ``mmcl reproduce`` ends with: seconds per notebook (0: up to date, skipped), the
    ``count`` slowest runs under ``root`` (from their records, :func:`slowest_runs`), and the run
    seconds per method (:func:`seconds_per_method`)."""
    lines = ["time per notebook (s):"]
    lines += [f"  {name:<26}{seconds:8.1f}" + ("  (up to date)" if seconds == 0 else "")
              for name, seconds in timings.items()]
    lines.append(f"  {'total':<26}{sum(timings.values()):8.1f}")
    runs = slowest_runs(root, count=None)  # every record read once, for both tables
    slowest = runs[:count]
    if slowest:
        lines.append(f"slowest runs (s; run, of it training and evaluation), of {len(results.find_run_dirs(root))} "
                     f"under {root}:")
        lines += [f"  {r['seconds']:7.1f} {r['train_seconds']:7.1f} {r['eval_seconds']:7.1f}  {r['run']}" for r in slowest]
        lines.append("run seconds per method (runs; seconds, of it training, evaluation and the forgetting probe):")
        per_method = seconds_per_method(runs)
        total = {"method": "total", "runs": sum(t["runs"] for t in per_method)}
        total |= {key: sum(t[key] for t in per_method) for key in _SECONDS}
        lines += [f"  {t['method']:<16}{t['runs']:5d} {t['seconds']:8.1f} {t['train_seconds']:8.1f} "
                  f"{t['eval_seconds']:7.1f} {t['probe_seconds']:7.1f}" for t in per_method + [total]]
    return "\n".join(lines)
