"""xDLMS APDUs with logical-name referencing (DLMS UA 1000-2, the A-XDR encodings).

Every APDU is a frozen value. :func:`encode_apdu` turns one into bytes, :func:`decode_apdu` turns
bytes back into one, dispatching on the first byte (the tag). Both directions are implemented for
the request and response of each service, because the client builds requests and parses
responses while the meter simulator does the opposite. The ACSE APDUs (AARQ, AARE, RLRQ, RLRE)
live in :mod:`codec.acse`; :func:`encode_apdu` and :func:`decode_apdu` handle them too.

Decoding never trusts its input: anything malformed raises :class:`~codec.errors.DecodeError`
with the byte offset of the problem, and arbitrary bytes raise nothing else. Encoding a field
that is out of range (an invoke-id of 16, a class-id of 70000) raises
:class:`~codec.errors.EncodeError`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import attrs

from codec.axdr import Data, decode_data, decode_length, encode_data, encode_length
from codec.cosem_time import CosemDateTime
from codec.errors import DataAccessError, DecodeError, EncodeError, ServiceError
from codec.fast_decode import decode_get_with_list
from codec.obis import Obis

if TYPE_CHECKING:
    from codec.acse import AARE, AARQ, RLRE, RLRQ

# -- tags -----------------------------------------------------------------------------------------


class Tag(enum.IntEnum):
    """The first byte of each xDLMS and ACSE APDU handled here."""

    AARQ = 0x60
    AARE = 0x61
    RLRQ = 0x62
    RLRE = 0x63
    CONFIRMED_SERVICE_ERROR = 0x0E
    DATA_NOTIFICATION = 0x0F
    GET_REQUEST = 0xC0
    SET_REQUEST = 0xC1
    ACTION_REQUEST = 0xC3
    GET_RESPONSE = 0xC4
    SET_RESPONSE = 0xC5
    ACTION_RESPONSE = 0xC7
    EXCEPTION_RESPONSE = 0xD8
    GENERAL_BLOCK_TRANSFER = 0xE0


# The CHOICE numbers that follow the GET/SET/ACTION tags.
_NORMAL = 1
_GET_NEXT = 2
_GET_WITH_LIST = 3
_GET_WITH_DATABLOCK = 2


# -- result codes ---------------------------------------------------------------------------------


class DataAccessResult(enum.IntEnum):
    """Data-Access-Result: the outcome of a GET or SET of one attribute."""

    SUCCESS = 0
    HARDWARE_FAULT = 1
    TEMPORARY_FAILURE = 2
    READ_WRITE_DENIED = 3
    OBJECT_UNDEFINED = 4
    OBJECT_CLASS_INCONSISTENT = 9
    OBJECT_UNAVAILABLE = 11
    TYPE_UNMATCHED = 12
    SCOPE_OF_ACCESS_VIOLATED = 13
    DATA_BLOCK_UNAVAILABLE = 14
    LONG_GET_ABORTED = 15
    NO_LONG_GET_IN_PROGRESS = 16
    LONG_SET_ABORTED = 17
    NO_LONG_SET_IN_PROGRESS = 18
    DATA_BLOCK_NUMBER_INVALID = 19
    OTHER_REASON = 250

    @property
    def label(self) -> str:
        """The Green Book spelling, e.g. ``object-undefined``."""
        return _label(self)


class ActionResult(enum.IntEnum):
    """Action-Result: the outcome of an ACTION (method invocation)."""

    SUCCESS = 0
    HARDWARE_FAULT = 1
    TEMPORARY_FAILURE = 2
    READ_WRITE_DENIED = 3
    OBJECT_UNDEFINED = 4
    OBJECT_CLASS_INCONSISTENT = 9
    OBJECT_UNAVAILABLE = 11
    TYPE_UNMATCHED = 12
    SCOPE_OF_ACCESS_VIOLATED = 13
    DATA_BLOCK_UNAVAILABLE = 14
    LONG_ACTION_ABORTED = 15
    NO_LONG_ACTION_IN_PROGRESS = 16
    OTHER_REASON = 250

    @property
    def label(self) -> str:
        """The Green Book spelling, e.g. ``read-write-denied``."""
        return _label(self)


class StateError(enum.IntEnum):
    """The state-error of an exception-response."""

    SERVICE_NOT_ALLOWED = 1
    SERVICE_UNKNOWN = 2


class ExceptionServiceError(enum.IntEnum):
    """The service-error of an exception-response."""

    OPERATION_NOT_POSSIBLE = 1
    SERVICE_NOT_SUPPORTED = 2
    OTHER_REASON = 3
    PDU_TOO_LONG = 4
    DECIPHERING_ERROR = 5
    INVOCATION_COUNTER_ERROR = 6


class ConfirmedService(enum.IntEnum):
    """Which service a confirmed-service-error answers (the outer CHOICE)."""

    INITIATE_ERROR = 1
    GET_STATUS = 2
    GET_NAME_LIST = 3
    GET_VARIABLE_ATTRIBUTE = 4
    READ = 5
    WRITE = 6
    GET_DATA_SET_ATTRIBUTE = 7
    GET_TI_ATTRIBUTE = 8
    CHANGE_SCOPE = 9
    START = 10
    STOP = 11
    RESUME = 12
    MAKE_USABLE = 13
    INITIATE_LOAD = 14
    LOAD_SEGMENT = 15
    TERMINATE_LOAD = 16
    INITIATE_UPLOAD = 17
    UPLOAD_SEGMENT = 18
    TERMINATE_UPLOAD = 19


class ServiceErrorType(enum.IntEnum):
    """The ServiceError CHOICE: which family the error value belongs to."""

    APPLICATION_REFERENCE = 0
    HARDWARE_RESOURCE = 1
    VDE_STATE_ERROR = 2
    SERVICE = 3
    DEFINITION = 4
    ACCESS = 5
    INITIATE = 6
    LOAD_DATA_SET = 7
    CHANGE_SCOPE = 8
    TASK = 9
    OTHER = 10


class ApplicationReferenceError(enum.IntEnum):
    """ServiceError application-reference values."""

    OTHER = 0
    TIME_ELAPSED = 1
    APPLICATION_UNREACHABLE = 2
    APPLICATION_REFERENCE_INVALID = 3
    APPLICATION_CONTEXT_UNSUPPORTED = 4
    PROVIDER_COMMUNICATION_ERROR = 5
    DECIPHERING_ERROR = 6


class HardwareResourceError(enum.IntEnum):
    """ServiceError hardware-resource values."""

    OTHER = 0
    MEMORY_UNAVAILABLE = 1
    PROCESSOR_RESOURCE_UNAVAILABLE = 2
    MASS_STORAGE_UNAVAILABLE = 3
    OTHER_RESOURCE_UNAVAILABLE = 4


class VdeStateError(enum.IntEnum):
    """ServiceError vde-state-error values."""

    OTHER = 0
    NO_DLMS_CONTEXT = 1
    LOADING_DATA_SET = 2
    STATUS_NOCHANGE = 3
    STATUS_INOPERABLE = 4


class ServiceServiceError(enum.IntEnum):
    """ServiceError service values."""

    OTHER = 0
    PDU_SIZE = 1
    SERVICE_UNSUPPORTED = 2


class DefinitionError(enum.IntEnum):
    """ServiceError definition values."""

    OTHER = 0
    OBJECT_UNDEFINED = 1
    OBJECT_CLASS_INCONSISTENT = 2
    OBJECT_ATTRIBUTE_INCONSISTENT = 3


class AccessError(enum.IntEnum):
    """ServiceError access values."""

    OTHER = 0
    SCOPE_OF_ACCESS_VIOLATED = 1
    OBJECT_ACCESS_VIOLATED = 2
    HARDWARE_FAULT = 3
    OBJECT_UNAVAILABLE = 4


class InitiateError(enum.IntEnum):
    """ServiceError initiate values (why an xDLMS InitiateRequest was refused)."""

    OTHER = 0
    DLMS_VERSION_TOO_LOW = 1
    INCOMPATIBLE_CONFORMANCE = 2
    PDU_SIZE_TOO_SHORT = 3
    REFUSED_BY_THE_VDE_HANDLER = 4


class LoadDataSetError(enum.IntEnum):
    """ServiceError load-data-set values."""

    OTHER = 0
    PRIMITIVE_OUT_OF_SEQUENCE = 1
    NOT_LOADABLE = 2
    DATASET_SIZE_TOO_LARGE = 3
    NOT_AWAITED_SEGMENT = 4
    INTERPRETATION_FAILURE = 5
    STORAGE_FAILURE = 6
    DATA_SET_NOT_READY = 7


class TaskError(enum.IntEnum):
    """ServiceError task values."""

    OTHER = 0
    NO_REMOTE_CONTROL = 1
    TI_STOPPED = 2
    TI_RUNNING = 3
    TI_UNUSABLE = 4


#: The enumeration of error values for each ServiceError family.
SERVICE_ERROR_VALUES: dict[ServiceErrorType, type[enum.IntEnum]] = {
    ServiceErrorType.APPLICATION_REFERENCE: ApplicationReferenceError,
    ServiceErrorType.HARDWARE_RESOURCE: HardwareResourceError,
    ServiceErrorType.VDE_STATE_ERROR: VdeStateError,
    ServiceErrorType.SERVICE: ServiceServiceError,
    ServiceErrorType.DEFINITION: DefinitionError,
    ServiceErrorType.ACCESS: AccessError,
    ServiceErrorType.INITIATE: InitiateError,
    ServiceErrorType.LOAD_DATA_SET: LoadDataSetError,
    ServiceErrorType.TASK: TaskError,
}


def _label(member: enum.Enum) -> str:
    return member.name.lower().replace("_", "-")


def _label_of(enum_type: type[enum.IntEnum], value: int) -> str:
    """The hyphenated name of ``value`` in ``enum_type``, or ``unknown-<value>``."""
    try:
        return _label(enum_type(value))
    except ValueError:
        return f"unknown-{value}"


_E = TypeVar("_E", bound=enum.IntEnum)


def _known(enum_type: type[enum.IntEnum], value: int) -> int:
    """The member of ``enum_type`` for ``value`` if there is one, else the plain int."""
    try:
        return enum_type(value)
    except ValueError:
        return int(value)


# attrs converters: known codes become members, unknown ones stay ints so they can be reported.
def _to_state_error(value: int) -> int:
    return _known(StateError, value)


def _to_exception_service_error(value: int) -> int:
    return _known(ExceptionServiceError, value)


def _to_confirmed_service(value: int) -> int:
    return _known(ConfirmedService, value)


def _to_service_error_type(value: int) -> int:
    return _known(ServiceErrorType, value)


def raise_for_result(result: Data | DataAccessResult | ActionResult | None, what: str) -> None:
    """Raise :class:`~codec.errors.DataAccessError` unless ``result`` is data or success.

    ``what`` names the object for the message, e.g. ``"1-1:32.7.0 attribute 2"``, which gives
    ``"1-1:32.7.0 attribute 2: object-undefined"``.
    """
    if isinstance(result, (DataAccessResult, ActionResult)) and result != 0:
        raise DataAccessError(
            f"{what}: {result.label}", result=int(result), name=result.name.lower()
        )


def expect_data(result: Data | DataAccessResult | MalformedResult, what: str) -> Data:
    """Return the data of a GET result, raising for any data-access-result (even success)
    and :class:`~codec.errors.DecodeError` for a result that did not decode."""
    if isinstance(result, MalformedResult):
        raise DecodeError(f"{what}: {result.message}", code=result.code, offset=result.offset)
    raise_for_result(result, what)
    if isinstance(result, DataAccessResult):
        raise ServiceError(
            f"{what}: the meter answered success without any data", code="service.no_data"
        )
    return result


# -- building blocks ------------------------------------------------------------------------------


@attrs.frozen
class InvokeId:
    """Invoke-Id-And-Priority: invoke-id (bits 0-3), confirmed (bit 6), high priority (bit 7)."""

    invoke_id: int = 1
    confirmed: bool = True
    high_priority: bool = True

    def to_byte(self) -> int:
        """The encoded byte; the reserved bits 4 and 5 are zero."""
        if not 0 <= self.invoke_id <= 15:
            raise EncodeError(
                f"invoke-id must be 0..15, got {self.invoke_id}", code="apdu.out_of_range"
            )
        return (
            self.invoke_id | (0x40 if self.confirmed else 0) | (0x80 if self.high_priority else 0)
        )

    @classmethod
    def from_byte(cls, value: int) -> InvokeId:
        """Decode the byte; the reserved bits are ignored."""
        return cls(value & 0x0F, bool(value & 0x40), bool(value & 0x80))


@attrs.frozen
class AttributeDescriptor:
    """Cosem-Attribute-Descriptor: which attribute of which object."""

    class_id: int
    obis: Obis
    attribute_id: int

    def __str__(self) -> str:
        return f"{self.class_id}/{self.obis}/{self.attribute_id}"


@attrs.frozen
class MethodDescriptor:
    """Cosem-Method-Descriptor: which method of which object."""

    class_id: int
    obis: Obis
    method_id: int

    def __str__(self) -> str:
        return f"{self.class_id}/{self.obis}/{self.method_id}"


@attrs.frozen
class SelectiveAccess:
    """Selective-Access-Descriptor: access selector and its parameters."""

    selector: int
    parameters: Data


GetDataResult: TypeAlias = "Data | DataAccessResult"


# -- GET ------------------------------------------------------------------------------------------


@attrs.frozen
class GetRequestNormal:
    """GET.request normal: read one attribute, optionally with selective access."""

    invoke: InvokeId
    attribute: AttributeDescriptor
    access: SelectiveAccess | None = None


@attrs.frozen
class GetRequestNext:
    """GET.request next: ask for the block after ``block_number`` of a long GET."""

    invoke: InvokeId
    block_number: int


@attrs.frozen
class GetRequestWithList:
    """GET.request with list: read several attributes at once."""

    invoke: InvokeId
    items: tuple[tuple[AttributeDescriptor, SelectiveAccess | None], ...]


@attrs.frozen
class GetResponseNormal:
    """GET.response normal: the value, or why there is none."""

    invoke: InvokeId
    #: A :class:`MalformedResult` when the value did not decode (only from a lenient decode).
    result: Data | DataAccessResult | MalformedResult


@attrs.frozen
class GetResponseWithDatablock:
    """GET.response with datablock: one block of a long GET (raw bytes of the encoded value)."""

    invoke: InvokeId
    last_block: bool
    block_number: int
    raw_data: bytes | DataAccessResult


@attrs.frozen
class MalformedResult:
    """A GET-with-list result that could not be decoded (nor any result after it).

    Decoding is lenient here: the results before a malformed one are kept, and this stands for
    each result from the malformed one on, so that the other registers are still delivered.
    """

    code: str
    message: str
    offset: int | None = None


#: Results of a GET-with-list after the first malformed one that get a :class:`MalformedResult`
#: each; a longer claimed list is cut here (no meter answers that many attributes at once).
MAX_MALFORMED_RESULTS = 1024


@attrs.frozen
class GetResponseWithList:
    """GET.response with list: one result per requested attribute, in order."""

    invoke: InvokeId
    results: tuple[Data | DataAccessResult | MalformedResult, ...]

    @property
    def malformed(self) -> int:
        """How many results could not be decoded."""
        return sum(1 for r in self.results if isinstance(r, MalformedResult))


# -- SET ------------------------------------------------------------------------------------------


@attrs.frozen
class SetRequestNormal:
    """SET.request normal: write one attribute."""

    invoke: InvokeId
    attribute: AttributeDescriptor
    access: SelectiveAccess | None
    value: Data


@attrs.frozen
class SetResponseNormal:
    """SET.response normal."""

    invoke: InvokeId
    result: DataAccessResult


# -- ACTION ---------------------------------------------------------------------------------------


@attrs.frozen
class ActionRequestNormal:
    """ACTION.request normal: invoke one method, with optional parameters."""

    invoke: InvokeId
    method: MethodDescriptor
    parameters: Data | None = None


@attrs.frozen
class ActionResponseNormal:
    """ACTION.response normal: the action result and optional return parameters."""

    invoke: InvokeId
    result: ActionResult
    return_data: Data | DataAccessResult | None = None


# -- errors and unsolicited APDUs -----------------------------------------------------------------


@attrs.frozen
class ExceptionResponse:
    """Exception-Response (0xD8): the meter could not even start to process the request.

    Unknown codes are kept as plain ints so that the error can still be reported.
    """

    state_error: int = attrs.field(converter=_to_state_error)
    service_error: int = attrs.field(converter=_to_exception_service_error)
    #: Only with service-error invocation-counter-error: the counter the meter expects.
    invocation_counter: int | None = None

    def error(self) -> ServiceError:
        """The error to raise for this response."""
        state = _label_of(StateError, self.state_error)
        service = _label_of(ExceptionServiceError, self.service_error)
        return ServiceError(
            f"the meter answered with exception-response {state}/{service}",
            code=f"service.exception.{service.replace('-', '_')}",
        )


@attrs.frozen
class ConfirmedServiceError:
    """Confirmed-Service-Error (0x0E): which service failed, the error family and its value.

    Unknown codes are kept as plain ints so that the error can still be reported.
    """

    service: int = attrs.field(converter=_to_confirmed_service)
    error_type: int = attrs.field(converter=_to_service_error_type)
    error_value: int = attrs.field(converter=int)

    @property
    def error_name(self) -> str:
        """The hyphenated name of the error value, e.g. ``dlms-version-too-low``."""
        try:
            values = SERVICE_ERROR_VALUES[ServiceErrorType(self.error_type)]
        except (ValueError, KeyError):
            return f"unknown-{self.error_value}"
        return _label_of(values, self.error_value)

    def describe(self) -> str:
        """E.g. ``initiate-error: initiate/incompatible-conformance``."""
        service = _label_of(ConfirmedService, self.service)
        family = _label_of(ServiceErrorType, self.error_type)
        return f"{service}: {family}/{self.error_name}"

    def error(self) -> ServiceError:
        """The error to raise for this response."""
        return ServiceError(
            f"the meter answered with confirmed-service-error {self.describe()}",
            code="service.confirmed_service_error",
        )


@attrs.frozen
class DataNotification:
    """Data-Notification (0x0F): a pushed value, e.g. from a meter's push setup."""

    long_invoke_id: int
    date_time: bytes | None
    body: Data


