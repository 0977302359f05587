"""The receiver process: gRPC, failover and frame assembly run beside the trainer, not inside it.

A RemoteLoader starts one receiver (a plain ``python -c`` child, so the trainer's main module is never
re-imported and a CUDA context is never forked) and keeps it for its lifetime. For each ``iter()`` the trainer
sends a *run*; the receiver produces that run's batches with the same generators the in-process path uses
(``_sources``), assembles each straight into a shared-memory slot (``_slots``) and sends a small descriptor.
The trainer's share per batch is one message in, a few array views, and one message out.

Messages, trainer -> receiver (control socket):
    ("run", run, spec, released)       start run ``run`` (cancels any other); slots freed since the last run
    ("next", run, chunks, released, n) the trainer took ``n`` more batches (credits), freed these slots, and
                                       (samples mode) sends more chunks ``(index, msgpack rows)``, then END
    ("cancel", run) / ("stop",)        the trainer stopped iterating / the loader is closing
receiver -> trainer (data socket):
    ("slot", slot, size, live) + fd    a new shared-memory slot (see ``_slots.send_slot``)
    ("batch", run, index, slot, fields) | ("done", run) | ("error", run, error_dict)
The receiver ends when the control socket closes, so it never outlives its trainer. If it dies, the trainer
starts another and continues the run from the next undelivered batch (samples mode sends the undelivered
chunks again), so a lost receiver neither loses nor repeats a batch.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from feedline.proto import FeedlineError, InvalidSample, ServiceUnavailable, error_from_dict
from feedline.proto._codec import decode_batch
from feedline.proto.v1 import feedline_pb2 as pb

from ._slots import SlotMaps, SlotPool, describe, send_slot
from ._sources import dataset_blobs, sample_blobs

__all__ = ["END", "Receiver", "serve"]

END = "end"
"""Samples mode: the trainer has no more chunks."""

_LOGGER = logging.getLogger("feedline.client")


class _Died(Exception):
    """The receiver process went away (killed, crashed): the run can continue on a new one."""


class _Child:
    """One receiver process, its two sockets, and the slots it has shared with this process."""

    def __init__(self) -> None:
        parent_ctrl, child_ctrl = socket.socketpair()
        parent_data, child_data = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        code = "import sys; from feedline.client._receiver import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"
        with child_ctrl, child_data:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(child_ctrl.fileno()), str(child_data.fileno())],
                pass_fds=(child_ctrl.fileno(), child_data.fileno()), env=env, stdin=subprocess.DEVNULL,
            )
        self._ctrl = Connection(parent_ctrl.detach())
        self._data = Connection(parent_data.detach())
        self.slots = SlotMaps()

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self._ctrl.send(message)
        except OSError:
            raise _Died(f"exit code {self.proc.poll()}") from None

    def recv(self) -> tuple[Any, ...]:
        """The next message that is not a slot announcement (those are mapped on the way)."""
        while True:
            try:
                message = self._data.recv()
                if message[0] != "slot":
                    return message
                self.slots.add(self._data, *message[1:])
            except (EOFError, OSError):
                raise _Died(f"exit code {self.proc.poll()}") from None

    def close(self) -> None:
        """Ask the process to stop and wait for it (killed if it does not stop within 5 s)."""
        try:
            self._ctrl.send(("stop",))
        except OSError:
            pass
        self._ctrl.close()
        self._data.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Feed:
    """Samples mode, trainer side: ``ahead`` chunks sent ahead of delivery, kept until delivered so that a new
    receiver can be sent them again."""

    def __init__(self, chunks: Iterator[tuple[int, Sequence[Mapping[str, Any]]]], ahead: int) -> None:
        self._chunks: Iterator[Any] | None = chunks
        self._ahead = ahead
        self._unsent: collections.deque[tuple[int, bytes]] = collections.deque()
        self._undelivered: collections.deque[tuple[int, bytes]] = collections.deque()

    def restart(self) -> list[tuple[int, bytes] | str]:
        """What a new run must be sent first: every undelivered chunk again, then new ones up to ``ahead``."""
        self._unsent.extendleft(reversed(self._undelivered))
        self._undelivered.clear()
        out = [self._take() for _ in range(self._ahead)]
        return [c for c in out if c is not None] + ([END] if self._chunks is None else [])

    def delivered(self) -> tuple[int, bytes] | str | None:
        """The trainer took the oldest chunk's batch: the next chunk to send, END once, or None."""
        self._undelivered.popleft()
        had_chunks = self._chunks is not None
        chunk = self._take()
        return chunk if chunk is not None else (END if had_chunks and self._chunks is None else None)

    def _take(self) -> tuple[int, bytes] | None:
        if self._unsent:
            chunk = self._unsent.popleft()
        elif self._chunks is not None and (raw := next(self._chunks, None)) is not None:
            chunk = _packed(raw)
        else:
            self._chunks = None
            return None
        self._undelivered.append(chunk)
        return chunk


