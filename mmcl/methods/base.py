"""The method contract: what a method declares, and the hooks the engine calls.

A method is one class in one file of ``mmcl/methods/`` (the package imports every file in it), added
to the registry by :func:`register`. The engine owns the loop, the optimizer, evaluation,
checkpoints and records; a method owns what makes it different::

    @register
    class Finetune(TextAnchoredMethod):
        card = Card(name="finetune", family="classic", description="sequential fine-tuning",
                    tuning_grid={"lr_scale": [0.3, 1.0, 3.0], "trainable_blocks": [0, 1]})

        def training_loss(self, batch, task):
            return self.classification_loss(batch, task)

The whole contract. Declarations (class attributes):

- ``card``: :class:`~mmcl.methods.card.Card`, what the method is (name, family, description,
  compatible scenarios, required modalities, tuning grid, ablations, comparisons, head defaults);
  required. Each card field also reads as a class attribute (``Finetune.tuning_grid``), never set.
- ``Config``: its hyper-parameters, a pydantic dataclass extending :class:`MethodConfig` (``lr_scale``,
  ``head``) or its base class's ``Config``; ``methods.<name>.*`` keys validate into it.
- ``frozen``: :class:`Frozen`, the backbone blocks and weights it never changes (the engine computes
  them once); default None, nothing (safe). Set ``self.frozen`` in ``__init__`` where it depends on
  what the method built.
- ``trains``: False for a method that never takes an optimizer step (zero-shot, prototypes); default True.
- ``trains_on_all_seen_data``: True to train each task on the union of all data seen so far (joint).
- ``uses_modality_id``: True to be evaluated with and without the modality ID (modality streams).

Hooks (methods), in the order the engine calls them; only ``predict`` (or ``representation`` and
``classify``) and, for a method that trains, ``training_loss`` are required:

- ``__init__(encoder, context, hparams)``: build the model (the encoder arrives frozen), call ``super``.
- ``begin_task(task)``: before ``task`` trains (``context.seen_classes`` has its classes); call ``super()``.
- ``trains_on(task)``: whether optimizer steps run on ``task``; default ``trains``.
- ``optimizer_parameter_groups()``: the optimizer's groups; default every trainable parameter.
- ``training_loss(batch, task)``: the loss of a batch, or (loss, {name: float}) to record its parts.
- ``after_optimizer_step(task)``: after every optimizer step (gradient masks, momentum updates).
- ``end_task(task)``: after ``task`` trained, before it is evaluated (exemplars, statistics, merges).
- ``predict(batch, label_space, modality_known)``: logits ``[B, len(label_space)]``; or, instead,
- ``representation(batch, modality_known)``: the features the classifier reads (the forgetting probe
  reads them too); default None; and ``classify(features, label_space)``: the logits from them.
- ``run_record()``: extra entries of the run's ``metrics.json``; default none.
- ``get_extra_state()`` / ``set_extra_state(state)``: state outside parameters and buffers (checkpoints).
- ``load_checkpoint_state(state)``: load a checkpoint; override to re-derive what a state dict lacks.

What the contract gives a method: ``self.encoder``, ``self.context`` (:class:`RunContext`: config,
scenario, class names, device, tasks as training views, seen classes) and ``self.hparams`` (its
``Config``); the engine reads ``make_config``, ``hparams_dict``, ``inapplicable``, ``frozen_blocks``,
``frozen_weights``, ``class_heads``, ``checkpoint_state`` and ``predict_with_features``, which a method
does not override.

Building blocks beside the contract: :class:`~mmcl.methods.text_anchored.TextAnchoredMethod` (the
baselines' model: its ``Config`` adds ``trainable_blocks``; ``features(batch)``, the fused embeddings;
``classification_loss(batch, task)``; ``self.head``, a :class:`~mmcl.methods.heads.TextHead` with
``label_space(task)`` and ``cross_entropy(features, labels, task, **options)``, whose head rules
its ``begin_task`` applies), :mod:`mmcl.methods.losses`, :mod:`mmcl.methods.snapshot` (teachers kept
out of the checkpoint), :mod:`mmcl.methods.prompting` (the prompt family's hyper-parameters).
``docs/writing_a_method.md`` writes a method from this docstring.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar, Mapping

import pydantic
import torch
import torch.nn as nn

from mmcl.config import Config, ConfigError
from mmcl.data.dataset import Batch
from mmcl.data.stream import Task
from mmcl.methods.card import Card
from mmcl.methods.heads import CosineClassifier, HeadConfig
from mmcl.models.backbone import MultiModalEncoder

REGISTRY: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator adding a method to the registry under its card's name.

    The card checked itself when it was made (:class:`~mmcl.methods.card.Card`); here, what needs the
    method's ``Config``: the tuning grid names its hyper-parameters and each point, ablation and
    comparison is a valid set of them, and a method that trains is tuned (one that does not is not).
    """
    card = cls.__dict__.get("card")
    if not isinstance(card, Card):
        raise TypeError(f"{cls.__name__} needs a card of its own: card = Card(name=..., family=..., description=...)")
    if card.name in REGISTRY and REGISTRY[card.name] is not cls:
        raise TypeError(f"method name {card.name!r} is already registered by {REGISTRY[card.name].__name__}")
    problems = config_problems(cls)
    if problems:
        raise TypeError(f"{cls.__name__}: " + "; ".join(problems))
    REGISTRY[card.name] = cls
    return cls


