"""Whether a chat template uses a tool message's ``tool_call_id``, found by rendering once per processor.

Many templates (Qwen's, Llama's, Gemma's) never write the id, so a tool result without one is fine for them;
others (Mistral's) write it into the prompt or refuse a tool message without it. Rather than a list of model
names, the processor renders one probe conversation three times: with two different ids and with none. The
template uses the id when the two renders differ, or when it renders with an id but fails without one.
Rows are checked against the answer by ``engine._conversation.require_tool_call_ids``.
"""

from __future__ import annotations

from typing import Any

from feedline.proto import TemplateError

from ._render import ChatRenderer

__all__ = ["template_uses_tool_call_id"]

_CALL_ID = "abcdefghi"  # 9 alphanumeric characters: the one id shape every known template accepts
_OTHER_ID = "jklmnopqr"


def _probe(tool_call_id: str | None) -> list[dict[str, Any]]:
    call = {"id": _CALL_ID, "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    tool: dict[str, Any] = {"role": "tool", "content": "42"}
    if tool_call_id is not None:
        tool["tool_call_id"] = tool_call_id
    return [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        tool,
        {"role": "assistant", "content": "a"},
    ]


def template_uses_tool_call_id(renderer: ChatRenderer) -> bool:
    """True when the template's output depends on, or needs, a tool message's ``tool_call_id``."""
    try:
        first = renderer.text(_probe(_CALL_ID))
        second = renderer.text(_probe(_OTHER_ID))
    except TemplateError:  # the template renders no tool turn at all: such rows fail on their own render
        return False
    if first != second:
        return True
    try:
        renderer.text(_probe(None))
    except TemplateError:
        return True
    return False
