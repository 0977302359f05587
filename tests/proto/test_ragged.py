"""Ragged token rows: what the server sends unpadded pads, where the client makes its tensors, to exactly the
padded batch; a malformed description is a CodecError, never a tensor."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedline.proto import CodecError, decode_batch, encode_batch
from feedline.proto._ragged import LENGTHS, RAGGED_META, RowPadding, expand, expanded_nbytes, pad_rows, ragged_wire


def _padded(rows: dict[str, list[np.ndarray]], width: int, fill: dict[str, int]) -> dict[str, np.ndarray]:
    """The padded batch, built the obvious way (a row at a time) as the oracle."""
    out = {}
    for key, arrays in rows.items():
        batch = np.full((len(arrays), width), fill[key], dtype=np.int64)
        for i, arr in enumerate(arrays):
            batch[i, : len(arr)] = arr
        out[key] = batch
    return out


@st.composite
def batches(draw: st.DrawFn) -> tuple[dict[str, list[np.ndarray]], int, dict[str, int]]:
    lengths = draw(st.lists(st.integers(0, 40), min_size=0, max_size=12))
    width = max(lengths, default=0) + draw(st.integers(0, 9))
    low, high = draw(st.sampled_from([(0, 1), (-100, 127), (-100, 40_000), (0, 2**31 - 1), (-(2**40), 2**40)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    keys = draw(st.sampled_from([("input_ids", "labels", "attention_mask"), ("input_ids", "loss_mask")]))
    rows = {key: [rng.integers(low, high, size=n, endpoint=True) for n in lengths] for key in keys}
    fill = {key: draw(st.sampled_from([0, -100, 151_643, 2**31 - 1])) for key in keys}
    return rows, width, fill


@settings(max_examples=200, deadline=None)
@given(batches(), st.booleans())
def test_ragged_rows_pad_to_the_padded_batch_through_the_codec(
    batch: tuple[dict[str, list[np.ndarray]], int, dict[str, int]], into_buffer: bool
) -> None:
    rows, width, fill = batch
    lengths = np.array([len(a) for a in next(iter(rows.values()))], dtype=np.int64)
    flat = {k: np.concatenate(v).astype(np.int64) if len(v) else np.zeros(0, np.int64) for k, v in rows.items()}
    extra = {"dataset_row": np.arange(len(lengths), dtype=np.int64)}  # arrays beside the rows pass through
    tensors, meta = ragged_wire(flat, lengths, RowPadding(width, fill))
    blob = encode_batch({**tensors, **extra}, {**meta, "reports": []})
    decoded = decode_batch(blob)
    buffer = np.zeros(expanded_nbytes(decoded) + 64, dtype=np.uint8) if into_buffer else None
    out = expand(decoded, into=buffer)
    expected = _padded(rows, width, fill)
    assert set(out.tensors) == {*expected, "dataset_row"}
    for key, arr in expected.items():
        assert out.tensors[key].dtype == np.int64 and out.dtypes[key] == "int64"
        np.testing.assert_array_equal(out.tensors[key], arr)
    np.testing.assert_array_equal(out.tensors["dataset_row"], extra["dataset_row"])
    assert RAGGED_META not in out.meta and out.meta["reports"] == []
    if buffer is not None:  # laid out in the buffer, each array aligned
        base = buffer.ctypes.data
        for arr in out.tensors.values():
            assert base <= arr.ctypes.data and (arr.ctypes.data - base) % 64 == 0


def test_values_travel_in_the_narrowest_integer_type() -> None:
    lengths = np.array([2, 1])
    flat = {
        "attention_mask": np.array([1, 1, 0]),
        "labels": np.array([-100, 300, 7]),
        "input_ids": np.array([151_643, 5, 6]),
        "wide": np.array([2**40, 0, 1]),
    }
    tensors, _ = ragged_wire(flat, lengths, RowPadding(3, dict.fromkeys(flat, 0)))
    assert {k: v.dtype for k, v in tensors.items()} == {
        "attention_mask": np.int8,
        "labels": np.int16,
        "input_ids": np.int32,
        "wide": np.int64,
        LENGTHS: np.int32,
    }


def test_a_batch_that_is_not_ragged_is_returned_as_it_is() -> None:
    decoded = decode_batch(encode_batch({"input_ids": np.ones((2, 3), np.int64)}, {"reports": []}))
    assert expand(decoded) is decoded and expanded_nbytes(decoded) == 0


def _ragged(meta: object, **arrays: np.ndarray) -> bytes:
    return bytes(encode_batch(arrays, {RAGGED_META: meta}))


@pytest.mark.parametrize(
    ("blob", "says"),
    [
        (_ragged({"width": 3}, row_lengths=np.array([1], np.int32), input_ids=np.array([1])), "'width': int"),
        (_ragged({"width": 3, "fill": {"input_ids": 0}}, input_ids=np.array([1])), "row_lengths"),
        (
            _ragged({"width": 3, "fill": {"input_ids": 0}}, row_lengths=np.array([4], np.int32), input_ids=np.ones(4)),
            "row lengths must lie in [0, 3]",
        ),
        (
            _ragged({"width": 3, "fill": {"input_ids": 0}}, row_lengths=np.array([-1], np.int32)),
            "row lengths must lie",
        ),
        (
            _ragged({"width": 3, "fill": {"input_ids": 0}}, row_lengths=np.array([2], np.int32), input_ids=np.ones(3)),
            "must hold 2 integers",
        ),
        (
            _ragged(
                {"width": 3, "fill": {"input_ids": 0.5}}, row_lengths=np.array([1], np.int32), input_ids=np.ones(1)
            ),
            "must hold 1 integers",
        ),
        (_ragged({"width": 3, "fill": {"labels": 0}}, row_lengths=np.array([1], np.int32)), "['labels'] are missing"),
        (
            _ragged(
                {"width": 2**40, "fill": {"input_ids": 0}},
                row_lengths=np.array([1] * 8, np.int32),
                input_ids=np.ones(8, np.int64),
            ),
            "would expand to more than",
        ),
    ],
)
def test_a_malformed_ragged_description_is_refused(blob: bytes, says: str) -> None:
    with pytest.raises(CodecError) as info:
        expand(decode_batch(blob))
    assert says in info.value.message


def test_a_buffer_too_small_for_the_padded_batch_is_refused() -> None:
    decoded = decode_batch(
        _ragged({"width": 4, "fill": {"input_ids": 0}}, row_lengths=np.array([2, 1], np.int32), input_ids=np.arange(3))
    )
    with pytest.raises(CodecError, match="cannot hold"):
        expand(decoded, into=np.zeros(expanded_nbytes(decoded) - 1, np.uint8))


def test_pad_rows_writes_into_a_given_array() -> None:
    out = np.full((2, 4), 7, dtype=np.int64)
    assert pad_rows(np.array([1, 2, 3]), np.array([1, 2]), 4, -100, out=out) is out
    assert out.tolist() == [[1, -100, -100, -100], [2, 3, -100, -100]]
