"""Assistant turn markers, derived once per template by rendering probe conversations.

No list of known models: whatever text the template writes before assistant content (the header, the part of
the generation prompt found in the history), right after it (the text that closes the turn, which may differ for
the last turn), and at the end of every render (an eos some templates append after the last message) is read
off the template itself. Templates that render only with tools are probed with a tool list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from feedline.proto import TemplateError

from ._render import ChatRenderer

__all__ = ["PROBE_TOOLS", "TurnMarkers", "common_prefix", "derive_turn_markers"]

_PROBE_SYSTEM = "FeedlineProbeSystem"
_PROBE_USER = ("FeedlineProbeUserOne", "FeedlineProbeUserTwo")
_PROBE_ASSISTANT = ("FeedlineProbeAnswerOne", "FeedlineProbeAnswerTwo")
PROBE_TOOLS: tuple[Mapping[str, Any], ...] = (
    {
        "type": "function",
        "function": {
            "name": "feedline_probe",
            "description": "Feedline probe tool",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "q"}},
                "required": ["query"],
            },
        },
    },
)
"""The tool list probes use when the template renders nothing without tools."""


@dataclass(frozen=True)
class TurnMarkers:
    """What the template writes around assistant content.

    ``header`` opens an assistant turn that another message follows and ``last_header`` the one that ends the
    conversation (never supervised; Nemotron injects "<think>" into the last one only); ``end`` closes an
    assistant turn that another message follows and ``last_end`` the one that ends the conversation (both
    supervised, either may be empty: some formats write no closer); ``trailer`` is whitespace after a closer
    (never supervised); ``tail`` is what every render without a generation prompt appends after the last
    message (Phi-3's eos; never supervised);
    ``tools`` is the tool list the probes needed (None when the template renders without tools). ``lead``: how
    many characters at the end of a header are the turn's own (Llama 2 has no assistant header and writes
    " answer </s>" after "[/INST]": the header is the user's closing text and the space is generated).
    """

    header: str
    end: str
    trailer: str
    last_header: str = ""
    last_end: str = ""
    lead: int = 0
    tail: str = ""
    tools: tuple[Mapping[str, Any], ...] | None = None

    def opener(self, is_last: bool) -> str:
        """The header of an assistant turn, by whether it is the conversation's last message."""
        return (self.last_header or self.header) if is_last else self.header

    def closer(self, is_last: bool) -> str:
        """The closing text of an assistant turn, by whether it is the conversation's last message."""
        return self.last_end if is_last else self.end


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def derive_turn_markers(renderer: ChatRenderer) -> TurnMarkers:
    """Read the assistant header and closers off the template; TemplateError says why it cannot.

    Probes run without tools first and with ``PROBE_TOOLS`` when that fails (templates that iterate ``tools``).
    """
    try:
        return _derive(renderer, None)
    except TemplateError as plain:
        try:
            return _derive(renderer, PROBE_TOOLS)
        except TemplateError:
            raise plain from None


def _derive(renderer: ChatRenderer, tools: Sequence[Mapping[str, Any]] | None) -> TurnMarkers:
    def render(messages: list[dict[str, str]], prompt: bool = False) -> str:
        return renderer.text(messages, tools=tools, add_generation_prompt=prompt)

    user = [{"role": "user", "content": _PROBE_USER[0]}]
    one = user + [{"role": "assistant", "content": _PROBE_ASSISTANT[0]}]
    two = one + [{"role": "user", "content": _PROBE_USER[1]}, {"role": "assistant", "content": _PROBE_ASSISTANT[1]}]
    base_full, prompted, full, both = render(user), render(user, True), render(one), render(two)
    tail = _render_tail(renderer, base_full, full, both) or _prompt_tail(renderer, prompted, (base_full, full, both))
    base = base_full[: len(base_full) - len(tail)]
    if not full.startswith(base):
        raise TemplateError("the template renders a user turn differently once an assistant turn follows")
    at = full.find(_PROBE_ASSISTANT[0], len(base))
    if at < 0:
        raise TemplateError("the template does not render assistant content verbatim")
    generation_prompt = prompted[len(base) :] if prompted.startswith(base) else ""
    history_header = full[len(base) : at]
    last_header, lead = _header(history_header, generation_prompt, renderer), 0
    if not last_header:  # no assistant header: anchor on the user's closing text; what the turn writes is body
        last_header, lead = _anchor(full, at), len(history_header)
    first = both.find(_PROBE_ASSISTANT[0], len(base))
    if first < 0:
        raise TemplateError("the template does not render an earlier assistant turn verbatim")
    header = _header(both[len(base) : first], generation_prompt, renderer) or _anchor(both, first)
    if not (header.strip() and last_header.strip()):
        raise TemplateError("the template writes nothing but whitespace between a user turn and assistant content")
    suffix = full[at + len(_PROBE_ASSISTANT[0]) : len(full) - len(tail)]
    last_end = suffix.rstrip()
    end, trailer = _mid_closer(both, last_end, (_user_closer(base), renderer.eos))
    if end and last_end != end and last_end.startswith(end):
        # The last turn closes as the others do and the render then appends more (zephyr-gemma's eos after a
        # final assistant message): that text is the render's tail, not the turn's closer.
        tail, last_end = last_end[len(end) :].lstrip(), end
    return TurnMarkers(
        lead=lead,
        header=header,
        end=end,
        trailer=trailer,
        last_header=last_header,
        last_end=last_end,
        tail=tail,
        tools=tuple(tools) if tools else None,
    )


def _anchor(text: str, at: int) -> str:
    """For templates that open no assistant turn (Mistral's "[INST]u[/INST] a</s>", Yi's user turn that ends
    with the assistant header), the text between the user content and the assistant content at ``at``."""
    user_end = text.rfind(_PROBE_USER[0], 0, at)
    return text[user_end + len(_PROBE_USER[0]) : at] if user_end >= 0 else ""


def _render_tail(renderer: ChatRenderer, base: str, full: str, both: str) -> str:
    """Text every render without a generation prompt ends with but that a longer conversation does not keep
    after the same message (Phi-3 writes eos after the last message only); "" for most templates."""
    shared = renderer.snap(base, common_prefix(base, full))
    tail = base[shared:]
    if 0 < len(tail) < len(base) and full.endswith(tail) and both.endswith(tail):
        return tail
    return ""


def _prompt_tail(renderer: ChatRenderer, prompted: str, renders: tuple[str, str, str]) -> str:
    """The generation prompt, when the template writes it at the end of every render whether asked or not
    (Command R7B ends each render with "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"): the text all renders end
    with after the last eos they share, the eos that closes the turn before it; "" for other templates."""
    base = renders[0]
    if prompted != base or not renderer.eos:
        return ""
    shared = min(_common_suffix(base, other) for other in renders[1:])
    ending = base[len(base) - shared :]
    at = ending.rfind(renderer.eos)
    return ending[at + len(renderer.eos) :] if at >= 0 and ending[at + len(renderer.eos) :].strip() else ""


def _common_suffix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[len(a) - 1 - i] == b[len(b) - 1 - i]:
        i += 1
    return i


def _header(history: str, prompt: str, renderer: ChatRenderer) -> str:
    """The non-supervised opening of an assistant turn, from the history header and the generation prompt.

    The history header starting with the prompt: text the template writes after the prompt is generated by the
    model (an empty <think> block; the newline after Alpaca's "### Response:" prompt). The prompt extending the
    history header (QwQ/R1/OLMo-3 "<think>"): that forced prefix never appears in the history, the history
    header is the header. Otherwise their common part.
    """
    if not history.strip():
        return ""
    if not prompt:
        return history
    if history.startswith(prompt):
        return prompt
    if prompt.startswith(history) or prompt.strip() == history.strip():
        return history
    return history[: renderer.snap(history, common_prefix(history, prompt))]


def _user_closer(base: str) -> str:
    """What closes the probe's user turn (e.g. "<|end|>" in harmony, "<|im_end|>" in ChatML)."""
    at = base.rfind(_PROBE_USER[0])
    return base[at + len(_PROBE_USER[0]) :].rstrip() if at >= 0 else ""


def _mid_closer(both: str, last_end: str, others: tuple[str, str]) -> tuple[str, str]:
    """The closer of an assistant turn another message follows, and the whitespace after it.

    It is the last turn's closer when the history writes that one too; else (gpt-oss: "<|return|>" last,
    "<|end|>" before; OLMo-3: eos last, "<|im_end|>" before; nothing last, "<|im_end|>" before) the text that
    closes user turns (``others``: that text, then the eos).
    """
    first = both.find(_PROBE_ASSISTANT[0])
    second = both.find(_PROBE_USER[1], first)
    if first < 0 or second < 0:
        raise TemplateError("the template does not render a second exchange verbatim")
    between = both[first + len(_PROBE_ASSISTANT[0]) : second]
    # A last turn written without a closer (Cat-Llama-3 writes "<|im_end|>" only before another message) closes,
    # inside the conversation, like user turns do, or with the eos that follows its content.
    for closer in (last_end, *others) if last_end else (*filter(None, others), ""):
        if between.startswith(closer) and (closer or not last_end):
            rest = between[len(closer) :]
            return closer, rest[: len(rest) - len(rest.lstrip())]
    raise TemplateError(f"no closer found after an assistant turn followed by a user turn ({between!r})")
