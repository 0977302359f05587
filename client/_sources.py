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
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from feedline.proto import ServiceUnavailable
from feedline.proto._framing import FrameAssembler, join_frames
from feedline.proto.v1 import RESUME_METADATA_KEY
from feedline.proto.v1 import feedline_pb2 as pb

from ._connection import Connection, HedgedCall
from ._requests import check_fingerprint, collate_request

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
) -> Generator[tuple[int, np.ndarray], None, None]:
    """Batches of a StreamDataset call from ``request.start_batch_index`` on; a broken stream, or one that waits
    longer than the connection's stall limit for a frame, resumes on another replica from the next undelivered
    index. A call the server ends early (it serves in time-bounded chunks) is continued with a new call from the
    index it names. ``stop`` ends the retries (the caller closed the run)."""
    conn = remote._connection
    next_index, failures, stalls = request.start_batch_index, 0, 0
    address = conn.pick()
    while True:
        watch = _StallWatch(conn, address, stalls)
        started = next_index
        try:
            stream = _stream(conn, address, request, next_index, allocate, watch)
            while True:
                try:
                    blob = next(stream)
                except StopIteration as end:
                    resume = end.value
                    break
                yield next_index, blob
                next_index, failures, stalls = next_index + 1, 0, 0
        except grpc.RpcError as err:
            if stop is not None and stop.is_set():
                return
            failures += 1
            if not watch.stalled:
                conn.failed(address, err, failures, f"stream at batch {next_index}")
            elif failures >= conn.policy.attempts:
                raise ServiceUnavailable(f"stream at batch {next_index}: every replica stalled") from None
            else:
                stalls += 1
                conn.slow(address)
                conn.stats["stalls"] += 1
                _LOGGER.warning(
                    "batch %d: no frame from %s in %.2f s; resuming the stream on another replica",
                    next_index,
                    address,
                    watch.limit,
                )
            address = conn.pick(avoid=(address,))
            continue
        if resume is None:  # the requested range is done
            return
        if resume != next_index or next_index == started:  # a server serves at least one batch per call
            raise ServiceUnavailable(f"the server asked to resume at batch {resume} after sending up to {next_index}")
        address = conn.pick()  # the server ended this chunk of the epoch: the next call may go to another replica


def _stream(
    conn: Connection,
    address: str,
    template: pb.StreamDatasetRequest,
    start: int,
    allocate: Allocate | None,
    watch: _StallWatch,
) -> Generator[np.ndarray, None, int | None]:
    """Blobs of one call from ``start``; returns the batch index the server asks to continue from, if any."""
    request = pb.StreamDatasetRequest()
    request.CopyFrom(template)
    request.start_batch_index = start
    if template.max_batches:  # the same end, wherever this call begins
        request.max_batches = template.start_batch_index + template.max_batches - start
    call = conn.stream_dataset(address, request)
    watch.start(call)
    frames = iter(call)
    try:
        assembler = FrameAssembler(allocate=allocate)
        while True:
            watch.waiting()
            frame = next(frames, None)
            watch.arrived()
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


class _StallWatch:
    """The deadline of a stream that lasts an epoch: cancel the call when it has waited longer than the
    connection's stall limit for its next frame (three times that for its first, doubled per consecutive
    stall, never more than ``timeout``), so the stream resumes on another replica. Time the consumer spends
    holding a batch (backpressure) does not count. Frame waits are fed back into the hedge delay."""

    def __init__(self, conn: Connection, address: str, stalls: int) -> None:
        self._conn, self._address, self._stalls = conn, address, stalls
        self._since: float | None = None
        self._first = True
        self.limit = 0.0
        self.stalled = False
        self._done = threading.Event()
        self._call: Any = None

    def start(self, call: Any) -> None:
        self._call = call
        threading.Thread(target=self._watch, name="feedline-stream-stall", daemon=True).start()

    def waiting(self) -> None:
        delay = self._conn.hedge_delay("stream") * (3 if self._first else 1) * 2**self._stalls
        self.limit = min(self._conn.policy.timeout, delay)
        self._since = time.monotonic()

    def arrived(self) -> None:
        since, self._since = self._since, None
        if since is not None and not self._first:
            self._conn.succeeded(self._address, "stream", time.monotonic() - since)
        self._first = False

    def _watch(self) -> None:
        while not self._done.wait(0.05):
            since = self._since
            if since is not None and time.monotonic() - since > self.limit:
                self.stalled = True
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
) -> Generator[tuple[int, np.ndarray], None, None]:
    """One unary Collate per chunk, ``prefetch`` in flight, each hedged and failed over by the connection
    under the same batch index, so the answer is the same bytes whoever computes it. ``stop`` ends the retries."""
    pending: collections.deque[tuple[int, HedgedCall]] = collections.deque()
    conn = remote._connection
    try:
        for index, rows in chunks:
            request = collate_request(
                remote.processor, remote.fingerprint, remote._options_msg, rows, index, remote.ragged
            )
            pending.append((index, conn.collate(request, stop)))
            if len(pending) >= prefetch:
                yield _collect(remote, pending.popleft(), allocate)
        while pending:
            yield _collect(remote, pending.popleft(), allocate)
    finally:
        for _, call in pending:  # a consumer that stops early leaves no call running
            call.cancel()


def _collect(
    remote: RemoteCollate, pending: tuple[int, HedgedCall], allocate: Allocate | None
) -> tuple[int, np.ndarray]:
    index, call = pending
    response = call.result()
    check_fingerprint(response.fingerprint, remote.fingerprint)
    return index, join_frames(response.frames, allocate=allocate)
