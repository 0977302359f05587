"""Where each assistant turn sits in a rendered chat, as character spans.

Two ways to find them: a scan for the turn markers derived from the template (one render), and the general
method, which renders what the model is prompted with before every assistant turn (O(turns) renders). The
engine uses the scan where it is proven on the template's probes and falls back to the general method.
Generation blocks, when the template has them, then decide which text inside each turn is supervised. All
return the same shape, so labels are built by one function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feedline.proto import TemplateError

from ..tokenizers._markers import TurnMarkers, common_prefix
from ..tokenizers._render import ChatRenderer
from ._conversation import Message

__all__ = ["TurnLayout", "generation_layout", "marker_layout", "reasoning_holes", "render_layout"]

Span = tuple[int, int]


@dataclass(frozen=True)
class TurnLayout:
    """Character spans of the assistant turns (one per assistant message, in order) and of each message.

    ``regions[k]`` is where message ``k``'s part of the rendered text begins (its header included), so every
    character belongs to the message whose region it falls in; text before ``regions[0]`` belongs to none.
    ``pieces`` are the supervised spans when generation blocks select only part of some turns (None: the turns).
    """

    assistant: tuple[Span, ...]
    regions: tuple[int, ...]
    pieces: tuple[Span, ...] | None = None

    def supervised(self, *, last_turn_only: bool = False) -> tuple[Span, ...]:
        """The spans to supervise: every turn's, or the last turn's only."""
        spans = self.pieces if self.pieces is not None else self.assistant
        if not (last_turn_only and self.assistant):
            return spans
        start, stop = self.assistant[-1]
        return tuple((a, b) for a, b in spans if a >= start and b <= stop)


def marker_layout(text: str, messages: Sequence[Message], markers: TurnMarkers) -> TurnLayout:
    """Scan the rendered text once, message by message, for assistant headers and closing text."""
    cursor = 0
    spans: list[Span] = []
    regions: list[int] = []
    last = len(messages) - 1
    for k, msg in enumerate(messages):
        regions.append(cursor)
        if msg.role != "assistant":
            cursor = _skip_verbatim(text, msg.text, cursor, markers.header)
            if not text.startswith(markers.opener(k + 1 == last), cursor):  # Yi's header holds the user's closer
                cursor = _skip_turn_end(text, cursor, markers.end, markers.trailer)
            continue
        opener = markers.opener(k == last)
        closer = markers.closer(k == last)
        start, search_from = _assistant_start(text, msg, (opener, closer), markers.lead, cursor, k)
        if closer:
            end = text.find(closer, search_from)
            if end < 0:
                raise TemplateError(f"message {k}: no closing text {closer!r} after the assistant turn")
            stop = end + len(closer)
        elif search_from > start or not msg.text:
            stop = search_from  # a format without closers (Falcon): the turn is its content
        else:
            raise TemplateError(f"message {k}: the format closes turns with nothing and the content is not verbatim")
        _check_in_order(text, messages, k, (cursor, max(cursor, start - len(opener))), (start, stop))
        spans.append((start, stop))
        cursor = stop + len(markers.trailer) if closer and text.startswith(markers.trailer, stop) else stop
    return TurnLayout(assistant=tuple(spans), regions=tuple(regions))


def _check_in_order(text: str, messages: Sequence[Message], k: int, skipped: tuple[int, int], span: Span) -> None:
    """A scanned turn must hold its own content, and the text skipped to reach its header none of the next
    later message's: a header found further on (a tool-call turn written without it) would label another turn."""
    own = messages[k].text.strip()
    if own and text.find(own, *span) < 0:
        raise TemplateError(f"message {k}: the assistant content is not inside the turn the scan found")
    if skipped[1] > skipped[0] and any(
        m.text.strip() and text.find(m.text.strip(), *skipped) >= 0 for m in messages[k + 1 :]
    ):
        raise TemplateError(f"message {k}: the scan skipped a later message to find this turn's header")


