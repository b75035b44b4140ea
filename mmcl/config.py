"""Profiles (smoke / tiny / paper) as validated configuration.

A profile is a YAML file shipped in ``mmcl/profiles``. Single keys are overridden with
``key.path=value`` strings (the CLI's ``--set`` and the notebooks' ``overrides`` parameter);
values are parsed as YAML, so ``train.epochs=3`` gives an int and ``model.pretrained=null`` None.
Validation is strict: an unknown key or a value of the wrong type raises :class:`ConfigError`
naming the dotted key.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_serializer,
                      model_validator)

from mmcl import kernels
from mmcl.errors import ConfigError, PreparedDataError  # noqa: F401  (their public name: mmcl.config.<Error>)

MODALITIES = ("image", "video", "audio", "depth", "acc", "gyro", "text")
VISUAL_MODALITIES = ("image", "video", "audio", "depth", "acc", "gyro")
SCENARIOS = ("class_incremental", "domain_incremental", "modality_incremental")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PretrainConfig(_Strict):
    """Contrastive pre-training of a tiny CLIP on the benchmark's pre-training concepts."""

    steps: int = Field(1200, ge=0)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    samples_per_concept: int = Field(48, ge=1)
    # The pre-training seed of run seed 0 (null: data.benchmark_seed); with per_run_seed, seed k of
    # a run uses the backbone pre-trained with this + k (its own initialisation, pre-training images
    # and batch order), so the spread over seeds includes the backbone's; false: every seed shares
    # seed 0's. (benchmarks/spread_sources.py varies the backbone alone through `seed`.)
    seed: int | None = None
    per_run_seed: bool = True


class ModelConfig(_Strict):
    name: str = "mmcl-tiny"
    # "self": pre-train on the embedded benchmark's pre-training concepts and cache (tiny/smoke);
    # an open_clip tag ("openai", "laion2b_s34b_b88k"), a local weights file, or null (random init).
    pretrained: str | None = "self"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    classifier_templates: list[str] = ["a photo of a {}."]
    pretrain: PretrainConfig = PretrainConfig()


class AudioConfig(_Strict):
    sample_rate: int = Field(8000, gt=0)
    duration: float = Field(1.0, gt=0)
    n_fft: int = Field(256, gt=0)
    hop_length: int = Field(128, gt=0)
    n_mels: int = Field(32, gt=0)


class InertialConfig(_Strict):
    sample_rate: int = Field(50, gt=0)
    duration: float = Field(2.0, gt=0)
    n_fft: int = Field(32, gt=0)
    hop_length: int = Field(4, gt=0)


class GeneratorConfig(_Strict):
    """Calibration knobs of the embedded generator (see ``mmcl.data.synthetic.Difficulty`` and
    docs/benchmark.md); all zero (``domain_shift`` 1) gives clean class cues."""

    _V5_VALUES: ClassVar[dict[str, float]] = {"inertial_jitter": 0.0, "domain_shift": 1.0}

    cue_jitter: float = Field(0.0, ge=0)
    nuisance: float = Field(0.0, ge=0)
    distractors: int = Field(0, ge=0)
    occlusion: float = Field(0.0, ge=0, le=1)
    inertial_jitter: float = Field(0.0, ge=0)
    domain_shift: float = Field(1.0, ge=0)

    @model_serializer(mode="wrap")
    def _without_unset_levers(self, handler):
        # A lever added after generator version 5 is left out at its v5 value, where the data are
        # v5's bytes, so that the runs, caches and fingerprints of v5 keep their identities.
        dumped = handler(self)
        for name, v5 in self._V5_VALUES.items():
            if getattr(self, name) == v5:
                dumped.pop(name, None)
        return dumped


