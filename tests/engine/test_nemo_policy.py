"""The nemo label policy on a real Qwen2.5 tokenizer, rule by rule against nemo_reference.md §1 and §7.

Expected values come from the rules the spec states (what a prefix render adds, the content-length rule, the
left-padding shift, ...) written out on the tokens of the real vocabulary, not from a second implementation.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedline.proto import IGNORE_INDEX, InvalidOptions, InvalidSample, LabelStrategy, TemplateError
from feedline.service import CollateOptions, Processor, collate, parse_row, tokenize_row
from feedline.service.collate._batch import batch_pad_id
from feedline.service.engine.nemo._chat import (
    find_reasoning_span,
    is_render_prefix,
    keep_last_run,
    prefix_assistant_mask,
    shift_for_left_padding,
    window_offset,
)
from feedline.service.engine.nemo._labels import content_attention, nemo_pad_token_id, nemo_tokenize
from feedline.service.tokenizers.builtin import builtin_tokenizer
from tests.support.chat_templates import CHATML_GENERATION, CHATML_REASONING, QWEN3
from tests.support.labels import supervised_runs

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
NEMO = CollateOptions.from_mapping({"label_policy": "nemo"})
HEADER = IM_START + "assistant\n"
# The generation-tag template with reasoning rendered inside the generation block.
GENERATION_REASONING = CHATML_GENERATION.replace(
    "{% generation %}{{ m.content",
    "{% generation %}{% if m.reasoning_content %}{{ '<think>' + m.reasoning_content + '</think>' }}{% endif %}"
    "{{ m.content",
)


def _opts(**kw: Any) -> CollateOptions:
    return CollateOptions.from_mapping({"label_policy": "nemo", **kw})


@pytest.fixture(scope="module")
def tok() -> Any:
    return builtin_tokenizer("qwen2.5")


@pytest.fixture(scope="module")
def qwen(tok: Any) -> Processor:
    """The builtin Qwen2.5 tokenizer and its ChatML template, which has no {% generation %} tags."""
    return Processor("qwen2.5", tok)


def _with(tok: Any, template: str | None = None, **attrs: Any) -> Processor:
    """A processor over a copy of the tokenizer with some attributes changed (pad token, padding side ...)."""
    if not attrs:
        return Processor("variant", tok, chat_template=template)
    changed = copy.deepcopy(tok)
    for name, value in attrs.items():
        setattr(changed, name, value)
    return Processor("variant", changed, chat_template=template)


def _nemo(proc: Processor, row: dict, opts: CollateOptions = NEMO, index: int = 0):
    return nemo_tokenize(proc, parse_row(row, index=index, require_assistant=opts.answer_only), opts, index=index)


_runs = supervised_runs


def _fields(sample) -> tuple[np.ndarray, np.ndarray]:
    return sample.input_ids, sample.supervised


def _chat(*turns: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return {"messages": messages}


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------------------------------------------------------
# §1.2 the prefix-arithmetic fallback (Qwen2.5's template has no generation tags)


def test_fallback_supervises_role_header_turn_end_and_newline(qwen: Processor, tok: Any) -> None:
    row = _chat("Hello there", "Hi! How can I help?", "Add 2+2", "4")
    sample = _nemo(qwen, row)
    assert sample.strategy is LabelStrategy.PREFIX_RENDER
    assert sample.input_ids.tolist() == list(tok.apply_chat_template(row["messages"], return_dict=False))
    # Each assistant span is what render(msgs[:k+1]) adds to render(msgs[:k]): header, content, <|im_end|>, "\n".
    assert _runs(tok, sample.input_ids, sample.supervised) == [
        HEADER + "Hi! How can I help?" + IM_END + "\n",
        HEADER + "4" + IM_END + "\n",
    ]


# Text without leading/trailing whitespace and without special-token strings.
_words = (
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="<>|"),
        min_size=1,
        max_size=30,
    )
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(_words, _words), min_size=1, max_size=4), system=st.none() | _words)
def test_fallback_is_assistant_policy_plus_headers(qwen: Processor, tok: Any, pairs, system) -> None:
    row = _chat(*[t for pair in pairs for t in pair], system=system)
    nemo = _nemo(qwen, row)
    default = tokenize_row(qwen, row, CollateOptions())
    np.testing.assert_array_equal(nemo.input_ids, default.input_ids)
    assert not (default.supervised & ~nemo.supervised).any()  # nemo supervises a superset
    extra = nemo.supervised & ~default.supervised
    header, newline = _ids(tok, HEADER), _ids(tok, "\n")
    starts = [t for t in range(len(nemo.input_ids) - 2) if nemo.input_ids[t : t + 3].tolist() == header]
    assert len(starts) == len(pairs)
    expected_extra = np.zeros_like(extra)
    for t in starts:
        expected_extra[t : t + 3] = True  # <|im_start|> assistant \n
    ends = np.flatnonzero(nemo.input_ids == tok.convert_tokens_to_ids(IM_END))
    for t in ends:
        if nemo.supervised[t]:
            assert nemo.input_ids[t + 1 : t + 2].tolist() == newline
            expected_extra[t + 1] = True  # the newline after a supervised <|im_end|>
    np.testing.assert_array_equal(extra, expected_extra)
    # Shifted labels are the next token wherever the next token is supervised (NeMo's [1:] shift).
    batch = collate(qwen, [row], NEMO).tensors
    ids = nemo.input_ids
    expected = np.where(nemo.supervised[1:], ids[1:], IGNORE_INDEX)
    np.testing.assert_array_equal(batch["labels"][0], expected)
    np.testing.assert_array_equal(batch["input_ids"][0], ids[:-1])
    assert batch["attention_mask"][0].all()


def test_full_length_seed_saves_one_render_and_changes_nothing() -> None:
    """§7: four messages of two tokens each give [0,0,1,1,0,0,1,1], with one render fewer when seeded."""
    calls: list[int] = []

    def render(n: int) -> list[int]:
        calls.append(n)
        return list(range(2 * n))

    roles = ["user", "assistant", "user", "assistant"]
    full = list(range(8))
    seeded = prefix_assistant_mask(render, roles, 8, full, eos_token_id=None)
    seeded_calls = len(calls)
    calls.clear()
    baseline = prefix_assistant_mask(render, roles, 8, full, eos_token_id=None, seed_full_length=False)
    assert seeded.astype(int).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    np.testing.assert_array_equal(seeded, baseline)
    assert seeded_calls == len(calls) - 1
    assert len(set(calls)) == len(calls)  # memoised: each prefix rendered once


def test_fallback_needs_an_assistant_message(qwen: Processor) -> None:
    with pytest.raises(InvalidSample):
        prefix_assistant_mask(lambda n: [], ["user", "user"], 4, [1, 2, 3, 4], eos_token_id=None)
    with pytest.raises(InvalidSample) as info:
        _nemo(qwen, {"messages": [{"role": "user", "content": "only a question"}]}, index=4)
    assert info.value.sample == 4


def test_prefix_consistency_truth_table() -> None:
    eos = 9
    assert is_render_prefix([], [1, 2, 3], eos)
    assert is_render_prefix([1, 2], [1, 2, 3], eos)
    assert not is_render_prefix([1, 5], [1, 2, 3], eos)
    assert not is_render_prefix([1, 2, 3, 4], [1, 2, 3], eos)
    assert is_render_prefix([1, 9], [1, 2, 3], eos)  # a trailing EOS may differ ...
    assert not is_render_prefix([9], [1, 2, 3], eos)  # ... but not when it is the only token
    assert not is_render_prefix([1, 8], [1, 2, 3], eos)


def test_qwen3_template_rewrites_earlier_turns_and_is_refused(tok: Any) -> None:
    proc = Processor("qwen3-template", tok, chat_template=QWEN3)
    row = _chat("q1", "a1", "q2", "a2")
    with pytest.raises(TemplateError) as info:
        _nemo(proc, row, index=5)
    assert info.value.sample == 5 and "rewrites earlier turns" in info.value.message
    assert "{% generation %}" in info.value.message
    with pytest.raises(TemplateError):
        collate(proc, [row], NEMO)
    # One exchange renders consistently: the turn (with its empty think block) is supervised from the header on.
    single = _nemo(proc, _chat("q1", "a1"))
    assert _runs(tok, single.input_ids, single.supervised) == [HEADER + "<think>\n\n</think>\n\na1" + IM_END + "\n"]


def test_tool_call_turns_are_supervised_whole(qwen: Processor, tok: Any) -> None:
    call = {"id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21C"},
            {"role": "assistant", "content": "It is sunny."},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    }
    sample = _nemo(qwen, row)
    runs = _runs(tok, sample.input_ids, sample.supervised)
    assert len(runs) == 2
    assert runs[0].startswith(IM_START + "assistant") and '"get_weather"' in runs[0] and runs[0].endswith(IM_END + "\n")
    assert runs[1] == HEADER + "It is sunny." + IM_END + "\n"
    assert "sunny, 21C" not in "".join(runs)


# ---------------------------------------------------------------------------------------------------------------
# §1.1 step 5: the {% generation %} mask, detected with NeMo's regex


def test_generation_template_uses_hf_assistant_mask(tok: Any) -> None:
    proc = Processor("gen", tok, chat_template=CHATML_GENERATION)
    row = _chat("q1", "first answer", "q2", "second")
    sample = _nemo(proc, row)
    assert sample.strategy is LabelStrategy.GENERATION_TAGS
    hf = tok.apply_chat_template(
        row["messages"], chat_template=CHATML_GENERATION, return_dict=True, return_assistant_tokens_mask=True
    )
    amask = hf["assistant_masks"]
    assert sample.supervised.astype(int).tolist() == list(amask)
    labels = collate(proc, [row], NEMO).tensors["labels"][0].tolist()
    ids = hf["input_ids"]
    assert labels == [ids[i + 1] if amask[i + 1] else IGNORE_INDEX for i in range(len(ids) - 1)]
    role = tok.convert_tokens_to_ids("assistant")
    assert role not in labels and tok.convert_tokens_to_ids(IM_START) not in labels
    # NeMo checks the keyword before answer_only: the generation mask is used even with answer_only off.
    everything = _nemo(proc, row, _opts(answer_only=False))
    np.testing.assert_array_equal(everything.supervised, sample.supervised)


def test_generation_tag_without_whitespace_is_not_detected(tok: Any) -> None:
    """NeMo's regex needs whitespace inside the tag, so `{%generation%}` falls back to prefix arithmetic."""
    tight = CHATML_GENERATION.replace("{% generation %}", "{%generation%}").replace(
        "{% endgeneration %}", "{%endgeneration%}"
    )
    sample = _nemo(Processor("tight", tok, chat_template=tight), _chat("q", "a"))
    assert sample.strategy is LabelStrategy.PREFIX_RENDER
    assert _runs(tok, sample.input_ids, sample.supervised) == [HEADER + "a" + IM_END + "\n"]


