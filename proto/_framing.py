"""Splitting a tensor-batch blob into frames well under gRPC's message limit, and putting it back together.

A frame is a 48-byte header followed by a slice of the blob::

    offset 0   magic  b"FLNF"
           4   u16    format version (FORMAT_VERSION)
           6   u16    flags (0)
           8   u64    batch id (the batch index in a stream: frames of two batches never mix)
          16   u32    sequence number of this frame, from 0
          20   u32    number of frames in the batch
          24   u64    total blob length
          32   u64    offset of this frame's slice in the blob
          40   u32    slice length
          44   u32    crc32 of bytes 0-43

Frames must arrive in order. The assembler checks every field against the frames before it (same batch,
next sequence number, contiguous offsets, same totals) and copies each slice once into a 64-byte aligned,
writable buffer, which :func:`decode_batch` then views without copying.
"""

from __future__ import annotations

import collections
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ._codec import ALIGNMENT, FORMAT_VERSION, Buffer, DecodedBatch, decode_batch, encode_segments, memory_of
from ._exceptions import CodecError

__all__ = [
    "DEFAULT_FRAME_BYTES",
    "FRAME_FIELD",
    "FRAME_HEADER_BYTES",
    "FrameAssembler",
    "aligned_buffer",
    "bytes_field_prefix",
    "decode_frames",
    "encode_frames",
    "frame_parts",
    "join_frames",
    "split_frames",
    "unwrap_frame",
    "varint",
]

DEFAULT_FRAME_BYTES = 1 << 20
"""Default slice size: 1 MiB, a quarter of gRPC's default 4 MB message limit."""

FRAME_MAGIC = b"FLNF"
_FRAME = struct.Struct("<4sHHQIIQQI")
_CRC = struct.Struct("<I")
FRAME_HEADER_BYTES = _FRAME.size + _CRC.size
FRAME_FIELD = 1  # feedline.v1.Frame.frame
_FRAME_FIELD_KEY = FRAME_FIELD << 3 | 2  # its key (wire type 2, length-delimited): 0x0A
DEFAULT_MAX_BATCH_BYTES = 4 << 30


def split_frames(
    blob: Buffer, *, batch_id: int = 0, max_frame_bytes: int = DEFAULT_FRAME_BYTES, wrap: bool = False
) -> list[bytes]:
    """Cut ``blob`` into frames of at most ``max_frame_bytes`` of payload each (at least one frame).

    ``wrap`` prefixes each frame with the protobuf key and length of ``feedline.v1.Frame.frame``, so every
    element is a serialized ``Frame`` message at no extra copy (see :func:`unwrap_frame`).
    """
    field = FRAME_FIELD if wrap else None
    parts = frame_parts([memory_of(blob).cast("B")], batch_id=batch_id, max_frame_bytes=max_frame_bytes, field=field)
    return [b"".join(p) for p in parts]


