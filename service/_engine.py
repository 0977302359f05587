"""The text engine: rows in, TokenizedSamples out; one render and one tokenization per conversation.

Pure functions over a loaded Processor: no network, no global state. A batch's rows are parsed and rendered,
their texts encoded in one call, then labelled. The "nemo" label policy lives in ``_nemo`` (NeMo AutoModel's
behaviour, defects included) and processors with a multimodal part go through ``_vlm``; everything else here
is the default policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from feedline.proto import (
    FeedlineError,
    InvalidSample,
    LabelPolicy,
    LabelStrategy,
    NoSupervisedTokens,
    SampleTooLong,
    TemplateError,
)

from ._conversation import Conversation, PromptCompletion, Row, parse_row
from ._markers import TurnMarkers
from ._media import MediaPolicy
from ._options import CollateOptions
from ._processor import Processor
from ._sample import TokenizedSample
from ._spans import TurnLayout, generation_layout, marker_layout, prefix_layout, reasoning_holes
from ._text_labels import TextLabels
from ._tool_ids import require_tool_call_ids
from ._tokenmask import spans_to_token_mask, token_regions

__all__ = ["TextLabels", "check_sample", "label_conversation", "label_row", "label_rows", "tokenize_row"]

_T = TypeVar("_T")


def tokenize_row(
    processor: Processor, row: Mapping[str, Any], options: CollateOptions, *, index: int = 0,
    media: MediaPolicy | None = None,
) -> TokenizedSample:
    """Tokenize and label one row; errors name the sample (``index``) and the field."""
    return check_sample(label_row(processor, row, options, index=index, media=media), options, index)


def label_row(
    processor: Processor, row: Mapping[str, Any], options: CollateOptions, *, index: int = 0,
    media: MediaPolicy | None = None,
) -> TokenizedSample:
    """Tokenize and label one row without the final checks (the mask debugger shows even empty samples)."""
    result = label_rows(processor, [row], options, first_index=index, media=media)[0]
    if isinstance(result, FeedlineError):
        raise result
    return result


def label_rows(
    processor: Processor, rows: Sequence[Mapping[str, Any]], options: CollateOptions, *, first_index: int = 0,
    media: MediaPolicy | None = None,
) -> list[TokenizedSample | FeedlineError]:
    """Label every row; a row's own error is returned in its place so the caller decides (raise or skip).

    A processor with a multimodal part takes every row through its family rule (``_vlm``); ``media`` is the
    operator's media policy (roots for image paths, size limits).
    """
    indexed = list(enumerate(rows, start=first_index))
    if processor.hf_processor is not None:
        from ._vlm import tokenize_multimodal_rows

        parsed = [(i, _catch(lambda: _parse(processor, row, options, i))) for i, row in indexed]
        return tokenize_multimodal_rows(processor, parsed, options, policy=media)
    if options.label_policy is LabelPolicy.NEMO:
        from ._nemo import nemo_tokenize

        return [_catch(lambda: nemo_tokenize(processor, _parse(processor, row, options, i), options, index=i)) for i, row in indexed]
    prepared = [_catch(lambda: _prepare(processor, _parse(processor, row, options, i), options, i)) for i, row in indexed]
    ready = [p for p in prepared if not isinstance(p, FeedlineError)]
    encoded = iter(processor.encoder.encode_batch_with_offsets([p[1].text for p in ready]))
    return [p if isinstance(p, FeedlineError) else _truncate(_finish(processor, p, *next(encoded)), options)
            for p in prepared]


def check_sample(sample: TokenizedSample, options: CollateOptions, index: int) -> TokenizedSample:
    """Refuse a sample that is still over max_length, or that would train on nothing."""
    over = options.max_length is not None and sample.num_tokens > options.max_length
    if over and options.label_policy is not LabelPolicy.NEMO:  # NeMo keeps over-long samples whole
        raise SampleTooLong(f"{sample.num_tokens} tokens exceed max_length {options.max_length}", sample=index)
    if sample.num_label_tokens == 0:
        raise NoSupervisedTokens(
            f"no supervised tokens ({sample.strategy.value}); the sample would train on nothing", sample=index
        )
    return sample


def _catch(fn: Callable[[], _T]) -> _T | FeedlineError:
    try:
        return fn()
    except FeedlineError as exc:
        return exc


def _parse(processor: Processor, row: Mapping[str, Any], options: CollateOptions, index: int) -> Row:
    parsed = parse_row(row, index=index, require_assistant=options.answer_only)
    return require_tool_call_ids(parsed, processor.uses_tool_call_id, index)


def _prepare(processor: Processor, parsed: Row, options: CollateOptions, index: int) -> tuple[Row, TextLabels]:
    """Render a row and find its supervised character spans (no tokens yet)."""
    if isinstance(parsed, PromptCompletion):
        text = parsed.prompt + parsed.completion
        spans = ((len(parsed.prompt), len(text)),)
        return parsed, TextLabels(text, spans, (), (), LabelStrategy.PROMPT_COMPLETION, ())
    _refuse_media(processor, parsed, index)
    return parsed, label_conversation(processor, parsed, options, index)


def _refuse_media(processor: Processor, conv: Conversation, index: int) -> None:
    """A text-only processor cannot use media parts; dropping them silently would change the sample."""
    for k, msg in enumerate(conv.messages):
        for j, part in enumerate(msg.parts):
            if part.type != "text":
                raise InvalidSample(
                    f"processor {processor.name!r} is text-only and cannot take a {part.type} part",
                    sample=index, field=f"messages[{k}].content[{j}]",
                )


def _finish(processor: Processor, prepared: tuple[Row, TextLabels], ids: np.ndarray, starts: np.ndarray) -> TokenizedSample:
    parsed, plan = prepared
    if isinstance(parsed, PromptCompletion):
        return _with_bos_eos(processor, ids, plan.token_mask(plan.text, starts))
    return TokenizedSample(
        input_ids=ids,
        supervised=plan.token_mask(plan.text, starts),
        strategy=plan.strategy,
        turn_index=token_regions(starts, plan.regions),
        warnings=plan.warnings,
    )


def label_conversation(
    processor: Processor, conv: Conversation, options: CollateOptions, index: int, *, keep_parts: bool = False
) -> TextLabels:
    """Render once and find, in characters, the supervised turns (``keep_parts``: media parts for processors)."""
    renderer = processor.renderer
    template_messages = conv.template_messages(keep_parts=keep_parts)
    try:
        rendered = renderer.render(template_messages, tools=conv.tools, track_generation=True)
    except TemplateError as exc:
        raise exc.at_sample(index) from exc
    text = rendered.text
    layout, strategy, warnings = _find_turns(processor, conv, template_messages, rendered.generation_spans, text, index)
    turns = layout.assistant[-1:] if options.train_on_last_turn_only else layout.assistant
    if not options.answer_only:
        turns, strategy = ((0, len(text)),), LabelStrategy.ALL_TOKENS
    holes: tuple[tuple[int, int], ...] = ()
    if options.mask_reasoning_content and any(m.reasoning_content for m in conv.messages):
        if renderer.mentions_reasoning:
            holes = reasoning_holes(text, conv.messages, layout)
        else:
            warnings.append("reasoning_content is present but the chat template never renders it")
    return TextLabels(text, tuple(turns), holes, layout.regions, strategy, tuple(warnings))


def _find_turns(
    processor: Processor,
    conv: Conversation,
    template_messages: list[dict[str, Any]],
    generation: tuple[tuple[int, int], ...],
    text: str,
    index: int,
) -> tuple[TurnLayout, LabelStrategy, list[str]]:
    """Generation tags if the template has them, else derived turn markers, else prefix rendering."""
    warnings: list[str] = []
    try:
        if processor.renderer.has_generation_tags:
            return generation_layout(text, generation, conv.messages), LabelStrategy.GENERATION_TAGS, warnings
        markers = processor.markers
        if isinstance(markers, TurnMarkers):
            try:
                return marker_layout(text, conv.messages, markers), LabelStrategy.TURN_MARKERS, warnings
            except TemplateError as exc:
                warnings.append(f"turn-marker scan failed ({exc.message}); used prefix rendering")
        else:
            warnings.append(f"no turn markers ({markers.message}); used prefix rendering")
        layout = prefix_layout(processor.renderer, template_messages, conv.messages, text, conv.tools)
        return layout, LabelStrategy.PREFIX_RENDER, warnings
    except TemplateError as exc:
        raise exc.at_sample(index) from exc


def _with_bos_eos(processor: Processor, ids: np.ndarray, supervised: np.ndarray) -> TokenizedSample:
    """No template: the tokenizer's own BOS before the text, and a supervised EOS closing the completion."""
    prefix, eos = processor.bos_prefix, processor.eos_token_id
    suffix = [eos] if eos is not None and (ids.size == 0 or ids[-1] != eos) else []
    return TokenizedSample(
        input_ids=np.concatenate([np.asarray(prefix, dtype=np.int64), ids, np.asarray(suffix, dtype=np.int64)]),
        supervised=np.concatenate([np.zeros(len(prefix), bool), supervised, np.ones(len(suffix), bool)]),
        strategy=LabelStrategy.PROMPT_COMPLETION,
    )


def _truncate(sample: TokenizedSample, options: CollateOptions) -> TokenizedSample:
    """Cut to max_length from the chosen side (check_sample refuses what is still too long); warn on a cut turn."""
    limit = options.max_length
    if limit is None or sample.num_tokens <= limit or options.truncation == "none":
        return sample
    keep = slice(0, limit) if options.truncation == "right" else slice(sample.num_tokens - limit, None)
    cut = sample.num_tokens - limit
    warnings = list(sample.warnings)
    if sample.supervised[keep].sum() < sample.supervised.sum():
        warnings.append(f"truncation ({options.truncation}) cut {cut} tokens, supervised ones among them")
    return TokenizedSample(
        input_ids=sample.input_ids[keep],
        supervised=sample.supervised[keep],
        strategy=sample.strategy,
        turn_index=None if sample.turn_index is None else sample.turn_index[keep],
        media=sample.media,
        warnings=tuple(warnings),
        truncated=cut,
    )
