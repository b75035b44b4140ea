"""Named benchmarks: build (embedded generator) or load (prepared real data), cached on disk.

Both sources give the same thing: train and test :class:`MultiModalDataset` objects whose
modalities went through :mod:`mmcl.data.modalities`. Text is kept as strings in the cache and
tokenised at load time with the model's tokenizer, so one cache serves every backbone.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from mmcl import kernels
from mmcl.config import BenchmarkConfig, Config, ConfigError
from mmcl.data import modalities as pipeline
from mmcl.data import synthetic
from mmcl.data.dataset import MultiModalDataset
from mmcl.data.processed import load_processed, load_processed_val, require_prepared
from mmcl.data.storage import from_stored, processed_root, read_meta, to_stored
from mmcl.records import RefusedFile, atomic_torch_save, build_lock, load_tensors

log = logging.getLogger(__name__)
Tokenizer = Callable[[Sequence[str]], torch.Tensor]


@dataclass
class Benchmark:
    name: str
    spec: BenchmarkConfig
    train: MultiModalDataset
    test: MultiModalDataset
    # For data where each class exists in one modality only (a real modality stream made of one
    # dataset per modality): the modality of each class. None when every class has every modality.
    class_modalities: list[str] | None = None
    # Validation split carved from the training data (or the publisher's list): for tuning only.
    val: MultiModalDataset | None = None
    # For such data with a second dataset for a modality (recurring modalities): the dataset of each class.
    class_sources: list[str] | None = None

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    def digest(self) -> str:
        """sha256 (hex) of the data itself: every split's tensors, labels, domains, names and texts.

        Recorded in each run's manifest: two caches, or two preparations of the same dataset, that
        differ in a single byte give different digests, so tables never mix them silently."""
        return dataset_digest(self.train, self.val, self.test, self.class_modalities)

    @property
    def domain_names(self) -> list[str]:
        return self.train.domain_names

    def class_groups(self) -> list[list[int]]:
        """Classes a class-incremental stream keeps in one task: the embedded benchmark's twins
        (:func:`mmcl.data.synthetic.twin_groups`); every class alone for prepared datasets."""
        if self.spec.source == "synthetic":
            return synthetic.twin_groups(self.class_names)
        return [[c] for c in range(len(self.class_names))]


def dataset_digest(*parts) -> str:
    """sha256 (hex) of datasets (and plain JSON-able values), in order; None parts count as such."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, MultiModalDataset):
            tensors = {f"input/{k}": v for k, v in sorted(part.inputs.items())}
            tensors |= {"labels": part.labels, "domains": part.domains}
            for key, tensor in tensors.items():
                array = tensor.detach().cpu().contiguous().numpy()
                digest.update(f"{key}:{array.dtype}:{list(array.shape)}:".encode())
                digest.update(array.tobytes())
            digest.update(json.dumps([part.class_names, part.domain_names, part.texts], sort_keys=True).encode())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def benchmark_spec(config: Config, name: str) -> BenchmarkConfig:
    if name not in config.benchmarks:
        raise ConfigError(f"unknown benchmark {name!r}; profile {config.profile!r} has {sorted(config.benchmarks)}")
    return config.benchmarks[name]


def require_data(config: Config, name: str) -> None:
    """Raise what :func:`load_benchmark` would for a real (``source: processed``) benchmark that is
    not prepared yet, without reading data: a run says where the data goes before it loads, or
    downloads, the backbone (which needs no data). Embedded benchmarks are generated when missing."""
    spec = benchmark_spec(config, name)
    if spec.source != "synthetic":
        require_prepared(spec, name)


