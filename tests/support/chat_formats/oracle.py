"""The independent check: what each assistant turn should supervise, derived from renders of the template alone.

Nothing here uses feedline's engine. The rule (issue 16): an assistant turn supervises its body as the template
writes it (content, tool calls, rendered reasoning) and the text that closes it, never a role header, a generation
prompt or a prefix the template injects. It is made exact with two facts and one render per question:

1. Where the turn's body starts. The model is prompted with ``P = render(messages[:i], add_generation_prompt=True)``;
   everything P writes after the previous message's own text, ``H``, is the prompt's header (the previous turn's
   closing text, the role header, any forced prefix such as ``<think>\\n``). In the full render ``R`` the body
   starts where H stops matching R after the same message's text. Matching tolerates whitespace that only H has
   (a generation prompt ``### Response:\\n`` against a history ``### Response:`` ...) and stops at the first other
   difference, so a forced prefix the history does not write (QwQ, DeepSeek-R1, OLMo-3) is not taken as body, and
   whatever the history writes beyond the prompt (`` C`` after ``ASSISTANT:``) is body, as the model generates it.
2. Where it ends: after the last of the family's closers (``registry.Family.closers``, read from the published
   format) before the next message's own text, or at the end of the turn's content when the format has none.

"The previous/next message's own text" is located by rendering the same conversation with a sentinel character
appended to (or put before) that message's content and taking the longest common prefix with the plain render.
Every position is therefore one the template itself produced; templates that rewrite earlier turns (Qwen3),
place the system prompt in the last user turn (Mistral), close the last turn differently (gpt-oss, OLMo) or end
every render with eos (Phi-3) need no special case.

Token level: a token whose characters lie wholly inside an expected span must be supervised, a token wholly outside
every span must not be; a token straddling a span edge (one BPE piece holding the header's last character and the
body's first) may go either way, but every turn must have at least one of its tokens supervised.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from .registry import Family, family
from .tokenizers import family_tokenizer

__all__ = ["Expected", "LabelMismatch", "TurnSpan", "check_labels", "expected_labels", "render"]

SENTINEL = "\x07"  # never in generated text, not whitespace (so no trim/strip removes it)
IGNORE = -100


class LabelMismatch(AssertionError):
    """The engine's supervision or ids differ from the independent expectation; the message shows both texts."""


@dataclass(frozen=True)
class TurnSpan:
    message: int  # index of the assistant message
    start: int  # character offsets into the full render
    end: int

    def text(self, rendered: str) -> str:
        return rendered[self.start : self.end]


@dataclass(frozen=True)
class Expected:
    rendered: str
    ids: list[int]
    spans: tuple[TurnSpan, ...]
    must: np.ndarray  # tokens that must be supervised
    may: np.ndarray  # tokens that may be supervised (must plus straddling tokens)
    touching: tuple[np.ndarray, ...]  # per span, the tokens overlapping it: at least one must be supervised

    def texts(self) -> list[str]:
        return [s.text(self.rendered) for s in self.spans]


def render(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    *,
    generation_prompt: bool = False,
    date: datetime | None = None,
) -> str:
    """The template's text for ``messages`` (``date``: what ``strftime_now`` returns, else today)."""
    with _clock(date):
        return tokenizer.apply_chat_template(  # type: ignore[no-any-return]
            list(messages),
            tools=list(tools) if tools else None,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )


