"""The independent check itself: its expected text matches the published formats, and it rejects wrong labels.

These tests do not involve feedline's engine; they pin the oracle that tests/test_real_templates.py applies to it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from tests.support.chat_formats.conversations import TOOLS, conversations
from tests.support.chat_formats.oracle import LabelMismatch, check_labels, expected_labels
from tests.support.chat_formats.registry import FAMILIES, family
from tests.support.chat_formats.tokenizers import family_tokenizer


def _chat(system: bool = False) -> dict:
    messages = [{"role": "system", "content": "Be brief."}] if system else []
    messages += [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2"},
        {"role": "assistant", "content": "4"},
    ]
    return {"messages": messages}


# Per family, the text each assistant turn of _chat() supervises, read off the published format by hand: the body
# and its closer, without the header, the generation prompt's forced prefix or a trailing eos.
PUBLISHED = {
    "qwq": ["Hello<|im_end|>", "4<|im_end|>"],  # prompt ends "<|im_start|>assistant\n<think>\n"
    "deepseek_r1": ["Hello<｜end▁of▁sentence｜>", "4<｜end▁of▁sentence｜>"],  # prompt ends "<｜Assistant｜><think>\n"
    "olmo3_think": ["Hello<|im_end|>", "4<|endoftext|>"],  # last turn closes with eos
    "olmo2": ["Hello<|endoftext|>", "4<|endoftext|>"],
    "phi3_5": ["Hello<|end|>", "4<|end|>"],  # the render's final eos is not the turn's
    "phi4_mini_tagged": ["Hello<|end|>", "4<|end|>"],  # generation tags around the header and the eos ignored
    "alpaca": ["\nHello</s>", "\n4</s>"],  # prompt ends "### Response:", history "### Response:\n"
    "vicuna": [" Hello</s>", " 4</s>"],  # prompt ends "ASSISTANT:", history "ASSISTANT: "
    "falcon": [" Hello", " 4"],  # no closer in this format
    "llama2": [" Hello </s>", " 4 </s>"],  # no generation prompt: the model is prompted up to "[/INST]"
    "mistral_v1": ["Hello</s>", "4</s>"],
    "gpt_oss": ["<|channel|>final<|message|>Hello<|end|>", "<|channel|>final<|message|>4<|return|>"],
    "nemotron_nano_v2": ["Hello\n<SPECIAL_12>", "4\n<SPECIAL_12>"],  # last turn's injected "<think>\n\n" excluded
    "qwen3": ["Hello<|im_end|>", "<think>\n\n</think>\n\n4<|im_end|>"],  # reasoning block is the model's output
    "yi": ["Hello<|im_end|>", "4<|im_end|>"],  # the user turn writes the assistant header
    "llama3_1_nemo": ["Hello<|eot_id|>", "4<|eot_id|>"],  # the closer outside the generation block is supervised
    "marin": ["Hello<|eot_id|>", "4<|eot_id|>"],
    "command_r": ["Hello<|END_OF_TURN_TOKEN|>", "4<|END_OF_TURN_TOKEN|>"],
    "gemma2": ["Hello<end_of_turn>", "4<end_of_turn>"],
    "em_german_leo": ["Hello", "4"],  # prompt ends "ASSISTANT: ", no closer
    "zephyr_gemma": ["Hello<|im_end|>", "4<|im_end|>"],  # the eos after the last turn is not its closer
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_expected_text_follows_the_published_format(name: str) -> None:
    assert expected_labels(_chat(system=family(name).system and name != "gemma2"), name).texts() == PUBLISHED[name]


def test_mistral_system_prompt_in_the_last_user_turn_does_not_move_the_spans() -> None:
    exp = expected_labels(_chat(system=True), "mistral_v3")
    assert exp.texts() == [" Hello</s>", " 4</s>"]
    assert "[INST] Be brief.\n\n2+2[/INST]" in exp.rendered


def test_template_that_needs_tools_is_checked_with_tools() -> None:
    row = {**_chat(), "tools": TOOLS}
    assert expected_labels(row, "hermes_tool_use").texts() == ["Hello<|im_end|>", "4<|im_end|>"]


def test_turn_after_tool_outputs_has_no_assistant_header() -> None:
    call = {
        "id": "abcdefghi",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Zürich"}, ensure_ascii=False)},
    }
    row = {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "abcdefghi", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ],
    }
    texts = expected_labels(row, "deepseek_v3").texts()
    assert texts[0].startswith("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather")
    assert texts[0].endswith('{"city": "Zürich"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>')
    assert texts[1] == "Sunny.<｜end▁of▁sentence｜>"  # "<｜tool▁outputs▁end｜>" before it is the prompt's


def test_check_accepts_exactly_the_expected_tokens() -> None:
    row = _chat(system=True)
    exp = expected_labels(row, "qwq")
    check_labels(exp.ids, exp.must, row, "qwq")
    labels = np.where(exp.must, np.asarray(exp.ids), -100)
    check_labels(exp.ids, labels, row, "qwq")  # unshifted labels work too


def test_check_rejects_a_supervised_header_a_missing_closer_and_other_ids() -> None:
    row = _chat()
    exp = expected_labels(row, "qwq")
    tok = family_tokenizer("qwq")
    first = int(np.flatnonzero(exp.must)[0])
    with_header = exp.must.copy()
    with_header[first - 1] = True  # the "\n" of "<|im_start|>assistant\n"
    with pytest.raises(LabelMismatch, match="supervised unexpectedly"):
        check_labels(exp.ids, with_header, row, "qwq")
    without_closer = exp.must.copy()
    without_closer[exp.ids.index(tok.convert_tokens_to_ids("<|im_end|>"), first)] = False
    with pytest.raises(LabelMismatch, match="not supervised"):
        check_labels(exp.ids, without_closer, row, "qwq")
    with pytest.raises(LabelMismatch, match="ids differ"):
        check_labels(exp.ids[:-1] + [0], exp.must, row, "qwq")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_spans_are_ordered_hold_each_answer_and_end_with_a_closer(name: str) -> None:
    fam = family(name)

    @settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(row=conversations(fam))
    def check(row: dict) -> None:
        exp = expected_labels(row, name)
        assistants = [i for i, m in enumerate(row["messages"]) if m["role"] == "assistant"]
        assert [s.message for s in exp.spans] == assistants
        assert all(a.end <= b.start for a, b in zip(exp.spans, exp.spans[1:], strict=False))
        for span in exp.spans:
            text, content = span.text(exp.rendered), row["messages"][span.message]["content"]
            if content:
                assert content in text
            if fam.closers:  # or the turn's own text, where the format closes that turn with nothing
                assert text.endswith(fam.closers) or (content and text.endswith(content.strip()))
        assert exp.must.any()

    check()


def test_a_turn_whose_only_token_straddles_the_header_must_still_be_supervised() -> None:
    row = _chat()
    exp = expected_labels(row, "em_german_leo")  # "ASSISTANT: Hello": one piece "▁Hello" holds the prompt's space
    nothing = np.zeros(len(exp.ids), dtype=bool)
    with pytest.raises(LabelMismatch, match="nothing supervised"):
        check_labels(exp.ids, nothing, row, "em_german_leo")
    check_labels(exp.ids, exp.may, row, "em_german_leo")
