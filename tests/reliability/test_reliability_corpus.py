"""Issue 9, bad input: every request of the malformed corpus (tests/reliability/corpus.py) gets its documented
error over HTTP and gRPC from one real `feedline serve`, while a well-formed stream runs beside them and stays
byte-identical to the engine; afterwards the server is still live, ready and serving."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feedline.proto import join_frames
from feedline.proto.v1 import CHANNEL_OPTIONS, SERVICE_NAME
from feedline.proto.v1 import feedline_pb2 as pb
from feedline.service import Processor
from tests.support.media import processor as mm_processor
from tests.support.reliability_corpus import CASES, LIMITS, OK, Case
from tests.support.reliability_harness import Canary, Layout, call_grpc, call_http, collate_request, expected_blob
from tests.support.servers import Served

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return Layout.build(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def server(layout: Layout) -> Iterator[Served]:
    config = layout.root.parent / "feedline.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "processors": {"qwen2.5": "qwen2.5", "vl": mm_processor("qwen2.5-vl").source},
                "media_roots": [str(layout.root)],
                "data_roots": [str(layout.data)],
                "limits": LIMITS,
            },
            sort_keys=False,
        )
    )
    served = Served("--config", str(config))
    yield served
    served.close()


@pytest.fixture(scope="module")
def channel(server: Served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=CHANNEL_OPTIONS) as channel:
        yield channel


@pytest.fixture(scope="module")
def canary(server: Served, qwen_processor: Processor) -> Iterator[Canary]:
    running = Canary(f"127.0.0.1:{server.grpc_port}", qwen_processor).start()
    yield running
    running.stop()


def test_the_corpus_is_large_and_covers_every_category() -> None:
    counts = collections.Counter(case.category for case in CASES)
    assert len(CASES) >= 60 and len({case.id for case in CASES}) == len(CASES)
    assert set(counts) >= {
        "shape",
        "roles",
        "strings",
        "turns",
        "unicode",
        "images",
        "audio",
        "paths",
        "processor",
        "options",
        "limits",
        "frames",
        "dataset",
    }
    print(
        f"RELIABILITY corpus: {len(CASES)} cases, {sum(c.http is not None for c in CASES)} over HTTP, "
        f"{sum(c.grpc is not None for c in CASES)} over gRPC; by category {dict(counts)}"
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_malformed_request_gets_its_documented_error(
    case: Case, server: Served, channel: grpc.Channel, layout: Layout, canary: Canary
) -> None:
    if case.http is not None:
        answer = call_http(server.http, case, layout)
        assert answer == case.http, f"HTTP answered {answer}"
    if case.grpc is not None:
        answer = call_grpc(channel, server.grpc_port, case, layout)
        assert answer == case.grpc, f"gRPC answered {answer}"


def test_after_the_corpus_the_server_is_healthy_and_the_stream_was_unaffected(
    server: Served, channel: grpc.Channel, canary: Canary, qwen_processor: Processor
) -> None:
    canary.stop()
    assert canary.error is None and canary.mismatches == [] and canary.batches > 0
    assert server.proc.poll() is None
    assert server.http.get("/healthz").json()["status"] == "ok"
    ready = server.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    rows = [OK, OK]
    reply = channel.unary_unary(f"/{SERVICE_NAME}/Collate", response_deserializer=pb.CollateResponse.FromString)(
        collate_request({"samples": rows}, batch_index=3).SerializeToString(), timeout=30
    )
    assert bytes(join_frames(reply.frames)) == expected_blob(qwen_processor, rows, 3)
    errors = [r for r in server.logs if r.get("level") == "error" or "Traceback" in r.get("raw", "")]
    assert errors == [], [(e.get("msg"), e.get("exc", "")[-300:]) for e in errors]
    print(f"RELIABILITY canary: {canary.batches} well-formed batches byte-identical during the corpus")
