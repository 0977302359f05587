"""Issue 9, security: no file is opened outside the media and data roots (seen by an audit hook), request /
message / pixel limits hold on both transports, chat templates never come from requests and the operator's
are rendered sandboxed, remote code stays off unless the config enables it, bearer tokens compare in constant
time. (Authentication and TLS themselves: tests/test_auth_tls.py.)"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from PIL import Image
from starlette.testclient import TestClient

from feedline.proto import FrameAssembler, unwrap_frame
from feedline.proto.v1 import CHANNEL_OPTIONS, feedline_pb2_grpc, frame_stream_calls
from feedline.proto.v1 import feedline_pb2 as pb
from feedline.service import CollateOptions, Processor, collate, load_processor
from feedline.service.server import (
    BATCH_MEDIA_TYPE,
    Limits,
    ProcessorRegistry,
    ServingState,
    TokenAuth,
    create_app,
    load_config,
)
from tests.support.inprocess import serve_in_process
from tests.support.media import processor as mm_processor
from tests.support.reliability_corpus import CASES, OK, b64, image, samples, vl
from tests.support.reliability_harness import Layout, call_grpc, call_http, collate_request, remote_code_repo

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, bytes)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # records only inside ``opened_files()``


@contextlib.contextmanager
def opened_files() -> Iterator[list[str]]:
    """Every path this process opens meanwhile (Python's ``open`` audit event: builtins, pathlib, Pillow)."""
    global _OPENED
    _OPENED = []
    try:
        yield _OPENED
    finally:
        _OPENED = None


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return Layout.build(tmp_path_factory.mktemp("security"))


@pytest.fixture(scope="module")
def state(layout: Layout, qwen_processor: Processor) -> ServingState:
    vl_processor = load_processor("vl", mm_processor("qwen2.5-vl").source)  # the corpus's name for it
    return ServingState(
        ProcessorRegistry.of(qwen_processor, vl_processor), media_roots=[layout.root], data_roots=[layout.data]
    )


@pytest.fixture(scope="module")
def client(state: ServingState) -> Iterator[TestClient]:
    with TestClient(create_app(state)) as client:
        yield client


# --- files: only inside the roots ----------------------------------------------------------------------------


def _outside(paths: list[str], layout: Layout) -> list[str]:
    return [p for p in paths if p.startswith(str(layout.outside)) or p.startswith("/etc/")]


def test_no_file_outside_the_media_roots_is_opened(client: TestClient, layout: Layout) -> None:
    escapes = [c for c in CASES if c.category == "paths"]
    assert len(escapes) >= 10
    with opened_files() as opened:
        for case in escapes:
            assert call_http(client, case, layout) == case.http, case.id  # type: ignore[arg-type]
            mask = json.dumps(layout.fill({"sample": case.body["samples"][0], "processor": "vl"}))
            assert client.post("/v1/mask", content=mask).status_code == 400, case.id
        inside = client.post("/v1/collate", json=vl(image(image="ok.png")))
        via_url = client.post("/v1/collate", json=vl(image(image_url={"url": (layout.root / "ok.png").as_uri()})))
    assert inside.status_code == 200 and via_url.status_code == 200  # the roots work: the control is served
    assert opened.count(str((layout.root / "ok.png").resolve())) == 2  # and the hook sees what is opened
    assert _outside(opened, layout) == []


def test_without_a_media_root_no_path_is_read(qwen_processor: Processor) -> None:
    vl_processor = mm_processor("qwen2.5-vl")
    with (
        TestClient(create_app(ServingState(ProcessorRegistry.of(qwen_processor, vl_processor)))) as bare,
        opened_files() as opened,
    ):
        reply = bare.post("/v1/collate", json={**vl(image(path="/etc/hostname")), "processor": vl_processor.name})
    assert reply.status_code == 400 and "no media root" in reply.json()["error"]["message"]
    assert [p for p in opened if p.startswith("/etc/")] == []


def test_no_dataset_outside_the_data_roots_is_opened(state: ServingState, layout: Layout) -> None:
    with serve_in_process(state) as served:
        target = str(served.grpc_target)
        port = int(target.rsplit(":", 1)[1])
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel, opened_files() as opened:
            for case in (c for c in CASES if c.category == "dataset" and "path" in (c.grpc.field or "")):  # type: ignore[union-attr]
                assert call_grpc(channel, port, case, layout) == case.grpc, case.id
            _, stream_dataset = frame_stream_calls(channel)
            streamed = list(
                stream_dataset(pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="train.jsonl")), timeout=30)
            )
    assert streamed and str((layout.data / "train.jsonl").resolve()) in opened
    assert _outside(opened, layout) == []


# --- size limits ---------------------------------------------------------------------------------------------


