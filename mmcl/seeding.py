"""The seeds a run derives from its seed: one formula, one table of purposes.

Every random stream of a run is seeded by ``seed * 1000 + offset + task``, where the offset names
what the stream draws (:data:`OFFSETS`) and ``task`` is the task's index (0 for a stream drawn once
per run). A stream seeded by the run seed and the task alone is the same whether the run went
through or resumed from a checkpoint, and independent of what other streams drew before it.

The integers are part of every run's numbers: changing an offset, the stride or the formula
changes results (``tests/test_seeding.py`` pins them). The offsets are far apart only for streams
of fewer than 17 tasks (task 17's ``"task"`` seed is the ``"projection"`` seed); that is how the
runs were always seeded, kept so.
"""
from __future__ import annotations

import torch

STRIDE = 1000  # seeds of consecutive run seeds lie this far apart
OFFSETS = {
    # The global RNGs (random, numpy, torch) at a task's start (mmcl.runtime.seed_everything), and
    # a method's own generator reseeded at each task's start for what it draws while it trains and
    # aligns: replay and buffer batches, reservoir choices, pseudo-features, re-alignment order.
    "task": 0,
    "projection": 17,  # RanPAC's random projection, drawn once per run
    "exemplars": 500,  # the exemplars kept at a task's end (replay, iCaRL, AV-CIL)
    "ridge-split": 700,  # RanPAC's 80/20 split of a task's features that chooses the ridge
}


def derived_seed(seed: int, purpose: str = "task", task: int = 0) -> int:
    """``seed * 1000 + OFFSETS[purpose] + task``: the seed of ``purpose``'s stream in task ``task``."""
    if purpose not in OFFSETS:
        raise ValueError(f"unknown seed purpose {purpose!r}; known: {sorted(OFFSETS)}")
    return seed * STRIDE + OFFSETS[purpose] + task


def seeded_generator(seed: int, purpose: str = "task", task: int = 0) -> torch.Generator:
    """A new CPU generator seeded with :func:`derived_seed`."""
    return torch.Generator().manual_seed(derived_seed(seed, purpose, task))
