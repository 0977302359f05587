"""Dataset sources: shards, globs, saved HF datasets, metadata fingerprints, cached line indexes, one open."""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedline.proto import InvalidSample
from feedline.service.server import _datasets as _dataset
from feedline.service.server._caps import count_chars
from feedline.service.server._datasets import RowSource, open_dataset
from feedline.service.server.datasets._files import locate
from feedline.service.server.datasets._lines import scan_lines
from feedline.service.server.datasets._readers import BlockCache


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
    (index_file,) = (cache / "lines").glob("*.rows")
    assert index_file.stat().st_size == 8 * (50 + 1)  # a start per row and the file's size
    location = locate("t.jsonl", [data])
    built = index_file.stat().st_mtime_ns
    again = RowSource(location, cache)  # a fresh open (another process) reads the cached index
    assert index_file.stat().st_mtime_ns == built and _all(again) == rows
    index_file.write_bytes(index_file.read_bytes()[:-8] + (1).to_bytes(8, "little"))  # built from another file
    assert _all(RowSource(location, cache)) == rows
    index_file.unlink()
    RowSource(location, cache)
    assert index_file.exists()


def _reference(text: bytes, block_bytes: int) -> tuple[list[bytes], list[list[int]]]:
    """Rows (non-blank lines) of ``text`` and its block table, by a plain split."""
    rows, starts, ends, offset = [], [], [], 0
    for line in text.split(b"\n"):
        if len(line) >= 8 or line.strip():
            rows.append(line)
            starts.append(offset)
            ends.append(offset + len(line))
        offset += len(line) + 1
    firsts = [i for i in range(len(starts)) if i == 0 or starts[i] // block_bytes != starts[i - 1] // block_bytes]
    last = [f - 1 for f in firsts[1:]] + ([len(starts) - 1] if starts else [])
    return rows, [firsts, [starts[f] for f in firsts], [ends[i] for i in last]]


def _scanned(text: bytes, cuts: list[int], block_bytes: int) -> tuple[list[bytes], list[list[int]]]:
    out = io.BytesIO()
    bounds = [0, *sorted(c % (len(text) + 1) for c in cuts), len(text)]
    blocks = scan_lines((text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)), out, block_bytes)
    entries = np.frombuffer(out.getvalue(), "<i8").tolist()
    assert entries[-1] == len(text)
    rows = [text[a:b].split(b"\n", 1)[0] for a, b in zip(entries, entries[1:], strict=False)]
    return rows, blocks.tolist()


def test_line_index_across_chunks_crlf_and_blank_lines() -> None:
    text = b'{"a": 1}\n\n{"b": 2}\r\n \r\n{"c": 3}'
    rows, _ = _scanned(text, [7, 12, 19], 16)  # a line and a blank line across chunks
    assert rows == [b'{"a": 1}', b'{"b": 2}\r', b'{"c": 3}']


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.sampled_from([b"", b" ", b"\r", b"\t \r", b"       ", b"        ", b"x", b"{}"]),
            st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
        ),
        max_size=40,
    ),
    final_newline=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
    block_bytes=st.sampled_from([1, 7, 32, 1 << 20]),
)
def test_line_index_matches_a_plain_split(
    lines: list[bytes], final_newline: bool, cuts: list[int], block_bytes: int
) -> None:
    """Any bytes, cut into chunks anywhere: the scan finds the rows and blocks a plain split finds."""
    text = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    assert _scanned(text, cuts, block_bytes) == _reference(text, block_bytes)


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
    """Rows are read with ``pread`` from the file and its on-disk index, nothing mapped or held per row: an
    epoch over an 80 MB JSONL file grows RSS by far less than the file."""
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


def test_jsonl_rows_come_from_unmapped_files_and_an_index_on_disk(tmp_path: Path) -> None:
    """Neither the data file nor its index is mapped into the process (a mapping's pages count in RSS however
    the file is read), and what the reader holds grows with the file's 4 MiB blocks at most, not its rows."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.fail("this check reads /proc/self/maps (Linux)")
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    _jsonl(small, _rows(10))
    _jsonl(large, _rows(50_000))
    held = []
    for name in ("small.jsonl", "large.jsonl"):
        source = open_dataset(name, [tmp_path], cache_dir=tmp_path / "cache")
        assert source.rows([len(source) - 1, 0]) == [_rows(len(source))[-1], _rows(1)[0]]
        mapped = maps.read_text()
        assert str(tmp_path) not in mapped, [line for line in mapped.splitlines() if str(tmp_path) in line]
        reader = source._readers[0]
        held.append(sum(a.nbytes for a in vars(reader).values() if isinstance(a, np.ndarray)))
        held[-1] += reader._index.blocks.nbytes  # type: ignore[attr-defined]
    assert held[0] <= held[1] < 1024  # 24 bytes per 4 MiB of the file at most


def test_jsonl_rows_decode_as_json_does(tmp_path: Path) -> None:
    """Whitespace around a value is allowed (JSON's own: spaces, tabs, CR); anything else after it is the
    decoder's error, naming the row."""
    (tmp_path / "t.jsonl").write_bytes(b'  {"a": 1}\n{"b": [2]} \t\r\n"text"\n{"c": 3} x\n{"d": 4}\xc2\xa0\n')
    source = open_dataset("t.jsonl", [tmp_path])
    assert source.rows([0, 1, 2]) == [{"a": 1}, {"b": [2]}, "text"]
    for row in (3, 4):
        with pytest.raises(InvalidSample, match="Extra data") as info:
            source.rows([row])
        assert info.value.sample == row


_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)  # escapes, non-ASCII, astral characters, no surrogates
_JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.dictionaries(_TEXT, _JSON_VALUES, max_size=4), min_size=2, max_size=12),
    ascii_only=st.booleans(),
    picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=6),
)
def test_stored_size_bounds_the_characters_a_dataset_row_counts(
    tmp_path_factory: pytest.TempPathFactory, rows: list[dict], ascii_only: bool, picks: list[int]
) -> None:
    """What spares a dataset batch the character walk: JSONL rows' stored bytes (any shard, escaped or raw
    UTF-8) are never below their counted characters; Parquet stores no text, so it bounds nothing."""
    root = tmp_path_factory.mktemp("bound")
    half = len(rows) // 2
    for name, part in (("a", rows[:half]), ("b", rows[half:])):
        (root / "j").mkdir(exist_ok=True)
        lines = "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in part)
        (root / "j" / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    source = open_dataset("j", [root])
    indices = np.array([p % len(rows) for p in picks], dtype=np.int64)
    stored = source.encoded_bytes(indices)
    assert stored is not None and sum(count_chars(row) for row in source.rows(indices)) <= stored
    expected = sum(len((json.dumps(rows[i], ensure_ascii=ascii_only) + "\n").encode()) for i in indices.tolist())
    assert stored == expected
    pq.write_table(pa.Table.from_pylist(_rows(4)), root / "t.parquet")
    assert open_dataset("t.parquet", [root]).encoded_bytes(np.arange(4)) is None
