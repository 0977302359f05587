"""Real multimodal processors built offline from packaged parts, saved once, loadable with ``load_processor``.

* ``qwen2.5-vl``: the built-in Qwen2.5 tokenizer + ``Qwen2VLImageProcessorPil`` (transformers' own, defaults
  as published for Qwen2-VL/2.5-VL) + the Qwen2-VL chat template, as ``Qwen2_5_VLProcessor`` without its
  video slot (``tokenizers._compat``).
* ``llava-onevision``: the Qwen2.5 vocabulary plus ``<image>``/``<video>`` (new ids: the published checkpoint
  places them elsewhere), ``LlavaOnevisionImageProcessorPil`` (anyres, 384 px) and LLaVA-OneVision's
  Qwen ChatML prompt format (``<image>\n`` before the text of a turn), as ``LlavaOnevisionProcessor`` without video.
* ``gemma3-structure``: ``Gemma3ImageProcessorPil`` (896 px) + Gemma 3's chat template + a tokenizer with Gemma's
  special tokens over the Qwen2.5 vocabulary (Gemma's own 262k vocabulary has no offline source here), as
  ``Gemma3Processor``. Token ids therefore differ from real Gemma 3; structure, template and expansion do not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["BUILTIN_PROCESSORS", "builtin_processor_dir", "template_text"]


def template_text(name: str) -> str:
    """A chat template shipped in ``feedline.service.tokenizers.builtin.templates``."""
    return (
        resources.files("feedline.service.tokenizers.builtin.templates")
        .joinpath(f"{name}.jinja")
        .read_text(encoding="utf-8")
    )


def _qwen_tokenizer(extra_special: list[str] | None = None, named: dict[str, str] | None = None) -> Any:
    from ._vocab import builtin_tokenizer

    tok = builtin_tokenizer("qwen2.5")
    if extra_special:
        tok.add_special_tokens({"additional_special_tokens": extra_special}, replace_extra_special_tokens=False)
    if named:  # named special tokens (tokenizer.boi_token, .audio_token ...), saved with the tokenizer
        tok.add_special_tokens({"additional_special_tokens": list(named.values())}, replace_extra_special_tokens=False)
        tok._set_model_specific_special_tokens(special_tokens=dict(named))
    return tok


def _qwen2_5_vl() -> Any:
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .._compat import without_video

    cls = without_video(transformers.Qwen2_5_VLProcessor)
    return cls(
        image_processor=Qwen2VLImageProcessorPil(), tokenizer=_qwen_tokenizer(), chat_template=template_text("qwen2_vl")
    )


def _llava_onevision() -> Any:
    import transformers
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from .._compat import without_video

    cls = without_video(transformers.LlavaOnevisionProcessor)
    tok = _qwen_tokenizer(["<image>", "<video>"])
    return cls(
        image_processor=LlavaOnevisionImageProcessorPil(),
        tokenizer=tok,
        num_image_tokens=729,
        vision_feature_select_strategy="full",
        chat_template=template_text("llava_onevision"),
    )


def _gemma3_structure() -> Any:
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tok = _qwen_tokenizer(
        ["<start_of_turn>", "<end_of_turn>"],
        {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    )
    tok.add_special_tokens({"bos_token": "<bos>", "eos_token": "<end_of_turn>"})
    image_processor = Gemma3ImageProcessorPil(size={"height": 896, "width": 896})  # Gemma 3 checkpoints use 896
    return Gemma3Processor(
        image_processor=image_processor, tokenizer=tok, chat_template=template_text("gemma3"), image_seq_length=256
    )


BUILTIN_PROCESSORS: dict[str, Callable[[], Any]] = {
    "gemma3-structure": _gemma3_structure,
    "llava-onevision": _llava_onevision,
    "qwen2.5-vl": _qwen2_5_vl,
}


def builtin_processor_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Build (once) and save a built-in processor; the directory loads with ``load_processor``."""
    if name not in BUILTIN_PROCESSORS:
        raise KeyError(f"no built-in processor {name!r}; known: {sorted(BUILTIN_PROCESSORS)}")
    root = Path(cache_dir or os.environ.get("FEEDLINE_CACHE") or Path.home() / ".cache" / "feedline")
    dest = root / "processors" / name
    if not (dest / "processor_config.json").is_file():
        tmp = dest.with_name(f"{name}.tmp{os.getpid()}")
        BUILTIN_PROCESSORS[name]().save_pretrained(tmp)
        tmp.replace(dest) if not dest.exists() else None
    return dest
