"""The generic family: the processor's own template, media preprocessing and placeholder expansion.

Used, explicitly and reported as "generic", for any processor class without a registered rule. It needs a
processor that reports where it expanded each placeholder (transformers' ``return_text_replacement_offsets``)
and token offsets; one that does not is refused with a TemplateError rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np

from feedline.proto import FeedlineError, InvalidSample, TemplateError

from ..._options import CollateOptions
from ...engine._conversation import Conversation, PromptCompletion
from ...engine._sample import TOKEN_AXIS_KEYS
from ...engine._text import capture, label_conversation
from ...engine._text_labels import TextLabels
from ._protocol import LoadedMedia, ProcessorCall

__all__ = ["PROCESSOR_ERRORS", "TOKEN_AXIS_KEYS", "GenericFamily", "processor_errors"]

_DROPPED_KEYS = frozenset({"input_ids", "attention_mask", "offset_mapping", "text_replacement_offsets"})


# What processors raise on input they refuse (aspect ratios, placeholder counts, bad arrays).
PROCESSOR_ERRORS = (ValueError, TypeError, IndexError, KeyError, OSError, ZeroDivisionError)


@contextmanager
def processor_errors(index: int, processor: Any) -> Iterator[None]:
    """Translate a processor's own exceptions into one per-sample error (the one boundary for them)."""
    try:
        yield
    except PROCESSOR_ERRORS as exc:
        raise InvalidSample(
            f"the processor ({type(processor).__name__}) rejected this sample: {exc}", sample=index
        ) from exc


