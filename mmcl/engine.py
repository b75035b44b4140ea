"""The continual-learning engine: one loop for every method and scenario.

For each task: :meth:`Method.begin_task`, epochs of :meth:`Method.training_loss` + optimizer
steps, :meth:`Method.end_task`, then evaluation on *every* task of the stream (seen ones over
the seen label space; unseen ones with their classes added, for forward transfer). Each finished task
is checkpointed and appended to ``tasks.jsonl``; ``metrics.json`` is written last (:mod:`mmcl.runs`).

Determinism: the global RNGs are re-seeded from (run seed, task) at the start of every task and
the data order from (run seed, task, epoch), so a run resumed after task k reproduces the
uninterrupted run exactly (on the same device and library versions).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from mmcl import kernels, records, runs, tracking
from mmcl.config import Config, ConfigError
from mmcl.data.benchmarks import load_benchmark, require_data
from mmcl.data.dataset import MultiModalDataset
from mmcl.data.scenarios import build_stream
from mmcl.data.stream import Stream, Task
from mmcl.hparams import resolved_method_values, scenario_benchmark
from mmcl.methods import method_class
from mmcl.methods.base import Method, RunContext
from mmcl.models import prefix_cache
from mmcl.models.factory import build_encoder
from mmcl.progress import bar as progress_bar, enabled as progress_enabled, sweep_active
from mmcl.runs import RunLocation, RunResult
from mmcl.runtime import (Untouched, autocast_for, compile_method, pins_memory, probes_forgetting, resolve_device,
                          run_threads, seed_everything)
from mmcl.scoring import evaluate_task, ncm_of_mode
from mmcl.training import make_optimizer, train_step, training_data

log = logging.getLogger(__name__)


def evaluation_modes(scenario: str) -> list[str]:
    return ["modality_aware", "modality_agnostic"] if scenario == "modality_incremental" else ["standard"]


def build_run(config: Config, scenario: str, method: str, seed: int, benchmark: str | None = None,
              device: torch.device | None = None, progress: bool = False) -> tuple[Method, Stream]:
    """The backbone, the task stream and the method of one run (used by the engine and ``bench``)."""
    kernels.require(config.runtime.portable_kernels)
    if config.seed != seed:  # the run's seed picks its backbone too (model.pretrain.per_run_seed)
        config = config.model_copy(update={"seed": seed})
    method_cls = method_class(method)
    if scenario not in method_cls.compatible_scenarios:
        raise ConfigError(f"method {method!r} is not compatible with scenario {scenario!r} "
                          f"(it declares {list(method_cls.compatible_scenarios)})")
    hparams = method_cls.make_config(resolved_method_values(config, scenario, method))
    device = device or resolve_device(config.runtime.device)
    benchmark = scenario_benchmark(config, scenario, benchmark)
    require_data(config, benchmark)  # a real dataset not prepared yet: said before the backbone loads (or downloads)
    progress = progress_enabled(progress)  # pre-training and generation bars: only where bars fit
    encoder = build_encoder(config, device, progress=progress)
    data = load_benchmark(config, benchmark, encoder.tokenizer, progress=progress)
    stream = build_stream(scenario, data, seed)
    stream.data_sha256 = data.digest()
    if config.runtime.prefix_cache:  # the frozen computation, once per backbone and benchmark
        prefix_cache.attach(encoder, data, config, stream.data_sha256)
    # The method sees training views: no task's test or validation data (the engine keeps those).
    context = RunContext(config, scenario, stream.class_names, device, [t.training_view() for t in stream.tasks],
                         benchmark=benchmark)
    seed_everything(seed)
    method_obj = method_cls(encoder, context, hparams).to(device)
    if encoder.prefix_cache is not None:
        encoder.prefix_cache.declare(method_obj)
    return compile_method(method_obj, config), stream


def evaluate_stream(method: Method, tasks: list[Task], after: int, modes: list[str], config: Config,
                    device: torch.device, kept: dict[str, list] | None = None) -> dict[str, dict[str, list]]:
    """Accuracy (percent), correct and counts on every task, after training task ``after``.

    ``after = -1`` evaluates before any training with the label space of tasks ``0..j`` for task j.
    ``kept`` (a dict): ``kept[mode][j]`` receives the features seen task j's predictions were computed
    from, for :func:`forgetting_decomposition` (:func:`~mmcl.scoring.evaluate_task`).
    """
    method.eval()
    seen = {c for task in tasks[: after + 1] for c in task.classes}
    results: dict[str, dict[str, list]] = {}
    for mode in modes:
        if mode != modes[0] and not method.uses_modality_id:
            results[mode] = results[modes[0]]  # the method ignores the modality ID: same numbers
            continue
        row = {"accuracy": [], "correct": [], "count": []}
        if kept is not None:
            kept[mode] = [[] for _ in tasks[: after + 1]]
        for j, task in enumerate(tasks):
            space = seen if j <= after else seen | {c for t in tasks[: j + 1] for c in t.classes}
            keep = kept[mode][j] if kept is not None and j <= after else None
            correct, count = evaluate_task(method, task, sorted(space), mode != "modality_agnostic", config, device,
                                           keep)
            row["accuracy"].append(100.0 * correct / count)
            row["correct"].append(correct)
            row["count"].append(count)
        results[mode] = row
    return results


def forgetting_decomposition(method: Method, tasks: list[Task], after: int, modes: list[str],
                             results: dict[str, dict[str, list]], config: Config,
                             device: torch.device, kept: dict[str, list] | None = None) -> dict[str, dict | None]:
    """After training task ``after``: the nearest-class-mean probe (:mod:`mmcl.forgetting`) on the
    method's current representation, beside its own classifier, per evaluation mode.

    The class means come from the training data of tasks ``0..after`` (every seen class; at most
    ``runtime.forgetting_decomposition_per_class`` samples of each class per task, the first ones); each
    seen task's evaluation data is scored over the seen classes, as :func:`evaluate_stream` scores
    it. The own classifier's numbers are ``results`` (the row :func:`evaluate_stream` just
    computed), not computed again, and so are the evaluation features where it kept them (``kept``, see
    :func:`evaluate_stream`). Per mode: ``ncm_accuracy``, ``ncm_correct``, ``count`` (tasks
    ``0..after``), and ``own_old`` / ``ncm_old``, the sample-weighted accuracy on the tasks before
    ``after`` (None after the first task); None for a mode where the method has no representation
    (:meth:`~mmcl.methods.base.Method.representation`).

    Neutral: no gradient, every module's train/eval flag and the global random generators are put
    back (:class:`Untouched`), no data order changes (unshuffled batches; training draws its order
    from its own generator), and the frozen prefix cache may build a table earlier, but with the same
    rows whoever builds it first; so every other number of the run stays the same bytes (on CPU,
    tested for every method: ``tests/test_forgetting_decomposition.py``).
    """
    seen_tasks = tasks[: after + 1]
    classes = sorted({c for task in seen_tasks for c in task.classes})
    decomposition: dict[str, dict | None] = {}
    with Untouched(method, device), autocast_for(config, device):
        method.eval()
        for mode in modes:
            if mode != modes[0] and not method.uses_modality_id:
                decomposition[mode] = decomposition[modes[0]]  # as evaluate_stream: the same numbers
                continue
            known = mode != "modality_agnostic"
            decomposition[mode] = ncm_of_mode(method, seen_tasks, classes, known, config, device,
                                              (kept or {}).get(mode))
            if decomposition[mode] is None:
                continue
            own_correct, counts = results[mode]["correct"][:after], results[mode]["count"][:after]
            ncm_correct = decomposition[mode]["ncm_correct"][:after]
            decomposition[mode]["own_old"] = 100.0 * sum(own_correct) / sum(counts) if after else None
            decomposition[mode]["ncm_old"] = 100.0 * sum(ncm_correct) / sum(counts) if after else None
    return decomposition


def train_task(method: Method, task: Task, datasets: list[MultiModalDataset], config: Config, seed: int,
               device: torch.device, progress: bool, on_step=None) -> dict:
    """Epochs of optimizer steps on ``datasets`` (batches of different modality sets interleaved);
    ``on_step(loss)`` is called after each step (experiment tracking)."""
    optimizer = make_optimizer(method, config)
    train = config.train
    steps, samples, loss_sum, started = 0, 0, 0.0, time.perf_counter()
    batches_per_epoch = sum(d.num_batches(train.batch_size) for d in datasets)
    bar = progress_bar(total=train.epochs * batches_per_epoch, desc=f"task {task.index} ({task.name})",
                       disable=not progress, leave=False, unit="step")
    method.train()
    method.encoder.eval()  # frozen parts keep inference behaviour
    fault_step = max(1, train.epochs * batches_per_epoch // 2)  # where MMCL_FAULT=train:<task> strikes
    for epoch in range(train.epochs):
        generator = torch.Generator().manual_seed(seed * 100_003 + task.index * 1_009 + epoch)
        iterators = [d.batches(train.batch_size, shuffle=True, generator=generator) for d in datasets]
        schedule = torch.cat([torch.full((d.num_batches(train.batch_size),), i) for i, d in enumerate(datasets)])
        for source in schedule[torch.randperm(len(schedule), generator=generator)].tolist():
            batch = next(iterators[source]).to(device, pin_memory=pins_memory(config, device))
            loss, _ = train_step(method, batch, task, optimizer, config, device)
            value = loss.item()
            steps, samples, loss_sum = steps + 1, samples + len(batch), loss_sum + value
            if on_step is not None:
                on_step(value)
            if steps == fault_step:
                records.fault_point("train", task.index)
            bar.update()
            bar.set_postfix(loss=f"{loss_sum / steps:.3f}")
    bar.close()
    seconds = time.perf_counter() - started
    return {"steps": steps, "samples": samples, "mean_loss": loss_sum / max(steps, 1), "train_seconds": seconds,
            "samples_per_second": samples / seconds if seconds > 0 else None}


def run(config: Config, scenario: str, method: str, seed: int | None = None, benchmark: str | None = None,
        output_dir: str | Path | None = None, force: bool = False, progress: bool | None = None,
        variant: str | None = None, hparams: dict | None = None) -> RunResult:
    """Run (or resume, or reuse) one continual-learning run and return its metrics.

    The run's identity (:func:`mmcl.runs.run_identity`: its configuration without ``runtime`` and what
    cannot change its numbers, plus the seed) picks its folder (:func:`mmcl.runs.locate_run`): the profile's
    defaults go to ``<method>/seed<k>``, anything else (``--set methods.replay.per_class=2``)
    to ``<method>@<digest of the difference>/seed<k>``. A complete run there is returned as is
    when its recorded identity equals this one (unless ``force``); an interrupted one resumes
    after its last readable checkpoint. The run folder's lock is held while the run writes it: if
    another process holds it, this waits ``config.runtime.wait_for_lock`` seconds for it, then
    raises :class:`mmcl.records.RunFolderInUse` (or reuses the run that process completed). A
    *variant* (an ablation) is the method with hyper-parameter overrides ``hparams``, recorded in
    its own folder ``<method>~<variant>``.
    """
    location = runs.locate_run(config, scenario, method, seed, benchmark, output_dir, variant, hparams)
    # Bars only where they fit (a terminal, a live notebook): none in a log or an executed notebook.
    progress = progress_enabled(location.config.runtime.progress if progress is None else progress)
    if not force and records.is_complete(location.run_dir):  # a complete run is never written again: no lock
        return runs.reused(location)
    config = location.config
    device = resolve_device(config.runtime.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(run_threads(config, device))
    try:
        started = time.perf_counter()
        # Built before the lock is taken: a bad hyper-parameter or benchmark fails here, before the run
        # folder (and its lock file) exists.
        built = build_run(config, scenario, method, config.seed, location.benchmark, device, progress)
        with records.run_lock(location.run_dir, config.runtime.wait_for_lock):
            return _run_in_locked_folder(location, scenario, force, progress, variant, device, built, started)
    finally:
        torch.set_num_threads(threads)


def _run_in_locked_folder(location: RunLocation, scenario: str, force: bool, progress: bool, variant: str | None,
                          device: torch.device, built: tuple[Method, Stream], started: float) -> RunResult:
    """The body of :func:`run`, called with the run folder's lock held: only this process writes it."""
    if (complete := runs.prepare_folder(location, force)) is not None:  # another process finished it meanwhile
        return complete
    config, method, run_dir = location.config, location.method, location.run_dir
    record = runs.run_record(location, scenario, variant)
    method_obj, stream = built
    modes, probes = evaluation_modes(scenario), probes_forgetting(config, record.get("role"))
    runs.write_run_files(location, record, method_obj, stream, device)
    zero_shot = _zero_shot_reference(run_dir, method_obj, stream.tasks, modes, config, device)
    method_obj, stream, rows = runs.resume(location, method_obj, stream, device, rebuild=lambda: build_run(
        config, scenario, method, config.seed, location.benchmark, device, progress))
    tasks = stream.tasks
    tracker = tracking.open_tracker(config.runtime.tracking, run_dir, record)  # runtime.tracking; off: no-op
    # Left on screen after a single run; a sweep's run bars vanish, its lines say what each run did.
    bar = progress_bar(range(len(rows), len(tasks)), desc=f"{method} · {scenario} · seed {config.seed}",
                       disable=not progress, unit="task", initial=len(rows), total=len(tasks),
                       leave=not sweep_active())
    for index in bar:
        row = _run_task(method_obj, tasks, index, rows, modes, probes, tracker, location, device, progress)
        bar.set_postfix(acc=f"{row['average_accuracy'][modes[0]]:.1f}")
        log.info("%s task %d: average accuracy %.2f", run_dir, index, row["average_accuracy"][modes[0]])
    metrics = runs.write_metrics(location, record, rows, zero_shot, modes, tasks, method_obj, probes, started)
    tracker.log_metrics(metrics)
    tracker.close()
    return RunResult(run_dir, metrics)


