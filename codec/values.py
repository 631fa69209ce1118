"""The value contract between ``codec/`` and its users: every A-XDR value as one JSON-safe value.

:func:`convert` is total: whatever :func:`codec.axdr.decode_data` accepted from a meter, it
returns a :class:`Converted` whose ``value`` is a :data:`JsonValue` (JSON can carry it exactly,
with no ``NaN``/``Infinity`` literal), or a :class:`Converted` with an ``error`` when the value
cannot be represented. It never raises.

The mapping, by A-XDR type:

============================== ==============================================================
null-data, dont-care           ``null``
boolean                        ``true``/``false``
integer types                  numbers; with a register's scaler applied (``10**scaler``)
enum                           a number; ``label`` holds its name where the COSEM class defines
                               one (:data:`ENUM_NAMES`)
bcd                            a number (two packed decimal digits); a nibble above 9 gives
                               ``null`` with quality ``invalid-bcd``
float32, float64               numbers (float32 as its shortest decimal); NaN and +/-Inf give
                               ``null`` with quality ``nan``, ``+inf`` or ``-inf``
visible-string, utf8-string    text
octet-string                   in a date-time context (:func:`context_for`) and 12 bytes long:
                               a COSEM date-time as below; else text when it is printable
                               UTF-8, else lowercase hex
date-time, date, time          ISO 8601 (``2024-03-01T12:00:00+01:00``; the offset is the
                               deviation, absent when the meter leaves it unspecified;
                               wildcard fields are ``*``); ``label`` holds the clock status
                               flags (``daylight-saving-active`` ...) and quality is
                               ``clock-invalid`` or ``clock-doubtful`` when the status says so
bit-string                     a string of ``0``/``1``, first bit first
array, structure,              JSON lists of the converted elements, recursively; the quality
compact-array                  of the whole is the first non-finite/invalid element's
============================== ==============================================================
"""

from __future__ import annotations

import enum
import math
import struct
from decimal import Decimal
from typing import TypeAlias, TypeGuard

import attrs

from codec.axdr import BitString, CompactArray, Data, DataType
from codec.cosem_time import ClockStatus, CosemDate, CosemDateTime, CosemTime
from codec.errors import DecodeError
from codec.obis import Obis

__all__ = [
    "ENUM_NAMES",
    "Converted",
    "JsonValue",
    "Quality",
    "ValueContext",
    "context_for",
    "convert",
    "convert_integer",
    "float32_shortest",
    "is_json_value",
    "type_name",
]

#: What a converted value can be: exactly what strict JSON carries.
JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | None"


class Quality(enum.Enum):
    """Why a value is not (entirely) the meter's number or time."""

    NAN = "nan"
    POS_INF = "+inf"
    NEG_INF = "-inf"
    INVALID_BCD = "invalid-bcd"
    CLOCK_INVALID = "clock-invalid"
    CLOCK_DOUBTFUL = "clock-doubtful"


class ValueContext(enum.Enum):
    """How to read an octet-string: as a plain string, or as a COSEM date-time."""

    PLAIN = "plain"
    DATE_TIME = "date-time"


