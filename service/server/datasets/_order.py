"""The visiting order of one epoch, computed per batch in time independent of the dataset's size.

Two pieces:

- ``Permutation``: a keyed bijection of ``[0, m)`` (a 6-round Feistel network on the next even bit width,
  cycle-walked back into range). Stateless: a batch's rows cost O(batch) whatever ``m`` is, nothing of size
  ``m`` is ever held. Its quality against numpy's shuffle is measured in tests/server/test_dataset_order.py and
  bench/bench_datasets.py (correlation of position and rank, spacing of neighbours).
- ``EpochOrder``: the epoch's global order over a dataset stored in blocks. Where rows are read one by one
  cheaply (a local JSONL file) the whole dataset is one window and the order is one ``Permutation``. Where
  reading means decoding a block (a Parquet row group, an Arrow record batch, a byte range of an object) the
  blocks are permuted once per (seed, epoch) (O(blocks), small) and grouped into windows that fit the
  reader's cache; rows are shuffled within each window. Every row is still visited once per epoch. The cost
  is shuffle quality: a batch draws from one window's blocks (tests/server/test_dataset_order.py and
  bench/bench_datasets.py measure it against a full permutation).

The order depends on (seed, epoch, the dataset's block layout) only, never on batch size or world size, so
a run resumed with another world size continues the same global order.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

__all__ = ["EpochOrder", "Permutation"]

_ROUNDS = 6
_SPAN_BITS = 16
_SPANS_KEPT = 4
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _keys(key: Sequence[int], count: int) -> list[np.uint64]:
    digest = hashlib.blake2b(repr(tuple(int(k) for k in key)).encode(), digest_size=8 * count).digest()
    return [np.uint64(int.from_bytes(digest[8 * i : 8 * i + 8], "little")) for i in range(count)]


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64's finaliser of ``x ^ key`` (wrapping uint64 arithmetic)."""
    z = x ^ key
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    mixed: np.ndarray = z ^ (z >> np.uint64(31))
    return mixed


