"""The client against real servers: RemoteCollate, RemoteLoader in both modes, resume, failover, pinning."""

from __future__ import annotations

import json
import pickle
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from feedline.client import RemoteCollate, RemoteLoader
from feedline.proto import FingerprintMismatch, InvalidSample, ResumeStateError
from feedline.service import CollateOptions, Processor, collate
from feedline.service.server import Limits, ProcessorRegistry, ServingState
from feedline.service.server._datasets import DatasetPlan, batch_rows, num_batches
from tests.support.client import FAST_RETRY, batch_blobs, dataset_loader
from tests.support.reliability_harness import wait_for
from tests.support.servers import Served

N_ROWS = 37


def _rows(n: int = N_ROWS) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Question number {i}?"},
                {"role": "assistant", "content": f"Answer {i}: " + "word " * (i % 7)},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def server(qwen_processor: Processor, data_root: Path, in_process: Any) -> str:
    state = ServingState(ProcessorRegistry.of(qwen_processor), limits=Limits(), data_roots=[data_root])
    return str(in_process(state).grpc_target)


def _same(batch: dict[str, torch.Tensor], expected: dict[str, np.ndarray]) -> None:
    assert set(batch) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=key)


def test_remote_collate_equals_the_engine(server: str, qwen_processor: Processor) -> None:
    rows = _rows(5)
    remote = RemoteCollate(server, "qwen2.5", max_length=64, truncation="right")
    _same(remote(rows), collate(qwen_processor, rows, CollateOptions(max_length=64, truncation="right")).tensors)
    assert len(remote.fingerprint) == 64 and [r["status"] for r in remote.last_reports] == ["ok"] * 5


@pytest.mark.parametrize("mode", ["samples", "dataset"])
@pytest.mark.parametrize("offload", [True, False])
def test_ragged_and_padded_wire_give_the_engine_tensors(
    server: str, qwen_processor: Processor, mode: str, offload: bool
) -> None:
    """The wire form is a transport choice: either way each batch is exactly the engine's."""
    rows = _rows(12)
    source: dict[str, Any] = {"samples": rows, "shuffle": False} if mode == "samples" else {"dataset": "train.jsonl"}
    plan = DatasetPlan(seed=0, epoch=0, shuffle=True, batch_size=4)
    for ragged in (True, False):
        loader = RemoteLoader(server, "qwen2.5", batch_size=4, offload=offload, ragged=ragged, **source)
        for i, batch in enumerate(loader):
            picked = rows[4 * i : 4 * i + 4] if mode == "samples" else [_rows()[j] for j in batch_rows(N_ROWS, plan, i)]
            _same(batch, collate(qwen_processor, picked, CollateOptions()).tensors)
        assert i == (2 if mode == "samples" else 9)
        loader.close()


def test_remote_collate_in_dataloader_workers(server: str, qwen_processor: Processor) -> None:
    rows = _rows(16)
    remote = pickle.loads(pickle.dumps(RemoteCollate(server, "qwen2.5")))
    loader = DataLoader(rows, batch_size=4, num_workers=2, collate_fn=remote)
    for i, batch in enumerate(loader):
        _same(batch, collate(qwen_processor, rows[4 * i : 4 * i + 4], CollateOptions()).tensors)
    assert i == 3


def test_bad_input_is_the_servers_error_with_sample_and_field(server: str) -> None:
    rows = _rows(2) + [{"messages": [{"role": "robot", "content": "x"}]}]
    with pytest.raises(InvalidSample) as info:
        RemoteCollate(server, "qwen2.5")(rows)
    assert info.value.sample == 2 and info.value.field == "messages[0].role"


def test_pinned_fingerprint_mismatch_is_refused(server: str) -> None:
    with pytest.raises(FingerprintMismatch):
        RemoteCollate(server, "qwen2.5", fingerprint="0" * 64)(_rows(1))


def test_samples_mode_streams_every_batch_in_order(server: str, qwen_processor: Processor) -> None:
    rows = _rows(21)
    loader = RemoteLoader(server, "qwen2.5", samples=rows, batch_size=4, prefetch=3, shuffle=False)
    batches = list(loader)
    assert len(batches) == 6
    for i, batch in enumerate(batches):
        _same(batch, collate(qwen_processor, rows[4 * i : 4 * i + 4], CollateOptions()).tensors)


