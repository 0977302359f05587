"""Issue 9, load: K gRPC streaming clients plus HTTP clients against one real `feedline serve` for a bounded
time, every answer checked byte for byte, server RSS sampled, p50/p99 latency reported; and a deliberately slow
consumer on CollateStream cannot make the server buffer without limit (its in-flight window holds it back).

Duration: FEEDLINE_LOAD_SECONDS (default 20). Figures are printed (run with -rP) and quoted in RELIABILITY.md.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import httpx
import numpy as np
import pytest

from feedline.proto import FrameAssembler, unwrap_frame
from feedline.proto.v1 import CHANNEL_OPTIONS, frame_stream_calls
from feedline.proto.v1 import feedline_pb2 as pb
from feedline.service import CollateOptions, Processor, collate
from feedline.service.server import CollateResult
from tests.support.reliability_harness import ROW_SETS, collate_request, metric, rss_bytes
from tests.support.servers import Served

pytestmark = pytest.mark.timeout(240)

GRPC_STREAMS, HTTP_CLIENTS = 8, 4
SECONDS = float(os.environ.get("FEEDLINE_LOAD_SECONDS", "20"))
_MB = 1 << 20


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    served = Served()
    yield served
    served.close()


@dataclass
class Tally:
    """What one client saw: latencies in seconds, answers that differed from the engine, errors."""

    latencies: list[float] = field(default_factory=list)
    mismatches: int = 0
    errors: list[str] = field(default_factory=list)


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(rss_bytes(self.pid))
            time.sleep(self.every)


def _grpc_client(target: str, deadline: float, results: list[CollateResult], tally: Tally, seed: int) -> None:
    """A lockstep CollateStream: the next request goes out when the previous batch has arrived."""
    received = threading.Event()
    sent_at: list[float] = []

    def requests() -> Iterator[pb.CollateRequest]:
        index = 0
        while time.monotonic() < deadline:
            sent_at.append(time.perf_counter())
            yield collate_request({"samples": ROW_SETS[(index + seed) % len(ROW_SETS)]}, index)
            index += 1
            if not received.wait(30):
                return
            received.clear()

    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        collate_stream, _ = frame_stream_calls(channel)
        assembler = FrameAssembler()
        try:
            for message in collate_stream(requests(), timeout=SECONDS + 60):
                blob = assembler.add(unwrap_frame(message))
                if blob is None:
                    continue
                index = len(tally.latencies)
                tally.latencies.append(time.perf_counter() - sent_at[index])
                if bytes(blob) != bytes(results[(index + seed) % len(results)].encode(index)):
                    tally.mismatches += 1
                received.set()
        except grpc.RpcError as err:
            tally.errors.append(f"{err.code().name}: {err.details()}")


def _http_client(base_url: str, deadline: float, expected: list[bytes], tally: Tally, seed: int) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        index = seed
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                reply = client.post(
                    "/v1/collate",
                    json={"samples": ROW_SETS[index % len(ROW_SETS)]},
                    headers={"accept": "application/x-feedline-batch"},
                )
            except httpx.HTTPError as exc:
                tally.errors.append(repr(exc))
                continue
            tally.latencies.append(time.perf_counter() - start)
            if reply.status_code != 200:
                tally.errors.append(f"{reply.status_code}: {reply.text[:200]}")
            elif reply.content != expected[index % len(expected)]:
                tally.mismatches += 1
            index += 1


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1e3, 1)


def test_concurrent_grpc_streams_and_http_clients(server: Served, qwen_processor: Processor) -> None:
    opts = CollateOptions()
    results = [CollateResult(qwen_processor, opts, collate(qwen_processor, rows, opts)) for rows in ROW_SETS]
    expected_http = [bytes(r.encode(0)) for r in results]
    before = rss_bytes(server.proc.pid)
    sampler = RssSampler(server.proc.pid)
    sampler.start()
    deadline = time.monotonic() + SECONDS
    tallies = {f"grpc{i}": Tally() for i in range(GRPC_STREAMS)} | {f"http{i}": Tally() for i in range(HTTP_CLIENTS)}
    threads = [
        threading.Thread(
            target=_grpc_client, args=(f"127.0.0.1:{server.grpc_port}", deadline, results, tallies[f"grpc{i}"], i)
        )
        for i in range(GRPC_STREAMS)
    ]
    threads += [
        threading.Thread(
            target=_http_client,
            args=(f"http://127.0.0.1:{server.http_port}", deadline, expected_http, tallies[f"http{i}"], i),
        )
        for i in range(HTTP_CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SECONDS + 90)
    sampler.done.set()
    sampler.join()
    grpc_lat = [x for k, t in tallies.items() if k.startswith("grpc") for x in t.latencies]
    http_lat = [x for k, t in tallies.items() if k.startswith("http") for x in t.latencies]
    errors = [e for t in tallies.values() for e in t.errors]
    assert errors == [] and sum(t.mismatches for t in tallies.values()) == 0
    assert all(t.latencies for t in tallies.values())  # every client was served throughout
    rss = sampler.samples
    quarter = max(1, len(rss) // 4)
    early, late = max(rss[:quarter]), max(rss[-quarter:])
    assert max(rss) - before < 400 * _MB  # bounded: a few hundred MB at most over the idle server
    assert late - early < 64 * _MB  # and flat: no growth from the first quarter of the run to the last
    assert server.http.get("/readyz").status_code == 200
    print(
        f"RELIABILITY load: {GRPC_STREAMS} gRPC streams + {HTTP_CLIENTS} HTTP clients for {SECONDS:.0f} s: "
        f"{len(grpc_lat)} gRPC batches (p50 {_ms(grpc_lat, 50)} ms, p99 {_ms(grpc_lat, 99)} ms), "
        f"{len(http_lat)} HTTP collates (p50 {_ms(http_lat, 50)} ms, p99 {_ms(http_lat, 99)} ms), 0 errors, "
        f"0 mismatches; server RSS idle {before / _MB:.0f} MB, peak {max(rss) / _MB:.0f} MB, "
        f"first quarter {early / _MB:.0f} MB, last quarter {late / _MB:.0f} MB"
    )


def test_a_slow_consumer_cannot_make_the_server_buffer_without_limit(server: Served) -> None:
    """200 batches of ~4 MB are requested on one stream whose client reads one every 2 s: the server collates
    only its window ahead (4 batches, Limits.max_in_flight_per_stream) and its RSS stays far below the
    750 MB that buffering the stream would take."""
    options = {"padding": "max_length", "max_length": 16384, "truncation": "right"}
    requests = [collate_request({"samples": ROW_SETS[3] * 2, "options": options}, i) for i in range(200)]
    samples_before = metric(server.http.get("/metrics").text, "feedline_samples_total")
    before = rss_bytes(server.proc.pid)
    sampler = RssSampler(server.proc.pid, every=0.1)
    sampler.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=[("grpc.http2.bdp_probe", 0)]) as channel:
        collate_stream, _ = frame_stream_calls(channel)
        call = collate_stream(iter(requests), timeout=120)
        assembler, read = FrameAssembler(), 0
        for message in call:
            if assembler.add(unwrap_frame(message)) is None:
                continue
            read += 1
            if read == 3:
                break
            time.sleep(2.0)
        time.sleep(1.0)  # let the server run as far ahead as it will
        collated = metric(server.http.get("/metrics").text, "feedline_samples_total") - samples_before
        call.cancel()
    sampler.done.set()
    sampler.join()
    peak = max(sampler.samples) - before
    assert collated <= (3 + 4 + 2) * 10  # read + window + one blocked in the send + one being read, x 10 rows
    assert peak < 200 * _MB
    print(
        f"RELIABILITY slow consumer: 200 batches of ~4 MB asked, {read} read in ~5 s; the server collated "
        f"{int(collated) // 10} batches and grew by {peak / _MB:.0f} MB at most (vs ~750 MB unbounded)"
    )
