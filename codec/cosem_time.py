"""COSEM date-time, date and time values (DLMS UA 1000-1, "Date and time formats").

A COSEM date-time is 12 bytes: year (u16), month, day of month, day of week, hour, minute,
second, hundredths, deviation (i16, minutes) and clock status. A date is the first 5 of those
bytes, a time is hour, minute, second and hundredths (4 bytes).

Every field may be "not specified" (``0xFFFF`` year, ``0xFF`` byte fields, ``0x8000``
deviation); such fields are ``None`` here. Some byte fields also carry special values that are
kept as plain ints so that nothing is lost on a round trip:

- month ``0xFD`` (:data:`MONTH_DST_END`) and ``0xFE`` (:data:`MONTH_DST_BEGIN`);
- day of month ``0xFD`` (:data:`DAY_SECOND_LAST`) and ``0xFE`` (:data:`DAY_LAST`).

Any byte string of the right length decodes; only :meth:`CosemDateTime.to_datetime` and its
siblings insist on a real, fully specified calendar value.

Deviation sign
--------------
The Blue Book defines the deviation as the minutes *from local time to UTC*: a meter on
UTC+01:00 sends ``-60``, the opposite sign of an ISO 8601 offset. That is the default here
(:attr:`DeviationConvention.BLUE_BOOK`). Some meters send the ISO sign instead (``+60`` for
UTC+01:00); pass ``convention=DeviationConvention.ISO`` to the conversion methods for those, or
change the module-wide default with :func:`set_default_convention` at start-up. The raw
``deviation`` field always holds exactly what is on the wire; only the conversions to and from
:class:`datetime.datetime` apply the convention.
"""

from __future__ import annotations

import datetime as _dt
import enum
import struct

import attrs

from codec.errors import DecodeError, EncodeError

__all__ = [
    "DAY_LAST",
    "DAY_SECOND_LAST",
    "MONTH_DST_BEGIN",
    "MONTH_DST_END",
    "ClockStatus",
    "CosemDate",
    "CosemDateTime",
    "CosemTime",
    "DeviationConvention",
    "get_default_convention",
    "set_default_convention",
]

#: Month value meaning "the month in which daylight saving time ends".
MONTH_DST_END = 0xFD
#: Month value meaning "the month in which daylight saving time begins".
MONTH_DST_BEGIN = 0xFE
#: Day-of-month value meaning "the second last day of the month".
DAY_SECOND_LAST = 0xFD
#: Day-of-month value meaning "the last day of the month".
DAY_LAST = 0xFE

_NOT_SPECIFIED = 0xFF
_YEAR_NOT_SPECIFIED = 0xFFFF
_DEVIATION_NOT_SPECIFIED = -0x8000

_DATE_TIME = struct.Struct(">HBBBBBBBhB")
_DATE = struct.Struct(">HBBB")
_TIME = struct.Struct(">BBBB")


class ClockStatus(enum.IntFlag):
    """The clock status byte of a COSEM date-time (``0xFF`` means "not specified": ``None``)."""

    INVALID = 0x01
    DOUBTFUL = 0x02
    DIFFERENT_CLOCK_BASE = 0x04
    INVALID_CLOCK_STATUS = 0x08
    DAYLIGHT_SAVING_ACTIVE = 0x80


class DeviationConvention(enum.Enum):
    """How the deviation field relates to the ISO 8601 UTC offset."""

    #: Minutes from local time to UTC: UTC+01:00 is sent as -60 (DLMS Blue Book).
    BLUE_BOOK = "blue_book"
    #: Minutes from UTC to local time: UTC+01:00 is sent as +60 (ISO 8601 sign).
    ISO = "iso"


_default_convention = DeviationConvention.BLUE_BOOK


def set_default_convention(convention: DeviationConvention) -> None:
    """Set the deviation sign used when a conversion is not given ``convention=``.

    Meant to be called once at start-up; per-meter settings should pass ``convention=``.
    """
    global _default_convention
    _default_convention = DeviationConvention(convention)


def get_default_convention() -> DeviationConvention:
    """The deviation sign used when a conversion is not given ``convention=``."""
    return _default_convention


def _utc_offset_minutes(deviation: int, convention: DeviationConvention | None) -> int:
    convention = convention or _default_convention
    return -deviation if convention is DeviationConvention.BLUE_BOOK else deviation


