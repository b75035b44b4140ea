"""Prompt pools and their insertion into the vision tower (mmcl.models.prompts)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcl.models.factory import build_encoder
from mmcl.models.prompts import (
    PromptHooks,
    PromptPool,
    encode_prompted,
    key_query_matching_loss,
)


def test_selection_picks_the_top_k_keys():
    pool = PromptPool(size=5, length=2, depth=1, width=4, query_dim=3, top_k=2)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [-1, 0, 0]]))
        pool.prompts.copy_(torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 2, 4))
    query = torch.tensor([[2.0, 0.1, 0.0], [0.0, 1.0, 0.2]])
    indices, similarity = pool.select(query)
    assert indices.tolist() == [[0, 3], [1, 3]]  # cosines: q0 -> k0 .999, k3 .74; q1 -> k1 .98, k3 .69
    expected = F.normalize(query, dim=-1) @ F.normalize(pool.keys.detach(), dim=-1).T
    assert torch.allclose(similarity, expected.topk(2, dim=-1).values)
    prompts = pool.gather(indices)
    assert prompts.shape == (2, 1, 4, 4)
    assert prompts[0, 0, :2].eq(0).all() and prompts[0, 0, 2:].eq(3).all()  # chosen prompts, in rank order
    # the matching loss reaches the keys only
    key_query_matching_loss(similarity).backward()
    assert pool.keys.grad[[0, 1, 3]].abs().sum(dim=-1).gt(0).all()
    assert pool.keys.grad[[2, 4]].eq(0).all()  # keys nobody chose do not move


@pytest.fixture(scope="module")
def micro_encoder():
    from mmcl.config import load_config

    return build_encoder(load_config("smoke"), "cpu")


@pytest.mark.parametrize("style,depth", [("prompt", 1), ("prompt", 2), ("prefix", 2)])
def test_prompted_encoding_keeps_the_layout_and_cleans_up(micro_encoder, style, depth):
    images = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    plain = micro_encoder.encode_visual(images)
    prompts = torch.randn(3, depth, 4, micro_encoder.vision_width)
    prompted = encode_prompted(micro_encoder, images, prompts, style)
    assert prompted.shape == plain.shape
    assert not torch.allclose(prompted, plain)
    assert all("attention" not in block.__dict__ for block in micro_encoder.vision_blocks)
    assert torch.allclose(micro_encoder.encode_visual(images), plain)  # the tower is unchanged afterwards


def test_prefix_of_the_blocks_own_tokens_changes_nothing(micro_encoder):
    """Prefix keys/values equal to the block's own (normalised) tokens duplicate every attention
    entry: each weight halves, their sum stays, so the block's output is exactly the plain one."""
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    visual, block = micro_encoder.clip.visual, micro_encoder.vision_blocks[0]
    normalised = block.ln_1(visual._embeds(micro_encoder.pixels(images)))
    prompts = torch.cat([normalised, normalised], dim=1).unsqueeze(1)  # [N, depth 1, 2 * tokens, width]
    with PromptHooks(prompts, micro_encoder.vision_blocks, "prefix") as hooks:
        prompted = micro_encoder.encode_visual(images, hooks)
    assert torch.allclose(prompted, micro_encoder.encode_visual(images), atol=1e-5)
    assert "attention" not in block.__dict__
