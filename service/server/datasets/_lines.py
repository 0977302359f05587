"""Where each row of a JSONL file starts: built once by a streaming scan, kept on disk, read with ``pread``.

A row is a non-blank line: lines are split on ``\\n``; empty lines and lines under 8 bytes of whitespace only
are skipped (a ``\\r`` of a CRLF file stays on its line; JSON ignores it).

On disk, two files named by the file's digest under the cache directory:

- ``<digest>.rows``: little-endian int64 start offsets of the rows, then the file's size (n + 1 entries,
  8 bytes per row). Row ``i`` is the first line of bytes ``[start[i], start[i + 1])``, so two entries
  (one 16-byte ``pread``) and one read of the line give a row, and nothing of size n is held in memory
  or mapped: the kernel's page cache keeps what is hot, the process's RSS stays flat.
- ``<digest>.blocks.npy``: (3, m) int64, per 4 MiB block of the file (by where rows start): first row,
  start of that row, end of the block's last row. Remote files are read a block at a time.

The scan reads the file in 16 MiB chunks (numpy over each for newlines, memory bounded by the chunk), at
about the speed of reading the file (seconds for 10^7 rows).
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["BLOCK_BYTES", "LineIndex", "scan_lines"]

BLOCK_BYTES = 4 << 20
"""Rows of a remote file are fetched in blocks of rows starting within the same 4 MiB of the file."""

_LOGGER = logging.getLogger("feedline.service.dataset")
_BLANK_MAX = 8  # lines this short are checked for being whitespace only (longer ones are rows or errors)
_PAIR = struct.Struct("<2q")
_ENTRY = struct.Struct("<q")


class _Scan:
    """Row starts of the bytes fed to it, written to ``out`` as they are found; the block table kept."""

    def __init__(self, out: BinaryIO, block_bytes: int) -> None:
        self.out, self.block_bytes = out, block_bytes
        self.rows = self.base = self.line_start = 0
        self.tail = b""  # the last bytes before ``base``: a short line may start in the previous chunk
        self.prev_block, self.last_end = -1, 0
        self.blocks: tuple[list[int], list[int], list[int]] = ([], [], [])

    def feed(self, chunk: Any) -> None:
        data = memoryview(chunk).cast("B")
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10) + self.base
        if ends.size:
            starts = np.empty_like(ends)
            starts[0], starts[1:] = self.line_start, ends[:-1] + 1
            self.line_start = int(ends[-1]) + 1
            self._lines(starts, ends, data)
        self.tail = (self.tail + bytes(data[-_BLANK_MAX:]))[-_BLANK_MAX:]
        self.base += len(data)

    def finish(self) -> np.ndarray:
        """Close the scan: the last line if unterminated, the sentinel entry; the (3, m) block table."""
        if self.base > self.line_start:
            self._lines(np.array([self.line_start]), np.array([self.base]), memoryview(b""))
        self.out.write(_ENTRY.pack(self.base))
        first, start, end = self.blocks
        if first:
            end.append(self.last_end)
        return np.array([first, start, end], dtype=np.int64).reshape(3, -1)

    def _lines(self, starts: np.ndarray, ends: np.ndarray, data: memoryview) -> None:
        lengths = ends - starts
        keep = lengths > 0
        for i in np.flatnonzero(keep & (lengths < _BLANK_MAX)).tolist():
            keep[i] = bool(self._text(int(starts[i]), int(ends[i]), data).strip())
        starts, ends = starts[keep], ends[keep]
        if not starts.size:
            return
        self.out.write(starts.astype("<i8").tobytes())
        block = starts // self.block_bytes
        first, start, end = self.blocks
        for i in np.flatnonzero(block != np.concatenate([[self.prev_block], block[:-1]])).tolist():
            if first:
                end.append(int(ends[i - 1]) if i else self.last_end)
            first.append(self.rows + i)
            start.append(int(starts[i]))
        self.prev_block, self.last_end = int(block[-1]), int(ends[-1])
        self.rows += int(starts.size)

    def _text(self, start: int, end: int, data: memoryview) -> bytes:
        """Bytes [start, end) of a short line ending in ``data`` (it may begin in ``tail``)."""
        offset = start - self.base
        if offset >= 0:
            return bytes(data[offset : end - self.base])
        return self.tail[len(self.tail) + offset :] + bytes(data[: end - self.base])


def scan_lines(chunks: Iterable[Any], out: BinaryIO, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """Write the row starts of the concatenated ``chunks`` to ``out`` (see the module docstring); the blocks."""
    scan = _Scan(out, block_bytes)
    for chunk in chunks:
        scan.feed(chunk)
    return scan.finish()


class LineIndex:
    """A JSONL file's row index, read from disk by ``pread`` (see the module docstring)."""

    def __init__(self, fd: int, blocks: np.ndarray) -> None:
        self._fd, self.blocks = fd, blocks
        weakref.finalize(self, os.close, fd)
        self.num_rows = os.fstat(fd).st_size // 8 - 1
        if self.num_rows < 0:
            raise ValueError("an empty row index")

    def span(self, row: int) -> tuple[int, int]:
        """(start of row ``row``, start of the next row or the file's size)."""
        pair: tuple[int, int] = _PAIR.unpack(os.pread(self._fd, 16, 8 * row))
        return pair

    def size(self) -> int:
        """The size of the file the index was built from (its last entry)."""
        (size,) = _ENTRY.unpack(os.pread(self._fd, 8, 8 * self.num_rows))
        return int(size)

    @classmethod
    def load_or_build(cls, chunks: Any, digest: str, size: int, index_dir: Path | None) -> LineIndex:
        """The cached index of a file of ``size`` bytes named by ``digest``, else built from ``chunks()``
        and saved under ``index_dir`` (or kept in an unnamed temporary file if that cannot be written)."""
        if index_dir is not None:
            rows, blocks = index_dir / f"{digest}.rows", index_dir / f"{digest}.blocks.npy"
            try:
                index = cls(os.open(rows, os.O_RDONLY), np.load(blocks))
                if index.size() == size:
                    return index
                _LOGGER.warning("rebuilding line index %s: it was built from another file", rows)
            except (OSError, ValueError) as exc:
                if rows.exists():
                    _LOGGER.warning("rebuilding unreadable line index %s: %s", rows, exc)
            try:
                return cls._build_into(chunks, rows, blocks)
            except OSError as exc:
                _LOGGER.warning("cannot cache the line index under %s: %s", index_dir, exc)
        with tempfile.TemporaryFile() as out:
            found = scan_lines(chunks(), out)
            out.flush()
            return cls(os.dup(out.fileno()), found)

    @classmethod
    def _build_into(cls, chunks: Any, rows: Path, blocks: Path) -> LineIndex:
        rows.parent.mkdir(parents=True, exist_ok=True)
        suffix = f".{os.getpid()}.{threading.get_ident()}.tmp"
        tmp_rows, tmp_blocks = rows.with_name(rows.name + suffix), blocks.with_name(blocks.name + suffix)
        try:
            with open(tmp_rows, "wb") as out:
                found = scan_lines(chunks(), out)
            with open(tmp_blocks, "wb") as fh:
                np.save(fh, found)
            os.replace(tmp_blocks, blocks)
            os.replace(tmp_rows, rows)  # last: a rows file is only there once its blocks are
        finally:
            for tmp in (tmp_rows, tmp_blocks):
                tmp.unlink(missing_ok=True)
        return cls(os.open(rows, os.O_RDONLY), found)
