"""The method contract and registry.

A method is one small class in one file (as in mammoth): a registry ``name``, the scenarios it is
compatible with, its hyper-parameters as a (pydantic) dataclass, and a few hooks. The engine owns
the loop, the optimizer, evaluation, checkpoints and records; a method owns what makes it
different::

    @register
    class MyMethod(Method):
        name = "my-method"
        compatible_scenarios = ("class_incremental",)

        @dataclass
        class Config(MethodConfig):
            strength: float = 1.0

        ablations = {"weak": {"strength": 0.1}}

        def training_loss(self, batch, task): ...

Hooks, in the order the engine calls them for each task: :meth:`begin_task`, then for every batch
:meth:`training_loss` (the engine does backward and the optimizer step) and
:meth:`after_optimizer_step`, then :meth:`end_task`. :meth:`predict` scores a batch over any
label space. State that :meth:`begin_task` rebuilds (teacher copies) should be kept out of the
module tree with :class:`Snapshot`, so checkpoints stay small.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Iterator

import pydantic
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcl.config import SCENARIOS, Config, ConfigError
from mmcl.data.dataset import Batch, MultiModalDataset
from mmcl.models.backbone import MultiModalEncoder

REGISTRY: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a registry name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise TypeError(f"method name {cls.name!r} is already registered by {REGISTRY[cls.name].__name__}")
    unknown = set(cls.compatible_scenarios) - set(SCENARIOS)
    if unknown:
        raise TypeError(f"{cls.__name__}.compatible_scenarios names unknown scenarios {unknown}")
    from mmcl.config import TuningConfig
    from mmcl.tuning import check_grid

    check_grid(cls, TuningConfig().trials)
    REGISTRY[cls.name] = cls
    return cls


def method_class(name: str) -> type["Method"]:
    import mmcl.methods  # noqa: F401  (registers the built-in methods)

    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


@dataclass
class Task:
    """One step of a scenario's stream. ``classes`` are run label ids (positions in the class order).

    The engine keeps the whole task (``val`` and ``test`` are evaluation data); a method sees
    :meth:`training_view` only: its ``test`` and ``val`` are None.
    """

    index: int
    classes: list[int]
    modalities: list[str]
    train: MultiModalDataset
    test: MultiModalDataset | None
    domain: str | None = None
    name: str = ""
    val: MultiModalDataset | None = None  # validation data (carved from training data): tuning only

    def training_view(self) -> "Task":
        """This task without its evaluation data: what the method contract exposes."""
        return dataclasses.replace(self, test=None, val=None)

    @property
    def modality(self) -> str:
        """The task's single modality (modality-incremental streams)."""
        if len(self.modalities) != 1:
            raise ValueError(f"task {self.index} has modalities {self.modalities}, not one")
        return self.modalities[0]


@dataclass
class RunContext:
    """What a method may know about the run: the scenario, the classes, the device, the config, and
    the stream's tasks as training views (:meth:`Task.training_view`: no test or validation data)."""

    config: Config
    scenario: str
    class_names: list[str]
    device: torch.device
    tasks: list[Task] = field(default_factory=list)
    seen_classes: list[int] = field(default_factory=list)
    benchmark: str = ""  # the stream's benchmark (benchmarks.<name>), for errors naming it

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def seen_label_space(self) -> torch.Tensor:
        return torch.tensor(sorted(self.seen_classes), dtype=torch.long, device=self.device)


@pydantic.dataclasses.dataclass(config=pydantic.ConfigDict(extra="forbid"))
class HeadConfig:
    """Rules of the cosine class head (``methods.<method>.head.*``), the same options for every method.

    A method's own defaults for these keys are its ``head_defaults`` (the MoE adapters freeze old rows).
    """

    train: bool = True  # the rows (initialised at the class text embeddings) train
    freeze_old_rows: bool = False  # rows of classes absent from the current task get no update at all


@pydantic.dataclasses.dataclass(config=pydantic.ConfigDict(extra="forbid"))
class MethodConfig:
    """Hyper-parameters shared by methods that train a text-anchored classifier."""

    trainable_blocks: int = pydantic.Field(1, ge=0)  # last vision-tower blocks unfrozen (0: head only)
    head: HeadConfig = pydantic.Field(default_factory=HeadConfig)  # the cosine head's rules
    lr_scale: float = pydantic.Field(1.0, gt=0)  # multiplies train.lr and every rate of the method's groups


