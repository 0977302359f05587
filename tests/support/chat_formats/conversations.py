"""Hypothesis strategies for rows each family's template accepts.

Rows are OpenAI-style ``{"messages": [...], "tools": [...]}``: an optional system message, one to three user turns,
answers that may call tools (dict arguments holding non-ASCII text, or a JSON string where the template concatenates
strings) followed by tool results and a final answer, ``reasoning_content`` (empty or not) where the format renders
it. The family's capabilities decide the shape: strict user/assistant alternation where the template raises
otherwise, tools always given where the template renders only with tools, one call per turn where it allows one.

Text is any Unicode (NFC, no surrogates or control characters) without leading/trailing whitespace and without
``< > | [ ] { }``, so no message can spell a special token or a markup string of the formats; user texts in one row
are distinct (some templates compare messages by value).
"""

from __future__ import annotations

import json
import string
import unicodedata
from typing import Any

from hypothesis import strategies as st

from .registry import Family

__all__ = ["TOOLS", "conversations", "text"]

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, any language."},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_notes",
            "description": "Search the user's notes.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}, "exact": {"type": "boolean"}},
                "required": ["query"],
            },
        },
    },
]

_EXCLUDED = "<>|[]{}\x07\u2581"


def _clean(value: str) -> str:
    return unicodedata.normalize("NFC", value).strip()


text = (
    st.text(
        alphabet=st.characters(
            codec="utf-8", exclude_categories=("Cs", "Cc", "Co", "Cn"), exclude_characters=_EXCLUDED
        ),
        min_size=1,
        max_size=24,
    )
    .map(_clean)
    .filter(lambda s: bool(s) and not any(c in _EXCLUDED for c in s))
)

_ids = st.text(alphabet=string.ascii_letters + string.digits, min_size=9, max_size=9)


@st.composite
def _arguments(draw: st.DrawFn, name: str) -> dict[str, Any]:
    if name == "get_weather":
        args: dict[str, Any] = {"city": draw(text)}
        if draw(st.booleans()):
            args["unit"] = draw(st.sampled_from(["celsius", "fahrenheit"]))
        return args
    args = {"query": draw(text)}
    if draw(st.booleans()):
        args["limit"] = draw(st.integers(1, 50))
    if draw(st.booleans()):
        args["exact"] = draw(st.booleans())
    return args


@st.composite
def _tool_round(draw: st.DrawFn, fam: Family) -> list[dict[str, Any]]:
    """An answer calling tools, one result per call, and the final answer."""
    count = 1 if fam.single_tool_call else draw(st.integers(1, 2))
    calls, results = [], []
    for _ in range(count):
        name = draw(st.sampled_from([t["function"]["name"] for t in TOOLS]))
        args = draw(_arguments(name))
        call_id = draw(_ids)
        arguments: Any = json.dumps(args, ensure_ascii=False) if fam.tool_arguments == "string" else args
        calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        payload = {"result": draw(text), "ok": draw(st.booleans())}
        results.append(
            {"role": "tool", "tool_call_id": call_id, "name": name, "content": json.dumps(payload, ensure_ascii=False)}
        )
    caller: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
    if fam.tool_call_content and draw(st.booleans()):
        caller["content"] = draw(text)
    return [_with_reasoning(draw, fam, caller), *results, _answer(draw, fam)]


def _with_reasoning(draw: st.DrawFn, fam: Family, message: dict[str, Any]) -> dict[str, Any]:
    if fam.reasoning:
        choice = draw(st.sampled_from(["none", "empty", "text"]))
        if choice != "none":
            message["reasoning_content"] = "" if choice == "empty" else draw(text)
    return message


def _answer(draw: st.DrawFn, fam: Family) -> dict[str, Any]:
    return _with_reasoning(draw, fam, {"role": "assistant", "content": draw(text)})


@st.composite
def conversations(draw: st.DrawFn, fam: Family) -> dict[str, Any]:
    """One row for ``fam``, always ending with an assistant answer."""
    turns = draw(st.integers(1, 3))
    users = draw(st.lists(text, min_size=turns, max_size=turns, unique=True))
    use_tools = fam.tools and (fam.requires_tools or draw(st.booleans()))
    messages: list[dict[str, Any]] = []
    if fam.system and draw(st.booleans()):
        messages.append({"role": "system", "content": draw(text)})
    for user in users:
        messages.append({"role": "user", "content": user})
        if use_tools and fam.tool_calls and draw(st.booleans()):
            messages.extend(draw(_tool_round(fam)))
        else:
            messages.append(_answer(draw, fam))
    row: dict[str, Any] = {"messages": messages}
    if use_tools:
        row["tools"] = TOOLS
    return row
