"""Processor classes that transformers refuses to build without a video processor, minus their video slot.

transformers 5.23 will not construct a processor class that declares a ``video_processor`` slot when no video
processor can be built (no torchvision), even with ``video_processor=None``. ``without_video(cls)`` returns a
subclass with the *same class name* whose constructor has no video slot; every other path (image, audio, text,
chat template, ``__call__``) stays upstream code, and ``save_pretrained`` still names the real class, so a saved
directory loads with the real class wherever torchvision exists. Video input cannot be processed by these.

How: ``ProcessorMixin`` reads a processor's sub-processor slots from its ``__init__`` signature and then maps
the positional arguments the upstream ``__init__`` passes it onto those slots. The variant's ``__init__``
declares the slots minus video; a small shim placed between the upstream class and ``ProcessorMixin`` in the
MRO maps the upstream positional call back to names and drops the video slot before ``ProcessorMixin`` sees it.
"""

from __future__ import annotations

import inspect
import json
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["VIDEOLESS_CLASSES", "videoless_class_for", "without_video"]

# Processor classes with a video slot whose image/audio/text paths work without torchvision.
VIDEOLESS_CLASSES: tuple[str, ...] = (
    "LlavaOnevisionProcessor",
    "Qwen2VLProcessor",
    "Qwen2_5OmniProcessor",
    "Qwen2_5_VLProcessor",
    "Qwen3OmniMoeProcessor",
    "Qwen3VLMoeProcessor",
    "Qwen3VLProcessor",
)


@cache
def without_video(parent: Any) -> type:
    """A subclass of ``parent`` (same name) whose constructor has no ``video_processor`` slot."""
    from transformers.processing_utils import ProcessorMixin

    slots = list(parent.get_attributes())

    class _DropVideoSlot(ProcessorMixin):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            given = dict(zip(slots, args, strict=False))
            given.update(kwargs)
            given.pop("video_processor", None)
            ProcessorMixin.__init__(self, **given)  # type: ignore[no-untyped-call]  # unannotated upstream

    # The upstream parameters minus the video slot, as real parameters: transformers reads both the signature
    # (slots) and ``__code__.co_varnames`` (which saved options to pass back) of ``__init__``.
    upstream = [
        p
        for p in inspect.signature(parent).parameters.values()
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name not in ("self", "video_processor")
    ]
    defaults = {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in upstream}
    names = list(defaults)
    source = (
        f"def __init__(self, {', '.join(f'{n}=_defaults[{n!r}]' for n in names)}, **kwargs):\n"
        f"    _parent.__init__(self, {', '.join(f'{n}={n}' for n in names)}, **kwargs)\n"
    )
    namespace: dict[str, Any] = {"_parent": parent, "_defaults": defaults}
    exec(compile(source, f"<without_video {parent.__name__}>", "exec"), namespace)  # noqa: S102
    __init__ = namespace["__init__"]
    return type(
        parent.__name__,
        (parent, _DropVideoSlot),
        {"__init__": __init__, "__module__": __name__, "__doc__": f"{parent.__name__} without its video slot."},
    )


def videoless_class_for(directory: str | Path) -> type | None:
    """The video-less variant for a saved processor directory, or None when the real class can be used.

    None when the directory names no processor class, a class not in VIDEOLESS_CLASSES, or when torchvision is
    importable (then transformers builds the real class with its video processor).
    """
    from transformers.utils.import_utils import is_torchvision_available

    config = Path(directory) / "processor_config.json"
    if is_torchvision_available() or not config.is_file():
        return None
    name = json.loads(config.read_text(encoding="utf-8")).get("processor_class")
    if name not in VIDEOLESS_CLASSES:
        return None
    import transformers

    return without_video(getattr(transformers, name))