def config_problems(cls: type["Method"]) -> list[str]:
    """What :func:`register` refuses in a method's card given its ``Config`` (empty: nothing)."""
    grid = cls.card.tuning_grid
    if not cls.trains:
        return ["trains nothing but declares a tuning grid"] if grid else []
    if not grid:
        return ["a method that trains needs a tuning grid (card.tuning_grid; every method gets the same budget)"]
    names = {f.name for f in fields(cls.Config)}
    unknown = [key for key in grid if key not in names]
    if unknown:
        return [f"tuning_grid: unknown hyper-parameters {unknown}"]
    found = []
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    variants = {**{f"tuning_grid point {p}": p for p in points},
                **{f"ablation {n!r}": v for n, v in cls.card.ablations.items()},
                **{f"comparison {n!r}": v for n, v in cls.card.comparisons.items()}}
    for what, values in variants.items():
        try:
            cls.make_config(values)
        except ConfigError as error:
            found.append(f"{what} is invalid: {error}")
    return found


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
class MethodConfig:
    """The hyper-parameters every method has; a method's ``Config`` extends it."""

    lr_scale: float = pydantic.Field(1.0, gt=0)  # multiplies train.lr and every rate of the method's groups
    head: HeadConfig = pydantic.Field(default_factory=HeadConfig)  # the cosine head's rules


def at_most(field: str, limit: str):
    """A pydantic field validator: ``field`` may not exceed the (earlier declared) field ``limit``.

    Use as ``_top_k_fits = at_most("top_k", "pool_size")`` in a method's Config.
    """

    def check(value, info: pydantic.ValidationInfo):
        if limit in info.data and value is not None and value > info.data[limit]:
            raise ValueError(f"must be at most {limit} ({info.data[limit]}), got {value}")
        return value

    return pydantic.field_validator(field)(check)


@dataclass(frozen=True)
class Frozen:
    """What of the backbone a method never changes, per tower (``"vision"``, ``"text"``). The engine
    runs that part once per benchmark (:mod:`mmcl.models.prefix_cache`) through
    :meth:`Method.frozen_blocks` and :meth:`Method.frozen_weights`.

    ``hooked_from``: tower -> the first block a hook of the method (prompt, prefix, adapter) acts at;
    negative counts from the end, as a Python index (-2: the last two blocks).
    ``trains_last``: tower -> how many of its last blocks' weights train: a number, or the name of
    the hyper-parameter holding it (``"trainable_blocks"``).
    A tower named in neither is left alone: all its blocks and weights are frozen.
    """

    hooked_from: Mapping[str, int] = field(default_factory=dict)
    trains_last: Mapping[str, int | str] = field(default_factory=dict)


