"""Character spans of a rendered chat to per-token masks, with one rule for tokens that straddle a boundary."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["spans_to_token_mask", "token_regions"]


def spans_to_token_mask(
    text: str, starts: np.ndarray, spans: Sequence[tuple[int, int]], *, overlap: bool = False
) -> np.ndarray:
    """Mark tokens inside any character span.

    A token is inside when it starts inside the span. A token that starts before the span and reaches into
    it (e.g. SentencePiece's "▁word" after a header ending in a space) counts only if what it carries from
    before the span is whitespace and what it carries from inside is not. With ``overlap`` any token that
    touches the span counts (transformers' own rule for {% generation %} masks, used by the nemo policy).
    """
    n = starts.shape[0]
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    ends = np.append(starts[1:], len(text))
    for a, b in spans:
        if b <= a:
            continue
        lo = int(np.searchsorted(starts, a, side="left"))
        hi = int(np.searchsorted(starts, b, side="left"))
        mask[lo:hi] = True
        if lo > 0 and ends[lo - 1] > a and (overlap or _joins_span(text, int(starts[lo - 1]), a, int(ends[lo - 1]))):
            mask[lo - 1] = True
    return mask


def _joins_span(text: str, token_start: int, span_start: int, token_end: int) -> bool:
    before, inside = text[token_start:span_start], text[span_start:token_end]
    return before.isspace() and bool(inside.strip())


def token_regions(starts: np.ndarray, regions: Sequence[int]) -> np.ndarray:
    """Message index of every token (-1 before the first message's region)."""
    if not regions:
        return np.full(starts.shape[0], -1, dtype=np.int32)
    return (np.searchsorted(np.asarray(regions), starts, side="right") - 1).astype(np.int32)