class DataConfig(_Strict):
    image_size: int = Field(32, ge=8)
    video_frames: int = Field(4, ge=1)
    spectrogram_render: Literal["gray", "viridis"] = "gray"
    depth_render: Literal["gray", "viridis"] = "gray"
    audio: AudioConfig = AudioConfig()
    inertial: InertialConfig = InertialConfig()
    train_per_class: int = Field(30, ge=1)
    test_per_class: int = Field(15, ge=1)
    benchmark_seed: int = 1234
    # Share of each (class, domain) group's training samples held out as the validation split
    # (embedded benchmarks, and prepared ones without a publisher's validation list), drawn by
    # benchmark_seed, never by the run seed.
    val_fraction: float = Field(0.2, gt=0, lt=1)
    generator: GeneratorConfig = GeneratorConfig()
    cache_dir: str | None = None  # default: $MMCL_CACHE or ~/.cache/mmcl


class TrainConfig(_Strict):
    epochs: int = Field(3, ge=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0)
    grad_clip: float | None = 1.0
    # The split every evaluation reads: "test" for reported runs, "val" for tuning (mmcl tune).
    eval_split: Literal["test", "val"] = "test"


class ExecutorConfig(_Strict):
    """Where the runs of a sweep execute (``mmcl reproduce --executor``, the notebooks' sweeps):
    ``local`` in the calling process, one after the other; ``pool`` in a pool of single-threaded
    worker processes; ``auto`` (default) pool on CPU, local on GPU; ``submitit-local`` one submitit job per
    run in local subprocesses; ``slurm`` one SLURM job per run (a job array), through submitit.
    Like all of ``runtime`` it never changes a run's identity or folder."""

    # auto: pool on CPU when several runs are missing and there are several cores, else local.
    name: Literal["auto", "local", "pool", "submitit-local", "slurm"] = "auto"
    folder: str | None = None  # submitit's job files and logs; None: <output_dir>/<profile>/jobs
    # Runs at once: pool workers, submitit-local subprocesses, SLURM's array %N; auto: the CPU cores
    # (SLURM: submitit's default, 256).
    parallelism: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    timeout_min: int = Field(720, ge=1)
    cpus_per_task: int = Field(4, ge=1)
    gpus_per_node: int = Field(1, ge=0)  # SLURM only
    mem_gb: float | None = Field(None, gt=0)  # SLURM only; None: the partition's default
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    setup: list[str] = []  # shell lines run before each SLURM job, e.g. ["module load cuda"]