def test_answer_only_off_supervises_every_token(qwen: Processor) -> None:
    sample = _nemo(qwen, _chat("q", "a"), _opts(answer_only=False))
    assert sample.strategy is LabelStrategy.ALL_TOKENS and sample.supervised.all()


# ---------------------------------------------------------------------------------------------------------------
# §1.1 steps 6-8: attention zeroing, last turn only, reasoning holes (and their order)


def test_last_turn_only_keeps_the_final_run(qwen: Processor, tok: Any) -> None:
    sample = _nemo(qwen, _chat("q1", "a1", "q2", "a2"), _opts(train_on_last_turn_only=True))
    assert _runs(tok, sample.input_ids, sample.supervised) == [HEADER + "a2" + IM_END + "\n"]


def test_keep_last_run_cases() -> None:
    def run(bits: str) -> str:
        return "".join(str(int(b)) for b in keep_last_run(np.array([c == "1" for c in bits])))

    assert run("0110011100") == "0000011100"
    assert run("0011100") == "0011100"
    assert run("0000") == "0000"
    assert run("1101") == "0001"


def test_reasoning_hole_is_what_emptying_the_field_changes(tok: Any) -> None:
    proc = Processor("reasoning", tok, chat_template=CHATML_REASONING)
    row = {
        "messages": [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1", "reasoning_content": "first thought"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "reasoning_content": "second thought"},
        ]
    }
    plain = _nemo(proc, row)
    assert _runs(tok, plain.input_ids, plain.supervised) == [
        HEADER + "<think>\nfirst thought\n</think>\n\na1" + IM_END + "\n",
        HEADER + "<think>\nsecond thought\n</think>\n\na2" + IM_END + "\n",
    ]
    # The template drops the <think> wrapper for an empty field, so the wrapper is part of the hole (§1.3).
    masked = _nemo(proc, row, _opts(mask_reasoning_content=True))
    assert _runs(tok, masked.input_ids, masked.supervised) == [
        HEADER,
        "a1" + IM_END + "\n",
        HEADER,
        "a2" + IM_END + "\n",
    ]
    # Last turn only runs before the holes: the last turn keeps both its head and its tail (§7 regression).
    last = _nemo(proc, row, _opts(mask_reasoning_content=True, train_on_last_turn_only=True))
    assert _runs(tok, last.input_ids, last.supervised) == [HEADER, "a2" + IM_END + "\n"]


