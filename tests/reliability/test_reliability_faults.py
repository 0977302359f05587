"""Issue 9, faults, on real `feedline serve` processes: a client killed mid-stream stops the server's work for
it; SIGTERM drains an in-flight stream without truncating a batch, and a replica drained mid-epoch loses and
repeats nothing; processors that fail to load keep /readyz and gRPC health not serving, with the reason.

SIGKILL of a replica mid-epoch (exactly-once, byte-identical): tests/test_client.py::
test_sigkill_of_a_replica_mid_epoch_loses_and_repeats_nothing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feedline.proto import FrameAssembler, unwrap_frame
from feedline.proto.v1 import SERVICE_NAME, feedline_pb2_grpc, frame_stream_calls
from feedline.proto.v1 import feedline_pb2 as pb
from feedline.service import CollateOptions, Processor
from tests.support.client import batch_blobs, dataset_loader
from tests.support.reliability_corpus import OK
from tests.support.reliability_harness import collate_request, expected_blob, metric, remote_code_repo, wait_for
from tests.support.servers import Served

pytestmark = pytest.mark.timeout(180)

_PADDED = {"padding": "max_length", "max_length": 4096, "truncation": "right"}
_ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": f"Answer {i}. " + "more " * (i % 9)},
        ]
    }
    for i in range(2000)
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults-data")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _ROWS[:200]))
    (root / "big.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _ROWS))
    return root


@pytest.fixture(scope="module")
def server(data_root: Path) -> Iterator[Served]:
    served = Served("--data-root", str(data_root))
    yield served
    served.close()


# --- a client that disconnects mid-stream --------------------------------------------------------------------

_CLIENT = """
import json, sys, time
import grpc
from feedline.proto.v1 import feedline_pb2 as pb, frame_stream_calls
target, method, row = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
options = pb.CollateOptions(padding="max_length", max_length=4096, truncation="right")
channel = grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)])
collate_stream, stream_dataset = frame_stream_calls(channel)
if method == "CollateStream":
    requests = (pb.CollateRequest(samples=[json.dumps(row).encode()] * 4, options=options, batch_index=i)
                for i in range(500))
    call = collate_stream(requests, timeout=600)
else:
    call = stream_dataset(pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="big.jsonl"), batch_size=4,
                                                  options=options), timeout=600)
for n, _ in enumerate(call):
    if n == 2:
        print("streaming", flush=True)
        time.sleep(600)
"""


def _samples_total(served: Served) -> float:
    return metric(served.http.get("/metrics").text, "feedline_samples_total")


@pytest.mark.parametrize("method", ["CollateStream", "StreamDataset"])
def test_a_client_killed_mid_stream_stops_the_servers_work(server: Served, method: str) -> None:
    """500 batches of 4 are asked for; the client reads 3 and is SIGKILLed: the server logs the call as
    cancelled, its in-flight gauge returns to 0 and its sample counter stops within a window of the kill."""
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, f"127.0.0.1:{server.grpc_port}", method, json.dumps(OK)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "streaming"
        at_kill = _samples_total(server)
        client.kill()
        client.wait(10)
        assert wait_for(
            lambda: any(
                r.get("msg") == "rpc" and r.get("method") == method and r.get("code") == "CANCELLED"
                for r in server.logs
            ),
            20,
        )
        assert wait_for(
            lambda: metric(server.http.get("/metrics").text, "feedline_in_flight", transport="grpc") == 0, 10
        )
        settled = _samples_total(server)
        time.sleep(1.0)
        assert _samples_total(server) == settled  # nothing more is collated for the dead client
    finally:
        client.kill()
    assert settled - at_kill <= 10 * 4  # a window's worth past the kill, never the 2,000 samples asked for
    print(f"RELIABILITY disconnect {method}: {int(settled - at_kill)} samples collated after the kill (of 2000 asked)")


# --- SIGTERM ---------------------------------------------------------------------------------------------------


def test_sigterm_lets_an_in_flight_stream_finish_every_batch(qwen_processor: Processor) -> None:
    """Batches of many small frames are streaming when SIGTERM arrives: all 30 arrive whole and identical to
    the engine's, the call ends OK, and the process exits 0."""
    served = Served("--grace-period", "20")
    try:
        rows = [OK, _ROWS[1]]
        requests = [collate_request({"samples": rows, "options": _PADDED}, i) for i in range(30)]
        for request in requests:
            request.max_frame_bytes = 8192
        with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}", options=[("grpc.http2.bdp_probe", 0)]) as channel:
            collate_stream, _ = frame_stream_calls(channel)
            assembler, blobs = FrameAssembler(), []
            for message in collate_stream(iter(requests), timeout=60):
                blob = assembler.add(unwrap_frame(message))
                if blob is None:
                    continue
                blobs.append(bytes(blob))
                if len(blobs) == 3:
                    served.proc.send_signal(signal.SIGTERM)
                time.sleep(0.05)  # a consumer slower than the server
            assembler.check_complete()
        assert served.proc.wait(30) == 0
    finally:
        served.close()
    options = CollateOptions.from_mapping(_PADDED)
    assert len(blobs) == 30 and all(
        blob == expected_blob(qwen_processor, rows, i, options) for i, blob in enumerate(blobs)
    )
    assert wait_for(lambda: any(r.get("msg") == "stopped" for r in served.logs), 10)  # the log reader caught up
    assert [r.get("code") for r in served.logs if r.get("msg") == "rpc"] == ["OK"]


