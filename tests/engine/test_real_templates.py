"""The default label policy on real chat formats of public model families, against an independent check.

For every family of tests/support/chat_formats (templates written to reproduce published formats, each on a real
vocabulary), over generated conversations (multi-turn, system, tools with dict arguments and tool results,
reasoning, Unicode): the engine's ids equal ``apply_chat_template(messages, tools=...)`` and its supervised tokens
are exactly each assistant turn's body and closer (tests/support/chat_formats/oracle.py). Strict: a row the engine
refuses fails the test. ``python -m tests.support.chat_formats.survey`` prints the per-family counts.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from tests.support.chat_formats.conversations import conversations
from tests.support.chat_formats.engine import engine_date, family_processor, label_with_engine
from tests.support.chat_formats.oracle import check_labels
from tests.support.chat_formats.registry import FAMILIES, family

EXAMPLES = int(os.environ.get("FEEDLINE_FAMILY_EXAMPLES", "25"))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_default_policy_supervises_each_turns_body_and_closer(name: str) -> None:
    date = engine_date(family_processor(name))
    labelled = []

    @settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
    )
    @given(row=conversations(family(name)))
    def check(row: dict) -> None:
        sample = label_with_engine(name, row)
        check_labels(sample.input_ids, sample.supervised, row, name, date)
        labelled.append(row)

    check()
    assert labelled
