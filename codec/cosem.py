"""COSEM interface classes on top of the APDUs: attribute numbers, scaler-unit, profile access.

Everything here turns typed values into the :class:`~codec.axdr.Data` the meter expects, or
interprets the :class:`~codec.axdr.Data` a meter returned; there is no I/O. Values the meter got
wrong (a scaler-unit that is not ``{integer, enum}``, a capture object with a 5-byte logical
name) raise :class:`~codec.errors.DecodeError` naming the attribute and what was found.
"""

from __future__ import annotations

import datetime as _dt
import enum
import math
from collections.abc import Iterable
from decimal import Decimal

import attrs

from codec.apdu import AttributeDescriptor, MethodDescriptor, SelectiveAccess
from codec.axdr import Data, DataType
from codec.cosem_time import CosemDateTime
from codec.errors import DecodeError, EncodeError
from codec.obis import Obis
from codec.units import Unit, unit_for

# -- interface classes and their attributes -------------------------------------------------------


class InterfaceClass(enum.IntEnum):
    """COSEM interface class ids (DLMS UA 1000-1, the "Blue Book")."""

    DATA = 1
    REGISTER = 3
    EXTENDED_REGISTER = 4
    DEMAND_REGISTER = 5
    REGISTER_ACTIVATION = 6
    PROFILE_GENERIC = 7
    CLOCK = 8
    SCRIPT_TABLE = 9
    SCHEDULE = 10
    SPECIAL_DAYS_TABLE = 11
    ASSOCIATION_SN = 12
    ASSOCIATION_LN = 15
    SAP_ASSIGNMENT = 17
    IMAGE_TRANSFER = 18
    ACTIVITY_CALENDAR = 20
    REGISTER_MONITOR = 21
    SINGLE_ACTION_SCHEDULE = 22
    IEC_HDLC_SETUP = 23
    DISCONNECT_CONTROL = 70
    LIMITER = 71


class DataAttribute(enum.IntEnum):
    """Data (class 1)."""

    LOGICAL_NAME = 1
    VALUE = 2


class RegisterAttribute(enum.IntEnum):
    """Register (class 3)."""

    LOGICAL_NAME = 1
    VALUE = 2
    SCALER_UNIT = 3


class RegisterMethod(enum.IntEnum):
    """Register (class 3) methods."""

    RESET = 1


class ExtendedRegisterAttribute(enum.IntEnum):
    """Extended register (class 4)."""

    LOGICAL_NAME = 1
    VALUE = 2
    SCALER_UNIT = 3
    STATUS = 4
    CAPTURE_TIME = 5


class DemandRegisterAttribute(enum.IntEnum):
    """Demand register (class 5)."""

    LOGICAL_NAME = 1
    CURRENT_AVERAGE_VALUE = 2
    LAST_AVERAGE_VALUE = 3
    SCALER_UNIT = 4
    STATUS = 5
    CAPTURE_TIME = 6
    START_TIME_CURRENT = 7
    PERIOD = 8
    NUMBER_OF_PERIODS = 9


class ProfileGenericAttribute(enum.IntEnum):
    """Profile generic (class 7)."""

    LOGICAL_NAME = 1
    BUFFER = 2
    CAPTURE_OBJECTS = 3
    CAPTURE_PERIOD = 4
    SORT_METHOD = 5
    SORT_OBJECT = 6
    ENTRIES_IN_USE = 7
    PROFILE_ENTRIES = 8


class ProfileGenericMethod(enum.IntEnum):
    """Profile generic (class 7) methods."""

    RESET = 1
    CAPTURE = 2


class ClockAttribute(enum.IntEnum):
    """Clock (class 8)."""

    LOGICAL_NAME = 1
    TIME = 2
    TIME_ZONE = 3
    STATUS = 4
    DAYLIGHT_SAVINGS_BEGIN = 5
    DAYLIGHT_SAVINGS_END = 6
    DAYLIGHT_SAVINGS_DEVIATION = 7
    DAYLIGHT_SAVINGS_ENABLED = 8
    CLOCK_BASE = 9


class AssociationLnAttribute(enum.IntEnum):
    """Association LN (class 15)."""

    LOGICAL_NAME = 1
    OBJECT_LIST = 2
    ASSOCIATED_PARTNERS_ID = 3
    APPLICATION_CONTEXT_NAME = 4
    XDLMS_CONTEXT_INFO = 5
    AUTHENTICATION_MECHANISM_NAME = 6
    SECRET = 7
    ASSOCIATION_STATUS = 8
    SECURITY_SETUP_REFERENCE = 9
    USER_LIST = 10
    CURRENT_USER = 11


