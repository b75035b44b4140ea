"""The continual-learning engine: one loop for every method and scenario.

For each task: :meth:`Method.begin_task`, epochs of :meth:`Method.training_loss` + optimizer
steps, :meth:`Method.end_task`, then evaluation on *every* task of the stream (seen ones over
the seen label space; unseen ones with their classes added, for forward transfer). Each finished
task is checkpointed and appended to ``tasks.jsonl``; ``metrics.json`` is written last.

Fault tolerance: one process at a time writes a run folder (:func:`mmcl.records.run_lock`, a
``flock`` on ``<run>/.lock`` that the kernel releases when its holder dies); a second one stops
with a one-line message, or waits ``runtime.wait_for_lock`` seconds and then reuses the run the
first one finished. On resume, temporaries left by a killed writer are deleted, and a damaged
newest checkpoint (truncated, garbage, missing keys) falls back to the one before it (two are
kept), or to task 0, with a one-line warning, and so does one holding objects other than tensors
and plain data (read by :func:`mmcl.records.load_tensors`, which runs no code from a file);
``tasks.jsonl`` is rewritten from the checkpoint's rows. A damaged run record (``metrics.json``,
``manifest.json``, ``zero_shot.json`` cut short by something other than mmcl) is named in one
warning line and read as absent: the run counts as incomplete, resumes, and writes it again
(:func:`mmcl.atomic.read_json_record`). Each task's row records the process
memory (peak and current RSS, the task's CUDA peak), ``metrics.json`` their maximum.
``MMCL_FAULT`` kills a run at named points, for tests (:func:`mmcl.records.fault_point`).

Determinism: the global RNGs are re-seeded from (run seed, task) at the start of every task and
the data order from (run seed, task, epoch), so a run resumed after task k reproduces the
uninterrupted run exactly (on the same device and library versions).
"""
from __future__ import annotations

import json
import logging
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import yaml

