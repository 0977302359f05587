"""Dataset sources: shards, globs, saved HF datasets, metadata fingerprints, cached line indexes, one open."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feedline.proto import InvalidSample
from feedline.service.server import _datasets as _dataset
from feedline.service.server._datasets import RowSource, open_dataset
from feedline.service.server.datasets._files import locate
from feedline.service.server.datasets._readers import BlockCache, line_index


def _rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(start, start + n)
    ]


def _jsonl(path: Path, rows: list[dict], *, sep: str = "\n") -> None:
    path.write_text(sep.join(json.dumps(r) for r in rows) + sep, encoding="utf-8")


def _all(source: RowSource) -> list[dict]:
    return source.rows(np.arange(len(source)))


def test_shard_directories_and_globs_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "j").mkdir()
    (tmp_path / "p").mkdir()
    for i in range(3):
        _jsonl(tmp_path / "j" / f"part-{i}.jsonl", _rows(4, 4 * i))
        pq.write_table(pa.Table.from_pylist(_rows(5, 5 * i)), tmp_path / "p" / f"part-{i}.parquet", row_group_size=2)
    assert _all(open_dataset("j", [tmp_path])) == _rows(12)
    assert _all(open_dataset("j/part-[12].jsonl", [tmp_path])) == _rows(8, 4)
    parquet = open_dataset("p/*.parquet", [tmp_path])
    assert _all(parquet) == _rows(15) and parquet.rows([14, 0, 7]) == [_rows(15)[i] for i in (14, 0, 7)]
    assert len(open_dataset("p", [tmp_path])) == 15
    (tmp_path / "p" / "x.jsonl").write_text("{}\n")
    with pytest.raises(InvalidSample, match="mixes formats"):
        open_dataset("p", [tmp_path])


def test_saved_hf_dataset_with_cache_files_beside_it(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = _rows(30)
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved), num_shards=2)
    loaded = datasets.load_from_disk(str(saved))
    loaded.map(lambda r: {"extra": 1}, load_from_cache_file=False)  # writes cache-*.arrow into the directory
    assert any(p.name.startswith("cache-") for p in saved.iterdir())
    source = open_dataset("saved", [tmp_path])
    assert len(source) == 30 and _all(source) == rows


def test_jsonl_line_index_is_built_once_and_cached(tmp_path: Path) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    rows = _rows(50)
    (data / "t.jsonl").write_bytes(
        b"\r\n".join(json.dumps(r).encode() for r in rows[:25])
        + b"\n\n  \n"
        + b"\n".join(json.dumps(r).encode() for r in rows[25:])
    )  # no final newline
    first = open_dataset("t.jsonl", [data], cache_dir=cache)
    assert _all(first) == rows
    (index_file,) = (cache / "lines").glob("*.lines.npy")
    location = locate("t.jsonl", [data])
    again = RowSource(location, cache)  # a fresh open (another process) maps the cached index
    reader = again._readers[0]
    assert reader._index_map is not None and _all(again) == rows  # type: ignore[attr-defined]
    index_file.unlink()
    RowSource(location, cache)
    assert index_file.exists()


def test_line_index_matches_a_plain_split() -> None:
    text = b'{"a": 1}\n\n{"b": 2}\r\n{"c": 3}'
    chunks = [np.frombuffer(text[:7], np.uint8), np.frombuffer(text[7:], np.uint8)]  # a line across chunks
    starts, ends = line_index(chunks)
    assert [text[s:e] for s, e in zip(starts, ends, strict=True)] == [b'{"a": 1}', b'{"b": 2}\r', b'{"c": 3}']


def test_a_bad_line_is_named_by_its_row_across_shards(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", _rows(3))
    (tmp_path / "b.jsonl").write_text('{"ok": 1}\nnot json\n')
    source = open_dataset("*.jsonl", [tmp_path])
    with pytest.raises(InvalidSample) as info:
        source.rows([0, 4])
    assert info.value.sample == 4


def test_fingerprint_from_metadata_survives_copies_and_sees_changes(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    for i in range(2):
        pq.write_table(pa.Table.from_pylist(_rows(20, 20 * i)), one / f"s{i}.parquet")
    _jsonl(one / "t.jsonl", _rows(5))
    shutil.copytree(one, two)
    os.utime(two / "s0.parquet", (1, 1))  # another mtime, as on another replica's copy
    for name in ("*.parquet", "t.jsonl"):
        assert open_dataset(name, [one]).fingerprint == open_dataset(name, [two]).fingerprint
    before = open_dataset("*.parquet", [two]).fingerprint
    pq.write_table(pa.Table.from_pylist(_rows(20, 100)), two / "s1.parquet")
    assert open_dataset("*.parquet", [two]).fingerprint != before
    with (two / "t.jsonl").open("a") as fh:
        fh.write(json.dumps(_rows(1)[0]) + "\n")
    reopened = open_dataset("t.jsonl", [two])
    assert len(reopened) == 6 and reopened.fingerprint != open_dataset("t.jsonl", [one]).fingerprint


def test_simultaneous_first_requests_open_a_dataset_once(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(_rows(200)), tmp_path / "d.parquet", row_group_size=10)
    before = _dataset._OPENED.opens
    barrier = threading.Barrier(8)
    got: list[RowSource] = []

    def first_request() -> None:
        barrier.wait()
        got.append(open_dataset("d.parquet", [tmp_path]))

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _dataset._OPENED.opens == before + 1 and len({id(s) for s in got}) == 1


def test_parquet_epoch_decodes_each_row_group_once_in_a_bounded_cache(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(_rows(2000)), tmp_path / "d.parquet", row_group_size=100)
    group_bytes = pq.read_table(tmp_path / "d.parquet").slice(0, 100).nbytes
    cache = BlockCache(max_bytes=8 * group_bytes)
    source = RowSource(locate("d.parquet", [tmp_path]), None, blocks=cache)
    order = source.order(seed=1, epoch=0, shuffle=True)
    rows, expected = order.rows(np.arange(len(source))), _rows(2000)
    assert sorted(rows.tolist()) == list(range(2000)) and rows[:100].tolist() != list(range(100))
    for start in range(0, 2000, 8):  # batches of 8, in epoch order
        assert source.rows(rows[start : start + 8]) == [expected[i] for i in rows[start : start + 8]]
        assert cache.nbytes <= 9 * group_bytes
    assert cache.loads <= 20 + 2  # 20 row groups: each decoded about once per epoch


def test_sources_stay_inside_roots_and_urls_need_permission(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    _jsonl(tmp_path / "secret.jsonl", _rows(1))
    _jsonl(root / "ok.jsonl", _rows(2))
    (root / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    assert _all(open_dataset("*.jsonl", [root])) == _rows(2)  # the link out of the root is not matched
    for bad in ("../*.jsonl", "../secret.jsonl", "link.jsonl", "s3://bucket/train.jsonl", "none/*.jsonl", "", "."):
        with pytest.raises(InvalidSample) as info:
            open_dataset(bad, [root])
        assert info.value.field == "dataset.path"
    for bad in ("s3://other/x.jsonl", "s3://bucket/data/../secret/x.jsonl", "s3://bucket/database/x.jsonl"):
        with pytest.raises(InvalidSample, match="not under an allowed"):
            open_dataset(bad, [root], urls=["s3://bucket/data"])


def test_other_schemes_go_through_fsspec(tmp_path: Path) -> None:
    """A scheme pyarrow has no filesystem for (fsspec's in-memory one here) is read through fsspec."""
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    rows = _rows(9)
    with memory.open("/feedline-test/shards/a.jsonl", "wb") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows[:4]).encode())
    with memory.open("/feedline-test/shards/b.jsonl", "wb") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows[4:]).encode())
    try:
        source = open_dataset("memory://feedline-test/shards", [tmp_path], urls=["memory://feedline-test"])
        assert _all(source) == rows and not source.random_access
    finally:
        memory.rm("/feedline-test", recursive=True)


def test_reading_a_whole_file_leaves_rss_flat(tmp_path: Path) -> None:
    """Pages of the memory-mapped file and index are let go of as rows are read: an epoch over an 80 MB JSONL
    file grows RSS by far less than the file (without that it grows by the whole file)."""
    psutil = pytest.importorskip("psutil")
    filler = "x" * 2000
    with (tmp_path / "big.jsonl").open("w") as fh:
        for i in range(40_000):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"{i} {filler}"}]}) + "\n")
    before = psutil.Process().memory_info().rss
    source = open_dataset("big.jsonl", [tmp_path], cache_dir=tmp_path / "cache")  # the index scan reads it all
    order = source.order(seed=0, epoch=0, shuffle=True).rows(np.arange(len(source)))
    for start in range(0, len(source), 64):
        source.rows(order[start : start + 64])
    assert (psutil.Process().memory_info().rss - before) / 2**20 < 40
