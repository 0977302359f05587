"""The default label policy on a real Qwen2.5 tokenizer: what is supervised, how it was found, and options."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedline.proto import IGNORE_INDEX, LabelFormat, LabelStrategy, NoSupervisedTokens, SampleTooLong
from feedline.service import CollateOptions, Processor, collate, label_row, tokenize_row
from feedline.service.engine._spans import marker_layout, render_layout
from feedline.service.engine._tokenmask import spans_to_token_mask
from tests.support.chat_templates import CHATML_GENERATION, CHATML_REASONING, CHATML_REWRITING, INST_STYLE
from tests.support.labels import supervised_runs

END = "<|im_end|>"
DEFAULT = CollateOptions()


def _variant(base: Processor, template: str) -> Processor:
    return Processor(f"{base.name}-variant", base.tokenizer, chat_template=template)


@pytest.fixture(scope="module")
def generation_processor(qwen_processor: Processor) -> Processor:
    return _variant(qwen_processor, CHATML_GENERATION)


def _runs(tokenizer, sample) -> list[str]:
    return supervised_runs(tokenizer, sample.input_ids, sample.supervised)


def _chat(*turns: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return {"messages": messages}


# Text that does not start or end with whitespace and holds no special-token strings.
_words = (
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="<>|"),
        min_size=1,
        max_size=40,
    )
    .map(str.strip)
    .filter(bool)
)
_conversations = st.lists(st.tuples(_words, _words), min_size=1, max_size=4)


def test_two_turns_supervise_content_and_end_token(qwen_processor: Processor) -> None:
    row = _chat("Hello there", "Hi! How can I help?", "Add 2+2", "4")
    sample = tokenize_row(qwen_processor, row, DEFAULT)
    assert sample.strategy is LabelStrategy.TURN_MARKERS
    assert _runs(qwen_processor.tokenizer, sample) == ["Hi! How can I help?" + END, "4" + END]
    expected = qwen_processor.tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False)
    assert sample.input_ids.tolist() == list(expected)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=_conversations, system=st.none() | _words)
def test_supervised_runs_are_assistant_content_plus_end(qwen_processor: Processor, pairs, system) -> None:
    turns = [t for pair in pairs for t in pair]
    row = _chat(*turns, system=system)
    sample = tokenize_row(qwen_processor, row, DEFAULT)
    # The tokenizer normalises to NFC, so decoded text is the NFC form of what was sent.
    assert _runs(qwen_processor.tokenizer, sample) == [unicodedata.normalize("NFC", a) + END for _, a in pairs]
    roles = [m["role"] for m in row["messages"]]
    assert all(roles[t] == "assistant" for t in sample.turn_index[sample.supervised])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=_conversations)
def test_marker_scan_agrees_with_prefix_rendering(qwen_processor: Processor, pairs) -> None:
    from feedline.service.engine._conversation import parse_row

    conv = parse_row(_chat(*[t for p in pairs for t in p]))
    messages = conv.template_messages()
    text = qwen_processor.renderer.text(messages)
    _, starts = qwen_processor.encoder.encode_with_offsets(text)
    scanned = marker_layout(text, conv.messages, qwen_processor.markers)
    prefixed = render_layout(qwen_processor.renderer, messages, conv.messages, text, None, qwen_processor.markers)
    assert scanned.assistant == prefixed.assistant
    np.testing.assert_array_equal(
        spans_to_token_mask(text, starts, scanned.assistant), spans_to_token_mask(text, starts, prefixed.assistant)
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=_conversations)
def test_generation_tags_agree_with_turn_markers(qwen_processor, generation_processor, pairs) -> None:
    row = _chat(*[t for p in pairs for t in p])
    tagged = tokenize_row(generation_processor, row, DEFAULT)
    marked = tokenize_row(_variant(qwen_processor, CHATML_REASONING), row, DEFAULT)
    assert tagged.strategy is LabelStrategy.GENERATION_TAGS
    assert marked.strategy is LabelStrategy.TURN_MARKERS
    np.testing.assert_array_equal(tagged.input_ids, marked.input_ids)
    np.testing.assert_array_equal(tagged.supervised, marked.supervised)


def test_template_that_rewrites_earlier_turns_is_labelled(qwen_processor: Processor) -> None:
    proc = _variant(qwen_processor, CHATML_REWRITING)
    row = {
        "messages": [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1", "reasoning_content": "hidden later"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "reasoning_content": "r2"},
        ]
    }
    sample = tokenize_row(proc, row, DEFAULT)
    assert sample.strategy is LabelStrategy.TURN_MARKERS
    assert _runs(proc.tokenizer, sample) == ["a1" + END, "<think>\nr2\n</think>\n\na2" + END]
    masked = tokenize_row(proc, row, CollateOptions(mask_reasoning_content=True))
    assert _runs(proc.tokenizer, masked) == ["a1" + END, "<think>\n", "\n</think>\n\na2" + END]


def test_last_turn_only_is_applied_before_reasoning_holes(qwen_processor: Processor) -> None:
    proc = _variant(qwen_processor, CHATML_REASONING)
    row = {
        "messages": [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "reasoning_content": "because"},
        ]
    }
    opts = CollateOptions(train_on_last_turn_only=True, mask_reasoning_content=True)
    # Both pieces of the last turn survive the hole; the first turn is gone.
    assert _runs(proc.tokenizer, tokenize_row(proc, row, opts)) == ["<think>\n", "\n</think>\n\na2" + END]


def test_inst_style_template_with_one_space_header(qwen_processor: Processor) -> None:
    proc = _variant(qwen_processor, INST_STYLE)
    # A one-space "header" is no anchor: the text that closes the user turn before the content is.
    assert proc.markers.header == " [/INST] " and proc.markers.end == END
    row = _chat("Say yes", "Yes indeed", "And again", "Yes")
    sample = tokenize_row(proc, row, DEFAULT)
    assert sample.strategy is LabelStrategy.TURN_MARKERS
    assert [r.strip() for r in _runs(proc.tokenizer, sample)] == ["Yes indeed" + END, "Yes" + END]


def test_tool_calls_are_supervised_with_the_turn(qwen_processor: Processor) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21C"},
            {"role": "assistant", "content": "It is sunny."},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    }
    sample = tokenize_row(qwen_processor, row, DEFAULT)
    runs = _runs(qwen_processor.tokenizer, sample)
    assert len(runs) == 2 and "get_weather" in runs[0] and runs[0].endswith(END)
    assert runs[1] == "It is sunny." + END
    assert "sunny, 21C" not in "".join(runs)


def test_label_formats(qwen_processor: Processor) -> None:
    row = _chat("q", "the answer")
    sample = tokenize_row(qwen_processor, row, DEFAULT)
    n = sample.num_tokens
    shifted = collate(qwen_processor, [row], CollateOptions(label_format=LabelFormat.SHIFTED)).tensors
    unshifted = collate(qwen_processor, [row], DEFAULT).tensors  # the default policy's default: HF's convention
    loss = collate(qwen_processor, [row], CollateOptions(label_format=LabelFormat.LOSS_MASK)).tensors
    assert shifted["input_ids"].shape == (1, n - 1) and unshifted["input_ids"].shape == (1, n)
    np.testing.assert_array_equal(shifted["labels"][0], unshifted["labels"][0][1:])
    np.testing.assert_array_equal(unshifted["input_ids"][0], sample.input_ids)
    np.testing.assert_array_equal(loss["loss_mask"][0], sample.supervised.astype(np.int64))
    assert (unshifted["labels"][0] != IGNORE_INDEX).sum() == sample.supervised.sum()


def test_padding_and_attention(qwen_processor: Processor) -> None:
    rows = [_chat("q", "short"), _chat("a longer question here", "and a much longer answer than before")]
    batch = collate(qwen_processor, rows, CollateOptions(pad_to_multiple_of=8, label_format="shifted"))
    ids, att, labels = batch.tensors["input_ids"], batch.tensors["attention_mask"], batch.tensors["labels"]
    assert ids.shape[1] % 8 == 0
    n0 = batch.reports[0].num_tokens - 1
    assert att[0, :n0].all() and not att[0, n0:].any()
    assert (ids[0, n0:] == qwen_processor.pad_token_id).all() and (labels[0, n0:] == IGNORE_INDEX).all()
    assert [r.num_label_tokens for r in batch.reports] == [int((row != IGNORE_INDEX).sum()) for row in labels]
    for fmt in LabelFormat:  # padded to max_length means exactly max_length wide, whatever the label format
        fixed = collate(qwen_processor, rows, CollateOptions(max_length=128, padding="max_length", label_format=fmt))
        assert {k: v.shape for k, v in fixed.tensors.items()} == dict.fromkeys(fixed.tensors, (2, 128)), fmt


def test_label_format_follows_the_policy_unless_chosen() -> None:
    """One decision: HF's unshifted labels by default, NeMo's shifted ones under label_policy="nemo"."""
    assert CollateOptions().label_format is LabelFormat.UNSHIFTED
    assert CollateOptions(label_policy="nemo").label_format is LabelFormat.SHIFTED
    assert CollateOptions(label_policy="nemo", label_format="unshifted").label_format is LabelFormat.UNSHIFTED
    base = CollateOptions.from_mapping({"max_length": 64})  # a processor's defaults with no format chosen
    assert CollateOptions.from_mapping({"label_policy": "nemo"}, base=base).label_format is LabelFormat.SHIFTED
    chosen = CollateOptions.from_mapping({"label_format": "loss_mask"})
    assert CollateOptions.from_mapping({"label_policy": "nemo"}, base=chosen).label_format is LabelFormat.LOSS_MASK
    for options in (base, chosen, CollateOptions(label_policy="nemo")):
        assert CollateOptions.from_mapping(options.to_dict()) == options
    assert base.to_dict()["label_format"] is None  # /v1/processors shows a derived format as "follows the policy"


def test_truncation_and_overlong(qwen_processor: Processor) -> None:
    row = _chat("question " * 20, "answer " * 40)
    full = tokenize_row(qwen_processor, row, DEFAULT)
    right = tokenize_row(qwen_processor, row, CollateOptions(max_length=full.num_tokens - 5, truncation="right"))
    assert right.num_tokens == full.num_tokens - 5 and right.truncated == 5 and right.warnings
    np.testing.assert_array_equal(right.input_ids, full.input_ids[:-5])
    left = tokenize_row(qwen_processor, row, CollateOptions(max_length=20, truncation="left"))
    np.testing.assert_array_equal(left.input_ids, full.input_ids[-20:])
    limit = tokenize_row(qwen_processor, _chat("q", "a"), DEFAULT).num_tokens + 2
    with pytest.raises(SampleTooLong) as info:
        tokenize_row(qwen_processor, row, CollateOptions(max_length=limit), index=3)
    assert info.value.sample == 3
    batch = collate(qwen_processor, [row, _chat("q", "a")], CollateOptions(max_length=limit, overlong="drop"))
    assert [r.status for r in batch.reports] == ["dropped", "ok"] and batch.tensors["input_ids"].shape[0] == 1


def test_zero_supervised_tokens_is_an_error_or_a_reported_skip(qwen_processor: Processor) -> None:
    row = _chat("question " * 30, "answer")
    limit = tokenize_row(qwen_processor, _chat("q", "a"), DEFAULT).num_tokens + 2
    opts = CollateOptions(max_length=limit, truncation="right")
    assert label_row(qwen_processor, row, opts).num_label_tokens == 0
    with pytest.raises(NoSupervisedTokens) as info:
        collate(qwen_processor, [_chat("q", "a"), row], opts)
    assert info.value.sample == 1
    batch = collate(
        qwen_processor,
        [_chat("q", "a"), row],
        CollateOptions(max_length=limit, truncation="right", on_zero_labels="skip"),
    )
    assert [r.status for r in batch.reports] == ["ok", "skipped"]
    assert batch.reports[1].error["kind"] == "no_supervised_tokens"


def test_answer_only_off_supervises_everything(qwen_processor: Processor) -> None:
    sample = tokenize_row(qwen_processor, _chat("q", "a"), CollateOptions(answer_only=False))
    assert sample.strategy is LabelStrategy.ALL_TOKENS and sample.supervised.all()


def test_prompt_completion_supervises_completion_and_eos(qwen_processor: Processor) -> None:
    sample = tokenize_row(qwen_processor, {"prompt": "Translate: chat =", "completion": " cat"}, DEFAULT)
    assert sample.strategy is LabelStrategy.PROMPT_COMPLETION
    assert qwen_processor.tokenizer.decode(sample.input_ids[sample.supervised]) == " cat" + END
