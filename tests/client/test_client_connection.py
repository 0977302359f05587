"""The client's connection object on loopback (network-namespace faults: tests/reliability/test_reliability_network.py):
hedging around a replica that does not answer, refusing a replica with another processor, resolving a
``dns:///`` target to one replica per address, and the delay bound derived from the settings."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from feedline.client import RemoteCollate, RetryPolicy
from feedline.client._connection import Connection
from feedline.proto import FingerprintMismatch
from feedline.proto.v1 import COLLATE, SERVICE_NAME
from feedline.service import CollateOptions, Processor, collate
from feedline.service.server import ProcessorRegistry, ServingState

_ROWS = [
    {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(3)
]


@pytest.fixture(scope="module")
def good(qwen_processor: Processor, in_process: Any) -> str:
    return str(in_process(ServingState(ProcessorRegistry.of(qwen_processor))).grpc_target)


@pytest.fixture()
def silent() -> Iterator[tuple[str, threading.Event]]:
    """A gRPC server whose Collate never answers until released (a frozen replica, a dropped path)."""
    release = threading.Event()

    def hang(request: bytes, context: grpc.ServicerContext) -> bytes:
        release.wait(30)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")

    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME, {COLLATE.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(hang)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", release
    release.set()
    server.stop(0)


def _arrays(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.numpy().tolist() for k, v in batch.items()}


def test_a_call_to_a_silent_replica_is_hedged_on_another(
    good: str, silent: tuple[str, threading.Event], qwen_processor: Processor
) -> None:
    """Every call starts on the silent replica; each is answered by the healthy one after the hedge delay
    (hedge_min, here 0.3 s), identical to the engine's batch, and the loader's counters say so."""
    fingerprint = RemoteCollate(good, "qwen2.5").pin()
    policy = RetryPolicy(hedge_min=0.3, cooldown=0.0)
    remote = RemoteCollate([silent[0], good], "qwen2.5", fingerprint=fingerprint, retry=policy)
    expected = collate(qwen_processor, _ROWS, CollateOptions())
    for _ in range(3):
        remote._connection._next = 0  # the silent replica first
        started = time.monotonic()
        batch = remote(_ROWS)
        took = time.monotonic() - started
        assert 0.3 <= took < 0.3 + 2.0, took
        assert _arrays(batch) == {k: v.tolist() for k, v in expected.tensors.items()}
    stats = remote._connection.stats
    assert stats["hedges"] == 3 and stats["hedges_won"] == 3


def test_a_replica_with_another_processor_is_left_out(good: str) -> None:
    """A replica that refuses the pinned fingerprint is left out (the network test checks the run goes on with
    the others); when every replica refuses, the call fails with FingerprintMismatch naming them."""
    pinned = RemoteCollate(good, "qwen2.5").pin()
    wrong = "0" * 64
    assert wrong != pinned
    alone = RemoteCollate([good], "qwen2.5", fingerprint=wrong)
    with pytest.raises(FingerprintMismatch, match=f"every replica refused.*{good}"):
        alone(_ROWS)
    assert alone._connection.stats["refused"] == 1


def test_a_dns_target_is_one_replica_per_address(good: str) -> None:
    """``dns:///localhost:PORT`` resolves to each loopback address; the IPv4 one answers."""
    port = good.rsplit(":", 1)[1]
    conn = Connection(f"dns:///localhost:{port}", RetryPolicy())
    addresses = conn.addresses()
    assert f"127.0.0.1:{port}" in addresses and all(a.endswith(f":{port}") for a in addresses)
    assert conn.stats.get("dns_changes", 0) == 0
    conn.close()


def test_the_documented_bound_follows_the_settings() -> None:
    assert RetryPolicy().worst_extra_wait() == 4.0
    assert RetryPolicy(hedge_min=0.5).worst_extra_wait() == 2.0


def test_a_replica_that_appears_gets_the_next_call_and_a_new_generation() -> None:
    """Scale-up: a replica that appears in the name's answers gets the next call (a long stream ends early when
    the generation moves, so its next call reaches it), then round-robin goes on over all; a removed one gets
    nothing more."""
    conn = Connection("dns:///replicas.invalid:50051", RetryPolicy())
    target = conn.targets[0]
    one, two, three = "10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"
    conn._apply({target: [one, two]})
    conn._resolved_at = time.monotonic()  # resolved just now: no lookup of the made-up name within resolve_every
    assert {conn.pick() for _ in range(4)} == {one, two} and conn.generation == 0
    conn._apply({target: [one, two, three]})
    assert conn.generation == 1 and conn.stats["dns_changes"] == 1
    conn._next = 0  # round-robin alone would give the first address now
    assert conn.pick() == three
    assert sorted(conn.pick() for _ in range(6)) == sorted([one, one, two, two, three, three])
    conn._apply({target: [one, three]})
    assert conn.generation == 2 and two not in {conn.pick() for _ in range(4)}