def at_most(field: str, limit: str):
    """A pydantic field validator: ``field`` may not exceed the (earlier declared) field ``limit``.

    Use as ``_top_k_fits = at_most("top_k", "pool_size")`` in a method's Config.
    """

    def check(value, info: pydantic.ValidationInfo):
        if limit in info.data and value is not None and value > info.data[limit]:
            raise ValueError(f"must be at most {limit} ({info.data[limit]}), got {value}")
        return value

    return pydantic.field_validator(field)(check)


class Snapshot:
    """A frozen copy of a module held outside the module tree: not in ``state_dict``, not moved.

    Only model state is copied. A teacher is taken once per task, so anything else it copied
    would pile up task after task: the copy never holds a method's :class:`RunContext` (with every
    task's data), a dataset, a task, or an earlier :class:`Snapshot` (each teacher would nest all
    the previous ones); those attributes are ``None`` in the copy. The frozen backbone (the
    parameters of a :class:`MultiModalEncoder` that do not train, and its buffers; see
    :meth:`Method.frozen_state_names`) is shared by reference: it never changes during a run.
    """

    def __init__(self, module: nn.Module):
        self.module = copy.deepcopy(module, _shared_and_dropped(module)).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    def __call__(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)


# Never part of a teacher's copy: run data, the run's context, and earlier teachers.
_NOT_MODEL_STATE = (RunContext, Task, MultiModalDataset, Snapshot)


def _shared_and_dropped(module: nn.Module) -> dict[int, object]:
    """A ``copy.deepcopy`` memo: frozen backbone tensors map to themselves, non-model state to None.

    Looks at the attributes of every sub-module (one container level deep, so that a list of
    tasks is dropped too); a memo entry makes ``deepcopy`` return the mapped object as is.
    """
    memo: dict[int, object] = {}
    for sub in module.modules():
        if isinstance(sub, MultiModalEncoder):
            for parameter in sub.parameters():
                if not parameter.requires_grad:
                    memo[id(parameter)] = parameter
            for buffer in sub.buffers():
                memo[id(buffer)] = buffer
            memo[id(sub.tokenizer)] = sub.tokenizer  # a large vocabulary, read only
            if sub.prefix_cache is not None:  # the frozen prefix: the teacher's is the student's
                memo[id(sub.prefix_cache)] = sub.prefix_cache
        for value in vars(sub).values():
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
            for item in [value, *items]:
                if isinstance(item, _NOT_MODEL_STATE):
                    memo[id(item)] = None
    return memo


