"""A-XDR Data: known answers, round trips, hostile input, real frames."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

import codec
from codec.axdr import (
    DEFAULT_LIMITS,
    BitString,
    CompactArray,
    Data,
    DataType,
    Limits,
    TypeDescription,
    decode_data,
    decode_data_exact,
    decode_length,
    encode_data,
    encode_length,
)
from codec.cosem_time import ClockStatus, CosemDate, CosemDateTime, CosemTime
from codec.errors import DecodeError, EncodeError
from codec.obis import Obis
from codec.units import unit_for
from tests.codec.strategies import compact_arrays, data_values, simple_data_values

_T = TypeVar("_T")

DEEP = Limits(max_depth=10_000)

# --- known answers -------------------------------------------------------------------------

KNOWN_ANSWERS = [
    (Data.null(), "00"),
    (Data(DataType.DONT_CARE, None), "ff"),
    (Data.boolean(True), "0301"),
    (Data.boolean(False), "0300"),
    (Data.bit_string(BitString.from_str("1010")), "0404a0"),
    (Data.bit_string(BitString.from_str("101001101")), "0409a680"),
    (Data.double_long(-2), "05fffffffe"),
    (Data.double_long_unsigned(0x12345678), "0612345678"),
    (Data.octet_string(bytes.fromhex("0100010800ff")), "09060100010800ff"),
    (Data.visible_string("ABC"), "0a03414243"),
    (Data.visible_string("é"), "0a01e9"),
    (Data.utf8_string("é"), "0c02c3a9"),
    (Data.bcd(0x12), "0d12"),
    (Data.integer(-1), "0fff"),
    (Data.long(-300), "10fed4"),
    (Data.unsigned(200), "11c8"),
    (Data.long_unsigned(0x1234), "121234"),
    (Data.long64(-1), "14ffffffffffffffff"),
    (Data.long64_unsigned(2**63), "158000000000000000"),
    (Data.enum(27), "161b"),
    (Data.float32(1.5), "173fc00000"),
    (Data.float64(-2.0), "18c000000000000000"),
    (
        Data.date_time(CosemDateTime(2024, 3, 1, 5, 12, 30, 45, 0, -60, ClockStatus(0x80))),
        "1907e80301050c1e2d00ffc480",
    ),
    (Data.date(CosemDate(2024, 3, 1, 5)), "1a07e8030105"),
    (Data.time(CosemTime(12, 30, 45, None)), "1b0c1e2dff"),
    (Data.array([]), "0100"),
    (
        Data.structure([Data.long_unsigned(3), Data.octet_string(b"\x01\x00\x01\x08\x00\xff")]),
        "0202120003090601000108" + "00ff",
    ),
    (Data.array([Data.unsigned(1), Data.unsigned(2)]), "01021101" + "1102"),
    # Length forms: 127 is the last one-byte length, 128 needs 0x81, 256 needs 0x82.
    (Data.octet_string(b"\xaa" * 127), "097f" + "aa" * 127),
    (Data.octet_string(b"\xaa" * 128), "098180" + "aa" * 128),
    (Data.octet_string(b"\xaa" * 256), "09820100" + "aa" * 256),
    # Compact-array of structure{long-unsigned, octet-string}: the description, then the
    # contents length, then untagged rows (DLMS UA 1000-2, compact-array).
    (
        Data.compact_array(
            [Data.structure([Data.long_unsigned(i), Data.octet_string(b"ab")]) for i in range(2)]
        ),
        "1302" + "02" + "12" + "09" + "0a" + "0000" + "026162" + "0001" + "026162",
    ),
    # Compact-array of an array type: the count is in the description, not in the contents.
    (
        Data.compact_array([Data.array([Data.unsigned(1), Data.unsigned(2)])]),
        "13" + "01" + "0002" + "11" + "02" + "0102",
    ),
    (
        Data(DataType.COMPACT_ARRAY, CompactArray(TypeDescription.simple(DataType.LONG), ())),
        "131000",
    ),
]


@pytest.mark.parametrize(("value", "hex_"), KNOWN_ANSWERS, ids=lambda x: str(x)[:40])
def test_known_answer(value: Data, hex_: str) -> None:
    assert encode_data(value).hex() == hex_
    assert decode_data_exact(bytes.fromhex(hex_)) == value


def test_every_type_has_a_known_answer() -> None:
    covered = {value.type for value, _ in KNOWN_ANSWERS}
    assert covered == set(DataType)


@pytest.mark.parametrize(
    ("n", "hex_"),
    [
        (0, "00"),
        (0x7F, "7f"),
        (0x80, "8180"),
        (0xFF, "81ff"),
        (0x100, "820100"),
        (0xFFFF, "82ffff"),
        (0x10000, "8400010000"),
        (0xFFFFFFFF, "84ffffffff"),
    ],
)
def test_length_known_answers(n: int, hex_: str) -> None:
    assert encode_length(n).hex() == hex_
    assert decode_length(bytes.fromhex("aa" + hex_), 1) == (n, 1 + len(hex_) // 2)


def test_length_three_byte_form_is_accepted() -> None:
    assert decode_length(bytes.fromhex("83010000"), 0) == (0x10000, 4)


@pytest.mark.parametrize("hex_", ["80", "85", "ff", "", "81", "8401"])
def test_bad_lengths(hex_: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_length(bytes.fromhex(hex_), 0)
    assert info.value.offset == 0


def test_length_out_of_range() -> None:
    with pytest.raises(EncodeError):
        encode_length(-1)
    with pytest.raises(EncodeError):
        encode_length(1 << 32)


# --- round trips ---------------------------------------------------------------------------


@given(data_values(), st.binary(max_size=8), st.binary(max_size=8))
def test_round_trip(value: Data, before: bytes, after: bytes) -> None:
    raw = encode_data(value)
    assert decode_data_exact(raw, limits=DEEP) == value
    # The encoding is canonical: re-encoding the decoded value gives the same bytes.
    assert encode_data(decode_data_exact(raw, limits=DEEP)) == raw
    # At any offset, in any buffer kind, the end offset is reported.
    buf = before + raw + after
    for kind in (bytes, bytearray, memoryview):
        assert decode_data(kind(buf), len(before), limits=DEEP) == (value, len(before) + len(raw))
    json.dumps(value.to_json(), allow_nan=False)


@given(compact_arrays())
def test_compact_array_round_trip(value: Data) -> None:
    assert decode_data_exact(encode_data(value), limits=DEEP) == value


def test_memoryview_of_other_item_size() -> None:
    raw = encode_data(Data.long_unsigned(0x1234)) + b"\x00"
    assert decode_data(memoryview(raw).cast("H")) == (Data.long_unsigned(0x1234), 3)


@given(data_values(max_leaves=8))
def test_every_strict_prefix_is_truncated(value: Data) -> None:
    raw = encode_data(value)
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            decode_data(raw[:cut], limits=DEEP)


@given(st.integers(0, 2**32 - 1))
def test_length_round_trip(n: int) -> None:
    raw = encode_length(n)
    assert decode_length(raw, 0) == (n, len(raw))


def test_decode_data_exact_rejects_trailing_bytes() -> None:
    with pytest.raises(DecodeError) as info:
        decode_data_exact(bytes.fromhex("1101" + "00"))
    assert info.value.code == "decode.trailing"
    assert info.value.offset == 2


def test_boolean_decodes_any_nonzero_as_true() -> None:
    assert decode_data_exact(bytes.fromhex("03ff")) == Data.boolean(True)


def test_bit_string_keeps_padding_bits() -> None:
    value = decode_data_exact(bytes.fromhex("040381"))
    assert value.value == BitString(3, b"\x81")
    assert str(value.value) == "100"
    assert encode_data(value).hex() == "040381"


def test_bit_string_text_and_indexing() -> None:
    bs = BitString.from_str("0100000001")
    assert bs == BitString(10, bytes.fromhex("4040"))
    assert str(bs) == "0100000001"
    assert len(bs) == 10
    assert [bs[i] for i in range(10)] == [c == "1" for c in "0100000001"]
    assert bs[-1] is True
    assert str(BitString.from_str("")) == ""
    with pytest.raises(ValueError, match="only '0' and '1'"):
        BitString.from_str("10a")
    with pytest.raises(IndexError):
        bs[10]


def test_visible_string_is_latin1_both_ways() -> None:
    assert decode_data_exact(bytes.fromhex("0a02ff80")).value == "\xff\x80"
    assert encode_data(Data.visible_string("\xff\x80")).hex() == "0a02ff80"


# --- encode errors -------------------------------------------------------------------------

INT_LIMITS = [
    (DataType.INTEGER, -(2**7), 2**7 - 1),
    (DataType.LONG, -(2**15), 2**15 - 1),
    (DataType.DOUBLE_LONG, -(2**31), 2**31 - 1),
    (DataType.LONG64, -(2**63), 2**63 - 1),
    (DataType.UNSIGNED, 0, 2**8 - 1),
    (DataType.LONG_UNSIGNED, 0, 2**16 - 1),
    (DataType.DOUBLE_LONG_UNSIGNED, 0, 2**32 - 1),
    (DataType.LONG64_UNSIGNED, 0, 2**64 - 1),
    (DataType.ENUM, 0, 255),
    (DataType.BCD, 0, 255),
]


@pytest.mark.parametrize(("t", "lo", "hi"), INT_LIMITS)
def test_integer_ranges(t: DataType, lo: int, hi: int) -> None:
    for ok in (lo, hi):
        assert decode_data_exact(encode_data(Data(t, ok))) == Data(t, ok)
    for bad in (lo - 1, hi + 1):
        with pytest.raises(EncodeError) as info:
            encode_data(Data(t, bad))
        message = str(info.value)
        assert t.name.lower().replace("_", "-") in message
        assert str(bad) in message
        assert info.value.code == "encode.range"


@pytest.mark.parametrize(
    "value",
    [
        Data(DataType.UNSIGNED, "1"),
        Data(DataType.UNSIGNED, 1.0),
        Data(DataType.BOOLEAN, 1),
        Data(DataType.OCTET_STRING, "00"),
        Data(DataType.VISIBLE_STRING, b"abc"),
        Data(DataType.UTF8_STRING, b"abc"),
        Data(DataType.FLOAT32, "1.0"),
        Data(DataType.FLOAT64, True),
        Data(DataType.DATE_TIME, dt.datetime(2024, 1, 1)),
        Data(DataType.DATE, CosemTime(1, 2, 3)),
        Data(DataType.BIT_STRING, "1010"),
        Data(DataType.NULL_DATA, 0),
        Data(DataType.ARRAY, [Data.null()]),
        Data(DataType.STRUCTURE, (1, 2)),
        Data(DataType.COMPACT_ARRAY, ()),
        Data(7, None),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_wrong_python_types_are_encode_errors(value: Data) -> None:
    with pytest.raises(EncodeError):
        encode_data(value)


def test_encode_error_names_type_and_value() -> None:
    with pytest.raises(EncodeError, match=r"visible-string value 'Ω' .*outside latin-1"):
        encode_data(Data.visible_string("Ω"))
    with pytest.raises(EncodeError, match="utf8-string"):
        encode_data(Data.utf8_string("\udc80"))
    with pytest.raises(EncodeError, match="float32 value 1e\\+300 out of range"):
        encode_data(Data.float32(1e300))
    with pytest.raises(EncodeError, match="bit-string of 9 bits needs 2 data bytes, has 1"):
        encode_data(Data.bit_string(BitString(9, b"\x00")))
    with pytest.raises(EncodeError, match="COSEM month 300"):
        encode_data(Data.date_time(CosemDateTime(2024, 300, 1, None, 0, 0, 0)))


def test_nested_encode_error_is_raised() -> None:
    with pytest.raises(EncodeError, match="long-unsigned value 70000"):
        encode_data(Data.structure([Data.unsigned(1), Data.array([Data.long_unsigned(70000)])]))


def test_compact_array_elements_must_match_the_type() -> None:
    td = TypeDescription.structure([TypeDescription.simple(DataType.UNSIGNED)])
    wrong_type = Data.compact_array([Data.structure([Data.long(1)])], td)
    with pytest.raises(EncodeError, match=r"element 0 .* does not match the type"):
        encode_data(wrong_type)
    wrong_width = Data.compact_array([Data.structure([Data.unsigned(1), Data.unsigned(2)])], td)
    with pytest.raises(EncodeError, match="structure of 2 items where the type says 1"):
        encode_data(wrong_width)
    array_td = TypeDescription.array(2, TypeDescription.simple(DataType.UNSIGNED))
    with pytest.raises(EncodeError, match="array of 1 items where the type says 2"):
        encode_data(Data.compact_array([Data.array([Data.unsigned(1)])], array_td))
    with pytest.raises(EncodeError, match="explicit element_type"):
        Data.compact_array([])


def test_compact_array_of_zero_width_elements() -> None:
    null_td = TypeDescription.simple(DataType.NULL_DATA)
    # Nothing on the wire tells how many there are, so only the empty one can be sent...
    with pytest.raises(EncodeError, match="take no bytes"):
        encode_data(Data.compact_array([Data.null()], null_td))
    empty = Data.compact_array([], null_td)
    assert decode_data_exact(encode_data(empty)) == empty
    # ...and contents for such elements are refused instead of looping forever.
    with pytest.raises(DecodeError) as info:
        decode_data_exact(bytes.fromhex("1300" + "0101"))
    assert info.value.code == "decode.bad_compact_array"


def test_type_description_of_value() -> None:
    value = Data.structure(
        [Data.unsigned(1), Data.array([Data.long(1), Data.long(2)]), Data.array([])]
    )
    assert TypeDescription.of(value) == TypeDescription.structure(
        [
            TypeDescription.simple(DataType.UNSIGNED),
            TypeDescription.array(2, TypeDescription.simple(DataType.LONG)),
            TypeDescription.array(0, TypeDescription.simple(DataType.NULL_DATA)),
        ]
    )
    assert str(TypeDescription.of(value)) == (
        "structure{unsigned, array[2] of long, array[0] of null-data}"
    )


# --- hostile input -------------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(raw: bytes) -> None:
    try:
        value, end = decode_data(raw)
    except DecodeError as exc:
        offset = exc.offset
        assert offset is None or 0 <= offset <= len(raw)
    else:
        assert 0 < end <= len(raw)
        # Whatever decodes also encodes, and that encoding is a fixed point.
        again = encode_data(value)
        assert encode_data(decode_data_exact(again)) == again


_constructed_prefix = st.lists(
    st.sampled_from(["0101", "0102", "0201", "0203", "130202", "13010003", "1302021202"]),
    max_size=6,
).map(lambda parts: bytes.fromhex("".join(parts)))


@given(_constructed_prefix, st.binary(max_size=120))
def test_arbitrary_bytes_inside_containers(prefix: bytes, raw: bytes) -> None:
    # A value or a DecodeError: anything else raised fails the test.
    with contextlib.suppress(DecodeError):
        decode_data(prefix + raw)


@pytest.mark.parametrize(
    "hex_",
    [
        "0184ffffffff",  # array of 2^32-1 elements
        "0284ffffffff",  # structure of 2^32-1 elements
        "0984ffffffff",  # octet-string of 4 GiB
        "0a84ffffffff",
        "0c84ffffffff",
        "0484ffffffff",  # bit-string of 2^32-1 bits
        "131184ffffffff",  # compact-array with 4 GiB of contents
        "130284ffffffff",  # compact-array type description with 2^32-1 members
        "1301ffff01ffff01ffff00" + "01" + "00",  # array of arrays of nulls: 2^48 values
        "1302021101ffff01ffff00" + "01" + "05",
    ],
)
def test_hostile_lengths_fail_fast(hex_: str) -> None:
    """A declared length of billions is refused before any work in proportion to it: the
    lines of the codec run are counted (not timed, so the machine's speed does not matter)."""
    with pytest.raises(DecodeError) as info:
        codec_lines_run(decode_data, bytes.fromhex(hex_) + b"\x00" * 64)
    assert info.value.__notes__[-1] == "codec lines run: bounded"
    assert info.value.offset is not None


def test_array_count_beyond_remaining_bytes() -> None:
    with pytest.raises(DecodeError, match="claims 100 elements but only 2 byte") as info:
        decode_data(bytes.fromhex("0164" + "1100"))
    assert info.value.code == "decode.truncated"
    assert info.value.offset == 1


def test_limits_are_applied() -> None:
    small = Limits(max_depth=3, max_elements=4, max_length=8)
    with pytest.raises(DecodeError, match="limit 4"):
        decode_data(encode_data(Data.array([Data.null()] * 5)), limits=small)
    with pytest.raises(DecodeError, match="limit 8"):
        decode_data(encode_data(Data.octet_string(b"x" * 9)), limits=small)
    nested = Data.array([Data.array([Data.array([Data.null()])])])
    with pytest.raises(DecodeError, match="deeper than the limit 3"):
        decode_data(encode_data(nested), limits=small)
    assert decode_data_exact(encode_data(nested), limits=Limits(max_depth=4)) == nested
    assert (DEFAULT_LIMITS.max_depth, DEFAULT_LIMITS.max_elements) == (16, 65535)
    assert DEFAULT_LIMITS.max_length == 1 << 20


def test_thousand_deep_nesting_is_refused() -> None:
    raw = bytes.fromhex("0101") * 1000 + b"\x00"
    with pytest.raises(DecodeError) as info:
        decode_data(raw)
    assert info.value.code == "decode.too_deep"
    assert info.value.offset == 2 * (DEFAULT_LIMITS.max_depth - 1)


def test_deep_compact_array_type_is_refused() -> None:
    raw = bytes.fromhex("13") + bytes.fromhex("0201") * 1000 + bytes.fromhex("11" + "00")
    with pytest.raises(DecodeError, match="deeper"):
        decode_data(raw)


@pytest.mark.parametrize(
    ("hex_", "code", "offset"),
    [
        ("07", "decode.bad_tag", 0),
        ("0102" + "1101" + "08", "decode.bad_tag", 4),
        ("0c02c328", "decode.bad_utf8", 2),
        ("1203", "decode.truncated", 1),
        ("1907e8", "decode.truncated", 1),
        ("13" + "13", "decode.bad_tag", 1),
        ("", "decode.truncated", 0),
    ],
)
def test_decode_errors_say_what_and_where(hex_: str, code: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        decode_data(bytes.fromhex(hex_))
    assert info.value.code == code
    assert info.value.offset == offset
    assert f"(at byte {offset})" in str(info.value)


def test_decode_offset_outside_buffer() -> None:
    with pytest.raises(DecodeError):
        decode_data(b"\x00", 5)


# --- plain Python and JSON -----------------------------------------------------------------


def test_to_python_and_json() -> None:
    value = Data.structure(
        [
            Data.octet_string(b"\x01\x02"),
            Data.array([Data.long(-1), Data.float32(0.5)]),
            Data.date_time(CosemDateTime(2024, 3, 1, None, 12, 0, 0, None, -60, 0)),
            Data.date_time(CosemDateTime(2024, 3, 1, None, 12, 0, 0, None, None, 0)),
            Data.date_time(CosemDateTime(None, 0xFE, 0xFE, None, 2, 0, 0, None, None, None)),
            Data.date(CosemDate(2024, 2, 29)),
            Data.time(CosemTime(23, 59, 1, 50)),
            Data.bit_string("101"),
            Data.float64(math.inf),
            Data.float64(math.nan),
            Data.null(),
            Data.visible_string("abc"),
            Data.boolean(True),
        ]
    )
    py = value.to_python()
    assert isinstance(py, list)
    assert py[:2] == [b"\x01\x02", [-1, 0.5]]
    assert py[2] == dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert py[3] == CosemDateTime(2024, 3, 1, None, 12, 0, 0, None, None, 0)
    assert py[4] == CosemDateTime(None, 0xFE, 0xFE, None, 2, 0, 0)
    assert py[5:8] == [dt.date(2024, 2, 29), dt.time(23, 59, 1, 500_000), "101"]
    assert py[10:] == [None, "abc", True]
    js = value.to_json()
    assert js == [
        "0102",
        [-1, 0.5],
        "2024-03-01T12:00:00+01:00",
        "2024-03-01T12:00:00",
        "****-DST-begin-lastT02:00:00",
        "2024-02-29",
        "23:59:01.500000",
        "101",
        "Infinity",
        "NaN",
        None,
        "abc",
        True,
    ]
    json.dumps(js, allow_nan=False)


@given(simple_data_values())
def test_type_predicates(value: Data) -> None:
    py = value.to_python()
    assert value.is_integer_type == (isinstance(py, int) and not isinstance(py, bool))
    assert not value.is_constructed


# --- real frames ---------------------------------------------------------------------------

# Frames from the shared real-meter-frames.json, copied in tests/data (meter pushes, captured by
# public projects). The offsets are found from the LLC header e6 e7 00 that precedes every APDU.
KAIFA_PUSH = "7ea027010201105a87e6e7000f40000000090c07e4020f06011922ff8000000201060000157eea5e7e"
AIDON_PUSH = (
    "7ea02a410883130413e6e7000f40000000000101020309060100010700ff060000067d02020f00161b1c057e"
)
LANDIS_GYR_GBT = (
    "7EA07DCEFF0313D045E040000200006C020412000309060100010802FF0F02120000020412000309060100020801"
    "FF0F02120000020412000309060100020802FF0F02120000020412000309060100010800FF0F0212000002041200"
    "0309060100020800FF0F02120000020412000309060100030800FF0F02120000B34E7E"
)


def _apdu_start(frame_hex: str) -> tuple[bytes, int]:
    raw = bytes.fromhex(frame_hex)
    return raw, raw.index(b"\xe6\xe7\x00") + 3


def test_kaifa_push_frame() -> None:
    raw, apdu = _apdu_start(KAIFA_PUSH)
    assert raw[apdu] == 0x0F  # data-notification, then a 4-byte long-invoke-id-and-priority
    stamp, pos = decode_data(raw, apdu + 5)
    assert stamp.type == DataType.OCTET_STRING
    assert isinstance(stamp.value, bytes)
    when = CosemDateTime.from_bytes(stamp.value)
    assert when == CosemDateTime(2020, 2, 15, 6, 1, 25, 34, None, None, 0)
    assert when.to_naive_datetime() == dt.datetime(2020, 2, 15, 1, 25, 34)
    body, end = decode_data(raw, pos)
    assert body == Data.structure([Data.double_long_unsigned(0x157E)])
    assert end == len(raw) - 3  # FCS (2 bytes) and the closing flag follow


def test_aidon_push_frame() -> None:
    raw, apdu = _apdu_start(AIDON_PUSH)
    stamp, pos = decode_data(raw, apdu + 5)
    assert stamp == Data.null()  # no time stamp in this push
    body, end = decode_data(raw, pos)
    assert end == len(raw) - 3
    ((obis, value, scaler_unit),) = (item.value for item in body.value)  # type: ignore[attr-defined]
    assert Obis.from_bytes(obis.value) == Obis.parse("1-0:1.7.0")
    assert value == Data.double_long_unsigned(1661)
    assert scaler_unit == Data.structure([Data.integer(0), Data.enum(27)])
    assert unit_for(scaler_unit.value[1].value).symbol == "W"


def test_landis_gyr_block_contents() -> None:
    raw = bytes.fromhex(LANDIS_GYR_GBT)
    # general-block-transfer: E0, block-control, block-number (2), ack (2), length, block data.
    pos = raw.index(b"\xe0") + 7
    assert raw[pos - 1] == 0x6C
    names = []
    while pos < len(raw) - 3:
        item, pos = decode_data(raw, pos)
        class_id, ln, attribute, data_index = item.value  # type: ignore[misc]
        assert (class_id, attribute, data_index) == (
            Data.long_unsigned(3),
            Data.integer(2),
            Data.long_unsigned(0),
        )
        names.append(str(Obis.from_bytes(ln.value)))
    assert pos == len(raw) - 3
    assert names == ["1-0:1.8.2", "1-0:2.8.1", "1-0:2.8.2", "1-0:1.8.0", "1-0:2.8.0", "1-0:3.8.0"]


# --- speed ---------------------------------------------------------------------------------

#: Lines of the codec a decode may run, whatever the lengths it is told (a few hundred at most).
_LINES_BOUND = 2_000


def codec_lines_run(fn: Callable[[bytes], _T], raw: bytes) -> tuple[_T, int]:
    """``fn(raw)`` and the number of lines of ``codec/`` it ran (a tracer counts them). An error
    it raises is raised with a note, ``codec lines run: bounded`` when they were below
    :data:`_LINES_BOUND`, so that a test can tell a fast refusal from a slow one."""
    lines = 0
    root = str(Path(codec.__file__).parent)

    def tracer(frame: FrameType, event: str, _arg: object) -> Any:
        nonlocal lines
        if not frame.f_code.co_filename.startswith(root):
            return None
        if event == "line":
            lines += 1
            if lines > _LINES_BOUND:
                raise AssertionError(f"the codec ran more than {_LINES_BOUND} lines")
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = fn(raw)
    except DecodeError as exc:
        exc.add_note("codec lines run: bounded")
        raise
    finally:
        sys.settrace(previous)
    return result, lines


def test_large_octet_string_is_not_decoded_byte_by_byte() -> None:
    """A 1 MB octet-string costs the codec as many lines as a 1 KB one: it is sliced, not
    walked (the lines run are counted, so the machine's speed does not matter)."""
    small = encode_data(Data.octet_string(bytes(range(256)) * 4))
    raw = encode_data(Data.octet_string(bytes(range(256)) * 4000))  # ~1 MB
    value, lines = codec_lines_run(decode_data_exact, raw)
    assert len(value.value) == 1_024_000  # type: ignore[arg-type]
    assert lines == codec_lines_run(decode_data_exact, small)[1]


# --- interoperability with gurux_dlms (an independent implementation, used only here) --------

gurux = pytest.importorskip("gurux_dlms")
from gurux_dlms.enums import DataType as GxType  # noqa: E402
from gurux_dlms.GXByteBuffer import GXByteBuffer  # noqa: E402
from gurux_dlms.GXDLMSSettings import GXDLMSSettings  # noqa: E402
from gurux_dlms.internal._GXCommon import _GXCommon  # noqa: E402
from gurux_dlms.internal._GXDataInfo import _GXDataInfo  # noqa: E402

_GX_SETTINGS = GXDLMSSettings(False, None)

# Types whose Python class tells gurux the DLMS type, so they can sit inside its containers.
_GX_WRAPPERS = {
    DataType.INTEGER: gurux.GXInt8,
    DataType.LONG: gurux.GXInt16,
    DataType.DOUBLE_LONG: gurux.GXInt32,
    DataType.LONG64: gurux.GXInt64,
    DataType.UNSIGNED: gurux.GXUInt8,
    DataType.LONG_UNSIGNED: gurux.GXUInt16,
    DataType.DOUBLE_LONG_UNSIGNED: gurux.GXUInt32,
    DataType.LONG64_UNSIGNED: gurux.GXUInt64,
    DataType.ENUM: gurux.GXEnum,
    DataType.FLOAT32: gurux.GXFloat32,
    DataType.FLOAT64: gurux.GXFloat64,
}


def _to_gurux(value: Data) -> object:
    """The gurux object for one of our values (types gurux can infer from the class)."""
    if value.type in _GX_WRAPPERS:
        return _GX_WRAPPERS[value.type](value.value)
    if value.type in (DataType.ARRAY, DataType.STRUCTURE):
        container = gurux.GXArray() if value.type == DataType.ARRAY else gurux.GXStructure()
        container.extend(_to_gurux(item) for item in value.value)  # type: ignore[attr-defined]
        return container
    if value.type == DataType.BIT_STRING:
        return gurux.GXBitString(str(value.value))
    return value.value  # None, bool, bytes, ASCII str


def _gurux_encode(value: Data) -> bytes:
    buf = GXByteBuffer()
    _GXCommon.setData(_GX_SETTINGS, buf, GxType(int(value.type)), _to_gurux(value))
    return bytes(buf.array())


def _gurux_decode(raw: bytes) -> object:
    info = _GXDataInfo()
    buf = GXByteBuffer(raw)
    value = _GXCommon.getData(_GX_SETTINGS, buf, info)
    assert info.complete
    assert buf.position == len(raw)
    return value


def _from_gurux(value: object) -> object:
    """Gurux's decoded value in the shape of our ``to_python()``."""
    if isinstance(value, list):  # GXArray and GXStructure are lists
        return [_from_gurux(item) for item in value]
    if isinstance(value, gurux.GXBitString):
        return str(value)
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, gurux.GXFloat32 | gurux.GXFloat64 | float):
        return float(value)
    return int(value)  # type: ignore[call-overload]


_GX_SCALARS = st.one_of(
    *(
        st.integers(lo, hi).map(lambda v, t=t: Data(t, v))
        for t, lo, hi in INT_LIMITS
        if t != DataType.BCD  # gurux infers no class for bcd
    ),
    st.booleans().map(Data.boolean),
    st.binary(max_size=300).map(Data.octet_string),
    st.floats(width=32, allow_nan=False).map(Data.float32),
    st.floats(allow_nan=False).map(Data.float64),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40).map(
        Data.visible_string
    ),
    # gurux writes a bit-string's length as 8 x its byte count: whole bytes only.
    st.binary(max_size=8).map(lambda b: Data.bit_string(BitString(8 * len(b), b))),
)
_GX_VALUES = st.recursive(
    _GX_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4).map(Data.structure)
        | st.lists(inner, min_size=1, max_size=4).map(Data.array)
    ),
    max_leaves=12,
)


