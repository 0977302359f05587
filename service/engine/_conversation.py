"""One conversation model for every input shape: OpenAI messages, ShareGPT turns, prompt/completion rows.

Rows are validated here, once, with errors that name the sample and the field (``messages[2].role``), so the
engine below never meets a malformed message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, cast

from feedline.proto import InvalidSample

__all__ = [
    "ColumnMap",
    "Conversation",
    "Message",
    "Part",
    "PromptCompletion",
    "Row",
    "parse_row",
    "require_tool_call_ids",
]

Role = Literal["system", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})
MEDIA_TYPES: frozenset[str] = frozenset({"image", "audio", "video"})
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHAREGPT_ROLES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}


@dataclass(frozen=True)
class Part:
    """One content part: text, or a media item whose raw payload is kept for the media loader."""

    type: str
    text: str = ""
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """A validated chat message; ``content`` is a tuple of parts (plain strings become one text part).

    ``tool_calls`` are normalised for validation and tool links (ids, JSON arguments); the template never sees
    that form, it gets ``source``."""

    role: Role
    parts: tuple[Part, ...]
    reasoning_content: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    source: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    """The message as the row gave it (None for ShareGPT turns): what the chat template receives."""

    @cached_property
    def text(self) -> str:
        """The text parts joined with a space (NeMo's normalisation of list content); joined once, on first use
        (the template messages and the turn-marker scan both read it)."""
        return " ".join(p.text for p in self.parts if p.type == "text")

    @property
    def media(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.type in MEDIA_TYPES)


@dataclass(frozen=True)
class Conversation:
    """A validated conversation plus the tool schemas offered to the model."""

    messages: tuple[Message, ...]
    tools: tuple[Mapping[str, Any], ...] | None = None

    @property
    def has_media(self) -> bool:
        return any(m.media for m in self.messages)

    def template_messages(self, *, keep_parts: bool = False) -> list[dict[str, Any]]:
        """Messages as chat templates expect them: text content for tokenizers, part lists for processors."""
        return [_template_message(m, keep_parts) for m in self.messages]


@dataclass(frozen=True)
class PromptCompletion:
    """A row without a conversation: the completion is supervised, the prompt is not."""

    prompt: str
    completion: str


Row = Conversation | PromptCompletion


@dataclass(frozen=True)
class ColumnMap:
    """Names of the columns of a row (configurable, like NeMo's column mapping)."""

    messages: str = "messages"
    conversations: str = "conversations"
    tools: str = "tools"
    prompt: str = "prompt"
    completion: str = "completion"


def parse_row(row: Any, *, index: int = 0, columns: ColumnMap | None = None, require_assistant: bool = True) -> Row:
    """Validate one input row and normalise it into a Conversation or a PromptCompletion."""
    cols = columns or ColumnMap()
    if not isinstance(row, Mapping):
        raise InvalidSample(f"a row must be a JSON object, got {type(row).__name__}", sample=index)
    if cols.messages in row:
        messages = _parse_messages(row[cols.messages], index, cols.messages)
    elif cols.conversations in row:
        messages = _parse_sharegpt(row[cols.conversations], index, cols.conversations)
    elif cols.prompt in row or cols.completion in row:
        return _parse_prompt_completion(row, index, cols)
    else:
        raise InvalidSample(
            f"a row needs {cols.messages!r}, {cols.conversations!r} or {cols.prompt!r}/{cols.completion!r}",
            sample=index,
        )
    if require_assistant and not any(m.role == "assistant" for m in messages):
        raise InvalidSample("no assistant turn: nothing to supervise", sample=index, field=cols.messages)
    _check_tool_links(messages, index)
    return Conversation(messages=messages, tools=_parse_tools(row.get(cols.tools), index, cols.tools))


def _parse_messages(raw: Any, index: int, key: str) -> tuple[Message, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)) or not raw:
        raise InvalidSample("must be a non-empty list of messages", sample=index, field=key)
    return tuple(_parse_message(m, index, f"{key}[{i}]") for i, m in enumerate(raw))


def _parse_message(raw: Any, index: int, where: str) -> Message:
    if not isinstance(raw, Mapping):
        raise InvalidSample("a message must be an object", sample=index, field=where)
    role = raw.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidSample(
            f"unknown role {role!r}; expected one of {sorted(ROLES)}", sample=index, field=f"{where}.role"
        )
    role = cast(Role, role)
    # transformers hands reasoning to templates under all of these names; the first one given counts.
    key = next((k for k in _REASONING_KEYS if raw.get(k) is not None), "reasoning_content")
    reasoning = raw.get(key)
    if reasoning is not None and not isinstance(reasoning, str):
        raise InvalidSample("must be a string", sample=index, field=f"{where}.{key}")
    tool_call_id = raw.get("tool_call_id")  # optional: required only by templates that use it (``_tool_ids``)
    if tool_call_id is not None and not isinstance(tool_call_id, str):
        raise InvalidSample("must be a string", sample=index, field=f"{where}.tool_call_id")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidSample("must be a string", sample=index, field=f"{where}.name")
    for name_, value in ((key, reasoning), ("tool_call_id", tool_call_id), ("name", name)):
        if isinstance(value, str):
            _check_unicode(value, index, f"{where}.{name_}")
    return Message(
        role=role,
        parts=_parse_content(raw.get("content"), index, f"{where}.content"),
        reasoning_content=reasoning,
        tool_calls=_parse_tool_calls(raw.get("tool_calls"), index, f"{where}.tool_calls"),
        tool_call_id=(tool_call_id or None) if role == "tool" else None,
        name=name,
        source=raw,
    )


def _parse_content(raw: Any, index: int, where: str) -> tuple[Part, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (Part("text", _check_unicode(raw, index, where)),)
    if not isinstance(raw, Sequence) or isinstance(raw, bytes):
        raise InvalidSample("content must be a string or a list of parts", sample=index, field=where)
    return tuple(_parse_part(p, index, f"{where}[{i}]") for i, p in enumerate(raw))


def _parse_part(raw: Any, index: int, where: str) -> Part:
    if isinstance(raw, str):
        return Part("text", _check_unicode(raw, index, where))
    if not isinstance(raw, Mapping):
        raise InvalidSample("a content part must be an object", sample=index, field=where)
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise InvalidSample(
            f"a content part needs a string 'type', not {type(kind).__name__}", sample=index, field=f"{where}.type"
        )
    if kind == "text":
        text = raw.get("text")
        if not isinstance(text, str):
            raise InvalidSample("a text part needs a string 'text'", sample=index, field=f"{where}.text")
        return Part("text", _check_unicode(text, index, f"{where}.text"))
    kind = {"image_url": "image", "input_audio": "audio"}.get(kind, kind)
    if kind in MEDIA_TYPES:
        return Part(kind, payload=dict(raw))
    raise InvalidSample(f"unknown content part type {raw.get('type')!r}", sample=index, field=f"{where}.type")


def _parse_tool_calls(raw: Any, index: int, where: str) -> tuple[Mapping[str, Any], ...] | None:
    if raw is None or raw == []:
        return None
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise InvalidSample("must be a list", sample=index, field=where)
    return tuple(_parse_tool_call(c, i, index, f"{where}[{i}]") for i, c in enumerate(raw))


def _parse_tool_call(raw: Any, position: int, index: int, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise InvalidSample("a tool call must be an object", sample=index, field=where)
    fn = raw.get("function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn.get("name"):
        raise InvalidSample("a tool call needs function.name", sample=index, field=f"{where}.function.name")
    arguments = fn.get("arguments", {})
    if not isinstance(arguments, str):
        try:
            arguments = json.dumps(arguments, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidSample(
                f"arguments are not JSON: {exc}", sample=index, field=f"{where}.function.arguments"
            ) from exc
    _check_unicode(fn["name"], index, f"{where}.function.name")
    _check_unicode(arguments, index, f"{where}.function.arguments")
    return {
        "id": raw.get("id") or f"call_{position}",
        "type": raw.get("type") or "function",
        "function": {"name": fn["name"], "arguments": arguments},
    }


def _parse_tools(raw: Any, index: int, key: str) -> tuple[Mapping[str, Any], ...] | None:
    if raw is None or raw == "" or raw == []:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise InvalidSample(f"tools is a string but not JSON: {exc}", sample=index, field=key) from exc
    if not isinstance(raw, Sequence) or not all(isinstance(t, Mapping) for t in raw):
        raise InvalidSample("tools must be a list of tool schemas (objects)", sample=index, field=key)
    _check_unicode(json.dumps(list(raw), ensure_ascii=False, default=str), index, key)
    return tuple(raw) or None


def _check_tool_links(messages: tuple[Message, ...], index: int) -> None:
    """A tool result that names a call must answer one made earlier in the conversation (when calls carry ids)."""
    seen: set[str] = set()
    for i, msg in enumerate(messages):
        for call in msg.tool_calls or ():
            seen.add(str(call["id"]))
        if msg.role == "tool" and seen and msg.tool_call_id is not None and msg.tool_call_id not in seen:
            raise InvalidSample(
                f"tool_call_id {msg.tool_call_id!r} answers no earlier tool call",
                sample=index,
                field=f"messages[{i}].tool_call_id",
            )


def require_tool_call_ids(row: Row, index: int) -> Row:
    """Refuse a tool message without ``tool_call_id``: for processors whose chat template uses the id
    (``Processor.uses_tool_call_id``); other templates take tool results without one."""
    if isinstance(row, Conversation):
        for i, message in enumerate(row.messages):
            if message.role == "tool" and not message.tool_call_id:
                raise InvalidSample(
                    "a tool message needs a tool_call_id for this processor: its chat template writes the id of the "
                    "call a tool result answers",
                    sample=index,
                    field=f"messages[{i}].tool_call_id",
                )
    return row


def _parse_sharegpt(raw: Any, index: int, key: str) -> tuple[Message, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)) or not raw:
        raise InvalidSample("must be a non-empty list of turns", sample=index, field=key)
    messages = []
    for i, turn in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(turn, Mapping):
            raise InvalidSample("a turn must be an object", sample=index, field=where)
        role = _SHAREGPT_ROLES.get(str(turn.get("from")))
        if role is None:
            raise InvalidSample(f"unknown speaker {turn.get('from')!r}", sample=index, field=f"{where}.from")
        value = turn.get("value")
        if not isinstance(value, str):
            raise InvalidSample("value must be a string", sample=index, field=f"{where}.value")
        _check_unicode(value, index, f"{where}.value")
        call_id = f"call_{i}" if role == "tool" else None
        messages.append(Message(role=role, parts=(Part("text", value),), tool_call_id=call_id))
    return tuple(messages)


def _parse_prompt_completion(row: Mapping[str, Any], index: int, cols: ColumnMap) -> PromptCompletion:
    prompt, completion = row.get(cols.prompt, ""), row.get(cols.completion)
    if not isinstance(prompt, str):
        raise InvalidSample("must be a string", sample=index, field=cols.prompt)
    if not isinstance(completion, str) or not completion:
        raise InvalidSample("must be a non-empty string", sample=index, field=cols.completion)
    return PromptCompletion(
        prompt=_check_unicode(prompt, index, cols.prompt), completion=_check_unicode(completion, index, cols.completion)
    )


def _check_unicode(text: str, index: int, where: str) -> str:
    """Refuse a lone UTF-16 surrogate (JSON allows the escape "\\ud800"): no tokenizer can encode it."""
    bad = None if text.isascii() else _SURROGATE.search(text)
    if bad is not None:
        raise InvalidSample(
            f"invalid unicode: a lone surrogate U+{ord(bad.group()):04X} at position {bad.start()}",
            sample=index,
            field=where,
        )
    return text


def _template_message(msg: Message, keep_parts: bool) -> dict[str, Any]:
    """The message as given (every key, tool-call arguments and empty reasoning untouched), so the render is
    ``apply_chat_template``'s; only list content changes: media parts for processors, else its joined text."""
    if msg.source is not None:
        out = dict(msg.source)
        content = out.get("content")
        if keep_parts and msg.media:
            out["content"] = [_template_part(p) for p in msg.parts]
        elif content is not None and not isinstance(content, str):
            out["content"] = msg.text
        return out
    out = {"role": msg.role}
    if keep_parts and msg.media:
        out["content"] = [_template_part(p) for p in msg.parts]
    else:
        out["content"] = msg.text
    if msg.reasoning_content is not None:
        out["reasoning_content"] = msg.reasoning_content
    if msg.tool_calls:
        out["tool_calls"] = [dict(c) for c in msg.tool_calls]
    if msg.tool_call_id is not None:
        out["tool_call_id"] = msg.tool_call_id
    if msg.name is not None:
        out["name"] = msg.name
    return out


def _template_part(part: Part) -> dict[str, Any]:
    if part.type == "text":
        return {"type": "text", "text": part.text}
    return {"type": part.type}
