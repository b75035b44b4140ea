"""The preparation machinery shared by every dataset: plan, decode, convert, shard, assemble.

A dataset adapter (one module per dataset) only says *where the samples are*
(:meth:`DatasetAdapter.list_items`) and *how to decode one* (:meth:`DatasetAdapter.decode`) into
raw numpy signals. Everything else happens here, once for all datasets:

1. **plan**: the adapter lists every sample (split, label, domain, files) from the raw folder;
   a missing raw folder or index file raises :class:`MissingRawData` with the expected layout.
2. **verify**: optional ``SHA256SUMS`` check (``sha256sum`` format) when the raw folder has one.
3. **convert**: decoded signals go through :mod:`mmcl.data.modalities` exactly as the embedded
   benchmark does (frames sampled and resized, audio -> log-mel image, inertial -> spectrogram
   image, depth normalised; transcripts kept as strings).
4. **shard**: samples are processed in shards of ``shard_size``; each finished shard is saved
   atomically under ``<out>/.work/`` and recorded in ``progress.json``, so an interrupted run
   resumes at the first unfinished shard. Shards, like the assembled splits, hold tensors and
   plain data only and are read by :func:`mmcl.records.load_tensors`: a shard holding anything
   else (crafted, or of an older format) is recomputed, with a warning naming it, never loaded.
5. **assemble**: shards are concatenated into ``train.pt`` / ``val.pt`` (where the adapter lists a validation split) / ``test.pt`` (atomic), and
   ``meta.json`` with ``complete: true`` is written **last**; a folder without it is never read as
   a prepared dataset by :func:`mmcl.data.processed.load_processed`.

Bad data policy (``on_error``): ``"skip"`` (default) reports each unreadable or truncated file
by name, leaves the sample out and counts it in the summary (``skipped``); ``"fail"`` stops at
the first one with :class:`CorruptSample` naming the file. Skipping has limits, checked before
anything is written: more than ``max_skipped_fraction`` (default 5 %) of a split unreadable, or
a class that loses every sample of a split, stops with :class:`TooManySkipped` naming the split
(and the class); the shards holding failures are decoded again on the next run, so re-downloading
the bad files and running again is enough. Either way no half-written cache is left under a final
name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from mmcl.config import Config
from mmcl.data import modalities as pipeline
from mmcl.data.processed import FORMAT_VERSION
from mmcl.progress import bar as progress_bar
from mmcl.records import RefusedFile, atomic_torch_save, atomic_write_json, load_tensors, writing

log = logging.getLogger("data_prep")
OnError = Literal["skip", "fail"]
SPLITS = ("train", "val", "test")  # "val": the publisher's validation list, where there is one


class PrepError(RuntimeError):
    """The preparation cannot go on; the message says why and what to do."""


class MissingRawData(PrepError):
    """The raw folder (or a file the adapter needs to index it) is not there."""


class CorruptSample(PrepError):
    """A raw file could not be decoded (``on_error="fail"``)."""


class TooManySkipped(PrepError):
    """Skipping unreadable files would leave a split too small or a class without samples."""


@dataclass
class Item:
    """One raw sample: where its files are and what it is."""

    key: str  # unique and stable (relative path or id): names the sample in reports
    split: str  # "train" | "val" | "test"
    label: int
    files: dict[str, str]  # role -> path, e.g. {"video": ".../x.mp4"}
    domain: int = 0
    text: str | None = None
    modalities: tuple[str, ...] | None = None  # None: all of the adapter's modalities
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """Everything the adapter found in the raw folder."""

    items: list[Item]
    class_names: list[str]
    domain_names: list[str] = field(default_factory=lambda: ["default"])
    class_modalities: list[str] | None = None  # modality of each class (modality stream only)
    class_sources: list[str] | None = None  # the dataset each class comes from (modality stream only)
    notes: list[str] = field(default_factory=list)


@dataclass
class PrepSummary:
    """What a preparation did; also stored in ``meta.json`` under ``summary``."""

    dataset: str
    out_dir: str
    counts: dict[str, int]
    skipped: int
    failures: list[dict[str, str]]
    class_names: list[str]
    domain_names: list[str]
    modalities: list[str]
    seconds: float
    reused: bool = False  # True when a complete, identical preparation was found
    resumed_shards: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"{self.dataset}: {self.out_dir}" + (" (already prepared)" if self.reused else ""),
                 "  samples: " + ", ".join(f"{k} {v}" for k, v in self.counts.items()),
                 f"  classes: {len(self.class_names)}, domains: {self.domain_names}, modalities: {self.modalities}",
                 f"  skipped (unreadable files): {self.skipped}"]
        lines += [f"    {f['key']}: {f['file']}: {f['error']}" for f in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"    ... and {len(self.failures) - 20} more (meta.json lists them all)")
        if self.resumed_shards:
            lines.append(f"  resumed: {self.resumed_shards} shards reused from an interrupted run")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  time: {self.seconds:.1f} s")
        return "\n".join(lines)


class DatasetAdapter:
    """Where one dataset's samples are and how to decode one. Subclasses fill the attributes."""

    name: str = ""
    version: int = 1  # bump when decoding changes, so old caches are not reused
    modalities: tuple[str, ...] = ()
    description: str = ""
    source: str = ""  # where to download it
    licence: str = ""
    layout: str = ""  # the expected raw layout, printed when something is missing
    default_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: dict[str, Any] | None = None):
        unknown = sorted(set(options or {}) - set(self.default_options))
        if unknown:
            raise PrepError(f"{self.name}: unknown option(s) {unknown}; known: {sorted(self.default_options)}")
        self.options = {**self.default_options, **(options or {})}

    def fetch(self, raw_dir: Path) -> None:
        """Download into ``raw_dir`` where a client exists; by default print the manual steps."""
        raise MissingRawData(self.missing_message(raw_dir, "automatic download is not available"))

    def list_items(self, raw_dir: Path) -> Plan:
        raise NotImplementedError

    def decode(self, item: Item, settings: Settings) -> dict[str, np.ndarray]:
        """Raw signals of one sample, by modality (see :func:`convert` for the expected shapes)."""
        raise NotImplementedError

    def missing_message(self, raw_dir: Path, what: str) -> str:
        return (f"{self.name}: {what}.\n"
                f"Download: {self.source}\nLicence: {self.licence}\n"
                f"Put the files under {raw_dir} like this:\n{self.layout}\n"
                f"Then run: python -m data_prep {self.name} --raw {raw_dir} --out <processed folder>")

    def require(self, path: Path, raw_dir: Path, what: str | None = None) -> Path:
        """``path`` if it exists, else :class:`MissingRawData` with the download instructions."""
        if not path.exists():
            raise MissingRawData(self.missing_message(raw_dir, f"{what or 'expected'} {path} not found"))
        return path


