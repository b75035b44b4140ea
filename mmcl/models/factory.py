"""The backbone a run uses: :func:`build_encoder`, the one factory. ``model.pretrained`` selects the weights:

- ``"self"``: the tiny configs shipped in ``mmcl/models/configs`` are pre-trained contrastively on
  image-caption pairs of the embedded benchmark's pre-training concepts, once, and cached under a
  key of everything that shapes them (architecture, pre-training recipe, data, generator). A cached
  file that does not load (truncated, garbage, or holding objects other than tensors: read by
  :func:`mmcl.records.load_tensors`) is named in one warning line and pre-trained again, to the
  same weights (pre-training is deterministic; :mod:`mmcl.models.pretraining`);
- an open_clip tag (``"openai"``) or a local weights file: passed to ``open_clip.create_model``,
  the same code path in both cases. A tag's weights come from the Hugging Face hub (once, then its
  cache): when the hub is out of reach (no network, ``HF_HUB_OFFLINE``; probed for
  :data:`HUB_PROBE_SECONDS`) they are read from the cache at once, and when they are not cached
  either, a one-line :class:`~mmcl.config.ConfigError` says so within seconds, instead of
  open_clip retrying the hub for a minute (:func:`hub_weights_source`);
- ``null``: random initialisation.

The encoder it wraps the weights in: :class:`mmcl.models.backbone.MultiModalEncoder`.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import open_clip
import torch
from huggingface_hub import constants, try_to_load_from_cache

from mmcl.config import Config, ConfigError
from mmcl.models.backbone import LOCAL_CONFIGS, MultiModalEncoder, freeze
from mmcl.models.pretraining import pretrain_tiny_clip


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
