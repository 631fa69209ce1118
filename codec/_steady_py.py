"""The steady-state reply decoded straight to register readings, pure-Python implementation.

The readable reference of :mod:`codec._steady_c` (same API, same results); the public API and
its contract are documented in :mod:`codec.steady`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from decimal import Decimal

from codec._steady_shared import (
    CONVERT,
    LLC_HEADERS,
    SCALER_ERROR,
    RegisterPlan,
    build_plan,
    convert_general,
    json_layout,
)
from codec.apdu import DataAccessResult
from codec.axdr import Data, DataType
from codec.client import RegisterReading, RegisterSpec
from codec.values import JsonValue, Quality, float32_shortest

__all__ = ["SteadyDecoder", "SteadyReading"]

_BytesLike = bytes | bytearray | memoryview

#: Integer tags (no quality, no label; the scaler applies) and their layout.
_INTEGERS: dict[int, struct.Struct] = {
    int(t): struct.Struct(fmt)
    for t, fmt in (
        (DataType.DOUBLE_LONG, ">i"),
        (DataType.DOUBLE_LONG_UNSIGNED, ">I"),
        (DataType.INTEGER, ">b"),
        (DataType.LONG, ">h"),
        (DataType.UNSIGNED, ">B"),
        (DataType.LONG_UNSIGNED, ">H"),
        (DataType.LONG64, ">q"),
        (DataType.LONG64_UNSIGNED, ">Q"),
    )
}
_FLOAT32 = int(DataType.FLOAT32)
_FLOATS: dict[int, struct.Struct] = {
    _FLOAT32: struct.Struct(">f"),
    int(DataType.FLOAT64): struct.Struct(">d"),
}
_NULL = int(DataType.NULL_DATA)
_BOOLEAN = int(DataType.BOOLEAN)
_ENUM = int(DataType.ENUM)
_BCD = int(DataType.BCD)
_ONE_BYTE = frozenset((_BOOLEAN, _ENUM, _BCD))
_NAN = Quality.NAN.value
_POS_INF = Quality.POS_INF.value
_NEG_INF = Quality.NEG_INF.value
_INVALID_BCD = Quality.INVALID_BCD.value
_OCTET_STRING = int(DataType.OCTET_STRING)
_VISIBLE_STRING = int(DataType.VISIBLE_STRING)
#: Data-Access-Result code -> its label (every code the general decoder accepts).
_ACCESS_LABELS: dict[int, str] = {int(r): r.label for r in DataAccessResult}
_SCALER_ERROR_CODE = "register.scaler_unit"


def _values_json(
    values: dict[str, JsonValue],
    keys: tuple[str, ...],
    layout: tuple[tuple[int, ...], tuple[bytes, ...]],
) -> bytes | None:
    """The values as compact JSON with sorted keys, when each is an int or a finite float."""
    parts = []
    for i, prefix in zip(*layout, strict=True):
        value = values[keys[i]]
        if type(value) is int:
            parts.append(prefix + b"%d" % value)
        elif type(value) is float and math.isfinite(value):
            parts.append(prefix + repr(value).encode())
        else:
            return None  # a bool, a text, None, a list, a NaN or an infinity
    return b"".join(parts) + b"}" if parts else b"{}"


class SteadyReading:
    """One steady reply as the poller records it (the contract is in :mod:`codec.steady`).

    Per telemetry key (:attr:`RegisterSpec.name`), in the registers' order:

    - ``values``: each register read with a value: a JSON-safe value (``None`` for null-data,
      and for a NaN, an infinity or an invalid bcd, which then have a ``quality`` flag);
    - ``quality``: the flag of a value that is not entirely the meter's number (``"nan"``,
      ``"+inf"``, ``"-inf"``, ``"invalid-bcd"``, ``"clock-invalid"``, ``"clock-doubtful"``);
    - ``labels``: an enum value's name, or a date-time's clock status;
    - ``errors``: ``(code, message)`` of each register without a value
      (``("data-access.object-undefined", "object-undefined")``, ...);
    - ``values_json``: when there is no quality flag and no error and every value is an
      ``int`` or a finite ``float``, the values as the stored form of a reading writes them
      (``json.dumps(values, separators=(",", ":"), sort_keys=True, ensure_ascii=False)`` in
      UTF-8); None otherwise.

    ``invoke`` is the reply's Invoke-Id-And-Priority byte (the invoke-id is its low 4 bits).
    """

    __slots__ = ("errors", "invoke", "labels", "quality", "values", "values_json")

    def __init__(
        self,
        invoke: int,
        values: dict[str, JsonValue],
        quality: dict[str, str],
        errors: dict[str, tuple[str, str]],
        labels: dict[str, str],
        values_json: bytes | None = None,
    ) -> None:
        self.invoke = invoke
        self.values = values
        self.quality = quality
        self.errors = errors
        self.labels = labels
        self.values_json = values_json

    def as_tuple(
        self,
    ) -> tuple[
        int,
        dict[str, JsonValue],
        dict[str, str],
        dict[str, tuple[str, str]],
        dict[str, str],
        bytes | None,
    ]:
        """All fields, for comparisons across implementations."""
        return (
            self.invoke, self.values, self.quality, self.errors, self.labels, self.values_json
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SteadyReading):
            return NotImplemented
        return self.as_tuple() == other.as_tuple()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"SteadyReading(invoke={self.invoke}, values={self.values!r}, "
            f"quality={self.quality!r}, errors={self.errors!r}, labels={self.labels!r})"
        )


class SteadyDecoder:
    """The steady reply to one request for ``specs``, decoded straight to a
    :class:`SteadyReading` (the contract is in :mod:`codec.steady`).

    ``readings`` are the general path's readings of ``specs`` in this association (those of
    the first read, or of any later one), one per register, in order: they hold the scalers and
    units. :class:`ValueError` when they do not match ``specs``.

    Attributes: ``specs``; ``keys``, the telemetry key of each register; ``units``, the unit
    symbol (or None) by key.
    """

    def __init__(self, specs: Sequence[RegisterSpec], readings: Sequence[RegisterReading]) -> None:
        self._plans: tuple[RegisterPlan, ...] = build_plan(specs, readings)
        self.specs: tuple[RegisterSpec, ...] = tuple(specs)
        self.keys: tuple[str, ...] = tuple(p.key for p in self._plans)
        self.units: dict[str, str | None] = {p.key: p.unit for p in self._plans}
        self._json = json_layout(self.keys)

    def decode_info(self, info: _BytesLike, invoke_id: int = -1) -> SteadyReading | None:
        """:meth:`decode` of an HDLC information field: the LLC header is skipped as the link
        skips it (``E6 E7 xx`` or ``E6 E6 xx``; without one the field is the APDU)."""
        start = 3 if len(info) >= 3 and bytes(info[:2]) in LLC_HEADERS else 0
        return self.decode(info, start, invoke_id)

    def decode(self, buf: _BytesLike, start: int = 0, invoke_id: int = -1) -> SteadyReading | None:
        """The reading of the GET.response in ``buf[start:]`` (an APDU that ends at the end of
        ``buf``), or None when it is not the expected steady reply (then use the general path).

        ``invoke_id`` (0 to 15), when given, must be the reply's invoke-id."""
        end = len(buf)
        plans = self._plans
        if start < 0 or end - start < 4 or buf[start] != 0xC4:
            return None
        invoke = buf[start + 2]
        if invoke_id >= 0 and invoke & 0x0F != invoke_id:
            return None
        if len(plans) == 1:
            if buf[start + 1] != 1:  # get-response-normal answers a lone register
                return None
            pos = start + 3
        else:
            if buf[start + 1] != 3 or buf[start + 3] != len(plans):
                return None
            pos = start + 4
        values: dict[str, JsonValue] = {}
        quality: dict[str, str] = {}
        errors: dict[str, tuple[str, str]] = {}
        labels: dict[str, str] = {}
        for plan in plans:
            if pos + 2 > end:
                return None
            key = plan.key
            if buf[pos] == 1:  # a data-access-result
                label = _ACCESS_LABELS.get(buf[pos + 1])
                if label is None:
                    return None
                errors[key] = (f"data-access.{label}", label)
                pos += 2
                continue
            if buf[pos] != 0:
                return None
            tag = buf[pos + 1]
            pos += 2
            integer = _INTEGERS.get(tag)
            real = _FLOATS.get(tag)
            if integer is not None or real is not None:
                fmt = integer if integer is not None else real
                assert fmt is not None
                after = pos + fmt.size
                if after > end:
                    return None
                number = fmt.unpack_from(buf, pos)[0]
            elif tag in _ONE_BYTE:
                after = pos + 1
                if after > end:
                    return None
                number = buf[pos]
            elif tag in (_OCTET_STRING, _VISIBLE_STRING):
                if pos >= end or buf[pos] >= 0x80:  # a long-form length: the general path's
                    return None
                after = pos + 1 + buf[pos]
                if after > end:
                    return None
                raw = bytes(buf[pos + 1 : after])
            elif tag == _NULL:
                after = pos
            else:
                return None
            pos = after
            if plan.mode != CONVERT:
                if plan.mode != SCALER_ERROR:
                    return None  # a value whose scaler is unknown here
                errors[key] = (_SCALER_ERROR_CODE, plan.message)
                continue
            # The conversion of codec.values (DlmsClient._convert), by type.
            scaler = plan.scaler
            if integer is not None:
                if not scaler:
                    values[key] = number
                elif scaler > 0:
                    values[key] = number * 10**scaler
                else:
                    values[key] = number / 10**-scaler
            elif real is not None:
                if tag == _FLOAT32 and math.isfinite(number):
                    number = float32_shortest(number)
                if scaler and math.isfinite(number):
                    number = float(Decimal(repr(number)).scaleb(scaler))
                if math.isfinite(number):
                    values[key] = number
                else:
                    values[key] = None
                    quality[key] = (
                        _NAN if math.isnan(number) else _POS_INF if number > 0 else _NEG_INF
                    )
            elif tag == _ENUM:
                values[key] = number
                names = plan.enum_names
                if names is not None and number in names:
                    labels[key] = names[number]
            elif tag == _BCD:
                if number >> 4 > 9 or number & 0x0F > 9:
                    values[key] = None
                    quality[key] = _INVALID_BCD
                else:
                    values[key] = (number >> 4) * 10 + (number & 0x0F)
            elif tag == _BOOLEAN:
                values[key] = number != 0
            elif tag == _NULL:
                values[key] = None
            elif tag == _VISIBLE_STRING:
                values[key] = raw.decode("latin-1")
            else:
                value, flag, label, error = convert_general(Data(DataType.OCTET_STRING, raw), plan)
                if error is not None:
                    errors[key] = error
                    continue
                values[key] = value
                if flag is not None:
                    quality[key] = flag
                if label is not None:
                    labels[key] = label
        if pos != end:
            return None
        values_json = None
        if self._json is not None and not quality and not errors:
            values_json = _values_json(values, self.keys, self._json)
        return SteadyReading(invoke, values, quality, errors, labels, values_json)
