"""The receiver process: gRPC, failover and frame assembly run beside the trainer, not inside it.

A RemoteLoader starts one receiver (a plain ``python -c`` child, so the trainer's main module is never
re-imported and a CUDA context is never forked) and keeps it for its lifetime. For each ``iter()`` the trainer
sends a *run*; the receiver produces that run's batches with the same generators the in-process path uses
(``_sources``), assembles each straight into a shared-memory slot (``_slots``) and sends a small descriptor.
The trainer's share per batch is one message in, a few array views, and one message out.

Messages, trainer -> receiver (control socket):
    ("run", run, spec, released)       start run ``run`` (cancels any other); slots freed since the last run
    ("chunk", run, chunk)              samples mode: one more chunk ``(index, msgpack rows)``, or END
    ("next", run, chunk, released)     the trainer took a batch (one more credit), maybe a chunk, freed slots
    ("cancel", run) / ("stop",)        the trainer stopped iterating / the loader is closing
receiver -> trainer (data socket):
    ("slot", slot, size, live) + fd    a new shared-memory slot (see ``_slots.send_slot``)
    ("batch", run, index, slot, fields) | ("done", run) | ("error", run, error_dict)
The receiver ends when the control socket closes, so it never outlives its trainer.
"""

from __future__ import annotations

import collections
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


class Receiver:
    """Trainer side: starts the receiver process and turns a run's messages into torch batches."""

    def __init__(self) -> None:
        parent_ctrl, child_ctrl = socket.socketpair()
        parent_data, child_data = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        code = "import sys; from feedline.client._receiver import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"
        with child_ctrl, child_data:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code, str(child_ctrl.fileno()), str(child_data.fileno())],
                pass_fds=(child_ctrl.fileno(), child_data.fileno()), env=env, stdin=subprocess.DEVNULL,
            )
        self._ctrl = Connection(parent_ctrl.detach())
        self._data = Connection(parent_data.detach())
        self._slots = SlotMaps()
        self._runs = 0

    @property
    def pid(self) -> int:
        return self._proc.pid

    def batches(self, spec: Mapping[str, Any], chunks: Iterator[tuple[int, Sequence[Mapping[str, Any]]]] | None,
                *, pin_memory: bool = False) -> Iterator[dict[str, Any]]:
        """The batches of one run, in order; ``chunks`` feeds samples mode, ``prefetch`` ahead of the trainer."""
        self._runs += 1
        run = self._runs
        self._ctrl.send(("run", run, dict(spec), self._slots.take_released()))
        if chunks is not None:
            for _ in range(spec["prefetch"]):
                chunk = _packed(next(chunks, END))
                self._ctrl.send(("chunk", run, chunk))
                if chunk == END:
                    chunks = None
                    break
        finished = False
        try:
            while True:
                message = self._recv()
                if message[1] != run:  # a batch of a run the trainer abandoned: its slot is free at once
                    if message[0] == "batch":
                        self._slots.released.append(message[3])
                    continue
                if message[0] == "done":
                    finished = True
                    return
                if message[0] == "error":
                    finished = True
                    raise error_from_dict(message[2])
                _, _, _, slot, fields = message
                batch = self._slots.tensors(slot, fields, pin_memory=pin_memory)
                chunk = None if chunks is None else _packed(next(chunks, END))
                if chunk == END:
                    chunks = None
                self._ctrl.send(("next", run, chunk, self._slots.take_released()))
                yield batch
        finally:
            if not finished:
                self._send_quietly(("cancel", run))

    def _recv(self) -> tuple[Any, ...]:
        while True:
            try:
                message = self._data.recv()
            except (EOFError, OSError):
                raise ServiceUnavailable(
                    f"the feedline receiver process exited (code {self._proc.poll()}); the loader's state_dict() "
                    "still names the next undelivered batch"
                ) from None
            if message[0] != "slot":
                return message
            self._slots.add(self._data, *message[1:])

    def _send_quietly(self, message: tuple[Any, ...]) -> None:
        try:
            self._ctrl.send(message)
        except OSError:  # the receiver is gone already
            pass

    def close(self) -> None:
        """Stop the receiver process and wait for it (killed if it does not stop within 5 s)."""
        self._send_quietly(("stop",))
        self._ctrl.close()
        self._data.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


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

    def chunk(self, chunk: Any) -> None:
        if chunk is not None:
            self._chunks.put(chunk)

    def consumed(self) -> None:
        with self._room:
            if self._sent:
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
        remote = self.spec["remote"]
        if self.spec["mode"] == "dataset":
            request = pb.StreamDatasetRequest.FromString(self.spec["request"])
            blobs = dataset_blobs(remote, request, allocate=self._pool.allocate, stop=self.stop)
        else:
            blobs = sample_blobs(remote, self._rows(), self.spec["prefetch"], allocate=self._pool.allocate,
                                 stop=self.stop)
        try:
            for index, blob in blobs:
                if not self._wait_for_room():
                    return
                fields = describe(decode_batch(blob), blob)
                with self._room:
                    self._sent.append(blob.nbytes)
                self._out.send(("batch", self.run, index, self._pool.lend(), fields))
            self._out.send(("done", self.run))
        except FeedlineError as exc:
            if not self.stop.is_set():
                self._out.send(("error", self.run, exc.to_dict()))
        except Exception as exc:  # noqa: BLE001 - anything else still reaches the trainer, never a silent hang
            if not self.stop.is_set():
                self._out.send(("error", self.run, ServiceUnavailable(f"receiver: {exc!r}").to_dict()))
        finally:
            blobs.close()
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
            elif current is not None and message[1] == current.run:
                if kind == "chunk":
                    current.chunk(message[2])
                elif kind == "next":
                    pool.release(message[3])
                    current.chunk(message[2])
                    current.consumed()
                elif kind == "cancel":
                    current.cancel()
                    current = None
            elif kind == "next":
                pool.release(message[3])
    finally:
        if current is not None:
            current.cancel()
