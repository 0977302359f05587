"""The feedline.v1 gRPC server: thin handlers around the engine, plus health, reflection and connection policy.

Streams answer with serialized ``Frame`` messages built without an extra copy (``split_frames(wrap=True)``);
the method handlers therefore pass bytes through unchanged. CollateStream reads requests on a helper thread
that stops reading while ``max_in_flight_per_stream`` batches are collating or waiting to be sent, so a slow
client holds back its own sender through HTTP/2 flow control instead of filling a queue here.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from feedline.proto import CodecError, FeedlineError, FingerprintMismatch, InvalidOptions, encode_batch, split_frames
from feedline.proto.v1 import CHANNEL_OPTIONS, ERROR_METADATA_KEY, SERVICE_NAME, feedline_pb2 as pb

from ._auth import AuthInterceptor, TlsFiles, TokenAuth
from ._caps import Deadline
from ._config import Limits
from ._cpus import available_cpus
from ._datasets import DatasetPlan, batch_rows, num_batches, open_dataset
from ._errors import brief, error_body, status_for
from ._logging import new_request_id, request_id
from ._metrics import observe_error, track_request
from ._registry import ProcessorRegistry, ServingState
from ._requests import CollateResult, from_first_row, parse_rows, run_collate

__all__ = ["collate_threads_for", "create_server", "drain_server", "options_from_proto"]

_LOGGER = logging.getLogger("feedline.service.grpc")
_OPTION_FIELDS = tuple(f.name for f in pb.CollateOptions.DESCRIPTOR.fields if f.name != "packing")


class _Cancelled(Exception):
    """The call ended (cancelled, deadline passed or stream closed) while its work was queued."""


def create_server(
    address: str,
    registry: ProcessorRegistry,
    *,
    state: ServingState | None = None,
    limits: Limits | None = None,
    max_workers: int = 16,
    collate_threads: int | None = None,
    reuse_port: bool = False,
    keepalive_time_s: float = 30.0,
    max_connection_age_s: float = 300.0,
    max_connection_age_grace_s: float = 600.0,
    auth: TokenAuth | None = None,
    tls: TlsFiles | None = None,
) -> tuple[grpc.Server, int]:
    """Build (not start) a server bound to ``address`` ("127.0.0.1:0" picks a port); return it and its port.

    Health (``grpc.health.v1``) reports SERVING while every processor is loaded and the state is not
    draining; reflection lists the feedline, health and reflection services. With ``auth``, calls other than
    health checks need a bearer token; with ``tls``, the port speaks TLS (mutual TLS if it names a client CA).
    ``max_workers`` bounds the calls served at once (a stream holds one thread while it lasts);
    ``collate_threads`` is the number of batches collated at once, by default ``collate_threads_for(1)``.
    """
    state = state or ServingState(registry, limits=limits)
    limits = state.limits
    server_options = [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", limits.max_request_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),  # clients ping every 10 s (RetryPolicy.keepalive)
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(max_connection_age_grace_s * 1000)),
    ]
    # One value per key, the server's winning: gRPC core keeps the first of duplicate keys, which let
    # CHANNEL_OPTIONS' 256 MiB override max_request_bytes and max_message_bytes.
    options = list({**dict(CHANNEL_OPTIONS), **dict(server_options)}.items())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers, thread_name_prefix="grpc"), options=options,
                         interceptors=[AuthInterceptor(auth, ERROR_METADATA_KEY)] if auth else None)
    collate_pool = futures.ThreadPoolExecutor(collate_threads or collate_threads_for(1), thread_name_prefix="collate")
    servicer = _FeedlineServicer(state, collate_pool)
    server.add_generic_rpc_handlers((servicer.handler(),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _set_health(health_servicer, state)
    state.on_drain(health_servicer.enter_graceful_shutdown)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_secure_port(address, tls.grpc_credentials()) if tls else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    return server, port


def collate_threads_for(workers: int) -> int:
    """Batches one of ``workers`` worker processes collates at once: its share of the CPUs this process may
    use (its affinity set capped by a cgroup CPU quota, see ``_cpus``), at least one.

    Within a worker only the tokenizer's Rust encode runs beside the GIL-bound Python, so threads beyond its
    cores do not add throughput; they add GIL hand-offs and context switches (on 2 cores, 8 threads per
    worker gave 11% fewer rows/s than 1 with 2 workers, and 37% fewer than 2 with 1 worker; see
    bench/WIRE_NOTES.md section 2). Streams keep their next batches queued meanwhile.
    """
    return max(1, available_cpus() // max(1, workers))


def _set_health(servicer: health.HealthServicer, state: ServingState) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if state.ready else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        servicer.set(name, status)


def options_from_proto(message: pb.CollateOptions) -> dict[str, Any]:
    """The options a request set, as the mapping CollateOptions.from_mapping takes (unset = defaults)."""
    out: dict[str, Any] = {name: getattr(message, name) for name in _OPTION_FIELDS if message.HasField(name)}
    if message.HasField("packing"):
        out["packing"] = _integral(json_format.MessageToDict(message.packing))
    return out


def _integral(value: Any) -> Any:
    """protobuf Struct holds numbers as doubles: give whole numbers back as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


