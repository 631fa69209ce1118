"""What both steady-reply decoders share (the twin and the extension): the per-register plan
built from the first general read, and the general conversion used for the rare value types.

The conversion of a register's value is the one :meth:`codec.client.DlmsClient._convert` does
with the scaler, unit, value context and enum names known after the first read of an
association; :func:`build_plan` recovers them from that read's :class:`RegisterReading` results.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TypeAlias

import attrs

from codec import values
from codec.axdr import Data
from codec.client import RegisterReading, RegisterSpec
from codec.values import JsonValue

__all__ = [
    "CONVERT",
    "LLC_HEADERS",
    "SCALER_ERROR",
    "UNKNOWN",
    "Converted",
    "RegisterPlan",
    "build_plan",
    "convert_general",
    "json_layout",
]

#: The register's scaler (or its absence) is known: its value is converted.
CONVERT = 0
#: Its scaler_unit could not be read: any value is the error ``register.scaler_unit``.
SCALER_ERROR = 1
#: Its first read failed, so its scaler is unknown: only a data-access-result is decoded here;
#: a value goes to the general path (which knows the scaler by then).
UNKNOWN = 2

#: First two bytes of an HDLC information field's LLC header (a response; some meters echo the
#: request's): the third byte is skipped whatever it is, as the link does.
LLC_HEADERS = (b"\xe6\xe7", b"\xe6\xe6")

#: One register's converted result: (value, quality flag, label, (error code, message) or None).
Converted: TypeAlias = tuple[JsonValue, str | None, str | None, tuple[str, str] | None]


@attrs.frozen(eq=False)
class RegisterPlan:
    """How one register's result in the steady reply is turned into its reading."""

    #: The telemetry key (:attr:`RegisterSpec.name`).
    key: str
    #: :data:`CONVERT`, :data:`SCALER_ERROR` or :data:`UNKNOWN`.
    mode: int
    #: The scaler applied to a numeric value (None: none applies).
    scaler: int | None
    #: The names of an enum's values, when the COSEM class defines them.
    enum_names: dict[int, str] | None
    context: values.ValueContext
    #: The error message of :data:`SCALER_ERROR`.
    message: str
    #: The unit symbol of the value, if any (what the poller records once).
    unit: str | None


def build_plan(
    specs: Sequence[RegisterSpec], readings: Sequence[RegisterReading]
) -> tuple[RegisterPlan, ...]:
    """The plan of each register of ``specs`` from its first reading in this association.

    Raises :class:`ValueError` when ``readings`` do not match ``specs`` one for one."""
    if len(specs) != len(readings):
        raise ValueError(f"{len(readings)} readings for {len(specs)} registers")
    if not specs:
        raise ValueError("a steady reply needs at least one register")
    plans = []
    for index, (spec, reading) in enumerate(zip(specs, readings, strict=True)):
        if reading.spec != spec:
            raise ValueError(f"reading {index + 1} is of {reading.spec.name}, not {spec.name}")
        context = values.context_for(spec.class_id, spec.obis, spec.attribute)
        enum_names = values.ENUM_NAMES.get((spec.class_id, spec.attribute))
        if reading.ok:
            mode, scaler, message = CONVERT, reading.scaler, ""
        elif reading.error_code == "register.scaler_unit":
            mode, scaler, message = SCALER_ERROR, None, reading.error or ""
        else:
            mode, scaler, message = UNKNOWN, None, ""
        unit = reading.unit.symbol if reading.unit is not None else None
        plans.append(RegisterPlan(spec.name, mode, scaler, enum_names, context, message, unit))
    return tuple(plans)


def convert_general(data: Data, plan: RegisterPlan) -> Converted:
    """``data`` of a :data:`CONVERT` register converted exactly as the client converts it."""
    number = values.convert_integer(data, plan.scaler)
    if number is not None:
        return number, None, None, None
    converted = values.convert(
        data, context=plan.context, scaler=plan.scaler, enum_names=plan.enum_names
    )
    if not converted.ok:
        return None, None, None, (converted.error_code or "register.error", converted.error or "")
    quality = converted.quality.value if converted.quality is not None else None
    return converted.value, quality, converted.label, None


def json_layout(keys: Sequence[str]) -> tuple[tuple[int, ...], tuple[bytes, ...]] | None:
    """How a reading's values are written as compact JSON with sorted keys (``json.dumps``
    with ``separators=(",", ":")``, ``sort_keys=True``, ``ensure_ascii=False``, in UTF-8):
    the registers' indexes in key order, and the bytes before each value (``{"key":`` for the
    first, ``,"key":`` for the others). None when two registers share a key (their values
    are one entry of the mapping, not two).
    """
    if len(set(keys)) != len(keys):
        return None
    order = tuple(sorted(range(len(keys)), key=lambda i: keys[i]))
    prefixes = tuple(
        (b"{" if n == 0 else b",") + json.dumps(keys[i], ensure_ascii=False).encode() + b":"
        for n, i in enumerate(order)
    )
    return order, prefixes
