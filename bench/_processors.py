"""The processors the benchmarks share, loaded once per process (the suite runs every bench in one)."""

from __future__ import annotations

from functools import cache
from typing import Any

__all__ = ["qwen25"]


@cache
def qwen25(encoder_mode: str = "auto") -> Any:
    """The built-in Qwen2.5 tokenizer and its ChatML template as a ``feedline.service.Processor``."""
    from feedline.service import Processor, load_processor

    if encoder_mode == "auto":
        return load_processor("qwen2.5", "qwen2.5")
    base = qwen25()
    return Processor("qwen2.5", base.tokenizer, encoder_mode=encoder_mode, chat_template=base.chat_template)
