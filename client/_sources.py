"""Where batch blobs come from: the service's dataset stream, or unary Collate calls on sample chunks.

Both generators yield ``(batch_index, blob)`` in index order, fail over to another replica on transport
errors without losing or repeating a batch, and copy each batch exactly once, into the buffer ``allocate``
gives (fresh aligned memory by default; a shared-memory slot in the receiver process). They run unchanged
in the trainer process or in the receiver process.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from feedline.proto import ServiceUnavailable
from feedline.proto._framing import FrameAssembler, join_frames
from feedline.proto.v1 import RESUME_METADATA_KEY
from feedline.proto.v1 import feedline_pb2 as pb

from ._replicas import RETRYABLE, map_rpc_error
from ._requests import FRAME_STREAM, check_fingerprint, collate_call, collate_request

if TYPE_CHECKING:
    from ._collate import RemoteCollate

__all__ = ["Allocate", "dataset_blobs", "sample_blobs"]

_LOGGER = logging.getLogger("feedline.client")

Allocate = Callable[[int], np.ndarray]
Chunk = tuple[int, Sequence[Mapping[str, Any]]]


def dataset_blobs(
    remote: RemoteCollate,
    request: pb.StreamDatasetRequest,
    *,
    allocate: Allocate | None = None,
    stop: threading.Event | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Batches of a StreamDataset call from ``request.start_batch_index`` on; a broken stream, or one that waits
    ``retry.timeout`` seconds for a frame, resumes on another replica from the next undelivered index. A call
    the server ends early (it serves in time-bounded chunks) is continued with a new call from the index it
    names. ``stop`` ends the retries (the caller closed the run)."""
    policy = remote.retry
    next_index, failures = request.start_batch_index, 0
    while True:
        target = remote._replicas.rotation()[0]
        started = next_index
        try:
            stream = _stream(remote, target, request, next_index, allocate)
            while True:
                try:
                    blob = next(stream)
                except StopIteration as end:
                    resume = end.value
                    break
                yield next_index, blob
                next_index, failures = next_index + 1, 0
        except grpc.RpcError as err:
            mapped = map_rpc_error(err)
            if stop is not None and stop.is_set():
                return
            if err.code() not in RETRYABLE or not isinstance(mapped, ServiceUnavailable):
                raise mapped from None
            failures += 1
            if failures >= policy.attempts:
                raise ServiceUnavailable(f"batch {next_index}: no replica answered") from None
            _LOGGER.warning("stream broke at batch %d (%s); resuming on another replica", next_index, err.code().name)
            time.sleep(policy.backoff(failures))
            continue
        if resume is None:  # the requested range is done
            return
        if resume != next_index or next_index == started:  # a server serves at least one batch per call
            raise ServiceUnavailable(f"the server asked to resume at batch {resume} after sending up to {next_index}")


def _stream(
    remote: RemoteCollate, target: str, template: pb.StreamDatasetRequest, start: int, allocate: Allocate | None
) -> Generator[np.ndarray, None, int | None]:
    """Blobs of one call from ``start``; returns the batch index the server asks to continue from, if any."""
    request = pb.StreamDatasetRequest()
    request.CopyFrom(template)
    request.start_batch_index = start
    if template.max_batches:  # the same end, wherever this call begins
        request.max_batches = template.start_batch_index + template.max_batches - start
    method: Any = remote._replicas.channel(target).unary_stream(
        FRAME_STREAM, request_serializer=pb.StreamDatasetRequest.SerializeToString, response_deserializer=None
    )
    call = method(request, timeout=None, metadata=tuple(remote._replicas.metadata) or None)
    watch = _IdleWatch(call, remote.retry.timeout, target)
    frames = iter(call)
    try:
        assembler = FrameAssembler(allocate=allocate)
        while True:
            watch.waiting_since = time.monotonic()
            frame = next(frames, None)
            watch.waiting_since = None
            if frame is None:
                break
            blob = assembler.add(frame)
            if blob is not None:
                yield blob
                assembler = FrameAssembler(allocate=allocate)
        assembler.check_complete()
        resume = dict(call.trailing_metadata() or ()).get(RESUME_METADATA_KEY)
        return int(resume) if resume is not None else None
    finally:
        watch.close()
        call.cancel()  # a consumer that stops early must not leave the server streaming


class _IdleWatch:
    """The deadline of a stream that lasts an epoch: cancel the call when it has waited ``limit`` seconds for
    its next frame (a replica that hangs without dying), so the stream resumes on another. Time the consumer
    spends holding a batch (backpressure) does not count."""

    def __init__(self, call: Any, limit: float, target: str) -> None:
        self._call, self._limit, self._target = call, limit, target
        self.waiting_since: float | None = None
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="feedline-stream-deadline", daemon=True).start()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self._limit / 4)):
            since = self.waiting_since
            if since is not None and time.monotonic() - since > self._limit:
                _LOGGER.warning("no frame from %s for %.1f s; cancelling its stream", self._target, self._limit)
                self._call.cancel()
                return

    def close(self) -> None:
        self._done.set()


def sample_blobs(
    remote: RemoteCollate,
    chunks: Iterable[Chunk],
    prefetch: int,
    *,
    allocate: Allocate | None = None,
    stop: threading.Event | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """One unary Collate per chunk, ``prefetch`` in flight; each batch is retried on another replica under
    the same index, so the answer is the same bytes whoever computes it. ``stop`` ends the retries."""
    pending: collections.deque[tuple[int, Sequence[Mapping[str, Any]], Any]] = collections.deque()
    try:
        for index, rows in chunks:
            pending.append((index, rows, _submit(remote, index, rows)))
            if len(pending) >= prefetch:
                yield _collect(remote, *pending.popleft(), allocate, stop)
        while pending:
            yield _collect(remote, *pending.popleft(), allocate, stop)
    finally:
        for _, _, future in pending:  # a consumer that stops early leaves no call running
            future.cancel()


def _submit(remote: RemoteCollate, index: int, rows: Sequence[Mapping[str, Any]]) -> Any:
    request = collate_request(remote.processor, remote.fingerprint, remote._options_msg, rows, index)
    target = remote._replicas.rotation()[0]
    return collate_call(remote._replicas.channel(target), request, remote.retry.timeout, remote._replicas.metadata)


def _collect(
    remote: RemoteCollate,
    index: int,
    rows: Sequence[Mapping[str, Any]],
    future: Any,
    allocate: Allocate | None,
    stop: threading.Event | None,
) -> tuple[int, np.ndarray]:
    policy = remote.retry
    for attempt in range(policy.attempts):
        try:
            response = future.result()
        except grpc.RpcError as err:
            if stop is not None and stop.is_set():
                raise ServiceUnavailable(f"batch {index}: the run was stopped") from None
            if err.code() not in RETRYABLE:
                raise map_rpc_error(err) from None
            _LOGGER.warning("batch %d: %s; retrying on another replica", index, err.code().name)
            time.sleep(policy.backoff(attempt))
            future = _submit(remote, index, rows)
            continue
        check_fingerprint(response.fingerprint, remote.fingerprint)
        return index, join_frames(response.frames, allocate=allocate)
    raise ServiceUnavailable(f"batch {index}: no replica answered after {policy.attempts} attempts")
