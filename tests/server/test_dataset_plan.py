"""Dataset mode: exactly-once epochs, equal batch counts per rank, elastic resume, and the file readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedline.proto import InvalidSample, ResumeStateError
from feedline.service.server._datasets import DatasetPlan, batch_rows, num_batches, open_dataset, resume_batch_index


def _epoch(
    n: int, world: int, batch: int, *, seed: int = 3, epoch: int = 0, drop_last: bool = False
) -> list[list[np.ndarray]]:
    plans = [
        DatasetPlan(seed=seed, epoch=epoch, batch_size=batch, rank=r, world_size=world, drop_last=drop_last)
        for r in range(world)
    ]
    return [[batch_rows(n, p, b) for b in range(num_batches(n, p))] for p in plans]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 7, 24, 101])
def test_every_sample_once_and_equal_batch_counts(world: int, n: int) -> None:
    per_rank = _epoch(n, world, batch=4)
    assert len({len(batches) for batches in per_rank}) == 1
    seen = np.concatenate([b for batches in per_rank for b in batches])
    assert sorted(seen.tolist()) == list(range(n))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), world=st.integers(1, 6), batch=st.integers(1, 9), drop_last=st.booleans())
def test_plan_properties(n: int, world: int, batch: int, drop_last: bool) -> None:
    per_rank = _epoch(n, world, batch, drop_last=drop_last)
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1
    seen = np.concatenate([b for batches in per_rank for b in batches] or [np.zeros(0, np.int64)])
    assert len(set(seen.tolist())) == len(seen)  # nothing repeated
    expected = n - (n % (batch * world) if drop_last else 0)
    assert len(seen) == expected
    assert all(len(b) <= batch for batches in per_rank for b in batches)


def test_epochs_reshuffle_deterministically() -> None:
    a, b, c = _epoch(50, 1, 5, epoch=0)[0], _epoch(50, 1, 5, epoch=0)[0], _epoch(50, 1, 5, epoch=1)[0]
    assert all((x == y).all() for x, y in zip(a, b, strict=False))
    assert any((x != y).any() for x, y in zip(a, c, strict=False))


def test_elastic_resume_keeps_the_global_order() -> None:
    n = 96
    four = DatasetPlan(seed=1, batch_size=3, world_size=4)  # global batch 12
    two = DatasetPlan(seed=1, batch_size=6, world_size=2)  # global batch 12
    consumed = 5 * 12
    start = resume_batch_index(consumed, two)
    after_four = np.concatenate(
        [
            batch_rows(n, DatasetPlan(seed=1, batch_size=3, rank=r, world_size=4), b)
            for b in range(5, num_batches(n, four))
            for r in range(4)
        ]
    )
    after_two = np.concatenate(
        [
            batch_rows(n, DatasetPlan(seed=1, batch_size=6, rank=r, world_size=2), b)
            for b in range(start, num_batches(n, two))
            for r in range(2)
        ]
    )
    assert after_four.tolist() == after_two.tolist()
    with pytest.raises(ResumeStateError):
        resume_batch_index(5 * 12, DatasetPlan(batch_size=7, world_size=1))


def _rows(n: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(n)
    ]


def test_readers_jsonl_parquet_and_saved_dataset(tmp_path: Path) -> None:
    rows = _rows(5)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    saved = tmp_path / "saved"
    saved.mkdir()
    table = pa.Table.from_pylist(rows)
    with (
        pa.OSFile(str(saved / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as writer,
    ):
        writer.write_table(table)
    for name in ("d.jsonl", "d.parquet", "saved"):
        source = open_dataset(name, [tmp_path])
        assert len(source) == 5 and source.rows([3, 0]) == [rows[3], rows[0]]
        assert len(source.fingerprint) == 64


def test_dataset_paths_stay_inside_roots(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "secret.jsonl").write_text("{}\n")
    (root / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    for bad in ("../secret.jsonl", str(tmp_path / "secret.jsonl"), "link.jsonl", "missing.jsonl"):
        with pytest.raises(InvalidSample) as info:
            open_dataset(bad, [root])
        assert info.value.field == "dataset.path"
