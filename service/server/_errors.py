"""One table from the error tree to HTTP status and gRPC status code, looked up along ``type(exc).__mro__``.

A subclass without its own row takes its nearest ancestor's (MediaError answers as InvalidSample); anything
that is not a FeedlineError is a server fault: 500 / INTERNAL, with no detail leaked.
"""

from __future__ import annotations

from typing import Any

import grpc

from feedline.proto import (
    CodecError,
    FeedlineError,
    FingerprintMismatch,
    InvalidOptions,
    InvalidSample,
    NoSupervisedTokens,
    RequestTimeout,
    RequestTooLarge,
    ResumeStateError,
    SampleTooLong,
    ServiceUnavailable,
    TemplateError,
    Unauthenticated,
    UnknownFamily,
    UnknownProcessor,
)

__all__ = ["ERROR_STATUS", "brief", "error_body", "status_for"]

ERROR_STATUS: dict[type[BaseException], tuple[int, grpc.StatusCode]] = {
    FeedlineError: (400, grpc.StatusCode.INVALID_ARGUMENT),
    InvalidSample: (400, grpc.StatusCode.INVALID_ARGUMENT),
    InvalidOptions: (400, grpc.StatusCode.INVALID_ARGUMENT),
    CodecError: (400, grpc.StatusCode.INVALID_ARGUMENT),
    ResumeStateError: (400, grpc.StatusCode.INVALID_ARGUMENT),
    TemplateError: (422, grpc.StatusCode.INVALID_ARGUMENT),
    NoSupervisedTokens: (422, grpc.StatusCode.INVALID_ARGUMENT),
    SampleTooLong: (422, grpc.StatusCode.INVALID_ARGUMENT),
    UnknownFamily: (422, grpc.StatusCode.FAILED_PRECONDITION),
    UnknownProcessor: (404, grpc.StatusCode.NOT_FOUND),
    FingerprintMismatch: (412, grpc.StatusCode.FAILED_PRECONDITION),
    RequestTooLarge: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    RequestTimeout: (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    Unauthenticated: (401, grpc.StatusCode.UNAUTHENTICATED),
    ServiceUnavailable: (503, grpc.StatusCode.UNAVAILABLE),
}
_INTERNAL = (500, grpc.StatusCode.INTERNAL)
_MAX_TEXT = 1000


def status_for(exc: BaseException) -> tuple[int, grpc.StatusCode]:
    """(HTTP status, gRPC code) of the most specific row for ``exc``'s class."""
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return _INTERNAL


def brief(text: str | None) -> str | None:
    """Error text echoes request input: capped, so a huge name cannot push an answer past header limits."""
    if text is None or len(text) <= _MAX_TEXT:
        return text
    return f"{text[:_MAX_TEXT]}... ({len(text) - _MAX_TEXT} more characters)"


def error_body(exc: BaseException) -> dict[str, Any]:
    """The JSON error object both servers send: {kind, message, sample, field, row} (texts capped by ``brief``)."""
    if isinstance(exc, FeedlineError):
        body = exc.to_dict()
        return {**body, "message": brief(body["message"]), "field": brief(body["field"])}
    return {"kind": "internal", "message": "internal server error", "sample": None, "field": None, "row": None}
