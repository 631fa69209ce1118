"""The register-reading DLMS client, sans-IO.

Each operation of :class:`DlmsClient` is a *procedure*: a generator that yields request APDUs and
receives the matching responses, returning its result at the end. Any driver runs them::

    proc = client.read_registers(specs)
    request = next(proc)
    while True:
        response = <send request, wait for its response>
        try:
            request = proc.send(response)
        except StopIteration as done:
            result = done.value
            break

so the same logic serves the Trio service, the command line and the tests (which can answer
requests from a table, with no I/O at all).

Scaler and unit are read once per association and cached; afterwards a read costs one request:
a single GET-with-list for all registers when the meter negotiated multiple references, else one
GET per register. A meter that refuses lists is remembered and read one register at a time.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Generator, Iterable, Sequence
from typing import Any, TypeVar

import attrs

from codec import cosem, values
from codec.apdu import (
    ActionRequestNormal,
    ActionResponseNormal,
    AttributeDescriptor,
    ConfirmedServiceError,
    DataAccessResult,
    ExceptionResponse,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithList,
    InvokeId,
    MalformedResult,
    MethodDescriptor,
    Request,
    SelectiveAccess,
    SetRequestNormal,
    SetResponseNormal,
    XdlmsApdu,
    expect_data,
    raise_for_result,
)
from codec.association import Negotiated
from codec.axdr import Data, DataType
from codec.cosem import CaptureObject, InterfaceClass, ObjectListEntry, ScalerUnit
from codec.cosem_time import CosemDateTime
from codec.errors import DataAccessError, ProtocolError, RemoteProtocolError
from codec.obis import Obis
from codec.units import Unit
from codec.values import JsonValue, Quality, is_json_value, type_name

__all__ = [
    "ASSOCIATION_LN",
    "DlmsClient",
    "Procedure",
    "ProfileData",
    "RegisterReading",
    "RegisterSpec",
]

T = TypeVar("T")
#: A sans-IO operation: yields requests, is sent responses, returns a result.
Procedure = Generator[Request, XdlmsApdu, T]

#: The current association's object (its object_list is attribute 2).
ASSOCIATION_LN = Obis(0, 0, 40, 0, 0, 255)
_PLACEHOLDER = InvokeId()
_NUMERIC = frozenset(
    {
        DataType.DOUBLE_LONG,
        DataType.DOUBLE_LONG_UNSIGNED,
        DataType.INTEGER,
        DataType.LONG,
        DataType.UNSIGNED,
        DataType.LONG_UNSIGNED,
        DataType.LONG64,
        DataType.LONG64_UNSIGNED,
        DataType.FLOAT32,
        DataType.FLOAT64,
    }
)


def _to_obis(value: Obis | str | bytes) -> Obis:
    return value if isinstance(value, Obis) else Obis.parse(value)


@attrs.frozen
class RegisterSpec:
    """A value to read: an object's OBIS code, interface class and value attribute."""

    obis: Obis = attrs.field(converter=_to_obis)
    class_id: int = int(InterfaceClass.REGISTER)
    attribute: int = 2
    key: str | None = None

    @property
    def name(self) -> str:
        """The telemetry key, or the OBIS code when there is none."""
        return self.key or str(self.obis)

    @property
    def descriptor(self) -> AttributeDescriptor:
        """The attribute holding the value (one object for all equal specs)."""
        key = (self.class_id, self.obis, self.attribute)
        found = _DESCRIPTORS.get(key)
        if found is None:
            if len(_DESCRIPTORS) >= _SHARED_MAX:
                _DESCRIPTORS.clear()
            found = _DESCRIPTORS[key] = AttributeDescriptor(*key)
        return found


#: Immutable parts of the steady requests that thousands of meters reading the same registers
#: share instead of holding one copy each: descriptors, and the item tuples of GET-with-list
#: requests (whose encodings :mod:`codec.apdu` keeps by the tuple's identity). Bounded; emptied
#: when full.
_SHARED_MAX = 1024
_DESCRIPTORS: dict[tuple[int, Obis, int], AttributeDescriptor] = {}
_LIST_ITEMS: dict[
    tuple[AttributeDescriptor, ...], tuple[tuple[AttributeDescriptor, SelectiveAccess | None], ...]
] = {}


