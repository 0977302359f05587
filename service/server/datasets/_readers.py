"""Rows of one dataset file read by index, in memory that does not grow with the file.

- JSONL: an index of line offsets, built once by a numpy scan for newlines (over the memory-mapped file, or
  the object streamed in chunks) and saved under the cache directory keyed by the file's digest, then loaded
  memory-mapped. Local rows are sliced from the memory-mapped file; remote rows from ~4 MiB byte ranges
  read whole and kept in the bounded block cache.
- Parquet: row counts and sizes from the footer only; a row is read by decoding its row group, which stays in
  the bounded block cache (so the epoch order shuffles within windows of row groups that fit that cache).
- Arrow (HF ``save_to_disk``): the stream files memory-mapped; record batches are zero-copy views of the map.

Every reader has ``num_rows``, ``block_rows`` (rows per unit of reading), ``block_bytes`` and
``rows(local_indices)``. A row that cannot be decoded raises InvalidSample naming the row within the file.
"""

from __future__ import annotations

import functools
import json
import logging
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from feedline.proto import InvalidSample

from ._files import DataFile

__all__ = ["BlockCache", "Reader", "line_index", "open_reader"]

_LOGGER = logging.getLogger("feedline.service.dataset")
_SCAN_CHUNK = 64 << 20
_REMOTE_BLOCK = 4 << 20
_BLANK_MAX = 8  # lines this short are checked for being blank (longer ones are rows or errors)
_FAULT_AROUND = 64 << 10
_JSON = json.JSONDecoder()
_RELEASE_BYTES = 16 << 20


class Reader(Protocol):
    num_rows: int
    block_rows: np.ndarray
    block_bytes: np.ndarray
    random_access: bool

    def rows(self, local: np.ndarray) -> list[Any]: ...


