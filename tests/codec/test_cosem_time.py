"""COSEM date-time, date and time: bytes, calendar conversions, deviation sign, clock status."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec import cosem_time
from codec.cosem_time import (
    DAY_LAST,
    DAY_SECOND_LAST,
    MONTH_DST_BEGIN,
    MONTH_DST_END,
    ClockStatus,
    CosemDate,
    CosemDateTime,
    CosemTime,
    DeviationConvention,
)
from codec.errors import DecodeError, EncodeError
from tests.codec.strategies import cosem_date_times, cosem_dates, cosem_times

UTC_PLUS_1 = dt.timezone(dt.timedelta(hours=1))
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


@pytest.fixture
def restore_default_convention() -> Iterator[None]:
    saved = cosem_time.get_default_convention()
    try:
        yield
    finally:
        cosem_time.set_default_convention(saved)


# --- bytes ---------------------------------------------------------------------------------


def test_known_answer_date_time() -> None:
    value = CosemDateTime(2024, 3, 1, 5, 12, 30, 45, 0, -60, ClockStatus.DAYLIGHT_SAVING_ACTIVE)
    assert value.to_bytes().hex() == "07e80301050c1e2d00ffc480"
    assert CosemDateTime.from_bytes(bytes.fromhex("07e80301050c1e2d00ffc480")) == value


def test_all_unspecified() -> None:
    raw = bytes.fromhex("ffff" + "ff" * 7 + "8000" + "ff")
    value = CosemDateTime.from_bytes(raw)
    assert value == CosemDateTime(None, None, None, None, None, None, None, None, None, None)
    assert value.to_bytes() == raw
    assert str(value) == "****-**-**T**:**:**"
    assert CosemDate.from_bytes(b"\xff" * 5) == CosemDate(None, None, None, None)
    assert CosemTime.from_bytes(b"\xff" * 4) == CosemTime(None, None, None, None)
    assert CosemDate(None, None, None).to_bytes() == b"\xff" * 5
    assert CosemTime(None, None, None).to_bytes() == b"\xff" * 4


@given(st.binary(min_size=12, max_size=12))
def test_any_twelve_bytes_round_trip(raw: bytes) -> None:
    assert CosemDateTime.from_bytes(raw).to_bytes() == raw


@given(st.binary(min_size=5, max_size=5), st.binary(min_size=4, max_size=4))
def test_any_date_and_time_bytes_round_trip(date_raw: bytes, time_raw: bytes) -> None:
    assert CosemDate.from_bytes(date_raw).to_bytes() == date_raw
    assert CosemTime.from_bytes(time_raw).to_bytes() == time_raw


@given(cosem_date_times(), cosem_dates(), cosem_times())
def test_values_round_trip(date_time: CosemDateTime, date: CosemDate, time: CosemTime) -> None:
    assert CosemDateTime.from_bytes(date_time.to_bytes()) == date_time
    assert CosemDate.from_bytes(date.to_bytes()) == date
    assert CosemTime.from_bytes(time.to_bytes()) == time
    assert date_time.date.to_bytes() == date_time.to_bytes()[:5]
    assert date_time.time.to_bytes() == date_time.to_bytes()[5:9]


@pytest.mark.parametrize("size", [0, 4, 11, 13])
def test_wrong_length_is_a_decode_error(size: int) -> None:
    with pytest.raises(DecodeError, match=f"12 bytes, got {size}"):
        CosemDateTime.from_bytes(bytes(size))
    with pytest.raises(DecodeError, match="5 bytes"):
        CosemDate.from_bytes(bytes(size))
    with pytest.raises(DecodeError, match="4 bytes"):
        CosemTime.from_bytes(bytes(size + 1 if size == 4 else size))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (CosemDateTime(2024, 255, 1, None, 0, 0, 0), "month 255"),
        (CosemDateTime(2024, 1, 1, None, -1, 0, 0), "hour -1"),
        (CosemDateTime(0xFFFF, 1, 1, None, 0, 0, 0), "year 65535"),
        (CosemDateTime(-1, 1, 1, None, 0, 0, 0), "year -1"),
        (CosemDateTime(2024, 1, 1, None, 0, 0, 0, None, -0x8000), "deviation -32768"),
        (CosemDateTime(2024, 1, 1, None, 0, 0, 0, None, 0x8000), "deviation 32768"),
        (CosemDateTime(2024, 1, 1, None, 0, 0, 0, None, None, 0x100), "clock status"),
        (CosemDate(2024, 1, 300), "day 300"),
        (CosemTime(0, 0, 0, 255), "hundredths 255"),
    ],
)
def test_out_of_range_fields_are_encode_errors(value: object, message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        value.to_bytes()  # type: ignore[attr-defined]


# --- special values ------------------------------------------------------------------------


def test_special_month_and_day_values_are_kept() -> None:
    raw = bytes.fromhex("ffff" + "fe" + "fe" + "07" + "02000000" + "8000" + "ff")
    value = CosemDateTime.from_bytes(raw)
    assert value.month == MONTH_DST_BEGIN
    assert value.day == DAY_LAST
    assert value.to_bytes() == raw
    assert str(value) == "****-DST-begin-lastT02:00:00.00"
    other = CosemDate(None, MONTH_DST_END, DAY_SECOND_LAST, 7)
    assert str(other) == "****-DST-end-second-last"
    assert CosemDate.from_bytes(other.to_bytes()) == other
    with pytest.raises(DecodeError, match="unspecified year"):
        value.to_datetime(default_tz=dt.UTC)


def test_special_values_do_not_convert() -> None:
    with pytest.raises(DecodeError) as info:
        CosemDateTime(2024, MONTH_DST_BEGIN, 1, None, 2, 0, 0, 0, 0).to_datetime()
    assert info.value.code == "decode.cosem_time.invalid"
    with pytest.raises(DecodeError):
        CosemDate(2024, 2, DAY_LAST).to_date()


# --- calendar conversions ------------------------------------------------------------------


def test_to_datetime_blue_book_sign() -> None:
    value = CosemDateTime(2024, 3, 1, 5, 12, 30, 45, 50, -60, 0)
    assert value.to_datetime() == dt.datetime(2024, 3, 1, 12, 30, 45, 500_000, tzinfo=UTC_PLUS_1)
    assert value.to_datetime().utcoffset() == dt.timedelta(hours=1)


def test_to_datetime_iso_sign() -> None:
    value = CosemDateTime(2024, 3, 1, 5, 12, 30, 45, 50, 60, 0)
    converted = value.to_datetime(convention=DeviationConvention.ISO)
    assert converted.utcoffset() == dt.timedelta(hours=1)
    # The same bytes read with the Blue Book sign are two hours apart.
    assert value.to_datetime() - converted == dt.timedelta(hours=2)


def test_from_datetime_both_signs() -> None:
    when = dt.datetime(2024, 3, 1, 12, 30, 45, 123_456, tzinfo=UTC_PLUS_1)
    blue = CosemDateTime.from_datetime(when)
    assert blue == CosemDateTime(2024, 3, 1, 5, 12, 30, 45, 12, -60, 0)
    assert blue.to_bytes().hex() == "07e80301050c1e2d0cffc400"
    iso = CosemDateTime.from_datetime(when, convention=DeviationConvention.ISO)
    assert iso.deviation == 60
    assert iso.to_datetime(convention=DeviationConvention.ISO) == when.replace(microsecond=120_000)


def test_module_default_convention(restore_default_convention: None) -> None:
    raw = CosemDateTime(2024, 1, 1, None, 0, 0, 0, 0, 120, 0)
    assert raw.to_datetime().utcoffset() == dt.timedelta(hours=-2)
    cosem_time.set_default_convention(DeviationConvention.ISO)
    assert cosem_time.get_default_convention() is DeviationConvention.ISO
    assert raw.to_datetime().utcoffset() == dt.timedelta(hours=2)
    assert CosemDateTime.from_datetime(raw.to_datetime()).deviation == 120
    # An explicit argument still wins over the module default.
    assert raw.to_datetime(convention=DeviationConvention.BLUE_BOOK).utcoffset() == dt.timedelta(
        hours=-2
    )


_zones = st.integers(-14 * 60, 14 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))


@given(
    st.datetimes(
        min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=_zones
    ),
    st.sampled_from(DeviationConvention),
)
def test_datetime_round_trip(when: dt.datetime, convention: DeviationConvention) -> None:
    when = when.replace(microsecond=when.microsecond // 10_000 * 10_000)
    value = CosemDateTime.from_datetime(when, convention=convention)
    assert CosemDateTime.from_bytes(value.to_bytes()) == value
    back = value.to_datetime(convention=convention)
    assert back == when
    assert back.utcoffset() == when.utcoffset()
    assert value.weekday == when.isoweekday()


def test_naive_datetime_has_no_deviation() -> None:
    value = CosemDateTime.from_datetime(dt.datetime(2024, 3, 1, 12))
    assert value.deviation is None
    with pytest.raises(DecodeError, match="no deviation") as info:
        value.to_datetime()
    assert info.value.code == "decode.cosem_time.unspecified"
    assert value.to_datetime(default_tz=BERLIN) == dt.datetime(2024, 3, 1, 12, tzinfo=BERLIN)
    assert value.to_naive_datetime() == dt.datetime(2024, 3, 1, 12)


def test_unspecified_fields_name_themselves() -> None:
    value = CosemDateTime(2024, None, 1, None, 12, None, 0, None, 0, 0)
    with pytest.raises(DecodeError, match="unspecified month, minute") as info:
        value.to_datetime()
    assert info.value.code == "decode.cosem_time.unspecified"
    with pytest.raises(DecodeError, match="unspecified year"):
        CosemDate(None, 1, 1).to_date()
    with pytest.raises(DecodeError, match="unspecified second"):
        CosemTime(1, 2, None).to_time()


def test_unspecified_hundredths_read_as_zero() -> None:
    value = CosemDateTime(2024, 3, 1, None, 12, 0, 0, None, 0, None)
    assert value.to_datetime() == dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "value",
    [
        CosemDateTime(2023, 2, 29, None, 0, 0, 0, 0, 0),  # not a leap year
        CosemDateTime(2024, 13, 1, None, 0, 0, 0, 0, 0),
        CosemDateTime(2024, 1, 1, None, 24, 0, 0, 0, 0),
        CosemDateTime(2024, 1, 1, None, 0, 0, 0, 100, 0),
        CosemDateTime(2024, 1, 1, None, 0, 0, 0, 0, 30_000),  # deviation beyond a day
    ],
)
def test_impossible_instants_are_decode_errors(value: CosemDateTime) -> None:
    with pytest.raises(DecodeError) as info:
        value.to_datetime()
    assert info.value.code == "decode.cosem_time.invalid"


def test_date_and_time_conversions() -> None:
    assert CosemDate.from_date(dt.date(2024, 2, 29)) == CosemDate(2024, 2, 29, 4)
    assert CosemDate(2024, 2, 29, 4).to_date() == dt.date(2024, 2, 29)
    assert CosemTime.from_time(dt.time(23, 59, 58, 999_999)) == CosemTime(23, 59, 58, 99)
    assert CosemTime(23, 59, 58, 99).to_time() == dt.time(23, 59, 58, 990_000)
    assert CosemTime(1, 2, 3).to_time() == dt.time(1, 2, 3)
    assert str(CosemTime(1, 2, 3)) == "01:02:03"
    assert str(CosemDate(2024, 2, 29, 4)) == "2024-02-29"


# --- clock status and DST ------------------------------------------------------------------


def test_clock_status_bits() -> None:
    assert ClockStatus.INVALID == 0x01
    assert ClockStatus.DOUBTFUL == 0x02
    assert ClockStatus.DIFFERENT_CLOCK_BASE == 0x04
    assert ClockStatus.INVALID_CLOCK_STATUS == 0x08
    assert ClockStatus.DAYLIGHT_SAVING_ACTIVE == 0x80
    value = CosemDateTime.from_bytes(bytes.fromhex("07e80701010c0000ff" + "ff88" + "83"))
    assert value.clock_status == ClockStatus.INVALID | ClockStatus.DOUBTFUL | 0x80
    assert isinstance(value.clock_status, ClockStatus)
    assert value.dst_active
    # Reserved bits survive a round trip.
    odd = CosemDateTime.from_bytes(bytes.fromhex("07e80701010c0000ff" + "0000" + "70"))
    assert odd.clock_status == 0x70
    assert odd.to_bytes()[-1] == 0x70


def test_dst_flag_from_zone() -> None:
    summer = CosemDateTime.from_datetime(dt.datetime(2024, 7, 1, 12, tzinfo=BERLIN))
    winter = CosemDateTime.from_datetime(dt.datetime(2024, 1, 1, 12, tzinfo=BERLIN))
    assert summer.dst_active
    assert summer.deviation == -120
    assert not winter.dst_active
    assert winter.deviation == -60
    assert summer.to_datetime() == dt.datetime(2024, 7, 1, 12, tzinfo=BERLIN)
    doubtful = CosemDateTime.from_datetime(
        dt.datetime(2024, 7, 1, 12, tzinfo=BERLIN), clock_status=ClockStatus.DOUBTFUL
    )
    assert doubtful.clock_status == ClockStatus.DOUBTFUL | ClockStatus.DAYLIGHT_SAVING_ACTIVE
    assert not CosemDateTime(2024, 1, 1, None, 0, 0, 0).dst_active
