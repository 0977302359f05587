"""LLaVA-OneVision: anyres image patches, one ``<image>`` run per image.

pixel_values are ``[images, patches, 3, H, W]``, padded by the processor to the sample's largest patch count
(the model unpads with image_sizes), so batch assembly pads the patch axis the same way across samples.
Everything else is the generic rule; the family exists so the choice is explicit and reported.
"""

from __future__ import annotations

from typing import Any

from feedline.proto import InvalidSample

from ._protocol import ProcessorCall
from .generic import GenericFamily

__all__ = ["LlavaOneVisionFamily"]


class LlavaOneVisionFamily(GenericFamily):
    name = "llava_onevision"

    def check(self, processor: Any, call: ProcessorCall, index: int) -> None:
        sizes = call.tensors.get("image_sizes")
        if sizes is not None and len(sizes) != len(call.media_spans):
            raise InvalidSample(f"{len(call.media_spans)} image runs for {len(sizes)} images", sample=index)
