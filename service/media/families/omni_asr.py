"""Qwen2.5-Omni / Qwen3-Omni speech recognition: audio to the processor's Whisper feature extractor.

The conversation must end in a non-empty assistant turn (otherwise every label would be masked, NeMo's guard
in ``qwen3_omni_asr_collate_fn``). Audio is validated by the media loader (1-D float samples at the feature
extractor's rate); the processor returns ``input_features`` and ``feature_attention_mask`` per sample.
"""

from __future__ import annotations

from feedline.proto import InvalidSample

from ...engine._conversation import Conversation, PromptCompletion
from .generic import GenericFamily

__all__ = ["OmniASRFamily"]


class OmniASRFamily(GenericFamily):
    name = "qwen_omni"
    extra_media_tokens = ("<|vision_bos|>", "<|vision_eos|>", "<|audio_bos|>", "<|audio_eos|>")

    def prepare(self, row: Conversation | PromptCompletion, index: int) -> Conversation | PromptCompletion:
        row = super().prepare(row, index)
        assert isinstance(row, Conversation)
        last = row.messages[-1]
        if last.role != "assistant" or not last.text.strip():
            raise InvalidSample(
                "an Omni ASR conversation must end in a non-empty assistant turn (the transcript)",
                sample=index,
                field=f"messages[{len(row.messages) - 1}]",
            )
        return row