def test_reasoning_hole_with_generation_tags(tok: Any) -> None:
    proc = Processor("gen-reasoning", tok, chat_template=GENERATION_REASONING)
    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "answer", "reasoning_content": "mull it over"},
        ]
    }
    assert _runs(tok, *_fields(_nemo(proc, row))) == ["<think>mull it over</think>answer" + IM_END]
    assert _runs(tok, *_fields(_nemo(proc, row, _opts(mask_reasoning_content=True)))) == ["answer" + IM_END]


def test_rewritten_early_reasoning_is_skipped_with_a_warning(tok: Any) -> None:
    """Qwen3 drops the first turn's reasoning from the full render: no diff, a warning, and only the final
    turn's reasoning is masked (answer_only off, since the prefix fallback refuses this template)."""
    proc = Processor("qwen3-template", tok, chat_template=QWEN3)
    row = {
        "messages": [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1", "reasoning_content": "early idea"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "reasoning_content": "late idea"},
        ]
    }
    sample = _nemo(proc, row, _opts(answer_only=False, mask_reasoning_content=True))
    assert "could not isolate reasoning_content tokens for assistant message 1" in sample.warnings
    holes = _runs(tok, sample.input_ids, ~sample.supervised)
    assert len(holes) == 1 and "late idea" in holes[0] and holes[0] in "<think>\nlate idea\n</think>"
    assert "early idea" not in tok.decode(sample.input_ids)


