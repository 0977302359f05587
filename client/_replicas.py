"""The replicas a client talks to: endpoint parsing, one channel per replica per process, failover order."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from feedline.proto import FeedlineError, ServiceUnavailable, error_from_dict
from feedline.proto.v1 import CHANNEL_OPTIONS, ERROR_METADATA_KEY

__all__ = ["RETRYABLE", "Replicas", "RetryPolicy", "call_with_failover", "map_rpc_error", "parse_endpoints"]

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

_ERROR_KEY = ERROR_METADATA_KEY
_CHANNEL_OPTIONS = [
    *CHANNEL_OPTIONS,  # message limits and the HTTP/2 buffers that large batches need
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.enable_retries", 0),
]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried across replicas (exponential backoff with jitter)."""

    attempts: int = 6
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    timeout: float = 120.0

    def backoff(self, attempt: int) -> float:
        delay: float = min(self.max_backoff, self.initial_backoff * (2**attempt)) * (0.5 + random.random() / 2)
        return delay


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """gRPC targets from "host:port", a comma-separated list, a list, or "dns:///name:port" (round-robin)."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    targets = [e.strip() for e in items if e and e.strip()]
    if not targets:
        raise ValueError("no endpoints given")
    return targets


def map_rpc_error(err: grpc.RpcError) -> FeedlineError:
    """The server's FeedlineError from the call's trailing metadata, or ServiceUnavailable for transport errors."""
    metadata: Any = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in metadata or ():
        if key == _ERROR_KEY:
            try:
                return error_from_dict(json.loads(value))
            except ValueError:
                break
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else err
    return ServiceUnavailable(f"{code.name if code else 'RPC'} from the server: {details}")


class Replicas:
    """Channels to every endpoint, created lazily in the current process (safe across fork and pickle)."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.targets = parse_endpoints(endpoints)
        self.metadata = tuple(metadata)
        self._credentials = credentials
        self._channels: dict[str, grpc.Channel] = {}
        self._pid = os.getpid()
        self._next = random.randrange(len(self.targets))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_channels"] = {}
        return state

    def channel(self, target: str) -> grpc.Channel:
        if os.getpid() != self._pid:  # a forked DataLoader worker must not reuse the parent's channels
            self._channels, self._pid = {}, os.getpid()
        if target not in self._channels:
            if self._credentials is not None:
                self._channels[target] = grpc.secure_channel(target, self._credentials, options=_CHANNEL_OPTIONS)
            else:
                self._channels[target] = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        return self._channels[target]

    def rotation(self) -> list[str]:
        """Targets in failover order, starting from the next one in round-robin."""
        start = self._next
        self._next = (self._next + 1) % len(self.targets)
        return self.targets[start:] + self.targets[:start]

    def close(self) -> None:
        """Close every channel (safe while another thread opens one: that one is simply kept)."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()


def call_with_failover(replicas: Replicas, policy: RetryPolicy, fn: Any) -> Any:
    """Run ``fn(channel)`` on one replica after another until it succeeds or the attempts run out."""
    last: FeedlineError | None = None
    for attempt in range(policy.attempts):
        target = replicas.rotation()[0]
        try:
            return fn(replicas.channel(target))
        except grpc.RpcError as err:
            mapped = map_rpc_error(err)
            if err.code() not in RETRYABLE or not isinstance(mapped, ServiceUnavailable):
                raise mapped from None
            last = mapped
        time.sleep(policy.backoff(attempt))
    raise last or ServiceUnavailable("no replica answered")
