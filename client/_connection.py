"""The client's one connection object: replicas, one failover loop, one retry rule, hedging, DNS re-resolution.

``Connection`` owns the channels (one per replica address, created lazily in the current process), picks a
replica for each attempt (round-robin over the healthy ones), and applies one rule to every failure: bad input
fails the call; a transport failure, a replica that stalls, or a replica that refuses the pinned processor
fingerprint sends the work to another replica. Unary calls are hedged (``Connection.unary``); streams use
``Connection.failed``/``Connection.hedge_delay`` around their own resume logic (``_sources``: dataset and
samples mode).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from feedline.proto import FeedlineError, FingerprintMismatch, ServiceUnavailable, error_from_dict
from feedline.proto.v1 import (
    CHANNEL_OPTIONS,
    COLLATE,
    COLLATE_STREAM,
    ERROR_METADATA_KEY,
    LIST_PROCESSORS,
    STREAM_DATASET,
)
from feedline.proto.v1 import feedline_pb2 as pb

from ._http_port import http_port_error
from ._policy import RetryPolicy

__all__ = ["RETRYABLE", "Connection", "map_rpc_error", "parse_endpoints"]

_LOGGER = logging.getLogger("feedline.client")

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
"""Transport-level failures another replica (or a later try) may not have; bad input is never retried."""

_MAX_COOLDOWN_DOUBLINGS = 4
_RESOLVE_AFTER_FAILURE_S = 1.0
_RETIRED_CHANNEL_S = 60.0  # a removed address keeps its channel this long, so in-flight calls can finish
_WINDOW = 64  # latencies kept per kind for the hedge delay


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """gRPC targets from "host:port", a comma-separated list, a list, or "dns:///name:port" (every address the
    name resolves to is a replica: a Kubernetes headless Service)."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    targets = [e.strip() for e in items if e and e.strip()]
    if not targets:
        raise ValueError("no endpoints given")
    return targets


def map_rpc_error(err: grpc.RpcError) -> FeedlineError:
    """The server's FeedlineError from the call's trailing metadata, or ServiceUnavailable for transport errors."""
    metadata: Any = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in metadata or ():
        if key == ERROR_METADATA_KEY:
            try:
                return error_from_dict(json.loads(value))
            except ValueError:
                break
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else err
    return ServiceUnavailable(f"{code.name if code else 'RPC'} from the server: {details}")


def _dns_name(target: str) -> str | None:
    """``name:port`` of a ``dns:///name:port`` (or ``dns://server/name:port``) target, else None."""
    if not target.startswith("dns:"):
        return None
    rest = target[4:]
    return rest[2:].partition("/")[2] if rest.startswith("//") else rest


def _resolve(name: str) -> list[str]:
    host, _, port = name.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"dns target {name!r} needs host:port")
    infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    addresses = {f"[{i[4][0]}]:{port}" if i[0] == socket.AF_INET6 else f"{i[4][0]}:{port}" for i in infos}
    return sorted(addresses)


class _Latencies:
    """Recent latencies of one kind of wait; the hedge delay is derived from their median (not a high
    percentile: one slow replica of three would make every third latency slow, and a 95th percentile would then
    wait as long as that replica before hedging around it)."""

    def __init__(self) -> None:
        self._recent: collections.deque[float] = collections.deque(maxlen=_WINDOW)

    def add(self, seconds: float) -> None:
        self._recent.append(seconds)

    def median(self) -> float | None:
        if len(self._recent) < 4:
            return None
        return statistics.median(self._recent)


