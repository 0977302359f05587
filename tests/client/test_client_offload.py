"""The receiver process: shared-memory slots, their release, errors and lifetime, against a real server."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
import torch

from feedline.client import RemoteLoader
from feedline.client._receiver_process import _into_slot, _Staging
from feedline.client._slots import SlotMaps, SlotPool, describe
from feedline.proto import InvalidOptions, InvalidSample
from feedline.proto._codec import decode_batch, encode_batch, float32_to_bfloat16
from feedline.service import CollateOptions, Processor, collate
from feedline.service.server import Limits, ProcessorRegistry, ServingState
from feedline.service.server._requests import CollateResult
from tests.support.reliability_harness import wait_for

N_ROWS = 29


def _rows(n: int = N_ROWS) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Q{i}: " + "why " * (i % 5)},
                {"role": "assistant", "content": f"A{i}. " + "because " * (i % 9)},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def server(qwen_processor: Processor, tmp_path_factory: pytest.TempPathFactory, in_process: Any) -> str:
    root = tmp_path_factory.mktemp("offload-data")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    state = ServingState(ProcessorRegistry.of(qwen_processor), limits=Limits(), data_roots=[root])
    return str(in_process(state).grpc_target)


def _loader(server: str | list[str], mode: str, **kw: Any) -> RemoteLoader:
    source: dict[str, Any] = {"dataset": "train.jsonl", "seed": 3} if mode == "dataset" else {"samples": _rows()}
    return RemoteLoader(server, "qwen2.5", **source, **kw)


def _bytes(batch: dict[str, torch.Tensor]) -> bytes:
    return b"".join(k.encode() + batch[k].numpy().tobytes() for k in sorted(batch))


# ----------------------------------------------------------------------------------------- slots, no server
def _pool_and_maps() -> tuple[SlotPool, SlotMaps, Connection, Connection]:
    a, b = socket.socketpair()
    sender, receiver = Connection(a.detach()), Connection(b.detach())
    maps = SlotMaps()

    def announce(slot: int, size: int, fd: int, live: Any) -> None:
        from feedline.client._slots import send_slot

        send_slot(sender, slot, size, fd, live)
        message = receiver.recv()
        maps.add(receiver, *message[1:])

    return SlotPool(announce), maps, sender, receiver


def _put(pool: SlotPool, tensors: dict[str, np.ndarray], **kw: Any) -> tuple[int, Any]:
    blob = encode_batch(tensors, **kw)
    allocate = pool.allocator()
    view = allocate(len(blob))
    view[:] = np.frombuffer(blob, dtype=np.uint8)
    return allocate.lend(), describe(decode_batch(view), view)


def test_a_slot_is_released_only_when_every_view_of_its_batch_is_gone() -> None:
    pool, maps, *conns = _pool_and_maps()
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    pixels = float32_to_bfloat16(np.linspace(-2, 2, 6, dtype=np.float32))
    slot, fields = _put(pool, {"input_ids": ids, "pixel_values": pixels}, dtype_tags={"pixel_values": "bfloat16"})
    batch = maps.tensors(slot, fields)
    assert torch.equal(batch["input_ids"], torch.from_numpy(ids))
    assert batch["pixel_values"].dtype == torch.bfloat16
    np.testing.assert_array_equal(batch["pixel_values"].view(torch.int16).numpy(), pixels.view(np.int16))
    row = batch["input_ids"][1]  # a torch view
    as_numpy = batch["pixel_values"].view(torch.int16).numpy()  # a numpy view of a torch view
    del batch
    gc.collect()
    assert maps.take_released() == []
    del row
    gc.collect()
    assert maps.take_released() == []
    del as_numpy
    gc.collect()
    assert maps.take_released() == [slot]
    for c in conns:
        c.close()


def test_the_pool_reuses_free_slots_and_grows_only_when_none_fits() -> None:
    pool, maps, *conns = _pool_and_maps()
    small = {"x": np.ones(1000, dtype=np.int64)}
    first, fields = _put(pool, small)
    second, _ = _put(pool, small)  # the first is still lent
    assert first != second
    pool.release([first])
    assert _put(pool, small)[0] == first
    big, _ = _put(pool, {"x": np.ones(300_000, dtype=np.int64)})  # 2.4 MB: no 1 MiB slot fits
    assert big not in (first, second) and len(maps._maps[big]) == 4 << 20
    allocate = pool.allocator()
    view = allocate(10)  # an allocation never lent (its stream broke) is reused by the run's next one
    assert allocate(10).ctypes.data == view.ctypes.data and len(maps._maps) == 4
    other = pool.allocator()  # ... and never by another run while this one holds it
    assert other(10).ctypes.data != view.ctypes.data and len(maps._maps) == 5
    allocate.close()  # the run ended without lending it: free again
    assert pool.allocator()(10).ctypes.data == view.ctypes.data
    for c in conns:
        c.close()


def test_ragged_batches_arrive_in_one_reused_buffer_and_are_padded_into_slots(qwen_processor: Processor) -> None:
    """A ragged run's batches arrive in one private buffer, reused batch after batch, and are padded from it into
    a slot; a padded blob there is copied into a slot as it is; a ragged blob that arrived in a slot is padded
    correctly although the slot taken for the result may be the one it came in."""
    pool, maps, *conns = _pool_and_maps()
    options = CollateOptions()
    engine, blobs = [], []
    for start in (0, 6, 12):
        rows = _rows()[start : start + 6]
        engine.append(collate(qwen_processor, rows, options).tensors)
        ragged = collate(qwen_processor, rows, options, ragged=True)
        blobs.append(np.frombuffer(bytes(CollateResult(qwen_processor, options, ragged).encode(start)), np.uint8))
    staging, slots = _Staging(), pool.allocator()
    kept, first_buffer = [], None
    for blob in blobs:
        arrived = staging(len(blob))
        arrived[:] = blob
        first_buffer = first_buffer or arrived.ctypes.data
        assert arrived.ctypes.data == first_buffer  # the same memory every batch: no fresh buffer per batch
        out, decoded = _into_slot(arrived, decode_batch(arrived), slots, in_slot=False)
        kept.append(maps.tensors(slots.lend(), describe(decoded, out)))
        assert not np.shares_memory(out, arrived)
    for batch, want in zip(kept, engine, strict=True):  # each still intact after the buffer was reused
        assert set(batch) == set(want)
        for key, value in want.items():
            np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=key)
    padded = encode_batch({"input_ids": np.arange(12, dtype=np.int64).reshape(3, 4)})
    arrived = staging(len(padded))
    arrived[:] = np.frombuffer(padded, np.uint8)
    out, decoded = _into_slot(arrived, decode_batch(arrived), slots, in_slot=False)
    assert not np.shares_memory(out, arrived)
    np.testing.assert_array_equal(decoded.tensors["input_ids"], np.arange(12).reshape(3, 4))
    slots.lend()
    in_slot = slots(len(blobs[0]))  # a new slot: every other one is lent
    in_slot[:] = blobs[0]
    out, decoded = _into_slot(in_slot, decode_batch(in_slot), slots, in_slot=True)
    assert out.ctypes.data == in_slot.ctypes.data  # the padded batch was written over the slot it came in
    for key, value in engine[0].items():
        np.testing.assert_array_equal(decoded.tensors[key], value, err_msg=key)
    for c in conns:
        c.close()


# ----------------------------------------------------------------------------------------- against a server
@pytest.mark.parametrize("mode", ["samples", "dataset"])
def test_offloaded_batches_equal_the_in_process_ones(server: str, mode: str) -> None:
    threaded = [_bytes(b) for b in _loader(server, mode, batch_size=4, offload=False)]
    loader = _loader(server, mode, batch_size=4, prefetch=2)
    assert loader.offload
    held = list(loader)  # every batch held at once: the pool must grow, never overwrite
    assert [_bytes(b) for b in held] == threaded and len(threaded) == 8
    assert loader.receiver_pid is not None
    loader.close()


def test_slots_are_reused_while_a_kept_view_stays_intact(server: str) -> None:
    loader = _loader(server, "dataset", batch_size=1, prefetch=2)
    kept, copy = None, None
    for i, batch in enumerate(loader):
        if i == 0:
            kept = batch["input_ids"][0, 1:]  # a view into the first slot, kept to the end
            copy = kept.clone()
    assert i == N_ROWS - 1 and kept is not None and torch.equal(kept, copy)
    slots = loader._receiver_process._child.slots._maps  # 29 batches through a handful of slots
    assert len(slots) <= 2 + 4, sorted(slots)
    loader.close()


@pytest.mark.parametrize("mode", ["samples", "dataset"])
def test_an_abandoned_epoch_does_not_leak_into_the_next(server: str, mode: str) -> None:
    loader = _loader(server, mode, batch_size=3, prefetch=3)
    whole = [_bytes(b) for b in loader]
    loader.set_epoch(0)
    for i, _ in enumerate(loader):  # leaves the run with batches in flight, maybe still arriving
        if i == 2:
            break
    assert loader.epoch == 0 and [_bytes(b) for b in loader] == whole
    loader.close()


def test_bad_input_is_the_servers_error_through_the_receiver(server: str) -> None:
    rows = _rows(6) + [{"messages": [{"role": "robot", "content": "x"}]}]
    loader = RemoteLoader(server, "qwen2.5", samples=rows, batch_size=4, shuffle=False)
    with pytest.raises(InvalidSample) as info:
        list(loader)
    assert info.value.sample == 2 and info.value.field == "messages[0].role"
    loader.close()


def test_offload_needs_no_credentials_object() -> None:
    with pytest.raises(InvalidOptions) as info:
        RemoteLoader("127.0.0.1:1", samples=[], offload=True, credentials=grpc.ssl_channel_credentials())
    assert info.value.field == "offload"
    assert not RemoteLoader("127.0.0.1:1", samples=[], credentials=grpc.ssl_channel_credentials()).offload


def test_the_receiver_ends_with_its_trainer(server: str, tmp_path: Path) -> None:
    script = tmp_path / "trainer.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, time
        from feedline.client import RemoteLoader
        rows = [{{"messages": [{{"role": "user", "content": "hi"}}, {{"role": "assistant", "content": "yo"}}]}}] * 64
        loader = RemoteLoader({server!r}, "qwen2.5", samples=rows, batch_size=2)
        next(iter(loader))
        print(loader.receiver_pid, flush=True)
        time.sleep(120)
    """)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    trainer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert trainer.stdout is not None
        pid = int(trainer.stdout.readline())
        assert Path(f"/proc/{pid}").exists()
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(10)
        assert wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 15), "receiver outlived trainer"
    finally:
        trainer.kill()
        trainer.wait()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize(
    ("offload", "content", "says"),
    [
        (True, b"raw bytes", "content must be a string"),
        (True, object(), "serialis"),
        (False, b"raw bytes", "content must be a string"),
    ],
)
def test_a_row_that_cannot_travel_is_an_invalid_sample(server: str, offload: bool, content: Any, says: str) -> None:
    """object() cannot be packed (the trainer names the row); bytes travel as msgpack and the server refuses the
    field, naming the row too."""
    rows = _rows(3) + [{"messages": [{"role": "user", "content": content}]}] + _rows(2)
    loader = RemoteLoader(server, "qwen2.5", samples=rows, batch_size=5, offload=offload, shuffle=False)
    with pytest.raises(InvalidSample) as info:
        list(loader)
    assert info.value.sample == 3 and says in info.value.message
    loader.close()