class GenericFamily:
    """Every rule in its generic form; families override only what differs."""

    name = "generic"
    extra_media_tokens: tuple[str, ...] = ()
    unplaced_media: frozenset[str] = frozenset()

    def prepare(self, row: Conversation | PromptCompletion, index: int) -> Conversation | PromptCompletion:
        if isinstance(row, PromptCompletion):
            raise InvalidSample(
                f"the {self.name} family renders conversations; a prompt/completion row has none", sample=index
            )
        return row

    def check_options(self, options: CollateOptions) -> None:
        return None

    def render(
        self, processor: Any, row: Conversation | PromptCompletion, options: CollateOptions, index: int
    ) -> TextLabels:
        assert isinstance(row, Conversation)
        return label_conversation(processor, row, options, index, keep_parts=True)

    def edit_prompt(self, processor: Any, text: str) -> list[tuple[int, str]]:
        return []

    def processor_kwargs(self, media: LoadedMedia) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if media.images:
            kwargs["images"] = list(media.images)
        if media.audio:
            kwargs["audio"] = list(media.audio)
        return kwargs

    def call(self, processor: Any, text: str, media: LoadedMedia, index: int) -> ProcessorCall:
        hf = processor.hf_processor
        with processor_errors(index, hf):
            out = hf(
                text=[text],
                return_tensors="np",
                add_special_tokens=False,
                return_offsets_mapping=True,
                return_text_replacement_offsets=True,
                **self.processor_kwargs(media),
            )
        return normalise_call(hf, text, dict(out))

    def call_batch(
        self, processor: Any, texts: Sequence[str], media: Sequence[LoadedMedia], indices: Sequence[int]
    ) -> list[ProcessorCall | FeedlineError]:
        """One ``call`` per sample: the generic rule does not know how to split a batched output."""
        return [capture(self.call, processor, t, m, i) for t, m, i in zip(texts, media, indices, strict=False)]

    def media_token_ids(self, processor: Any) -> frozenset[int]:
        return _media_token_ids(processor.hf_processor, self.extra_media_tokens)

    def check(self, processor: Any, call: ProcessorCall, index: int) -> None:
        return None

    def select_media(self, tensors: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
        """Per-image tensors (leading axis = number of images) keep only the kept images."""
        n = keep.shape[0]
        return {
            k: (v[keep] if k not in TOKEN_AXIS_KEYS and v.ndim and v.shape[0] == n else v) for k, v in tensors.items()
        }

    def finalize(self, processor: Any, input_ids: np.ndarray, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return tensors


def normalise_call(hf: Any, text: str, out: dict[str, Any]) -> ProcessorCall:
    """A processor's batch-of-one output to a ProcessorCall (expanded text rebuilt from its replacements)."""
    offsets, replacements = out.get("offset_mapping"), out.get("text_replacement_offsets")
    if offsets is None or replacements is None:
        raise TemplateError(
            f"{type(hf).__name__} reports no token offsets or placeholder replacements, so its "
            "tokens cannot be labelled generically; it needs a registered family"
        )
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    ends: list[int] = []
    added: list[int] = []
    cursor = total = 0
    for rep in replacements[0]:
        start, end = rep["span"]
        pieces += [text[cursor:start], rep["replacement"]]
        new_start = start + total
        spans.append((new_start, new_start + len(rep["replacement"])))
        total += len(rep["replacement"]) - (end - start)
        ends.append(end)
        added.append(total)
        cursor = end
    pieces.append(text[cursor:])
    tensors = {k: _per_sample(k, v) for k, v in out.items() if k not in _DROPPED_KEYS}
    return ProcessorCall(
        input_ids=np.asarray(out["input_ids"][0], dtype=np.int64),
        starts=np.asarray(offsets[0], dtype=np.int64).reshape(-1, 2)[:, 0].copy(),
        text="".join(pieces),
        media_spans=tuple(spans),
        media_kinds=tuple(str(rep.get("type", "image")) for rep in replacements[0]),
        placeholder_ends=np.asarray(ends, dtype=np.int64),
        added=np.asarray(added, dtype=np.int64),
        tensors=tensors,
    )


def _per_sample(key: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    return arr[0] if key in TOKEN_AXIS_KEYS else arr


@lru_cache(maxsize=64)
def _media_token_ids(hf: Any, extra: tuple[str, ...]) -> frozenset[int]:
    """Ids the processor itself names for media: its per-modality id lists and its ``*_token`` strings."""
    tokenizer = hf.tokenizer
    ids: set[int] = set()
    for modality in ("image", "video", "audio"):
        ids.update(i for i in getattr(hf, f"{modality}_token_ids", None) or () if isinstance(i, int))
    names = [v for k, v in vars(hf).items() if k.endswith("_token") and isinstance(v, str)] + list(extra)
    added = tokenizer.get_added_vocab()
    ids.update(added[n] for n in names if n in added)
    return frozenset(ids)


def verified_call(
    processor: Any, text: str, out: dict[str, Any], expand: dict[int, np.ndarray] | None = None
) -> ProcessorCall:
    """A ProcessorCall for a processor that reports no offsets (remote-code processors).

    Its tokens must equal the engine tokenizer's on the same text (checked: a difference is a TemplateError,
    never a guess). ``expand`` maps a placeholder token id to per-occurrence copy counts: the family's own
    placeholder expansion, applied here to ids, offsets and the text so the rest of the path is unchanged.
    """
    ids = np.asarray(out["input_ids"][0], dtype=np.int64)
    mine, starts = processor.encoder.encode_with_offsets(text)
    if not np.array_equal(ids, mine):
        raise TemplateError(
            f"{type(processor.hf_processor).__name__} tokenizes the prompt differently from its "
            "tokenizer; its labels cannot be aligned"
        )
    ends = np.append(starts[1:], len(text))
    replacements: list[dict[str, Any]] = []  # in the processor's own text_replacement_offsets form
    for token_id, counts in (expand or {}).items():
        at = np.flatnonzero(ids == token_id)
        if at.shape[0] != np.asarray(counts).shape[0]:
            raise TemplateError(f"{at.shape[0]} placeholders (id {token_id}) for {len(counts)} media items")
        for pos, n in zip(at, counts, strict=False):
            a, b = int(starts[pos]), int(ends[pos])
            replacements.append({"span": (a, b), "replacement": text[a:b] * int(n), "type": "image"})
    replacements.sort(key=lambda r: r["span"])
    reps = np.ones(ids.shape[0], dtype=np.int64)
    for r in replacements:
        pos = int(np.searchsorted(starts, r["span"][0]))
        reps[pos] = len(r["replacement"]) // (r["span"][1] - r["span"][0])
    expanded_ids = np.repeat(ids, reps)
    call = normalise_call(
        processor.hf_processor,
        text,
        {
            **{k: v for k, v in out.items() if k not in _DROPPED_KEYS},
            "input_ids": expanded_ids[None],
            "offset_mapping": np.zeros((1, expanded_ids.shape[0], 2), dtype=np.int64),
            "text_replacement_offsets": [replacements],
        },
    )
    width = np.repeat(ends - starts, reps)
    first = np.repeat(np.cumsum(reps) - reps, reps)
    copy = np.arange(expanded_ids.shape[0]) - first
    new = call.shift(np.repeat(starts, reps)) + copy * width
    return ProcessorCall(
        expanded_ids,
        new,
        call.text,
        call.media_spans,
        call.media_kinds,
        call.placeholder_ends,
        call.added,
        call.tensors,
    )
