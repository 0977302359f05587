"""Sequence packing: plan which samples share a row from their lengths alone, then materialise rows lazily.

PLAN (``plan_packs``) is a pure function of the sample lengths, the label format and ``PackOptions``: the
samples are taken in the order given, ``window`` at a time, and each window is packed best-fit-decreasing.
The packs of a window are emitted in an order shuffled by ``(seed, window number)``; the least-filled pack
of a window is not emitted but handed to the next window, so a window's tail waste is recovered instead of
shipped. A server can therefore plan a whole epoch from lengths alone (a few microseconds per sample) and
hold only the plan.

MATERIALISE (``materialise``) turns some packs of a plan into one batch of named arrays. Labels are
formatted per document (``format_labels``), then concatenated, so a shift never crosses a document boundary;
a shifted document contributes ``len - 1`` tokens. Every document restarts its position ids at 0.

Layouts (S = pack_size, B = packs in the batch, D = most documents in one pack, N = documents in the batch)::

    key               padded            thd               dtype
    input_ids         [B, S]            [1, T]            int64   (pad: the processor's pad id)
    labels|loss_mask  [B, S]            [1, T]            int64   (pad: -100 | 0)
    position_ids      [B, S] | [3,B,S]  [1, T] | [3,1,T]  int64   (restart per document; pad 0)
    document_ids      [B, S]            [1, T]            int32   (0 = padding, 1..n per row | 1..N)
    seq_lens          [B, D]            [N]               int32   (real tokens per document; pad 0)
    seq_lens_padded   [B, D]            [N]               int32   (with the per-document multiple padding)
    cu_seqlens        [B, D + 1]        [N + 1]           int32   (flash-attn varlen offsets; repeat last)

THD concatenates the packs' documents with no padding between packs (T = the sum of their lengths); the
padded layout right-pads each pack to S. With ``pad_to_multiple`` m > 1 (context parallelism) each document
is padded to a multiple of m with pad ids and ignored labels; those slots keep the document's index and
continue its positions, and ``cu_seqlens`` counts them (TE's ``cu_seqlens_padded``). Media arrays are
concatenated along dim 0 in pack order; a per-sample ``media["position_ids"]`` of shape [3, L] (mRoPE) is
used in place of the 1D positions.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from feedline.proto import IGNORE_INDEX, InvalidOptions, InvalidSample, LabelFormat, SampleTooLong

from .._options import PackOptions
from ..engine._sample import TOKEN_AXIS_KEYS, TokenizedSample, format_labels
from ..media._tensors import _concatenate as concat_media_items

__all__ = [
    "PackOptions",
    "PackPlan",
    "materialise",
    "pack_samples",
    "plan_packs",
    "sample_lengths",
]

_POSITIONS_KEY = "position_ids"  # per-sample mRoPE positions [3, L] in TokenizedSample.media
_TOKEN_MEDIA = TOKEN_AXIS_KEYS - {_POSITIONS_KEY}  # other per-token media (mm_token_type_ids ...), 1D

SampleSource = Sequence[TokenizedSample] | Mapping[int, TokenizedSample]


@dataclass(frozen=True)
class PackPlan:
    """Which samples go in which pack, and how many of each sample's tokens are kept.

    ``indices[offsets[p]:offsets[p+1]]`` are the sample indices of pack ``p`` (ascending); ``keep`` is aligned
    with ``indices`` and counts the sample's own tokens used (less than its length only when truncated).
    The plan keeps the options and label format it was made for, so materialising needs nothing else.
    """

    options: PackOptions
    label_format: LabelFormat
    indices: np.ndarray
    offsets: np.ndarray
    keep: np.ndarray
    dropped: tuple[int, ...] = ()
    truncated: tuple[int, ...] = ()

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def pack(self, p: int) -> np.ndarray:
        """Sample indices of pack ``p``."""
        return self.indices[self.offsets[p] : self.offsets[p + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.pack(p) for p in range(len(self)))

    @property
    def pack_size(self) -> int:
        return self.options.pack_size

    @property
    def shift(self) -> int:
        """1 for the shifted label format: a document then contributes ``keep - 1`` tokens."""
        return 1 if self.label_format is LabelFormat.SHIFTED else 0

    @property
    def tokens(self) -> np.ndarray:
        """Real (non-padding) tokens each planned document contributes, aligned with ``indices``."""
        return self.keep - self.shift

    @property
    def slots(self) -> np.ndarray:
        """Slots each planned document occupies, its ``pad_to_multiple`` padding included."""
        return _round_up(self.tokens, self.options.pad_to_multiple)

    @property
    def fill_ratio(self) -> float:
        """Real tokens over the slots of all packs (1.0 means no padding at all)."""
        return float(self.tokens.sum()) / max(1, len(self) * self.pack_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the packs themselves as lists of sample indices)."""
        return {
            "packs": [p.tolist() for p in self],
            "dropped": list(self.dropped),
            "truncated": list(self.truncated),
            "fill_ratio": self.fill_ratio,
        }


