"""Which open_clip tower a modality goes through, and how a video's frames enter and leave it.

Text is token ids ``[B, L]`` for the text tower; every other modality is images for the vision
tower (:mod:`mmcl.data.modalities`), a video ``[B, T, 3, S, S]`` whose ``T`` frames are encoded one
by one (:func:`flatten_frames`) and whose per-frame embeddings are averaged back to one per sample
(:func:`mean_over_frames`). The encoder, the prefix cache and the prompt methods all go through
these functions.
"""
from __future__ import annotations

from typing import Literal

import torch


def tower_of(modality: str) -> Literal["vision", "text"]:
    """The tower that encodes ``modality``: ``"text"`` for text, ``"vision"`` for every other."""
    return "text" if modality == "text" else "vision"


def frames_of(modality: str, x: torch.Tensor) -> int:
    """Frames per sample of a modality's batch ``x``: ``T`` of a video ``[B, T, ...]``, else 1."""
    return x.shape[1] if modality == "video" else 1


def flatten_frames(modality: str, x: torch.Tensor) -> torch.Tensor:
    """A modality's batch as its tower's input rows: a video's frames ``[B * T, 3, S, S]`` (a view);
    any other modality's batch as it is (images ``[B, 3, S, S]``, token ids ``[B, L]``)."""
    return x.flatten(0, 1) if modality == "video" else x


def mean_over_frames(embeddings: torch.Tensor, frames: int) -> torch.Tensor:
    """Per-frame embeddings ``[B * frames, D]`` back to per-sample ``[B, D]``: the mean of each
    sample's frames (one frame: the embeddings as they are)."""
    return embeddings.view(-1, frames, embeddings.shape[-1]).mean(dim=1) if frames > 1 else embeddings
