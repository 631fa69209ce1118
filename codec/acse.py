"""ACSE APDUs (AARQ, AARE, RLRQ, RLRE) and the xDLMS initiate request/response they carry.

The ACSE APDUs are BER encoded (ISO 8650 as profiled by DLMS UA 1000-2); their user-information
holds an A-XDR encoded xDLMS InitiateRequest, InitiateResponse or confirmed-service-error.
Logical-name referencing is built with no authentication, low-level security (LLS, a password)
or high-level security (HLS: the challenge travels in the authentication value); with
ciphering the AARQ/AARE carry the AP titles (system titles) and the initiate request/response
arrives ciphered (``ciphered_initiate``, deciphered by :mod:`codec.association` with
:mod:`codec.security`). Decoding is lenient about what real meters add (unknown
optional fields, AP titles, implementation information are skipped) and strict about structure:
a length that overruns its container, a missing mandatory field or an unknown result raises
:class:`~codec.errors.DecodeError` with the offset.
"""

from __future__ import annotations

import enum

import attrs

from codec.apdu import (
    ConfirmedService,
    ConfirmedServiceError,
    InitiateError,
    Reader,
    ServiceErrorType,
    Tag,
    decode_xdlms,
    encode_apdu,
)
from codec.errors import AssociationError, DecodeError, EncodeError

# -- enumerations ---------------------------------------------------------------------------------


class Conformance(enum.IntFlag):
    """The xDLMS conformance block: which services a client proposes or a meter offers.

    Values are the 24-bit big-endian integer of the bit string as sent on the wire, so bit 0 of
    the Green Book (``reserved-zero``) is ``1 << 23`` and bit 23 (``action``) is ``1``.
    """

    RESERVED_ZERO = 1 << 23
    GENERAL_PROTECTION = 1 << 22
    GENERAL_BLOCK_TRANSFER = 1 << 21
    READ = 1 << 20
    WRITE = 1 << 19
    UNCONFIRMED_WRITE = 1 << 18
    DELTA_VALUE_ENCODING = 1 << 17  # "reserved-six" before Green Book edition 9
    RESERVED_SEVEN = 1 << 16
    ATTRIBUTE0_SUPPORTED_WITH_SET = 1 << 15
    PRIORITY_MGMT_SUPPORTED = 1 << 14
    ATTRIBUTE0_SUPPORTED_WITH_GET = 1 << 13
    BLOCK_TRANSFER_WITH_GET_OR_READ = 1 << 12
    BLOCK_TRANSFER_WITH_SET_OR_WRITE = 1 << 11
    BLOCK_TRANSFER_WITH_ACTION = 1 << 10
    MULTIPLE_REFERENCES = 1 << 9
    INFORMATION_REPORT = 1 << 8
    DATA_NOTIFICATION = 1 << 7
    ACCESS = 1 << 6
    PARAMETERIZED_ACCESS = 1 << 5
    GET = 1 << 4
    SET = 1 << 3
    SELECTIVE_ACCESS = 1 << 2
    EVENT_NOTIFICATION = 1 << 1
    ACTION = 1 << 0

    def names(self) -> list[str]:
        """The hyphenated names of the bits set, in bit order."""
        return [
            member.name.lower().replace("_", "-")
            for member in sorted(Conformance, key=lambda m: -m.value)
            if self & member and member.name is not None
        ]


#: What the client proposes: LN services with selective access, lists and block transfer.
CLIENT_DEFAULT_CONFORMANCE = (
    Conformance.GET
    | Conformance.SET
    | Conformance.ACTION
    | Conformance.SELECTIVE_ACCESS
    | Conformance.MULTIPLE_REFERENCES
    | Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ
    | Conformance.BLOCK_TRANSFER_WITH_SET_OR_WRITE
    | Conformance.BLOCK_TRANSFER_WITH_ACTION
)


class ApplicationContext(enum.IntEnum):
    """The last arc of the application-context-name OID 2.16.756.5.8.1.x."""

    LOGICAL_NAME = 1
    SHORT_NAME = 2
    LOGICAL_NAME_CIPHERED = 3
    SHORT_NAME_CIPHERED = 4


class AuthenticationMechanism(enum.IntEnum):
    """The last arc of the mechanism-name OID 2.16.756.5.8.2.x (0 means no authentication)."""

    NONE = 0
    LOW = 1
    HIGH = 2
    HIGH_MD5 = 3
    HIGH_SHA1 = 4
    HIGH_GMAC = 5
    HIGH_SHA256 = 6
    HIGH_ECDSA = 7


class AssociationResult(enum.IntEnum):
    """The result field of an AARE."""

    ACCEPTED = 0
    REJECTED_PERMANENT = 1
    REJECTED_TRANSIENT = 2


class DiagnosticSource(enum.IntEnum):
    """Which side of the ACSE produced the result-source-diagnostic (its CHOICE tag)."""

    USER = 1
    PROVIDER = 2


class AcseServiceUser(enum.IntEnum):
    """acse-service-user diagnostic values."""

    NULL = 0
    NO_REASON_GIVEN = 1
    APPLICATION_CONTEXT_NAME_NOT_SUPPORTED = 2
    CALLING_AP_TITLE_NOT_RECOGNIZED = 3
    CALLING_AP_INVOCATION_IDENTIFIER_NOT_RECOGNIZED = 4
    CALLING_AE_QUALIFIER_NOT_RECOGNIZED = 5
    CALLING_AE_INVOCATION_IDENTIFIER_NOT_RECOGNIZED = 6
    CALLED_AP_TITLE_NOT_RECOGNIZED = 7
    CALLED_AP_INVOCATION_IDENTIFIER_NOT_RECOGNIZED = 8
    CALLED_AE_QUALIFIER_NOT_RECOGNIZED = 9
    CALLED_AE_INVOCATION_IDENTIFIER_NOT_RECOGNIZED = 10
    AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED = 11
    AUTHENTICATION_MECHANISM_NAME_REQUIRED = 12
    AUTHENTICATION_FAILURE = 13
    AUTHENTICATION_REQUIRED = 14