class BlockCache:
    """A process-wide LRU of decoded blocks bounded in bytes; concurrent misses of one block load it once."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._loading: dict[Hashable, Future[Any]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.loads = 0  # blocks decoded so far (an epoch over a windowed order decodes each about once)

    def get(self, key: Hashable, load: Callable[[], tuple[Any, int]]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
            pending = self._loading.get(key)
            owner = pending is None
            if owner:
                pending = self._loading[key] = Future()
        assert pending is not None
        if not owner:
            return pending.result()
        self.loads += 1
        try:
            value, nbytes = load()
        except BaseException as exc:
            with self._lock:
                self._loading.pop(key, None)
            pending.set_exception(exc)
            raise
        with self._lock:
            self._loading.pop(key, None)
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (_, size) = self._items.popitem(last=False)
                self._bytes -= size
        pending.set_result(value)
        return value

    @property
    def nbytes(self) -> int:
        return self._bytes


class _Mapped:
    """A read-only memory map whose pages this process lets go of every ~16 MiB touched (``MADV_DONTNEED``;
    the kernel's page cache keeps them): RSS stays flat however much of the file an epoch reads."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as fh:
            self.map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._touched = 0

    def touched(self, accesses: int, nbytes: int = 0) -> None:
        """Count reads: each access maps at least the kernel's fault-around window (64 KiB)."""
        self._touched += max(nbytes, accesses * _FAULT_AROUND)
        if self._touched > _RELEASE_BYTES:
            self.release()

    def release(self) -> None:
        self._touched = 0
        if hasattr(mmap, "MADV_DONTNEED"):
            self.map.madvise(mmap.MADV_DONTNEED)


def open_reader(kind: str, file: DataFile, digest: str, cache: BlockCache, index_dir: Path | None) -> Reader:
    if kind == "parquet":
        return _ParquetReader(file, cache)
    if kind == "arrow":
        if not file.local:
            raise InvalidSample(
                "saved HF datasets are read from a local or mounted directory, not a URL", field="dataset.path"
            )
        return _ArrowReader(file)
    return _JsonlReader(file, digest, cache, index_dir)


def line_index(chunks: Iterable[np.ndarray]) -> np.ndarray:
    """(2, n) int64 array of [start, end) byte offsets of the non-blank lines in the concatenated ``chunks``."""
    newlines, total = [], 0
    for chunk in chunks:
        newlines.append(np.flatnonzero(chunk == 10) + total)
        total += chunk.shape[0]
    ends = np.concatenate([*newlines, np.zeros(0, np.int64)]).astype(np.int64)
    starts = np.concatenate([[0], ends + 1]).astype(np.int64)
    ends = np.concatenate([ends, [total]])
    keep = ends > starts
    return np.stack([starts[keep], ends[keep]])


def _drop_blank(index: np.ndarray, read: Callable[[int, int], bytes]) -> np.ndarray:
    """Drop lines of whitespace only (checked where a line is shorter than a JSON object can usefully be)."""
    short = np.flatnonzero(index[1] - index[0] < _BLANK_MAX)
    blank = [i for i in short.tolist() if not read(int(index[0, i]), int(index[1, i])).strip()]
    return np.delete(index, blank, axis=1) if blank else index


class _JsonlReader:
    random_access = True

    def __init__(self, file: DataFile, digest: str, cache: BlockCache, index_dir: Path | None) -> None:
        self._file, self._cache, self._digest = file, cache, digest
        self._mapped = _Mapped(file.path) if file.local and file.size else None
        self._index_map: _Mapped | None = None
        self._index = self._load_index(index_dir)
        self.num_rows = int(self._index.shape[1])
        if file.local:
            self.block_rows = np.array([self.num_rows], dtype=np.int64)
            self.block_bytes = np.array([file.size], dtype=np.int64)
            self._block_starts = np.zeros(1, dtype=np.int64)
        else:
            self.random_access = False
            block_of = np.asarray(self._index[0]) // _REMOTE_BLOCK
            _, first, counts = np.unique(block_of, return_index=True, return_counts=True)
            self._block_starts = first.astype(np.int64)
            self.block_rows = counts.astype(np.int64)
            ends: Any = (
                np.asarray(self._index[1, np.concatenate([first[1:], [self.num_rows]]) - 1]) if len(first) else []
            )
            self.block_bytes = np.asarray(ends, dtype=np.int64) - np.asarray(self._index[0, first], dtype=np.int64)

    def _load_index(self, index_dir: Path | None) -> np.ndarray:
        target = index_dir / f"{self._digest}.lines.npy" if index_dir else None
        if target is not None and target.is_file():
            try:
                return self._map_index(target)
            except (OSError, ValueError) as exc:
                _LOGGER.warning("rebuilding unreadable line index %s: %s", target, exc)
        index = _drop_blank(line_index(self._scan()), self._read)
        if self._mapped is not None:
            self._mapped.release()
        if target is not None:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                with open(tmp, "wb") as fh:
                    np.save(fh, index)
                os.replace(tmp, target)
                return self._map_index(target)
            except OSError as exc:  # a read-only cache: keep the index in memory (8 bytes per line x2)
                _LOGGER.warning("cannot cache the line index under %s: %s", index_dir, exc)
        return index

    def _map_index(self, path: Path) -> np.ndarray:
        """The saved (2, n) int64 index, memory-mapped (its pages let go of like the file's)."""
        fmt: Any = np.lib.format  # untyped in numpy's stubs
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
        if fortran or dtype != np.dtype(np.int64) or len(shape) != 2 or shape[0] != 2:
            raise ValueError(f"not a line index: shape {shape}, dtype {dtype}")
        self._index_map = _Mapped(str(path))
        flat = np.frombuffer(self._index_map.map, dtype=np.int64, count=2 * shape[1], offset=offset)
        index: np.ndarray = flat.reshape(shape)
        return index

    def _scan(self) -> Iterator[np.ndarray]:
        if self._mapped is not None:
            for offset in range(0, len(self._mapped.map), _SCAN_CHUNK):
                count = min(_SCAN_CHUNK, len(self._mapped.map) - offset)
                yield np.frombuffer(self._mapped.map, dtype=np.uint8, count=count, offset=offset)
                self._mapped.touched(1, count)
        elif not self._file.local:
            with self._file.fs.open_input_stream(self._file.path) as stream:
                while chunk := stream.read(_SCAN_CHUNK):
                    yield np.frombuffer(chunk, dtype=np.uint8)

    def _read(self, start: int, end: int) -> bytes:
        if self._mapped is not None:
            return self._mapped.map[start:end]
        with self._file.fs.open_input_file(self._file.path) as fh:
            return bytes(fh.read_at(end - start, start))

    def rows(self, local: np.ndarray) -> list[Any]:
        bounds = np.asarray(self._index[:, local])
        if self._index_map is not None:
            self._index_map.touched(len(local))
        if self._mapped is not None:
            self._mapped.touched(len(local))
            return [
                self._decode(self._mapped.map[s:e], int(i)) for s, e, i in zip(bounds[0], bounds[1], local, strict=True)
            ]
        block = np.searchsorted(self._block_starts, local, side="right") - 1
        out = []
        for s, e, b, i in zip(bounds[0].tolist(), bounds[1].tolist(), block.tolist(), local.tolist(), strict=True):
            base, data = self._block(b)
            out.append(self._decode(data[s - base : e - base], i))
        return out

    def _block(self, block: int) -> tuple[int, bytes]:
        def load() -> tuple[tuple[int, bytes], int]:
            first = int(self._block_starts[block])
            last = first + int(self.block_rows[block]) - 1
            start, end = int(self._index[0, first]), int(self._index[1, last])
            return (start, self._read(start, end)), end - start

        return self._cache.get((self._digest, "jsonl", block), load)  # type: ignore[no-any-return]

    @staticmethod
    def _decode(line: bytes, row: int) -> Any:
        try:  # UTF-8 text straight to the decoder (json.loads would sniff the encoding of every line)
            return _JSON.decode(line.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError is a ValueError too
            raise InvalidSample(f"dataset line is not JSON: {exc}", sample=row) from None


class _ParquetReader:
    random_access = False

    def __init__(self, file: DataFile, cache: BlockCache) -> None:
        import pyarrow.parquet as pq

        self._cache, self._key = cache, (file.path, file.size, file.mtime_ns)
        self._file = pq.ParquetFile(file.fs.open_input_file(file.path))
        meta = self._file.metadata
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        self.num_rows = int(meta.num_rows)
        self.block_rows = np.array([g.num_rows for g in groups], dtype=np.int64)
        self.block_bytes = np.array([g.total_byte_size for g in groups], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self.block_rows)[:-1]]).astype(np.int64)
        self._lock = threading.Lock()

    def rows(self, local: np.ndarray) -> list[Any]:
        group = np.searchsorted(self._starts, local, side="right") - 1
        out = []
        for i, g in zip(local.tolist(), group.tolist(), strict=True):
            columns = self._cache.get((*self._key, g), functools.partial(self._read, g))
            out.append(_row(columns, i - int(self._starts[g])))
        return out

    def _read(self, group: int) -> tuple[Any, int]:
        with self._lock:  # one decode at a time per file handle
            table = self._file.read_row_group(group).combine_chunks()
        return (table.schema.names, table.columns), int(table.nbytes)