class RuntimeConfig(_Strict):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch threads of a run: None = 1 on CPU (every executor gives the same numbers; see
    # mmcl.runtime.run_threads), torch's default on GPU.
    num_threads: int | None = Field(None, ge=1)
    # CPU kernels pinned to AVX2 (mmcl.kernels): the same bytes on every x86-64 machine. false: this
    # CPU's best kernels, numbers bound to the machine (the manifest says so; own folder and caches).
    # Default: as this process was started (true unless MMCL_PORTABLE_KERNELS=0).
    portable_kernels: bool = Field(default_factory=kernels.requested)
    output_dir: str = "runs"
    progress: bool = True
    # "last" keeps the two newest task checkpoints (a damaged newest one falls back to the one
    # before it); "all" keeps one per task.
    keep_checkpoints: Literal["last", "all"] = "last"
    # Seconds to wait for another process that holds the run folder's lock (0: stop at once).
    wait_for_lock: float = Field(0.0, ge=0)
    # Seeds of `mmcl reproduce` when --seeds is not given (every notebook, ablations included):
    # the main tables and the claims' paired comparisons are over these.
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    executor: ExecutorConfig = ExecutorConfig()
    # torch.compile of the method's training loss (with the frozen-prefix cache: the trainable part);
    # off by default. compile_backend: torch.compile's backend (inductor; eager/aot_eager for tests).
    compile: bool = False
    compile_backend: str = "inductor"
    # Batches in page-locked memory before an asynchronous copy to the GPU; None: on for CUDA.
    pin_memory: bool | None = None
    # Experiment tracking (mmcl.tracking): per-step losses, per-task accuracies, final metrics.
    # tensorboard and mlflow are optional packages, not dependencies.
    tracking: Literal["none", "tensorboard", "mlflow"] = "none"
    # The frozen prefix cache (mmcl.models.prefix_cache): the frozen blocks before the first one a
    # method changes run once per backbone and benchmark, stored under <cache>/prefix. Same numbers
    # up to float rounding, so not part of a run's identity.
    prefix_cache: bool = True
    # A table larger than this (GB, float16) is not cached: that part of the tower runs every time.
    prefix_cache_max_gb: float = Field(16.0, gt=0)
    # Evaluation batch size: an int, or "auto": train.eval_batch_size on CPU, sized to the free
    # memory on a GPU. Exact whatever its value (evaluation has no batch statistics).
    eval_batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    # The forgetting decomposition (mmcl.engine.forgetting_decomposition): at each task's end, a
    # nearest-class-mean probe on the method's current representation beside its own classifier,
    # recorded in tasks.jsonl and metrics.json. A diagnostic that changes no other number of the run
    # (tested byte for byte), so, like all of runtime, not part of a run's identity. "auto": in the runs
    # the decomposition table reads (a method's defaults and its fair comparisons), not in ablation
    # variants, where it would cost time no output uses; true: every run; false: none.
    forgetting_decomposition: bool | Literal["auto"] = "auto"
    # Training samples per class the probe's class means read (the first ones of each task's training
    # data, no random draw); None: all. Bounds its cost on large datasets (the paper profile).
    forgetting_decomposition_per_class: int | None = Field(None, ge=1)


class BenchmarkConfig(_Strict):
    """A named benchmark: the embedded generator (``synthetic``) or a prepared real dataset."""

    source: Literal["synthetic", "processed"] = "synthetic"
    modalities: list[str]
    num_classes: int = Field(ge=2)
    num_tasks: int = Field(1, ge=1)
    # Modality-incremental streams: tasks of each modality (absent: 1). More than one makes the
    # modality recur, each time with a new class group; the order is drawn from the seed.
    modality_tasks: dict[str, Annotated[int, Field(ge=1)]] = {}
    domains: list[str] = ["default"]
    # How a domain changes the data (embedded generator): "speaker" (SAMSEMO-like: language, speaker,
    # background and recording conditions; class cues unchanged) or "conflicting" (hue rotation,
    # pitch and speed shifts that move classes onto each other's cues: a stress test).
    domain_style: Literal["speaker", "conflicting"] = "speaker"
    # Calibration knobs for this benchmark alone (embedded generator); default: data.generator.
    generator: GeneratorConfig | None = None
    path: str | None = None  # processed datasets: folder written by data_prep
    description: str = ""

    @field_validator("modalities")
    @classmethod
    def _known_modalities(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in MODALITIES]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; known: {list(MODALITIES)}")
        if not value:
            raise ValueError("at least one modality is required")
        return value


class TuningConfig(_Strict):
    """``mmcl tune``: the same validation budget for every method (see :mod:`mmcl.tuning`)."""

    trials: int = Field(6, ge=1)  # per round; every shipped grid: 3 learning-rate scales x 2 values of one knob
    # Every trial point runs once per seed; its score is the mean final validation accuracy over them.
    seeds: list[Annotated[int, Field(ge=0)]] = Field([0, 1], min_length=1)
    # Rounds after the first: a choice at an edge of a key with >= 3 values moves that key's window
    # one step beyond the edge and searches again (the same trials); at most this many times.
    max_extensions: int = Field(3, ge=0)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct, got {value}")
        return value


class ScenarioConfig(_Strict):
    benchmark: str
    # Further benchmarks of the main tables and the claims, beside `benchmark` (e.g. a stream where
    # a modality recurs); the scenario's notebook runs every method on each.
    also_on: list[str] = []
    # Benchmarks the scenario's notebook also runs, reported in appendix tables
    # (figures/appendix_<scenario>.md), never in the main tables or the claims (stress tests).
    appendix: list[str] = []
    # Further benchmarks the ablation study runs on, beside `benchmark` (e.g. a stream where a
    # modality recurs, so that the components acting only then are measured).
    ablations_also_on: list[str] = []


class Config(_Strict):
    profile: str
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    tuning: TuningConfig = TuningConfig()
    benchmarks: dict[str, BenchmarkConfig]
    scenarios: dict[str, ScenarioConfig]
    # Per-method hyper-parameter overrides, validated against each method's dataclass when built.
    methods: dict[str, dict[str, Any]] = {}
    # The profile name or YAML path this configuration was loaded from (set by load_config, kept
    # by model_copy): a run compares itself with that profile's defaults to find its folder.
    _source: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _scenarios_point_to_benchmarks(self) -> "Config":
        for name, scenario in self.scenarios.items():
            if name not in SCENARIOS:
                raise ValueError(f"scenarios.{name}: unknown scenario; known: {list(SCENARIOS)}")
            if scenario.benchmark not in self.benchmarks:
                raise ValueError(
                    f"scenarios.{name}.benchmark: {scenario.benchmark!r} is not among "
                    f"benchmarks {sorted(self.benchmarks)}"
                )
            for field in ("appendix", "ablations_also_on"):  # other benchmarks of the profile
                for position, name_ in enumerate(getattr(scenario, field)):
                    if name_ not in self.benchmarks or name_ == scenario.benchmark:
                        raise ValueError(
                            f"scenarios.{name}.{field}.{position}: {name_!r} is "
                            + ("the main benchmark" if name_ == scenario.benchmark
                               else f"not among benchmarks {sorted(self.benchmarks)}"))
        return self

    def fingerprint(self, *sections: str) -> str:
        """A short stable hash of the given top-level sections (all when none are given)."""
        dumped = self.model_dump(mode="json")
        picked = {k: dumped[k] for k in (sections or dumped)}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:12]

    def cache_dir(self) -> Path:
        root = Path(self.data.cache_dir or os.environ.get("MMCL_CACHE") or Path.home() / ".cache" / "mmcl").expanduser()
        # Backbones, benchmarks and prefix tables computed with native kernels stay apart from the portable ones.
        return root if self.runtime.portable_kernels else root / kernels.machine_tag()


