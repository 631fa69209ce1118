"""Server-side COSEM objects: attributes with getters and setters, methods, access rights.

A getter returns the attribute's value already A-XDR encoded (tag included), so constant
attributes are encoded once and the GET path only concatenates bytes. A failure is raised as
:class:`AccessFailure` carrying the data-access-result (or action-result) to answer with.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from codec.apdu import ActionResult, DataAccessResult, SelectiveAccess
from codec.axdr import Data, DataType, encode_data
from codec.cosem import (
    AttributeAccess,
    AttributeAccessMode,
    MethodAccess,
    MethodAccessMode,
    ObjectListEntry,
)
from codec.obis import Obis

if TYPE_CHECKING:
    from bridge.simulator.cosem_server import RequestContext
    from bridge.simulator.meter import Meter

__all__ = [
    "AccessFailure",
    "Attribute",
    "CosemObject",
    "Getter",
    "Method",
    "PlainGetter",
    "Setter",
    "constant",
    "encode_number",
    "number_encoder",
]


class AccessFailure(Exception):
    """Raised by getters, setters and methods: answer with this result instead of a value."""

    def __init__(self, result: DataAccessResult | ActionResult, why: str = "") -> None:
        super().__init__(f"{result.label}: {why}" if why else result.label)
        self.result = result


Getter = Callable[["RequestContext", "SelectiveAccess | None"], bytes]
Setter = Callable[["RequestContext", Data], None]
Invoker = Callable[["RequestContext", "Data | None"], "Data | None"]
#: A getter that needs only the meter and its clock's time (unix seconds), never fails and
#: gives the same bytes as the attribute's ``get``: what the steady-state GET path calls.
PlainGetter = Callable[["Meter", float], bytes]


@attrs.frozen
class Attribute:
    """One attribute: how to read it, how (whether) to write it, its selective access."""

    id: int
    get: Getter | None = None
    set: Setter | None = None
    selectors: tuple[int, ...] = ()
    #: The same value as ``get`` without selective access, from the meter and its time alone
    #: (None: the attribute needs the request context).
    plain: PlainGetter | None = None

    @property
    def access_mode(self) -> AttributeAccessMode:
        """The access mode the object list shows for it."""
        if self.get is not None and self.set is not None:
            return AttributeAccessMode.READ_AND_WRITE
        if self.get is not None:
            return AttributeAccessMode.READ_ONLY
        if self.set is not None:
            return AttributeAccessMode.WRITE_ONLY
        return AttributeAccessMode.NO_ACCESS


@attrs.frozen
class Method:
    """One method and what invoking it does."""

    id: int
    call: Invoker


@attrs.frozen
class CosemObject:
    """An instance of an interface class: its attributes (1..``attribute_count``) and methods.

    Attributes the class defines but this object does not implement are listed in the object
    list with no access.
    """

    class_id: int
    version: int
    obis: Obis
    attribute_count: int
    attributes: dict[int, Attribute]
    method_count: int = 0
    methods: dict[int, Method] = attrs.field(factory=dict)

    def list_entry(self) -> ObjectListEntry:
        """The entry of this object in an Association LN object list."""
        rights = []
        for attribute_id in range(1, self.attribute_count + 1):
            attribute = self.attributes.get(attribute_id)
            if attribute is None:
                rights.append(AttributeAccess(attribute_id, AttributeAccessMode.NO_ACCESS, None))
            else:
                rights.append(
                    AttributeAccess(
                        attribute_id, attribute.access_mode, attribute.selectors or None
                    )
                )
        methods = tuple(
            MethodAccess(
                method_id,
                MethodAccessMode.ACCESS
                if method_id in self.methods
                else MethodAccessMode.NO_ACCESS,
            )
            for method_id in range(1, self.method_count + 1)
        )
        return ObjectListEntry(self.class_id, self.version, self.obis, tuple(rights), methods)


def constant(value: Data) -> Getter:
    """A getter for a value that never changes (encoded once)."""
    raw = encode_data(value)

    def get(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
        return raw

    return get


# Tagged fixed-size encodings for the hot path; each gives the same bytes as encode_data().
_NUMBER_FORMATS: dict[DataType, struct.Struct] = {
    DataType.LONG_UNSIGNED: struct.Struct(">BH"),
    DataType.LONG: struct.Struct(">Bh"),
    DataType.DOUBLE_LONG_UNSIGNED: struct.Struct(">BI"),
    DataType.DOUBLE_LONG: struct.Struct(">Bi"),
    DataType.FLOAT32: struct.Struct(">Bf"),
    DataType.FLOAT64: struct.Struct(">Bd"),
}
_LIMITS: dict[DataType, tuple[int, int]] = {
    DataType.LONG_UNSIGNED: (0, 0xFFFF),
    DataType.LONG: (-0x8000, 0x7FFF),
    DataType.DOUBLE_LONG_UNSIGNED: (0, 0xFFFF_FFFF),
    DataType.DOUBLE_LONG: (-0x8000_0000, 0x7FFF_FFFF),
}


def encode_number(dtype: DataType, value: float) -> bytes:
    """Encode a number as ``dtype``: integers are rounded and clamped to the type's range."""
    fmt = _NUMBER_FORMATS[dtype]
    limits = _LIMITS.get(dtype)
    if limits is None:
        return fmt.pack(dtype, value)
    low, high = limits
    return fmt.pack(dtype, min(high, max(low, round(value))))


def number_encoder(
    dtype: DataType, quantity: Callable[[Meter, float], float], divisor: float
) -> PlainGetter:
    """``encode_number(dtype, quantity(meter, t) / divisor)`` as one function, lookups done once."""
    pack = _NUMBER_FORMATS[dtype].pack
    tag = int(dtype)
    limits = _LIMITS.get(dtype)
    if limits is None:

        def encode_real(meter: Meter, t: float) -> bytes:
            return pack(tag, quantity(meter, t) / divisor)

        return encode_real
    low, high = limits

    def encode_integer(meter: Meter, t: float) -> bytes:
        return pack(tag, min(high, max(low, round(quantity(meter, t) / divisor))))

    return encode_integer
