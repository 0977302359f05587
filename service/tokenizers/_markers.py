"""Assistant turn markers, derived once per template by rendering probe conversations.

No list of known models: whatever text the template writes before assistant content (the header, which is
also the generation prompt) and right after it (the end-of-turn text) is read off the template itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from feedline.proto import TemplateError

from ._render import ChatRenderer

__all__ = ["TurnMarkers", "derive_turn_markers"]

_PROBE_USER = ("FeedlineProbeUserOne", "FeedlineProbeUserTwo")
_PROBE_ASSISTANT = ("FeedlineProbeAnswerOne", "FeedlineProbeAnswerTwo")


@dataclass(frozen=True)
class TurnMarkers:
    """Text that opens an assistant turn (never supervised) and the end-of-turn text (supervised).

    ``trailer`` is what the template writes after the end-of-turn text (e.g. a newline): never supervised.
    """

    header: str
    end: str
    trailer: str


def derive_turn_markers(renderer: ChatRenderer) -> TurnMarkers:
    """Read the assistant header and end-of-turn text off the template; TemplateError says why it cannot."""
    user = [{"role": "user", "content": _PROBE_USER[0]}]
    one = user + [{"role": "assistant", "content": _PROBE_ASSISTANT[0]}]
    base = renderer.text(user)
    prompted = renderer.text(user, add_generation_prompt=True)
    full = renderer.text(one)
    if not full.startswith(base):
        raise TemplateError("the template renders a user turn differently once an assistant turn follows")
    at = full.find(_PROBE_ASSISTANT[0], len(base))
    if at < 0:
        raise TemplateError("the template does not render assistant content verbatim")
    header = full[len(base) : at]
    generation_prompt = prompted[len(base) :] if prompted.startswith(base) else ""
    if generation_prompt:
        # Text the template writes between the generation prompt and the content (an empty <think> block,
        # say) is what the model generates, so it belongs to the turn, not to the header.
        if not header.startswith(generation_prompt):
            raise TemplateError(
                f"the assistant header {header!r} does not start with the generation prompt {generation_prompt!r}"
            )
        header = generation_prompt
    suffix = full[at + len(_PROBE_ASSISTANT[0]) :]
    end = suffix.rstrip()
    trailer = suffix[len(end) :]
    if not header:
        # Templates such as Mistral's "[INST]u[/INST]a</s>" open no assistant turn: the text that closes the
        # user turn right before the content is the anchor instead.
        user_end = full.find(_PROBE_USER[0]) + len(_PROBE_USER[0])
        header = full[user_end:at]
    if not header:
        raise TemplateError("the template writes nothing between a user turn and assistant content")
    if not end:
        raise TemplateError("the template writes no end-of-turn text after assistant content")
    _check_mid_conversation(renderer, one, end)
    return TurnMarkers(header=header, end=end, trailer=trailer)


def _check_mid_conversation(renderer: ChatRenderer, one: list[dict[str, str]], end: str) -> None:
    """The end-of-turn text must also close an assistant turn in the middle of a conversation."""
    two = one + [
        {"role": "user", "content": _PROBE_USER[1]},
        {"role": "assistant", "content": _PROBE_ASSISTANT[1]},
    ]
    text = renderer.text(two)
    first = text.find(_PROBE_ASSISTANT[0])
    if first < 0 or not text.startswith(end, first + len(_PROBE_ASSISTANT[0])):
        raise TemplateError(f"the end-of-turn text {end!r} does not close earlier assistant turns")
