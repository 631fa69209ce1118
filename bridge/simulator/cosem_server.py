"""The application layer of a simulated meter: ACSE and GET/SET/ACTION against its objects.

:class:`CosemServer` is sans-IO and transport-free: :meth:`CosemServer.handle` takes one
complete request APDU and returns the response APDU (or ``None``). One instance serves one
connection; the objects and the meter state it reads and writes are shared by all connections to
the meter.

Answers to what goes wrong:

- an xDLMS request before an association: exception-response service-not-allowed /
  operation-not-possible; a service that was not negotiated: service-not-allowed /
  service-not-supported; an unknown or undecodable APDU: service-unknown / service-not-supported;
  a request longer than the server's max PDU: service-not-allowed / pdu-too-long;
- no object with that class and logical name: object-undefined (another class at that logical
  name: object-class-inconsistent); an attribute or method the class does not define:
  object-undefined; one the object does not give access to: read-write-denied;
- a selective access the attribute does not support: other-reason; a malformed one:
  type-unmatched.

A second AARQ on an open association replaces it (a client that lost the AARE can try again).

With :class:`~bridge.simulator.meter.MeterSecurity` set, client SAP 1 must associate with that
mechanism and policy: the AARQ's ciphered InitiateRequest is checked (tag, policy, counter above
the last one seen from that client title), HLS needs the 4-pass (f(StoC) through
reply_to_HLS_authentication on 0-0:40.0.0.255 before anything else is served), requests must
arrive ciphered and responses leave ciphered with the meter's own counter. A request that does
not decipher gets exception-response deciphering-error; a replayed counter
invocation-counter-error with the counter expected. An RLRQ carrying a ciphered InitiateRequest
releases the association only when it deciphers (answered with a ciphered InitiateResponse;
otherwise RLRE not-finished and the association stays); a plain RLRQ is accepted as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from bridge.simulator.objects import AccessFailure, CosemObject, PlainGetter
from codec import hls, security
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
    InitiateResponse,
    ReleaseResponseReason,
    SourceDiagnostic,
    decode_user_information,
    encode_initiate_response,
)
from codec.apdu import (
    ActionRequestNormal,
    ActionResponseNormal,
    ActionResult,
    AttributeDescriptor,
    ConfirmedService,
    ConfirmedServiceError,
    DataAccessResult,
    ExceptionResponse,
    ExceptionServiceError,
    GetRequestNext,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseWithDatablock,
    InitiateError,
    InvokeId,
    SelectiveAccess,
    ServiceErrorType,
    SetRequestNormal,
    SetResponseNormal,
    StateError,
    Tag,
    decode_apdu,
    encode_apdu,
)
from codec.axdr import Data, DataType, encode_length
from codec.errors import DecodeError
from codec.obis import Obis
from codec.security import (
    SecurityError,
    SecurityKeys,
    SecurityPolicy,
    cipher_apdu,
    decipher_apdu,
    parse_ciphered,
)

if TYPE_CHECKING:
    from bridge.simulator.meter import Meter, MeterSecurity
    from bridge.simulator.models import MeterModel

__all__ = [
    "PUBLIC_CLIENT",
    "Association",
    "CosemServer",
    "RequestContext",
    "SteadyPlan",
    "steady_plan",
]

#: The public client SAP: associates without a password, may only read.
PUBLIC_CLIENT = 16
#: The management client SAP that must use the meter's security, when it has one.
SECURED_CLIENT = 1
_VAA_NAME_LN = 0x0007
#: Bytes of a GET-response-with-datablock around its raw data (tag .. length prefix).
_BLOCK_OVERHEAD = 2 + 1 + 1 + 4 + 1 + 3
#: Decoded requests by their bytes: pollers send the same few requests over and over, and the
#: decoded APDUs are immutable. Cleared when full.
_DECODED: dict[bytes, Any] = {}
_DECODED_MAX = 4096


@attrs.frozen
class SteadyPlan:
    """A GET-with-list whose every item is a plain attribute (registers' values, constants):
    its response is the header and the values, made without decoding or looking up anything."""

    #: get-response-with-list, the invoke-id byte, the count and the first result's 0x00.
    header: bytes
    getters: tuple[PlainGetter, ...]


#: Plans are cached by request bytes; requests that cannot have one are cached as None.
_STEADY_PLANS_MAX = 4096
_UNPLANNED = object()


def _decode_request(apdu: bytes) -> Any:
    request = _DECODED.get(apdu)
    if request is None:
        request = decode_apdu(apdu)
        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.clear()
        _DECODED[apdu] = request
    return request


def steady_plan(model: MeterModel, apdu: bytes) -> SteadyPlan | None:
    """The plan of a GET-with-list request (``apdu``, plain) on ``model``, or None when one of
    its items is not a plain attribute (selective access, an error, a context-dependent value)."""
    if len(apdu) < 2 or apdu[0] != Tag.GET_REQUEST or apdu[1] != 3:
        return None
    try:
        request = _decode_request(apdu)
    except DecodeError:
        return None
    if not isinstance(request, GetRequestWithList) or not request.items:
        return None
    getters = []
    for descriptor, access in request.items:
        obj = model.objects.get((descriptor.class_id, descriptor.obis))
        if access is not None or obj is None:
            return None
        if not 1 <= descriptor.attribute_id <= obj.attribute_count:
            return None
        attribute = obj.attributes.get(descriptor.attribute_id)
        if attribute is None or attribute.get is None or attribute.plain is None:
            return None
        getters.append(attribute.plain)
    header = bytes((Tag.GET_RESPONSE, 3, request.invoke.to_byte()))
    return SteadyPlan(header + encode_length(len(getters)) + b"\x00", tuple(getters))


@attrs.frozen(repr=False)
class Ciphering:
    """The ciphering of a secured association."""

    policy: SecurityPolicy
    keys: SecurityKeys
    client_title: bytes
    dedicated_key: bytes | None


@attrs.frozen
class Association:
    """What the AARQ/AARE exchange settled."""

    client_sap: int
    conformance: Conformance
    client_max_pdu: int
    authenticated: bool
    ciphering: Ciphering | None = None


@attrs.frozen(repr=False)
class _HlsPending:
    """An HLS association waiting for the client's f(StoC)."""

    mechanism: AuthenticationMechanism
    client_title: bytes
    ctos: bytes
    stoc: bytes


@attrs.define(eq=False, slots=True)
class RequestContext:
    """What a getter, setter or method sees: the meter, the clocks and the association."""

    meter: Meter
    wall: float
    now: float
    association: Association


@attrs.define(eq=False)
class _LongGet:
    """A GET whose response goes out in blocks."""

    invoke: InvokeId
    raw: bytes
    position: int = 0
    block: int = 0
    last_block: bytes = b""

    @property
    def finished(self) -> bool:
        """Whether the last block has been sent."""
        return self.position >= len(self.raw)


def _exception(state: StateError, service: ExceptionServiceError) -> bytes:
    return encode_apdu(ExceptionResponse(state, service))


_NOT_ASSOCIATED = _exception(
    StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.OPERATION_NOT_POSSIBLE
)
_TOO_LONG = _exception(StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.PDU_TOO_LONG)
_UNKNOWN_SERVICE = _exception(
    StateError.SERVICE_UNKNOWN, ExceptionServiceError.SERVICE_NOT_SUPPORTED
)
_NOT_NEGOTIATED = _exception(
    StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.SERVICE_NOT_SUPPORTED
)
_DECIPHERING_ERROR = _exception(
    StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.DECIPHERING_ERROR
)
#: Bytes a ciphered APDU adds around the plain one (tag, length, header, GCM tag).
_CIPHER_OVERHEAD = 1 + 3 + 5 + security.TAG_LENGTH


def _reject(
    diagnostic: AcseServiceUser, result: AssociationResult = AssociationResult.REJECTED_PERMANENT
) -> bytes:
    return encode_apdu(AARE(result, SourceDiagnostic(value=diagnostic)))


def _initiate_error(error: InitiateError) -> bytes:
    cse = ConfirmedServiceError(ConfirmedService.INITIATE_ERROR, ServiceErrorType.INITIATE, error)
    return encode_apdu(
        AARE(
            AssociationResult.REJECTED_PERMANENT,
            SourceDiagnostic(value=AcseServiceUser.NO_REASON_GIVEN),
            confirmed_service_error=cse,
        )
    )


class CosemServer:
    """The association and services of one connection to ``meter``."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.association: Association | None = None
        self._long_get: _LongGet | None = None
        self._hls: _HlsPending | None = None
        self._client_counter: int | None = None
        #: The association known to have negotiated GET-with-list (see ``_steady``).
        self._listing: Association | None = None

    # -- entry points ----------------------------------------------------------------------------

    def handle(self, apdu: bytes, client_sap: int, wall: float) -> bytes | None:
        """Answer one request APDU received from ``client_sap`` at wall-clock time ``wall``."""
        self.meter.counters.requests += 1
        tag = apdu[0] if apdu else -1
        if tag == Tag.AARQ:
            return self._associate(apdu, client_sap)
        if tag == Tag.RLRQ:
            return self._release(apdu)
        association = self.association
        if association is None:
            return _NOT_ASSOCIATED
        if association.ciphering is None and self._hls is None:
            # The steady-state poll: the same bytes as _get_with_list would give, or None.
            reply = self._steady(apdu, association, wall)
            if reply is not None:
                return reply
        if len(apdu) > self.meter.settings.max_pdu:
            return _TOO_LONG
        ciphering = association.ciphering
        dedicated = general = False
        if ciphering is not None:
            if not security.is_ciphered(tag):
                return _NOT_ASSOCIATED
            try:
                general = tag in (0xDB, 0xDC)
                apdu, dedicated = self._decipher(ciphering, apdu)
            except SecurityError as exc:
                self.meter.counters.auth_failures += 1
                if exc.code == "security.replay":
                    expected = (self._client_counter or 0) + 1
                    return encode_apdu(
                        ExceptionResponse(
                            StateError.SERVICE_NOT_ALLOWED,
                            ExceptionServiceError.INVOCATION_COUNTER_ERROR,
                            expected,
                        )
                    )
                return _DECIPHERING_ERROR
            except DecodeError:
                return _DECIPHERING_ERROR
        elif security.is_ciphered(tag):
            return _UNKNOWN_SERVICE
        try:
            request = _decode_request(apdu)
        except DecodeError:
            return _UNKNOWN_SERVICE
        if self._hls is not None:
            reply = self._reply_to_hls(request, association)
        else:
            service = self._SERVICES.get(type(request))
            if service is None:
                return _UNKNOWN_SERVICE
            needed, handler = service
            if not needed & association.conformance:
                return _NOT_NEGOTIATED
            reply = handler(
                self, request, RequestContext(self.meter, wall, self.meter.time(wall), association)
            )
        if ciphering is None or reply[:1] in (b"\xd8", b"\x0e"):
            return reply
        return cipher_apdu(
            reply,
            ciphering.policy,
            self._security_settings().system_title,
            self.meter.next_invocation_counter(),
            ciphering.keys,
            dedicated_key=ciphering.dedicated_key if dedicated else None,
            general=general,
        )

    def _steady(self, apdu: bytes, association: Association, wall: float) -> bytes | None:
        """The answer to a planned GET-with-list on a plain association, or None (the general
        path answers). Same bytes and state as the general path, by construction: every check
        that path makes on such a request is made here or when the plan is made."""
        meter = self.meter
        plans = meter.model.steady_plans
        if type(apdu) is not bytes:
            apdu = bytes(apdu)  # a bytearray or memoryview from the stream: the key is bytes
        plan = plans.get(apdu, _UNPLANNED)
        if plan is _UNPLANNED:
            plan = steady_plan(meter.model, apdu)
            if len(plans) >= _STEADY_PLANS_MAX:
                plans.clear()
            plans[apdu] = plan
        if plan is None or len(apdu) > meter.settings.max_pdu:
            return None
        if association is not self._listing:
            if not Conformance.MULTIPLE_REFERENCES & association.conformance:
                return None
            self._listing = association  # negotiated GET-with-list (checked once)
        assert isinstance(plan, SteadyPlan)
        t = meter.time(wall)
        reply = plan.header + b"\x00".join([get(meter, t) for get in plan.getters])
        if len(reply) > association.client_max_pdu:
            return None  # answered in blocks by the general path
        self._long_get = None
        return reply

    def _security_settings(self) -> MeterSecurity:
        sec = self.meter.settings.security
        assert sec is not None
        return sec

    def _decipher(self, ciphering: Ciphering, apdu: bytes) -> tuple[bytes, bool]:
        parsed = parse_ciphered(apdu)
        if parsed.header.policy != ciphering.policy:
            raise SecurityError("policy mismatch", code="security.policy_mismatch")
        _, plain = decipher_apdu(
            parsed, ciphering.client_title, ciphering.keys, dedicated_key=ciphering.dedicated_key
        )
        self._check_client_counter(ciphering.client_title, parsed.header.invocation_counter)
        return plain, parsed.dedicated

    def _check_client_counter(self, title: bytes, counter: int, *, first: bool = False) -> None:
        """Within an association the client's counter must go up; across associations too
        when the meter is strict (a real meter is; a test meter read by tools that restart
        their counter at 1 need not be)."""
        sec = self.meter.settings.security
        last = None if first else self._client_counter
        if sec is not None and sec.strict_counters:
            seen = self.meter.client_counters.get(title)
            if seen is not None and (last is None or seen > last):
                last = seen
        if last is not None and counter <= last:
            raise SecurityError("replayed counter", code="security.replay")
        self._client_counter = counter
        self.meter.client_counters[title] = max(counter, self.meter.client_counters.get(title, 0))

    def _reply_to_hls(self, request: Any, association: Association) -> bytes:
        """The 4th pass: check f(StoC), answer f(CtoS); nothing else is served before."""
        pending = self._hls
        assert pending is not None
        if not (
            isinstance(request, ActionRequestNormal)
            and request.method.class_id == hls.ASSOCIATION_LN_CLASS
            and request.method.obis == hls.ASSOCIATION_LN
            and request.method.method_id == hls.REPLY_TO_HLS_AUTHENTICATION
        ):
            return _NOT_ASSOCIATED
        sec = self._security_settings()
        answer = request.parameters
        client = hls.HlsParty(pending.mechanism, pending.client_title, sec.secret, sec.keys)
        if not (
            isinstance(answer, Data)
            and answer.type == DataType.OCTET_STRING
            and isinstance(answer.value, bytes)
            and hls.verify(
                client,
                answer.value,
                pending.stoc,
                my_title=sec.system_title,
                peer_challenge=pending.ctos,
            )
        ):
            self.meter.counters.auth_failures += 1
            self._hls = None
            self.association = None
            return encode_apdu(ActionResponseNormal(request.invoke, ActionResult.READ_WRITE_DENIED))
        counter = (
            self.meter.next_invocation_counter()
            if pending.mechanism == AuthenticationMechanism.HIGH_GMAC
            else 0
        )
        me = hls.HlsParty(pending.mechanism, sec.system_title, sec.secret, sec.keys)
        proof = hls.respond(
            me,
            pending.ctos,
            peer_title=pending.client_title,
            my_challenge=pending.stoc,
            invocation_counter=counter,
        )
        self._hls = None
        self.meter.counters.associations += 1
        return encode_apdu(
            ActionResponseNormal(request.invoke, ActionResult.SUCCESS, Data.octet_string(proof))
        )

    def release(self) -> None:
        """The link or connection under the association went down."""
        self.association = None
        self._long_get = None
        self._hls = None

    # -- ACSE ------------------------------------------------------------------------------------

    def _associate(self, apdu: bytes, client_sap: int) -> bytes:
        self.release()
        counters = self.meter.counters
        try:
            aarq = decode_apdu(apdu)
        except DecodeError:
            counters.refusals += 1
            return _reject(AcseServiceUser.NO_REASON_GIVEN)
        assert isinstance(aarq, AARQ)
        secured = self.meter.settings.security
        if secured is not None and client_sap == SECURED_CLIENT:
            return self._associate_secured(aarq, client_sap, secured)
        if aarq.context != ApplicationContext.LOGICAL_NAME:
            counters.refusals += 1
            return _reject(AcseServiceUser.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED)
        password = self.meter.settings.password
        required = password is not None and client_sap != PUBLIC_CLIENT
        if aarq.mechanism == AuthenticationMechanism.NONE:
            if required:
                counters.auth_failures += 1
                return _reject(AcseServiceUser.AUTHENTICATION_REQUIRED)
        elif aarq.mechanism == AuthenticationMechanism.LOW:
            if password is not None and aarq.password != password:
                counters.auth_failures += 1
                return _reject(AcseServiceUser.AUTHENTICATION_FAILURE)
        else:
            counters.refusals += 1
            return _reject(AcseServiceUser.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED)
        initiate = aarq.initiate
        if initiate is None:
            counters.refusals += 1
            return _reject(AcseServiceUser.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED)
        refusal = self._check_initiate(initiate)
        if refusal is not None:
            return refusal
        conformance = initiate.proposed_conformance & self.meter.settings.conformance
        client_max_pdu = initiate.client_max_receive_pdu_size or 0xFFFF
        if self.meter.faults.refuse_association():
            counters.refusals += 1
            return _reject(AcseServiceUser.NO_REASON_GIVEN, AssociationResult.REJECTED_TRANSIENT)
        authenticated = aarq.mechanism == AuthenticationMechanism.LOW
        self.association = Association(client_sap, conformance, client_max_pdu, authenticated)
        counters.associations += 1
        return encode_apdu(
            AARE(
                AssociationResult.ACCEPTED,
                SourceDiagnostic(value=AcseServiceUser.NULL),
                initiate_response=InitiateResponse(
                    6, conformance, self.meter.settings.max_pdu, _VAA_NAME_LN
                ),
                mechanism=AuthenticationMechanism.LOW if authenticated else None,
            )
        )

    def _check_initiate(self, initiate: InitiateRequest) -> bytes | None:
        """The AARE refusing ``initiate``, or None if it is acceptable."""
        counters = self.meter.counters
        if initiate.proposed_dlms_version < 6:
            counters.refusals += 1
            return _initiate_error(InitiateError.DLMS_VERSION_TOO_LOW)
        conformance = initiate.proposed_conformance & self.meter.settings.conformance
        if not conformance:
            counters.refusals += 1
            return _initiate_error(InitiateError.INCOMPATIBLE_CONFORMANCE)
        client_max_pdu = initiate.client_max_receive_pdu_size or 0xFFFF
        if client_max_pdu < 12:
            counters.refusals += 1
            return _initiate_error(InitiateError.PDU_SIZE_TOO_SHORT)
        return None

    def _associate_secured(self, aarq: AARQ, client_sap: int, sec: MeterSecurity) -> bytes:
        """The AARQ of the secured client: mechanism, policy, ciphered initiate, challenge."""
        counters = self.meter.counters
        ciphered = sec.policy is not None
        wanted_context = (
            ApplicationContext.LOGICAL_NAME_CIPHERED
            if ciphered
            else ApplicationContext.LOGICAL_NAME
        )
        if aarq.context != wanted_context:
            counters.refusals += 1
            return _reject(AcseServiceUser.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED)
        if aarq.mechanism != sec.mechanism:
            counters.auth_failures += 1
            if aarq.mechanism in (AuthenticationMechanism.NONE, AuthenticationMechanism.LOW):
                return _reject(AcseServiceUser.AUTHENTICATION_REQUIRED)
            return _reject(AcseServiceUser.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED)
        ctos = aarq.password or b""
        if sec.mechanism in hls.HLS_MECHANISMS and not 8 <= len(ctos) <= 64:
            counters.auth_failures += 1
            return _reject(AcseServiceUser.AUTHENTICATION_FAILURE)
        if sec.mechanism == AuthenticationMechanism.LOW and ctos != self.meter.settings.password:
            counters.auth_failures += 1
            return _reject(AcseServiceUser.AUTHENTICATION_FAILURE)
        client_title = aarq.calling_ap_title or b""
        ciphering: Ciphering | None = None
        initiate = aarq.initiate
        if sec.policy is not None and sec.keys is not None:
            if len(client_title) != security.SYSTEM_TITLE_LENGTH:
                counters.refusals += 1
                return _reject(AcseServiceUser.CALLING_AP_TITLE_NOT_RECOGNIZED)
            if aarq.ciphered_initiate is None:
                counters.refusals += 1
                return _reject(AcseServiceUser.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED)
            try:
                parsed = parse_ciphered(aarq.ciphered_initiate)
                if parsed.header.policy != sec.policy or parsed.dedicated:
                    counters.refusals += 1
                    return self._secured_refusal(sec, AcseServiceUser.NO_REASON_GIVEN)
                _, plain = decipher_apdu(parsed, client_title, sec.keys)
                self._check_client_counter(
                    client_title, parsed.header.invocation_counter, first=True
                )
                user = decode_user_information(plain)
            except SecurityError as exc:
                counters.auth_failures += 1
                if exc.code == "security.replay":
                    return self._secured_refusal(sec, AcseServiceUser.NO_REASON_GIVEN)
                return self._secured_refusal(sec, AcseServiceUser.AUTHENTICATION_FAILURE)
            except DecodeError:
                counters.refusals += 1
                return _reject(AcseServiceUser.NO_REASON_GIVEN)
            if not isinstance(user, InitiateRequest):
                counters.refusals += 1
                return _reject(AcseServiceUser.NO_REASON_GIVEN)
            initiate = user
            ciphering = Ciphering(sec.policy, sec.keys, client_title, user.dedicated_key)
        if initiate is None:
            counters.refusals += 1
            return _reject(AcseServiceUser.NO_REASON_GIVEN)
        refusal = self._check_initiate(initiate)
        if refusal is not None:
            return refusal
        conformance = initiate.proposed_conformance & self.meter.settings.conformance
        client_max_pdu = initiate.client_max_receive_pdu_size or 0xFFFF
        self.association = Association(client_sap, conformance, client_max_pdu, True, ciphering)
        response = InitiateResponse(6, conformance, self.meter.settings.max_pdu, _VAA_NAME_LN)
        stoc: bytes | None = None
        diagnostic = AcseServiceUser.NULL
        if sec.mechanism in hls.HLS_MECHANISMS:
            stoc = hls.make_challenge(os.urandom)
            self._hls = _HlsPending(sec.mechanism, client_title, ctos, stoc)
            diagnostic = AcseServiceUser.AUTHENTICATION_REQUIRED
        else:
            counters.associations += 1
        return encode_apdu(
            AARE(
                AssociationResult.ACCEPTED,
                SourceDiagnostic(value=diagnostic),
                context=wanted_context,
                initiate_response=None if ciphered else response,
                mechanism=sec.mechanism,
                responding_ap_title=sec.system_title,
                authentication_value=stoc,
                ciphered_initiate=self._cipher_user(sec, encode_initiate_response(response))
                if ciphered
                else None,
            )
        )

    def _cipher_user(self, sec: MeterSecurity, plain: bytes) -> bytes:
        assert sec.policy is not None and sec.keys is not None
        return cipher_apdu(
            plain, sec.policy, sec.system_title, self.meter.next_invocation_counter(), sec.keys
        )

    def _secured_refusal(self, sec: MeterSecurity, diagnostic: AcseServiceUser) -> bytes:
        """A refusal whose ciphered confirmed-service-error lets the client check its keys."""
        cse = ConfirmedServiceError(
            ConfirmedService.INITIATE_ERROR, ServiceErrorType.INITIATE, InitiateError.OTHER
        )
        return encode_apdu(
            AARE(
                AssociationResult.REJECTED_PERMANENT,
                SourceDiagnostic(value=diagnostic),
                context=ApplicationContext.LOGICAL_NAME_CIPHERED,
                responding_ap_title=sec.system_title,
                ciphered_initiate=self._cipher_user(sec, encode_apdu(cse)),
            )
        )

    def _release(self, apdu: bytes) -> bytes:
        try:
            rlrq = decode_apdu(apdu)
        except DecodeError:
            rlrq = None
        association = self.association
        ciphering = None if association is None else association.ciphering
        if (
            isinstance(rlrq, RLRQ)
            and rlrq.ciphered_initiate is not None
            and association is not None
            and ciphering is not None
        ):
            return self._release_ciphered(rlrq.ciphered_initiate, association, ciphering)
        if association is not None:
            self.meter.counters.releases += 1
        response = None
        if isinstance(rlrq, RLRQ) and rlrq.initiate is not None and association is not None:
            response = InitiateResponse(
                6, association.conformance, self.meter.settings.max_pdu, _VAA_NAME_LN
            )
        self.release()
        return encode_apdu(RLRE(ReleaseResponseReason.NORMAL, response))

    def _release_ciphered(
        self, ciphered: bytes, association: Association, ciphering: Ciphering
    ) -> bytes:
        """An RLRQ with a ciphered InitiateRequest: released only when it deciphers with the
        association's keys and a fresh counter (a third party cannot release it), answered
        with a ciphered InitiateResponse; otherwise the association stays (not-finished)."""
        try:
            parsed = parse_ciphered(ciphered)
            if parsed.header.policy != ciphering.policy or parsed.dedicated:
                raise SecurityError("policy mismatch", code="security.policy_mismatch")
            _, plain = decipher_apdu(parsed, ciphering.client_title, ciphering.keys)
            self._check_client_counter(ciphering.client_title, parsed.header.invocation_counter)
            user = decode_user_information(plain)
            if not isinstance(user, InitiateRequest):
                raise DecodeError("not an InitiateRequest", code="acse.unexpected_user_information")
        except (SecurityError, DecodeError):
            self.meter.counters.auth_failures += 1
            return encode_apdu(RLRE(ReleaseResponseReason.NOT_FINISHED))
        self.meter.counters.releases += 1
        response = InitiateResponse(
            6, association.conformance, self.meter.settings.max_pdu, _VAA_NAME_LN
        )
        reply = RLRE(
            ReleaseResponseReason.NORMAL,
            ciphered_initiate=self._cipher_user(
                self._security_settings(), encode_initiate_response(response)
            ),
        )
        self.release()
        return encode_apdu(reply)

    # -- GET -------------------------------------------------------------------------------------

    def _lookup(self, class_id: int, obis: Obis) -> CosemObject:
        model = self.meter.model
        obj = model.objects.get((class_id, obis))
        if obj is None:
            if obis in model.by_obis:
                raise AccessFailure(DataAccessResult.OBJECT_CLASS_INCONSISTENT)
            raise AccessFailure(DataAccessResult.OBJECT_UNDEFINED)
        return obj

    def _read(
        self, descriptor: AttributeDescriptor, access: SelectiveAccess | None, ctx: RequestContext
    ) -> bytes:
        """The encoded value of one attribute, or AccessFailure."""
        obj = self._lookup(descriptor.class_id, descriptor.obis)
        attribute_id = descriptor.attribute_id
        if not 1 <= attribute_id <= obj.attribute_count:
            raise AccessFailure(DataAccessResult.OBJECT_UNDEFINED)
        attribute = obj.attributes.get(attribute_id)
        if attribute is None or attribute.get is None:
            raise AccessFailure(DataAccessResult.READ_WRITE_DENIED)
        if access is not None and (
            not Conformance.SELECTIVE_ACCESS & ctx.association.conformance
            or access.selector not in attribute.selectors
        ):
            raise AccessFailure(DataAccessResult.OTHER_REASON)
        return attribute.get(ctx, access)

    def _get_normal(self, request: GetRequestNormal, ctx: RequestContext) -> bytes:
        self._long_get = None
        invoke = request.invoke
        try:
            raw = self._read(request.attribute, request.access, ctx)
        except AccessFailure as failure:
            return bytes((Tag.GET_RESPONSE, 1, invoke.to_byte(), 1, failure.result))
        header = bytes((Tag.GET_RESPONSE, 1, invoke.to_byte(), 0))
        return self._respond(invoke, header, raw, ctx)

    def _get_with_list(self, request: GetRequestWithList, ctx: RequestContext) -> bytes:
        self._long_get = None
        parts = [encode_length(len(request.items))]
        for descriptor, access in request.items:
            try:
                parts.append(b"\x00" + self._read(descriptor, access, ctx))
            except AccessFailure as failure:
                parts.append(bytes((1, failure.result)))
        invoke = request.invoke
        header = bytes((Tag.GET_RESPONSE, 3, invoke.to_byte()))
        return self._respond(invoke, header, b"".join(parts), ctx)

    def _respond(self, invoke: InvokeId, header: bytes, raw: bytes, ctx: RequestContext) -> bytes:
        """``header + raw`` if it fits the client's PDU, else the first block of a long GET."""
        limit = ctx.association.client_max_pdu
        if ctx.association.ciphering is not None:
            limit -= _CIPHER_OVERHEAD
        if len(header) + len(raw) <= limit:
            return header + raw
        if (
            not Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ & ctx.association.conformance
            or limit <= _BLOCK_OVERHEAD
        ):
            # Too long and no way to split it: the meter cannot serve this request.
            return bytes((Tag.GET_RESPONSE, 1, invoke.to_byte(), 1, DataAccessResult.OTHER_REASON))
        self._long_get = _LongGet(invoke, raw)
        return self._next_block(self._long_get, limit)

    def _next_block(self, long_get: _LongGet, limit: int) -> bytes:
        size = limit - _BLOCK_OVERHEAD
        chunk = long_get.raw[long_get.position : long_get.position + size]
        long_get.position += len(chunk)
        long_get.block += 1
        self.meter.counters.blocks += 1
        long_get.last_block = encode_apdu(
            GetResponseWithDatablock(long_get.invoke, long_get.finished, long_get.block, chunk)
        )
        return long_get.last_block

    def _get_next(self, request: GetRequestNext, ctx: RequestContext) -> bytes:
        long_get = self._long_get
        if (
            long_get is not None
            and long_get.block > 1
            and request.block_number == long_get.block - 1
        ):
            return long_get.last_block  # the client lost the last block: send it again
        if long_get is None or long_get.finished:
            result = DataAccessResult.NO_LONG_GET_IN_PROGRESS
        elif request.block_number != long_get.block:
            self._long_get = None
            result = DataAccessResult.DATA_BLOCK_NUMBER_INVALID
        else:
            limit = ctx.association.client_max_pdu
            if ctx.association.ciphering is not None:
                limit -= _CIPHER_OVERHEAD
            return self._next_block(long_get, limit)
        return encode_apdu(
            GetResponseWithDatablock(request.invoke, True, request.block_number, result)
        )

    # -- SET and ACTION --------------------------------------------------------------------------

    def _set(self, request: SetRequestNormal, ctx: RequestContext) -> bytes:
        self._long_get = None
        result = DataAccessResult.SUCCESS
        try:
            obj = self._lookup(request.attribute.class_id, request.attribute.obis)
            attribute_id = request.attribute.attribute_id
            if not 1 <= attribute_id <= obj.attribute_count:
                raise AccessFailure(DataAccessResult.OBJECT_UNDEFINED)
            attribute = obj.attributes.get(attribute_id)
            if (
                attribute is None
                or attribute.set is None
                or ctx.association.client_sap == PUBLIC_CLIENT
            ):
                raise AccessFailure(DataAccessResult.READ_WRITE_DENIED)
            if request.access is not None:
                raise AccessFailure(DataAccessResult.OTHER_REASON)
            attribute.set(ctx, request.value)
        except AccessFailure as failure:
            result = DataAccessResult(failure.result)
        return encode_apdu(SetResponseNormal(request.invoke, result))

    def _action(self, request: ActionRequestNormal, ctx: RequestContext) -> bytes:
        self._long_get = None
        descriptor = request.method
        result = ActionResult.SUCCESS
        returned = None
        try:
            try:
                obj = self._lookup(descriptor.class_id, descriptor.obis)
            except AccessFailure as failure:
                raise AccessFailure(ActionResult(failure.result)) from None
            if not 1 <= descriptor.method_id <= obj.method_count:
                raise AccessFailure(ActionResult.OBJECT_UNDEFINED)
            method = obj.methods.get(descriptor.method_id)
            if method is None or ctx.association.client_sap == PUBLIC_CLIENT:
                raise AccessFailure(ActionResult.READ_WRITE_DENIED)
            returned = method.call(ctx, request.parameters)
        except AccessFailure as failure:
            result = ActionResult(failure.result)
        return encode_apdu(ActionResponseNormal(request.invoke, result, returned))

    #: Each request the meter serves: the conformance bit it needs and its handler.
    _SERVICES: dict[
        type, tuple[Conformance, Callable[[CosemServer, Any, RequestContext], bytes]]
    ] = {
        GetRequestNormal: (Conformance.GET, _get_normal),
        GetRequestWithList: (Conformance.MULTIPLE_REFERENCES, _get_with_list),
        GetRequestNext: (Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ, _get_next),
        SetRequestNormal: (Conformance.SET, _set),
        ActionRequestNormal: (Conformance.ACTION, _action),
    }
