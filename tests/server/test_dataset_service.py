"""Dataset mode through real servers: S3 (a moto server on loopback), chunked calls, mixtures, 64 ranks."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feedline.client import RemoteLoader, RetryPolicy
from feedline.service import CollateOptions, Processor, collate
from feedline.service.server import Limits, ProcessorRegistry, ServingState
from feedline.service.server._datasets import (
    DatasetPlan,
    MixturePart,
    batch_rows,
    num_batches,
    open_dataset,
    open_mixture,
)

RETRY = RetryPolicy(attempts=8, initial_backoff=0.05, max_backoff=0.5, timeout=60)
BUCKET = "feedline-test"


def _rows(n: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"{tag} question {i}?"},
                {"role": "assistant", "content": f"{tag} answer {i} " + "word " * (i % 5)},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on a loopback port, with credentials in the environment."""
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "feedline",
        "AWS_SECRET_ACCESS_KEY": "feedline-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        fs.S3FileSystem(allow_bucket_creation=True, endpoint_override=env["AWS_ENDPOINT_URL"]).create_dir(BUCKET)
        yield f"s3://{BUCKET}/data"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, s3_url: str) -> Path:
    """The same files on a local root and in the bucket: train.jsonl (37 rows), many.jsonl (1024 rows),
    shards/*.parquet (3 x 20)."""
    from pyarrow import fs

    root = tmp_path_factory.mktemp("data")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(37, "t")), encoding="utf-8")
    (root / "many.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(1024, "m")), encoding="utf-8")
    (root / "shards").mkdir()
    for i in range(3):
        pq.write_table(
            pa.Table.from_pylist(_rows(60, "p")[20 * i : 20 * (i + 1)]),
            root / "shards" / f"{i}.parquet",
            row_group_size=7,
        )
    s3, prefix = fs.FileSystem.from_uri(s3_url)
    fs.copy_files(str(root), prefix, destination_filesystem=s3)
    return root


@pytest.fixture(scope="module")
def server(
    qwen_processor: Processor,
    data_root: Path,
    s3_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    in_process: Any,
) -> str:
    """Calls end after ~10 ms of serving, so every epoch below crosses many continuations."""
    state = ServingState(
        ProcessorRegistry.of(qwen_processor),
        limits=Limits(),
        data_roots=[data_root],
        data_urls=[s3_url],
        dataset_cache_dir=tmp_path_factory.mktemp("cache"),
    )
    return str(in_process(state, grpc_options={"dataset_chunk_s": 0.01}).grpc_target)


def _loader(target: str, dataset: Any, **kw: Any) -> RemoteLoader:
    return RemoteLoader(target, "qwen2.5", dataset=dataset, retry=RETRY, offload=False, **kw)


def _ids(loader: RemoteLoader) -> list[torch.Tensor]:
    return [b["input_ids"].clone() for b in loader]


@pytest.mark.parametrize("local, remote", [("train.jsonl", "train.jsonl"), ("shards", "shards/*.parquet")])
def test_s3_and_local_copies_give_identical_batches(server: str, s3_url: str, local: str, remote: str) -> None:
    here = _ids(_loader(server, local, batch_size=4, seed=7))
    there = _ids(_loader(server, f"{s3_url}/{remote}", batch_size=4, seed=7))
    assert len(here) == len(there) > 5 and all(torch.equal(a, b) for a, b in zip(here, there, strict=True))


def test_a_url_outside_the_allowed_prefix_is_refused(server: str, s3_url: str) -> None:
    with pytest.raises(Exception, match="not under an allowed"):
        next(iter(_loader(server, f"s3://{BUCKET}/elsewhere/train.jsonl", batch_size=4)))


def test_chunked_calls_deliver_the_plan_exactly(server: str, qwen_processor: Processor) -> None:
    """Every call ends after ~10 ms and the client continues: each rank still gets exactly its batches."""
    rows = _rows(37, "t")

    for rank in range(2):
        plan = DatasetPlan(seed=5, batch_size=3, rank=rank, world_size=2)
        batches = list(_loader(server, "train.jsonl", batch_size=3, seed=5, rank=rank, world_size=2))
        assert len(batches) == num_batches(37, plan)
        for b, batch in enumerate(batches):
            indices = batch_rows(37, plan, b)
            if not len(indices):  # this rank's share of the last, partial step is empty
                assert batch == {}
                continue
            want = collate(qwen_processor, [rows[i] for i in indices], CollateOptions()).tensors
            assert set(batch) == set(want)
            for key, value in want.items():
                np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=key)


