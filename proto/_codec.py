"""The tensor-batch format: named numpy arrays plus a small metadata dict, to one byte blob and back.

Layout of a blob (all integers little-endian)::

    offset 0   magic  b"FLNB"
           4   u16    format version (FORMAT_VERSION)
           6   u16    flags (bit 0: a crc32 of every buffer is in the header)
           8   u32    header length H
          12   u32    crc32 of the header bytes
          16   u64    total blob length
          24   H      header: msgpack map {"t": [[name, dtype, shape, offset, nbytes, crc], ...], "m": metadata}
           …   pad    zeros up to a multiple of ALIGNMENT
           …   raw buffers, each starting at a multiple of ALIGNMENT, C order, little-endian

Decoding validates every header field against the blob (known dtypes only, shapes that match byte counts,
offsets inside the blob, aligned, in order and non-overlapping) and then returns ``numpy.frombuffer`` views of
the blob: no large buffer is copied. Every failure raises :class:`CodecError`; a malformed blob never gives a
tensor. numpy has no bfloat16: such arrays travel as their raw uint16 bits under the dtype tag ``"bfloat16"``
(see :func:`float32_to_bfloat16`), and the decoded batch says so in ``dtypes``.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from ._exceptions import CodecError

__all__ = [
    "ALIGNMENT",
    "DTYPES",
    "FORMAT_VERSION",
    "DecodedBatch",
    "bfloat16_to_float32",
    "decode_batch",
    "encode_batch",
    "encode_segments",
    "float32_to_bfloat16",
]

Buffer = bytes | bytearray | memoryview | np.ndarray

FORMAT_VERSION = 1
ALIGNMENT = 64
MAGIC = b"FLNB"
_PREFIX = struct.Struct("<4sHHIIQ")
_FLAG_CRC = 1
_MAX_HEADER = 16 << 20
_MAX_DIMS = 32

DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
}
DTYPES["bfloat16"] = np.dtype("<u2")
"""Dtype tags allowed on the wire and the numpy dtype each decodes to (bfloat16 as its raw uint16 bits)."""


@dataclass(frozen=True)
class DecodedBatch:
    """Arrays that view the received buffer, their wire dtype tags, and the metadata dict."""

    tensors: dict[str, np.ndarray]
    dtypes: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def encode_batch(
    tensors: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
    *,
    dtype_tags: Mapping[str, str] | None = None,
    checksum: bool = False,
) -> bytearray:
    """Encode ``tensors`` (and a msgpack-able ``meta``) into one blob.

    ``dtype_tags`` overrides the tag of a named array; today only ``"bfloat16"`` for a uint16 array of bf16
    bits. ``checksum`` adds a crc32 per buffer, verified on decode (about 1 GB/s each way, so off by default;
    TCP and TLS already guard the bytes in transit).
    """
    return bytearray().join(encode_segments(tensors, meta, dtype_tags=dtype_tags, checksum=checksum))


def encode_segments(
    tensors: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
    *,
    dtype_tags: Mapping[str, str] | None = None,
    checksum: bool = False,
) -> list[bytes | memoryview]:
    """The blob :func:`encode_batch` gives, as consecutive pieces that view the arrays instead of copying
    them: joined, they are that blob byte for byte. The server copies them once, straight into the frames it
    sends (``_framing.frame_parts``), where a blob would cost a zeroed buffer, a copy in and a copy out."""
    tags = dict(dtype_tags or {})
    unknown = set(tags) - set(tensors)
    if unknown:
        raise CodecError(f"dtype_tags name arrays not in the batch: {sorted(unknown)}", field="dtype_tags")
    arrays = [_wire_array(name, arr, tags.get(name)) for name, arr in tensors.items()]
    entries: list[list[Any]] = []
    offset = 0  # relative to the first aligned byte after the header
    for name, tag, arr in arrays:
        entries.append([name, tag, list(arr.shape), offset, arr.nbytes, zlib.crc32(arr.data) if checksum else 0])
        offset = _align(offset + arr.nbytes)
    header = _pack_header(entries, meta)
    start = _align(_PREFIX.size + len(header))
    total = start + (entries[-1][3] + entries[-1][4] if entries else 0)
    flags = _FLAG_CRC if checksum else 0
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, flags, len(header), zlib.crc32(header), total)
    segments: list[bytes | memoryview] = [prefix, header, bytes(start - _PREFIX.size - len(header))]
    end = 0  # of the last buffer, relative to ``start``
    for (_, _, arr), entry in zip(arrays, entries, strict=False):
        if arr.nbytes:
            if entry[3] > end:
                segments.append(bytes(entry[3] - end))
            segments.append(arr.reshape(-1).view(np.uint8).data)
            end = entry[3] + arr.nbytes
    if start + end < total:  # an empty last array still lies at its aligned offset
        segments.append(bytes(total - start - end))
    return segments


def decode_batch(blob: Buffer) -> DecodedBatch:
    """Decode one blob into array views over it (read-only if ``blob`` is); raises CodecError if malformed."""
    mv = _byte_view(blob)
    if len(mv) < _PREFIX.size:
        raise CodecError(f"blob of {len(mv)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, flags, header_len, header_crc, total = _PREFIX.unpack_from(mv, 0)
    if magic != MAGIC:
        raise CodecError(f"bad magic {bytes(magic)!r}; not a feedline tensor batch")
    if version != FORMAT_VERSION:
        raise CodecError(f"format version {version} is not supported (this side reads version {FORMAT_VERSION})")
    if flags & ~_FLAG_CRC:
        raise CodecError(f"unknown flags 0x{flags:x}")
    if total != len(mv):
        raise CodecError(f"blob is {len(mv)} bytes but its prefix says {total} (truncated or padded)")
    header_end = _PREFIX.size + header_len
    if header_len > _MAX_HEADER or header_end > total:
        raise CodecError(f"header length {header_len} does not fit in a {total}-byte blob")
    header_bytes = mv[_PREFIX.size : header_end]
    if zlib.crc32(header_bytes) != header_crc:
        raise CodecError("header checksum mismatch (corrupted header)")
    entries, meta = _unpack_header(header_bytes)
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    start = _align(header_end)
    floor = 0
    for entry in entries:
        name, tag, shape, offset, nbytes, crc = _check_entry(entry, floor, total - start)
        if name in tensors:
            raise CodecError(f"array {name!r} appears twice", field=name)
        data = mv[start + offset : start + offset + nbytes]
        if flags & _FLAG_CRC and zlib.crc32(data) != crc:
            raise CodecError(f"array {name!r} checksum mismatch (corrupted data)", field=name)
        tensors[name] = np.frombuffer(data, dtype=DTYPES[tag]).reshape(shape)
        dtypes[name] = tag
        floor = _align(offset + nbytes)
    return DecodedBatch(tensors=tensors, dtypes=dtypes, meta=meta)


def memory_of(blob: Buffer) -> memoryview:
    """A memoryview of any codec buffer (numpy's stubs do not declare arrays as buffers, so they go by ``.data``)."""
    return blob.data if isinstance(blob, np.ndarray) else memoryview(blob)


def _byte_view(blob: Buffer) -> memoryview:
    mv = memory_of(blob)
    if mv.ndim == 1 and mv.itemsize == 1:
        return mv if mv.format == "B" else mv.cast("B")
    if not mv.c_contiguous:
        raise CodecError("a blob must be a contiguous buffer")
    return mv.cast("B")


def float32_to_bfloat16(arr: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) of a float array, rounded to nearest even (NaN stays NaN)."""
    bits = np.asarray(arr, dtype=np.float32, order="C").view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(arr)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bits (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _wire_array(name: str, arr: Any, tag: str | None) -> tuple[str, str, np.ndarray]:
    if not isinstance(name, str) or not name:
        raise CodecError("array names must be non-empty strings", field=str(name))
    if not isinstance(arr, np.ndarray):
        raise CodecError(f"{type(arr).__name__} is not a numpy array", field=name)
    if tag is None:
        tag = arr.dtype.name
        if tag == "bfloat16":  # an ml_dtypes array: carry its bits
            arr = arr.view(np.uint16)
    elif tag == "bfloat16":
        if arr.dtype != np.uint16:
            raise CodecError(f"a bfloat16-tagged array must hold uint16 bits, not {arr.dtype}", field=name)
    else:
        raise CodecError(f"unknown dtype tag {tag!r}", field=name)
    if tag not in DTYPES or arr.dtype.kind not in "biuf":
        raise CodecError(f"dtype {arr.dtype} cannot travel; allowed: {sorted(DTYPES)}", field=name)
    if arr.ndim > _MAX_DIMS:
        raise CodecError(f"{arr.ndim} dimensions; at most {_MAX_DIMS}", field=name)
    return name, tag, np.asarray(arr, dtype=DTYPES[tag], order="C")


def _pack_header(entries: list[list[Any]], meta: Mapping[str, Any] | None) -> bytes:
    try:
        return msgpack.packb({"t": entries, "m": dict(meta or {})}, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"metadata cannot be encoded: {exc}", field="meta") from exc


def _unpack_header(data: memoryview) -> tuple[list[Any], dict[str, Any]]:
    try:
        header = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise CodecError(f"header is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("t"), list) or not isinstance(header.get("m"), dict):
        raise CodecError("header must be a map with a list 't' and a map 'm'")
    return header["t"], header["m"]


def _check_entry(entry: Any, floor: int, total: int) -> tuple[str, str, tuple[int, ...], int, int, int]:
    if not isinstance(entry, list) or len(entry) != 6:
        raise CodecError("each array entry must be [name, dtype, shape, offset, nbytes, crc]")
    name, tag, shape, offset, nbytes, crc = entry
    if not isinstance(name, str) or not name:
        raise CodecError("array name must be a non-empty string")
    if not isinstance(tag, str) or tag not in DTYPES:
        raise CodecError(f"dtype {tag!r} is not allowed", field=name)
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(type(d) is int and d >= 0 for d in shape):
        raise CodecError(f"shape {shape!r} is not a list of non-negative integers", field=name)
    for label, value in (("offset", offset), ("nbytes", nbytes), ("crc", crc)):
        if type(value) is not int or value < 0:
            raise CodecError(f"{label} {value!r} is not a non-negative integer", field=name)
    if math.prod(shape) * DTYPES[tag].itemsize != nbytes:
        raise CodecError(
            f"shape {shape} of {tag} needs {math.prod(shape) * DTYPES[tag].itemsize} bytes, header says {nbytes}",
            field=name,
        )
    if offset % ALIGNMENT or offset < floor or offset + nbytes > total:
        raise CodecError(
            f"buffer [{offset}, {offset + nbytes}) is misplaced in a {total}-byte data area "
            f"(must be aligned, from byte {floor} on, inside the blob)",
            field=name,
        )
    return name, tag, tuple(shape), offset, nbytes, crc


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT
