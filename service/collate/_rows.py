"""Rows to labelled samples: the path (text or media) and the label policy are picked here, once per row.

A processor with a multimodal part takes its rows through the media path; every other row goes to the policy's
text labeller. The final checks (over-long, nothing supervised) are made here for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from feedline.proto import FeedlineError, NoSupervisedTokens, SampleTooLong

from .._options import CollateOptions
from ..engine._conversation import Row, require_tool_call_ids
from ..engine._sample import TokenizedSample
from ..engine._text import capture, parse_rows
from ..media._loading import MediaPolicy
from ..media._path import tokenize_multimodal_rows
from ..tokenizers._processor import Processor
from ._policy import policy_for

__all__ = ["check_sample", "label_row", "label_rows", "tokenize_row"]


def label_rows(
    processor: Processor,
    rows: Sequence[Mapping[str, Any]],
    options: CollateOptions,
    *,
    first_index: int = 0,
    media: MediaPolicy | None = None,
) -> list[TokenizedSample | FeedlineError]:
    """Label every row; a row's own error is returned in its place so the caller decides (raise or skip).

    ``media`` is the operator's media policy (roots for image paths, size limits) for rows with media parts.
    """
    policy = policy_for(options)
    parsed = parse_rows(rows, options, first_index)
    if processor.uses_tool_call_id:
        parsed = [(i, _with_tool_call_ids(row, i)) for i, row in parsed]
    if processor.hf_processor is not None:
        return tokenize_multimodal_rows(processor, parsed, options, policy=media, supervision=policy.media_supervision)
    return policy.label_text(processor, parsed, options)


def _with_tool_call_ids(row: Row | FeedlineError, index: int) -> Row | FeedlineError:
    """The parsed row, or its error when a tool message lacks the id this processor's template uses."""
    return row if isinstance(row, FeedlineError) else capture(require_tool_call_ids, row, index)


def label_row(
    processor: Processor,
    row: Mapping[str, Any],
    options: CollateOptions,
    *,
    index: int = 0,
    media: MediaPolicy | None = None,
) -> TokenizedSample:
    """Tokenize and label one row without the final checks (the mask debugger shows even empty samples)."""
    result = label_rows(processor, [row], options, first_index=index, media=media)[0]
    if isinstance(result, FeedlineError):
        raise result
    return result


def tokenize_row(
    processor: Processor,
    row: Mapping[str, Any],
    options: CollateOptions,
    *,
    index: int = 0,
    media: MediaPolicy | None = None,
) -> TokenizedSample:
    """Tokenize and label one row; errors name the sample (``index``) and the field."""
    return check_sample(label_row(processor, row, options, index=index, media=media), options, index)


def check_sample(sample: TokenizedSample, options: CollateOptions, index: int) -> TokenizedSample:
    """Refuse a sample that is still over max_length (unless the policy keeps it), or that trains on nothing."""
    over = options.max_length is not None and sample.num_tokens > options.max_length
    if over and not policy_for(options).keeps_overlong:
        raise SampleTooLong(f"{sample.num_tokens} tokens exceed max_length {options.max_length}", sample=index)
    if sample.num_label_tokens == 0:
        raise NoSupervisedTokens(
            f"no supervised tokens ({sample.strategy.value}); the sample would train on nothing", sample=index
        )
    return sample
