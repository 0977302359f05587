"""What a model-family rule is: a small strategy object the media path calls at fixed points."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from feedline.proto import FeedlineError

from ..._options import CollateOptions
from ...engine._conversation import Conversation, PromptCompletion
from ...engine._text_labels import TextLabels

__all__ = ["Family", "LoadedMedia", "ProcessorCall"]


@dataclass(frozen=True)
class LoadedMedia:
    """A sample's decoded media in conversation order (images as RGB PIL images, audio as float32 arrays)."""

    images: tuple[Any, ...] = ()
    audio: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class ProcessorCall:
    """One processor call's result, normalised.

    ``input_ids`` (int64) are the processor's own tokens for ``text`` (its expanded prompt, placeholders
    replaced); ``starts`` the start character of every token in ``text``; ``media_spans`` the character spans
    of ``text`` each media item was expanded into (never supervised, never cut by truncation);
    ``shift(p)`` maps a character position of the rendered prompt to ``text``. ``tensors`` are the processor's
    other outputs (pixel_values, grids, token type ids, audio features) as numpy arrays.
    """

    input_ids: np.ndarray
    starts: np.ndarray
    text: str
    media_spans: tuple[tuple[int, int], ...]
    media_kinds: tuple[str, ...]  # "image" | "video" | "audio", one per media span
    placeholder_ends: np.ndarray  # rendered-prompt positions where each replaced placeholder ends (sorted)
    added: np.ndarray  # characters added by the expansions up to and including each placeholder
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def shift(self, positions: np.ndarray) -> np.ndarray:
        """Rendered-prompt character positions mapped into the expanded ``text``."""
        idx = np.searchsorted(self.placeholder_ends, positions, side="right")
        shifted: np.ndarray = positions + np.concatenate([[0], self.added])[idx]
        return shifted


class Family(Protocol):
    """A model family's rules; every method has the generic behaviour in ``GenericFamily``."""

    name: str
    unplaced_media: frozenset[str]
    """Media kinds the processor takes without a placeholder in the text (an encoder-decoder's image); every
    other image or audio part must be placed in the tokens, or the sample is refused."""

    def prepare(self, row: Conversation | PromptCompletion, index: int) -> Conversation | PromptCompletion:
        """Family-specific validation of a parsed row (e.g. ASR needs a final non-empty assistant turn)."""
        ...

    def check_options(self, options: CollateOptions) -> None:
        """Refuse options this family cannot honour (InvalidOptions), never change them silently."""
        ...

    def render(
        self, processor: Any, row: Conversation | PromptCompletion, options: CollateOptions, index: int
    ) -> TextLabels:
        """The prompt text the processor sees and, in its characters, what to supervise."""
        ...

    def edit_prompt(self, processor: Any, text: str) -> list[tuple[int, str]]:
        """Text insertions ``(position, text)`` into the rendered prompt before the processor sees it."""
        ...

    def call(self, processor: Any, text: str, media: LoadedMedia, index: int) -> ProcessorCall:
        """Run the processor once on the rendered prompt and this sample's media."""
        ...

    def call_batch(
        self, processor: Any, texts: Sequence[str], media: Sequence[LoadedMedia], indices: Sequence[int]
    ) -> list[ProcessorCall | FeedlineError]:
        """``call`` for several samples (one processor call where the family can split its output exactly);
        a sample's own error is returned in its place."""
        ...

    def media_token_ids(self, processor: Any) -> frozenset[int]:
        """Token ids that stand for media (placeholders, media begin/end markers): never supervised."""
        ...

    def check(self, processor: Any, call: ProcessorCall, index: int) -> None:
        """Consistency checks between tokens and media tensors (raise a FeedlineError naming the sample)."""
        ...

    def select_media(self, tensors: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
        """Media tensors for the kept items only (``keep``: bool per image, in order), after truncation."""
        ...

    def finalize(self, processor: Any, input_ids: np.ndarray, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-sample extras computed on the final token sequence (e.g. mRoPE position ids)."""
        ...
