"""Optional bearer-token authentication and TLS (or mutual TLS) for the gRPC and HTTP servers.

Tokens come from ``FEEDLINE_AUTH_TOKEN`` (one token) and/or the file ``auth_token_file`` (``--auth-token-file``,
``FEEDLINE_AUTH_TOKEN_FILE``; one token per line, so a new token can be accepted before the old one is retired).
Clients send ``authorization: Bearer <token>``: gRPC metadata or an HTTP header. A presented token is hashed and
compared with every accepted token's hash by ``hmac.compare_digest``, so timing reveals neither its content nor
its length. Probes and scrapers need no token: ``grpc.health.v1``, ``/healthz``, ``/readyz`` and ``/metrics``.

TLS: ``tls_cert`` + ``tls_key`` (PEM) serve both ports over TLS; ``tls_client_ca`` also requires a client
certificate signed by that CA on both (mutual TLS). Certificates are read at start; rotate by restarting.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from feedline.proto import Unauthenticated

from ._config import ConfigError, ServeConfig
from ._errors import error_body
from ._logging import new_request_id, request_id
from ._metrics import observe_error

__all__ = [
    "AUTH_EXEMPT_METHODS",
    "AUTH_EXEMPT_PATHS",
    "AuthInterceptor",
    "BearerAuth",
    "Security",
    "TlsFiles",
    "TokenAuth",
]

_LOGGER = logging.getLogger("feedline.service.auth")

AUTH_EXEMPT_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
"""gRPC methods answered without a token (the kubelet's gRPC probes send none)."""

AUTH_EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""HTTP paths answered without a token (probes and Prometheus scrapers)."""

_PREFIX = "bearer "


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenAuth:
    """The accepted bearer tokens, kept only as SHA-256 digests."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = tuple(_digest(t) for t in tokens)
        if not self._digests:
            raise ConfigError("authentication needs at least one token")

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``authorization`` value is ``Bearer <an accepted token>`` (constant time per token)."""
        if not authorization or authorization[: len(_PREFIX)].lower() != _PREFIX:
            return False
        presented = _digest(authorization[len(_PREFIX) :].strip())
        matched = False
        for digest in self._digests:  # no early exit: every token is compared
            matched |= hmac.compare_digest(presented, digest)
        return matched


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key, and optionally the CA that signs client certificates."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials; with a client CA, a client without a certificate it signed is refused."""
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )

    def uvicorn_options(self) -> dict[str, Any]:
        """The same policy as uvicorn.Config keyword arguments."""
        options: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca:
            options |= {"ssl_ca_certs": str(self.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return options


@dataclass(frozen=True)
class Security:
    """What `feedline serve` enforces: a token check, TLS, both or neither."""

    auth: TokenAuth | None = None
    tls: TlsFiles | None = None

    @classmethod
    def from_config(cls, config: ServeConfig, env: Mapping[str, str] | None = None) -> Security:
        """Read the token(s) and check the TLS files now, so a bad setting stops the server before it listens."""
        env = os.environ if env is None else env
        tokens = [env["FEEDLINE_AUTH_TOKEN"].strip()] if env.get("FEEDLINE_AUTH_TOKEN", "").strip() else []
        if config.auth_token_file is not None:
            lines = _read(config.auth_token_file, "auth_token_file").splitlines()
            tokens += [line.strip() for line in lines if line.strip()]
            if not tokens:
                raise ConfigError(f"auth_token_file {config.auth_token_file} holds no token")
        return cls(auth=TokenAuth(tokens) if tokens else None, tls=_tls(config))

    def uvicorn_options(self) -> dict[str, Any]:
        return self.tls.uvicorn_options() if self.tls else {}


def _tls(config: ServeConfig) -> TlsFiles | None:
    if config.tls_cert is None and config.tls_key is None:
        if config.tls_client_ca is not None:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key: mutual TLS is TLS first")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ConfigError("tls_cert and tls_key go together")
    files = TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca)
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert, files.key)
        if files.client_ca:
            context.load_verify_locations(files.client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the TLS files {files}: {exc}") from exc
    return files


def _read(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {name} {path}: {exc}") from exc


# --- gRPC ---------------------------------------------------------------------------------------------------------


class AuthInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED (with the feedline error details) to calls without an accepted token."""

    def __init__(self, auth: TokenAuth, error_key: str) -> None:
        self.auth = auth
        self.error_key = error_key

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        if handler is None or details.method in AUTH_EXEMPT_METHODS:
            return handler
        metadata = {key: _text(value) for key, value in details.invocation_metadata or ()}
        if self.auth.accepts(metadata.get("authorization")):
            return handler
        return _refusing(handler, details.method, new_request_id(metadata.get("x-request-id")), self.error_key)


def _text(value: str | bytes) -> str:
    """A metadata value as text (binary ``-bin`` values arrive as bytes)."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _refusing(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, rid: str, error_key: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that aborts every call with UNAUTHENTICATED."""
    exc = Unauthenticated("missing or unaccepted bearer token (metadata 'authorization: Bearer <token>')")

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        observe_error("grpc", exc.kind)
        token = request_id.set(rid)
        try:
            _LOGGER.warning("unauthenticated", extra={"method": method, "peer": context.peer()})
        finally:
            request_id.reset(token)
        context.set_trailing_metadata(((error_key, json.dumps(error_body(exc))),))
        context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    build = kinds[(handler.request_streaming, handler.response_streaming)]
    return build(
        refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


# --- HTTP ---------------------------------------------------------------------------------------------------------


class BearerAuth:
    """ASGI middleware: 401 with the JSON error body (and ``WWW-Authenticate: Bearer``) without an accepted token."""

    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in AUTH_EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        if len(values) == 1 and self.auth.accepts(values[0].decode("latin-1")):
            await self.app(scope, receive, send)
            return
        exc = Unauthenticated("missing or unaccepted bearer token (header 'Authorization: Bearer <token>')")
        observe_error("http", exc.kind)
        response = JSONResponse(
            {"error": error_body(exc)}, status_code=401, headers={"www-authenticate": 'Bearer realm="feedline"'}
        )
        await response(scope, receive, send)