def sample_lengths(samples: Sequence[TokenizedSample]) -> np.ndarray:
    """Token counts to plan with: real tokens only (a pre-padded sample's padding is not packed)."""
    spans = (_real_slice(s, i) for i, s in enumerate(samples))
    return np.fromiter((span.stop - span.start for span in spans), dtype=np.int64, count=len(samples))


def plan_packs(
    lengths: Sequence[int] | np.ndarray,
    options: PackOptions,
    *,
    label_format: LabelFormat = LabelFormat.SHIFTED,
) -> PackPlan:
    """Assign sample ``i`` (of full, unshifted length ``lengths[i]``) to a pack; deterministic in its inputs."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    shift = 1 if label_format is LabelFormat.SHIFTED else 0
    multiple = options.pad_to_multiple
    max_keep = options.pack_size // multiple * multiple + shift  # longest sample whose slots fit a row
    over = np.flatnonzero(lengths > max_keep)
    if over.size and options.overlong == "error":
        raise SampleTooLong(
            f"{int(lengths[over[0]])} tokens do not fit pack_size={options.pack_size}",
            sample=int(over[0]),
            field="packing.pack_size",
            hint="Options that fix it: raise packing.pack_size, or set packing.overlong "
            "to 'truncate' (cut the sample to a row) or 'drop' (leave it out)",
        )
    keep = np.minimum(lengths, max_keep) if options.overlong == "truncate" else lengths
    dropped = lengths - shift <= 0  # a document with no tokens after the shift has nothing to pack
    if options.overlong == "drop":
        dropped[over] = True
    slots = _round_up(keep - shift, multiple)
    bins = _pack_windows(np.flatnonzero(~dropped), slots, options)
    indices = np.concatenate(bins) if bins else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(bins) + 1, dtype=np.int64)
    np.cumsum([b.size for b in bins], out=offsets[1:])
    truncated = () if options.overlong != "truncate" else tuple(int(i) for i in over)
    return PackPlan(
        options=options,
        label_format=label_format,
        indices=indices,
        offsets=offsets,
        keep=keep[indices],
        dropped=tuple(int(i) for i in np.flatnonzero(dropped)),
        truncated=truncated,
    )


def _pack_windows(order: np.ndarray, slots: np.ndarray, options: PackOptions) -> list[np.ndarray]:
    """Best-fit-decreasing over consecutive windows; a window's emptiest pack is repacked with the next one."""
    packs: list[np.ndarray] = []
    carried = np.zeros(0, dtype=np.int64)
    starts = range(0, order.size, options.window)
    for number, start in enumerate(starts):
        members = np.concatenate([carried, order[start : start + options.window]])
        bins = _best_fit_decreasing(members, slots, options.pack_size)
        carried = (
            _carry(bins, carried, slots, options.pack_size) if start + options.window < order.size else carried[:0]
        )
        rng = np.random.default_rng((options.seed, number))
        packs.extend(bins[b] for b in rng.permutation(len(bins)))
    return packs


def _carry(bins: list[np.ndarray], carried: np.ndarray, slots: np.ndarray, capacity: int) -> np.ndarray:
    """Take the emptiest pack out of ``bins`` to repack with the next window.

    Only a pack of samples not carried before qualifies, so no sample waits more than one window.
    """
    fills = [(int(slots[b].sum()), n) for n, b in enumerate(bins) if not np.isin(b, carried).any()]
    fill, emptiest = min(fills, default=(capacity, -1))
    return bins.pop(emptiest) if fill < capacity and len(bins) > 1 else carried[:0]


