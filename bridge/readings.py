"""Readings: one poll cycle of one meter, and their JSON form.

A `Reading` is what a poller hands to the outbox and what the publisher delivers: the meter's
name, the wall-clock time the values were taken (milliseconds since the Unix epoch) and the
telemetry key -> value map. Values follow the codec's value contract (:mod:`codec.values`):
numbers, text, booleans, null and (for structures and arrays) lists of those, never NaN or
Infinity. A value that is null because the meter sent NaN or an infinite float has its reason in
``quality``; a register that could not be read or represented is in ``errors`` (key -> error
code and message) instead of ``values``, so the other registers of the cycle are still delivered.

The JSON form is compact and has a stable key order, so the same reading always serialises to
the same bytes (the outbox stores exactly these bytes); ``quality`` and ``errors`` appear only
when not empty, so a plain reading is ``{"meter":..,"ts":..,"values":{..}}``.
"""

from __future__ import annotations

import functools
import json
import json.scanner
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeAlias, cast

import attrs

from codec.values import JsonValue

__all__ = ["Reading", "RegisterError", "Value", "check_value", "decode_reading", "encode_reading"]

#: A telemetry value: the codec's JSON-safe value (lists for structures and arrays).
Value: TypeAlias = JsonValue

#: The empty quality, errors and attributes of readings (read-only: one shared instead of a
#: dict and a proxy each, for nearly every reading).
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_SCALARS = (int, float, str, bool, type(None))
#: Deepest nesting of lists in a value (the A-XDR decoder's own limit is 16).
MAX_VALUE_DEPTH = 32


@attrs.frozen
class RegisterError:
    """Why a register of a reading has no value: a machine-readable code and a message."""

    code: str
    message: str

    def to_json(self) -> dict[str, str]:
        """``{"code": .., "message": ..}``."""
        return {"code": self.code, "message": self.message}


def check_value(value: object, depth: int = 0) -> str | None:
    """Why ``value`` is not a :data:`Value` strict JSON can carry, or None when it is."""
    if isinstance(value, list):
        if depth >= MAX_VALUE_DEPTH:
            return f"lists nested deeper than {MAX_VALUE_DEPTH}"
        for item in value:
            problem = check_value(item, depth + 1)
            if problem is not None:
                return problem
        return None
    if not isinstance(value, _SCALARS):
        return (
            f"unsupported type {type(value).__name__} (expected int, float, str, bool, None "
            "or a list of those)"
        )
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r}, which JSON cannot carry"
    return None


def _freeze(values: Mapping[str, Any]) -> Mapping[str, Any]:
    # A read-only copy: the caller's dict may be reused for the next poll cycle.
    return MappingProxyType(dict(values))


def _freeze_errors(errors: Mapping[str, RegisterError | Mapping[str, str]]) -> Mapping[str, Any]:
    out: dict[str, RegisterError] = {}
    for key, error in errors.items():
        if isinstance(error, RegisterError):
            out[key] = error
        elif isinstance(error, Mapping):
            out[key] = RegisterError(str(error.get("code", "")), str(error.get("message", "")))
        else:
            raise ValueError(f"reading: error of {key!r} must be a code and a message")
    return MappingProxyType(out)


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
        problem = check_value(value)
        if problem is not None:
            raise ValueError(f"reading of meter {inst.meter!r}: value of {key!r}: {problem}")


def _check_quality(inst: Any, _attr: attrs.Attribute[Any], quality: Mapping[str, str]) -> None:
    for key, flag in quality.items():
        if key not in inst.values or not isinstance(flag, str):
            raise ValueError(
                f"reading of meter {inst.meter!r}: quality {flag!r} of {key!r} names no value"
            )