def _byte(value: int | None, name: str) -> int:
    if value is None:
        return _NOT_SPECIFIED
    if not isinstance(value, int):
        raise EncodeError(f"COSEM {name} must be an int or None, not {value!r}")
    if not 0 <= value <= 0xFE:
        raise EncodeError(
            f"COSEM {name} {value!r} out of range 0..254 (255 is written for None)",
            code="encode.cosem_time",
        )
    return value


def _unspecified(value: int, sentinel: int) -> int | None:
    return None if value == sentinel else value


def _require(kind: str, **fields: int | None) -> None:
    missing = [name for name, value in fields.items() if value is None]
    if missing:
        raise DecodeError(
            f"COSEM {kind} has unspecified {', '.join(missing)}; it is not a calendar value",
            code="decode.cosem_time.unspecified",
        )


def _special_month(month: int) -> str | None:
    if month == MONTH_DST_END:
        return "DST-end"
    if month == MONTH_DST_BEGIN:
        return "DST-begin"
    return None


def _special_day(day: int) -> str | None:
    if day == DAY_SECOND_LAST:
        return "second-last"
    if day == DAY_LAST:
        return "last"
    return None


def _date_text(year: int | None, month: int | None, day: int | None) -> str:
    y = "****" if year is None else f"{year:04d}"
    m = "**" if month is None else _special_month(month) or f"{month:02d}"
    d = "**" if day is None else _special_day(day) or f"{day:02d}"
    return f"{y}-{m}-{d}"


def _time_text(
    hour: int | None, minute: int | None, second: int | None, hundredths: int | None
) -> str:
    parts = ["**" if v is None else f"{v:02d}" for v in (hour, minute, second)]
    text = ":".join(parts)
    if hundredths is not None:
        text += f".{hundredths:02d}"
    return text


def _check_length(raw: bytes | bytearray | memoryview, size: int, kind: str) -> None:
    if len(raw) != size:
        raise DecodeError(
            f"COSEM {kind} must be {size} bytes, got {len(raw)}", code="decode.cosem_time.length"
        )


def _to_clock_status(value: int | None) -> ClockStatus | None:
    return None if value is None else ClockStatus(value)


@attrs.frozen
class CosemDate:
    """A COSEM date (5 bytes). ``None`` fields are not specified.

    ``weekday`` is 1 (Monday) to 7 (Sunday).
    """

    year: int | None
    month: int | None
    day: int | None
    weekday: int | None = None

    def to_bytes(self) -> bytes:
        """The 5-byte encoding."""
        year = _YEAR_NOT_SPECIFIED if self.year is None else self.year
        if not 0 <= year <= 0xFFFF or (self.year is not None and year == 0xFFFF):
            raise EncodeError(f"COSEM year {self.year!r} out of range 0..65534")
        return _DATE.pack(
            year,
            _byte(self.month, "month"),
            _byte(self.day, "day"),
            _byte(self.weekday, "weekday"),
        )

    @classmethod
    def from_bytes(cls, raw: bytes | bytearray | memoryview) -> CosemDate:
        """Decode 5 bytes; any 5 bytes decode."""
        _check_length(raw, _DATE.size, "date")
        year, month, day, weekday = _DATE.unpack(raw)
        return cls(
            _unspecified(year, _YEAR_NOT_SPECIFIED),
            _unspecified(month, _NOT_SPECIFIED),
            _unspecified(day, _NOT_SPECIFIED),
            _unspecified(weekday, _NOT_SPECIFIED),
        )

    @classmethod
    def from_date(cls, value: _dt.date) -> CosemDate:
        """The COSEM date of a calendar date, weekday included."""
        return cls(value.year, value.month, value.day, value.isoweekday())

    def to_date(self) -> _dt.date:
        """The calendar date; raises :class:`DecodeError` if it is not fully specified."""
        _require("date", year=self.year, month=self.month, day=self.day)
        assert self.year is not None
        assert self.month is not None
        assert self.day is not None
        try:
            return _dt.date(self.year, self.month, self.day)
        except ValueError as exc:
            raise DecodeError(
                f"COSEM date {self} is not a calendar date: {exc}",
                code="decode.cosem_time.invalid",
            ) from None

    def __str__(self) -> str:
        return _date_text(self.year, self.month, self.day)


