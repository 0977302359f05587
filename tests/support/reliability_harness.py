"""Helpers for the reliability tests: calling a corpus case on either transport, a canary stream checked byte
for byte, raw HTTP/2 gRPC frames, and server-side figures (RSS, Prometheus counters)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from feedline.proto import FrameAssembler, unwrap_frame
from feedline.proto.v1 import CHANNEL_OPTIONS, SERVICE_NAME, frame_stream_calls
from feedline.proto.v1 import feedline_pb2 as pb
from feedline.service import CollateOptions, Processor, collate
from feedline.service.server import CollateResult
from tests.support.reliability_corpus import OK, PNG, Case, Expect, RawFrame

__all__ = [
    "ROW_SETS",
    "Canary",
    "Layout",
    "call_grpc",
    "call_http",
    "collate_request",
    "expected_blob",
    "metric",
    "remote_code_repo",
    "rss_bytes",
    "wait_for",
]

ROW_SETS: list[list[dict[str, Any]]] = [
    [
        {
            "messages": [
                {"role": "user", "content": f"Canary question {k}?"},
                {"role": "assistant", "content": f"Canary answer {k}: " + "ok " * k},
            ]
        }
        for k in range(n)
    ]
    for n in (1, 2, 3, 5)
]
"""The well-formed batches the canary stream cycles through."""


@dataclass(frozen=True)
class Layout:
    """The corpus server's directories: a media root, a data root, and a directory outside both."""

    root: Path
    outside: Path
    data: Path

    @classmethod
    def build(cls, base: Path) -> Layout:
        """Create the files the corpus names: images and datasets inside the roots, secrets outside, symlinks
        from the roots to the outside, and datasets that are broken in the ways the corpus expects."""
        out = cls(base / "media", base / "outside", base / "data")
        for directory in (out.root / "subdir", out.outside, out.data / "corrupt_arrow"):
            directory.mkdir(parents=True)
        (out.root / "ok.png").write_bytes(PNG)
        (out.outside / "secret.png").write_bytes(PNG)
        os.symlink(out.outside / "secret.png", out.root / "link-out.png")
        bad = [OK] * 3 + [{"messages": [{"role": "robot", "content": "x"}]}] + [OK] * 4
        (out.data / "train.jsonl").write_text("".join(json.dumps(OK) + "\n" for _ in range(8)))
        (out.data / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
        (out.outside / "secret.jsonl").write_text(json.dumps(OK) + "\n")
        os.symlink(out.outside / "secret.jsonl", out.data / "link-out.jsonl")
        (out.data / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
        (out.data / "corrupt_arrow" / "data-00000-of-00001.arrow").write_bytes(b"not an arrow stream")
        return out

    def fill(self, value: Any) -> Any:
        """``value`` with the @ROOT@ and @OUTSIDE@ placeholders replaced, recursively."""
        if isinstance(value, str):
            for mark, path in (("@ROOT@", self.root), ("@OUTSIDE@", self.outside)):
                value = value.replace(mark, str(path))
            return value
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, pb.StreamDatasetRequest):
            filled = pb.StreamDatasetRequest()
            filled.CopyFrom(value)
            filled.dataset.path = self.fill(value.dataset.path)
            return filled
        return value


def collate_request(body: Mapping[str, Any], batch_index: int = 0) -> pb.CollateRequest:
    """The gRPC form of an HTTP collate body (each sample as its own JSON text, lone surrogates escaped)."""
    options = pb.CollateOptions()
    for key, value in (body.get("options") or {}).items():
        if key == "packing":
            options.packing.update(value)
        else:
            setattr(options, key, value)
    return pb.CollateRequest(
        samples=[json.dumps(s).encode() for s in body["samples"]],
        options=options,
        processor=body.get("processor") or "",
        fingerprint=body.get("fingerprint") or "",
        batch_index=batch_index,
    )


def call_http(client: httpx.Client, case: Case, layout: Layout) -> Expect:
    """POST the case's body as raw JSON text; the answer as an Expect (status 200 and kind None on success)."""
    body = case.body if isinstance(case.body, bytes) else json.dumps(layout.fill(case.body)).encode()
    reply = client.post(case.path, content=body, headers={"content-type": "application/json"})
    if reply.is_success:
        return Expect(reply.status_code, None)
    error = reply.json()["error"]
    return Expect(reply.status_code, error["kind"], error["sample"], error["field"])


def call_grpc(channel: grpc.Channel, port: int, case: Case, layout: Layout) -> Expect:
    """Send the case's gRPC request (derived, a message, raw bytes or raw frames); the answer as an Expect."""
    request = layout.fill(case.grpc_request) if case.grpc_request is not None else None
    if isinstance(request, RawFrame):
        return _raw_call(port, f"/{SERVICE_NAME}/{case.method}", request)
    if request is None:
        request = collate_request(layout.fill(case.body))
    path = f"/{SERVICE_NAME}/{case.method}"
    try:
        if case.method == "CollateStream":
            call = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
            _drain(call(iter(request), timeout=60))
        elif case.method == "StreamDataset":
            call = channel.unary_stream(path, request_serializer=_serialize, response_deserializer=None)
            _drain(call(request, timeout=60))
        else:
            channel.unary_unary(path, request_serializer=_serialize, response_deserializer=None)(request, timeout=60)
    except grpc.RpcError as err:
        return _from_status(err.code().name, dict(err.trailing_metadata() or ()))
    return Expect("OK", None)


def _serialize(message: Any) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def _drain(responses: Iterator[bytes]) -> None:
    assembler = FrameAssembler()
    for message in responses:
        assembler.add(unwrap_frame(message))
    assembler.check_complete()


def _from_status(code: str, metadata: Mapping[str, Any]) -> Expect:
    raw = metadata.get("feedline-error")
    if raw is None:
        return Expect(code, None)
    error = json.loads(raw)
    return Expect(code, error["kind"], error["sample"], error["field"])


def _raw_call(port: int, path: str, frame: RawFrame) -> Expect:
    """One gRPC call written by hand over HTTP/2 (h2c, prior knowledge); the status from its trailers."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    headers: dict[str, str] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", f"127.0.0.1:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *frame.headers,
            ],
        )
        conn.send_data(stream, frame.body, end_stream=True)
        sock.sendall(conn.data_to_send())
        while "grpc-status" not in headers:
            data = sock.recv(1 << 16)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    headers.update(dict(event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            sock.sendall(conn.data_to_send())
    code = grpc.StatusCode.UNKNOWN.name
    for status in grpc.StatusCode:
        if str(status.value[0]) == headers.get("grpc-status"):
            code = status.name
    return _from_status(code, headers)


def expected_blob(
    processor: Processor, rows: Sequence[Mapping[str, Any]], batch_index: int, options: CollateOptions | None = None
) -> bytes:
    """The exact bytes a server sends for this batch: the engine's output, encoded in-process."""
    opts = options or CollateOptions()
    return bytes(CollateResult(processor, opts, collate(processor, rows, opts)).encode(batch_index))


@dataclass
class Canary:
    """A well-formed CollateStream kept running in the background (one request every ``interval`` seconds);
    every batch is compared byte for byte with the engine's in-process encoding of the same request."""

    target: str
    processor: Processor
    interval: float = 0.02
    batches: int = 0
    mismatches: list[int] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        opts = CollateOptions()
        self._results = [CollateResult(self.processor, opts, collate(self.processor, rows, opts)) for rows in ROW_SETS]

    def start(self) -> Canary:
        self._thread = threading.Thread(target=self._run, name="canary", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Canary:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)
        return self

    def _requests(self) -> Iterator[pb.CollateRequest]:
        index = 0
        while not self._stop.is_set():
            rows = ROW_SETS[index % len(ROW_SETS)]
            yield pb.CollateRequest(samples=[json.dumps(r).encode() for r in rows], batch_index=index)
            index += 1
            time.sleep(self.interval)

    def _run(self) -> None:
        with grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS) as channel:
            collate_stream, _ = frame_stream_calls(channel)
            assembler = FrameAssembler()
            try:
                for message in collate_stream(self._requests(), timeout=600):
                    blob = assembler.add(unwrap_frame(message))
                    if blob is not None:
                        self._check(bytes(blob))
                assembler.check_complete()
            except grpc.RpcError as err:
                self.error = err

    def _check(self, blob: bytes) -> None:
        index = self.batches
        if blob != bytes(self._results[index % len(ROW_SETS)].encode(index)):
            self.mismatches.append(index)
        self.batches += 1


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus counter's samples (``name`` as exposed, e.g. feedline_samples_total)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (a multi-worker server)."""
    proc = psutil.Process(pid)
    return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def remote_code_repo(directory: Path, marker: Path) -> Path:
    """A model directory whose tokenizer is remote code that leaves ``marker`` behind when it runs."""
    directory.mkdir()
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "RemoteTokenizer", "auto_map": {"AutoTokenizer": ["remote.RemoteTokenizer", None]}}
        )
    )
    (directory / "config.json").write_text(
        json.dumps({"model_type": "remote", "auto_map": {"AutoConfig": "remote.RemoteConfig"}})
    )
    (directory / "remote.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\nraise RuntimeError('remote code ran')\n"
    )
    return directory
