"""``compile_template``'s sandbox, which remembers its attribute verdicts, against transformers' own compile.

Each template reads attributes more than once (so remembered verdicts are used), safe and unsafe ones: dict keys
read as attributes, namespaces, loop state, ``str.format``, mutating list and dict methods, dunder and private
attributes. Both compiles must give the same text, or raise the same error with the same message.
"""

from __future__ import annotations

from typing import Any

import jinja2
import pytest
from transformers.utils import chat_template_utils as hf

from feedline.service.tokenizers._render import compile_template

MESSAGES = [
    {"role": "user", "content": "hi {0}"},
    {"role": "assistant", "content": "yo", "extra": [1, 2]},
    {"role": "tool", "content": "t", "items": "I", "get": "G", "pop": "P", "copy": "C", "none": None},
]

TEMPLATES = [
    "{% for m in messages %}{{ m.role }}:{{ m.content }}|{{ m.missing }}|{{ loop.last }}{% endfor %}" * 2,
    "{% set ns = namespace(n=0, parts=[]) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
    "{% set ns.parts = ns.parts + [m.role] %}{% endfor %}{{ ns.n }}{{ ns.parts | join(',') }}{{ ns.n }}",
    "{{ messages[0].content.format(7) }}{{ messages[0]['content'].format(8) }}{{ 'a'.upper() }}{{ 'b'.upper() }}",
    "{{ messages[1].extra.append }}{{ messages[1].extra.append }}",
    "{{ messages[1].extra.append(3) }}",
    "{{ messages[0].update(role='x') }}",
    "{{ messages.__class__ }}{{ messages.__class__ }}",
    "{{ messages[0]._private }}{{ messages[0].keys() | list }}{{ messages[0].keys() | list }}",
    "{{ messages[0].content.__class__.__mro__ }}",
    "{{ raise_exception('refused: ' ~ messages[0].role) }}",
    "{% set ns = namespace() %}{% set ns._x = 1 %}",
    # keys named like dict methods are the methods (mutating ones refused), other keys the items, twice over
    "{% for m in messages %}{{ m.get('role') }}{{ m.items is defined }}{{ m.copy is callable }}{{ m.pop }}"
    "{{ m.none is none }}{{ m.none is defined }}{{ m.nope is defined }}{{ m.role }}{% endfor %}" * 2,
    "{{ messages[2].items() | list }}{{ messages[2].get('items') }}",
    # namespaces: values read many times, a missing one, a method stored in one (str.format stays sandboxed)
    "{% set ns = namespace(a=1, f='{0}'.format, s='x'.upper) %}{% for m in messages %}{% set ns.a = ns.a + 1 %}"
    "{{ ns.a }}{{ ns.f(m.role) }}{{ ns.s() }}{{ ns.nope is defined }}{% endfor %}{{ ns.a }}",
    "{% set ns = namespace(a=1) %}{{ ns.a }}{{ ns.__class__ }}{{ ns._Namespace__attrs }}{{ ns.a }}",
    "{% set ns = namespace(f='{0.__class__}'.format) %}{{ ns.f(1) }}{{ ns.f(2) }}",
]


def _outcome(template: jinja2.Template) -> Any:
    try:
        return template.render(messages=[dict(m) for m in MESSAGES], tools=None)
    except Exception as exc:  # noqa: BLE001 - the error itself is compared
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("source", TEMPLATES)
def test_remembered_verdicts_render_as_transformers_does(source: str) -> None:
    ours = compile_template(source)
    assert type(ours.environment).__name__ == "_RememberingSandbox"
    theirs = hf._cached_compile_jinja_template(source)
    want = _outcome(theirs)
    assert _outcome(ours) == want
    assert _outcome(ours) == want  # again, every verdict now remembered


def test_unsafe_calls_are_still_refused() -> None:
    outcome = _outcome(compile_template("{{ messages[1].extra.append(3) }}{{ messages[1].extra.append(3) }}"))
    assert outcome[0] == "SecurityError"
