"""A rendered conversation with its supervision as character spans: the hand-off from text to tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feedline.proto import LabelStrategy

from ._tokenmask import spans_to_token_mask

__all__ = ["TextLabels"]


@dataclass(frozen=True)
class TextLabels:
    """A rendered conversation and, in character spans, what to supervise (shared by the text and media paths)."""

    text: str
    supervise: tuple[tuple[int, int], ...]
    holes: tuple[tuple[int, int], ...]
    regions: tuple[int, ...]
    strategy: LabelStrategy
    warnings: tuple[str, ...]

    def token_mask(self, text: str, starts: np.ndarray) -> np.ndarray:
        """Per-token supervision for tokens of ``text`` starting at ``starts`` (spans in the same coordinates)."""
        supervised = spans_to_token_mask(text, starts, self.supervise)
        if self.holes:
            supervised &= ~spans_to_token_mask(text, starts, self.holes)
        return supervised