class _FeedlineServicer:
    def __init__(self, state: ServingState, pool: futures.ThreadPoolExecutor) -> None:
        self.state = state
        self.pool = pool

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Collate": grpc.unary_unary_rpc_method_handler(
                self.Collate, _lenient(pb.CollateRequest), pb.CollateResponse.SerializeToString),
            "CollateStream": grpc.stream_stream_rpc_method_handler(
                self.CollateStream, _lenient(pb.CollateRequest), None),
            "StreamDataset": grpc.unary_stream_rpc_method_handler(
                self.StreamDataset, _lenient(pb.StreamDatasetRequest), None),
            "ListProcessors": grpc.unary_unary_rpc_method_handler(
                self.ListProcessors, _lenient(pb.ListProcessorsRequest), pb.ListProcessorsResponse.SerializeToString),
        })

    # --- handlers ---------------------------------------------------------------------------------------------

    def Collate(self, request: pb.CollateRequest, context: grpc.ServicerContext) -> pb.CollateResponse:
        with _rpc(context, "Collate") as call:
            request = _decoded(request)
            call["batch_index"] = request.batch_index
            result = self._collate(request, context)
            return pb.CollateResponse(
                batch_index=request.batch_index,
                fingerprint=result.processor.fingerprint,
                frames=result.frames(request.batch_index, self._frame_bytes(request.max_frame_bytes)),
            )

    def CollateStream(self, requests: Iterator[pb.CollateRequest], context: grpc.ServicerContext) -> Iterator[bytes]:
        with _rpc(context, "CollateStream") as call:
            stop = threading.Event()
            context.add_callback(stop.set)
            pending: queue.Queue[Any] = queue.Queue()
            window = threading.Semaphore(self.state.limits.max_in_flight_per_stream)
            reader = threading.Thread(target=self._read, args=(requests, context, window, pending, stop),
                                      name="collate-stream-reader", daemon=True)
            reader.start()
            try:
                while (item := pending.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    batch_index, future = item
                    call["batch_index"] = batch_index
                    yield from future.result()
                    call["batches"] = call.get("batches", 0) + 1
                    window.release()
            finally:
                stop.set()
                _cancel_pending(pending)

    def StreamDataset(self, request: pb.StreamDatasetRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        with _rpc(context, "StreamDataset") as call:
            request = _decoded(request)
            source = open_dataset(request.dataset.path, self.state.data_roots)
            if request.dataset.fingerprint and request.dataset.fingerprint != source.fingerprint:
                raise FingerprintMismatch(f"dataset {request.dataset.path!r} has fingerprint {source.fingerprint}, "
                                          f"the request pinned {request.dataset.fingerprint}", field="dataset.fingerprint")
            plan = DatasetPlan(seed=request.seed, epoch=request.epoch, shuffle=request.shuffle,
                               batch_size=request.batch_size or 1, drop_last=request.drop_last,
                               rank=request.rank, world_size=request.world_size or 1)
            total = num_batches(len(source), plan)
            if request.start_batch_index > total:  # a stale cursor must not read as an empty epoch
                raise InvalidOptions(f"start_batch_index {request.start_batch_index} is past the end of the epoch "
                                     f"({total} batches)", field="start_batch_index")
            end = min(total, request.start_batch_index + request.max_batches) if request.max_batches else total
            options = options_from_proto(request.options)
            extra = {"dataset_fingerprint": source.fingerprint}  # what the client keeps in its state_dict
            for batch_index in range(request.start_batch_index, end):
                call["batch_index"] = batch_index
                _check_live(context)
                indices = batch_rows(len(source), plan, batch_index)
                frame_bytes = self._frame_bytes(request.max_frame_bytes)
                if not len(indices):  # this rank's share of the last, partial global step is empty
                    empty = encode_batch({}, {"batch_index": batch_index, "reports": [], **extra})
                    yield from split_frames(empty, batch_id=batch_index, max_frame_bytes=frame_bytes, wrap=True)
                    continue
                rows = source.rows(indices.tolist())  # a row that is not JSON names its dataset row already
                result = run_collate(self.state, rows, processor=request.processor,
                                     fingerprint=request.processor_fingerprint, options=options,
                                     row_of=_rows_of(indices),
                                     deadline=Deadline(self.state.limits, context.time_remaining()))
                yield from result.frames(batch_index, frame_bytes, wrap=True, extra=extra)
                call["batches"] = call.get("batches", 0) + 1

    def ListProcessors(self, request: pb.ListProcessorsRequest, context: grpc.ServicerContext
                       ) -> pb.ListProcessorsResponse:
        with _rpc(context, "ListProcessors"):
            _decoded(request)
            return pb.ListProcessorsResponse(processors=[_processor_info(i) for i in self.state.registry.infos()])

    # --- work ---------------------------------------------------------------------------------------------------

    def _collate(self, request: pb.CollateRequest, context: grpc.ServicerContext,
                 deadline: Deadline | None = None) -> CollateResult:
        _check_live(context)
        deadline = deadline or Deadline(self.state.limits, context.time_remaining())
        row_of = from_first_row(request.first_row if request.HasField("first_row") else None)
        rows = parse_rows(request.samples, self.state.limits, row_of=row_of)
        return run_collate(self.state, rows, processor=request.processor, fingerprint=request.fingerprint,
                           options=options_from_proto(request.options), row_of=row_of, deadline=deadline)

    def _frames(self, request: pb.CollateRequest, context: grpc.ServicerContext, stop: threading.Event,
                deadline: Deadline) -> list[bytes]:
        if stop.is_set():
            raise _Cancelled()
        result = self._collate(request, context, deadline)
        return result.frames(request.batch_index, self._frame_bytes(request.max_frame_bytes), wrap=True)

    def _read(self, requests: Iterator[pb.CollateRequest], context: grpc.ServicerContext,
              window: threading.Semaphore, pending: queue.Queue[Any], stop: threading.Event) -> None:
        """Submit each request once a window slot is free; end the queue with None or the reading error."""
        end: Any = _Cancelled("request reader stopped")
        try:
            for request in requests:
                request = _decoded(request)
                while not window.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                deadline = Deadline(self.state.limits, context.time_remaining())  # from the time it was read
                pending.put((request.batch_index, self.pool.submit(self._frames, request, context, stop, deadline)))
            end = None
        except grpc.RpcError as exc:  # the client cancelled or the connection broke while we read
            end = _Cancelled(str(exc))
        except CodecError as exc:  # an undecodable request: answered after the batches before it
            end = exc
        finally:
            pending.put(end)

    def _frame_bytes(self, requested: int) -> int:
        limit = self.state.limits.max_frame_bytes
        return min(requested, limit) if requested else limit


def _rows_of(indices: np.ndarray) -> Callable[[int], int]:
    """``row_of`` for a dataset batch: a batch position to the dataset row the plan put there."""
    return lambda position: int(indices[position])


class _Undecodable:
    """A request message that did not parse: its handler answers INVALID_ARGUMENT (codec_error), where gRPC's
    own deserializer would answer INTERNAL, a server fault."""

    def __init__(self, error: CodecError) -> None:
        self.error = error


def _lenient(message: Any) -> Callable[[bytes], Any]:
    """A request deserializer that hands an undecodable message to the handler as ``_Undecodable``."""
    def decode(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return _Undecodable(CodecError(f"not a valid {message.DESCRIPTOR.full_name} message: {exc}",
                                           field="request"))
    return decode


def _decoded(request: Any) -> Any:
    """The request message, or its decoding error raised."""
    if isinstance(request, _Undecodable):
        raise request.error
    return request


def _cancel_pending(pending: queue.Queue[Any]) -> None:
    while True:
        try:
            item = pending.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, tuple):
            item[1].cancel()


def _check_live(context: grpc.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise _DeadlineExceeded()
    if not context.is_active():
        raise _Cancelled()


class _DeadlineExceeded(Exception):
    """The call's deadline passed before its work started."""


def _processor_info(info: Any) -> pb.ProcessorInfo:
    message = pb.ProcessorInfo(
        name=info["name"], class_name=info["class"], family=info["family"], fingerprint=info["fingerprint"],
        info_json=json.dumps(info, default=str).encode(),
    )
    message.defaults.update(info.get("defaults") or {})
    return message


@contextmanager
def _rpc(context: grpc.ServicerContext, method: str) -> Iterator[dict[str, Any]]:
    """Request id, metrics and one log line per call; FeedlineErrors become status codes with JSON details."""
    metadata = dict(context.invocation_metadata() or ())
    given = metadata.get("x-request-id")
    token = request_id.set(new_request_id(given.decode("latin-1") if isinstance(given, bytes) else given))
    start = time.perf_counter()
    call: dict[str, Any] = {}
    with track_request("grpc", method) as outcome:
        try:
            yield call
        except FeedlineError as exc:
            _, code = status_for(exc)
            outcome["code"] = code.name
            observe_error("grpc", exc.kind)
            body = {**error_body(exc), "batch_index": call.get("batch_index")}
            context.set_trailing_metadata(((ERROR_METADATA_KEY, json.dumps(body)),))
            _log(method, code.name, start, call, error=body)
            context.abort(code, brief(str(exc)) or "")
        except _DeadlineExceeded:
            outcome["code"] = "DEADLINE_EXCEEDED"
            _log(method, outcome["code"], start, call)
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the work started")
        except (_Cancelled, GeneratorExit) as exc:
            outcome["code"] = "CANCELLED"
            _log(method, outcome["code"], start, call)
            if isinstance(exc, GeneratorExit):  # the stream was closed under us: nothing left to send
                raise
            context.abort(grpc.StatusCode.CANCELLED, "call cancelled")
        # The server boundary, as on HTTP: anything else is a server fault, answered INTERNAL without detail.
        except Exception as exc:  # noqa: BLE001
            outcome["code"] = "INTERNAL"
            observe_error("grpc", "internal")
            _LOGGER.exception("unhandled error", extra={"method": method, **call})
            context.abort(grpc.StatusCode.INTERNAL, error_body(exc)["message"])
        else:
            _log(method, "OK", start, call)
        finally:
            request_id.reset(token)


def _log(method: str, code: str, start: float, call: dict[str, Any], **extra: Any) -> None:
    _LOGGER.info("rpc", extra={"method": method, "code": code, "ms": round((time.perf_counter() - start) * 1e3, 2),
                               **call, **extra})


def drain_server(server: grpc.Server, state: ServingState, grace_s: float) -> threading.Event:
    """Stop accepting calls, let in-flight ones finish within ``grace_s``; the event is set once stopped."""
    state.drain()
    return server.stop(grace_s)

