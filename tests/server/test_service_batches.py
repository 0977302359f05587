"""Text, packed and multimodal batches through both servers decode to exactly the engine's in-process output.

One gRPC server and one HTTP server on loopback serve the built-in Qwen2.5 tokenizer and the Qwen2.5-VL
processor; every case is collated in process and over gRPC (unary and stream), HTTP binary and HTTP JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from feedline.proto import DecodedBatch, FrameAssembler, decode_batch, decode_frames, unwrap_frame
from feedline.proto import bfloat16_to_float32 as from_bf16_bits
from feedline.proto.v1 import CHANNEL_OPTIONS, feedline_pb2_grpc, frame_stream_calls
from feedline.proto.v1 import feedline_pb2 as pb
from feedline.service import CollatedBatch, CollateOptions, Processor, collate
from feedline.service.media._loading import MediaPolicy
from feedline.service.server import BATCH_MEDIA_TYPE, ProcessorRegistry, ServingState
from tests.support.media import image_bytes, image_part, processor, vqa_row
from tests.support.rows import ROWS


def _cases(media_root: Path) -> list[tuple[str, str, list[dict[str, Any]], dict[str, Any]]]:
    (media_root / "photo.png").write_bytes(image_bytes(320, 240, seed=3))
    vlm_rows = [
        vqa_row(image_part(224, 224, seed=1), answer="Noise."),
        {
            "messages": [
                {"role": "user", "content": "No picture here, just say hi."},
                {"role": "assistant", "content": "Hi!"},
            ]
        },
        vqa_row(
            {"type": "image", "image": "photo.png"},
            image_part(112, 168, "JPEG", seed=2),
            question="Compare the two.",
            answer="The first is larger.",
        ),
    ]
    return [
        ("text", "qwen2.5", ROWS, {}),
        ("packed", "qwen2.5", ROWS * 3, {"packing": {"pack_size": 256}}),
        (
            "packed-thd",
            "qwen2.5",
            ROWS * 3,
            {"packing": {"pack_size": 192, "layout": "thd"}, "label_format": "unshifted"},
        ),
        ("multimodal", "qwen2.5-vl", vlm_rows, {}),
        ("multimodal-bf16", "qwen2.5-vl", vlm_rows, {"pixel_dtype": "bfloat16", "label_format": "loss_mask"}),
    ]


@pytest.fixture(scope="module")
def servers(
    qwen_processor: Processor, tmp_path_factory: pytest.TempPathFactory, in_process: Any
) -> Iterator[dict[str, Any]]:
    media_root = tmp_path_factory.mktemp("media")
    cases = _cases(media_root)
    state = ServingState(ProcessorRegistry.of(qwen_processor, processor("qwen2.5-vl")), media_roots=[media_root])
    served = in_process(state, http=True)
    channel = grpc.insecure_channel(str(served.grpc_target), options=CHANNEL_OPTIONS)
    with httpx.Client(base_url=served.http_url, timeout=60) as http:
        yield {
            "cases": {c[0]: c[1:] for c in cases},
            "state": state,
            "channel": channel,
            "http": http,
            "media": MediaPolicy(roots=(media_root,)),
        }
    channel.close()


_CASE_NAMES = ["text", "packed", "packed-thd", "multimodal", "multimodal-bf16"]


def _expected(servers: dict[str, Any], case: str) -> tuple[CollatedBatch, list[dict[str, Any]]]:
    name, rows, options = servers["cases"][case]
    proc = servers["state"].registry.get(name)
    batch = collate(proc, rows, CollateOptions.from_mapping(options, base=proc.defaults), media=servers["media"])
    return batch, [r.to_dict() for r in batch.reports]


def _assert_exact(decoded: DecodedBatch, expected: CollatedBatch, reports: list[dict[str, Any]]) -> None:
    assert list(decoded.tensors) == list(expected.tensors)
    for name, arr in expected.tensors.items():
        got = decoded.tensors[name]
        assert (got.dtype, got.shape) == (arr.dtype, arr.shape), name
        assert got.tobytes() == arr.tobytes(), name
        assert decoded.dtypes[name] == expected.dtypes.get(name, arr.dtype.name)
    assert decoded.meta["reports"] == reports


def _request(servers: dict[str, Any], case: str, batch_index: int = 0) -> pb.CollateRequest:
    name, rows, options = servers["cases"][case]
    msg = pb.CollateOptions(**{k: v for k, v in options.items() if k != "packing"})
    if "packing" in options:
        msg.packing.update(options["packing"])
    return pb.CollateRequest(
        processor=name,
        samples=[json.dumps(r).encode() for r in rows],
        options=msg,
        batch_index=batch_index,
        max_frame_bytes=64 << 10,
    )


@pytest.mark.parametrize("case", _CASE_NAMES)
def test_grpc_unary_and_stream(servers: dict[str, Any], case: str) -> None:
    expected, reports = _expected(servers, case)
    stub = feedline_pb2_grpc.FeedlineStub(servers["channel"])
    _assert_exact(decode_frames(stub.Collate(_request(servers, case), timeout=60).frames), expected, reports)
    collate_stream, _ = frame_stream_calls(servers["channel"])
    assembler, batches = FrameAssembler(), []
    for message in collate_stream(iter([_request(servers, case, i) for i in range(3)]), timeout=60):
        blob = assembler.add(unwrap_frame(message))
        if blob is not None:
            batches.append(decode_batch(blob))
    assert [b.meta["batch_index"] for b in batches] == [0, 1, 2]
    for batch in batches:
        _assert_exact(batch, expected, reports)


@pytest.mark.parametrize("case", _CASE_NAMES)
def test_http_binary_and_json(servers: dict[str, Any], case: str) -> None:
    expected, reports = _expected(servers, case)
    name, rows, options = servers["cases"][case]
    body = {"processor": name, "samples": rows, "options": options}
    reply = servers["http"].post("/v1/collate", json=body, headers={"accept": BATCH_MEDIA_TYPE})
    assert reply.status_code == 200, reply.text
    _assert_exact(decode_batch(reply.content), expected, reports)
    reply = servers["http"].post("/v1/collate", json=body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    for name, arr in expected.tensors.items():
        values = from_bf16_bits(arr) if expected.dtypes.get(name) == "bfloat16" else arr
        np.testing.assert_array_equal(np.array(data["tensors"][name], dtype=values.dtype), values)
    assert data["reports"] == reports


def test_bad_image_names_sample_and_field_over_grpc(servers: dict[str, Any]) -> None:
    rows = [vqa_row(image_part(64, 64)), vqa_row({"type": "image", "image": "../../etc/passwd"})]
    request = pb.CollateRequest(processor="qwen2.5-vl", samples=[json.dumps(r).encode() for r in rows])
    with pytest.raises(grpc.RpcError) as info:
        feedline_pb2_grpc.FeedlineStub(servers["channel"]).Collate(request, timeout=60)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = json.loads(dict(info.value.trailing_metadata())["feedline-error"])
    assert error["kind"] == "media_error" and error["sample"] == 1 and "content" in error["field"]
