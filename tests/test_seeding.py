"""The derived seeds are the integers the runs were always seeded with (changing one changes results)."""
from __future__ import annotations

import pytest
import torch

from mmcl.seeding import OFFSETS, derived_seed, seeded_generator


def test_offset_table_is_pinned():
    assert OFFSETS == {"task": 0, "projection": 17, "exemplars": 500, "ridge-split": 700}


@pytest.mark.parametrize("seed", [0, 1, 2, 7, 123])
@pytest.mark.parametrize("task", [0, 1, 4, 9])
def test_derived_seeds_match_the_former_formula(seed, task):
    assert derived_seed(seed, "task", task) == seed * 1000 + task  # seed_everything, per-task generators
    assert derived_seed(seed, "exemplars", task) == seed * 1000 + 500 + task  # replay, iCaRL, AV-CIL
    assert derived_seed(seed, "ridge-split", task) == seed * 1000 + 700 + task  # RanPAC's ridge choice
    assert derived_seed(seed, "projection") == seed * 1000 + 17  # RanPAC's projection
    assert derived_seed(seed) == seed * 1000


def test_a_few_literal_seeds():
    assert [derived_seed(3, p, 2) for p in ("task", "projection", "exemplars", "ridge-split")] == [3002, 3019, 3502,
                                                                                                    3702]


def test_seeded_generator_draws_as_a_manually_seeded_one():
    expected = torch.randn(5, generator=torch.Generator().manual_seed(2 * 1000 + 500 + 3))
    assert torch.equal(torch.randn(5, generator=seeded_generator(2, "exemplars", 3)), expected)


def test_unknown_purpose_is_refused():
    with pytest.raises(ValueError, match="unknown seed purpose"):
        derived_seed(0, "exemplar")
