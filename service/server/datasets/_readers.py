"""Rows of one dataset file read by index, in memory that does not grow with the file.

- JSONL: the row index of ``_lines`` (built once by a streaming scan, cached under the cache directory keyed
  by the file's digest, read from disk per row). Local rows are read with ``pread`` (nothing mapped, RSS
  flat); remote rows from ~4 MiB byte ranges read whole and kept in the bounded block cache.
- Parquet: row counts and sizes from the footer only; a row is read by decoding its row group, which stays in
  the bounded block cache (so the epoch order shuffles within windows of row groups that fit that cache).
- Arrow (HF ``save_to_disk``): the record batches' byte ranges from the message headers; a record batch is read
  whole with ``pread`` and kept in the bounded block cache (so the order shuffles within windows of them).

Every reader has ``num_rows``, ``block_rows`` (rows per unit of reading), ``block_bytes``,
``rows(local_indices)`` and ``encoded_bytes(local_indices)`` (the rows' size as stored where that bounds their
characters, JSONL; else None); the block readers (Parquet, Arrow) also ``load(block)``, uncached (the bench
times it). A row that cannot be decoded raises InvalidSample naming the row within the file.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from feedline.proto import InvalidSample

from ._columns import row_reader
from ._files import DataFile
from ._lines import LineIndex

__all__ = ["BlockCache", "BlockReader", "Reader", "open_reader", "rows_from_blocks"]

_LOGGER = logging.getLogger("feedline.service.dataset")
_SCAN_CHUNK = 16 << 20
_JSON = json.JSONDecoder()
_JSON_SPACE = " \t\n\r"


class Reader(Protocol):
    num_rows: int
    block_rows: np.ndarray
    block_bytes: np.ndarray
    random_access: bool

    def rows(self, local: np.ndarray) -> list[Any]: ...

    def encoded_bytes(self, local: np.ndarray) -> int | None:
        """The bytes rows ``local`` take as JSON text (at least their characters: ``count_chars``), or None
        where the format stores no such text (columns)."""
        ...


@runtime_checkable
class BlockReader(Reader, Protocol):
    """A reader whose rows come from decoded blocks (Parquet row groups, Arrow record batches)."""

    def block(self, block: int) -> Callable[[int], Any]:
        """Block ``block``'s row reader (row within the block -> row), from the block cache."""
        ...

    def load(self, block: int) -> tuple[Any, int]:
        """Block ``block`` decoded, uncached: its row reader and size in bytes."""
        ...


class BlockCache:
    """A process-wide LRU of decoded blocks bounded in bytes; concurrent misses of one block load it once."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._loading: dict[Hashable, Future[Any]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.loads = 0  # blocks decoded so far (an epoch over a windowed order decodes each about once)

    def get(self, key: Hashable, load: Callable[[Any], tuple[Any, int]], arg: Any) -> Any:
        """The block under ``key``; on a miss ``load(arg)`` gives (value, size in bytes), once per key."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item[0]
            pending = self._loading.get(key)
            owner = pending is None
            if owner:
                pending = self._loading[key] = Future()
        assert pending is not None
        if not owner:
            return pending.result()
        self.loads += 1
        try:
            value, nbytes = load(arg)
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


def open_reader(kind: str, file: DataFile, digest: str, cache: BlockCache, index_dir: Path | None) -> Reader:
    if kind == "parquet":
        return _ParquetReader(file, cache)
    if kind == "arrow":
        if not file.local:
            raise InvalidSample(
                "saved HF datasets are read from a local or mounted directory, not a URL", field="dataset.path"
            )
        return _ArrowReader(file, cache, digest, index_dir)
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

    def encoded_bytes(self, local: np.ndarray) -> int:
        """Each row's line, its newline included: JSON text holds every character of its strings and keys in
        at least one byte (an escape in more), so this bounds the row's characters."""
        span = self._index.span
        return sum(end - start for start, end in map(span, local.tolist()))

    def _block(self, block: int) -> tuple[int, bytes]:
        return self._cache.get((self._digest, "jsonl", block), self._load, block)  # type: ignore[no-any-return]

    def _load(self, block: int) -> tuple[tuple[int, bytes], int]:
        """Remote block ``block``: (its first byte's offset, its bytes), and its size."""
        _, starts, ends = self._index.blocks
        start, end = int(starts[block]), int(ends[block])
        with self._file.fs.open_input_file(self._file.path) as fh:
            return (start, bytes(fh.read_at(end - start, start))), end - start


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


