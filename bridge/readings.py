"""Readings: one poll cycle of one meter, and their JSON form.

A `Reading` is what a poller hands to the outbox and what the publisher delivers: the meter's
name, the wall-clock time the values were taken (milliseconds since the Unix epoch) and the
telemetry key -> scaled value map. The JSON form is compact and has a stable key order, so the
same reading always serialises to the same bytes (the outbox stores exactly these bytes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

import attrs

__all__ = ["Reading", "Value", "decode_reading", "encode_reading"]

#: A telemetry value as ThingsBoard accepts it.
Value: TypeAlias = int | float | str | bool | None

_VALUE_TYPES = (int, float, str, bool, type(None))


def _freeze_values(values: Mapping[str, Value]) -> Mapping[str, Value]:
    # A read-only copy: the caller's dict may be reused for the next poll cycle.
    return MappingProxyType(dict(values))


def _check_meter(_inst: object, _attr: attrs.Attribute[str], meter: object) -> None:
    if not isinstance(meter, str) or not meter:
        raise ValueError(f"reading: meter must be a non-empty string, got {meter!r}")


def _check_ts(_inst: object, _attr: attrs.Attribute[int], ts_ms: object) -> None:
    if not isinstance(ts_ms, int) or isinstance(ts_ms, bool) or ts_ms < 0:
        raise ValueError(
            f"reading: ts_ms must be a non-negative int (ms since epoch), got {ts_ms!r}"
        )


def _check_values(inst: Any, _attr: attrs.Attribute[Any], values: Mapping[str, Value]) -> None:
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"reading of meter {inst.meter!r}: key {key!r} is not a non-empty string"
            )
        if not isinstance(value, _VALUE_TYPES):
            raise ValueError(
                f"reading of meter {inst.meter!r}: value of {key!r} has unsupported type "
                f"{type(value).__name__} (expected int, float, str, bool or None)"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(
                f"reading of meter {inst.meter!r}: value of {key!r} is {value!r}, "
                "which JSON cannot carry"
            )


@attrs.frozen
class Reading:
    """One poll cycle of one meter: telemetry key -> scaled value, stamped when taken."""

    meter: str = attrs.field(validator=_check_meter)
    ts_ms: int = attrs.field(validator=_check_ts)
    # Left out of the hash (a mapping is not hashable); equality still compares it.
    values: Mapping[str, Value] = attrs.field(
        converter=_freeze_values, validator=_check_values, hash=False
    )

    def to_json(self) -> bytes:
        """The compact JSON form, ``{"meter":..,"ts":..,"values":{..}}`` with sorted keys."""
        return encode_reading(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Reading:
        """Parse the form written by `to_json`; `ValueError` names what is wrong."""
        return decode_reading(data)

    def values_json(self) -> str:
        """The ``values`` object alone, in the same compact, sorted form."""
        return dumps_compact(dict(self.values))


def dumps_compact(obj: object) -> str:
    """JSON without spaces, keys sorted, non-ASCII kept, NaN refused."""
    return json.dumps(
        obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    )


def encode_reading(reading: Reading) -> bytes:
    """Serialise a reading to compact UTF-8 JSON with a stable key order."""
    obj = {"meter": reading.meter, "ts": reading.ts_ms, "values": dict(reading.values)}
    return dumps_compact(obj).encode("utf-8")


def decode_reading(data: bytes | str) -> Reading:
    """Parse a reading serialised by `encode_reading`."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"reading JSON is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"reading JSON must be an object, got {type(obj).__name__}")
    missing = {"meter", "ts", "values"} - obj.keys()
    if missing:
        raise ValueError(f"reading JSON lacks {', '.join(sorted(missing))}")
    extra = obj.keys() - {"meter", "ts", "values"}
    if extra:
        raise ValueError(f"reading JSON has unexpected keys {', '.join(sorted(extra))}")
    if not isinstance(obj["values"], dict):
        raise ValueError("reading JSON: values must be an object")
    return Reading(meter=obj["meter"], ts_ms=obj["ts"], values=obj["values"])
