"""The default policy on every built-in real tokenizer and template: one run per assistant turn, in order."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedline.proto import LabelStrategy
from feedline.service import CollateOptions, load_processor, tokenize_row
from tests.support.labels import supervised_runs

NAMES = ("qwen2.5", "qwen3", "mistral-nemo", "mistral-7b-v3")
_text = (
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="<>|[]"),
        min_size=1,
        max_size=30,
    )
    .map(lambda s: " ".join(s.split()))
    .filter(bool)
)


@pytest.fixture(scope="module", params=NAMES)
def processor(request):
    return load_processor(request.param, request.param)


def _runs(tokenizer, sample) -> list[str]:
    return supervised_runs(tokenizer, sample.input_ids, sample.supervised)


def test_markers_are_derived_from_each_template(processor) -> None:
    info = processor.info()
    assert info["turn_markers"] is not None, info["turn_markers_reason"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(_text, _text), min_size=1, max_size=3), system=st.none() | _text)
def test_one_supervised_run_per_assistant_turn(processor, pairs, system) -> None:
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in pairs:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    sample = tokenize_row(processor, {"messages": messages}, CollateOptions())
    assert sample.strategy is LabelStrategy.TURN_MARKERS
    runs = _runs(processor.tokenizer, sample)
    end = processor.markers.end
    assert len(runs) == len(pairs)
    for run, (_question, answer) in zip(runs, pairs, strict=True):
        assert run.endswith(end)
        assert answer in run or unicodedata.normalize("NFC", answer) in run  # some tokenizers normalise
    roles = [m["role"] for m in messages]
    assert all(roles[t] == "assistant" for t in sample.turn_index[sample.supervised])
