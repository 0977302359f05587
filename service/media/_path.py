"""The media path: rows with images or audio in, TokenizedSamples with the processor's tensors out.

One render per row (the processor's own chat template), one processor call for the batch's rows where the
family allows it (else one per row), labels from the same span machinery as text (``label_conversation``)
mapped onto the processor's expanded tokens, then every media token unset. Over-long samples are cut only
between media items (a cut image takes its patches with it), after which the family computes what depends on
the final tokens (mRoPE position ids). A row's own error is returned in its place; the other rows go on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from feedline.proto import FeedlineError, MediaError, SampleTooLong

from .._options import CollateOptions
from ..engine._conversation import Conversation, PromptCompletion, Row
from ..engine._sample import TokenizedSample
from ..engine._text import capture
from ..engine._text_labels import TextLabels
from ..engine._tokenmask import token_regions
from ..engine._truncation import cut_sample, truncation_window
from ..tokenizers._processor import Processor
from ._loading import MediaPolicy, load_audio, load_image
from ._tensors import cast_pixels
from .families import TOKEN_AXIS_KEYS, Family, LoadedMedia, ProcessorCall, family_for

__all__ = [
    "DEFAULT_MEDIA_POLICY",
    "MediaSupervision",
    "default_supervision",
    "load_media",
    "media_window",
    "tokenize_multimodal_rows",
]

DEFAULT_MEDIA_POLICY = MediaPolicy()

# What a label policy supervises in one row's processor output, given the row's plan and its media tokens.
MediaSupervision = Callable[[Processor, TextLabels, ProcessorCall, np.ndarray], np.ndarray]


def default_supervision(
    processor: Processor, plan: TextLabels, call: ProcessorCall, media_tokens: np.ndarray
) -> np.ndarray:
    """The default policy: the plan's supervised text in the processor's tokens, never a media token."""
    mask: np.ndarray = _shifted(plan, call).token_mask(call.text, call.starts) & ~media_tokens
    return mask


def tokenize_multimodal_rows(
    processor: Processor,
    rows: Sequence[tuple[int, Row | FeedlineError]],
    options: CollateOptions,
    *,
    policy: MediaPolicy | None = None,
    supervision: MediaSupervision = default_supervision,
) -> list[TokenizedSample | FeedlineError]:
    """Tokenize and label parsed rows ``(index, row)`` through the processor's family rule, errors in place;
    ``supervision`` is the label policy's rule for what the processor's tokens train on."""
    family = family_for(processor.hf_processor)
    policy = policy or DEFAULT_MEDIA_POLICY
    staged = [
        row if isinstance(row, FeedlineError) else capture(_stage, processor, family, row, options, i, policy)
        for i, row in rows
    ]
    ready = [(i, s) for (i, _), s in zip(rows, staged, strict=False) if not isinstance(s, FeedlineError)]
    calls = iter(
        family.call_batch(processor, [s[0].text for _, s in ready], [s[1] for _, s in ready], [i for i, _ in ready])
    )
    out: list[TokenizedSample | FeedlineError] = []
    for (i, _), s in zip(rows, staged, strict=False):
        if isinstance(s, FeedlineError):
            out.append(s)
            continue
        call = next(calls)
        out.append(
            call
            if isinstance(call, FeedlineError)
            else capture(_label, processor, family, s, call, options, i, supervision)
        )
    return out


def _stage(
    processor: Processor, family: Family, row: Row, options: CollateOptions, index: int, policy: MediaPolicy
) -> tuple[TextLabels, LoadedMedia]:
    """Everything before the processor call: the row's media decoded, its prompt rendered and what to supervise."""
    family.check_options(options)
    row = family.prepare(row, index)
    media = load_media(processor, row, policy, index)
    plan = family.render(processor, row, options, index)
    return _insert(plan, family.edit_prompt(processor, plan.text)), media


def _label(
    processor: Processor,
    family: Family,
    staged: tuple[TextLabels, LoadedMedia],
    call: ProcessorCall,
    options: CollateOptions,
    index: int,
    supervision: MediaSupervision,
) -> TokenizedSample:
    """One row's processor output labelled, cut to max_length between media items, finalised by the family."""
    plan, media = staged
    _check_media_placed(call, media, family.unplaced_media, index)
    family.check(processor, call, index)
    spans = _media_token_spans(call)
    media_tokens = _media_token_mask(call, family.media_token_ids(processor), spans)
    sample = TokenizedSample(
        input_ids=call.input_ids,
        supervised=supervision(processor, plan, call, media_tokens),
        strategy=plan.strategy,
        turn_index=token_regions(call.starts, call.shift(np.asarray(plan.regions, dtype=np.int64)).tolist()),
        media=call.tensors,
        warnings=plan.warnings,
        family=family.name,
        media_tokens=media_tokens,
        media_spans=tuple(spans),
    )
    sample, dropped = _limit_length(sample, family, options, index)
    tensors = family.finalize(processor, sample.input_ids, dict(sample.media))
    tensors["n_images_per_sample"] = np.asarray([call.media_kinds.count("image") - dropped], dtype=np.int64)
    return dataclasses.replace(sample, media=cast_pixels(tensors, options.pixel_dtype))


def load_media(
    processor: Processor, row: Conversation | PromptCompletion, policy: MediaPolicy, index: int
) -> LoadedMedia:
    """Decode and validate every media part, in conversation order; errors name the part."""
    if isinstance(row, PromptCompletion):
        return LoadedMedia()
    images: list[Any] = []
    audio: list[np.ndarray] = []
    for k, msg in enumerate(row.messages):
        for j, part in enumerate(msg.parts):
            where = f"messages[{k}].content[{j}]"
            if part.type == "image":
                images.append(load_image(part.payload, policy, sample=index, where=where))
            elif part.type == "audio":
                audio.append(
                    load_audio(part.payload, policy, expected_rate=_audio_rate(processor), sample=index, where=where)
                )
            elif part.type == "video":
                raise MediaError("video parts are not supported by this service", sample=index, field=where)
    return LoadedMedia(images=tuple(images), audio=tuple(audio))