class Method(nn.Module):
    name: ClassVar[str] = ""
    compatible_scenarios: ClassVar[tuple[str, ...]] = SCENARIOS
    Config: ClassVar[type] = MethodConfig
    trains: ClassVar[bool] = True
    trains_on_all_seen_data: ClassVar[bool] = False  # joint training: the engine passes the union
    uses_modality_id: ClassVar[bool] = False  # evaluated twice in modality-incremental streams
    # Modalities every sample must carry, as groups of alternatives: ``(("audio",), ("video",
    # "image"))`` reads "audio, and video or image". A benchmark without them is left out of the
    # method's sweeps (:meth:`inapplicable`) and is a one-line error when asked for by name.
    required_modalities: ClassVar[tuple[tuple[str, ...], ...]] = ()
    description: ClassVar[str] = ""
    # What kind of method it is, for tables and the claims' rivals: classic, rehearsal, prompt,
    # fine-tuning (a pre-trained representation fine-tuned: SLCA), adapter, paper (a reproduced
    # paper's method) or reference (a bound: zero-shot, joint).
    family: ClassVar[str] = ""
    # Named ablation variants: variant name -> hyper-parameter overrides (run with
    # ``engine.run(..., variant=name, hparams=overrides)``; the ablations notebook runs them all).
    ablations: ClassVar[dict[str, dict]] = {}
    # Named fair-comparison variants (same form as ``ablations``): the main sweeps run them next to
    # the defaults, in the scenarios ``comparison_scenarios``, and the main tables show them.
    comparisons: ClassVar[dict[str, dict]] = {}
    comparison_scenarios: ClassVar[tuple[str, ...]] = ("class_incremental",)
    # The method's defaults for ``head.*`` keys (merged under the configured ``head`` mapping).
    head_defaults: ClassVar[dict] = {}
    # Hyper-parameter -> values searched by ``mmcl tune`` on validation data (at least the default
    # budget of ``tuning.trials`` points; every method gets the same number of trials).
    tuning_grid: ClassVar[dict[str, list]] = {}
    # For a method that changes the backbone through hooks only (prompts, prefixes, adapters; no
    # backbone weight trains): tower -> its first hooked block (a tower not named is left alone).
    # The frozen prefix cache reads it through frozen_blocks / frozen_weights; None: not such a method.
    hooked_from: ClassVar[dict[str, int] | None] = None

    @classmethod
    def inapplicable(cls, modalities: list[str] | tuple[str, ...]) -> str | None:
        """Why the method cannot run on samples of ``modalities`` (None: it can)."""
        missing = [" or ".join(group) for group in cls.required_modalities if not set(group) & set(modalities)]
        return f"{cls.name} needs {' and '.join(missing)} in every sample" if missing else None

    def __init__(self, encoder: MultiModalEncoder, context: RunContext, hparams):
        super().__init__()
        self.encoder = encoder
        self.context = context
        self.hparams = hparams

    @classmethod
    def make_config(cls, values: dict | None) -> "MethodConfig":
        """Validate hyper-parameters (``config.methods[name]``) into the method's dataclass."""
        values = dict(values or {})
        if cls.head_defaults and isinstance(values.get("head", {}), dict):
            values["head"] = {**cls.head_defaults, **values.get("head", {})}
        try:
            return cls.Config(**values)
        except pydantic.ValidationError as error:
            problems = []
            for item in error.errors():
                key = ".".join([f"methods.{cls.name}", *(str(p) for p in item["loc"])])
                if item["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
                    problems.append(f"{key}: unknown key")
                elif item["type"] == "value_error":  # our validators' messages already say what was given
                    problems.append(f"{key}: {item['msg'].removeprefix('Value error, ')}")
                else:
                    problems.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
            raise ConfigError("invalid method hyper-parameters: " + "; ".join(problems)) from None

    def hparams_dict(self) -> dict:
        return asdict(self.hparams)

    # ------------------------------------------------------------------ hooks (override as needed)
    def begin_task(self, task: Task) -> None:
        """Called before training task ``task`` (the engine has added its classes to ``seen_classes``)."""

    def trains_on(self, task: Task) -> bool:
        """Whether the engine runs optimizer steps on ``task`` (after :meth:`begin_task`); default:
        every task of a method that trains (APER adapts on the first task only)."""
        return self.trains

    def training_loss(self, batch: Batch, task: Task) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_optimizer_step(self, task: Task) -> None:
        """Called after every optimizer step (e.g. to re-apply gradient masks or momentum updates)."""

    def class_heads(self) -> list["CosineClassifier"]:
        """The cosine heads of the method; the engine enforces their frozen rows around every step."""
        return [m for m in self.modules() if isinstance(m, CosineClassifier)]

    def run_record(self) -> dict:
        """Extra entries of the run's ``metrics.json`` (e.g. the replay buffer); none by default."""
        return {}

    def end_task(self, task: Task) -> None:
        """Called after training task ``task``, before it is evaluated."""

    def predict(self, batch: Batch, label_space: torch.Tensor, modality_known: bool = True) -> torch.Tensor:
        """Logits ``[B, len(label_space)]`` for the run labels in ``label_space``."""
        raise NotImplementedError

    def representation(self, batch: Batch, modality_known: bool = True) -> torch.Tensor | None:
        """The features ``[B, D]`` the method's classifier reads (its head, prototypes or readout),
        computed as :meth:`predict` computes them; None where the method has no single such feature
        (the engine's forgetting decomposition then skips it). A diagnostic only: the engine fits a
        nearest-class-mean classifier on it (:func:`mmcl.engine.forgetting_decomposition`), never
        a prediction of the method's. Default: None."""
        return None

    def optimizer_parameter_groups(self) -> list[dict]:
        """Parameter groups for the engine's optimizer (default: every trainable parameter)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    # ------------------------------------------------------------- frozen prefix (the engine's cache)
    def frozen_blocks(self, tower: str) -> int:
        """How many leading blocks of ``tower`` ("vision" or "text") this method never changes: no
        weight of theirs trains and no hook of the method acts before the state enters the next one.
        The engine runs them once per benchmark (:mod:`mmcl.models.prefix_cache`). Prompts, prefixes
        and adapters: their first hooked block; fine-tuning: the first trainable block; a tower the
        method leaves alone: all its blocks. Default: from ``hooked_from``; without it 0, nothing is
        cached (safe for any method)."""
        if self.hooked_from is None:
            return 0
        return self.hooked_from.get(tower, self.tower_depth(tower))

    def frozen_weights(self, tower: str) -> bool:
        """Whether no weight of ``tower`` ever changes in this method (it acts through hooks at most),
        so that a hook-free pass is the frozen backbone's and its embeddings can be cached: the prompt
        methods' queries, the prototype methods' features. Default: whether ``hooked_from`` is set."""
        return self.hooked_from is not None

    def tower_depth(self, tower: str) -> int:
        return len(self.encoder.blocks(tower))

    # --------------------------------------------------------------------------- checkpointing
    def frozen_state_names(self) -> set[str]:
        """Keys of the frozen backbone: rebuilt from the profile, so never checkpointed."""
        names = {f"encoder.{n}" for n, p in self.encoder.named_parameters() if not p.requires_grad}
        return names | {f"encoder.{n}" for n, _ in self.encoder.named_buffers()}

    def checkpoint_state(self) -> dict:
        frozen = self.frozen_state_names()
        return {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                for k, v in self.state_dict().items() if k not in frozen}

    def load_checkpoint_state(self, state: dict) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = set(missing) - self.frozen_state_names()
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not match method {self.name!r}: missing {sorted(missing)[:5]}, "
                               f"unexpected {sorted(unexpected)[:5]}")


class CosineClassifier(nn.Module):
    """Cosine-similarity head over all run classes, initialised at their text embeddings.

    ``weight`` is ``[C, D]``; logits are ``scale * cos(feature, weight[c])``. Classes are scored
    only where asked (the label space), so "growing" the head is adding classes to the space.

    Rows can be frozen (:meth:`freeze_rows`): the engine zeroes their gradient before every step
    (so neither gradient clipping nor the optimizer's moments see them) and puts their values back
    after it (so weight decay cannot move them either). The mask and the kept values are set at the
    start of each task, so they are not part of the checkpoint.
    """

    def __init__(self, text_embeddings: torch.Tensor, scale: float, trainable: bool = True):
        super().__init__()
        self.weight = nn.Parameter(text_embeddings.clone().float(), requires_grad=trainable)
        self.scale = scale
        self.register_buffer("frozen", torch.zeros(len(text_embeddings), dtype=torch.bool), persistent=False)
        self.register_buffer("frozen_values", torch.zeros_like(self.weight.detach()), persistent=False)

    def forward(self, features: torch.Tensor, label_space: torch.Tensor) -> torch.Tensor:
        weight = F.normalize(self.weight[label_space], dim=-1)
        return self.scale * F.normalize(features.float(), dim=-1) @ weight.T

    @torch.no_grad()
    def freeze_rows(self, rows: torch.Tensor) -> None:
        """Freeze exactly the rows where the boolean mask ``rows [C]`` is true, at their current values."""
        self.frozen.copy_(rows.to(self.frozen.device, torch.bool))
        self.frozen_values.copy_(self.weight.detach())

    @torch.no_grad()
    def mask_gradient(self) -> None:
        if self.weight.grad is not None and bool(self.frozen.any()):
            self.weight.grad[self.frozen] = 0

    @torch.no_grad()
    def restore_frozen_rows(self) -> None:
        if bool(self.frozen.any()):
            self.weight[self.frozen] = self.frozen_values[self.frozen]


def apply_head_rules(head: CosineClassifier, rules: HeadConfig, task: Task) -> None:
    """The shared head rules at the start of ``task``: with ``freeze_old_rows`` only the rows of the
    task's classes train (class-incremental: every old class is frozen; domain-incremental: none,
    every class recurs); otherwise every row may train."""
    frozen = torch.full((len(head.frozen),), rules.freeze_old_rows, dtype=torch.bool)
    frozen[torch.tensor(task.classes, dtype=torch.long)] = False
    head.freeze_rows(frozen)


def fuse(embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean of the L2-normalised modality embeddings ``[B, D]`` (the default fusion)."""
    return torch.stack([F.normalize(e.float(), dim=-1) for e in embeddings.values()]).mean(dim=0)


def unfreeze_last_blocks(encoder: MultiModalEncoder, count: int) -> list[nn.Parameter]:
    """Make the last ``count`` vision blocks (and the final norm and projection) trainable."""
    if count <= 0:
        return []
    visual = encoder.clip.visual
    modules = list(visual.transformer.resblocks)[-count:] + [visual.ln_post]
    parameters = [p for m in modules for p in m.parameters()] + ([visual.proj] if visual.proj is not None else [])
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


class TextAnchoredMethod(Method):
    """Shared model of the baselines: backbone (last blocks optionally trainable), mean fusion of
    modalities, cosine head initialised at the class text embeddings."""

    def __init__(self, encoder: MultiModalEncoder, context: RunContext, hparams: MethodConfig):
        super().__init__(encoder, context, hparams)
        unfreeze_last_blocks(encoder, hparams.trainable_blocks)
        text = encoder.class_text_embeddings(context.class_names, context.config.model.classifier_templates)
        self.head = CosineClassifier(text, encoder.logit_scale, trainable=hparams.head.train)

    def begin_task(self, task: Task) -> None:
        """Applies the head rules; a subclass that overrides this calls ``super().begin_task(task)``."""
        apply_head_rules(self.head, self.hparams.head, task)

    def frozen_blocks(self, tower: str) -> int:
        """The vision tower's last ``trainable_blocks`` train; the text tower never does (and hooks,
        where a subclass declares ``hooked_from``)."""
        depth = self.tower_depth(tower)
        trainable = self.hparams.trainable_blocks if tower == "vision" else 0
        hooked = (self.hooked_from or {}).get(tower, depth)
        return min(depth - trainable, hooked)

    def frozen_weights(self, tower: str) -> bool:
        return tower == "text" or self.hparams.trainable_blocks == 0

    def features(self, batch: Batch) -> torch.Tensor:
        return fuse({m: self.encoder.encode(m, x) for m, x in batch.inputs.items()})

    def logits(self, batch: Batch, label_space: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(batch), label_space)

    def predict(self, batch: Batch, label_space: torch.Tensor, modality_known: bool = True) -> torch.Tensor:
        return self.logits(batch, label_space)

    def representation(self, batch: Batch, modality_known: bool = True) -> torch.Tensor | None:
        """The fused features the cosine head reads (a subclass that predicts from other features overrides it)."""
        return self.features(batch)

    def classification_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cross-entropy over the seen classes; returns (loss, logits, label space)."""
        space = self.context.seen_label_space()
        logits = self.logits(batch, space)
        return F.cross_entropy(logits, targets_in(space, batch.labels)), logits, space


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logit distillation (LwF; the MoE adapters' L_kd): KL(teacher || student) on temperature-softened
    logits, scaled by T^2 (Hinton et al.)."""
    return F.kl_div(F.log_softmax(student / temperature, dim=-1), F.softmax(teacher / temperature, dim=-1),
                    reduction="batchmean") * temperature**2


def targets_in(label_space: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Positions of ``labels`` inside ``label_space`` (every label must be in the space)."""
    lookup = torch.full((int(label_space.max()) + 1,), -1, dtype=torch.long, device=label_space.device)
    lookup[label_space] = torch.arange(len(label_space), device=label_space.device)
    positions = lookup[labels.clamp(max=len(lookup) - 1)]
    if (positions < 0).any() or (labels >= len(lookup)).any():
        raise ValueError("a label is outside the label space")
    return positions


def iterate_task_batches(dataset: MultiModalDataset, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Unshuffled batches of ``dataset`` on ``device`` (for statistics at the end of a task)."""
    for batch in dataset.batches(batch_size):
        yield batch.to(device)