class Permutation:
    """A bijection of ``[0, size)`` chosen by ``key`` (any tuple of integers)."""

    def __init__(self, size: int, key: Sequence[int]) -> None:
        self.size = int(size)
        bits = max(2, (max(self.size, 1) - 1).bit_length())
        self._half = np.uint64((bits + 1) // 2)
        self._mask = np.uint64((1 << int(self._half)) - 1)
        self._keys = _keys(key, _ROUNDS)

    def _rounds(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half, x & self._mask
        for k in self._keys:
            left, right = right, left ^ (_mix(right, k) & self._mask)
        joined: np.ndarray = (left << self._half) | right
        return joined

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The images of ``positions`` (int64 values in ``[0, size)``)."""
        x = np.asarray(positions, dtype=np.uint64)
        with np.errstate(over="ignore"):
            x = self._rounds(x)
            outside = x >= np.uint64(self.size)
            while outside.any():  # cycle-walking: the domain is under 4x size, so few rounds are needed
                x[outside] = self._rounds(x[outside])
                outside = x >= np.uint64(self.size)
        return x.astype(np.int64)


class EpochOrder:
    """Global position -> row of one epoch, for rows stored in blocks of ``block_rows`` (in storage order).

    ``window_rows=None`` shuffles all rows together (cheap random access); otherwise permuted blocks are
    grouped into windows of about ``window_rows`` rows (at least one block each) and shuffled within them.
    """

    def __init__(
        self,
        block_rows: Sequence[int] | np.ndarray,
        *,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        window_rows: int | None = None,
        salt: Sequence[int] = (),
    ) -> None:
        sizes = np.asarray(block_rows, dtype=np.int64)
        self.size = int(sizes.sum())
        self._shuffle = shuffle
        self._key = (int(seed), int(epoch), *salt)
        if not shuffle or window_rows is None or len(sizes) <= 1:
            self._windows = np.array([0, self.size], dtype=np.int64)
            self._block_pos = np.array([0], dtype=np.int64)
            self._block_row = np.array([0], dtype=np.int64)
        else:
            perm = np.random.Generator(np.random.PCG64(list(self._key))).permutation(len(sizes))
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            self._block_row = starts[perm]
            self._block_pos = np.concatenate([[0], np.cumsum(sizes[perm])[:-1]])
            self._windows = _window_bounds(sizes[perm], int(window_rows), self.size)
        self._perms: dict[int, Permutation] = {}
        self._spans: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The rows visited at ``positions`` (int64 array of epoch positions).

        Computed a span of 65,536 positions at a time (vectorised, ~1 us per position) and kept for the next
        batches, which lie in the same span: a batch then costs a lookup, whatever the dataset's size.
        """
        positions = np.asarray(positions, dtype=np.int64)
        if not self._shuffle or positions.size == 0:
            same: np.ndarray = positions.copy()
            return same
        span = positions >> _SPAN_BITS
        first = int(span[0])
        if (span == first).all():
            rows: np.ndarray = self._span(first)[positions - (first << _SPAN_BITS)]
            return rows
        # Positions across spans (a batch at a span's edge): gathered span by span, put back in request order.
        gathered = np.concatenate(
            [self._span(int(s))[positions[span == s] - (int(s) << _SPAN_BITS)] for s in np.unique(span)]
        )
        mixed: np.ndarray = gathered[np.argsort(np.argsort(span, kind="stable"), kind="stable")]
        return mixed

    def between(self, start: int, stop: int) -> np.ndarray:
        """The rows visited at positions ``[start, stop)``: a slice of one cached span for a batch (the usual
        case: a batch lies in one span unless it crosses a multiple of 65,536)."""
        index = start >> _SPAN_BITS
        if not self._shuffle or stop <= start or (stop - 1) >> _SPAN_BITS != index:
            return self.rows(np.arange(start, stop, dtype=np.int64))
        base = index << _SPAN_BITS
        rows: np.ndarray = self._span(index)[start - base : stop - base].copy()
        return rows

    def _span(self, index: int) -> np.ndarray:
        with self._lock:
            cached = self._spans.get(index)
            if cached is not None:
                self._spans.move_to_end(index)
                return cached
        lo = index << _SPAN_BITS
        rows = self._compute(np.arange(lo, min(self.size, lo + (1 << _SPAN_BITS)), dtype=np.int64))
        with self._lock:
            self._spans[index] = rows
            while len(self._spans) > _SPANS_KEPT:
                self._spans.popitem(last=False)
        return rows

    def _compute(self, positions: np.ndarray) -> np.ndarray:
        window = np.searchsorted(self._windows, positions, side="right") - 1
        shuffled = np.empty_like(positions)
        for w in np.unique(window):
            sel = window == w
            lo = self._windows[w]
            shuffled[sel] = lo + self._permutation(int(w))(positions[sel] - lo)
        block = np.searchsorted(self._block_pos, shuffled, side="right") - 1
        return self._block_row[block] + (shuffled - self._block_pos[block])

    def _permutation(self, window: int) -> Permutation:
        perm = self._perms.get(window)
        if perm is None:
            size = int(self._windows[window + 1] - self._windows[window])
            perm = Permutation(size, (*self._key, window) if len(self._windows) > 2 else self._key)
            if len(self._perms) > 64:
                self._perms.clear()
            self._perms[window] = perm
        return perm


def _window_bounds(sizes: np.ndarray, window_rows: int, total: int) -> np.ndarray:
    """Start positions of windows over blocks of ``sizes`` (in visiting order), closed by ``total``."""
    bounds = [0]
    filled = 0
    for size in sizes.tolist():
        if filled and filled + size > window_rows:
            bounds.append(bounds[-1] + filled)
            filled = 0
        filled += size
    bounds.append(total)
    return np.asarray(bounds, dtype=np.int64)
