"""Packing through `collate`: the request-level option, reports of dropped samples, labels per document."""

from __future__ import annotations

import numpy as np
import pytest

from feedline.proto import IGNORE_INDEX
from feedline.service import CollateOptions, collate, tokenize_row


def _chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


@pytest.mark.parametrize(("label_format", "first"), [("unshifted", 0), ("shifted", 1)])
def test_packed_collate_matches_per_sample_labels(qwen_processor, label_format: str, first: int) -> None:
    rows = [_chat(f"question {i}", "answer " * (i + 1)) for i in range(6)]
    options = CollateOptions.from_mapping({"packing": {"pack_size": 256}, "label_format": label_format})
    batch = collate(qwen_processor, rows, options)
    t = batch.tensors
    assert t["input_ids"].shape[1] == 256 and set(t) >= {"labels", "position_ids", "document_ids", "cu_seqlens"}
    labels = np.concatenate([row[doc > 0] for row, doc in zip(t["labels"], t["document_ids"], strict=False)])
    own = np.concatenate(
        [
            np.where(s.supervised, s.input_ids, IGNORE_INDEX)[first:]
            for s in (tokenize_row(qwen_processor, r, CollateOptions()) for r in rows)
        ]
    )
    assert sorted(labels.tolist()) == sorted(own.tolist())
    assert sum(r.num_label_tokens for r in batch.reports) == int((t["labels"] != IGNORE_INDEX).sum())


def test_sample_longer_than_a_pack_is_reported_dropped(qwen_processor) -> None:
    rows = [_chat("q", "a"), _chat("long " * 200, "b")]
    options = CollateOptions.from_mapping({"packing": {"pack_size": 128, "overlong": "drop"}})
    batch = collate(qwen_processor, rows, options)
    assert [r.status for r in batch.reports] == ["ok", "dropped"]
    assert batch.reports[1].error["field"] == "packing.pack_size"
