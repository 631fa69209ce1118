"""ACSE: AARQ/AARE/RLRQ/RLRE, the xDLMS initiate request/response, conformance, check_aare."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec.acse import (
    AARE,
    AARQ,
    CLIENT_DEFAULT_CONFORMANCE,
    RLRE,
    RLRQ,
    AcseServiceProvider,
    AcseServiceUser,
    ApplicationContext,
    AssociationResult,
    AuthenticationMechanism,
    Conformance,
    DiagnosticSource,
    InitiateRequest,
    InitiateResponse,
    ReleaseRequestReason,
    ReleaseResponseReason,
    SourceDiagnostic,
    check_aare,
    decode_acse,
    encode_initiate_request,
)
from codec.apdu import (
    ConfirmedService,
    ConfirmedServiceError,
    InitiateError,
    ServiceErrorType,
    decode_apdu,
    describe,
    encode_apdu,
)
from codec.errors import AssociationError, DecodeError, EncodeError
from tests.codec.test_apdu import frame_info

# The AARQ example of the Green Book: LLS with password "12345678", conformance 00 7E 1F,
# client-max-receive-pdu-size 1200.
GREEN_BOOK_AARQ = bytes.fromhex(
    "6036A1090607608574050801018A0207808B0760857405080201AC0A80083132333435363738"
    "BE10040E01000000065F1F0400007E1F04B0"
)
AARE_HEX_ACCEPTED = (
    "6129A109060760857405080101A203020100A305A103020100BE10040E0800065F1F0400001E1D04C80007"
)


# -- known answers --------------------------------------------------------------------------------


def test_vector_aare_from_real_meter() -> None:
    info = frame_info("aare-iframe")
    assert info.hex().upper() == AARE_HEX_ACCEPTED
    aare = decode_apdu(info)
    assert aare == AARE(
        result=AssociationResult.ACCEPTED,
        diagnostic=SourceDiagnostic(DiagnosticSource.USER, AcseServiceUser.NULL),
        context=ApplicationContext.LOGICAL_NAME,
        initiate_response=InitiateResponse(
            negotiated_dlms_version=6,
            negotiated_conformance=Conformance(0x001E1D),
            server_max_receive_pdu_size=1224,
            vaa_name=7,
        ),
    )
    assert encode_apdu(aare) == info
    response = check_aare(aare)  # type: ignore[arg-type]
    assert Conformance.GET in response.negotiated_conformance
    assert Conformance.MULTIPLE_REFERENCES in response.negotiated_conformance
    assert Conformance.ATTRIBUTE0_SUPPORTED_WITH_GET not in response.negotiated_conformance


def test_green_book_aarq() -> None:
    aarq = AARQ(
        ApplicationContext.LOGICAL_NAME,
        AuthenticationMechanism.LOW,
        b"12345678",
        InitiateRequest(Conformance(0x007E1F), 1200),
    )
    assert encode_apdu(aarq) == GREEN_BOOK_AARQ
    assert decode_apdu(GREEN_BOOK_AARQ) == aarq


def test_aarq_without_authentication() -> None:
    aarq = AARQ(initiate=InitiateRequest(CLIENT_DEFAULT_CONFORMANCE, 0xFFFF))
    raw = encode_apdu(aarq)
    assert raw.hex().upper() == ("601DA109060760857405080101BE10040E01000000065F1F0400001E1DFFFF")
    assert decode_apdu(raw) == aarq


def test_release_known_answers() -> None:
    assert encode_apdu(RLRQ()) == bytes.fromhex("6203800100")
    assert encode_apdu(RLRE()) == bytes.fromhex("6303800100")
    assert encode_apdu(RLRQ(None)) == bytes.fromhex("6200")
    assert decode_apdu(bytes.fromhex("6300")) == RLRE(None)
    # A meter that returns its InitiateResponse in the RLRE.
    rlre = decode_apdu(bytes.fromhex("6315800100BE10040E0800065F1F0400001E1D04C80007"))
    assert rlre == RLRE(
        ReleaseResponseReason.NORMAL, InitiateResponse(6, Conformance(0x1E1D), 1224, 7)
    )


def test_conformance_bits_follow_the_green_book() -> None:
    # Bit n of the bit string (bit 0 first on the wire) is value 1 << (23 - n).
    positions = {
        0: "RESERVED_ZERO", 1: "GENERAL_PROTECTION", 2: "GENERAL_BLOCK_TRANSFER", 3: "READ",
        4: "WRITE", 5: "UNCONFIRMED_WRITE", 6: "DELTA_VALUE_ENCODING", 7: "RESERVED_SEVEN",
        8: "ATTRIBUTE0_SUPPORTED_WITH_SET", 9: "PRIORITY_MGMT_SUPPORTED",
        10: "ATTRIBUTE0_SUPPORTED_WITH_GET", 11: "BLOCK_TRANSFER_WITH_GET_OR_READ",
        12: "BLOCK_TRANSFER_WITH_SET_OR_WRITE", 13: "BLOCK_TRANSFER_WITH_ACTION",
        14: "MULTIPLE_REFERENCES", 15: "INFORMATION_REPORT", 16: "DATA_NOTIFICATION",
        17: "ACCESS", 18: "PARAMETERIZED_ACCESS", 19: "GET", 20: "SET", 21: "SELECTIVE_ACCESS",
        22: "EVENT_NOTIFICATION", 23: "ACTION",
    }  # fmt: skip
    assert {23 - m.value.bit_length() + 1: m.name for m in Conformance} == positions
    # The usual "007E1F" of many clients.
    usual = Conformance(0x007E1F)
    assert usual.names() == [
        "priority-mgmt-supported", "attribute0-supported-with-get",
        "block-transfer-with-get-or-read", "block-transfer-with-set-or-write",
        "block-transfer-with-action", "multiple-references", "get", "set", "selective-access",
        "event-notification", "action",
    ]  # fmt: skip


def test_client_default_conformance() -> None:
    wanted = (
        Conformance.GET,
        Conformance.SET,
        Conformance.ACTION,
        Conformance.SELECTIVE_ACCESS,
        Conformance.MULTIPLE_REFERENCES,
        Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ,
    )
    assert all(bit in CLIENT_DEFAULT_CONFORMANCE for bit in wanted)
    assert Conformance.GENERAL_PROTECTION not in CLIENT_DEFAULT_CONFORMANCE
    encoded = encode_initiate_request(InitiateRequest(CLIENT_DEFAULT_CONFORMANCE, 1200))
    assert encoded.hex().upper() == "01000000065F1F0400001E1D04B0"


def test_long_ber_lengths_are_computed() -> None:
    aarq = AARQ(mechanism=AuthenticationMechanism.LOW, password=bytes(range(200)))
    raw = encode_apdu(aarq)
    assert raw[:3] == bytes((0x60, 0x81, len(raw) - 3))
    auth = raw.index(b"\xac")
    assert raw[auth : auth + 6] == bytes((0xAC, 0x81, 203, 0x80, 0x81, 200))
    assert decode_apdu(raw) == aarq


# -- lenient parsing ------------------------------------------------------------------------------


def test_aare_with_fields_the_codec_does_not_use() -> None:
    """Responding AP title, acse-requirements, mechanism, authentication value and
    implementation information, as HLS meters send, are skipped or kept."""
    body = bytes.fromhex(
        "A109060760857405080101"  # context
        "A203020100"  # result
        "A305A103020100"  # diagnostic
        "A40A04084C475A1122334455"  # responding-AP-title
        "88020780"  # responder-acse-requirements
        "890760857405080202"  # mechanism-name: HLS
        "AA0A80084142434445464748"  # responding-authentication-value
        "9D0100"  # implementation-information
        "BE10040E0800065F1F0400001E1D04C80007"
    )
    raw = bytes((0x61, len(body))) + body
    aare = decode_apdu(raw)
    assert isinstance(aare, AARE)
    assert aare.mechanism == AuthenticationMechanism.HIGH
    assert aare.initiate_response == InitiateResponse(6, Conformance(0x1E1D), 1224)


def test_aarq_with_protocol_version_and_ap_title() -> None:
    body = bytes.fromhex(
        "80020780"  # protocol-version
        "A109060760857405080101"
        "A60A04084D4D4D0000BC614E"  # calling-AP-title
        "BE10040E01000000065F1F0400007E1F04B0"
    )
    aarq = decode_apdu(bytes((0x60, len(body))) + body)
    assert aarq == AARQ(
        initiate=InitiateRequest(Conformance(0x7E1F), 1200),
        calling_ap_title=bytes.fromhex("4D4D4D0000BC614E"),
    )


def test_aarq_with_inconsistent_authentication_still_decodes() -> None:
    """A meter must be able to answer these with a refusal, so they decode."""
    no_password = GREEN_BOOK_AARQ.replace(bytes.fromhex("AC0A80083132333435363738"), b"")
    no_password = bytes((0x60, len(no_password) - 2)) + no_password[2:]
    assert decode_apdu(no_password) == AARQ(
        mechanism=AuthenticationMechanism.LOW,
        password=None,
        initiate=InitiateRequest(Conformance(0x007E1F), 1200),
    )
    no_mechanism = GREEN_BOOK_AARQ.replace(bytes.fromhex("8B0760857405080201"), b"")
    no_mechanism = bytes((0x60, len(no_mechanism) - 2)) + no_mechanism[2:]
    aarq = decode_apdu(no_mechanism)
    assert isinstance(aarq, AARQ)
    assert (aarq.mechanism, aarq.password) == (AuthenticationMechanism.NONE, b"12345678")


def test_initiate_request_optional_fields() -> None:
    request = InitiateRequest(
        Conformance.GET,
        512,
        dedicated_key=b"\x00" * 16,
        response_allowed=False,
        proposed_quality_of_service=-3,
    )
    raw = encode_initiate_request(request)
    assert (
        raw.hex().upper()
        == "0101" + "10" + "00" * 16 + "0100" + "01FD" + "065F1F0400000010" + "0200"
    )
    assert decode_apdu(encode_apdu(AARQ(initiate=request))) == AARQ(initiate=request)


# -- structural errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hex_", "code", "text"),
    [
        ("6129A109060760857405080101", "acse.truncated", "claims 41 bytes"),
        ("6180", "acse.malformed", "indefinite"),
        ("6185FFFFFFFFFF", "acse.malformed", "BER length of 5 bytes"),
        (
            "61" + "10" + "A109060760857405080101" + "A203" + "020100",
            "acse.missing_field",
            "without result-source-diagnostic",
        ),
        ("6107A305A103020100", "acse.missing_field", "application-context-name"),
        ("610BA109060760857405080109", "acse.unknown_oid", "2.16.756.5.8.1.9"),
        ("610BA10906072A8648CE3D0201", "acse.unknown_oid", "1.2.840.10045.2.1"),
        ("AARE_BAD_CONFORMANCE", "apdu.malformed", "conformance tag"),
        ("AARE_TRAILING", "acse.trailing_bytes", "unexpected bytes"),
        ("AARE_RESULT_7", "acse.bad_value", "association result 7"),
        ("6200BE", "acse.trailing_bytes", "1 unexpected"),
        ("6203800105", "acse.bad_value", "RLRQ reason 5"),
        ("6000", "acse.missing_field", "application-context-name"),
        ("600BA109060760857405080101", "acse.missing_field", "InitiateRequest"),
    ],
)
def test_structural_errors(hex_: str, code: str, text: str) -> None:
    special = {
        "AARE_BAD_CONFORMANCE": AARE_HEX_ACCEPTED.replace("5F1F04", "5F1E04"),
        "AARE_TRAILING": AARE_HEX_ACCEPTED + "00",
        "AARE_RESULT_7": AARE_HEX_ACCEPTED.replace("A203020100", "A203020107"),
    }
    raw = bytes.fromhex(special.get(hex_, hex_))
    with pytest.raises(DecodeError) as info:
        decode_apdu(raw)
    assert info.value.code == code
    assert text in info.value.message
    assert info.value.offset is not None
    assert 0 <= info.value.offset <= len(raw)


@pytest.mark.parametrize(
    ("apdu", "text"),
    [
        (AARQ(password=b"secret"), "needs an authentication mechanism"),
        (AARQ(mechanism=AuthenticationMechanism.LOW), "needs a password"),
        (
            AARQ(initiate=InitiateRequest(client_max_receive_pdu_size=70000)),
            "client-max-receive-pdu-size",
        ),
        (AARQ(initiate=InitiateRequest(Conformance(1 << 24))), "24 bits"),
        (AARQ(initiate=InitiateRequest(proposed_quality_of_service=200)), "quality-of-service"),
        (
            AARE(
                initiate_response=InitiateResponse(6, Conformance.GET, 100),
                confirmed_service_error=ConfirmedServiceError(1, 6, 1),
            ),
            "not both",
        ),
        (AARE(diagnostic=SourceDiagnostic(DiagnosticSource.USER, 2**31)), "diagnostic"),
        (AARE(result=9), "AARE"),  # type: ignore[arg-type]
        (RLRQ(200), "release reason"),  # type: ignore[arg-type]
    ],
)
def test_encode_errors(apdu: object, text: str) -> None:
    with pytest.raises(EncodeError, match=text):
        encode_apdu(apdu)  # type: ignore[arg-type]


# -- check_aare -----------------------------------------------------------------------------------


def rejected(value: int, source: DiagnosticSource = DiagnosticSource.USER, **kw: object) -> AARE:
    return AARE(AssociationResult.REJECTED_PERMANENT, SourceDiagnostic(source, value), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("aare", "code", "text"),
    [
        (
            rejected(AcseServiceUser.AUTHENTICATION_FAILURE),
            "association.authentication_failure",
            "the meter refused the password (AARE diagnostic authentication-failure)",
        ),
        (
            rejected(AcseServiceUser.AUTHENTICATION_REQUIRED),
            "association.authentication_required",
            "requires authentication",
        ),
        (
            rejected(AcseServiceUser.AUTHENTICATION_MECHANISM_NAME_REQUIRED),
            "association.authentication_required",
            "mechanism-name-required",
        ),
        (
            rejected(AcseServiceUser.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED),
            "association.mechanism_not_supported",
            "not-recognised",
        ),
        (
            rejected(AcseServiceUser.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED),
            "association.context_not_supported",
            "application-context-name-not-supported",
        ),
        (
            rejected(AcseServiceUser.NO_REASON_GIVEN),
            "association.rejected",
            "rejected-permanent (AARE diagnostic user no-reason-given)",
        ),
        (
            rejected(AcseServiceProvider.NO_COMMON_ACSE_VERSION, DiagnosticSource.PROVIDER),
            "association.rejected",
            "provider no-common-acse-version",
        ),
        (rejected(99), "association.rejected", "unknown-99"),
        (
            rejected(
                AcseServiceUser.NO_REASON_GIVEN,
                confirmed_service_error=ConfirmedServiceError(
                    ConfirmedService.INITIATE_ERROR,
                    ServiceErrorType.INITIATE,
                    InitiateError.DLMS_VERSION_TOO_LOW,
                ),
            ),
            "association.initiate_error",
            "initiate-error: initiate/dlms-version-too-low; the meter needs another DLMS version",
        ),
        (AARE(), "association.no_initiate_response", "without an xDLMS InitiateResponse"),
    ],
)
def test_check_aare(aare: AARE, code: str, text: str) -> None:
    with pytest.raises(AssociationError) as info:
        check_aare(aare)
    assert info.value.code == code
    assert text in info.value.message


def test_rejected_aare_with_initiate_error_from_the_wire() -> None:
    raw = bytes.fromhex("611FA109060760857405080101A203020101A305A103020101BE0604040E010602")
    aare = decode_apdu(raw)
    assert isinstance(aare, AARE)
    assert aare.confirmed_service_error == ConfirmedServiceError(1, 6, 2)
    assert encode_apdu(aare) == raw
    with pytest.raises(AssociationError, match="incompatible-conformance") as info:
        check_aare(aare)
    assert info.value.code == "association.initiate_error"


def test_describe_never_shows_the_password() -> None:
    aarq = decode_apdu(GREEN_BOOK_AARQ)
    summary = describe(aarq)
    text = json.dumps(summary)
    assert "12345678" not in text
    assert "3132333435363738" not in text
    assert summary["password_length"] == 8
    assert summary["mechanism"] == "low"
    aare = describe(decode_apdu(bytes.fromhex(AARE_HEX_ACCEPTED)))
    assert aare["result"] == "accepted"
    assert aare["initiate_response"]["max_receive_pdu_size"] == 1224  # type: ignore[index]


# -- properties -----------------------------------------------------------------------------------

conformances = st.integers(0, 0xFFFFFF).map(Conformance)
initiate_requests = st.builds(
    InitiateRequest,
    conformances,
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.none() | st.binary(max_size=32),
    st.booleans(),
    st.none() | st.integers(-128, 127),
)
initiate_responses = st.builds(
    InitiateResponse,
    st.integers(0, 255),
    conformances,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.none() | st.integers(-128, 127),
)
mechanisms = st.sampled_from(AuthenticationMechanism)
acse_apdus = st.one_of(
    st.builds(
        AARQ,
        st.sampled_from(ApplicationContext),
        st.just(AuthenticationMechanism.NONE),
        st.none(),
        initiate_requests,
    ),
    st.builds(
        AARQ,
        st.sampled_from(ApplicationContext),
        mechanisms.filter(bool),
        st.binary(max_size=300),
        initiate_requests,
    ),
    st.builds(
        AARE,
        st.sampled_from(AssociationResult),
        st.builds(SourceDiagnostic, st.sampled_from(DiagnosticSource), st.integers(0, 255)),
        st.sampled_from(ApplicationContext),
        initiate_responses,
        st.none(),
        st.none() | mechanisms.filter(bool),
    ),
    st.builds(
        AARE,
        st.sampled_from(AssociationResult),
        st.builds(SourceDiagnostic, st.sampled_from(DiagnosticSource), st.integers(0, 255)),
        st.sampled_from(ApplicationContext),
        st.none(),
        st.none()
        | st.builds(
            ConfirmedServiceError, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)
        ),
    ),
    st.builds(
        RLRQ, st.none() | st.sampled_from(ReleaseRequestReason), st.none() | initiate_requests
    ),
    st.builds(
        RLRE, st.none() | st.sampled_from(ReleaseResponseReason), st.none() | initiate_responses
    ),
)


@given(acse_apdus)
def test_round_trip(apdu: object) -> None:
    raw = encode_apdu(apdu)  # type: ignore[arg-type]
    assert decode_apdu(raw) == apdu
    assert decode_acse(raw) == apdu
    json.dumps(describe(decode_apdu(raw)))


def decode_outcome(raw: bytes) -> object:
    try:
        return decode_apdu(raw)
    except DecodeError as exc:
        return exc


@given(st.sampled_from([0x60, 0x61, 0x62, 0x63]), st.binary(max_size=80))
def test_arbitrary_bytes_only_raise_decode_error(tag: int, body: bytes) -> None:
    for raw in (bytes((tag,)) + body, bytes((tag, len(body) & 0x7F)) + body):
        outcome = decode_outcome(raw)
        if isinstance(outcome, DecodeError):
            assert outcome.offset is not None
            assert 0 <= outcome.offset <= len(raw)


@given(acse_apdus, st.data())
def test_mutated_acse_only_raise_decode_error(apdu: object, data: st.DataObject) -> None:
    raw = bytearray(encode_apdu(apdu))  # type: ignore[arg-type]
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    outcome = decode_outcome(bytes(raw))
    if isinstance(outcome, DecodeError):
        assert outcome.offset is not None
    elif isinstance(outcome, AARQ) and (outcome.mechanism == 0) != (outcome.password is None):
        # Decoded so that a meter can refuse it properly, but never built by us.
        with pytest.raises(EncodeError):
            encode_apdu(outcome)
    else:
        assert decode_apdu(encode_apdu(outcome)) == outcome  # type: ignore[arg-type]


@given(acse_apdus)
def test_every_truncation_is_a_decode_error(apdu: object) -> None:
    raw = encode_apdu(apdu)  # type: ignore[arg-type]
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            decode_apdu(raw[:cut])


def test_ciphered_user_information_is_kept_whole_for_deciphering() -> None:
    raw = bytes.fromhex(AARE_HEX_ACCEPTED.replace("BE10040E08", "BE10040E28"))
    aare = decode_apdu(raw)
    assert isinstance(aare, AARE)
    assert aare.initiate_response is None
    assert aare.ciphered_initiate is not None and aare.ciphered_initiate[0] == 0x28
    assert encode_apdu(aare) == raw
