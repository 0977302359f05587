"""What a collate or mask request does, whichever server received it: resolve, validate, run the engine, encode.

Both servers call these and differ only in how they read the request and write the answer.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from feedline.proto import (
    InvalidSample,
    RequestTooLarge,
    bfloat16_to_float32,
    encode_batch,
    split_frames,
)

from ..collate._batch import CollatedBatch, collate
from ._config import Limits
from ..collate._mask_report import mask_report
from ._metrics import observe_batch
from .._options import CollateOptions
from ..tokenizers._processor import Processor
from ._registry import ServingState

__all__ = ["CollateResult", "parse_rows", "run_collate", "run_mask"]


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


def parse_rows(samples: Sequence[bytes | str], limits: Limits) -> list[Any]:
    """JSON-decode one sample per entry; an entry that is not a JSON object names its index."""
    _require_samples(len(samples))
    _check_count(len(samples), limits)
    rows = []
    for index, raw in enumerate(samples):
        try:
            row = json.loads(raw)
        except ValueError as exc:
            raise InvalidSample(f"not valid JSON: {exc}", sample=index, field="samples") from None
        if not isinstance(row, dict):
            raise InvalidSample(f"must be a JSON object, not {type(row).__name__}", sample=index, field="samples")
        rows.append(row)
    return rows


def run_collate(
    state: ServingState,
    rows: Sequence[Mapping[str, Any]],
    *,
    processor: str | None,
    fingerprint: str | None,
    options: Mapping[str, Any] | None,
) -> CollateResult:
    """Resolve the processor (checking a pinned fingerprint), validate options over its defaults, collate."""
    _check_count(len(rows), state.limits)
    resolved = state.registry.get(processor, fingerprint=fingerprint)
    opts = CollateOptions.from_mapping(options, base=resolved.defaults)
    batch = collate(resolved, rows, opts, media=state.media)
    statuses = Counter(r.status for r in batch.reports)
    observe_batch(resolved.name, batch.tensors, statuses, batch.num_label_tokens)
    return CollateResult(resolved, opts, batch)


def run_mask(
    state: ServingState,
    row: Mapping[str, Any],
    *,
    processor: str | None,
    fingerprint: str | None,
    options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The per-token supervision report of one row."""
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
