"""Samples mode as a trainer sees it: DistributedSampler order, one-shot iterables, reports, data identity, ports."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from feedline.client import BatchReport, RemoteLoader
from feedline.proto import InvalidOptions, InvalidSample, ResumeStateError
from feedline.service import CollateOptions, Processor, collate
from feedline.service.server import Limits, ProcessorRegistry, ServingState


def _rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": f"Answer {i}." + " more" * (i % 5)},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def server(qwen_processor: Processor, data_root: Path, in_process: Any) -> str:
    state = ServingState(ProcessorRegistry.of(qwen_processor), limits=Limits(), data_roots=[data_root])
    return str(in_process(state).grpc_target)


def _sampler_batches(
    n: int, world: int, rank: int, *, shuffle: bool, drop_last: bool, seed: int, epoch: int, batch_size: int
) -> list[list[int]]:
    """What torch's own DataLoader + DistributedSampler give this rank (the reference)."""
    sampler = DistributedSampler(
        range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    sampler.set_epoch(epoch)
    loader = DataLoader(range(n), batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    return [b.tolist() for b in loader]


@pytest.mark.parametrize(
    ("n", "world", "drop_last", "shuffle"),
    [(21, 1, False, True), (21, 2, False, True), (22, 3, True, True), (10, 4, False, False)],
)
def test_batches_are_a_distributed_samplers_rank_by_rank_and_epoch_by_epoch(
    server: str,
    qwen_processor: Processor,
    n: int,
    world: int,
    drop_last: bool,
    shuffle: bool,
) -> None:
    rows = _rows(n)
    seen: list[int] = []
    counts = set()
    for rank in range(world):
        loader = RemoteLoader(
            server,
            samples=rows,
            batch_size=4,
            world_size=world,
            rank=rank,
            seed=7,
            shuffle=shuffle,
            drop_last=drop_last,
            offload=False,
        )
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            want = _sampler_batches(
                n, world, rank, shuffle=shuffle, drop_last=drop_last, seed=7, epoch=epoch, batch_size=4
            )
            got = []
            for batch in loader:
                idx = [r["row"] for r in loader.last_report.samples]
                expected = collate(qwen_processor, [rows[i] for i in idx], CollateOptions()).tensors
                for key, value in expected.items():
                    np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=key)
                got.append(idx)
            assert got == want and len(loader) == len(want)
            if epoch == 0:
                seen += [i for b in got for i in b]
                counts.add(len(got))
    assert len(counts) == 1  # every rank the same number of batches
    if drop_last:
        assert len(seen) == len(set(seen)) == world * (n // world // 4 * 4)  # disjoint; short batches dropped
    else:
        assert set(seen) == set(range(n)) and len(seen) == -(-n // world) * world  # all, padded like torch's


def test_shuffle_changes_with_seed_and_epoch_but_not_with_the_path(server: str) -> None:
    rows = _rows(12)

    def order(**kw: Any) -> list[int]:
        loader = RemoteLoader(server, samples=rows, batch_size=12, **kw)
        for _ in loader:
            pass
        loader.close()
        assert loader.last_report is not None
        return [r["row"] for r in loader.last_report.samples]

    base = order(seed=1, offload=False)
    assert sorted(base) == list(range(12)) and base != list(range(12))
    assert order(seed=1, offload=True) == base  # the receiver process serves the same order
    assert order(seed=2, offload=False) != base
    assert order(shuffle=False, offload=False) == list(range(12))


def test_a_generator_serves_one_iteration_then_refuses(server: str) -> None:
    loader = RemoteLoader(server, samples=(r for r in _rows(6)), batch_size=4, offload=False)
    assert [len(b["input_ids"]) for b in loader] == [4, 2]  # read in its own order, unshuffled
    with pytest.raises(InvalidOptions, match="one-shot iterator") as info:
        list(loader)
    assert info.value.field == "samples"
    with pytest.raises(TypeError):
        len(loader)


def test_what_an_iterable_cannot_do_is_refused_up_front(server: str) -> None:
    with pytest.raises(InvalidOptions) as info:
        RemoteLoader(server, samples=iter(_rows(4)), world_size=2, rank=0)
    assert info.value.field == "samples"
    with pytest.raises(InvalidOptions) as info:
        RemoteLoader(server, samples=iter(_rows(4)), shuffle=True)
    assert info.value.field == "shuffle"


def test_a_shuffled_run_resumes_mid_epoch_and_refuses_changed_samples(server: str) -> None:
    rows = _rows(20)
    full = [b["input_ids"].clone() for b in RemoteLoader(server, samples=rows, batch_size=4, seed=3, offload=False)]
    first = RemoteLoader(server, samples=rows, batch_size=4, seed=3, offload=False)
    it = iter(first)
    head = [next(it)["input_ids"].clone() for _ in range(2)]
    state = json.loads(json.dumps(first.state_dict()))
    assert state["dataset_fingerprint"].startswith("samples:20:")
    second = RemoteLoader(server, samples=rows, batch_size=4, seed=3, offload=False)
    second.load_state_dict(state)
    tail = [b["input_ids"] for b in second]
    assert len(head) + len(tail) == len(full) == 5
    assert all(torch.equal(got, want) for got, want in zip(head + tail, full, strict=True))
    changed = rows[:10] + _rows(30)[20:30]  # same length, other rows
    with pytest.raises(ResumeStateError) as info:
        RemoteLoader(server, samples=changed, batch_size=4, seed=3).load_state_dict(state)
    assert info.value.field == "samples" and "changed" in str(info.value)


def test_reports_reach_the_trainer_per_batch_in_totals_state_callback_and_a_warning(
    server: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = _rows(6)
    rows[1] = {"messages": [{"role": "user", "content": "Go on."}, {"role": "assistant", "content": "ok " * 90}]}
    rows[4] = {"messages": [{"role": "user", "content": "long " * 90}, {"role": "assistant", "content": "cut"}]}
    seen: list[BatchReport] = []
    loader = RemoteLoader(
        server,
        samples=rows,
        batch_size=3,
        shuffle=False,
        max_length=64,
        truncation="right",
        on_zero_labels="skip",
        on_report=seen.append,
        offload=False,
    )
    with caplog.at_level(logging.WARNING, logger="feedline.client"):
        per_batch = [(loader.last_report, len(b["input_ids"])) for b in loader]
    assert [r for r, _ in per_batch] == seen and [r.batch_index for r in seen] == [0, 1]
    statuses = [(s["row"], s["status"], s["truncated"] > 0) for r in seen for s in r.samples]
    assert statuses == [
        (0, "ok", False),
        (1, "ok", True),
        (2, "ok", False),
        (3, "ok", False),
        (4, "skipped", False),
        (5, "ok", False),
    ]
    assert [n for _, n in per_batch] == [3, 2]  # the skipped row is reported, not trained on
    totals = {"batches": 2, "samples": 6, "truncated": 1, "dropped": 0, "skipped": 1}
    assert loader.report_counts == totals and loader.state_dict()["report_counts"] == totals
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 were truncated, 0 dropped and 1 skipped" in w for w in warnings), warnings
    resumed = RemoteLoader(
        server,
        samples=rows,
        batch_size=3,
        shuffle=False,
        max_length=64,
        truncation="right",
        on_zero_labels="skip",
        offload=False,
    )
    resumed.load_state_dict(loader.state_dict())
    assert resumed.report_counts == totals  # a resumed run continues the counts
    dropping = RemoteLoader(server, samples=rows, batch_size=3, max_length=64, overlong="drop", offload=False)
    assert sum(len(b["input_ids"]) for b in dropping) == 4
    assert dropping.report_counts == {"batches": 2, "samples": 6, "truncated": 0, "dropped": 2, "skipped": 0}


def test_dataset_fingerprint_is_saved_and_a_rewritten_file_is_refused(server: str, data_root: Path) -> None:
    path = data_root / "resume.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(12)), encoding="utf-8")
    first = RemoteLoader(server, dataset="resume.jsonl", batch_size=4, offload=False)
    it = iter(first)
    next(it)
    state = first.state_dict()
    assert len(state["dataset_fingerprint"]) >= 16
    it.close()
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(13)[1:]), encoding="utf-8")  # other rows
    time.sleep(0.01)
    resumed = RemoteLoader(server, dataset="resume.jsonl", batch_size=4, offload=False)
    resumed.load_state_dict(state)
    with pytest.raises(ResumeStateError) as info:
        next(iter(resumed))
    assert "dataset changed" in str(info.value)


def test_a_client_pointed_at_an_http_port_is_told_so_at_once(qwen_processor: Processor, in_process: Any) -> None:
    state = ServingState(ProcessorRegistry.of(qwen_processor), limits=Limits())
    http = in_process(state, grpc=False, http=True).http_url  # feedline's own HTTP API (FastAPI on uvicorn)
    target = http.removeprefix("http://")
    started = time.monotonic()
    with pytest.raises(InvalidOptions) as info:
        next(iter(RemoteLoader(target, samples=_rows(2), offload=False)))
    assert time.monotonic() - started < 5  # no retries: another try cannot turn HTTP into gRPC
    assert info.value.field == "endpoints" and target in str(info.value) and "gRPC port" in str(info.value)


@pytest.mark.parametrize("offload", [False, True])
def test_a_bad_row_is_named_by_its_index_in_samples_not_its_batch_position(server: str, offload: bool) -> None:
    rows = _rows(12)
    rows[5] = {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}
    for rank in range(2):
        loader = RemoteLoader(
            server, samples=rows, batch_size=3, seed=11, shuffle=True, world_size=2, rank=rank, offload=offload
        )
        batches = _sampler_batches(12, 2, rank, shuffle=True, drop_last=False, seed=11, epoch=0, batch_size=3)
        holding = [b for b in batches if 5 in b]
        if not holding:
            assert len(list(loader)) == len(batches)
            continue
        with pytest.raises(InvalidSample) as info:
            list(loader)
        loader.close()
        assert info.value.row == 5 and info.value.sample == holding[0].index(5)
        assert f"row 5 (position {info.value.sample} in the batch)" in str(info.value)
        assert info.value.field is not None and "role" in str(info.value)
