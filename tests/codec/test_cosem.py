"""COSEM objects: attribute numbers, scaler-unit and scaling, profile access, object list."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec.apdu import (
    AttributeDescriptor,
    GetRequestNormal,
    InvokeId,
    SelectiveAccess,
    decode_apdu,
    encode_apdu,
)
from codec.axdr import Data, decode_data_exact, encode_data
from codec.cosem import (
    CLOCK_TIME,
    AttributeAccess,
    AttributeAccessMode,
    CaptureObject,
    ClockAttribute,
    DemandRegisterAttribute,
    EntryDescriptor,
    InterfaceClass,
    MethodAccess,
    ObjectListEntry,
    ProfileGenericAttribute,
    RangeDescriptor,
    ScalerUnit,
    entry_descriptor,
    method,
    parse_capture_objects,
    parse_object_list,
    range_descriptor,
    scale,
    scaler_unit_attribute,
    value_attribute,
)
from codec.cosem_time import CosemDateTime
from codec.errors import DecodeError, EncodeError
from codec.obis import Obis
from tests.codec.conftest import load_vectors

FIELD_METER = load_vectors()["meter_in_the_field"]


# -- attribute numbers ----------------------------------------------------------------------------


def test_attribute_numbers() -> None:
    assert int(ProfileGenericAttribute.BUFFER) == 2
    assert int(ProfileGenericAttribute.CAPTURE_OBJECTS) == 3
    assert int(ProfileGenericAttribute.PROFILE_ENTRIES) == 8
    assert int(DemandRegisterAttribute.SCALER_UNIT) == 4
    assert int(DemandRegisterAttribute.PERIOD) == 8
    assert int(ClockAttribute.TIME_ZONE) == 3


@pytest.mark.parametrize(
    ("class_id", "value", "scaler_unit"),
    [
        (InterfaceClass.DATA, 2, None),
        (InterfaceClass.REGISTER, 2, 3),
        (InterfaceClass.EXTENDED_REGISTER, 2, 3),
        (InterfaceClass.DEMAND_REGISTER, 2, 4),
        (InterfaceClass.CLOCK, 2, None),
    ],
)
def test_value_and_scaler_unit_attributes(
    class_id: int, value: int, scaler_unit: int | None
) -> None:
    ln = Obis.parse("1-1:32.7.0")
    assert value_attribute(class_id, "1-1:32.7.0") == AttributeDescriptor(class_id, ln, value)
    found = scaler_unit_attribute(class_id, ln)
    assert (None if found is None else found.attribute_id) == scaler_unit


def test_value_attribute_of_a_class_without_one() -> None:
    with pytest.raises(EncodeError, match="class 7"):
        value_attribute(InterfaceClass.PROFILE_GENERIC, "1-0:99.1.0")


def test_method_descriptor() -> None:
    assert method(8, "0-0:1.0.0", 1).obis == Obis(0, 0, 1, 0, 0, 255)


# -- scaling --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "scaler", "expected"),
    [
        (12500, -2, 125.0),
        (1300, -3, 1.3),
        (13, -1, 1.3),  # 13 * 0.1 would be 1.3000000000000003
        (6000, -2, 60.0),
        (56297, 0, 56297),
        (5, 3, 5000),
        (-7, -1, -0.7),
        (1, -9, 1e-9),
        (2.5, -1, 0.25),
        (0.1, 1, 1.0),
    ],
)
def test_scale(raw: int | float, scaler: int, expected: int | float) -> None:
    result = scale(raw, scaler)
    assert result == expected
    assert type(result) is type(expected)


@given(st.integers(-(2**63), 2**64), st.integers(-20, -1))
def test_scale_is_the_nearest_float_to_the_exact_decimal(raw: int, scaler: int) -> None:
    assert scale(raw, scaler) == float(Decimal(raw) / Decimal(10) ** -scaler)


@given(st.integers(-(2**63), 2**64), st.integers(0, 20))
def test_scale_keeps_ints_exact(raw: int, scaler: int) -> None:
    assert scale(raw, scaler) == raw * 10**scaler


def test_scale_rejects_non_numbers() -> None:
    with pytest.raises(TypeError):
        scale(True, 0)
    with pytest.raises(TypeError):
        scale("1", 0)  # type: ignore[arg-type]


def test_field_meter_registers() -> None:
    """The documented registers of the field meter scale to their typical values."""
    raws = {"voltage_l1": 12500, "current_l1": 1300}
    for register in FIELD_METER["registers"]:
        if register["key"] not in raws:
            continue
        su = ScalerUnit.from_data(
            decode_data_exact(
                bytes.fromhex("02020F")
                + bytes((register["scaler"] & 0xFF,))
                + bytes((0x16, register["unit"]))
            )
        )
        assert su.apply(raws[register["key"]]) == register["typical"]
        assert su.unit == register["unit"]
    assert ScalerUnit(-2, 35).unit_info.symbol == "V"
    assert ScalerUnit(-3, 33).unit_info.symbol == "A"


# -- scaler_unit ----------------------------------------------------------------------------------


def test_scaler_unit_parse_and_build() -> None:
    raw = bytes.fromhex("02020FFE1623")  # {integer -2, enum 35}
    su = ScalerUnit.from_data(decode_data_exact(raw))
    assert su == ScalerUnit(-2, 35)
    assert encode_data(su.to_data()) == raw


def test_scaler_unit_lenient_integer_widths() -> None:
    # Some meters tag the scaler as unsigned (0xFE meaning -2) or the unit as unsigned.
    d = Data.structure([Data.unsigned(0xFE), Data.unsigned(27)])
    assert ScalerUnit.from_data(d) == ScalerUnit(-2, 27)


@pytest.mark.parametrize(
    ("d", "text"),
    [
        (
            Data.array([Data.integer(0), Data.enum(27)]),
            "expected a structure of 2 items, got array",
        ),
        (Data.structure([Data.integer(0)]), "got structure of 1 items"),
        (Data.structure([Data.visible_string("x"), Data.enum(27)]), "scaler: expected"),
        (Data.structure([Data.integer(0), Data.octet_string(b"W")]), "unit: expected"),
        (Data.structure([Data.long(300), Data.enum(27)]), "scaler 300 is outside"),
        (Data.structure([Data.integer(0), Data.long_unsigned(999)]), "unit 999 is outside"),
    ],
)
def test_scaler_unit_errors(d: Data, text: str) -> None:
    with pytest.raises(DecodeError, match=text) as info:
        ScalerUnit.from_data(d, "1-1:32.7.0 scaler_unit")
    assert info.value.message.startswith("1-1:32.7.0 scaler_unit")
    assert info.value.code == "cosem.bad_value"


# -- profile generic ------------------------------------------------------------------------------

CAPTURE_OBJECTS = bytes.fromhex(
    "0102"
    "020412000809060000010000FF0F02120000"  # clock 0-0:1.0.0 time
    "020412000309060100010800FF0F02120000"  # register 1-0:1.8.0 value
)


def test_parse_capture_objects() -> None:
    columns = parse_capture_objects(decode_data_exact(CAPTURE_OBJECTS))
    assert columns == (
        CaptureObject(8, Obis(0, 0, 1, 0, 0, 255), 2, 0),
        CaptureObject(3, Obis(1, 0, 1, 8, 0, 255), 2, 0),
    )
    assert columns[0] == CLOCK_TIME
    assert encode_data(Data.array(c.to_data() for c in columns)) == CAPTURE_OBJECTS


def test_capture_object_errors() -> None:
    bad = Data.array(
        [
            Data.structure(
                [
                    Data.long_unsigned(3),
                    Data.octet_string(b"\x01\x00\x01\x08\x00"),
                    Data.integer(2),
                    Data.long_unsigned(0),
                ]
            )
        ]
    )
    with pytest.raises(DecodeError, match=r"capture_objects\[0\] logical_name: expected a 6-byte"):
        parse_capture_objects(bad)
    with pytest.raises(DecodeError, match="capture_objects: expected an array, got structure"):
        parse_capture_objects(Data.structure([]))


def test_range_descriptor() -> None:
    start = dt.datetime(2024, 3, 1, 0, 0)
    end = CosemDateTime(2024, 3, 2, None, 0, 0, 0, 0, None, None)
    access = range_descriptor(start, end)
    assert access.selector == 1
    # Green Book layout: {restricting object, from, to, selected values}, dates as octet-string(12).
    expected = bytes.fromhex(
        "0204"
        "020412000809060000010000FF0F02120000"
        "090C07E80301" + "05" + "00000000" + "800000"
        "090C07E80302" + "FF" + "00000000" + "8000FF"
        "0100"
    )
    assert encode_data(access.parameters) == expected
    parsed = RangeDescriptor.from_access(access)
    assert parsed.restricting == CLOCK_TIME
    assert parsed.date_times() == (CosemDateTime.from_datetime(start), end)


def test_range_descriptor_with_selected_columns() -> None:
    energy = CaptureObject(3, Obis.parse("1-0:1.8.0"), 2)
    access = range_descriptor(
        dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2), selected_values=[CLOCK_TIME, energy]
    )
    assert RangeDescriptor.from_access(access).selected_values == (CLOCK_TIME, energy)
    # And it travels in a GET.request.
    request = GetRequestNormal(
        InvokeId(), AttributeDescriptor(7, Obis.parse("1-0:99.1.0"), 2), access
    )
    assert decode_apdu(encode_apdu(request)) == request


def test_entry_descriptor() -> None:
    access = entry_descriptor(1, 10)
    assert access == SelectiveAccess(
        2,
        Data.structure(
            [
                Data.double_long_unsigned(1),
                Data.double_long_unsigned(10),
                Data.long_unsigned(1),
                Data.long_unsigned(0),
            ]
        ),
    )
    assert encode_data(access.parameters) == bytes.fromhex("02040600000001060000000A120001120000")
    assert EntryDescriptor.from_access(access) == EntryDescriptor(1, 10, 1, 0)


def test_descriptor_errors() -> None:
    with pytest.raises(DecodeError, match="access selector must be 2, got 1"):
        EntryDescriptor.from_access(
            range_descriptor(dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2))
        )
    with pytest.raises(DecodeError, match="access selector must be 1, got 2"):
        RangeDescriptor.from_access(entry_descriptor(1, 2))
    with pytest.raises(DecodeError, match="entry descriptor: expected a structure of 4 items"):
        EntryDescriptor.from_access(SelectiveAccess(2, Data.null()))
    odd = RangeDescriptor(CLOCK_TIME, Data.unsigned(1), Data.unsigned(2))
    with pytest.raises(DecodeError, match="from_value: expected a date-time, got unsigned"):
        odd.date_times()


# -- association LN object list -------------------------------------------------------------------

# Two entries as an Association LN version 1 sends them; the second with access selectors.
OBJECT_LIST = bytes.fromhex(
    "0102"
    # clock 0-0:1.0.0, version 0, attributes 1 (read) and 2 (read-write), method 1 (access)
    "0204"
    "120008"
    "1100"
    "09060000010000FF"
    "0202"
    "0102"
    "02030F01160100"
    "02030F02160300"
    "0101"
    "02020F011601"
    # profile 1-0:99.1.0, version 1, attribute 2 readable with selectors 1 and 2, no methods
    "0204"
    "120007"
    "1101"
    "09060100630100FF"
    "0202"
    "0101"
    "02030F0216010102"
    "0F01"
    "0F02"
    "0100"
)


def test_parse_object_list() -> None:
    entries = parse_object_list(decode_data_exact(OBJECT_LIST))
    assert entries == (
        ObjectListEntry(
            8,
            0,
            Obis(0, 0, 1, 0, 0, 255),
            (AttributeAccess(1, 1), AttributeAccess(2, 3)),
            (MethodAccess(1, 1),),
        ),
        ObjectListEntry(7, 1, Obis(1, 0, 99, 1, 0, 255), (AttributeAccess(2, 1, (1, 2)),), ()),
    )
    assert entries[0].attribute_access[1].access_mode == AttributeAccessMode.READ_AND_WRITE
    assert entries[1].attribute_access[0].readable
    assert encode_data(Data.array(e.to_data() for e in entries)) == OBJECT_LIST


def test_object_list_version_0_boolean_method_access() -> None:
    entry = Data.structure(
        [
            Data.long_unsigned(3),
            Data.unsigned(0),
            Data.octet_string(bytes((1, 1, 32, 7, 0, 255))),
            Data.structure(
                [
                    Data.array([Data.structure([Data.integer(2), Data.enum(1), Data.null()])]),
                    Data.array([Data.structure([Data.integer(1), Data.boolean(False)])]),
                ]
            ),
        ]
    )
    (parsed,) = parse_object_list(Data.array([entry]))
    assert parsed.method_access == (MethodAccess(1, 0),)
    assert parsed.obis == Obis.parse("1-1:32.7.0")


def test_object_list_errors_name_the_object() -> None:
    entry = Data.structure(
        [
            Data.long_unsigned(3),
            Data.unsigned(0),
            Data.octet_string(bytes((1, 1, 32, 7, 0, 255))),
            Data.structure([Data.array([Data.structure([Data.integer(2)])]), Data.array([])]),
        ]
    )
    with pytest.raises(
        DecodeError,
        match=r"object_list\[0\] 1-1:32.7.0 attribute_access\[0\]: expected a structure of 3",
    ):
        parse_object_list(Data.array([entry]))


@given(
    st.lists(
        st.builds(
            ObjectListEntry,
            st.integers(0, 0xFFFF),
            st.integers(0, 255),
            st.builds(Obis, *(st.integers(0, 255) for _ in range(6))),
            st.lists(
                st.builds(
                    AttributeAccess,
                    st.integers(-128, 127),
                    st.integers(0, 6),
                    st.none() | st.lists(st.integers(-128, 127), max_size=3).map(tuple),
                ),
                max_size=4,
            ).map(tuple),
            st.lists(
                st.builds(MethodAccess, st.integers(-128, 127), st.integers(0, 2)), max_size=3
            ).map(tuple),
        ),
        max_size=4,
    )
)
def test_object_list_round_trip(entries: list[ObjectListEntry]) -> None:
    raw = encode_data(Data.array(e.to_data() for e in entries))
    assert parse_object_list(decode_data_exact(raw)) == tuple(entries)


@given(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.integers(min_value=-128, max_value=-1),
)
def test_scaling_an_integer_is_the_float_nearest_the_exact_decimal(raw: int, scaler: int) -> None:
    """The fast division gives exactly what rounding the exact decimal value gives."""
    assert scale(raw, scaler) == float(Decimal(raw).scaleb(scaler))
