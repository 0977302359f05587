"""Chat-template rendering: one call, the rendered text plus the character spans of {% generation %} blocks.

Templates are rendered by transformers' own sandboxed Jinja environment and input conversion, so the text is
exactly what ``apply_chat_template`` would produce on the processor's template date. The environment is a private
copy (transformers caches one per template string) whose ``strftime_now`` returns that fixed date instead of
reading the clock, and whose sandbox remembers its attribute verdicts (``compile_template``). Template errors are
translated to TemplateError here, once.
"""

from __future__ import annotations

import datetime as _dt
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers.utils import chat_template_utils as _hf

from feedline.proto import TemplateError

__all__ = [
    "DEFAULT_TEMPLATE_DATE",
    "ChatRenderer",
    "Rendered",
    "alias_reasoning",
    "compile_template",
    "parse_template_date",
    "template_messages",
]

DEFAULT_TEMPLATE_DATE = "2025-01-01"
"""The date every template sees unless the processor is configured with another one (``template_date``).

Templates that print today's date (``strftime_now``, e.g. Llama 3.2's system header) would otherwise give other
tokens on another day, so the same request would not be byte-identical across replicas, resumes and midnight.
``date_string`` is left to the template's own default (Llama 3.1 sets a fixed one), so ids stay those of
``apply_chat_template``."""

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
# transformers copies reasoning_content to the other names templates read it under (thinking, reasoning).
alias_reasoning = getattr(_hf, "_alias_reasoning_fields", lambda chat: chat)
_REASONING_FIELDS: tuple[str, ...] = getattr(_hf, "_REASONING_FIELDS", ("reasoning_content",))
# The exact pattern NeMo uses to decide whether a template has generation tags (it needs whitespace).
NEMO_GENERATION_TAG = re.compile(r"\{%-?\s+generation\s+-?%\}")


_METHODS = (types.MethodType, types.BuiltinMethodType)
_MISSING = object()
_DICT_ATTRIBUTES = frozenset(dir(dict))
_NAMESPACES: dict[type, bool] = {}


def _is_namespace(cls: type) -> bool:
    """Whether ``cls`` is a jinja ``Namespace`` that keeps its attributes as jinja's does (transformers'
    ``TemplateNamespace`` only checks names on writes)."""
    known = _NAMESPACES.get(cls)
    if known is None:
        known = _NAMESPACES[cls] = (
            issubclass(cls, jinja2.utils.Namespace) and cls.__getattribute__ is jinja2.utils.Namespace.__getattribute__
        )
    return known


class _RememberingSandbox(ImmutableSandboxedEnvironment):
    """transformers' sandbox, asking once per (type, attribute) whether an attribute is safe to read.

    Jinja's verdict (``ImmutableSandboxedEnvironment.is_safe_attribute``) depends only on the attribute's name and
    on ``isinstance`` tests of the object (internal attributes of functions, methods, types, frames and
    generators; mutating methods of lists, dicts, sets and deques), never on the value; so the verdict for one
    object is the verdict for every object of its class, and the renders are the same text. An object whose
    ``__class__`` is not its type is judged afresh. Asking once matters: templates that keep state in a
    ``namespace`` read an attribute per statement, and the verdicts were half of a long template's render time.
    """

    _verdicts: dict[tuple[type, str], bool]

    def getattr(self, obj: Any, attribute: str) -> Any:
        """Jinja's answer by the shortest road. ``message.role`` on a plain dict: a name that is no attribute of
        dict is the item (items are data: jinja checks nothing), found without raising AttributeError first.
        An attribute already judged safe for the object's class is read directly when it is not a method (a
        method may be ``str.format``, which the sandbox wraps); a namespace's (what Mistral-style templates
        read on every statement) straight from its own dict. Everything else goes through jinja's own."""
        cls = type(obj)
        if cls is dict and attribute not in _DICT_ATTRIBUTES:
            value = obj.get(attribute, _MISSING)
            if value is not _MISSING:
                return value
        elif self._verdicts.get((cls, attribute)):
            if _is_namespace(cls):  # its __class__ cannot be faked: Namespace answers it from object
                value = object.__getattribute__(obj, "_Namespace__attrs").get(attribute, _MISSING)
            elif cls is obj.__class__:
                value = getattr(obj, attribute, _MISSING)
            else:
                value = _MISSING
            if value is not _MISSING and not isinstance(value, _METHODS):
                return value
        return super().getattr(obj, attribute)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        cls = type(obj)
        if cls is not obj.__class__:
            return super().is_safe_attribute(obj, attr, value)
        key = (cls, attr)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = super().is_safe_attribute(obj, attr, value)
        return verdict


