"""The HTTP API end to end: a real uvicorn server on a loopback port, spoken to with httpx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from feedline.proto import decode_batch
from feedline.service import CollateOptions, Processor, collate
from feedline.service.server import BATCH_MEDIA_TYPE, Limits, ProcessorRegistry, ServingState, create_app
from tests.support.rows import OPTION_CASES, ROWS


@pytest.fixture(scope="module")
def http(qwen_processor: Processor, in_process: Any) -> Iterator[dict[str, Any]]:
    state = ServingState(
        ProcessorRegistry.of(qwen_processor), limits=Limits(max_request_bytes=200_000, max_samples_per_request=16)
    )
    served = in_process(state, grpc=False, http=True)
    with httpx.Client(base_url=served.http_url, timeout=30) as client:
        yield {"client": client, "state": state, "processor": qwen_processor}


def _expected(processor: Processor, rows: list[dict[str, Any]], options: dict[str, Any]) -> Any:
    return collate(processor, rows, CollateOptions.from_mapping(options))


@pytest.mark.parametrize("options", OPTION_CASES)
def test_collate_binary_is_exactly_the_engine_output(http: dict[str, Any], options: dict[str, Any]) -> None:
    reply = http["client"].post(
        "/v1/collate", json={"samples": ROWS, "options": options}, headers={"accept": BATCH_MEDIA_TYPE}
    )
    assert reply.status_code == 200 and reply.headers["content-type"] == BATCH_MEDIA_TYPE
    decoded = decode_batch(reply.content)
    expected = _expected(http["processor"], ROWS, options)
    assert list(decoded.tensors) == list(expected.tensors)
    for name, arr in expected.tensors.items():
        assert decoded.tensors[name].dtype == arr.dtype and decoded.tensors[name].tobytes() == arr.tobytes()
    assert decoded.meta["reports"] == [r.to_dict() for r in expected.reports]


@pytest.mark.parametrize("options", OPTION_CASES)
def test_collate_json_lists_equal_the_engine_output(http: dict[str, Any], options: dict[str, Any]) -> None:
    reply = http["client"].post("/v1/collate", json={"samples": ROWS, "options": options})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    expected = _expected(http["processor"], ROWS, options)
    for name, arr in expected.tensors.items():
        np.testing.assert_array_equal(np.array(body["tensors"][name], dtype=arr.dtype), arr)
        assert body["dtypes"][name] == arr.dtype.name
    assert body["fingerprint"] == http["processor"].fingerprint
    assert body["reports"] == [r.to_dict() for r in expected.reports]
    assert reply.headers["x-request-id"]


@pytest.mark.parametrize(
    ("payload", "status", "kind", "sample", "field"),
    [
        ({"samples": [ROWS[0], {"messages": "x"}]}, 400, "invalid_sample", 1, "messages"),
        ({"samples": [ROWS[0], 7]}, 400, "invalid_request", 1, "samples.1"),
        ({"samples": [{"messages": [{"role": "user", "content": "q"}]}]}, 400, "invalid_sample", 0, "messages"),
        ({"samples": ROWS, "options": {"max_length": 1}}, 400, "invalid_options", None, "max_length"),
        ({"samples": ROWS, "processor": "nope"}, 404, "unknown_processor", None, "processor"),
        ({"samples": ROWS, "fingerprint": "0" * 64}, 412, "fingerprint_mismatch", None, "fingerprint"),
        ({"samples": ROWS * 5}, 413, "request_too_large", None, "samples"),
        ({}, 400, "invalid_request", None, "samples"),
    ],
)
def test_collate_errors_are_json_with_sample_and_field(
    http: dict[str, Any], payload: dict[str, Any], status: int, kind: str, sample: int | None, field: str
) -> None:
    reply = http["client"].post("/v1/collate", json=payload)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert (error["kind"], error["sample"]) == (kind, sample)
    assert error["field"].startswith(field) and error["message"]


def test_oversized_bodies_are_refused(http: dict[str, Any]) -> None:
    big = {"samples": [{"prompt": "x" * 250_000, "completion": "y"}]}
    reply = http["client"].post("/v1/collate", json=big)
    assert reply.status_code == 413 and reply.json()["error"]["kind"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"samples": [{"prompt": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'", "completion": "y"}]}'

    reply = http["client"].post("/v1/collate", content=chunks(), headers={"content-type": "application/json"})
    assert reply.status_code == 413


def test_mask_reports_every_token(http: dict[str, Any]) -> None:
    row = ROWS[1]
    reply = http["client"].post("/v1/mask", json={"sample": row})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    expected = _expected(http["processor"], [row], {})
    assert body["num_label_tokens"] == expected.reports[0].num_label_tokens
    assert body["fingerprint"] == http["processor"].fingerprint
    tokens = body["tokens"]
    assert {"id", "piece", "role", "supervised", "label", "kind"} <= set(tokens[0])
    assert [t["id"] for t in tokens][: expected.tensors["input_ids"].shape[1]] == expected.tensors["input_ids"][
        0
    ].tolist()
    assert any(t["supervised"] and t["role"] == "assistant" for t in tokens)
    assert not any(t["supervised"] and t["role"] in ("user", "system") for t in tokens)


def test_mask_warns_about_zero_labels(http: dict[str, Any]) -> None:
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    reply = http["client"].post("/v1/mask", json={"sample": row, "options": {"max_length": 8, "truncation": "right"}})
    assert reply.status_code == 200, reply.text
    assert any("zero" in w for w in reply.json()["warnings"])


def test_processors_health_and_readiness(http: dict[str, Any]) -> None:
    client = http["client"]
    (info,) = client.get("/v1/processors").json()["processors"]
    assert info["name"] == "qwen2.5" and info["fingerprint"] == http["processor"].fingerprint
    assert {"class", "family", "defaults"} <= set(info)
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").status_code == 200
    assert client.get("/docs").status_code == 200
    assert "/v1/collate" in client.get("/openapi.json").json()["paths"]


def test_metrics_count_requests_errors_samples_and_tokens(http: dict[str, Any]) -> None:
    client = http["client"]
    client.post("/v1/collate", json={"samples": ROWS})
    client.post("/v1/collate", json={"samples": [{"messages": "x"}]})
    text = client.get("/metrics").text
    for name in (
        "feedline_requests_total",
        "feedline_errors_total",
        "feedline_request_seconds_bucket",
        "feedline_samples_total",
        "feedline_tokens_total",
        "feedline_padding_ratio_bucket",
        "feedline_in_flight",
    ):
        assert name in text, name
    assert 'feedline_errors_total{kind="invalid_sample",transport="http"}' in text
    assert 'feedline_requests_total{code="200",method="/v1/collate",transport="http"}' in text


def test_readiness_turns_off_when_draining(qwen_processor: Processor) -> None:
    state = ServingState(ProcessorRegistry.of(qwen_processor))
    from starlette.testclient import TestClient

    with TestClient(create_app(state)) as client:
        assert client.get("/readyz").status_code == 200
        state.drain()
        reply = client.get("/readyz")
        assert reply.status_code == 503 and reply.json()["draining"] is True
        assert client.get("/healthz").status_code == 200