def test_saved_hf_dataset_streams_its_plan_and_resumes_on_other_ranks(
    server: str, data_root: Path, qwen_processor: Processor
) -> None:
    """A saved HF dataset (two Arrow shards, read in record batches) through the server: one rank gets exactly
    the plan's batches in the dataset's own epoch order; resumed after 5 batches on 2 ranks of half the batch
    size, the same global order continues."""
    import datasets

    rows = _rows(90, "h")
    datasets.Dataset.from_list(rows).save_to_disk(str(data_root / "saved-hf"), num_shards=2)
    source = open_dataset("saved-hf", [data_root])
    order = source.order(seed=4, epoch=0, shuffle=True)
    plan = DatasetPlan(seed=4, batch_size=4)
    first_run = _loader(server, "saved-hf", batch_size=4, seed=4)
    whole = list(first_run)
    assert len(whole) == num_batches(90, plan)
    for b, batch in enumerate(whole):
        want = collate(qwen_processor, [rows[i] for i in batch_rows(90, plan, b, order)], CollateOptions()).tensors
        np.testing.assert_array_equal(batch["input_ids"].numpy(), want["input_ids"])
    resumed = _loader(server, "saved-hf", batch_size=4, seed=4)
    it = iter(resumed)
    head = [next(it) for _ in range(5)]
    state = resumed.state_dict()
    ranks = [_loader(server, "saved-hf", batch_size=2, seed=4, rank=r, world_size=2) for r in range(2)]
    for loader in ranks:
        loader.load_state_dict(state)
    tails = [list(loader) for loader in ranks]
    restarted = [_unpadded(half) for step in zip(*tails, strict=True) for half in step]
    assert [_unpadded(b) for b in head] == [_unpadded(b) for b in whole[:5]]
    assert [row for batch in restarted for row in batch] == [row for b in whole[5:] for row in _unpadded(b)]


def _unpadded(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """Each row's tokens without padding (batches of another size pad to another length)."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]


MIX = [{"path": "train.jsonl", "weight": 3.0}, {"path": "shards", "weight": 1.0}]


def _mixture_rows(batches: list[dict[str, torch.Tensor]]) -> list[tuple[int, int]]:
    return [(int(d), int(r)) for b in batches for d, r in zip(b["dataset_index"], b["dataset_row"], strict=True)]


def test_mixture_is_proportional_reported_and_elastic(server: str, data_root: Path, qwen_processor: Processor) -> None:
    whole = list(_loader(server, MIX, batch_size=4, seed=3))
    got = _mixture_rows(whole)
    mixture = open_mixture(
        [MixturePart(**m) for m in MIX],
        ServingState(  # type: ignore[arg-type]
            ProcessorRegistry.of(qwen_processor), data_roots=[data_root]
        ).data_access,
    )
    assert len(got) == len(mixture) == 97  # weights 3:1 over 37 + 60 rows
    counts = np.bincount([d for d, _ in got], minlength=2)
    assert counts.tolist() == mixture.counts.tolist() == [73, 24]
    plan = DatasetPlan(seed=3, batch_size=4)
    part, rows = mixture.locate(np.arange(97), plan)
    assert got == list(zip(part.tolist(), rows.tolist(), strict=True))
    first = _rows(37, "t")[got[0][1]] if got[0][0] == 0 else _rows(60, "p")[got[0][1]]
    want = collate(qwen_processor, [first], CollateOptions()).tensors["input_ids"][0]
    assert torch.equal(whole[0]["input_ids"][0][: len(want)], torch.from_numpy(want))
    # Resume after 6 batches of 4 on two ranks of 2 (same global batch): the same global order continues.
    first_run = _loader(server, MIX, batch_size=4, seed=3)
    it = iter(first_run)
    head = [next(it) for _ in range(6)]
    state = first_run.state_dict()
    ranks = [_loader(server, MIX, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    for loader in ranks:
        loader.load_state_dict(state)
    tails = [[_mixture_rows([b]) for b in loader] for loader in ranks]
    steps = [pair for step in zip(*tails, strict=True) for half in step for pair in half]
    assert _mixture_rows(head) + steps == got


def test_repeats_make_passes_over_a_dataset(qwen_processor: Processor, data_root: Path) -> None:
    access = ServingState(ProcessorRegistry.of(qwen_processor), data_roots=[data_root]).data_access
    mixture = open_mixture([MixturePart("train.jsonl", repeat=2.0), MixturePart("shards", repeat=0.5)], access)
    part, rows = mixture.locate(np.arange(len(mixture)), DatasetPlan(seed=1))
    assert mixture.counts.tolist() == [74, 30]
    train = rows[part == 0]
    assert sorted(train.tolist()) == sorted(list(range(37)) * 2)
    assert len(set(rows[part == 1].tolist())) == 30


@pytest.mark.timeout(240)
def test_64_ranks_on_one_server_get_first_batches_promptly_and_health_stays_serving(
    qwen_processor: Processor, data_root: Path, in_process: Any
) -> None:
    state = ServingState(ProcessorRegistry.of(qwen_processor), limits=Limits(), data_roots=[data_root])
    target = str(in_process(state, grpc_options={"dataset_chunk_s": 0.5}).grpc_target)
    world, firsts, counts, errors = 64, [0.0] * 64, [0] * 64, []
    health_failures, health_checks = [], [0]
    stop = threading.Event()

    def rank(r: int) -> None:
        try:
            loader = _loader(target, "many.jsonl", batch_size=1, seed=2, rank=r, world_size=world, prefetch=1)
            t0 = time.perf_counter()
            for i, _ in enumerate(loader):  # 16 batches each, 1024 in all
                if i == 0:
                    firsts[r] = time.perf_counter() - t0
                counts[r] = i + 1
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    def watch_health() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                    if status != health_pb2.HealthCheckResponse.SERVING:
                        health_failures.append(status)
                except grpc.RpcError as exc:
                    health_failures.append(exc.code())
                health_checks[0] += 1
                time.sleep(0.1)

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
    finally:
        stop.set()
        watcher.join()
    assert not errors, errors[:3]
    assert counts == [16] * world
    assert all(f > 0 for f in firsts) and max(firsts) < 20.0, sorted(firsts)[-5:]
    assert health_checks[0] > 5 and not health_failures