def load_benchmark(config: Config, name: str, tokenizer: Tokenizer | None = None, progress: bool = False) -> Benchmark:
    """Train/test data of benchmark ``name``; text modalities tokenised with ``tokenizer``."""
    spec = benchmark_spec(config, name)
    class_modalities = val = class_sources = None
    if spec.source == "synthetic":
        train, test = _cached_synthetic(config, name, spec, progress)
    else:
        train, test = load_processed(spec, name, config.data)
        val = load_processed_val(spec, name)
        meta = read_meta(processed_root(spec, name) / "meta.json", name)
        class_modalities, class_sources = meta.get("class_modalities"), meta.get("class_sources")
    if val is None:  # no publisher's validation list: a share of the training data
        train, val = carve_validation(train, config.data.val_fraction, config.data.benchmark_seed)
    if "text" in spec.modalities:
        if tokenizer is None:
            raise ValueError(f"benchmark {name!r} has a text modality: pass the model's tokenizer")
        for split in (train, val, test):
            split.inputs["text"] = pipeline.text_to_tensor(split.texts["text"], tokenizer)
    return Benchmark(name, spec, train, test, class_modalities, val, class_sources)


def carve_validation(train: MultiModalDataset, fraction: float, seed: int
                     ) -> tuple[MultiModalDataset, MultiModalDataset]:
    """(train without validation, validation): ``round(fraction * n)`` samples (at least one, and
    never all) of every (class, domain) group of ``n >= 2`` samples, drawn by ``seed`` alone."""
    generator = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(train), dtype=torch.bool)
    span = int(train.domains.max()) + 1 if len(train) else 1
    groups = train.labels.long() * span + train.domains.long()
    for group in torch.unique(groups).tolist():  # sorted: the draw does not depend on sample order elsewhere
        members = torch.nonzero(groups == group).flatten()
        if len(members) < 2:
            continue
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        held[members[torch.randperm(len(members), generator=generator)[:count]]] = True
    return train.subset(torch.nonzero(~held).flatten()), train.subset(torch.nonzero(held).flatten())


def synthetic_cache_path(config: Config, name: str) -> Path | None:
    """Where the generated benchmark ``name`` is cached; None for a benchmark that is not generated."""
    spec = benchmark_spec(config, name)
    if spec.source != "synthetic":
        return None
    key = config.fingerprint("data") + "-" + _spec_hash(spec)
    # "p": generated with the CPU kernels pinned (mmcl.kernels); a cache of earlier code, generated with
    # the machine's own kernels, holds other bytes under the name without it.
    return config.cache_dir() / "benchmarks" / f"{name}-v{synthetic.GENERATOR_VERSION}p-{key}.pt"


def generate_cached(config: Config, name: str) -> None:
    """Generate benchmark ``name`` into its cache, unless there (for a worker process: nothing returned)."""
    _cached_synthetic(config, name, benchmark_spec(config, name), progress=False)


def _cached_synthetic(config: Config, name: str, spec: BenchmarkConfig, progress: bool):
    path = synthetic_cache_path(config, name)
    found = _read_synthetic(path, rebuild_note=True)
    if found is not None:
        return found
    with build_lock(path):  # processes sharing the cache generate it once; the others read the file
        found = _read_synthetic(path, rebuild_note=False)
        if found is not None:
            return found
        train, test = generate_synthetic(config, spec, progress=progress, label=name)
        atomic_torch_save({"train": to_stored(train), "test": to_stored(test)}, path)
    return train, test


