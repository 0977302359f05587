"""The receiver process: gRPC, failover and frame assembly run beside the trainer, not inside it.

A RemoteLoader starts one receiver (a plain ``python -c`` child, so the trainer's main module is never
re-imported and a CUDA context is never forked) and keeps it for its lifetime. For each ``iter()`` the trainer
sends a *run*; the receiver produces that run's batches with the same generators the in-process path uses
(``_sources``), puts each in a shared-memory slot (``_slots``: assembled there, or padded there from a ragged
wire form) and sends a small descriptor.
The trainer's share per batch is one message in and a few array views; one message goes back per
``prefetch // 2`` batches. The receiver's side is ``_receiver_process``.

Messages, trainer -> receiver (control socket):
    ("run", run, spec, released)       start run ``run`` (cancels any other); slots freed since the last run
    ("next", run, chunks, released, n) the trainer took ``n`` more batches (credits), freed these slots, and
                                       (samples mode) sends more chunks ``(index, msgpack rows)``, then END
    ("cancel", run) / ("stop",)        the trainer stopped iterating / the loader is closing
receiver -> trainer (data socket):
    ("slot", slot, size, live) + fd    a new shared-memory slot (see ``_slots.send_slot``)
    ("batch", run, index, slot, fields, meta) | ("done", run) | ("error", run, error_dict)
                                       meta: the batch's reports and dataset fingerprint
    ("stats", run, counters)           the run's connection counters (failovers, hedges...), when they change
The receiver ends when the control socket closes, so it never outlives its trainer. If it dies, the trainer
starts another and continues the run from the next undelivered batch (samples mode sends the undelivered
chunks again), so a lost receiver neither loses nor repeats a batch.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from feedline.proto import ServiceUnavailable, error_from_dict

from ._receiver_process import END
from ._requests import pack_rows
from ._slots import SlotMaps

__all__ = ["Receiver"]

_LOGGER = logging.getLogger("feedline.client")


class _Died(Exception):
    """The receiver process went away (killed, crashed): the run can continue on a new one."""


class _Child:
    """One receiver process, its two sockets, and the slots it has shared with this process."""

    def __init__(self) -> None:
        parent_ctrl, child_ctrl = socket.socketpair()
        parent_data, child_data = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        code = (
            "import sys; from feedline.client._receiver_process import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"
        )
        with child_ctrl, child_data:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(child_ctrl.fileno()), str(child_data.fileno())],
                pass_fds=(child_ctrl.fileno(), child_data.fileno()),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        self._ctrl = Connection(parent_ctrl.detach())
        self._data = Connection(parent_data.detach())
        self.slots = SlotMaps()
        self.stats: dict[int, dict[str, int]] = {}  # run -> its connection's counters (see Receiver.stats)

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self._ctrl.send(message)
        except OSError:
            raise _Died(f"exit code {self.proc.poll()}") from None

    def recv(self) -> tuple[Any, ...]:
        """The next message that is not a slot announcement (those are mapped on the way)."""
        while True:
            try:
                message: tuple[Any, ...] = self._data.recv()
                if message[0] == "stats":
                    self.stats[message[1]] = message[2]
                elif message[0] != "slot":
                    return message
                else:
                    self.slots.add(self._data, *message[1:])
            except (EOFError, OSError):
                raise _Died(f"exit code {self.proc.poll()}") from None

    def close(self) -> None:
        """Ask the process to stop and wait for it (killed if it does not stop within 5 s)."""
        with contextlib.suppress(OSError):
            self._ctrl.send(("stop",))
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
        self._past: collections.Counter[str] = collections.Counter()  # counters of earlier runs and receivers

    @property
    def pid(self) -> int:
        return self._child.proc.pid

    @property
    def stats(self) -> dict[str, int]:
        """Connection counters summed over every run (failovers, hedges, stalls, refused replicas...)."""
        total = collections.Counter(self._past)
        for counters in self._child.stats.values():
            total.update(counters)
        return dict(total)

    def _fold_stats(self) -> None:
        """Keep one total for finished runs, so the counters stay a few integers however many runs there were."""
        for counters in self._child.stats.values():
            self._past.update(counters)
        self._child.stats.clear()

    def batches(
        self,
        spec: Mapping[str, Any],
        chunks: Iterator[tuple[int, Sequence[Mapping[str, Any]]]] | None,
        *,
        pin_memory: bool = False,
    ) -> Iterator[tuple[int, dict[str, Any], Mapping[str, Any]]]:
        """``(index, tensors, meta)`` of one run from ``spec["start"]`` on, in order; ``chunks`` feeds samples mode."""
        # The receiver pulls chunk i + prefetch before it can deliver batch i + 1, and the trainer answers once
        # per `every` batches: so many more chunks must be out for the pipeline never to wait on the trainer.
        ahead = spec["prefetch"] + _every(spec["prefetch"]) - 1
        feed = _Feed(chunks, ahead) if chunks is not None else None
        spec, deaths = dict(spec), 0
        while True:
            try:
                for index, batch, meta in self._attempt(spec, feed, pin_memory):
                    spec["start"], deaths = index + 1, 0
                    yield index, batch, meta
                return
            except _Died as died:
                deaths += 1
                if deaths > self.max_restarts:
                    raise ServiceUnavailable(
                        f"the feedline receiver process died {deaths} times without delivering a batch ({died}); "
                        "RemoteLoader(offload=False) receives in the trainer process instead"
                    ) from None
                _LOGGER.warning(
                    "receiver process died (%s); continuing from batch %d on a new one", died, spec["start"]
                )
                self._fold_stats()
                self._child.close()
                self._child = _Child()

    def _attempt(
        self, spec: dict[str, Any], feed: _Feed | None, pin_memory: bool
    ) -> Iterator[tuple[int, dict[str, Any], Mapping[str, Any]]]:
        self._fold_stats()
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
                if self._runs != run:
                    finished = True
                    raise RuntimeError(
                        "this iteration of the RemoteLoader was superseded by a newer iter() of the "
                        "same loader (one receiver serves one iteration at a time)"
                    )
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
                _, _, index, slot, fields, meta = message
                batch = child.slots.tensors(slot, fields, pin_memory=pin_memory)
                taken += 1
                chunk = feed.delivered() if feed is not None else None
                if chunk is not None:
                    chunks.append(chunk)
                if taken == every:  # credits, freed slots and new chunks go back in one message per `every`
                    # A receiver that died after sending this batch is noticed at the next recv, once the batches
                    # it sent before dying are delivered: this one is yielded, its chunk is not sent again.
                    with contextlib.suppress(_Died):
                        child.send(("next", run, chunks, child.slots.take_released(), taken))
                    taken, chunks = 0, []
                yield index, batch, meta
        except _Died:
            finished = True
            raise
        finally:
            if not finished:
                with contextlib.suppress(_Died):
                    child.send(("cancel", run))

    def close(self) -> None:
        """Stop the receiver process."""
        self._child.close()


def _every(prefetch: int) -> int:
    """How many batches the trainer takes per message back: half the prefetch, so the receiver always has
    the other half to deliver meanwhile (one message per batch would wake it, and cost, twice as often)."""
    return max(1, prefetch // 2)


def _packed(chunk: tuple[int, Sequence[Mapping[str, Any]]]) -> tuple[int, bytes]:
    """A chunk's rows as one msgpack array, the bytes the receiver puts into the request as they are (rows
    are serialised once, here in the trainer, which also names a row msgpack cannot hold)."""
    index, rows = chunk
    return index, pack_rows(rows)
