"""A fixed template date per processor: templates that print today's date give the same bytes on every day."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from transformers.utils import chat_template_utils

from feedline.proto import TemplateError
from feedline.service import Processor
from feedline.service.tokenizers._render import DEFAULT_TEMPLATE_DATE, ChatRenderer
from feedline.service.tokenizers.builtin import builtin_tokenizer

DATED = (
    "{{ 'Today: ' + strftime_now('%d %b %Y') + '\\n' }}"
    "{%- for m in messages %}{{ m.role + ': ' + m.content + '\\n' }}{%- endfor %}"
)
MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def _clock_at(monkeypatch: pytest.MonkeyPatch, day: dt.date) -> None:
    """transformers' strftime_now reads ``datetime.now()`` from its module: make that clock show ``day``."""

    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Clock:
            return cls(day.year, day.month, day.day, 23, 59)

    monkeypatch.setattr(chat_template_utils, "datetime", Clock)


def _hf_render(day: dt.date, monkeypatch: pytest.MonkeyPatch) -> str:
    _clock_at(monkeypatch, day)
    return str(chat_template_utils.render_jinja_template(conversations=[MESSAGES], chat_template=DATED)[0][0])


def test_renders_are_identical_across_a_date_change(monkeypatch: pytest.MonkeyPatch) -> None:
    before, after = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
    # The clock patch reaches transformers' own rendering, so the comparison below could fail.
    assert _hf_render(before, monkeypatch) != _hf_render(after, monkeypatch)
    renderer = ChatRenderer(DATED, {})
    _clock_at(monkeypatch, before)
    first = renderer.text(MESSAGES).encode()
    _clock_at(monkeypatch, after)
    assert renderer.text(MESSAGES).encode() == first
    assert first.startswith(b"Today: 01 Jan 2025\n") and DEFAULT_TEMPLATE_DATE == "2025-01-01"


def test_template_date_is_configurable_and_part_of_the_fingerprint() -> None:
    tokenizer = builtin_tokenizer("qwen2.5")
    default = Processor("a", tokenizer, chat_template=DATED)
    same = Processor("b", tokenizer, chat_template=DATED, template_date=DEFAULT_TEMPLATE_DATE)
    other = Processor("c", tokenizer, chat_template=DATED, template_date="2026-07-04")
    assert other.renderer.text(MESSAGES).startswith("Today: 04 Jul 2026\n")
    assert default.fingerprint == same.fingerprint != other.fingerprint
    assert other.info()["template_date"] == "2026-07-04"
    with pytest.raises(TemplateError, match="template_date"):
        Processor("d", tokenizer, chat_template=DATED, template_date="July 4th")


def test_date_does_not_leak_into_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixed date lives in the renderer's own environment, not in transformers' shared template cache."""
    ChatRenderer(DATED, {}).text(MESSAGES)
    assert _hf_render(dt.date(2030, 5, 6), monkeypatch).startswith("Today: 06 May 2030")
