"""ACSE and the GET/SET/ACTION services of a simulated meter, sans-IO (CosemServer alone)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from bridge.simulator.cosem_server import PUBLIC_CLIENT, CosemServer
from bridge.simulator.faults import Faults
from bridge.simulator.meter import Meter, MeterSettings
from bridge.simulator.models import get_model
from codec.acse import (
    AARE,
    AARQ,
    RLRE,
    RLRQ,
    AcseServiceUser,
    ApplicationContext,
    AssociationResult,
    AuthenticationMechanism,
    Conformance,
    InitiateRequest,
)
from codec.apdu import (
    ActionRequestNormal,
    ActionResponseNormal,
    ActionResult,
    AttributeDescriptor,
    DataAccessResult,
    ExceptionResponse,
    ExceptionServiceError,
    GetRequestNext,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithDatablock,
    GetResponseWithList,
    InitiateError,
    InvokeId,
    MethodDescriptor,
    SelectiveAccess,
    SetRequestNormal,
    SetResponseNormal,
    StateError,
    decode_apdu,
    encode_apdu,
)
from codec.axdr import Data, decode_data
from codec.cosem import CaptureObject, entry_descriptor, parse_object_list, range_descriptor
from codec.cosem_time import CosemDateTime
from codec.obis import Obis

WALL = 1_790_000_000.0  # 2026-09-21T14:13:20Z
ALL = Conformance.GET | Conformance.SET | Conformance.ACTION | Conformance.SELECTIVE_ACCESS
ALL |= Conformance.MULTIPLE_REFERENCES | Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ
INVOKE = InvokeId(5)


def make(settings: MeterSettings | None = None, model: str = "single-phase") -> CosemServer:
    return CosemServer(Meter.create(0, 0, settings or MeterSettings(), get_model(model)))


def call(server: CosemServer, apdu: Any, *, client: int = 1, wall: float = WALL) -> Any:
    answer = server.handle(encode_apdu(apdu), client, wall)
    assert answer is not None
    return decode_apdu(answer)


def associate(
    server: CosemServer,
    *,
    password: bytes | None = b"00000000",
    client: int = 1,
    conformance: Conformance = ALL,
    max_pdu: int = 0xFFFF,
    version: int = 6,
    mechanism: AuthenticationMechanism | None = None,
    context: ApplicationContext = ApplicationContext.LOGICAL_NAME,
) -> AARE:
    if mechanism is None:
        mechanism = (
            AuthenticationMechanism.NONE if password is None else AuthenticationMechanism.LOW
        )
    aarq = AARQ(
        context,
        mechanism,
        password,
        InitiateRequest(conformance, max_pdu, version),
    )
    aare = call(server, aarq, client=client)
    assert isinstance(aare, AARE)
    return aare


def get(
    server: CosemServer,
    class_id: int,
    obis: str,
    attribute: int,
    access: SelectiveAccess | None = None,
    *,
    wall: float = WALL,
) -> Any:
    response = call(
        server,
        GetRequestNormal(
            INVOKE, AttributeDescriptor(class_id, Obis.parse(obis), attribute), access
        ),
        wall=wall,
    )
    return response


def get_value(
    server: CosemServer,
    class_id: int,
    obis: str,
    attribute: int,
    access: SelectiveAccess | None = None,
    *,
    wall: float = WALL,
) -> Any:
    response = get(server, class_id, obis, attribute, access, wall=wall)
    assert isinstance(response, GetResponseNormal), response
    assert response.invoke == INVOKE
    assert isinstance(response.result, Data), response.result
    return response.result


# -- ACSE -----------------------------------------------------------------------------------------


def test_association_negotiates_conformance_and_pdu() -> None:
    server = make(MeterSettings(max_pdu=700))
    proposal = Conformance.GET | Conformance.GENERAL_BLOCK_TRANSFER | Conformance.SELECTIVE_ACCESS
    aare = associate(server, conformance=proposal, max_pdu=300)
    assert aare.result == AssociationResult.ACCEPTED
    assert aare.mechanism == AuthenticationMechanism.LOW
    assert aare.initiate_response is not None
    assert (
        aare.initiate_response.negotiated_conformance
        == Conformance.GET | Conformance.SELECTIVE_ACCESS
    )
    assert aare.initiate_response.server_max_receive_pdu_size == 700
    assert aare.initiate_response.negotiated_dlms_version == 6
    assert aare.initiate_response.vaa_name == 0x0007
    assert server.association is not None
    assert server.association.client_max_pdu == 300


@pytest.mark.parametrize(
    ("kwargs", "diagnostic"),
    [
        ({"password": b"wrong"}, AcseServiceUser.AUTHENTICATION_FAILURE),
        ({"password": None}, AcseServiceUser.AUTHENTICATION_REQUIRED),
        (
            {"mechanism": AuthenticationMechanism.HIGH_GMAC},
            AcseServiceUser.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED,
        ),
        (
            {"context": ApplicationContext.SHORT_NAME},
            AcseServiceUser.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED,
        ),
    ],
)
def test_association_refusals(kwargs: dict[str, Any], diagnostic: int) -> None:
    server = make()
    aare = associate(server, **kwargs)
    assert aare.result == AssociationResult.REJECTED_PERMANENT
    assert aare.diagnostic.value == diagnostic
    assert server.association is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"version": 5}, InitiateError.DLMS_VERSION_TOO_LOW),
        ({"conformance": Conformance.GENERAL_PROTECTION}, InitiateError.INCOMPATIBLE_CONFORMANCE),
        ({"max_pdu": 8}, InitiateError.PDU_SIZE_TOO_SHORT),
    ],
)
def test_initiate_errors(kwargs: dict[str, Any], error: int) -> None:
    aare = associate(make(), **kwargs)
    assert aare.result == AssociationResult.REJECTED_PERMANENT
    assert aare.confirmed_service_error is not None
    assert aare.confirmed_service_error.error_value == error


def test_public_client_reads_without_password_but_cannot_write() -> None:
    server = make()
    assert (
        associate(server, password=None, client=PUBLIC_CLIENT).result == AssociationResult.ACCEPTED
    )
    assert get_value(server, 3, "1-1:32.7.0", 2).type is not None
    response = call(
        server,
        SetRequestNormal(
            INVOKE, AttributeDescriptor(1, Obis(0, 0, 96, 13, 0), 2), None, Data.octet_string(b"x")
        ),
    )
    assert response == SetResponseNormal(INVOKE, DataAccessResult.READ_WRITE_DENIED)


def test_meter_without_password_accepts_any_client() -> None:
    server = make(MeterSettings(password=None))
    assert associate(server, password=None).result == AssociationResult.ACCEPTED


def test_refuse_fault_rejects_transiently_and_counts() -> None:
    server = make()
    server.meter.faults.apply(Faults(refuse=1.0), 0.0)
    aare = associate(server)
    assert aare.result == AssociationResult.REJECTED_TRANSIENT
    assert server.meter.counters.refusals == 1
    assert server.meter.faults.injected == {"refuse": 1}


def test_release_ends_the_association() -> None:
    server = make()
    associate(server)
    assert call(server, RLRQ()) == RLRE()
    assert server.association is None
    assert server.meter.counters.releases == 1
    assert isinstance(get(server, 3, "1-1:32.7.0", 2), ExceptionResponse)


# -- exceptions -----------------------------------------------------------------------------------


def test_requests_before_association_get_an_exception() -> None:
    server = make()
    assert get(server, 3, "1-1:32.7.0", 2) == ExceptionResponse(
        StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.OPERATION_NOT_POSSIBLE
    )


def test_unknown_apdu_and_unnegotiated_service() -> None:
    server = make()
    associate(server, conformance=Conformance.GET)
    assert decode_apdu(server.handle(b"\xcc\x01\x02", 1, WALL) or b"") == ExceptionResponse(
        StateError.SERVICE_UNKNOWN, ExceptionServiceError.SERVICE_NOT_SUPPORTED
    )
    action = ActionRequestNormal(INVOKE, MethodDescriptor(8, Obis(0, 0, 1, 0, 0), 6), Data.long(1))
    assert call(server, action) == ExceptionResponse(
        StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.SERVICE_NOT_SUPPORTED
    )


def test_request_longer_than_the_server_pdu() -> None:
    server = make(MeterSettings(max_pdu=64))
    associate(server)
    request = GetRequestWithList(
        INVOKE, tuple((AttributeDescriptor(3, Obis(1, 1, 32, 7, 0), 2), None) for _ in range(8))
    )
    assert call(server, request) == ExceptionResponse(
        StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.PDU_TOO_LONG
    )


# -- GET ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_id", "obis", "attribute", "result"),
    [
        (3, "1-1:99.7.0", 2, DataAccessResult.OBJECT_UNDEFINED),
        (1, "1-1:32.7.0", 2, DataAccessResult.OBJECT_CLASS_INCONSISTENT),
        (3, "1-1:32.7.0", 4, DataAccessResult.OBJECT_UNDEFINED),
        (3, "1-1:32.7.0", 0, DataAccessResult.OBJECT_UNDEFINED),
        (15, "0-0:40.0.0.255", 7, DataAccessResult.READ_WRITE_DENIED),
    ],
)
def test_get_errors(class_id: int, obis: str, attribute: int, result: DataAccessResult) -> None:
    server = make()
    associate(server)
    assert get(server, class_id, obis, attribute) == GetResponseNormal(INVOKE, result)


def test_selective_access_where_unsupported() -> None:
    server = make()
    associate(server)
    access = entry_descriptor(1, 2)
    assert get(server, 3, "1-1:32.7.0", 2, access).result == DataAccessResult.OTHER_REASON
    bad_selector = SelectiveAccess(3, Data.null())
    assert get(server, 7, "1-0:99.1.0.255", 2, bad_selector).result == DataAccessResult.OTHER_REASON
    malformed = SelectiveAccess(1, Data.long(3))
    assert get(server, 7, "1-0:99.1.0.255", 2, malformed).result == DataAccessResult.TYPE_UNMATCHED


def test_get_with_list_mixes_values_and_errors() -> None:
    server = make()
    associate(server)
    items = (
        (AttributeDescriptor(3, Obis(1, 1, 32, 7, 0), 2), None),
        (AttributeDescriptor(3, Obis(1, 1, 77, 7, 0), 2), None),
        (AttributeDescriptor(3, Obis(1, 1, 1, 8, 0), 3), None),
    )
    response = call(server, GetRequestWithList(INVOKE, items))
    assert isinstance(response, GetResponseWithList)
    voltage, missing, scaler_unit = response.results
    assert isinstance(voltage, Data)
    assert missing == DataAccessResult.OBJECT_UNDEFINED
    assert scaler_unit == Data.structure((Data.integer(0), Data.enum(30)))


def test_block_transfer_of_the_object_list() -> None:
    server = make()
    associate(server, max_pdu=128)
    response = get(server, 15, "0-0:40.0.0.255", 2)
    raw = bytearray()
    blocks = []
    while True:
        assert isinstance(response, GetResponseWithDatablock)
        assert len(encode_apdu(response)) <= 128
        assert isinstance(response.raw_data, bytes)
        raw += response.raw_data
        blocks.append(response.block_number)
        if response.last_block:
            break
        if response.block_number == 2:
            # The client lost block 2 and asks again for what follows block 1.
            assert call(server, GetRequestNext(INVOKE, 1)) == response
        response = call(server, GetRequestNext(INVOKE, response.block_number))
    assert blocks == list(range(1, len(blocks) + 1))
    # The last block can be asked for again too; nothing comes after it.
    assert call(server, GetRequestNext(INVOKE, blocks[-1] - 1)) == response
    value, _ = decode_data(bytes(raw))
    entries = parse_object_list(value)
    assert len(entries) == len(server.meter.model.objects)
    assert (
        call(server, GetRequestNext(INVOKE, 99)).raw_data
        == DataAccessResult.NO_LONG_GET_IN_PROGRESS
    )


def test_block_number_out_of_order_aborts_the_long_get() -> None:
    server = make()
    associate(server, max_pdu=128)
    first = get(server, 15, "0-0:40.0.0.255", 2)
    assert isinstance(first, GetResponseWithDatablock)
    wrong = call(server, GetRequestNext(INVOKE, 7))
    assert wrong.raw_data == DataAccessResult.DATA_BLOCK_NUMBER_INVALID
    again = call(server, GetRequestNext(INVOKE, 1))
    assert again.raw_data == DataAccessResult.NO_LONG_GET_IN_PROGRESS


def test_too_long_without_block_transfer() -> None:
    server = make()
    associate(server, max_pdu=128, conformance=Conformance.GET)
    assert get(server, 15, "0-0:40.0.0.255", 2).result == DataAccessResult.OTHER_REASON


def test_three_phase_model_has_phases_two_and_three() -> None:
    server = make(model="three-phase")
    associate(server)
    for obis in ("1-1:52.7.0", "1-1:51.7.0", "1-1:72.7.0", "1-1:71.7.0"):
        assert get_value(server, 3, obis, 2).value > 0
    single = make()
    associate(single)
    assert get(single, 3, "1-1:52.7.0", 2).result == DataAccessResult.OBJECT_UNDEFINED


# -- load profile ---------------------------------------------------------------------------------


def _rows(data: Data) -> list[list[Any]]:
    return [[column.value for column in row.value] for row in data.value]  # type: ignore[union-attr]


def test_profile_by_entry_and_column() -> None:
    server = make()
    associate(server)
    full = _rows(get_value(server, 7, "1-0:99.1.0.255", 2))
    assert len(full) == 960
    assert get_value(server, 7, "1-0:99.1.0.255", 7).value == 960
    part = _rows(get_value(server, 7, "1-0:99.1.0.255", 2, entry_descriptor(3, 5, 2, 3)))
    assert part == [row[1:3] for row in full[2:5]]
    last = _rows(get_value(server, 7, "1-0:99.1.0.255", 2, entry_descriptor(960, 0)))
    assert last == full[-1:]
    assert _rows(get_value(server, 7, "1-0:99.1.0.255", 2, entry_descriptor(2000, 0))) == []


def test_profile_by_range_with_selected_columns() -> None:
    server = make()
    associate(server)
    now = dt.datetime.fromtimestamp(WALL, dt.UTC)
    energy_column = CaptureObject(3, Obis(1, 1, 1, 8, 0), 2)
    access = range_descriptor(now - dt.timedelta(hours=1), now, selected_values=[energy_column])
    rows = _rows(get_value(server, 7, "1-0:99.1.0.255", 2, access))
    assert len(rows) == 4
    assert all(len(row) == 1 for row in rows)
    full = _rows(get_value(server, 7, "1-0:99.1.0.255", 2))
    assert [row[1] for row in full[-4:]] == [row[0] for row in rows]
    times = _rows(
        get_value(
            server, 7, "1-0:99.1.0.255", 2, range_descriptor(now - dt.timedelta(hours=1), now)
        )
    )
    assert CosemDateTime.from_bytes(times[-1][0]).to_datetime() == dt.datetime(
        2026, 9, 21, 14, 0, tzinfo=dt.UTC
    )


# -- SET and ACTION -------------------------------------------------------------------------------

CLOCK = "0-0:1.0.0.255"


def _clock(server: CosemServer, wall: float = WALL) -> dt.datetime:
    return CosemDateTime.from_bytes(get_value(server, 8, CLOCK, 2, wall=wall).value).to_datetime()


def test_set_clock_moves_the_meters_time() -> None:
    server = make()
    associate(server)
    assert _clock(server) == dt.datetime.fromtimestamp(WALL, dt.UTC)
    target = dt.datetime(2030, 1, 1, 0, 0, tzinfo=dt.UTC)
    value = Data.octet_string(CosemDateTime.from_datetime(target).to_bytes())
    response = call(
        server, SetRequestNormal(INVOKE, AttributeDescriptor(8, Obis.parse(CLOCK), 2), None, value)
    )
    assert response == SetResponseNormal(INVOKE, DataAccessResult.SUCCESS)
    assert _clock(server, WALL + 10) == target + dt.timedelta(seconds=10)
    wrong = call(
        server,
        SetRequestNormal(INVOKE, AttributeDescriptor(8, Obis.parse(CLOCK), 2), None, Data.long(1)),
    )
    assert wrong.result == DataAccessResult.TYPE_UNMATCHED


def test_set_consumer_message_and_read_only_registers() -> None:
    server = make()
    associate(server)
    message = AttributeDescriptor(1, Obis(0, 0, 96, 13, 0), 2)
    assert (
        call(server, SetRequestNormal(INVOKE, message, None, Data.octet_string(b"hello"))).result
        == DataAccessResult.SUCCESS
    )
    assert get_value(server, 1, "0-0:96.13.0.255", 2) == Data.octet_string(b"hello")
    too_long = Data.octet_string(bytes(65))
    assert (
        call(server, SetRequestNormal(INVOKE, message, None, too_long)).result
        == DataAccessResult.OTHER_REASON
    )
    voltage = AttributeDescriptor(3, Obis(1, 1, 32, 7, 0), 2)
    assert (
        call(server, SetRequestNormal(INVOKE, voltage, None, Data.long_unsigned(1))).result
        == DataAccessResult.READ_WRITE_DENIED
    )
    missing = AttributeDescriptor(1, Obis(0, 0, 96, 99, 0), 2)
    assert (
        call(server, SetRequestNormal(INVOKE, missing, None, Data.long_unsigned(1))).result
        == DataAccessResult.OBJECT_UNDEFINED
    )


def test_clock_actions() -> None:
    server = make()
    associate(server)
    shift = ActionRequestNormal(INVOKE, MethodDescriptor(8, Obis.parse(CLOCK), 6), Data.long(120))
    assert call(server, shift) == ActionResponseNormal(INVOKE, ActionResult.SUCCESS)
    assert _clock(server) == dt.datetime.fromtimestamp(WALL + 120, dt.UTC)
    quarter = ActionRequestNormal(
        INVOKE, MethodDescriptor(8, Obis.parse(CLOCK), 1), Data.integer(0)
    )
    assert call(server, quarter).result == ActionResult.SUCCESS
    # 14:15:20 rounds to the nearest quarter hour.
    assert _clock(server) == dt.datetime(2026, 9, 21, 14, 15, tzinfo=dt.UTC)
    too_far = ActionRequestNormal(INVOKE, MethodDescriptor(8, Obis.parse(CLOCK), 6), Data.long(901))
    assert call(server, too_far).result == ActionResult.OTHER_REASON
    wrong_type = ActionRequestNormal(
        INVOKE, MethodDescriptor(8, Obis.parse(CLOCK), 6), Data.unsigned(1)
    )
    assert call(server, wrong_type).result == ActionResult.TYPE_UNMATCHED


@pytest.mark.parametrize(
    ("class_id", "obis", "method", "result"),
    [
        (8, CLOCK, 7, ActionResult.OBJECT_UNDEFINED),
        (3, "1-1:1.8.0", 1, ActionResult.READ_WRITE_DENIED),
        (3, "1-1:77.8.0", 1, ActionResult.OBJECT_UNDEFINED),
        (1, CLOCK, 1, ActionResult.OBJECT_CLASS_INCONSISTENT),
    ],
)
def test_action_errors(class_id: int, obis: str, method: int, result: ActionResult) -> None:
    server = make()
    associate(server)
    request = ActionRequestNormal(INVOKE, MethodDescriptor(class_id, Obis.parse(obis), method))
    assert call(server, request) == ActionResponseNormal(INVOKE, result)
