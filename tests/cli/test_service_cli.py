"""`feedline serve`: its parser, configuration precedence, the error table, and real processes draining on
SIGTERM (one worker, and two workers sharing both ports)."""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import feedline.proto as proto
from feedline.proto import unwrap_frame
from feedline.proto.v1 import CHANNEL_OPTIONS, feedline_pb2_grpc, frame_stream_calls
from feedline.proto.v1 import feedline_pb2 as pb
from feedline.service._cli import _collate_threads, build_parser, config_from_args
from feedline.service.server import (
    ConfigError,
    Limits,
    ProcessorSpec,
    available_cpus,
    collate_threads_for,
    load_config,
    status_for,
)
from tests.support.rows import ROWS
from tests.support.servers import Served as _Served

# --- parser and configuration --------------------------------------------------------------------------------


def test_parser_has_serve_and_the_offline_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(
        [
            "serve",
            "--processor",
            "a=/models/a",
            "--processor",
            "b=qwen2.5",
            "--grpc-port",
            "0",
            "--http-port",
            "9000",
            "--workers",
            "2",
            "--media-root",
            "/m",
            "--host",
            "::",
        ]
    )
    assert [p.name for p in args.processor] == ["a", "b"] and args.workers == 2 and args.media_root == [Path("/m")]
    assert parser.parse_args(["collate", "--input", "x.jsonl", "--output", "-"]).command == "collate"
    assert parser.parse_args(["mask", "--input", "x.json"]).command == "mask"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--processor", "=no-name"])
    bare = parser.parse_args(["serve", "--processor", "qwen3", "--processor", "/models/my-vlm/"]).processor
    assert [(p.name, p.source) for p in bare] == [("qwen3", "qwen3"), ("my-vlm", "/models/my-vlm/")]


