"""The label policy, chosen once per request: everything the default and ``nemo`` policies do differently.

Every other module asks the chosen ``Policy`` instead of branching on ``options.label_policy``: how text rows
are labelled, what the media path supervises, the pad id, whether an over-long sample is refused, and how wide
a batch padded to ``max_length`` is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from feedline.proto import FeedlineError, LabelPolicy

from .._options import CollateOptions
from ..engine._conversation import Row
from ..engine._sample import TokenizedSample
from ..engine._text import capture, label_text_rows
from ..engine._text_labels import TextLabels
from ..engine.nemo._labels import nemo_pad_token_id, nemo_tokenize
from ..media._nemo import nemo_supervision
from ..media._path import MediaSupervision, default_supervision
from ..media.families import ProcessorCall
from ..tokenizers._processor import Processor

__all__ = ["Policy", "policy_for"]

TextLabeller = Callable[
    [Processor, Sequence[tuple[int, "Row | FeedlineError"]], CollateOptions], list["TokenizedSample | FeedlineError"]
]


@dataclass(frozen=True)
class Policy:
    """What a label policy decides. ``keeps_overlong``: an over-long sample is emitted whole (NeMo) instead of
    refused."""

    name: LabelPolicy
    label_text: TextLabeller
    media_supervision: MediaSupervision
    pad_id: Callable[[Processor], int]
    keeps_overlong: bool

    def padded_width(self, options: CollateOptions) -> int | None:
        """The width ``padding="max_length"`` pads to (exactly ``max_length`` in every label format, as NeMo pads
        its shifted lists to seq_length again), or None when the batch pads to its longest row."""
        if options.padding != "max_length" or options.max_length is None:
            return None
        return options.max_length


def _nemo_text(
    processor: Processor, parsed: Sequence[tuple[int, Row | FeedlineError]], options: CollateOptions
) -> list[TokenizedSample | FeedlineError]:
    return [
        row if isinstance(row, FeedlineError) else capture(nemo_tokenize, processor, row, options, index=i)
        for i, row in parsed
    ]


def _nemo_media(processor: Processor, plan: TextLabels, call: ProcessorCall, media_tokens: np.ndarray) -> np.ndarray:
    return nemo_supervision(processor, call.input_ids)  # NeMo supervises media tokens inside a turn too


_POLICIES = {
    LabelPolicy.ASSISTANT: Policy(
        name=LabelPolicy.ASSISTANT,
        label_text=label_text_rows,
        media_supervision=default_supervision,
        pad_id=lambda processor: processor.pad_token_id,
        keeps_overlong=False,
    ),
    LabelPolicy.NEMO: Policy(
        name=LabelPolicy.NEMO,
        label_text=_nemo_text,
        media_supervision=_nemo_media,
        pad_id=nemo_pad_token_id,
        keeps_overlong=True,
    ),
}


def policy_for(options: CollateOptions) -> Policy:
    """The policy the options name."""
    return _POLICIES[options.label_policy]