def available_profiles() -> list[str]:
    files = resources.files("mmcl.profiles").iterdir()
    return sorted(Path(str(f)).stem for f in files if str(f).endswith(".yaml"))


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, through libyaml's parser where PyYAML has it (the same resolver and
    constructors, so the same values), and parsed once per distinct text: a sweep reads the profile,
    its defaults and the tuned values once per run. The caller gets its own copy."""
    return copy.deepcopy(_parse_yaml_once(text))


@functools.lru_cache(maxsize=32)
def _parse_yaml_once(text: str) -> Any:
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _read_profile(profile: str | Path) -> dict[str, Any]:
    path = Path(str(profile))
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"profile file not found: {path}")
        text = path.read_text()
    else:
        if profile not in available_profiles():
            raise ConfigError(f"unknown profile {profile!r}; available: {available_profiles()}")
        text = resources.files("mmcl.profiles").joinpath(f"{profile}.yaml").read_text()
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"profile {profile}: invalid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"profile {profile}: expected a mapping at the top level")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"train.epochs=3"`` into (["train", "epochs"], 3)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {error}") from error
    return key.split("."), value


def list_parameter(value: Any, name: str, item: type = str) -> list | None:
    """A list-valued notebook or sweep parameter (``seeds``, ``methods``, ``benchmarks``,
    ``scenarios``), given as a list or as a string that parses to one: papermill's ``-p seeds "[0]"``
    passes the string ``"[0]"``, and ``-p seeds 0`` the int 0.

    Accepted: a list or tuple; a string holding a YAML list (``"[0, 1]"``, ``'["lwf", "replay"]'``)
    or items separated by spaces or commas (``"0 1 2"``, ``"0,1"``, ``"lwf replay"``, ``"lwf"``);
    for ``item=int`` one int. None stays None (the parameter's default). Items are of type ``item``
    (``"1"`` gives 1 for int). Anything else is a one-line :class:`ConfigError` naming the parameter.
    """
    if value is None:
        return None
    example = '[0, 1], "0 1" or "0,1"' if item is int else '[lwf, replay], "lwf replay" or "lwf,replay"'

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"parameter {name}: {problem}; give a list, e.g. {example}")

    given = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise bad(f"{given!r} is not a list (it does not parse as YAML)") from None
            if not isinstance(value, list):
                raise bad(f"{given!r} is not a list")
        else:
            value = [part for part in re.split(r"[\s,]+", text) if part]
            if not value:
                raise bad(f"{given!r} holds no {'number' if item is int else 'name'}")
    elif isinstance(value, (list, tuple)):
        value = list(value)
    elif item is int and isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    else:
        raise bad(f"got {given!r} ({type(given).__name__})")
    items = []
    for entry in value:
        if item is int:
            if isinstance(entry, bool) or not isinstance(entry, (int, str)) \
                    or (isinstance(entry, str) and not re.fullmatch(r"[+-]?\d+", entry.strip())):
                raise bad(f"{entry!r} in {given!r} is not an integer")
            items.append(int(entry))
        else:
            if not isinstance(entry, str) or not entry.strip():
                raise bad(f"{entry!r} in {given!r} is not a name")
            items.append(entry.strip())
    return items


def overrides_parameter(overrides: Any) -> list[str] | dict[str, Any] | None:
    """Profile overrides (the notebooks' ``overrides`` parameter), given as a list of
    ``key.path=value`` strings, a mapping, or a string: a YAML list or mapping
    (``'["train.epochs=5", "runtime.device=cuda"]'``), ``key=value`` items separated by spaces
    (``"train.epochs=5 runtime.device=cuda"``), or one override (``"train.epochs=5"``). Anything
    else is a one-line :class:`ConfigError`."""
    if overrides is None or isinstance(overrides, (list, tuple, dict)):
        return overrides
    if not isinstance(overrides, str):
        raise ConfigError(f"parameter overrides: got {overrides!r} ({type(overrides).__name__}); give a list of "
                          f'key.path=value strings, e.g. ["train.epochs=5"]')
    text = overrides.strip()
    if text.startswith(("[", "{")):
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            parsed = None
        if not isinstance(parsed, (list, dict)):
            raise ConfigError(f"parameter overrides: {overrides!r} is not a YAML list or mapping; give a list of "
                              f'key.path=value strings, e.g. ["train.epochs=5"]')
        return parsed
    parts = text.split()
    return parts if parts and all("=" in part for part in parts) else [text] if text else []


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any] | str | None) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted-key overrides applied (validated later); ``overrides``
    as :func:`overrides_parameter` reads it (a list, a mapping, or a string of either)."""
    data = copy.deepcopy(data)
    overrides = overrides_parameter(overrides)
    if not overrides:
        return data
    items = (
        [parse_override(o) for o in overrides]
        if isinstance(overrides, (list, tuple))
        else [(str(k).split("."), v) for k, v in overrides.items()]
    )
    for path, value in items:
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                # Only free-form mappings (benchmarks, methods) may gain new entries; strict
                # sections reject unknown keys at validation with the full dotted name.
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif not item["loc"]:
            lines.append(item["msg"].removeprefix("Value error, "))
        else:
            lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(profile: str | Path = "tiny", overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load a profile by name (or YAML path) and apply ``key.path=value`` overrides."""
    data = apply_overrides(_read_profile(profile), overrides)
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error)) from None
    path = Path(str(profile))
    # A YAML path is kept absolute, so the defaults are found again from another working folder.
    config._source = str(path.resolve()) if path.suffix in (".yaml", ".yml") else str(profile)
    return config


def profile_defaults(config: Config) -> Config:
    """The profile ``config`` was loaded from, without overrides (for a configuration built without
    :func:`load_config`: the shipped profile of its name, or ``config`` itself when there is none)."""
    source = config._source or (config.profile if config.profile in available_profiles() else None)
    return config if source is None else load_config(source)


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
