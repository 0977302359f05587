"""The gRPC server end to end on loopback: exact engine output, streaming order and backpressure, errors,
deadlines, cancellation, health, reflection and dataset streaming."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import msgpack
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from feedline.proto import DecodedBatch, FrameAssembler, decode_batch, decode_frames, unwrap_frame
from feedline.proto._ragged import RAGGED_META, expand
from feedline.proto.v1 import CHANNEL_OPTIONS, SERVICE_NAME, feedline_pb2_grpc, frame_stream_calls
from feedline.proto.v1 import feedline_pb2 as pb
from feedline.service import CollateOptions, Processor, collate
from feedline.service.server import Limits, ProcessorRegistry, ServingState, create_server, drain_server
from feedline.service.server._datasets import DatasetPlan, batch_rows, num_batches
from tests.support.rows import OPTION_CASES, ROWS


def _request(rows: list[dict[str, Any]], batch_index: int = 0, **fields: Any) -> pb.CollateRequest:
    options = fields.pop("options", {})
    return pb.CollateRequest(
        samples=[json.dumps(r).encode() for r in rows],
        batch_index=batch_index,
        options=pb.CollateOptions(**options),
        **fields,
    )


def _assert_engine_output(
    decoded: DecodedBatch, processor: Processor, rows: list[dict[str, Any]], options: dict[str, Any]
) -> None:
    expected = collate(processor, rows, CollateOptions.from_mapping(options))
    assert list(decoded.tensors) == list(expected.tensors)
    for name, arr in expected.tensors.items():
        got = decoded.tensors[name]
        assert (got.dtype, got.shape) == (arr.dtype, arr.shape), name
        assert got.tobytes() == arr.tobytes(), name
    assert decoded.meta["reports"] == [r.to_dict() for r in expected.reports]
    assert decoded.meta["fingerprint"] == processor.fingerprint


@pytest.fixture(scope="module")
def served(
    qwen_processor: Processor, tmp_path_factory: pytest.TempPathFactory, in_process: Any
) -> Iterator[dict[str, Any]]:
    data_root = tmp_path_factory.mktemp("data")
    (data_root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS * 5))
    (data_root / "bad.jsonl").write_text((json.dumps(ROWS[0]) + "\n") * 3 + "{not json\n")
    (data_root / "invalid.jsonl").write_text((json.dumps(ROWS[0]) + "\n") * 3 + '{"messages": []}\n')
    state = ServingState(
        ProcessorRegistry.of(qwen_processor),
        limits=Limits(max_in_flight_per_stream=2, max_samples_per_request=8),
        data_roots=[data_root],
    )
    target = str(in_process(state).grpc_target)
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    yield {
        "target": target,
        "channel": channel,
        "stub": feedline_pb2_grpc.FeedlineStub(channel),
        "state": state,
        "processor": qwen_processor,
        "data_root": data_root,
    }
    channel.close()


@pytest.mark.parametrize("options", OPTION_CASES)
def test_unary_collate_is_exactly_the_engine_output(served: dict[str, Any], options: dict[str, Any]) -> None:
    response = served["stub"].Collate(_request(ROWS, batch_index=11, options=options), timeout=30)
    assert response.batch_index == 11 and response.fingerprint == served["processor"].fingerprint
    decoded = decode_frames(response.frames)
    _assert_engine_output(decoded, served["processor"], ROWS, options)
    assert decoded.meta["batch_index"] == 11


def test_every_call_collates_on_a_collate_thread_with_its_own_tokenizer_caches(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unary Collate hands its batch to the collate pool like the streams do: those threads own tiktoken
    copies (``own_encoder_caches``), where a gRPC handler thread would share the loader's caches."""
    from feedline.service.tokenizers._encoders import TiktokenEncoder

    seen: list[tuple[str, bool]] = []
    original = TiktokenEncoder._encode_direct

    def spy(self: TiktokenEncoder, text: str) -> Any:
        seen.append((threading.current_thread().name, self._encoding() is not self._enc))
        return original(self, text)

    monkeypatch.setattr(TiktokenEncoder, "_encode_direct", spy)
    served["stub"].Collate(_request(ROWS, ragged=True), timeout=30)
    list(_stream(served, iter([_request(ROWS, batch_index=i) for i in range(2)])))
    _dataset_batches(served, _dataset_request(max_batches=1))
    assert len(seen) >= 4
    assert all(name.startswith("collate") and own for name, own in seen), seen


