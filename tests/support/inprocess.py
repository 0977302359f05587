"""The one in-process server for tests: gRPC and/or HTTP around a ServingState, on loopback ports chosen by the OS.

Tests that need a real `feedline serve` process use ``tests.support.servers.Served``; everything else starts its
servers here, through the ``in_process`` fixture (conftest.py), which stops them when the module ends.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from feedline.service.server import ServingState, create_app, create_server


@dataclass(frozen=True)
class InProcess:
    """Where a started in-process server listens (``None`` for the protocol not started)."""

    state: ServingState
    grpc_target: str | None
    http_url: str | None


@contextmanager
def serve_in_process(
    state: ServingState,
    *,
    grpc: bool = True,
    http: bool = False,
    grpc_options: dict[str, Any] | None = None,
    http_options: dict[str, Any] | None = None,
    uvicorn_options: dict[str, Any] | None = None,
) -> Iterator[InProcess]:
    """Start the gRPC server and/or the HTTP app for ``state``; both are stopped on exit. ``grpc_options`` go to
    ``create_server``, ``http_options`` to ``create_app``, ``uvicorn_options`` (TLS files) to uvicorn."""
    grpc_server = None
    http_server = thread = None
    target = url = None
    try:
        if grpc:
            grpc_server, port = create_server("127.0.0.1:0", state.registry, state=state, **(grpc_options or {}))
            grpc_server.start()
            target = f"127.0.0.1:{port}"
        if http:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            app = create_app(state, **(http_options or {}))
            http_server = uvicorn.Server(
                uvicorn.Config(app, log_config=None, lifespan="off", **(uvicorn_options or {}))
            )
            thread = threading.Thread(target=http_server.run, kwargs={"sockets": [sock]}, daemon=True)
            thread.start()
            deadline = time.monotonic() + 30
            while not http_server.started:
                assert time.monotonic() < deadline, "the HTTP server did not start"
                time.sleep(0.02)
            scheme = "https" if (uvicorn_options or {}).get("ssl_certfile") else "http"
            url = f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"
        yield InProcess(state, target, url)
    finally:
        if grpc_server is not None:
            grpc_server.stop(0)
        if http_server is not None and thread is not None:
            http_server.should_exit = True
            thread.join(5)