from mmcl import forgetting, kernels, records, tracking
from mmcl.config import Config, ConfigError, config_to_yaml, parse_yaml, profile_defaults
from mmcl.data.benchmarks import load_benchmark, require_data
from mmcl.data.dataset import MultiModalDataset, concatenate
from mmcl.data.scenarios import Stream, build_stream
from mmcl.methods.base import Method, RunContext, Task, method_class
from mmcl.metrics import forgetting_decomposition_summary, summarize
from mmcl.models import prefix_cache
from mmcl.models.backbone import build_encoder
from mmcl.progress import bar as progress_bar, enabled as progress_enabled, sweep_active

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    skipped: bool = False  # True when a complete run was found and reused

    @property
    def made_by_other_code(self) -> bool:
        """Whether the run's recorded source fingerprint differs from the running code's (or is unknown)."""
        return self.metrics.get("run", {}).get("source_fingerprint") != records.source_fingerprint()

    @property
    def accuracy_matrix(self) -> dict[str, list[list[float]]]:
        return self.metrics["accuracy_matrix"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device: {name!r} requested but CUDA is not available")
    return device


def run_threads(config: Config, device: torch.device) -> int:
    """The torch intra-op threads of one run: ``runtime.num_threads``, else 1 on CPU and torch's
    default on GPU. One thread on CPU whatever the executor: a reduction split over other thread
    counts rounds differently in the last bits (and can flip an argmax tie), so a run's numbers
    would depend on where it ran; several single-threaded runs at once (the pool executor) are
    also faster than one multi-threaded run at a time (docs/performance.md)."""
    if config.runtime.num_threads:
        return config.runtime.num_threads
    return torch.get_num_threads() if device.type == "cuda" else 1


def autocast_for(config: Config, device: torch.device):
    """bf16 autocast on GPU (unless ``model.precision: fp32``); full precision on CPU."""
    if device.type == "cuda" and config.model.precision in ("auto", "bf16"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def seed_everything(seed: int, task: int = 0) -> None:
    value = seed * 1000 + task
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def evaluation_modes(scenario: str) -> list[str]:
    return ["modality_aware", "modality_agnostic"] if scenario == "modality_incremental" else ["standard"]


def scenario_benchmark(config: Config, scenario: str, benchmark: str | None) -> str:
    if benchmark:
        return benchmark
    if scenario not in config.scenarios:
        raise ConfigError(f"unknown scenario {scenario!r}; profile {config.profile!r} has {sorted(config.scenarios)}")
    return config.scenarios[scenario].benchmark


def variant_overrides(method: str, variant: str) -> dict:
    """The hyper-parameter overrides of a named variant of ``method``: an ablation
    (``Method.ablations``) or a fair comparison (``Method.comparisons``)."""
    cls = method_class(method)
    ablations = {**cls.ablations, **cls.comparisons}
    if variant not in ablations:
        known = ", ".join(sorted(ablations)) or "none"
        raise ConfigError(f"method {method!r} has no variant {variant!r} (its variants: {known})")
    return dict(ablations[variant])


def merge_nested(base: dict, overrides: dict) -> dict:
    """``base`` updated with ``overrides``, mappings merged key by key (``head: {freeze_old_rows: true}``
    keeps the other ``head`` keys)."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = merge_nested(merged[key], value) \
            if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def with_method_overrides(config: Config, method: str, hparams: dict | None) -> Config:
    """``config`` with ``hparams`` merged into ``methods.<method>`` (a copy; ``config`` is unchanged)."""
    method_hparams = {**config.methods, method: merge_nested(config.methods.get(method, {}), hparams or {})}
    return config.model_copy(update={"methods": method_hparams}, deep=True)


def resolved_method_values(config: Config, scenario: str, method: str) -> dict:
    """A method's hyper-parameter values: its defaults < the tuned values of the profile
    (:func:`mmcl.tuning.tuned_values`, per scenario) < the profile's and ``--set`` overrides."""
    from mmcl.tuning import tuned_values

    return {**tuned_values(config.profile, scenario, method), **config.methods.get(method, {})}


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


def eval_batch_size(config: Config, method: Method, device: torch.device, data: MultiModalDataset) -> int:
    """``runtime.eval_batch_size``; "auto": ``train.eval_batch_size`` on CPU, and on a GPU as many
    samples as a quarter of the free memory holds (at least ``train.eval_batch_size``). Exact
    either way: evaluation has no batch statistics."""
    size = config.runtime.eval_batch_size
    if size != "auto":
        return int(size)
    if device.type != "cuda" or not len(data):
        return config.train.eval_batch_size
    free, _ = torch.cuda.mem_get_info(device)
    visual = method.encoder.clip.visual
    tokens, width = int(visual.positional_embedding.shape[0]), method.encoder.vision_width
    heads = int(getattr(method.encoder.vision_blocks[0].attn, "num_heads", 1))
    # a no-grad block's live activations per image (residual, qkv, MLP hidden, attention scores), float32;
    # prompts add tokens: counted twice over
    per_image = 4 * 2 * tokens * (12 * width + heads * tokens)
    frames = max((t.shape[1] for m, t in data.inputs.items() if m == "video"), default=1)
    return int(min(len(data), max(config.train.eval_batch_size, free // 4 // (per_image * frames))))


def compile_method(method: Method, config: Config) -> Method:
    """With ``runtime.compile``: the method's training loss through ``torch.compile`` (backend
    ``runtime.compile_backend``); the method itself otherwise. Numbers as without (up to the
    backend's float rounding): ``runtime`` does not change a run's identity."""
    if config.runtime.compile:
        method.training_loss = torch.compile(method.training_loss, backend=config.runtime.compile_backend)
    return method


def pins_memory(config: Config, device: torch.device) -> bool:
    """Whether batches go through page-locked memory: ``runtime.pin_memory``, else on for CUDA."""
    pin = config.runtime.pin_memory
    return device.type == "cuda" if pin is None else bool(pin and device.type == "cuda")


@torch.no_grad()
def evaluate_task(method: Method, task: Task, label_space: list[int], modality_known: bool, config: Config,
                  device: torch.device) -> tuple[int, int]:
    """(correct, total) of ``method`` on ``task``'s evaluation data (``train.eval_split``: test, or
    validation when tuning) over ``label_space``."""
    space = torch.tensor(sorted(label_space), dtype=torch.long, device=device)
    data = task.val if config.train.eval_split == "val" else task.test
    correct = 0
    with autocast_for(config, device):
        for batch in data.batches(eval_batch_size(config, method, device, data)):
            batch = batch.to(device, pin_memory=pins_memory(config, device))
            logits = method.predict(batch, space, modality_known=modality_known)
            correct += int((space[logits.argmax(dim=-1)] == batch.labels).sum())
    return correct, len(data)


def evaluate_stream(method: Method, tasks: list[Task], after: int, modes: list[str], config: Config,
                    device: torch.device) -> dict[str, dict[str, list]]:
    """Accuracy (percent), correct and counts on every task, after training task ``after``.

    ``after = -1`` evaluates before any training with the label space of tasks ``0..j`` for task j.
    """
    method.eval()
    seen = {c for task in tasks[: after + 1] for c in task.classes}
    results: dict[str, dict[str, list]] = {}
    for mode in modes:
        if mode != modes[0] and not method.uses_modality_id:
            results[mode] = results[modes[0]]  # the method ignores the modality ID: same numbers
            continue
        row = {"accuracy": [], "correct": [], "count": []}
        for j, task in enumerate(tasks):
            space = seen if j <= after else seen | {c for t in tasks[: j + 1] for c in t.classes}
            correct, count = evaluate_task(method, task, sorted(space), mode != "modality_agnostic", config, device)
            row["accuracy"].append(100.0 * correct / count)
            row["correct"].append(correct)
            row["count"].append(count)
        results[mode] = row
    return results


class _Untouched:
    """``with _Untouched(method, device):`` the block leaves no trace on the run: every module's
    train/eval flag and the global random generators (python, numpy, torch, CUDA) are put back as
    they were, and gradients are off inside it."""

    def __init__(self, method: Method, device: torch.device):
        self.method, self.device = method, device

    def __enter__(self):
        self.modes = [(module, module.training) for module in self.method.modules()]
        self.random = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                       torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None)
        self.grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        return self

    def __exit__(self, *exc):
        torch.set_grad_enabled(self.grad)
        python, numpy_state, torch_state, cuda_states = self.random
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        for module, training in self.modes:
            module.training = training


def forgetting_decomposition(method: Method, tasks: list[Task], after: int, modes: list[str],
                             results: dict[str, dict[str, list]], config: Config,
                             device: torch.device) -> dict[str, dict | None]:
    """After training task ``after``: the nearest-class-mean probe (:mod:`mmcl.forgetting`) on the
    method's current representation, beside its own classifier, per evaluation mode.

    The class means come from the training data of tasks ``0..after`` (every seen class; at most
    ``runtime.forgetting_decomposition_per_class`` samples of each class per task, the first ones); each
    seen task's evaluation data is scored over the seen classes, as :func:`evaluate_stream` scores
    it. The own classifier's numbers are ``results`` (the row :func:`evaluate_stream` just
    computed), not computed again. Per mode: ``ncm_accuracy``, ``ncm_correct``, ``count`` (tasks
    ``0..after``), and ``own_old`` / ``ncm_old``, the sample-weighted accuracy on the tasks before
    ``after`` (None after the first task); None for a mode where the method has no representation
    (:meth:`~mmcl.methods.base.Method.representation`).

    Neutral: no gradient, every module's train/eval flag and the global random generators are put
    back (:class:`_Untouched`), no data order changes (unshuffled batches; training draws its order
    from its own generator), and the frozen prefix cache may build a table earlier, but with the same
    rows whoever builds it first; so every other number of the run stays the same bytes (on CPU,
    tested for every method: ``tests/test_forgetting_decomposition.py``).
    """
    seen_tasks = tasks[: after + 1]
    classes = sorted({c for task in seen_tasks for c in task.classes})
    decomposition: dict[str, dict | None] = {}
    with _Untouched(method, device), autocast_for(config, device):
        method.eval()
        for mode in modes:
            if mode != modes[0] and not method.uses_modality_id:
                decomposition[mode] = decomposition[modes[0]]  # as evaluate_stream: the same numbers
                continue
            known = mode != "modality_agnostic"
            decomposition[mode] = _ncm_of_mode(method, seen_tasks, classes, known, config, device)
            if decomposition[mode] is None:
                continue
            own_correct, counts = results[mode]["correct"][:after], results[mode]["count"][:after]
            ncm_correct = decomposition[mode]["ncm_correct"][:after]
            decomposition[mode]["own_old"] = 100.0 * sum(own_correct) / sum(counts) if after else None
            decomposition[mode]["ncm_old"] = 100.0 * sum(ncm_correct) / sum(counts) if after else None
    return decomposition


def _ncm_of_mode(method: Method, seen_tasks: list[Task], classes: list[int], modality_known: bool,
                 config: Config, device: torch.device) -> dict | None:
    """NCM correct counts and accuracies on ``seen_tasks``' evaluation data (see :func:`forgetting_decomposition`)."""
    means = forgetting.ClassMeans()
    for task in seen_tasks:
        picks = forgetting.first_per_class(task.train.labels, config.runtime.forgetting_decomposition_per_class)
        size = eval_batch_size(config, method, device, task.train)
        for start in range(0, len(picks), size):
            batch = task.train.batch(picks[start:start + size]).to(device, pin_memory=pins_memory(config, device))
            features = method.representation(batch, modality_known=modality_known)
            if features is None:
                return None
            means.add(features, batch.labels)
    class_means = means.means(classes)
    row = {"ncm_accuracy": [], "ncm_correct": [], "count": []}
    for task in seen_tasks:
        data = task.val if config.train.eval_split == "val" else task.test
        correct = 0
        for batch in data.batches(eval_batch_size(config, method, device, data)):
            batch = batch.to(device, pin_memory=pins_memory(config, device))
            correct += forgetting.ncm_correct(method.representation(batch, modality_known=modality_known),
                                              batch.labels, class_means, classes)
        row["ncm_accuracy"].append(100.0 * correct / len(data))
        row["ncm_correct"].append(correct)
        row["count"].append(len(data))
    return row


def training_data(method: Method, tasks: list[Task], index: int) -> list[MultiModalDataset]:
    """The data of task ``index``; for joint training, all seen data grouped by modality set."""
    if not method.trains_on_all_seen_data:
        return [tasks[index].train]
    groups: dict[tuple[str, ...], list[MultiModalDataset]] = {}
    for task in tasks[: index + 1]:
        groups.setdefault(task.train.modalities, []).append(task.train)
    return [concatenate(group) for group in groups.values()]


def make_optimizer(method: Method, config: Config) -> torch.optim.Optimizer:
    groups = [g for g in method.optimizer_parameter_groups() if g["params"]]
    if not groups:
        raise RuntimeError(f"method {method.name!r} trains but has no trainable parameters")
    train = config.train
    # The shared ``lr_scale`` hyper-parameter multiplies every rate: train.lr and the rates a
    # method sets on its own groups (which keep their ratios to each other).
    scale = getattr(method.hparams, "lr_scale", 1.0)
    groups = [{**g, "lr": g["lr"] * scale} if "lr" in g else g for g in groups]
    lr = train.lr * scale
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay)


def train_step(method: Method, batch, task: Task, optimizer: torch.optim.Optimizer, config: Config,
               device: torch.device, phases: dict | None = None) -> tuple[torch.Tensor, dict]:
    """One optimizer step; returns the (detached) loss and the method's loss parts. ``phases``
    (``mmcl bench``): adds the seconds of the forward pass, the backward pass and the optimizer
    step to its keys ``forward``, ``backward``, ``optimizer`` (synchronizing a GPU between them)."""
    clock = _PhaseClock(phases, device)
    with autocast_for(config, device):
        output = method.training_loss(batch, task)
    loss, parts = output if isinstance(output, tuple) else (output, {})
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{method.name}: non-finite loss at task {task.index} ({parts})")
    clock.lap("forward")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clock.lap("backward")
    heads = method.class_heads()
    for head in heads:  # frozen head rows: no gradient, so no clipping share and no optimizer moments
        head.mask_gradient()
    if config.train.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.train.grad_clip)
    optimizer.step()
    for head in heads:  # ... and weight decay cannot move them either
        head.restore_frozen_rows()
    method.after_optimizer_step(task)
    clock.lap("optimizer")
    return loss.detach(), parts


class _PhaseClock:
    """Seconds between laps, added to ``phases[name]``; does nothing when ``phases`` is None."""

    def __init__(self, phases: dict | None, device: torch.device):
        self.phases, self.device = phases, device
        self.last = time.perf_counter() if phases is not None else 0.0

    def lap(self, name: str) -> None:
        if self.phases is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now


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


def run_identity(config: Config, method: str, benchmark: str, hparams: dict | None = None,
                 scenario: str | None = None) -> dict:
    """The identity of a run of ``method`` on ``benchmark`` with ``config`` (whose ``seed`` is the
    run's seed): what can change the run's numbers, as a JSON-able mapping.

    It is the resolved configuration with these left out: ``runtime`` (devices, threads, output
    folder, progress bars), ``data.cache_dir`` and ``benchmarks.<name>.path`` (where caches and
    prepared data lie, not what they hold), ``scenarios`` (it only names each scenario's default
    benchmark, which the run's folder already holds), every benchmark but this run's (without its
    ``description``) and every method but this one. The method's entry holds its *resolved*
    hyper-parameters (``hparams``, or the dataclass built from :func:`resolved_method_values` of
    ``scenario``: defaults < tuned values < ``config.methods``), so setting a hyper-parameter to
    its default value is no difference, and tuned defaults are part of the identity. ``tuning``
    (the trial budget of ``mmcl tune``) is left out; ``train.eval_split`` is in.
    """
    identity = config.model_dump(mode="json")
    for section in ("runtime", "scenarios", "tuning"):
        identity.pop(section, None)
    identity["data"].pop("cache_dir", None)
    entry = identity["benchmarks"].get(benchmark)
    if entry is not None:
        entry.pop("path", None)
        entry.pop("description", None)
    identity["benchmarks"] = {benchmark: entry}
    if hparams is None:
        values = resolved_method_values(config, scenario, method) if scenario else config.methods.get(method)
        hparams = asdict(method_class(method).make_config(values))
    identity["methods"] = {method: json.loads(json.dumps(hparams, default=str))}
    if not config.runtime.portable_kernels:  # numbers of this CPU's kernel level: not those of a portable run
        identity["kernels"] = kernels.machine_tag()
    return identity


@dataclass
class RunLocation:
    """Where a run lives and what it is: see :func:`locate_run`."""

    run_dir: Path
    config: Config  # the run's resolved configuration (method overrides merged, seed set)
    method: str
    benchmark: str
    identity: str  # records.identity_digest of the run's identity
    difference: dict  # dotted key -> value where the identity differs from the profile's defaults
    scenario: str | None = None


def locate_run(config: Config, scenario: str, method: str, seed: int | None = None, benchmark: str | None = None,
               output_dir: str | Path | None = None, variant: str | None = None,
               hparams: dict | None = None) -> RunLocation:
    """The folder and identity of a run (see :func:`run`), without touching the disk.

    The default folder ``<out>/<profile>/<scenario>/<benchmark>/<method>[~<variant>]/seed<k>``
    holds the run whose identity equals the profile's defaults (the profile loaded without
    overrides, plus the variant's ``hparams``, with portable kernels); any other identity goes to
    ``<method>[~<variant>]@<8 hex digits of the difference>/seed<k>``.
    """
    seed = config.seed if seed is None else seed
    if hparams and not variant:
        raise ValueError("hyper-parameter overrides need a variant name, so the run gets its own folder")
    config = with_method_overrides(config, method, hparams).model_copy(update={"seed": seed})
    benchmark = scenario_benchmark(config, scenario, benchmark)
    identity = run_identity(config, method, benchmark, scenario=scenario)  # fails fast on a bad method or key
    default = with_method_overrides(profile_defaults(config), method, hparams).model_copy(update={"seed": seed})
    # The default folder holds portable runs, even in a process whose kernels are native (MMCL_PORTABLE_KERNELS=0).
    default.runtime = default.runtime.model_copy(update={"portable_kernels": True})
    difference = records.identity_difference(identity, run_identity(default, method, benchmark, scenario=scenario))
    # Validation runs (mmcl tune) live apart, in <out>/<profile>/tuning/...: never read as reported runs.
    tree = f"{config.profile}/tuning" if config.train.eval_split == "val" else config.profile
    run_dir = records.run_directory(output_dir or config.runtime.output_dir, tree, scenario, benchmark,
                                    records.run_name(method, variant, difference), seed)
    return RunLocation(run_dir, config, method, benchmark, records.identity_digest(identity), difference, scenario)


MANIFEST_DAMAGED = "the run's identity is read from its config.yaml, and running the run writes the manifest again"


def stored_identity(run_dir: Path) -> tuple[str | None, dict | None]:
    """(identity digest, identity mapping) of the run recorded in ``run_dir``; None where unknown.

    The digest is the one the manifest records; runs made before identities were recorded get it
    from their ``config.yaml`` and recorded hyper-parameters, as :func:`run_identity` computes it.
    """
    manifest_path = run_dir / "manifest.json"
    # A damaged manifest (cut short by something other than mmcl) reads as absent; the run rewrites it.
    manifest = records.read_json_record(manifest_path, MANIFEST_DAMAGED) or {}
    run_record = manifest.get("run", {})
    mapping = None
    try:
        stored = Config.model_validate(parse_yaml((run_dir / "config.yaml").read_text()))
        # Without a manifest (a crash right after config.yaml), the folder names both:
        # <benchmark>/<method>[~<variant>][@<digest>]/seed<k>.
        method = run_record.get("method") or run_dir.parent.name.split("@")[0].split("~")[0]
        benchmark = run_record.get("benchmark") or run_dir.parent.parent.name
        mapping = run_identity(stored, method, benchmark, run_record.get("hparams"))
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        mapping = None  # unreadable or no longer valid: no identity can equal it
    digest = run_record.get("identity") or (records.identity_digest(mapping) if mapping is not None else None)
    return digest, mapping


def is_reusable(location: RunLocation) -> bool:
    """Whether ``location`` holds a complete run of exactly this identity."""
    return records.is_complete(location.run_dir) and stored_identity(location.run_dir)[0] == location.identity


def _other_configuration(location: RunLocation, state: str) -> ConfigError:
    _, mapping = stored_identity(location.run_dir)
    current = run_identity(location.config, location.method, location.benchmark, scenario=location.scenario)
    keys = list(records.identity_difference(current, mapping)) if mapping is not None else []
    differs = f" (it differs in {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})" if keys else ""
    return ConfigError(f"{location.run_dir} holds {state} run with a different configuration{differs}: the profile "
                       f"or the method's defaults changed since it started; pass force=True (CLI: --force; "
                       f"mmcl reproduce: --rerun-stale) to start it again")


def run(config: Config, scenario: str, method: str, seed: int | None = None, benchmark: str | None = None,
        output_dir: str | Path | None = None, force: bool = False, progress: bool | None = None,
        variant: str | None = None, hparams: dict | None = None) -> RunResult:
    """Run (or resume, or reuse) one continual-learning run and return its metrics.

    The run's identity (:func:`run_identity`: its configuration without ``runtime`` and what
    cannot change its numbers, plus the seed) picks its folder (:func:`locate_run`): the profile's
    defaults go to ``<method>/seed<k>``, anything else (``--set methods.replay.per_class=2``)
    to ``<method>@<digest of the difference>/seed<k>``. A complete run there is returned as is
    when its recorded identity equals this one (unless ``force``); an interrupted one resumes
    after its last readable checkpoint. The run folder's lock is held while the run writes it: if
    another process holds it, this waits ``config.runtime.wait_for_lock`` seconds for it, then
    raises :class:`mmcl.records.RunFolderInUse` (or reuses the run that process completed). A
    *variant* (an ablation) is the method with
    hyper-parameter overrides ``hparams``, recorded in its own folder ``<method>~<variant>``.
    """
    location = locate_run(config, scenario, method, seed, benchmark, output_dir, variant, hparams)
    # Bars only where they fit (a terminal, a live notebook): none in a log or an executed notebook.
    progress = progress_enabled(location.config.runtime.progress if progress is None else progress)
    if not force and records.is_complete(location.run_dir):  # a complete run is never written again: no lock
        return _reused(location)
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


def _reused(location: RunLocation) -> RunResult:
    """The complete run at ``location``, which must be of the same identity."""
    if stored_identity(location.run_dir)[0] != location.identity:
        raise _other_configuration(location, "a complete")
    return RunResult(location.run_dir, records.read_json(location.run_dir / "metrics.json"), skipped=True)


def _run_in_locked_folder(location: RunLocation, scenario: str, force: bool, progress: bool, variant: str | None,
                          device: torch.device, built: tuple[Method, Stream], started: float) -> RunResult:
    """The body of :func:`run`, called with the run folder's lock held: only this process writes it."""
    config, method, benchmark, run_dir = location.config, location.method, location.benchmark, location.run_dir
    seed = config.seed
    if force:
        records.clear_run_folder(run_dir)
    elif records.is_complete(run_dir):  # another process finished the run while this one waited for the lock
        return _reused(location)
    records.remove_temporaries(run_dir)  # left by a killed process; none is being written now
    config_text = config_to_yaml(config)
    stored = run_dir / "config.yaml"
    if stored.is_file() and stored_identity(run_dir)[0] != location.identity:
        raise _other_configuration(location, "an unfinished")
    run_record = {"scenario": scenario, "benchmark": benchmark, "method": method, "variant": variant, "seed": seed,
                  "profile": config.profile, "identity": location.identity, "difference": location.difference}
    method_cls = method_class(method)
    if method_cls.trains:  # whether its defaults came from the validation search (mmcl tune), for the tables
        from mmcl.tuning import tuned_values

        run_record["tuned"] = bool(tuned_values(config.profile, scenario, method))
    if variant in method_cls.comparisons:  # a fair comparison: a row of the main tables, with what it is
        run_record |= {"role": "comparison", "variant_overrides": method_cls.comparisons[variant]}
    elif variant:
        run_record["role"] = "ablation"

    method_obj, stream = built
    tasks, modes = stream.tasks, evaluation_modes(scenario)
    probes = probes_forgetting(config, run_record.get("role"))
    records.atomic_write_text(stored, config_text)
    records.atomic_write_json(run_dir / "order.json", stream.order_record())
    if records.read_json_record(run_dir / "manifest.json", MANIFEST_DAMAGED) is None:
        records.atomic_write_json(run_dir / "manifest.json", records.manifest(device) | {
            "backbone": method_obj.encoder.weights, "data": {"benchmark": benchmark, "sha256": stream.data_sha256},
            "run": {**run_record, "hparams": method_obj.hparams_dict()}})

    zero_shot_path = run_dir / "zero_shot.json"
    zero_shot = records.read_json_record(zero_shot_path, "computing it again")
    if zero_shot is None:  # the frozen backbone with text classifiers: the reference for forward transfer
        reference = method_class("zero-shot")(method_obj.encoder, method_obj.context, None).to(device)
        # Before any training the backbone is the frozen one: its cached final embeddings serve.
        with prefix_cache.declared_by(method_obj.encoder.prefix_cache, reference):
            zero_shot = {m: r["accuracy"]
                         for m, r in evaluate_stream(reference, tasks, -1, modes, config, device).items()}
        records.atomic_write_json(zero_shot_path, zero_shot)

    rows: list[dict] = []
    for checkpoint, state in readable_checkpoints(run_dir, device):
        try:
            method_obj.load_checkpoint_state(state["method_state"])
        except Exception as error:  # noqa: BLE001 - any mismatch means: not resumable from this file
            log.warning("checkpoint %s does not fit method %r (%s); ignoring it", checkpoint, method,
                        str(error).splitlines()[0] if str(error) else type(error).__name__)
            # The failed load may have changed some parameters: continue from a freshly built method.
            method_obj, stream = build_run(config, scenario, method, seed, benchmark, device, progress)
            tasks = stream.tasks
            continue
        rows = state["rows"]
        log.info("resuming %s after task %d", run_dir, len(rows) - 1)
        break
    if not rows and not checkpoints(run_dir) and (run_dir / "tasks.jsonl").is_file() \
            and (run_dir / "tasks.jsonl").stat().st_size:
        log.warning("%s records finished tasks but holds no checkpoint; starting again from task 0", run_dir)
    if rows or (run_dir / "tasks.jsonl").exists():
        # The rows of the checkpoint resumed from, which may be older than the file (a damaged newest
        # checkpoint, or a kill between writing the checkpoint and the file).
        records.write_jsonl(run_dir / "tasks.jsonl", rows)
    tracker = tracking.open_tracker(config.runtime.tracking, run_dir, run_record)  # runtime.tracking; off: no-op
    # Left on screen after a single run; a sweep's run bars vanish, its lines say what each run did.
    bar = progress_bar(range(len(rows), len(tasks)), desc=f"{method} · {scenario} · seed {seed}",
                       disable=not progress, unit="task", initial=len(rows), total=len(tasks),
                       leave=not sweep_active())
    for index in bar:
        task = method_obj.context.tasks[index]  # the training view; ``tasks`` keeps the evaluation data
        seed_everything(seed, index)
        method_obj.context.seen_classes = sorted({c for t in tasks[: index + 1] for c in t.classes})
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # per-task CUDA peak in the task's memory record
        method_obj.begin_task(task)
        stats = {"steps": 0, "samples": 0, "train_seconds": 0.0}
        if method_obj.trains_on(task) and config.train.epochs > 0:
            stats = train_task(method_obj, task, training_data(method_obj, method_obj.context.tasks, index), config,
                               seed, device, progress, on_step=lambda loss, i=index: tracker.log_step(i, loss))
        method_obj.end_task(task)
        evaluated = time.perf_counter()
        results = evaluate_stream(method_obj, tasks, index, modes, config, device)
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
                                                                       config, device)
            row["forgetting_decomposition_seconds"] = time.perf_counter() - probed
        save_checkpoint(run_dir, index, {"method_state": method_obj.checkpoint_state(), "rows": rows},
                        config.runtime.keep_checkpoints)
        records.write_jsonl(run_dir / "tasks.jsonl", rows, fault=("tasks-write", index))
        tracker.log_task(index, row)
        bar.set_postfix(acc=f"{row['average_accuracy'][modes[0]]:.1f}")
        log.info("%s task %d: average accuracy %.2f", run_dir, index, row["average_accuracy"][modes[0]])

    metrics = finalize(rows, zero_shot, modes, scenario, tasks)
    metrics["forgetting_decomposition"] = forgetting_decomposition_record(
        rows, modes, probes, config.runtime.forgetting_decomposition_per_class)
    metrics["run"] = {**run_record, "hparams": method_obj.hparams_dict(), **records.code_version()}
    metrics.update(method_obj.run_record())
    metrics["timing"] = {"run_seconds_this_session": time.perf_counter() - started,
                         "train_seconds": sum(r.get("train_seconds", 0.0) for r in rows),
                         "eval_seconds": sum(r["eval_seconds"] for r in rows),
                         "forgetting_decomposition_seconds": sum(r.get("forgetting_decomposition_seconds", 0.0)
                                                                 for r in rows)}
    metrics["memory"] = records.memory_summary(rows)
    records.atomic_write_json(run_dir / "metrics.json", metrics, fault=("metrics-write", None))
    tracker.log_metrics(metrics)
    tracker.close()
    return RunResult(run_dir, metrics)


def finalize(rows: list[dict], zero_shot: dict, modes: list[str], scenario: str, tasks: list[Task]) -> dict:
    task_modalities = [t.modality for t in tasks] if scenario == "modality_incremental" else None
    matrices, summaries = {}, {}
    for mode in modes:
        matrix = [row["evaluation"][mode]["accuracy"] for row in rows]
        final = rows[-1]["evaluation"][mode]
        matrices[mode] = matrix
        summaries[mode] = summarize(matrix, zero_shot[mode], final["correct"], final["count"], task_modalities)
        summaries[mode]["zero_shot_accuracy"] = float(np.mean(zero_shot[mode]))
    return {"modes": summaries, "accuracy_matrix": matrices, "zero_shot": zero_shot,
            "task_names": [t.name for t in tasks]}


def probes_forgetting(config: Config, role: str | None) -> bool:
    """Whether a run of ``role`` (None: a method's defaults; "comparison"; "ablation") runs the
    forgetting decomposition's probe: ``runtime.forgetting_decomposition`` true or false, or "auto":
    every run but ablation variants, the runs the decomposition table reads
    (:func:`mmcl.results.decomposition_runs`)."""
    setting = config.runtime.forgetting_decomposition
    return role != "ablation" if setting == "auto" else bool(setting)


def forgetting_decomposition_record(rows: list[dict], modes: list[str], enabled: bool,
                                    per_class: int | None = None) -> dict:
    """``metrics.json``'s ``forgetting_decomposition``: whether it was on (``runtime.forgetting_decomposition``),
    the training samples per class its class means read (``per_class``, None: all) and, per mode,
    :func:`mmcl.metrics.forgetting_decomposition_summary` of the rows' probes; ``modes`` is None with a
    ``note`` when some task lacks the probe (a run resumed with it switched on), and a mode is None
    where the method has no representation."""
    if not enabled:
        return {"enabled": False}
    record: dict = {"enabled": True, "per_class": per_class}
    missing = [r["task"] for r in rows if "forgetting_decomposition" not in r]
    if missing:
        return record | {"modes": None, "note": f"tasks {missing} were run without the probe"}
    record["modes"] = {}
    for mode in modes:
        probes = [r["forgetting_decomposition"].get(mode) for r in rows]
        record["modes"][mode] = None if any(p is None for p in probes) else forgetting_decomposition_summary(
            [r["evaluation"][mode]["accuracy"] for r in rows], [p["ncm_accuracy"] for p in probes],
            [p["own_old"] for p in probes], [p["ncm_old"] for p in probes])
    return record


def save_checkpoint(run_dir: Path, index: int, state: dict, keep: str) -> None:
    """Write task ``index``'s checkpoint, then delete the ones it makes obsolete.

    ``keep="last"`` keeps this checkpoint and the one before it, so that a damaged newest
    checkpoint costs one task of recomputation instead of the whole run; ``keep="all"`` keeps
    every earlier one. Checkpoints of *later* tasks are always deleted: they are left from before
    a resume that fell back to an earlier checkpoint, and no longer match this run's history.
    """
    records.atomic_torch_save(state, run_dir / "checkpoints" / f"task_{index}.pt", fault=("checkpoint-write", index))
    for old_index, old in checkpoints(run_dir):
        if old_index > index or (keep == "last" and old_index < index - 1):
            old.unlink(missing_ok=True)


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The (task index, path) of every checkpoint of ``run_dir``, oldest first."""
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("task_*.pt"):
        index = path.stem.removeprefix("task_")
        if index.isdigit():
            found.append((int(index), path))
    return sorted(found)


def _checkpoint_problem(state, index: int) -> str | None:
    """Why a loaded checkpoint of task ``index`` cannot be resumed from, or None when it can."""
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a checkpoint"
    missing = [key for key in ("method_state", "rows") if key not in state]
    if missing:
        return f"missing keys {missing}"
    rows = state["rows"]
    if not isinstance(state["method_state"], dict) or not isinstance(rows, list):
        return "method_state or rows of the wrong type"
    if len(rows) != index + 1 or not all(isinstance(r, dict) and r.get("task") == i for i, r in enumerate(rows)):
        return f"its rows are not those of tasks 0..{index}"
    return None


def readable_checkpoints(run_dir: Path, device: torch.device) -> Iterator[tuple[Path, dict]]:
    """The checkpoints of ``run_dir`` that load and hold what a resume needs, newest first.

    A damaged one (truncated, overwritten, unreadable by ``torch.load``, or missing keys) is
    skipped with a one-line warning naming the file and what the run falls back to (the previous
    checkpoint, or task 0). So is a refused one, with a warning saying it holds objects other
    than tensors and plain data: checkpoints are read by :func:`mmcl.records.load_tensors`, which
    never runs code from the file (a crafted one, or one of an older format). The caller stops at
    the first one it resumes from; if it asks for more after the oldest, a warning says the run
    starts again from task 0.
    """
    found = checkpoints(run_dir)
    for position in range(len(found) - 1, -1, -1):
        index, path = found[position]
        fallback = f"falling back to {found[position - 1][1].name}" if position else "starting again from task 0"
        try:
            state = records.load_tensors(path, map_location=device, rebuild=fallback)
            problem = _checkpoint_problem(state, index)
        except records.RefusedFile as error:
            log.warning("checkpoint %s", error)
            continue
        except Exception as error:  # noqa: BLE001 - torch.load raises many kinds on a damaged file
            first_line = str(error).splitlines()[0] if str(error) else "unreadable"
            state, problem = None, f"{type(error).__name__}: {first_line}"
        if problem is None:
            yield path, state
            if position == 0:  # the caller could not resume from the oldest one either
                log.warning("no usable checkpoint in %s; starting again from task 0", path.parent)
            continue
        log.warning("checkpoint %s is damaged (%s); %s", path, problem[:200], fallback)
