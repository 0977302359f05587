"""How many tokens an image of a given size will take, estimated from the processor's configuration, to plan.

For packing and length bucketing before any image is decoded: a dataset index knows image sizes, not pixels.
The count is the processor's own size-to-tokens rule (transformers' ``_get_num_multimodal_tokens``, the one
vLLM relies on), which reads the image processor's configuration: patch size and merge size, and for Qwen-VL
the min/max pixel bounds through transformers' own ``smart_resize``; for LLaVA-OneVision its anyres grid; for
Gemma 3 its fixed soft-token count.

It never decides what is sent: a sample's tokens and pixels always come from the processor call on the decoded
image, and a plan built on a wrong estimate only fits less well (the engine's exact count is what is checked
against ``max_length``).
"""

from __future__ import annotations

from feedline.proto import FeedlineError, MediaError

from ..tokenizers._processor import Processor
from .families.generic import PROCESSOR_ERRORS

__all__ = ["estimate_media_tokens"]


def estimate_media_tokens(processor: Processor, width: int, height: int) -> int:
    """Image tokens one ``width`` x ``height`` image expands to (the placeholder's run; markers the template or the
    processor puts around it are not counted), for planning only."""
    if isinstance(width, bool) or isinstance(height, bool) or min(width, height) <= 0:
        raise MediaError(f"an image size must be two positive integers; got {width}x{height}", field="image_size")
    hf = processor.hf_processor
    rule = getattr(hf, "_get_num_multimodal_tokens", None)
    if rule is None:
        raise FeedlineError(
            f"{type(hf).__name__} has no size-to-tokens rule (transformers' "
            "_get_num_multimodal_tokens), so media tokens cannot be estimated before processing",
            field="processor",
        )
    try:
        counts = rule(image_sizes=[(int(height), int(width))])
    except PROCESSOR_ERRORS as exc:
        raise MediaError(f"the processor refuses a {width}x{height} image: {exc}", field="image_size") from exc
    if "num_image_tokens" not in counts:
        raise FeedlineError(f"{type(hf).__name__} gives no image token count", field="processor")
    return int(counts["num_image_tokens"][0])
