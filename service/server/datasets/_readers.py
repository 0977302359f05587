"""Rows of one dataset file read by index, in memory that does not grow with the file.

- JSONL: the row index of ``_lines`` (built once by a streaming scan, cached under the cache directory keyed
  by the file's digest, read from disk per row). Local rows are read with ``pread`` (nothing mapped, RSS
  flat); remote rows from ~4 MiB byte ranges read whole and kept in the bounded block cache.
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
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from feedline.proto import InvalidSample

from ._columns import row_reader, scalar_row
from ._files import DataFile
from ._lines import LineIndex

__all__ = ["BlockCache", "Reader", "open_reader"]

_LOGGER = logging.getLogger("feedline.service.dataset")
_SCAN_CHUNK = 16 << 20
_FAULT_AROUND = 64 << 10
_JSON = json.JSONDecoder()
_JSON_SPACE = " \t\n\r"
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


class _JsonlReader:
    random_access = True

    def __init__(self, file: DataFile, digest: str, cache: BlockCache, index_dir: Path | None) -> None:
        self._file, self._cache, self._digest = file, cache, digest
        self._index = LineIndex.load_or_build(self._scan, digest, file.size, index_dir)
        self.num_rows = self._index.num_rows
        self._fd: int | None = None
        if file.local:
            self._fd = os.open(file.path, os.O_RDONLY)
            weakref.finalize(self, os.close, self._fd)
            self.block_rows = np.array([self.num_rows], dtype=np.int64)
            self.block_bytes = np.array([file.size], dtype=np.int64)
        else:
            self.random_access = False
            first, starts, ends = self._index.blocks
            self._block_starts = first
            self.block_rows = np.diff(np.append(first, self.num_rows)).astype(np.int64)
            self.block_bytes = ends - starts

    def _scan(self) -> Iterator[Any]:
        """The file's bytes in chunks: local ones read into one reused buffer (no mapping, RSS flat)."""
        if self._file.local:
            buffer = memoryview(bytearray(_SCAN_CHUNK))
            with open(self._file.path, "rb", buffering=0) as fh:
                while got := fh.readinto(buffer):
                    yield buffer[:got]
        else:
            with self._file.fs.open_input_stream(self._file.path) as stream:
                while chunk := stream.read(_SCAN_CHUNK):
                    yield chunk

    def rows(self, local: np.ndarray) -> list[Any]:
        span, fd = self._index.span, self._fd
        if fd is not None:
            out = []
            for i in local.tolist():
                start, end = span(i)
                out.append(_decode(os.pread(fd, end - start, start), i))
            return out
        blocks = (np.searchsorted(self._block_starts, local, side="right") - 1).tolist()
        out = []
        for i, b in zip(local.tolist(), blocks, strict=True):
            base, data = self._block(b)
            start, end = span(i)
            out.append(_decode(data[start - base : end - base], i))
        return out

    def _block(self, block: int) -> tuple[int, bytes]:
        def load() -> tuple[tuple[int, bytes], int]:
            _, starts, ends = self._index.blocks
            start, end = int(starts[block]), int(ends[block])
            with self._file.fs.open_input_file(self._file.path) as fh:
                return (start, bytes(fh.read_at(end - start, start))), end - start

        return self._cache.get((self._digest, "jsonl", block), load)  # type: ignore[no-any-return]


def _decode(data: bytes, row: int) -> Any:
    """The JSON value on the first line of ``data`` (a row's bytes up to the next row)."""
    cut = data.find(b"\n")
    try:  # UTF-8 text straight to the decoder (json.loads would sniff the encoding of every line)
        text = (data if cut < 0 else data[:cut]).decode("utf-8")
        try:
            value, end = _JSON.raw_decode(text)  # a row starts with its value: no whitespace scan first
        except ValueError:
            return _JSON.decode(text)  # leading whitespace, or the decoder's own error
        if end != len(text) and text[end:].strip(_JSON_SPACE):
            return _JSON.decode(text)  # extra data: the decoder's own error
        return value
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
        out: list[Any] = []
        last, read = -1, None
        for g, i in zip(group.tolist(), (local - self._starts[group]).tolist(), strict=True):
            if g != last or read is None:  # rows of one row group: one cache look-up
                read, last = self._cache.get((*self._key, g), functools.partial(self._read, g)), g
            out.append(read(i))
        return out

    def _read(self, group: int) -> tuple[Any, int]:
        import pyarrow as pa

        with self._lock:  # one decode at a time per file handle
            table = self._file.read_row_group(group)
        arrays = [column.combine_chunks() for column in table.columns]
        pa.default_memory_pool().release_unused()  # the decode's scratch buffers
        return row_reader(table.schema.names, arrays), sum(int(a.nbytes) for a in arrays)


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
        columns = self._columns  # per-value scalars: building a row_reader per record batch costs more here
        return [
            scalar_row(columns[b][0], columns[b][1], i)
            for b, i in zip(batch.tolist(), (local - self._starts[batch]).tolist(), strict=True)
        ]
