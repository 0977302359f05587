"""Model-family rules: small strategy objects, one file per family, in an explicit registry.

The registry is keyed by the HF processor's class name. A class with no entry uses the generic family, and the
sample report says so ("family": "generic"); nothing falls back silently to rules that would change labels.
``family_named`` selects by family name and raises UnknownFamily for a name that does not exist.
"""

from __future__ import annotations

from typing import Any

from feedline.proto import UnknownFamily

from ._protocol import Family, LoadedMedia, ProcessorCall
from .gemma3 import Gemma3Family, Gemma4Family
from .generic import TOKEN_AXIS_KEYS, GenericFamily
from .kimi import KimiFamily
from .llava_onevision import LlavaOneVisionFamily
from .omni_asr import OmniASRFamily
from .qwen_vl import QwenVLFamily
from .templateless import TemplatelessFamily

__all__ = [
    "FAMILIES",
    "GENERIC",
    "REGISTRY",
    "TOKEN_AXIS_KEYS",
    "Family",
    "LoadedMedia",
    "ProcessorCall",
    "family_for",
    "family_named",
]

GENERIC: Family = GenericFamily()
_QWEN_VL, _GEMMA3, _KIMI, _OMNI = QwenVLFamily(), Gemma3Family(), KimiFamily(), OmniASRFamily()

REGISTRY: dict[str, Family] = {
    "Gemma3Processor": _GEMMA3,
    "Gemma4Processor": Gemma4Family(),
    "KimiK25Processor": _KIMI,
    "KimiVLProcessor": _KIMI,
    "LlavaOnevisionProcessor": LlavaOneVisionFamily(),
    "NemotronParseProcessor": TemplatelessFamily(),
    "Qwen2VLProcessor": _QWEN_VL,
    "Qwen2_5OmniProcessor": _OMNI,
    "Qwen2_5_VLProcessor": _QWEN_VL,
    "Qwen3OmniMoeProcessor": _OMNI,
    "Qwen3VLMoeProcessor": _QWEN_VL,
    "Qwen3VLProcessor": _QWEN_VL,
}
FAMILIES: dict[str, Family] = {f.name: f for f in [GENERIC, *REGISTRY.values()]}


def family_for(hf_processor: Any) -> Family:
    """The rule registered for this processor's class, or the generic family (reported as such)."""
    return REGISTRY.get(type(hf_processor).__name__, GENERIC)


def family_named(name: str) -> Family:
    """A family by its name; UnknownFamily lists the known names."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownFamily(f"no family {name!r}; known: {sorted(FAMILIES)}", field="family") from None
