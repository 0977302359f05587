"""A loaded tokenizer or multimodal processor, with the facts derived from it once and cached.

Loading goes through transformers' Auto classes (local directories; hub ids where the operator's machine has a
hub), or through the built-in tokenizers rebuilt from packaged vocabularies. Remote code stays off unless the
operator enables it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from feedline.proto import TemplateError

from ._encoders import select_encoder
from ._markers import TurnMarkers, derive_turn_markers
from .._options import CollateOptions
from ._render import ChatRenderer

__all__ = ["Processor", "load_processor"]


class Processor:
    """One tokenizer (and optionally its multimodal processor) under a name, ready for the engine.

    Everything derived from it (renderer, turn markers, fingerprint, encoder) is computed once here, never
    per sample or per batch.
    """

    def __init__(
        self,
        name: str,
        tokenizer: Any,
        *,
        hf_processor: Any = None,
        source: str = "",
        defaults: CollateOptions | None = None,
        encoder_mode: str = "auto",
        chat_template: str | None = None,
    ) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.hf_processor = hf_processor
        self.source = source
        self.defaults = defaults or CollateOptions()
        template = chat_template or getattr(hf_processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
        if isinstance(template, Mapping):
            template = template.get("default") or next(iter(template.values()), None)
        self.chat_template: str | None = template
        self.encoder, self.encoder_reason = select_encoder(tokenizer, encoder_mode)
        self.fingerprint = _fingerprint(tokenizer, template, hf_processor)

    @property
    def family(self) -> str:
        """The processor's family key (its class name until family rules register a better one)."""
        obj = self.hf_processor if self.hf_processor is not None else self.tokenizer
        return type(obj).__name__

    @cached_property
    def renderer(self) -> ChatRenderer:
        if not self.chat_template:
            raise TemplateError(f"processor {self.name!r} has no chat template")
        return ChatRenderer(self.chat_template, self.tokenizer.special_tokens_map)

    @cached_property
    def markers(self) -> TurnMarkers | TemplateError:
        """The template's turn markers, or the reason they cannot be derived (kept, not raised)."""
        try:
            return derive_turn_markers(self.renderer)
        except TemplateError as exc:
            return exc

    @cached_property
    def bos_prefix(self) -> list[int]:
        """The tokens the tokenizer itself puts before text (usually BOS), read once from an encode of one letter."""
        with_special = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        at = len(with_special) - len(plain)
        if at > 0 and with_special[at : at + len(plain)] == plain:
            return list(with_special[:at])
        return []

    @property
    def pad_token_id(self) -> int:
        """The pad id; the eos id when the tokenizer has none (an explicit id of 0 is kept)."""
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else int(self.tokenizer.eos_token_id)

    @property
    def eos_token_id(self) -> int | None:
        eos = self.tokenizer.eos_token_id
        return int(eos) if eos is not None else None

    def info(self) -> dict[str, Any]:
        """JSON-ready description for /v1/processors and the CLI."""
        markers = self.markers
        return {
            "name": self.name,
            "class": type(self.hf_processor or self.tokenizer).__name__,
            "family": self.family,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "has_chat_template": bool(self.chat_template),
            "generation_tags": bool(self.chat_template) and self.renderer.has_generation_tags,
            "turn_markers": (
                {"header": markers.header, "end": markers.end} if isinstance(markers, TurnMarkers) else None
            ),
            "turn_markers_reason": str(markers) if isinstance(markers, TemplateError) else None,
            "encoder": {"path": self.encoder.name, "reason": self.encoder_reason},
            "defaults": self.defaults.to_dict(),
            "vocab_size": len(self.tokenizer),
        }


def _fingerprint(tokenizer: Any, template: str | None, hf_processor: Any) -> str:
    """sha256 over the tokenizer definition, added tokens, chat template and processor config."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update((template or "").encode())
    if hf_processor is not None:
        for attr in ("image_processor", "feature_extractor", "video_processor"):
            part = getattr(hf_processor, attr, None)
            if part is not None and hasattr(part, "to_json_string"):
                h.update(part.to_json_string().encode())
    return h.hexdigest()


def load_processor(
    name: str,
    source: str | Path,
    *,
    trust_remote_code: bool = False,
    defaults: Mapping[str, Any] | None = None,
    encoder_mode: str = "auto",
) -> Processor:
    """Load a processor from a builtin name or a local directory/hub id through transformers' Auto classes."""
    from transformers import AutoProcessor, AutoTokenizer, PreTrainedTokenizerBase

    source_str = str(source)
    path = Path(source_str).expanduser()
    if not path.exists():
        from .builtin._vocab import BUILTIN_TOKENIZERS, builtin_tokenizer_dir

        if source_str in BUILTIN_TOKENIZERS:
            path = builtin_tokenizer_dir(source_str)
    location = str(path) if path.exists() else source_str
    from ._compat import videoless_class_for

    videoless = videoless_class_for(location) if path.is_dir() else None
    try:
        if videoless is not None:  # a processor class transformers refuses without a video processor here
            loaded = videoless.from_pretrained(location)
        else:
            loaded = AutoProcessor.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError, ImportError):
        loaded = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    if isinstance(loaded, PreTrainedTokenizerBase):
        tokenizer, hf_processor = loaded, None
    else:
        tokenizer, hf_processor = loaded.tokenizer, loaded
    base = CollateOptions.from_mapping(defaults) if defaults else None
    return Processor(name, tokenizer, hf_processor=hf_processor, source=source_str, defaults=base,
                     encoder_mode=encoder_mode)
