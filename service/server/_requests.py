"""What a collate, mask or dataset request does, whichever server received it: resolve, validate, run the
engine, encode.

The servers call these and differ only in how they read the request and write the answer.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from feedline.proto import (
    FRAME_FIELD,
    FeedlineError,
    InvalidOptions,
    InvalidSample,
    RequestTooLarge,
    bfloat16_to_float32,
    encode_batch,
    encode_segments,
    frame_parts,
    split_frames,
)
from feedline.proto._ragged import LENGTHS, ragged_wire

from .._options import CollateOptions
from ..collate._batch import CollatedBatch, collate
from ..collate._mask_report import mask_report
from ..tokenizers._processor import Processor
from ._caps import Deadline, check_chars, check_sample_chars, token_gate
from ._config import Limits
from ._datasets import (
    DatasetPlan,
    Mixture,
    MixturePart,
    batch_span,
    check_fingerprint,
    num_batches,
    open_dataset,
    open_mixture,
)
from ._metrics import observe_batch
from ._registry import ServingState

__all__ = [
    "CollateResult",
    "DatasetRequest",
    "DatasetStream",
    "from_first_row",
    "parse_rows",
    "run_collate",
    "run_mask",
]


@dataclass(frozen=True)
class CollateResult:
    """A collated batch with the processor and options that produced it."""

    processor: Processor
    options: CollateOptions
    batch: CollatedBatch

    @property
    def wire(self) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Any]]:
        """(tensors, dtype tags, metadata) as they travel: unpadded rows narrowed (``ragged_wire``) for a
        batch collated ragged."""
        batch = self.batch
        if batch.padding is None:
            return batch.tensors, batch.dtypes, {}
        flat = {k: v for k, v in batch.tensors.items() if k != LENGTHS}
        tensors, meta = ragged_wire(flat, batch.tensors[LENGTHS], batch.padding)
        return tensors, batch.dtypes, meta

    def meta(self, batch_index: int) -> dict[str, Any]:
        return {
            "processor": self.processor.name,
            "fingerprint": self.processor.fingerprint,
            "batch_index": batch_index,
            "reports": [r.to_dict() for r in self.batch.reports],
        }

    def segments(
        self,
        batch_index: int = 0,
        extra: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> list[bytes | memoryview]:
        """The batch's codec blob as pieces viewing the arrays (``encode_segments``): reports, fingerprint and
        ``meta`` in its metadata, ``extra`` tensors beside."""
        tensors, tags, form = self.wire
        return encode_segments(
            {**tensors, **(extra or {})}, {**self.meta(batch_index), **form, **(meta or {})}, dtype_tags=tags
        )

    def encode(
        self,
        batch_index: int = 0,
        extra: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> bytearray:
        """The batch as one codec blob (see ``segments``)."""
        return bytearray().join(self.segments(batch_index, extra, meta))

    def frame_parts(
        self,
        batch_index: int,
        max_frame_bytes: int,
        *,
        field: int | None = None,
        extra: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> list[list[bytes | memoryview]]:
        """The batch's codec frames addressed to ``batch_index``, each as uncopied pieces (``frame_parts``);
        with ``field``, each frame is that protobuf bytes field."""
        return frame_parts(
            self.segments(batch_index, extra, meta), batch_id=batch_index, max_frame_bytes=max_frame_bytes, field=field
        )

    def frames(
        self,
        batch_index: int,
        max_frame_bytes: int,
        *,
        wrap: bool = False,
        extra: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> list[bytes]:
        """The batch as codec frames addressed to ``batch_index`` (``wrap``: as serialized ``Frame`` messages),
        the arrays copied once, straight into them."""
        field = FRAME_FIELD if wrap else None
        parts = self.frame_parts(batch_index, max_frame_bytes, field=field, extra=extra, meta=meta)
        return [b"".join(p) for p in parts]

    def to_json(self) -> dict[str, Any]:
        """Tensors as nested lists (bfloat16 as its float values), with dtypes, reports and fingerprint (HTTP
        answers are padded: its requests never ask for the ragged form)."""
        wire, tags = self.batch.tensors, self.batch.dtypes
        return {
            "processor": self.processor.name,
            "fingerprint": self.processor.fingerprint,
            "tensors": {name: (bfloat16_to_float32(a) if name in tags else a).tolist() for name, a in wire.items()},
            "dtypes": {name: tags.get(name, a.dtype.name) for name, a in wire.items()},
            "reports": [r.to_dict() for r in self.batch.reports],
        }


def parse_rows(
    samples: Sequence[bytes | str], limits: Limits, packed: bytes = b"", *, row_of: Callable[[int], int] | None = None
) -> list[Any]:
    """JSON-decode one sample per entry, or unpack ``packed`` (all rows as one msgpack array, what current
    clients send: decoded in one call, where JSON costs one call per row); a sample that is not an object
    names its index (and row)."""
    if packed:
        return _unpack_rows(packed, limits, also_json=len(samples), row_of=row_of)
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
            raise InvalidSample(
                f"must be a JSON object, not {type(row).__name__}", sample=index, field="samples", row=row_index
            )
        rows.append(row)
    return rows


def _unpack_rows(packed: bytes, limits: Limits, *, also_json: int, row_of: Callable[[int], int] | None) -> list[Any]:
    if also_json:
        raise InvalidSample("a request sets samples or samples_msgpack, not both", field="samples_msgpack")
    try:
        rows = msgpack.unpackb(packed)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise InvalidSample(f"not a valid msgpack array of rows: {exc}", field="samples_msgpack") from None
    if not isinstance(rows, list):
        raise InvalidSample(f"must be a msgpack array of rows, not {type(rows).__name__}", field="samples_msgpack")
    _require_samples(len(rows))
    _check_count(len(rows), limits)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidSample(
                f"must be a map, not {type(row).__name__}",
                sample=index,
                field="samples_msgpack",
                row=row_of(index) if row_of else None,
            )
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
    ragged: bool = False,
    chars_at_most: int | None = None,
) -> CollateResult:
    """Resolve the processor (checking a pinned fingerprint), validate options over its defaults, collate.

    ``row_of`` maps a position in the batch to the row's index in the dataset or the client's stream, so a
    row's error names both (a request's ``first_row`` plus the position; a dataset plan's row indices).
    The work caps are checked before the work they bound (``_caps``); ``deadline`` is the request's time
    budget, by default ``max_request_seconds`` from now. ``ragged``: the client pads text rows itself
    (``collate(ragged=True)``). ``chars_at_most``: a bound on the rows' characters from their encoded size
    (``encoded_chars_bound``), which spares the character count when it is within the caps.
    """
    limits = state.limits
    deadline = deadline or Deadline(limits)
    deadline.check("before collating")
    _check_count(len(rows), limits)
    check_chars(rows, limits, row_of, at_most=chars_at_most)
    resolved = state.registry.get(processor, fingerprint=fingerprint)
    opts = CollateOptions.from_mapping(options, base=resolved.defaults)
    try:
        batch = collate(
            resolved, rows, opts, media=state.media, admit=token_gate(limits, row_of, deadline), ragged=ragged
        )
    except FeedlineError as exc:
        raise exc.at_row(row_of(exc.sample)) if row_of and exc.sample is not None else exc from None
    statuses = Counter(r.status for r in batch.reports)
    observe_batch(resolved.name, batch.token_counts(), statuses, batch.num_label_tokens)
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
        raise RequestTooLarge(f"{count} samples; at most {limits.max_samples_per_request} per request", field="samples")


@dataclass(frozen=True)
class DatasetRequest:
    """A StreamDataset call apart from its wire form: what to read, the plan, the cursor, how to collate."""

    parts: tuple[MixturePart, ...]
    mixture: bool
    plan: DatasetPlan
    start: int = 0
    max_batches: int = 0  # 0 = to the end of the epoch
    processor: str | None = None
    processor_fingerprint: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    frame_bytes: int = 1 << 20
    ragged: bool = False  # the client pads text rows itself (run_collate's ragged)


class DatasetStream:
    """The frames of a dataset request's batches in index order, each batch collated by ``submit`` (a bounded
    pool shared by every stream, so CPU work is queued fairly and first batches of new streams come promptly),
    at most ``ahead`` batches beyond the one being sent.

    A stream serves for about ``chunk_s`` seconds, then stops at a batch boundary and sets ``resume_at``:
    the client continues from there with a new call (on any replica), so no call holds a server thread for
    a whole epoch and long epochs spread over replicas as they come and go.
    """

    def __init__(
        self,
        state: ServingState,
        request: DatasetRequest,
        submit: Callable[..., Future[list[bytes]]],
        *,
        ahead: int = 2,
        chunk_s: float = 30.0,
    ) -> None:
        self._state, self._request, self._submit = state, request, submit
        self._ahead, self._chunk_s = max(1, ahead), chunk_s
        access = state.data_access
        if request.mixture:
            self._mixture: Mixture | None = open_mixture(request.parts, access)
            self._sources = self._mixture.sources
            size = len(self._mixture)
        else:
            (part,) = request.parts
            source = open_dataset(part.path, access.roots, urls=access.urls, cache_dir=access.cache_dir)
            check_fingerprint(source.fingerprint, part.fingerprint, part.path)
            self._mixture, self._sources, size = None, [source], len(source)
        self._size = size
        # what the client keeps in its state_dict, so a resume on changed data is refused
        self.fingerprint = self._mixture.fingerprint if self._mixture is not None else self._sources[0].fingerprint
        total = num_batches(size, request.plan)
        if request.start > total:  # a stale cursor must not read as an empty epoch
            raise InvalidOptions(
                f"start_batch_index {request.start} is past the end of the epoch ({total} batches)",
                field="start_batch_index",
            )
        self.end = min(total, request.start + request.max_batches) if request.max_batches else total
        self.batch_index = request.start
        self.resume_at: int | None = None

    def __iter__(self) -> Iterator[list[bytes]]:
        return self.serve()

    def serve(self, on_batch: Callable[[int], None] = lambda index: None) -> Iterator[list[bytes]]:
        """The batches' frames; ``on_batch(index)`` is called before each batch is awaited (errors name it)."""
        deadline = time.monotonic() + self._chunk_s
        pending: deque[tuple[int, Future[list[bytes]]]] = deque()
        index = self._request.start
        try:
            while True:
                # A call serves at least one batch, so a client always makes progress.
                fresh = index == self._request.start
                while index < self.end and len(pending) < self._ahead and (fresh or time.monotonic() < deadline):
                    fresh = False
                    pending.append((index, self._submit(self.frames, index)))
                    index += 1
                if not pending:
                    break
                self.batch_index, future = pending.popleft()
                on_batch(self.batch_index)
                yield future.result()
            self.resume_at = index if index < self.end else None
        finally:
            for _, future in pending:
                future.cancel()

    def frames(self, batch_index: int) -> list[bytes]:
        """One batch, collated and split into wrapped frames. Mixture batches carry ``dataset_index`` (which
        dataset of the mixture) and ``dataset_row`` (its row there) per sample."""
        request = self._request
        plan = request.plan
        start, stop = batch_span(self._size, plan, batch_index)
        if self._mixture is not None:
            part, rows = self._mixture.locate(np.arange(start, stop, dtype=np.int64), plan)
        else:
            rows = self._sources[0].order(plan.seed, plan.epoch, plan.shuffle).between(start, stop)
            part = np.zeros_like(rows)
        extra = {"dataset_index": part.astype(np.int32), "dataset_row": rows} if self._mixture is not None else {}
        if not len(rows):  # this rank's share of the last, partial global step is empty
            empty = encode_batch(
                extra, {"batch_index": batch_index, "reports": [], "dataset_fingerprint": self.fingerprint}
            )
            return split_frames(empty, batch_id=batch_index, max_frame_bytes=request.frame_bytes, wrap=True)
        samples: list[Any] = [None] * len(rows)
        stored: list[int | None] = []  # the rows' stored sizes, which spare run_collate their character walk
        for d in np.unique(part).tolist():
            sel = np.flatnonzero(part == d)
            stored.append(self._sources[d].encoded_bytes(rows[sel]))
            try:
                fetched = self._sources[d].rows(rows[sel])
            except FeedlineError as exc:  # the reader names the dataset row: add its position in the batch
                if exc.sample is None:
                    raise
                position = int(sel[np.flatnonzero(rows[sel] == exc.sample)[0]])
                raise type(exc)(exc.message, sample=position, field=exc.field, row=exc.sample) from None
            for pos, row in zip(sel.tolist(), fetched, strict=True):
                samples[pos] = row
        try:
            result = run_collate(
                self._state,
                samples,
                processor=request.processor,
                fingerprint=request.processor_fingerprint,
                options=request.options,
                ragged=request.ragged,
                chars_at_most=None if None in stored else sum(s for s in stored if s is not None),
            )
        except FeedlineError as exc:  # name the dataset row, not the position in the batch
            if exc.sample is None:
                raise
            where = f"{request.parts[int(part[exc.sample])].path}: " if self._mixture is not None else ""
            named = type(exc)(where + exc.message, sample=exc.sample, field=exc.field, row=int(rows[exc.sample]))
            raise named from None
        return result.frames(
            batch_index, request.frame_bytes, wrap=True, extra=extra, meta={"dataset_fingerprint": self.fingerprint}
        )
