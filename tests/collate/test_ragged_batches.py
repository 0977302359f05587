"""The ragged form of a collated batch (what a feedline client asks for): padded where the tensors are made, it
is exactly the padded batch, on real chats with tools and under every padding and label option; packed and
multimodal batches stay padded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench._corpus import chat_rows
from feedline.proto import decode_batch, encode_batch
from feedline.proto._ragged import LENGTHS, expand, ragged_wire
from feedline.service import CollateOptions, Processor, collate
from tests.support.media import image_part, processor, vqa_row

ROWS = chat_rows(48, seed=5, tool_share=0.5)
CASES: list[dict[str, Any]] = [
    {},
    {"label_format": "unshifted", "padding": "max_length", "max_length": 2048, "truncation": "right"},
    {"label_format": "loss_mask", "pad_to_multiple_of": 64, "train_on_last_turn_only": True},
    {"label_policy": "nemo"},
    {"max_length": 300, "truncation": "left", "on_zero_labels": "skip"},
]


def _through_the_wire(batch: Any) -> dict[str, np.ndarray]:
    flat = {k: v for k, v in batch.tensors.items() if k != LENGTHS}
    tensors, meta = ragged_wire(flat, batch.tensors[LENGTHS], batch.padding)
    return expand(decode_batch(encode_batch(tensors, meta))).tensors


@pytest.mark.parametrize("options", CASES)
def test_ragged_rows_pad_to_the_padded_batch(qwen_processor: Processor, options: dict[str, Any]) -> None:
    opts = CollateOptions.from_mapping(options)
    assert any("tools" in r for r in ROWS)
    for start in range(0, len(ROWS), 16):
        rows = ROWS[start : start + 16]
        padded = collate(qwen_processor, rows, opts)
        ragged = collate(qwen_processor, rows, opts, ragged=True)
        assert padded.padding is None and ragged.padding is not None
        assert ragged.reports == padded.reports
        assert ragged.token_counts() == padded.token_counts() != (0, 0)
        got = _through_the_wire(ragged)
        assert list(got) == list(padded.tensors)
        for key, arr in padded.tensors.items():
            assert got[key].dtype == arr.dtype and got[key].tobytes() == arr.tobytes(), key


def test_an_empty_batch_is_ragged_too(qwen_processor: Processor) -> None:
    opts = CollateOptions.from_mapping({"padding": "max_length", "max_length": 32})
    padded = collate(qwen_processor, [], opts)
    got = _through_the_wire(collate(qwen_processor, [], opts, ragged=True))
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in padded.tensors.items()}


def test_packed_and_multimodal_batches_stay_padded(qwen_processor: Processor) -> None:
    packed = CollateOptions.from_mapping({"packing": {"pack_size": 4096}})
    assert collate(qwen_processor, ROWS[:8], packed, ragged=True).padding is None
    images = collate(processor("qwen2.5-vl"), [vqa_row(image_part(112, 112))], CollateOptions(), ragged=True)
    assert images.padding is None and "pixel_values" in images.tensors
