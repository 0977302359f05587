"""Where batch blobs come from: the service's dataset stream, or CollateStream calls fed with sample chunks.

Both generators yield ``(batch_index, blob)`` in index order, fail over to another replica on transport
errors without losing or repeating a batch, and copy each batch exactly once, into the buffer ``allocate``
gives (fresh aligned memory by default; a shared-memory slot in the receiver process). They run unchanged
in the trainer process or in the receiver process.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from feedline.proto import ServiceUnavailable
from feedline.proto._framing import FrameAssembler
from feedline.proto.v1 import RESUME_METADATA_KEY
from feedline.proto.v1 import feedline_pb2 as pb

from ._connection import Connection
from ._requests import collate_request

if TYPE_CHECKING:
    from ._collate import RemoteCollate

__all__ = ["Allocate", "dataset_blobs", "sample_blobs"]

_LOGGER = logging.getLogger("feedline.client")

STREAM_SPAN_S = 30.0
"""How long samples mode keeps sending on one CollateStream before its next requests start a new call on a
replica picked afresh (the server ends dataset streams after about as long, for the same reason)."""
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
            failures, stalls = _failed_stream(conn, address, err, watch, failures, stalls, str(next_index))
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
    try:
        for _, blob in _assembled(iter(call), watch, allocate):
            yield blob
        resume = dict(call.trailing_metadata() or ()).get(RESUME_METADATA_KEY)
        return int(resume) if resume is not None else None
    finally:
        watch.close()
        call.cancel()  # a consumer that stops early must not leave the server streaming


def _assembled(
    frames: Iterator[bytes], watch: _StallWatch, allocate: Allocate | None
) -> Generator[tuple[int, np.ndarray], None, None]:
    """The batches a call's frames assemble into, each with the batch id its frames carry, in order; the stall
    watch times the wait for every frame. Raises CodecError if the call ends inside a batch."""
    assembler = FrameAssembler(allocate=allocate)
    while True:
        watch.waiting()
        frame = next(frames, None)
        watch.arrived()
        if frame is None:
            assembler.check_complete()
            return
        blob = assembler.add(frame)
        if blob is not None:
            yield assembler.last_batch_id, blob
            assembler = FrameAssembler(allocate=allocate)


def _failed_stream(
    conn: Connection, address: str, err: grpc.RpcError, watch: _StallWatch, failures: int, stalls: int, batch: str
) -> tuple[int, int]:
    """A stream's call ended in ``err`` waiting for ``batch``: the connection's retry rule for a failure, or a
    stall counted and the replica marked slow; raises when no replica is left to try. The new counts."""
    failures += 1
    if not watch.stalled:
        conn.failed(address, err, failures, f"stream at batch {batch}")
    elif failures >= conn.policy.attempts:
        raise ServiceUnavailable(f"stream at batch {batch}: every replica stalled") from None
    else:
        stalls += 1
        conn.slow(address)
        conn.stats["stalls"] += 1
        _LOGGER.warning(
            "batch %s: no frame from %s in %.2f s; resuming the stream on another replica", batch, address, watch.limit
        )
    return failures, stalls


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
    """One request per chunk over a CollateStream, ``prefetch`` of them in flight, batches in index order. A
    broken stream, or one that waits longer than the connection's stall limit for a frame, continues on another
    replica with its undelivered requests sent again: the same request gives the same bytes on any replica, so
    no batch is lost or repeated. A call per ``STREAM_SPAN_S`` seconds, not one per batch (a unary call costs the
    receiver and the server a call's setup and a thread hand-off for every batch), and not one per run: a call
    also ends early when the replica set changes, so that replicas added to a Deployment get a share of a long
    run at once (``Connection.pick`` gives a new replica the next call). ``stop`` ends the retries."""
    conn = remote._connection
    source = iter(chunks)
    undelivered: collections.deque[pb.CollateRequest] = collections.deque()
    exhausted, failures, stalls = False, 0, 0
    generation, address = conn.generation, conn.pick()  # the set a call was picked from: read before the pick
    while undelivered or not exhausted:
        outbox: queue.SimpleQueue[pb.CollateRequest | None] = queue.SimpleQueue()
        for request in undelivered:  # a new call starts with what the last one did not deliver
            outbox.put(request)
        if exhausted:
            outbox.put(None)
        watch = _StallWatch(conn, address, stalls)
        call = conn.collate_stream(address, iter(outbox.get, None))
        watch.start(call)
        batches = _assembled(iter(call), watch, allocate)
        ends_at, ending = time.monotonic() + STREAM_SPAN_S, False
        try:
            while undelivered or not (exhausted or ending):
                while not (exhausted or ending) and len(undelivered) < prefetch:
                    chunk = next(source, None)
                    if chunk is None:
                        exhausted = True
                        outbox.put(None)  # the requests end: the server ends the call once it has answered them
                        break
                    index, rows = chunk
                    request = collate_request(
                        remote.processor, remote.fingerprint, remote._options_msg, rows, index, remote.ragged
                    )
                    undelivered.append(request)
                    outbox.put(request)
                if not undelivered:
                    break
                batch = next(batches, None)
                expected = undelivered[0].batch_index
                if batch is None:
                    raise ServiceUnavailable(f"the CollateStream on {address} ended before batch {expected}")
                if batch[0] != expected:
                    raise ServiceUnavailable(f"{address} answered batch {batch[0]} for {expected}")
                undelivered.popleft()
                yield batch
                failures, stalls = 0, 0
                conn.addresses()  # re-resolves a DNS target when due
                if not (exhausted or ending) and (time.monotonic() > ends_at or conn.generation != generation):
                    ending = True  # the requests sent are answered here; the next ones go to a new call
                    outbox.put(None)
            if next(batches, None) is not None:  # every request is answered: the server ends the call
                raise ServiceUnavailable(f"the CollateStream on {address} sent a batch after its last one")
            generation, address = conn.generation, conn.pick()  # the next call may go to another replica
        except grpc.RpcError as err:
            if stop is not None and stop.is_set():
                return
            if undelivered:  # (a call that failed after its last answer lost nothing)
                waited_for = str(undelivered[0].batch_index)
                failures, stalls = _failed_stream(conn, address, err, watch, failures, stalls, waited_for)
            generation, address = conn.generation, conn.pick(avoid=(address,))
        finally:
            outbox.put(None)  # gRPC's thread reading the requests must not wait on this queue forever
            watch.close()
            call.cancel()
