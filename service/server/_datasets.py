"""Server-side datasets: rows read by index from files every replica can see, and the epoch plan over them.

A batch is named by (dataset fingerprint, plan, batch index). The plan fixes a global order per epoch
(``EpochOrder``, seeded by (seed, epoch)), cuts it into global steps of ``batch_size * world_size`` samples
and gives rank ``r`` the r-th slice of every step, so every rank has the same number of batches, every
sample is visited exactly once per epoch, and the same request gives the same rows on any replica.

A dataset is opened once per process (a lock per location, so simultaneous first requests share one open),
from metadata only (see ``datasets._files`` and ``datasets._readers``), and reused while its files' sizes and
mtimes stay the same. A mixture (``Mixture``) draws from several datasets in set proportions.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feedline.proto import FeedlineError, FingerprintMismatch, InvalidOptions, InvalidSample, ResumeStateError
from feedline.proto._plan import DatasetPlan

from .datasets._files import Location, fingerprint, locate, resolve_inside
from .datasets._order import EpochOrder, Permutation
from .datasets._readers import BlockCache, BlockReader, Reader, open_reader, rows_from_blocks

__all__ = [
    "DataAccess",
    "DatasetPlan",
    "Mixture",
    "MixturePart",
    "RowSource",
    "batch_positions",
    "batch_rows",
    "batch_span",
    "check_fingerprint",
    "num_batches",
    "open_dataset",
    "open_mixture",
    "resolve_inside",
    "resume_batch_index",
]

CACHE_BYTES = 32 << 20
"""Decoded blocks (Parquet row groups, remote byte ranges) kept per process; windows of the epoch order fit in it
(half of it by the files' own byte counts: 16 MiB, an order the same as with the 64 MiB cache before)."""

_BLOCKS = BlockCache(CACHE_BYTES)
_REVALIDATE_S = 5.0
_MIX_CHUNK = 4096
_MIX_SALT = 0x6D6978


@dataclass(frozen=True)
class DataAccess:
    """What a server may read: local roots, allowed object-store URL prefixes, where line indexes are cached."""

    roots: tuple[Path, ...] = ()
    urls: tuple[str, ...] = ()
    cache_dir: Path | None = None


def num_batches(n: int, plan: DatasetPlan) -> int:
    """Batches per rank per epoch (the same on every rank)."""
    full, rest = divmod(n, plan.global_batch)
    return full + (1 if rest and not plan.drop_last else 0)


def batch_span(n: int, plan: DatasetPlan, batch_index: int) -> tuple[int, int]:
    """The epoch positions ``[start, stop)`` of this rank's batch ``batch_index`` (always consecutive).

    In the last, partial global step the remaining samples are split as evenly as possible over the ranks
    (a rank may get an empty batch rather than a repeated sample).
    """
    total = num_batches(n, plan)
    if not 0 <= batch_index < total:
        raise InvalidOptions(f"batch index {batch_index} is outside 0..{total - 1}", field="start_batch_index")
    start = batch_index * plan.global_batch
    width = min(plan.global_batch, n - start)
    if width == plan.global_batch:
        lo, hi = plan.rank * plan.batch_size, (plan.rank + 1) * plan.batch_size
    else:
        bounds = np.linspace(0, width, plan.world_size + 1).astype(np.int64)
        lo, hi = int(bounds[plan.rank]), int(bounds[plan.rank + 1])
    return start + lo, start + hi


def batch_positions(n: int, plan: DatasetPlan, batch_index: int) -> np.ndarray:
    """Epoch positions of this rank's batch ``batch_index`` (``batch_span`` as an array)."""
    return np.arange(*batch_span(n, plan, batch_index), dtype=np.int64)


def batch_rows(n: int, plan: DatasetPlan, batch_index: int, order: EpochOrder | None = None) -> np.ndarray:
    """Row indices of this rank's batch ``batch_index`` (``order``: the dataset's; default all rows shuffled)."""
    order = order or EpochOrder([n], seed=plan.seed, epoch=plan.epoch, shuffle=plan.shuffle)
    return order.between(*batch_span(n, plan, batch_index))


def resume_batch_index(samples_consumed: int, plan: DatasetPlan) -> int:
    """The batch index at which a plan with another world size continues the same global order."""
    if samples_consumed % plan.global_batch:
        raise ResumeStateError(
            f"{samples_consumed} samples were consumed, which is not a whole number of global batches of "
            f"{plan.global_batch} (batch_size {plan.batch_size} x world_size {plan.world_size})"
        )
    return samples_consumed // plan.global_batch


class RowSource:
    """The rows of one dataset (one or many files of one format), read by global index."""

    def __init__(self, location: Location, cache_dir: Path | None, blocks: BlockCache = _BLOCKS) -> None:
        self.location = location
        files = location.files
        with ThreadPoolExecutor(min(16, len(files))) as pool:  # object stores: overlap the round trips
            samples = list(pool.map(lambda f: f.head_tail(), files))
            digests = [
                hashlib.sha256(f"{f.size}".encode() + s).hexdigest()[:32] for f, s in zip(files, samples, strict=True)
            ]
            index_dir = cache_dir / "lines" if cache_dir else None
            self._readers: list[Reader] = list(
                pool.map(
                    lambda fd: open_reader(location.kind, fd[0], fd[1], blocks, index_dir),
                    zip(files, digests, strict=True),
                )
            )
        self.fingerprint = fingerprint(location, samples)
        sizes = np.array([r.num_rows for r in self._readers], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._block_rows = np.concatenate([r.block_rows for r in self._readers] or [np.zeros(0, np.int64)])
        # Where every file is read in decoded blocks, a batch goes straight to its blocks across files.
        self._blocks: list[BlockReader] | None = None
        if self._readers and all(isinstance(r, BlockReader) for r in self._readers):
            self._blocks = [r for r in self._readers if isinstance(r, BlockReader)]
            counts = np.array([len(r.block_rows) for r in self._blocks], dtype=np.int64)
            self._block_file = np.repeat(np.arange(len(counts)), counts)
            self._block_first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            self._block_starts = np.concatenate([[0], np.cumsum(self._block_rows)[:-1]]).astype(np.int64)
        block_bytes = float(sum(int(r.block_bytes.sum()) for r in self._readers))
        self.random_access = all(r.random_access for r in self._readers)
        # Windows of the epoch order hold half of the block cache by the footers' byte counts (decoded Arrow
        # tables measure ~1.2x Parquet's uncompressed sizes for text), so a window's blocks stay cached.
        per_row = block_bytes / max(1, len(self))
        self._window = None if self.random_access else max(1, int(blocks.max_bytes // 2 / max(per_row, 1.0)))
        self._orders: OrderedDict[tuple[Any, ...], EpochOrder] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def order(self, seed: int, epoch: int, shuffle: bool, salt: Sequence[int] = ()) -> EpochOrder:
        """The epoch order for (seed, epoch): built once (O(blocks)) and kept for the next batches."""
        key = (seed, epoch, shuffle, *salt)
        with self._lock:
            order = self._orders.get(key)
            if order is None:
                order = EpochOrder(
                    self._block_rows, seed=seed, epoch=epoch, shuffle=shuffle, window_rows=self._window, salt=salt
                )
                self._orders[key] = order
                while len(self._orders) > 8:
                    self._orders.popitem(last=False)
            return order

    def rows(self, indices: Sequence[int] | np.ndarray) -> list[Any]:
        """The rows at ``indices``; a row that cannot be decoded raises InvalidSample naming its dataset row."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._blocks is not None:
            return self._from_blocks(self._blocks, indices)
        if len(self._readers) == 1:
            return self._read(0, indices)
        groups: dict[int, list[int]] = {}  # file -> positions in the batch (plain lists: a batch is small)
        for pos, f in enumerate((np.searchsorted(self._starts, indices, side="right") - 1).tolist()):
            groups.setdefault(f, []).append(pos)
        if len(groups) == 1:
            return self._read(next(iter(groups)), indices)
        out: list[Any] = [None] * len(indices)
        for f, sel in groups.items():
            for pos, row in zip(sel, self._read(f, indices[sel]), strict=True):
                out[pos] = row
        return out

    def encoded_bytes(self, indices: Sequence[int] | np.ndarray) -> int | None:
        """The bytes the rows at ``indices`` take as stored JSON text, a bound on their characters
        (``Reader.encoded_bytes``); None if any of their files stores no text (Parquet, Arrow)."""
        indices = np.asarray(indices, dtype=np.int64)
        files = np.searchsorted(self._starts, indices, side="right") - 1
        total = 0
        for f in np.unique(files).tolist():
            size = self._readers[f].encoded_bytes(indices[files == f] - self._starts[f])
            if size is None:
                return None
            total += size
        return total

    def _from_blocks(self, readers: list[BlockReader], indices: np.ndarray) -> list[Any]:
        """Rows straight from their blocks, across files (blocks numbered over all files): one cache look-up per
        run of rows of one block, no grouping by file."""
        files, first = self._block_file, self._block_first

        def block(w: int) -> Callable[[int], Any]:
            f = int(files[w])
            return readers[f].block(w - int(first[f]))

        return rows_from_blocks(self._block_starts, indices, block)

    def _read(self, file: int, indices: np.ndarray) -> list[Any]:
        base = int(self._starts[file])
        try:
            return self._readers[file].rows(indices - base if base else indices)
        except FeedlineError as exc:
            raise exc.at_sample(base + exc.sample) if exc.sample is not None else exc from None


@dataclass(frozen=True)
class MixturePart:
    """One dataset of a mixture: its path, an optional fingerprint pin, a weight and a repeat factor."""

    path: str
    fingerprint: str = ""
    weight: float = 0.0
    repeat: float = 1.0


class Mixture:
    """Rows drawn from several datasets in fixed proportions, as one index space of ``len(self)`` slots.

    Per epoch, dataset ``d`` fills ``round(len(d) * repeat_d)`` slots; with weights, the slots are instead
    split in proportion to the weights over the same total. Slots past a dataset's size start another pass
    in a new order. The epoch interleaves the datasets evenly: every chunk of ~4096 positions holds each
    dataset's share (exact by floor apportionment), shuffled within the chunk. Positions map to (dataset,
    row) statelessly, so a mixture is resumed and resized like a single dataset.
    """

    def __init__(self, sources: Sequence[RowSource], parts: Sequence[MixturePart]) -> None:
        self.sources = list(sources)
        sizes = np.array([len(s) for s in sources], dtype=np.float64)
        scaled = sizes * np.array([p.repeat for p in parts])
        weights = np.array([p.weight for p in parts])
        if weights.any():
            scaled = weights / weights.sum() * scaled.sum()
        self.counts = np.rint(scaled).astype(np.int64)
        for part, size, count in zip(parts, sizes, self.counts, strict=True):
            if count and not size:
                raise InvalidSample(
                    f"{part.path!r} is empty but the mixture draws {count} rows from it", field="mixture"
                )
        total = int(self.counts.sum())
        edges = np.minimum(np.arange(0, total + _MIX_CHUNK, _MIX_CHUNK), total)
        self._before = (self.counts[:, None] * edges[None, :]) // max(total, 1)  # (datasets, chunks + 1)
        self._chunks = self._before.sum(axis=0)
        described = [(s.fingerprint, p.weight, p.repeat) for s, p in zip(sources, parts, strict=True)]
        self.fingerprint = hashlib.sha256(repr(described).encode()).hexdigest()

    def __len__(self) -> int:
        return int(self.counts.sum())

    def locate(self, positions: np.ndarray, plan: DatasetPlan) -> tuple[np.ndarray, np.ndarray]:
        """(dataset index, row within it) of each epoch position."""
        chunk = np.searchsorted(self._chunks, positions, side="right") - 1
        offset = positions - self._chunks[chunk]
        part = np.empty_like(positions)
        slot = np.empty_like(positions)
        for c in np.unique(chunk).tolist():
            sel = chunk == c
            share = self._before[:, c + 1] - self._before[:, c]
            q = offset[sel]
            if plan.shuffle:
                q = Permutation(int(share.sum()), (plan.seed, plan.epoch, _MIX_SALT, c))(q)
            cum = np.concatenate([[0], np.cumsum(share)])
            d = np.searchsorted(cum, q, side="right") - 1
            part[sel], slot[sel] = d, self._before[d, c] + q - cum[d]
        rows = np.empty_like(positions)
        for d in np.unique(part).tolist():
            sel = part == d
            size = len(self.sources[d])
            passes, within = np.divmod(slot[sel], size)
            got = np.empty_like(within)
            for p in np.unique(passes).tolist():
                order = self.sources[d].order(plan.seed, plan.epoch, plan.shuffle, salt=(_MIX_SALT, d, p))
                got[passes == p] = order.rows(within[passes == p])
            rows[sel] = got
        return part, rows


def open_dataset(
    path: str, roots: Sequence[Path], *, urls: Sequence[str] = (), cache_dir: Path | None = None
) -> RowSource:
    """Open the dataset ``path`` names inside ``roots`` / ``urls``; each is opened once per process."""
    try:
        return _OPENED.get(_located(path, tuple(roots), tuple(urls)), cache_dir)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSErrors
        raise InvalidSample(f"{path!r} cannot be read as a dataset: {exc}", field="dataset.path") from exc


def _located(path: str, roots: tuple[Path, ...], urls: tuple[str, ...]) -> Location:
    """``locate``'s answer; an object-store listing (a round trip) is reused for a few seconds."""
    if "://" not in path:
        return locate(path, roots, urls)
    key = (path, roots, urls)
    now = time.monotonic()
    with _LOCATED_LOCK:
        hit = _LOCATED.get(key)
    if hit is not None and now - hit[1] < _REVALIDATE_S:
        return hit[0]
    location = locate(path, roots, urls)
    with _LOCATED_LOCK:
        _LOCATED[key] = (location, now)
        while len(_LOCATED) > 256:
            _LOCATED.popitem(last=False)
    return location


def open_mixture(parts: Sequence[MixturePart], access: DataAccess) -> Mixture:
    """Open every dataset of a mixture (each pinned fingerprint checked) and combine them."""
    if any(p.weight < 0 or p.repeat < 0 for p in parts):
        raise InvalidOptions("weights and repeats must be >= 0", field="mixture")
    if any(p.weight for p in parts) and not all(p.weight for p in parts):
        raise InvalidOptions("give a weight to every dataset of the mixture or to none", field="mixture.weight")
    sources = [open_dataset(p.path, access.roots, urls=access.urls, cache_dir=access.cache_dir) for p in parts]
    for part, source in zip(parts, sources, strict=True):
        check_fingerprint(source.fingerprint, part.fingerprint, part.path)
    return Mixture(sources, parts)


def check_fingerprint(actual: str, pinned: str, path: str) -> None:
    if pinned and pinned != actual:
        raise FingerprintMismatch(
            f"dataset {path!r} has fingerprint {actual}, the request pinned {pinned}", field="dataset.fingerprint"
        )


class _OpenDatasets:
    """Opened datasets by location (bounded LRU); one lock per location so a dataset is opened once."""

    def __init__(self, capacity: int = 16) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, RowSource] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.opens = 0

    def get(self, location: Location, cache_dir: Path | None) -> RowSource:
        key = f"{location.key}|{cache_dir}"
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            entry = self._entries.get(key)
            if entry is not None and entry.location.stamp == location.stamp:
                with self._lock:
                    self._entries.move_to_end(key)
                return entry
            source = RowSource(location, cache_dir)
            self.opens += 1
            with self._lock:
                self._entries[key] = source
                while len(self._entries) > self._capacity:
                    old, _ = self._entries.popitem(last=False)
                    self._locks.pop(old, None)
            return source


_OPENED = _OpenDatasets()
_LOCATED: OrderedDict[tuple[str, tuple[Path, ...], tuple[str, ...]], tuple[Location, float]] = OrderedDict()
_LOCATED_LOCK = threading.Lock()