@pytest.mark.parametrize("mode", ["samples", "dataset"])
def test_a_killed_receiver_is_replaced_without_losing_or_repeating_a_batch(server: str, mode: str) -> None:
    in_trainer = _loader(server, mode, batch_size=2, offload=False)
    reference, second = ([_bytes(b) for b in in_trainer] for _ in range(2))
    loader = _loader(server, mode, batch_size=2, prefetch=3)
    got, pids = [], []
    for i, batch in enumerate(loader):
        got.append(_bytes(batch))
        # 3 and 9: batches in flight, chunks sent but not delivered, slots the trainer still maps; 12: the last
        # chunks are out, so the receiver has sent batches that wait in the socket when it dies (the trainer's
        # credits then meet a closed socket: those batches must still be delivered, once).
        if i in (3, 9, 12):
            pids.append(loader.receiver_pid)
            time.sleep(0.3)  # the receiver fills its prefetch
            _kill(pids[-1])
    assert got == reference and len(got) == 15
    assert pids[1] != pids[0], "the run did not continue on a new receiver"  # 9 and 12 may find it dead already
    assert [_bytes(b) for b in loader] == second  # a receiver that died at the end is replaced by the next iter
    assert loader.receiver_pid not in pids
    loader.close()


def _kill(pid: int) -> None:
    """SIGKILL a receiver and wait until it is dead. The one killed at an earlier point may still be the
    loader's receiver (its batches not all delivered yet) and already reaped: the loader polls its exit code
    when a credit meets the closed socket."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)

    def dead() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert wait_for(dead, 10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prefetch", [1, 2, 3, 5, 8, 16])
@pytest.mark.parametrize("mode", ["samples", "dataset"])
def test_every_prefetch_depth_delivers_every_batch(server: str, mode: str, prefetch: int) -> None:
    """Credits and chunks go back once per prefetch // 2 batches: no depth may stall the pipeline."""
    reference = [_bytes(b) for b in _loader(server, mode, batch_size=3, offload=False)]
    loader = _loader(server, mode, batch_size=3, prefetch=prefetch)
    assert [_bytes(b) for b in loader] == reference and len(reference) == 10
    loader.close()