class _ArrowReader:
    random_access = True

    def __init__(self, file: DataFile) -> None:
        import pyarrow as pa

        self._mapped = _Mapped(file.path)
        source = pa.BufferReader(pa.py_buffer(self._mapped.map))  # record batches are views of the map
        try:
            batches = list(pa.ipc.open_stream(source))
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(self._mapped.map)))
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        self._mapped.release()  # reading the stream's headers mapped pages around each of them
        kept = [b for b in batches if b.num_rows]
        self._columns = [(b.schema.names, b.columns) for b in kept]
        sizes = np.array([b.num_rows for b in kept], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.num_rows = int(sizes.sum())
        self.block_rows = np.array([self.num_rows], dtype=np.int64)
        self.block_bytes = np.array([file.size], dtype=np.int64)

    def rows(self, local: np.ndarray) -> list[Any]:
        batch = np.searchsorted(self._starts, local, side="right") - 1
        self._mapped.touched(len(local))
        return [
            _row(self._columns[b], i - int(self._starts[b]))
            for i, b in zip(local.tolist(), batch.tolist(), strict=True)
        ]


def _row(columns: tuple[list[str], list[Any]], i: int) -> dict[str, Any]:
    """Row ``i`` of Arrow columns as Python objects (per-column scalars: cheaper than ``take`` for a few rows)."""
    names, arrays = columns
    return {name: array[i].as_py() for name, array in zip(names, arrays, strict=True)}
