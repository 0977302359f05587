"""GPU check of the receiver's shared-memory batches with ``pin_memory=True`` (needs CUDA; not part of CI).

    python scripts/check_pin_memory_gpu.py      # from a checkout where feedline.client imports

A batch is written into a shared-memory slot exactly as the receiver process does (SlotPool, SlotMaps over a
real Unix socket with the slot's descriptor passed by SCM_RIGHTS). Checked: tensors built with pin_memory are
pinned, equal the source, copy to the GPU asynchronously and correctly, and free their slot at once (the
pinned copies do not view it); unpinned tensors moved to the GPU keep their slot until they are collected.
Prints one line per check and exits non-zero on the first failure.
"""

from __future__ import annotations

import gc
import socket
import sys
from multiprocessing.connection import Connection

import numpy as np
import torch

from feedline.client._slots import SlotMaps, SlotPool, describe, send_slot
from feedline.proto._codec import decode_batch, encode_batch, float32_to_bfloat16


def main() -> int:
    assert torch.cuda.is_available(), "no CUDA device"
    a, b = socket.socketpair()
    sender, receiver = Connection(a.detach()), Connection(b.detach())
    maps = SlotMaps()

    def announce(slot: int, size: int, fd: int, live: object) -> None:
        send_slot(sender, slot, size, fd, live)  # type: ignore[arg-type]
        maps.add(receiver, *receiver.recv()[1:])

    pool = SlotPool(announce)
    rng = np.random.default_rng(0)
    source = {
        "input_ids": rng.integers(0, 150_000, (8, 4096), dtype=np.int64),
        "pixel_values": float32_to_bfloat16(rng.standard_normal((64, 1176), dtype=np.float32)),
    }

    def put() -> tuple[int, list]:
        blob = encode_batch(source, dtype_tags={"pixel_values": "bfloat16"})
        allocate = pool.allocator()
        view = allocate(len(blob))
        view[:] = np.frombuffer(blob, dtype=np.uint8)
        return allocate.lend(), describe(decode_batch(view), view)

    slot, fields = put()
    pinned = maps.tensors(slot, fields, pin_memory=True)
    gc.collect()
    assert all(t.is_pinned() for t in pinned.values()), "not pinned"
    assert maps.take_released() == [slot], "pinned copies still hold the slot"
    on_gpu = {k: t.to("cuda", non_blocking=True) for k, t in pinned.items()}
    torch.cuda.synchronize()
    assert torch.equal(on_gpu["input_ids"].cpu(), torch.from_numpy(source["input_ids"]))
    assert torch.equal(
        on_gpu["pixel_values"].cpu().view(torch.int16), torch.from_numpy(source["pixel_values"].view(np.int16))
    )
    print("pin_memory=True: pinned, equal after a non-blocking copy to", torch.cuda.get_device_name(), "; slot freed")

    slot, fields = put()
    plain = maps.tensors(slot, fields)
    moved = plain["input_ids"].cuda()
    gc.collect()
    assert maps.take_released() == [], "slot freed while tensors view it"
    del plain
    gc.collect()
    assert maps.take_released() == [slot], "slot not freed after its tensors were collected"
    assert torch.equal(moved.cpu(), torch.from_numpy(source["input_ids"]))
    print("pin_memory=False: slot held while the CPU tensors live, freed after; GPU copy equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
