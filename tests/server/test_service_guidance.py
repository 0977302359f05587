"""A real `feedline serve` process answering bad requests: every error names the row (dataset row and batch
position), the field, and the option, flag or setting that fixes it; work caps refuse a request before the
work (HTTP 413 JSON, gRPC RESOURCE_EXHAUSTED); tool messages need ids only where the template uses them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedline.client._requests import pack_rows
from feedline.proto import RequestTooLarge, decode_frames
from feedline.proto._framing import unwrap_frame
from feedline.proto.v1 import CHANNEL_OPTIONS, feedline_pb2_grpc, frame_stream_calls
from feedline.proto.v1 import feedline_pb2 as pb
from feedline.service import Processor, load_processor
from feedline.service.server import Limits, ProcessorRegistry, ServingState, _caps
from feedline.service.server._caps import check_chars, count_chars, encoded_chars_bound
from feedline.service.server._requests import parse_rows
from tests.support.media import processor as media_processor
from tests.support.servers import Served

GOOD = {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]}
BAD_ROLE = {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}
LIMITS = {
    "max_chars_per_sample": 20_000,
    "max_chars_per_request": 50_000,
    "max_tokens_per_sample": 400,
    "max_tokens_per_request": 1_000,
}
LONG_ROW = {"prompt": "\u00e9" * 20_001, "completion": "y"}  # 2 bytes a character: the stored size clears no cap
TOOL_ROWS = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "abcdefghi", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
        ],
    },
    {"role": "tool", "content": "18 C, sunny"},
    {"role": "assistant", "content": "It is 18 C and sunny."},
]


@pytest.fixture(scope="module")
def served(in_process: Any, qwen_processor: Processor, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """gRPC and HTTP servers over qwen2.5 (a template without tool ids), mistral-nemo (one with) and qwen2.5-vl."""
    data = tmp_path_factory.mktemp("data")
    (data / "train.jsonl").write_text(json.dumps(GOOD) + "\n")
    (data / "long.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [GOOD] * 3 + [LONG_ROW]))
    pq.write_table(pa.Table.from_pylist([GOOD] * 4), data / "train.parquet")
    registry = ProcessorRegistry.of(
        qwen_processor, load_processor("mistral-nemo", "mistral-nemo"), media_processor("qwen2.5-vl")
    )
    return in_process(ServingState(registry, limits=Limits(**LIMITS), data_roots=[data]), http=True)


@pytest.fixture(scope="module")
def http(served: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.http_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def stub(served: Any) -> Iterator[Any]:
    with grpc.insecure_channel(served.grpc_target, options=CHANNEL_OPTIONS) as channel:
        yield feedline_pb2_grpc.FeedlineStub(channel)


def _request(rows: list[Any], **fields: Any) -> pb.CollateRequest:
    options = fields.pop("options", {})
    return pb.CollateRequest(
        samples=[json.dumps(r).encode() for r in rows], options=pb.CollateOptions(**options), **fields
    )


def _refused(call: Any, *args: Any) -> tuple[grpc.RpcError, dict[str, Any]]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=60)
    return info.value, json.loads(dict(info.value.trailing_metadata() or ())["feedline-error"])


def _http_error(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    error: dict[str, Any] = reply.json()["error"]
    return error


# --- errors name the row -----------------------------------------------------------------------------------------


def test_a_bad_row_names_its_dataset_row_and_batch_position(http: httpx.Client, stub: Any) -> None:
    exc, error = _refused(stub.Collate, _request([GOOD, GOOD, BAD_ROLE], first_row=1000))
    assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (error["row"], error["sample"], error["field"]) == (1002, 2, "messages[0].role")
    assert exc.details().startswith("row 1002 (position 2 in the batch), field 'messages[0].role'")
    _, error = _refused(stub.Collate, _request([GOOD, BAD_ROLE]))  # no first_row: the position, said as such
    assert (error["row"], error["sample"]) == (None, 1)
    error = _http_error(http.post("/v1/collate", json={"samples": [BAD_ROLE], "first_row": 7}), 400)
    assert (error["row"], error["sample"], error["kind"]) == (7, 0, "invalid_sample")
    _, error = _refused(stub.Collate, pb.CollateRequest(samples=[json.dumps(GOOD).encode(), b"{oops"], first_row=50))
    assert (error["row"], error["sample"], error["field"]) == (51, 1, "samples")  # even before parsing the row


def test_overlong_and_zero_label_errors_name_the_options_that_fix_them(http: httpx.Client, stub: Any) -> None:
    long_prompt = {"messages": [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"}]}
    error = _http_error(
        http.post("/v1/collate", json={"samples": [GOOD, long_prompt], "first_row": 10, "options": {"max_length": 64}}),
        422,
    )
    assert error["kind"] == "sample_too_long" and (error["row"], error["sample"]) == (11, 1)
    assert all(word in error["message"] for word in ("max_length", "truncation='right'", "overlong='drop'"))
    exc, error = _refused(stub.Collate, _request([long_prompt], options={"max_length": 64, "truncation": "right"}))
    assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT and error["kind"] == "no_supervised_tokens"
    assert all(word in error["message"] for word in ("on_zero_labels='skip'", "max_length", "truncation='left'"))


def test_path_errors_name_the_root_flags(served: Any, http: httpx.Client) -> None:
    image_row = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": "cat.png"}, {"type": "text", "text": "What is this?"}],
            },
            {"role": "assistant", "content": "A cat."},
        ]
    }
    error = _http_error(
        http.post("/v1/collate", json={"samples": [GOOD, image_row], "first_row": 20, "processor": "qwen2.5-vl"}),
        400,
    )
    assert error["kind"] == "media_error" and (error["row"], error["sample"]) == (21, 1)
    assert "--media-root" in error["message"] and "media_roots" in error["message"]
    with grpc.insecure_channel(served.grpc_target, options=CHANNEL_OPTIONS) as channel:
        _, stream_dataset = frame_stream_calls(channel)
        request = pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="elsewhere/train.jsonl"), batch_size=1)
        with pytest.raises(grpc.RpcError) as info:
            list(stream_dataset(request, timeout=60))
    error = json.loads(dict(info.value.trailing_metadata() or ())["feedline-error"])
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT and error["field"] == "dataset.path"
    assert "--data-root" in error["message"] and "data_roots" in error["message"]


# --- work caps ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "cap", "sample"),
    [
        ([GOOD, {"prompt": "x" * 20_001, "completion": "y"}], "max_chars_per_sample", 1),
        ([{"prompt": "x" * 19_000, "completion": "y"}] * 3, "max_chars_per_request", None),
        ([{"prompt": "hello " * 1_000, "completion": " world"}], "max_tokens_per_sample", 0),
        ([{"prompt": "hello " * 300, "completion": " world"}] * 4, "max_tokens_per_request", None),
    ],
)
def test_work_caps_refuse_before_the_work(
    http: httpx.Client, stub: Any, rows: list[Any], cap: str, sample: int | None
) -> None:
    error = _http_error(http.post("/v1/collate", json={"samples": rows}), 413)
    assert error["kind"] == "request_too_large" and error["sample"] == sample
    assert f"{cap}={LIMITS[cap]}" in error["message"] and f"FEEDLINE_{cap.upper()}" in error["message"]
    exc, error = _refused(stub.Collate, _request(rows))
    assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and cap in error["message"]
    exc, error = _refused(stub.Collate, pb.CollateRequest(samples_msgpack=pack_rows(rows)))  # what clients send
    assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and cap in error["message"]
    assert error["sample"] == sample


_KEYS = st.one_of(st.text(max_size=8), st.binary(max_size=8))
_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False), st.text(), st.binary()
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=20,
)
_ROWS = st.lists(st.dictionaries(_KEYS, _VALUES, max_size=4), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(rows=_ROWS)
def test_the_encoded_size_bounds_the_characters_counted(rows: list[dict[Any, Any]]) -> None:
    """The bound that lets a request skip the character count is never below the count, for msgpack rows
    (bytes keys, non-ASCII text, nesting) and for JSON rows, decoded as the server decodes them."""
    packed = pack_rows(rows)
    decoded = parse_rows([], Limits(), packed)
    assert sum(count_chars(row) for row in decoded) <= encoded_chars_bound([], packed)
    json_rows = [{str(k): v for k, v in row.items()} for row in rows]
    try:
        samples = [json.dumps(row).encode() for row in json_rows]
    except TypeError:  # bytes have no JSON form; the msgpack half above covered them
        return
    assert sum(count_chars(json.loads(raw)) for raw in samples) <= encoded_chars_bound(samples)


def test_rows_the_bound_cannot_clear_are_counted() -> None:
    """Past the caps, the bound proves nothing and the walk refuses the row, naming it."""
    limits = Limits(max_chars_per_sample=1000, max_chars_per_request=5000)
    rows = [{"prompt": "x" * 1001, "completion": "y"}]
    packed = pack_rows(rows)
    with pytest.raises(RequestTooLarge, match="max_chars_per_sample"):
        check_chars(parse_rows([], limits, packed), limits, at_most=encoded_chars_bound([], packed))
    small = [{"prompt": "x" * 100, "completion": "y"}]
    check_chars(small, limits, at_most=encoded_chars_bound([], pack_rows(small)))


def test_dataset_rows_are_counted_only_where_their_stored_size_does_not_clear_the_caps(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSONL batch within the caps by its bytes skips the walk; a Parquet batch (no stored text) is walked,
    and a JSONL row over ``max_chars_per_sample`` is still refused, naming its dataset row and the cap."""
    walked: list[int] = []

    def counting(row: Any) -> int:
        walked.append(1)
        return count_chars(row)

    monkeypatch.setattr(_caps, "count_chars", counting)
    with grpc.insecure_channel(served.grpc_target, options=CHANNEL_OPTIONS) as channel:
        _, stream_dataset = frame_stream_calls(channel)

        def stream(path: str, batch_size: int, max_batches: int = 0) -> list[Any]:
            request = pb.StreamDatasetRequest(
                dataset=pb.DatasetRef(path=path), batch_size=batch_size, max_batches=max_batches
            )
            return [decode_frames([unwrap_frame(m)]) for m in stream_dataset(request, timeout=60)]

        assert len(stream("long.jsonl", 3, max_batches=1)[0].tensors["input_ids"]) == 3 and not walked
        assert len(stream("train.parquet", 4)[0].tensors["input_ids"]) == 4 and len(walked) == 4
        with pytest.raises(grpc.RpcError) as info:
            stream("long.jsonl", 2)
    error = json.loads(dict(info.value.trailing_metadata() or ())["feedline-error"])
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "max_chars_per_sample" in error["message"]
    assert error["row"] == 3 and error["sample"] == 1


