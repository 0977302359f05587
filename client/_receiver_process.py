"""The receiver process's side: control messages in, runs produced into shared-memory slots, descriptors out.

Started by ``_receiver.Receiver`` as ``python -c "...serve(ctrl_fd, data_fd)"``; the message protocol is
described there. One run at a time produces batches on its own thread with the same generators the
in-process path uses (``_sources``); a new run, a cancel or the end of the control socket stops it.
"""

from __future__ import annotations

import collections
import queue
import signal
import threading
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from feedline.proto import FeedlineError, ServiceUnavailable
from feedline.proto._codec import DecodedBatch, decode_batch
from feedline.proto._framing import aligned_buffer
from feedline.proto._ragged import RAGGED_META, expand, expanded_nbytes
from feedline.proto.v1 import feedline_pb2 as pb

from ._slots import Allocator, SlotPool, describe, send_slot
from ._sources import dataset_blobs, sample_blobs

__all__ = ["END", "serve"]

END = "end"
"""Samples mode: the trainer has no more chunks."""
_TRAINER_META = ("reports", "dataset_fingerprint")
"""What of a batch's metadata goes to the trainer with it (the loader's reports and state)."""


class _Out:
    """The data socket, one sender at a time (a slot announcement is a message and a descriptor)."""

    def __init__(self, conn: Connection) -> None:
        self._conn, self._lock = conn, threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._conn.send(message)

    def announce(self, slot: int, size: int, fd: int, live: Sequence[int]) -> None:
        with self._lock:
            send_slot(self._conn, slot, size, fd, live)


class _Staging:
    """The one private buffer a ragged run's batches arrive in, reused batch after batch (each is padded out of
    it into a slot before the next is assembled), grown to the largest batch seen."""

    def __init__(self) -> None:
        self._buffer = aligned_buffer(0)

    def __call__(self, nbytes: int) -> np.ndarray:
        if len(self._buffer) < nbytes:
            self._buffer = aligned_buffer(1 << (nbytes - 1).bit_length())
        return self._buffer[:nbytes]


class _Run:
    """One run's producer thread, bounded by the trainer's credits (``prefetch`` batches, ``max_bytes``)."""

    def __init__(self, run: int, spec: dict[str, Any], pool: SlotPool, out: _Out) -> None:
        self.run, self.spec, self._pool, self._out = run, spec, pool, out
        self.stop = threading.Event()
        self._chunks: queue.Queue[Any] = queue.Queue()
        self._sent: collections.deque[int] = collections.deque()
        self._room = threading.Condition()
        threading.Thread(target=self._produce, name=f"feedline-run-{run}", daemon=True).start()

    def feed(self, chunks: list[Any], consumed: int) -> None:
        """Chunks to collate (samples mode) and the number of batches the trainer took since the last call."""
        for chunk in chunks:
            self._chunks.put(chunk)
        with self._room:
            for _ in range(min(consumed, len(self._sent))):
                self._sent.popleft()
            self._room.notify_all()

    def cancel(self) -> None:
        self.stop.set()
        self._chunks.put(END)
        with self._room:
            self._room.notify_all()
        self.spec["remote"]._connection.close()  # fails the call in flight, so the thread sees the stop

    def _wait_for_room(self) -> bool:
        prefetch, max_bytes = self.spec["prefetch"], self.spec["max_bytes"]
        with self._room:
            while (
                not self.stop.is_set() and self._sent and (len(self._sent) >= prefetch or sum(self._sent) >= max_bytes)
            ):
                self._room.wait()
        return not self.stop.is_set()

    def _rows(self) -> Iterator[Any]:
        """The trainer's chunks, rows still msgpack bytes: they go into the requests without a decode."""
        while (chunk := self._chunks.get()) != END:
            yield chunk[0], chunk[1]

    def _produce(self) -> None:
        remote, slots = self.spec["remote"], self._pool.allocator()
        # A ragged run's batches are padded on their way into a slot, so they arrive in a reused private buffer;
        # a padded run's arrive straight in a slot, where the trainer will read them.
        staging = _Staging() if remote.ragged else None
        allocate = slots if staging is None else staging
        if self.spec["mode"] == "dataset":
            request = pb.StreamDatasetRequest.FromString(self.spec["request"])
            request.start_batch_index = self.spec["start"]
            blobs = dataset_blobs(remote, request, allocate=allocate, stop=self.stop)
        else:
            blobs = sample_blobs(remote, self._rows(), self.spec["prefetch"], allocate=allocate, stop=self.stop)
        reported: dict[str, int] = {}
        try:
            for index, blob in blobs:
                if not self._wait_for_room():
                    return
                decoded = decode_batch(blob)
                if staging is not None or RAGGED_META in decoded.meta:
                    blob, decoded = _into_slot(blob, decoded, slots, in_slot=staging is None)
                meta = {k: decoded.meta[k] for k in _TRAINER_META if k in decoded.meta}
                with self._room:
                    self._sent.append(blob.nbytes)
                if remote._connection.stats != reported:  # failovers, hedges, stalls: the loader's counters
                    reported = dict(remote._connection.stats)
                    self._out.send(("stats", self.run, reported))
                self._out.send(("batch", self.run, index, slots.lend(), describe(decoded, blob), meta))
            self._out.send(("stats", self.run, dict(remote._connection.stats)))
            self._out.send(("done", self.run))
        except FeedlineError as exc:
            if not self.stop.is_set():
                self._out.send(("error", self.run, exc.to_dict()))
        except Exception as exc:  # noqa: BLE001 - anything else still reaches the trainer, never a silent hang
            if not self.stop.is_set():
                self._out.send(("error", self.run, ServiceUnavailable(f"receiver: {exc!r}").to_dict()))
        finally:
            close = getattr(blobs, "close", None)  # a generator: stop it and its calls now, not at collection
            if close is not None:
                close()
            slots.close()
            remote._connection.close()


def _into_slot(
    blob: np.ndarray, decoded: DecodedBatch, slots: Allocator, *, in_slot: bool
) -> tuple[np.ndarray, DecodedBatch]:
    """The batch in a slot of its own, its ragged rows padded on the way. A ragged blob that arrived in a slot
    (``in_slot``) is copied out first: the slot taken for the padded batch may be the one it came in."""
    if in_slot:
        blob = blob.copy()
        decoded = decode_batch(blob)
    if RAGGED_META in decoded.meta:
        out = slots(expanded_nbytes(decoded))
        return out, expand(decoded, into=out)
    out = slots(blob.nbytes)
    out[...] = blob
    return out, decode_batch(out)


def serve(ctrl_fd: int, data_fd: int) -> None:
    """The receiver process's main loop: control messages in, runs started and fed, until the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; we end with its socket
    ctrl, out = Connection(ctrl_fd), _Out(Connection(data_fd))
    pool = SlotPool(out.announce)
    current: _Run | None = None
    try:
        while True:
            try:
                message = ctrl.recv()
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "stop":
                return
            if kind == "run":
                pool.release(message[3])
                if current is not None:
                    current.cancel()
                current = _Run(message[1], message[2], pool, out)
            elif kind == "next":
                pool.release(message[3])
                if current is not None and message[1] == current.run:
                    current.feed(message[2], message[4])
            elif kind == "cancel" and current is not None and message[1] == current.run:
                current.cancel()
                current = None
    finally:
        if current is not None:
            current.cancel()
