"""OBIS codes: every notation, printing, bytes, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec.errors import DecodeError
from codec.obis import InvalidObis, Obis

VOLTAGE_L1 = Obis(1, 1, 32, 7, 0, 255)


@pytest.mark.parametrize(
    "text",
    [
        "1-1:32.7.0",
        "1-1:32.7.0*255",
        "1-1:32.7.0.255",
        "1.1.32.7.0.255",
        "1.1.32.7.0",
        "  1-1:32.7.0  ",
        "001-001:032.007.000",
    ],
)
def test_every_notation_gives_the_same_code(text: str) -> None:
    assert Obis.parse(text) == VOLTAGE_L1


def test_raw_bytes() -> None:
    raw = bytes([1, 1, 32, 7, 0, 255])
    for value in (raw, bytearray(raw), memoryview(raw)):
        assert Obis.parse(value) == VOLTAGE_L1
    assert Obis.from_bytes(raw) == VOLTAGE_L1
    assert Obis.from_bytes(b"\x09\x06" + raw, offset=2) == VOLTAGE_L1
    assert VOLTAGE_L1.to_bytes() == raw
    assert Obis.parse(VOLTAGE_L1) is VOLTAGE_L1


def test_printing() -> None:
    assert str(VOLTAGE_L1) == "1-1:32.7.0"
    assert VOLTAGE_L1.dotted() == "1.1.32.7.0.255"
    clock = Obis.parse("0-0:1.0.0*0")
    assert str(clock) == "0-0:1.0.0*0"
    assert clock.dotted() == "0.0.1.0.0.0"
    assert repr(VOLTAGE_L1) == "Obis(a=1, b=1, c=32, d=7, e=0, f=255)"


obis_codes = st.builds(Obis, *[st.integers(0, 255)] * 6)


@given(obis_codes)
def test_round_trips(code: Obis) -> None:
    assert Obis.parse(str(code)) == code
    assert Obis.parse(code.dotted()) == code
    assert Obis.from_bytes(code.to_bytes()) == code
    assert Obis.parse(code.to_bytes()) == code


def test_hashable_and_ordered() -> None:
    readings = {Obis.parse("1-1:32.7.0"): 230.0}
    assert readings[Obis.parse("1.1.32.7.0.255")] == 230.0
    codes = [Obis.parse("1-1:32.7.0"), Obis.parse("1-1:1.8.0"), Obis.parse("0-0:1.0.0")]
    assert [str(c) for c in sorted(codes)] == ["0-0:1.0.0", "1-1:1.8.0", "1-1:32.7.0"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("32.7.0", "not an OBIS code"),  # no A and B: refused rather than guessed
        ("1-1:32.7", "not an OBIS code"),
        ("1-1:32.7.0*", "not an OBIS code"),
        ("1-1:32.7.0.1.2", "not an OBIS code"),
        ("1-1:32.7.x", "not an OBIS code"),
        ("1-1:32.7.-1", "not an OBIS code"),
        ("1-1:256.7.0", "group C is 256, above 255"),
        ("1.1.32.7.0.300", "group F is 300"),
        ("", "not an OBIS code"),
        ("1-1:32.7.0\u0663", "not an OBIS code"),  # a non-ASCII digit
        (b"\x01\x02", "6 bytes, got 2"),
        (12345, "cannot parse an OBIS code from int"),
    ],
)
def test_bad_input_is_a_clear_value_error(value: object, message: str) -> None:
    with pytest.raises(InvalidObis, match=message) as info:
        Obis.parse(value)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_group_values_are_checked() -> None:
    with pytest.raises(InvalidObis, match=r"0\.\.255, got 256"):
        Obis(1, 1, 256, 7, 0)
    with pytest.raises(InvalidObis, match="got True"):
        Obis(True, 1, 1, 7, 0)  # type: ignore[arg-type]


def test_short_frame_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="needs 6 bytes, 3 remain") as info:
        Obis.from_bytes(b"\x00" * 5, offset=2)
    assert info.value.code == "decode.obis"
    assert info.value.offset == 2