class _Blocks(abc.ABC):
    """Rows of a columnar file stored in blocks (row groups, record batches) that ``block`` serves from the
    cache, blocks starting at rows ``_starts``."""

    _starts: np.ndarray

    @abc.abstractmethod
    def block(self, block: int) -> Callable[[int], Any]:
        """Block ``block``'s row reader (row within the block -> row), from the block cache."""

    def rows(self, local: np.ndarray) -> list[Any]:
        return rows_from_blocks(self._starts, local, self.block)

    def encoded_bytes(self, local: np.ndarray) -> None:
        return None  # columns of values: no text to bound the characters


class _ParquetReader(_Blocks):
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

    def block(self, group: int) -> Callable[[int], Any]:
        """Row group ``group``'s row reader, from the block cache."""
        return self._cache.get((self._key, group), self.load, group)  # type: ignore[no-any-return]

    def load(self, group: int) -> tuple[Any, int]:
        """Row group ``group`` decoded (uncached): a row reader and its size in bytes."""
        import pyarrow as pa

        with self._lock:  # one decode at a time per file handle
            table = self._file.read_row_group(group, use_threads=False)
        arrays = [column.combine_chunks() for column in table.columns]
        pa.default_memory_pool().release_unused()  # the decode's scratch buffers
        return row_reader(table.schema.names, arrays), sum(int(a.nbytes) for a in arrays)


