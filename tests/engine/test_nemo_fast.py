"""The nemo policy's fast path (one encode of the whole conversation) against its reference (NeMo's own calls:
one HF render and encode per conversation prefix), on real built-in tokenizers.

Every generated row must give the same bytes on both paths (ids, mask, attention, strategy, warnings), or the
same error; rows the fast path cannot prove equal go to the reference path, and the tests check that the
common rows do take the fast path (so a fast path that always handed over would fail here).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedline.proto import FeedlineError
from feedline.service import CollateOptions, Processor, parse_row
from feedline.service.engine.nemo._fast import FAST_PATH
from feedline.service.engine.nemo._labels import nemo_messages, nemo_tokenize, nemo_tokenizer
from feedline.service.engine.nemo._render import TemplateText
from feedline.service.tokenizers.builtin import builtin_tokenizer
from tests.support.chat_templates import CHATML_REASONING, CHATML_REWRITING

TOKENIZERS = ("qwen2.5", "mistral-nemo", "mistral-7b-v3")
# A template with no special token between turns: a prefix ends inside ordinary text, which the fast path
# cannot show to tokenize the same, so it must hand every multi-turn row to the reference path.
PLAIN = "{%- for m in messages %}{{ m.role + ': ' + m.content + '\\n' }}{%- endfor %}"


@pytest.fixture(scope="module")
def processors() -> dict[str, Processor]:
    return {name: Processor(name, builtin_tokenizer(name)) for name in TOKENIZERS}


def _outcome(processor: Processor, row: dict[str, Any], options: CollateOptions, *, fast: bool) -> Any:
    """Everything a sample carries, as bytes, or the error's class and message."""
    try:
        parsed = parse_row(row, require_assistant=options.answer_only)
        s = nemo_tokenize(processor, parsed, options, fast=fast)
    except FeedlineError as exc:
        return type(exc).__name__, str(exc)
    return (
        s.input_ids.tobytes(),
        s.supervised.tobytes(),
        s.attention_mask.tobytes(),
        s.strategy,
        s.warnings,
        s.input_ids.dtype,
        s.supervised.dtype,
    )


def _same(processor: Processor, row: dict[str, Any], options: CollateOptions) -> dict[str, int]:
    """Assert both paths agree; return how the fast path handled the row."""
    FAST_PATH.reset()
    fast = _outcome(processor, row, options, fast=True)
    taken = FAST_PATH.snapshot()
    assert fast == _outcome(processor, row, options, fast=False)
    return taken


# Unicode text: every script, emoji, combining marks, whitespace runs, and now and then a special token's
# text inside content (tokenized as that special token by both paths).
_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", " ", "\n\n", "a  b", "é", "e\u0301", "日本語のテキスト", "🙂👍🏽", "<|im_end|>", "[INST]", "</s>", " x ", "\t"]
)
_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@st.composite
def _chats(draw: st.DrawFn) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_text)})
    tools = draw(st.booleans())
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(_text)})
        if tools and draw(st.booleans()):
            arguments = {"city": draw(_text)}
            messages.append(
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "abcdefghi",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": arguments},
                        }
                    ],
                }
            )
            messages.append({"role": "tool", "tool_call_id": "abcdefghi", "content": draw(_text)})
        answer: dict[str, Any] = {"role": "assistant", "content": draw(_text)}
        if draw(st.booleans()):
            answer["reasoning_content"] = draw(_text)
        messages.append(answer)
    row: dict[str, Any] = {"messages": messages}
    if tools:
        row["tools"] = [_TOOL]
    return row


_options = st.builds(
    lambda answer_only, last, reasoning, limit, padding, truncation: CollateOptions.from_mapping(
        {
            "label_policy": "nemo",
            "answer_only": answer_only,
            "train_on_last_turn_only": last,
            "mask_reasoning_content": reasoning,
            "max_length": limit,
            "padding": padding if limit else "longest",
            "truncation": truncation if limit else "none",
        }
    ),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.none() | st.integers(8, 200),
    st.sampled_from(["longest", "max_length"]),
    st.sampled_from(["none", "right"]),
)


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=_chats(), options=_options)
def test_fast_path_equals_reference(
    processors: dict[str, Processor], name: str, row: dict[str, Any], options: CollateOptions
) -> None:
    _same(processors[name], row, options)


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=_chats(), cut=st.integers(1, 12))
def test_fast_renders_are_apply_chat_templates_text(
    processors: dict[str, Processor], name: str, row: dict[str, Any], cut: int
) -> None:
    """The fast path's renderer gives ``apply_chat_template(tokenize=False)``'s text, or the same error, for every
    conversation and prefix (NeMo's messages: tool calls with ids, dict arguments serialised)."""
    tokenizer = nemo_tokenizer(processors[name])
    messages = nemo_messages(parse_row(row))[:cut]
    tools = row.get("tools")

    def outcome(render: Any) -> Any:
        try:
            return render()
        except Exception as exc:  # noqa: BLE001 - the error itself is compared
            return type(exc).__name__, str(exc)

    want = outcome(lambda: tokenizer.apply_chat_template(messages, tools=tools, tokenize=False))
    assert outcome(lambda: TemplateText(tokenizer)(messages, tools, None)) == want


