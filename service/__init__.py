"""The feedline collation service: engine, processor registry, servers and CLI."""

from __future__ import annotations

from feedline.proto import IGNORE_INDEX, LabelFormat, LabelPolicy, LabelStrategy

from . import _quiet  # noqa: F401  (first of the service's modules: before any of them imports transformers)
from ._options import CollateOptions, PackOptions
from .collate._batch import CollatedBatch, SampleReport, collate, pad_samples, tokenize_rows
from .collate._batching import BatchPlan, length_grouped_batches, token_budget_batches
from .collate._packing import PackPlan, materialise, pack_samples, plan_packs, sample_lengths
from .collate._rows import label_row, tokenize_row
from .engine._conversation import Conversation, Message, Part, PromptCompletion, parse_row
from .engine._sample import TokenizedSample, format_labels
from .media._loading import MediaPolicy
from .media._tokens import estimate_media_tokens
from .tokenizers._processor import Processor, load_processor

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
    "label_row",
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
