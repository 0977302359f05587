"""Rows read from Arrow buffers (``row_reader``) equal Arrow's own ``as_py``, for any table and any slice."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from feedline.service.server.datasets._columns import row_reader

_TEXT = st.text(max_size=8)
_SCALARS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=False), st.booleans(), _TEXT
)
_TYPES = [
    (pa.int64(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    (pa.uint8(), st.integers(min_value=0, max_value=255)),
    (pa.float32(), st.floats(width=32, allow_nan=False)),
    (pa.float64(), st.floats(allow_nan=False)),
    (pa.bool_(), st.booleans()),
    (pa.string(), _TEXT),
    (pa.large_string(), _TEXT),
    (pa.binary(), st.binary(max_size=8)),
    (pa.large_binary(), st.binary(max_size=8)),
    (pa.timestamp("s"), st.integers(min_value=0, max_value=2**31)),
]


@st.composite
def _typed(draw: Any, depth: int = 0) -> tuple[Any, Any]:
    """(Arrow type, strategy for its Python values), nested lists and structs up to depth 2, nulls sometimes."""
    choice = draw(st.integers(0, len(_TYPES) + (1 if depth < 2 else -1)))
    if choice < len(_TYPES):
        kind, values = _TYPES[choice]
    elif choice == len(_TYPES):
        inner, items = draw(_typed(depth + 1))
        large = draw(st.booleans())
        kind, values = (pa.large_list(inner) if large else pa.list_(inner)), st.lists(items, max_size=3)
    else:
        fields = draw(st.lists(_typed(depth + 1), min_size=1, max_size=3))
        names = [f"f{i}" for i in range(len(fields))]
        kind = pa.struct([pa.field(n, t) for n, (t, _) in zip(names, fields, strict=True)])
        values = st.fixed_dictionaries({n: v for n, (_, v) in zip(names, fields, strict=True)})
    return kind, (st.one_of(st.none(), values) if draw(st.booleans()) else values)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), columns=st.lists(_typed(), min_size=1, max_size=3), offset=st.integers(0, 3))
def test_rows_equal_as_py(data: Any, columns: list[tuple[Any, Any]], offset: int) -> None:
    n = data.draw(st.integers(offset, offset + 12))
    arrays = [pa.array([data.draw(values) for _ in range(n)], type=kind) for kind, values in columns]
    names = [f"c{i}" for i in range(len(arrays))]
    sliced = [a.slice(offset) for a in arrays]  # a batch that starts inside its buffers
    read = row_reader(names, sliced)
    for i in range(n - offset):
        assert read(i) == {name: a[i].as_py() for name, a in zip(names, sliced, strict=True)}


def test_a_chat_row() -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"q{i} é"}, {"role": "assistant", "content": ""}]} for i in range(5)
    ]
    table = pa.Table.from_pylist(rows)
    read = row_reader(table.schema.names, [c.combine_chunks() for c in table.columns])
    assert [read(i) for i in range(5)] == rows
