"""The one truncation rule: which window of a too-long sample ``max_length`` and ``truncation`` keep.

Text rows are cut to that window here; the media path moves its edges off media items, and the mask report
shows the same window, so the three never disagree about which tokens survive.
"""

from __future__ import annotations

import dataclasses

from .._options import CollateOptions
from ._sample import TokenizedSample

__all__ = ["cut_sample", "truncation_window"]


def truncation_window(num_tokens: int, options: CollateOptions) -> slice:
    """The token window kept: everything when there is no limit, it fits, or truncation is off."""
    limit = options.max_length
    if limit is None or num_tokens <= limit or options.truncation == "none":
        return slice(0, num_tokens)
    return slice(0, limit) if options.truncation == "right" else slice(num_tokens - limit, num_tokens)


def cut_sample(sample: TokenizedSample, window: slice, options: CollateOptions, **replaced: object) -> TokenizedSample:
    """``sample`` restricted to ``window`` (its token-axis arrays), warning when supervised tokens were cut."""
    n, kept = sample.num_tokens, window.stop - window.start
    if kept == n:
        return sample
    warnings = list(sample.warnings)
    if sample.supervised[window].sum() < sample.supervised.sum():
        warnings.append(f"truncation ({options.truncation}) cut {n - kept} tokens, supervised ones among them")
    return dataclasses.replace(
        sample,
        input_ids=sample.input_ids[window],
        supervised=sample.supervised[window],
        turn_index=None if sample.turn_index is None else sample.turn_index[window],
        media_tokens=None if sample.media_tokens is None else sample.media_tokens[window],
        warnings=tuple(warnings),
        truncated=n - kept,
        **replaced,  # type: ignore[arg-type]
    )
