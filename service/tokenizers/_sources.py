"""Where a processor comes from: a local directory, a built-in name, or a hub id where the operator enables a hub.

One resolver for `feedline serve`, the config file and the offline commands, so every entry point accepts the
same names. Loading is offline by default: a name that is neither a directory nor a built-in fails at once,
saying what was tried and how to enable the hub (``--allow-hub`` or ``FEEDLINE_ALLOW_HUB=1``), instead of
spending minutes in hub retries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from feedline.proto import UnknownProcessor

__all__ = ["ALLOW_HUB_ENV", "ProcessorSource", "builtin_names", "hub_allowed", "resolve_source"]

ALLOW_HUB_ENV = "FEEDLINE_ALLOW_HUB"
_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class ProcessorSource:
    """A resolved source: what to hand to ``from_pretrained`` and whether it may touch the hub."""

    location: str
    local_only: bool
    builtin: str | None = None


def builtin_names() -> tuple[str, ...]:
    """Every built-in name: text tokenizers and multimodal processors, all built offline from packaged files."""
    from .builtin._multimodal import BUILTIN_PROCESSORS
    from .builtin._vocab import BUILTIN_TOKENIZERS

    return tuple(sorted((*BUILTIN_TOKENIZERS, *BUILTIN_PROCESSORS)))


def hub_allowed(flag: bool | None = None) -> bool:
    """The ``--allow-hub`` flag when given, else ``FEEDLINE_ALLOW_HUB`` (1/true/yes/on)."""
    if flag is not None:
        return flag
    return os.environ.get(ALLOW_HUB_ENV, "").strip().lower() in _TRUE


def resolve_source(source: str | Path, *, allow_hub: bool | None = None) -> ProcessorSource:
    """A directory that exists, else a built-in name, else (hub enabled only) a hub id; else UnknownProcessor."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return ProcessorSource(str(path), local_only=not hub_allowed(allow_hub))
    if text in builtin_names():
        return ProcessorSource(str(_builtin_dir(text)), local_only=True, builtin=text)
    if hub_allowed(allow_hub):
        return ProcessorSource(text, local_only=False)
    raise UnknownProcessor(
        f"no processor {text!r}: tried the directory {path.resolve()} (not found), the built-in names "
        f"({', '.join(builtin_names())}), and the model hub, which is off. Pass a directory that exists, a built-in "
        f"name, or enable the hub with --allow-hub (config allow_hub: true, env {ALLOW_HUB_ENV}=1) to read "
        f"{text!r} as a hub id",
        field="processor",
    )


def _builtin_dir(name: str) -> Path:
    from .builtin._multimodal import BUILTIN_PROCESSORS, builtin_processor_dir
    from .builtin._vocab import builtin_tokenizer_dir, cache_dir

    if name in BUILTIN_PROCESSORS:
        return builtin_processor_dir(name, cache_dir())
    return builtin_tokenizer_dir(name)
