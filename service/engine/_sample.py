"""The engine's per-sample output: full-length token ids with a supervision mask, before any label format."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from feedline.proto import IGNORE_INDEX, LabelFormat, LabelStrategy

__all__ = ["TOKEN_AXIS_KEYS", "TokenizedSample", "format_labels"]

TOKEN_AXIS_KEYS = frozenset({"mm_token_type_ids", "token_type_ids", "position_ids"})
"""Media keys aligned with input_ids (one value per token, last axis): sliced, shifted and padded like it."""


@dataclass(frozen=True)
class TokenizedSample:
    """One tokenized conversation.

    ``input_ids`` is the full, unshifted sequence (int64); ``supervised[t]`` says whether token ``t`` is a
    training target. Label formats are applied later (per document when packing), so a shift never crosses
    a document boundary. ``turn_index[t]`` is the message index that produced token ``t`` (-1 for template
    text outside any message), used by the mask debugger and for truncation warnings. ``attention_mask`` is set
    only when a sample carries its own padding (NeMo pads inside the dataset when padding="max_length").
    ``media`` holds the processor's per-sample tensors (pixel_values, grids, audio features ...), ``family`` the
    model-family rule that produced them and ``media_tokens[t]`` whether token ``t`` stands for media.
    """

    input_ids: np.ndarray
    supervised: np.ndarray
    strategy: LabelStrategy
    turn_index: np.ndarray | None = None
    attention_mask: np.ndarray | None = None  # None: every token is real (only the nemo policy pre-pads)
    media: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    truncated: int = 0  # tokens cut away by truncation
    family: str | None = None  # the model-family rule used (media path only)
    media_tokens: np.ndarray | None = None
    media_spans: tuple[tuple[int, int, str], ...] = ()  # token ranges [lo, hi) of each media item, with its kind

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_label_tokens(self) -> int:
        """Supervised targets after the shift (the first token is never a target)."""
        return int(self.supervised[1:].sum())


def format_labels(input_ids: np.ndarray, supervised: np.ndarray, fmt: LabelFormat) -> dict[str, np.ndarray]:
    """Express one document's supervision in ``fmt``.

    shifted: ``input_ids[:-1]`` and ``labels[t] = input_ids[t+1]`` where supervised, else IGNORE_INDEX.
    unshifted: labels aligned with input_ids (the model shifts). loss_mask: 0/1 over input_ids.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    sup = np.asarray(supervised, dtype=bool)
    if fmt is LabelFormat.LOSS_MASK:
        return {"input_ids": ids, "loss_mask": sup.astype(np.int64)}
    labels = np.where(sup, ids, IGNORE_INDEX).astype(np.int64, copy=False)
    if fmt is LabelFormat.UNSHIFTED:
        return {"input_ids": ids, "labels": labels}
    return {"input_ids": ids[:-1], "labels": labels[1:]}