def _best_fit_decreasing(members: np.ndarray, slots: np.ndarray, capacity: int) -> list[np.ndarray]:
    """Place the longest sample first, each into the pack it leaves fullest; ties go to the lower index."""
    by_size = members[np.lexsort((members, -slots[members]))]
    free: list[int] = []  # free slots of the open packs, ascending, paired with ...
    owner: list[int] = []  # ... the pack holding them
    contents: list[list[int]] = []
    for index, size in zip(by_size.tolist(), slots[by_size].tolist(), strict=False):
        pos = bisect.bisect_left(free, size)
        if pos < len(free):
            b = owner.pop(pos)
            left = free.pop(pos) - size
        else:
            b = len(contents)
            contents.append([])
            left = capacity - size
        contents[b].append(index)
        at = bisect.bisect_left(free, left)
        free.insert(at, left)
        owner.insert(at, b)
    return [np.sort(np.asarray(c, dtype=np.int64)) for c in contents]


def pack_samples(
    samples: Sequence[TokenizedSample],
    options: PackOptions,
    *,
    label_format: LabelFormat = LabelFormat.SHIFTED,
    pad_id: int,
) -> tuple[dict[str, np.ndarray], PackPlan]:
    """Plan and materialise every pack of ``samples`` as one batch (the request-sized path)."""
    plan = plan_packs(sample_lengths(samples), options, label_format=label_format)
    return materialise(samples, plan, range(len(plan)), pad_id=pad_id), plan


def materialise(
    samples: SampleSource,
    plan: PackPlan,
    packs: Sequence[int],
    *,
    pad_id: int,
) -> dict[str, np.ndarray]:
    """Build one batch from packs ``packs`` of ``plan``; ``samples[i]`` is the sample the plan calls ``i``."""
    fmt, multiple, thd = plan.label_format, plan.options.pad_to_multiple, plan.options.layout == "thd"
    rows = [
        [
            _document(samples[int(plan.indices[j])], int(plan.indices[j]), int(plan.keep[j]), fmt)
            for j in range(int(plan.offsets[p]), int(plan.offsets[p + 1]))
        ]
        for p in packs
    ]
    if thd:
        rows = [[doc for row in rows for doc in row]]
    sizes = [np.asarray([d.size for d in row], dtype=np.int64) for row in rows]
    out = _assemble(rows, sizes, multiple, None if thd else plan.pack_size, fmt, pad_id)
    out.update(_lengths(sizes, multiple, flat=thd))
    in_order = [samples[int(i)] for p in packs for i in plan.pack(p)]
    for key in sorted({k for s in in_order for k in s.media} - TOKEN_AXIS_KEYS):
        out[key] = concat_media_items(key, in_order)  # per-item media (pixels, grids ...) in pack order
    return out


@dataclass(frozen=True)
class _Doc:
    """One document ready to copy: formatted token arrays and its own positions."""

    arrays: dict[str, np.ndarray]  # input_ids, labels | loss_mask, optional per-token media
    positions: np.ndarray | None  # [3, n] mRoPE positions, or None for 0..n-1

    @property
    def size(self) -> int:
        return int(self.arrays["input_ids"].shape[0])


def _document(sample: TokenizedSample, index: int, keep: int, fmt: LabelFormat) -> _Doc:
    real = _real_slice(sample, index)
    length = real.stop - real.start
    if keep > length:
        raise InvalidSample(f"has {length} tokens but the plan expects {keep}", sample=index, field="input_ids")
    if keep < length and set(sample.media) - TOKEN_AXIS_KEYS:
        raise InvalidOptions(
            "a sample with media cannot be truncated; use overlong='drop'", sample=index, field="packing.overlong"
        )
    cut = slice(real.start, real.start + keep)
    arrays = format_labels(sample.input_ids[cut], sample.supervised[cut], fmt)
    shift = 1 if fmt is LabelFormat.SHIFTED else 0
    for key in _TOKEN_MEDIA.intersection(sample.media):
        arrays[key] = np.asarray(sample.media[key])[..., cut][..., : keep - shift].reshape(-1)
    positions = sample.media.get(_POSITIONS_KEY)
    if positions is not None:
        positions = np.asarray(positions, dtype=np.int64).reshape(3, -1)[:, cut][:, : keep - shift]
    return _Doc(arrays, positions)


