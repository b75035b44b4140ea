"""The frozen open_clip backbone, for every modality.

:func:`build_encoder` is the one factory. ``model.pretrained`` selects the weights:

- ``"self"``: the tiny configs shipped in ``mmcl/models/configs`` are pre-trained contrastively on
  image-caption pairs of the embedded benchmark's pre-training concepts, once, and cached under a
  key of everything that shapes them (architecture, pre-training recipe, data, generator). A cached
  file that does not load (truncated, garbage, or holding objects other than tensors: read by
  :func:`mmcl.records.load_tensors`) is named in one warning line and pre-trained again, to the
  same weights (pre-training is deterministic);
- an open_clip tag (``"openai"``) or a local weights file: passed to ``open_clip.create_model``,
  the same code path in both cases. A tag's weights come from the Hugging Face hub (once, then its
  cache): when the hub is out of reach (no network, ``HF_HUB_OFFLINE``; probed for
  :data:`HUB_PROBE_SECONDS`) they are read from the cache at once, and when they are not cached
  either, a one-line :class:`~mmcl.config.ConfigError` says so within seconds, instead of
  open_clip retrying the hub for a minute (:func:`hub_weights_source`);
- ``null``: random initialisation.

:class:`MultiModalEncoder` turns each modality into an embedding with the towers (video frames
are encoded one by one and mean-pooled; spectrograms and depth go through the vision tower as
images) and exposes per-block hooks so that prompts and adapters can be inserted without copying
open_clip's forward pass.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import time
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Literal, Protocol, Sequence

import numpy as np
import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcl import kernels
from mmcl.config import Config, ConfigError
from mmcl.models.towers import flatten_frames, frames_of, mean_over_frames
from mmcl.progress import bar as progress_bar
from mmcl.records import RefusedFile, atomic_torch_save, build_lock, load_tensors

log = logging.getLogger(__name__)
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


def build_encoder(config: Config, device: torch.device | str = "cpu", progress: bool = False) -> MultiModalEncoder:
    """The profile's backbone, frozen, in eval mode, on ``device``."""
    name, pretrained = config.model.name, config.model.pretrained
    if name not in open_clip.list_models():
        raise ConfigError(f"model.name: unknown open_clip architecture {name!r}")
    if pretrained == "self":
        if name not in LOCAL_CONFIGS:
            raise ConfigError(f"model.pretrained=self pre-trains only the shipped tiny configs {LOCAL_CONFIGS}, "
                              f"not {name!r}; give an open_clip tag or a weights file")
        pretrained = str(pretrain_tiny_clip(config, progress=progress))
    elif pretrained and (pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or "/" in pretrained):
        if not Path(pretrained).expanduser().is_file():
            raise FileNotFoundError(f"model.pretrained: weights file {pretrained} not found")
        pretrained = str(Path(pretrained).expanduser())
    force_size = config.data.image_size if name in LOCAL_CONFIGS else None
    with hub_weights_source(name, pretrained):  # a tag: from the hub, or its cache when the hub is out of reach
        clip = open_clip.create_model(name, pretrained=pretrained, force_image_size=force_size,
                                      force_quick_gelu=tag_uses_quick_gelu(name, pretrained))
    preprocess = clip.visual.preprocess_cfg if hasattr(clip.visual, "preprocess_cfg") else {}
    mean = preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = preprocess.get("std", open_clip.OPENAI_DATASET_STD)
    encoder = MultiModalEncoder(clip, open_clip.get_tokenizer(name), mean, std)
    # Recorded in each run's manifest: runs on different weights must never be mixed silently.
    # The content digest, not the file name: two caches may hold different weights under one name.
    is_file = bool(pretrained) and Path(pretrained).is_file()
    encoder.weights = {"model": name, "pretrained": pretrained,
                       "file_bytes": Path(pretrained).stat().st_size if is_file else None,
                       "sha256": file_digest(pretrained) if is_file else None}
    return freeze(encoder).eval().to(device)


