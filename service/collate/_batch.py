"""Rows to a padded batch: per-sample tokenization with reports, then label formatting and padding.

A failing row raises with its index, unless the options ask to skip rows with no labels or drop over-long
rows; those are reported, never silently lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from feedline.proto import IGNORE_INDEX, FeedlineError, LabelFormat, NoSupervisedTokens, SampleTooLong
from feedline.proto._ragged import LENGTHS, RowPadding, pad_rows

from .._options import CollateOptions
from ..engine._sample import TokenizedSample, format_labels
from ..media._loading import MediaPolicy
from ..media._tensors import batch_media, wire_dtypes
from ..tokenizers._processor import Processor
from ._packing import PackPlan, pack_samples
from ._policy import policy_for
from ._rows import check_sample, label_rows

__all__ = ["CollatedBatch", "SampleReport", "batch_pad_id", "collate", "pad_samples", "tokenize_rows"]


@dataclass(frozen=True)
class SampleReport:
    """What happened to one input row."""

    index: int
    status: str  # "ok" | "skipped" | "dropped"
    strategy: str | None = None
    num_tokens: int = 0
    num_label_tokens: int = 0
    warnings: tuple[str, ...] = ()
    error: dict[str, Any] | None = None
    family: str | None = None  # the model-family rule used, for rows through a multimodal processor
    truncated: int = 0  # tokens cut away (truncation, or cut to fit a pack): the trainer's loader counts these

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "status": self.status,
            "strategy": self.strategy,
            "num_tokens": self.num_tokens,
            "num_label_tokens": self.num_label_tokens,
            "warnings": list(self.warnings),
            "error": self.error,
            "family": self.family,
            "truncated": self.truncated,
        }


@dataclass(frozen=True)
class CollatedBatch:
    """Named numpy arrays ready for the codec, plus one report per input row."""

    tensors: dict[str, np.ndarray]
    reports: tuple[SampleReport, ...] = field(default_factory=tuple)
    dtypes: dict[str, str] = field(default_factory=dict)  # arrays whose dtype numpy lacks: name -> "bfloat16"
    padding: RowPadding | None = None
    """Set when ``tensors`` hold each key's rows unpadded and concatenated, plus ``row_lengths`` (the ragged
    form, ``collate(ragged=True)``): how to pad them. None when ``tensors`` are the padded batch."""

    @property
    def num_label_tokens(self) -> int:
        return sum(r.num_label_tokens for r in self.reports)

    def token_counts(self) -> tuple[int, int]:
        """(attended tokens, padded size) of the batch's attention mask, in either form; (0, 0) without one."""
        mask = self.tensors.get("attention_mask")
        if mask is None:
            return 0, 0
        rows = len(self.tensors[LENGTHS]) if self.padding is not None else (mask.shape[0] if mask.ndim else 0)
        width = self.padding.width if self.padding is not None else (mask.shape[1] if mask.ndim > 1 else 0)
        return int(np.count_nonzero(mask)), rows * width


def tokenize_rows(
    processor: Processor,
    rows: Sequence[Mapping[str, Any]],
    options: CollateOptions,
    *,
    first_index: int = 0,
    media: MediaPolicy | None = None,
) -> tuple[list[TokenizedSample], list[SampleReport]]:
    """Tokenize every row (one batched encode); skipped/dropped rows appear only in the reports, with their error."""
    samples: list[TokenizedSample] = []
    reports: list[SampleReport] = []
    labelled = label_rows(processor, rows, options, first_index=first_index, media=media)
    for index, sample in enumerate(labelled, start=first_index):
        try:
            if isinstance(sample, FeedlineError):
                raise sample
            check_sample(sample, options, index)
        except NoSupervisedTokens as exc:
            if options.on_zero_labels != "skip":
                raise
            reports.append(SampleReport(index, "skipped", error=exc.to_dict()))
            continue
        except SampleTooLong as exc:
            if options.overlong != "drop":
                raise
            reports.append(SampleReport(index, "dropped", error=exc.to_dict()))
            continue
        except FeedlineError as exc:
            if options.on_sample_error != "skip":
                raise
            reports.append(SampleReport(index, "skipped", error=exc.to_dict()))
            continue
        samples.append(sample)
        reports.append(_report(index, sample, options))
    return samples, reports


def _report(index: int, sample: TokenizedSample, options: CollateOptions) -> SampleReport:
    count = int(sample.supervised.sum()) if options.label_format is not LabelFormat.SHIFTED else sample.num_label_tokens
    return SampleReport(
        index=index,
        status="ok",
        strategy=sample.strategy.value,
        num_tokens=sample.num_tokens,
        num_label_tokens=count,
        warnings=sample.warnings,
        family=sample.family,
        truncated=sample.truncated,
    )