class AcseServiceProvider(enum.IntEnum):
    """acse-service-provider diagnostic values."""

    NULL = 0
    NO_REASON_GIVEN = 1
    NO_COMMON_ACSE_VERSION = 2


class ReleaseRequestReason(enum.IntEnum):
    """The reason of an RLRQ."""

    NORMAL = 0
    URGENT = 1
    USER_DEFINED = 30


class ReleaseResponseReason(enum.IntEnum):
    """The reason of an RLRE."""

    NORMAL = 0
    NOT_FINISHED = 1
    USER_DEFINED = 30


def _label(member: enum.Enum) -> str:
    return (member.name or str(member.value)).lower().replace("_", "-")


# -- values ---------------------------------------------------------------------------------------

_INITIATE_REQUEST_TAG = 0x01
_INITIATE_RESPONSE_TAG = 0x08
_CIPHERED_INITIATE_TAGS = {
    0x21: "glo-initiate-request",
    0x28: "glo-initiate-response",
    0x41: "ded-initiate-request",
    0x48: "ded-initiate-response",
}
_VAA_NAME_LN = 0x0007


@attrs.frozen
class InitiateRequest:
    """xDLMS InitiateRequest, carried in the AARQ user-information."""

    proposed_conformance: Conformance = CLIENT_DEFAULT_CONFORMANCE
    client_max_receive_pdu_size: int = 0xFFFF
    proposed_dlms_version: int = 6
    dedicated_key: bytes | None = None
    response_allowed: bool = True
    proposed_quality_of_service: int | None = None


@attrs.frozen
class InitiateResponse:
    """xDLMS InitiateResponse, carried in the AARE user-information."""

    negotiated_dlms_version: int
    negotiated_conformance: Conformance
    server_max_receive_pdu_size: int
    vaa_name: int = _VAA_NAME_LN
    negotiated_quality_of_service: int | None = None


@attrs.frozen
class SourceDiagnostic:
    """The AARE result-source-diagnostic: who answered (user or provider) and the value."""

    source: DiagnosticSource = DiagnosticSource.USER
    value: int = 0

    @property
    def label(self) -> str:
        """E.g. ``authentication-failure``, or ``unknown-42``."""
        enum_type: type[enum.IntEnum] = (
            AcseServiceUser if self.source == DiagnosticSource.USER else AcseServiceProvider
        )
        try:
            return _label(enum_type(self.value))
        except ValueError:
            return f"unknown-{self.value}"


@attrs.frozen
class AARQ:
    """A-ASSOCIATE request: opens an application association."""

    context: ApplicationContext = ApplicationContext.LOGICAL_NAME
    mechanism: AuthenticationMechanism = AuthenticationMechanism.NONE
    #: The calling-authentication-value: the LLS password or the HLS challenge CtoS.
    password: bytes | None = None
    #: The xDLMS InitiateRequest; None when only ``ciphered_initiate`` is present.
    initiate: InitiateRequest | None = InitiateRequest()
    #: The calling-AP-title: the client's system title (ciphered contexts).
    calling_ap_title: bytes | None = None
    #: The glo-/ded-initiate-request APDU carried instead of a plain ``initiate``.
    ciphered_initiate: bytes | None = None


@attrs.frozen
class AARE:
    """A-ASSOCIATE response: the meter accepts or refuses the association."""

    result: AssociationResult = AssociationResult.ACCEPTED
    diagnostic: SourceDiagnostic = SourceDiagnostic()
    context: ApplicationContext = ApplicationContext.LOGICAL_NAME
    initiate_response: InitiateResponse | None = None
    confirmed_service_error: ConfirmedServiceError | None = None
    #: The mechanism-name echoed by the meter, when it sends one.
    mechanism: AuthenticationMechanism | None = None
    #: The responding-AP-title: the meter's system title (ciphered contexts).
    responding_ap_title: bytes | None = None
    #: The responding-authentication-value: the HLS challenge StoC.
    authentication_value: bytes | None = None
    #: The ciphered xDLMS APDU carried instead of a plain initiate-response or error.
    ciphered_initiate: bytes | None = None


@attrs.frozen
class RLRQ:
    """A-RELEASE request (``reason`` None: the optional field is absent).

    When the association was established with ciphering, the user-information carries the
    xDLMS InitiateRequest ciphered (``ciphered_initiate``: the glo-/ded-initiate-request APDU)
    instead of a plain ``initiate``.
    """

    reason: ReleaseRequestReason | None = ReleaseRequestReason.NORMAL
    initiate: InitiateRequest | None = None
    ciphered_initiate: bytes | None = None


@attrs.frozen
class RLRE:
    """A-RELEASE response (``reason`` None: the optional field is absent).

    A meter releasing a ciphered association may answer the InitiateResponse ciphered
    (``ciphered_initiate``: the glo-/ded-initiate-response APDU); many answer a plain RLRE.
    """

    reason: ReleaseResponseReason | None = ReleaseResponseReason.NORMAL
    initiate_response: InitiateResponse | None = None
    ciphered_initiate: bytes | None = None


AcseApdu = AARQ | AARE | RLRQ | RLRE


# -- BER ------------------------------------------------------------------------------------------

_DLMS_OID_PREFIX = bytes.fromhex("608574050801")  # 2.16.756.5.8.1
_MECHANISM_OID_PREFIX = bytes.fromhex("608574050802")  # 2.16.756.5.8.2

# Context-specific tags of the AARQ/AARE/RLRQ/RLRE fields used here.
_T_PROTOCOL_VERSION = 0x80
_T_CONTEXT_NAME = 0xA1
_T_RESULT = 0xA2
_T_DIAGNOSTIC = 0xA3
_T_CALLING_AP_TITLE = 0xA6
_T_RESPONDING_AP_TITLE = 0xA4
_T_AARE_AUTH_VALUE = 0xAA
_T_AARQ_ACSE_REQUIREMENTS = 0x8A
_T_AARQ_MECHANISM = 0x8B
_T_AARQ_AUTH_VALUE = 0xAC
_T_AARE_ACSE_REQUIREMENTS = 0x88
_T_AARE_MECHANISM = 0x89
_T_USER_INFORMATION = 0xBE
_T_REASON = 0x80
_T_OCTET_STRING = 0x04
_T_INTEGER = 0x02
_T_OID = 0x06
_T_CONFORMANCE = b"\x5f\x1f"