class _CardField:
    """A card field read as a class (or instance) attribute: ``Finetune.name`` is ``Finetune.card.name``."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, obj, owner=None):
        card = (owner if owner is not None else type(obj)).card
        if card is None:
            raise AttributeError(f"{self.name}: the method has no card")
        return getattr(card, self.name)

    def __set__(self, obj, value):
        raise AttributeError(f"{self.name} is the card's: declare card = Card({self.name}=...)")


# What a method declared as class attributes before cards (and the frozen-prefix overrides): refused
# in a subclass, with what replaces them.
_REPLACED = {**{f.name: "a field of card = Card(...)" for f in fields(Card)},
             "hooked_from": "frozen = Frozen(hooked_from=...)", "frozen_blocks": "frozen = Frozen(...)",
             "frozen_weights": "frozen = Frozen(...)"}


class Method(nn.Module):
    """The contract (the module docstring lists it whole)."""

    card: ClassVar[Card | None] = None
    Config: ClassVar[type] = MethodConfig
    frozen: ClassVar[Frozen | None] = None
    trains: ClassVar[bool] = True
    trains_on_all_seen_data: ClassVar[bool] = False
    uses_modality_id: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        declared = [name for name in _REPLACED if name in cls.__dict__]
        if declared:
            raise TypeError(f"{cls.__name__} declares {declared}: " +
                            "; ".join(f"{name} is now {_REPLACED[name]}" for name in declared))

    @classmethod
    def inapplicable(cls, modalities: list[str] | tuple[str, ...]) -> str | None:
        """Why the method cannot run on samples of ``modalities`` (None: it can; the card's required modalities)."""
        return cls.card.inapplicable(modalities)

    def __init__(self, encoder: MultiModalEncoder, context: RunContext, hparams):
        super().__init__()
        self.encoder = encoder
        self.context = context
        self.hparams = hparams

    @classmethod
    def make_config(cls, values: dict | None) -> "MethodConfig":
        """Validate hyper-parameters (``config.methods[name]``) into the method's dataclass."""
        values = dict(values or {})
        head_defaults = cls.card.head_defaults if cls.card is not None else {}
        if head_defaults and isinstance(values.get("head", {}), dict):
            values["head"] = {**head_defaults, **values.get("head", {})}
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

    def optimizer_parameter_groups(self) -> list[dict]:
        """Parameter groups for the engine's optimizer (default: every trainable parameter)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def training_loss(self, batch: Batch, task: Task) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_optimizer_step(self, task: Task) -> None:
        """Called after every optimizer step (e.g. to re-apply gradient masks or momentum updates)."""

    def end_task(self, task: Task) -> None:
        """Called after training task ``task``, before it is evaluated."""

    def predict(self, batch: Batch, label_space: torch.Tensor, modality_known: bool = True) -> torch.Tensor:
        """Logits ``[B, len(label_space)]`` for the run labels in ``label_space``. Default:
        :meth:`classify` of :meth:`representation`, for a method that defines both."""
        return self.classify(self.representation(batch, modality_known), label_space)

    def representation(self, batch: Batch, modality_known: bool = True) -> torch.Tensor | None:
        """The features ``[B, D]`` the method's classifier reads (its head, prototypes or readout),
        computed as :meth:`predict` computes them; None where the method has no single such feature
        (the engine's forgetting decomposition then skips it). The engine fits a nearest-class-mean
        classifier on it (:func:`mmcl.engine.forgetting_decomposition`), a diagnostic, never a
        prediction of the method's. Default: None."""
        return None

    def classify(self, features: torch.Tensor, label_space: torch.Tensor) -> torch.Tensor:
        """Logits over ``label_space`` from :meth:`representation`'s ``features``. A method that
        defines it promises ``predict(batch) == classify(representation(batch))`` wherever the
        representation is not None, so the engine reads predictions and the forgetting probe's
        features from one forward pass (:meth:`predict_with_features`)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither predict nor classify")

    def predict_with_features(self, batch: Batch, label_space: torch.Tensor,
                              modality_known: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`predict`'s logits and the :meth:`representation` features they were computed from
        (None where the method predicts otherwise: no :meth:`classify`, or no representation here)."""
        if type(self).classify is not Method.classify:
            features = self.representation(batch, modality_known)
            if features is not None:
                return self.classify(features, label_space), features
        return self.predict(batch, label_space, modality_known), None

    def run_record(self) -> dict:
        """Extra entries of the run's ``metrics.json`` (e.g. the replay buffer); none by default."""
        return {}

    # -------------------------------------------------------------------- read by the engine
    def class_heads(self) -> list[CosineClassifier]:
        """The cosine heads of the method; the engine enforces their frozen rows around every step."""
        return [m for m in self.modules() if isinstance(m, CosineClassifier)]

    def frozen_blocks(self, tower: str) -> int:
        """How many leading blocks of ``tower`` ("vision" or "text") this method never changes: no
        weight of theirs trains and no hook of the method acts before the state enters the next one
        (from :attr:`frozen`; 0 without it: nothing is cached)."""
        if self.frozen is None:
            return 0
        depth = self.tower_depth(tower)
        hooked = self.frozen.hooked_from.get(tower, depth)
        first_hooked = hooked if hooked >= 0 else depth + hooked
        return max(0, min(depth - self._trained_blocks(tower), first_hooked))

    def frozen_weights(self, tower: str) -> bool:
        """Whether no weight of ``tower`` ever changes (the method acts through hooks at most), so that a
        hook-free pass is the frozen backbone's and its embeddings can be cached (from :attr:`frozen`)."""
        return self.frozen is not None and self._trained_blocks(tower) == 0

    def _trained_blocks(self, tower: str) -> int:
        count = self.frozen.trains_last.get(tower, 0)
        return int(getattr(self.hparams, count) if isinstance(count, str) else count)

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


for _field in fields(Card):
    setattr(Method, _field.name, _CardField(_field.name))