class Receiver:
    """Trainer side: runs batches through a receiver process, and a new one if it dies (nothing lost or repeated)."""

    max_restarts = 3
    """Receivers that may die one after another without delivering a batch before the run fails."""

    def __init__(self) -> None:
        self._child = _Child()
        self._runs = 0

    @property
    def pid(self) -> int:
        return self._child.proc.pid

    def batches(self, spec: Mapping[str, Any], chunks: Iterator[tuple[int, Sequence[Mapping[str, Any]]]] | None,
                *, pin_memory: bool = False) -> Iterator[dict[str, Any]]:
        """The batches of one run from ``spec["start"]`` on, in order; ``chunks`` feeds samples mode."""
        # The receiver pulls chunk i + prefetch before it can deliver batch i + 1, and the trainer answers once
        # per `every` batches: so many more chunks must be out for the pipeline never to wait on the trainer.
        ahead = spec["prefetch"] + _every(spec["prefetch"]) - 1
        feed = _Feed(chunks, ahead) if chunks is not None else None
        spec, deaths = dict(spec), 0
        while True:
            try:
                for index, batch in self._attempt(spec, feed, pin_memory):
                    spec["start"], deaths = index + 1, 0
                    yield batch
                return
            except _Died as died:
                deaths += 1
                if deaths > self.max_restarts:
                    raise ServiceUnavailable(
                        f"the feedline receiver process died {deaths} times without delivering a batch ({died}); "
                        "RemoteLoader(offload=False) receives in the trainer process instead"
                    ) from None
                _LOGGER.warning("receiver process died (%s); continuing from batch %d on a new one", died,
                                spec["start"])
                self._child.close()
                self._child = _Child()

    def _attempt(self, spec: dict[str, Any], feed: _Feed | None,
                 pin_memory: bool) -> Iterator[tuple[int, dict[str, Any]]]:
        child = self._child
        self._runs += 1
        run = self._runs
        child.send(("run", run, spec, child.slots.take_released()))
        if feed is not None:
            child.send(("next", run, feed.restart(), [], 0))
        every = _every(spec["prefetch"])
        taken, chunks = 0, []
        finished = False
        try:
            while True:
                message = child.recv()
                if message[1] != run:  # a batch of a run the trainer abandoned: its slot is free at once
                    if message[0] == "batch":
                        child.slots.released.append(message[3])
                    continue
                if message[0] == "done":
                    finished = True
                    return
                if message[0] == "error":
                    finished = True
                    raise error_from_dict(message[2])
                _, _, index, slot, fields = message
                batch = child.slots.tensors(slot, fields, pin_memory=pin_memory)
                taken += 1
                chunk = feed.delivered() if feed is not None else None
                if chunk is not None:
                    chunks.append(chunk)
                if taken == every:  # credits, freed slots and new chunks go back in one message per `every`
                    child.send(("next", run, chunks, child.slots.take_released(), taken))
                    taken, chunks = 0, []
                yield index, batch
        except _Died:
            finished = True
            raise
        finally:
            if not finished:
                try:
                    child.send(("cancel", run))
                except _Died:
                    pass

    def close(self) -> None:
        """Stop the receiver process."""
        self._child.close()


def _every(prefetch: int) -> int:
    """How many batches the trainer takes per message back: half the prefetch, so the receiver always has
    the other half to deliver meanwhile (one message per batch would wake it, and cost, twice as often)."""
    return max(1, prefetch // 2)


def _packed(chunk: tuple[int, Sequence[Mapping[str, Any]]] | str) -> tuple[int, bytes] | str:
    """A chunk's rows as msgpack (a third of pickle's cost on chat rows); rows msgpack cannot hold are an
    InvalidSample naming the row, raised here in the trainer."""
    if chunk == END:
        return END
    index, rows = chunk
    try:
        return index, msgpack.packb(rows)
    except (TypeError, ValueError, OverflowError):
        for i, row in enumerate(rows):
            try:
                msgpack.packb(row)
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidSample(f"row cannot be serialised: {exc}", sample=i) from None
        raise


# ----------------------------------------------------------------------------------------------- receiver side
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
        self._thread = threading.Thread(target=self._produce, name=f"feedline-run-{run}", daemon=True)
        self._thread.start()

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
        self.spec["remote"]._replicas.close()  # fails the call in flight, so the thread sees the stop

    def _wait_for_room(self) -> bool:
        prefetch, max_bytes = self.spec["prefetch"], self.spec["max_bytes"]
        with self._room:
            while not self.stop.is_set() and self._sent and (
                len(self._sent) >= prefetch or sum(self._sent) >= max_bytes
            ):
                self._room.wait()
        return not self.stop.is_set()

    def _rows(self) -> Iterator[Any]:
        while (chunk := self._chunks.get()) != END:
            yield chunk[0], msgpack.unpackb(chunk[1])

    def _produce(self) -> None:
        remote, allocate = self.spec["remote"], self._pool.allocator()
        if self.spec["mode"] == "dataset":
            request = pb.StreamDatasetRequest.FromString(self.spec["request"])
            request.start_batch_index = self.spec["start"]
            blobs = dataset_blobs(remote, request, allocate=allocate, stop=self.stop)
        else:
            blobs = sample_blobs(remote, self._rows(), self.spec["prefetch"], allocate=allocate, stop=self.stop)
        try:
            for index, blob in blobs:
                if not self._wait_for_room():
                    return
                fields = describe(decode_batch(blob), blob)
                with self._room:
                    self._sent.append(blob.nbytes)
                self._out.send(("batch", self.run, index, allocate.lend(), fields))
            self._out.send(("done", self.run))
        except FeedlineError as exc:
            if not self.stop.is_set():
                self._out.send(("error", self.run, exc.to_dict()))
        except Exception as exc:  # noqa: BLE001 - anything else still reaches the trainer, never a silent hang
            if not self.stop.is_set():
                self._out.send(("error", self.run, ServiceUnavailable(f"receiver: {exc!r}").to_dict()))
        finally:
            blobs.close()
            allocate.close()
            remote._replicas.close()


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