def _list_items(
    chunk: Sequence[AttributeDescriptor],
) -> tuple[tuple[AttributeDescriptor, SelectiveAccess | None], ...]:
    """The items of a GET-with-list of ``chunk`` (no selective access), shared."""
    key = tuple(chunk)
    found = _LIST_ITEMS.get(key)
    if found is None:
        if len(_LIST_ITEMS) >= _SHARED_MAX:
            _LIST_ITEMS.clear()
        found = _LIST_ITEMS[key] = tuple((a, None) for a in key)
    return found


@attrs.frozen
class RegisterReading:
    """A register's value by the value contract (:mod:`codec.values`), its unit, the raw value.

    ``value`` is JSON-safe: the scaler applied, NaN/infinite floats as None with a ``quality``.
    When the register could not be read or its value not represented, ``error_code`` and
    ``error`` say why and ``value`` is None.
    """

    spec: RegisterSpec
    value: JsonValue = None
    raw: Data | None = None
    scaler: int | None = None
    unit: Unit | None = None
    #: Why there is no value (e.g. ``"object-undefined"``); None when the read succeeded.
    error: str | None = None
    #: Machine-readable form of ``error`` (``"data-access.object-undefined"``, ``"value.*"``).
    error_code: str | None = None
    quality: Quality | None = None
    #: The enum's name, or the clock status of a date-time.
    label: str | None = None

    @property
    def ok(self) -> bool:
        """True when a value was read."""
        return self.error is None

    @property
    def type_name(self) -> str | None:
        """The A-XDR type of the raw value (``double-long-unsigned``), when there is one."""
        return type_name(self.raw) if self.raw is not None else None

    def to_json(self) -> dict[str, JsonValue]:
        """A JSON-safe description (strict JSON: no NaN or Infinity anywhere)."""
        out: dict[str, JsonValue] = {"obis": str(self.spec.obis), "key": self.spec.name}
        if self.error is not None:
            out["error"] = self.error
            out["error_code"] = self.error_code
            return out
        out["value"] = self.value
        out["unit"] = self.unit.symbol if self.unit is not None else None
        out["scaler"] = self.scaler
        if self.quality is not None:
            out["quality"] = self.quality.value
        if self.label is not None:
            out["label"] = self.label
        if self.raw is not None:
            # The wire value as A-XDR knows it (hex octets, "NaN" as text): for diagnosis.
            raw = self.raw.to_json()
            out["raw"] = raw if is_json_value(raw) else repr(raw)
            out["type"] = type_name(self.raw)
        return out