class Connection:
    """Channels to every replica, the health of each, and the one retry rule (see the module docstring).

    Safe across fork and pickle: channels, locks and counters are made again in the process that uses them.
    ``stats`` counts what happened (calls, failovers, hedges, stalls, refused replicas, DNS changes).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        policy: RetryPolicy,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.targets = parse_endpoints(endpoints)
        self.policy = policy
        self.metadata = tuple(metadata)
        self._credentials = credentials
        self._next = random.randrange(1 << 16)  # where round-robin starts (tests set it to start on a given one)
        self._fresh()

    def _fresh(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._channels: dict[str, grpc.Channel] = {}
        self._retired: list[tuple[float, grpc.Channel]] = []
        self._addresses: dict[str, list[str]] = {}  # target -> its replica addresses
        self._resolved_at = 0.0
        self._resolving = False
        self._failed_at = 0.0
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._refused: dict[str, str] = {}  # address -> the fingerprint mismatch it answered
        self._joined: set[str] = set()  # replicas that appeared since the first resolution, not yet picked
        self.generation = 0
        """Incremented whenever the set of replica addresses changes (a long call may then end early, so that
        its next call can go to a replica that appeared)."""
        self._latency = {"unary": _Latencies(), "stream": _Latencies()}
        self.stats: dict[str, int] = collections.Counter()

    def __getstate__(self) -> dict[str, Any]:
        keep = ("targets", "policy", "metadata", "_credentials", "_next")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fresh()

    # ------------------------------------------------------------------ replicas
    def addresses(self) -> list[str]:
        """Every replica address now known (``dns:///`` targets resolved; resolved again when due)."""
        if os.getpid() != self._pid:  # a forked DataLoader worker must not reuse the parent's channels
            self._fresh()
        now = time.monotonic()
        if not self._addresses:
            self._apply({t: self._lookup(t) for t in self.targets})
            self._resolved_at = now
        elif any(_dns_name(t) for t in self.targets) and now - self._resolved_at >= self.policy.resolve_every:
            self._resolve_in_background()
        return [a for t in self.targets for a in self._addresses.get(t, ())]

    def _lookup(self, target: str) -> list[str]:
        name = _dns_name(target)
        if name is None:
            return [target]
        try:
            found = _resolve(name)
        except OSError as exc:
            found = []
            _LOGGER.warning("cannot resolve %s (%s)", target, exc)
        return found or self._addresses.get(target, [])

    def _resolve_in_background(self) -> None:
        with self._lock:
            if self._resolving:
                return
            self._resolving, self._resolved_at = True, time.monotonic()

        def run() -> None:
            try:
                self._apply({t: self._lookup(t) for t in self.targets})
            finally:
                self._resolving = False

        threading.Thread(target=run, name="feedline-resolve", daemon=True).start()

    def _apply(self, resolved: dict[str, list[str]]) -> None:
        with self._lock:
            before = {a for addrs in self._addresses.values() for a in addrs}
            self._addresses = resolved
            after = {a for addrs in resolved.values() for a in addrs}
            if self._resolved_at and before != after:
                self.stats["dns_changes"] += 1
                self.generation += 1
                self._joined = (self._joined | (after - before)) & after
                _LOGGER.warning("replicas changed: +%s -%s", sorted(after - before), sorted(before - after))
            now = time.monotonic()
            for address in before - after:
                channel = self._channels.pop(address, None)
                if channel is not None:
                    self._retired.append((now, channel))
                for table in (self._down_until, self._failures, self._refused):
                    table.pop(address, None)
            while self._retired and now - self._retired[0][0] > _RETIRED_CHANNEL_S:
                self._retired.pop(0)[1].close()
        if not after:
            raise ServiceUnavailable(f"no replica address for {self.targets}")

    def channel(self, address: str) -> grpc.Channel:
        with self._lock:
            if address not in self._channels:
                options = self._channel_options()
                if self._credentials is not None:
                    self._channels[address] = grpc.secure_channel(address, self._credentials, options=options)
                else:
                    self._channels[address] = grpc.insecure_channel(address, options=options)
            return self._channels[address]

    def _channel_options(self) -> list[tuple[str, Any]]:
        keepalive_ms = int(self.policy.keepalive * 1000)
        return [
            *CHANNEL_OPTIONS,  # message limits and the HTTP/2 buffers that large batches need
            ("grpc.keepalive_time_ms", keepalive_ms),  # servers accept pings every 5 s or more
            ("grpc.keepalive_timeout_ms", keepalive_ms),
            ("grpc.http2.max_pings_without_data", 0),  # keep pinging a stream that waits for its next frame
            # a restarted replica is reconnected to within max_backoff (gRPC's default waits up to 120 s); the
            # connect deadline itself (grpc.min_reconnect_backoff_ms, 20 s) stays: a busy server may be slow to
            # send its SETTINGS frame, and hedging covers the wait meanwhile
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", int(self.policy.max_backoff * 1000)),
            ("grpc.enable_retries", 0),  # retries are this object's, against other replicas
        ]

    def pick(self, avoid: Sequence[str] = ()) -> str:
        """The next replica for an attempt: one that appeared since the first resolution and has had no call yet,
        else round-robin over the healthy ones not in ``avoid``; one cooling down only if none is healthy. Raises
        FingerprintMismatch when every replica refused the pinned processor."""
        addresses = self.addresses()
        with self._lock:
            usable = [a for a in addresses if a not in self._refused]
            if not usable:
                raise FingerprintMismatch(
                    "every replica refused the pinned processor fingerprint: "
                    + "; ".join(f"{a}: {m}" for a, m in self._refused.items())
                )
            now = time.monotonic()
            fresh = [a for a in usable if a not in avoid] or usable
            healthy = [a for a in fresh if self._down_until.get(a, 0.0) <= now]
            joined = [a for a in healthy if a in self._joined]
            if joined:  # a replica that just appeared (scale-up) gets the next call
                self._joined.discard(joined[0])
                return joined[0]
            if healthy:
                self._next += 1
                return healthy[(self._next - 1) % len(healthy)]
            return min(fresh, key=lambda a: self._down_until.get(a, 0.0))

    def has_healthy(self, avoid: Sequence[str] = ()) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(
                a not in avoid and a not in self._refused and self._down_until.get(a, 0.0) <= now
                for a in self.addresses()
            )

    def succeeded(self, address: str, kind: str, seconds: float) -> None:
        with self._lock:
            self._failures.pop(address, None)
            self._down_until.pop(address, None)
            self._latency[kind].add(seconds)

    def slow(self, address: str) -> None:
        """``address`` stalled or lost a hedge: prefer the others for a while."""
        self._cool(address)

    def failed(self, address: str, err: grpc.RpcError, failures: int, what: str) -> None:
        """The one retry rule. Raises the call's error when it must not be retried (bad input) or the attempts
        are spent; otherwise marks ``address`` and sleeps a backoff if no healthy replica is left to try."""
        wrong_port = http_port_error(err, address)
        if wrong_port is not None:
            raise wrong_port from None  # not retried: an HTTP port answers the same way every time
        mapped = map_rpc_error(err)
        if isinstance(mapped, FingerprintMismatch) and not (mapped.field or "").startswith("dataset"):
            # another processor on this replica (a dataset that changed is the same file for every replica)
            with self._lock:
                self._refused[address] = str(mapped)
            self.stats["refused"] += 1
            _LOGGER.error(
                "%s: replica %s refused the pinned processor (%s); it is left out of this run", what, address, mapped
            )
        elif err.code() not in RETRYABLE or not isinstance(mapped, ServiceUnavailable):
            raise mapped from None
        else:
            self._cool(address)
            self.stats["failovers"] += 1
            _LOGGER.warning("%s: %s from %s; trying another replica", what, err.code().name, address)
        if failures >= self.policy.attempts:
            raise ServiceUnavailable(f"{what}: no replica answered after {failures} attempts ({mapped})") from None
        now = time.monotonic()
        if now - self._failed_at >= _RESOLVE_AFTER_FAILURE_S and any(_dns_name(t) for t in self.targets):
            self._failed_at = now
            self._resolve_in_background()
        if not self.has_healthy(avoid=(address,)):
            time.sleep(self.policy.backoff(failures - 1))

    def _cool(self, address: str) -> None:
        with self._lock:
            n = self._failures.get(address, 0)
            self._failures[address] = n + 1
            self._down_until[address] = time.monotonic() + self.policy.cooldown * 2 ** min(n, _MAX_COOLDOWN_DOUBLINGS)

    def hedge_delay(self, kind: str) -> float:
        """How long a call (``unary``) or a stream's next frame (``stream``) may take before it is hedged or
        resumed elsewhere: ``hedge_factor`` x the recent median, within [hedge_min, timeout] (before four
        latencies are known: ``2 x hedge_min``)."""
        median = self._latency[kind].median()
        delay = 2 * self.policy.hedge_min if median is None else self.policy.hedge_factor * median
        return min(self.policy.timeout, max(self.policy.hedge_min, delay))

    def close(self) -> None:
        """Close every channel (safe while another thread opens one: that one is simply kept)."""
        with self._lock:
            channels = [*self._channels.values(), *(c for _, c in self._retired)]
            self._channels, self._retired = {}, []
        for channel in channels:
            channel.close()

    # ------------------------------------------------------------------ calls
    def collate(self, request: pb.CollateRequest) -> HedgedCall:
        """A Collate call, hedged and failed over (``.result()`` is the CollateResponse)."""
        return self.unary(
            COLLATE,
            request,
            pb.CollateRequest.SerializeToString,
            pb.CollateResponse.FromString,
            f"batch {request.batch_index}",
        )

    def list_processors(self) -> pb.ListProcessorsResponse:
        call = self.unary(
            LIST_PROCESSORS,
            pb.ListProcessorsRequest(),
            pb.ListProcessorsRequest.SerializeToString,
            pb.ListProcessorsResponse.FromString,
            "ListProcessors",
        )
        response: pb.ListProcessorsResponse = call.result()
        return response

    def stream_dataset(self, address: str, request: pb.StreamDatasetRequest) -> Any:
        """A StreamDataset call on ``address``, its frames as serialized bytes (no deadline: it lasts an epoch;
        the caller cancels it when it stalls, see ``hedge_delay``)."""
        method: Any = self.channel(address).unary_stream(
            STREAM_DATASET, request_serializer=pb.StreamDatasetRequest.SerializeToString, response_deserializer=None
        )
        self.stats["attempts"] += 1
        return method(request, timeout=None, metadata=tuple(self.metadata) or None)

    def collate_stream(self, address: str, requests: Iterator[pb.CollateRequest]) -> Any:
        """A CollateStream call on ``address`` fed by ``requests``, its frames as serialized bytes (no deadline:
        it lasts a run; the caller cancels it when it stalls, see ``hedge_delay``)."""
        method: Any = self.channel(address).stream_stream(
            COLLATE_STREAM, request_serializer=pb.CollateRequest.SerializeToString, response_deserializer=None
        )
        self.stats["attempts"] += 1
        return method(requests, timeout=None, metadata=tuple(self.metadata) or None)

    def unary(
        self,
        method: str,
        request: Any,
        serializer: Callable[[Any], bytes],
        deserializer: Callable[[bytes], Any],
        what: str,
    ) -> HedgedCall:
        """Start ``request`` on a replica; ``.result()`` hedges, fails over and returns the first answer."""
        return HedgedCall(self, method, request, serializer, deserializer, what)


class HedgedCall:
    """One unary request on up to two replicas at a time (tail-at-scale hedging): sent to one replica; if no
    answer comes within the hedge delay, sent to another as well; the first answer wins, the other is cancelled.
    Safe because the same request gives identical bytes on any replica. Failed attempts go to other replicas
    under the connection's retry rule."""

    def __init__(
        self,
        conn: Connection,
        method: str,
        request: Any,
        serializer: Callable[[Any], bytes],
        deserializer: Callable[[bytes], Any],
        what: str,
    ) -> None:
        self._conn, self._method, self._request, self._what = conn, method, request, what
        self._serializer, self._deserializer = serializer, deserializer
        self._wake = threading.Condition()
        self._live: list[tuple[str, float, Any]] = []  # (address, started, future)
        self._failures = 0
        self._launch()

    def _launch(self) -> None:
        address = self._conn.pick(avoid=[a for a, _, _ in self._live])
        method = self._conn.channel(address).unary_unary(
            self._method, request_serializer=self._serializer, response_deserializer=self._deserializer
        )
        future = method.future(
            self._request, timeout=self._conn.policy.timeout, metadata=tuple(self._conn.metadata) or None
        )
        self._live.append((address, time.monotonic(), future))
        self._conn.stats["attempts"] += 1
        future.add_done_callback(lambda _: self._notify())

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def cancel(self) -> None:
        for _, _, future in self._live:
            future.cancel()

    def result(self) -> Any:
        conn = self._conn
        try:
            while True:
                for entry in [e for e in self._live if e[2].done()]:
                    self._live.remove(entry)
                    address, started, future = entry
                    try:
                        response = future.result()
                    except grpc.RpcError as err:
                        self._failures += 1
                        conn.failed(address, err, self._failures, self._what)
                        continue
                    except grpc.FutureCancelledError:
                        raise ServiceUnavailable(f"{self._what}: cancelled") from None
                    conn.succeeded(address, "unary", time.monotonic() - started)
                    beaten = [a for a, began, _ in self._live if began < started]
                    if beaten:  # the hedge answered first: the replica it was sent around is slow
                        conn.stats["hedges_won"] += 1
                        for slow in beaten:
                            conn.slow(slow)
                    return response
                if not self._live:
                    self._launch()
                    continue
                self._wait_or_hedge()
        finally:
            self.cancel()

    def _wait_or_hedge(self) -> None:
        conn = self._conn
        hedge_at = self._live[-1][1] + conn.hedge_delay("unary")
        with self._wake:
            while not any(f.done() for _, _, f in self._live):
                left = hedge_at - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(min(left, 0.5))
        if any(f.done() for _, _, f in self._live) or len(self._live) >= 2:
            if len(self._live) >= 2:  # both slow: wait for either, no third attempt until one fails
                with self._wake:
                    self._wake.wait(0.5)
            return
        slow = self._live[0][0]
        if not conn.has_healthy(avoid=[slow]):
            with self._wake:
                self._wake.wait(0.5)
            return
        conn.stats["hedges"] += 1
        _LOGGER.warning(
            "%s: no answer from %s in %.2f s; hedging on another replica",
            self._what,
            slow,
            time.monotonic() - self._live[0][1],
        )
        self._launch()
