"""Pre-training of the shipped tiny CLIP configs (``model.pretrained: self``), cached by what shapes it.

:func:`pretrain_tiny_clip` trains a tiny CLIP contrastively on image-caption pairs of the embedded
benchmark's pre-training concepts (:mod:`mmcl.data.synthetic`), once per cache key
(:func:`tiny_cache_path`: architecture, recipe, data, generator, seed), on one thread with the CPU
kernels pinned, so the weights are bitwise the same on every machine.
:func:`mmcl.models.factory.build_encoder` calls it for ``model.pretrained: self``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcl import kernels
from mmcl.config import Config
from mmcl.data import synthetic
from mmcl.data.modalities import images_to_tensor
from mmcl.models.backbone import CONFIG_DIR, LOCAL_CONFIGS, MultiModalEncoder
from mmcl.progress import bar as progress_bar
from mmcl.records import RefusedFile, atomic_torch_save, build_lock, load_tensors

log = logging.getLogger(__name__)


def pretraining_seed(config: Config) -> int:
    """The seed a self-pre-trained backbone is pre-trained with: ``model.pretrain.seed`` (default
    ``data.benchmark_seed``) plus the run's seed (``config.seed``) when ``model.pretrain.per_run_seed``
    (each seed its own backbone; seed 0 keeps the base seed's), else the base seed for every seed."""
    pretrain = config.model.pretrain
    base = config.data.benchmark_seed if pretrain.seed is None else pretrain.seed
    return base + (config.seed if pretrain.per_run_seed else 0)


def tiny_cache_path(config: Config) -> Path:
    architecture = json.loads((CONFIG_DIR / f"{config.model.name}.json").read_text())
    key = {
        "architecture": architecture,
        "pretrain": config.model.pretrain.model_dump(exclude={"seed", "per_run_seed"}),  # the seed below says it
        "image_size": config.data.image_size,
        "benchmark_seed": pretraining_seed(config),
        "generator": synthetic.PRETRAINING_VERSION,  # what pre-training reads
        # 2: pre-trained on one thread, so the weights do not depend on runtime.num_threads;
        # 3: with the CPU kernels pinned (mmcl.kernels), so they do not depend on the machine either;
        # 4: MKL on the pinned branch on every vendor's CPU too (mmcl.kernels answers MKL's vendor
        # question): Intel CPUs make recipe 3's weights again, and another vendor's cache of recipe 3
        # held weights of MKL's own dispatch for that CPU.
        "recipe": 4,
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
        with kernels.torch_threads(1), threadpool_limits(limits=1):  # its images too (numpy): one BLAS thread
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
