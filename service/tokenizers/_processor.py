"""A loaded tokenizer or multimodal processor, with the facts derived from it once and cached.

Loading goes through transformers' Auto classes: local directories, the built-in tokenizers and processors
rebuilt from packaged files, and hub ids only where the operator enables the hub (``_sources``). Remote code
stays off unless the operator enables it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from feedline.proto import TemplateError

from .._options import CollateOptions
from ._encoders import select_encoder
from ._markers import TurnMarkers, derive_turn_markers
from ._render import DEFAULT_TEMPLATE_DATE, ChatRenderer, parse_template_date

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
        template_date: str | None = None,
    ) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.hf_processor = hf_processor
        self.source = source
        self.defaults = defaults or CollateOptions()
        template = (
            chat_template or getattr(hf_processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
        )
        if isinstance(template, Mapping):
            template = template.get("default") or next(iter(template.values()), None)
        self.chat_template: str | None = template
        self.template_date = parse_template_date(template_date or DEFAULT_TEMPLATE_DATE)
        self.encoder, self.encoder_reason = select_encoder(tokenizer, encoder_mode)
        self.fingerprint = _fingerprint(tokenizer, template, hf_processor, self.template_date.isoformat())

    @property
    def family(self) -> str:
        """The processor's family key (its class name until family rules register a better one)."""
        obj = self.hf_processor if self.hf_processor is not None else self.tokenizer
        return type(obj).__name__

    @cached_property
    def renderer(self) -> ChatRenderer:
        if not self.chat_template:
            raise TemplateError(f"processor {self.name!r} has no chat template")
        added = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
        atoms = [str(getattr(token, "content", token)) for token in added.values()]
        return ChatRenderer(self.chat_template, self.tokenizer.special_tokens_map, date=self.template_date, atoms=atoms)

    @cached_property
    def markers(self) -> TurnMarkers | TemplateError:
        """The template's turn markers, or the reason they cannot be derived (kept, not raised)."""
        try:
            return derive_turn_markers(self.renderer)
        except TemplateError as exc:
            return exc

    @cached_property
    def uses_tool_call_id(self) -> bool:
        """Whether the chat template uses a tool message's ``tool_call_id`` (derived by rendering, once)."""
        from ._tool_ids import template_uses_tool_call_id

        return bool(self.chat_template) and template_uses_tool_call_id(self.renderer)

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
                {
                    "header": markers.header,
                    "end": markers.end,
                    "last_header": markers.last_header,
                    "last_end": markers.last_end,
                    "tail": markers.tail,
                    "needs_tools": markers.tools is not None,
                }
                if isinstance(markers, TurnMarkers)
                else None
            ),
            "turn_markers_reason": str(markers) if isinstance(markers, TemplateError) else None,
            "encoder": {"path": self.encoder.name, "reason": self.encoder_reason},
            "template_date": self.template_date.isoformat(),
            "defaults": self.defaults.to_dict(),
            "vocab_size": len(self.tokenizer),
        }


def _fingerprint(tokenizer: Any, template: str | None, hf_processor: Any, template_date: str) -> str:
    """sha256 over the tokenizer definition, added tokens, chat template, template date and processor config."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update((template or "").encode())
    if template and template_date != DEFAULT_TEMPLATE_DATE:  # the default keeps earlier fingerprints valid
        h.update(b"template_date=" + template_date.encode())
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
    template_date: str | None = None,
    allow_hub: bool | None = None,
) -> Processor:
    """Load a processor from a local directory, a built-in name, or (``allow_hub`` only) a hub id.

    ``allow_hub=None`` reads ``FEEDLINE_ALLOW_HUB``; with the hub off nothing is fetched (``local_files_only``)
    and an unknown name fails at once with what was tried (``_sources.resolve_source``).
    """
    from ._sources import resolve_source

    resolved = resolve_source(source, allow_hub=allow_hub)  # before importing transformers: fails in a moment
    from transformers import AutoProcessor, AutoTokenizer, PreTrainedTokenizerBase

    from ._compat import videoless_class_for

    location = resolved.location
    offline = {"local_files_only": True} if resolved.local_only else {}
    videoless: Any = videoless_class_for(location) if Path(location).is_dir() else None  # a ProcessorMixin class
    try:
        if videoless is not None:  # a processor class transformers refuses without a video processor here
            loaded = videoless.from_pretrained(location, **offline)
        else:
            loaded = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]  # unannotated upstream
                location, trust_remote_code=trust_remote_code, **offline
            )
    except (OSError, ValueError, TypeError, KeyError, ImportError):
        loaded = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **offline)
    if isinstance(loaded, PreTrainedTokenizerBase):
        tokenizer, hf_processor = loaded, None
    else:
        tokenizer, hf_processor = loaded.tokenizer, loaded
    base = CollateOptions.from_mapping(defaults) if defaults else None
    return Processor(
        name,
        tokenizer,
        hf_processor=hf_processor,
        source=str(source),
        defaults=base,
        encoder_mode=encoder_mode,
        template_date=template_date,
    )