@attrs.frozen
class ProfileData:
    """Rows of a profile generic's buffer, with the columns they hold."""

    columns: tuple[CaptureObject, ...]
    units: tuple[Unit | None, ...]
    rows: tuple[tuple[Any, ...], ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe description."""
        return {
            "columns": [
                {
                    "class_id": c.class_id,
                    "obis": str(c.obis),
                    "attribute": c.attribute_index,
                    "unit": u.symbol if u is not None else None,
                }
                for c, u in zip(self.columns, self.units, strict=True)
            ],
            "rows": [[_json_value(v) for v in row] for row in self.rows],
        }


def _json_value(value: Any) -> JsonValue:
    """A profile cell (as :meth:`DlmsClient.read_profile` returns it) by the value contract."""
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, CosemDateTime):
        return str(value)
    if isinstance(value, Data):
        return values.convert(value).value
    if isinstance(value, bytes):
        return values.convert(Data.octet_string(value)).value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _check_response(response: XdlmsApdu, expected: type[T], what: str) -> T:
    if isinstance(response, (ExceptionResponse, ConfirmedServiceError)):
        error = response.error()
        raise type(error)(f"{what}: {error.message}", code=error.code)
    if not isinstance(response, expected):
        raise RemoteProtocolError(
            f"{what}: expected {expected.__name__}, the meter answered {type(response).__name__}",
            code="client.unexpected_response",
        )
    return response


class DlmsClient:
    """Operations on one open association. See the module docstring.

    ``negotiated`` is what the AARE granted; ``max_list_items`` caps a GET-with-list (meters
    limit it, often to around 10).
    """

    def __init__(self, negotiated: Negotiated, *, max_list_items: int = 10) -> None:
        self.negotiated = negotiated
        self.max_list_items = max(1, max_list_items)
        self.scalers: dict[tuple[int, Obis], ScalerUnit | str] = {}
        self._capture_objects: dict[Obis, tuple[CaptureObject, ...]] = {}
        #: Set once the meter refused a GET-with-list: read one attribute at a time after that.
        self.list_refused = False
        #: The steady state of :meth:`read_registers` (its last register list, once every
        #: scaler is known) and of :meth:`_get_list` (its last request): built once, reused.
        self._plan: _ReadPlan | None = None
        self._list_request: GetRequestWithList | None = None
        self._single_request: GetRequestNormal | None = None

    # -- primitives --------------------------------------------------------------------------

    def get(
        self, attribute: AttributeDescriptor, access: SelectiveAccess | None = None
    ) -> Procedure[Data]:
        """Read one attribute; data-access errors raise :class:`DataAccessError`."""
        response = yield GetRequestNormal(_PLACEHOLDER, attribute, access)
        normal = _check_response(response, GetResponseNormal, f"GET {attribute}")
        return expect_data(normal.result, _describe(attribute))

    def set(self, attribute: AttributeDescriptor, value: Data) -> Procedure[None]:
        """Write one attribute."""
        response = yield SetRequestNormal(_PLACEHOLDER, attribute, None, value)
        result = _check_response(response, SetResponseNormal, f"SET {attribute}").result
        raise_for_result(result, _describe(attribute))

    def action(
        self, method: MethodDescriptor, parameters: Data | None = None
    ) -> Procedure[Data | None]:
        """Invoke a method; returns its return data, if any."""
        response = yield ActionRequestNormal(_PLACEHOLDER, method, parameters)
        reply = _check_response(response, ActionResponseNormal, f"ACTION {method}")
        raise_for_result(reply.result, f"{method.obis} method {method.method_id}")
        if isinstance(reply.return_data, DataAccessResult):
            raise_for_result(reply.return_data, f"{method.obis} method {method.method_id}")
            return None
        return reply.return_data

    def get_many(
        self, attributes: Sequence[AttributeDescriptor]
    ) -> Procedure[list[Data | DataAccessResult | MalformedResult]]:
        """Read several attributes: GET-with-list when possible, else one GET each.

        Each result is the data or the meter's data-access-result for that attribute.
        """
        results: list[Data | DataAccessResult | MalformedResult] = []
        use_list = self.negotiated.multiple_references and not self.list_refused
        for start in range(0, len(attributes), self.max_list_items if use_list else 1):
            chunk = attributes[start : start + (self.max_list_items if use_list else 1)]
            if use_list and len(chunk) > 1:
                got = yield from self._get_list(chunk)
                if got is None:
                    use_list = False
                else:
                    # From a result that does not decode on, the list cannot be trusted: read
                    # those attributes again one by one (a bad one is then an error of its own).
                    bad = next(
                        (i for i, r in enumerate(got) if isinstance(r, MalformedResult)), None
                    )
                    if bad is None:
                        results.extend(got)
                        continue
                    results.extend(got[:bad])
                    chunk = chunk[bad:]
            for attribute in chunk:
                results.append((yield from self._get_one(attribute)))
        return results

    def _get_one(
        self, attribute: AttributeDescriptor
    ) -> Procedure[Data | DataAccessResult | MalformedResult]:
        """One GET of :meth:`get_many`: whatever goes wrong with it is its result.

        A refusal (exception-response, service error, another response) or a request that got
        no reply while the association stays usable (the driver throws its error in here)
        fails this attribute only.
        """
        try:
            response = yield GetRequestNormal(_PLACEHOLDER, attribute, None)
            return _check_response(response, GetResponseNormal, f"GET {attribute}").result
        except ProtocolError as exc:
            return MalformedResult(exc.code, exc.message)

    def _get_list(
        self, chunk: Sequence[AttributeDescriptor]
    ) -> Procedure[list[Data | DataAccessResult | MalformedResult] | None]:
        request = self._list_request
        if (
            request is None
            or len(request.items) != len(chunk)
            or any(
                item[0] is not a and item[0] != a
                for item, a in zip(request.items, chunk, strict=True)
            )
        ):
            # A new list (the same list again reuses the request, and so its encoding).
            request = GetRequestWithList(_PLACEHOLDER, _list_items(chunk))
            self._list_request = request
        try:
            response = yield request
        except ProtocolError:
            response = None  # no reply to the list (the driver threw its error in here)
        if isinstance(response, GetResponseWithList) and len(response.results) == len(chunk):
            return list(response.results)
        # Refused (exception-response, service error, a bare error, a short list, no reply):
        # remember it.
        self.list_refused = True
        return None

    # -- registers ---------------------------------------------------------------------------

    def read_registers(self, specs: Iterable[RegisterSpec]) -> Procedure[list[RegisterReading]]:
        """Read registers with their scalers applied; one failed register does not fail others.

        The first read in an association also fetches the scaler_unit of each register (in the
        same GET-with-list when possible); later reads fetch only the values.
        """
        specs = tuple(specs)
        plan = self._plan
        if plan is not None and plan.specs == specs:
            # Steady state: every scaler is known, the request and conversions are ready.
            results = yield from self.get_many(plan.wanted)
            return [
                self._convert(spec, result, how)
                for spec, result, how in zip(specs, results, plan.conversions, strict=True)
            ]
        wanted: list[AttributeDescriptor] = []
        scaler_keys: list[tuple[int, Obis]] = []
        for spec in specs:
            key = (spec.class_id, spec.obis)
            scaler_attr = cosem.scaler_unit_attribute(spec.class_id, spec.obis)
            if scaler_attr is not None and key not in self.scalers and key not in scaler_keys:
                wanted.append(scaler_attr)
                scaler_keys.append(key)
        n_scalers = len(wanted)
        wanted.extend(spec.descriptor for spec in specs)
        results = yield from self.get_many(wanted)
        for key, result in zip(scaler_keys, results[:n_scalers], strict=True):
            self.scalers[key] = _scaler_or_error(result, key)
        # Every scaler of these registers is known now (or known to be unreadable) and stays
        # so for the association: later reads of the same list reuse all of it. (One plan for
        # all the associations reading the same registers with the same scalers.)
        plan_key = (specs, tuple(self.scalers.get((s.class_id, s.obis)) for s in specs))
        plan = _PLANS.get(plan_key)
        if plan is None:
            conversions = tuple(self._conversion(spec) for spec in specs)
            plan = _ReadPlan(specs, tuple(spec.descriptor for spec in specs), conversions)
            if len(_PLANS) >= _SHARED_MAX:
                _PLANS.clear()
            _PLANS[plan_key] = plan
        self._plan = plan
        conversions = plan.conversions
        self._list_request = None  # the next request is built from the plan's own descriptors
        return [
            self._convert(spec, result, how)
            for spec, result, how in zip(specs, results[n_scalers:], conversions, strict=True)
        ]

    def steady_request(self, specs: Sequence[RegisterSpec]) -> Request | None:
        """The one request a steady-state :meth:`read_registers` of ``specs`` sends now (the
        scalers read, the same list as before), or None when it is not that simple (the plan
        not made yet, or the list taking more than one request). Its reply is the one
        :class:`codec.steady.SteadyDecoder` takes."""
        plan = self._plan
        if plan is None or plan.specs != tuple(specs):
            return None
        wanted = plan.wanted
        if len(wanted) == 1:
            request = self._single_request
            if request is None or request.attribute != wanted[0]:
                request = GetRequestNormal(_PLACEHOLDER, wanted[0], None)
                self._single_request = request
            return request
        use_list = self.negotiated.multiple_references and not self.list_refused
        listed = self._list_request
        if (
            not use_list
            or len(wanted) > self.max_list_items
            or listed is None
            or len(listed.items) != len(wanted)
            or any(item[0] != a for item, a in zip(listed.items, wanted, strict=True))
        ):
            return None
        return listed

    def _reading(
        self, spec: RegisterSpec, result: Data | DataAccessResult | MalformedResult
    ) -> RegisterReading:
        """The reading of ``spec`` from its result, by the scalers known now."""
        return self._convert(spec, result, self._conversion(spec))

    def _conversion(self, spec: RegisterSpec) -> _Conversion:
        """How to convert the value of ``spec``: the scaler_unit (or why it is unreadable),
        the value context and the enum names; fixed once the scaler is known."""
        scaler = self.scalers.get((spec.class_id, spec.obis))
        applies = isinstance(scaler, ScalerUnit) and spec.attribute == 2
        return (
            scaler,
            values.context_for(spec.class_id, spec.obis, spec.attribute),
            values.ENUM_NAMES.get((spec.class_id, spec.attribute)),
            scaler.scaler if applies and isinstance(scaler, ScalerUnit) else None,
            scaler.unit_info if applies and isinstance(scaler, ScalerUnit) else None,
        )

    def _convert(
        self,
        spec: RegisterSpec,
        result: Data | DataAccessResult | MalformedResult,
        how: _Conversion,
    ) -> RegisterReading:
        if isinstance(result, DataAccessResult):
            return RegisterReading(
                spec, error=result.label, error_code=f"data-access.{result.label}"
            )
        if isinstance(result, MalformedResult):
            return RegisterReading(spec, error=result.message, error_code=result.code)
        scaler, context, enum_names, scaler_value, unit = how
        if isinstance(scaler, str):
            return RegisterReading(
                spec,
                raw=result,
                error=f"scaler_unit unreadable: {scaler}",
                error_code="register.scaler_unit",
            )
        number = values.convert_integer(result, scaler_value)
        if number is not None:
            return RegisterReading(spec, number, result, scaler_value, unit)
        converted = values.convert(
            result, context=context, scaler=scaler_value, enum_names=enum_names
        )
        if not converted.ok:
            return RegisterReading(
                spec, raw=result, error=converted.error, error_code=converted.error_code
            )
        return RegisterReading(
            spec,
            converted.value,
            result,
            scaler_value,
            unit,
            quality=converted.quality,
            label=converted.label,
        )

    # -- objects and profiles ----------------------------------------------------------------

    def object_list(self) -> Procedure[tuple[ObjectListEntry, ...]]:
        """The objects this association can reach (Association LN attribute 2)."""
        data = yield from self.get(
            AttributeDescriptor(int(InterfaceClass.ASSOCIATION_LN), ASSOCIATION_LN, 2)
        )
        return cosem.parse_object_list(data)

    def capture_objects(self, profile: Obis) -> Procedure[tuple[CaptureObject, ...]]:
        """A profile generic's columns (attribute 3), cached per association."""
        if profile not in self._capture_objects:
            data = yield from self.get(
                AttributeDescriptor(int(InterfaceClass.PROFILE_GENERIC), profile, 3)
            )
            self._capture_objects[profile] = cosem.parse_capture_objects(data)
        return self._capture_objects[profile]

    def read_profile(
        self,
        profile: Obis,
        *,
        start: CosemDateTime | _dt.datetime | None = None,
        end: CosemDateTime | _dt.datetime | None = None,
        from_entry: int | None = None,
        to_entry: int = 0,
    ) -> Procedure[ProfileData]:
        """Rows of a profile's buffer by time range, by entry range, or all of them.

        Columns that are registers are scaled with their scaler_unit.
        """
        columns = yield from self.capture_objects(profile)
        access: SelectiveAccess | None = None
        if start is not None or end is not None:
            if start is None or end is None:
                raise ValueError("a profile range needs both start and end")
            access = cosem.range_descriptor(start, end)
        elif from_entry is not None:
            access = cosem.entry_descriptor(from_entry, to_entry)
        buffer = yield from self.get(
            AttributeDescriptor(int(InterfaceClass.PROFILE_GENERIC), profile, 2), access
        )
        scalers: list[ScalerUnit | None] = []
        for column in columns:
            scaler_attr = cosem.scaler_unit_attribute(column.class_id, column.obis)
            if scaler_attr is None or column.attribute_index != 2:
                scalers.append(None)
                continue
            key = (column.class_id, column.obis)
            if key not in self.scalers:
                try:
                    data = yield from self.get(scaler_attr)
                    self.scalers[key] = cosem.ScalerUnit.from_data(data)
                except DataAccessError as exc:
                    self.scalers[key] = exc.name
            cached = self.scalers[key]
            scalers.append(cached if isinstance(cached, ScalerUnit) else None)
        if buffer.type is not DataType.ARRAY or not isinstance(buffer.value, tuple):
            raise RemoteProtocolError(
                f"profile {profile} buffer is {buffer.type.name}, not an array",
                code="client.bad_profile",
            )
        rows = []
        for entry in buffer.value:
            cells = entry.value if isinstance(entry.value, tuple) else (entry,)
            row: list[Any] = []
            for i, cell in enumerate(cells):
                scaler = scalers[i] if i < len(scalers) else None
                value = cell.to_python()
                if scaler is not None and cell.type in _NUMERIC:
                    row.append(values.convert(cell, scaler=scaler.scaler).value)
                elif isinstance(value, CosemDateTime):
                    row.append(_cosem_dt(value))
                elif _is_date_time_column(columns, i) and isinstance(value, bytes):
                    # Profiles carry the clock as a 12-byte octet-string.
                    row.append(
                        _cosem_dt(CosemDateTime.from_bytes(value)) if len(value) == 12 else value
                    )
                elif cell.type is DataType.FLOAT32 and isinstance(value, float):
                    row.append(values.float32_shortest(value))
                else:
                    row.append(value)
            rows.append(tuple(row))
        units = tuple(s.unit_info if s is not None else None for s in scalers)
        return ProfileData(columns, units, tuple(rows))


#: How a register's value is converted: scaler_unit (or why it is unreadable), context, enums,
#: The scaler and unit are the ones that apply (the value attribute of a register), or None.
_Conversion = tuple[
    ScalerUnit | str | None,
    values.ValueContext,
    dict[int, str] | None,
    int | None,
    Unit | None,
]


@attrs.frozen
class _ReadPlan:
    """The steady state of :meth:`DlmsClient.read_registers` for one list of registers."""

    specs: tuple[RegisterSpec, ...]
    wanted: tuple[AttributeDescriptor, ...]
    conversions: tuple[_Conversion, ...]


#: Read plans by registers and scalers, and the scaler_units met, shared by the associations
#: (bounded like the descriptors: emptied when full).
_PLANS: dict[tuple[tuple[RegisterSpec, ...], tuple[ScalerUnit | str | None, ...]], _ReadPlan] = {}
_SCALERS: dict[ScalerUnit, ScalerUnit] = {}


def _is_date_time_column(columns: tuple[CaptureObject, ...], index: int) -> bool:
    if index >= len(columns):
        return False
    column = columns[index]
    return column.class_id == InterfaceClass.CLOCK and column.attribute_index == 2


def _cosem_dt(value: CosemDateTime) -> Any:
    try:
        return value.to_datetime()
    except (ProtocolError, ValueError):
        return str(value)


def _describe(attribute: AttributeDescriptor) -> str:
    return f"{attribute.obis} attribute {attribute.attribute_id}"


def _scaler_or_error(
    result: Data | DataAccessResult | MalformedResult, key: tuple[int, Obis]
) -> ScalerUnit | str:
    if isinstance(result, DataAccessResult):
        return result.label
    if isinstance(result, MalformedResult):
        return result.message
    try:
        scaler = ScalerUnit.from_data(result, f"{key[1]} scaler_unit")
    except ProtocolError as exc:
        return exc.message
    # Meters of a fleet report the same few: one object each.
    if len(_SCALERS) >= _SHARED_MAX:
        _SCALERS.clear()
    return _SCALERS.setdefault(scaler, scaler)