class AssociationLnMethod(enum.IntEnum):
    """Association LN (class 15) methods."""

    REPLY_TO_HLS_AUTHENTICATION = 1
    CHANGE_HLS_SECRET = 2
    ADD_OBJECT = 3
    REMOVE_OBJECT = 4
    ADD_USER = 5
    REMOVE_USER = 6


# The attribute holding the value, and the one holding its scaler-unit, of each value class.
_VALUE_ATTRIBUTE = {
    InterfaceClass.DATA: DataAttribute.VALUE,
    InterfaceClass.REGISTER: RegisterAttribute.VALUE,
    InterfaceClass.EXTENDED_REGISTER: ExtendedRegisterAttribute.VALUE,
    InterfaceClass.DEMAND_REGISTER: DemandRegisterAttribute.CURRENT_AVERAGE_VALUE,
    InterfaceClass.CLOCK: ClockAttribute.TIME,
}
_SCALER_UNIT_ATTRIBUTE = {
    InterfaceClass.REGISTER: RegisterAttribute.SCALER_UNIT,
    InterfaceClass.EXTENDED_REGISTER: ExtendedRegisterAttribute.SCALER_UNIT,
    InterfaceClass.DEMAND_REGISTER: DemandRegisterAttribute.SCALER_UNIT,
}


def value_attribute(class_id: int, obis: Obis | str) -> AttributeDescriptor:
    """The attribute that holds the value of a Data, Register, Extended/Demand register or Clock.

    Raises :class:`~codec.errors.EncodeError` for other classes.
    """
    attr = _VALUE_ATTRIBUTE.get(class_id)  # type: ignore[call-overload]
    if attr is None:
        raise EncodeError(f"class {class_id} has no single value attribute", code="cosem.no_value")
    return AttributeDescriptor(class_id, Obis.parse(obis), int(attr))


def scaler_unit_attribute(class_id: int, obis: Obis | str) -> AttributeDescriptor | None:
    """The scaler_unit attribute of a Register, Extended or Demand register; None otherwise."""
    attr = _SCALER_UNIT_ATTRIBUTE.get(class_id)  # type: ignore[call-overload]
    if attr is None:
        return None
    return AttributeDescriptor(class_id, Obis.parse(obis), int(attr))


def method(class_id: int, obis: Obis | str, method_id: int) -> MethodDescriptor:
    """A method descriptor from a class id, an OBIS code in any notation and a method number."""
    return MethodDescriptor(class_id, Obis.parse(obis), method_id)


# -- reading Data ---------------------------------------------------------------------------------

_INTEGER_TYPES = frozenset(
    {
        DataType.INTEGER,
        DataType.LONG,
        DataType.DOUBLE_LONG,
        DataType.LONG64,
        DataType.UNSIGNED,
        DataType.LONG_UNSIGNED,
        DataType.DOUBLE_LONG_UNSIGNED,
        DataType.LONG64_UNSIGNED,
        DataType.ENUM,
    }
)


def _type_name(d: Data) -> str:
    return DataType(d.type).name.lower().replace("_", "-")


def _fields(d: Data, size: int | tuple[int, ...], what: str) -> tuple[Data, ...]:
    """The items of a structure of ``size`` items (one of ``size`` if a tuple)."""
    sizes = (size,) if isinstance(size, int) else size
    if d.type != DataType.STRUCTURE or not isinstance(d.value, tuple) or len(d.value) not in sizes:
        found = _type_name(d)
        if d.type == DataType.STRUCTURE and isinstance(d.value, tuple):
            found += f" of {len(d.value)} items"
        expected = " or ".join(str(s) for s in sizes)
        raise DecodeError(
            f"{what}: expected a structure of {expected} items, got {found}", code="cosem.bad_value"
        )
    return d.value


def _elements(d: Data, what: str) -> tuple[Data, ...]:
    if d.type != DataType.ARRAY or not isinstance(d.value, tuple):
        raise DecodeError(f"{what}: expected an array, got {_type_name(d)}", code="cosem.bad_value")
    return d.value


def _int(d: Data, what: str, types: Iterable[DataType] = _INTEGER_TYPES) -> int:
    allowed = frozenset(types)
    if d.type not in allowed or not isinstance(d.value, int) or isinstance(d.value, bool):
        names = "/".join(sorted(t.name.lower().replace("_", "-") for t in allowed))
        raise DecodeError(f"{what}: expected {names}, got {_type_name(d)}", code="cosem.bad_value")
    return d.value