def frame_parts(
    segments: Sequence[bytes | memoryview],
    *,
    batch_id: int = 0,
    max_frame_bytes: int = DEFAULT_FRAME_BYTES,
    field: int | None = None,
) -> list[list[bytes | memoryview]]:
    """The frames of the blob that ``segments`` make up when joined (``encode_segments``), each frame as its
    pieces: header, checksum and views of the segments, not yet copied. With ``field`` (a protobuf field
    number), each frame starts with that field's key and the frame's length, so it is that bytes field of a
    message as serialized (``FRAME_FIELD``: a whole ``Frame`` message).

    Joining each frame's pieces gives :func:`split_frames`' frames; joining every piece of every frame after a
    message's other fields gives the whole message: either way the batch's bytes are copied once.
    """
    if max_frame_bytes < 1:
        raise CodecError("max_frame_bytes must be positive", field="max_frame_bytes")
    total = sum(len(s) for s in segments)
    count = max(1, -(-total // max_frame_bytes))
    pending = collections.deque(memoryview(s).cast("B") if not isinstance(s, bytes) else s for s in segments)
    frames = []
    for seq in range(count):
        start = seq * max_frame_bytes
        size = min(max_frame_bytes, total - start)
        head = _FRAME.pack(FRAME_MAGIC, FORMAT_VERSION, 0, batch_id, seq, count, total, start, size)
        parts: list[bytes | memoryview] = [head, _CRC.pack(zlib.crc32(head))]
        if field is not None:
            parts.insert(0, bytes_field_prefix(field, FRAME_HEADER_BYTES + size))
        while size:
            piece = pending.popleft()
            if len(piece) > size:
                pending.appendleft(memoryview(piece)[size:])
                piece = memoryview(piece)[:size]
            parts.append(piece)
            size -= len(piece)
        frames.append(parts)
    return frames


def bytes_field_prefix(field: int, length: int) -> bytes:
    """The key and length that start a length-delimited protobuf field (bytes, string) of ``length`` bytes."""
    return varint(field << 3 | 2) + varint(length)


def varint(value: int) -> bytes:
    """``value`` (unsigned) as a protobuf varint."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def unwrap_frame(message: Buffer) -> memoryview:
    """The frame inside a serialized ``feedline.v1.Frame`` message, without copying it."""
    mv = memory_of(message).cast("B")
    if len(mv) < 2 or mv[0] != _FRAME_FIELD_KEY:
        raise CodecError("not a feedline.v1.Frame message (expected field 1, bytes)")
    length, shift, pos = 0, 0, 1
    while True:
        if pos >= len(mv) or shift > 35:
            raise CodecError("truncated length in a feedline.v1.Frame message")
        byte = mv[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        shift += 7
        if not byte & 0x80:
            break
    if pos + length != len(mv):
        raise CodecError(f"Frame message says {length} bytes of frame, carries {len(mv) - pos}")
    return mv[pos:]


def encode_frames(
    tensors: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
    *,
    batch_id: int = 0,
    max_frame_bytes: int = DEFAULT_FRAME_BYTES,
    dtype_tags: Mapping[str, str] | None = None,
    checksum: bool = False,
) -> list[bytes]:
    """The frames :func:`encode_batch` then :func:`split_frames` give, with the arrays copied once."""
    segments = encode_segments(tensors, meta, dtype_tags=dtype_tags, checksum=checksum)
    return [b"".join(p) for p in frame_parts(segments, batch_id=batch_id, max_frame_bytes=max_frame_bytes)]


class FrameAssembler:
    """Feed frames of one batch in order; :meth:`add` returns the blob once the last frame is in.

    ``max_batch_bytes`` bounds the buffer a peer can make this side allocate. ``allocate(nbytes)``, if given,
    supplies the writable, 64-byte aligned uint8 buffer each batch is copied into (a shared-memory slot, say);
    by default every batch gets a fresh one.
    """

    def __init__(
        self, *, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES, allocate: Callable[[int], np.ndarray] | None = None
    ) -> None:
        self.max_batch_bytes = max_batch_bytes
        self._allocate = allocate or aligned_buffer
        self._buffer: np.ndarray | None = None
        self._batch_id = self._count = self._total = self._received = self._next_seq = 0

    @property
    def batch_id(self) -> int | None:
        """Batch id of the batch being assembled, or None between batches."""
        return self._batch_id if self._buffer is not None else None

    @property
    def last_batch_id(self) -> int:
        """Batch id of the batch last started: the one ``add`` just returned, once it has returned it."""
        return self._batch_id

    def add(self, frame: Buffer) -> np.ndarray | None:
        """Take the next frame (bare, or as a serialized ``Frame`` message); return the complete blob (aligned,
        writable uint8 array) or None if more frames follow."""
        mv = memory_of(frame).cast("B")
        if len(mv) and mv[0] == _FRAME_FIELD_KEY:  # a bare frame starts with b"F" of its magic
            mv = unwrap_frame(mv)
        if len(mv) < FRAME_HEADER_BYTES:
            raise CodecError(f"frame of {len(mv)} bytes is shorter than its {FRAME_HEADER_BYTES}-byte header")
        fields = _FRAME.unpack_from(mv, 0)
        magic, version, flags, batch_id, seq, count, total, offset, length = fields
        if magic != FRAME_MAGIC:
            raise CodecError(f"bad frame magic {bytes(magic)!r}")
        if version != FORMAT_VERSION:
            raise CodecError(f"frame format version {version} is not supported (this side reads {FORMAT_VERSION})")
        if _CRC.unpack_from(mv, _FRAME.size)[0] != zlib.crc32(mv[: _FRAME.size]):
            raise CodecError("frame header checksum mismatch")
        if flags or length != len(mv) - FRAME_HEADER_BYTES:
            raise CodecError(f"frame {seq} carries {len(mv) - FRAME_HEADER_BYTES} bytes, its header says {length}")
        if self._buffer is None:
            self._start(batch_id, seq, count, total)
        elif (batch_id, seq, count, total) != (self._batch_id, self._next_seq, self._count, self._total):
            raise CodecError(
                f"frame (batch {batch_id}, {seq} of {count}, {total} bytes) does not follow frame "
                f"{self._next_seq - 1} of batch {self._batch_id} ({self._count} frames, {self._total} bytes)"
            )
        if offset != self._received or offset + length > total or (length == 0 and total > 0):
            raise CodecError(f"frame {seq} covers [{offset}, {offset + length}), expected data from {self._received}")
        assert self._buffer is not None
        self._buffer[offset : offset + length] = np.frombuffer(mv, dtype=np.uint8, offset=FRAME_HEADER_BYTES)
        self._received += length
        self._next_seq += 1
        if self._next_seq < count:
            return None
        if self._received != total:
            raise CodecError(f"last frame ends at byte {self._received} of {total}")
        blob, self._buffer = self._buffer, None
        return blob

    def _start(self, batch_id: int, seq: int, count: int, total: int) -> None:
        if seq != 0:
            raise CodecError(f"batch {batch_id} starts at frame {seq}, not 0 (a frame was lost)")
        if count < 1 or total > self.max_batch_bytes or count > max(1, total):
            raise CodecError(f"batch of {total} bytes in {count} frames is refused (limit {self.max_batch_bytes})")
        self._buffer = self._allocate(total)
        self._batch_id, self._count, self._total = batch_id, count, total
        self._received = self._next_seq = 0

    def check_complete(self) -> None:
        """Raise CodecError if a batch was started and not finished (call at the end of a stream)."""
        if self._buffer is not None:
            raise CodecError(
                f"stream ended inside batch {self._batch_id}: {self._next_seq} of {self._count} frames received"
            )


def aligned_buffer(nbytes: int) -> np.ndarray:
    """A fresh writable uint8 buffer of ``nbytes`` starting at a multiple of ALIGNMENT."""
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    skip = (-raw.ctypes.data) % ALIGNMENT
    return raw[skip : skip + nbytes]


def join_frames(
    frames: Iterable[Buffer],
    *,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    allocate: Callable[[int], np.ndarray] | None = None,
) -> np.ndarray:
    """Reassemble exactly one batch from its frames; raises CodecError if frames are missing or extra."""
    assembler = FrameAssembler(max_batch_bytes=max_batch_bytes, allocate=allocate)
    blob = None
    for frame in frames:
        if blob is not None:
            raise CodecError("more frames after the last frame of the batch")
        blob = assembler.add(frame)
    assembler.check_complete()
    if blob is None:
        raise CodecError("no frames")
    return blob


def decode_frames(frames: Iterable[Buffer], *, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> DecodedBatch:
    """:func:`join_frames` then :func:`decode_batch` (arrays view the reassembled, writable buffer)."""
    return decode_batch(join_frames(frames, max_batch_bytes=max_batch_bytes))