@pytest.mark.parametrize("name", TOKENIZERS)
def test_plain_chats_take_the_fast_path(processors: dict[str, Processor], name: str) -> None:
    """Multi-turn chats without a system prompt: every prefix ends at a special token, so no hand-over."""
    row = {
        "messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4, of course."},
            {"role": "user", "content": "And 3 × 3 in 日本語?"},
            {"role": "assistant", "content": "九 🙂"},
        ]
    }
    assert _same(processors[name], row, CollateOptions.from_mapping({"label_policy": "nemo"})) == {"fast": 1}


def test_qwen_tools_and_system_take_the_fast_path(processors: dict[str, Processor]) -> None:
    row = {
        "tools": [_TOOL],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ],
    }
    assert _same(processors["qwen2.5"], row, CollateOptions.from_mapping({"label_policy": "nemo"})) == {"fast": 1}


def test_mistral_system_prompt_goes_to_the_reference_and_raises_nemos_error(processors: dict[str, Processor]) -> None:
    """Mistral templates put the system prompt in the last user turn, so prefixes are not text prefixes."""
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2"},
        ]
    }
    taken = _same(processors["mistral-nemo"], row, CollateOptions.from_mapping({"label_policy": "nemo"}))
    assert taken == {"reference: a prefix renders differently inside the whole conversation": 1}
    assert (
        _outcome(processors["mistral-nemo"], row, CollateOptions.from_mapping({"label_policy": "nemo"}), fast=True)[0]
        == "TemplateError"
    )


def test_truncation_that_cuts_goes_to_the_reference(processors: dict[str, Processor]) -> None:
    row = {"messages": [{"role": "user", "content": "hello " * 20}, {"role": "assistant", "content": "bye " * 20}]}
    cut = CollateOptions.from_mapping({"label_policy": "nemo", "max_length": 16, "truncation": "right"})
    assert _same(processors["qwen2.5"], row, cut) == {"reference: truncation cuts the sample": 1}
    roomy = CollateOptions.from_mapping(
        {"label_policy": "nemo", "max_length": 400, "truncation": "right", "padding": "max_length"}
    )
    assert _same(processors["qwen2.5"], row, roomy) == {"fast": 1}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (PLAIN, "reference: a prefix ends inside ordinary text"),
        (CHATML_REWRITING, "reference: a prefix renders differently inside the whole conversation"),
    ],
)
def test_unprovable_prefixes_go_to_the_reference(template: str, expected: str) -> None:
    processor = Processor("variant", builtin_tokenizer("qwen2.5"), chat_template=template)
    row = {
        "messages": [
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
            {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2", "reasoning_content": "r2"},
        ]
    }
    assert _same(processor, row, CollateOptions.from_mapping({"label_policy": "nemo"})) == {expected: 1}


def test_reasoning_holes_on_the_fast_path(processors: dict[str, Processor]) -> None:
    processor = Processor("variant", builtin_tokenizer("qwen2.5"), chat_template=CHATML_REASONING)
    row = {
        "messages": [
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1", "reasoning_content": "think 1"},
            {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2", "reasoning_content": "think 2"},
        ]
    }
    options = CollateOptions.from_mapping({"label_policy": "nemo", "mask_reasoning_content": True})
    assert _same(processor, row, options) == {"fast": 1}
    holed = nemo_tokenize(processor, parse_row(row), options).supervised
    whole = nemo_tokenize(processor, parse_row(row), CollateOptions.from_mapping({"label_policy": "nemo"})).supervised
    assert (holed <= whole).all() and holed.sum() < whole.sum()  # the reasoning holes are there
