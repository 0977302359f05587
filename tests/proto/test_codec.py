"""The tensor-batch codec and its framing: round trips, and clean errors on every kind of bad input."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from feedline.proto import (
    ALIGNMENT,
    DTYPES,
    FORMAT_VERSION,
    CodecError,
    FrameAssembler,
    bfloat16_to_float32,
    decode_batch,
    decode_frames,
    encode_batch,
    encode_frames,
    encode_segments,
    float32_to_bfloat16,
    frame_parts,
    join_frames,
    split_frames,
    unwrap_frame,
)
from feedline.proto._codec import _PREFIX, MAGIC

_PLAIN_DTYPES = sorted(set(DTYPES) - {"bfloat16"})

arrays = st.sampled_from(_PLAIN_DTYPES).flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
)
batches = st.dictionaries(st.text(min_size=1, max_size=12), arrays, max_size=6)
meta_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
metas = st.dictionaries(st.text(max_size=10), meta_values, max_size=4)


def _assert_same(decoded: dict[str, np.ndarray], original: dict[str, np.ndarray]) -> None:
    assert list(decoded) == list(original)
    for name, arr in original.items():
        got = decoded[name]
        assert got.dtype == arr.dtype.newbyteorder("<") or got.dtype == arr.dtype
        assert got.shape == arr.shape
        assert got.tobytes() == np.asarray(arr, dtype=got.dtype).tobytes()


def _sample_batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(0, 150_000, size=(3, 17), dtype=np.int64),
        "attention_mask": np.ones((3, 17), dtype=np.int64),
        "pixel_values": rng.standard_normal((5, 8), dtype=np.float32),
        "flags": np.array([True, False, True]),
    }


# --- round trips -------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches, meta=metas, frame_bytes=st.integers(1, 4096), batch_id=st.integers(0, 2**64 - 1))
def test_round_trip_through_frames(
    batch: dict[str, np.ndarray], meta: dict[str, Any], frame_bytes: int, batch_id: int
) -> None:
    frames = encode_frames(batch, meta, batch_id=batch_id, max_frame_bytes=frame_bytes)
    assert all(len(f) <= frame_bytes + 48 for f in frames)
    decoded = decode_frames(frames)
    _assert_same(decoded.tensors, batch)
    assert decoded.meta == meta
    for arr in decoded.tensors.values():
        assert arr.flags.writeable
        if arr.nbytes:
            assert arr.ctypes.data % ALIGNMENT == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches, meta=metas, checksum=st.booleans(), frame_bytes=st.integers(1, 600), field=st.integers(1, 40))
def test_uncopied_segments_and_frame_parts_are_the_blob_and_its_frames(
    batch: dict[str, np.ndarray], meta: dict[str, Any], checksum: bool, frame_bytes: int, field: int
) -> None:
    """The server copies a batch once, from the arrays straight into frames: the pieces must be exactly the
    blob's bytes, and each frame exactly the slice of the blob its header names."""
    blob = bytes(encode_batch(batch, meta, checksum=checksum))
    segments = encode_segments(batch, meta, checksum=checksum)
    assert b"".join(segments) == blob
    frames = [b"".join(p) for p in frame_parts(segments, batch_id=9, max_frame_bytes=frame_bytes)]
    assert frames == split_frames(blob, batch_id=9, max_frame_bytes=frame_bytes)
    assert frames == encode_frames(batch, meta, batch_id=9, max_frame_bytes=frame_bytes, checksum=checksum)
    payload = b""
    for seq, frame in enumerate(frames):  # an oracle independent of the splitter: header fields and slices
        _, _, _, batch_id, got_seq, count, total, offset, length = struct.unpack_from("<4sHHQIIQQI", frame)
        assert (batch_id, got_seq, count, total, offset) == (9, seq, len(frames), len(blob), len(payload))
        assert frame[48:] == blob[offset : offset + length] and length <= frame_bytes
        payload += frame[48:]
    assert payload == blob
    keyed = frame_parts(segments, batch_id=9, max_frame_bytes=frame_bytes, field=field)
    message = b"".join(part for parts in keyed for part in parts)  # `repeated bytes` field number `field`
    assert message == b"".join(_bytes_field(field, f) for f in frames)


