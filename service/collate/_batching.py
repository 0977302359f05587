"""Batching for unpacked mode: which samples share a padded batch, planned from lengths alone.

``token_budget_batches`` keeps the given order and puts as many samples in a batch as fit a token budget,
counting the padding: rows x padded width <= ``max_tokens``. ``length_grouped_batches`` first shuffles by a
seed, sorts each group of ``group_size`` samples by length so that a batch holds similar lengths (little
padding), batches each group (by count or by token budget) and shuffles the batches. The batches are then
padded by ``pad_samples`` with ``pad_to_multiple_of`` set to the same multiple.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from feedline.proto import InvalidOptions, LabelFormat, SampleTooLong

__all__ = ["BatchPlan", "length_grouped_batches", "token_budget_batches"]


@dataclass(frozen=True)
class BatchPlan:
    """Sample indices of each batch, in batch order; over-long samples that were dropped are listed."""

    batches: tuple[np.ndarray, ...]
    dropped: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches)


def token_budget_batches(
    lengths: Sequence[int] | np.ndarray,
    max_tokens: int,
    *,
    label_format: LabelFormat = LabelFormat.SHIFTED,
    pad_to_multiple: int = 1,
    max_batch_size: int | None = None,
    overlong: str = "error",
) -> BatchPlan:
    """Consecutive samples, as many per batch as keep rows x padded width within ``max_tokens``."""
    widths, dropped = _widths(lengths, max_tokens, label_format, pad_to_multiple, overlong)
    order = np.setdiff1d(np.arange(widths.size), dropped, assume_unique=True)
    return BatchPlan(tuple(_fill(order, widths, max_tokens, max_batch_size)), dropped)


def length_grouped_batches(
    lengths: Sequence[int] | np.ndarray,
    *,
    seed: int,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    group_size: int = 1000,
    label_format: LabelFormat = LabelFormat.SHIFTED,
    pad_to_multiple: int = 1,
    overlong: str = "error",
    longest_first: bool = True,
) -> BatchPlan:
    """Batches of similar lengths: shuffle by ``seed``, sort groups of ``group_size`` by length, batch, shuffle.

    Give ``batch_size`` (rows per batch), ``max_tokens`` (a padded-token budget), or both. With
    ``longest_first`` the batch with the most padded tokens comes first, so an out-of-memory shows at once.
    """
    if batch_size is None and max_tokens is None:
        raise InvalidOptions("give batch_size, max_tokens or both", field="batch_size")
    if group_size < 1:
        raise InvalidOptions("must be a positive integer", field="group_size")
    budget = max_tokens if max_tokens is not None else np.iinfo(np.int64).max
    widths, dropped = _widths(lengths, budget, label_format, pad_to_multiple, overlong)
    rng = np.random.default_rng(seed)
    order = rng.permutation(widths.size)
    order = order[~np.isin(order, dropped)]
    batches: list[np.ndarray] = []
    for start in range(0, order.size, group_size):
        group = order[start : start + group_size]
        group = group[np.argsort(-widths[group], kind="stable")]
        batches.extend(_fill(group, widths, budget, batch_size))
    batches = [batches[i] for i in rng.permutation(len(batches))]
    if longest_first and batches:
        cost = [b.size * int(widths[b].max()) for b in batches]
        batches.insert(0, batches.pop(int(np.argmax(cost))))
    return BatchPlan(tuple(batches), dropped)


def _widths(
    lengths: Sequence[int] | np.ndarray, budget: int, fmt: LabelFormat, multiple: int, overlong: str
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Each sample's padded width after the shift, and the samples too wide for the budget (or raise)."""
    if overlong not in ("error", "drop"):
        raise InvalidOptions("must be one of ['error', 'drop']", field="overlong")
    if budget < 1 or multiple < 1:
        raise InvalidOptions("must be a positive integer", field="max_tokens" if budget < 1 else "pad_to_multiple")
    shift = 1 if fmt is LabelFormat.SHIFTED else 0
    raw = np.asarray(lengths, dtype=np.int64).reshape(-1) - shift
    widths = -(-raw // multiple) * multiple
    over = np.flatnonzero(widths > budget)
    if over.size and overlong == "error":
        raise SampleTooLong(
            f"{int(widths[over[0]])} tokens exceed max_tokens={budget}",
            sample=int(over[0]),
            field="max_tokens",
            hint="Options that fix it: raise max_tokens, or overlong='drop' leaves such samples out",
        )
    return widths, tuple(int(i) for i in over)


def _fill(order: np.ndarray, widths: np.ndarray, budget: int, max_rows: int | None) -> list[np.ndarray]:
    """Cut ``order`` into runs whose row count x widest row stays within ``budget`` (and ``max_rows``)."""
    batches: list[np.ndarray] = []
    start, widest = 0, 0
    for end, width in enumerate(widths[order].tolist()):
        rows = end - start + 1
        grown = max(widest, width)
        if rows > 1 and (grown * rows > budget or (max_rows is not None and rows > max_rows)):
            batches.append(order[start:end])
            start, grown = end, width
        widest = grown
    if start < order.size:
        batches.append(order[start:])
    return batches
