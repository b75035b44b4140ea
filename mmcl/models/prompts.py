"""Prompt pools for a frozen open_clip vision tower (L2P, Wang et al. 2022; shared by COMM).

A :class:`PromptPool` holds ``M`` learnable keys ``[M, Dq]`` and ``M`` prompts. A sample's
*query* ``q`` (the frozen backbone's embedding of the sample, no prompts) picks the ``k`` prompts
whose keys are most cosine-similar to it; their tokens are concatenated into the sample's prompt
``[k * length, width]`` per prompted block. Training pulls the chosen keys toward their queries
(:func:`key_query_matching_loss`, L2P's surrogate loss).

Prompts enter the tower through the encoder's :class:`~mmcl.models.backbone.TowerHooks`, in one of
two styles (``style``):

- ``"prompt"`` (prompt-tuning, as in L2P/VPT): the tokens are inserted right after [CLS] before
  block 0; for ``depth > 1`` the prompt positions are overwritten by block i's own prompt before
  block i (VPT-deep); they are dropped after the last block so pooling sees the original layout.
- ``"prefix"`` (prefix-tuning, as in DualPrompt): each prompted block gets ``length // 2`` extra
  keys and as many extra values in its self-attention; the token sequence is unchanged. open_clip's
  block has no prefix argument, so :class:`PromptHooks` swaps in, for the duration of that block,
  an attention function that concatenates the prefixes (see :func:`_prefix_attention`).

Per-sample prompts are plain tensors ``[N, depth, tokens, width]``, so a method can blend the
prompts of several pools (COMM) before handing them to :class:`PromptHooks`.
"""
from __future__ import annotations

import types

import pydantic
import torch
import torch.nn.functional as F
from torch import nn

from mmcl.config import ConfigError
from mmcl.data.dataset import Batch
from mmcl.models.backbone import multihead_attention
from mmcl.models.towers import flatten_frames, frames_of, mean_over_frames

PROMPT_STYLES = ("prompt", "prefix")


