"""The ``nemo`` label policy for text rows: NeMo AutoModel's LLM dataset output for the same tokenizer and options.

Behaviour follows shared/spec/nemo_reference.md §1, defects included (role headers supervised by the prefix
fallback, a real pad id of 0 replaced by EOS, attention masks that only see trailing padding). Options map onto
NeMo's arguments: ``max_length`` is ``seq_length``; padding "max_length" is HF's "max_length" and anything else
"do_not_pad" (the collater pads); truncation "none" is "do_not_truncate" and "right" is ``True`` (HF then cuts on
the tokenizer's own ``truncation_side``, as in NeMo); "left" has no NeMo equivalent and is refused.

A sample carries the full unshifted ids, NeMo's final 0/1 mask and NeMo's unshifted attention mask (its content
rule), so ``format_labels`` and ``pad_samples`` give NeMo's shifted ``input_ids``/``labels``/``attention_mask``
or its unshifted ``input_ids``/``loss_mask``/``attention_mask``.
"""

from __future__ import annotations

import copy
import json
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from feedline.proto import FeedlineError, InvalidOptions, InvalidSample, LabelStrategy, TemplateError

from ..._options import CollateOptions
from ...tokenizers._processor import Processor
from .._conversation import Conversation, PromptCompletion
from .._sample import TokenizedSample
from ._chat import ChatCall, MaskedIds, format_chat_template
from ._fast import boundary_tokens, fast_or_reference
from ._render import TemplateText

__all__ = ["content_attention", "nemo_messages", "nemo_pad_token_id", "nemo_tokenize", "nemo_tokenizer"]

_PADDED_TOKENIZERS: weakref.WeakKeyDictionary[Processor, Any] = weakref.WeakKeyDictionary()
_BOUNDARIES: weakref.WeakKeyDictionary[Processor, dict[int, str]] = weakref.WeakKeyDictionary()
_TEXTS: weakref.WeakKeyDictionary[Processor, TemplateText] = weakref.WeakKeyDictionary()
_T = TypeVar("_T")


def nemo_tokenize(
    processor: Processor,
    row: Conversation | PromptCompletion,
    options: CollateOptions,
    *,
    index: int = 0,
    fast: bool = True,
) -> TokenizedSample:
    """One row as NeMo's ChatDataset (conversations) or ColumnMappedTextInstructionDataset (prompt/completion,
    ``use_hf_chat_template=False``) would produce it; ``fast=False`` makes NeMo's own per-prefix calls (the
    reference that the fast path, ``_nemo_fast``, is checked against)."""
    padding = "max_length" if options.padding == "max_length" else "do_not_pad"
    truncation = _hf_truncation(options)
    tokenizer = nemo_tokenizer(processor)
    try:
        if isinstance(row, PromptCompletion):
            labels = _format_prompt_completion(tokenizer, row, options, padding, truncation)
        else:
            labels = _format_chat(processor, tokenizer, row, options, padding, truncation, fast)
    except FeedlineError as exc:
        raise exc.at_sample(index) from exc
    warnings = list(labels.warnings)
    n = labels.input_ids.shape[0]
    if options.max_length is not None and n > options.max_length:
        warnings.append(f"{n} tokens exceed max_length {options.max_length}; NeMo emits the sample as it is")
    return TokenizedSample(
        input_ids=labels.input_ids,
        supervised=labels.mask,
        strategy=labels.strategy,
        attention_mask=content_attention(labels.input_ids, nemo_pad_token_id(processor), tokenizer.eos_token_id),
        warnings=tuple(warnings),
    )


def nemo_pad_token_id(processor: Processor) -> int:
    """The pad id NeMo's datasets use, ``_add_pad_token(tok) or eos``: the tokenizer's pad id, or EOS when it
    has none, and also when the real pad id is 0 (NeMo's ``or`` drops it; PR #3704)."""
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id or tokenizer.eos_token_id
    return int(pad) if pad is not None else 0


def nemo_tokenizer(processor: Processor) -> Any:
    """The tokenizer as NeMo's dataset leaves it: ``_add_pad_token`` makes EOS the pad token of a tokenizer that
    has none. That happens on a copy made once per processor, so the shared tokenizer never changes."""
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id is not None or tokenizer.eos_token is None:
        return tokenizer

    def padded() -> Any:
        copied = copy.deepcopy(tokenizer)
        copied.pad_token = copied.eos_token
        return copied

    return _per_processor(_PADDED_TOKENIZERS, processor, padded)


def _per_processor(
    cache: weakref.WeakKeyDictionary[Processor, _T], processor: Processor, build: Callable[[], _T]
) -> _T:
    """``cache[processor]``, built by ``build`` the first time (the caches live as long as their processor)."""
    found = cache.get(processor)
    if found is None:
        found = cache[processor] = build()
    return found


def content_attention(ids: np.ndarray, pad_token_id: int | None, eos_token_id: int | None) -> np.ndarray:
    """NeMo's unshifted attention mask (``_package_tokenized_example``): ones up to the content length.

    Content ends where the trailing run of pad ids starts; when pad == eos the first token of that run is the
    real EOS and stays content. Only trailing pads count, so left padding stays attended (as in NeMo). The
    shifted mask is this one without its first position.
    """
    n = ids.shape[0]
    not_pad = np.flatnonzero(ids != pad_token_id) if pad_token_id is not None else np.arange(n)
    end = int(not_pad[-1]) + 1 if not_pad.size else 0
    content = min(end + 1, n) if pad_token_id == eos_token_id else end
    attention = np.zeros(n, dtype=np.int64)
    attention[:content] = 1
    return attention


