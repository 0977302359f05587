"""Dataset mode at corpus size: open, first batch, memory and per-batch cost at 10^5, 10^6 and 10^7 rows.

    python -m bench.bench_datasets            # 10^5, 10^6, 10^7 rows (about 3 GB under /tmp, deleted after)
    python -m bench.bench_datasets --quick    # 10^4 rows

Synthetic short chat rows (one question, one answer: the smallest engine work per batch, so the hardest case
for the ratio) are written as one JSONL file, Parquet shards (10^6 rows, row groups of 65,536), a saved HF
dataset directory, and, when moto is installed, the Parquet shards in a bucket of a moto S3 server (up to
10^7 rows: moto keeps objects in memory). Side by side:

- a real `feedline serve` (one per size, its /proc RSS and CPU): the first batch with a cold open (JSONL line
  index built), CPU per batch at the start, middle and end of an epoch (40 batches of 8 rows each), the
  first batch when resuming at 90%, RSS growth;
- in this process, the dataset's share of a batch (order + reading rows as Python dicts, as the server hands
  them to the engine) against the engine's (collate of the same rows), at the same three places, CPU time;
  where rows come from decoded blocks (Parquet row groups, Arrow record batches) a batch's share of reading
  and decoding every block once per epoch is added (``load`` timed per block, times blocks / batches), and a
  first pass over the same batches reads the blocks they draw from (in the server too);
- the shuffle quality of each format's epoch order (windows over blocks) against a full permutation
  (``shuffle_quality``);
- HF ``datasets`` (``load_from_disk``, memory-mapped Arrow): open time, RSS, random access per row, next to
  ours on the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench._serve import Server

__all__ = ["run"]

BATCH = 8
SPAN = 40
_SHARD_ROWS = 1_000_000
_ROW_GROUP = 65_536
_S3_MAX_ROWS = 10_000_000
_HF_SHARD_CHUNKS = 4  # 4 x 10^6 short rows: ~480 MB shards, as save_to_disk's default 500 MB
_MIXED_POSITIONS = 1 << 20
_SOURCES = 100
_RUN = 1024
_NEAR = 1000


def _chunks(n: int) -> Iterator[tuple[Any, Any]]:
    """(user, assistant) string arrays of short chats, 10^6 rows at a time (pyarrow compute, no Python loop)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for start in range(0, n, _SHARD_ROWS):
        idx = np.arange(start, min(n, start + _SHARD_ROWS))
        s = pc.cast(pa.array(idx), pa.string())
        k = pc.cast(pa.array((idx * 7919) % 1_000_003), pa.string())
        yield (
            pc.binary_join_element_wise("Question ", s, ": what is the checksum of item ", k, "?", ""),
            pc.binary_join_element_wise("The checksum of item ", k, " is ", s, ".", ""),
        )


def _table(user: Any, assistant: Any) -> Any:
    import pyarrow as pa

    n = len(user)
    contents = pa.concat_arrays([user, assistant]).take(
        pa.array(np.stack([np.arange(n), np.arange(n) + n], 1).reshape(-1))
    )
    roles = pa.array(["user", "assistant"]).take(pa.array(np.tile([0, 1], n)))
    messages = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
    return pa.table(
        {"messages": pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), messages)}
    )


