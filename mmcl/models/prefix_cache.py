"""The frozen prefix cache: what a run's frozen backbone computes, computed once.

A method declares what of the backbone it never changes (``frozen``, a
:class:`mmcl.methods.base.Frozen`); the cache reads, per tower, how many leading blocks that is
(:meth:`mmcl.methods.base.Method.frozen_blocks`: neither a weight nor a hook) and whether it
changes the tower's weights at all (:meth:`~mmcl.methods.base.Method.frozen_weights`: a method
that acts through hooks only leaves a hook-free pass equal to the frozen backbone's). The engine
attaches a :class:`PrefixCache` to the encoder (``runtime.prefix_cache``, default on); then

- :meth:`MultiModalEncoder.tower_input` returns the token states *entering* the first changed
  block, gathered from a table, instead of running the frozen blocks before it; for a method that
  changes no weight of the vision tower and hooks it from block 0 (the prompt methods), the tokens
  entering block 0 (patch embedding, class token, positions, pre-norm) are a table too;
- :meth:`MultiModalEncoder.encode` without hooks, on a tower whose weights the method never
  changes (the prompt methods' frozen queries, the prototype methods' features, zero-shot), returns
  the cached final embedding.

Each table holds one row per distinct tower input of the benchmark's splits the run uses (the
vision tower: every image, and every video frame; the text tower: every token row), is computed
on first use in large no-grad batches and stored on disk under
``<cache>/prefix/<backbone sha256>-<benchmark sha256>/`` (atomic writes; a file that does not load
or does not fit is rebuilt). A batch is looked up row by row by content digest: the cache is a
memo of a deterministic function of the input, so a batch with any input it does not hold (a
class-name prompt, a pseudo-sample) simply takes the uncached path. Results equal the uncached
path's up to float rounding (the frozen blocks run in other batch shapes).

Rows are stored in float32, or float16 when a table would exceed ``FLOAT16_ABOVE_BYTES`` (the
paper profile's ViT-B token states); they are cast back to the tower's dtype when gathered.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterable

import torch

from mmcl.models.backbone import MultiModalEncoder, TowerState
from mmcl.models.towers import flatten_frames, frames_of, mean_over_frames, tower_of
from mmcl.records import RefusedFile, atomic_torch_save, build_lock, load_tensors

log = logging.getLogger(__name__)
VERSION = 1
FLOAT16_ABOVE_BYTES = 2 << 30
BUILD_BATCH = 512  # rows per no-grad batch while a table is computed


def row_keys(rows: torch.Tensor) -> list[bytes]:
    """A content digest per row of ``rows`` (dtype and shape included)."""
    array = rows.detach().cpu().contiguous().numpy()
    head = f"{array.dtype}:{array.shape[1:]}".encode()
    return [hashlib.blake2b(head + row.tobytes(), digest_size=16).digest() for row in array]


class _Table:
    """Rows of one (tower, depth) and the lookup from input digests to rows."""

    def __init__(self, values: torch.Tensor, index: dict[bytes, int]):
        self.values, self.index = values, index

    def gather(self, keys: list[bytes]) -> torch.Tensor | None:
        rows = [self.index.get(k) for k in keys]
        if any(r is None for r in rows):
            return None
        return self.values[torch.tensor(rows, dtype=torch.long)]


class PrefixCache:
    """Cached frozen-tower computation of one run's benchmark splits (see the module's doc).

    ``frozen_blocks[tower]`` and ``frozen_weights[tower]`` are the method's declarations;
    ``inputs[tower]`` the tower input units of every sample the run may encode; ``folder`` where
    tables are stored (None: in memory only, e.g. when the backbone has no weights file to digest).
    """

    def __init__(self, inputs: dict[str, list[torch.Tensor]], folder: Path | None, split_tag: str,
                 max_bytes: float = float("inf")):
        self.frozen_blocks: dict[str, int] = {}  # nothing cached until a method declares (declare)
        self.frozen_weights: dict[str, bool] = {}
        self.inputs, self.folder, self.split_tag, self.max_bytes = inputs, folder, split_tag, max_bytes
        self.tables: dict[tuple[str, str], _Table | None] = {}
        self.text_classifiers: dict[tuple, torch.Tensor] = {}
        self.hits = self.misses = 0
        self._building = False
        self._keyed: tuple[torch.Tensor, int, list[bytes]] | None = None  # the last batch's row digests

    # ------------------------------------------------------------------ lookups (by the encoder)
    def start_state(self, encoder: "MultiModalEncoder", modality: str, x: torch.Tensor) -> "TowerState | None":
        """The state entering the tower's first changed block, or None (take the uncached path)."""
        tower = tower_of(modality)
        depth = self.frozen_blocks.get(tower, 0)
        if self._building or depth < 0:
            return None
        if depth == 0 and not (tower == "vision" and self.frozen_weights.get(tower, False)):
            return None  # the embedding may train; text: a token lookup, cheaper than a table's
        if depth >= len(encoder.blocks(tower)) and self.frozen_weights.get(tower, False):
            return None  # a whole frozen tower: its final embeddings are cached instead (``final``)
        found = self._lookup(encoder, tower, str(depth), flatten_frames(modality, x))
        if found is None:
            return None
        dtype = encoder.clip.transformer.get_cast_dtype() if tower == "text" else encoder.clip.visual.conv1.weight.dtype
        tokens = found.to(x.device, dtype)
        if tower == "text":
            return TowerState(tokens, "text", text_ids=x, depth=depth)
        return TowerState(tokens, "vision", frames=frames_of(modality, x), depth=depth)

    def final(self, encoder: "MultiModalEncoder", modality: str, x: torch.Tensor) -> torch.Tensor | None:
        """The frozen tower's embeddings ``[B, D]`` of a hook-free pass, or None."""
        tower = tower_of(modality)
        if not self.frozen_weights.get(tower, False) or self._building:
            return None
        found = self._lookup(encoder, tower, "final", flatten_frames(modality, x))
        if found is None:
            return None
        found = found.to(x.device).float()
        return mean_over_frames(found, frames_of(modality, x))

    def declare(self, method) -> None:
        """Cache what ``method`` declares frozen (:meth:`~mmcl.methods.base.Method.frozen_blocks`,
        :meth:`~mmcl.methods.base.Method.frozen_weights`)."""
        self.frozen_blocks, self.frozen_weights = declarations(method)

    def keys(self, rows: torch.Tensor) -> list[bytes]:
        """:func:`row_keys` of ``rows``, hashed once when the same tensor is looked up again unchanged
        (a prompt method's batch: its frozen query, then its tokens entering block 0). The memo holds
        the tensor itself, so its memory cannot be reused by another batch while it is remembered."""
        if self._keyed is not None and self._keyed[0] is rows and self._keyed[1] == rows._version:
            return self._keyed[2]
        keys = row_keys(rows)
        self._keyed = (rows, rows._version, keys)
        return keys

    def _lookup(self, encoder, tower: str, kind: str, rows: torch.Tensor) -> torch.Tensor | None:
        table = self.table(encoder, tower, kind)
        found = table.gather(self.keys(rows)) if table is not None else None
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    # ------------------------------------------------------------------ tables
    def path(self, tower: str, kind: str) -> Path | None:
        name = f"{tower}-{'final' if kind == 'final' else 'block' + kind}-{self.split_tag}.pt"
        return self.folder / name if self.folder is not None else None

    def table(self, encoder, tower: str, kind: str) -> _Table | None:
        if (tower, kind) not in self.tables:
            self.tables[tower, kind] = self._load_or_build(encoder, tower, kind)
        return self.tables[tower, kind]

    def _load_or_build(self, encoder, tower: str, kind: str) -> _Table | None:
        parts = self.inputs.get(tower) or []
        index: dict[bytes, int] = {}
        picks: list[tuple[int, int]] = []  # (part, row) of each table row's first occurrence
        for p, part in enumerate(parts):
            for r, key in enumerate(row_keys(part)):
                if key not in index:
                    index[key] = len(index)
                    picks.append((p, r))
        if not index:
            return None
        check = hashlib.sha256(b"".join(index)).hexdigest()
        path = self.path(tower, kind)
        if path is None:
            values = self._compute(encoder, tower, kind, parts, picks)
            return _Table(values, index) if values is not None else None
        existed = path.is_file()
        found = self._stored(path, check, len(index))
        if found is not None:
            return _Table(found, index) if isinstance(found, torch.Tensor) else None
        # One process builds a table; the others (the pool's workers, starting runs on the same
        # benchmark at once) wait for it and load what it wrote instead of computing it again.
        with build_lock(path):
            found = None if existed else self._stored(path, check, len(index))
            if found is not None:
                return _Table(found, index) if isinstance(found, torch.Tensor) else None
            values = self._compute(encoder, tower, kind, parts, picks)
            if values is None:
                return None
            try:
                atomic_torch_save({"version": VERSION, "keys": check, "values": values}, path)
            except OSError as error:  # a read-only or full cache: this run keeps the table in memory
                log.warning("prefix cache %s not written (%s); kept in memory for this run", path, error)
        return _Table(values, index)

    def _stored(self, path: Path, check: str, rows: int) -> torch.Tensor | bool | None:
        """The table stored at ``path`` when it fits (``check``: the digest of its input keys), False
        when it is over ``runtime.prefix_cache_max_gb`` (not used), None when it must be built."""
        if not path.is_file():
            return None
        if path.stat().st_size > self.max_bytes:
            log.warning("prefix cache: %s is over runtime.prefix_cache_max_gb; not used", path)
            return False
        try:
            stored = load_tensors(path, map_location="cpu", rebuild="rebuilding it")
            if stored["version"] == VERSION and stored["keys"] == check and len(stored["values"]) == rows:
                return stored["values"]
            log.warning("prefix cache %s does not fit this run's data; rebuilding it", path)
        except RefusedFile as error:
            log.warning("prefix cache %s", error)
        except Exception as error:  # noqa: BLE001 - a damaged file of any kind is rebuilt
            log.warning("prefix cache %s is damaged (%s); rebuilding it", path,
                        str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None

    @torch.no_grad()
    def _compute(self, encoder, tower: str, kind: str, parts: list[torch.Tensor],
                 picks: list[tuple[int, int]]) -> torch.Tensor | None:
        modality = "text" if tower == "text" else "image"
        device = encoder.mean.device
        computed = []
        self._building = True
        try:
            for start in range(0, len(picks), BUILD_BATCH):
                x = torch.stack([parts[p][r] for p, r in picks[start:start + BUILD_BATCH]]).to(device)
                state = encoder.tower_input(modality, x)
                if kind == "final":
                    computed.append(encoder.tower_output(encoder.run_blocks(state, pooled_only=True)).float().cpu())
                else:
                    computed.append(encoder.run_blocks(state, stop=int(kind)).tokens.float().cpu())
                row_bytes = computed[0][0].numel() * 2  # float16 at least
                if start == 0 and row_bytes * len(picks) > self.max_bytes:
                    log.warning("prefix cache: %s %s would take %.1f GB, over runtime.prefix_cache_max_gb; "
                                "not cached", tower, kind, row_bytes * len(picks) / 1e9)
                    return None
        finally:
            self._building = False
        values = torch.cat(computed)
        if values.numel() * 4 > FLOAT16_ABOVE_BYTES:
            values = values.half()
        log.info("prefix cache: %s %s, %d rows, %.1f MB (%s)", tower, kind, len(values),
                 values.numel() * values.element_size() / 2**20, values.dtype)
        return values


def benchmark_inputs(datasets: Iterable) -> dict[str, list[torch.Tensor]]:
    """The tower input units of ``datasets`` (MultiModalDatasets), per tower (views, not copies)."""
    per_tower: dict[str, list[torch.Tensor]] = {}
    for dataset in datasets:
        for modality, tensor in dataset.inputs.items():
            per_tower.setdefault(tower_of(modality), []).append(flatten_frames(modality, tensor))
    return per_tower


def declarations(method) -> tuple[dict[str, int], dict[str, bool]]:
    """``method``'s frozen blocks and frozen weights per tower of its encoder (clamped to the tower)."""
    encoder = method.encoder
    towers = {"vision": len(encoder.vision_blocks)}
    if hasattr(encoder.clip, "token_embedding"):  # an open_clip native text tower: block access
        towers["text"] = len(encoder.text_blocks)
    blocks = {t: min(max(int(method.frozen_blocks(t)), 0), n) for t, n in towers.items()}
    return blocks, {t: bool(method.frozen_weights(t)) for t in towers}


class declared_by:
    """``with declared_by(cache, method):`` the cache follows ``method``'s declarations inside the
    block (the engine's zero-shot reference, evaluated before any training), then the previous ones."""

    def __init__(self, cache: PrefixCache | None, method):
        self.cache, self.method = cache, method

    def __enter__(self):
        if self.cache is not None:
            self.previous = self.cache.frozen_blocks, self.cache.frozen_weights
            self.cache.frozen_blocks, self.cache.frozen_weights = declarations(self.method)
        return self.cache

    def __exit__(self, *exc):
        if self.cache is not None:
            self.cache.frozen_blocks, self.cache.frozen_weights = self.previous


def attach(encoder, data, config, data_sha256: str | None) -> PrefixCache:
    """A :class:`PrefixCache` of benchmark ``data`` (the training split and the evaluated one),
    attached to ``encoder``; it caches nothing until :meth:`PrefixCache.declare`."""
    splits = ["train", "val" if config.train.eval_split == "val" else "test"]
    sha = (getattr(encoder, "weights", None) or {}).get("sha256")
    folder = config.cache_dir() / "prefix" / f"{sha[:16]}-{data_sha256[:16]}" if sha and data_sha256 else None
    cache = PrefixCache(benchmark_inputs(getattr(data, s) for s in splits), folder, "+".join(splits),
                        config.runtime.prefix_cache_max_gb * 1e9)
    encoder.prefix_cache = cache
    return cache
