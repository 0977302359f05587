"""Templateless processors (Nemotron-Parse style): a fixed task prompt, then the answer; the prompt is masked.

A row is a conversation whose first user message carries the image and whose first assistant message is the
answer (or a prompt/completion row, the prompt replacing the task prompt). The text is ``prompt + answer``;
only the answer (and the tokenizer's end-of-sequence text, when the prompt format needs one) is supervised.
"""

from __future__ import annotations

from typing import Any

from feedline.proto import InvalidSample, LabelStrategy

from ..._options import CollateOptions
from ...engine._conversation import Conversation, PromptCompletion
from ...engine._text_labels import TextLabels
from ._protocol import LoadedMedia, ProcessorCall
from .generic import GenericFamily, processor_errors, verified_call

__all__ = ["NEMOTRON_PARSE_TASK_PROMPT", "TemplatelessFamily"]

NEMOTRON_PARSE_TASK_PROMPT = "</s><s><predict_bbox><predict_classes><output_markdown>"


class TemplatelessFamily(GenericFamily):
    name = "templateless"
    unplaced_media = frozenset({"image"})  # the image goes to the vision encoder, not into the prompt
    task_prompt = NEMOTRON_PARSE_TASK_PROMPT

    def prepare(self, row: Conversation | PromptCompletion, index: int) -> Conversation | PromptCompletion:
        if isinstance(row, Conversation) and not any(m.role == "assistant" and m.text for m in row.messages):
            raise InvalidSample("a templateless sample needs an assistant answer", sample=index, field="messages")
        return row

    def render(
        self, processor: Any, row: Conversation | PromptCompletion, options: CollateOptions, index: int
    ) -> TextLabels:
        if isinstance(row, PromptCompletion):
            prompt, answer = row.prompt, row.completion
        else:
            prompt = self.task_prompt
            answer = next(m.text for m in row.messages if m.role == "assistant" and m.text)
        eos = processor.tokenizer.eos_token or ""
        text = prompt + answer + (eos if eos and not answer.endswith(eos) else "")
        return TextLabels(text, ((len(prompt), len(text)),), (), (0, len(prompt)), LabelStrategy.PROMPT_COMPLETION, ())

    def call(self, processor: Any, text: str, media: LoadedMedia, index: int) -> ProcessorCall:
        hf = processor.hf_processor
        with processor_errors(index, hf):
            out = dict(
                hf(images=list(media.images) or None, text=[text], return_tensors="np", add_special_tokens=False)
            )
            return verified_call(processor, text, out)