def generate(root: Path, n: int) -> dict[str, float]:
    """train.jsonl, parquet/part-*.parquet and hf/ (if ``datasets`` is installed) with ``n`` rows; seconds each.

    The saved HF dataset is written as ``save_to_disk`` writes one (``datasets``' own ArrowWriter, record batches
    of 1,000 rows, shards of ~500 MB, state.json and dataset_info.json) a chunk at a time, so that 10^8 rows never
    sit in memory at once.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    took = {"write jsonl + parquet s": 0.0}
    (root / "parquet").mkdir(parents=True)
    hf = _HfWriter(root / "hf", -(-n // _SHARD_ROWS))
    with open(root / "train.jsonl", "wb") as out:
        for i, (user, assistant) in enumerate(_chunks(n)):
            t0 = time.perf_counter()
            lines = pc.binary_join_element_wise(
                '{"messages": [{"role": "user", "content": "',
                user,
                '"}, {"role": "assistant", "content": "',
                assistant,
                '"}]}\n',
                "",
            )
            offsets = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset : lines.offset + len(lines) + 1]
            out.write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])
            table = _table(user, assistant)
            pq.write_table(table, root / "parquet" / f"part-{i:05d}.parquet", row_group_size=_ROW_GROUP)
            took["write jsonl + parquet s"] += time.perf_counter() - t0
            hf.write(i, table)
    took.update(hf.close())
    return took


class _HfWriter:
    """A saved HF dataset written a table at a time (nothing when ``datasets`` is not installed)."""

    def __init__(self, directory: Path, chunks: int) -> None:
        try:
            import datasets
        except ImportError:
            self.datasets = None
            return
        self.datasets, self.directory = datasets, directory
        self.shards = -(-chunks // _HF_SHARD_CHUNKS)
        self.names: list[str] = []
        self.writer: Any = None
        self.seconds = 0.0

    def write(self, chunk: int, table: Any) -> None:
        if self.datasets is None:
            return
        t0 = time.perf_counter()
        if chunk % _HF_SHARD_CHUNKS == 0:
            self._finish_shard()
            self.directory.mkdir(exist_ok=True)
            self.names.append(f"data-{len(self.names):05d}-of-{self.shards:05d}.arrow")
            self.features = self.datasets.Features.from_arrow_schema(table.schema)
            self.writer = self.datasets.arrow_writer.ArrowWriter(
                path=str(self.directory / self.names[-1]), features=self.features, writer_batch_size=1000
            )
        self.writer.write_table(table)
        self.seconds += time.perf_counter() - t0

    def _finish_shard(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer = None

    def close(self) -> dict[str, float]:
        if self.datasets is None:
            return {}
        t0 = time.perf_counter()
        self._finish_shard()
        state = {
            "_data_files": [{"filename": name} for name in self.names],
            "_fingerprint": "feedline-bench",
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (self.directory / "state.json").write_text(json.dumps(state, indent=2))
        self.datasets.DatasetInfo(features=self.features).write_to_directory(str(self.directory))
        return {"write hf s": self.seconds + time.perf_counter() - t0}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def _stream(channel: Any, path: str, start: int, count: int) -> tuple[float, int]:
    """(seconds to the first frame, frames) of one StreamDataset call of ``count`` batches from ``start``."""
    from feedline.proto.v1 import feedline_pb2 as pb
    from feedline.proto.v1 import frame_stream_calls

    _, stream_dataset = frame_stream_calls(channel)
    request = pb.StreamDatasetRequest(
        dataset=pb.DatasetRef(path=path),
        batch_size=BATCH,
        seed=1,
        shuffle=True,
        start_batch_index=start,
        max_batches=count,
    )
    t0 = time.perf_counter()
    first, frames = 0.0, 0
    for _ in stream_dataset(request, timeout=600):
        frames += 1
        first = first or time.perf_counter() - t0
    return first, frames


def serve_side(server: Server, paths: dict[str, str], n: int) -> dict[str, Any]:
    """Per format: cold first batch, server CPU per batch at start/middle/end, resume at 90%, RSS growth."""
    import grpc

    out: dict[str, Any] = {}
    batches = n // BATCH
    with grpc.insecure_channel(server.address) as channel:
        for kind, path in paths.items():
            rss0 = _rss_mb(server.proc.pid)
            first, _ = _stream(channel, path, 0, 1)
            row: dict[str, Any] = {"first batch (cold open) s": first}
            for place, start in (("start", 1), ("middle", batches // 2), ("end", batches - SPAN - 1)):
                _stream(channel, path, start, SPAN)  # a first pass reads the blocks these batches draw from
                cpu0 = server.cpu_seconds()
                _stream(channel, path, start, SPAN)
                row[f"server CPU ms/batch, {place}"] = (server.cpu_seconds() - cpu0) / SPAN * 1e3
            row["first batch, resume at 90% s"] = _stream(channel, path, int(batches * 0.9), 1)[0]
            row["server RSS growth MB"] = _rss_mb(server.proc.pid) - rss0
            out[kind] = row
    return out


def split_side(paths: dict[str, str], root: Path, n: int, processor: Any) -> dict[str, Any]:
    """In this process: open cold and warm, dataset vs engine CPU per batch at three places, random row access."""
    from feedline.service import CollateOptions, collate
    from feedline.service.server._datasets import CACHE_BYTES, DatasetPlan, RowSource, batch_span
    from feedline.service.server.datasets._files import locate
    from feedline.service.server.datasets._order import EpochOrder
    from feedline.service.server.datasets._readers import BlockCache

    out: dict[str, Any] = {}
    plan = DatasetPlan(seed=1, batch_size=BATCH)
    rng = np.random.default_rng(0)
    for kind, path in paths.items():
        if "://" in path:
            continue
        cache = Path(tempfile.mkdtemp(prefix="feedline-bench-cache-"))
        blocks = BlockCache(CACHE_BYTES)
        try:
            t0 = time.perf_counter()
            RowSource(locate(path, [root]), cache, blocks)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            source = RowSource(locate(path, [root]), cache, blocks)
            warm = time.perf_counter() - t0
            row: dict[str, Any] = {"open cold s": cold, "open warm s": warm, "files": len(source.location.files)}
            ratios = []
            decode = _block_decode_ms(source) * len(source._block_rows) / (n / BATCH)
            row["block decode amortized ms/batch"] = decode
            order = source.order(plan.seed, plan.epoch, plan.shuffle)
            for place, start in (("start", 1), ("middle", n // BATCH // 2), ("end", n // BATCH - SPAN)):
                spans = [batch_span(n, plan, b) for b in range(start, start + SPAN)]
                for span in spans:  # a first pass reads the blocks these batches draw from (counted in decode)
                    source.rows(order.between(*span))
                data_cpu = engine_cpu = 0.0
                kept = 0
                for span in spans:
                    loads = blocks.loads
                    c0 = time.process_time()
                    order = source.order(plan.seed, plan.epoch, plan.shuffle)
                    rows = source.rows(order.between(*span))  # as the server does
                    c1 = time.process_time()
                    collate(processor, rows, CollateOptions())
                    if blocks.loads == loads:  # a block decoded here is counted in ``decode`` instead
                        data_cpu, engine_cpu = data_cpu + c1 - c0, engine_cpu + time.process_time() - c1
                        kept += 1
                row[f"dataset CPU ms/batch, {place}"] = data_cpu / kept * 1e3
                ratios.append((data_cpu / kept + decode / 1e3) / (engine_cpu / kept))
                row[f"engine CPU ms/batch, {place}"] = engine_cpu / kept * 1e3
                row[f"batches decoding a block, {place}"] = SPAN - kept
            row["dataset / engine, worst"] = max(ratios)
            row["order window rows"] = min(source._window or n, n)
            visited = order.rows(np.arange(min(n, _MIXED_POSITIONS), dtype=np.int64))
            full = EpochOrder([n], seed=plan.seed, epoch=plan.epoch).rows(np.arange(len(visited), dtype=np.int64))
            row["shuffle"] = shuffle_quality(visited, n)
            row["shuffle, full permutation"] = shuffle_quality(full, n)
            picks = rng.integers(0, n, 2000)
            t0 = time.perf_counter()
            for i in picks.tolist():
                source.rows([i])
            row["random row us"] = (time.perf_counter() - t0) / len(picks) * 1e6
            out[kind] = row
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return out


def shuffle_quality(rows: np.ndarray, n: int) -> dict[str, float]:
    """How mixed the visiting order ``rows`` (rows at the first positions of an epoch of ``n``) is:

    - near pairs: how often two rows of one batch lie within 1,000 rows of each other in storage order (a full
      permutation: ~2,000 / n; rows from the same record batch or row group raise it);
    - source mix: storage order cut into 100 equal parts, as a corpus concatenated from 100 sources; the mean
      total-variation distance between the parts' shares in each run of 1,024 positions (128 batches) and the
      uniform 1% each (a full permutation: ~0.12, sampling noise; 1.0 would be one source per run).
    """
    batches = rows[: len(rows) // BATCH * BATCH].reshape(-1, BATCH)
    left, right = np.triu_indices(BATCH, 1)
    near = float(np.mean(np.abs(batches[:, left] - batches[:, right]) < _NEAR))
    runs = rows[: len(rows) // _RUN * _RUN].reshape(-1, _RUN) * _SOURCES // n
    keyed = runs + (np.arange(len(runs)) * _SOURCES)[:, None]
    shares = np.bincount(keyed.reshape(-1), minlength=len(runs) * _SOURCES).reshape(len(runs), _SOURCES) / _RUN
    distance = float(np.mean(0.5 * np.abs(shares - 1 / _SOURCES).sum(axis=1))) if len(runs) else 0.0
    return {"batch pairs within 1000 storage rows": near, "source mix TV distance, runs of 1024": distance}


def _block_decode_ms(source: Any) -> float:
    """CPU ms to read and decode one block (a Parquet row group, an Arrow record batch; 0 where rows are read
    one by one), uncached, mean over the first file's first 3 blocks."""
    if source.random_access:
        return 0.0
    reader = source._readers[0]
    blocks = range(min(3, len(reader.block_rows)))
    c0 = time.process_time()
    for b in blocks:
        reader.load(b)
    return (time.process_time() - c0) / len(blocks) * 1e3