def tag_uses_quick_gelu(name: str, pretrained: str | None) -> bool:
    """Whether open_clip's weights ``pretrained`` of architecture ``name`` were trained with QuickGELU
    (OpenAI's CLIP weights: the ``openai`` tag of ``ViT-B-16``), so the model must be built with it:
    the plain config's exact GELU would run those weights with another activation than they were
    trained with. False for a weights file, ``self`` and no weights (the config says)."""
    if not pretrained or pretrained == "self" or Path(str(pretrained)).suffix or "/" in str(pretrained):
        return False
    return bool((open_clip.get_pretrained_cfg(name, pretrained) or {}).get("quick_gelu", False))


HUB_PROBE_SECONDS = 3.0  # how long build_encoder waits for a connection to the Hugging Face hub


def _hub_files(name: str, tag: str | None) -> tuple[str, list[str]] | None:
    """(hub repository, file names open_clip tries, in its order) of the open_clip weights ``tag``
    of architecture ``name``; None when ``tag`` is not a tag that open_clip fetches from the hub."""
    if not tag or tag == "self":
        return None
    hub = (open_clip.get_pretrained_cfg(name, tag) or {}).get("hf_hub")
    if not hub:
        return None
    repository, filename = hub.rstrip("/"), "open_clip_pytorch_model.bin"  # open_clip's default file
    if not hub.endswith("/"):
        repository, filename = hub.rsplit("/", 1)
    safe = ["open_clip_model.safetensors"] if filename == "open_clip_pytorch_model.bin" else \
        [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
    return repository, [*safe, filename]  # open_clip prefers a safetensors file


def hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """Why the Hugging Face hub is out of reach now (``HF_HUB_OFFLINE`` set, or no connection to its
    host, or to the proxy the environment names for it, within ``timeout`` seconds); None when a
    connection opens."""
    import socket
    import threading
    import urllib.request
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(endpoint.scheme) or urllib.request.getproxies().get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname or host, via.port or 8080
    answer: list[str | None] = []

    def connect() -> None:  # in a thread: a name lookup has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(None)
        except OSError as error:
            answer.append(f"{host}:{port}: {error.strerror or error}")

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return answer[0] if answer else f"{host}:{port}: no answer within {timeout:g} s"


@contextlib.contextmanager
def hub_weights_source(name: str, tag: str | None):
    """Around ``open_clip.create_model(name, pretrained=tag)``: for a tag whose weights open_clip
    fetches from the Hugging Face hub, with the hub out of reach (:func:`hub_unreachable`), the
    weights are read from the hub's local cache without a request (``HF_HUB_OFFLINE`` for the
    call), and when they are not cached a :class:`ConfigError` says so in one line, within seconds,
    instead of open_clip retrying the hub for about a minute. Otherwise nothing changes."""
    files = _hub_files(name, tag)
    problem = hub_unreachable() if files else None
    if not problem:
        yield
        return
    from huggingface_hub import constants, try_to_load_from_cache

    repository, names = files
    if not any(isinstance(try_to_load_from_cache(repository, n), str) for n in names):
        raise ConfigError(
            f"model.pretrained: open_clip's {tag!r} weights of {name} are not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and the hub is out of reach ({problem}); download them once where it "
            f"is reachable (python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\", "
            f"then copy the cache or set HF_HOME), or set model.pretrained to a local weights file")
    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # read by huggingface_hub at every request: the cached file, no retries
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline


def file_digest(path: str | Path) -> str:
    """sha256 of a file's content (hex), computed once per (path, size, modification time) per process."""
    stat = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` intra-op threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pretraining_seed(config: Config) -> int:
    """The seed a self-pre-trained backbone is pre-trained with: ``model.pretrain.seed`` (default
    ``data.benchmark_seed``) plus the run's seed (``config.seed``) when ``model.pretrain.per_run_seed``
    (each seed its own backbone; seed 0 keeps the base seed's), else the base seed for every seed."""
    pretrain = config.model.pretrain
    base = config.data.benchmark_seed if pretrain.seed is None else pretrain.seed
    return base + (config.seed if pretrain.per_run_seed else 0)


def tiny_cache_path(config: Config) -> Path:
    from mmcl.data import synthetic

    architecture = json.loads((CONFIG_DIR / f"{config.model.name}.json").read_text())
    key = {
        "architecture": architecture,
        "pretrain": config.model.pretrain.model_dump(exclude={"seed", "per_run_seed"}),  # the seed below says it
        "image_size": config.data.image_size,
        "benchmark_seed": pretraining_seed(config),
        "generator": synthetic.PRETRAINING_VERSION,  # what pre-training reads
        # 2: pre-trained on one thread, so the weights do not depend on runtime.num_threads;
        # 3: with the CPU kernels pinned (mmcl.kernels), so they do not depend on the machine either.
        "recipe": 3,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return config.cache_dir() / "backbones" / f"{config.model.name}-{digest}.pt"


def pretrained_backbone_missing(config: Config) -> bool:
    """Whether building the profile's backbone pre-trains it first (``pretrained: self``, not cached)."""
    return config.model.pretrained == "self" and config.model.name in LOCAL_CONFIGS \
        and not tiny_cache_path(config).is_file()


def pretrain_tiny_clip(config: Config, progress: bool = False) -> Path:
    """Pre-train a tiny CLIP on image-caption pairs of the pre-training concepts; cached by config.

    Always on one intra-op thread: a CPU matrix product sums in an order that depends on the thread
    count, and over hundreds of steps those last-bit differences grow into different weights (and
    zero-shot accuracies several points apart). On one thread the weights are bitwise the same
    whatever ``runtime.num_threads`` says, on the same torch build; with the kernels pinned
    (:mod:`mmcl.kernels`) on every x86-64 CPU. The content digest each run's manifest records shows
    where they are not.
    """
    path = tiny_cache_path(config)
    if _cached_weights_load(path, name_damage=True):
        return path
    from threadpoolctl import threadpool_limits

    kernels.require(config.runtime.portable_kernels)
    with build_lock(path):  # processes sharing the cache pre-train once; the others wait for the file
        if _cached_weights_load(path, name_damage=False):
            return path
        with torch_threads(1), threadpool_limits(limits=1):  # its images too (numpy): one BLAS thread
            _pretrain_tiny_clip(config, path, progress)
    return path


def _cached_weights_load(path: Path, name_damage: bool) -> bool:
    """Whether the pre-trained weights cached at ``path`` load: a file holding a ``state_dict`` of
    tensors, read by :func:`mmcl.records.load_tensors` (which runs no code from it). A damaged one
    (truncated, garbage, refused) is named in one warning line when ``name_damage``; the caller
    pre-trains it again, to the same weights, and the atomic write replaces it."""
    if not path.is_file():
        return False
    try:
        stored = load_tensors(path, map_location="cpu", rebuild="pre-training it again")
        state = stored.get("state_dict") if isinstance(stored, dict) else None
        if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
            return True
        problem = "no state_dict of tensors in it"
    except RefusedFile as error:
        if name_damage:
            log.warning("pre-trained backbone weights %s", error)
        return False
    except Exception as error:  # noqa: BLE001 - a damaged file of any kind is pre-trained again
        text = str(error).strip()
        first = text.splitlines()[0].split(". ")[0] if text else ""  # torch's first sentence
        problem = f"{type(error).__name__}: {first}" if first else type(error).__name__
    if name_damage:
        log.warning("pre-trained backbone weights %s are damaged (%s); pre-training them again (deterministic: "
                    "the same weights)", path, problem)
    return False


@contextlib.contextmanager
def weights_loaded_by_mmcl():
    """Around ``open_clip.create_model(..., pretrained=None)`` for a model whose weights mmcl then
    trains itself (pre-training): open_clip's warning "No pretrained weights loaded for model ...
    Model initialized randomly." (logged on the root logger) is not true of the model mmcl uses,
    so it is held back, for this call only; every other record passes."""
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def pretraining_features(encoder: MultiModalEncoder, images: torch.Tensor,
                         tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-training's normalised image and caption features: open_clip's own forward of both towers,
    bit for bit (every token through every block, not :meth:`MultiModalEncoder.encode`'s class-token
    last block, whose last bits differ and over 600 steps grow into other weights)."""
    image_state = encoder.run_blocks(encoder.tower_input("image", images))
    return (F.normalize(encoder.tower_output(image_state), dim=-1),
            F.normalize(encoder.encode_text(tokens), dim=-1))


class CaptionVocabulary(nn.Module):
    """The rows of a token embedding that a fixed set of captions uses, as one parameter, for pre-training.

    The tiny text tower has open_clip's 49 408-token vocabulary, of which the synthetic captions use a
    few hundred tokens. Trained as a whole, the table's dense gradient and AdamW's update touch every
    row for the few that learn (their cost: docs/performance.md); the rows no caption uses have a
    zero gradient and zero moments at every step, so AdamW leaves them exactly as they were
    initialised. Here only the used rows are a parameter (``weight`` ``[used, width]``, looked up
    through ``index``); every elementwise update is the same on them, so the weights written back
    (:meth:`write_back`) are bitwise those of training the whole table (``tests/test_benchmark.py``
    trains a text tower both ways and compares every tensor; the tiny and micro pre-trained files
    kept their sha256).
    """

    def __init__(self, embedding: nn.Embedding, tokens: torch.Tensor):
        super().__init__()
        self.used = torch.unique(tokens)
        self.weight = nn.Parameter(embedding.weight.detach()[self.used].clone())
        index = torch.full((embedding.num_embeddings,), -1, dtype=torch.long)
        index[self.used] = torch.arange(len(self.used))
        self.register_buffer("index", index, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.index[ids], self.weight)

    @torch.no_grad()
    def write_back(self, embedding: nn.Embedding) -> nn.Embedding:
        """``embedding`` with the trained rows in place of its own."""
        embedding.weight[self.used] = self.weight.detach()
        return embedding


def _pretrain_tiny_clip(config: Config, path: Path, progress: bool) -> None:
    from mmcl.data import synthetic
    from mmcl.data.modalities import images_to_tensor
    recipe = config.model.pretrain
    log.info("pre-training %s (%d steps, seed %d); cached at %s", config.model.name, recipe.steps,
             pretraining_seed(config), path)
    started = time.perf_counter()
    seed = pretraining_seed(config)
    generator = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    with weights_loaded_by_mmcl():  # initialised randomly here, then pre-trained below
        clip = open_clip.create_model(config.model.name, pretrained=None, force_image_size=config.data.image_size)
    tokenizer = open_clip.get_tokenizer(config.model.name)
    images, captions = [], []
    for concept in synthetic.pretraining_concepts():
        rng = np.random.default_rng([seed, concept.index, 99])
        n = recipe.samples_per_concept
        images.append(images_to_tensor(synthetic.render_pretraining_images(concept, n, config.data.image_size, rng),
                                       config.data.image_size))
        captions += synthetic.pretraining_captions(concept, n, rng)
    images, tokens = torch.cat(images), tokenizer(captions)
    vocabulary = clip.token_embedding
    clip.token_embedding = CaptionVocabulary(vocabulary, tokens)  # the rows the captions use, for the optimizer
    encoder = MultiModalEncoder(clip, tokenizer, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    loss_fn = open_clip.ClipLoss()
    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    warmup = max(1, recipe.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, recipe.steps) / recipe.steps)))
    clip.train()
    bar = progress_bar(range(recipe.steps), desc=f"pre-training {config.model.name}", disable=not progress,
                       leave=False)
    for _ in bar:
        picks = torch.randint(len(images), (recipe.batch_size,), generator=generator)
        image_features, text_features = pretraining_features(encoder, images[picks], tokens[picks])
        loss = loss_fn(image_features, text_features, clip.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, np.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    torch.random.set_rng_state(torch_state)
    clip.token_embedding = clip.token_embedding.write_back(vocabulary)
    atomic_torch_save({"state_dict": clip.state_dict()}, path)
    log.info("pre-trained %s in %.0f s", config.model.name, time.perf_counter() - started)
