"""The frozen open_clip backbone, for every modality: :class:`MultiModalEncoder`.

:class:`MultiModalEncoder` turns each modality into an embedding with the towers (video frames
are encoded one by one and mean-pooled; spectrograms and depth go through the vision tower as
images) and exposes per-block hooks so that prompts and adapters can be inserted without copying
open_clip's forward pass.

The one factory, and where the weights come from: :func:`mmcl.models.factory.build_encoder`; the
pre-training of the shipped tiny configs (``model.pretrained: self``): :mod:`mmcl.models.pretraining`.
"""
from __future__ import annotations

import functools
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Literal, Protocol, Sequence

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcl.models.towers import flatten_frames, frames_of, mean_over_frames

CONFIG_DIR = Path(__file__).with_name("configs")
open_clip.add_model_config(CONFIG_DIR)
LOCAL_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


class TowerHooks(Protocol):
    """Insertion points in a tower's transformer. ``x`` is ``[N, tokens, width]``.

    ``before_block(i, x)`` may add tokens (prompts) or swap the block's attention (prefixes);
    ``after_block(i, x)`` may add a residual branch (adapters) or drop tokens again. Whatever a hook
    adds must be gone after the last block: pooling expects the tower's own token layout.
    """

    def before_block(self, index: int, x: torch.Tensor) -> torch.Tensor: ...

    def after_block(self, index: int, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class TowerState:
    """One modality's batch inside its tower, after ``depth`` blocks.

    ``tokens`` is ``[B * frames, N, W]`` (video frames are encoded one by one); ``text_ids`` are the
    text tower's token ids ``[B, N]`` (attention mask length, EOT position for pooling). A state is
    never changed in place, so a frozen prefix can be shared by a student and its teacher.
    """

    tokens: torch.Tensor
    tower: Literal["vision", "text"]
    frames: int = 1
    text_ids: torch.Tensor | None = None
    depth: int = 0


class MultiModalEncoder(nn.Module):
    """open_clip model + modality-aware encoding. Inputs are as made by :mod:`mmcl.data.modalities`."""

    def __init__(self, clip: nn.Module, tokenizer, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        # The run's frozen prefix cache (mmcl.models.prefix_cache), attached by the engine; None: off.
        self.prefix_cache = None
        self.clip = clip
        self.tokenizer = tokenizer
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        return int(self.clip.text_projection.shape[-1]) if isinstance(self.clip.text_projection, torch.Tensor) \
            else int(self.clip.text_projection.out_features)

    @property
    def vision_width(self) -> int:
        return int(self.clip.visual.conv1.out_channels)

    @property
    def vision_blocks(self) -> nn.ModuleList:
        return self.clip.visual.transformer.resblocks

    @property
    def text_blocks(self) -> nn.ModuleList:
        return self.clip.transformer.resblocks

    def eval_bytes_per_image(self) -> int:
        """Bytes of a no-grad vision block's live activations per image (residual, qkv, MLP hidden,
        attention scores), float32; prompts add tokens: counted twice over. What
        :func:`mmcl.runtime.eval_batch_size` sizes evaluation batches by on a GPU."""
        tokens, width = int(self.clip.visual.positional_embedding.shape[0]), self.vision_width
        heads = int(getattr(self.vision_blocks[0].attn, "num_heads", 1))
        return 4 * 2 * tokens * (12 * width + heads * tokens)

    @property
    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.detach().exp().clamp(max=100))

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, S, S]`` -> normalised float images."""
        return (images.float() / 255.0 - self.mean) / self.std

    # ------------------------------------------------------------------ the one tower forward
    # Every pass through a tower's blocks, for every method, goes through tower_input -> run_blocks
    # -> tower_output: prompts and prefixes plug in as TowerHooks, adapters either as hooks or, when
    # they need the other towers at the same depth (the MoE adapters), by advancing the towers one
    # block at a time with run_blocks. Only this class touches open_clip's tower internals.
    def blocks(self, tower: str) -> nn.ModuleList:
        return self.text_blocks if tower == "text" else self.vision_blocks

    def tower_input(self, modality: str, x: torch.Tensor) -> TowerState:
        """One modality's batch -> its tower's input tokens (embedding + positions), before block 0.

        With a prefix cache attached, the state may come from it already ``depth`` blocks in: the
        blocks before the first one the run's method changes are frozen, so they are run once.
        """
        if self.prefix_cache is not None:
            cached = self.prefix_cache.start_state(self, modality, x)
            if cached is not None:
                return cached
        if modality == "text":
            clip = self.clip
            if not hasattr(clip, "token_embedding"):
                raise NotImplementedError("block-level access needs an open_clip native text tower")
            cast = clip.transformer.get_cast_dtype()
            tokens = clip.token_embedding(x).to(cast) + clip.positional_embedding[: x.shape[1]].to(cast)
            return TowerState(tokens, "text", text_ids=x)
        visual = self.clip.visual
        images = flatten_frames(modality, x)
        return TowerState(visual._embeds(self.pixels(images).to(visual.conv1.weight.dtype)), "vision",
                          frames=frames_of(modality, x))

    def run_blocks(self, state: TowerState, stop: int | None = None, hooks: TowerHooks | None = None,
                   pooled_only: bool = False) -> TowerState:
        """Blocks ``state.depth .. stop - 1`` (default: to the last) of the state's tower, with ``hooks``.

        A state already at ``stop`` or deeper (from the prefix cache) is returned as it is.
        ``pooled_only``: the caller reads nothing but the pooled embedding (:meth:`tower_output`), so
        where the vision tower pools its class token, the last block computes that token alone
        (:func:`class_token_block`; the returned tokens are ``[N, 1, W]``).
        """
        blocks = self.blocks(state.tower)
        stop = len(blocks) if stop is None else stop
        if stop <= state.depth:
            return state
        last_alone = pooled_only and stop == len(blocks) and state.tower == "vision" and self.pools_class_token
        x = state.tokens
        mask = None
        if state.tower == "text" and self.clip.attn_mask is not None:
            mask = self.clip.attn_mask[: x.shape[1], : x.shape[1]]
        for index in range(state.depth, stop):
            if hooks is not None:
                x = hooks.before_block(index, x)
            block = blocks[index]
            if mask is not None and x.shape[1] != mask.shape[0]:
                raise ValueError("hooks may not change the text tower's token count (its causal mask)")
            if state.tower == "text":
                x = block(x, attn_mask=mask)
            else:
                x = class_token_block(block, x) if last_alone and index == stop - 1 else vision_block(block, x)
            if hooks is not None:
                x = hooks.after_block(index, x)
        return replace(state, tokens=x, depth=stop)

    def tower_output(self, state: TowerState) -> torch.Tensor:
        """A state after the last block -> embeddings ``[B, D]`` (not normalised; video: mean over frames)."""
        if state.depth != len(self.blocks(state.tower)):
            raise ValueError(f"tower_output needs all {len(self.blocks(state.tower))} blocks run, got {state.depth}")
        if state.tower == "vision":
            pooled = self.pool_visual(state.tokens)
            return mean_over_frames(pooled, state.frames)
        clip = self.clip
        x = clip.ln_final(state.tokens)
        pooled = open_clip.transformer.text_global_pool(x, state.text_ids, clip.text_pool_type,
                                                        eos_token_id=getattr(clip, "text_eos_id", None))
        projection = clip.text_projection
        return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection

    def pool_visual(self, tokens: torch.Tensor) -> torch.Tensor:
        visual = self.clip.visual
        pooled, _ = visual._pool(tokens)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def visual_patches(self, state: TowerState) -> tuple[torch.Tensor, torch.Tensor]:
        """A vision state after the last block -> (pooled embeddings ``[B * frames, D]``, the patch tokens
        through the same final norm and projection ``[B * frames, P, D]``), per frame (not normalised):
        the spatial map that an attention over image regions (AV-CIL's audio-guided one) reads."""
        if state.tower != "vision" or state.depth != len(self.vision_blocks):
            raise ValueError("visual_patches needs a vision state after its last block")
        visual = self.clip.visual
        pooled, patches = visual._pool(state.tokens)
        if visual.proj is not None:
            pooled, patches = pooled @ visual.proj, patches @ visual.proj
        return pooled, patches

    def encode_visual(self, images: torch.Tensor, hooks: TowerHooks | None = None) -> torch.Tensor:
        """uint8 images ``[B, 3, S, S]`` -> embeddings ``[B, D]`` (not normalised)."""
        return self.encode("image", images, hooks)

    def encode_text(self, tokens: torch.Tensor, hooks: TowerHooks | None = None) -> torch.Tensor:
        """Token ids ``[B, L]`` -> embeddings ``[B, D]`` (not normalised)."""
        if not hasattr(self.clip, "token_embedding"):  # CustomTextCLIP (HF text towers): no block hooks
            if hooks is not None:
                raise NotImplementedError("block hooks need an open_clip native text tower")
            return self.clip.encode_text(tokens)
        return self.encode("text", tokens, hooks)

    def encode(self, modality: str, x: torch.Tensor, hooks: TowerHooks | None = None) -> torch.Tensor:
        """One modality's batch -> embeddings ``[B, D]`` (not normalised)."""
        if modality == "text" and not hasattr(self.clip, "token_embedding"):
            return self.encode_text(x, hooks)
        if hooks is None and self.prefix_cache is not None:  # a tower the method never changes: cached
            cached = self.prefix_cache.final(self, modality, x)
            if cached is not None:
                return cached
        return self.tower_output(self.run_blocks(self.tower_input(modality, x), hooks=hooks, pooled_only=True))

    @functools.cached_property
    def pools_class_token(self) -> bool:
        """Whether the vision tower's embedding reads the class token alone after the last block
        (open_clip ``pool_type='tok'``, no attentional pooler, plain residual blocks), so the last
        block may compute that token alone."""
        visual = self.clip.visual
        return getattr(visual, "pool_type", None) == "tok" and getattr(visual, "attn_pool", None) is None and \
            all(type(b) is open_clip.transformer.ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
                for b in self.vision_blocks)

    @torch.no_grad()
    def class_text_embeddings(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings ``[C, D]``: each class averaged over ``templates``."""
        device = self.mean.device
        cache = self.prefix_cache
        key = (tuple(class_names), tuple(templates))
        if cache is not None and cache.frozen_weights.get("text") and key in cache.text_classifiers:
            return cache.text_classifiers[key].to(device).clone()  # once per run (the text tower is frozen)
        rows = []
        for name in class_names:
            tokens = self.tokenizer([t.format(name) for t in templates]).to(device)
            rows.append(F.normalize(F.normalize(self.encode_text(tokens).float(), dim=-1).mean(0), dim=-1))
        if cache is not None:  # read back only while the method declares the text tower frozen
            cache.text_classifiers[key] = torch.stack(rows).clone()
        return torch.stack(rows)


def class_token_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An open_clip residual block ``[N, L, W] -> [N, 1, W]`` computed for the class token only.

    Every token still supplies keys and values (through ``block.attention``, so a prefix attention
    swapped in by a hook applies), but only the class token is queried and passed through the
    output projection and the MLP: the same class token as ``block(x)[:, :1]`` up to float
    rounding, for about half the block's cost (the last block of a tower whose embedding is its
    class token; :meth:`MultiModalEncoder.run_blocks`).
    """
    normed = block.ln_1(x)
    token = x[:, :1] + block.ls_1(attention_of(block)(q_x=normed[:, :1], k_x=normed, v_x=normed))
    return token + block.ls_2(block.mlp(block.ln_2(token)))


def is_plain_block(block: nn.Module) -> bool:
    """An open_clip residual block of self-attention (no cross-attention norm)."""
    return type(block) is open_clip.transformer.ResidualAttentionBlock and not hasattr(block, "ln_1_kv")


def attention_of(block: nn.Module):
    """The ``attention(q_x, k_x=None, v_x=None, attn_mask=None)`` a block's forward calls: one a hook
    swapped in (a prefix attention), else the block's multi-head attention through
    :func:`multihead_attention`."""
    swapped = block.__dict__.get("attention")
    if swapped is not None or not is_plain_block(block):
        return swapped or block.attention
    return functools.partial(_block_attention, block.attn)


def _block_attention(attn: nn.MultiheadAttention, q_x: torch.Tensor, k_x: torch.Tensor | None = None,
                     v_x: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    k_x = q_x if k_x is None else k_x
    v_x = q_x if v_x is None else v_x
    return multihead_attention(attn, q_x, k_x, v_x, attn_mask)


def vision_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` of an open_clip residual block, its attention through :func:`attention_of`."""
    if not is_plain_block(block):
        return block(x)
    x = x + block.ls_1(attention_of(block)(q_x=block.ln_1(x)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def multihead_attention(attn: nn.MultiheadAttention, q_x: torch.Tensor, k_x: torch.Tensor, v_x: torch.Tensor,
                        attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``attn(q_x, k_x, v_x, need_weights=False)[0]`` for batch-first ``[N, L, W]`` inputs, computed in
    the batch-first layout.

    Where ``nn.MultiheadAttention`` takes its general path (gradients, training mode, keys other than
    the queries, an odd number of heads, autocast), it turns the inputs sequence-first and back,
    copying every projection on the way; this runs the same operations (the same split of the packed
    input projection, ``scaled_dot_product_attention``, the output projection) on the batch-first
    tensors. On CPU the results are bitwise those of the module (``tests/test_tower_forward.py``), in
    about three quarters of the time for a block's forward and backward pass on the tiny tower's shapes.
    Everything else (its no-grad fast path, masks, dropout, separate or missing projections) goes
    to the module itself.
    """
    weights = (attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias)
    learns = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in weights)
    general = (torch.is_grad_enabled() and any(t.requires_grad for t in (q_x, k_x, v_x))) \
        or q_x is not k_x or k_x is not v_x or attn.training or attn.num_heads % 2 or torch.is_autocast_enabled()
    if learns or not general or attn_mask is not None or q_x.dim() != 3 or not attn.batch_first \
            or not attn._qkv_same_embed_dim or attn.in_proj_bias is None or attn.bias_k is not None \
            or attn.add_zero_attn or (attn.training and attn.dropout > 0):
        return attn(q_x, k_x, v_x, need_weights=False, attn_mask=attn_mask)[0]
    width, heads = attn.embed_dim, attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias

    def split(projected: torch.Tensor, parts: int):  # [N, L, parts * W] -> parts x [N, heads, L, W / heads]
        n, length = projected.shape[:2]
        return projected.view(n, length, parts, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)

    if k_x is v_x and q_x is k_x:
        q, k, v = split(F.linear(q_x, weight, bias), 3)
    elif k_x is v_x:
        (w_q, w_kv), (b_q, b_kv) = weight.split([width, 2 * width]), bias.split([width, 2 * width])
        (q,), (k, v) = split(F.linear(q_x, w_q, b_q), 1), split(F.linear(k_x, w_kv, b_kv), 2)
    else:
        (w_q, w_k, w_v), (b_q, b_k, b_v) = weight.chunk(3), bias.chunk(3)
        (q,), (k,), (v,) = (split(F.linear(t, w, b), 1) for t, w, b in ((q_x, w_q, b_q), (k_x, w_k, b_k),
                                                                          (v_x, w_v, b_v)))
    out = F.scaled_dot_product_attention(q, k, v)
    return F.linear(out.transpose(1, 2).reshape(q_x.shape[0], q_x.shape[1], width), attn.out_proj.weight,
                    attn.out_proj.bias)


def freeze(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
