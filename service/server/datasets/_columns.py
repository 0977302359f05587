"""Rows of Arrow columns as Python objects, one at a time, without Arrow's per-value scalar objects.

``row_reader(names, arrays)`` returns ``read(i) -> dict`` equal to ``{name: array[i].as_py()}``. Built once per
block (a Parquet row group, an Arrow record batch), it reads strings, binaries, numbers, lists and structs
straight from the arrays' buffers (numpy views, no copy): a short chat row costs a third of ``as_py``'s time,
which builds a scalar object per value. Arrays with nulls and other types fall back to ``as_py``. Building
one costs about as much as reading a few rows that way; ``scalar_row`` is for blocks read only a few times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["row_reader", "scalar_row"]

Get = Callable[[int], Any]


def row_reader(names: Sequence[str], arrays: Sequence[Any]) -> Callable[[int], dict[str, Any]]:
    """``read(i)``: row ``i`` of these columns (Arrow arrays of one length) as a dict of Python values."""
    fields = list(zip(names, (_getter(a) for a in arrays), strict=True))

    def read(i: int) -> dict[str, Any]:
        return {name: get(i) for name, get in fields}

    return read


def scalar_row(names: Sequence[str], arrays: Sequence[Any], i: int) -> dict[str, Any]:
    """Row ``i`` through Arrow's scalars: for blocks read a few rows each (nothing to build first)."""
    return {name: array[i].as_py() for name, array in zip(names, arrays, strict=True)}


def _getter(array: Any) -> Get:
    import pyarrow.types as pat

    kind = array.type
    if array.null_count or (pat.is_struct(kind) and len({f.name for f in kind}) < kind.num_fields):
        return lambda i: array[i].as_py()
    if pat.is_string(kind) or pat.is_large_string(kind):
        return _text(array, 4 if pat.is_string(kind) else 8, decode=True)
    if pat.is_binary(kind) or pat.is_large_binary(kind):
        return _text(array, 4 if pat.is_binary(kind) else 8, decode=False)
    if pat.is_list(kind) or pat.is_large_list(kind):
        offsets = _offsets(array, 4 if pat.is_list(kind) else 8)
        item = _getter(array.values)  # the whole child: the offsets index into it
        return lambda i: [item(j) for j in range(offsets[i], offsets[i + 1])]
    if pat.is_struct(kind):
        return row_reader([f.name for f in kind], array.flatten())  # flatten applies the struct's offset
    if pat.is_integer(kind) or pat.is_boolean(kind) or (pat.is_floating(kind) and not pat.is_float16(kind)):
        values = array.to_numpy(zero_copy_only=False)  # a view, except booleans (unpacked from bits)
        return lambda i: values[i].item()
    return lambda i: array[i].as_py()


def _offsets(array: Any, width: int) -> np.ndarray:
    """The value offsets of a string, binary or list array (one more than its length), as a numpy view."""
    buffer = array.buffers()[1]
    return np.frombuffer(buffer, dtype=np.int32 if width == 4 else np.int64)[
        array.offset : array.offset + len(array) + 1
    ]


def _text(array: Any, width: int, *, decode: bool) -> Get:
    offsets = _offsets(array, width)
    data = array.buffers()[2]
    view = memoryview(data) if data is not None else memoryview(b"")
    if decode:
        return lambda i: str(view[offsets[i] : offsets[i + 1]], "utf-8")
    return lambda i: bytes(view[offsets[i] : offsets[i + 1]])