def _ber_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def _tlv(tag: int | bytes, content: bytes) -> bytes:
    tag_bytes = tag if isinstance(tag, bytes) else bytes((tag,))
    return tag_bytes + _ber_length(len(content)) + content


def _ber_integer(value: int) -> bytes:
    size = max(1, (value.bit_length() + 8) // 8)
    return _tlv(_T_INTEGER, value.to_bytes(size, "big", signed=True))


def _oid(prefix: bytes, arc: int) -> bytes:
    if not 0 <= arc <= 0x7F:
        raise EncodeError(
            f"object identifier arc must be 0..127, got {arc}", code="acse.out_of_range"
        )
    return prefix + bytes((arc,))


@attrs.frozen
class _Tlv:
    tag: int  # the tag bytes as a big-endian integer (0x5F1F for [APPLICATION 31])
    start: int  # offset of the tag
    value_start: int
    value_end: int


class _Ber:
    """A BER cursor bounded by ``end``; every error carries the offset."""

    def __init__(self, buf: bytes, pos: int, end: int) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end

    def fail(self, message: str, offset: int, code: str = "acse.malformed") -> DecodeError:
        return DecodeError(message, code=code, offset=offset)

    def at_end(self) -> bool:
        return self.pos >= self.end

    def next(self, what: str) -> _Tlv:
        start = self.pos
        if start >= self.end:
            raise self.fail(f"truncated {what}: no tag", start, "acse.truncated")
        tag = self.buf[start]
        pos = start + 1
        if tag & 0x1F == 0x1F:  # high tag number form: base-128 continuation bytes
            for _ in range(4):
                if pos >= self.end:
                    raise self.fail(f"truncated tag of {what}", start, "acse.truncated")
                tag = (tag << 8) | self.buf[pos]
                pos += 1
                if not self.buf[pos - 1] & 0x80:
                    break
            else:
                raise self.fail(f"tag of {what} is too long", start)
        if pos >= self.end:
            raise self.fail(f"truncated {what}: no length", pos, "acse.truncated")
        first = self.buf[pos]
        pos += 1
        if first < 0x80:
            length = first
        elif first == 0x80:
            raise self.fail(f"{what}: indefinite BER length is not allowed", pos - 1)
        else:
            n = first & 0x7F
            if n > 4:
                raise self.fail(f"{what}: BER length of {n} bytes", pos - 1)
            if pos + n > self.end:
                raise self.fail(f"truncated length of {what}", pos - 1, "acse.truncated")
            length = int.from_bytes(self.buf[pos : pos + n], "big")
            pos += n
        if pos + length > self.end:
            raise self.fail(
                f"{what} (tag 0x{tag:02X}) claims {length} bytes, only {self.end - pos} left",
                start,
                "acse.truncated",
            )
        self.pos = pos + length
        return _Tlv(tag, start, pos, pos + length)

    def expect(self, tag: int, what: str) -> _Tlv:
        tlv = self.next(what)
        if tlv.tag != tag:
            raise self.fail(f"{what}: expected tag 0x{tag:02X}, got 0x{tlv.tag:02X}", tlv.start)
        return tlv

    def inner(self, tlv: _Tlv) -> _Ber:
        return _Ber(self.buf, tlv.value_start, tlv.value_end)

    def value(self, tlv: _Tlv) -> bytes:
        return self.buf[tlv.value_start : tlv.value_end]

    def integer(self, tlv: _Tlv, what: str) -> int:
        raw = self.value(tlv)
        if not 1 <= len(raw) <= 4:
            raise self.fail(f"{what}: INTEGER of {len(raw)} bytes", tlv.start)
        return int.from_bytes(raw, "big", signed=True)

    def explicit_integer(self, tlv: _Tlv, what: str) -> int:
        inner = self.inner(tlv)
        value_tlv = inner.expect(_T_INTEGER, what)
        return self.integer(value_tlv, what)


def _format_oid(raw: bytes) -> str:
    """Dotted form of an OID for error messages (best effort on malformed input)."""
    if not raw:
        return "(empty)"
    arcs: list[int] = []
    value = 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        return raw.hex()
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


def _dlms_oid(ber: _Ber, tlv: _Tlv, prefix: bytes, what: str) -> int:
    raw = ber.value(tlv)
    if len(raw) != len(prefix) + 1 or not raw.startswith(prefix):
        raise ber.fail(f"unknown {what} {_format_oid(raw)}", tlv.start, "acse.unknown_oid")
    return raw[-1]


def _context_name(ber: _Ber, tlv: _Tlv) -> ApplicationContext:
    oid = ber.inner(tlv).expect(_T_OID, "application-context-name")
    arc = _dlms_oid(ber, oid, _DLMS_OID_PREFIX, "application-context-name")
    try:
        return ApplicationContext(arc)
    except ValueError:
        raise ber.fail(
            f"unknown application-context-name 2.16.756.5.8.1.{arc}", oid.start, "acse.unknown_oid"
        ) from None


def _mechanism_name(ber: _Ber, tlv: _Tlv) -> AuthenticationMechanism:
    arc = _dlms_oid(ber, tlv, _MECHANISM_OID_PREFIX, "mechanism-name")
    try:
        return AuthenticationMechanism(arc)
    except ValueError:
        raise ber.fail(
            f"unknown mechanism-name 2.16.756.5.8.2.{arc}", tlv.start, "acse.unknown_oid"
        ) from None


# -- xDLMS initiate (A-XDR inside the user-information) ------------------------------------------


def _encode_conformance(conformance: Conformance) -> bytes:
    value = int(conformance)
    if not 0 <= value <= 0xFFFFFF:
        raise EncodeError(
            f"conformance must fit 24 bits, got 0x{value:X}", code="acse.out_of_range"
        )
    return _tlv(_T_CONFORMANCE, b"\x00" + value.to_bytes(3, "big"))


def _check_u(value: int, bits: int, what: str) -> int:
    if isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise EncodeError(
            f"{what} must be 0..{(1 << bits) - 1}, got {value!r}", code="acse.out_of_range"
        )
    return value


def _check_i32(value: int, what: str) -> int:
    # Anything a decoded 1..4-byte BER INTEGER can hold, so that every decoded AARE re-encodes.
    if isinstance(value, bool) or not -(2**31) <= value < 2**31:
        raise EncodeError(
            f"{what} must fit a 32-bit INTEGER, got {value!r}", code="acse.out_of_range"
        )
    return value


def _check_i8(value: int, what: str) -> int:
    if isinstance(value, bool) or not -0x80 <= value <= 0x7F:
        raise EncodeError(f"{what} must be -128..127, got {value!r}", code="acse.out_of_range")
    return value & 0xFF


def encode_initiate_request(req: InitiateRequest) -> bytes:
    """The A-XDR xDLMS InitiateRequest (tag 0x01)."""
    out = bytearray((_INITIATE_REQUEST_TAG,))
    if req.dedicated_key is None:
        out.append(0)
    else:
        if len(req.dedicated_key) > 0x7F:
            raise EncodeError("dedicated-key longer than 127 bytes", code="acse.out_of_range")
        out += bytes((1, len(req.dedicated_key))) + req.dedicated_key
    # response-allowed is BOOLEAN DEFAULT TRUE: absent means true.
    out += b"\x00" if req.response_allowed else b"\x01\x00"
    if req.proposed_quality_of_service is None:
        out.append(0)
    else:
        out += bytes((1, _check_i8(req.proposed_quality_of_service, "proposed-quality-of-service")))
    out.append(_check_u(req.proposed_dlms_version, 8, "proposed-dlms-version-number"))
    out += _encode_conformance(req.proposed_conformance)
    out += _check_u(req.client_max_receive_pdu_size, 16, "client-max-receive-pdu-size").to_bytes(
        2, "big"
    )
    return bytes(out)


def encode_initiate_response(resp: InitiateResponse) -> bytes:
    """The A-XDR xDLMS InitiateResponse (tag 0x08)."""
    out = bytearray((_INITIATE_RESPONSE_TAG,))
    if resp.negotiated_quality_of_service is None:
        out.append(0)
    else:
        out += bytes(
            (1, _check_i8(resp.negotiated_quality_of_service, "negotiated-quality-of-service"))
        )
    out.append(_check_u(resp.negotiated_dlms_version, 8, "negotiated-dlms-version-number"))
    out += _encode_conformance(resp.negotiated_conformance)
    out += _check_u(resp.server_max_receive_pdu_size, 16, "server-max-receive-pdu-size").to_bytes(
        2, "big"
    )
    out += _check_u(resp.vaa_name, 16, "vaa-name").to_bytes(2, "big")
    return bytes(out)


def _read_conformance(r: Reader) -> Conformance:
    start = r.pos
    tag = r.take(2, "conformance tag")
    if tag != _T_CONFORMANCE:
        raise r.fail(f"expected conformance tag 5F1F, got {tag.hex().upper()}", offset=start)
    length_at = r.pos
    length = r.u8("conformance length")
    if length != 4:
        raise r.fail(f"conformance bit string must be 4 bytes, got {length}", offset=length_at)
    r.u8("conformance unused bits")
    return Conformance(int.from_bytes(r.take(3, "conformance"), "big"))


def _read_initiate_request(r: Reader) -> InitiateRequest:
    key = r.octet_string("dedicated-key") if r.flag("dedicated-key") else None
    response_allowed = r.u8("response-allowed value") != 0 if r.flag("response-allowed") else True
    qos = r.i8("proposed-quality-of-service") if r.flag("proposed-quality-of-service") else None
    version = r.u8("proposed-dlms-version-number")
    conformance = _read_conformance(r)
    pdu_size = r.u16("client-max-receive-pdu-size")
    return InitiateRequest(conformance, pdu_size, version, key, response_allowed, qos)


def _read_initiate_response(r: Reader) -> InitiateResponse:
    qos = r.i8("negotiated-quality-of-service") if r.flag("negotiated-quality-of-service") else None
    version = r.u8("negotiated-dlms-version-number")
    conformance = _read_conformance(r)
    pdu_size = r.u16("server-max-receive-pdu-size")
    vaa_name = r.u16("vaa-name")
    return InitiateResponse(version, conformance, pdu_size, vaa_name, qos)


_UserInfo = InitiateRequest | InitiateResponse | ConfirmedServiceError | bytes


def _user_information(ber: _Ber, tlv: _Tlv) -> _UserInfo:
    """Decode [30] EXPLICIT OCTET STRING holding one xDLMS APDU."""
    octets = ber.inner(tlv).expect(_T_OCTET_STRING, "user-information")
    # A Reader over the whole buffer keeps offsets absolute; the slice bounds it.
    r = Reader(ber.buf[: octets.value_end], octets.value_start)
    start = r.pos
    tag = r.u8("xDLMS APDU tag in user-information")
    result: _UserInfo
    if tag == _INITIATE_REQUEST_TAG:
        result = _read_initiate_request(r)
    elif tag == _INITIATE_RESPONSE_TAG:
        result = _read_initiate_response(r)
    elif tag == Tag.CONFIRMED_SERVICE_ERROR:
        r.pos = start
        apdu = decode_xdlms(r, "user-information")
        assert isinstance(apdu, ConfirmedServiceError)
        result = apdu
    elif tag in _CIPHERED_INITIATE_TAGS or tag in (0x2E, 0x4E):
        # Kept whole: deciphering needs keys the ACSE layer does not hold.
        return ber.buf[start : octets.value_end]
    else:
        raise r.fail(
            f"unexpected xDLMS APDU tag 0x{tag:02X} in user-information",
            code="acse.unexpected_user_information",
            offset=start,
        )
    r.end("xDLMS APDU in user-information")
    return result


def _encode_user_information(xdlms: bytes) -> bytes:
    return _tlv(_T_USER_INFORMATION, _tlv(_T_OCTET_STRING, xdlms))


# -- AARQ -----------------------------------------------------------------------------------------


def _encode_context(context: ApplicationContext) -> bytes:
    return _tlv(_T_CONTEXT_NAME, _tlv(_T_OID, _oid(_DLMS_OID_PREFIX, int(context))))


def _encode_aarq(aarq: AARQ) -> bytes:
    body = bytearray(_encode_context(aarq.context))
    if aarq.calling_ap_title is not None:
        body += _tlv(_T_CALLING_AP_TITLE, _tlv(_T_OCTET_STRING, aarq.calling_ap_title))
    if aarq.mechanism == AuthenticationMechanism.NONE:
        if aarq.password is not None:
            raise EncodeError(
                "a password needs an authentication mechanism",
                code="acse.password_without_mechanism",
            )
    else:
        if aarq.password is None:
            raise EncodeError(
                f"authentication mechanism {_label(aarq.mechanism)} needs a password",
                code="acse.missing_password",
            )
        body += _tlv(_T_AARQ_ACSE_REQUIREMENTS, b"\x07\x80")  # bit string: authentication
        body += _tlv(_T_AARQ_MECHANISM, _oid(_MECHANISM_OID_PREFIX, int(aarq.mechanism)))
        # Authentication-value CHOICE charstring [0] IMPLICIT GraphicString.
        body += _tlv(_T_AARQ_AUTH_VALUE, _tlv(0x80, aarq.password))
    if aarq.ciphered_initiate is not None:
        body += _encode_user_information(aarq.ciphered_initiate)
    elif aarq.initiate is not None:
        body += _encode_user_information(encode_initiate_request(aarq.initiate))
    else:
        raise EncodeError("an AARQ needs an InitiateRequest", code="acse.missing_field")
    return _tlv(Tag.AARQ, bytes(body))


def _decode_aarq(ber: _Ber) -> AARQ:
    context: ApplicationContext | None = None
    mechanism = AuthenticationMechanism.NONE
    password: bytes | None = None
    initiate: _UserInfo | None = None
    calling_title: bytes | None = None
    while not ber.at_end():
        tlv = ber.next("AARQ field")
        if tlv.tag == _T_CONTEXT_NAME:
            context = _context_name(ber, tlv)
        elif tlv.tag == _T_CALLING_AP_TITLE:
            calling_title = ber.value(ber.inner(tlv).expect(_T_OCTET_STRING, "calling-AP-title"))
        elif tlv.tag == _T_AARQ_MECHANISM:
            mechanism = _mechanism_name(ber, tlv)
        elif tlv.tag == _T_AARQ_AUTH_VALUE:
            value = ber.inner(tlv).next("calling-authentication-value")
            if value.tag != 0x80:
                raise ber.fail(
                    f"calling-authentication-value: only charstring [0] is supported,"
                    f" got tag 0x{value.tag:02X}",
                    value.start,
                    "acse.unsupported",
                )
            password = ber.value(value)
        elif tlv.tag == _T_USER_INFORMATION:
            initiate = _user_information(ber, tlv)
        # Anything else (protocol-version, AP titles, acse-requirements, implementation-
        # information) carries nothing the codec uses.
    if context is None:
        raise ber.fail("AARQ without application-context-name", ber.end, "acse.missing_field")
    if isinstance(initiate, bytes):
        return AARQ(context, mechanism, password, None, calling_title, initiate)
    if not isinstance(initiate, InitiateRequest):
        raise ber.fail("AARQ without an xDLMS InitiateRequest", ber.end, "acse.missing_field")
    return AARQ(context, mechanism, password, initiate, calling_title)


# -- AARE -----------------------------------------------------------------------------------------


def _encode_aare(aare: AARE) -> bytes:
    body = bytearray(_encode_context(aare.context))
    body += _tlv(_T_RESULT, _ber_integer(int(AssociationResult(aare.result))))
    diag = aare.diagnostic
    body += _tlv(
        _T_DIAGNOSTIC,
        _tlv(
            0xA0 | int(DiagnosticSource(diag.source)),
            _ber_integer(_check_i32(diag.value, "diagnostic")),
        ),
    )
    if aare.responding_ap_title is not None:
        body += _tlv(_T_RESPONDING_AP_TITLE, _tlv(_T_OCTET_STRING, aare.responding_ap_title))
    if aare.mechanism is not None:  # echoed as received, even the odd arc 0
        body += _tlv(_T_AARE_ACSE_REQUIREMENTS, b"\x07\x80")
        body += _tlv(_T_AARE_MECHANISM, _oid(_MECHANISM_OID_PREFIX, int(aare.mechanism)))
    if aare.authentication_value is not None:
        body += _tlv(_T_AARE_AUTH_VALUE, _tlv(0x80, aare.authentication_value))
    if aare.initiate_response is not None and aare.confirmed_service_error is not None:
        raise EncodeError(
            "an AARE carries an initiate-response or a confirmed-service-error, not both",
            code="acse.conflicting_fields",
        )
    if aare.ciphered_initiate is not None:
        body += _encode_user_information(aare.ciphered_initiate)
    elif aare.initiate_response is not None:
        body += _encode_user_information(encode_initiate_response(aare.initiate_response))
    elif aare.confirmed_service_error is not None:
        body += _encode_user_information(encode_apdu(aare.confirmed_service_error))
    return _tlv(Tag.AARE, bytes(body))


def _decode_aare(ber: _Ber) -> AARE:
    context: ApplicationContext | None = None
    result: AssociationResult | None = None
    diagnostic: SourceDiagnostic | None = None
    mechanism: AuthenticationMechanism | None = None
    user: _UserInfo | None = None
    title: bytes | None = None
    auth_value: bytes | None = None
    while not ber.at_end():
        tlv = ber.next("AARE field")
        if tlv.tag == _T_CONTEXT_NAME:
            context = _context_name(ber, tlv)
        elif tlv.tag == _T_RESULT:
            value = ber.explicit_integer(tlv, "association result")
            try:
                result = AssociationResult(value)
            except ValueError:
                raise ber.fail(
                    f"unknown association result {value}", tlv.start, "acse.bad_value"
                ) from None
        elif tlv.tag == _T_DIAGNOSTIC:
            choice = ber.inner(tlv).next("result-source-diagnostic")
            if choice.tag not in (0xA1, 0xA2):
                raise ber.fail(
                    f"result-source-diagnostic: unknown choice tag 0x{choice.tag:02X}", choice.start
                )
            value = ber.explicit_integer(choice, "result-source-diagnostic")
            diagnostic = SourceDiagnostic(DiagnosticSource(choice.tag & 0x0F), value)
        elif tlv.tag == _T_AARE_MECHANISM:
            mechanism = _mechanism_name(ber, tlv)
        elif tlv.tag == _T_RESPONDING_AP_TITLE:
            title = ber.value(ber.inner(tlv).expect(_T_OCTET_STRING, "responding-AP-title"))
        elif tlv.tag == _T_AARE_AUTH_VALUE:
            auth_value = ber.value(ber.inner(tlv).next("responding-authentication-value"))
        elif tlv.tag == _T_USER_INFORMATION:
            user = _user_information(ber, tlv)
    if context is None:
        raise ber.fail("AARE without application-context-name", ber.end, "acse.missing_field")
    if result is None:
        raise ber.fail("AARE without result", ber.end, "acse.missing_field")
    if diagnostic is None:
        raise ber.fail("AARE without result-source-diagnostic", ber.end, "acse.missing_field")
    if isinstance(user, InitiateRequest):
        raise ber.fail(
            "AARE carries an InitiateRequest", ber.end, "acse.unexpected_user_information"
        )
    return AARE(
        result,
        diagnostic,
        context,
        user if isinstance(user, InitiateResponse) else None,
        user if isinstance(user, ConfirmedServiceError) else None,
        mechanism,
        title,
        auth_value,
        user if isinstance(user, bytes) else None,
    )


# -- RLRQ / RLRE ----------------------------------------------------------------------------------


def _encode_release(tag: int, reason: int | None, xdlms: bytes | None) -> bytes:
    body = b""
    if reason is not None:
        body += _tlv(_T_REASON, _check_u(int(reason), 7, "release reason").to_bytes(1, "big"))
    if xdlms is not None:
        body += _encode_user_information(xdlms)
    return _tlv(tag, body)


def _decode_release(ber: _Ber, what: str) -> tuple[int | None, _UserInfo | None, int]:
    reason: int | None = None
    reason_at = ber.pos
    user: _UserInfo | None = None
    while not ber.at_end():
        tlv = ber.next(f"{what} field")
        if tlv.tag == _T_REASON:
            raw = ber.value(tlv)
            if not 1 <= len(raw) <= 4:
                raise ber.fail(f"{what} reason of {len(raw)} bytes", tlv.start)
            reason, reason_at = int.from_bytes(raw, "big", signed=True), tlv.start
        elif tlv.tag == _T_USER_INFORMATION:
            user = _user_information(ber, tlv)
    return reason, user, reason_at


#: The ciphered initiate APDUs an RLRQ / RLRE may carry in its user-information.
_CIPHERED_RELEASE_REQUEST_TAGS = frozenset({0x21, 0x41})
_CIPHERED_RELEASE_RESPONSE_TAGS = frozenset({0x28, 0x48})


def _decode_rlrq(ber: _Ber) -> RLRQ:
    reason, user, at = _decode_release(ber, "RLRQ")
    ciphered: bytes | None = None
    if isinstance(user, bytes) and user[0] in _CIPHERED_RELEASE_REQUEST_TAGS:
        ciphered, user = user, None
    if user is not None and not isinstance(user, InitiateRequest):
        raise ber.fail(
            "RLRQ user-information is not an InitiateRequest",
            ber.end,
            "acse.unexpected_user_information",
        )
    try:
        return RLRQ(None if reason is None else ReleaseRequestReason(reason), user, ciphered)
    except ValueError:
        raise ber.fail(f"unknown RLRQ reason {reason}", at, "acse.bad_value") from None


def _decode_rlre(ber: _Ber) -> RLRE:
    reason, user, at = _decode_release(ber, "RLRE")
    ciphered: bytes | None = None
    if isinstance(user, bytes) and user[0] in _CIPHERED_RELEASE_RESPONSE_TAGS:
        ciphered, user = user, None
    if user is not None and not isinstance(user, InitiateResponse):
        raise ber.fail(
            "RLRE user-information is not an InitiateResponse",
            ber.end,
            "acse.unexpected_user_information",
        )
    try:
        return RLRE(None if reason is None else ReleaseResponseReason(reason), user, ciphered)
    except ValueError:
        raise ber.fail(f"unknown RLRE reason {reason}", at, "acse.bad_value") from None


# -- public entry points --------------------------------------------------------------------------


def encode_acse(apdu: AcseApdu) -> bytes:
    """Encode an AARQ, AARE, RLRQ or RLRE."""
    try:
        if isinstance(apdu, AARQ):
            return _encode_aarq(apdu)
        if isinstance(apdu, AARE):
            return _encode_aare(apdu)
        if isinstance(apdu, RLRQ):
            # The ciphered InitiateRequest, when present, is carried instead of the plain one.
            user = apdu.ciphered_initiate
            if user is None and apdu.initiate is not None:
                user = encode_initiate_request(apdu.initiate)
            return _encode_release(Tag.RLRQ, apdu.reason, user)
        if isinstance(apdu, RLRE):
            user = apdu.ciphered_initiate
            if user is None and apdu.initiate_response is not None:
                user = encode_initiate_response(apdu.initiate_response)
            return _encode_release(Tag.RLRE, apdu.reason, user)
    except ValueError as exc:  # an enum field given a value that is not a member
        raise EncodeError(
            f"cannot encode {type(apdu).__name__}: {exc}", code="acse.bad_value"
        ) from exc
    raise EncodeError(f"not an ACSE APDU: {type(apdu).__name__}", code="acse.unknown_type")


def decode_acse(data: bytes | bytearray | memoryview) -> AcseApdu:
    """Decode one complete AARQ, AARE, RLRQ or RLRE; trailing bytes are an error."""
    buf = bytes(data)
    top = _Ber(buf, 0, len(buf))
    tlv = top.next("ACSE APDU")
    if tlv.value_end != len(buf):
        raise DecodeError(
            f"{len(buf) - tlv.value_end} unexpected bytes after the ACSE APDU",
            code="acse.trailing_bytes",
            offset=tlv.value_end,
        )
    inner = top.inner(tlv)
    if tlv.tag == Tag.AARQ:
        return _decode_aarq(inner)
    if tlv.tag == Tag.AARE:
        return _decode_aare(inner)
    if tlv.tag == Tag.RLRQ:
        return _decode_rlrq(inner)
    if tlv.tag == Tag.RLRE:
        return _decode_rlre(inner)
    raise DecodeError(f"unknown ACSE APDU tag 0x{tlv.tag:02X}", code="acse.unknown_tag", offset=0)


# -- checking the meter's answer ------------------------------------------------------------------

# Diagnostics worth their own error code; every other refusal is "association.rejected".
_USER_DIAGNOSTIC_CODES: dict[AcseServiceUser, tuple[str, str]] = {
    AcseServiceUser.AUTHENTICATION_FAILURE: (
        "authentication_failure",
        "the meter refused the password (AARE diagnostic authentication-failure)",
    ),
    AcseServiceUser.AUTHENTICATION_REQUIRED: (
        "authentication_required",
        "the meter requires authentication (AARE diagnostic authentication-required)",
    ),
    AcseServiceUser.AUTHENTICATION_MECHANISM_NAME_REQUIRED: (
        "authentication_required",
        "the meter requires an authentication mechanism"
        " (AARE diagnostic authentication-mechanism-name-required)",
    ),
    AcseServiceUser.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED: (
        "mechanism_not_supported",
        "the meter does not support the authentication mechanism"
        " (AARE diagnostic authentication-mechanism-name-not-recognised)",
    ),
    AcseServiceUser.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED: (
        "context_not_supported",
        "the meter does not support the application context (logical-name referencing"
        " without ciphering; AARE diagnostic application-context-name-not-supported)",
    ),
}


def check_aare(aare: AARE) -> InitiateResponse:
    """Return the meter's InitiateResponse, or raise :class:`AssociationError` saying why not.

    Codes: ``association.authentication_failure``, ``association.authentication_required``,
    ``association.mechanism_not_supported``, ``association.context_not_supported``,
    ``association.initiate_error``, ``association.rejected``,
    ``association.no_initiate_response``.
    """
    diag = aare.diagnostic
    if aare.result != AssociationResult.ACCEPTED and diag.source == DiagnosticSource.USER:
        try:
            specific = _USER_DIAGNOSTIC_CODES.get(AcseServiceUser(diag.value))
        except ValueError:
            specific = None
        if specific is not None:
            code, message = specific
            raise AssociationError(message, code=f"association.{code}")
    cse = aare.confirmed_service_error
    if cse is not None:
        detail = cse.describe()
        if (
            cse.service == ConfirmedService.INITIATE_ERROR
            and cse.error_type == ServiceErrorType.INITIATE
        ):
            hints: dict[int, str] = {
                InitiateError.DLMS_VERSION_TOO_LOW: "the meter needs another DLMS version",
                InitiateError.INCOMPATIBLE_CONFORMANCE: "no proposed service is supported",
                InitiateError.PDU_SIZE_TOO_SHORT: "the proposed PDU size is too small",
            }
            hint = hints.get(cse.error_value)
            if hint:
                detail += f"; {hint}"
        raise AssociationError(
            f"the meter refused the xDLMS initiate request ({detail})",
            code="association.initiate_error",
        )
    if aare.result != AssociationResult.ACCEPTED:
        raise AssociationError(
            f"the meter rejected the association: {_label(aare.result)}"
            f" (AARE diagnostic {_label(diag.source)} {diag.label})",
            code="association.rejected",
        )
    if aare.initiate_response is None:
        raise AssociationError(
            "the meter accepted the association without an xDLMS InitiateResponse",
            code="association.no_initiate_response",
        )
    return aare.initiate_response


# -- describe -------------------------------------------------------------------------------------


def _describe_initiate_request(req: InitiateRequest) -> dict[str, object]:
    return {
        "dlms_version": req.proposed_dlms_version,
        "conformance": req.proposed_conformance.names(),
        "max_receive_pdu_size": req.client_max_receive_pdu_size,
        "dedicated_key": req.dedicated_key is not None,
        "response_allowed": req.response_allowed,
        "quality_of_service": req.proposed_quality_of_service,
    }


def _describe_initiate_response(resp: InitiateResponse) -> dict[str, object]:
    return {
        "dlms_version": resp.negotiated_dlms_version,
        "conformance": resp.negotiated_conformance.names(),
        "max_receive_pdu_size": resp.server_max_receive_pdu_size,
        "vaa_name": resp.vaa_name,
        "quality_of_service": resp.negotiated_quality_of_service,
    }


def describe_user_information(
    user: InitiateRequest | InitiateResponse | ConfirmedServiceError,
) -> dict[str, object]:
    """A JSON-safe summary of a (deciphered) user-information APDU; a dedicated key is never
    shown, only whether there is one."""
    if isinstance(user, InitiateRequest):
        return {"kind": "initiate-request", **_describe_initiate_request(user)}
    if isinstance(user, InitiateResponse):
        return {"kind": "initiate-response", **_describe_initiate_response(user)}
    return {"kind": "confirmed-service-error", "error": user.describe()}


def _describe_security(title: bytes | None, ciphered: bytes | None) -> dict[str, object]:
    out: dict[str, object] = {}
    if title is not None:
        out["system_title"] = title.hex().upper()
    if ciphered:
        out["ciphered_user_information"] = {
            "kind": _CIPHERED_INITIATE_TAGS.get(ciphered[0], f"0x{ciphered[0]:02X}"),
            "length": len(ciphered),
        }
    return out


def describe_acse(apdu: AcseApdu) -> dict[str, object]:
    """A JSON-safe summary of an ACSE APDU; passwords are never shown, only their length."""
    if isinstance(apdu, AARQ):
        return {
            "kind": "aarq",
            "context": _label(apdu.context),
            "mechanism": _label(apdu.mechanism),
            "password_length": None if apdu.password is None else len(apdu.password),
            "initiate_request": None
            if apdu.initiate is None
            else _describe_initiate_request(apdu.initiate),
            **_describe_security(apdu.calling_ap_title, apdu.ciphered_initiate),
        }
    if isinstance(apdu, AARE):
        return {
            "kind": "aare",
            "result": _label(apdu.result),
            "diagnostic": {
                "source": _label(apdu.diagnostic.source),
                "value": apdu.diagnostic.label,
            },
            "context": _label(apdu.context),
            "mechanism": None if apdu.mechanism is None else _label(apdu.mechanism),
            "initiate_response": None
            if apdu.initiate_response is None
            else _describe_initiate_response(apdu.initiate_response),
            "confirmed_service_error": None
            if apdu.confirmed_service_error is None
            else apdu.confirmed_service_error.describe(),
            **_describe_security(apdu.responding_ap_title, apdu.ciphered_initiate),
        }
    if isinstance(apdu, RLRQ):
        return {
            "kind": "rlrq",
            "reason": None if apdu.reason is None else _label(apdu.reason),
            "initiate_request": None
            if apdu.initiate is None
            else _describe_initiate_request(apdu.initiate),
            **_describe_security(None, apdu.ciphered_initiate),
        }
    return {
        "kind": "rlre",
        "reason": None if apdu.reason is None else _label(apdu.reason),
        "initiate_response": None
        if apdu.initiate_response is None
        else _describe_initiate_response(apdu.initiate_response),
        **_describe_security(None, apdu.ciphered_initiate),
    }


def decode_user_information(
    data: bytes | bytearray | memoryview,
) -> InitiateRequest | InitiateResponse | ConfirmedServiceError:
    """Decode the plain xDLMS APDU of an AARQ/AARE user-information (e.g. once deciphered)."""
    buf = bytes(data)
    r = Reader(buf, 0)
    tag = r.u8("xDLMS APDU tag in user-information")
    result: InitiateRequest | InitiateResponse | ConfirmedServiceError
    if tag == _INITIATE_REQUEST_TAG:
        result = _read_initiate_request(r)
    elif tag == _INITIATE_RESPONSE_TAG:
        result = _read_initiate_response(r)
    elif tag == Tag.CONFIRMED_SERVICE_ERROR:
        r.pos = 0
        apdu = decode_xdlms(r, "user-information")
        assert isinstance(apdu, ConfirmedServiceError)
        result = apdu
    else:
        raise r.fail(
            f"unexpected xDLMS APDU tag 0x{tag:02X} in user-information",
            code="acse.unexpected_user_information",
            offset=0,
        )
    r.end("xDLMS APDU in user-information")
    return result


#: Tags of AARQ/AARE fields that hold a secret: the calling-authentication-value (the LLS
#: password, or the client's HLS challenge) and the responding-authentication-value (the
#: meter's HLS challenge).
_SECRET_FIELDS = {0x60: _T_AARQ_AUTH_VALUE, 0x61: _T_AARE_AUTH_VALUE}


def secret_spans(data: bytes | bytearray | memoryview) -> list[tuple[int, int]]:
    """Where the authentication values of an AARQ or AARE lie in ``data``: ``(start, end)``.

    ``data`` is the APDU, or only its beginning (the first segment of a segmented one): a span
    may then end past ``len(data)``. Anything that is not an AARQ/AARE, or that cannot be
    parsed, gives no span; when a field's length is unreadable, everything after its tag is
    taken as secret. Never raises.
    """
    buf = bytes(data)
    tag = _SECRET_FIELDS.get(buf[0]) if buf else None
    if tag is None:
        return []

    def length_at(at: int) -> tuple[int, int] | None:
        """(length, offset of the content) of the BER length at ``at``, or None."""
        if at >= len(buf):
            return None
        first = buf[at]
        if first < 0x80:
            return first, at + 1
        count = first & 0x7F
        if not 1 <= count <= 3 or at + 1 + count > len(buf):
            return None
        return int.from_bytes(buf[at + 1 : at + 1 + count], "big"), at + 1 + count

    outer = length_at(1)
    if outer is None:
        return []
    at = outer[1]
    spans = []
    while at < len(buf):
        field_tag = buf[at]
        parsed = length_at(at + 1)
        if parsed is None:
            if field_tag == tag:
                spans.append((at + 1, max(len(buf), at + 2)))
            break
        length, content = parsed
        if field_tag == tag:
            spans.append((content, content + length))
        at = content + length
    return spans


def mask_secrets(data: bytes, spans: list[tuple[int, int]], offset: int = 0) -> str:
    """``data`` in hex, with each byte inside ``spans`` shown as ``**``.

    ``offset`` is where ``data`` starts in the APDU the spans were found in.
    """
    text = data.hex()
    if not spans:
        return text
    digits = list(text)
    for start, end in spans:
        for i in range(max(start - offset, 0), min(end - offset, len(data))):
            digits[2 * i] = digits[2 * i + 1] = "*"
    return "".join(digits)