def hf_side(root: Path, n: int) -> dict[str, Any]:
    """HF ``datasets`` on the saved directory: open, RSS, random access per row and per batch of 8."""
    import datasets
    import psutil

    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    ds = datasets.load_from_disk(str(root / "hf"))
    opened = time.perf_counter() - t0
    picks = np.random.default_rng(0).integers(0, n, 2000).tolist()
    t0 = time.perf_counter()
    for i in picks:
        ds[i]
    per_row = (time.perf_counter() - t0) / len(picks) * 1e6
    t0 = time.perf_counter()
    for k in range(0, len(picks), BATCH):
        ds[picks[k : k + BATCH]]
    per_batch = (time.perf_counter() - t0) / (len(picks) / BATCH) * 1e3
    return {
        "open s": opened,
        "RSS growth MB": (proc.memory_info().rss - rss0) / 2**20,
        "random row us": per_row,
        "random batch of 8 ms": per_batch,
    }


def _s3(root: Path, n: int) -> tuple[Any, str] | None:
    """A moto S3 server in this process holding the Parquet shards; (server, URL prefix), or None."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    from pyarrow import fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        }
    )
    s3 = fs.S3FileSystem(allow_bucket_creation=True, endpoint_override=f"http://{host}:{port}")
    s3.create_dir("bench")
    fs.copy_files(str(root / "parquet"), f"bench/{n}/parquet", destination_filesystem=s3)
    return server, f"s3://bench/{n}"


def run(quick: bool, sizes: list[int] | None = None) -> dict[str, Any]:
    import logging

    from bench._processors import qwen25

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    sizes = sizes or ([10_000] if quick else [100_000, 1_000_000, 10_000_000])
    processor = qwen25()
    figures: dict[str, Any] = {"batch_size": BATCH, "span_batches": SPAN, "sizes": {}}
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix=f"feedline-bench-{n}-"))
        s3 = None
        try:
            record: dict[str, Any] = {"generate": generate(root, n)}
            paths = {"jsonl": "train.jsonl", "parquet shards": "parquet"}
            if (root / "hf").exists():
                paths["hf dir"] = "hf"
            if n <= _S3_MAX_ROWS and (s3 := _s3(root, n)) is not None:
                paths["s3 parquet (moto)"] = f"{s3[1]}/parquet"
            record["in process"] = split_side(paths, root, n, processor)
            if "hf dir" in paths:
                record["hf datasets"] = hf_side(root, n)
            args = ["--data-root", str(root), "--dataset-cache-dir", str(root / "cache")]
            server = Server(*args, *(["--data-url", s3[1]] if s3 else []))
            try:
                server.wait_ready()
                record["server RSS at start MB"] = _rss_mb(server.proc.pid)
                record["server"] = serve_side(server, paths, n)
                record["server RSS at end MB"] = _rss_mb(server.proc.pid)
            finally:
                server.close()
            figures["sizes"][str(n)] = record
        finally:
            if s3 is not None:
                s3[0].stop()
            shutil.rmtree(root, ignore_errors=True)
    worst = [r["in process"][k]["dataset / engine, worst"] for r in figures["sizes"].values() for k in r["in process"]]
    figures["dataset / engine CPU per batch, worst"] = max(worst)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")], default=None)
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.sizes), indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