@contextmanager
def _clock(date: datetime | None) -> Iterator[None]:
    """transformers' ``strftime_now`` reads ``datetime.now()`` in its module (a callable passed as a template
    variable reaches the template as a placeholder string): show it ``date`` while rendering."""
    if date is None:
        yield
        return
    from transformers.utils import chat_template_utils

    class Fixed(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Fixed:  # noqa: ARG003 - the signature of datetime.now
            return cls.fromisoformat(date.isoformat())

    saved = chat_template_utils.datetime
    chat_template_utils.datetime = Fixed  # type: ignore[misc]
    try:
        yield
    finally:
        chat_template_utils.datetime = saved  # type: ignore[misc]


def _lcp(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _edit(messages: Sequence[Mapping[str, Any]], index: int, change: Callable[[str], str]) -> list[dict[str, Any]]:
    out = [dict(m) for m in copy.deepcopy(list(messages))]
    content = out[index].get("content")
    if not isinstance(content, str) or not content:
        raise ValueError(f"messages[{index}] has no text content to anchor on")
    out[index]["content"] = change(content)
    return out


def _content_edge(
    draw: Callable[[Sequence[Mapping[str, Any]]], str],
    messages: Sequence[Mapping[str, Any]],
    index: int,
    *,
    at_end: bool,
) -> int:
    """Offset in ``draw(messages)`` right after (at_end) or at the start of message ``index``'s own text."""
    plain = draw(messages)
    marked = draw(_edit(messages, index, (lambda c: c + SENTINEL) if at_end else (lambda c: SENTINEL + c)))
    return _lcp(plain, marked)


def _match_prompt_tail(tail: str, history: str) -> int:
    """How much of ``history`` the prompt's tail accounts for: whitespace only one side has is skipped (Alpaca's
    prompt ends with a newline its history lacks; Hermes 3's history closes a tool result with "\n<|im_end|>"
    where the prompt writes "<|im_end|>"), while the tail has text left to match."""
    i = j = 0
    while i < len(tail) and j < len(history):
        if tail[i] == history[j] or (tail[i].isspace() and history[j].isspace()):
            i += 1
            j += 1
        elif tail[i].isspace():
            i += 1
        elif history[j].isspace():
            j += 1
        else:
            break
    return j


def expected_spans(
    fam: Family,
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    date: datetime | None = None,
) -> tuple[str, list[TurnSpan]]:
    """The full render and, per assistant message, the span of it that must be supervised."""

    def full(msgs: Sequence[Mapping[str, Any]]) -> str:
        return render(tokenizer, msgs, tools, date=date)

    def prompt(msgs: Sequence[Mapping[str, Any]]) -> str:
        return render(tokenizer, msgs, tools, generation_prompt=True, date=date)

    rendered = full(messages)
    spans: list[TurnSpan] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        if i == 0:
            raise ValueError("an assistant message needs a message before it")
        before = messages[:i]
        prompt_text = prompt(before)
        tail = prompt_text[_content_edge(prompt, before, i - 1, at_end=True) :]
        after_previous = _content_edge(full, messages, i - 1, at_end=True)
        start = after_previous + _match_prompt_tail(tail, rendered[after_previous:])
        boundary = _content_edge(full, messages, i + 1, at_end=False) if i + 1 < len(messages) else len(rendered)
        segment = rendered[start:boundary]
        closing = [segment.rfind(c) + len(c) for c in fam.closers if c in segment]
        end = start + max(closing) if closing else _content_edge(full, messages, i, at_end=True)
        if not start <= end <= len(rendered):
            raise ValueError(f"messages[{i}]: no consistent span (start {start}, end {end})")
        spans.append(TurnSpan(i, start, end))
    return rendered, spans


def template_ids(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    date: datetime | None = None,
) -> list[int]:
    """``apply_chat_template(messages, tools=tools, tokenize=True)`` as a plain list (transformers 4 or 5)."""
    with _clock(date):
        out = tokenizer.apply_chat_template(
            list(messages), tools=list(tools) if tools else None, tokenize=True, return_dict=False
        )
    if isinstance(out, Mapping):
        out = out["input_ids"]
    return [int(t) for t in out]


def expected_labels(conversation: Mapping[str, Any], name: str, date: datetime | None = None) -> Expected:
    """Ids and token masks the default policy must produce for ``conversation`` (a row) under family ``name``."""
    fam = family(name)
    tokenizer = family_tokenizer(name)
    messages, tools = conversation["messages"], conversation.get("tools")
    rendered, spans = expected_spans(fam, tokenizer, messages, tools, date)
    enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(t) for t in enc["input_ids"]]
    reference = template_ids(tokenizer, messages, tools, date)
    if ids != reference:
        raise ValueError(f"{name}: encoding the render differs from apply_chat_template's ids")
    must = np.zeros(len(ids), dtype=bool)
    may = np.zeros(len(ids), dtype=bool)
    touching = tuple(np.zeros(len(ids), dtype=bool) for _ in spans)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        for span, touches in zip(spans, touching, strict=True):
            if a < span.end and b > span.start:
                touches[t] = may[t] = True
                must[t] |= a >= span.start and b <= span.end
    return Expected(rendered, ids, tuple(spans), must, may, touching)


def _as_mask(ids: Sequence[int], labels_or_mask: Any) -> np.ndarray:
    arr = np.asarray(labels_or_mask)
    if arr.dtype == bool:
        mask = arr
    elif arr.size and (arr.min() < 0 or arr.max() > 1):
        mask = arr != IGNORE  # unshifted labels
    else:
        mask = arr.astype(bool)
    if mask.shape != (len(ids),):
        raise ValueError(f"mask/labels of shape {mask.shape} for {len(ids)} ids (pass unshifted labels or a mask)")
    return mask


def _runs(tokenizer: Any, ids: Sequence[int], mask: np.ndarray) -> list[str]:
    runs: list[str] = []
    current: list[int] = []
    for tid, on in zip(ids, mask.tolist(), strict=True):
        if on:
            current.append(int(tid))
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def check_labels(
    rendered_ids: Sequence[int],
    labels_or_mask: Any,
    conversation: Mapping[str, Any],
    name: str,
    date: datetime | None = None,
) -> Expected:
    """Assert the engine's ids equal ``apply_chat_template``'s and its supervision is exactly the expected text.

    ``labels_or_mask``: a 0/1 or bool mask over ``rendered_ids``, or unshifted labels (-100 = not supervised).
    Raises LabelMismatch with the decoded supervised runs next to the expected turn texts.
    """
    exp = expected_labels(conversation, name, date)
    ids = [int(t) for t in rendered_ids]
    if ids != exp.ids:
        at = next(
            (k for k, (x, y) in enumerate(zip(ids, exp.ids, strict=False)) if x != y), min(len(ids), len(exp.ids))
        )
        tok = family_tokenizer(name)
        raise LabelMismatch(
            f"{name}: ids differ from apply_chat_template at token {at} ({len(ids)} vs {len(exp.ids)} tokens)\n"
            f"  engine:   {tok.decode(ids[max(0, at - 8) : at + 8])!r}\n"
            f"  template: {tok.decode(exp.ids[max(0, at - 8) : at + 8])!r}"
        )
    mask = _as_mask(ids, labels_or_mask)
    missing = exp.must & ~mask
    extra = mask & ~exp.may
    silent = [s.message for s, touches in zip(exp.spans, exp.touching, strict=True) if not (mask & touches).any()]
    if missing.any() or extra.any() or silent:
        tok = family_tokenizer(name)
        raise LabelMismatch(
            f"{name}: {int(missing.sum())} expected tokens not supervised, {int(extra.sum())} supervised unexpectedly"
            f"{f', nothing supervised for messages {silent}' if silent else ''}\n"
            f"  supervised: {_runs(tok, ids, mask)!r}\n  expected:   {exp.texts()!r}"
        )
    return exp
