"""Where the one-render turn-marker scan is proven for a template: decided once per processor, on probe rows.

The scan is fast (one render, one pass) but reads turns through fixed strings; the general method renders what
the model is prompted with before each turn (O(turns) renders) and holds for formats the scan cannot read
(tool-call turns that open and close differently, as in gpt-oss). Each kind of row (plain turns, tool calls,
reasoning) is probed with both; the scan is used for a row only where it agreed with the general method.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

from feedline.proto import FeedlineError, TemplateError

from ..tokenizers._markers import PROBE_TOOLS, TurnMarkers
from ..tokenizers._processor import Processor
from ._conversation import Conversation, parse_row
from ._spans import marker_layout, render_layout

__all__ = ["Proof", "row_features", "scan_proof"]


class Proof(Enum):
    """The scan against the general method on one kind of probe row."""

    AGREES = "agrees"
    DIFFERS = "differs"
    UNTESTED = "untested"  # the template does not render the probe, or the general method cannot read it


_CALL = {
    "id": "probe0001",
    "type": "function",
    "function": {"name": "feedline_probe", "arguments": {"query": "FeedlineProbeArgs"}},
}
_PROBES: dict[str, tuple[list[dict[str, Any]], ...]] = {
    "plain": (
        [
            {"role": "user", "content": "FeedlineQ1"},
            {"role": "assistant", "content": "FeedlineA1"},
            {"role": "user", "content": "FeedlineQ2"},
            {"role": "assistant", "content": "FeedlineA2"},
        ],
        [
            {"role": "system", "content": "FeedlineS"},
            {"role": "user", "content": "FeedlineQ1"},
            {"role": "assistant", "content": "FeedlineA1"},
            {"role": "user", "content": "FeedlineQ2"},
            {"role": "assistant", "content": "FeedlineA2"},
        ],
    ),
    "tool_calls": (
        [
            {"role": "user", "content": "FeedlineQ1"},
            {"role": "assistant", "content": "", "tool_calls": [_CALL]},
            {"role": "tool", "tool_call_id": "probe0001", "content": "FeedlineResult"},
            {"role": "assistant", "content": "FeedlineA1"},
            {"role": "user", "content": "FeedlineQ2"},
            {"role": "assistant", "content": "", "tool_calls": [_CALL]},
        ],
    ),
    "reasoning": (
        [
            {"role": "user", "content": "FeedlineQ1"},
            {"role": "assistant", "content": "FeedlineA1", "reasoning_content": "FeedlineR1"},
            {"role": "user", "content": "FeedlineQ2"},
            {"role": "assistant", "content": "FeedlineA2", "reasoning_content": "FeedlineR2"},
        ],
    ),
}
_PROOFS: weakref.WeakKeyDictionary[Processor, dict[str, Proof]] = weakref.WeakKeyDictionary()


def row_features(conv: Conversation) -> tuple[str, ...]:
    """The kinds of probe row a conversation needs the scan proven on."""
    features = ["plain"]
    if any(m.tool_calls for m in conv.messages):
        features.append("tool_calls")
    if any(m.reasoning_content is not None for m in conv.messages):
        features.append("reasoning")
    return tuple(features)


def scan_proof(processor: Processor) -> dict[str, Proof]:
    """The scan's standing per kind of row for this processor (computed once, then cached)."""
    proof = _PROOFS.get(processor)
    if proof is None:
        proof = _prove(processor)
        _PROOFS[processor] = proof
    return proof


def _prove(processor: Processor) -> dict[str, Proof]:
    markers = processor.markers
    if not isinstance(markers, TurnMarkers):
        return {feature: Proof.DIFFERS for feature in _PROBES}
    return {feature: _combine(_probe(processor, markers, m) for m in rows) for feature, rows in _PROBES.items()}


def _combine(results: Any) -> Proof:
    seen = set(results)
    if Proof.DIFFERS in seen:
        return Proof.DIFFERS
    return Proof.AGREES if Proof.AGREES in seen else Proof.UNTESTED


def _probe(processor: Processor, markers: TurnMarkers, messages: Sequence[Mapping[str, Any]]) -> Proof:
    tools = markers.tools or (PROBE_TOOLS if any(m.get("tool_calls") for m in messages) else None)
    try:
        conv = parse_row({"messages": list(messages), "tools": list(tools) if tools else None})
        if not isinstance(conv, Conversation):
            return Proof.UNTESTED
        template_messages = conv.template_messages()
        text = processor.renderer.text(template_messages, tools=conv.tools)
        general = render_layout(processor.renderer, template_messages, conv.messages, text, conv.tools, markers)
    except FeedlineError:
        return Proof.UNTESTED
    try:
        scanned = marker_layout(text, conv.messages, markers)
    except TemplateError:
        return Proof.DIFFERS
    return Proof.AGREES if scanned.assistant == general.assistant else Proof.DIFFERS
