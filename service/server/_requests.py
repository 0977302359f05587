"""What a collate or mask request does, whichever server received it: resolve, validate, run the engine, encode.

Both servers call these and differ only in how they read the request and write the answer.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from feedline.proto import (
    FeedlineError,
    InvalidSample,
    RequestTooLarge,
    bfloat16_to_float32,
    encode_batch,
    split_frames,
)

from ..collate._batch import CollatedBatch, collate
from ._caps import Deadline, check_chars, check_sample_chars, token_gate
from ._config import Limits
from ..collate._mask_report import mask_report
from ._metrics import observe_batch
from .._options import CollateOptions
from ..tokenizers._processor import Processor
from ._registry import ServingState

__all__ = ["CollateResult", "from_first_row", "parse_rows", "run_collate", "run_mask"]


@dataclass(frozen=True)
class CollateResult:
    """A collated batch with the processor and options that produced it."""

    processor: Processor
    options: CollateOptions
    batch: CollatedBatch

    @property
    def wire(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """(tensors, dtype tags) as they travel."""
        return self.batch.tensors, self.batch.dtypes

    def meta(self, batch_index: int) -> dict[str, Any]:
        return {
            "processor": self.processor.name,
            "fingerprint": self.processor.fingerprint,
            "batch_index": batch_index,
            "reports": [r.to_dict() for r in self.batch.reports],
        }

    def encode(self, batch_index: int = 0, extra: Mapping[str, Any] | None = None) -> bytearray:
        """The batch as one codec blob (reports, fingerprint and ``extra`` in its metadata)."""
        tensors, tags = self.wire
        return encode_batch(tensors, {**self.meta(batch_index), **(extra or {})}, dtype_tags=tags)

    def frames(self, batch_index: int, max_frame_bytes: int, *, wrap: bool = False,
               extra: Mapping[str, Any] | None = None) -> list[bytes]:
        """The batch as codec frames addressed to ``batch_index`` (``wrap``: as serialized ``Frame`` messages)."""
        return split_frames(self.encode(batch_index, extra), batch_id=batch_index, max_frame_bytes=max_frame_bytes,
                            wrap=wrap)

    def to_json(self) -> dict[str, Any]:
        """Tensors as nested lists (bfloat16 as its float values), with dtypes, reports and fingerprint."""
        wire, tags = self.wire
        return {
            "processor": self.processor.name,
            "fingerprint": self.processor.fingerprint,
            "tensors": {name: (bfloat16_to_float32(a) if name in tags else a).tolist() for name, a in wire.items()},
            "dtypes": {name: tags.get(name, a.dtype.name) for name, a in wire.items()},
            "reports": [r.to_dict() for r in self.batch.reports],
        }


def parse_rows(
    samples: Sequence[bytes | str], limits: Limits, *, row_of: Callable[[int], int] | None = None
) -> list[Any]:
    """JSON-decode one sample per entry; an entry that is not a JSON object names its index (and row)."""
    _require_samples(len(samples))
    _check_count(len(samples), limits)
    rows = []
    for index, raw in enumerate(samples):
        row_index = row_of(index) if row_of else None
        try:
            row = json.loads(raw)
        except ValueError as exc:
            raise InvalidSample(f"not valid JSON: {exc}", sample=index, field="samples", row=row_index) from None
        if not isinstance(row, dict):
            raise InvalidSample(f"must be a JSON object, not {type(row).__name__}", sample=index, field="samples",
                                row=row_index)
        rows.append(row)
    return rows


def run_collate(
    state: ServingState,
    rows: Sequence[Mapping[str, Any]],
    *,
    processor: str | None,
    fingerprint: str | None,
    options: Mapping[str, Any] | None,
    row_of: Callable[[int], int] | None = None,
    deadline: Deadline | None = None,
) -> CollateResult:
    """Resolve the processor (checking a pinned fingerprint), validate options over its defaults, collate.

    ``row_of`` maps a position in the batch to the row's index in the dataset or the client's stream, so a
    row's error names both (a request's ``first_row`` plus the position; a dataset plan's row indices).
    The work caps are checked before the work they bound (``_caps``); ``deadline`` is the request's time
    budget, by default ``max_request_seconds`` from now.
    """
    limits = state.limits
    deadline = deadline or Deadline(limits)
    deadline.check("before collating")
    _check_count(len(rows), limits)
    check_chars(rows, limits, row_of)
    resolved = state.registry.get(processor, fingerprint=fingerprint)
    opts = CollateOptions.from_mapping(options, base=resolved.defaults)
    try:
        batch = collate(resolved, rows, opts, media=state.media, admit=token_gate(limits, row_of, deadline))
    except FeedlineError as exc:
        raise exc.at_row(row_of(exc.sample)) if row_of and exc.sample is not None else exc from None
    statuses = Counter(r.status for r in batch.reports)
    observe_batch(resolved.name, batch.tensors, statuses, batch.num_label_tokens)
    return CollateResult(resolved, opts, batch)


def from_first_row(first_row: int | None) -> Callable[[int], int] | None:
    """``row_of`` for a request whose first sample is row ``first_row`` of the client's stream (None: unknown)."""
    return None if first_row is None else (lambda position: first_row + position)


def run_mask(
    state: ServingState,
    row: Mapping[str, Any],
    *,
    processor: str | None,
    fingerprint: str | None,
    options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The per-token supervision report of one row (its characters capped like a collated sample's)."""
    check_sample_chars(row, state.limits, field="sample")
    resolved = state.registry.get(processor, fingerprint=fingerprint)
    return mask_report(resolved, row, CollateOptions.from_mapping(options, base=resolved.defaults), media=state.media)


def _require_samples(count: int) -> None:
    """A request must carry samples (only a dataset plan may produce an empty batch for a rank)."""
    if count == 0:
        raise InvalidSample("a request needs at least one sample", field="samples")


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_samples_per_request:
        raise RequestTooLarge(
            f"{count} samples; at most {limits.max_samples_per_request} per request", field="samples"
        )