def test_grpc_request_and_message_limits_hold(qwen_processor: Processor, in_process: Any) -> None:
    """Regression: CHANNEL_OPTIONS' 256 MiB used to win over the configured limits (first duplicate key wins)."""
    limits = Limits(max_request_bytes=64 << 10, max_message_bytes=256 << 10, max_frame_bytes=64 << 10)
    state = ServingState(ProcessorRegistry.of(qwen_processor), limits=limits)
    target = in_process(state).grpc_target
    big_batch = collate_request({"samples": [OK] * 8, "options": {"padding": "max_length", "max_length": 2048}})
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = feedline_pb2_grpc.FeedlineStub(channel)
        stub.Collate(collate_request({"samples": [{"prompt": "x" * (60 << 10), "completion": "y"}]}), timeout=30)
        with pytest.raises(grpc.RpcError) as over:
            stub.Collate(collate_request({"samples": [{"prompt": "x" * (70 << 10), "completion": "y"}]}), timeout=30)
        assert over.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as answer:  # ~400 KB in one unary response
            stub.Collate(big_batch, timeout=30)
        assert answer.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        collate_stream, _ = frame_stream_calls(channel)  # the same batch streams in frames under the limit
        assembler, blobs = FrameAssembler(), []
        for message in collate_stream(iter([big_batch]), timeout=30):
            assert len(message) <= limits.max_message_bytes
            blob = assembler.add(unwrap_frame(message))
            blobs += [blob] if blob is not None else []
        assert len(blobs) == 1 and blobs[0].nbytes > limits.max_message_bytes


def test_image_pixel_limit_is_checked_before_decoding(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG")  # a real 64-megapixel image in ~8 KB
    reply = client.post("/v1/collate", json=vl(image(base64=b64(buf.getvalue()))))
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["kind"], error["field"]) == ("media_error", "messages[0].content[0]")
    assert "64000000 pixels; the limit is 50000000" in error["message"]


# --- chat templates ------------------------------------------------------------------------------------------


def test_requests_cannot_carry_a_chat_template(client: TestClient, qwen_processor: Processor) -> None:
    for message in (pb.CollateRequest, pb.CollateOptions, pb.StreamDatasetRequest, pb.DatasetRef):
        assert not any("template" in f.name for f in message.DESCRIPTOR.fields), message
    evil = "{% for m in messages %}PWNED{% endfor %}"
    for body in (
        samples(OK, chat_template=evil),
        samples(OK, options={"chat_template": evil}),
        {"sample": OK, "chat_template": evil},
    ):
        path = "/v1/mask" if "sample" in body else "/v1/collate"
        assert client.post(path, json=body).status_code == 400
    # a row may carry any extra column; a "chat_template" column is data, never a template
    plain = client.post("/v1/collate", json=samples(OK), headers={"accept": BATCH_MEDIA_TYPE})
    carried = client.post(
        "/v1/collate", json=samples({**OK, "chat_template": evil}), headers={"accept": BATCH_MEDIA_TYPE}
    )
    assert plain.status_code == carried.status_code == 200 and plain.content == carried.content
    assert "PWNED" not in qwen_processor.tokenizer.decode(
        collate(qwen_processor, [OK], CollateOptions()).tensors["input_ids"][0]
    )


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{% for m in messages %}{{ m.role }}{% endfor %}"
        "{{ cycler.__init__.__globals__.os.popen('touch @MARK@').read() }}",
    ],
)
def test_operator_templates_are_rendered_sandboxed(qwen_processor: Processor, tmp_path: Path, template: str) -> None:
    marker = tmp_path / "escaped"
    hostile = Processor("hostile", qwen_processor.tokenizer, chat_template=template.replace("@MARK@", str(marker)))
    with TestClient(create_app(ServingState(ProcessorRegistry.of(hostile)))) as client:
        reply = client.post("/v1/collate", json=samples(OK))
    assert reply.status_code == 422 and reply.json()["error"]["kind"] == "template_error"
    assert "unsafe" in reply.json()["error"]["message"] and not marker.exists()


# --- remote code ---------------------------------------------------------------------------------------------

_LOAD = """
import json, sys
from pathlib import Path
from feedline.service.server import load_config
from feedline.service.server import ProcessorRegistry
marker, out = Path(sys.argv[1]), {}
for name, path in (("default", sys.argv[2]), ("enabled", sys.argv[3])):
    specs = load_config(path, env={}).processor_specs
    registry = ProcessorRegistry(specs)
    registry.load_all()
    out[name] = {"trust": specs[0].trust_remote_code, "ran": marker.exists(), "status": registry.status()["remote"]}
print(json.dumps(out))
"""


def test_remote_code_runs_only_when_the_config_enables_it(tmp_path: Path) -> None:
    marker = tmp_path / "remote-code-ran"
    repo = remote_code_repo(tmp_path / "repo", marker)
    configs = []
    for name, entry in (
        ("default", {"source": str(repo)}),
        ("enabled", {"source": str(repo), "trust_remote_code": True}),
    ):
        configs.append(tmp_path / f"{name}.yaml")
        configs[-1].write_text(yaml.safe_dump({"processors": {"remote": entry}}))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", _LOAD, str(marker), *map(str, configs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["default"]["trust"] is False and out["default"]["ran"] is False
    assert "trust_remote_code=True" in out["default"]["status"]["error"]
    assert out["enabled"]["trust"] is True and out["enabled"]["ran"] is True
    assert load_config(None, env={}).processor_specs[0].trust_remote_code is False


# --- bearer tokens -------------------------------------------------------------------------------------------


def test_bearer_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every accepted token is compared, always as two 32-byte digests: no early exit, no length leak."""
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    auth = TokenAuth(["first-token", "second-token", "3"])
    for presented, accepted in (
        ("first-token", True),
        ("3", True),
        ("first-toke", False),
        ("x" * 10_000, False),
        ("", False),
    ):
        compared.clear()
        assert auth.accepts(f"Bearer {presented}") is accepted
        assert compared == [(32, 32)] * 3, presented
