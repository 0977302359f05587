"""Padded token rows as they travel: each row's tokens only, in the narrowest integer type that holds them.

A text batch is mostly padding and int64 zeros: 16 chats padded to their longest row are ~950 KB, their tokens
~145 KB as int32. The engine builds a batch's rows unpadded (``RowPadding`` says how to pad them) and pads them
with :func:`pad_rows`; a client that asks for the ragged form gets the unpadded rows, each key's rows
concatenated, plus ``row_lengths``, and pads them with the same function where the tensors are made (the
receiver, straight into the trainer's shared-memory slot). The tensors are identical either way.

In a blob the metadata key ``ragged`` holds ``{"width": W, "fill": {key: pad value}}``; every key in ``fill``
is a 1-D integer array of ``sum(row_lengths)`` values, and pads to ``[len(row_lengths), W]`` int64. Other
arrays of the blob pass through as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._codec import ALIGNMENT, DecodedBatch
from ._exceptions import CodecError

__all__ = ["LENGTHS", "RAGGED_META", "RowPadding", "expand", "expanded_nbytes", "pad_rows", "ragged_wire"]

RAGGED_META = "ragged"
"""The metadata key of a blob whose token rows travel unpadded."""
LENGTHS = "row_lengths"
"""The array of each row's length in a ragged blob."""
_NARROW = (np.int8, np.int16, np.int32)
_MAX_EXPANDED = 1 << 34
"""Bytes a ragged blob may expand to (16 GiB): a header cannot make the client allocate without bound."""


@dataclass(frozen=True)
class RowPadding:
    """How a batch's unpadded rows become its tensors: ``width`` columns, each key padded with ``fill[key]``."""

    width: int
    fill: Mapping[str, int]

    def to_meta(self) -> dict[str, Any]:
        return {"width": self.width, "fill": dict(self.fill)}


def pad_rows(flat: np.ndarray, lengths: np.ndarray, width: int, fill: int, out: np.ndarray | None = None) -> np.ndarray:
    """``[len(lengths), width]`` int64: row ``i`` is the next ``lengths[i]`` values of ``flat``, then ``fill``."""
    rows = len(lengths)
    batch = np.empty((rows, width), dtype=np.int64) if out is None else out
    batch.fill(fill)
    start = 0
    for i, n in enumerate(lengths.tolist()):
        batch[i, :n] = flat[start : start + n]
        start += n
    return batch


def ragged_wire(
    flat: Mapping[str, np.ndarray], lengths: np.ndarray, padding: RowPadding
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, metadata) of unpadded rows on the wire: each key narrowed to the smallest integer type that
    holds its values, the lengths as int32."""
    tensors = {key: _narrowest(arr) for key, arr in flat.items()}
    tensors[LENGTHS] = lengths.astype(np.int32)
    return tensors, {RAGGED_META: padding.to_meta()}


def expanded_nbytes(decoded: DecodedBatch) -> int:
    """The bytes :func:`expand` lays out for ``decoded`` (each array at an aligned offset); 0 if not ragged."""
    shapes = _layout(decoded)
    return _offsets(shapes)[-1] if shapes else 0


def expand(decoded: DecodedBatch, into: np.ndarray | None = None) -> DecodedBatch:
    """``decoded`` with its ragged rows padded to int64 tensors (``into``: a uint8 buffer of at least
    ``expanded_nbytes`` to lay every array out in, aligned, in the order they came); unchanged if not ragged."""
    shapes = _layout(decoded)
    if not shapes:
        return decoded
    spec = decoded.meta[RAGGED_META]
    lengths = decoded.tensors[LENGTHS].astype(np.int64)
    offsets = _offsets(shapes)
    if into is not None and into.nbytes < offsets[-1]:
        raise CodecError(f"{into.nbytes} bytes cannot hold the {offsets[-1]} the batch expands to")
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for (name, (shape, dtype)), at in zip(shapes.items(), offsets, strict=False):
        source = decoded.tensors[name]
        if into is None:
            out = np.empty(shape, dtype=dtype)
        else:
            out = into[at : at + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)
        if name in spec["fill"]:
            pad_rows(source, lengths, spec["width"], spec["fill"][name], out=out)
            dtypes[name] = "int64"
        else:
            out[...] = source
            dtypes[name] = decoded.dtypes.get(name, source.dtype.name)
        tensors[name] = out
    meta = {k: v for k, v in decoded.meta.items() if k != RAGGED_META}
    return DecodedBatch(tensors=tensors, dtypes=dtypes, meta=meta)


def _narrowest(arr: np.ndarray) -> np.ndarray:
    if arr.size:
        low, high = int(arr.min()), int(arr.max())
        for dtype in _NARROW:
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return arr.astype(dtype)
    return arr


def _layout(decoded: DecodedBatch) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Each output array's (shape, dtype), in the blob's order without ``row_lengths``, after checking the
    ragged description against the arrays; {} if the blob is not ragged."""
    spec = decoded.meta.get(RAGGED_META)
    if spec is None:
        return {}
    if not isinstance(spec, dict) or type(spec.get("width")) is not int or not isinstance(spec.get("fill"), dict):
        raise CodecError(f"'{RAGGED_META}' must be {{'width': int, 'fill': {{name: int}}}}, got {spec!r}")
    width, fill = spec["width"], spec["fill"]
    lengths = decoded.tensors.get(LENGTHS)
    if lengths is None or lengths.ndim != 1 or lengths.dtype.kind not in "iu":
        raise CodecError(f"a ragged batch needs a 1-D integer {LENGTHS!r} array", field=LENGTHS)
    if width < 0 or (lengths.size and (int(lengths.min()) < 0 or int(lengths.max()) > width)):
        raise CodecError(f"row lengths must lie in [0, {width}] (the batch width)", field=LENGTHS)
    total, rows = int(lengths.sum()), len(lengths)
    shapes: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    for name, arr in decoded.tensors.items():
        if name == LENGTHS:
            continue
        if name in fill:
            if type(fill[name]) is not int or arr.ndim != 1 or arr.dtype.kind not in "iu" or arr.size != total:
                raise CodecError(
                    f"ragged array {name!r} must hold {total} integers (the row lengths' sum) and an int pad value",
                    field=name,
                )
            shapes[name] = ((rows, width), np.dtype(np.int64))
        else:
            shapes[name] = (tuple(arr.shape), arr.dtype)
    missing = set(fill) - set(shapes)
    if missing:
        raise CodecError(f"ragged arrays {sorted(missing)} are missing", field=RAGGED_META)
    if _offsets(shapes)[-1] > _MAX_EXPANDED:
        raise CodecError(f"the batch would expand to more than {_MAX_EXPANDED} bytes", field=RAGGED_META)
    return shapes


def _offsets(shapes: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> list[int]:
    """Aligned start of each array in order, then the end of the last."""
    out, at = [], 0
    for shape, dtype in shapes.values():
        out.append(at)
        at = -(-(at + math.prod(shape) * dtype.itemsize) // ALIGNMENT) * ALIGNMENT
    return [*out, at]
