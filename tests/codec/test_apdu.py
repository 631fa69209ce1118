"""xDLMS APDUs: round trips, known answers from real meters, malformed input, describe()."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from codec.apdu import (
    ActionRequestNormal,
    ActionResponseNormal,
    ActionResult,
    AttributeDescriptor,
    ConfirmedService,
    ConfirmedServiceError,
    DataAccessResult,
    DataNotification,
    ExceptionResponse,
    ExceptionServiceError,
    GeneralBlockTransfer,
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
    ServiceErrorType,
    SetRequestNormal,
    SetResponseNormal,
    StateError,
    decode_apdu,
    describe,
    encode_apdu,
    expect_data,
    raise_for_result,
)
from codec.axdr import Data, DataType, encode_data
from codec.errors import DataAccessError, DecodeError, EncodeError, ServiceError
from codec.obis import Obis
from tests.codec.conftest import load_vectors
from tests.codec.strategies import data_values


def frame_info(name: str) -> bytes:
    """The information field of a vector frame, after the LLC bytes when there are any.

    Parsed by hand here (format, two addresses ending in a byte with bit 0 set, control, HCS)
    so that these tests do not depend on the HDLC module.
    """
    frames = {f["name"]: bytes.fromhex(f["hex"]) for f in load_vectors()["frames"]}
    frame = frames[name]
    pos = 3  # flag and the two format bytes
    for _ in range(2):
        while not frame[pos] & 1:
            pos += 1
        pos += 1
    pos += 1 + 2  # control, HCS
    info = frame[pos:-3]  # FCS and closing flag
    if info[:2] in (b"\xe6\xe6", b"\xe6\xe7"):
        info = info[3:]
    return info


# -- strategies -----------------------------------------------------------------------------------

invokes = st.builds(InvokeId, st.integers(0, 15), st.booleans(), st.booleans())
obis_codes = st.builds(Obis, *(st.integers(0, 255) for _ in range(6)))
attributes = st.builds(
    AttributeDescriptor, st.integers(0, 0xFFFF), obis_codes, st.integers(-128, 127)
)
methods = st.builds(MethodDescriptor, st.integers(0, 0xFFFF), obis_codes, st.integers(-128, 127))
# Nesting stays well under the decoder's default depth limit.
values = data_values(max_leaves=8)
accesses = st.none() | st.builds(SelectiveAccess, st.integers(0, 255), values)
data_access_results = st.sampled_from(DataAccessResult)
get_data_results = values | data_access_results
u32 = st.integers(0, 0xFFFF_FFFF)

apdus = st.one_of(
    st.builds(GetRequestNormal, invokes, attributes, accesses),
    st.builds(GetRequestNext, invokes, u32),
    st.builds(
        GetRequestWithList,
        invokes,
        st.lists(st.tuples(attributes, accesses), max_size=6).map(tuple),
    ),
    st.builds(GetResponseNormal, invokes, get_data_results),
    st.builds(
        GetResponseWithDatablock,
        invokes,
        st.booleans(),
        u32,
        st.binary(max_size=300) | data_access_results,
    ),
    st.builds(GetResponseWithList, invokes, st.lists(get_data_results, max_size=6).map(tuple)),
    st.builds(SetRequestNormal, invokes, attributes, accesses, values),
    st.builds(SetResponseNormal, invokes, data_access_results),
    st.builds(ActionRequestNormal, invokes, methods, st.none() | values),
    st.builds(
        ActionResponseNormal, invokes, st.sampled_from(ActionResult), st.none() | get_data_results
    ),
    st.builds(ExceptionResponse, st.integers(0, 255), st.integers(0, 5) | st.integers(7, 255)),
    st.builds(
        ExceptionResponse,
        st.integers(0, 255),
        st.just(ExceptionServiceError.INVOCATION_COUNTER_ERROR),
        u32,
    ),
    st.builds(ConfirmedServiceError, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
    st.builds(DataNotification, u32, st.none() | st.binary(min_size=1, max_size=12), values),
    st.builds(
        GeneralBlockTransfer,
        st.booleans(),
        st.booleans(),
        st.integers(0, 63),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.binary(max_size=300),
    ),
)


# -- round trips ----------------------------------------------------------------------------------


@given(apdus)
def test_round_trip(apdu: object) -> None:
    encoded = encode_apdu(apdu)  # type: ignore[arg-type]
    assert decode_apdu(encoded) == apdu
    json.dumps(describe(decode_apdu(encoded)))  # describe() is JSON-safe for every APDU


@given(st.integers(0, 255))
def test_invoke_id_byte(value: int) -> None:
    invoke = InvokeId.from_byte(value)
    assert invoke.invoke_id == value & 0x0F
    assert invoke.confirmed == bool(value & 0x40)
    assert invoke.high_priority == bool(value & 0x80)
    assert invoke.to_byte() == value & 0xCF  # reserved bits 4 and 5 are dropped


def test_invoke_id_default_is_c1() -> None:
    assert InvokeId().to_byte() == 0xC1
    assert InvokeId(7, confirmed=False, high_priority=False).to_byte() == 0x07


# -- known answers --------------------------------------------------------------------------------


def test_vector_get_request_normal() -> None:
    info = frame_info("get-request-normal")
    assert info.hex().upper() == "C001C100010100202000FF0100"
    apdu = decode_apdu(info)
    assert apdu == GetRequestNormal(
        InvokeId(1, confirmed=True, high_priority=True),
        AttributeDescriptor(1, Obis(1, 0, 32, 32, 0, 255), 1),
    )
    assert encode_apdu(apdu) == info


def test_vector_data_notifications() -> None:
    kaifa = decode_apdu(frame_info("kaifa-push-7e-in-data"))
    assert isinstance(kaifa, DataNotification)
    assert kaifa.long_invoke_id == 0x40000000
    # Kaifa tags the date-time as a Data octet-string (09 0C ...): accepted, 12 bytes kept.
    assert kaifa.date_time == bytes.fromhex("07e4020f06011922ff800000")
    assert kaifa.body == Data.structure([Data.double_long_unsigned(0x157E)])
    summary = describe(kaifa)
    assert summary["date_time"] == "2020-02-15T01:25:34"  # deviation unspecified: naive
    assert summary["body"] == [0x157E]

    aidon = decode_apdu(frame_info("aidon-push-7d-in-data"))
    assert isinstance(aidon, DataNotification)
    assert aidon.date_time is None
    (register,) = aidon.body.value  # type: ignore[misc]
    assert register.value[0] == Data.octet_string(Obis.parse("1-0:1.7.0").to_bytes())
    assert register.value[1] == Data.double_long_unsigned(0x067D)


def test_vector_general_block_transfer() -> None:
    apdu = decode_apdu(frame_info("landis-gyr-e450-ui-gbt"))
    assert isinstance(apdu, GeneralBlockTransfer)
    assert (apdu.last_block, apdu.streaming, apdu.window) == (False, True, 0)
    assert (apdu.block_number, apdu.block_number_ack) == (2, 0)
    assert len(apdu.block_data) == 0x6C
    assert apdu.block_data.startswith(bytes.fromhex("020412000309060100010802FF"))


@pytest.mark.parametrize(
    ("apdu", "hex_"),
    [
        (GetRequestNext(InvokeId(2), 5), "C002C200000005"),
        (
            GetRequestNormal(
                InvokeId(1),
                AttributeDescriptor(7, Obis.parse("1-0:99.1.0"), 2),
                SelectiveAccess(2, Data.structure([Data.double_long_unsigned(1)])),
            ),
            "C001C100070100630100FF020102020106" + "00000001",
        ),
        (
            GetRequestWithList(
                InvokeId(1),
                (
                    (AttributeDescriptor(3, Obis.parse("1-1:32.7.0"), 2), None),
                    (AttributeDescriptor(3, Obis.parse("1-1:32.7.0"), 3), None),
                ),
            ),
            "C003C1020003010120070" + "0FF0200" + "0003010120070" + "0FF0300",
        ),
        (GetResponseNormal(InvokeId(1), Data.long_unsigned(12500)), "C401C1001230D4"),
        (GetResponseNormal(InvokeId(1), DataAccessResult.OBJECT_UNDEFINED), "C401C10104"),
        (
            GetResponseWithList(
                InvokeId(1), (Data.long_unsigned(1), DataAccessResult.READ_WRITE_DENIED)
            ),
            "C403C1020012000101" + "03",
        ),
        (
            GetResponseWithDatablock(InvokeId(1), True, 2, b"\x01\x02"),
            "C402C1010000000200020102",
        ),
        (
            GetResponseWithDatablock(InvokeId(1), False, 3, DataAccessResult.LONG_GET_ABORTED),
            "C402C100000000030" + "10F",
        ),
        (
            SetRequestNormal(
                InvokeId(1),
                AttributeDescriptor(1, Obis.parse("0-0:96.1.0"), 2),
                None,
                Data.unsigned(5),
            ),
            "C101C1000100006001" + "00FF02001105",
        ),
        (SetResponseNormal(InvokeId(1), DataAccessResult.SUCCESS), "C501C100"),
        (
            ActionRequestNormal(
                InvokeId(1), MethodDescriptor(8, Obis.parse("0-0:1.0.0"), 1), Data.integer(0)
            ),
            "C301C100080000010000FF01010F00",
        ),
        (
            ActionResponseNormal(InvokeId(1), ActionResult.SUCCESS, None),
            "C701C10000",
        ),
        (
            ActionResponseNormal(InvokeId(1), ActionResult.SUCCESS, Data.octet_string(b"\xaa")),
            "C701C1000100" + "0901AA",
        ),
        (
            ExceptionResponse(
                StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.OPERATION_NOT_POSSIBLE
            ),
            "D80101",
        ),
        (
            ExceptionResponse(2, ExceptionServiceError.INVOCATION_COUNTER_ERROR, 0x01020304),
            "D8020601020304",
        ),
        (
            ConfirmedServiceError(
                ConfirmedService.INITIATE_ERROR,
                ServiceErrorType.INITIATE,
                InitiateError.DLMS_VERSION_TOO_LOW,
            ),
            "0E010601",
        ),
    ],
)
def test_known_encodings(apdu: object, hex_: str) -> None:
    raw = bytes.fromhex(hex_)
    assert encode_apdu(apdu) == raw  # type: ignore[arg-type]
    assert decode_apdu(raw) == apdu


def test_attribute_id_is_integer8() -> None:
    # Manufacturer-specific attributes of standard classes have negative numbers.
    apdu = GetRequestNormal(InvokeId(), AttributeDescriptor(3, Obis.parse("1-0:1.8.0"), -1))
    raw = encode_apdu(apdu)
    assert raw[-2] == 0xFF
    assert decode_apdu(raw) == apdu


def test_unknown_error_codes_are_kept() -> None:
    exc = decode_apdu(bytes.fromhex("D8093F"))
    assert isinstance(exc, ExceptionResponse)
    assert (exc.state_error, exc.service_error) == (9, 0x3F)
    assert not isinstance(exc.state_error, StateError)
    assert "unknown-9/unknown-63" in str(exc.error())
    cse = decode_apdu(bytes.fromhex("0E05FF07"))
    assert isinstance(cse, ConfirmedServiceError)
    assert cse.describe() == "read: unknown-255/unknown-7"


def test_service_errors() -> None:
    exc = ExceptionResponse(
        StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.SERVICE_NOT_SUPPORTED
    )
    err = exc.error()
    assert isinstance(err, ServiceError)
    assert err.code == "service.exception.service_not_supported"
    assert "service-not-allowed/service-not-supported" in err.message
    cse = ConfirmedServiceError(ConfirmedService.READ, ServiceErrorType.ACCESS, 4)
    assert cse.error_name == "object-unavailable"
    assert cse.error().code == "service.confirmed_service_error"
    assert "read: access/object-unavailable" in str(cse.error())


# -- results --------------------------------------------------------------------------------------


def test_raise_for_result() -> None:
    raise_for_result(Data.long_unsigned(1), "x")
    raise_for_result(DataAccessResult.SUCCESS, "x")
    raise_for_result(ActionResult.SUCCESS, "x")
    raise_for_result(None, "x")
    with pytest.raises(DataAccessError) as info:
        raise_for_result(DataAccessResult.OBJECT_UNDEFINED, "1-1:32.7.0 attribute 2")
    assert str(info.value) == "1-1:32.7.0 attribute 2: object-undefined"
    assert info.value.result == 4
    assert info.value.name == "object_undefined"
    assert info.value.code == "data_access.object_undefined"
    with pytest.raises(DataAccessError) as info:
        raise_for_result(ActionResult.LONG_ACTION_ABORTED, "0-0:1.0.0 method 1")
    assert info.value.code == "data_access.long_action_aborted"


def test_expect_data() -> None:
    assert expect_data(Data.unsigned(3), "x") == Data.unsigned(3)
    with pytest.raises(DataAccessError, match="scope-of-access-violated"):
        expect_data(DataAccessResult.SCOPE_OF_ACCESS_VIOLATED, "x")
    with pytest.raises(ServiceError) as info:
        expect_data(DataAccessResult.SUCCESS, "x")
    assert info.value.code == "service.no_data"


def test_data_access_result_codes() -> None:
    expected = {
        0: "success", 1: "hardware-fault", 2: "temporary-failure", 3: "read-write-denied",
        4: "object-undefined", 9: "object-class-inconsistent", 11: "object-unavailable",
        12: "type-unmatched", 13: "scope-of-access-violated", 14: "data-block-unavailable",
        15: "long-get-aborted", 16: "no-long-get-in-progress", 17: "long-set-aborted",
        18: "no-long-set-in-progress", 19: "data-block-number-invalid", 250: "other-reason",
    }  # fmt: skip
    assert {int(r): r.label for r in DataAccessResult} == expected


# -- malformed input ------------------------------------------------------------------------------


def decode_outcome(raw: bytes) -> object:
    """The decoded APDU, or the DecodeError; any other exception propagates and fails."""
    try:
        return decode_apdu(raw)
    except DecodeError as exc:
        return exc


def check_outcome(raw: bytes) -> None:
    outcome = decode_outcome(raw)
    if isinstance(outcome, DecodeError):
        assert outcome.offset is not None
        assert 0 <= outcome.offset <= len(raw)
    else:
        # Whatever decodes is a value that encodes and decodes to itself (compared as bytes,
        # since a NaN float never equals itself).
        again = encode_apdu(outcome)  # type: ignore[arg-type]
        assert encode_apdu(decode_apdu(again)) == again


@given(st.binary(max_size=64))
@example(b"")
@example(b"\xc4\x01\xc1\x00\x01\x84\xff\xff\xff\xff")  # array claiming 4 G elements
@example(b"\xc0\x03\xc1\x84\x7f\xff\xff\xff")  # attribute list claiming 2 G items
@example(b"\x0f\x00\x00\x00\x00\x09")  # Kaifa-style date-time, truncated
def test_arbitrary_bytes_only_raise_decode_error(raw: bytes) -> None:
    check_outcome(raw)


@given(
    st.sampled_from([0xC0, 0xC1, 0xC3, 0xC4, 0xC5, 0xC7, 0xD8, 0x0E, 0x0F, 0xE0]),
    st.binary(max_size=64),
)
def test_arbitrary_bodies_only_raise_decode_error(tag: int, body: bytes) -> None:
    check_outcome(bytes((tag,)) + body)


@given(apdus, st.data())
def test_mutated_apdus_only_raise_decode_error(apdu: object, data: st.DataObject) -> None:
    raw = bytearray(encode_apdu(apdu))  # type: ignore[arg-type]
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    check_outcome(bytes(raw))


@given(apdus)
def test_every_truncation_is_a_decode_error(apdu: object) -> None:
    raw = encode_apdu(apdu)  # type: ignore[arg-type]
    for cut in range(len(raw)):
        outcome = decode_outcome(raw[:cut])
        if isinstance(apdu, ActionResponseNormal) and cut == 4:
            # Tolerated short form: the result without the return-parameters flag.
            assert outcome == ActionResponseNormal(apdu.invoke, apdu.result, None)
        else:
            assert isinstance(outcome, DecodeError)


def test_action_response_without_return_flag() -> None:
    # gurux's server ends a failed ACTION.response after the result.
    assert decode_apdu(bytes.fromhex("C701C104")) == ActionResponseNormal(
        InvokeId(), ActionResult.OBJECT_UNDEFINED, None
    )


def test_trailing_bytes_are_an_error() -> None:
    with pytest.raises(DecodeError) as info:
        decode_apdu(bytes.fromhex("C501C100" + "00"))
    assert info.value.code == "apdu.trailing_bytes"
    assert info.value.offset == 4


@pytest.mark.parametrize(
    ("hex_", "code", "offset", "text"),
    [
        ("", "apdu.truncated", 0, "empty"),
        ("C8", "apdu.unknown_tag", 0, "tag 0xC8"),
        ("C004C1", "apdu.unsupported", 1, "get-request choice 4"),
        ("C102C1", "apdu.unsupported", 1, "set-request choice 2"),
        ("C401C102", "apdu.malformed", 3, "get-data-result choice"),
        ("C401C10105", "apdu.bad_value", 4, "data-access-result 5"),
        ("C701C10800", "apdu.bad_value", 3, "action-result 8"),
        ("C001C1000301012007", "apdu.truncated", 5, "logical name"),
        ("C001C100030101200700FF0202", "apdu.malformed", 12, "presence flag"),
        ("C402C1010000000100" + "05AABB", "apdu.truncated", 9, "raw-data claims 5 bytes"),
    ],
)
def test_decode_errors_name_the_problem(hex_: str, code: str, offset: int, text: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_apdu(bytes.fromhex(hex_))
    assert info.value.code == code
    assert info.value.offset == offset
    assert text in info.value.message


def test_bad_data_reports_absolute_offset() -> None:
    # A GET.response whose Data is an unknown type 0x07 at byte 4.
    with pytest.raises(DecodeError) as info:
        decode_apdu(bytes.fromhex("C401C10007"))
    assert info.value.offset == 4


# -- encoding errors ------------------------------------------------------------------------------

LN = Obis.parse("1-1:32.7.0")


@pytest.mark.parametrize(
    ("apdu", "text"),
    [
        (GetRequestNext(InvokeId(16), 1), "invoke-id"),
        (GetRequestNext(InvokeId(1), 1 << 32), "block-number"),
        (GetRequestNormal(InvokeId(), AttributeDescriptor(70000, LN, 2)), "class-id"),
        (GetRequestNormal(InvokeId(), AttributeDescriptor(3, LN, 128)), "attribute-id"),
        (
            GetRequestNormal(
                InvokeId(), AttributeDescriptor(3, LN, 2), SelectiveAccess(256, Data.null())
            ),
            "access-selector",
        ),
        (ActionRequestNormal(InvokeId(), MethodDescriptor(3, LN, -129)), "method-id"),
        (
            ExceptionResponse(1, ExceptionServiceError.INVOCATION_COUNTER_ERROR),
            "invocation counter",
        ),
        (ExceptionResponse(1, 1, 5), "invocation counter"),
        (ExceptionResponse(256, 1), "state-error"),
        (ConfirmedServiceError(1, 6, 300), "service-error value"),
        (GeneralBlockTransfer(True, False, 64, 1, 0, b""), "window"),
        (DataNotification(-1, None, Data.null()), "long-invoke-id"),
        (SetResponseNormal(InvokeId(), 5), "SetResponseNormal"),  # type: ignore[arg-type]
        (GetResponseNormal(InvokeId(), Data.unsigned(300)), "300"),
    ],
)
def test_encode_errors(apdu: object, text: str) -> None:
    with pytest.raises(EncodeError, match=text):
        encode_apdu(apdu)  # type: ignore[arg-type]


def test_encode_rejects_non_apdu() -> None:
    with pytest.raises(EncodeError, match="not an APDU"):
        encode_apdu(Data.null())  # type: ignore[arg-type]


# -- describe -------------------------------------------------------------------------------------


def test_describe_get_request_and_response() -> None:
    request = GetRequestNormal(InvokeId(3), AttributeDescriptor(3, LN, 2))
    assert describe(request) == {
        "kind": "get-request-normal",
        "invoke_id": 3,
        "priority": "high",
        "service_class": "confirmed",
        "attribute": "3/1-1:32.7.0/2",
        "access": None,
    }
    response = describe(
        GetResponseWithList(
            InvokeId(3), (Data.long_unsigned(12500), DataAccessResult.OBJECT_UNDEFINED)
        )
    )
    assert response["kind"] == "get-response-with-list"
    assert response["results"] == [{"data": 12500}, {"data_access_result": "object-undefined"}]


def test_describe_errors_and_blocks() -> None:
    assert describe(ExceptionResponse(1, 2)) == {
        "kind": "exception-response",
        "state_error": "service-not-allowed",
        "service_error": "service-not-supported",
    }
    block = describe(GetResponseWithDatablock(InvokeId(), False, 7, b"\x01\x02"))
    assert (block["block_number"], block["raw_data"], block["last_block"]) == (7, "0102", False)
    action = describe(ActionResponseNormal(InvokeId(), ActionResult.TYPE_UNMATCHED))
    assert action["result"] == {"action_result": "type-unmatched"}


def test_encoding_uses_axdr_for_values() -> None:
    # The Data inside an APDU is exactly the A-XDR encoding of the value.
    value = Data.structure([Data.integer(-2), Data.enum(35)])
    raw = encode_apdu(GetResponseNormal(InvokeId(), value))
    assert raw == bytes.fromhex("C401C100") + encode_data(value)
    assert value.type == DataType.STRUCTURE
