"""The text of NeMo's render, ``tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)``, at less cost.

NeMo's prefix arithmetic renders every conversation prefix, and a long template (Mistral's is 11 kB of
``namespace`` bookkeeping) spends most of each render in the sandbox's attribute checks. ``TemplateText`` makes the
same render with transformers' own pieces, step for step as ``apply_chat_template`` and ``render_jinja_template``
take them for a call without generation prompt, documents or extra keywords: the template the tokenizer picks for
these tools, message keys whose value is None dropped, everything converted to plain data, reasoning copied to its
aliases, the special-token map as template variables. Only the compile differs: a private copy whose sandbox
remembers its verdicts (``compile_template``), which gives the same text. tests/engine/test_nemo_fast.py checks
the text against ``apply_chat_template`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from transformers.utils import chat_template_utils as _hf

from ...tokenizers._render import compile_template, template_messages

__all__ = ["TemplateText"]


class TemplateText:
    """``apply_chat_template(..., tokenize=False)`` for one tokenizer, each template compiled once."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._compiled: dict[str, jinja2.Template] = {}
        # The special-token map as template variables, once: the tokenizer's special tokens do not change.
        self._variables: dict[str, Any] = _hf._plain_template_data({**tokenizer.special_tokens_map})

    def __call__(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: list[dict[str, Any]] | None,
        chat_template: str | None,
    ) -> str:
        """The render; raises what transformers raises for the same call (jinja2 errors, ValueError, TypeError)."""
        template = self._tokenizer.get_chat_template(chat_template, tools)
        compiled = self._compiled.get(template)
        if compiled is None:
            compiled = self._compiled[template] = compile_template(template)
        if not messages:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        if tools is not None and not all(isinstance(tool, dict) for tool in tools):
            raise TypeError("tools must be JSON schemas (dicts) here")
        return compiled.render(
            messages=template_messages(messages),
            tools=_hf._plain_template_data(tools),
            documents=None,
            add_generation_prompt=False,
            **self._variables,
        )
