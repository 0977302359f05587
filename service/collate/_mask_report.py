"""Per-token view of one conversation's supervision, for `/v1/mask`, `feedline mask` and the debugging page."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from feedline.proto import IGNORE_INDEX, LabelFormat

from .._options import CollateOptions
from ..engine._conversation import Conversation, parse_row
from ..engine._sample import TokenizedSample
from ..engine._truncation import truncation_window
from ..media._loading import MediaPolicy
from ..media._path import media_window
from ..tokenizers._processor import Processor
from ._rows import label_row

__all__ = ["mask_report"]


def mask_report(
    processor: Processor, row: Mapping[str, Any], options: CollateOptions, *, media: MediaPolicy | None = None
) -> dict[str, Any]:
    """Every token of the rendered row with its turn, role, kind and whether it is trained on.

    The row is labelled once without a length limit, so tokens that ``max_length`` would cut are shown as
    "truncated" instead of vanishing; counts are those of the sample actually produced under ``options``.
    ``media`` is the operator's media policy (media roots for image paths, size limits), as for collate; the
    tokens that stand for media (placeholders and their expansion, media begin/end markers) are kind "media".
    """
    parsed = parse_row(row, require_assistant=options.answer_only)
    unlimited = dataclasses.replace(options, max_length=None, truncation="none", padding="longest")
    full = label_row(processor, row, unlimited, media=media)
    keep = truncation_window(full.num_tokens, options) if full.media_tokens is None else media_window(full, options)
    if keep is None:  # no cut between media items fits: collate refuses the row, shown whole with a warning
        keep = slice(0, full.num_tokens)
    supervised = np.zeros(full.num_tokens, dtype=bool)
    supervised[keep] = full.supervised[keep]
    if options.label_format is LabelFormat.SHIFTED and full.num_tokens:
        supervised[keep.start] = False  # the first token is never a target once labels are shifted
    roles: list[str] = [m.role for m in parsed.messages] if isinstance(parsed, Conversation) else []
    tokens = _tokens(processor, full, supervised, roles, keep)
    warnings = list(full.warnings)
    count = int(supervised.sum())
    if count == 0:
        warnings.append("zero supervised tokens: this sample would be rejected (or skipped) by collate")
    if options.max_length is not None and keep.stop - keep.start > options.max_length:
        # not cut: truncation is off, or (media rows) no cut between media items fits
        action = "drop" if options.overlong == "drop" else "reject"
        warnings.append(
            f"{full.num_tokens} tokens exceed max_length {options.max_length}: collate would {action} this sample"
        )
    if keep.stop - keep.start < full.num_tokens:
        cut = full.num_tokens - (keep.stop - keep.start)
        if full.supervised[keep].sum() < full.supervised.sum():
            warnings.append(f"truncation cuts {cut} tokens, part of an assistant turn among them")
        else:
            warnings.append(f"truncation cuts {cut} tokens")
    return {
        "processor": processor.name,
        "fingerprint": processor.fingerprint,
        "strategy": full.strategy.value,
        "num_tokens": keep.stop - keep.start,
        "num_label_tokens": count,
        "label_format": options.label_format.value,
        "label_policy": options.label_policy.value,
        "warnings": warnings,
        "tokens": tokens,
    }


def _tokens(
    processor: Processor, full: TokenizedSample, supervised: np.ndarray, roles: list[str], keep: slice
) -> list[dict[str, Any]]:
    tokenizer = processor.tokenizer
    ids, turn_index = full.input_ids, full.turn_index
    pieces = tokenizer.batch_decode([[int(i)] for i in ids], skip_special_tokens=False)
    special = set(tokenizer.all_special_ids) | {int(i) for i in tokenizer.added_tokens_decoder}
    media = full.media_tokens if full.media_tokens is not None else np.zeros(ids.shape[0], dtype=bool)
    out = []
    for t, token_id in enumerate(ids.tolist()):
        turn = int(turn_index[t]) if turn_index is not None else -1
        out.append(
            {
                "id": token_id,
                "piece": pieces[t],
                "turn": turn,
                "role": roles[turn] if 0 <= turn < len(roles) else None,
                "supervised": bool(supervised[t]),
                "label": token_id if supervised[t] else IGNORE_INDEX,
                "kind": _kind(token_id, t, keep, special, bool(media[t])),
            }
        )
    return out


def _kind(token_id: int, t: int, keep: slice, special: set[int], media: bool) -> str:
    if not keep.start <= t < keep.stop:
        return "truncated"
    if media:
        return "media"
    return "special" if token_id in special else "text"