def _hf_truncation(options: CollateOptions) -> bool | str:
    if options.truncation == "left":
        raise InvalidOptions(
            "the nemo policy cannot truncate on the left: NeMo passes truncation=True to the tokenizer, which cuts "
            "on the tokenizer's own truncation_side; use truncation 'right' (or a tokenizer whose truncation_side "
            "is 'left'), or label_policy 'assistant'",
            field="truncation",
        )
    return True if options.truncation == "right" else "do_not_truncate"


def _format_chat(
    processor: Processor,
    tokenizer: Any,
    conv: Conversation,
    options: CollateOptions,
    padding: str,
    truncation: bool | str,
    fast: bool,
) -> MaskedIds:
    template = processor.chat_template
    if not template:
        raise TemplateError("NeMo's format_chat_template needs a chat template and this processor has none")
    if conv.has_media:
        raise InvalidSample("the nemo policy for text rows cannot take images or audio", field="messages")
    call = ChatCall(
        tokenizer=tokenizer,
        chat_template=_template_argument(template, tokenizer),
        tools=[dict(t) for t in conv.tools] if conv.tools else None,
        truncation=truncation,
        max_length=options.max_length,
    )
    messages = nemo_messages(conv)

    def run(chat: ChatCall) -> MaskedIds:
        return format_chat_template(
            chat,
            template,
            messages,
            padding=padding,
            answer_only=options.answer_only,
            train_on_last_turn_only=options.train_on_last_turn_only,
            mask_reasoning_content=options.mask_reasoning_content,
        )

    if not fast:
        return run(call)
    return fast_or_reference(run, call, processor.encoder, _boundaries(processor), _template_text(processor))


def _boundaries(processor: Processor) -> dict[int, str]:
    return _per_processor(_BOUNDARIES, processor, lambda: boundary_tokens(processor.tokenizer))


def _template_text(processor: Processor) -> TemplateText:
    """The fast path's renderer for the tokenizer NeMo's calls use (``nemo_tokenizer``), one per processor."""
    return _per_processor(_TEXTS, processor, lambda: TemplateText(nemo_tokenizer(processor)))


def nemo_messages(conv: Conversation) -> list[dict[str, Any]]:
    """The messages as NeMo's ChatDataset hands them to the template (nemo_reference.md §1.5).

    Every key of the message is kept; list content becomes its text parts joined with a space and None
    content ""; a None ``reasoning_content`` becomes ""; tool calls get ``id`` ``call_{i}`` and ``type``
    "function" when missing, and arguments that are not a string are serialised with ``json.dumps`` defaults
    (``ensure_ascii=True``: non-ASCII text becomes ``\\uXXXX`` escapes, as in NeMo's tensors).
    """
    out = []
    for msg, plain in zip(conv.messages, conv.template_messages(), strict=True):
        if msg.source is None:  # a ShareGPT turn: already NeMo's {role, content} form
            out.append(plain)
            continue
        message = dict(msg.source)
        message["content"] = msg.text
        if "reasoning_content" in message and message["reasoning_content"] is None:
            message["reasoning_content"] = ""
        if message.get("tool_calls"):
            message["tool_calls"] = [_nemo_tool_call(c, i) for i, c in enumerate(message["tool_calls"])]
        out.append(message)
    return out


def _nemo_tool_call(call: Mapping[str, Any], position: int) -> dict[str, Any]:
    fn = call["function"]
    arguments = fn.get("arguments", {})
    return {
        "id": call.get("id") or f"call_{position}",
        "type": call.get("type") or "function",
        "function": {
            "name": fn["name"],
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def _template_argument(template: str, tokenizer: Any) -> str | None:
    """None when the processor's template is the tokenizer's own, so HF picks among named templates as it
    does for NeMo; the processor's template when it overrides the tokenizer's."""
    own = getattr(tokenizer, "chat_template", None)
    if own == template or (isinstance(own, Mapping) and template in own.values()):
        return None
    return template


def _format_prompt_completion(
    tokenizer: Any, row: PromptCompletion, options: CollateOptions, padding: str, truncation: bool | str
) -> MaskedIds:
    """NeMo's ``format_prompt_completion``: the prompt boundary is a token count of the prompt alone (plus one for
    BOS when ``add_bos_token``), so a BPE merge across the boundary moves it; padding is always on the right."""
    prompt_tokens = 0
    if options.answer_only:
        bos = 1 if getattr(tokenizer, "add_bos_token", False) else 0
        prompt_tokens = bos + len(tokenizer(row.prompt, add_special_tokens=False)["input_ids"])
    out = tokenizer(
        row.prompt + row.completion,
        padding=padding,
        truncation=truncation,
        max_length=options.max_length,
        padding_side="right",
    )
    ids = np.asarray(out["input_ids"], dtype=np.int64)
    mask = (np.arange(ids.shape[0]) >= prompt_tokens) & np.asarray(out["attention_mask"], dtype=bool)
    strategy = LabelStrategy.PROMPT_COMPLETION if options.answer_only else LabelStrategy.ALL_TOKENS
    return MaskedIds(ids, mask, strategy)
