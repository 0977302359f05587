"""Prometheus metrics shared by the gRPC and HTTP servers.

With several worker processes, `feedline serve` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker starts, so
every worker writes its samples there and ``/metrics`` on any worker reports the sum over all of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

__all__ = ["CONTENT_TYPE", "observe_batch", "observe_error", "render", "track_request"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter("feedline_requests", "Requests answered", ["transport", "method", "code"])
ERRORS = Counter("feedline_errors", "Requests that failed, by error kind", ["transport", "kind"])
LATENCY = Histogram("feedline_request_seconds", "Request latency", ["transport", "method"], buckets=_LATENCY_BUCKETS)
IN_FLIGHT = Gauge("feedline_in_flight", "Requests being handled", ["transport"], multiprocess_mode="livesum")
SAMPLES = Counter("feedline_samples", "Samples collated, by outcome", ["processor", "status"])
TOKENS = Counter(
    "feedline_tokens", "Tokens in collated batches (input = non-padding, label = supervised)", ["processor", "kind"]
)
PADDING = Histogram(
    "feedline_padding_ratio",
    "Fraction of padding positions per batch",
    ["processor"],
    buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
)


@contextmanager
def track_request(transport: str, method: str) -> Iterator[dict[str, str]]:
    """Count a request, its latency and in-flight gauge; the caller sets ``outcome["code"]`` before leaving."""
    outcome = {"code": "OK"}
    gauge = IN_FLIGHT.labels(transport)
    gauge.inc()
    start = time.perf_counter()
    try:
        yield outcome
    finally:
        gauge.dec()
        LATENCY.labels(transport, method).observe(time.perf_counter() - start)
        REQUESTS.labels(transport, method, outcome["code"]).inc()


def observe_error(transport: str, kind: str) -> None:
    ERRORS.labels(transport, kind).inc()


def observe_batch(
    processor: str, token_counts: tuple[int, int], statuses: Mapping[str, int], label_tokens: int
) -> None:
    """Samples by status, non-padding and supervised tokens, and the batch's padding ratio (``token_counts``:
    attended tokens and padded size, ``CollatedBatch.token_counts``)."""
    for status, count in statuses.items():
        SAMPLES.labels(processor, status).inc(count)
    real, size = token_counts
    if size:
        TOKENS.labels(processor, "input").inc(real)
        PADDING.labels(processor).observe(1.0 - real / size)
    TOKENS.labels(processor, "label").inc(label_tokens)


def render() -> bytes:
    """The Prometheus text exposition of this process, or of every worker in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
        return generate_latest(registry)
    return generate_latest()