@attrs.frozen
class Converted:
    """One converted value: ``value`` when ``error_code`` is None, else why not."""

    value: JsonValue = None
    quality: Quality | None = None
    #: The enum's name, or the clock status flags of a date-time.
    label: str | None = None
    error_code: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the value could be represented."""
        return self.error_code is None


#: Names of enum values the COSEM classes define: (class_id, attribute) -> value -> name.
ENUM_NAMES: dict[tuple[int, int], dict[int, str]] = {
    # Clock (class 8) attribute 9, clock_base.
    (8, 9): {
        0: "not-defined",
        1: "internal-crystal",
        2: "mains-frequency-50hz",
        3: "mains-frequency-60hz",
        4: "gps",
        5: "radio-controlled",
    },
    # Association LN (class 15) attribute 8, association_status.
    (15, 8): {0: "non-associated", 1: "association-pending", 2: "associated"},
    # Disconnect control (class 70) attribute 3, control_state, and attribute 4, control_mode.
    (70, 3): {0: "disconnected", 1: "connected", 2: "ready-for-reconnection"},
    (70, 4): {m: f"mode-{m}" for m in range(7)},
    # Register activation and similar classes have no value enums; units are structure members.
}

# OBIS codes of Data objects that hold a point in time as a 12-byte octet-string:
# (C, D, E) with E=None for any E. 0.1.2: time stamps of billing periods; 96.2.x: time stamps
# of configuration and event changes; 1.0.x: clock objects read as Data.
_TIME_OBIS: tuple[tuple[int, int, int | None], ...] = ((0, 1, 2), (96, 2, None), (1, 0, None))


#: (class_id, attribute) of the attributes that hold a date-time: clock time, DST begin and end
#: (8/2, 8/5, 8/6), extended register capture_time (4/5), demand register capture_time and
#: start_time_current (5/6, 5/7).
_TIME_ATTRIBUTES = frozenset({(8, 2), (8, 5), (8, 6), (4, 5), (5, 6), (5, 7)})


def context_for(class_id: int, obis: Obis, attribute: int) -> ValueContext:
    """The context in which to convert the value of ``attribute`` of object ``obis``.

    The clock's time, capture times (:data:`_TIME_ATTRIBUTES`), and octet-string values of Data
    objects (class 1, attribute 2) whose OBIS names a time stamp are date-times.
    """
    if (class_id, attribute) in _TIME_ATTRIBUTES:
        return ValueContext.DATE_TIME
    if class_id == 1 and attribute == 2:
        for c, d, e in _TIME_OBIS:
            if obis.c == c and obis.d == d and (e is None or obis.e == e):
                return ValueContext.DATE_TIME
    return ValueContext.PLAIN


def is_json_value(value: object) -> TypeGuard[JsonValue]:
    """Whether ``value`` is a :data:`JsonValue` (so a value of this type for mypy)."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(is_json_value(v) for v in value)
    return False


def type_name(data: Data) -> str:
    """The A-XDR type name as the standard writes it (``double-long-unsigned``)."""
    return data.type.name.lower().replace("_", "-")


def float32_shortest(value: float) -> float:
    """The shortest decimal that is the same float32: 204.2335, not 204.23350524902344."""
    try:
        packed = struct.pack(">f", value)
    except (OverflowError, struct.error):
        return value
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack(">f", short) == packed:
            return short
    return value


_INT_TYPES = frozenset(
    {
        DataType.DOUBLE_LONG,
        DataType.DOUBLE_LONG_UNSIGNED,
        DataType.INTEGER,
        DataType.LONG,
        DataType.UNSIGNED,
        DataType.LONG_UNSIGNED,
        DataType.LONG64,
        DataType.LONG64_UNSIGNED,
    }
)
_FLOAT_TYPES = frozenset({DataType.FLOAT32, DataType.FLOAT64})
_STATUS_NAMES = (
    (ClockStatus.INVALID, "invalid"),
    (ClockStatus.DOUBTFUL, "doubtful"),
    (ClockStatus.DIFFERENT_CLOCK_BASE, "different-clock-base"),
    (ClockStatus.INVALID_CLOCK_STATUS, "invalid-clock-status"),
    (ClockStatus.DAYLIGHT_SAVING_ACTIVE, "daylight-saving-active"),
)


