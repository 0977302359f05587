"""Unpacked mode: token-budget and length-grouped batches, padded by the existing padded-batch builder."""

from __future__ import annotations

import numpy as np
import pytest

from feedline.proto import InvalidOptions, LabelFormat, LabelStrategy, SampleTooLong
from feedline.service._options import CollateOptions
from feedline.service.collate._batch import pad_samples
from feedline.service.collate._batching import length_grouped_batches, token_budget_batches
from feedline.service.engine._sample import TokenizedSample


def test_token_budget_keeps_order_and_counts_padding() -> None:
    # shifted widths 9, 3, 3, 9, 2: [9,3] -> 2 rows x 9 = 18 <= 20; adding 3 makes 27
    plan = token_budget_batches([10, 4, 4, 10, 3], 20)
    assert [b.tolist() for b in plan] == [[0, 1], [2, 3], [4]]


def test_token_budget_with_multiple_and_row_limit() -> None:
    plan = token_budget_batches([5, 5, 5, 5, 5], 100, pad_to_multiple=8, max_batch_size=2)
    assert [b.tolist() for b in plan] == [[0, 1], [2, 3], [4]]
    plan = token_budget_batches([5, 5, 5, 5], 16, pad_to_multiple=8, label_format=LabelFormat.UNSHIFTED)
    assert [b.tolist() for b in plan] == [[0, 1], [2, 3]]


def test_over_budget_sample_is_dropped_and_reported_or_raises() -> None:
    plan = token_budget_batches([4, 50, 4], 20, overlong="drop")
    assert plan.dropped == (1,)
    assert [b.tolist() for b in plan] == [[0, 2]]
    with pytest.raises(SampleTooLong) as info:
        token_budget_batches([4, 50, 4], 20)
    assert info.value.sample == 1
    with pytest.raises(InvalidOptions):
        token_budget_batches([4], 20, overlong="truncate")


def test_length_grouping_reduces_padding_and_is_deterministic() -> None:
    lengths = np.random.default_rng(0).lognormal(np.log(300), 1.0, size=2000).astype(np.int64) + 2
    plan = length_grouped_batches(lengths, seed=5, batch_size=8, group_size=400)
    again = length_grouped_batches(lengths, seed=5, batch_size=8, group_size=400)
    other = length_grouped_batches(lengths, seed=6, batch_size=8, group_size=400)
    assert [b.tolist() for b in plan] == [b.tolist() for b in again]
    assert [b.tolist() for b in plan] != [b.tolist() for b in other]
    assert sorted(i for b in plan for i in b.tolist()) == list(range(lengths.size))

    def padding_share(batches: list[np.ndarray]) -> float:
        slots = sum(b.size * int(lengths[b].max()) for b in batches)
        return 1 - float(sum(lengths[b].sum() for b in batches)) / slots

    sequential = [np.arange(s, min(s + 8, lengths.size)) for s in range(0, lengths.size, 8)]
    assert padding_share(list(plan)) < padding_share(sequential) / 4
    first = plan.batches[0]
    assert first.size * lengths[first].max() == max(b.size * lengths[b].max() for b in plan)


def test_length_grouping_needs_a_size_or_a_budget() -> None:
    with pytest.raises(InvalidOptions):
        length_grouped_batches([3, 4], seed=0)
    with pytest.raises(InvalidOptions):
        length_grouped_batches([3, 4], seed=0, batch_size=2, group_size=0)


def test_a_planned_batch_pads_with_the_existing_builder() -> None:
    rng = np.random.default_rng(1)
    lengths = [7, 12, 5, 9]
    samples = [
        TokenizedSample(rng.integers(1, 50, n), rng.random(n) < 0.5, LabelStrategy.TURN_MARKERS) for n in lengths
    ]
    plan = token_budget_batches(lengths, 32, pad_to_multiple=8)
    options = CollateOptions(pad_to_multiple_of=8)
    for batch in plan:
        tensors = pad_samples([samples[i] for i in batch], options, pad_id=0)
        assert tensors["input_ids"].size <= 32
        assert tensors["input_ids"].shape[1] % 8 == 0
