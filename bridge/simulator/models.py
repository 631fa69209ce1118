"""The meter models and their COSEM objects.

``single-phase`` is the field meter the original system read (registers, scalers and units from
its documentation); ``three-phase`` adds the voltages and currents of phases L2 and L3 and its
active power is the sum of the phases. Both also have a clock, the logical device name, a serial
number, a firmware identifier (1-0:0.2.0), a disconnect control (0-0:96.3.10, class 70:
remote_disconnect and remote_reconnect), a writable consumer message, the current Association LN
with its object list, a SAP assignment, a load profile (15 minutes by default, see
``--profile-period``) and a standard event log (0-0:99.98.0: clock time and event code 0-0:96.11.0;
5 clock set, 60 remote disconnect, 61 remote reconnect). The clock is settable (SET attribute 2,
shift_time).

Registers (class 3, value attribute 2, scaler_unit attribute 3):

==============  ============  =====================  ======  ====  =================================
key             OBIS          type                   scaler  unit  value
==============  ============  =====================  ======  ====  =================================
voltage_l1      1-1:32.7.0    long-unsigned          -2      V     ~120 V, drifting
current_l1      1-1:31.7.0    long-unsigned          -3      A     ~1.3 A, varying
frequency       1-1:14.7.0    long-unsigned          -2      Hz    60.00 Hz +- a few hundredths
active_power    1-1:1.7.0     float32                0       W     V x I x power factor, summed
active_energy   1-1:1.8.0     double-long-unsigned   0       Wh    integral of the power
average_power   1-1:1.5.0     float32                0       W     mean over the last 15 minutes
==============  ============  =====================  ======  ====  =================================

Frequency is a long-unsigned with scaler -2 so that 59.98 Hz is exact on the wire. The objects
are shared by every meter of a model; each getter finds its meter in the request context.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from bridge.simulator.objects import (
    AccessFailure,
    Attribute,
    CosemObject,
    Getter,
    Method,
    constant,
    number_encoder,
)
from bridge.simulator.profile import (
    CAPTURE_PERIOD,
    EVENT_CLOCK_SET,
    EVENT_LOG_CAPACITY,
    EVENT_REMOTE_DISCONNECT,
    EVENT_REMOTE_RECONNECT,
    EventLog,
    LoadProfile,
    date_time_bytes,
)
from codec.apdu import ActionResult, DataAccessResult, SelectiveAccess
from codec.axdr import BitString, Data, DataType, encode_data
from codec.cosem import (
    AssociationLnAttribute,
    ClockAttribute,
    InterfaceClass,
    ProfileGenericAttribute,
    ScalerUnit,
)
from codec.cosem_time import CosemDateTime
from codec.errors import DecodeError
from codec.obis import Obis

if TYPE_CHECKING:
    from bridge.simulator.cosem_server import RequestContext
    from bridge.simulator.meter import Meter

__all__ = ["MODELS", "MeterModel", "ModelRegister", "get_model"]

CLOCK = Obis(0, 0, 1, 0, 0, 255)
LOGICAL_DEVICE_NAME = Obis(0, 0, 42, 0, 0, 255)
SERIAL_NUMBER = Obis(0, 0, 96, 1, 0, 255)
CONSUMER_MESSAGE = Obis(0, 0, 96, 13, 0, 255)
#: The invocation counter the meter expects next from the secured client (public to read).
FRAME_COUNTER = Obis(0, 0, 43, 1, 0, 255)
FIRMWARE_ID = Obis(1, 0, 0, 2, 0, 255)
DISCONNECT_CONTROL = Obis(0, 0, 96, 3, 10, 255)
#: The firmware identifier the simulated meters report.
FIRMWARE_VERSION = "SIM-1.4.2"
ASSOCIATION = Obis(0, 0, 40, 0, 0, 255)
SAP_ASSIGNMENT = Obis(0, 0, 41, 0, 0, 255)
LOAD_PROFILE = Obis(1, 0, 99, 1, 0, 255)
EVENT_LOG = Obis(0, 0, 99, 98, 0, 255)
EVENT_CODE = Obis(0, 0, 96, 11, 0, 255)
ENERGY = Obis(1, 1, 1, 8, 0, 255)
AVERAGE_POWER = Obis(1, 1, 1, 5, 0, 255)

#: The longest consumer message a SET may write.
MAX_MESSAGE = 64
#: Application context "logical name referencing, no ciphering" and mechanism "low security".
_LN_CONTEXT_OID = bytes.fromhex("60857405080101")
_LLS_MECHANISM_OID = bytes.fromhex("60857405080201")
_NO_MECHANISM_OID = bytes.fromhex("60857405080200")
_UTC = _dt.UTC


@attrs.frozen
class ModelRegister:
    """One register: where it is, how it is encoded, and what it measures (at meter time t)."""

    key: str
    obis: Obis
    dtype: DataType
    scaler: int
    unit: int
    quantity: Callable[[Meter, float], float]
    #: ``encode`` as one function (made once).
    encoder: Callable[[Meter, float], bytes] = attrs.field(init=False, eq=False, repr=False)

    @encoder.default
    def _make_encoder(self) -> Callable[[Meter, float], bytes]:
        return number_encoder(self.dtype, self.quantity, 10.0**self.scaler)

    def raw(self, meter: Meter, t: float) -> float:
        """The unscaled value on the wire."""
        return self.quantity(meter, t) / 10.0**self.scaler

    def encode(self, meter: Meter, t: float) -> bytes:
        """The value attribute, encoded."""
        return self.encoder(meter, t)


def _average_power(meter: Meter, t: float) -> float:
    period = meter.settings.profile_period
    end = math.floor(t / period) * period
    return LoadProfile.average_power(meter.physics, end, period)


def _register(
    key: str, obis: str, dtype: DataType, scaler: int, unit: int, f: Callable[[Meter, float], float]
) -> ModelRegister:
    return ModelRegister(key, Obis.parse(obis), dtype, scaler, unit, f)


_LU, _DLU, _F32 = DataType.LONG_UNSIGNED, DataType.DOUBLE_LONG_UNSIGNED, DataType.FLOAT32
_COMMON = (
    _register("voltage_l1", "1-1:32.7.0", _LU, -2, 35, lambda m, t: m.physics.voltage(t, 0)),
    _register("current_l1", "1-1:31.7.0", _LU, -3, 33, lambda m, t: m.physics.current(t, 0)),
    _register("frequency", "1-1:14.7.0", _LU, -2, 44, lambda m, t: m.physics.frequency_at(t)),
    _register("active_power", "1-1:1.7.0", _F32, 0, 27, lambda m, t: m.physics.power(t)),
    _register("active_energy", "1-1:1.8.0", _DLU, 0, 30, lambda m, t: m.energy_wh(t)),
    _register("average_power", "1-1:1.5.0", _F32, 0, 27, _average_power),
)
_PHASES_23 = (
    _register("voltage_l2", "1-1:52.7.0", _LU, -2, 35, lambda m, t: m.physics.voltage(t, 1)),
    _register("current_l2", "1-1:51.7.0", _LU, -3, 33, lambda m, t: m.physics.current(t, 1)),
    _register("voltage_l3", "1-1:72.7.0", _LU, -2, 35, lambda m, t: m.physics.voltage(t, 2)),
    _register("current_l3", "1-1:71.7.0", _LU, -3, 33, lambda m, t: m.physics.current(t, 2)),
)


def _constant(attribute_id: int, value: Data) -> Attribute:
    """An attribute that never changes, for both the general and the steady-state GET."""
    raw = encode_data(value)

    def plain(meter: Meter, t: float) -> bytes:
        return raw

    return Attribute(attribute_id, constant(value), plain=plain)


def _logical_name(obis: Obis) -> Attribute:
    return _constant(1, Data.octet_string(obis.to_bytes()))


def _register_object(spec: ModelRegister) -> CosemObject:
    encoder = spec.encoder

    def value(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
        return encoder(ctx.meter, ctx.now)

    scaler_unit = ScalerUnit(spec.scaler, spec.unit).to_data()
    return CosemObject(
        InterfaceClass.REGISTER,
        0,
        spec.obis,
        3,
        {
            1: _logical_name(spec.obis),
            2: Attribute(2, value, plain=encoder),
            3: _constant(3, scaler_unit),
        },
        method_count=1,
    )


def _data_object(
    obis: Obis, get: Getter, set_: Callable[[RequestContext, Data], None] | None = None
) -> CosemObject:
    return CosemObject(
        InterfaceClass.DATA, 0, obis, 2, {1: _logical_name(obis), 2: Attribute(2, get, set_)}
    )


# -- clock ----------------------------------------------------------------------------------------


def _clock_time(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    return encode_data(Data.octet_string(date_time_bytes(ctx.now)))


def _set_clock_time(ctx: RequestContext, value: Data) -> None:
    if (
        value.type == DataType.OCTET_STRING
        and isinstance(value.value, bytes)
        and len(value.value) == 12
    ):
        dt = CosemDateTime.from_bytes(value.value)
    elif value.type == DataType.DATE_TIME and isinstance(value.value, CosemDateTime):
        dt = value.value
    else:
        raise AccessFailure(DataAccessResult.TYPE_UNMATCHED, "clock time must be a date-time")
    try:
        target = dt.to_datetime(default_tz=_UTC).timestamp()
    except DecodeError as exc:
        raise AccessFailure(DataAccessResult.TYPE_UNMATCHED, str(exc)) from None
    ctx.meter.clock_offset = target - ctx.wall
    ctx.meter.record_event(target, EVENT_CLOCK_SET)


def _adjust_to_quarter(ctx: RequestContext, params: Data | None) -> Data | None:
    quarter = round(ctx.now / CAPTURE_PERIOD) * CAPTURE_PERIOD  # adjust_to_quarter: 15 minutes
    ctx.meter.clock_offset += quarter - ctx.now
    return None


def _shift_time(ctx: RequestContext, params: Data | None) -> Data | None:
    if params is None or params.type != DataType.LONG or not isinstance(params.value, int):
        raise AccessFailure(ActionResult.TYPE_UNMATCHED, "shift_time takes a long (seconds)")
    if not -900 <= params.value <= 900:
        raise AccessFailure(ActionResult.OTHER_REASON, "shift_time is limited to +-900 s")
    ctx.meter.clock_offset += params.value
    return None


_UNSPECIFIED_DATE_TIME = CosemDateTime(None, None, None, None, None, None, None).to_bytes()


def _clock_object() -> CosemObject:
    return CosemObject(
        InterfaceClass.CLOCK,
        0,
        CLOCK,
        9,
        {
            1: _logical_name(CLOCK),
            ClockAttribute.TIME: Attribute(2, _clock_time, _set_clock_time),
            ClockAttribute.TIME_ZONE: Attribute(3, constant(Data.long(0))),
            ClockAttribute.STATUS: Attribute(4, constant(Data.unsigned(0))),
            ClockAttribute.DAYLIGHT_SAVINGS_BEGIN: Attribute(
                5, constant(Data.octet_string(_UNSPECIFIED_DATE_TIME))
            ),
            ClockAttribute.DAYLIGHT_SAVINGS_END: Attribute(
                6, constant(Data.octet_string(_UNSPECIFIED_DATE_TIME))
            ),
            ClockAttribute.DAYLIGHT_SAVINGS_DEVIATION: Attribute(7, constant(Data.integer(0))),
            ClockAttribute.DAYLIGHT_SAVINGS_ENABLED: Attribute(8, constant(Data.boolean(False))),
            ClockAttribute.CLOCK_BASE: Attribute(9, constant(Data.enum(1))),  # internal crystal
        },
        method_count=6,
        methods={1: Method(1, _adjust_to_quarter), 6: Method(6, _shift_time)},
    )


# -- data objects ---------------------------------------------------------------------------------


def _ldn(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    return encode_data(Data.octet_string(ctx.meter.logical_device_name))


def _serial(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    return encode_data(Data.visible_string(ctx.meter.serial))


def _frame_counter(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    seen = ctx.meter.client_counters.values()
    return encode_data(Data.double_long_unsigned(min(max(seen, default=0) + 1, 0xFFFFFFFF)))


def _message(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    return encode_data(Data.octet_string(ctx.meter.message))


def _set_message(ctx: RequestContext, value: Data) -> None:
    if value.type not in (DataType.OCTET_STRING, DataType.VISIBLE_STRING):
        raise AccessFailure(DataAccessResult.TYPE_UNMATCHED, "consumer message is a string")
    raw = value.value.encode("latin-1") if isinstance(value.value, str) else value.value
    assert isinstance(raw, bytes)
    if len(raw) > MAX_MESSAGE:
        raise AccessFailure(DataAccessResult.OTHER_REASON, f"longer than {MAX_MESSAGE} bytes")
    ctx.meter.message = raw


def _sap_assignment(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    sap = ctx.meter.settings.server_logical or 1
    entry = Data.structure(
        (Data.long_unsigned(sap), Data.octet_string(ctx.meter.logical_device_name))
    )
    return encode_data(Data.array((entry,)))


def _firmware(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    return encode_data(Data.visible_string(FIRMWARE_VERSION))


# -- disconnect control ---------------------------------------------------------------------------

#: control_state values of the disconnect control (class 70).
_DISCONNECTED, _CONNECTED = 0, 1


def _output_state(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    return encode_data(Data.boolean(ctx.meter.supply_connected))


def _control_state(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    return encode_data(Data.enum(_CONNECTED if ctx.meter.supply_connected else _DISCONNECTED))


def _switch(connected: bool) -> Callable[[RequestContext, Data | None], Data | None]:
    def invoke(ctx: RequestContext, params: Data | None) -> Data | None:
        if params is None or params.type != DataType.INTEGER:
            raise AccessFailure(ActionResult.TYPE_UNMATCHED, "takes an integer (0)")
        ctx.meter.supply_connected = connected
        code = EVENT_REMOTE_RECONNECT if connected else EVENT_REMOTE_DISCONNECT
        ctx.meter.record_event(ctx.now, code)
        return None

    return invoke


def _disconnect_control_object() -> CosemObject:
    return CosemObject(
        InterfaceClass.DISCONNECT_CONTROL,
        0,
        DISCONNECT_CONTROL,
        4,
        {
            1: _logical_name(DISCONNECT_CONTROL),
            2: Attribute(2, _output_state),
            3: Attribute(3, _control_state),
            4: Attribute(4, constant(Data.enum(1))),  # control mode 1: remote and manual
        },
        method_count=2,
        methods={1: Method(1, _switch(False)), 2: Method(2, _switch(True))},
    )


# -- association LN -------------------------------------------------------------------------------


def _partners(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    server_sap = ctx.meter.settings.server_logical or 1
    return encode_data(
        Data.structure((Data.integer(ctx.association.client_sap), Data.long_unsigned(server_sap)))
    )


def _xdlms_context(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    a = ctx.association
    return encode_data(
        Data.structure(
            (
                Data.bit_string(BitString(24, int(a.conformance).to_bytes(3, "big"))),
                Data.long_unsigned(ctx.meter.settings.max_pdu),
                Data.long_unsigned(a.client_max_pdu),
                Data.unsigned(6),
                Data.integer(0),
                Data.octet_string(b""),
            )
        )
    )


def _mechanism(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    oid = _LLS_MECHANISM_OID if ctx.association.authenticated else _NO_MECHANISM_OID
    return encode_data(Data.octet_string(oid))


def _association_object(object_list: Callable[[], bytes]) -> CosemObject:
    def get_list(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
        return object_list()

    return CosemObject(
        InterfaceClass.ASSOCIATION_LN,
        1,
        ASSOCIATION,
        9,
        {
            1: _logical_name(ASSOCIATION),
            AssociationLnAttribute.OBJECT_LIST: Attribute(2, get_list),
            AssociationLnAttribute.ASSOCIATED_PARTNERS_ID: Attribute(3, _partners),
            AssociationLnAttribute.APPLICATION_CONTEXT_NAME: Attribute(
                4, constant(Data.octet_string(_LN_CONTEXT_OID))
            ),
            AssociationLnAttribute.XDLMS_CONTEXT_INFO: Attribute(5, _xdlms_context),
            AssociationLnAttribute.AUTHENTICATION_MECHANISM_NAME: Attribute(6, _mechanism),
            AssociationLnAttribute.ASSOCIATION_STATUS: Attribute(8, constant(Data.enum(2))),
        },
        method_count=6,
    )


# -- load profile ---------------------------------------------------------------------------------


def _event_code(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
    code = ctx.meter.events[-1][1] if ctx.meter.events else 0
    return encode_data(Data.unsigned(code))


def _profile_object(profile: LoadProfile, obis: Obis = LOAD_PROFILE) -> CosemObject:
    def buffer(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
        return profile.read(ctx.meter, ctx.now, access)

    def entries_in_use(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
        return encode_data(Data.double_long_unsigned(profile.entry_count(ctx.meter)))

    def capture_period(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
        period = 0 if isinstance(profile, EventLog) else ctx.meter.settings.profile_period
        return encode_data(Data.double_long_unsigned(period))

    def profile_entries(ctx: RequestContext, access: SelectiveAccess | None) -> bytes:
        if isinstance(profile, EventLog):
            return encode_data(Data.double_long_unsigned(EVENT_LOG_CAPACITY))
        return encode_data(Data.double_long_unsigned(profile.entry_count(ctx.meter)))

    no_sort_object = Data.structure(
        (Data.long_unsigned(0), Data.octet_string(bytes(6)), Data.integer(0), Data.long_unsigned(0))
    )
    return CosemObject(
        InterfaceClass.PROFILE_GENERIC,
        1,
        obis,
        8,
        {
            1: _logical_name(obis),
            ProfileGenericAttribute.BUFFER: Attribute(2, buffer, selectors=(1, 2)),
            ProfileGenericAttribute.CAPTURE_OBJECTS: Attribute(
                3, constant(Data.array(c.to_data() for c in profile.columns))
            ),
            ProfileGenericAttribute.CAPTURE_PERIOD: Attribute(4, capture_period),
            ProfileGenericAttribute.SORT_METHOD: Attribute(5, constant(Data.enum(1))),  # fifo
            ProfileGenericAttribute.SORT_OBJECT: Attribute(6, constant(no_sort_object)),
            ProfileGenericAttribute.ENTRIES_IN_USE: Attribute(7, entries_in_use),
            ProfileGenericAttribute.PROFILE_ENTRIES: Attribute(8, profile_entries),
        },
        method_count=2,
    )


# -- models ---------------------------------------------------------------------------------------


@attrs.define(eq=False)
class MeterModel:
    """A kind of meter: its registers and COSEM objects, shared by all meters of the kind."""

    name: str
    phase_count: int
    registers: tuple[ModelRegister, ...]
    profile: LoadProfile
    objects: dict[tuple[int, Obis], CosemObject] = attrs.field(factory=dict)
    by_obis: dict[Obis, CosemObject] = attrs.field(factory=dict)
    object_list: bytes = b""
    #: Steady-state GET-with-list plans by request bytes (see ``cosem_server.steady_plan``).
    steady_plans: dict[bytes, object] = attrs.field(factory=dict)

    @classmethod
    def build(cls, name: str, phase_count: int, registers: tuple[ModelRegister, ...]) -> MeterModel:
        """Create the model's objects and encode its object list once."""
        profile = LoadProfile(
            (
                (InterfaceClass.CLOCK, CLOCK, ClockAttribute.TIME),
                (InterfaceClass.REGISTER, ENERGY, 2),
                (InterfaceClass.REGISTER, AVERAGE_POWER, 2),
            )
        )
        model = cls(name, phase_count, registers, profile)
        event_log = EventLog(
            (
                (InterfaceClass.CLOCK, CLOCK, ClockAttribute.TIME),
                (InterfaceClass.DATA, EVENT_CODE, 2),
            )
        )
        objects = [
            _clock_object(),
            _data_object(LOGICAL_DEVICE_NAME, _ldn),
            _data_object(SERIAL_NUMBER, _serial),
            _data_object(CONSUMER_MESSAGE, _message, _set_message),
            _data_object(FRAME_COUNTER, _frame_counter),
            _data_object(FIRMWARE_ID, _firmware),
            _disconnect_control_object(),
            *(_register_object(spec) for spec in registers),
            _profile_object(profile),
            _profile_object(event_log, EVENT_LOG),
            _data_object(EVENT_CODE, _event_code),
            CosemObject(
                InterfaceClass.SAP_ASSIGNMENT,
                0,
                SAP_ASSIGNMENT,
                2,
                {1: _logical_name(SAP_ASSIGNMENT), 2: Attribute(2, _sap_assignment)},
                method_count=1,
            ),
            _association_object(lambda: model.object_list),
        ]
        for obj in objects:
            model.objects[(obj.class_id, obj.obis)] = obj
            model.by_obis[obj.obis] = obj
        model.object_list = encode_data(Data.array(obj.list_entry().to_data() for obj in objects))
        return model

    def register(self, key: str) -> ModelRegister:
        """The register called ``key`` (e.g. ``"voltage_l1"``)."""
        for spec in self.registers:
            if spec.key == key:
                return spec
        raise KeyError(f"model {self.name} has no register {key!r}")


def _build_models() -> dict[str, MeterModel]:
    return {
        "single-phase": MeterModel.build("single-phase", 1, _COMMON),
        "three-phase": MeterModel.build("three-phase", 3, _COMMON + _PHASES_23),
    }


MODELS: dict[str, MeterModel] = _build_models()


def get_model(name: str) -> MeterModel:
    """The model called ``name``; raises :class:`ValueError` naming the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown meter model {name!r} (known: {', '.join(MODELS)})") from None
