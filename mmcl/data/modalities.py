"""The one input pipeline: raw modality signals -> what the open_clip towers take.

Every visual-tower modality becomes uint8 RGB images ``[N, 3, S, S]`` (video ``[N, T, 3, S, S]``);
text becomes token ids ``[N, L]``. The embedded benchmark and the prepared real datasets both go
through these functions, so a model sees the same kind of input whatever the source.
Normalisation with the CLIP mean/std happens on the fly in :mod:`mmcl.models.backbone`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import librosa
import numpy as np
import torch
import torch.nn.functional as F

from mmcl.config import AudioConfig, InertialConfig


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``[N, C, H, W]`` float images to ``[N, C, size, size]``."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _render(maps: np.ndarray, size: int, render: str) -> torch.Tensor:
    """Render ``[N, H, W]`` maps in [0, 1] as ``[N, 3, size, size]`` uint8 images."""
    values = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    if render == "viridis":
        from matplotlib import colormaps  # only for the viridis rendering (seconds to import)

        rgb = colormaps["viridis"](values.numpy())[..., :3]  # [N, H, W, 3]
        images = torch.from_numpy(rgb.astype(np.float32)).permute(0, 3, 1, 2)
    elif render == "gray":
        images = values[:, None].expand(-1, 3, -1, -1)
    else:
        raise ValueError(f"unknown render {render!r}; use 'gray' or 'viridis'")
    return _to_uint8(_resize(images.contiguous(), size))


def images_to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """RGB images ``[N, H, W, 3]`` (uint8 or float in [0, 1]) -> ``[N, 3, size, size]`` uint8."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected images of shape [N, H, W, 3], got {array.shape}")
    values = torch.from_numpy(array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0))
    return _to_uint8(_resize(values.permute(0, 3, 1, 2).contiguous(), size))


def video_to_tensor(frames: np.ndarray, size: int, num_frames: int) -> torch.Tensor:
    """Videos ``[N, F, H, W, 3]`` -> ``[N, T, 3, size, size]`` uint8 with T uniformly sampled frames."""
    array = np.asarray(frames)
    if array.ndim != 5 or array.shape[-1] != 3:
        raise ValueError(f"expected videos of shape [N, F, H, W, 3], got {array.shape}")
    picks = sample_frame_indices(array.shape[1], num_frames)
    array = array[:, picks]
    n, t = array.shape[:2]
    flat = images_to_tensor(array.reshape(n * t, *array.shape[2:]), size)
    return flat.reshape(n, t, 3, size, size)


def sample_frame_indices(available: int, wanted: int) -> np.ndarray:
    """Indices of ``wanted`` frames spread uniformly over ``available`` (centre of each segment)."""
    if available < 1:
        raise ValueError("a video needs at least one frame")
    edges = np.linspace(0, available, wanted + 1)
    return np.minimum(((edges[:-1] + edges[1:]) / 2).astype(int), available - 1)


def log_mel(waveforms: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Waveforms ``[N, samples]`` -> log-mel power in dB ``[N, n_mels, frames]`` (librosa)."""
    mel = librosa.feature.melspectrogram(
        y=np.asarray(waveforms, dtype=np.float32),
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        n_mels=cfg.n_mels,
        power=2.0,
    )
    return librosa.power_to_db(mel, ref=1.0, top_db=None)


def _normalise_db(db: np.ndarray, dynamic_range: float = 80.0) -> np.ndarray:
    """Per-sample map of dB values to [0, 1]: the loudest bin is 1, ``dynamic_range`` below is 0."""
    peak = db.reshape(db.shape[0], -1).max(axis=1).reshape(-1, *([1] * (db.ndim - 1)))
    return np.clip((db - peak + dynamic_range) / dynamic_range, 0.0, 1.0)


def audio_to_tensor(waveforms: np.ndarray, cfg: AudioConfig, size: int, render: str = "gray") -> torch.Tensor:
    """Waveforms ``[N, samples]`` at ``cfg.sample_rate`` -> log-mel images ``[N, 3, size, size]``.

    Low frequencies are drawn at the bottom, as spectrograms usually are.
    """
    waveforms = fit_length(np.asarray(waveforms, dtype=np.float32), int(cfg.sample_rate * cfg.duration))
    maps = _normalise_db(log_mel(waveforms, cfg))[:, ::-1]
    return _render(maps, size, render)


def inertial_to_tensor(signals: np.ndarray, cfg: InertialConfig, size: int) -> torch.Tensor:
    """Tri-axial signals ``[N, 3, samples]`` -> per-axis log spectrograms as RGB ``[N, 3, size, size]``.

    Axis x, y, z become the red, green and blue channel *(design choice)*.
    """
    array = np.asarray(signals, dtype=np.float32)
    if array.ndim != 3 or array.shape[1] != 3:
        raise ValueError(f"expected inertial signals of shape [N, 3, samples], got {array.shape}")
    array = fit_length(array, int(cfg.sample_rate * cfg.duration))
    array = array - array.mean(axis=-1, keepdims=True)  # remove gravity / bias per axis
    spectrum = np.abs(librosa.stft(array, n_fft=cfg.n_fft, hop_length=cfg.hop_length, center=True)) ** 2
    db = librosa.power_to_db(spectrum, ref=1.0, top_db=None)  # [N, 3, F, frames]
    maps = _normalise_db(db)[:, :, ::-1]
    images = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    return _to_uint8(_resize(images, size))


def depth_to_tensor(depth: np.ndarray, size: int, render: str = "gray") -> torch.Tensor:
    """Depth maps ``[N, H, W]`` (any unit; NaN/inf = missing) -> ``[N, 3, size, size]`` uint8.

    Each map is min-max normalised over its valid pixels; missing pixels become 0.
    """
    array = np.asarray(depth, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"expected depth maps of shape [N, H, W], got {array.shape}")
    valid = np.isfinite(array)
    filled = np.where(valid, array, np.nan)
    low = np.nanmin(filled.reshape(len(array), -1), axis=1)[:, None, None]
    high = np.nanmax(filled.reshape(len(array), -1), axis=1)[:, None, None]
    scaled = np.where(valid, (array - low) / np.maximum(high - low, 1e-6), 0.0)
    return _render(np.nan_to_num(scaled), size, render)


def fit_length(signals: np.ndarray, length: int) -> np.ndarray:
    """Crop or zero-pad the last axis to ``length`` samples."""
    if signals.shape[-1] >= length:
        return signals[..., :length]
    pad = [(0, 0)] * (signals.ndim - 1) + [(0, length - signals.shape[-1])]
    return np.pad(signals, pad)


def text_to_tensor(texts: Sequence[str], tokenizer: Callable[[Sequence[str]], torch.Tensor]) -> torch.Tensor:
    """Captions/transcripts -> token ids ``[N, context_length]`` with the model's tokenizer."""
    return tokenizer(list(texts)).to(torch.long)
