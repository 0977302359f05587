"""The epoch order: a keyed bijection at any size, shuffled as well as numpy's shuffle, windows over blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedline.service.server._datasets import DatasetPlan, batch_rows, num_batches
from feedline.service.server.datasets._order import EpochOrder, Permutation


@settings(max_examples=80, deadline=None)
@given(size=st.integers(1, 5000), seed=st.integers(0, 2**63))
def test_permutation_is_a_bijection(size: int, seed: int) -> None:
    image = Permutation(size, (seed, 1))(np.arange(size))
    assert sorted(image.tolist()) == list(range(size))


def _quality(perm: np.ndarray) -> tuple[float, float, float]:
    """(|corr(position, row)|, fraction of neighbours that stay within 1% of n, fixed points / expected 1)."""
    n = len(perm)
    x = np.arange(n)
    corr = abs(float(np.corrcoef(x, perm)[0, 1]))
    near = float(np.mean(np.abs(np.diff(perm)) <= n // 100))
    return corr, near, float(np.sum(perm == x))


def test_shuffle_quality_matches_numpy() -> None:
    """Against numpy's Generator.permutation at n = 10^5 over 8 keys: no correlation between position and row,
    neighbours as spread out (a random pair lands within 1% of n with probability ~2%), few fixed points."""
    n = 100_000
    ours = [_quality(Permutation(n, (s, 0))(np.arange(n))) for s in range(8)]
    numpy = [_quality(np.random.default_rng(s).permutation(n)) for s in range(8)]
    for (corr, near, fixed), (ref_corr, ref_near, _) in zip(ours, numpy, strict=True):
        assert corr < 0.01 and ref_corr < 0.01
        assert abs(near - ref_near) < 0.004  # both ~0.02
        assert fixed < 8
    # Different keys give unrelated orders (two random permutations agree on ~1 position).
    a, b = Permutation(n, (1, 0))(np.arange(n)), Permutation(n, (1, 1))(np.arange(n))
    assert int(np.sum(a == b)) < 8 and abs(float(np.corrcoef(a, b)[0, 1])) < 0.01


def test_a_batch_costs_the_same_at_any_size() -> None:
    """The rows of one batch come from O(batch) work: nothing of size n is built (10^12 rows here)."""
    order = EpochOrder([10**12], seed=3, epoch=0)
    rows = order.rows(np.arange(5 * 10**11, 5 * 10**11 + 8))
    assert len(set(rows.tolist())) == 8 and all(0 <= r < 10**12 for r in rows.tolist())


@pytest.mark.parametrize("window", [1, 50, 130, 10_000])
def test_windows_over_blocks_visit_every_row_once_and_stay_local(window: int) -> None:
    blocks = [37, 1, 64, 64, 5, 100, 64]
    starts = np.concatenate([[0], np.cumsum(blocks)])
    n = int(starts[-1])
    order = EpochOrder(blocks, seed=9, epoch=2, window_rows=window)
    rows = order.rows(np.arange(n))
    assert sorted(rows.tolist()) == list(range(n))
    block_of = np.searchsorted(starts, rows, side="right") - 1
    # Within a window the blocks it draws from number at most what the window holds.
    changes = int(np.sum(block_of[1:] != block_of[:-1]))
    if window == 1:  # a window per block: each block is read in one run
        assert changes == len(blocks) - 1
    assert rows.tolist() != list(range(n))


def test_unshuffled_order_is_storage_order() -> None:
    assert EpochOrder([5, 5], seed=1, epoch=0, shuffle=False, window_rows=3).rows(np.arange(10)).tolist() == list(
        range(10)
    )


def test_plan_over_a_windowed_order_keeps_every_rank_equal_and_every_row_once() -> None:
    order = EpochOrder([40, 40, 40, 3], seed=4, epoch=1, window_rows=80)
    n = len(order)
    seen = []
    for rank in range(3):
        plan = DatasetPlan(seed=4, epoch=1, batch_size=5, rank=rank, world_size=3)
        seen += [r for b in range(num_batches(n, plan)) for r in batch_rows(n, plan, b, order).tolist()]
    assert sorted(seen) == list(range(n))


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 200_000),
    start=st.integers(0, 200_000),
    width=st.integers(0, 40),
    shuffle=st.booleans(),
    windowed=st.booleans(),
)
def test_a_range_of_positions_is_a_slice_of_the_same_order(
    size: int, start: int, width: int, shuffle: bool, windowed: bool
) -> None:
    """``between`` (a batch's consecutive positions, sliced from a cached span) gives what ``rows`` gives,
    inside a span, across the edge of one (multiples of 65,536) and for an empty range."""
    start = min(start, size)
    stop = min(size, start + width)
    blocks = [size // 3, size - size // 3] if windowed else [size]
    order = EpochOrder(blocks, seed=3, epoch=1, shuffle=shuffle, window_rows=size // 2 if windowed else None)
    expected = order.rows(np.arange(start, stop, dtype=np.int64)).tolist()
    assert order.between(start, stop).tolist() == expected
    edge = (size - 1) & ~0xFFFF
    if edge:  # a batch across a span's edge
        lo, hi = max(0, edge - 3), min(size, edge + 5)
        assert order.between(lo, hi).tolist() == order.rows(np.arange(lo, hi)).tolist()


def _same_block_pairs(rows: np.ndarray, block: int, batch: int = 8) -> float:
    """How often two rows of one batch come from the same block of ``block`` rows in storage order."""
    blocks = (rows[: len(rows) // batch * batch] // block).reshape(-1, batch)
    left, right = np.triu_indices(batch, 1)
    return float(np.mean(blocks[:, left] == blocks[:, right]))


def test_windows_of_record_batches_mix_batches_almost_like_a_full_permutation() -> None:
    """A saved HF dataset's order at 10^6 rows: record batches of 1,000 rows, windows of ~133,000 rows (what
    the 32 MiB block cache holds of short chats). Two rows of one batch share a record batch with probability
    ~1/133 (a full permutation: 1/1000), and the windows, drawn from everywhere in storage, leave no
    correlation between position and row over the epoch beyond the block order's own."""
    n, block = 1_000_000, 1000
    windowed = EpochOrder([block] * (n // block), seed=1, epoch=0, window_rows=133_000).rows(np.arange(n))
    full = EpochOrder([n], seed=1, epoch=0).rows(np.arange(n))
    assert sorted(windowed.tolist()) == list(range(n))
    ours, reference = _same_block_pairs(windowed, block), _same_block_pairs(full, block)
    assert reference < 0.002 and 0.004 < ours < 0.012
    # The blocks' order is a permutation of 1,000 blocks: a correlation of ~1/sqrt(1000) either way at most.
    assert abs(float(np.corrcoef(np.arange(n), windowed)[0, 1])) < 0.1
    # Consecutive positions mostly change block (a run of one block would read as a sorted stretch).
    assert float(np.mean(windowed[1:] // block == windowed[:-1] // block)) < 0.012