def _bytes_field(field: int, value: bytes) -> bytes:
    """protobuf's encoding of a bytes field, written out by hand (key, varint length, bytes)."""
    out, length = bytearray(), len(value)
    key = field << 3 | 2
    while key >= 0x80:
        out.append((key & 0x7F) | 0x80)
        key >>= 7
    out.append(key)
    while length >= 0x80:
        out.append((length & 0x7F) | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out) + value


@settings(max_examples=100, deadline=None)
@given(batch=batches, checksum=st.booleans())
def test_round_trip_of_one_blob(batch: dict[str, np.ndarray], checksum: bool) -> None:
    blob = encode_batch(batch, checksum=checksum)
    decoded = decode_batch(bytes(blob))
    _assert_same(decoded.tensors, batch)
    assert decoded.dtypes == {name: arr.dtype.name for name, arr in batch.items()}


def test_decode_views_the_blob_without_copying() -> None:
    batch = {"x": np.arange(1 << 20, dtype=np.int64)}
    blob = encode_batch(batch)
    decoded = decode_batch(blob)
    assert np.shares_memory(decoded.tensors["x"], np.frombuffer(blob, dtype=np.uint8))
    frozen = decode_batch(bytes(blob))
    assert not frozen.tensors["x"].flags.writeable


def test_noncontiguous_and_big_endian_inputs_arrive_as_little_endian_c_order() -> None:
    base = np.arange(24, dtype=">i4").reshape(4, 6)
    batch = {"t": base.T, "be": base}
    decoded = decode_batch(encode_batch(batch)).tensors
    np.testing.assert_array_equal(decoded["t"], base.T)
    np.testing.assert_array_equal(decoded["be"], base)
    assert decoded["be"].dtype == np.dtype("<i4")


def test_zero_dimensional_and_empty_arrays_keep_their_shapes() -> None:
    batch = {"scalar": np.array(7, dtype=np.int32), "empty": np.zeros((0, 5), np.float16), "last": np.zeros(0)}
    decoded = decode_batch(encode_batch(batch)).tensors
    assert decoded["scalar"].shape == () and int(decoded["scalar"]) == 7
    assert decoded["empty"].shape == (0, 5) and decoded["last"].shape == (0,)


def test_bfloat16_travels_as_tagged_bits() -> None:
    values = np.array([0.0, -0.0, 1.0, -2.5, 3.140625, 1e30, -1e-30, np.inf, -np.inf, np.nan], dtype=np.float32)
    bits = float32_to_bfloat16(values)
    decoded = decode_frames(encode_frames({"px": bits}, dtype_tags={"px": "bfloat16"}, max_frame_bytes=7))
    assert decoded.dtypes == {"px": "bfloat16"}
    back = bfloat16_to_float32(decoded.tensors["px"])
    np.testing.assert_array_equal(back[:4], values[:4])
    assert np.isnan(back[-1]) and np.isinf(back[-3]) and back[-2] == -np.inf
    torch = pytest.importorskip("torch")
    expected = torch.from_numpy(values).to(torch.bfloat16)
    got = torch.from_numpy(decoded.tensors["px"].view(np.int16)).view(torch.bfloat16)
    assert torch.equal(got[:-1], expected[:-1]) and torch.isnan(got[-1])