def compile_template(template: str) -> jinja2.Template:
    """``template`` compiled exactly as transformers compiles it, in a fresh environment of its own (changes to
    its globals touch no other caller) whose sandbox remembers its verdicts (``_RememberingSandbox``)."""
    compiled = _hf._cached_compile_jinja_template(template)  # uncached: a fresh environment
    environment = compiled.environment
    if type(environment) is not ImmutableSandboxedEnvironment:  # a transformers that builds another sandbox
        return compiled  # type: ignore[no-any-return]
    environment.__class__ = _RememberingSandbox
    environment._verdicts = {}  # type: ignore[attr-defined]  # the class was just switched
    return compiled  # type: ignore[no-any-return]


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The messages as ``apply_chat_template`` hands them to a template: keys whose value is None dropped
    (templates test ``"content" in message`` or ``message.tool_calls is defined``), plain JSON data, reasoning
    copied under its aliases."""
    present = [{k: v for k, v in m.items() if v is not None} for m in messages]
    chat: list[dict[str, Any]] = alias_reasoning(_hf._plain_template_data(present))
    return chat


@dataclass(frozen=True)
class Rendered:
    """A rendered chat and the character spans its template marked as generated by the assistant."""

    text: str
    generation_spans: tuple[tuple[int, int], ...] = ()


class ChatRenderer:
    """Renders conversations with one chat template and a tokenizer's special-token strings."""

    def __init__(
        self,
        template: str,
        special_tokens: Mapping[str, Any],
        *,
        date: _dt.date | None = None,
        atoms: Sequence[str] = (),
    ) -> None:
        if not isinstance(template, str) or not template.strip():
            raise TemplateError("the processor has no chat template")
        self.template = template
        self.has_generation_tags = bool(_GENERATION_TAG.search(template))
        self.mentions_reasoning = any(name in template for name in _REASONING_FIELDS)
        self.date = date or parse_template_date(DEFAULT_TEMPLATE_DATE)
        self.atoms = tuple(sorted({a for a in atoms if len(a) > 1}, key=len, reverse=True))
        moment = _dt.datetime.combine(self.date, _dt.time())
        self._special = {k: v for k, v in special_tokens.items() if isinstance(v, str)}
        try:
            self._compiled = compile_template(template)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template does not compile: {exc}") from exc
        self._compiled.environment.globals["strftime_now"] = moment.strftime

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = False,
        track_generation: bool = False,
    ) -> Rendered:
        """Render one conversation; ``track_generation`` also returns {% generation %} spans."""
        track = track_generation and self.has_generation_tags
        variables = {
            "messages": template_messages(messages),
            "tools": _hf._plain_template_data(list(tools)) if tools is not None else None,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
            **self._special,
        }
        try:
            if track:
                text, spans = _hf._render_with_assistant_indices(  # type: ignore[no-untyped-call]  # unannotated upstream
                    compiled_template=self._compiled, **variables
                )
            else:
                text, spans = self._compiled.render(**variables), []
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template failed: {exc}") from exc
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise TemplateError(f"the chat template cannot render this conversation: {exc}") from exc
        return Rendered(text=text, generation_spans=tuple((int(a), int(b)) for a, b in spans))

    @property
    def eos(self) -> str:
        """The tokenizer's eos string ("" when it has none)."""
        return self._special.get("eos_token", "")

    def text(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> str:
        """Render and return only the text."""
        return self.render(messages, **kwargs).text

    def closing_atom(self, text: str) -> str:
        """The added token ``text`` ends with ("" when none): the closer a rendered turn ends with."""
        return next((atom for atom in self.atoms if text.endswith(atom)), "")

    def snap(self, text: str, at: int) -> int:
        """``at`` moved back to the start of the added token it falls inside (comparing renders character by
        character splits "<|end|>" from "<|return|>" after "<|"), else ``at`` itself."""
        for atom in self.atoms:
            start = text.find(atom, max(0, at - len(atom) + 1), at + len(atom) - 1)
            if 0 <= start < at < start + len(atom):
                return start
        return at


def parse_template_date(value: str | _dt.date) -> _dt.date:
    """A template date from ``YYYY-MM-DD`` (or a date); TemplateError names the option when it is not one."""
    if isinstance(value, _dt.date):
        return value
    try:
        return _dt.date.fromisoformat(str(value))
    except ValueError as exc:
        raise TemplateError(f"template_date {value!r} is not a YYYY-MM-DD date", field="template_date") from exc
