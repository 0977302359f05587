"""Gemma 3 (and Gemma-4-style thinking-prefix training).

Gemma 3 expands ``<start_of_image>`` into ``\\n\\n<start_of_image>`` + 256 soft tokens + ``<end_of_image>\\n\\n``;
the whole expansion is a media span (never supervised, never cut). ``Gemma4Family`` additionally inserts the
thinking prefix after every assistant header (the model-turn marker derived from the template) before the
processor runs; the prefix is NOT supervised, which is what NeMo's ``gemma4_prefix_collate_fn`` documents
("masked as -100") although its marker scan supervises it (see nemo_reference.md 4.11).
"""

from __future__ import annotations

from typing import Any

from feedline.proto import TemplateError

from ...tokenizers._markers import TurnMarkers
from .generic import GenericFamily, _media_token_ids

__all__ = ["GEMMA4_THINKING_PREFIX", "Gemma3Family", "Gemma4Family"]

GEMMA4_THINKING_PREFIX = "<|channel>thought\n<channel|>"


class Gemma3Family(GenericFamily):
    name = "gemma3"

    def media_token_ids(self, processor: Any) -> frozenset[int]:
        tokenizer = processor.hf_processor.tokenizer
        extra = tuple(t for t in (getattr(tokenizer, "eoi_token", None),) if isinstance(t, str))
        return _media_token_ids(processor.hf_processor, extra)


class Gemma4Family(Gemma3Family):
    name = "gemma4_thinking"
    thinking_prefix = GEMMA4_THINKING_PREFIX

    def edit_prompt(self, processor: Any, text: str) -> list[tuple[int, str]]:
        markers = processor.markers
        if not isinstance(markers, TurnMarkers):
            raise TemplateError(f"cannot place the thinking prefix: {markers.message}")
        edits, at = [], text.find(markers.header)
        while at >= 0:
            edits.append((at + len(markers.header), self.thinking_prefix))
            at = text.find(markers.header, at + len(markers.header))
        return edits
