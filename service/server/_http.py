"""The HTTP API (FastAPI): collate, mask debugging, processors, health, readiness, metrics, OpenAPI at /docs.

Errors answer ``{"error": {"kind", "message", "sample", "field", "row"}}`` with the status from the shared table
("sample": the position in the batch; "row": the dataset row, when the request's ``first_row`` names it).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedline.proto import FeedlineError, RequestTooLarge

from ._auth import BearerAuth, TokenAuth
from ._errors import error_body, status_for
from ._logging import new_request_id, request_id
from ._metrics import CONTENT_TYPE, observe_error, render, track_request
from ._registry import ServingState
from ._requests import from_first_row, run_collate, run_mask

__all__ = ["BATCH_MEDIA_TYPE", "create_app"]

BATCH_MEDIA_TYPE = "application/x-feedline-batch"
_STATIC = Path(__file__).resolve().parent / "static"
_DOCS_ASSETS = "/docs-assets"
_LOGGER = logging.getLogger("feedline.service.http")
_ROUTES = {"/v1/collate", "/v1/mask", "/v1/processors", "/healthz", "/readyz", "/metrics"}


class CollateBody(BaseModel):
    """Samples to collate, with the processor and options to use."""

    model_config = ConfigDict(extra="forbid")  # an ignored field (say, a chat template) must not look accepted

    processor: str | None = Field(None, description="a loaded processor's name; empty = the default one")
    fingerprint: str | None = Field(None, description="pin: refused with 412 if the processor's differs")
    options: dict[str, Any] = Field(default_factory=dict, description="collate options over the processor defaults")
    samples: list[dict[str, Any]] = Field(
        min_length=1, description="conversation rows (OpenAI messages, ShareGPT, prompt/completion)"
    )
    first_row: int | None = Field(
        None,
        ge=0,
        description="index of the first sample in your dataset: errors then "
        "name the row as well as the position in the batch",
    )


class MaskBody(BaseModel):
    """One conversation whose per-token supervision to show."""

    model_config = ConfigDict(extra="forbid")

    processor: str | None = None
    fingerprint: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    sample: dict[str, Any]


def create_app(state: ServingState, *, auth: TokenAuth | None = None) -> FastAPI:
    """The FastAPI application over ``state`` (its registry, limits and draining flag), with ``auth`` if given."""
    app = FastAPI(
        title="feedline",
        summary="Chat-template tokenization, label masking and collation as a service.",
        version="1",
        docs_url=None,  # FastAPI's own pages load their assets from a CDN: /docs is served below, offline
        redoc_url=None,
    )
    registry, limits = state.registry, state.limits

    @app.post("/v1/collate", responses={200: {"content": {BATCH_MEDIA_TYPE: {}}}})
    def collate(body: CollateBody, request: Request) -> Response:
        """Collate samples into tensors: JSON lists, or the binary batch format if the client accepts it."""
        result = run_collate(
            state,
            body.samples,
            processor=body.processor,
            fingerprint=body.fingerprint,
            options=body.options,
            row_of=from_first_row(body.first_row),
        )
        if BATCH_MEDIA_TYPE in request.headers.get("accept", ""):
            return Response(bytes(result.encode()), media_type=BATCH_MEDIA_TYPE)
        return JSONResponse(result.to_json())

    @app.post("/v1/mask")
    def mask(body: MaskBody) -> dict[str, Any]:
        """Every token of one conversation: id, piece, role/turn, supervised or not, label; plus warnings."""
        return run_mask(
            state, body.sample, processor=body.processor, fingerprint=body.fingerprint, options=body.options
        )

    @app.get("/v1/processors")
    def processors() -> dict[str, Any]:
        """Loaded processors (name, class, family, fingerprint, defaults) and the load status of each."""
        return {"processors": registry.infos(), "status": registry.status()}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok", "draining": state.draining.is_set(), "pid": os.getpid()}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: every configured processor is loaded and the server is not draining."""
        body = {"ready": state.ready, "draining": state.draining.is_set(), "processors": registry.status()}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(render(), media_type=CONTENT_TYPE)

    _install_docs(app)
    _install_error_handlers(app)
    app.add_middleware(_BodyLimit, limit=limits.max_request_bytes)
    if auth:  # inside the request context (logged, counted), before the body is read
        app.add_middleware(BearerAuth, auth=auth)
    app.add_middleware(_RequestContext)
    if (_STATIC / "index.html").is_file():
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=_STATIC, html=True), name="static")
    return app


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs, its assets served from the installed ``swagger-ui-bundle-v2`` package (Swagger UI 5,
    Apache-2.0): no request leaves the server, so the page works on an offline cluster."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(_DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="feedline API",
            swagger_js_url=f"{_DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{_DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{_DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # its default fetches a badge from swagger.io
        )


def _error(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"error": body}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FeedlineError)
    async def feedline_error(request: Request, exc: FeedlineError) -> JSONResponse:
        status, _ = status_for(exc)
        observe_error("http", exc.kind)
        return _error(status, error_body(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = dict(exc.errors()[0]) if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":  # its loc holds a character position, not a field
            reason = (first.get("ctx") or {}).get("error", "")
            first, loc = {"msg": f"not valid JSON at character {loc[-1] if loc else 0}: {reason}"}, ["body"]
        sample = int(loc[1]) if len(loc) > 1 and loc[0] == "samples" and loc[1].isdigit() else None
        observe_error("http", "invalid_request")
        return _error(
            400,
            {
                "kind": "invalid_request",
                "message": first.get("msg", "invalid request"),
                "sample": sample,
                "field": ".".join(loc) or None,
                "row": None,
            },
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(
            exc.status_code, {"kind": "http", "message": str(exc.detail), "sample": None, "field": None, "row": None}
        )

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        _LOGGER.exception("unhandled error", extra={"path": request.url.path})
        observe_error("http", "internal")
        return _error(500, error_body(exc))


class _BodyLimit:
    """Refuse bodies over ``limit`` bytes (413): at once from Content-Length, else while reading them.

    The body is read here, then replayed to the app: FastAPI would turn an error raised mid-read into a 400.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(int(declared), scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(size, scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, size: int, scope: Scope, receive: Receive, send: Send) -> None:
        exc = RequestTooLarge(f"request body of {size}+ bytes; the limit is {self.limit}", field="body")
        observe_error("http", exc.kind)
        await _error(413, error_body(exc))(scope, receive, send)


class _RequestContext:
    """Request id (X-Request-ID in and out), latency and count metrics, one JSON log line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = new_request_id(headers.get(b"x-request-id", b"").decode("latin-1"))
        token = request_id.set(rid)
        path = scope["path"] if scope["path"] in _ROUTES else "other"
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            with track_request("http", path) as outcome:
                try:
                    await self.app(scope, receive, send_with_id)
                finally:
                    outcome["code"] = str(status)
        finally:
            _LOGGER.info(
                "http",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round((time.perf_counter() - start) * 1e3, 2),
                },
            )
            request_id.reset(token)