def _obis(d: Data, what: str) -> Obis:
    if d.type != DataType.OCTET_STRING or not isinstance(d.value, bytes) or len(d.value) != 6:
        found = _type_name(d)
        if isinstance(d.value, bytes):
            found += f" of {len(d.value)} bytes"
        raise DecodeError(
            f"{what}: expected a 6-byte octet-string logical name, got {found}",
            code="cosem.bad_value",
        )
    return Obis.from_bytes(d.value)


# -- scaler and unit ------------------------------------------------------------------------------


def scale(raw: int | float, scaler: int) -> int | float:
    """``raw * 10**scaler`` without binary drift: 12500 with -2 gives exactly 125.0.

    An int stays an int when ``scaler >= 0``; otherwise the result is the float nearest to the
    exact decimal value (computed with :mod:`decimal`, so 13 with -1 is 1.3, not
    1.3000000000000003).
    """
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise TypeError(f"cannot scale {type(raw).__name__} {raw!r}")
    if isinstance(raw, int):
        if scaler >= 0:
            factor: int = 10**scaler
            return raw * factor
        # int / int is correctly rounded in CPython: the float nearest to the exact quotient,
        # the same as rounding the exact Decimal, at a fraction of its cost (the poll's hot path).
        divisor: int = 10**-scaler
        return raw / divisor
    if not math.isfinite(raw) or scaler == 0:
        return raw  # repr() round-trips, so the Decimal detour would give raw back
    # repr() is the shortest text that round-trips, i.e. the decimal the meter most likely meant.
    return float(Decimal(repr(raw)).scaleb(scaler))


@attrs.frozen
class ScalerUnit:
    """A register's scaler_unit: value = raw * 10**scaler, in the IEC 62056-62 ``unit``."""

    scaler: int
    unit: int

    @classmethod
    def from_data(cls, d: Data, what: str = "scaler_unit") -> ScalerUnit:
        """Parse the structure {integer scaler, enum unit}.

        Lenient about the integer widths real meters use (an unsigned unit, a long scaler),
        strict about the shape.
        """
        scaler_d, unit_d = _fields(d, 2, what)
        scaler = _int(scaler_d, f"{what} scaler")
        unit = _int(unit_d, f"{what} unit")
        if scaler_d.type == DataType.UNSIGNED and scaler > 127:
            scaler -= 256  # an Integer8 sent with the wrong tag
        if not -128 <= scaler <= 127:
            raise DecodeError(
                f"{what}: scaler {scaler} is outside -128..127", code="cosem.bad_value"
            )
        if not 0 <= unit <= 255:
            raise DecodeError(f"{what}: unit {unit} is outside 0..255", code="cosem.bad_value")
        return cls(scaler, unit)

    def to_data(self) -> Data:
        """The structure {integer, enum} a meter sends."""
        return Data.structure((Data.integer(self.scaler), Data.enum(self.unit)))

    @property
    def unit_info(self) -> Unit:
        """The unit's symbol and name."""
        return unit_for(self.unit)

    def apply(self, raw: int | float) -> int | float:
        """The scaled value of ``raw`` (see :func:`scale`)."""
        return scale(raw, self.scaler)


# -- profile generic ------------------------------------------------------------------------------


@attrs.frozen
class CaptureObject:
    """A capture_object_definition: one column of a profile's buffer."""

    class_id: int
    obis: Obis
    attribute_index: int
    data_index: int = 0

    @classmethod
    def from_data(cls, d: Data, what: str = "capture object") -> CaptureObject:
        """Parse {class_id, logical_name, attribute_index, data_index}."""
        class_d, ln_d, attr_d, index_d = _fields(d, 4, what)
        return cls(
            _int(class_d, f"{what} class_id"),
            _obis(ln_d, f"{what} logical_name"),
            _int(attr_d, f"{what} attribute_index"),
            _int(index_d, f"{what} data_index"),
        )

    def to_data(self) -> Data:
        """The structure a meter sends (and a range descriptor carries)."""
        return Data.structure(
            (
                Data.long_unsigned(self.class_id),
                Data.octet_string(self.obis.to_bytes()),
                Data.integer(self.attribute_index),
                Data.long_unsigned(self.data_index),
            )
        )


#: The default restricting object of a range descriptor: the time attribute of the clock.
CLOCK_TIME = CaptureObject(InterfaceClass.CLOCK, Obis(0, 0, 1, 0, 0, 255), ClockAttribute.TIME, 0)