def _read_synthetic(path: Path, rebuild_note: bool):
    """(train, test) from the cache file ``path``; None when it is missing, unreadable or refused.

    A cache holds tensors and plain data only, read by :func:`mmcl.records.load_tensors`: a file
    holding anything else (crafted, or of an older format) is not loaded but generated again,
    like a damaged one."""
    if not path.is_file():
        return None
    try:
        stored = load_tensors(path, rebuild="generating it again")
        return from_stored(stored["train"]), from_stored(stored["test"])
    except RefusedFile as error:
        if rebuild_note:
            log.warning("benchmark cache %s", error)
        return None
    except Exception as error:  # a corrupt cache is rebuilt, never trusted
        if rebuild_note:
            log.warning("benchmark cache %s is unreadable (%s); rebuilding", path,
                        str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None


def _spec_hash(spec: BenchmarkConfig) -> str:
    fields = spec.model_dump(mode="json", exclude={"description"})
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def generate_synthetic(config: Config, spec: BenchmarkConfig, progress: bool = False,
                       label: str = "benchmark") -> tuple[MultiModalDataset, MultiModalDataset]:
    """Generate the embedded benchmark described by ``spec`` at the profile's data sizes.

    On one BLAS and one torch thread: the sum order of a multi-threaded product depends on the
    thread count, and with it the last bits of some pixels, so the bytes (and ``Benchmark.digest``)
    would depend on the machine and on ``OPENBLAS_NUM_THREADS``."""
    from threadpoolctl import threadpool_limits

    kernels.require(config.runtime.portable_kernels)  # numpy's and torch's kernels: the same bytes on every CPU
    with threadpool_limits(limits=1), kernels.torch_threads(1):
        return _generate_synthetic(config, spec, progress, label)


def _generate_synthetic(config: Config, spec: BenchmarkConfig, progress: bool,
                        label: str) -> tuple[MultiModalDataset, MultiModalDataset]:
    try:
        concepts = synthetic.benchmark_concepts(spec.num_classes, spec.num_tasks)
    except ValueError as error:
        raise ConfigError(f"benchmarks.{label}.num_classes: {error}") from None
    data = config.data
    splits = []
    jobs = [(split, d) for split in (0, 1) for d in range(len(spec.domains))]
    bar = tqdm(total=len(jobs) * len(concepts), desc=f"generating {label}", disable=not progress, leave=False)
    for split, per_class in ((0, data.train_per_class), (1, data.test_per_class)):
        parts: dict[str, list] = {m: [] for m in spec.modalities}
        labels, domains = [], []
        for domain_index, domain in enumerate(spec.domains):
            for class_index, concept in enumerate(concepts):
                for modality in spec.modalities:
                    rng = synthetic.chunk_rng(data.benchmark_seed, concept, domain_index, split, modality)
                    style = synthetic.DomainStyle(domain_index, spec.domain_style)
                    parts[modality].append(_generate_modality(modality, concept, per_class, style, domain, rng, config,
                                                              difficulty_of(config, spec)))
                labels += [class_index] * per_class
                domains += [domain_index] * per_class
                bar.update()
        inputs, texts = {}, {}
        for modality, chunks in parts.items():
            if modality == "text":
                texts["text"] = [caption for chunk in chunks for caption in chunk]
                inputs["text"] = torch.zeros(len(labels), 1, dtype=torch.long)
            else:
                inputs[modality] = torch.cat(chunks)
        splits.append(MultiModalDataset(inputs, torch.tensor(labels), torch.tensor(domains),
                                        [c.name for c in concepts], list(spec.domains), texts))
    bar.close()
    return splits[0], splits[1]


def difficulty_of(config: Config, spec: BenchmarkConfig) -> synthetic.Difficulty:
    """The generator's calibration knobs: the benchmark's own ``generator`` section, else ``data.generator``."""
    return synthetic.Difficulty(**(spec.generator or config.data.generator).model_dump())


def _generate_modality(modality: str, concept: synthetic.Concept, n: int, style: synthetic.DomainStyle, domain: str,
                       rng, config: Config, hard: synthetic.Difficulty):
    data = config.data
    size = data.image_size
    if modality == "image":
        return pipeline.images_to_tensor(synthetic.render_images(concept, n, size, style, rng, hard), size)
    if modality == "video":
        videos = synthetic.render_videos(concept, n, size, data.video_frames, style, rng, hard)
        return pipeline.video_to_tensor(videos, size, data.video_frames)
    if modality == "audio":
        waves = synthetic.synthesize_audio(concept, n, data.audio.sample_rate, data.audio.duration, style, rng, hard)
        return pipeline.audio_to_tensor(waves, data.audio, size, data.spectrogram_render)
    if modality == "depth":
        return pipeline.depth_to_tensor(synthetic.render_depth(concept, n, size, style, rng, hard), size, data.depth_render)
    if modality in ("acc", "gyro"):
        signals = synthetic.synthesize_inertial(concept, n, data.inertial.sample_rate, data.inertial.duration,
                                                modality, style, rng, hard)
        return pipeline.inertial_to_tensor(signals, data.inertial, size)
    if modality == "text":
        return synthetic.write_captions(concept, n, synthetic.language_of(domain), rng)
    raise ConfigError(f"unknown modality {modality!r}")
