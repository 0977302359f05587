"""Where each assistant turn sits in a rendered chat, as character spans.

Three ways to find them, tried in this order by the engine: the template's own {% generation %} blocks,
a scan for the turn markers derived from the template (one render), and, as a fallback, rendering every
conversation prefix (O(turns) renders). All return the same shape, so labels are built by one function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feedline.proto import TemplateError

from ._conversation import Message
from ..tokenizers._markers import TurnMarkers
from ..tokenizers._render import ChatRenderer

__all__ = ["TurnLayout", "generation_layout", "marker_layout", "prefix_layout", "reasoning_holes"]

Span = tuple[int, int]


@dataclass(frozen=True)
class TurnLayout:
    """Character spans of the assistant turns (one per assistant message, in order) and of each message.

    ``regions[k]`` is where message ``k``'s part of the rendered text begins (its header included), so every
    character belongs to the message whose region it falls in; text before ``regions[0]`` belongs to none.
    """

    assistant: tuple[Span, ...]
    regions: tuple[int, ...]


def marker_layout(text: str, messages: Sequence[Message], markers: TurnMarkers) -> TurnLayout:
    """Scan the rendered text once, message by message, for assistant headers and end-of-turn text."""
    cursor = 0
    spans: list[Span] = []
    regions: list[int] = []
    for k, msg in enumerate(messages):
        regions.append(cursor)
        if msg.role != "assistant":
            cursor = _skip_turn_end(text, _skip_verbatim(text, msg.text, cursor, markers.header), markers)
            continue
        start, search_from = _assistant_start(text, msg.text, markers.header, cursor, k)
        end = text.find(markers.end, search_from)
        if end < 0:
            raise TemplateError(f"message {k}: no end-of-turn text {markers.end!r} after the assistant turn")
        stop = end + len(markers.end)
        spans.append((start, stop))
        cursor = _skip_turn_end(text, stop, markers)
    return TurnLayout(assistant=tuple(spans), regions=tuple(regions))


def _assistant_start(text: str, content: str, header: str, cursor: int, k: int) -> tuple[int, int]:
    """Content start of an assistant turn, and where to look for its end (after verbatim content)."""
    for candidate in (content, content.strip()):
        if candidate:
            found = text.find(header + candidate, cursor)
            if found >= 0:
                start = found + len(header)
                return start, start + len(candidate)
    found = text.find(header, cursor)
    if found < 0:
        raise TemplateError(f"message {k}: no assistant header {header!r} in the rendered text")
    start = found + len(header)
    return start, start


def _skip_verbatim(text: str, content: str, cursor: int, header: str | None = None) -> int:
    """Move past a non-assistant message's content when the template wrote it verbatim, in place.

    Content found only after an assistant header was moved by the template (Mistral puts the system prompt
    into the last user turn), so the cursor stays.
    """
    if not content:
        return cursor
    found = text.find(content, cursor)
    if found < 0 or (header and text.find(header, cursor, found) >= 0):
        return cursor
    return found + len(content)


def _skip_turn_end(text: str, cursor: int, markers: TurnMarkers) -> int:
    """Keep a turn's closing text (end-of-turn, trailing newline) in that turn's region, not the next one's."""
    if text.startswith(markers.end, cursor):
        cursor += len(markers.end)
    if markers.trailer and text.startswith(markers.trailer, cursor):
        cursor += len(markers.trailer)
    return cursor


def generation_layout(text: str, generation: Sequence[Span], messages: Sequence[Message]) -> TurnLayout:
    """Use the template's {% generation %} spans; they must match the assistant messages one to one."""
    n_assistant = sum(m.role == "assistant" for m in messages)
    spans = tuple(generation)
    if len(spans) != n_assistant:
        raise TemplateError(
            f"the template marked {len(spans)} generation blocks for {n_assistant} assistant messages"
        )
    return TurnLayout(assistant=spans, regions=_regions_from_spans(text, messages, spans))


def prefix_layout(
    renderer: ChatRenderer, template_messages: Sequence[dict[str, Any]], messages: Sequence[Message], text: str,
    tools: Sequence[Any] | None,
) -> TurnLayout:
    """Fallback: an assistant turn spans from the prompted prefix to the end of its own render.

    The start comes from rendering the prefix with the generation prompt, so the header is never inside the
    span; the trailing whitespace the template writes after the turn is left out. Each prefix must be a
    prefix of the full render, else the template rewrites earlier turns and this method cannot be used.
    """
    spans: list[Span] = []
    for k, msg in enumerate(messages):
        if msg.role != "assistant":
            continue
        head = renderer.text(template_messages[:k], tools=tools, add_generation_prompt=True) if k else ""
        upto = renderer.text(template_messages[: k + 1], tools=tools)
        if not (text.startswith(head) and text.startswith(upto)):
            raise TemplateError(f"message {k}: the template rewrites earlier turns; prefix rendering cannot label it")
        stop = len(upto.rstrip())
        spans.append((len(head), max(stop, len(head))))
    return TurnLayout(assistant=tuple(spans), regions=_regions_from_spans(text, messages, spans))


def _regions_from_spans(text: str, messages: Sequence[Message], spans: Sequence[Span]) -> tuple[int, ...]:
    """Message regions when assistant spans are known: non-assistant content is located verbatim."""
    regions: list[int] = []
    cursor = 0
    it = iter(spans)
    for msg in messages:
        regions.append(cursor)
        cursor = max(cursor, next(it)[1]) if msg.role == "assistant" else _skip_verbatim(text, msg.text, cursor)
    return tuple(regions)


def reasoning_holes(text: str, messages: Sequence[Message], layout: TurnLayout) -> tuple[Span, ...]:
    """Character spans of each assistant message's reasoning_content inside its own turn."""
    holes: list[Span] = []
    assistant = [m for m in messages if m.role == "assistant"]
    for msg, (start, stop) in zip(assistant, layout.assistant, strict=False):
        reasoning = (msg.reasoning_content or "").strip()
        if not reasoning:
            continue
        found = text.find(reasoning, start, stop)
        if found >= 0:
            holes.append((found, found + len(reasoning)))
    return tuple(holes)