@attrs.frozen
class CosemTime:
    """A COSEM time (4 bytes). ``None`` fields are not specified."""

    hour: int | None
    minute: int | None
    second: int | None
    hundredths: int | None = None

    def to_bytes(self) -> bytes:
        """The 4-byte encoding."""
        return _TIME.pack(
            _byte(self.hour, "hour"),
            _byte(self.minute, "minute"),
            _byte(self.second, "second"),
            _byte(self.hundredths, "hundredths"),
        )

    @classmethod
    def from_bytes(cls, raw: bytes | bytearray | memoryview) -> CosemTime:
        """Decode 4 bytes; any 4 bytes decode."""
        _check_length(raw, _TIME.size, "time")
        hour, minute, second, hundredths = _TIME.unpack(raw)
        return cls(
            _unspecified(hour, _NOT_SPECIFIED),
            _unspecified(minute, _NOT_SPECIFIED),
            _unspecified(second, _NOT_SPECIFIED),
            _unspecified(hundredths, _NOT_SPECIFIED),
        )

    @classmethod
    def from_time(cls, value: _dt.time) -> CosemTime:
        """The COSEM time of a wall-clock time (microseconds truncated to hundredths)."""
        return cls(value.hour, value.minute, value.second, value.microsecond // 10_000)

    def to_time(self) -> _dt.time:
        """The wall-clock time (unspecified hundredths read as 0).

        Raises :class:`DecodeError` if hour, minute or second is not specified.
        """
        _require("time", hour=self.hour, minute=self.minute, second=self.second)
        assert self.hour is not None
        assert self.minute is not None
        assert self.second is not None
        try:
            return _dt.time(self.hour, self.minute, self.second, (self.hundredths or 0) * 10_000)
        except ValueError as exc:
            raise DecodeError(
                f"COSEM time {self} is not a valid time: {exc}", code="decode.cosem_time.invalid"
            ) from None

    def __str__(self) -> str:
        return _time_text(self.hour, self.minute, self.second, self.hundredths)


@attrs.frozen
class CosemDateTime:
    """A COSEM date-time (12 bytes). ``None`` fields are not specified.

    ``weekday`` is 1 (Monday) to 7 (Sunday); ``deviation`` is the raw wire value in minutes
    (see the module documentation for its sign); ``clock_status`` is a :class:`ClockStatus`.
    """

    year: int | None
    month: int | None
    day: int | None
    weekday: int | None
    hour: int | None
    minute: int | None
    second: int | None
    hundredths: int | None = None
    deviation: int | None = None
    clock_status: ClockStatus | None = attrs.field(default=None, converter=_to_clock_status)

    @property
    def date(self) -> CosemDate:
        """The date part."""
        return CosemDate(self.year, self.month, self.day, self.weekday)

    @property
    def time(self) -> CosemTime:
        """The time part."""
        return CosemTime(self.hour, self.minute, self.second, self.hundredths)

    @property
    def dst_active(self) -> bool:
        """Whether the clock status says daylight saving time is in effect."""
        return bool(self.clock_status and ClockStatus.DAYLIGHT_SAVING_ACTIVE in self.clock_status)

    def to_bytes(self) -> bytes:
        """The 12-byte encoding."""
        year = _YEAR_NOT_SPECIFIED if self.year is None else self.year
        if not 0 <= year <= 0xFFFF or (self.year is not None and year == 0xFFFF):
            raise EncodeError(f"COSEM year {self.year!r} out of range 0..65534")
        deviation = _DEVIATION_NOT_SPECIFIED if self.deviation is None else self.deviation
        if not -0x8000 < deviation <= 0x7FFF and self.deviation is not None:
            raise EncodeError(f"COSEM deviation {self.deviation!r} out of range -32767..32767")
        status = _NOT_SPECIFIED if self.clock_status is None else int(self.clock_status)
        if not 0 <= status <= 0xFF:
            raise EncodeError(f"COSEM clock status {self.clock_status!r} out of range 0..255")
        return _DATE_TIME.pack(
            year,
            _byte(self.month, "month"),
            _byte(self.day, "day"),
            _byte(self.weekday, "weekday"),
            _byte(self.hour, "hour"),
            _byte(self.minute, "minute"),
            _byte(self.second, "second"),
            _byte(self.hundredths, "hundredths"),
            deviation,
            status,
        )

    @classmethod
    def from_bytes(cls, raw: bytes | bytearray | memoryview) -> CosemDateTime:
        """Decode 12 bytes; any 12 bytes decode."""
        _check_length(raw, _DATE_TIME.size, "date-time")
        (year, month, day, weekday, hour, minute, second, hundredths, deviation, status) = (
            _DATE_TIME.unpack(raw)
        )
        return cls(
            None if year == _YEAR_NOT_SPECIFIED else year,
            None if month == _NOT_SPECIFIED else month,
            None if day == _NOT_SPECIFIED else day,
            None if weekday == _NOT_SPECIFIED else weekday,
            None if hour == _NOT_SPECIFIED else hour,
            None if minute == _NOT_SPECIFIED else minute,
            None if second == _NOT_SPECIFIED else second,
            None if hundredths == _NOT_SPECIFIED else hundredths,
            None if deviation == _DEVIATION_NOT_SPECIFIED else deviation,
            None if status == _NOT_SPECIFIED else status,
        )

    @classmethod
    def from_datetime(
        cls,
        value: _dt.datetime,
        *,
        clock_status: int = 0,
        convention: DeviationConvention | None = None,
    ) -> CosemDateTime:
        """The COSEM date-time of ``value``.

        An aware datetime gets its UTC offset as the deviation (with the sign of
        ``convention``); a naive one gets an unspecified deviation. If ``value.dst()`` is
        non-zero, :attr:`ClockStatus.DAYLIGHT_SAVING_ACTIVE` is added to ``clock_status``.
        Microseconds are truncated to hundredths.
        """
        offset = value.utcoffset()
        deviation: int | None = None
        if offset is not None:
            minutes = int(offset.total_seconds() // 60)
            deviation = _utc_offset_minutes(minutes, convention)
        status = ClockStatus(clock_status)
        dst = value.dst()
        if dst:
            status |= ClockStatus.DAYLIGHT_SAVING_ACTIVE
        return cls(
            value.year,
            value.month,
            value.day,
            value.isoweekday(),
            value.hour,
            value.minute,
            value.second,
            value.microsecond // 10_000,
            deviation,
            status,
        )

    def to_naive_datetime(self) -> _dt.datetime:
        """The wall-clock datetime of the fields, without any time zone (deviation ignored).

        Raises :class:`DecodeError` like :meth:`to_datetime` for unspecified or invalid fields.
        """
        plain = attrs.evolve(self, deviation=None)
        return plain.to_datetime(default_tz=_dt.UTC).replace(tzinfo=None)

    def to_datetime(
        self,
        *,
        convention: DeviationConvention | None = None,
        default_tz: _dt.tzinfo | None = None,
    ) -> _dt.datetime:
        """The timezone-aware datetime this value names.

        Unspecified hundredths read as 0 and the weekday is ignored. If the deviation is not
        specified, ``default_tz`` (the meter's known zone) is used; without it that is an error.
        Raises :class:`DecodeError` (code ``decode.cosem_time.*``) when a date or time field is
        unspecified or special, or the fields do not name a real instant.
        """
        _require(
            "date-time",
            year=self.year,
            month=self.month,
            day=self.day,
            hour=self.hour,
            minute=self.minute,
            second=self.second,
        )
        if self.deviation is None and default_tz is None:
            raise DecodeError(
                f"COSEM date-time {self} has no deviation and no default time zone was given",
                code="decode.cosem_time.unspecified",
            )
        assert self.year is not None
        assert self.month is not None
        assert self.day is not None
        assert self.hour is not None
        assert self.minute is not None
        assert self.second is not None
        try:
            tz: _dt.tzinfo
            if self.deviation is None:
                assert default_tz is not None
                tz = default_tz
            else:
                minutes = _utc_offset_minutes(self.deviation, convention)
                tz = _dt.timezone(_dt.timedelta(minutes=minutes))
            return _dt.datetime(
                self.year,
                self.month,
                self.day,
                self.hour,
                self.minute,
                self.second,
                (self.hundredths or 0) * 10_000,
                tzinfo=tz,
            )
        except ValueError as exc:
            raise DecodeError(
                f"COSEM date-time {self} is not a valid instant: {exc}",
                code="decode.cosem_time.invalid",
            ) from None

    def __str__(self) -> str:
        text = (
            f"{_date_text(self.year, self.month, self.day)}T"
            f"{_time_text(self.hour, self.minute, self.second, self.hundredths)}"
        )
        if self.deviation is not None:
            text += f" deviation={self.deviation}"
        return text