def test_no_arguments_serve_the_builtin_qwen(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FEEDLINE_"):
            monkeypatch.delenv(key)
    config = config_from_args(build_parser().parse_args(["serve"]))
    assert config.processor_specs == (ProcessorSpec("qwen2.5", "qwen2.5"),)
    assert (config.grpc_port, config.http_port, config.workers) == (50051, 8000, 1)
    assert config.collate_threads == 0 and _collate_threads(config) == collate_threads_for(1)


def test_collate_threads_from_file_environment_and_flag(tmp_path: Path) -> None:
    """0 (the default) is each worker's share of the CPUs; a number is taken as it is, whatever the workers."""
    path = tmp_path / "feedline.yaml"
    path.write_text("workers: 4\ncollate_threads: 3\n")
    from_file = load_config(path, env={})
    assert (from_file.collate_threads, _collate_threads(from_file)) == (3, 3)
    from_env = load_config(path, env={"FEEDLINE_COLLATE_THREADS": "2"})
    assert _collate_threads(from_env) == 2
    flagged = config_from_args(build_parser().parse_args(["serve", "--collate-threads", "1", "--workers", "1"]))
    assert (flagged.collate_threads, _collate_threads(flagged)) == (1, 1)
    auto = load_config(path, env={"FEEDLINE_COLLATE_THREADS": "0"})
    assert _collate_threads(auto) == collate_threads_for(4) == max(1, available_cpus() // 4)


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "feedline.yaml"
    path.write_text(
        "grpc_port: 1000\nhttp_port: 2000\nworkers: 3\nmedia_roots: [/media]\n"
        "limits: {max_request_bytes: 1234, max_in_flight_per_stream: 8}\n"
        "processors:\n  qwen: {source: qwen2.5, defaults: {max_length: 512, truncation: right}}\n  other: /models/o\n"
    )
    env = {"FEEDLINE_HTTP_PORT": "2001", "FEEDLINE_MAX_IN_FLIGHT_PER_STREAM": "2", "FEEDLINE_DATA_ROOTS": "/d1:/d2"}
    config = load_config(path, env=env, overrides={"workers": 5, "grpc_port": None})
    assert (config.grpc_port, config.http_port, config.workers) == (1000, 2001, 5)
    assert config.limits == Limits(max_request_bytes=1234, max_in_flight_per_stream=2)
    assert config.media_roots == (Path("/media"),) and config.data_roots == (Path("/d1"), Path("/d2"))
    assert [(p.name, p.source) for p in config.processors] == [("qwen", "qwen2.5"), ("other", "/models/o")]
    assert config.processors[0].defaults == {"max_length": 512, "truncation": "right"}


@pytest.mark.parametrize(
    ("yaml_text", "env"),
    [
        ("grpc_prot: 1\n", {}),
        ("workers: 0\n", {}),
        ("collate_threads: -1\n", {}),
        ("collate_threads: true\n", {}),
        ("", {"FEEDLINE_COLLATE_THREADS": "two"}),
        ("processors: {x: {path: /a}}\n", {}),
        ("limits: {max_request_bytes: -1}\n", {}),
        ("", {"FEEDLINE_GRPC_PORT": "fifty"}),
        ("- a list\n", {}),
    ],
)
def test_bad_configuration_is_refused(tmp_path: Path, yaml_text: str, env: dict[str, str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError):
        load_config(path, env=env)


def test_every_error_kind_has_a_status() -> None:
    errors = [
        getattr(proto, n)
        for n in proto.__all__
        if isinstance(getattr(proto, n), type) and issubclass(getattr(proto, n), proto.FeedlineError)
    ]
    assert len(errors) >= 14
    for cls in errors:
        http_status, code = status_for(cls("x"))
        assert 400 <= http_status < 600 and code is not grpc.StatusCode.INTERNAL, cls
    assert status_for(proto.MediaError("x")) == status_for(proto.InvalidSample("x"))
    assert status_for(proto.FingerprintMismatch("x")) == (412, grpc.StatusCode.FAILED_PRECONDITION)
    assert status_for(KeyError("x")) == (500, grpc.StatusCode.INTERNAL)


# --- real processes ------------------------------------------------------------------------------------------


@pytest.fixture
def one_worker() -> Iterator[_Served]:
    served = _Served("--grace-period", "20")
    yield served
    served.close()


def _wait_in_flight(served: _Served, transports: set[str], timeout: float = 60) -> None:
    """Until /metrics shows a request in flight on each transport (a fixed sleep is too short on a busy machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = served.http.get("/metrics").text
        # the /metrics request itself is one HTTP request in flight
        least = {t: 2 if t == "http" else 1 for t in transports}
        busy = {
            t
            for t in transports
            if any(
                line.startswith(f'feedline_in_flight{{transport="{t}"}}') and float(line.split()[-1]) >= least[t]
                for line in text.splitlines()
            )
        }
        if busy == transports:
            return
        time.sleep(0.05)
    raise AssertionError(f"requests not in flight on {transports} after {timeout} s")


def _big_batch() -> dict[str, Any]:
    return {"samples": ROWS * 400, "options": {}}  # ~1,600 rows: long enough to still be running at SIGTERM


def _grpc_batch() -> pb.CollateRequest:
    return pb.CollateRequest(samples=[json.dumps(r).encode() for r in ROWS * 300])  # 1,200 rows


def test_sigterm_finishes_in_flight_work_and_exits_zero(one_worker: _Served) -> None:
    results: dict[str, Any] = {}

    def slow_http() -> None:
        results["http"] = one_worker.http.post("/v1/collate", json=_big_batch())

    def grpc_stream() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{one_worker.grpc_port}") as channel:
            results["grpc"] = feedline_pb2_grpc.FeedlineStub(channel).Collate(_grpc_batch(), timeout=60)

    threads = [threading.Thread(target=slow_http), threading.Thread(target=grpc_stream)]
    for t in threads:
        t.start()
    _wait_in_flight(one_worker, {"grpc", "http"})  # both requests are being worked on
    one_worker.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert one_worker.proc.wait(30) == 0
    assert results["http"].status_code == 200 and len(results["http"].json()["tensors"]["input_ids"]) == 1600
    assert len(proto.decode_frames(results["grpc"].frames).tensors["input_ids"]) == 1200
    messages = [r.get("msg") for r in one_worker.logs]
    assert "draining" in messages and "stopped" in messages
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{one_worker.http_port}/healthz", timeout=2)
    rpc_logs = [r for r in one_worker.logs if r.get("msg") == "rpc"]
    assert rpc_logs and rpc_logs[0]["code"] == "OK" and rpc_logs[0]["request_id"]


def test_a_drain_refuses_new_calls_and_serves_the_streams_in_flight() -> None:
    """While a stream is in flight the draining server keeps it: its next batch is served, a new call gets
    UNAVAILABLE naming the drain (clients go to another replica), health says NOT_SERVING; once the stream
    ends the process stops at once, long before its grace period."""
    served = _Served("--grace-period", "60")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}", options=CHANNEL_OPTIONS) as channel:
            requests: queue.Queue[pb.CollateRequest | None] = queue.Queue()
            stream, _ = frame_stream_calls(channel)
            answers = stream(iter(requests.get, None), timeout=60)
            requests.put(pb.CollateRequest(samples=[json.dumps(ROWS[0]).encode()], batch_index=0))
            assert proto.decode_frames([unwrap_frame(next(answers))]).meta["batch_index"] == 0
            served.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while not any(r.get("msg") == "draining" for r in served.logs) and time.monotonic() < deadline:
                time.sleep(0.02)
            with pytest.raises(grpc.RpcError) as refused:
                feedline_pb2_grpc.FeedlineStub(channel).Collate(_grpc_batch(), timeout=30)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            error = json.loads(dict(refused.value.trailing_metadata() or ())["feedline-error"])
            assert error["kind"] == "service_unavailable" and "draining" in error["message"]
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            requests.put(pb.CollateRequest(samples=[json.dumps(ROWS[1]).encode()], batch_index=1))
            batch = proto.decode_frames([unwrap_frame(next(answers))])
            assert batch.meta["batch_index"] == 1 and len(batch.tensors["input_ids"]) == 1
            ended = time.monotonic()
            requests.put(None)
            assert list(answers) == []
        assert served.proc.wait(30) == 0 and time.monotonic() - ended < 15
    finally:
        served.close()


def test_two_workers_share_both_ports_and_drain(tmp_path: Path) -> None:
    served = _Served("--workers", "2", "--grace-period", "10", "--collate-threads", "3")
    try:
        listening = [r for r in served.logs if r.get("msg") == "listening"]
        assert [(r["workers"], r["collate_threads"]) for r in listening] == [(2, 3)]
        pids = set()
        for _ in range(40):
            with httpx.Client(base_url=f"http://127.0.0.1:{served.http_port}", timeout=10) as fresh:
                pids.add(fresh.get("/healthz").json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2 and served.proc.pid not in pids
        for _ in range(4):
            with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
                reply = feedline_pb2_grpc.FeedlineStub(channel).Collate(
                    pb.CollateRequest(samples=[json.dumps(ROWS[0]).encode()]), timeout=30
                )
                assert proto.decode_frames(reply.frames).tensors["input_ids"].shape[0] == 1
        metrics = served.http.get("/metrics").text
        assert 'feedline_requests_total{code="OK",method="Collate",transport="grpc"} 4.0' in metrics
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0
        assert sum(1 for r in served.logs if r.get("msg") == "stopped") == 2
    finally:
        served.close()
