"""The one tower forward (MultiModalEncoder.tower_input -> run_blocks -> tower_output) and the method contract.

Prompts, prefixes and adapters all plug into the same forward; these tests pin it to open_clip's own
encoders and to hand-written reference forwards, so a change to the path shows up as a number.
"""
from __future__ import annotations

import ast
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from mmcl.config import load_config
from mmcl.methods import BUILDING_BLOCKS
from mmcl.methods.losses import distillation_loss
from mmcl.models.backbone import (
    class_token_block,
    multihead_attention,
    vision_block,
)
from mmcl.models.factory import build_encoder
from mmcl.models.moe_adapter import AdapterSettings, CrossModalMoEAdapters
from mmcl.models.prompts import PromptHooks, encode_prompted

METHODS = Path(__file__).resolve().parents[1] / "mmcl" / "methods"


@pytest.fixture(scope="module")
def encoder():
    """The smoke profile's micro architecture, randomly initialised (no pre-training needed here)."""
    torch.manual_seed(0)
    return build_encoder(load_config("smoke", ["model.pretrained=null"]), "cpu")


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_no_method_file_imports_another_method_file():
    """Shared machinery lives in mmcl/models or the building blocks of mmcl/methods (the contract, heads,
    losses, ...): methods never import each other."""
    shared = {f"mmcl.methods.{name}" for name in BUILDING_BLOCKS}
    offenders = []
    for path in sorted(METHODS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "mmcl.methods":  # from mmcl.methods import x
                modules = [f"mmcl.methods.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{path.name}: {m}" for m in modules if m.startswith("mmcl.methods.")
                          and m not in shared and path.stem not in BUILDING_BLOCKS and path.name != "__init__.py"]
    assert offenders == []


def test_plain_forward_equals_open_clip_encoders(encoder, images):
    clip = encoder.clip
    assert torch.allclose(encoder.encode("image", images), clip.encode_image(encoder.pixels(images)), atol=1e-5)
    tokens = encoder.tokenizer(["a photo of a cat.", "a red square"])
    assert torch.allclose(encoder.encode("text", tokens), clip.encode_text(tokens), atol=1e-5)
    video = images.view(1, 3, 3, 32, 32)  # one clip of three frames: the mean of the frames' embeddings
    assert torch.allclose(encoder.encode("video", video), clip.encode_image(encoder.pixels(images)).mean(0, keepdim=True),
                          atol=1e-5)


def test_run_blocks_in_pieces_equals_one_pass(encoder, images):
    state = encoder.tower_input("image", images)
    half = encoder.run_blocks(state, stop=1)
    assert state.depth == 0 and half.depth == 1  # states are never changed in place
    assert torch.equal(encoder.tower_output(encoder.run_blocks(half, pooled_only=True)), encoder.encode("image", images))
    with pytest.raises(ValueError, match="all 2 blocks"):
        encoder.tower_output(half)


def test_last_block_for_the_class_token_alone_equals_the_whole_block(encoder, images):
    """encode() reads only the pooled class token, so its last vision block computes that token alone:
    the same embedding as the whole block, with no hook, with deep prompts and with prefixes there."""
    assert encoder.pools_class_token
    state = encoder.tower_input("image", images)
    whole, alone = encoder.run_blocks(state), encoder.run_blocks(state, pooled_only=True)
    assert whole.tokens.shape[1] == 17 and alone.tokens.shape[1] == 1
    assert torch.allclose(alone.tokens[:, 0], whole.tokens[:, 0], atol=1e-5)
    assert torch.allclose(encoder.tower_output(alone), encoder.tower_output(whole), atol=1e-5)
    depth = len(encoder.vision_blocks)
    for style in ("prompt", "prefix"):  # prompts/prefixes in every block, the last one included
        prompt = torch.randn(3, depth, 4, encoder.vision_width, generator=torch.Generator().manual_seed(4))
        with PromptHooks(prompt, encoder.vision_blocks, style) as hooks:
            full = encoder.tower_output(encoder.run_blocks(state, hooks=hooks))
        with PromptHooks(prompt, encoder.vision_blocks, style) as hooks:
            fast = encoder.tower_output(encoder.run_blocks(state, hooks=hooks, pooled_only=True))
        assert torch.allclose(fast, full, atol=1e-5), style
        assert not torch.allclose(fast, encoder.tower_output(whole), atol=1e-3)  # the prompts do act
    block = encoder.vision_blocks[-1]
    assert torch.allclose(class_token_block(block, whole.tokens), block(whole.tokens)[:, :1], atol=1e-5)
    encoder.clip.visual.pool_type = "avg"  # a tower that pools every patch token needs them all
    try:
        del encoder.__dict__["pools_class_token"]
        assert not encoder.pools_class_token
        assert encoder.run_blocks(state, pooled_only=True).tokens.shape[1] == 17
    finally:
        encoder.clip.visual.pool_type = "tok"
        del encoder.__dict__["pools_class_token"]


def _attention_outputs(block, x, keys, values, kind, direct):
    """A block's output and the gradients of a fixed weighting of it (inputs, prefixes, weights), with
    its attention computed by :func:`multihead_attention` (``direct``) or by the module itself."""
    x, keys, values = (t.clone().requires_grad_(True) for t in (x, keys, values))
    if direct:
        if kind == "self":
            y = vision_block(block, x)
        elif kind == "class token":
            y = class_token_block(block, x)
        else:
            h = block.ln_1(x)
            y = x + multihead_attention(block.attn, h, torch.cat([keys, h], 1), torch.cat([values, h], 1))
    else:
        h = block.ln_1(x)
        if kind == "self":
            y = block(x)
        elif kind == "class token":
            token = x[:, :1] + block.attn(h[:, :1], h, h, need_weights=False)[0]
            y = token + block.mlp(block.ln_2(token))
        else:
            y = x + block.attn(h, torch.cat([keys, h], 1), torch.cat([values, h], 1), need_weights=False)[0]
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = [x.grad, keys.grad, values.grad] + [p.grad for p in block.parameters()]
    block.zero_grad(set_to_none=True)
    return [y.detach()] + grads


@pytest.mark.parametrize("heads", [3, 4])
@pytest.mark.parametrize("kind", ["self", "class token", "prefix"])
def test_batch_first_attention_is_bitwise_the_modules(heads, kind):
    """multihead_attention skips nn.MultiheadAttention's transposes to sequence-first and back: the
    outputs and the gradients to the inputs (and prefixes) are bitwise the module's, odd and even head
    counts, in training and eval mode; with weights that learn it leaves the pass to the module (their
    gradients would sum over the rows in another order), so those gradients are bitwise the same too."""
    torch.manual_seed(heads)
    block = open_clip.transformer.ResidualAttentionBlock(24 * heads, heads, 2.0, batch_first=True)
    generator = torch.Generator().manual_seed(5)
    x, keys, values = (torch.randn(6, n, 24 * heads, generator=generator) for n in (9, 2, 2))
    for training, learns in ((False, False), (True, False), (False, True)):
        block.train(training).requires_grad_(learns)
        direct, module = (_attention_outputs(block, x, keys, values, kind, d) for d in (True, False))
        for got, want in zip(direct, module):
            assert (got is None and want is None) or torch.equal(got, want), (training, learns)
        assert direct[1] is not None and any(g is not None for g in direct[4:]) == learns


def test_prompt_hook_equals_hand_written_reference(encoder, images):
    """VPT-shallow by hand: [CLS, prompt, patches] through every block, prompt dropped before pooling."""
    prompt = torch.randn(3, 1, 4, encoder.vision_width, generator=torch.Generator().manual_seed(2))
    visual = encoder.clip.visual
    x = visual._embeds(encoder.pixels(images))
    x = torch.cat([x[:, :1], prompt[:, 0], x[:, 1:]], dim=1)
    for block in encoder.vision_blocks:
        x = block(x)
    x = torch.cat([x[:, :1], x[:, 5:]], dim=1)
    pooled, _ = visual._pool(x)
    reference = pooled @ visual.proj
    assert torch.allclose(encode_prompted(encoder, images, prompt, "prompt"), reference, atol=1e-5)


def test_prefix_hook_equals_hand_written_attention(encoder, images):
    """Prefix-tuning in block 0 by hand: the block's attention over [prefix keys; tokens]."""
    prompt = torch.randn(3, 1, 4, encoder.vision_width, generator=torch.Generator().manual_seed(3))
    visual, block = encoder.clip.visual, encoder.vision_blocks[0]
    x = visual._embeds(encoder.pixels(images))
    h = block.ln_1(x)
    keys, values = torch.cat([prompt[:, 0, :2], h], 1), torch.cat([prompt[:, 0, 2:], h], 1)
    x = x + block.ls_1(block.attn(h, keys, values, need_weights=False)[0])
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    for later in encoder.vision_blocks[1:]:
        x = later(x)
    pooled, _ = visual._pool(x)
    assert torch.allclose(encode_prompted(encoder, images, prompt, "prefix"), pooled @ visual.proj, atol=1e-5)


class ResidualHook:
    """An adapter as a hook: ``x + tanh(x) @ W`` after block ``index``."""

    def __init__(self, index, weight):
        self.index, self.weight = index, weight

    def before_block(self, index, x):
        return x

    def after_block(self, index, x):
        return x + torch.tanh(x) @ self.weight if index == self.index else x


def test_adapter_hook_equals_hand_written_reference(encoder, images):
    weight = torch.randn(encoder.vision_width, encoder.vision_width, generator=torch.Generator().manual_seed(4)) * 0.1
    visual = encoder.clip.visual
    x = visual._embeds(encoder.pixels(images))
    x = encoder.vision_blocks[0](x)
    x = x + torch.tanh(x) @ weight
    x = encoder.vision_blocks[1](x)
    pooled, _ = visual._pool(x)
    assert torch.allclose(encoder.encode("image", images, ResidualHook(0, weight)), pooled @ visual.proj, atol=1e-5)


def test_moe_adapters_run_on_the_same_forward(encoder, images):
    """At initialisation (zero up-projections) the adapted towers are the plain forward, for every
    modality of a multi-modal batch; with trained experts and no cross-attention, one modality's
    adapters equal the same adapters plugged in as after-block hooks."""
    inputs = {"video": images.view(1, 3, 3, 32, 32).expand(2, -1, -1, -1, -1), "audio": images[:2],
              "text": encoder.tokenizer(["a photo of a cat.", "a red square"])}
    torch.manual_seed(5)
    adapters = CrossModalMoEAdapters(encoder, sorted(inputs), AdapterSettings(layers=1))
    out = adapters.encode(encoder, inputs)
    for modality, x in inputs.items():
        assert torch.allclose(out.embeddings[modality], encoder.encode(modality, x), atol=1e-5), modality

    single = CrossModalMoEAdapters(encoder, ["image"], AdapterSettings(layers=2, cross_attention=False))
    with torch.no_grad():
        for parameter in single.parameters():
            parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(parameter.numel()))
    steps = single.adapters["image"]

    class AdapterHooks:
        def before_block(self, index, x):
            return x

        def after_block(self, index, x):
            return steps[index](x, {}, 1)[0]

    expected = encoder.encode("image", images, AdapterHooks())
    got = single.encode(encoder, {"image": images}).embeddings["image"]
    assert not torch.allclose(expected, encoder.encode("image", images), atol=1e-3)  # the adapters act
    assert torch.allclose(got, expected, atol=1e-5)


def test_distillation_loss_known_value():
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    p = F.softmax(teacher / 2, -1)  # T = 2: [e/(e+1), 1/(e+1)]; student uniform
    expected = (p * (p.log() - torch.log(torch.tensor(0.5)))).sum() * 4
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(expected.item(), abs=1e-6)