def test_samples_mode_moves_to_a_new_stream_each_span_losing_and_repeating_nothing(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a span of 0 s each CollateStream answers what it was sent and ends after its first batch, and the run
    goes on with a new call: the same batches in the same order, one call per batch or two, each ended OK by the
    server rather than cancelled."""
    from prometheus_client import REGISTRY

    from feedline.client import _sources

    def streams(code: str) -> float:  # the in-process server's own count of CollateStream calls ended with code
        labels = {"transport": "grpc", "method": "CollateStream", "code": code}
        return REGISTRY.get_sample_value("feedline_requests_total", labels) or 0.0

    reference = [_bytes(b) for b in _loader(server, "samples", batch_size=2, offload=False)]
    monkeypatch.setattr(_sources, "STREAM_SPAN_S", 0.0)
    ok, cancelled = streams("OK"), streams("CANCELLED")
    loader = _loader(server, "samples", batch_size=2, offload=False, prefetch=2)
    assert [_bytes(b) for b in loader] == reference and len(reference) >= 10
    assert loader.stats["attempts"] >= len(reference) // 2 + 2, loader.stats  # + the pin's ListProcessors
    assert not {"stalls", "failovers"} & set(loader.stats), loader.stats
    assert streams("OK") - ok >= len(reference) // 2 and streams("CANCELLED") == cancelled  # ended, not cancelled


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["dataset", "samples"])
@pytest.mark.parametrize("offload", [True, False])
def test_a_replica_that_hangs_mid_stream_is_left_for_another(server: str, offload: bool, mode: str) -> None:
    """A real gRPC server that accepts the stream (StreamDataset, or CollateStream reading every request) and
    never sends a frame: after retry.timeout of silence the run moves to the next replica, its undelivered
    requests sent again, and the epoch is complete and in order, the stall counted."""
    from concurrent import futures

    from feedline.client import RetryPolicy
    from feedline.proto.v1 import COLLATE_STREAM, STREAM_DATASET

    def hang(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        while context.is_active():
            time.sleep(0.05)
        return iter(())

    def hang_reading(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in requests:  # takes every request it is sent, answers none
            pass
        return hang(b"", context)

    handler = grpc.method_handlers_generic_handler(
        "feedline.v1.Feedline",
        {
            STREAM_DATASET.rsplit("/", 1)[1]: grpc.unary_stream_rpc_method_handler(hang),
            COLLATE_STREAM.rsplit("/", 1)[1]: grpc.stream_stream_rpc_method_handler(hang_reading),
        },
    )
    stalled = grpc.server(futures.ThreadPoolExecutor(4))
    stalled.add_generic_rpc_handlers((handler,))
    port = stalled.add_insecure_port("127.0.0.1:0")
    stalled.start()
    try:
        reference = [_bytes(b) for b in _loader(server, mode, batch_size=4, offload=False)]
        fingerprint = RemoteLoader(server, "qwen2.5", samples=[])._remote.pin()
        loader = _loader(
            [f"127.0.0.1:{port}", server],
            mode,
            batch_size=4,
            offload=offload,
            fingerprint=fingerprint,
            retry=RetryPolicy(attempts=4, initial_backoff=0.05, timeout=1.5),
        )
        loader._remote._connection._next = 0  # the hanging replica first
        started = time.monotonic()
        assert [_bytes(b) for b in loader] == reference and len(reference) > 4
        assert 1.5 < time.monotonic() - started < 30
        assert loader.stats.get("stalls", 0) >= 1, loader.stats
        loader.close()
    finally:
        stalled.stop(0)


def test_a_second_iteration_supersedes_the_first_instead_of_hanging(server: str) -> None:
    reference = [_bytes(b) for b in _loader(server, "dataset", batch_size=4, offload=False)]
    loader = _loader(server, "dataset", batch_size=4)
    first = iter(loader)
    assert _bytes(next(first)) == reference[0]
    second = iter(loader)
    assert _bytes(next(second)) == reference[0]
    with pytest.raises(RuntimeError, match="superseded"):
        next(first)
    assert [_bytes(b) for b in second] == reference[1:]
    loader.close()