class PromptPool(nn.Module):
    """Keys ``[M, Dq]`` and prompts ``[M, depth, length, width]`` with top-k key-query selection.

    Args:
        size: ``M``, prompts in the pool.
        length: tokens per prompt (for prefix-tuning: keys + values, so it must be even).
        depth: prompted blocks (the first ``depth`` blocks of the tower).
        width: the tower's token width.
        query_dim: dimension of the query feature.
        top_k: prompts chosen per sample.
        init_std: standard deviation of the prompts' normal initialisation (*design choice*; L2P
            uses uniform(-1, 1)). A small value does not make a new pool start close to the frozen
            model: the block's pre-norm rescales every token, so only the prompts' direction counts.
    """

    def __init__(self, size: int, length: int, depth: int, width: int, query_dim: int, top_k: int,
                 init_std: float = 0.02):
        super().__init__()
        if not 1 <= top_k <= size:
            raise ValueError(f"top_k must be in [1, pool size {size}], got {top_k}")
        self.top_k = top_k
        self.keys = nn.Parameter(torch.empty(size, query_dim).uniform_(-1.0, 1.0))
        self.prompts = nn.Parameter(torch.randn(size, depth, length, width) * init_std)

    def select(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k keys by cosine similarity to each query.

        Args:
            query: ``[N, Dq]``.
        Returns:
            ``(indices [N, k], similarity [N, k])``, best first; ``similarity`` keeps the gradient
            to the keys (for the matching loss), not to the query.
        """
        similarity = F.normalize(query.detach().float(), dim=-1) @ F.normalize(self.keys, dim=-1).T
        top, indices = similarity.topk(self.top_k, dim=-1)
        return indices, top

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """Prompts of the chosen entries, concatenated: ``[N, depth, k * length, width]``."""
        chosen = self.prompts[indices]  # [N, k, depth, length, width]
        n, k, depth, length, width = chosen.shape
        return chosen.permute(0, 2, 1, 3, 4).reshape(n, depth, k * length, width)

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(prompts [N, depth, k*length, width], indices [N, k], similarity [N, k])``."""
        indices, similarity = self.select(query)
        return self.gather(indices), indices, similarity


def key_query_matching_loss(similarity: torch.Tensor) -> torch.Tensor:
    """L2P's surrogate loss: ``mean(1 - cos(q, k_selected))`` over samples and chosen keys."""
    return (1.0 - similarity).mean()


def _prefix_attention(block: nn.Module, prefix_keys: torch.Tensor, prefix_values: torch.Tensor):
    """An ``attention(q_x, k_x, v_x, attn_mask)`` for ``block`` whose keys/values are prefixed.

    ``prefix_*`` are ``[N, P, width]`` in token space (before the input projection), so they pass
    the block's own key/value projections like every other token.
    """

    def attention(self, q_x, k_x=None, v_x=None, attn_mask=None):
        k_x = q_x if k_x is None else k_x
        v_x = q_x if v_x is None else v_x
        k_x = torch.cat([prefix_keys.to(k_x.dtype), k_x], dim=1)
        v_x = torch.cat([prefix_values.to(v_x.dtype), v_x], dim=1)
        if attn_mask is not None:  # vision towers have none; keep prefixes visible to every query
            attn_mask = F.pad(attn_mask.to(q_x.dtype), (prefix_keys.shape[1], 0))
        return multihead_attention(self.attn, q_x, k_x, v_x, attn_mask)

    return types.MethodType(attention, block)


class PromptHooks:
    """:class:`~mmcl.models.backbone.TowerHooks` inserting per-sample prompts into a vision tower.

    Args:
        prompts: ``[N, depth, P, width]``, the prompt of every image of the batch (video frames
            count as images) for each of the first ``depth`` blocks; for prefix-tuning also a list
            with one ``[N, P_i, width]`` (or ``None``: no prefix) per block from the first.
        blocks: the tower's blocks (``encoder.vision_blocks``).
        style: ``"prompt"`` or ``"prefix"`` (see the module docstring).

    Use as a context manager around the encoder call, so that a prefix-tuning attention swapped
    into a block is removed even if the forward pass fails.
    """

    def __init__(self, prompts: torch.Tensor | list[torch.Tensor | None], blocks: nn.ModuleList,
                 style: str = "prompt"):
        if style not in PROMPT_STYLES:
            raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
        if isinstance(prompts, (list, tuple)):  # per-block prefixes of their own lengths (DualPrompt's G and E)
            if style != "prefix":
                raise ValueError("per-block prompts of different lengths need the prefix style")
            layers = list(prompts)
        else:
            layers = [prompts[:, index] for index in range(prompts.shape[1])]
        if style == "prefix" and any(p is not None and p.shape[1] % 2 for p in layers):
            raise ValueError("prefix-tuning splits each prompt into keys and values: its token count must be even")
        if len(layers) > len(blocks):
            raise ValueError(f"prompt depth {len(layers)} exceeds the tower's {len(blocks)} blocks")
        self.layers, self.blocks, self.style = layers, blocks, style
        self.depth = len(layers)
        self.tokens = 0 if style == "prefix" else layers[0].shape[1]
        self.last = len(blocks) - 1

    def __enter__(self) -> PromptHooks:
        return self

    def __exit__(self, *exc) -> None:
        for block in self.blocks:
            block.__dict__.pop("attention", None)

    def before_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if index >= self.depth or self.layers[index] is None:
            return x
        prompt = self.layers[index].to(x.dtype)
        if self.style == "prefix":
            half = prompt.shape[1] // 2
            self.blocks[index].attention = _prefix_attention(self.blocks[index], prompt[:, :half], prompt[:, half:])
            return x
        if index > 0:  # VPT-deep: replace the previous block's prompt outputs by this block's prompt
            x = torch.cat([x[:, :1], x[:, 1 + self.tokens:]], dim=1)
        return torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)

    def after_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.style == "prefix":
            self.blocks[index].__dict__.pop("attention", None)  # back to the class's own attention
            return x
        if index == self.last:  # pooling expects [CLS] + patches only
            x = torch.cat([x[:, :1], x[:, 1 + self.tokens:]], dim=1)
        return x