def test_reasoning_mask_when_a_header_depends_on_the_message_count(tok: Any) -> None:
    counted = "{{ '<|im_start|>system\\nturns: ' + (messages|length)|string + '<|im_end|>\\n' }}" + GENERATION_REASONING
    proc = Processor("counted", tok, chat_template=counted)
    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "yes", "reasoning_content": "ponder"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "no", "reasoning_content": "again"},
        ]
    }
    sample = _nemo(proc, row, _opts(mask_reasoning_content=True))
    assert _runs(tok, sample.input_ids, sample.supervised) == ["yes" + IM_END, "no" + IM_END]


def test_reasoning_unused_by_template_warns(qwen: Processor) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "reasoning_content": "never rendered"},
        ]
    }
    sample = _nemo(qwen, row, _opts(mask_reasoning_content=True))
    assert "reasoning_content is present but the chat template never mentions it" in sample.warnings
    assert "could not isolate reasoning_content tokens for assistant message 1" in sample.warnings


@pytest.mark.parametrize("side", ["right", "left"])
def test_reasoning_holes_map_onto_truncated_ids(tok: Any, side: str) -> None:
    proc = _with(tok, CHATML_REASONING, truncation_side=side)
    row = {
        "messages": [
            {"role": "user", "content": "q1 " * 6},
            {"role": "assistant", "content": "a1", "reasoning_content": "one two three"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2", "reasoning_content": "four five six"},
        ]
    }
    everything = _opts(answer_only=False, mask_reasoning_content=True)
    full = _nemo(proc, row, everything)
    keep = full.num_tokens - 12
    cut = _nemo(proc, row, _opts(answer_only=False, mask_reasoning_content=True, max_length=keep, truncation="right"))
    window = slice(0, keep) if side == "right" else slice(full.num_tokens - keep, None)
    np.testing.assert_array_equal(cut.input_ids, full.input_ids[window])
    np.testing.assert_array_equal(cut.supervised, full.supervised[window])
    assert (~cut.supervised).any()


def test_reasoning_window_must_be_prefix_or_suffix() -> None:
    assert window_offset([1, 2], [1, 2, 3, 4]) == 0
    assert window_offset([3, 4], [1, 2, 3, 4]) == 2
    with pytest.raises(TemplateError, match="not a contiguous prefix or suffix"):
        window_offset([2, 3], [1, 2, 3, 4])
    assert find_reasoning_span([1, 2, 3], [1, 2, 3]) is None
    assert find_reasoning_span([1, 7, 8, 3], [1, 3]) == (1, 3)


# ---------------------------------------------------------------------------------------------------------------
# §1.4 left padding and §1.1 _package_tokenized_example: content length, padding, pad ids


def test_left_padding_shift_cases() -> None:
    mask = np.array([1, 1, 0, 0], dtype=bool)
    assert shift_for_left_padding(mask, "right", np.array([1, 1, 0, 0])) is mask
    assert shift_for_left_padding(mask, None, np.array([1, 1, 0, 0])) is mask
    assert shift_for_left_padding(mask, "left", None) is mask
    assert shift_for_left_padding(mask, "left", np.ones(4)) is mask
    shifted = shift_for_left_padding(mask, "left", np.array([0, 0, 1, 1]))
    assert shifted.astype(int).tolist() == [0, 0, 1, 1]
    assert not shift_for_left_padding(mask, "left", np.zeros(4)).any()
    assert shift_for_left_padding(np.array([1, 0, 0], bool), "left", np.array([0, 0, 1])).tolist() == [
        False,
        False,
        True,
    ]


def test_content_length_rule() -> None:
    eos, pad = 7, 0
    assert content_attention(np.array([1, 2, 0]), None, eos).tolist() == [1, 1, 1]  # no pad id: all ones
    assert content_attention(np.array([1, 2, 3, 0, 0]), pad, eos).tolist() == [1, 1, 1, 0, 0]
    # pad == eos: the first token of the trailing run is the real EOS and stays attended.
    assert content_attention(np.array([1, 2, 7, 7, 7]), eos, eos).tolist() == [1, 1, 1, 0, 0]
    assert content_attention(np.array([7, 7, 7, 7]), eos, eos)[1:].tolist() == [0, 0, 0]  # shifted: [0,0,0]
    assert content_attention(np.array([5]), pad, eos)[1:].tolist() == []  # one token: empty shifted output
    # Only trailing pads count: left padding stays attended (the defect of PR #3704).
    assert content_attention(np.array([0, 0, 1, 2]), pad, eos).tolist() == [1, 1, 1, 1]


def test_max_length_padding_matches_package_rules(qwen: Processor, tok: Any) -> None:
    row = _chat("q", "answer")
    content = list(tok.apply_chat_template(row["messages"], return_dict=False))
    c = len(content)
    length = c + 9
    pad = tok.convert_tokens_to_ids(ENDOFTEXT)
    assert nemo_pad_token_id(qwen) == pad
    shifted = collate(qwen, [row], _opts(max_length=length, padding="max_length")).tensors
    unpadded = collate(qwen, [row], NEMO).tensors
    # Shifted lists are padded back to seq_length: input ids[:-1] then pads, attention content_len = c - 1.
    assert shifted["input_ids"][0].tolist() == content + [pad] * (length - c)
    assert shifted["attention_mask"][0].tolist() == [1] * (c - 1) + [0] * (length - c + 1)
    assert (shifted["labels"][0, c - 1 :] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(shifted["labels"][0, : c - 1], unpadded["labels"][0])
    assert unpadded["attention_mask"][0].tolist() == [1] * (c - 1)  # same content length unpadded
    # Unshifted (dLLM) format: full-length ids, 0/1 loss mask, attention without the minus one.
    loss = collate(qwen, [row], _opts(max_length=length, padding="max_length", label_format="loss_mask")).tensors
    assert loss["input_ids"][0].tolist() == content + [pad] * (length - c)
    assert loss["attention_mask"][0].tolist() == [1] * c + [0] * (length - c)
    sample = _nemo(qwen, row)
    assert loss["loss_mask"][0].tolist() == sample.supervised.astype(int).tolist() + [0] * (length - c)


def test_truncated_to_seq_length_has_no_spurious_eos(qwen: Processor, tok: Any) -> None:
    row = _chat("q", "a rather long answer that will not fit")
    n = _nemo(qwen, row).num_tokens
    whole = collate(qwen, [row], NEMO).tensors["labels"][0]
    assert tok.convert_ids_to_tokens(whole[-2:].tolist()) == [IM_END, "Ċ"]  # untruncated: EOS supervised
    opts = _opts(max_length=n - 4, truncation="right", padding="max_length")
    cut = collate(qwen, [row], opts).tensors
    assert cut["input_ids"].shape == (1, n - 4)
    assert cut["labels"][0, -1] == IGNORE_INDEX and cut["attention_mask"][0, -1] == 0
    assert IM_END not in tok.convert_ids_to_tokens(cut["labels"][0][cut["labels"][0] >= 0].tolist())


def test_truncation_clips_fallback_spans(qwen: Processor) -> None:
    row = _chat("q1", "first", "q2", "second answer is long")
    full = _nemo(qwen, row)
    cut = _nemo(qwen, row, _opts(max_length=full.num_tokens - 3, truncation="right"))
    np.testing.assert_array_equal(cut.input_ids, full.input_ids[:-3])
    np.testing.assert_array_equal(cut.supervised, full.supervised[:-3])


def test_left_truncation_is_refused(qwen: Processor) -> None:
    with pytest.raises(InvalidOptions) as info:
        _nemo(qwen, _chat("q", "a"), _opts(max_length=8, truncation="left"))
    assert info.value.field == "truncation" and "truncation_side" in info.value.message


def test_overlong_sample_is_emitted_unchanged(qwen: Processor) -> None:
    row = _chat("question " * 10, "answer " * 10)
    n = _nemo(qwen, row).num_tokens
    opts = _opts(max_length=16, padding="max_length")
    sample = tokenize_row(qwen, row, opts)
    assert sample.num_tokens == n and any("exceed max_length 16" in w for w in sample.warnings)
    batch = collate(qwen, [row, _chat("q", "a")], opts)
    assert batch.tensors["input_ids"].shape == (2, n - 1)


def test_pad_equal_to_eos(tok: Any) -> None:
    proc = _with(tok, pad_token=IM_END)
    eos = tok.convert_tokens_to_ids(IM_END)
    assert nemo_pad_token_id(proc) == eos
    row = _chat("q", "yes")
    content = list(tok.apply_chat_template(row["messages"], return_dict=False))
    c = len(content)
    length = c + 8
    batch = collate(proc, [row], _opts(max_length=length, padding="max_length")).tensors
    labels = batch["labels"][0]
    assert batch["input_ids"][0].tolist() == content + [eos] * (length - c)
    assert labels[c - 3] == eos and labels[c - 2] == tok.convert_tokens_to_ids("Ċ")  # the real EOS is supervised
    assert (labels[c - 1 :] == IGNORE_INDEX).all()  # pads are never eos labels
    # The first trailing eos counts as content: content = c + 1, so the shifted mask has c ones.
    assert batch["attention_mask"][0].tolist() == [1] * c + [0] * (length - c)


def test_pad_id_zero_becomes_eos(tok: Any) -> None:
    proc = _with(tok, pad_token="!")
    assert proc.tokenizer.pad_token_id == 0
    eos = tok.convert_tokens_to_ids(IM_END)
    assert nemo_pad_token_id(proc) == eos
    row = _chat("q", "yes")
    c = len(tok.apply_chat_template(row["messages"], return_dict=False))
    length = c + 6
    batch = collate(proc, [row], _opts(max_length=length, padding="max_length")).tensors
    # HF pads with the real pad id 0, NeMo's own extra column uses eos ...
    assert batch["input_ids"][0, c:].tolist() == [0] * (length - c - 1) + [eos]
    # ... and no trailing eos means the content rule sees no padding: the 0-pads are attended (PR #3704).
    assert batch["attention_mask"][0].tolist() == [1] * (length - 1) + [0]
    assert (batch["labels"][0, c - 1 :] == IGNORE_INDEX).all()
    ragged = collate(proc, [row, _chat("q", "a much longer answer")], NEMO).tensors
    assert ragged["input_ids"][0, -1] == eos  # batch padding uses NeMo's pad id
    assert batch_pad_id(proc, NEMO) == eos and batch_pad_id(proc, CollateOptions()) == 0


def test_tokenizer_without_pad_token(tok: Any) -> None:
    proc = _with(tok, pad_token=None)
    eos = tok.convert_tokens_to_ids(IM_END)
    assert proc.tokenizer.pad_token_id is None and nemo_pad_token_id(proc) == eos
    row = _chat("q", "yes")
    c = len(tok.apply_chat_template(row["messages"], return_dict=False))
    batch = collate(proc, [row], _opts(max_length=c + 5, padding="max_length")).tensors
    assert batch["input_ids"][0, c:].tolist() == [eos] * 5
    assert proc.tokenizer.pad_token_id is None  # NeMo's _add_pad_token ran on a copy


def test_left_padding_shifts_the_fallback_mask(tok: Any) -> None:
    proc = _with(tok, padding_side="left")
    row = _chat("q1", "a1", "q2", "a2")
    plain = _nemo(proc, row)
    padded = _nemo(proc, row, _opts(max_length=plain.num_tokens + 7, padding="max_length"))
    pad_len = 7
    pad = tok.convert_tokens_to_ids(ENDOFTEXT)
    assert padded.input_ids[:pad_len].tolist() == [pad] * pad_len
    np.testing.assert_array_equal(padded.supervised[pad_len:], plain.supervised)
    assert not padded.supervised[:pad_len].any()
    assert padded.attention_mask.all()  # NeMo only strips trailing pads: left pads stay attended


# ---------------------------------------------------------------------------------------------------------------
# format_prompt_completion


def test_prompt_completion_boundary_is_a_token_count(qwen: Processor, tok: Any) -> None:
    sample = _nemo(qwen, {"prompt": "Translate: chat =", "completion": " cat"})
    assert sample.strategy is LabelStrategy.PROMPT_COMPLETION
    assert sample.input_ids.tolist() == _ids(tok, "Translate: chat = cat")  # no EOS is appended
    assert tok.decode(sample.input_ids[sample.supervised]) == " cat"
    # A prompt ending in a space: the prompt alone has one token more than it has inside the whole text.
    row = {"prompt": "Answer: ", "completion": "yes indeed"}
    prompt_len = len(_ids(tok, "Answer: "))
    shifted = _nemo(qwen, row)
    assert shifted.supervised.tolist() == [t >= prompt_len for t in range(shifted.num_tokens)]
    assert tok.decode(shifted.input_ids[shifted.supervised]) == " indeed"


def test_prompt_completion_counts_bos_from_add_bos_token(tok: Any) -> None:
    proc = _with(tok, bos_token=ENDOFTEXT, add_bos_token=True)
    bos = tok.convert_tokens_to_ids(ENDOFTEXT)
    sample = _nemo(proc, {"prompt": "Say:", "completion": " yes please"})
    assert sample.input_ids.tolist() == [bos] + _ids(tok, "Say: yes please")
    assert int(np.argmax(sample.supervised)) == 1 + len(_ids(tok, "Say:"))
    assert tok.decode(sample.input_ids[sample.supervised]) == " yes please"


def test_prompt_completion_pads_right_and_answer_only_off(tok: Any) -> None:
    proc = _with(tok, padding_side="left")
    sample = _nemo(proc, {"prompt": "P:", "completion": " done"}, _opts(max_length=10, padding="max_length"))
    n = len(_ids(tok, "P: done"))
    pad = tok.convert_tokens_to_ids(ENDOFTEXT)
    assert sample.input_ids.tolist() == _ids(tok, "P: done") + [pad] * (10 - n)
    assert proc.tokenizer.padding_side == "left"
    assert sample.attention_mask.tolist() == [1] * n + [0] * (10 - n)
    everything = _nemo(proc, {"prompt": "P:", "completion": " done"}, _opts(answer_only=False))
    assert everything.strategy is LabelStrategy.ALL_TOKENS and everything.supervised.all()


# ---------------------------------------------------------------------------------------------------------------
# §1.5 ChatDataset normalisation, as our conversation model does it


def test_normalised_messages_render_like_nemo(qwen: Processor) -> None:
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "parts"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "r"},
            {"role": "assistant", "content": "done"},
        ],
        "tools": '[{"type": "function", "function": {"name": "f"}}]',
    }
    plain = {
        "messages": [
            {"role": "user", "content": "two parts"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_0", "content": "r"},
            {"role": "assistant", "content": "done"},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    a, b = _nemo(qwen, parts), _nemo(qwen, plain)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.supervised, b.supervised)


def test_reports_count_shifted_labels(qwen: Processor) -> None:
    batch = collate(qwen, [_chat("q", "a"), _chat("q", "b c")], NEMO)
    assert [r.strategy for r in batch.reports] == ["prefix_render"] * 2
    assert [r.num_label_tokens for r in batch.reports] == [
        int((row != IGNORE_INDEX).sum()) for row in batch.tensors["labels"]
    ]
    assert batch.tensors["labels"].shape == batch.tensors["input_ids"].shape


# ---------------------------------------------------------------------------------------------------------------
# §1.5 ChatDataset's normalisation: arguments objects are serialised with json.dumps defaults (ensure_ascii=True)


@pytest.mark.parametrize("builtin", ["qwen2.5", "mistral-7b-v3"])
def test_non_ascii_tool_arguments_are_escaped_as_nemo_does(builtin: str) -> None:
    import json

    tokenizer = builtin_tokenizer(builtin)
    proc = Processor(builtin, tokenizer)
    arguments = {"city": "Zürich", "note": "東京 — café ☕"}
    call = {"id": "abcdefghi", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "weather",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "Wetter in Zürich?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "abcdefghi", "content": "sonnig"},
        {"role": "assistant", "content": "Sonnig."},
    ]
    sample = _nemo(proc, {"messages": messages, "tools": tools})

    def nemo_render(dumps: Any) -> list[int]:
        normalised = [dict(m) for m in messages]
        normalised[1]["tool_calls"] = [{**call, "function": {"name": "get_weather", "arguments": dumps(arguments)}}]
        return list(tokenizer.apply_chat_template(normalised, tools=tools, return_dict=False))

    assert sample.input_ids.tolist() == nemo_render(json.dumps)
    # The test can fail: ensure_ascii=False (the default policy's old serialisation) gives other ids.
    assert nemo_render(lambda a: json.dumps(a, ensure_ascii=False)) != nemo_render(json.dumps)
    decoded = tokenizer.decode(sample.input_ids)
    assert "u00fc" in decoded and decoded.count("Zürich") == 1  # escaped in the call, as typed by the user