def collate(
    processor: Processor,
    rows: Sequence[Mapping[str, Any]],
    options: CollateOptions,
    *,
    media: MediaPolicy | None = None,
    admit: Callable[[Sequence[SampleReport]], None] | None = None,
    ragged: bool = False,
) -> CollatedBatch:
    """Tokenize, label and pad a batch of rows (``media``: the operator's media policy for image/audio parts).

    ``admit`` sees the reports of the tokenized rows before any tensor is built and may raise to refuse the
    batch (the servers' token caps and time budget). Zero rows give zero-row tensors: in dataset mode a rank's
    share of the last global step can be empty. ``ragged``: a text batch that is not packed comes unpadded
    (``CollatedBatch.padding``), for a client that pads it where the tensors are made.
    """
    samples, reports = tokenize_rows(processor, rows, options, media=media)
    if admit is not None:
        admit([r for r in reports if r.status == "ok"])
    pad_id = batch_pad_id(processor, options)
    if options.packing is None or not samples:
        if ragged and not any(s.media for s in samples):
            flat, lengths, padding = _row_arrays(samples, options, pad_id)
            return CollatedBatch(tensors={**flat, LENGTHS: lengths}, reports=tuple(reports), padding=padding)
        tensors = pad_samples(samples, options, pad_id)
    else:
        tensors, plan = pack_samples(samples, options.packing, label_format=options.label_format, pad_id=pad_id)
        reports = _with_pack_outcome(reports, samples, plan)
    return CollatedBatch(tensors=tensors, reports=tuple(reports), dtypes=wire_dtypes(tensors, options.pixel_dtype))


def _with_pack_outcome(
    reports: list[SampleReport], samples: Sequence[TokenizedSample], plan: PackPlan
) -> list[SampleReport]:
    """Mark the samples the packer dropped or truncated (plan indices count only the samples that were kept)."""
    ok = [i for i, r in enumerate(reports) if r.status == "ok"]
    out = list(reports)
    for i in plan.dropped:
        r = out[ok[i]]
        error = {
            "kind": "sample_too_long",
            "message": f"{r.num_tokens} tokens do not fit a pack",
            "sample": r.index,
            "field": "packing.pack_size",
        }
        out[ok[i]] = replace(r, status="dropped", num_label_tokens=0, error=error)
    for i in plan.truncated:
        r, keep = out[ok[i]], int(plan.keep[int(np.flatnonzero(plan.indices == i)[0])])
        first = 1 if plan.label_format is LabelFormat.SHIFTED else 0
        out[ok[i]] = replace(
            r,
            num_label_tokens=int(samples[i].supervised[first:keep].sum()),
            truncated=r.truncated + samples[i].num_tokens - keep,
            warnings=r.warnings + (f"truncated on the right to {keep} tokens to fit one pack",),
        )
    return out


def batch_pad_id(processor: Processor, options: CollateOptions) -> int:
    """The id that pads input_ids: the processor's, or under the nemo policy the one NeMo's datasets use."""
    return policy_for(options).pad_id(processor)


def _row_arrays(
    samples: Sequence[TokenizedSample], options: CollateOptions, pad_id: int
) -> tuple[dict[str, np.ndarray], np.ndarray, RowPadding]:
    """Each key's formatted rows concatenated, the row lengths, and how they pad to the batch."""
    rows = [_format(s, options.label_format) for s in samples]
    lengths = np.array([r["input_ids"].shape[0] for r in rows], dtype=np.int64)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "loss_mask": 0, "attention_mask": 0}
    keys = list(rows[0]) if rows else ["input_ids", _label_key(options.label_format), "attention_mask"]
    flat = {
        key: np.concatenate([r[key] for r in rows]).astype(np.int64, copy=False) if rows else np.zeros(0, np.int64)
        for key in keys
    }
    return flat, lengths, RowPadding(_target_width(lengths.tolist(), options), {key: fill[key] for key in keys})


def pad_samples(samples: Sequence[TokenizedSample], options: CollateOptions, pad_id: int) -> dict[str, np.ndarray]:
    """Format each sample's labels, then right-pad every row to the batch length (``pad_rows``), media beside."""
    flat, lengths, padding = _row_arrays(samples, options, pad_id)
    out = {key: pad_rows(arr, lengths, padding.width, padding.fill[key]) for key, arr in flat.items()}
    if any(s.media for s in samples):
        out.update(batch_media(samples, options.label_format, padding.width))
    return out


def _format(sample: TokenizedSample, fmt: LabelFormat) -> dict[str, np.ndarray]:
    row = format_labels(sample.input_ids, sample.supervised, fmt)
    attention = sample.attention_mask
    if attention is None:
        attention = np.ones(sample.num_tokens, dtype=np.int64)
    # Shifted: input t is attended when its target t+1 is content (NeMo's content_len - 1 for pre-padded rows).
    row["attention_mask"] = attention[1:] if fmt is LabelFormat.SHIFTED else attention
    return row


def _label_key(fmt: LabelFormat) -> str:
    return "loss_mask" if fmt is LabelFormat.LOSS_MASK else "labels"


def _target_width(lengths: Sequence[int], options: CollateOptions) -> int:
    longest = max(max(lengths, default=0), policy_for(options).padded_width(options) or 0)
    multiple = options.pad_to_multiple_of
    if multiple:
        longest = -(-longest // multiple) * multiple
    return longest