@attrs.frozen
class GeneralBlockTransfer:
    """General-Block-Transfer (0xE0): one block of a longer APDU."""

    last_block: bool
    streaming: bool
    window: int
    block_number: int
    block_number_ack: int
    block_data: bytes


XdlmsApdu: TypeAlias = (
    "GetRequestNormal | GetRequestNext | GetRequestWithList | GetResponseNormal"
    " | GetResponseWithDatablock | GetResponseWithList | SetRequestNormal | SetResponseNormal"
    " | ActionRequestNormal | ActionResponseNormal | ExceptionResponse | ConfirmedServiceError"
    " | DataNotification | GeneralBlockTransfer"
)
Apdu: TypeAlias = "XdlmsApdu | AARQ | AARE | RLRQ | RLRE"
#: The confirmed requests a client sends (and an association carries one at a time).
Request: TypeAlias = (
    "GetRequestNormal | GetRequestNext | GetRequestWithList | SetRequestNormal"
    " | ActionRequestNormal"
)


# -- encoding -------------------------------------------------------------------------------------


def _check(value: int, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise EncodeError(
            f"{what} must be an integer {low}..{high}, got {value!r}", code="apdu.out_of_range"
        )
    return value


class _Writer:
    """Accumulates an encoding; every put checks its range."""

    __slots__ = ("out",)

    def __init__(self, *prefix: int) -> None:
        self.out = bytearray(prefix)

    def u8(self, value: int, what: str) -> None:
        self.out.append(_check(value, 0, 0xFF, what))

    def i8(self, value: int, what: str) -> None:
        self.out.append(_check(value, -0x80, 0x7F, what) & 0xFF)

    def u16(self, value: int, what: str) -> None:
        self.out += _check(value, 0, 0xFFFF, what).to_bytes(2, "big")

    def u32(self, value: int, what: str) -> None:
        self.out += _check(value, 0, 0xFFFF_FFFF, what).to_bytes(4, "big")

    def raw(self, data: bytes) -> None:
        self.out += data

    def octet_string(self, data: bytes) -> None:
        self.out += encode_length(len(data))
        self.out += data

    def data(self, value: Data) -> None:
        self.out += encode_data(value)

    def invoke(self, invoke: InvokeId) -> None:
        self.out.append(invoke.to_byte())

    def obis(self, obis: Obis) -> None:
        raw = obis.to_bytes()
        if len(raw) != 6:
            raise EncodeError(
                f"logical name must be 6 bytes, got {len(raw)}", code="apdu.out_of_range"
            )
        self.out += raw

    def attribute(self, attr: AttributeDescriptor) -> None:
        self.u16(attr.class_id, "class-id")
        self.obis(attr.obis)
        self.i8(attr.attribute_id, "attribute-id")

    def method(self, method: MethodDescriptor) -> None:
        self.u16(method.class_id, "class-id")
        self.obis(method.obis)
        self.i8(method.method_id, "method-id")

    def access(self, access: SelectiveAccess | None) -> None:
        if access is None:
            self.out.append(0)
        else:
            self.out.append(1)
            self.u8(access.selector, "access-selector")
            self.data(access.parameters)

    def get_data_result(self, result: Data | DataAccessResult | MalformedResult) -> None:
        if isinstance(result, MalformedResult):
            raise EncodeError(
                f"a malformed result ({result.code}) cannot be encoded", code="apdu.malformed"
            )
        if isinstance(result, DataAccessResult):
            self.out.append(1)
            self.out.append(int(result))
        else:
            self.out.append(0)
            self.data(result)

    def count(self, n: int) -> None:
        self.out += encode_length(n)


def _enc_get_request_normal(w: _Writer, a: GetRequestNormal) -> None:
    w.raw(bytes((Tag.GET_REQUEST, _NORMAL)))
    w.invoke(a.invoke)
    w.attribute(a.attribute)
    w.access(a.access)


def _enc_get_request_next(w: _Writer, a: GetRequestNext) -> None:
    w.raw(bytes((Tag.GET_REQUEST, _GET_NEXT)))
    w.invoke(a.invoke)
    w.u32(a.block_number, "block-number")


def _enc_get_request_with_list(w: _Writer, a: GetRequestWithList) -> None:
    w.raw(bytes((Tag.GET_REQUEST, _GET_WITH_LIST)))
    w.invoke(a.invoke)
    w.count(len(a.items))
    for attr, access in a.items:
        w.attribute(attr)
        w.access(access)


def _enc_get_response_normal(w: _Writer, a: GetResponseNormal) -> None:
    w.raw(bytes((Tag.GET_RESPONSE, _NORMAL)))
    w.invoke(a.invoke)
    w.get_data_result(a.result)


def _enc_get_response_with_datablock(w: _Writer, a: GetResponseWithDatablock) -> None:
    w.raw(bytes((Tag.GET_RESPONSE, _GET_WITH_DATABLOCK)))
    w.invoke(a.invoke)
    w.u8(1 if a.last_block else 0, "last-block")
    w.u32(a.block_number, "block-number")
    if isinstance(a.raw_data, DataAccessResult):
        w.raw(bytes((1, a.raw_data)))
    else:
        w.u8(0, "raw-data")
        w.octet_string(a.raw_data)


def _enc_get_response_with_list(w: _Writer, a: GetResponseWithList) -> None:
    w.raw(bytes((Tag.GET_RESPONSE, _GET_WITH_LIST)))
    w.invoke(a.invoke)
    w.count(len(a.results))
    for result in a.results:
        w.get_data_result(result)


def _enc_set_request_normal(w: _Writer, a: SetRequestNormal) -> None:
    w.raw(bytes((Tag.SET_REQUEST, _NORMAL)))
    w.invoke(a.invoke)
    w.attribute(a.attribute)
    w.access(a.access)
    w.data(a.value)


def _enc_set_response_normal(w: _Writer, a: SetResponseNormal) -> None:
    w.raw(bytes((Tag.SET_RESPONSE, _NORMAL)))
    w.invoke(a.invoke)
    w.u8(int(DataAccessResult(a.result)), "data-access-result")


def _enc_action_request_normal(w: _Writer, a: ActionRequestNormal) -> None:
    w.raw(bytes((Tag.ACTION_REQUEST, _NORMAL)))
    w.invoke(a.invoke)
    w.method(a.method)
    if a.parameters is None:
        w.u8(0, "parameters")
    else:
        w.u8(1, "parameters")
        w.data(a.parameters)


def _enc_action_response_normal(w: _Writer, a: ActionResponseNormal) -> None:
    w.raw(bytes((Tag.ACTION_RESPONSE, _NORMAL)))
    w.invoke(a.invoke)
    w.u8(int(ActionResult(a.result)), "action-result")
    if a.return_data is None:
        w.u8(0, "return-parameters")
    else:
        w.u8(1, "return-parameters")
        w.get_data_result(a.return_data)


def _enc_exception_response(w: _Writer, a: ExceptionResponse) -> None:
    w.u8(Tag.EXCEPTION_RESPONSE, "tag")
    w.u8(a.state_error, "state-error")
    w.u8(a.service_error, "service-error")
    if a.service_error == ExceptionServiceError.INVOCATION_COUNTER_ERROR:
        if a.invocation_counter is None:
            raise EncodeError(
                "exception-response invocation-counter-error needs the invocation counter",
                code="apdu.missing_field",
            )
        w.u32(a.invocation_counter, "invocation-counter")
    elif a.invocation_counter is not None:
        raise EncodeError(
            "an invocation counter only goes with service-error invocation-counter-error",
            code="apdu.unexpected_field",
        )


def _enc_confirmed_service_error(w: _Writer, a: ConfirmedServiceError) -> None:
    w.u8(Tag.CONFIRMED_SERVICE_ERROR, "tag")
    w.u8(a.service, "confirmed-service-error service")
    w.u8(a.error_type, "service-error type")
    w.u8(a.error_value, "service-error value")


def _enc_data_notification(w: _Writer, a: DataNotification) -> None:
    w.u8(Tag.DATA_NOTIFICATION, "tag")
    w.u32(a.long_invoke_id, "long-invoke-id-and-priority")
    w.octet_string(a.date_time or b"")
    w.data(a.body)


def _enc_general_block_transfer(w: _Writer, a: GeneralBlockTransfer) -> None:
    w.u8(Tag.GENERAL_BLOCK_TRANSFER, "tag")
    _check(a.window, 0, 0x3F, "general-block-transfer window")
    w.u8((0x80 if a.last_block else 0) | (0x40 if a.streaming else 0) | a.window, "block-control")
    w.u16(a.block_number, "block-number")
    w.u16(a.block_number_ack, "block-number-ack")
    w.octet_string(a.block_data)


_ENCODERS: dict[type, Callable[[_Writer, Any], None]] = {
    GetRequestNormal: _enc_get_request_normal,
    GetRequestNext: _enc_get_request_next,
    GetRequestWithList: _enc_get_request_with_list,
    GetResponseNormal: _enc_get_response_normal,
    GetResponseWithDatablock: _enc_get_response_with_datablock,
    GetResponseWithList: _enc_get_response_with_list,
    SetRequestNormal: _enc_set_request_normal,
    SetResponseNormal: _enc_set_response_normal,
    ActionRequestNormal: _enc_action_request_normal,
    ActionResponseNormal: _enc_action_response_normal,
    ExceptionResponse: _enc_exception_response,
    ConfirmedServiceError: _enc_confirmed_service_error,
    DataNotification: _enc_data_notification,
    GeneralBlockTransfer: _enc_general_block_transfer,
}


#: Encoded GET-with-list requests by the identity of their item tuple (kept here, so the id
#: cannot be reused while cached): a poller sends the same list every cycle, and only the
#: invoke-id byte (offset 2) differs. Bounded; emptied when full.
_LIST_REQUESTS: dict[int, tuple[tuple[object, ...], bytes]] = {}
_LIST_REQUESTS_MAX = 4096


def _encode_get_with_list(apdu: GetRequestWithList) -> bytes:
    items = apdu.items
    cached = _LIST_REQUESTS.get(id(items))
    if cached is None or cached[0] is not items:
        w = _Writer()
        _enc_get_request_with_list(w, apdu)
        if len(_LIST_REQUESTS) >= _LIST_REQUESTS_MAX:
            _LIST_REQUESTS.clear()
        _LIST_REQUESTS[id(items)] = (items, bytes(w.out))
        return bytes(w.out)
    encoded = cached[1]
    return encoded[:2] + bytes((apdu.invoke.to_byte(),)) + encoded[3:]


def encode_apdu(apdu: Apdu) -> bytes:
    """Encode any APDU of this module or of :mod:`codec.acse`."""
    if type(apdu) is GetRequestWithList:
        try:
            return _encode_get_with_list(apdu)
        except ValueError as exc:  # as below
            raise EncodeError(
                f"cannot encode {type(apdu).__name__}: {exc}", code="apdu.bad_value"
            ) from exc
    encoder = _ENCODERS.get(type(apdu))
    if encoder is None:
        from codec import acse

        if isinstance(apdu, (acse.AARQ, acse.AARE, acse.RLRQ, acse.RLRE)):
            return acse.encode_acse(apdu)
        raise EncodeError(f"not an APDU: {type(apdu).__name__}", code="apdu.unknown_type")
    w = _Writer()
    try:
        encoder(w, apdu)
    except ValueError as exc:  # an enum field given a value that is not a member
        raise EncodeError(
            f"cannot encode {type(apdu).__name__}: {exc}", code="apdu.bad_value"
        ) from exc
    return bytes(w.out)


# -- decoding -------------------------------------------------------------------------------------


class Reader:
    """A cursor over an APDU that raises :class:`DecodeError` with the offset on any problem."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def fail(
        self, message: str, code: str = "apdu.malformed", offset: int | None = None
    ) -> DecodeError:
        """Build (not raise) a DecodeError at the cursor or at ``offset``."""
        return DecodeError(message, code=code, offset=self.pos if offset is None else offset)

    def need(self, n: int, what: str) -> None:
        left = len(self.buf) - self.pos
        if n > left:
            raise self.fail(
                f"truncated {what}: needs {n} byte{'s' if n != 1 else ''}, {left} left",
                code="apdu.truncated",
            )

    def u8(self, what: str) -> int:
        self.need(1, what)
        self.pos += 1
        return self.buf[self.pos - 1]

    def i8(self, what: str) -> int:
        value = self.u8(what)
        return value - 0x100 if value & 0x80 else value

    def u16(self, what: str) -> int:
        self.need(2, what)
        self.pos += 2
        return int.from_bytes(self.buf[self.pos - 2 : self.pos], "big")

    def i16(self, what: str) -> int:
        value = self.u16(what)
        return value - 0x10000 if value & 0x8000 else value

    def u32(self, what: str) -> int:
        self.need(4, what)
        self.pos += 4
        return int(struct.unpack_from(">I", self.buf, self.pos - 4)[0])

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos])

    def length(self, what: str) -> int:
        self.need(1, what)
        n, self.pos = decode_length(self.buf, self.pos)
        return n

    def octet_string(self, what: str) -> bytes:
        start = self.pos
        n = self.length(f"length of {what}")
        if n > len(self.buf) - self.pos:
            raise self.fail(
                f"{what} claims {n} bytes, only {len(self.buf) - self.pos} left",
                code="apdu.truncated",
                offset=start,
            )
        return self.take(n, what)

    def data(self, what: str) -> Data:
        self.need(1, what)
        value, self.pos = decode_data(self.buf, self.pos)
        return value

    def flag(self, what: str) -> bool:
        """An OPTIONAL presence flag: 0 absent, 1 present, anything else is an error."""
        start = self.pos
        value = self.u8(what)
        if value > 1:
            raise self.fail(f"{what}: presence flag must be 0 or 1, got {value}", offset=start)
        return value == 1

    def enum(self, enum_type: type[_E], what: str) -> _E:
        start = self.pos
        value = self.u8(what)
        try:
            return enum_type(value)
        except ValueError:
            raise self.fail(
                f"unknown {what} {value}", code="apdu.bad_value", offset=start
            ) from None

    def invoke(self) -> InvokeId:
        return InvokeId.from_byte(self.u8("invoke-id-and-priority"))

    def obis(self) -> Obis:
        return Obis.from_bytes(self.take(6, "logical name"))

    def attribute(self) -> AttributeDescriptor:
        class_id = self.u16("class-id")
        obis = self.obis()
        return AttributeDescriptor(class_id, obis, self.i8("attribute-id"))

    def method(self) -> MethodDescriptor:
        class_id = self.u16("class-id")
        obis = self.obis()
        return MethodDescriptor(class_id, obis, self.i8("method-id"))

    def access(self) -> SelectiveAccess | None:
        if not self.flag("access-selection"):
            return None
        selector = self.u8("access-selector")
        return SelectiveAccess(selector, self.data("access-parameters"))

    def get_data_result(self) -> Data | DataAccessResult:
        start = self.pos
        choice = self.u8("get-data-result")
        if choice == 0:
            return self.data("data")
        if choice == 1:
            return self.enum(DataAccessResult, "data-access-result")
        raise self.fail(f"get-data-result choice must be 0 or 1, got {choice}", offset=start)

    def count(self, what: str, min_size: int) -> int:
        """A SEQUENCE OF length, checked against the bytes left (each item >= ``min_size``)."""
        start = self.pos
        n = self.length(what)
        if n * min_size > len(self.buf) - self.pos:
            raise self.fail(
                f"{what} claims {n} items, more than the {len(self.buf) - self.pos}"
                " bytes left can hold",
                code="apdu.truncated",
                offset=start,
            )
        return n

    def result_list(self, what: str) -> tuple[Data | DataAccessResult | MalformedResult, ...]:
        """A SEQUENCE OF Get-Data-Result, leniently: from the first result that does not decode
        on, each result is a :class:`MalformedResult` and the rest of the input is left unread.
        """
        n = self.length(what)
        results: list[Data | DataAccessResult | MalformedResult] = []
        for index in range(n):
            start = self.pos
            try:
                results.append(self.get_data_result())
            except DecodeError as exc:
                self.pos = start
                bad = MalformedResult(
                    exc.code, f"{what} item {index + 1}: {exc.message}", exc.offset
                )
                results.extend([bad] * min(n - index, MAX_MALFORMED_RESULTS))
                break
        return tuple(results)

    def end(self, what: str) -> None:
        if self.pos != len(self.buf):
            raise self.fail(
                f"{len(self.buf) - self.pos} unexpected bytes after the {what}",
                code="apdu.trailing_bytes",
            )


def _dec_get_request(r: Reader, choice: int) -> XdlmsApdu:
    invoke = r.invoke()
    if choice == _NORMAL:
        attribute = r.attribute()
        return GetRequestNormal(invoke, attribute, r.access())
    if choice == _GET_NEXT:
        return GetRequestNext(invoke, r.u32("block-number"))
    n = r.count("attribute-descriptor-list", 10)
    items = []
    for _ in range(n):
        attribute = r.attribute()
        items.append((attribute, r.access()))
    return GetRequestWithList(invoke, tuple(items))


def _dec_get_response(r: Reader, choice: int) -> XdlmsApdu:
    invoke = r.invoke()
    if choice == _NORMAL:
        start = r.pos
        try:
            return GetResponseNormal(invoke, r.get_data_result())
        except DecodeError as exc:
            # The response itself is sound; its value is not: an error of that value only.
            r.pos = len(r.buf)
            return GetResponseNormal(
                invoke, MalformedResult(exc.code, exc.message, exc.offset if exc.offset else start)
            )
    if choice == _GET_WITH_DATABLOCK:
        last_block = r.u8("last-block") != 0
        block_number = r.u32("block-number")
        start = r.pos
        kind = r.u8("datablock result")
        if kind == 0:
            raw: bytes | DataAccessResult = r.octet_string("raw-data")
        elif kind == 1:
            raw = r.enum(DataAccessResult, "data-access-result")
        else:
            raise r.fail(f"datablock result choice must be 0 or 1, got {kind}", offset=start)
        return GetResponseWithDatablock(invoke, last_block, block_number, raw)
    return GetResponseWithList(invoke, r.result_list("get-response result list"))


def _dec_set_request(r: Reader, choice: int) -> XdlmsApdu:
    invoke = r.invoke()
    attribute = r.attribute()
    access = r.access()
    return SetRequestNormal(invoke, attribute, access, r.data("value"))


def _dec_set_response(r: Reader, choice: int) -> XdlmsApdu:
    invoke = r.invoke()
    return SetResponseNormal(invoke, r.enum(DataAccessResult, "data-access-result"))


def _dec_action_request(r: Reader, choice: int) -> XdlmsApdu:
    invoke = r.invoke()
    method = r.method()
    params = r.data("method-invocation-parameters") if r.flag("parameters") else None
    return ActionRequestNormal(invoke, method, params)


def _dec_action_response(r: Reader, choice: int) -> XdlmsApdu:
    invoke = r.invoke()
    result = r.enum(ActionResult, "action-result")
    # Some servers (gurux) end the APDU after a failed result without the absent-flag; at the
    # end of the input that can only mean "no return parameters".
    at_end = r.pos == len(r.buf)
    ret = r.get_data_result() if not at_end and r.flag("return-parameters") else None
    return ActionResponseNormal(invoke, result, ret)


# (tag, CHOICE numbers supported, decoder)
_SERVICES: dict[int, tuple[str, frozenset[int], Callable[[Reader, int], XdlmsApdu]]] = {
    Tag.GET_REQUEST: ("get-request", frozenset({1, 2, 3}), _dec_get_request),
    Tag.GET_RESPONSE: ("get-response", frozenset({1, 2, 3}), _dec_get_response),
    Tag.SET_REQUEST: ("set-request", frozenset({1}), _dec_set_request),
    Tag.SET_RESPONSE: ("set-response", frozenset({1}), _dec_set_response),
    Tag.ACTION_REQUEST: ("action-request", frozenset({1}), _dec_action_request),
    Tag.ACTION_RESPONSE: ("action-response", frozenset({1}), _dec_action_response),
}


def _dec_exception_response(r: Reader) -> ExceptionResponse:
    state = r.u8("state-error")
    service = r.u8("service-error")
    counter = None
    if service == ExceptionServiceError.INVOCATION_COUNTER_ERROR:
        counter = r.u32("invocation-counter")
    return ExceptionResponse(state, service, counter)


def _dec_confirmed_service_error(r: Reader) -> ConfirmedServiceError:
    service = r.u8("confirmed-service-error service")
    error_type = r.u8("service-error type")
    return ConfirmedServiceError(service, error_type, r.u8("service-error value"))


def _dec_data_notification(r: Reader) -> DataNotification:
    long_invoke_id = r.u32("long-invoke-id-and-priority")
    start = r.pos
    first = r.u8("date-time")
    date_time: bytes | None
    if first == 0:
        date_time = None
    elif first == 0x09 and r.pos < len(r.buf) and r.buf[r.pos] == 12:
        # Some meters (Kaifa) send the date-time as a tagged Data octet-string.
        r.pos += 1
        date_time = r.take(12, "date-time")
    else:
        r.pos = start
        date_time = r.octet_string("date-time")
    return DataNotification(long_invoke_id, date_time, r.data("notification-body"))


def _dec_general_block_transfer(r: Reader) -> GeneralBlockTransfer:
    control = r.u8("block-control")
    block_number = r.u16("block-number")
    ack = r.u16("block-number-ack")
    return GeneralBlockTransfer(
        last_block=bool(control & 0x80),
        streaming=bool(control & 0x40),
        window=control & 0x3F,
        block_number=block_number,
        block_number_ack=ack,
        block_data=r.octet_string("block-data"),
    )


_SIMPLE: dict[int, tuple[str, Callable[[Reader], XdlmsApdu]]] = {
    Tag.EXCEPTION_RESPONSE: ("exception-response", _dec_exception_response),
    Tag.CONFIRMED_SERVICE_ERROR: ("confirmed-service-error", _dec_confirmed_service_error),
    Tag.DATA_NOTIFICATION: ("data-notification", _dec_data_notification),
    Tag.GENERAL_BLOCK_TRANSFER: ("general-block-transfer", _dec_general_block_transfer),
}


def decode_xdlms(r: Reader, what: str = "APDU") -> XdlmsApdu:
    """Decode one xDLMS APDU at the reader's cursor (no end-of-buffer check)."""
    start = r.pos
    tag = r.u8(f"{what} tag")
    simple = _SIMPLE.get(tag)
    if simple is not None:
        return simple[1](r)
    service = _SERVICES.get(tag)
    if service is None:
        raise r.fail(f"unknown {what} tag 0x{tag:02X}", code="apdu.unknown_tag", offset=start)
    name, choices, decoder = service
    choice_at = r.pos
    choice = r.u8(f"{name} choice")
    if choice not in choices:
        raise r.fail(
            f"unsupported {name} choice {choice}", code="apdu.unsupported", offset=choice_at
        )
    return decoder(r, choice)


#: Invoke-Id-And-Priority by byte, decoded once (the steady-state reply repeats a few).
_INVOKE_IDS: dict[int, InvokeId] = {}


def _decode_steady(buf: bytes) -> GetResponseWithList | None:
    """The steady-state reply by :func:`codec.fast_decode.decode_get_with_list`, or None."""
    steady = decode_get_with_list(buf)
    if steady is None:
        return None
    invoke = _INVOKE_IDS.get(steady[0])
    if invoke is None:
        invoke = _INVOKE_IDS[steady[0]] = InvokeId.from_byte(steady[0])
    return GetResponseWithList(invoke, steady[1])


def decode_apdu_lenient(data: bytes | bytearray | memoryview) -> tuple[Apdu, bytes]:
    """Decode the APDU at the start of ``data``; return it and the bytes after it.

    Real stacks pad their replies (a Gurux server pads its last GET block): a receiver may
    ignore what follows a complete APDU, as long as it counts it. ACSE APDUs are decoded whole.
    """
    buf = bytes(data)
    if not buf:
        raise DecodeError("empty APDU", code="apdu.truncated", offset=0)
    if buf[0] == Tag.GET_RESPONSE:
        steady = _decode_steady(buf)
        if steady is not None:
            return steady, b""
    if buf[0] in (Tag.AARQ, Tag.AARE, Tag.RLRQ, Tag.RLRE):
        from codec import acse

        return acse.decode_acse(buf), b""
    r = Reader(buf)
    apdu = decode_xdlms(r)
    return apdu, buf[r.pos :]


def decode_apdu(data: bytes | bytearray | memoryview) -> Apdu:
    """Decode one complete APDU (xDLMS or ACSE); trailing bytes are an error."""
    buf = bytes(data)
    if not buf:
        raise DecodeError("empty APDU", code="apdu.truncated", offset=0)
    if buf[0] == Tag.GET_RESPONSE:
        steady = _decode_steady(buf)
        if steady is not None:
            return steady
    if buf[0] in (Tag.AARQ, Tag.AARE, Tag.RLRQ, Tag.RLRE):
        from codec import acse

        return acse.decode_acse(buf)
    r = Reader(buf)
    apdu = decode_xdlms(r)
    results: tuple[object, ...] = ()
    if isinstance(apdu, GetResponseWithList):
        results = apdu.results
    elif isinstance(apdu, GetResponseNormal):
        results = (apdu.result,)
    for result in results:
        if isinstance(result, MalformedResult):
            raise DecodeError(result.message, code=result.code, offset=result.offset)
    r.end(type(apdu).__name__)
    return apdu


# -- describe -------------------------------------------------------------------------------------


def _describe_invoke(invoke: InvokeId) -> dict[str, object]:
    return {
        "invoke_id": invoke.invoke_id,
        "priority": "high" if invoke.high_priority else "normal",
        "service_class": "confirmed" if invoke.confirmed else "unconfirmed",
    }


def _describe_access(access: SelectiveAccess | None) -> object:
    if access is None:
        return None
    return {"selector": access.selector, "parameters": access.parameters.to_json()}


def describe_result(
    result: Data | DataAccessResult | ActionResult | MalformedResult | None,
) -> object:
    """A JSON-safe form of a GET/SET/ACTION result."""
    if result is None:
        return None
    if isinstance(result, MalformedResult):
        return {"malformed": result.code, "message": result.message}
    if isinstance(result, DataAccessResult):
        return {"data_access_result": result.label}
    if isinstance(result, ActionResult):
        return {"action_result": result.label}
    return {"data": result.to_json()}


def _describe_date_time(raw: bytes | None) -> object:
    if raw is None:
        return None
    if len(raw) == 12:
        return Data.date_time(CosemDateTime.from_bytes(raw)).to_json()
    return raw.hex()


def describe(apdu: Apdu) -> dict[str, object]:
    """A JSON-safe summary of an APDU, as printed by ``dlms-bridge decode``."""
    from codec import acse

    if isinstance(apdu, (acse.AARQ, acse.AARE, acse.RLRQ, acse.RLRE)):
        return acse.describe_acse(apdu)
    out: dict[str, object] = {"kind": _KINDS[type(apdu)]}
    if isinstance(
        apdu,
        (
            GetRequestNormal,
            GetRequestNext,
            GetRequestWithList,
            GetResponseNormal,
            GetResponseWithDatablock,
            GetResponseWithList,
            SetRequestNormal,
            SetResponseNormal,
            ActionRequestNormal,
            ActionResponseNormal,
        ),
    ):
        out.update(_describe_invoke(apdu.invoke))
    if isinstance(apdu, GetRequestNormal):
        out["attribute"] = str(apdu.attribute)
        out["access"] = _describe_access(apdu.access)
    elif isinstance(apdu, GetRequestNext):
        out["block_number"] = apdu.block_number
    elif isinstance(apdu, GetRequestWithList):
        out["items"] = [
            {"attribute": str(attr), "access": _describe_access(access)}
            for attr, access in apdu.items
        ]
    elif isinstance(apdu, GetResponseNormal):
        out["result"] = describe_result(apdu.result)
    elif isinstance(apdu, GetResponseWithDatablock):
        out["last_block"] = apdu.last_block
        out["block_number"] = apdu.block_number
        if isinstance(apdu.raw_data, DataAccessResult):
            out["result"] = describe_result(apdu.raw_data)
        else:
            out["raw_data"] = apdu.raw_data.hex()
    elif isinstance(apdu, GetResponseWithList):
        out["results"] = [describe_result(r) for r in apdu.results]
    elif isinstance(apdu, SetRequestNormal):
        out["attribute"] = str(apdu.attribute)
        out["access"] = _describe_access(apdu.access)
        out["value"] = apdu.value.to_json()
    elif isinstance(apdu, SetResponseNormal):
        out["result"] = describe_result(apdu.result)
    elif isinstance(apdu, ActionRequestNormal):
        out["method"] = str(apdu.method)
        out["parameters"] = None if apdu.parameters is None else apdu.parameters.to_json()
    elif isinstance(apdu, ActionResponseNormal):
        out["result"] = describe_result(apdu.result)
        out["return_data"] = describe_result(apdu.return_data)
    elif isinstance(apdu, ExceptionResponse):
        out["state_error"] = _label_of(StateError, apdu.state_error)
        out["service_error"] = _label_of(ExceptionServiceError, apdu.service_error)
        if apdu.invocation_counter is not None:
            out["invocation_counter"] = apdu.invocation_counter
    elif isinstance(apdu, ConfirmedServiceError):
        out["service"] = _label_of(ConfirmedService, apdu.service)
        out["error_type"] = _label_of(ServiceErrorType, apdu.error_type)
        out["error"] = apdu.error_name
    elif isinstance(apdu, DataNotification):
        out["long_invoke_id"] = apdu.long_invoke_id
        out["date_time"] = _describe_date_time(apdu.date_time)
        out["body"] = apdu.body.to_json()
    elif isinstance(apdu, GeneralBlockTransfer):
        out.update(
            last_block=apdu.last_block,
            streaming=apdu.streaming,
            window=apdu.window,
            block_number=apdu.block_number,
            block_number_ack=apdu.block_number_ack,
            block_data=apdu.block_data.hex(),
        )
    return out


_KINDS: dict[type, str] = {
    GetRequestNormal: "get-request-normal",
    GetRequestNext: "get-request-next",
    GetRequestWithList: "get-request-with-list",
    GetResponseNormal: "get-response-normal",
    GetResponseWithDatablock: "get-response-with-datablock",
    GetResponseWithList: "get-response-with-list",
    SetRequestNormal: "set-request-normal",
    SetResponseNormal: "set-response-normal",
    ActionRequestNormal: "action-request-normal",
    ActionResponseNormal: "action-response-normal",
    ExceptionResponse: "exception-response",
    ConfirmedServiceError: "confirmed-service-error",
    DataNotification: "data-notification",
    GeneralBlockTransfer: "general-block-transfer",
}
