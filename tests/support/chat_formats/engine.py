"""feedline's side of the comparison: a Processor per family and the default policy's labels for one row."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from feedline.service import CollateOptions, Processor, TokenizedSample, tokenize_row

from .registry import family
from .tokenizers import family_tokenizer

__all__ = ["engine_date", "family_processor", "label_with_engine"]


@cache
def family_processor(name: str) -> Processor:
    """A feedline Processor built from the family's tokenizer with the family's template."""
    return Processor(f"family-{name}", family_tokenizer(name), chat_template=family(name).template)


def engine_date(processor: Processor) -> datetime | None:
    """The date the processor renders ``strftime_now`` with, when it fixes one (issue 16); None: today's date.

    Read from ``processor.template_date`` (a datetime, a date or an ISO string) if the engine provides it.
    """
    value: Any = getattr(processor, "template_date", None)
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def label_with_engine(name: str, row: dict[str, Any]) -> TokenizedSample:
    """The default policy's sample for ``row`` (raises the engine's own error for rows it refuses)."""
    return tokenize_row(family_processor(name), row, CollateOptions())
