"""The value contract (codec/values.py): every A-XDR type to one JSON-safe value."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from codec.axdr import Data, DataType, Limits, decode_data, encode_data
from codec.cosem_time import CosemDateTime
from codec.errors import DecodeError
from codec.obis import Obis
from codec.values import (
    ENUM_NAMES,
    Quality,
    ValueContext,
    context_for,
    convert,
    convert_integer,
    is_json_value,
)
from tests.codec.strategies import cosem_date_times, data_values

INTEGER_TYPES = {
    DataType.DOUBLE_LONG,
    DataType.DOUBLE_LONG_UNSIGNED,
    DataType.INTEGER,
    DataType.LONG,
    DataType.UNSIGNED,
    DataType.LONG_UNSIGNED,
    DataType.LONG64,
    DataType.LONG64_UNSIGNED,
}

DT = CosemDateTime(2024, 3, 1, None, 12, 30, 15, 0, -60, 0x80)
DT_BYTES = DT.to_bytes()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (Data.null(), None),
        (Data.dont_care(), None),
        (Data.boolean(True), True),
        (Data.double_long(-5), -5),
        (Data.long64_unsigned(2**64 - 1), 2**64 - 1),
        (Data.enum(3), 3),
        (Data.bcd(0x42), 42),
        (Data.float32(204.2335), 204.2335),
        (Data.float64(0.1), 0.1),
        (Data.visible_string("GX001"), "GX001"),
        (Data.utf8_string("Zähler"), "Zähler"),
        (Data.octet_string(b"DBSSM0001"), "DBSSM0001"),
        (Data.octet_string(b"ABC\0\0"), "ABC"),
        (Data.octet_string(b"\x01\x02\xff"), "0102ff"),
        (Data.octet_string(b""), ""),
        (Data.bit_string("1010010"), "1010010"),
        (Data.structure([Data.unsigned(1), Data.visible_string("pair")]), [1, "pair"]),
        (Data.array([Data.structure([Data.long(-1)]), Data.array([])]), [[-1], []]),
        (Data.compact_array([Data.unsigned(1), Data.unsigned(2)]), [1, 2]),
        (Data.date_time(DT), "2024-03-01T12:30:15+01:00"),
    ],
)
def test_each_type_maps_to_one_json_value(data: Data, expected: object) -> None:
    converted = convert(data)
    assert converted.ok
    assert converted.value == expected
    assert type(converted.value) is type(expected)
    assert converted.quality is None or data.type is DataType.DATE_TIME


@pytest.mark.parametrize(
    ("value", "quality"),
    [(math.nan, Quality.NAN), (math.inf, Quality.POS_INF), (-math.inf, Quality.NEG_INF)],
)
@pytest.mark.parametrize("make", [Data.float32, Data.float64])
def test_non_finite_floats_are_null_with_a_quality(
    value: float, quality: Quality, make: object
) -> None:
    converted = convert(make(value))  # type: ignore[operator]
    assert converted.value is None and converted.quality is quality
    nested = convert(Data.structure([Data.unsigned(1), make(value)]))  # type: ignore[operator]
    assert nested.value == [1, None] and nested.quality is quality


def test_scaler_is_applied_to_numbers_only() -> None:
    assert convert(Data.long_unsigned(23012), scaler=-2).value == 230.12
    assert convert(Data.double_long_unsigned(5), scaler=3).value == 5000
    assert convert(Data.float32(1.5), scaler=1).value == 15.0
    assert convert(Data.visible_string("x"), scaler=-2).value == "x"
    assert convert(Data.float64(math.nan), scaler=-2).quality is Quality.NAN


def test_invalid_bcd_is_null_with_a_quality() -> None:
    converted = convert(Data.bcd(0x4A))
    assert converted.value is None and converted.quality is Quality.INVALID_BCD


def test_enum_names_where_the_class_defines_them() -> None:
    converted = convert(Data.enum(1), enum_names=ENUM_NAMES[(8, 9)])
    assert (converted.value, converted.label) == (1, "internal-crystal")
    assert convert(Data.enum(1)).label is None


def test_date_time_octet_strings_in_a_date_time_context() -> None:
    clock = context_for(8, Obis.parse("0-0:1.0.0"), 2)
    assert clock is ValueContext.DATE_TIME
    converted = convert(Data.octet_string(DT_BYTES), context=clock)
    assert converted.value == "2024-03-01T12:30:15+01:00"
    assert converted.label == "daylight-saving-active"
    # The same bytes elsewhere are just bytes.
    assert convert(Data.octet_string(DT_BYTES)).value == DT_BYTES.hex()
    # Data objects whose OBIS says time: billing period time stamps.
    assert context_for(1, Obis.parse("1-0:0.1.2"), 2) is ValueContext.DATE_TIME
    assert context_for(1, Obis.parse("0-0:96.1.0"), 2) is ValueContext.PLAIN
    assert context_for(4, Obis.parse("1-0:1.6.0"), 5) is ValueContext.DATE_TIME
    # Unspecified deviation: naive local time; wildcards stay visible.
    naive = CosemDateTime(2024, 3, 1, None, 12, 0, 0, None, None, 0)
    assert convert(Data.octet_string(naive.to_bytes()), context=clock).value == (
        "2024-03-01T12:00:00"
    )
    invalid = CosemDateTime(2024, 3, 1, None, 12, 0, 0, None, None, 0x01)
    assert convert(Data.date_time(invalid)).quality is Quality.CLOCK_INVALID


@settings(max_examples=150)
@given(st.one_of(data_values(), st.builds(Data.date_time, cosem_date_times())))
def test_any_value_converts_to_strict_json(data: Data) -> None:
    for context in ValueContext:
        converted = convert(data, context=context, scaler=-3)
        assert converted.ok, converted
        assert is_json_value(converted.value)
        json.dumps(converted.value, allow_nan=False)


@settings(max_examples=500)
@given(st.binary(max_size=60))
@example(b"\x17\x7f\xc0\x00\x00")  # float32 NaN
@example(b"\x09\x0c" + bytes([0xFF] * 12))  # a date-time of wildcards
def test_anything_that_decodes_converts(raw: bytes) -> None:
    try:
        data, _ = decode_data(raw, limits=Limits(max_depth=32))
    except DecodeError:
        return
    for context in ValueContext:
        converted = convert(data, context=context, scaler=2)
        assert converted.ok, converted
        json.dumps(converted.value, allow_nan=False)
    assert encode_data(data)  # what decodes, encodes


@given(
    st.sampled_from(
        [
            (DataType.INTEGER, -(2**7), 2**7 - 1),
            (DataType.LONG_UNSIGNED, 0, 2**16 - 1),
            (DataType.DOUBLE_LONG, -(2**31), 2**31 - 1),
            (DataType.DOUBLE_LONG_UNSIGNED, 0, 2**32 - 1),
            (DataType.LONG64, -(2**63), 2**63 - 1),
            (DataType.LONG64_UNSIGNED, 0, 2**64 - 1),
        ]
    ).flatmap(lambda t: st.tuples(st.just(t[0]), st.integers(t[1], t[2]))),
    st.integers(-128, -1),
)
@example((DataType.LONG_UNSIGNED, 13), -1)
@example((DataType.DOUBLE_LONG_UNSIGNED, 2**32 - 1), -9)
def test_a_scaled_integer_is_the_float_nearest_the_exact_decimal(
    typed: tuple[DataType, int], scaler: int
) -> None:
    """The scaled value of an integer register is the exact decimal ``raw * 10**scaler``
    rounded once to a float (what ``Decimal`` gives), for every integer type and scaler."""
    t, raw = typed
    converted = convert(Data(t, raw), scaler=scaler)
    assert converted.value == float(Decimal(raw).scaleb(scaler))
    assert type(converted.value) is float


@given(data_values(max_leaves=3), st.none() | st.integers(-30, 30))
@example(Data(DataType.LONG_UNSIGNED, 12328), -2)
@example(Data(DataType.LONG64, -(2**63)), 5)
@example(Data(DataType.ENUM, 3), -1)
def test_the_integer_shortcut_equals_convert(data: Data, scaler: int | None) -> None:
    """convert_integer gives convert's value for an integer (no flag, no label, no error) and
    declines everything else."""
    fast = convert_integer(data, scaler)
    full = convert(data, scaler=scaler)
    if fast is None:
        assert data.type not in INTEGER_TYPES
        return
    assert full.ok and full.quality is None and full.label is None
    assert fast == full.value and type(fast) is type(full.value)
