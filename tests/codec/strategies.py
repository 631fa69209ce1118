"""Hypothesis strategies for A-XDR values, shared by the codec tests.

``data_values()`` draws arbitrary, possibly nested :class:`~codec.axdr.Data` values of every type
(compact-arrays included) that encode without error; ``simple_data_values()`` only the scalar
ones. Floats exclude NaN so that values compare equal after a round trip.
"""

from __future__ import annotations

from hypothesis import strategies as st

from codec.axdr import BitString, CompactArray, Data, DataType, TypeDescription
from codec.cosem_time import CosemDate, CosemDateTime, CosemTime

__all__ = [
    "bit_strings",
    "compact_arrays",
    "cosem_date_times",
    "cosem_dates",
    "cosem_times",
    "data_values",
    "simple_data_values",
    "type_descriptions",
    "values_of",
]

_INT_RANGES: dict[DataType, tuple[int, int]] = {
    DataType.INTEGER: (-(2**7), 2**7 - 1),
    DataType.LONG: (-(2**15), 2**15 - 1),
    DataType.DOUBLE_LONG: (-(2**31), 2**31 - 1),
    DataType.LONG64: (-(2**63), 2**63 - 1),
    DataType.UNSIGNED: (0, 2**8 - 1),
    DataType.LONG_UNSIGNED: (0, 2**16 - 1),
    DataType.DOUBLE_LONG_UNSIGNED: (0, 2**32 - 1),
    DataType.LONG64_UNSIGNED: (0, 2**64 - 1),
    DataType.ENUM: (0, 255),
    DataType.BCD: (0, 255),
}

_byte_field = st.none() | st.integers(0, 0xFE)


def cosem_dates() -> st.SearchStrategy[CosemDate]:
    """Any encodable COSEM date, special and unspecified values included."""
    return st.builds(
        CosemDate, st.none() | st.integers(0, 0xFFFE), _byte_field, _byte_field, _byte_field
    )


def cosem_times() -> st.SearchStrategy[CosemTime]:
    """Any encodable COSEM time."""
    return st.builds(CosemTime, _byte_field, _byte_field, _byte_field, _byte_field)


def cosem_date_times() -> st.SearchStrategy[CosemDateTime]:
    """Any encodable COSEM date-time."""
    return st.builds(
        CosemDateTime,
        st.none() | st.integers(0, 0xFFFE),
        _byte_field,
        _byte_field,
        _byte_field,
        _byte_field,
        _byte_field,
        _byte_field,
        _byte_field,
        st.none() | st.integers(-0x7FFF, 0x7FFF),
        st.none() | st.integers(0, 0xFE),
    )


@st.composite
def bit_strings(draw: st.DrawFn, max_bits: int = 80) -> BitString:
    """A bit-string, with arbitrary (kept) padding bits in its last byte."""
    bits = draw(st.integers(0, max_bits))
    size = (bits + 7) // 8
    return BitString(bits, draw(st.binary(min_size=size, max_size=size)))


def _scalar(t: DataType) -> st.SearchStrategy[Data]:
    """Scalars of one type."""
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        values: st.SearchStrategy[object] = st.integers(lo, hi)
    elif t in (DataType.NULL_DATA, DataType.DONT_CARE):
        values = st.none()
    elif t == DataType.BOOLEAN:
        values = st.booleans()
    elif t == DataType.OCTET_STRING:
        values = st.binary(max_size=40) | st.binary(min_size=126, max_size=300)
    elif t == DataType.VISIBLE_STRING:
        values = st.text(st.characters(max_codepoint=255), max_size=40)
    elif t == DataType.UTF8_STRING:
        values = st.text(max_size=40)
    elif t == DataType.FLOAT32:
        values = st.floats(width=32, allow_nan=False)
    elif t == DataType.FLOAT64:
        values = st.floats(allow_nan=False)
    elif t == DataType.BIT_STRING:
        values = bit_strings()
    elif t == DataType.DATE_TIME:
        values = cosem_date_times()
    elif t == DataType.DATE:
        values = cosem_dates()
    elif t == DataType.TIME:
        values = cosem_times()
    else:
        raise AssertionError(f"no scalar strategy for {t!r}")
    return values.map(lambda v: Data(t, v))


_SCALAR_TYPES = [
    t for t in DataType if t not in (DataType.ARRAY, DataType.STRUCTURE, DataType.COMPACT_ARRAY)
]
# Types that take at least one byte untagged: usable as compact-array leaves.
_SIZED_SCALAR_TYPES = [
    t for t in _SCALAR_TYPES if t not in (DataType.NULL_DATA, DataType.DONT_CARE)
]


def simple_data_values() -> st.SearchStrategy[Data]:
    """Any scalar Data value."""
    return st.sampled_from(_SCALAR_TYPES).flatmap(_scalar)


def type_descriptions(max_leaves: int = 6) -> st.SearchStrategy[TypeDescription]:
    """A compact-array element type whose values always take at least one byte."""
    leaves = st.sampled_from(_SIZED_SCALAR_TYPES).map(TypeDescription.simple)
    return st.recursive(
        leaves,
        lambda inner: (
            st.builds(TypeDescription.array, st.integers(1, 3), inner)
            | st.lists(inner, min_size=1, max_size=4).map(TypeDescription.structure)
        ),
        max_leaves=max_leaves,
    )


def values_of(td: TypeDescription) -> st.SearchStrategy[Data]:
    """Values that conform to a compact-array type description."""
    if td.type == DataType.ARRAY:
        assert td.element is not None
        assert td.count is not None
        return st.lists(values_of(td.element), min_size=td.count, max_size=td.count).map(Data.array)
    if td.type == DataType.STRUCTURE:
        return st.tuples(*(values_of(e) for e in td.elements or ())).map(Data.structure)
    return _scalar(td.type)


@st.composite
def compact_arrays(draw: st.DrawFn) -> Data:
    """A compact-array of 0 to 5 elements."""
    td = draw(type_descriptions())
    elements = draw(st.lists(values_of(td), max_size=5))
    return Data(DataType.COMPACT_ARRAY, CompactArray(td, tuple(elements)))


def data_values(max_leaves: int = 20) -> st.SearchStrategy[Data]:
    """Arbitrary nested Data values of every type (decode them with a generous max_depth)."""
    # Compact-arrays are one leaf type among the others (not half of all leaves): they are
    # costly to draw.
    leaves = st.sampled_from([*_SCALAR_TYPES, DataType.COMPACT_ARRAY]).flatmap(
        lambda t: compact_arrays() if t == DataType.COMPACT_ARRAY else _scalar(t)
    )
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=5).map(Data.array)
            | st.lists(inner, max_size=5).map(Data.structure)
        ),
        max_leaves=max_leaves,
    )