def as_images(modality: str, inputs: torch.Tensor) -> torch.Tensor:
    """A visual modality's batch as images ``[N, 3, S, S]`` (video: its frames, ``N = B * T``)."""
    if modality == "text":
        raise NotImplementedError("prompt pools are inserted into the vision tower only")
    return flatten_frames(modality, inputs)


def encode_prompted(encoder, images: torch.Tensor, prompts, style: str = "prompt") -> torch.Tensor:
    """Embeddings ``[N, D]`` (not normalised) of images ``[N, 3, S, S]`` with prompts ``[N, depth, P, width]``
    (or per-block prefixes, see :class:`PromptHooks`)."""
    with PromptHooks(prompts, encoder.vision_blocks, style) as hooks:
        return encoder.encode_visual(images, hooks)


@torch.no_grad()
def frozen_query(encoder, images: torch.Tensor) -> torch.Tensor:
    """The frozen tower's normalised embedding of each image ``[N, D]``: the prompt-selection query."""
    return F.normalize(encoder.encode_visual(images).float(), dim=-1)


# ------------------------------------------------------------ shared by the prompt methods
def single_modality(batch: Batch) -> tuple[str, torch.Tensor]:
    """The one (modality, inputs) pair of a batch; prompt methods embed one modality at a time."""
    if len(batch.inputs) != 1:
        raise ValueError(f"prompt methods expect single-modality batches, got {batch.modalities}")
    return next(iter(batch.inputs.items()))


def encode_each_modality(encoder, batch: Batch, prompted) -> dict[str, torch.Tensor]:
    """Per-modality embeddings ``{modality: [B, D]}`` of a (possibly multi-modal) batch, for the
    shared fusion (:func:`mmcl.methods.text_anchored.fuse`).

    Every visual modality's images (video: its frames) go through the prompted vision tower:
    ``prompted(modality, images, query)`` returns their embeddings ``[N, D]`` given the frozen
    query :func:`frozen_query`; frames are then averaged per sample. Text goes through the frozen
    text tower unprompted: the prompts live in the vision tower's token space.
    """
    embeddings = {}
    for modality, inputs in batch.inputs.items():
        if modality == "text":
            embeddings[modality] = encoder.encode("text", inputs)
            continue
        images = as_images(modality, inputs)
        embeddings[modality] = mean_over_frames(prompted(modality, images, frozen_query(encoder, images)),
                                                frames_of(modality, inputs))
    return embeddings


def prefix_tokens_even():
    """A Config validator: prefix-tuning splits the ``top_k * prompt_length`` tokens into keys and values."""

    def check(style, info: pydantic.ValidationInfo):
        tokens = info.data.get("top_k", 0) * info.data.get("prompt_length", 0)
        if style == "prefix" and tokens % 2:
            raise ValueError(f"prefix-tuning needs an even top_k x prompt_length (keys and values), got {tokens}")
        return style

    return pydantic.field_validator("prompt_style")(check)


def check_prompt_depth(method: str, depth: int, encoder) -> None:
    """``prompt_depth`` must not exceed the vision tower's blocks (known once the backbone is built)."""
    if depth > len(encoder.vision_blocks):
        raise ConfigError(f"methods.{method}.prompt_depth: the backbone's vision tower has "
                          f"{len(encoder.vision_blocks)} blocks, got {depth}")


def prompt_parameter_groups(method, prompt_lr: float, extra: dict[str, float] | None = None) -> list[dict]:
    """Trainable parameters in groups: prompt pools (keys, prompts) and the classifier head at
    ``prompt_lr``, submodules named in ``extra`` (name prefix -> learning rate) at theirs, the rest
    at the engine's rate."""
    rates = {("pool.", "pools.", "head."): prompt_lr, **{(prefix + ".",): lr for prefix, lr in (extra or {}).items()}}
    groups: dict[tuple, list] = {prefixes: [] for prefixes in rates}
    others = []
    for name, parameter in method.named_parameters():
        if parameter.requires_grad:
            prefixes = next((p for p in rates if name.startswith(p)), None)
            (groups[prefixes] if prefixes else others).append(parameter)
    return [{"params": groups[p], "lr": rates[p]} for p in rates] + [{"params": others}]