def _assistant_start(
    text: str, msg: Message, markers: tuple[str, str], lead: int, cursor: int, k: int
) -> tuple[int, int]:
    """Body start of an assistant turn, and where to look for its end (after verbatim content).

    ``lead`` characters at the end of ``header`` are the turn's own (Llama 2's space after "[/INST]"). A format
    without an assistant header (anchored on the user's closing text) writes tool-call turns right after that
    text and answers after tool results without it: the bare anchor at the cursor, then the content itself
    (followed by the turn's closer), mark the start there.
    """
    header, closer = markers
    content = msg.text
    for candidate in (content, content.strip()):
        if candidate:
            found = text.find(header + candidate, cursor)
            if found >= 0:
                start = found + len(header)
                return start - lead, start + len(candidate)
    if lead and text.startswith(header[:-lead], cursor):
        start = cursor + len(header) - lead
        return start, start
    found = text.find(header, cursor)
    own = content.strip()
    at = text.find(own + closer, cursor) if closer and own and not msg.tool_calls else -1
    if at >= 0 and (found < 0 or at < found):
        start = at - lead if text[at - lead : at].isspace() else at
        return start, at + len(own)
    if found < 0:
        raise TemplateError(f"message {k}: no assistant header {header!r} in the rendered text")
    start = found + len(header)
    return start - lead, start


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


def _skip_turn_end(text: str, cursor: int, closer: str, trailer: str) -> int:
    """Keep a turn's closing text (its closer, then the whitespace after it) in that turn's region, not the next
    one's; the whitespace only after a closer (a format without closers separates turns with it)."""
    if not (closer and text.startswith(closer, cursor)):
        return cursor
    cursor += len(closer)
    return cursor + len(trailer) if trailer and text.startswith(trailer, cursor) else cursor


def generation_layout(
    text: str, generation: Sequence[Span], messages: Sequence[Message], turns: TurnLayout | None
) -> tuple[TurnLayout, list[str]]:
    """Supervision from the template's {% generation %} blocks, bounded by the assistant turns when known.

    The blocks decide which text of a turn is generated, but a block never makes a header supervised (it is
    clipped to the turn's span) and the turn's closer is always supervised; blocks outside every turn (one around
    a final eos) are left out. Without ``turns`` the blocks must match the assistant messages one to one.
    """
    n_assistant = sum(m.role == "assistant" for m in messages)
    blocks = tuple(generation)
    warnings: list[str] = []
    if turns is None:
        if len(blocks) != n_assistant:
            raise TemplateError(
                f"the template marked {len(blocks)} generation blocks for {n_assistant} assistant messages and "
                "its turn markers cannot be derived"
            )
        return TurnLayout(assistant=blocks, regions=_regions_from_spans(text, messages, blocks)), warnings
    spans: list[Span] = []
    used = 0
    for start, stop in turns.assistant:
        inside = [(max(a, start), min(b, stop)) for a, b in blocks if a < stop and b > start]
        used += len(inside)
        if not inside:
            warnings.append(
                f"no generation block inside the assistant turn at characters {start}-{stop}; "
                "the whole turn is supervised"
            )
            spans.append((start, stop))
            continue
        spans.extend(inside[:-1])
        spans.append((inside[-1][0], stop))  # through the turn's closer, which the model must learn to emit
    if len(blocks) != n_assistant or used != len(blocks):
        warnings.append(
            f"the template marked {len(blocks)} generation blocks for {n_assistant} assistant messages; "
            "text outside assistant turns was left unsupervised"
        )
    return TurnLayout(assistant=turns.assistant, regions=turns.regions, pieces=tuple(spans)), warnings