class _Unrepresentable(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.define
class _State:
    quality: Quality | None = None
    label: str | None = None

    def flag(self, quality: Quality) -> None:
        if self.quality is None:
            self.quality = quality


def convert(
    data: Data,
    *,
    context: ValueContext = ValueContext.PLAIN,
    scaler: int | None = None,
    enum_names: dict[int, str] | None = None,
) -> Converted:
    """Convert ``data`` by the contract in the module docstring; never raises.

    ``scaler`` (a register's) is applied to a numeric top-level value; ``enum_names`` names the
    values of a top-level enum.
    """
    state = _State()
    try:
        value = _convert(data, context, scaler, enum_names, state, top=True)
    except _Unrepresentable as exc:
        return Converted(error_code=exc.code, error=exc.message)
    except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:
        # A Data value built by hand (not decoded) that does not fit its type.
        return Converted(
            error_code="value.unrepresentable",
            error=f"{type_name(data)} value cannot be represented: {exc}",
        )
    return Converted(value, state.quality, state.label)


def convert_integer(data: Data, scaler: int | None) -> int | float | None:
    """The shortcut of :func:`convert` for the commonest register value, an integer with a
    scaler: the same value, or None when ``data`` is anything else (use :func:`convert`).

    An integer's conversion has no quality flag, no label and no error, so the value is all
    there is to it."""
    v = data.value
    if data.type not in _INT_TYPES or type(v) is not int:
        return None
    if scaler is None or scaler == 0:
        return v
    return _scale(v, scaler)


def _convert(
    data: Data,
    context: ValueContext,
    scaler: int | None,
    enum_names: dict[int, str] | None,
    state: _State,
    *,
    top: bool = False,
) -> JsonValue:
    t = data.type
    v = data.value
    if t in (DataType.NULL_DATA, DataType.DONT_CARE):
        return None
    if t is DataType.BOOLEAN:
        return bool(v)
    if t in _INT_TYPES:
        assert isinstance(v, int)
        if top and scaler is not None and scaler != 0:
            return _finite(_scale(v, scaler), state)
        return v
    if t is DataType.ENUM:
        assert isinstance(v, int)
        if top and enum_names is not None:
            state.label = enum_names.get(v)
        return v
    if t is DataType.BCD:
        assert isinstance(v, int)
        high, low = v >> 4, v & 0x0F
        if high > 9 or low > 9:
            state.flag(Quality.INVALID_BCD)
            return None
        return high * 10 + low
    if t in _FLOAT_TYPES:
        assert isinstance(v, float | int)
        number = float(v)
        if t is DataType.FLOAT32 and math.isfinite(number):
            number = float32_shortest(number)
        if top and scaler is not None and scaler != 0 and math.isfinite(number):
            number = float(_scale(number, scaler))
        return _finite(number, state)
    if t in (DataType.VISIBLE_STRING, DataType.UTF8_STRING):
        assert isinstance(v, str)
        return v
    if t is DataType.OCTET_STRING:
        assert isinstance(v, bytes | bytearray)
        raw = bytes(v)
        if context is ValueContext.DATE_TIME and len(raw) == 12:
            try:
                parsed = CosemDateTime.from_bytes(raw)
            except DecodeError:
                return raw.hex()
            return _date_time(parsed, state, top)
        return _octets(raw)
    if t is DataType.DATE_TIME:
        assert isinstance(v, CosemDateTime)
        return _date_time(v, state, top)
    if t is DataType.DATE:
        assert isinstance(v, CosemDate)
        try:
            return v.to_date().isoformat()
        except DecodeError:
            return str(v)
    if t is DataType.TIME:
        assert isinstance(v, CosemTime)
        try:
            return v.to_time().isoformat()
        except DecodeError:
            return str(v)
    if t is DataType.BIT_STRING:
        assert isinstance(v, BitString)
        return str(v)
    if t in (DataType.ARRAY, DataType.STRUCTURE):
        assert isinstance(v, tuple)
        return [_convert(item, context, None, None, state) for item in v]
    if t is DataType.COMPACT_ARRAY:
        assert isinstance(v, CompactArray)
        return [_convert(item, context, None, None, state) for item in v.elements]
    raise _Unrepresentable("value.unknown_type", f"A-XDR type {t!r} has no JSON form")


def _scale(raw: int | float, scaler: int) -> int | float:
    if isinstance(raw, int):
        if scaler >= 0:
            result: int = raw * 10**scaler
            return result
        # int / int is correctly rounded in CPython: the float nearest to the exact quotient,
        # which is what rounding the exact Decimal gives, at a fraction of its cost.
        divisor: int = 10**-scaler
        return raw / divisor
    return float(Decimal(repr(raw)).scaleb(scaler))


def _finite(number: int | float, state: _State) -> int | float | None:
    if isinstance(number, int) or math.isfinite(number):
        return number
    if math.isnan(number):
        state.flag(Quality.NAN)
    else:
        state.flag(Quality.POS_INF if number > 0 else Quality.NEG_INF)
    return None


def _octets(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.hex()
    if text and text.isprintable():
        return text
    # NUL padding after a name is common: "ABC\0\0\0" reads as "ABC".
    stripped = text.rstrip("\0")
    if stripped and stripped.isprintable():
        return stripped
    return raw.hex()


def _date_time(value: CosemDateTime, state: _State, top: bool) -> str:
    status = value.clock_status
    if status is not None:
        if ClockStatus.INVALID in status:
            state.flag(Quality.CLOCK_INVALID)
        elif ClockStatus.DOUBTFUL in status:
            state.flag(Quality.CLOCK_DOUBTFUL)
        if top:
            names = [name for flag, name in _STATUS_NAMES if flag in status]
            state.label = ",".join(names) if names else "ok"
    try:
        if value.deviation is None:
            return value.to_naive_datetime().isoformat()
        return value.to_datetime().isoformat()
    except DecodeError:
        return str(value)