def test_samples_mode_resumes_from_state_dict(server: str) -> None:
    rows = _rows(20)
    full = [b["input_ids"].clone() for b in RemoteLoader(server, "qwen2.5", samples=rows, batch_size=4)]
    first = RemoteLoader(server, "qwen2.5", samples=rows, batch_size=4)
    it = iter(first)
    head = [next(it)["input_ids"].clone() for _ in range(2)]
    state = json.loads(json.dumps(first.state_dict()))  # a state survives a round trip through JSON
    second = RemoteLoader(server, "qwen2.5", samples=rows, batch_size=4)
    second.load_state_dict(state)
    tail = [b["input_ids"] for b in second]
    assert len(head) + len(tail) == len(full)
    for got, want in zip(head + tail, full, strict=False):
        assert torch.equal(got, want)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_dataset_mode_every_sample_once_and_equal_counts(
    server: str, qwen_processor: Processor, world_size: int
) -> None:
    rows = _rows()
    counts, seen = [], []
    for rank in range(world_size):
        loader = dataset_loader(server, batch_size=3, seed=5, rank=rank, world_size=world_size)
        batches = list(loader)
        counts.append(len(batches))
        plan = DatasetPlan(seed=5, batch_size=3, rank=rank, world_size=world_size)
        assert len(batches) == num_batches(len(rows), plan)
        for b, batch in enumerate(batches):
            indices = batch_rows(len(rows), plan, b)
            seen.extend(indices.tolist())
            if len(indices):
                _same(batch, collate(qwen_processor, [rows[i] for i in indices], CollateOptions()).tensors)
    assert len(set(counts)) == 1
    assert sorted(seen) == list(range(len(rows)))


def test_dataset_mode_resume_and_elastic_world_size(server: str) -> None:
    def run(loader: RemoteLoader) -> list[torch.Tensor]:
        return [b["input_ids"].clone() for b in loader]

    whole = run(dataset_loader(server, batch_size=4, seed=2))
    first = dataset_loader(server, batch_size=4, seed=2)
    it = iter(first)
    head = [next(it)["input_ids"].clone() for _ in range(3)]
    resumed = dataset_loader(server, batch_size=4, seed=2)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(head + run(resumed), whole, strict=False))
    # 3 batches x 4 samples = 12 = 3 global batches of 2 x 2: continue on two ranks with batch size 2.
    ranks = [dataset_loader(server, batch_size=2, seed=2, rank=r, world_size=2) for r in range(2)]
    for loader in ranks:
        loader.load_state_dict(first.state_dict())
    assert ranks[0]._start == 3
    with pytest.raises(ResumeStateError):
        dataset_loader(server, batch_size=5, seed=2).load_state_dict(first.state_dict())
    with pytest.raises(ResumeStateError):
        dataset_loader(server, batch_size=4, seed=3).load_state_dict(first.state_dict())


def test_set_epoch_reshuffles_deterministically(server: str) -> None:
    a = dataset_loader(server, batch_size=4, seed=1)
    epoch0 = [b["input_ids"].clone() for b in a]
    a.set_epoch(0)
    again = [b["input_ids"].clone() for b in a]
    a.set_epoch(1)
    epoch1 = [b["input_ids"].clone() for b in a]
    assert all(torch.equal(x, y) for x, y in zip(epoch0, again, strict=False))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(epoch0, epoch1, strict=False))


_KILL_ROWS = [{"prompt": f"question {i}: " + "why " * (i % 7), "completion": f" answer {i}"} for i in range(48)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("mode", "method"), [("dataset", "StreamDataset"), ("samples", "CollateStream")])
def test_sigkill_of_a_replica_mid_epoch_loses_and_repeats_nothing(data_root: Path, mode: str, method: str) -> None:
    """Two real `feedline serve` processes; the one a stream starts on (StreamDataset, or samples mode's
    CollateStream) is SIGKILLed mid-epoch: the run goes on on the other from the first batch the dead one had not
    delivered, and the trainer sees identical bytes."""
    replicas = [Served("--data-root", str(data_root)), Served("--data-root", str(data_root))]

    def loader(target: str | list[str], **kw: Any) -> RemoteLoader:
        if mode == "dataset":
            return dataset_loader(target, batch_size=2, seed=9, prefetch=1, **kw)
        return RemoteLoader(target, "qwen2.5", samples=_KILL_ROWS, batch_size=2, prefetch=2, retry=FAST_RETRY, **kw)

    try:
        targets = [f"127.0.0.1:{r.grpc_port}" for r in replicas]
        first = loader(targets[0])
        reference = batch_blobs(first)
        killed = threading.Event()

        def kill_first(i: int) -> None:
            if i == 4 and not killed.is_set():
                replicas[0].proc.send_signal(signal.SIGKILL)
                replicas[0].proc.wait(10)
                killed.set()

        disturbed_loader = loader(targets, fingerprint=first._remote.fingerprint)
        # Pinned already (no ListProcessors call), so the run's first stream starts on the replica to die.
        disturbed_loader._remote._connection._next = 0
        disturbed = batch_blobs(disturbed_loader, kill_first)
        assert killed.is_set() and replicas[0].proc.returncode == -signal.SIGKILL
        assert disturbed == reference and len(reference) > 8
        assert disturbed_loader.stats.get("failovers", 0) >= 1, disturbed_loader.stats

        def resumed() -> list[dict[str, Any]]:  # the survivor logs its stream when it ends (read asynchronously)
            return [r for r in replicas[1].logs if r.get("msg") == "rpc" and r.get("method") == method]

        assert wait_for(resumed, 10) and 0 < resumed()[-1]["batches"] < len(reference), "no resume mid-epoch"
    finally:
        for r in replicas:
            r.close()
