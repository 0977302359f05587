"""Every error feedline raises on purpose, shared by the service and the client.

The tree::

    FeedlineError
    ├── InvalidSample          a row or conversation is malformed (names the row, its batch position, the field)
    │   └── MediaError         an image or audio payload cannot be used
    ├── InvalidOptions         a collate/packing option is out of range or inconsistent
    ├── TemplateError          the chat template cannot render, or its output cannot be labelled
    ├── NoSupervisedTokens     a sample would train on nothing (never emitted silently)
    ├── SampleTooLong          a sample exceeds max_length under the "error" overlong policy
    ├── UnknownProcessor       a request names a processor the server has not loaded
    ├── UnknownFamily          no model-family rule is registered under a key
    ├── FingerprintMismatch    a pinned processor fingerprint differs from the loaded one
    ├── CodecError             a tensor-batch frame is malformed, truncated or of another version
    ├── ResumeStateError       a saved loader state cannot be applied
    ├── RequestTooLarge        a request exceeds a configured work cap (bytes, characters, samples, tokens)
    ├── RequestTimeout         a request used up its time budget
    ├── Unauthenticated        a bearer token is missing or wrong
    └── ServiceUnavailable     the server is not ready, draining, or every replica failed

Servers map this tree once (by walking ``type(exc).__mro__``) to HTTP status codes and gRPC status codes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CodecError",
    "FeedlineError",
    "FingerprintMismatch",
    "InvalidOptions",
    "InvalidSample",
    "MediaError",
    "NoSupervisedTokens",
    "RequestTimeout",
    "RequestTooLarge",
    "ResumeStateError",
    "SampleTooLong",
    "ServiceUnavailable",
    "TemplateError",
    "Unauthenticated",
    "UnknownFamily",
    "UnknownProcessor",
    "error_from_dict",
]


class FeedlineError(Exception):
    """Base class; points at the bad input and says how to fix it.

    ``sample`` is the row's position in the batch or request, ``row`` its index in the dataset or in the
    client's stream of samples when known (a dataset row, or a request's ``first_row`` plus the position),
    ``field`` the offending field. ``hint`` names the option or flag that fixes the error; each class may give
    a default one. It is kept inside ``message``, so it travels in every error body.
    """

    kind = "feedline_error"
    hint: str | None = None

    def __init__(
        self,
        message: str,
        *,
        sample: int | None = None,
        field: str | None = None,
        row: int | None = None,
        hint: str | None = None,
    ) -> None:
        hint = hint if hint is not None else type(self).hint
        self.message = f"{message}. {hint}" if hint and hint not in message else message
        self.sample = sample
        self.field = field
        self.row = row
        super().__init__(self._full_message())

    def _full_message(self) -> str:
        where = []
        if self.row is not None:
            where.append(
                f"row {self.row}" + (f" (position {self.sample} in the batch)" if self.sample is not None else "")
            )
        elif self.sample is not None:
            where.append(f"sample {self.sample} (position in the batch)")
        if self.field:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def at_sample(self, sample: int) -> FeedlineError:
        """Return a copy of this error that names ``sample`` (used when a batch wraps per-row errors)."""
        return type(self)(self.message, sample=sample, field=self.field, row=self.row)

    def at_row(self, row: int) -> FeedlineError:
        """Return a copy that also names the dataset (or stream) row the batch position came from."""
        return type(self)(self.message, sample=self.sample, field=self.field, row=row)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form used by HTTP bodies, gRPC details and per-sample reports."""
        return {"kind": self.kind, "message": self.message, "sample": self.sample, "field": self.field, "row": self.row}


class InvalidSample(FeedlineError):
    """A row or conversation is malformed."""

    kind = "invalid_sample"


class MediaError(InvalidSample):
    """An image or audio payload is corrupt, too large, of the wrong shape, or outside the media roots."""

    kind = "media_error"


class InvalidOptions(FeedlineError):
    """An option value is out of range or inconsistent with another."""

    kind = "invalid_options"


class TemplateError(FeedlineError):
    """The chat template cannot render this conversation, or its output cannot be labelled."""

    kind = "template_error"


class NoSupervisedTokens(FeedlineError):
    """A sample has zero supervised tokens; raised unless the caller asked to skip such samples."""

    kind = "no_supervised_tokens"
    hint = (
        "Options that fix it: on_zero_labels='skip' leaves such samples out; if truncation cut the answer away, "
        "raise max_length or use truncation='left'; train_on_last_turn_only=false supervises every assistant "
        "turn; answer_only=false trains on every token"
    )


class SampleTooLong(FeedlineError):
    """A sample is longer than max_length and the overlong policy is "error"."""

    kind = "sample_too_long"
    hint = (
        "Options that fix it: raise max_length; truncation='right' (or 'left') cuts the sample to max_length; "
        "overlong='drop' leaves such samples out"
    )


class UnknownProcessor(FeedlineError):
    """A request names a processor the server has not loaded."""

    kind = "unknown_processor"


class UnknownFamily(FeedlineError):
    """No model-family rule is registered under the requested key."""

    kind = "unknown_family"


class FingerprintMismatch(FeedlineError):
    """The client pinned a processor fingerprint that differs from the one loaded here."""

    kind = "fingerprint_mismatch"


class CodecError(FeedlineError):
    """A tensor-batch frame is malformed, truncated, or written by an incompatible format version."""

    kind = "codec_error"


class ResumeStateError(FeedlineError):
    """A saved loader state does not fit the loader it is loaded into."""

    kind = "resume_state_error"


class RequestTooLarge(FeedlineError):
    """A request exceeds a configured work cap (bytes, characters, samples, tokens, turns, pixels)."""

    kind = "request_too_large"


class RequestTimeout(FeedlineError):
    """A request used up its time budget (the server's max_request_seconds, or the client's shorter deadline)."""

    kind = "request_timeout"


class Unauthenticated(FeedlineError):
    """The bearer token is missing or does not match."""

    kind = "unauthenticated"


class ServiceUnavailable(FeedlineError):
    """The server is not ready or is draining, or no replica could answer."""

    kind = "service_unavailable"


def error_from_dict(data: dict[str, Any]) -> FeedlineError:
    """Rebuild a FeedlineError sent over the wire as ``to_dict()`` (unknown kinds become FeedlineError)."""
    kinds = {cls.kind: cls for cls in _all_subclasses(FeedlineError)}
    cls = kinds.get(str(data.get("kind")), FeedlineError)
    sample, field, row = data.get("sample"), data.get("field"), data.get("row")
    return cls(
        str(data.get("message", "")),
        sample=sample if isinstance(sample, int) else None,
        field=field if isinstance(field, str) else None,
        row=row if isinstance(row, int) else None,
    )


def _all_subclasses(cls: type[FeedlineError]) -> list[type[FeedlineError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out
