"""Row validation: every malformed row gets an error naming the sample and the field."""

from __future__ import annotations

import pytest

from feedline.proto import InvalidSample
from feedline.service import Conversation, PromptCompletion, parse_row
from feedline.service.engine._conversation import ColumnMap


def _err(row: object, **kw: object) -> InvalidSample:
    with pytest.raises(InvalidSample) as info:
        parse_row(row, index=7, **kw)
    assert info.value.sample == 7
    return info.value


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "r", "tool_call_id": 5}]},
            "messages[1].tool_call_id",
        ),
        (
            {"messages": [{"role": "assistant", "content": "x", "reasoning_content": 5}]},
            "messages[0].reasoning_content",
        ),
        ({"messages": [{"role": "user", "content": "only a question"}]}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, "messages[0].content[0].type"),
        (
            {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}]},
            "messages[0].tool_calls[0].function.name",
        ),
        ({"messages": [{"role": "assistant", "content": "a"}], "tools": "{not json"}, "tools"),
        ({"messages": [{"role": "assistant", "content": "a"}], "tools": [1, 2]}, "tools"),
        ({"conversations": [{"from": "alien", "value": "x"}]}, "conversations[0].from"),
        ({"conversations": [{"from": "human", "value": None}]}, "conversations[0].value"),
        ({"prompt": "p", "completion": ""}, "completion"),
        ({"prompt": 1, "completion": "c"}, "prompt"),
    ],
)
def test_bad_rows_name_sample_and_field(row: dict, field: str) -> None:
    assert _err(row).field == field


def test_row_must_be_an_object_with_known_columns() -> None:
    assert "JSON object" in _err([1, 2]).message
    assert "messages" in _err({"text": "x"}).message


def test_tool_result_must_answer_an_earlier_call() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c1", "function": {"name": "w", "arguments": {}}}],
            },
            {"role": "tool", "tool_call_id": "c9", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ]
    }
    assert _err(row).field == "messages[2].tool_call_id"


def test_openai_row_is_normalised() -> None:
    row = {
        "messages": [
            {"role": "system", "content": None},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {
                "role": "assistant",
                "content": "x",
                "reasoning_content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": {"k": 1}}}],
            },
        ],
        "tools": '[{"type": "function", "function": {"name": "f"}}]',
    }
    conv = parse_row(row)
    assert isinstance(conv, Conversation)
    assert conv.messages[0].text == "" and conv.messages[1].text == "a b"
    call = conv.messages[2].tool_calls[0]
    assert call == {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": '{"k": 1}'}}
    assert conv.messages[2].reasoning_content == ""
    assert conv.tools is not None and conv.tools[0]["function"]["name"] == "f"
    # The template gets the messages as given: None content, the arguments object, the empty reasoning.
    template = conv.template_messages()
    assert template[0] == {"role": "system", "content": None}
    assert template[1] == {"role": "user", "content": "a b"}
    assert template[2] == row["messages"][2]


def test_sharegpt_and_prompt_completion_rows() -> None:
    conv = parse_row({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
    assert [m.role for m in conv.messages] == ["user", "assistant"]
    pc = parse_row({"question": "q?", "answer": "a."}, columns=ColumnMap(prompt="question", completion="answer"))
    assert pc == PromptCompletion(prompt="q?", completion="a.")


def test_labels_not_requested_allows_no_assistant() -> None:
    conv = parse_row({"messages": [{"role": "user", "content": "q"}]}, require_assistant=False)
    assert conv.messages[0].role == "user"