def _check_media_placed(call: ProcessorCall, media: LoadedMedia, unplaced: frozenset[str], index: int) -> None:
    """Every decoded image and audio part must be placed in the tokens: one the processor or its template ignores
    would otherwise train the model on a sample without it."""
    for kind, given in (("image", len(media.images)), ("audio", len(media.audio))):
        placed = call.media_kinds.count(kind)
        if placed != given and kind not in unplaced:
            raise MediaError(
                f"{given} {kind} part(s) but the processor placed {placed}: this processor (or its chat "
                f"template) does not take {kind} input here",
                sample=index,
                field="messages",
            )


def _audio_rate(processor: Processor) -> int | None:
    extractor = getattr(processor.hf_processor, "feature_extractor", None)
    rate = getattr(extractor, "sampling_rate", None)
    return int(rate) if rate else None


def _insert(plan: TextLabels, edits: list[tuple[int, str]]) -> TextLabels:
    """Apply text insertions; a span starting exactly at an insertion point starts after the inserted text."""
    if not edits:
        return plan
    edits = sorted(edits)
    at = np.asarray([p for p, _ in edits], dtype=np.int64)
    added = np.cumsum([len(t) for _, t in edits])

    def move(positions: Any) -> list[int]:
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        moved: list[int] = (pos + np.concatenate([[0], added])[np.searchsorted(at, pos, side="right")]).tolist()
        return moved

    pieces, cursor = [], 0
    for p, t in edits:
        pieces += [plan.text[cursor:p], t]
        cursor = p
    pieces.append(plan.text[cursor:])

    def spans(ss: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        return tuple(zip(move([s[0] for s in ss]), move([s[1] for s in ss]), strict=True))

    return dataclasses.replace(
        plan,
        text="".join(pieces),
        supervise=spans(plan.supervise),
        holes=spans(plan.holes),
        regions=tuple(move(plan.regions)),
    )


def _shifted(plan: TextLabels, call: ProcessorCall) -> TextLabels:
    """The plan's character spans moved into the processor's expanded text."""

    def move(spans: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        if not spans:
            return ()
        arr = call.shift(np.asarray(spans, dtype=np.int64).reshape(-1))
        return tuple((int(a), int(b)) for a, b in arr.reshape(-1, 2))

    return dataclasses.replace(plan, text=call.text, supervise=move(plan.supervise), holes=move(plan.holes))


def _media_token_spans(call: ProcessorCall) -> list[tuple[int, int, str]]:
    """Token index ranges [lo, hi) of each media expansion, with its kind."""
    out = []
    for (a, b), kind in zip(call.media_spans, call.media_kinds, strict=False):
        lo, hi = np.searchsorted(call.starts, a), np.searchsorted(call.starts, b)
        out.append((int(lo), int(hi), kind))
    return out


def _media_token_mask(call: ProcessorCall, media_ids: frozenset[int], spans: list[tuple[int, int, str]]) -> np.ndarray:
    mask = np.zeros(call.input_ids.shape[0], dtype=bool)
    for token_id in media_ids:  # a handful of ids: cheaper than np.isin's sort
        mask |= call.input_ids == token_id
    for lo, hi, _ in spans:
        mask[lo:hi] = True
    return mask


def media_window(sample: TokenizedSample, options: CollateOptions) -> slice | None:
    """The window truncation keeps, its edges moved off media items (a cut image takes its patches with it);
    None when that window would cut a media item that cannot be dropped (only images can)."""
    window = truncation_window(sample.num_tokens, options)
    lo, hi = window.start, window.stop
    for a, b, _ in sample.media_spans:
        if a < hi < b:
            hi = a
        if a < lo < b:
            lo = b
    if any(not (lo <= a and b <= hi) and kind != "image" for a, b, kind in sample.media_spans):
        return None
    return slice(lo, hi)


def _limit_length(
    sample: TokenizedSample, family: Family, options: CollateOptions, index: int
) -> tuple[TokenizedSample, int]:
    """Cut to max_length from the chosen side, never inside a media span; returns the sample and images dropped."""
    limit, n = options.max_length, sample.num_tokens
    if limit is None or n <= limit:
        return sample, 0
    if options.truncation == "none":
        raise SampleTooLong(f"{n} tokens exceed max_length {limit} (exact count after media expansion)", sample=index)
    window = media_window(sample, options)
    if window is None:
        raise SampleTooLong(
            f"{n} tokens exceed max_length {limit} and only images can be dropped by truncation", sample=index
        )
    lo, hi = window.start, window.stop
    image_keep = np.asarray([lo <= a and b <= hi for a, b, kind in sample.media_spans if kind == "image"], dtype=bool)
    tensors = dict(sample.media)
    if not image_keep.all():
        tensors = family.select_media(tensors, image_keep)
    tensors = {k: (v[..., lo:hi] if k in TOKEN_AXIS_KEYS else v) for k, v in tensors.items()}
    dropped = int((~image_keep).sum())
    cut = cut_sample(sample, window, options, media=tensors)
    if dropped:
        cut = dataclasses.replace(
            cut, warnings=cut.warnings + (f"truncation dropped {dropped} whole image(s) rather than cut inside one",)
        )
    return cut, dropped