def parse_capture_objects(d: Data) -> tuple[CaptureObject, ...]:
    """Parse a profile's capture_objects attribute (an array of capture object definitions)."""
    return tuple(
        CaptureObject.from_data(item, f"capture_objects[{i}]")
        for i, item in enumerate(_elements(d, "capture_objects"))
    )


def _date_time_value(value: CosemDateTime | _dt.datetime) -> Data:
    if isinstance(value, _dt.datetime):
        value = CosemDateTime.from_datetime(value)
    # Meters expect the date-time as a 12-byte octet-string here, not the date-time type.
    return Data.octet_string(value.to_bytes())


@attrs.frozen
class RangeDescriptor:
    """Selective access by range (selector 1): rows whose restricting value is in range."""

    restricting: CaptureObject
    from_value: Data
    to_value: Data
    selected_values: tuple[CaptureObject, ...] = ()

    def to_access(self) -> SelectiveAccess:
        """The access selection to put in a GET request."""
        return SelectiveAccess(
            1,
            Data.structure(
                (
                    self.restricting.to_data(),
                    self.from_value,
                    self.to_value,
                    Data.array(c.to_data() for c in self.selected_values),
                )
            ),
        )

    @classmethod
    def from_access(cls, access: SelectiveAccess) -> RangeDescriptor:
        """Parse the access selection of a received GET request."""
        if access.selector != 1:
            raise DecodeError(
                f"range descriptor: access selector must be 1, got {access.selector}",
                code="cosem.bad_value",
            )
        restricting, from_value, to_value, selected = _fields(
            access.parameters, 4, "range descriptor"
        )
        return cls(
            CaptureObject.from_data(restricting, "range descriptor restricting object"),
            from_value,
            to_value,
            tuple(
                CaptureObject.from_data(item, f"range descriptor selected_values[{i}]")
                for i, item in enumerate(_elements(selected, "range descriptor selected_values"))
            ),
        )

    def date_times(self) -> tuple[CosemDateTime, CosemDateTime]:
        """The from and to values as date-times (octet-string(12) or date-time typed)."""
        return (
            _as_date_time(self.from_value, "range descriptor from_value"),
            _as_date_time(self.to_value, "range descriptor to_value"),
        )


def _as_date_time(d: Data, what: str) -> CosemDateTime:
    if d.type == DataType.DATE_TIME and isinstance(d.value, CosemDateTime):
        return d.value
    if d.type == DataType.OCTET_STRING and isinstance(d.value, bytes) and len(d.value) == 12:
        return CosemDateTime.from_bytes(d.value)
    raise DecodeError(f"{what}: expected a date-time, got {_type_name(d)}", code="cosem.bad_value")


def range_descriptor(
    from_dt: CosemDateTime | _dt.datetime,
    to_dt: CosemDateTime | _dt.datetime,
    *,
    restricting: CaptureObject = CLOCK_TIME,
    selected_values: Iterable[CaptureObject] = (),
) -> SelectiveAccess:
    """Selective access to the rows of a profile captured between ``from_dt`` and ``to_dt``.

    ``selected_values`` picks columns (empty: all of them).
    """
    return RangeDescriptor(
        restricting, _date_time_value(from_dt), _date_time_value(to_dt), tuple(selected_values)
    ).to_access()


@attrs.frozen
class EntryDescriptor:
    """Selective access by entry (selector 2): rows and columns by number, 1-based, 0 = last."""

    from_entry: int
    to_entry: int = 0
    from_selected_value: int = 1
    to_selected_value: int = 0

    def to_access(self) -> SelectiveAccess:
        """The access selection to put in a GET request."""
        return SelectiveAccess(
            2,
            Data.structure(
                (
                    Data.double_long_unsigned(self.from_entry),
                    Data.double_long_unsigned(self.to_entry),
                    Data.long_unsigned(self.from_selected_value),
                    Data.long_unsigned(self.to_selected_value),
                )
            ),
        )

    @classmethod
    def from_access(cls, access: SelectiveAccess) -> EntryDescriptor:
        """Parse the access selection of a received GET request."""
        if access.selector != 2:
            raise DecodeError(
                f"entry descriptor: access selector must be 2, got {access.selector}",
                code="cosem.bad_value",
            )
        fields = _fields(access.parameters, 4, "entry descriptor")
        names = ("from_entry", "to_entry", "from_selected_value", "to_selected_value")
        a, b, c, d = (_int(f, f"entry descriptor {n}") for f, n in zip(fields, names, strict=True))
        return cls(a, b, c, d)


def entry_descriptor(
    from_entry: int, to_entry: int, from_selected_value: int = 1, to_selected_value: int = 0
) -> SelectiveAccess:
    """Selective access to rows ``from_entry``..``to_entry`` (1-based, 0 = up to the last)."""
    return EntryDescriptor(from_entry, to_entry, from_selected_value, to_selected_value).to_access()


