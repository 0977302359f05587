"""Batch assembly of per-item media tensors: one copy at most, none when the parts are one array's rows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from feedline.proto import LabelFormat, LabelStrategy
from feedline.service import TokenizedSample
from feedline.service.media._tensors import batch_media


def sample(**media: np.ndarray) -> TokenizedSample:
    ids = np.arange(4, dtype=np.int64)
    return TokenizedSample(ids, np.ones(4, bool), LabelStrategy.TURN_MARKERS, media=media)


def test_consecutive_row_blocks_of_one_array_are_not_copied() -> None:
    pixels = np.arange(60, dtype=np.float32).reshape(10, 6)
    samples = [sample(pixel_values=pixels[0:3]), sample(pixel_values=pixels[3:4]), sample(pixel_values=pixels[4:10])]
    out = batch_media(samples, LabelFormat.SHIFTED, 3)["pixel_values"]
    assert np.shares_memory(out, pixels) and np.array_equal(out, pixels) and out.flags.c_contiguous
    # a gap (a dropped sample), another order or another array: one copy, the same values as concatenate
    for parts in ([pixels[0:3], pixels[4:10]], [pixels[4:10], pixels[0:3]], [pixels[0:3], pixels.copy()[3:4]]):
        out = batch_media([sample(pixel_values=p) for p in parts], LabelFormat.SHIFTED, 3)["pixel_values"]
        assert not np.shares_memory(out, pixels) and np.array_equal(out, np.concatenate(parts))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5)), min_size=1, max_size=4))
def test_trailing_axes_are_zero_padded_to_the_largest(shapes: list[tuple[int, int, int]]) -> None:
    parts = [np.full(s, k + 1, dtype=np.float32) for k, s in enumerate(shapes)]
    out = batch_media([sample(pixel_values=p) for p in parts], LabelFormat.UNSHIFTED, 4)["pixel_values"]
    assert out.shape == (sum(s[0] for s in shapes), max(s[1] for s in shapes), max(s[2] for s in shapes))
    at = 0
    for p in parts:
        block = out[at : at + p.shape[0]]
        assert np.array_equal(block[:, : p.shape[1], : p.shape[2]], p)
        assert block.sum() == p.sum()  # the padding is zeros
        at += p.shape[0]
