"""The default label policy on text rows: one render and one tokenization per conversation.

Pure functions over a loaded Processor: no network, no global state. A batch's rows are parsed and rendered,
their texts encoded in one call, then labelled. Which rows come here (rather than to the ``nemo`` policy or the
media path) is decided once, in ``collate``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from feedline.proto import (
    FeedlineError,
    InvalidSample,
    LabelStrategy,
    TemplateError,
)

from .._options import CollateOptions
from ..tokenizers._markers import TurnMarkers
from ..tokenizers._processor import Processor
from ._conversation import Conversation, PromptCompletion, Row, parse_row
from ._sample import TokenizedSample
from ._scan_proof import Proof, row_features, scan_proof
from ._spans import TurnLayout, generation_layout, marker_layout, reasoning_holes, render_layout
from ._text_labels import TextLabels
from ._tokenmask import token_regions
from ._truncation import cut_sample, truncation_window

__all__ = ["capture", "label_conversation", "label_text_rows", "parse_rows"]

_T = TypeVar("_T")
Parsed = Sequence[tuple[int, "Row | FeedlineError"]]


def parse_rows(
    rows: Sequence[Mapping[str, Any]], options: CollateOptions, first_index: int = 0
) -> list[tuple[int, Row | FeedlineError]]:
    """Each row parsed into the conversation model, paired with its index; a row's error stands in its place."""
    return [
        (i, capture(parse_row, row, index=i, require_assistant=options.answer_only))
        for i, row in enumerate(rows, start=first_index)
    ]


def label_text_rows(
    processor: Processor, parsed: Parsed, options: CollateOptions
) -> list[TokenizedSample | FeedlineError]:
    """The default policy on text rows: render each, encode all texts in one call, label, cut to max_length."""
    prepared = [
        row if isinstance(row, FeedlineError) else capture(_prepare, processor, row, options, i) for i, row in parsed
    ]
    ready = [p for p in prepared if not isinstance(p, FeedlineError)]
    encoded = iter(processor.encoder.encode_batch_with_offsets([p[1].text for p in ready]))
    out: list[TokenizedSample | FeedlineError] = []
    for p in prepared:
        if isinstance(p, FeedlineError):
            out.append(p)
            continue
        sample = _finish(processor, p, *next(encoded))
        out.append(cut_sample(sample, truncation_window(sample.num_tokens, options), options))
    return out


def capture(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | FeedlineError:
    """``fn(*args, **kwargs)``, or the FeedlineError it raised: one row's error is returned in its place."""
    try:
        return fn(*args, **kwargs)
    except FeedlineError as exc:
        return exc


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
                    sample=index,
                    field=f"messages[{k}].content[{j}]",
                )


def _finish(
    processor: Processor, prepared: tuple[Row, TextLabels], ids: np.ndarray, starts: np.ndarray
) -> TokenizedSample:
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
    try:  # the one place a template failure gets its sample index
        rendered = renderer.render(template_messages, tools=conv.tools, track_generation=True)
        text = rendered.text
        layout, strategy, warnings = _find_turns(processor, conv, template_messages, rendered.generation_spans, text)
    except TemplateError as exc:
        raise exc.at_sample(index) from exc
    turns = layout.supervised(last_turn_only=options.train_on_last_turn_only)
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
) -> tuple[TurnLayout, LabelStrategy, list[str]]:
    """The assistant turns (scan where proven, else the general method), then the template's generation blocks
    inside them when it has any."""
    warnings: list[str] = []
    if not processor.renderer.has_generation_tags:
        layout, strategy = _locate_turns(processor, conv, template_messages, text, warnings)
        return layout, strategy, warnings
    turns: TurnLayout | None
    try:
        turns = _locate_turns(processor, conv, template_messages, text, warnings)[0]
    except TemplateError as exc:
        warnings.append(f"assistant turns not located ({exc.message}); generation blocks used as they are")
        turns = None
    layout, tag_warnings = generation_layout(text, generation, conv.messages, turns)
    return layout, LabelStrategy.GENERATION_TAGS, warnings + tag_warnings


def _locate_turns(
    processor: Processor,
    conv: Conversation,
    template_messages: list[dict[str, Any]],
    text: str,
    warnings: list[str],
) -> tuple[TurnLayout, LabelStrategy]:
    """The one-render scan where the probes proved it for this kind of row, else (or when it fails) the general
    method; rows of a kind where the scan differed from the general method never use the scan."""
    markers = processor.markers
    usable = markers if isinstance(markers, TurnMarkers) else None
    proof = scan_proof(processor)
    standing = [proof[f] for f in row_features(conv)]
    if usable is not None and Proof.DIFFERS not in standing:
        try:
            return marker_layout(text, conv.messages, usable), LabelStrategy.TURN_MARKERS
        except TemplateError as exc:
            warnings.append(f"turn-marker scan failed ({exc.message}); used prefix rendering")
    elif isinstance(markers, TemplateError):
        warnings.append(f"no turn markers ({markers.message}); used prefix rendering")
    layout = render_layout(processor.renderer, template_messages, conv.messages, text, conv.tools, usable)
    return layout, LabelStrategy.PREFIX_RENDER


def _with_bos_eos(processor: Processor, ids: np.ndarray, supervised: np.ndarray) -> TokenizedSample:
    """No template: the tokenizer's own BOS before the text, and a supervised EOS closing the completion."""
    prefix, eos = processor.bos_prefix, processor.eos_token_id
    suffix = [eos] if eos is not None and (ids.size == 0 or ids[-1] != eos) else []
    return TokenizedSample(
        input_ids=np.concatenate([np.asarray(prefix, dtype=np.int64), ids, np.asarray(suffix, dtype=np.int64)]),
        supervised=np.concatenate([np.zeros(len(prefix), bool), supervised, np.ones(len(suffix), bool)]),
        strategy=LabelStrategy.PROMPT_COMPLETION,
    )