@pytest.mark.parametrize("options", [*OPTION_CASES, {"label_policy": "nemo"}])
def test_a_ragged_collate_pads_to_exactly_the_engine_output(served: dict[str, Any], options: dict[str, Any]) -> None:
    """What feedline's own clients ask for: each row's tokens only, narrowed, padded again on their side."""
    padded = served["stub"].Collate(_request(ROWS, options=options), timeout=30)
    response = served["stub"].Collate(_request(ROWS, options=options, ragged=True), timeout=30)
    decoded = decode_frames(response.frames)
    assert RAGGED_META in decoded.meta and decoded.tensors["input_ids"].dtype != np.int64
    assert sum(map(len, response.frames)) < sum(map(len, padded.frames)) / 2
    _assert_engine_output(expand(decoded), served["processor"], ROWS, options)


def test_small_frames_reassemble_to_the_same_batch(served: dict[str, Any]) -> None:
    response = served["stub"].Collate(_request(ROWS, max_frame_bytes=100), timeout=30)
    assert len(response.frames) > 5
    _assert_engine_output(decode_frames(response.frames), served["processor"], ROWS, {})


@pytest.mark.parametrize(("batch_index", "frame_bytes"), [(0, 0), (11, 0), (300, 100)])
def test_unary_reply_is_the_bytes_protobuf_writes(served: dict[str, Any], batch_index: int, frame_bytes: int) -> None:
    """The server writes the CollateResponse itself (the batch copied once): the bytes must be protobuf's own
    serialization of the message they parse to, and carry the engine's batch."""
    method = served["channel"].unary_unary(
        f"/{SERVICE_NAME}/Collate", request_serializer=pb.CollateRequest.SerializeToString, response_deserializer=None
    )
    raw = method(_request(ROWS, batch_index=batch_index, max_frame_bytes=frame_bytes), timeout=30)
    response = pb.CollateResponse.FromString(raw)
    assert raw == response.SerializeToString()
    assert (response.batch_index, response.fingerprint) == (batch_index, served["processor"].fingerprint)
    assert len(response.frames) > 5 if frame_bytes else len(response.frames) == 1
    _assert_engine_output(decode_frames(response.frames), served["processor"], ROWS, {})


def _stream(served: dict[str, Any], requests: Iterator[pb.CollateRequest], **kwargs: Any) -> Iterator[DecodedBatch]:
    collate_stream, _ = frame_stream_calls(served["channel"])
    assembler = FrameAssembler()
    for message in collate_stream(requests, **kwargs):
        blob = assembler.add(unwrap_frame(message))
        if blob is not None:
            yield decode_batch(blob)
    assembler.check_complete()


def test_stream_answers_every_batch_in_request_order(served: dict[str, Any]) -> None:
    requests = [_request(ROWS[i % 4 : i % 4 + 1 + i % 3], batch_index=100 + i, max_frame_bytes=256) for i in range(12)]
    batches = list(_stream(served, iter(requests), timeout=60))
    assert [b.meta["batch_index"] for b in batches] == [100 + i for i in range(12)]
    for i, batch in enumerate(batches):
        _assert_engine_output(batch, served["processor"], ROWS[i % 4 : i % 4 + 1 + i % 3], {})


def test_stream_through_the_generated_stub_parses_frame_messages(served: dict[str, Any]) -> None:
    frames = [m.frame for m in served["stub"].CollateStream(iter([_request(ROWS, batch_index=5)]), timeout=30)]
    _assert_engine_output(decode_frames(frames), served["processor"], ROWS, {})


def test_stream_collates_no_further_ahead_than_its_window(served: dict[str, Any]) -> None:
    """A client that stops reading holds the server back: with a window of 2 and HTTP/2 flow control (BDP
    probing off, so the stream window stays small), only a few of 40 batches of 0.4 MB get collated."""
    options = {"padding": "max_length", "max_length": 16384, "truncation": "right"}
    requests = [_request(ROWS[:1], batch_index=i, options=options) for i in range(40)]
    with grpc.insecure_channel(served["target"], options=[("grpc.http2.bdp_probe", 0)]) as channel:
        collate_stream, _ = frame_stream_calls(channel)
        before = _samples_counted()
        call = collate_stream(iter(requests), timeout=60)
        next(call)
        time.sleep(1.0)
        ahead = _samples_counted() - before
        assert ahead <= 2 + 2 + 2  # the window, one blocked in the send, one being read; never all 40
        received = 1 + sum(1 for _ in call)
    assert received == 40  # every batch (one frame each) still arrives once the client reads again
    assert _samples_counted() - before == 40