@pytest.mark.interop
@given(_GX_VALUES)
def test_gurux_encodes_the_same_bytes(value: Data) -> None:
    raw = _gurux_encode(value)
    assert raw == encode_data(value)
    assert decode_data_exact(raw, limits=DEEP) == value


@pytest.mark.interop
@given(_GX_VALUES)
def test_gurux_decodes_our_bytes(value: Data) -> None:
    assert _from_gurux(_gurux_decode(encode_data(value))) == value.to_python()


@pytest.mark.interop
@given(st.text("01", max_size=40))
def test_gurux_decodes_our_bit_strings(text: str) -> None:
    theirs = _gurux_decode(encode_data(Data.bit_string(text)))
    assert str(theirs) == text


@pytest.mark.interop
def test_gurux_utf8_and_bcd() -> None:
    assert _gurux_decode(encode_data(Data.bcd(0x42))) == 0x42
    buf = GXByteBuffer()
    _GXCommon.setData(_GX_SETTINGS, buf, GxType.STRING_UTF8, "héllo ✓")
    assert decode_data_exact(bytes(buf.array())) == Data.utf8_string("héllo ✓")


@pytest.mark.interop
def test_gurux_date_time_both_ways() -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    when = dt.datetime(2024, 3, 1, 12, 30, 45, 120_000, tzinfo=cet)
    buf = GXByteBuffer()
    _GXCommon.setData(_GX_SETTINGS, buf, GxType.DATETIME, gurux.GXDateTime(when))
    ours = decode_data_exact(bytes(buf.array()))
    assert ours.type == DataType.DATE_TIME
    assert isinstance(ours.value, CosemDateTime)
    assert ours.value.deviation == -60  # gurux writes the Blue Book sign too
    assert ours.to_python() == when

    sent = Data.date_time(CosemDateTime.from_datetime(when, clock_status=ClockStatus.DOUBTFUL))
    theirs = _gurux_decode(encode_data(sent))
    assert theirs.value == when  # type: ignore[attr-defined]
    assert theirs.status == ClockStatus.DOUBTFUL  # type: ignore[attr-defined]
    assert theirs.dayOfWeek == 5  # type: ignore[attr-defined]


@pytest.mark.interop
def test_gurux_date_and_time() -> None:
    date = _gurux_decode(encode_data(Data.date(CosemDate.from_date(dt.date(2024, 2, 29)))))
    assert date.value.date() == dt.date(2024, 2, 29)  # type: ignore[attr-defined]
    clock = _gurux_decode(encode_data(Data.time(CosemTime(23, 59, 58, None))))
    assert clock.value.time().replace(microsecond=0) == dt.time(23, 59, 58)  # type: ignore[attr-defined]


@pytest.mark.interop
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=20)), max_size=10))
def test_gurux_decodes_our_compact_array(rows: list[tuple[int, bytes]]) -> None:
    td = TypeDescription.structure(
        [
            TypeDescription.simple(DataType.LONG_UNSIGNED),
            TypeDescription.simple(DataType.OCTET_STRING),
        ]
    )
    value = Data.compact_array(
        [Data.structure([Data.long_unsigned(n), Data.octet_string(b)]) for n, b in rows], td
    )
    theirs = _gurux_decode(encode_data(value))
    assert _from_gurux(theirs) == [[n, b] for n, b in rows]
