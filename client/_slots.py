"""Shared-memory slots that carry finished batches from the receiver process to the trainer without a copy.

The receiver owns a pool of anonymous shared files (``memfd`` where the OS has it, else an unlinked temporary
file), each mapped in both processes; its file descriptor reaches the trainer once, over a Unix socket. A
batch is assembled straight into a free slot; the trainer turns the slot's bytes into tensors that view it,
and the slot goes back to the pool only when the last of those tensors is garbage collected, so a batch the
trainer still holds is never overwritten. Nothing here has a name in the file system, so nothing can leak.
"""

from __future__ import annotations

import collections
import itertools
import math
import mmap
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

import numpy as np

from feedline.proto._codec import DTYPES, DecodedBatch

__all__ = ["Allocator", "Field", "SlotMaps", "SlotPool", "describe", "send_slot"]

MIN_SLOT_BYTES = 1 << 20

Field = tuple[str, str, tuple[int, ...], int]
"""One tensor of a batch in a slot: name, wire dtype tag, shape, byte offset from the slot's start."""


def _shared_file(size: int) -> int:
    """A file descriptor of ``size`` bytes of shared memory that has no name anywhere."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("feedline-batch", os.MFD_CLOEXEC)
    else:
        fd, path = tempfile.mkstemp(prefix="feedline-batch-")
        os.unlink(path)
    os.ftruncate(fd, size)
    return fd


def describe(batch: DecodedBatch, base: np.ndarray) -> list[Field]:
    """Where each array of ``batch`` (decoded from the slot view ``base``) lies in the slot."""
    start = base.ctypes.data
    return [
        (name, batch.dtypes.get(name, arr.dtype.name), tuple(arr.shape), arr.ctypes.data - start)
        for name, arr in batch.tensors.items()
    ]


class SlotPool:
    """Receiver side: slots for batches, taken through a run's ``Allocator``, freed when the trainer says so.

    ``announce(slot, size, fd, live)`` tells the trainer about a new slot (it must map it before the first
    batch in it arrives) and which slots still exist. Slots are sized in powers of two from 1 MiB, so batches
    of similar size reuse them.
    """

    def __init__(self, announce: Callable[[int, int, int, Sequence[int]], None]) -> None:
        self._announce = announce
        self._maps: dict[int, mmap.mmap] = {}
        self._free: list[int] = []
        self._lock = threading.Lock()
        self._next_id = 0

    def allocator(self) -> Allocator:
        """Allocations for one run (one producer thread)."""
        return Allocator(self)

    def release(self, slots: Sequence[int]) -> None:
        with self._lock:
            self._free.extend(s for s in slots if s in self._maps)

    def _take(self, nbytes: int) -> tuple[int, np.ndarray]:
        """The smallest free slot that fits ``nbytes`` (a new one if none does) and a view of its start."""
        with self._lock:
            fitting = [s for s in self._free if len(self._maps[s]) >= nbytes]
            if fitting:
                slot = min(fitting, key=lambda s: len(self._maps[s]))
                self._free.remove(slot)
            else:
                slot = self._create(nbytes)
            return slot, np.frombuffer(self._maps[slot], dtype=np.uint8, count=nbytes)

    def _create(self, nbytes: int) -> int:
        size = max(MIN_SLOT_BYTES, 1 << (max(nbytes, 1) - 1).bit_length())
        for small in [s for s in self._free if len(self._maps[s]) < size]:  # too small for batches this size
            self._free.remove(small)
            del self._maps[small]  # unmapped once no view is left; the trainer drops it on the next announce
        slot, self._next_id = self._next_id, self._next_id + 1
        fd = _shared_file(size)
        try:
            self._maps[slot] = mmap.mmap(fd, size)
            self._announce(slot, size, fd, tuple(self._maps))
        finally:
            os.close(fd)
        return slot


class Allocator:
    """One run's allocations, made one batch at a time: a slot taken for a batch that was never lent (its stream
    broke mid-batch) goes back at the run's next allocation or at ``close()``. Per run, so a cancelled run
    still finishing on its thread can never lend or free the slot of the run that replaced it."""

    def __init__(self, pool: SlotPool) -> None:
        self._pool = pool
        self._reserved: int | None = None

    def __call__(self, nbytes: int) -> np.ndarray:
        """A writable view of ``nbytes`` at the start of a slot (``FrameAssembler``'s ``allocate``)."""
        self.close()
        self._reserved, view = self._pool._take(nbytes)
        return view

    def lend(self) -> int:
        """The slot of the last allocation, now the trainer's until it releases it."""
        slot, self._reserved = self._reserved, None
        if slot is None:
            raise RuntimeError("no allocated slot to lend")
        return slot

    def close(self) -> None:
        if self._reserved is not None:
            self._pool.release([self._reserved])
            self._reserved = None


def send_slot(conn: Connection, slot: int, size: int, fd: int, live: Sequence[int]) -> None:
    """Announce a slot on ``conn``: a message, then its file descriptor (SCM_RIGHTS); see SlotMaps.add."""
    conn.send(("slot", slot, size, tuple(live)))
    send_handle(conn, fd, 0)


class SlotMaps:
    """Trainer side: the slots mapped in this process, and tensors that release their slot when collected."""

    def __init__(self) -> None:
        self._maps: dict[int, mmap.mmap] = {}
        self._leases: dict[int, list[weakref.ref[Any]]] = {}
        self.released: collections.deque[int] = collections.deque()  # appended by garbage collection, any thread

    def add(self, conn: Connection, slot: int, size: int, live: Sequence[int]) -> None:
        """Map the slot whose descriptor follows on ``conn``; forget slots the receiver no longer has."""
        fd = recv_handle(conn)
        try:
            self._maps[slot] = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        for old in set(self._maps) - set(live) - {slot}:
            del self._maps[old]

    def tensors(self, slot: int, fields: Sequence[Field], *, pin_memory: bool = False) -> dict[str, Any]:
        """Torch tensors viewing the batch in ``slot``; the slot is released once all of them are collected.

        torch keeps the very array given to ``torch.from_numpy`` alive for as long as any tensor (view,
        ``.numpy()`` result, ...) shares its storage, so a weak reference to each of those arrays says exactly
        when the trainer can no longer see the slot's bytes.
        """
        import torch

        mm = self._maps[slot]
        release = _Release(slot, len(fields), self.released)
        refs, out = [], {}
        for name, tag, shape, offset in fields:
            arr = np.frombuffer(mm, dtype=DTYPES[tag], count=math.prod(shape), offset=offset).reshape(shape)
            if tag == "bfloat16":
                arr = arr.view(np.int16)
            tensor = torch.from_numpy(arr)
            refs.append(weakref.ref(arr, release))
            out[name] = tensor.view(torch.bfloat16) if tag == "bfloat16" else tensor
        self._leases[slot] = refs
        if not refs:  # nothing can hold the slot
            self.released.append(slot)
        if pin_memory:
            out = {name: tensor.pin_memory() for name, tensor in out.items()}
        return out

    def take_released(self) -> list[int]:
        """Slots released since the last call (to tell the receiver)."""
        return [self.released.popleft() for _ in range(len(self.released))]


class _Release:
    """Counts a batch's arrays as they are collected; the last one puts the slot on the released queue."""

    __slots__ = ("_count", "_queue", "_slot", "_total")

    def __init__(self, slot: int, total: int, queue: collections.deque[int]) -> None:
        self._slot, self._total, self._queue = slot, total, queue
        self._count = itertools.count(1)  # next() is atomic: exactly one callback sees the total

    def __call__(self, _ref: Any) -> None:
        if next(self._count) == self._total:
            self._queue.append(self._slot)