def _check_attributes(inst: Any, _attr: attrs.Attribute[Any], values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        problem = check_value(value) if isinstance(key, str) and key else "empty key"
        if problem is not None:
            raise ValueError(f"reading of meter {inst.meter!r}: attribute {key!r}: {problem}")


def _check_errors(inst: Any, _attr: attrs.Attribute[Any], errors: Mapping[str, Any]) -> None:
    for key in errors:
        if not isinstance(key, str) or not key or key in inst.values:
            raise ValueError(
                f"reading of meter {inst.meter!r}: error key {key!r} is empty or also has a value"
            )


@attrs.frozen
class Reading:
    """One poll cycle of one meter: telemetry key -> value, stamped when taken.

    ``quality`` flags values that are not the meter's plain number (``"nan"``: null because the
    meter sent NaN); ``errors`` holds the registers without a value.
    """

    meter: str = attrs.field(validator=_check_meter)
    ts_ms: int = attrs.field(validator=_check_ts)
    # Left out of the hash (a mapping is not hashable); equality still compares it.
    values: Mapping[str, Value] = attrs.field(
        converter=_freeze, validator=_check_values, hash=False
    )
    quality: Mapping[str, str] = attrs.field(
        factory=dict, converter=_freeze, validator=_check_quality, hash=False, kw_only=True
    )
    errors: Mapping[str, RegisterError] = attrs.field(
        factory=dict, converter=_freeze_errors, validator=_check_errors, hash=False, kw_only=True
    )
    #: Values of the meter's configured ``attributes`` (published as device attributes).
    attributes: Mapping[str, Value] = attrs.field(
        factory=dict, converter=_freeze, validator=_check_attributes, hash=False, kw_only=True
    )

    #: The serialised form, made once (the outbox sizes it, then stores it).
    _json: bytes | None = attrs.field(default=None, init=False, eq=False, hash=False, repr=False)
    #: Where ``"ts":`` starts in ``_json`` of a plain reading, 0 for any other, -1 not known
    #: yet (see `_plain_ts_at`).
    _plain_at: int = attrs.field(default=-1, init=False, eq=False, hash=False, repr=False)

    def to_json(self) -> bytes:
        """The compact JSON form, ``{"meter":..,"ts":..,"values":{..}}`` with sorted keys."""
        encoded = self._json
        if encoded is None:
            encoded = encode_reading(self)
            object.__setattr__(self, "_json", encoded)
        return encoded

    @classmethod
    def taken(
        cls,
        meter: str,
        ts_ms: int,
        values: dict[str, Value],
        *,
        quality: dict[str, str],
        errors: dict[str, RegisterError],
        attributes: dict[str, Value],
        values_json: bytes | None = None,
    ) -> Reading:
        """The reading a poller built from values it has checked already (:func:`check_value`
        on each, keys from the config): the mappings are frozen as the constructor does, the
        validators are not run a second time. Anything else uses the constructor.

        ``values_json``, given for a reading with no quality, error or attribute, is
        ``values`` as the stored form writes them (compact, keys sorted: what
        :class:`codec.steady.SteadyReading` gives): the stored form is made from it at once."""
        self = object.__new__(cls)
        # Each slot set once, by its own descriptor (see _SLOT_SETTERS).
        set_meter, set_ts, set_values, set_quality, set_errors, set_attributes, set_json, set_at = (
            _SLOT_SETTERS
        )
        set_meter(self, meter)
        set_ts(self, ts_ms)
        set_values(self, MappingProxyType(values))
        set_quality(self, MappingProxyType(quality) if quality else _EMPTY)
        set_errors(self, MappingProxyType(errors) if errors else _EMPTY)
        set_attributes(self, MappingProxyType(attributes) if attributes else _EMPTY)
        if values_json is not None and not (quality or errors or attributes):
            name = json_string(meter)
            set_json(self, b'{"meter":%b,"ts":%d,"values":%b}' % (name, ts_ms, values_json))
            # Plain unless a value is null (the decoder's values_json has none).
            set_at(self, 0 if None in values.values() else 10 + len(name))
        else:
            set_json(self, None)
            set_at(self, -1)
        return self

    @classmethod
    def from_json(cls, data: bytes | str) -> Reading:
        """Parse the form written by `to_json`; `ValueError` names what is wrong."""
        return decode_reading(data)

    def values_json(self) -> str:
        """The telemetry object (:meth:`telemetry`) in the same compact, sorted form."""
        return self.values_json_bytes().decode("utf-8")

    def values_json_bytes(self) -> bytes:
        """`values_json` as UTF-8 bytes (what a message carries)."""
        encoded, at = self._json, self._plain_ts_at()
        if encoded is not None and at:
            # Its telemetry is its "values" object, the last key of the stored form, taken as
            # it stands there (no second encoding).
            head = b'"ts":%d,"values":' % self.ts_ms
            if encoded.startswith(head, at):
                return encoded[at + len(head) : -1]
        return dumps_compact(self.telemetry()).encode("utf-8")

    def telemetry_entry(self) -> bytes:
        """``{"ts":..,"values":{..}}``: the reading in a ThingsBoard telemetry message (``ts``
        first, as documented; ``values`` is `values_json_bytes`)."""
        encoded, at = self._json, self._plain_ts_at()
        if encoded is not None and at:
            return b"{" + encoded[at:]  # the stored form without ``{"meter":..,``
        return b'{"ts":%d,"values":%b}' % (self.ts_ms, self.values_json_bytes())

    def _plain_ts_at(self) -> int:
        """Where ``"ts":`` starts in the stored form, made already, of a plain reading (no
        quality, error, attribute or null value: the form holds meter, ts and values, in that
        order, and its values are the telemetry); 0 for any other reading."""
        known = self._plain_at
        if known >= 0:
            return known
        encoded = self._json
        if encoded is None:
            return 0  # not made yet: not known either
        at = self._find_plain_ts(encoded)
        object.__setattr__(self, "_plain_at", at)
        return at

    def _find_plain_ts(self, encoded: bytes) -> int:
        if self.quality or self.errors or self.attributes or None in self.values.values():
            return 0
        meter = json_string(self.meter)
        at = 10 + len(meter)  # after '{"meter":' and the name's JSON and ','
        if (
            encoded.startswith(meter, 9)
            and encoded.startswith(b',"ts":', at - 1)
            and encoded.endswith(b"}}")
        ):
            return at
        return 0

    def attributes_json(self) -> dict[str, Value]:
        """The attributes as ThingsBoard takes them (no null values)."""
        return {k: v for k, v in self.attributes.items() if v is not None}

    def datapoints(self) -> int:
        """How many values `telemetry` holds (what ThingsBoard counts as data points)."""
        if not self.quality and not self.errors and None not in self.values.values():
            return len(self.values)
        return len(self.telemetry())

    def telemetry(self) -> dict[str, Value]:
        """The values as ThingsBoard telemetry, which takes no JSON null: a null value is left
        out; its quality flag goes under ``<key>_quality`` and each register error under
        ``<key>_error`` (``"<code>: <message>"``), so the cause is visible next to the data."""
        out: dict[str, Value] = {k: v for k, v in self.values.items() if v is not None}
        for key, flag in self.quality.items():
            out[f"{key}_quality"] = flag
        for key, error in self.errors.items():
            out[f"{key}_error"] = f"{error.code}: {error.message}"
        return out


#: The setters of Reading's slots, in the order Reading.taken sets them: the frozen class's
#: ``__setattr__`` refuses, and ``object.__setattr__`` looks each descriptor up by name again
#: (a steady reading is made in ~2.2 us this way against ~3.8).
_SLOT_SETTERS: tuple[Callable[[Reading, Any], None], ...] = tuple(
    Reading.__dict__[name].__set__
    for name in (
        "meter",
        "ts_ms",
        "values",
        "quality",
        "errors",
        "attributes",
        "_json",
        "_plain_at",
    )
)


@functools.lru_cache(maxsize=65536)
def json_string(text: str) -> bytes:
    """``text`` as a JSON string in UTF-8, as `dumps_compact` writes it (made once per text:
    meter names recur in every reading and message)."""
    return json.dumps(text, ensure_ascii=False).encode("utf-8")


def dumps_compact(obj: object) -> str:
    """JSON without spaces, keys sorted, non-ASCII kept, NaN refused."""
    return json.dumps(
        obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    )


#: A plain reading's value keys in their order -> (the keys sorted, the format of the stored
#: form: ``%b`` for the meter's JSON string, ``%d`` for its time, ``%r`` for each value).
_LAYOUTS: dict[tuple[str, ...], tuple[tuple[str, ...], bytes]] = {}
#: Key sets kept at most (each a few dozen bytes); then started afresh.
_LAYOUTS_MAX = 4096


def _layout(keys: tuple[str, ...]) -> tuple[tuple[str, ...], bytes]:
    if len(_LAYOUTS) >= _LAYOUTS_MAX:
        _LAYOUTS.clear()
    order = tuple(sorted(keys))
    fields = ",".join(f"{dumps_compact(k).replace('%', '%%')}:%r" for k in order)
    form = f'{{"meter":%b,"ts":%d,"values":{{{fields}}}}}'.encode()
    layout = _LAYOUTS[keys] = (order, form)
    return layout


def _encode_numbers(reading: Reading) -> bytes | None:
    """`encode_reading` of a reading of numbers only (every value an ``int`` or a finite
    ``float``; no quality, error or attribute): one format per key set (``%r`` of an int or a
    float is its JSON), without building the JSON object; None for anything else."""
    values = reading.values
    keys = tuple(values)
    layout = _LAYOUTS.get(keys)
    if layout is None:
        layout = _layout(keys)
    order, form = layout
    numbers = [values[key] for key in order]
    for value in numbers:
        kind = type(value)
        if kind is float:
            if value - value != 0.0:  # type: ignore[operator]  # NaN or infinite: refused
                return None
        elif kind is not int:
            return None
    return form % (json_string(reading.meter), reading.ts_ms, *numbers)


def encode_reading(reading: Reading) -> bytes:
    """Serialise a reading to compact UTF-8 JSON with a stable key order."""
    if not (reading.quality or reading.errors or reading.attributes):
        encoded = _encode_numbers(reading)
        if encoded is not None:
            return encoded
    return _encode_general(reading)


def _encode_general(reading: Reading) -> bytes:
    obj: dict[str, object] = {
        "meter": reading.meter,
        "ts": reading.ts_ms,
        "values": dict(reading.values),
    }
    if reading.quality:
        obj["quality"] = dict(reading.quality)
    if reading.errors:
        obj["errors"] = {k: e.to_json() for k, e in reading.errors.items()}
    if reading.attributes:
        obj["attributes"] = dict(reading.attributes)
    return dumps_compact(obj).encode("utf-8")


_PLAIN_KEYS = frozenset(("meter", "ts", "values"))
_PLAIN_TYPES = frozenset((int, str, bool, type(None)))
#: The JSON module's scanner (its C one where built): one value from a position of a text.
_scan_once = json.scanner.make_scanner(cast(Any, json.JSONDecoder()))


def _plain_reading(obj: dict[str, Any]) -> Reading | None:
    """The reading of a plain serialised form (meter, ts and scalar values only - what nearly
    every poll stores) when it passes the same checks as the constructor's; None for anything
    else, which the constructor then checks and reports."""
    if obj.keys() != _PLAIN_KEYS:
        return None
    meter, ts_ms, values = obj["meter"], obj["ts"], obj["values"]
    if type(meter) is not str or not meter or type(ts_ms) is not int or ts_ms < 0:
        return None
    if type(values) is not dict or "" in values:
        return None
    for value in values.values():
        # JSON object keys are strings; a float may be NaN or infinite (json takes those).
        kind = type(value)
        if kind not in _PLAIN_TYPES and (kind is not float or value - value != 0.0):
            return None
    return Reading.taken(meter, ts_ms, values, quality={}, errors={}, attributes={})


def decode_reading(data: bytes | str) -> Reading:
    """Parse a reading serialised by `encode_reading`."""
    if type(data) is bytes:
        # The stored form (the outbox's rows, a worker's lines): UTF-8, one JSON object and
        # nothing around it. Scanned at once; anything else (whitespace, another encoding, a
        # form that is not plain, bad JSON) takes the full path below, which says what is wrong.
        try:
            text = data.decode("utf-8")
            obj, end = _scan_once(text, 0)
        except (UnicodeDecodeError, StopIteration, ValueError, RecursionError):
            pass
        else:
            if type(obj) is dict and end == len(text):
                plain = _plain_reading(obj)
                if plain is not None:
                    object.__setattr__(plain, "_json", data)
                    return plain
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"reading JSON is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ValueError("reading JSON is nested too deeply") from None
    if type(obj) is dict:
        plain = _plain_reading(obj)
        if plain is not None:
            if isinstance(data, bytes):
                object.__setattr__(plain, "_json", data)
            return plain
    if not isinstance(obj, dict):
        raise ValueError(f"reading JSON must be an object, got {type(obj).__name__}")
    missing = {"meter", "ts", "values"} - obj.keys()
    if missing:
        raise ValueError(f"reading JSON lacks {', '.join(sorted(missing))}")
    extra = obj.keys() - {"meter", "ts", "values", "quality", "errors", "attributes"}
    if extra:
        raise ValueError(f"reading JSON has unexpected keys {', '.join(sorted(extra))}")
    for name in ("values", "quality", "errors", "attributes"):
        if not isinstance(obj.get(name, {}), dict):
            raise ValueError(f"reading JSON: {name} must be an object")
    errors = obj.get("errors", {})
    for key, error in errors.items():
        if not isinstance(error, dict):
            raise ValueError(f"reading JSON: error of {key!r} must be an object")
    reading = Reading(
        meter=obj["meter"],
        ts_ms=obj["ts"],
        values=obj["values"],
        quality=obj.get("quality", {}),
        errors=errors,
        attributes=obj.get("attributes", {}),
    )
    if isinstance(data, bytes):
        # What encode_reading wrote (the outbox, a worker's line): kept as the reading's
        # serialised form rather than made again.
        object.__setattr__(reading, "_json", data)
    return reading
