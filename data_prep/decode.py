"""Decoding raw files with well-kept libraries: PyAV (video and audio in containers), soundfile
and librosa (wav, resampling), Pillow (images, 16-bit depth PNG), pandas (CSV/TXT tables).

Every function raises :class:`DecodeError` naming the file when it is unreadable, empty or
truncated, so the preparation can report the file and skip it (or stop, per ``on_error``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mmcl.data.modalities import sample_frame_indices


class DecodeError(ValueError):
    """A raw file is unreadable; ``filename`` names it."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.filename = str(path)


def _open_container(path: Path):
    import av

    try:
        return av.open(str(path))
    except Exception as error:  # PyAV raises several error types for damaged containers
        raise DecodeError(path, f"cannot open container ({error})") from error


def video_frames(path: str | Path, num_frames: int, start: float | None = None,
                 end: float | None = None) -> np.ndarray:
    """``num_frames`` RGB frames ``[T, H, W, 3]`` uint8 spread uniformly over the video (PyAV).

    ``start``/``end`` (seconds) restrict sampling to a segment. The stream is decoded once and
    only the picked frames are converted to arrays, so long or high-resolution videos stay cheap.
    """
    path = Path(path)
    container = _open_container(path)
    try:
        if not container.streams.video:
            raise DecodeError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = []
        try:
            for frame in container.decode(stream):
                if frame.time is not None:
                    if start is not None and frame.time < start:
                        continue
                    if end is not None and frame.time >= end:
                        break
                frames.append(frame)
                if len(frames) > 4 * 1024:  # keep memory bounded: thin out as we go
                    frames = frames[::2]
        except Exception as error:
            if not frames:
                raise DecodeError(path, f"video stream is unreadable ({error})") from error
            # A truncated tail still leaves usable frames; decoding stops at the damage.
        if not frames:
            raise DecodeError(path, "no decodable video frames")
        picks = sample_frame_indices(len(frames), num_frames)
        return np.stack([frames[i].to_ndarray(format="rgb24") for i in picks])
    finally:
        container.close()


def container_audio(path: str | Path, sample_rate: int, start: float | None = None,
                    end: float | None = None) -> np.ndarray:
    """The first audio track of a container as mono float32 ``[samples]`` at ``sample_rate`` (PyAV)."""
    import av

    path = Path(path)
    container = _open_container(path)
    try:
        if not container.streams.audio:
            raise DecodeError(path, "no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = []
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush the resampler
                chunks.append(out.to_ndarray().reshape(-1))
        except Exception as error:
            if not chunks:
                raise DecodeError(path, f"audio stream is unreadable ({error})") from error
        if not chunks:
            raise DecodeError(path, "no decodable audio")
        waveform = np.concatenate(chunks).astype(np.float32)
        return _segment(waveform, sample_rate, start, end)
    finally:
        container.close()


def wav_audio(path: str | Path, sample_rate: int, start: float | None = None, end: float | None = None) -> np.ndarray:
    """A wav/flac file as mono float32 ``[samples]`` at ``sample_rate`` (soundfile + librosa)."""
    import librosa
    import soundfile

    path = Path(path)
    try:
        waveform, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:
        raise DecodeError(path, f"unreadable audio ({error})") from error
    if waveform.shape[0] == 0:
        raise DecodeError(path, "audio file has no samples")
    waveform = waveform.mean(axis=1)
    if rate != sample_rate:
        waveform = librosa.resample(waveform, orig_sr=rate, target_sr=sample_rate)
    return _segment(waveform.astype(np.float32), sample_rate, start, end)


def _segment(waveform: np.ndarray, rate: int, start: float | None, end: float | None) -> np.ndarray:
    first = int(round((start or 0.0) * rate))
    last = int(round(end * rate)) if end is not None else len(waveform)
    return waveform[first:last]


def image_rgb(path: str | Path) -> np.ndarray:
    """An image file as RGB ``[H, W, 3]`` uint8 (Pillow)."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except Exception as error:
        raise DecodeError(path, f"unreadable image ({error})") from error


def depth_png(path: str | Path, bitshift: bool = True, scale: float = 1000.0) -> np.ndarray:
    """A 16-bit depth PNG as float32 metres ``[H, W]``, 0 (no measurement) as NaN (Pillow).

    ``bitshift``: SUN RGB-D stores depth rotated by 3 bits (its toolbox reads
    ``(raw >> 3) | (raw << 13)``); plain 16-bit depth PNGs (NYU, most others) use ``False``.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            raw = np.asarray(image).astype(np.uint32)
    except Exception as error:
        raise DecodeError(path, f"unreadable depth image ({error})") from error
    if raw.ndim != 2:
        raise DecodeError(path, f"expected a single-channel depth image, got shape {raw.shape}")
    if bitshift:
        raw = ((raw >> 3) | (raw << 13)) & 0xFFFF
    depth = raw.astype(np.float32) / scale
    depth[raw == 0] = np.nan
    return depth


def numeric_table(path: str | Path) -> np.ndarray:
    """A CSV or whitespace/comma-separated TXT table of numbers as float32 ``[rows, columns]`` (pandas).

    A header line, if any, is skipped; non-numeric columns (timestamps as text) are dropped.
    """
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, sep=None, engine="python", header=None)
    except Exception as error:
        raise DecodeError(path, f"unreadable table ({error})") from error
    numeric = table.apply(pd.to_numeric, errors="coerce")
    numeric = numeric.dropna(axis=1, how="all").dropna(axis=0, how="any")  # header row, text columns
    if numeric.empty:
        raise DecodeError(path, "no numeric rows")
    return numeric.to_numpy(dtype=np.float32)


def resample_signal(signals: np.ndarray, rate: float, target_rate: int) -> np.ndarray:
    """``[channels, samples]`` from ``rate`` to ``target_rate`` Hz (librosa)."""
    import librosa

    if rate == target_rate:
        return signals
    return librosa.resample(signals, orig_sr=rate, target_sr=target_rate, axis=-1).astype(np.float32)


def centre_window(signals: np.ndarray, length: int) -> np.ndarray:
    """The centred ``length``-sample window of ``[..., samples]`` (shorter signals unchanged)."""
    extra = signals.shape[-1] - length
    if extra <= 0:
        return signals
    start = extra // 2
    return signals[..., start:start + length]