@dataclass(frozen=True)
class Settings:
    """The profile's input sizes: everything that shapes the processed tensors."""

    image_size: int
    video_frames: int
    spectrogram_render: str
    depth_render: str
    audio: Any
    inertial: Any

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        data = config.data
        return cls(data.image_size, data.video_frames, data.spectrogram_render, data.depth_render,
                   data.audio, data.inertial)

    def fingerprint_fields(self) -> dict:
        return {"image_size": self.image_size, "video_frames": self.video_frames,
                "spectrogram_render": self.spectrogram_render, "depth_render": self.depth_render,
                "audio": self.audio.model_dump(), "inertial": self.inertial.model_dump()}


def convert(modality: str, signal: np.ndarray, settings: Settings) -> torch.Tensor:
    """One decoded signal -> the tensor the engine reads, through :mod:`mmcl.data.modalities`.

    Shapes in: image ``[H, W, 3]``, video ``[F, H, W, 3]``, audio ``[samples]`` at
    ``settings.audio.sample_rate``, acc/gyro ``[3, samples]`` at ``settings.inertial.sample_rate``,
    depth ``[H, W]``. Out: one sample without the batch axis.
    """
    size = settings.image_size
    if modality == "image":
        return pipeline.images_to_tensor(signal[None], size)[0]
    if modality == "video":
        return pipeline.video_to_tensor(signal[None], size, settings.video_frames)[0]
    if modality == "audio":
        return pipeline.audio_to_tensor(signal[None], settings.audio, size, settings.spectrogram_render)[0]
    if modality in ("acc", "gyro"):
        return pipeline.inertial_to_tensor(signal[None], settings.inertial, size)[0]
    if modality == "depth":
        return pipeline.depth_to_tensor(signal[None], size, settings.depth_render)[0]
    raise PrepError(f"no conversion for modality {modality!r}")


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def verify_checksums(raw_dir: Path, checksum_file: Path | None = None) -> list[dict[str, str]]:
    """Check files listed in a ``sha256sum``-format file; return the mismatches (empty: all good).

    By default ``<raw>/SHA256SUMS`` is used when present; none of the publishers here ships one,
    so users who want the check write it once after downloading (``sha256sum ... > SHA256SUMS``).
    """
    path = checksum_file or raw_dir / "SHA256SUMS"
    if not path.is_file():
        return []
    problems = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        expected, name = line.split(maxsplit=1)
        target = raw_dir / name.lstrip("*").strip()
        if not target.is_file():
            problems.append({"file": str(target), "error": "listed in checksums but missing"})
            continue
        digest = hashlib.sha256()
        with open(target, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected.lower():
            problems.append({"file": str(target), "error": "sha256 mismatch"})
    return problems


def _failure(item: Item, error: BaseException) -> dict[str, str]:
    file = getattr(error, "filename", None) or next(iter(item.files.values()), "")
    return {"key": item.key, "file": str(file), "error": f"{type(error).__name__}: {error}"[:300]}


def _process_shard(adapter: DatasetAdapter, items: list[Item], modalities: list[str], settings: Settings,
                   on_error: OnError) -> dict:
    """Decode and convert ``items``; per modality only the rows of samples that carry it."""
    inputs: dict[str, list[torch.Tensor]] = {m: [] for m in modalities if m != "text"}
    rows: dict[str, list[int]] = {m: [] for m in inputs}
    labels, domains, texts, keys, failures = [], [], [], [], []
    for item in items:
        try:
            signals = adapter.decode(item, settings)
            wanted = [m for m in (item.modalities or modalities) if m != "text"]
            converted = {m: convert(m, signals[m], settings) for m in wanted}
        except Exception as error:  # any decoder error means this file is unusable
            failure = _failure(item, error)
            if on_error == "fail":
                raise CorruptSample(f"{adapter.name}: cannot decode sample {item.key} ({failure['file']}): "
                                    f"{failure['error']}. Re-download it, or pass on_error='skip' "
                                    f"(CLI: --on-error skip) to leave it out.") from error
            log.warning("%s: skipping %s (%s): %s", adapter.name, item.key, failure["file"], failure["error"])
            failures.append(failure)
            continue
        index = len(labels)
        for m, tensor in converted.items():
            inputs[m].append(tensor)
            rows[m].append(index)
        labels.append(item.label)
        domains.append(item.domain)
        texts.append(item.text or "")
        keys.append(item.key)
    return {"inputs": {m: torch.stack(v) if v else None for m, v in inputs.items()},
            "rows": {m: torch.tensor(r, dtype=torch.long) for m, r in rows.items()},
            "labels": torch.tensor(labels, dtype=torch.long), "domains": torch.tensor(domains, dtype=torch.long),
            "texts": texts, "keys": keys, "failures": failures}


def _assemble(shards: list[dict], modalities: list[str], settings: Settings, has_text: bool) -> dict:
    """Concatenate shards of one split into the stored format of :mod:`mmcl.data.processed`."""
    offset, inputs, rows = 0, {m: [] for m in modalities if m != "text"}, {m: [] for m in modalities if m != "text"}
    labels, domains, texts, keys = [], [], [], []
    for shard in shards:
        for m in inputs:
            if shard["inputs"].get(m) is not None:
                inputs[m].append(shard["inputs"][m])
                rows[m].append(shard["rows"][m] + offset)
        offset += len(shard["labels"])
        labels.append(shard["labels"])
        domains.append(shard["domains"])
        texts += shard["texts"]
        keys += shard["keys"]
    n = offset
    stored_inputs, stored_rows = {}, {}
    for m in inputs:
        if inputs[m]:
            stored_inputs[m] = torch.cat(inputs[m])
            stored_rows[m] = torch.cat(rows[m])
        else:  # no sample of this split carries modality m
            stored_inputs[m] = torch.empty(0, *_empty_shape(m, settings), dtype=torch.uint8)
            stored_rows[m] = torch.empty(0, dtype=torch.long)
    sparse = {m: r for m, r in stored_rows.items() if len(r) != n}
    return {"inputs": stored_inputs, "rows": sparse,
            "labels": torch.cat(labels) if labels else torch.empty(0, dtype=torch.long),
            "domains": torch.cat(domains) if domains else torch.empty(0, dtype=torch.long),
            "texts": {"text": texts} if has_text else {}, "keys": keys}


def _empty_shape(modality: str, settings: Settings) -> tuple[int, ...]:
    size = settings.image_size
    return (settings.video_frames, 3, size, size) if modality == "video" else (3, size, size)


def _chunks(items: list[Item], size: int) -> Iterable[tuple[int, list[Item]]]:
    for index, start in enumerate(range(0, len(items), size)):
        yield index, items[start:start + size]


def check_skipped(dataset: str, planned: dict[str, list[Item]], assembled: dict[str, dict], class_names: list[str],
                  max_skipped_fraction: float) -> None:
    """:class:`TooManySkipped` when a split lost more than ``max_skipped_fraction`` of its samples
    or a class lost every sample it had in a split."""
    for split in SPLITS:
        total = len(planned[split])
        if not total:
            continue
        skipped = total - len(assembled[split]["labels"])
        if skipped / total > max_skipped_fraction:
            raise TooManySkipped(
                f"{dataset}: {skipped} of {total} {split} samples ({skipped / total:.1%}) are unreadable, more than "
                f"the allowed {max_skipped_fraction:.1%}; replace the files listed above, or raise the limit "
                f"(--max-skipped-fraction / max_skipped_fraction)")
        kept = set(assembled[split]["labels"].tolist())
        lost = sorted({item.label for item in planned[split]} - kept)
        if lost:
            names = ", ".join(repr(class_names[label]) for label in lost)
            raise TooManySkipped(f"{dataset}: every {split} sample of class {names} is unreadable; "
                                 f"replace the files listed above")


def run_preparation(adapter: DatasetAdapter, raw_dir: Path, out_dir: Path, config: Config,
                    on_error: OnError = "skip", force: bool = False, shard_size: int = 64,
                    progress: bool = False, checksum_file: Path | None = None,
                    keep_work: bool = False, max_skipped_fraction: float = 0.05) -> PrepSummary:
    """Plan, verify, convert (resumably, in shards) and write a processed dataset folder."""
    if on_error not in ("skip", "fail"):
        raise PrepError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if not 0.0 <= max_skipped_fraction <= 1.0:
        raise PrepError(f"max_skipped_fraction must lie in [0, 1], got {max_skipped_fraction}")
    started = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir).expanduser(), Path(out_dir).expanduser()
    if not raw_dir.is_dir():
        raise MissingRawData(adapter.missing_message(raw_dir, f"raw folder {raw_dir} does not exist"))
    settings = Settings.from_config(config)
    plan = adapter.list_items(raw_dir)
    if not plan.items:
        raise MissingRawData(adapter.missing_message(raw_dir, f"no samples found under {raw_dir}"))
    modalities = list(adapter.modalities)
    has_text = "text" in modalities
    fingerprint = _digest({"dataset": adapter.name, "version": adapter.version, "format": FORMAT_VERSION,
                           "options": adapter.options, "settings": settings.fingerprint_fields(),
                           "items": [(i.key, i.split, i.label, i.domain, i.text) for i in plan.items],
                           "classes": plan.class_names, "domains": plan.domain_names})
    meta_path = out_dir / "meta.json"
    if meta_path.is_file() and not force:
        meta = json.loads(meta_path.read_text())
        if meta.get("complete") and meta.get("fingerprint") == fingerprint:
            summary = PrepSummary(**{**meta["summary"], "reused": True})
            return summary
    # From here on the folder must not look complete until the new meta.json is written.
    with writing(meta_path):  # a file where a folder of --out should be stops here, naming meta.json
        meta_path.unlink(missing_ok=True)
    work = out_dir / ".work"
    progress_path = work / "progress.json"
    state = json.loads(progress_path.read_text()) if progress_path.is_file() and not force else {}
    if state.get("fingerprint") != fingerprint or state.get("shard_size") != shard_size:
        # Shards are ranges of the item list: other items, settings or shard size invalidate them.
        shutil.rmtree(work, ignore_errors=True)
        state = {"fingerprint": fingerprint, "shard_size": shard_size, "done": {}}
    atomic_write_json(progress_path, state)  # makes the folders: a full or read-only --out stops here

    checksum_problems = verify_checksums(raw_dir, checksum_file)
    if checksum_problems and on_error == "fail":
        raise CorruptSample(f"{adapter.name}: checksum verification failed: {checksum_problems[:5]}")
    bad_files = {p["file"] for p in checksum_problems}

    by_split = {split: [i for i in plan.items if i.split == split] for split in SPLITS}
    resumed, failures, assembled, failed_shards = 0, [], {}, []
    total_shards = sum(-(-len(v) // shard_size) for v in by_split.values())
    # A bar in a terminal or a live notebook; none in a log or an executed notebook (mmcl.progress).
    bar = progress_bar(total=total_shards, desc=f"preparing {adapter.name}", disable=not progress, unit="shard")
    for split, items in by_split.items():
        shards = []
        for index, chunk in _chunks(items, shard_size):
            name = f"{split}-{index:05d}.pt"
            shard = None
            if name in state["done"]:
                try:
                    shard = load_tensors(work / name, rebuild="recomputing it")
                    resumed += 1
                except RefusedFile as error:  # crafted, or of an older format: recomputed, never run
                    log.warning("shard %s", error)
                except Exception as error:  # a damaged shard is recomputed, never trusted
                    log.warning("shard %s is unreadable (%s); recomputing", name,
                                str(error).splitlines()[0] if str(error) else type(error).__name__)
            if shard is None:
                keep = [i for i in chunk if not bad_files.intersection(str(p) for p in i.files.values())]
                shard = _process_shard(adapter, keep, modalities, settings, on_error)
                shard["failures"] += [{"key": i.key, "file": str(next(iter(i.files.values()), "")),
                                       "error": "checksum mismatch or missing"} for i in chunk if i not in keep]
                atomic_torch_save(shard, work / name)
                state["done"][name] = len(shard["labels"])
                atomic_write_json(progress_path, state)
            failures += shard["failures"]
            if shard["failures"]:
                failed_shards.append(name)
            shards.append(shard)
            bar.update()
        assembled[split] = _assemble(shards, modalities, settings, has_text)
    bar.close()
    try:
        check_skipped(adapter.name, by_split, assembled, plan.class_names, max_skipped_fraction)
    except TooManySkipped:
        # Shards with failures are decoded again next time, in case the files were replaced.
        for name in failed_shards:
            state["done"].pop(name, None)
        atomic_write_json(progress_path, state)
        raise
    counts = {split: len(assembled[split]["labels"]) for split in SPLITS if split != "val" or by_split["val"]}
    empty = next((split for split in counts if counts[split] == 0), None)
    if empty:
        raise PrepError(f"{adapter.name}: no readable {empty} samples "
                        f"({len(failures)} files failed to decode); see the messages above")
    (out_dir / "val.pt").unlink(missing_ok=True)  # none without a validation list: the loader carves one
    for split in counts:
        atomic_torch_save(assembled[split], out_dir / f"{split}.pt")
    summary = PrepSummary(adapter.name, str(out_dir), counts, len(failures), failures, plan.class_names,
                          plan.domain_names, modalities, time.perf_counter() - started,
                          resumed_shards=resumed, notes=plan.notes)
    meta = {"format_version": FORMAT_VERSION, "dataset": adapter.name, "complete": True,
            "class_names": plan.class_names, "domain_names": plan.domain_names, "modalities": modalities,
            "class_modalities": plan.class_modalities, "class_sources": plan.class_sources,
            "fingerprint": fingerprint,
            "settings": settings.fingerprint_fields(), "options": adapter.options,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "summary": summary.to_dict()}
    atomic_write_json(meta_path, meta)  # last: its presence means "complete"
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return summary