class _ArrowReader(_Blocks):
    """A saved HF dataset's Arrow stream (or file), read a record batch at a time with ``pread``.

    Opening walks the message headers through a memory map (the bodies are not touched) and unmaps it: each
    record batch's byte range and row count, kept under the cache directory keyed by the file's digest (at
    10^8 rows the walk reads 10^5 headers scattered over 12 GB; the kept table is read in milliseconds).

    A block is one record batch, read whole into the block cache (``pread``: a copy from the page cache, no
    page faults left behind, RSS bounded by the cache), so the epoch order shuffles within windows of record
    batches, as for Parquet row groups. Reading rows one by one from the memory map instead cost ~1.6 page
    faults per row and several times the per-row CPU.
    """

    random_access = False

    def __init__(self, file: DataFile, cache: BlockCache, digest: str, index_dir: Path | None) -> None:
        self._cache, self._key = cache, (file.path, file.size, file.mtime_ns, "arrow")
        self._schema, spans, counts = _arrow_index(file, digest, index_dir)
        self._spans = spans
        self.block_rows = counts
        self.block_bytes = (spans[:, 1] - spans[:, 0]).astype(np.int64)
        self.num_rows = int(counts.sum())
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._fd = os.open(file.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def block(self, block: int) -> Callable[[int], Any]:
        """Record batch ``block``'s row reader, from the block cache."""
        return self._cache.get((self._key, block), self.load, block)  # type: ignore[no-any-return]

    def load(self, block: int) -> tuple[Any, int]:
        """Record batch ``block`` read and decoded (uncached): a row reader and its size in bytes."""
        import pyarrow as pa

        start, end = (int(x) for x in self._spans[block])
        data = os.pread(self._fd, end - start, start)
        batch = pa.ipc.read_record_batch(pa.ipc.read_message(pa.py_buffer(data)), self._schema)
        return row_reader(batch.schema.names, batch.columns), len(data)


def rows_from_blocks(starts: np.ndarray, local: np.ndarray, block: Callable[[int], Callable[[int], Any]]) -> list[Any]:
    """Rows ``local`` of a file stored in blocks starting at rows ``starts``: one cache look-up per run of rows
    from one block (a batch from a windowed order draws from a few blocks)."""
    which = np.searchsorted(starts, local, side="right") - 1
    out: list[Any] = []
    last, read = -1, None
    for b, i in zip(which.tolist(), (local - starts[which]).tolist(), strict=True):
        if b != last or read is None:
            read, last = block(b), b
        out.append(read(i))
    return out


def _arrow_index(file: DataFile, digest: str, index_dir: Path | None) -> tuple[Any, np.ndarray, np.ndarray]:
    """(schema, byte ranges, row counts) of an Arrow file's record batches: the table kept under ``index_dir``
    (``<digest>.batches.npy``: rows of start, end, row count) if there is one, else walked and kept there."""
    kept = index_dir / f"{digest}.batches.npy" if index_dir is not None else None
    if kept is not None and kept.exists():
        try:
            table = np.load(kept)
            if table.ndim == 2 and table.shape[1] == 3 and (not len(table) or int(table[-1, 1]) <= file.size):
                return _arrow_schema(file.path), table[:, :2], table[:, 2]
            _LOGGER.warning("rewalking %s: its record batch table %s does not fit the file", file.name, kept)
        except (OSError, ValueError) as exc:
            _LOGGER.warning("rewalking %s: unreadable record batch table %s: %s", file.name, kept, exc)
    schema, spans, counts = _arrow_messages(file.path)
    if kept is not None:
        tmp = kept.with_name(f"{kept.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                np.save(fh, np.column_stack([spans, counts]).astype(np.int64))
            os.replace(tmp, kept)
        except OSError as exc:
            _LOGGER.warning("cannot keep the record batch table under %s: %s", index_dir, exc)
        finally:
            tmp.unlink(missing_ok=True)
    return schema, spans, counts


def _arrow_schema(path: str) -> Any:
    """The schema of an Arrow IPC stream or file (its first message only)."""
    import pyarrow as pa

    with pa.memory_map(path) as source:
        return _schema_message(source, path)[0]


def _schema_message(source: Any, path: str) -> tuple[Any, Any]:
    """(schema, a MessageReader after it) of the Arrow IPC stream or file open in ``source``."""
    import pyarrow as pa

    source.seek(8 if source.read(6) == b"ARROW1" else 0)  # the IPC file format: magic, padding, then a stream
    reader = pa.ipc.MessageReader.open_stream(source)
    try:
        return pa.ipc.read_schema(reader.read_next_message()), reader
    except (StopIteration, pa.ArrowInvalid) as exc:
        raise InvalidSample(f"{Path(path).name} is not an Arrow stream or file: {exc}", field="dataset.path") from None


def _arrow_messages(path: str) -> tuple[Any, np.ndarray, np.ndarray]:
    """(schema, [start, end) byte range of each non-empty record batch message, its row count) of an Arrow IPC
    stream or file, from the message headers only (the bodies stay unread in the page cache or on disk)."""
    import pyarrow as pa

    spans: list[tuple[int, int]] = []
    counts: list[int] = []
    with pa.memory_map(path) as source:
        schema, reader = _schema_message(source, path)
        start = source.tell()
        for message in reader:
            end = source.tell()
            if message.type != "record batch":
                raise InvalidSample(
                    f"{Path(path).name} holds a {message.type} message (dictionary-encoded columns): save the "
                    "dataset without dictionary encoding (datasets' save_to_disk does not write them)",
                    field="dataset.path",
                )
            rows = pa.ipc.read_record_batch(message, schema).num_rows  # the header's length: no body read
            if rows:
                spans.append((start, end))
                counts.append(rows)
            start = end
    return (
        schema,
        np.array(spans, dtype=np.int64).reshape(-1, 2),
        np.array(counts, dtype=np.int64),
    )