def render_layout(
    renderer: ChatRenderer,
    template_messages: Sequence[dict[str, Any]],
    messages: Sequence[Message],
    text: str,
    tools: Sequence[Any] | None,
    markers: TurnMarkers | None,
) -> TurnLayout:
    """The general method, O(turns) renders: each assistant turn from what the model is prompted with.

    Turn ``k`` starts where the render of ``messages[:k]`` with the generation prompt stops matching the render
    of ``messages[:k+1]`` (a forced prefix such as "<think>" never appears in the history and is not
    supervised; whitespace the history adds after the prompt is header) and runs through what that render adds
    after the header, less the text every render appends (``markers.tail``). Inside the whole conversation the
    turn may be written differently from the prefix's last turn (gpt-oss closes it with "<|end|>" for
    "<|return|>", Nemotron drops the "<think>" it gives the last turn): it runs there through the closer of
    earlier turns, ``markers.end``. When the template writes the text before the turn differently once later
    messages follow (Mistral moves the tool list and system prompt into the last user turn), the renders are
    compared from the end of the previous message's own text on (``_anchored_starts``).
    TemplateError (a per-row reason) when neither places the turn.
    """
    tail = markers.tail if markers else ""
    spans: list[Span] = []
    for k, msg in enumerate(messages):
        if msg.role != "assistant":
            continue
        is_last = k == len(messages) - 1
        before = _without_tail(renderer.text(template_messages[:k], tools=tools), tail) if k else ""
        prompt = renderer.text(template_messages[:k], tools=tools, add_generation_prompt=True) if k else ""
        upto = _without_tail(renderer.text(template_messages[: k + 1], tools=tools), tail)
        start = _body_start(renderer, prompt, upto, markers, is_last)
        if upto.startswith(before) and len(before) <= start <= common_prefix(text, upto):
            at = start
        else:
            start, at = _anchored_starts(renderer, template_messages, tools, k, (prompt, upto, text), markers)
        body = upto[start : len(upto.rstrip())]
        same = common_prefix(text[at : at + len(body)], body)
        if same == len(body):
            stop = at + same
        else:
            stop = _end_in_context(renderer, (template_messages, tools, k), text, body, (at, same), markers)
        closer = markers.end if markers and not is_last else ""
        if closer and not body.endswith(closer) and text.startswith(closer, stop):
            stop += len(closer)  # the last turn is written without the closer earlier turns have (Cat-Llama-3)
        spans.append((at, max(stop, at)))
    return TurnLayout(assistant=tuple(spans), regions=_regions_from_spans(text, messages, spans))


def _anchored_starts(
    renderer: ChatRenderer,
    template_messages: Sequence[dict[str, Any]],
    tools: Sequence[Any] | None,
    k: int,
    renders: tuple[str, str, str],
    markers: TurnMarkers | None,
) -> tuple[int, int]:
    """Where turn ``k``'s body starts in the render of ``messages[:k+1]`` and in the whole conversation's, each
    found after the end of message ``k-1``'s own text by what the generation prompt writes after that text."""
    prompt, upto, text = renders
    ends = [
        _content_end(renderer, template_messages[:n], (render, n == k), tools, k - 1) if k else None
        for n, render in ((k, prompt), (k + 1, upto), (len(template_messages), text))
    ]
    if None in ends:
        raise TemplateError(
            f"message {k}: the template writes the conversation before this turn differently "
            "when the turn is the last one, and the message before it has no text to anchor on"
        )
    in_prompt, in_upto, in_text = (e for e in ends if e is not None)
    header = prompt[in_prompt:]
    start = in_upto + _body_start(renderer, header, upto[in_upto:], markers, True)
    at = in_text + _body_start(renderer, header, text[in_text:], markers, k == len(template_messages) - 1)
    return start, at


_MARK = "\x07"  # appended to a message's text to find where the template wrote it; no template strips it


def _content_end(
    renderer: ChatRenderer,
    template_messages: Sequence[dict[str, Any]],
    rendered: tuple[str, bool],
    tools: Sequence[Any] | None,
    k: int,
) -> int | None:
    """Where message ``k``'s text ends in ``rendered = (text, with the generation prompt)``, a render of
    ``template_messages``: the first character that differs from a render with a mark appended to the text
    (None when the message has no text to mark)."""
    content = template_messages[k].get("content")
    if not isinstance(content, str) or not content:
        return None
    marked = [dict(m) for m in template_messages]
    marked[k]["content"] = content + _MARK
    plain, prompted = rendered
    return common_prefix(plain, renderer.text(marked, tools=tools, add_generation_prompt=prompted))


def _without_tail(render: str, tail: str) -> str:
    return render[: len(render) - len(tail)] if tail and render.endswith(tail) else render


