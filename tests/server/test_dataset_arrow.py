"""Saved HF datasets (Arrow IPC): read a record batch at a time into the block cache, in a windowed epoch order
that stays deterministic, exactly-once, resumable and elastic across world sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from feedline.proto import InvalidSample
from feedline.service.server._datasets import (
    DatasetPlan,
    RowSource,
    batch_rows,
    num_batches,
    open_dataset,
    resume_batch_index,
)
from feedline.service.server.datasets._files import locate
from feedline.service.server.datasets._readers import BlockCache


def _rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"q{i} é"}, {"role": "assistant", "content": "a" * (i % 7)}]}
        for i in range(start, start + n)
    ]


def _write(path: Path, rows: list[dict], batch: int, *, file_format: bool = False) -> pa.Table:
    """An Arrow IPC stream (or file) of ``rows`` in record batches of ``batch`` rows, an empty one among them."""
    table = pa.Table.from_pylist(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    open_writer = pa.ipc.new_file if file_format else pa.ipc.new_stream
    with pa.OSFile(str(path), "wb") as sink, open_writer(sink, table.schema) as writer:
        writer.write_batch(pa.RecordBatch.from_pylist([], schema=table.schema))
        writer.write_table(table, max_chunksize=batch)
    return table


def _source(root: Path, name: str, cache: BlockCache) -> RowSource:
    return RowSource(locate(name, [root]), None, blocks=cache)


@pytest.mark.parametrize("file_format", [False, True])
def test_record_batch_reads_equal_direct_row_reads(tmp_path: Path, file_format: bool) -> None:
    """Every row, in a shuffled order and through a cache that holds a few record batches, equals the row that
    Arrow itself reads from the file (``to_pylist`` of a one-row slice of the whole table)."""
    rows = _rows(1000)
    _write(tmp_path / "saved" / "data-00000-of-00001.arrow", rows, batch=64, file_format=file_format)
    read = pa.ipc.open_file if file_format else pa.ipc.open_stream
    direct = read(pa.memory_map(str(tmp_path / "saved" / "data-00000-of-00001.arrow"))).read_all()
    source = _source(tmp_path, "saved", BlockCache(max_bytes=4 * 64 * 60))
    assert len(source) == 1000 and not source.random_access
    assert source._block_rows.tolist() == [64] * 15 + [40]  # the empty record batch is no block
    shuffled = np.random.default_rng(0).permutation(1000)
    for start in range(0, 1000, 8):
        picks = shuffled[start : start + 8]
        assert source.rows(picks) == [direct.slice(int(i), 1).to_pylist()[0] for i in picks]
    assert _all(source) == rows


def _all(source: RowSource) -> list[dict]:
    return source.rows(np.arange(len(source)))


def test_saved_dataset_shards_match_hf_datasets(tmp_path: Path) -> None:
    """A directory written by ``datasets``' own ``save_to_disk`` (several shards) reads as ``load_from_disk``
    reads it, row for row."""
    import datasets

    rows = _rows(2500)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"), num_shards=3)
    loaded = datasets.load_from_disk(str(tmp_path / "saved"))
    source = open_dataset("saved", [tmp_path])
    assert len(source.location.files) == 3
    picks = np.random.default_rng(1).integers(0, 2500, 300)
    assert source.rows(picks) == [loaded[int(i)] for i in picks]


def test_arrow_epoch_reads_each_record_batch_once_in_a_bounded_cache(tmp_path: Path) -> None:
    _write(tmp_path / "saved" / "data.arrow", _rows(4000), batch=100)
    block = (tmp_path / "saved" / "data.arrow").stat().st_size // 40
    cache = BlockCache(max_bytes=10 * block)
    source = _source(tmp_path, "saved", cache)
    order = source.order(seed=2, epoch=0, shuffle=True).rows(np.arange(len(source)))
    expected = _rows(4000)
    assert sorted(order.tolist()) == list(range(4000))
    for start in range(0, 4000, 8):
        assert source.rows(order[start : start + 8]) == [expected[i] for i in order[start : start + 8]]
        assert cache.nbytes <= 11 * block
    assert cache.loads <= 40 + 2  # 40 record batches: each read about once per epoch


def test_arrow_order_is_deterministic_exactly_once_and_elastic(tmp_path: Path) -> None:
    """Over a saved dataset's windowed order: the same (seed, epoch) gives the same batches in a fresh process
    state, every rank gets as many batches and every row comes once, and a run resumed with another world size
    continues the same global order."""
    _write(tmp_path / "saved" / "data.arrow", _rows(3000), batch=50)
    size = (tmp_path / "saved" / "data.arrow").stat().st_size
    first = _source(tmp_path, "saved", BlockCache(max_bytes=size // 6))
    again = _source(tmp_path, "saved", BlockCache(max_bytes=size // 6))
    order, order_again = first.order(7, 1, True), again.order(7, 1, True)
    assert first._window is not None and first._window < len(first) // 4  # several windows
    n = len(first)
    plan = DatasetPlan(seed=7, epoch=1, batch_size=6)
    assert all(
        (batch_rows(n, plan, b, order) == batch_rows(n, plan, b, order_again)).all()
        for b in range(num_batches(n, plan))
    )
    assert (order.rows(np.arange(n)) != first.order(7, 2, True).rows(np.arange(n))).any()  # epochs differ

    def run(batch: int, world: int, start: int = 0) -> list[int]:
        plans = [DatasetPlan(seed=7, epoch=1, batch_size=batch, rank=r, world_size=world) for r in range(world)]
        assert len({num_batches(n, p) for p in plans}) == 1
        return [
            row
            for b in range(start, num_batches(n, plans[0]))
            for p in plans
            for row in batch_rows(n, p, b, order).tolist()
        ]

    four = run(3, 4)  # global batch 12
    assert sorted(four) == list(range(n))
    consumed = 90 * 12  # resumed at 36% with 2 ranks of 6
    two = run(6, 2, start=resume_batch_index(consumed, DatasetPlan(seed=7, epoch=1, batch_size=6, world_size=2)))
    assert two == four[consumed:]


def test_dictionary_encoded_arrow_is_refused_by_name(tmp_path: Path) -> None:
    table = pa.table({"text": pa.array(["a", "b", "a"]).dictionary_encode()})
    (tmp_path / "saved").mkdir()
    with pa.OSFile(str(tmp_path / "saved" / "data.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    with pytest.raises(InvalidSample, match="dictionary") as info:
        open_dataset("saved", [tmp_path])
    assert info.value.field == "dataset.path"


def test_record_batch_table_is_walked_once_and_kept_under_the_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first open walks the message headers and keeps the table under the cache directory; later opens
    (another process, a restarted server) read it from there without walking; a table that does not fit the
    file is walked again."""
    from feedline.service.server.datasets import _readers

    rows = _rows(700)
    _write(tmp_path / "saved" / "data.arrow", rows, batch=100)
    cache_dir = tmp_path / "cache"
    first = RowSource(locate("saved", [tmp_path]), cache_dir, blocks=BlockCache(1 << 20))
    kept = list((cache_dir / "lines").glob("*.batches.npy"))
    assert len(kept) == 1 and np.load(kept[0]).tolist() == [
        [s, e, c] for (s, e), c in zip(first._blocks[0]._spans.tolist(), first._block_rows.tolist(), strict=True)
    ]

    def walked(path: str) -> Any:
        raise AssertionError("walked the headers again")

    monkeypatch.setattr(_readers, "_arrow_messages", walked)
    again = RowSource(locate("saved", [tmp_path]), cache_dir, blocks=BlockCache(1 << 20))
    assert _all(again) == rows
    monkeypatch.undo()
    np.save(kept[0], np.array([[0, 10**12, 700]], dtype=np.int64))  # ends past the file: not this file's table
    assert _all(RowSource(locate("saved", [tmp_path]), cache_dir, blocks=BlockCache(1 << 20))) == rows