@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=2), elements=st.floats(width=32, allow_nan=False)))
def test_bfloat16_rounding_matches_torch(values: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    expected = torch.from_numpy(values.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(float32_to_bfloat16(values), expected)


# --- encoder refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensors", "tags", "field"),
    [
        ({"o": np.array([{}, 1], dtype=object)}, None, "o"),
        ({"s": np.array(["a", "b"])}, None, "s"),
        ({"c": np.zeros(3, np.complex64)}, None, "c"),
        ({"l": [1, 2, 3]}, None, "l"),
        ({"": np.zeros(1)}, None, ""),
        ({"f": np.zeros(2, np.float32)}, {"f": "bfloat16"}, "f"),
        ({"f": np.zeros(2, np.uint16)}, {"f": "float8"}, "f"),
        ({"f": np.zeros(2, np.uint16)}, {"g": "bfloat16"}, "dtype_tags"),
    ],
)
def test_encoder_refuses_what_cannot_travel(tensors: dict[str, Any], tags: dict[str, str] | None, field: str) -> None:
    with pytest.raises(CodecError) as info:
        encode_batch(tensors, dtype_tags=tags)
    assert info.value.field == field


def test_encoder_refuses_metadata_msgpack_cannot_hold() -> None:
    with pytest.raises(CodecError):
        encode_batch({}, {"x": object()})


# --- malformed blobs -----------------------------------------------------------------------------------------


def _decode_is_clean(blob: bytes | bytearray, original: dict[str, np.ndarray]) -> None:
    """A damaged blob either raises CodecError or decodes to exactly the original tensors."""
    try:
        decoded = decode_batch(blob)
    except CodecError:
        return
    _assert_same(decoded.tensors, original)


def test_every_truncation_is_refused() -> None:
    blob = bytes(encode_batch(_sample_batch(), {"reports": [1, 2]}))
    for cut in range(len(blob)):
        with pytest.raises(CodecError):
            decode_batch(blob[:cut])
    with pytest.raises(CodecError):
        decode_batch(blob + b"\0" * 64)


def test_every_byte_flip_with_checksums_is_refused_or_harmless() -> None:
    batch = _sample_batch()
    blob = encode_batch(batch, checksum=True)
    for pos in range(len(blob)):
        damaged = bytearray(blob)
        damaged[pos] ^= 0x5A
        _decode_is_clean(damaged, batch)


def test_flips_in_prefix_and_header_are_refused_without_checksums() -> None:
    batch = _sample_batch()
    blob = encode_batch(batch)
    header_end = _PREFIX.size + _PREFIX.unpack_from(blob)[3]
    for pos in range(header_end):
        damaged = bytearray(blob)
        damaged[pos] ^= 0x01
        with pytest.raises(CodecError):
            decode_batch(damaged)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_batch(data)
    with pytest.raises(CodecError):
        decode_frames([data])


def _blob_with_header(header: Any, *, data: bytes = b"", version: int = FORMAT_VERSION, flags: int = 0) -> bytes:
    packed = msgpack.packb(header, use_bin_type=True)
    start = -(-(_PREFIX.size + len(packed)) // ALIGNMENT) * ALIGNMENT
    total = start + len(data)
    prefix = _PREFIX.pack(MAGIC, version, flags, len(packed), zlib.crc32(packed), total)
    return prefix + packed + b"\0" * (start - _PREFIX.size - len(packed)) + data


_GOOD = ["x", "int32", [2], 0, 8, 0]


@pytest.mark.parametrize(
    "header",
    [
        [1, 2],
        {"t": {}, "m": {}},
        {"t": [], "m": []},
        {"t": [_GOOD[:5]], "m": {}},
        {"t": [["x", "object", [2], 0, 8, 0]], "m": {}},
        {"t": [["x", "<i4", [2], 0, 8, 0]], "m": {}},
        {"t": [["x", "int32", [3], 0, 8, 0]], "m": {}},
        {"t": [["x", "int32", [-2], 0, -8, 0]], "m": {}},
        {"t": [["x", "int32", [2.0], 0, 8, 0]], "m": {}},
        {"t": [["x", "int32", [True, True], 0, 4, 0]], "m": {}},
        {"t": [["x", "int32", [2], 64, 8, 0]], "m": {}},
        {"t": [["x", "int32", [2], 3, 8, 0]], "m": {}},
        {"t": [["x", "int32", [2], -64, 8, 0]], "m": {}},
        {"t": [["x", "int32", [2**40, 2**40], 0, 2**63, 0]], "m": {}},
        {"t": [["x", "int32", [1] * 40, 0, 4, 0]], "m": {}},
        {"t": [_GOOD, _GOOD], "m": {}},
        {"t": [_GOOD, ["y", "int32", [2], 0, 8, 0]], "m": {}},
        {"t": [[7, "int32", [2], 0, 8, 0]], "m": {}},
    ],
)
def test_inconsistent_headers_are_refused(header: Any) -> None:
    with pytest.raises(CodecError):
        decode_batch(_blob_with_header(header, data=b"\1" * 64))


def test_a_consistent_handmade_header_decodes() -> None:
    blob = _blob_with_header({"t": [_GOOD], "m": {"k": 1}}, data=struct.pack("<ii", 5, -6))
    decoded = decode_batch(blob)
    assert decoded.tensors["x"].tolist() == [5, -6] and decoded.meta == {"k": 1}


def test_version_mismatch_is_named() -> None:
    blob = _blob_with_header({"t": [], "m": {}}, version=FORMAT_VERSION + 1)
    with pytest.raises(CodecError, match="version"):
        decode_batch(blob)
    with pytest.raises(CodecError, match="flags"):
        decode_batch(_blob_with_header({"t": [], "m": {}}, flags=4))


# --- malformed frame streams ---------------------------------------------------------------------------------


def _frames(batch_id: int = 3, frame_bytes: int = 100) -> list[bytes]:
    return encode_frames(_sample_batch(), {"n": batch_id}, batch_id=batch_id, max_frame_bytes=frame_bytes)


def test_frames_out_of_order_missing_or_duplicated_are_refused() -> None:
    frames = _frames()
    assert len(frames) > 4
    bad_orders = [
        frames[1:],
        frames[:2] + frames[3:],
        frames[:2] + [frames[1]] + frames[2:],
        [frames[0], frames[2], frames[1]] + frames[3:],
        frames[:-1],
        frames + [frames[-1]],
        [],
    ]
    for order in bad_orders:
        with pytest.raises(CodecError):
            decode_frames(order)


def test_frames_of_two_batches_never_mix() -> None:
    a, b = _frames(batch_id=1), _frames(batch_id=2)
    with pytest.raises(CodecError, match="batch"):
        decode_frames(a[:2] + b[2:])


def test_every_frame_truncation_and_header_flip_is_refused() -> None:
    frames = _frames(frame_bytes=300)
    for i, frame in enumerate(frames):
        for cut in range(0, len(frame), 7):
            with pytest.raises(CodecError):
                decode_frames(frames[:i] + [frame[:cut]] + frames[i + 1 :])
        for pos in range(48):
            damaged = bytearray(frame)
            damaged[pos] ^= 0x10
            with pytest.raises(CodecError):
                decode_frames(frames[:i] + [bytes(damaged)] + frames[i + 1 :])


def test_assembler_handles_consecutive_batches_and_reports_an_unfinished_one() -> None:
    assembler = FrameAssembler()
    blobs = []
    for batch_id in (0, 1, 2):
        for frame in _frames(batch_id=batch_id):
            blob = assembler.add(frame)
            if blob is not None:
                blobs.append(blob)
    assert [decode_batch(b).meta["n"] for b in blobs] == [0, 1, 2]
    assembler.check_complete()
    assembler.add(_frames(batch_id=9)[0])
    assert assembler.batch_id == 9
    with pytest.raises(CodecError, match="ended inside batch 9"):
        assembler.check_complete()


def test_assembler_refuses_to_allocate_past_its_limit() -> None:
    frames = split_frames(encode_batch({"x": np.zeros(1000)}), max_frame_bytes=512)
    with pytest.raises(CodecError, match="refused"):
        join_frames(frames, max_batch_bytes=4096)
    assert join_frames(frames, max_batch_bytes=1 << 20).nbytes > 8000


def test_wrapped_frames_are_serialized_frame_messages() -> None:
    from feedline.proto.v1 import feedline_pb2

    blob = encode_batch(_sample_batch())
    for size in (1, 100, 127, 128, 300, 20_000):
        plain = split_frames(blob, batch_id=5, max_frame_bytes=size)
        wrapped = split_frames(blob, batch_id=5, max_frame_bytes=size, wrap=True)
        assert [feedline_pb2.Frame.FromString(w).frame for w in wrapped] == plain
        assert [bytes(unwrap_frame(w)) for w in wrapped] == plain
        assert decode_frames(unwrap_frame(w) for w in wrapped).tensors.keys() == _sample_batch().keys()
        assert decode_frames(wrapped).tensors.keys() == _sample_batch().keys()  # the assembler unwraps itself


@pytest.mark.parametrize("message", [b"", b"\x0a", b"\x12\x01x", b"\x0a\x05abc", b"\x0a\x01ab", b"\x0a\xff\xff"])
def test_malformed_frame_messages_are_refused(message: bytes) -> None:
    with pytest.raises(CodecError):
        unwrap_frame(message)
