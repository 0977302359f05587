"""Image-size estimates for planning against the exact counts the engine produces on real images."""

from __future__ import annotations

import pytest

from feedline.proto import FeedlineError, MediaError
from feedline.service import CollateOptions, tokenize_row
from feedline.service.media._tokens import estimate_media_tokens
from tests.support.media import image_part, processor, vqa_row


@pytest.mark.parametrize(
    ("name", "token", "sizes"),
    [
        ("qwen2.5-vl", "<|image_pad|>", [(224, 224), (640, 480), (1280, 720), (57, 913), (3000, 40)]),
        ("llava-onevision", "<image>", [(224, 224), (640, 480), (100, 400)]),
        ("gemma3-structure", "<image_soft_token>", [(300, 200)]),
    ],
)
def test_estimate_equals_the_exact_count(name: str, token: str, sizes: list[tuple[int, int]]) -> None:
    proc = processor(name)
    token_id = proc.tokenizer.convert_tokens_to_ids(token)
    for w, h in sizes:
        sample = tokenize_row(proc, vqa_row(image_part(w, h)), CollateOptions())
        assert estimate_media_tokens(proc, w, h) == int((sample.input_ids == token_id).sum()), (w, h)


def test_estimate_refuses_what_it_cannot_count(qwen_processor) -> None:
    proc = processor("qwen2.5-vl")
    with pytest.raises(MediaError, match="refuses a 4000x8 image"):
        estimate_media_tokens(proc, 4000, 8)  # aspect ratio over Qwen's limit, as the processor itself says
    with pytest.raises(MediaError, match="positive"):
        estimate_media_tokens(proc, 0, 10)
    with pytest.raises(FeedlineError, match="no size-to-tokens rule"):
        estimate_media_tokens(qwen_processor, 224, 224)  # text-only