def _zero_shot_reference(run_dir: Path, method_obj: Method, tasks: list[Task], modes: list[str], config: Config,
                         device: torch.device) -> dict:
    """``zero_shot.json``: the frozen backbone with text classifiers, the reference for forward
    transfer; computed unless a readable one is there."""
    zero_shot_path = run_dir / "zero_shot.json"
    zero_shot = records.read_json_record(zero_shot_path, "computing it again")
    if zero_shot is None:
        reference = method_class("zero-shot")(method_obj.encoder, method_obj.context, None).to(device)
        # Before any training the backbone is the frozen one: its cached final embeddings serve.
        with prefix_cache.declared_by(method_obj.encoder.prefix_cache, reference):
            zero_shot = {m: r["accuracy"]
                         for m, r in evaluate_stream(reference, tasks, -1, modes, config, device).items()}
        records.atomic_write_json(zero_shot_path, zero_shot)
    return zero_shot


def _run_task(method_obj: Method, tasks: list[Task], index: int, rows: list[dict], modes: list[str], probes: bool,
              tracker, location: RunLocation, device: torch.device, progress: bool) -> dict:
    """Task ``index`` of the run: trained, evaluated on every task (and probed), checkpointed, its
    row appended to ``rows`` and to ``tasks.jsonl``; returns the row."""
    config, seed = location.config, location.config.seed
    task = method_obj.context.tasks[index]  # the training view; ``tasks`` keeps the evaluation data
    seed_everything(seed, index)
    method_obj.context.seen_classes = sorted({c for t in tasks[: index + 1] for c in t.classes})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # per-task CUDA peak in the task's memory record
    method_obj.begin_task(task)
    stats = {"steps": 0, "samples": 0, "train_seconds": 0.0}
    if method_obj.trains_on(task) and config.train.epochs > 0:
        stats = train_task(method_obj, task, training_data(method_obj, method_obj.context.tasks, index), config,
                           seed, device, progress, on_step=lambda loss: tracker.log_step(index, loss))
    method_obj.end_task(task)
    evaluated = time.perf_counter()
    kept: dict[str, list] | None = {} if probes else None  # evaluation features, for the probe
    results = evaluate_stream(method_obj, tasks, index, modes, config, device, kept)
    row = {"task": index, "name": task.name, "classes": task.classes, "modalities": task.modalities,
           "domain": task.domain, **stats, "eval_seconds": time.perf_counter() - evaluated,
           "evaluation": results}
    rows.append(row)
    for mode in modes:
        row.setdefault("average_accuracy", {})[mode] = float(np.mean(results[mode]["accuracy"][: index + 1]))
    row["memory"] = records.memory_usage(device)
    if probes:  # a diagnostic (after the memory record): changes no number
        probed = time.perf_counter()
        row["forgetting_decomposition"] = forgetting_decomposition(method_obj, tasks, index, modes, results,
                                                                   config, device, kept)
        row["forgetting_decomposition_seconds"] = time.perf_counter() - probed
    runs.save_checkpoint(location.run_dir, index, {"method_state": method_obj.checkpoint_state(), "rows": rows},
                         config.runtime.keep_checkpoints)
    records.write_jsonl(location.run_dir / "tasks.jsonl", rows, fault=("tasks-write", index))
    tracker.log_task(index, row)
    return row