def _assemble(
    rows: list[list[_Doc]], sizes: list[np.ndarray], multiple: int, width: int | None, fmt: LabelFormat, pad_id: int
) -> dict[str, np.ndarray]:
    """Concatenate each row's documents into [rows, width] arrays (width None: the longest row, for THD)."""
    docs = [doc for row in rows for doc in row]
    padded = [_round_up(n, multiple) for n in sizes]
    if width is None:
        width = max((int(p.sum()) for p in padded), default=0)
    label_key = "loss_mask" if fmt is LabelFormat.LOSS_MASK else "labels"
    fills = {"input_ids": pad_id, "labels": IGNORE_INDEX, "loss_mask": 0}
    token_keys = ["input_ids", label_key, *sorted(set().union(*(d.arrays for d in docs)) & _TOKEN_MEDIA)]
    out: dict[str, np.ndarray] = {k: np.empty((len(rows), width), dtype=np.int64) for k in token_keys}
    mrope = any(d.positions is not None for d in docs)
    positions = np.empty((3, len(rows), width) if mrope else (len(rows), width), dtype=np.int64)
    document_ids = np.empty((len(rows), width), dtype=np.int32)
    count = np.arange(max((int(p.max(initial=0)) for p in padded), default=0), dtype=np.int64)
    for r, row in enumerate(rows):
        used = int(padded[r].sum())
        for key in token_keys:
            _concat_into(out[key][r], [d.arrays.get(key) for d in row], sizes[r], padded[r], fills.get(key, 0))
        if mrope:
            np.concatenate(
                [_positions(d, int(p)) for d, p in zip(row, padded[r], strict=False)],
                axis=1,
                out=positions[:, r, :used],
            )
        elif row:
            np.concatenate([count[:p] for p in padded[r].tolist()], out=positions[r, :used])
        positions[..., r, used:] = 0
        document_ids[r, :used] = np.repeat(np.arange(1, len(row) + 1, dtype=np.int32), padded[r])
        document_ids[r, used:] = 0
    out["position_ids"] = positions
    out["document_ids"] = document_ids
    return out


def _concat_into(
    dest: np.ndarray, parts: list[np.ndarray | None], sizes: np.ndarray, padded: np.ndarray, fill: int
) -> None:
    """Write the documents' arrays one after another into ``dest``; missing parts and padding get ``fill``."""
    pieces: list[np.ndarray] = []
    for part, n, p in zip(parts, sizes.tolist(), padded.tolist(), strict=False):
        pieces.append(part if part is not None else np.full(n, fill, dtype=np.int64))
        if p > n:
            pieces.append(np.full(p - n, fill, dtype=np.int64))
    used = int(padded.sum())
    if pieces:
        np.concatenate(pieces, out=dest[:used])
    dest[used:] = fill


def _positions(doc: _Doc, slots: int) -> np.ndarray:
    """A document's [3, slots] mRoPE positions (0.. on all rows if it has none); padding continues the count."""
    if doc.positions is None:
        return np.broadcast_to(np.arange(slots, dtype=np.int64), (3, slots))
    n = doc.positions.shape[1]
    if slots == n:
        return doc.positions
    start = int(doc.positions.max(initial=-1)) + 1
    tail = np.broadcast_to(np.arange(start, start + slots - n, dtype=np.int64), (3, slots - n))
    return np.concatenate([doc.positions, tail], axis=1)


def _lengths(sizes: list[np.ndarray], multiple: int, *, flat: bool) -> dict[str, np.ndarray]:
    """seq_lens, seq_lens_padded and cu_seqlens: flat for THD, one right-padded row per pack otherwise."""
    seq_lens = np.zeros((len(sizes), max((n.size for n in sizes), default=0)), dtype=np.int32)
    for r, n in enumerate(sizes):
        seq_lens[r, : n.size] = n
    seq_lens_padded = _round_up(seq_lens, multiple)
    cu = np.zeros((len(sizes), seq_lens.shape[1] + 1), dtype=np.int32)
    np.cumsum(seq_lens_padded, axis=1, out=cu[:, 1:])
    if flat:
        return {
            "seq_lens": seq_lens.reshape(-1),
            "seq_lens_padded": seq_lens_padded.reshape(-1),
            "cu_seqlens": cu.reshape(-1),
        }
    return {"seq_lens": seq_lens, "seq_lens_padded": seq_lens_padded, "cu_seqlens": cu}


def _real_slice(sample: TokenizedSample, index: int) -> slice:
    """The sample's real tokens; a pre-padded sample (nemo policy) keeps its attention-masked span only."""
    mask = sample.attention_mask
    if mask is None or bool(np.all(mask)):
        return slice(0, sample.num_tokens)
    real = np.flatnonzero(mask)
    if real.size and real[-1] - real[0] + 1 != real.size:
        raise InvalidSample("padding inside the sequence cannot be packed", sample=index, field="attention_mask")
    return slice(int(real[0]), int(real[-1]) + 1) if real.size else slice(0, 0)


def _round_up(values: np.ndarray, multiple: int) -> np.ndarray:
    return -(-values // multiple) * multiple