def _body_start(renderer: ChatRenderer, prompt: str, upto: str, markers: TurnMarkers | None, is_last: bool) -> int:
    """Where the generated text of the prefix's last turn starts in ``upto``."""
    at = renderer.snap(upto, common_prefix(prompt, upto))
    header = markers.opener(is_last) if markers else ""
    if header:  # the header found at the divergence, wherever the character comparison stopped
        found = upto.rfind(header, 0, at + len(header))
        if found >= 0 and found + len(header) >= at - len(header):
            return found + len(header) - (markers.lead if markers else 0)
    rest = prompt[at:]
    if rest.strip() and upto[at:].lstrip().startswith(rest.strip()):  # the prompt differs in whitespace only
        at = len(upto) - len(upto[at:].lstrip()) + len(rest.strip())
        at += len(upto[at:]) - len(upto[at:].lstrip())
    return at


def _end_in_context(
    renderer: ChatRenderer,
    row: tuple[Sequence[dict[str, Any]], Sequence[Any] | None, int],
    text: str,
    body: str,
    where: tuple[int, int],
    markers: TurnMarkers | None,
) -> int:
    """End of turn ``k`` (``row``: the messages, tools, k) that the whole conversation writes otherwise than the
    prefix's last turn ``body`` (``where``: its start in ``text`` and how much of ``body`` matches there): where the
    two realign, else at a closer, and always before the next message's own text."""
    template_messages, tools, k = row
    at, same = where
    same = renderer.snap(text, at + same) - at
    bound = _next_message_start(renderer, template_messages, text, tools, k)
    closers = (markers.end if markers else "", renderer.closing_atom(body))
    stop = _realigned(text, body, (at, same, bound)) or _closer_in_history(text, (at + same, at, bound), closers)
    if stop is None:
        raise TemplateError(
            f"message {k}: the turn is written differently inside the conversation and neither realigns with it "
            "nor closes before the next message; the turn cannot be located"
        )
    return stop


def _realigned(text: str, body: str, window: tuple[int, int, int]) -> int | None:
    """End of the turn when the conversation writes it as the prefix's last turn less (or plus) one stretch of text
    from where the two part (GLM-4.5 and Nemotron drop the reasoning or "<think>" earlier turns had as the last
    one; gpt-oss drops a tool call's analysis message): the rest of the body then follows verbatim. None when no
    such stretch exists. ``window``: (the turn's start in ``text``, where the renders part in the body, the next
    message's start)."""
    at, same, bound = window
    shared = at + same
    rest = body[same:]
    for cut in range(1, len(rest)):  # the prefix wrote extra text
        tail = rest[cut:]
        if tail.strip() and text.startswith(tail, shared) and shared + len(tail) <= bound:
            return shared + len(tail)
    found = text.find(rest, shared, bound)  # the conversation writes extra text
    return found + len(rest) if rest.strip() and found >= 0 else None


def _closer_in_history(text: str, window: tuple[int, int, int], closers: tuple[str, ...]) -> int | None:
    """End of the turn's closer inside the whole conversation, where the turn is written differently from the
    prefix's last turn: the first of ``closers`` (the earlier turns' closer, the special token the prefix's turn
    ends with) that ends at or after where the two renders part and before the next message begins.
    ``window``: (where they part, the turn's start, the next message's start). None when none does."""
    shared, start, bound = window
    found = [(at, c) for c in closers if c and (at := text.find(c, max(start, shared - len(c)), bound)) >= 0]
    if not found:
        return None
    at, closer = min(found)
    return at + len(closer)


def _next_message_start(
    renderer: ChatRenderer, template_messages: Sequence[dict[str, Any]], text: str, tools: Sequence[Any] | None, k: int
) -> int:
    """Where message ``k+1``'s own text starts in ``text`` (the render of all of ``template_messages``): the first
    character that differs from a render with a mark put before it; the end of the text when there is no such
    message or it has no text to mark."""
    nxt = template_messages[k + 1] if k + 1 < len(template_messages) else None
    content = nxt.get("content") if nxt else None
    if not isinstance(content, str) or not content:
        return len(text)
    marked = [dict(m) for m in template_messages]
    marked[k + 1]["content"] = _MARK + content
    return common_prefix(text, renderer.text(marked, tools=tools))


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
