"""Recognise a client pointed at the service's HTTP port instead of its gRPC port, and say so plainly.

gRPC over an HTTP/1.1 server fails with a transport error about HTTP/2 parsing; retrying it on the same
endpoint can never help, so the loader stops at once with an error that names the endpoint and the fix.
"""

from __future__ import annotations

import grpc

from feedline.proto import InvalidOptions

__all__ = ["http_port_error"]

_SIGNS = ("http1.x server", "Failed parsing HTTP/2")


def http_port_error(err: grpc.RpcError, target: str) -> InvalidOptions | None:
    """An InvalidOptions naming ``target`` if ``err`` says the peer speaks HTTP/1.x, else None."""
    details = err.details() if hasattr(err, "details") else str(err)
    if not any(sign in (details or "") for sign in _SIGNS):
        return None
    return InvalidOptions(
        f"{target} answered with HTTP/1.x, not gRPC: it looks like feedline's HTTP port (default 8000, for "
        "/v1/collate, /v1/mask and the page). RemoteLoader and RemoteCollate talk gRPC: use the gRPC port "
        "(default 50051, `feedline serve --grpc-port`)",
        field="endpoints",
    )