@pytest.fixture(scope="module")
def process() -> Iterator[Served]:
    """A real `feedline serve` process with its defaults (the built-in qwen2.5, the default limits)."""
    server = Served()
    yield server
    server.close()


def test_a_50mb_mask_body_is_refused_quickly_while_others_are_served(process: Served) -> None:
    text = "hello world " * (50_000_000 // 12)
    body = json.dumps(
        {"sample": {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]}}
    ).encode()
    assert len(body) >= 50_000_000
    result: dict[str, Any] = {}

    def big() -> None:
        start = time.perf_counter()
        with httpx.Client(base_url=process.http.base_url, timeout=300) as client:
            result["reply"] = client.post("/v1/mask", content=body, headers={"content-type": "application/json"})
        result["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=big)
    thread.start()
    small = []
    while thread.is_alive():
        start = time.perf_counter()
        reply = process.http.post("/v1/mask", json={"sample": GOOD})
        small.append((reply.status_code, time.perf_counter() - start))
    thread.join()
    error = _http_error(result["reply"], 413)
    assert error["field"] == "sample" and "max_chars_per_sample" in error["message"]
    print(
        f"50 MB /v1/mask refused in {result['seconds']:.2f} s; {len(small)} small requests served meanwhile, "
        f"slowest {max(s for _, s in small):.2f} s"
    )
    assert result["seconds"] < 20  # unbounded, it held a worker for 117 s
    assert small and all(code == 200 for code, _ in small)


def test_a_request_past_its_time_budget_is_refused(in_process: Any, qwen_processor: Processor) -> None:
    state = ServingState(ProcessorRegistry.of(qwen_processor), limits=Limits(max_request_seconds=0.01))
    server = in_process(state, http=True)
    rows = [{"prompt": f"question {i} " + "some words " * 1000, "completion": " answer"} for i in range(64)]
    with httpx.Client(base_url=server.http_url, timeout=120) as client:
        error = _http_error(client.post("/v1/collate", json={"samples": rows}), 504)
    assert error["kind"] == "request_timeout" and "max_request_seconds" in error["message"]
    with grpc.insecure_channel(server.grpc_target, options=CHANNEL_OPTIONS) as channel:
        exc, error = _refused(feedline_pb2_grpc.FeedlineStub(channel).Collate, _request(rows))
    assert exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED and error["kind"] == "request_timeout"


# --- tool messages without ids -----------------------------------------------------------------------------------


def test_tool_messages_need_ids_only_where_the_template_uses_them(qwen_processor: Processor, stub: Any) -> None:
    row = {"messages": TOOL_ROWS}
    reply = stub.Collate(_request([row], processor="qwen2.5", options={"label_format": "unshifted"}), timeout=60)
    ids = decode_frames(reply.frames).tensors["input_ids"][0].tolist()
    qwen = qwen_processor.tokenizer
    assert ids == qwen.apply_chat_template(TOOL_ROWS, tokenize=True, return_dict=False)  # the rows as given
    exc, error = _refused(stub.Collate, _request([GOOD, row], processor="mistral-nemo", first_row=3))
    assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (error["row"], error["field"]) == (4, "messages[2].tool_call_id") and "template" in error["message"]
    with_id = {"messages": [*TOOL_ROWS[:2], {**TOOL_ROWS[2], "tool_call_id": "abcdefghi"}, TOOL_ROWS[3]]}
    assert stub.Collate(_request([with_id], processor="mistral-nemo"), timeout=60).frames


def test_characters_are_counted_without_media_payloads() -> None:
    from feedline.service.server._caps import count_chars

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 2_000_000}}
    row = {"messages": [{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}]}
    assert count_chars(row) == sum(
        map(len, ("messages", "role", "user", "content", "type", "text", "text", "What is this?"))
    )
    nested: list[Any] = []
    for _ in range(50_000):  # deeper than any recursion limit
        nested = [nested]
    assert count_chars({"x": [nested, "abc"]}) == 4
