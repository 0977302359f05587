"""The feedline collation service: engine, processor registry, servers and CLI."""

from __future__ import annotations

from . import _quiet  # noqa: F401  (first: before any module imports transformers)
from feedline.proto import IGNORE_INDEX, LabelFormat, LabelPolicy, LabelStrategy

from ._batch import CollatedBatch, SampleReport, collate, pad_samples, tokenize_rows
from ._conversation import Conversation, Message, Part, PromptCompletion, parse_row
from ._engine import tokenize_row
from ._batching import BatchPlan, length_grouped_batches, token_budget_batches
from ._media import MediaPolicy
from ._media_tokens import estimate_media_tokens
from ._options import CollateOptions
from ._packing import PackOptions, PackPlan, materialise, pack_samples, plan_packs, sample_lengths
from ._processor import Processor, load_processor
from ._sample import TokenizedSample, format_labels

__all__ = [
    "BatchPlan",
    "CollateOptions",
    "CollatedBatch",
    "Conversation",
    "IGNORE_INDEX",
    "LabelFormat",
    "LabelPolicy",
    "LabelStrategy",
    "MediaPolicy",
    "Message",
    "PackOptions",
    "PackPlan",
    "Part",
    "Processor",
    "PromptCompletion",
    "SampleReport",
    "TokenizedSample",
    "collate",
    "estimate_media_tokens",
    "format_labels",
    "length_grouped_batches",
    "load_processor",
    "materialise",
    "pack_samples",
    "pad_samples",
    "parse_row",
    "plan_packs",
    "sample_lengths",
    "token_budget_batches",
    "tokenize_row",
    "tokenize_rows",
]
assert sorted(__all__) == __all__