def test_a_lockstep_client_is_answered(served: dict[str, Any]) -> None:
    """A client that sends the next batch only after receiving the previous one must not deadlock."""
    received = threading.Event()
    done = []

    def requests() -> Iterator[pb.CollateRequest]:
        for i in range(3):
            yield _request(ROWS[:1], batch_index=i)
            assert received.wait(10)
            received.clear()

    for batch in _stream(served, requests(), timeout=30):
        done.append(batch.meta["batch_index"])
        received.set()
    assert done == [0, 1, 2]


def _error(exc: grpc.RpcError) -> dict[str, Any]:
    metadata = dict(exc.trailing_metadata() or ())
    return json.loads(metadata["feedline-error"])


@pytest.mark.parametrize(
    ("rows", "sample", "field"),
    [
        ([ROWS[0], {"messages": "hello"}], 1, "messages"),
        ([ROWS[0], ROWS[1], {"messages": [{"role": "wizard", "content": "x"}]}], 2, "messages[0].role"),
        ([{"messages": [{"role": "user", "content": "only a question"}]}], 0, "messages"),
    ],
)
def test_bad_samples_are_invalid_argument_naming_sample_and_field(
    served: dict[str, Any], rows: list[dict[str, Any]], sample: int, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        served["stub"].Collate(_request(rows), timeout=30)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = _error(info.value)
    assert error["sample"] == sample and error["field"].startswith(field.split("[")[0])
    assert f"sample {sample}" in info.value.details()


def test_sample_that_is_not_json_is_invalid_argument(served: dict[str, Any]) -> None:
    request = pb.CollateRequest(samples=[json.dumps(ROWS[0]).encode(), b"{oops"])
    with pytest.raises(grpc.RpcError) as info:
        served["stub"].Collate(request, timeout=30)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _error(info.value)["sample"] == 1


def test_msgpack_samples_are_the_same_batch_as_json_samples(served: dict[str, Any]) -> None:
    """Current clients send all rows as one msgpack array; older ones one JSON object per row."""
    packed = pb.CollateRequest(samples_msgpack=msgpack.packb(ROWS), batch_index=3)
    response = served["stub"].Collate(packed, timeout=30)
    _assert_engine_output(decode_frames(response.frames), served["processor"], ROWS, {})
    assert response.frames == served["stub"].Collate(_request(ROWS, batch_index=3), timeout=30).frames


@pytest.mark.parametrize(
    ("request_fields", "sample", "message"),
    [
        ({"samples_msgpack": b"\xc1"}, None, "not a valid msgpack array of rows"),
        ({"samples_msgpack": msgpack.packb({"messages": []})}, None, "must be a msgpack array of rows, not dict"),
        ({"samples_msgpack": msgpack.packb([ROWS[0], "hello"])}, 1, "must be a map, not str"),
        (
            {"samples_msgpack": msgpack.packb(ROWS[:1]), "samples": [json.dumps(ROWS[0]).encode()]},
            None,
            "samples or samples_msgpack, not both",
        ),
    ],
)
def test_bad_msgpack_samples_are_invalid_argument(
    served: dict[str, Any], request_fields: dict[str, Any], sample: int | None, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        served["stub"].Collate(pb.CollateRequest(**request_fields), timeout=30)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = _error(info.value)
    assert error["field"] == "samples_msgpack" and error["sample"] == sample and message in error["message"]


@pytest.mark.parametrize(
    ("fields", "code", "kind"),
    [
        ({"fingerprint": "0" * 64}, grpc.StatusCode.FAILED_PRECONDITION, "fingerprint_mismatch"),
        ({"processor": "llama-9"}, grpc.StatusCode.NOT_FOUND, "unknown_processor"),
        ({"options": {"truncation": "right"}}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_options"),
        ({"options": {"label_format": "sideways"}}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_options"),
    ],
)
def test_request_level_errors_map_to_status_codes(
    served: dict[str, Any], fields: dict[str, Any], code: grpc.StatusCode, kind: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        served["stub"].Collate(_request(ROWS, **fields), timeout=30)
    assert info.value.code() is code
    assert _error(info.value)["kind"] == kind


def test_pinned_matching_fingerprint_is_served(served: dict[str, Any]) -> None:
    response = served["stub"].Collate(_request(ROWS, fingerprint=served["processor"].fingerprint), timeout=30)
    assert response.fingerprint == served["processor"].fingerprint


def test_too_many_samples_is_resource_exhausted(served: dict[str, Any]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        served["stub"].Collate(_request(ROWS * 3), timeout=30)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_error_in_a_stream_names_its_batch(served: dict[str, Any]) -> None:
    requests = [_request(ROWS[:1], batch_index=0), _request([{"messages": []}], batch_index=1)]
    with pytest.raises(grpc.RpcError) as info:
        list(_stream(served, iter(requests), timeout=30))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _error(info.value)["batch_index"] == 1


def test_deadline_ends_the_call_and_its_queued_work(served: dict[str, Any]) -> None:
    options = {"padding": "max_length", "max_length": 16384, "truncation": "right"}
    with grpc.insecure_channel(served["target"], options=[("grpc.http2.bdp_probe", 0)]) as channel:
        collate_stream, _ = frame_stream_calls(channel)
        before = _samples_counted()
        call = collate_stream(
            iter([_request(ROWS[:1], batch_index=i, options=options) for i in range(200)]), timeout=0.5
        )
        time.sleep(1.0)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    settled = _samples_counted()
    time.sleep(0.3)
    assert _samples_counted() == settled and settled - before < 10


def test_work_is_not_started_past_the_deadline() -> None:
    from feedline.service.server._grpc import _check_live, _DeadlineExceeded

    class Expired:
        def time_remaining(self) -> float:
            return -0.1

        def is_active(self) -> bool:
            return True

    with pytest.raises(_DeadlineExceeded):
        _check_live(Expired())  # type: ignore[arg-type]


def _samples_counted() -> float:
    from prometheus_client import REGISTRY

    return sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "feedline_samples"
        for s in m.samples
        if s.name == "feedline_samples_total"
    )


def test_cancelled_stream_stops_collating(served: dict[str, Any]) -> None:
    collate_stream, _ = frame_stream_calls(served["channel"])
    before = _samples_counted()
    call = collate_stream(iter([_request(ROWS[:1], batch_index=i) for i in range(200)]), timeout=60)
    next(call)
    call.cancel()
    time.sleep(0.5)
    settled = _samples_counted()
    time.sleep(0.5)
    assert _samples_counted() == settled  # nothing more is collated after the cancel
    assert settled - before < 10  # a window's worth, not 200 batches


def test_list_processors(served: dict[str, Any]) -> None:
    response = served["stub"].ListProcessors(pb.ListProcessorsRequest(), timeout=10)
    (info,) = response.processors
    assert info.name == "qwen2.5" and info.fingerprint == served["processor"].fingerprint
    assert json.loads(info.info_json)["fingerprint"] == info.fingerprint
    # No format chosen: it follows the request's label_policy (unshifted for assistant, shifted for nemo).
    assert dict(info.defaults)["label_format"] is None and dict(info.defaults)["label_policy"] == "assistant"


def test_health_and_drain(qwen_processor: Processor, in_process: Any) -> None:
    state = ServingState(ProcessorRegistry.of(qwen_processor))
    with grpc.insecure_channel(in_process(state).grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        state.drain()
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_every_answer_in_flight_when_a_drain_begins_arrives(qwen_processor: Processor) -> None:
    """gRPC core resets a connection when its last call ends after ``server.stop`` began, and an answer still
    leaving went with it (UNAVAILABLE "Connection reset by peer" in 5 of 30 drains, once in CI); the drain
    stops the server only once its calls have ended. Twenty drains, each with a 1,200-row Collate in flight:
    every answer arrives whole."""
    request = _request(ROWS * 300)
    for attempt in range(20):
        state = ServingState(ProcessorRegistry.of(qwen_processor))
        server, port = create_server("127.0.0.1:0", state.registry, state=state)
        server.start()
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            stub = feedline_pb2_grpc.FeedlineStub(channel)
            future = stub.Collate.future(request, timeout=60)
            deadline = time.monotonic() + 30
            while state.calls.active == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert drain_server(server, state, grace_s=30).wait(60)
            assert future.exception() is None, (attempt, future.exception())
        assert len(decode_frames(future.result().frames).tensors["input_ids"]) == len(ROWS) * 300


def test_health_is_not_serving_while_a_processor_failed(tmp_path: Path, in_process: Any) -> None:
    from feedline.service.server import ProcessorSpec

    registry = ProcessorRegistry([ProcessorSpec("broken", str(tmp_path / "missing"))])
    assert registry.load_all() is False
    assert "missing" in registry.status()["broken"]["error"]
    with grpc.insecure_channel(in_process(ServingState(registry)).grpc_target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            feedline_pb2_grpc.FeedlineStub(channel).Collate(_request(ROWS), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def test_reflection_lists_the_services(served: dict[str, Any]) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served["channel"])
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def _dataset_request(**fields: Any) -> pb.StreamDatasetRequest:
    base = {
        "dataset": pb.DatasetRef(path="train.jsonl"),
        "seed": 7,
        "epoch": 1,
        "shuffle": True,
        "batch_size": 3,
        "rank": 1,
        "world_size": 2,
    }
    return pb.StreamDatasetRequest(**{**base, **fields})


def _dataset_batches(served: dict[str, Any], request: pb.StreamDatasetRequest) -> list[DecodedBatch]:
    _, stream_dataset = frame_stream_calls(served["channel"])
    assembler, out = FrameAssembler(), []
    for message in stream_dataset(request, timeout=60):
        blob = assembler.add(unwrap_frame(message))
        if blob is not None:
            out.append(decode_batch(blob))
    return out


def test_stream_dataset_follows_the_plan_and_resumes_from_a_cursor(served: dict[str, Any]) -> None:
    rows = ROWS * 5
    plan = DatasetPlan(seed=7, epoch=1, shuffle=True, batch_size=3, rank=1, world_size=2)
    expected = [batch_rows(len(rows), plan, i) for i in range(num_batches(len(rows), plan))]
    batches = _dataset_batches(served, _dataset_request())
    assert [b.meta["batch_index"] for b in batches] == list(range(len(expected)))
    for batch, indices in zip(batches, expected, strict=False):
        _assert_engine_output(batch, served["processor"], [rows[i] for i in indices], {})
    resumed = _dataset_batches(served, _dataset_request(start_batch_index=2, max_batches=1))
    assert [b.meta["batch_index"] for b in resumed] == [2]
    assert resumed[0].tensors["input_ids"].tobytes() == batches[2].tensors["input_ids"].tobytes()


def test_a_ragged_dataset_stream_pads_to_the_same_batches(served: dict[str, Any]) -> None:
    padded = _dataset_batches(served, _dataset_request())
    ragged = _dataset_batches(served, _dataset_request(ragged=True))
    assert len(ragged) == len(padded) and all(RAGGED_META in b.meta for b in ragged)
    for got, want in zip(ragged, padded, strict=True):
        expanded = expand(got)
        assert list(expanded.tensors) == list(want.tensors) and expanded.meta == want.meta
        assert all(expanded.tensors[k].tobytes() == want.tensors[k].tobytes() for k in want.tensors)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"dataset": pb.DatasetRef(path="train.jsonl", fingerprint="f" * 64)}, grpc.StatusCode.FAILED_PRECONDITION),
        ({"dataset": pb.DatasetRef(path="../outside.jsonl")}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"rank": 3}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_stream_dataset_refusals(served: dict[str, Any], fields: dict[str, Any], code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _dataset_batches(served, _dataset_request(**fields))
    assert info.value.code() is code


@pytest.mark.parametrize(("path", "row"), [("bad.jsonl", 3), ("invalid.jsonl", 3)])
def test_stream_dataset_error_names_the_dataset_row_and_batch_position(
    served: dict[str, Any], path: str, row: int
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _dataset_batches(
            served,
            _dataset_request(dataset=pb.DatasetRef(path=path), shuffle=False, batch_size=2, rank=0, world_size=1),
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = _error(info.value)
    assert (error["row"], error["sample"], error["batch_index"]) == (row, 1, 1)  # batches of 2, no shuffle
    assert f"row {row} (position 1 in the batch)" in info.value.details()


def test_stream_dataset_sends_an_empty_batch_for_an_empty_share(served: dict[str, Any]) -> None:
    """20 rows over 3 ranks of 3: the last global step has 2 rows, so rank 0 gets nothing in it."""
    batches = _dataset_batches(served, _dataset_request(batch_size=3, world_size=3, rank=0))
    sizes = [b.tensors["input_ids"].shape[0] if b.tensors else 0 for b in batches]
    fingerprint = batches[0].meta["dataset_fingerprint"]  # every batch names the data (the client's state keeps it)
    assert sizes == [3, 3, 0]
    assert batches[-1].meta == {"batch_index": 2, "reports": [], "dataset_fingerprint": fingerprint}
    assert len(fingerprint) == 64 and {b.meta["dataset_fingerprint"] for b in batches} == {fingerprint}
