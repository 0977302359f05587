"""Work caps, checked before the work they bound, so one request cannot hold a worker for minutes.

* characters: per sample and per request, counted on the parsed rows before anything is rendered or tokenized
  (media payloads excluded: the media policy bounds those);
* tokens: per sample and per request, counted right after tokenizing, before any tensor is padded or packed;
* time: a request's budget (``max_request_seconds``, and the client's own gRPC deadline when shorter), checked
  before the work starts and between its stages.

A request past a cap is refused with RequestTooLarge (HTTP 413, gRPC RESOURCE_EXHAUSTED) naming the cap and
the setting that raises it; one past its time budget with RequestTimeout (HTTP 504, gRPC DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from feedline.proto import RequestTimeout, RequestTooLarge

from ..collate._batch import SampleReport
from ._config import Limits

__all__ = [
    "Deadline",
    "check_chars",
    "check_sample_chars",
    "count_chars",
    "encoded_chars_bound",
    "setting",
    "token_gate",
]

_MEDIA_PARTS = frozenset({"image", "image_url", "audio", "input_audio", "video", "video_url"})


def setting(name: str) -> str:
    """Where an operator raises limit ``name``: the config key and its environment variable."""
    return f"limits.{name} in the server config, env FEEDLINE_{name.upper()}"


def count_chars(value: Any) -> int:
    """Characters of every string in a row (keys included), skipping media content parts.

    Iterative, so a deeply nested row costs no recursion (and cannot overflow the stack).
    """
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, Mapping):
            kind = item.get("type")
            if not (isinstance(kind, str) and kind in _MEDIA_PARTS):  # a malformed type is the parser's to refuse
                total += sum(len(str(k)) for k in item)
                stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def encoded_chars_bound(samples: Sequence[bytes | str], packed: bytes = b"") -> int:
    """An upper bound on ``count_chars`` of the rows a request encodes, from its encoded size alone.

    JSON rows: every string and key is quoted text of at least as many characters, so a row's characters are
    at most its encoded length. msgpack rows (map keys are str or bytes, msgpack's default): a string takes at
    least its UTF-8 bytes plus a header; a bytes key of n bytes prints as at most 4n + 3 characters and takes
    n + 2, so the characters are at most four times the packed length.
    """
    return 4 * len(packed) if packed else sum(len(sample) for sample in samples)


def check_chars(
    rows: Sequence[Any], limits: Limits, row_of: Callable[[int], int] | None = None, *, at_most: int | None = None
) -> None:
    """Refuse a row over ``max_chars_per_sample`` or rows over ``max_chars_per_request`` in total.

    ``at_most`` (``encoded_chars_bound``): a bound within both caps proves the rows pass without walking them
    (the walk is ~1.5% of a batch's CPU).
    """
    if at_most is not None and at_most <= min(limits.max_chars_per_sample, limits.max_chars_per_request):
        return
    total = 0
    for position, row in enumerate(rows):
        total += check_sample_chars(row, limits, position=position, row_of=row_of)
    if total > limits.max_chars_per_request:
        raise _too_large(f"{total} characters in one request", "max_chars_per_request", limits)


def check_sample_chars(
    row: Any,
    limits: Limits,
    *,
    position: int | None = None,
    row_of: Callable[[int], int] | None = None,
    field: str = "samples",
) -> int:
    """The row's characters, refused over ``max_chars_per_sample`` (naming its position and row when given)."""
    chars = count_chars(row)
    if chars > limits.max_chars_per_sample:
        raise _too_large(
            f"{chars} characters in one sample", "max_chars_per_sample", limits, position, row_of, field=field
        )
    return chars


def token_gate(
    limits: Limits, row_of: Callable[[int], int] | None = None, deadline: Deadline | None = None
) -> Callable[[Sequence[SampleReport]], None]:
    """The check ``collate`` runs on its tokenized rows before building tensors: token caps, then the deadline."""

    def admit(reports: Sequence[SampleReport]) -> None:
        total = 0
        for report in reports:
            if report.num_tokens > limits.max_tokens_per_sample:
                raise _too_large(
                    f"{report.num_tokens} tokens in one sample", "max_tokens_per_sample", limits, report.index, row_of
                )
            total += report.num_tokens
        if total > limits.max_tokens_per_request:
            raise _too_large(f"{total} tokens in one request", "max_tokens_per_request", limits)
        if deadline is not None:
            deadline.check("tokenized")

    return admit


class Deadline:
    """A request's time budget: the server's ``max_request_seconds``, or the client's deadline when sooner."""

    def __init__(self, limits: Limits, client_remaining_s: float | None = None) -> None:
        budget = float(limits.max_request_seconds)
        if client_remaining_s is not None:
            budget = min(budget, client_remaining_s)
        self.budget_s = budget
        self._end = time.monotonic() + budget

    def check(self, stage: str) -> None:
        """Raise RequestTimeout if the budget is spent (``stage`` says how far the request got)."""
        if time.monotonic() > self._end:
            raise RequestTimeout(
                f"the request used its {self.budget_s:g} s budget ({stage}); split it into smaller requests or raise "
                f"max_request_seconds ({setting('max_request_seconds')})",
                field="deadline",
            )


def _too_large(
    what: str,
    name: str,
    limits: Limits,
    position: int | None = None,
    row_of: Callable[[int], int] | None = None,
    *,
    field: str = "samples",
) -> RequestTooLarge:
    row = row_of(position) if row_of and position is not None else None
    return RequestTooLarge(
        f"{what}; the limit is {name}={getattr(limits, name)}. Split the work into smaller requests or samples, or "
        f"raise {name} ({setting(name)})",
        sample=position,
        row=row,
        field=field,
    )
