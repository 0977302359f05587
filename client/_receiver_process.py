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

from feedline.proto import FeedlineError, ServiceUnavailable
from feedline.proto._codec import decode_batch
from feedline.proto._ragged import RAGGED_META, expand, expanded_nbytes
from feedline.proto.v1 import feedline_pb2 as pb

from ._slots import SlotPool, describe, send_slot
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
        remote, allocate = self.spec["remote"], self._pool.allocator()
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
                if RAGGED_META in decoded.meta:  # padded here, straight into a slot of the padded size
                    source = decode_batch(blob.copy())  # the slot it came in may be the one taken for it
                    blob = allocate(expanded_nbytes(source))
                    decoded = expand(source, into=blob)
                meta = {k: decoded.meta[k] for k in _TRAINER_META if k in decoded.meta}
                with self._room:
                    self._sent.append(blob.nbytes)
                if remote._connection.stats != reported:  # failovers, hedges, stalls: the loader's counters
                    reported = dict(remote._connection.stats)
                    self._out.send(("stats", self.run, reported))
                self._out.send(("batch", self.run, index, allocate.lend(), describe(decoded, blob), meta))
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
            allocate.close()
            remote._connection.close()


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
