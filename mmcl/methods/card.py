"""A method's card: what the method is, for the registry, the index, the sweeps and the tables.

One per method (``card = Card(...)`` in its class), torch-free, checked when it is made: the family
is one of :data:`FAMILIES`, the scenarios are known ones, a tuning grid has at least the default
trial budget of points (``tuning.trials``). What needs the method's ``Config`` (that the grid names
its hyper-parameters, that each point is valid) is checked by :func:`mmcl.methods.base.register`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping, get_args

from mmcl.config import SCENARIOS, TuningConfig

# What kind of method it is, for the tables' order and colours and the claims' rivals.
Family = Literal[
    "classic",  # fine-tuning, LwF, EWC: the continual-learning classics
    "rehearsal",  # keeps exemplars of old tasks (replay, iCaRL, DER++, AV-CIL)
    "prompt",  # prompts or prefixes on a frozen backbone (L2P, DualPrompt, CODA-Prompt)
    "prototype",  # class prototypes or statistics of (mostly) frozen features (SimpleCIL, RanPAC, APER)
    "fine-tuning",  # a pre-trained representation fine-tuned (SLCA)
    "paper",  # a reproduced paper's method (COMM, the MoE adapters)
    "reference",  # a bound: zero-shot (floor), joint training (ceiling)
]
FAMILIES: tuple[str, ...] = get_args(Family)


def default_budget() -> int:
    """The default number of tuning trials (``tuning.trials``): the least points a grid may have."""
    return TuningConfig().trials


@dataclass(frozen=True)
class Card:
    """What a method is: read by the registry, ``mmcl list``, the sweeps, tuning and the tables.

    Every field reads as a class attribute of the method too (``Finetune.tuning_grid``).
    """

    name: str  # the registry name: ``mmcl run --method <name>``, run folders, tables
    family: Family  # one of FAMILIES
    description: str  # one line, for ``mmcl list methods``
    compatible_scenarios: tuple[str, ...] = SCENARIOS  # the first is the one its ablation study runs on
    # Modalities every sample must carry, as groups of alternatives: (("audio",), ("video", "image"))
    # reads "audio, and video or image". A benchmark without them is left out of the method's sweeps.
    required_modalities: tuple[tuple[str, ...], ...] = ()
    # Hyper-parameter -> values ``mmcl tune`` searches (every method the same number of trials; empty
    # for a method that trains nothing).
    tuning_grid: Mapping[str, list] = field(default_factory=dict)
    # Variant name -> hyper-parameter overrides: ablations (the ablation study) and fair comparisons
    # (rows of the main tables, in ``comparison_scenarios``).
    ablations: Mapping[str, dict] = field(default_factory=dict)
    comparisons: Mapping[str, dict] = field(default_factory=dict)
    comparison_scenarios: tuple[str, ...] = ("class_incremental",)
    # The method's defaults for ``head.*`` keys, merged under the configured ``head`` mapping.
    head_defaults: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise TypeError(f"card of {self.name or '?'!r}: " + "; ".join(problems))

    def problems(self, budget: int | None = None) -> list[str]:
        """What is wrong with the card on its own (empty: nothing); ``budget``: the least grid points
        (default: :func:`default_budget`)."""
        found = []
        if not self.name or not isinstance(self.name, str):
            found.append("name: a registry name is needed")
        if self.family not in FAMILIES:
            found.append(f"family: {self.family!r} is not one of {list(FAMILIES)}")
        for key in ("compatible_scenarios", "comparison_scenarios"):
            value = getattr(self, key)
            if isinstance(value, str) or not isinstance(value, tuple):
                found.append(f"{key}: a tuple of scenarios, got {value!r}")
            elif set(value) - set(SCENARIOS):
                found.append(f"{key} names unknown scenarios {sorted(set(value) - set(SCENARIOS))}")
        if not self.compatible_scenarios:
            found.append("compatible_scenarios: at least one scenario")
        if not all(isinstance(group, tuple) and group and all(isinstance(m, str) for m in group)
                   for group in self.required_modalities):
            found.append(f"required_modalities: groups (tuples) of modality names, got {self.required_modalities!r}")
        for key in ("ablations", "comparisons"):
            bad = [name for name, overrides in getattr(self, key).items() if not isinstance(overrides, Mapping)]
            if bad:
                found.append(f"{key}: variants {bad} need a mapping of hyper-parameter overrides")
        found += grid_problems(self.tuning_grid, default_budget() if budget is None else budget)
        return found

    def inapplicable(self, modalities: list[str] | tuple[str, ...]) -> str | None:
        """Why the method cannot run on samples of ``modalities`` (None: it can)."""
        missing = [" or ".join(group) for group in self.required_modalities if not set(group) & set(modalities)]
        return f"{self.name} needs {' and '.join(missing)} in every sample" if missing else None


def grid_problems(grid: Mapping[str, list], budget: int) -> list[str]:
    """What is wrong with a tuning grid on its own: empty value lists, fewer points than ``budget``
    (an empty grid is a method that is not tuned: nothing wrong here)."""
    if not grid:
        return []
    empty = [key for key, values in grid.items() if not isinstance(values, (list, tuple)) or not values]
    if empty:
        return [f"tuning_grid: empty value lists {empty}"]
    points = math.prod(len(values) for values in grid.values())
    if points < budget:
        return [f"tuning_grid has {points} points, fewer than the default budget of {budget} trials (tuning.trials)"]
    return []