# -- association LN object list -------------------------------------------------------------------


class AttributeAccessMode(enum.IntEnum):
    """attribute_access_mode of an object list entry."""

    NO_ACCESS = 0
    READ_ONLY = 1
    WRITE_ONLY = 2
    READ_AND_WRITE = 3
    AUTHENTICATED_READ_ONLY = 4
    AUTHENTICATED_WRITE_ONLY = 5
    AUTHENTICATED_READ_AND_WRITE = 6


class MethodAccessMode(enum.IntEnum):
    """method_access_mode of an object list entry (a boolean in Association LN version 0)."""

    NO_ACCESS = 0
    ACCESS = 1
    AUTHENTICATED_ACCESS = 2


@attrs.frozen
class AttributeAccess:
    """The access rights to one attribute; ``access_selectors`` None when not given."""

    attribute_id: int
    access_mode: int
    access_selectors: tuple[int, ...] | None = None

    @property
    def readable(self) -> bool:
        """Whether the attribute can be read (with or without authentication)."""
        return self.access_mode in (1, 3, 4, 6)


@attrs.frozen
class MethodAccess:
    """The access rights to one method."""

    method_id: int
    access_mode: int


@attrs.frozen
class ObjectListEntry:
    """One object of an Association LN's object_list."""

    class_id: int
    version: int
    obis: Obis
    attribute_access: tuple[AttributeAccess, ...] = ()
    method_access: tuple[MethodAccess, ...] = ()

    @classmethod
    def from_data(cls, d: Data, what: str = "object_list entry") -> ObjectListEntry:
        """Parse {class_id, version, logical_name, {attribute_access, method_access}}."""
        class_d, version_d, ln_d, rights_d = _fields(d, 4, what)
        obis = _obis(ln_d, f"{what} logical_name")
        where = f"{what} {obis}"
        attrs_d, methods_d = _fields(rights_d, 2, f"{where} access_rights")
        attributes = []
        for i, item in enumerate(_elements(attrs_d, f"{where} attribute_access")):
            id_d, mode_d, selectors_d = _fields(item, 3, f"{where} attribute_access[{i}]")
            selectors = None
            if selectors_d.type != DataType.NULL_DATA:
                selectors = tuple(
                    _int(s, f"{where} attribute_access[{i}] access_selectors")
                    for s in _elements(
                        selectors_d, f"{where} attribute_access[{i}] access_selectors"
                    )
                )
            attributes.append(
                AttributeAccess(
                    _int(id_d, f"{where} attribute_access[{i}] attribute_id"),
                    _int(mode_d, f"{where} attribute_access[{i}] access_mode"),
                    selectors,
                )
            )
        methods = []
        for i, item in enumerate(_elements(methods_d, f"{where} method_access")):
            id_d, mode_d = _fields(item, 2, f"{where} method_access[{i}]")
            if mode_d.type == DataType.BOOLEAN and isinstance(mode_d.value, bool):
                mode = int(mode_d.value)
            else:
                mode = _int(mode_d, f"{where} method_access[{i}] access_mode")
            methods.append(MethodAccess(_int(id_d, f"{where} method_access[{i}] method_id"), mode))
        return cls(
            _int(class_d, f"{what} class_id"),
            _int(version_d, f"{where} version"),
            obis,
            tuple(attributes),
            tuple(methods),
        )

    def to_data(self) -> Data:
        """The structure an Association LN (version 1 or later) sends."""
        attributes = Data.array(
            Data.structure(
                (
                    Data.integer(a.attribute_id),
                    Data.enum(a.access_mode),
                    Data.null()
                    if a.access_selectors is None
                    else Data.array(Data.integer(s) for s in a.access_selectors),
                )
            )
            for a in self.attribute_access
        )
        methods = Data.array(
            Data.structure((Data.integer(m.method_id), Data.enum(m.access_mode)))
            for m in self.method_access
        )
        return Data.structure(
            (
                Data.long_unsigned(self.class_id),
                Data.unsigned(self.version),
                Data.octet_string(self.obis.to_bytes()),
                Data.structure((attributes, methods)),
            )
        )


def parse_object_list(d: Data) -> tuple[ObjectListEntry, ...]:
    """Parse an Association LN's object_list (attribute 2)."""
    return tuple(
        ObjectListEntry.from_data(item, f"object_list[{i}]")
        for i, item in enumerate(_elements(d, "object_list"))
    )
