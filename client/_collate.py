"""RemoteCollate: a picklable ``collate_fn`` for an ordinary DataLoader; the service does the collation."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from feedline.proto._framing import decode_frames

from ._http_port import http_port_error
from ._replicas import Replicas, RetryPolicy, call_with_failover
from ._requests import check_fingerprint, collate_call, collate_request, options_message, processor_fingerprint
from ._tensors import to_torch

__all__ = ["RemoteCollate"]

_LOGGER = logging.getLogger("feedline.client")


class RemoteCollate:
    """``DataLoader(dataset, batch_size=8, collate_fn=RemoteCollate("feedline:50051", "qwen2.5"))``.

    The DataLoader keeps sampling (workers included); each batch of rows is sent to a replica, which
    tokenizes, labels and pads it, and the tensors come back. The processor fingerprint is pinned on first
    use (or given), so a replica with other tokens refuses instead of answering differently.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        processor: str = "qwen2.5",
        *,
        fingerprint: str | None = None,
        retry: RetryPolicy | None = None,
        pin_memory: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **options: Any,
    ) -> None:
        self.processor = processor
        self.fingerprint = fingerprint or ""
        self.retry = retry or RetryPolicy()
        self.pin_memory = pin_memory
        self.options = dict(options)
        self._options_msg = options_message(self.options)
        self._replicas = Replicas(endpoints, credentials=credentials, metadata=metadata)
        self._counter = itertools.count()
        self.last_reports: list[dict[str, Any]] = []

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_options_msg"] = None
        state["_counter"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._options_msg = options_message(self.options)
        self._counter = itertools.count()

    def pin(self) -> str:
        """Ask a replica for the processor's fingerprint once and keep it for every later request."""
        if not self.fingerprint:
            self.fingerprint = call_with_failover(self._replicas, self.retry, self._ask_fingerprint)
        return self.fingerprint

    def _ask_fingerprint(self, channel: grpc.Channel) -> str:
        try:
            return processor_fingerprint(channel, self.processor, self.retry.timeout, self._replicas.metadata)
        except grpc.RpcError as err:
            wrong_port = http_port_error(err, ", ".join(self._replicas.targets))
            if wrong_port is not None:
                raise wrong_port from None  # not an RpcError: no replica is retried, the answer would not change
            raise

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        fingerprint = self.pin()
        request = collate_request(self.processor, fingerprint, self._options_msg, samples, next(self._counter))

        def attempt(channel: grpc.Channel) -> Any:
            return collate_call(channel, request, self.retry.timeout, self._replicas.metadata).result()

        response = call_with_failover(self._replicas, self.retry, attempt)
        check_fingerprint(response.fingerprint, fingerprint)
        decoded = decode_frames(response.frames)
        self.last_reports = list(decoded.meta.get("reports", []))
        for report in self.last_reports:
            if report.get("status") != "ok":
                _LOGGER.warning("sample %s %s: %s", report.get("index"), report.get("status"), report.get("error"))
        return to_torch(decoded, pin_memory=self.pin_memory)