@pytest.mark.timeout(240)
def test_a_replica_drained_mid_epoch_loses_and_repeats_nothing(data_root: Path, server: Served) -> None:
    """SIGTERM (grace 1 s) on the replica serving an epoch of 100 large batches to a slow trainer: the stream is
    cut at the grace period, the loader resumes on the other replica from its cursor, and the trainer's
    sequence is byte-identical to an undisturbed epoch."""
    draining = Served("--data-root", str(data_root), "--grace-period", "1")
    try:
        targets = [f"127.0.0.1:{draining.grpc_port}", f"127.0.0.1:{server.grpc_port}"]
        # padded on the wire (ragged=False): 100 large batches, so the stream is still going when the drain comes
        options = {"batch_size": 2, "seed": 4, "prefetch": 1, "ragged": False, **_PADDED, "max_length": 8192}
        first = dataset_loader(targets[1], **options)
        reference = batch_blobs(first)

        def drain_at_10(i: int) -> None:
            if i == 10:
                draining.proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)

        loader = dataset_loader(targets, fingerprint=first._remote.fingerprint, **options)
        # pinned already (no ListProcessors): the stream starts on the one to drain
        loader._remote._connection._next = 0
        disturbed = batch_blobs(loader, drain_at_10)
        assert draining.proc.wait(30) == 0
    finally:
        draining.close()
    assert len(reference) == 100 and disturbed == reference

    def resumed() -> list[dict[str, Any]]:
        return [
            r
            for r in server.logs
            if r.get("msg") == "rpc"
            and r.get("method") == "StreamDataset"
            and r.get("code") == "OK"
            and 0 < r.get("batches", 0) < 100
        ]

    assert wait_for(resumed, 10), "the other replica did not resume the epoch from the cursor"
    print(
        f"RELIABILITY drain: epoch of 100 batches, drained replica cut at ~batch 10, resumed with "
        f"{resumed()[-1]['batches']} batches on the other; byte-identical"
    )


# --- processors that fail to load ------------------------------------------------------------------------------


def test_processors_that_fail_to_load_keep_the_server_not_ready(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    (broken / "tokenizer.json").write_text("{this is not a tokenizer")
    marker = tmp_path / "remote-code-ran"
    config = tmp_path / "feedline.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "processors": {
                    "qwen2.5": "qwen2.5",
                    "broken": str(broken),
                    "remote": str(remote_code_repo(tmp_path / "remote", marker)),
                }
            },
            sort_keys=False,
        )
    )
    served = Served("--config", str(config), wait_ready=False)
    try:
        assert served.http.get("/healthz").status_code == 200
        ready = served.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        status = ready.json()["processors"]
        assert status["qwen2.5"] == {"loaded": True, "error": None}
        assert all(not status[name]["loaded"] and status[name]["error"] for name in ("broken", "remote"))
        assert "trust_remote_code=True" in status["remote"]["error"] and not marker.exists()
        with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE_NAME):
                assert (
                    health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                    == health_pb2.HealthCheckResponse.NOT_SERVING
                )
            stub = feedline_pb2_grpc.FeedlineStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Collate(collate_request({"samples": [OK], "processor": "broken"}), timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "failed to load" in refused.value.details()
            assert stub.Collate(pb.CollateRequest(samples=[json.dumps(OK).encode()]), timeout=30).frames
        reply = served.http.post("/v1/collate", json={"samples": [OK], "processor": "broken"})
        assert reply.status_code == 503 and reply.json()["error"]["kind"] == "service_unavailable"
        failures = {r["processor"] for r in served.logs if r.get("msg") == "processor failed to load"}
        assert failures == {"broken", "remote"}
    finally:
        served.close()
