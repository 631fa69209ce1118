"""Client application association over an HDLC or wrapper link, sans-IO.

:class:`ClientAssociation` opens the link, sends the AARQ and checks the AARE, then carries one
confirmed xDLMS request at a time: it stamps each request with the next invoke-id, matches the
reply by invoke-id (a late reply to an abandoned request is dropped, not mistaken for the current
one, and the reply timer of the current one runs on: when its reply never comes, that request
alone is given up with :class:`~codec.errors.ResponseTimeout` and the association stays
usable), and fetches the remaining blocks of a long GET itself, so the caller always receives one
complete response. :meth:`ClientAssociation.release` sends RLRQ and then DISC.

The states and what may happen in each are a table (:data:`TRANSITIONS`); anything else is a
protocol error.

With :class:`SecuritySettings` the association speaks DLMS security suite 0
(:mod:`codec.security`): the AARQ carries the client's system title and a ciphered InitiateRequest,
every request goes out glo- (or ded-) ciphered with the next invocation counter, every ciphered
response is checked (tag, policy, the meter's counter strictly increasing) before it is decoded.
With an HLS mechanism (:mod:`codec.hls`) the association is only reported open after the 4-pass
exchange: f(StoC) sent with ``reply_to_HLS_authentication`` and the meter's f(CtoS) verified.
The RLRQ of a ciphered association carries the InitiateRequest ciphered; the meter's RLRE is
accepted plain or with a ciphered InitiateResponse (checked like any ciphered response).
"""

from __future__ import annotations

import enum
import os
from typing import TYPE_CHECKING

import attrs

from codec import acse, apdu, hls, security
from codec.acse import AARE, AARQ, RLRE, RLRQ, Conformance, InitiateRequest
from codec.apdu import (
    ActionRequestNormal,
    ActionResponseNormal,
    ActionResult,
    Apdu,
    ConfirmedServiceError,
    DataNotification,
    ExceptionResponse,
    GetRequestNext,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithDatablock,
    GetResponseWithList,
    InvokeId,
    MethodDescriptor,
    Request,
    XdlmsApdu,
)
from codec.axdr import Data, DataType, decode_data
from codec.errors import (
    AssociationError,
    DecodeError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ResponseTimeout,
)
from codec.hdlc import NEED_DATA, NeedData
from codec.link import (
    ApduReceived,
    Connected,
    Disconnected,
    Link,
    LinkState,
    UnsolicitedData,
    strip_llc,
)
from codec.link import Event as LinkEvent

if TYPE_CHECKING:
    from codec._steady_py import SteadyDecoder, SteadyReading
from codec.security import (
    InvocationCounterSource,
    MemoryCounter,
    SecurityError,
    SecurityKeys,
    SecurityPolicy,
)

__all__ = [
    "Associated",
    "AssociationSettings",
    "AssociationState",
    "ClientAssociation",
    "Closed",
    "Lenient",
    "Negotiated",
    "Notification",
    "Released",
    "Response",
    "SecuritySettings",
    "SteadyResponse",
]

#: Block transfers longer than this many blocks are refused as hostile.
MAX_BLOCKS = 10_000
#: Default bound of a GET answered in blocks: the raw data of all its blocks together, bytes.
DEFAULT_MAX_RESPONSE_SIZE = 256 * 1024
#: Default max receive PDU size the client proposes (bytes); every APDU from the meter, and so
#: every reassembled HDLC reply, must fit in it.
DEFAULT_MAX_PDU_SIZE = 1024
#: How far past the max receive PDU size a reply may run: the padding some meters add after a
#: full reply (tolerated and counted as trailing bytes). A longer reply is a protocol error.
PDU_PADDING_ALLOWANCE = 64


_TITLED_MECHANISMS = frozenset(
    {acse.AuthenticationMechanism.HIGH_GMAC, acse.AuthenticationMechanism.HIGH_SHA256}
)


class AssociationState(enum.Enum):
    """Where the association is."""

    IDLE = "idle"
    LINKING = "linking"
    ASSOCIATING = "associating"
    AUTHENTICATING = "authenticating"
    READY = "ready"
    WAITING = "waiting"
    RELEASING = "releasing"
    UNLINKING = "unlinking"
    CLOSED = "closed"


class _Ev(enum.Enum):
    OPEN = "open()"
    LINK_UP = "link up"
    AARE_OK = "AARE accepted"
    AARE_HLS = "AARE accepted pending HLS"
    HLS_OK = "HLS authentication passed"
    REQUEST = "request()"
    RESPONSE = "response"
    RELEASE = "release()"
    ABORT = "abort()"
    RLRE = "RLRE"
    LINK_DOWN = "link down"


S = AssociationState
#: (state, event) -> next state. Anything not listed is refused.
TRANSITIONS: dict[tuple[AssociationState, _Ev], AssociationState] = {
    (S.IDLE, _Ev.OPEN): S.LINKING,
    (S.LINKING, _Ev.LINK_UP): S.ASSOCIATING,
    (S.ASSOCIATING, _Ev.AARE_OK): S.READY,
    (S.ASSOCIATING, _Ev.AARE_HLS): S.AUTHENTICATING,
    (S.AUTHENTICATING, _Ev.HLS_OK): S.READY,
    (S.READY, _Ev.REQUEST): S.WAITING,
    (S.WAITING, _Ev.RESPONSE): S.READY,
    (S.READY, _Ev.RELEASE): S.RELEASING,
    (S.RELEASING, _Ev.RLRE): S.UNLINKING,
    **{
        (s, _Ev.ABORT): S.UNLINKING
        for s in (S.LINKING, S.ASSOCIATING, S.AUTHENTICATING, S.READY, S.WAITING)
    },
    (S.RELEASING, _Ev.ABORT): S.UNLINKING,
    **{(s, _Ev.LINK_DOWN): S.CLOSED for s in AssociationState},
}
#: The table keyed by the members' values: a tuple of strings hashes in C, a tuple of enum
#: members through Enum.__hash__ in Python (twice per transition, twice per request).
_TRANSITIONS_BY_VALUE: dict[tuple[str, str], AssociationState] = {
    (state.value, event.value): target for (state, event), target in TRANSITIONS.items()
}


@attrs.frozen(repr=False)
class SecuritySettings:
    """Authentication mechanism, ciphering policy, titles and keys of a secured association.

    ``policy`` None means no ciphering (HLS-MD5/SHA1/SHA256 on a plain association).
    ``secret`` is the HLS secret of MD5/SHA1/SHA256 (HLS-GMAC uses the keys). ``counter``
    hands out the client's invocation counters; ``server_counter`` is the last counter seen
    from the meter (its next APDUs must be above it). ``server_system_title``, when known, is
    checked against the meter's AARE. ``random`` makes the challenge (injectable for tests).
    """

    mechanism: acse.AuthenticationMechanism = acse.AuthenticationMechanism.HIGH_GMAC
    policy: SecurityPolicy | None = SecurityPolicy.AUTHENTICATED_ENCRYPTED
    system_title: bytes = b"\x00" * 8
    keys: SecurityKeys | None = None
    secret: bytes | None = None
    dedicated_key: bool = False
    #: Send requests as general-glo-ciphering / general-ded-ciphering (with our title).
    general_ciphering: bool = False
    counter: InvocationCounterSource = attrs.field(factory=MemoryCounter)
    server_counter: int | None = None
    server_system_title: bytes | None = None
    random: hls.RandomSource = os.urandom
    #: The last counter seen from each meter system title, shared by every association made
    #: with these settings: a meter counter that goes back is refused across associations too.
    server_counters: dict[bytes, int] = attrs.field(factory=dict, eq=False)

    def __repr__(self) -> str:
        policy = None if self.policy is None else self.policy.label
        return f"SecuritySettings({self.mechanism.name}, {policy}, <keys hidden>)"

    @property
    def ciphered(self) -> bool:
        """Whether APDUs are ciphered."""
        return self.policy is not None


@attrs.frozen
class AssociationSettings:
    """What the client proposes in the AARQ."""

    password: bytes | None = attrs.field(default=None, repr=False)
    #: The client's max receive PDU size; a longer APDU from the meter is a protocol error.
    max_pdu_size: int = DEFAULT_MAX_PDU_SIZE
    conformance: Conformance = acse.CLIENT_DEFAULT_CONFORMANCE
    dlms_version: int = 6
    security: SecuritySettings | None = None
    #: One overall deadline (seconds) for each request and its whole response (segments and
    #: blocks included), and for opening the association; no activity of the meter extends it.
    #: ``None``: only the link's per-frame reply timeout applies.
    request_timeout: float | None = None
    #: Bound of the raw data of a GET answered in blocks (bytes).
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE


@attrs.frozen
class Negotiated:
    """What the meter accepted in its AARE."""

    conformance: Conformance
    server_max_pdu_size: int
    dlms_version: int

    @property
    def multiple_references(self) -> bool:
        """Whether GET-with-list may be used."""
        return bool(self.conformance & Conformance.MULTIPLE_REFERENCES)


@attrs.frozen
class Associated:
    """The association is open."""

    negotiated: Negotiated


@attrs.frozen
class Response:
    """The complete response to the current request (long GETs already reassembled): a
    GET/SET/ACTION response, an exception-response or a confirmed-service-error."""

    apdu: XdlmsApdu


@attrs.frozen
class Notification:
    """An unsolicited APDU from the meter (a push), decoded when possible (else its bytes)."""

    apdu: Apdu | bytes


@attrs.frozen
class Released:
    """The meter answered our RLRQ."""

    rlre: RLRE


@attrs.frozen
class Closed:
    """The link is down; no more requests are possible."""

    by_peer: bool
    reason: str


@attrs.frozen
class Lenient:
    """Something the meter got wrong that was tolerated (and counted), for a debug line.

    ``what`` is ``"trailing_bytes"`` (``data`` holds the bytes ignored after a complete APDU or
    value), ``"malformed_results"`` (results of a GET-with-list that did not decode) or
    ``"unverified_release"`` (the ciphered InitiateResponse of an RLRE did not check: the
    association is released all the same).
    """

    what: str
    detail: str
    data: bytes = b""


@attrs.frozen
class SteadyResponse:
    """The reply to a request sent with a steady decoder (:meth:`ClientAssociation.request`),
    decoded by it straight to register values (:mod:`codec.steady`)."""

    reading: SteadyReading


Event = Associated | Response | SteadyResponse | Notification | Released | Closed | Lenient

#: A steady request's transitions (sent, answered), looked up once.
_STEADY_SENT = TRANSITIONS[(S.READY, _Ev.REQUEST)]
_STEADY_ANSWERED = TRANSITIONS[(S.WAITING, _Ev.RESPONSE)]
#: The states in which a reply from the meter is awaited.
_AWAITING = frozenset({S.ASSOCIATING, S.AUTHENTICATING, S.WAITING, S.RELEASING})
#: The invoke-ids a request goes with (1..15, confirmed, high priority; 0 unused), and their bytes.
_INVOKES = tuple(InvokeId(n) for n in range(16))
_INVOKE_BYTES = tuple(bytes([invoke.to_byte()]) for invoke in _INVOKES)


def _with_invoke(encoded: bytes, invoke_id: int) -> bytes:
    """A request encoded before, with another invoke-id: only the invoke-id-and-priority
    byte differs, the third of every GET/SET/ACTION request."""
    return encoded[:2] + _INVOKE_BYTES[invoke_id] + encoded[3:]


class ClientAssociation:
    """Sans-IO DLMS client association. See the module docstring.

    Drive it like its link: :meth:`receive_data`, :meth:`next_event` until ``NEED_DATA``,
    :meth:`data_to_send`, :meth:`next_deadline` / :meth:`handle_timer`. AARE refusals raise
    :class:`~codec.errors.AssociationError`; link failures raise what the link raises.
    """

    def __init__(self, link: Link, settings: AssociationSettings | None = None) -> None:
        self.link = link
        self.settings = settings or AssociationSettings()
        # The meter must not send an APDU longer than the max receive PDU size we propose.
        link.max_apdu = self.settings.max_pdu_size + PDU_PADDING_ALLOWANCE
        self.state = AssociationState.IDLE
        self.negotiated: Negotiated | None = None
        self._invoke_id = 0
        self._current: Request | None = None  # the request awaiting its response
        self._current_invoke = 0  # and the invoke-id it went with
        #: The last request sent, and its encoding (reused while the same request repeats).
        self._encoded: tuple[Request, bytes] | None = None
        self._blocks: list[bytes] = []
        self._blocks_size = 0
        self._deadline: float | None = None  # the overall deadline of the open exchange
        # Whether the meter answered the request in flight with another request's reply since
        # the request (or its last GetRequestNext) went out: the link is known to work.
        self._reply_dropped = False
        self._events: list[Event] = []
        self._now = 0.0
        self.requests = 0
        self.stale_responses = 0
        self.blocks_received = 0
        self.trailing_bytes = 0
        self.malformed_results = 0
        #: RLREs whose ciphered InitiateResponse did not check (tolerated: released anyway).
        self.unverified_releases = 0
        #: The meter's system title (from its AARE), with ciphering.
        self.server_system_title: bytes | None = None
        #: The last invocation counter the meter used, and the last we used.
        self.server_counter: int | None = None
        self.client_counter: int | None = None
        self._sec = self.settings.security
        if self._sec is not None:
            self.server_counter = self._sec.server_counter
        self._ctos = b""
        self._stoc = b""
        self._dedicated_key: bytes | None = None
        self._hls_invoke: InvokeId | None = None
        #: Decodes the reply to the request in flight when it has the steady shape.
        self._steady: SteadyDecoder | None = None

    # -- the table ---------------------------------------------------------------------------

    def _go(self, event: _Ev) -> None:
        try:
            self.state = _TRANSITIONS_BY_VALUE[(self.state._value_, event._value_)]
        except KeyError:
            raise LocalProtocolError(
                f"{event.value} is not allowed while the association is {self.state.value}",
                code="association.bad_state",
            ) from None

    # -- commands ----------------------------------------------------------------------------

    def open(self, now: float) -> None:
        """Start: bring the link up; the AARQ follows once it is."""
        self._go(_Ev.OPEN)
        self._now = now
        self._start_deadline(now)
        self.link.connect(now)

    def request(
        self, request: Request, now: float, *, steady: SteadyDecoder | None = None
    ) -> InvokeId:
        """Send a confirmed GET/SET/ACTION request; its invoke-id is assigned here.

        ``request`` is any request APDU from :mod:`codec.apdu`; its ``invoke`` field is replaced.
        Returns the invoke-id used. With ``steady``, a reply of the steady shape (see
        :mod:`codec.steady`) is decoded by it and comes as :class:`SteadyResponse`; any other
        reply comes as usual.
        """
        self._go(_Ev.REQUEST)
        invoke_id = self._invoke_id % 15 + 1
        encoded = self._encoded
        if encoded is not None and encoded[0] is request:
            plain = _with_invoke(encoded[1], invoke_id)
        else:
            plain = apdu.encode_apdu(attrs.evolve(request, invoke=_INVOKES[invoke_id]))
            self._encoded = (request, plain)
        self._begin(request, invoke_id, now, steady)
        self._send_xdlms(plain, now)
        return _INVOKES[invoke_id]

    def _begin(
        self, request: Request, invoke_id: int, now: float, steady: SteadyDecoder | None
    ) -> None:
        """A request is on its way: what the reply is matched and decoded against."""
        self._steady = steady
        self._now = now
        # The request as given (its invoke field not replaced): the reply is matched against
        # the invoke-id kept beside it.
        self._invoke_id = self._current_invoke = invoke_id
        self._current = request
        self._blocks = []
        self._blocks_size = 0
        self._start_deadline(now)
        self.requests += 1

    def steady_request(self, request: Request, now: float, steady: SteadyDecoder) -> bytes | None:
        """A steady poll's :meth:`request` (with ``steady``) and :meth:`data_to_send` in one:
        for the request sent last, on a plain (unciphered) association that is ready with no
        event waiting, when the link sends it in one frame with nothing else open. Returns the
        bytes to write, the state being exactly what :meth:`request` leaves; None, with
        nothing done, otherwise (then call :meth:`request`)."""
        encoded = self._encoded
        if (
            encoded is None
            or encoded[0] is not request
            or self.state is not S.READY
            or self._events
            or (self._sec is not None and self._sec.ciphered)
        ):
            return None
        invoke_id = self._invoke_id % 15 + 1
        raw = self.link.send_single(_with_invoke(encoded[1], invoke_id), now)
        if raw is None:
            return None
        self.state = _STEADY_SENT
        self._begin(request, invoke_id, now, steady)
        self._reply_dropped = False  # as _send_xdlms
        return raw

    def release(self, now: float) -> None:
        """Release the association: RLRQ, then DISC once the meter answers RLRE.

        Safe to call in any state: with a request still in flight, or before the association
        is open, the link is simply disconnected.
        """
        self._now = now
        if self.state is S.READY:
            try:
                rlrq = self._rlrq()
            except ProtocolError:
                # No counter left to protect the RLRQ with: drop the link instead.
                self.abort(now)
                return
            self._go(_Ev.RELEASE)
            self.link.send_apdu(acse.encode_acse(rlrq), now)
        elif self.state is S.IDLE:
            self.state = S.CLOSED
        elif self._meter_still_associated():
            # A reply we could not accept closed the association on our side only: the meter
            # still holds it (and may allow no other). Release it properly.
            self.state = S.RELEASING
            try:
                self.link.send_apdu(acse.encode_acse(self._rlrq()), now)
            except ProtocolError:
                self.state = S.UNLINKING
                self.link.disconnect(now)
        else:
            self.abort(now)

    def _rlrq(self) -> RLRQ:
        """The RLRQ. On a ciphered association its user-information is the xDLMS
        InitiateRequest proposed in the AARQ, ciphered with the global key and the next
        invocation counter (Green Book, COSEM-RELEASE): the meter can tell the release comes
        from the client it associated with, not from a third party."""
        sec = self._sec
        if sec is None or sec.policy is None or sec.keys is None:
            return RLRQ()
        s = self.settings
        initiate = InitiateRequest(
            proposed_conformance=s.conformance,
            client_max_receive_pdu_size=s.max_pdu_size,
            proposed_dlms_version=s.dlms_version,
        )
        ciphered = security.cipher_apdu(
            acse.encode_initiate_request(initiate),
            sec.policy,
            sec.system_title,
            self._next_counter(),
            sec.keys,
        )
        return RLRQ(ciphered_initiate=ciphered)

    def _meter_still_associated(self) -> bool:
        return (
            self.state is S.CLOSED
            and self.negotiated is not None
            and self.link.state is LinkState.CONNECTED
        )

    def abort(self, now: float) -> None:
        """Drop the link without releasing the association (DISC only)."""
        self._now = now
        if (self.state, _Ev.ABORT) in TRANSITIONS:
            self._go(_Ev.ABORT)
            self._current = None
            self._deadline = None
            self.link.disconnect(now)
        elif self._meter_still_associated():
            self.state = S.UNLINKING
            self.link.disconnect(now)

    # -- I/O plumbing ------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the meter, received at ``now``."""
        self._now = now
        self.link.receive_data(data, now)

    def receive_steady(self, data: bytes, now: float) -> SteadyReading | None:
        """:meth:`receive_data`, then, when the first event would be the
        :class:`SteadyResponse` to a steady request on a plain association, its reading
        (the state as :meth:`next_event` leaves it, no event queued). None otherwise: the
        bytes are taken all the same, and :meth:`next_event` gives what follows (whatever the
        bytes were, exactly as after :meth:`receive_data`). Raises what :meth:`next_event`
        would raise."""
        self._now = now
        link = self.link
        link.receive_data(data, now)
        steady = self._steady
        if (
            steady is None
            or self._events
            or self.state is not S.WAITING
            or self._current is None
            or (self._sec is not None and self._sec.ciphered)
        ):
            return None
        try:
            info = link.next_info()  # the APDU with its LLC header, read in place
            if info is None or isinstance(info, NeedData):
                return None
            reading = steady.decode_info(info, self._current_invoke)
            if reading is None:
                # Not the steady reply: handled as next_event handles an APDU.
                self._handle_apdu(strip_llc(info))
                return None
        except ProtocolError:
            self._close_on_error()
            raise
        self._steady = None
        self._current = None
        self._deadline = None
        self.state = _STEADY_ANSWERED
        return reading

    def data_to_send(self) -> bytes:
        """Bytes to write to the meter now."""
        return self.link.data_to_send()

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called."""
        link = self.link.next_deadline()
        if self._deadline is None:
            return link
        return self._deadline if link is None else min(link, self._deadline)

    def handle_timer(self, now: float) -> None:
        """Let the link retransmit or give up; enforce the exchange's overall deadline."""
        self._now = now
        if self._deadline is not None and now >= self._deadline:
            what = "request" if self.state is S.WAITING else "association"
            self._deadline = None
            self._current = None
            self._blocks = []
            self._blocks_size = 0
            self.state = S.CLOSED
            raise ResponseTimeout(
                f"the {what} did not complete within its overall deadline of "
                f"{self.settings.request_timeout:g} s",
                code="association.deadline",
            )
        try:
            self.link.handle_timer(now)
        except ResponseTimeout:
            if self._reply_dropped and self.state is S.WAITING:
                # The meter works (it answered something else) but this request gets no
                # reply: give up on it alone; a late reply to it is dropped as stale.
                self._abandon_request()
            else:
                self.state = S.CLOSED
            raise
        except ProtocolError:
            self.state = S.CLOSED
            raise

    def _abandon_request(self) -> None:
        self._reply_dropped = False
        self._current = None
        self._deadline = None
        self._blocks = []
        self._blocks_size = 0
        self.state = S.READY

    def _start_deadline(self, now: float) -> None:
        timeout = self.settings.request_timeout
        self._deadline = None if timeout is None else now + timeout

    def drain(self) -> int:
        """Discard bytes buffered from the meter (before a retry)."""
        return self.link.drain()

    def stats(self) -> dict[str, int]:
        """Link and association counters."""
        return {
            **self.link.stats(),
            "requests": self.requests,
            "stale_responses": self.stale_responses,
            "blocks_received": self.blocks_received,
            "trailing_bytes": self.trailing_bytes,
            "malformed_results": self.malformed_results,
            "unverified_releases": self.unverified_releases,
        }

    # -- events ------------------------------------------------------------------------------

    def next_event(self) -> Event | NeedData:
        """The next event, or ``NEED_DATA``."""
        while not self._events:
            try:
                if self._steady is not None:
                    # A steady poll's reply is most often one I-frame: its APDU straight
                    # from the link, without the link event (the same handling as below).
                    data = self.link.next_apdu()
                    if data is not None:
                        if isinstance(data, NeedData):
                            return NEED_DATA
                        self._handle_apdu(data)
                        continue
                event = self.link.next_event()
                if isinstance(event, NeedData):
                    return NEED_DATA
                self._handle_link_event(event)
            except ProtocolError:
                self._close_on_error()
                raise
        return self._events.pop(0)

    def _close_on_error(self) -> None:
        # Whatever went wrong, this association cannot be trusted any more.
        self.state = S.CLOSED
        self._current = None
        self._deadline = None
        self._blocks = []
        self._blocks_size = 0

    def _handle_link_event(self, event: LinkEvent) -> None:
        if isinstance(event, Connected):
            if self.state is S.UNLINKING:
                self.link.disconnect(self._now)
                return
            self._go(_Ev.LINK_UP)
            self._send_aarq()
        elif isinstance(event, Disconnected):
            self._go(_Ev.LINK_DOWN)
            self._current = None
            self._events.append(Closed(event.by_peer, event.reason))
        elif isinstance(event, ApduReceived):
            self._handle_apdu(event.apdu)
        elif isinstance(event, UnsolicitedData):
            self._events.append(Notification(self._decode_or_raw(event.data)))

    def _send_aarq(self) -> None:
        s = self.settings
        if s.security is not None:
            self._send_secured_aarq(s.security)
            return
        aarq = AARQ(
            mechanism=(
                acse.AuthenticationMechanism.LOW
                if s.password is not None
                else acse.AuthenticationMechanism.NONE
            ),
            password=s.password,
            initiate=InitiateRequest(
                proposed_conformance=s.conformance,
                client_max_receive_pdu_size=s.max_pdu_size,
                proposed_dlms_version=s.dlms_version,
            ),
        )
        self.link.send_apdu(acse.encode_acse(aarq), self._now)

    # -- security ----------------------------------------------------------------------------

    def _next_counter(self) -> int:
        assert self._sec is not None
        counter = self._sec.counter.next()
        self.client_counter = counter
        return counter

    def _cipher(self, plain: bytes, *, global_key: bool = False) -> bytes:
        sec = self._sec
        assert sec is not None and sec.policy is not None and sec.keys is not None
        return security.cipher_apdu(
            plain,
            sec.policy,
            sec.system_title,
            self._next_counter(),
            sec.keys,
            dedicated_key=None if global_key else self._dedicated_key,
            general=sec.general_ciphering,
        )

    def _send_xdlms(self, plain: bytes, now: float, *, global_key: bool = False) -> None:
        if self._sec is not None and self._sec.ciphered:
            plain = self._cipher(plain, global_key=global_key)
        self._reply_dropped = False
        self.link.send_apdu(plain, now)

    def _send_secured_aarq(self, sec: SecuritySettings) -> None:
        s = self.settings
        mechanism = sec.mechanism
        if mechanism in hls.HLS_MECHANISMS:
            self._ctos = hls.make_challenge(sec.random)
            value: bytes | None = self._ctos
        elif mechanism == acse.AuthenticationMechanism.LOW:
            value = s.password
        else:
            value = None
        if sec.dedicated_key and sec.ciphered:
            self._dedicated_key = sec.random(security.KEY_LENGTH)
        initiate = InitiateRequest(
            proposed_conformance=s.conformance,
            client_max_receive_pdu_size=s.max_pdu_size,
            proposed_dlms_version=s.dlms_version,
            dedicated_key=self._dedicated_key,
        )
        ciphered: bytes | None = None
        if sec.ciphered:
            assert sec.policy is not None and sec.keys is not None
            # The InitiateRequest is always protected with the global key.
            ciphered = security.cipher_apdu(
                acse.encode_initiate_request(initiate),
                sec.policy,
                sec.system_title,
                self._next_counter(),
                sec.keys,
            )
        aarq = AARQ(
            context=(
                acse.ApplicationContext.LOGICAL_NAME_CIPHERED
                if sec.ciphered
                else acse.ApplicationContext.LOGICAL_NAME
            ),
            mechanism=mechanism,
            password=value,
            initiate=None if ciphered is not None else initiate,
            # The titles take part in ciphering, HLS-GMAC and HLS-SHA256 only.
            calling_ap_title=sec.system_title
            if sec.ciphered or mechanism in _TITLED_MECHANISMS
            else None,
            ciphered_initiate=ciphered,
        )
        self.link.send_apdu(acse.encode_acse(aarq), self._now)

    def _check_server_counter(self, counter: int) -> None:
        last = self.server_counter
        title = self.server_system_title
        if self._sec is not None and title is not None:
            seen = self._sec.server_counters.get(title)
            if seen is not None and (last is None or seen > last):
                last = seen
        if last is not None and counter <= last:
            raise SecurityError(
                f"the meter's invocation counter {counter} is not above the last one seen"
                f" ({last}): replayed or reset APDU",
                code="security.replay",
            )
        self.server_counter = counter
        if self._sec is not None and title is not None:
            self._sec.server_counters[title] = counter

    def _decipher(self, data: bytes) -> bytes:
        """Check and decipher a ciphered APDU from the meter; the plain APDU."""
        sec = self._sec
        if sec is None or not sec.ciphered or sec.keys is None:
            raise SecurityError(
                f"the meter sent a ciphered APDU (0x{data[0]:02X}) on an unciphered association",
                code="security.policy_mismatch",
            )
        title = self.server_system_title
        if title is None:
            raise SecurityError(
                "a ciphered APDU before the meter's system title is known",
                code="security.malformed",
            )
        ciphered = security.parse_ciphered(data)
        if ciphered.header.policy != sec.policy:
            got = ciphered.header.policy
            raise SecurityError(
                f"security policy mismatch: the meter protects its APDUs"
                f" {'unprotected' if got is None else got.label},"
                f" we use {sec.policy.label if sec.policy else 'none'}",
                code="security.policy_mismatch",
            )
        _, plain = security.decipher_apdu(
            ciphered, title, sec.keys, dedicated_key=self._dedicated_key
        )
        self._check_server_counter(ciphered.header.invocation_counter)
        return plain

    def _secured_aare(self, aare: AARE) -> AARE:
        """The AARE with its ciphered user-information deciphered (or the error explained)."""
        sec = self._sec
        assert sec is not None
        if aare.responding_ap_title is not None:
            if len(aare.responding_ap_title) != security.SYSTEM_TITLE_LENGTH:
                raise AssociationError(
                    f"the meter's system title is {len(aare.responding_ap_title)} bytes, not 8",
                    code="association.wrong_system_title",
                )
            if (
                sec.server_system_title is not None
                and aare.responding_ap_title != sec.server_system_title
            ):
                raise AssociationError(
                    f"wrong system title: the meter calls itself"
                    f" {aare.responding_ap_title.hex().upper()}, the configuration expects"
                    f" {sec.server_system_title.hex().upper()}",
                    code="association.wrong_system_title",
                )
            self.server_system_title = aare.responding_ap_title
        ciphered = aare.ciphered_initiate
        if ciphered is None:
            if (
                sec.ciphered
                and aare.result == acse.AssociationResult.ACCEPTED
                and aare.initiate_response is not None
            ):
                raise AssociationError(
                    "security policy mismatch: the meter answered without ciphering",
                    code="association.policy_mismatch",
                )
            return aare
        if not sec.ciphered or sec.keys is None:
            raise AssociationError(
                "security policy mismatch: the meter ciphers its AARE, we use no ciphering",
                code="association.policy_mismatch",
            )
        if self.server_system_title is None:
            raise AssociationError(
                "the meter's AARE is ciphered but names no system title",
                code="association.wrong_system_title",
            )
        try:
            parsed = security.parse_ciphered(ciphered)
            if parsed.header.policy != sec.policy:
                got = parsed.header.policy
                raise AssociationError(
                    f"security policy mismatch: the meter uses"
                    f" {'none' if got is None else got.label}, we use"
                    f" {sec.policy.label if sec.policy else 'none'}",
                    code="association.policy_mismatch",
                )
            _, plain = security.decipher_apdu(parsed, self.server_system_title, sec.keys)
            self._check_server_counter(parsed.header.invocation_counter)
        except SecurityError as exc:
            # Without a tag (encryption only) a wrong key shows as an APDU that is not one.
            if exc.code not in ("security.authentication_failed", "security.malformed"):
                raise AssociationError(str(exc), code="association.security") from exc
            raise self._key_error(parsed.content) from exc
        except DecodeError as exc:
            raise AssociationError(
                f"the meter's ciphered initiate response is malformed: {exc}",
                code="association.security",
            ) from exc
        user = acse.decode_user_information(plain)
        if isinstance(user, acse.InitiateResponse):
            return attrs.evolve(aare, initiate_response=user, ciphered_initiate=None)
        if isinstance(user, ConfirmedServiceError):
            return attrs.evolve(aare, confirmed_service_error=user, ciphered_initiate=None)
        raise AssociationError(
            "the meter's ciphered user-information is not an initiate response",
            code="association.security",
        )

    def _secured_rlre(self, rlre: RLRE) -> RLRE:
        """The RLRE with its ciphered InitiateResponse checked and deciphered.

        The association ends either way: one that does not check (wrong tag, policy or replayed
        counter) is reported as a :class:`Lenient` event and its user-information dropped.
        """
        ciphered = rlre.ciphered_initiate
        assert ciphered is not None
        sec = self._sec
        try:
            if sec is None or sec.policy is None or sec.keys is None:
                raise SecurityError(
                    "a ciphered RLRE on an unciphered association",
                    code="security.policy_mismatch",
                )
            if self.server_system_title is None:
                raise SecurityError(
                    "a ciphered RLRE before the meter's system title is known",
                    code="security.malformed",
                )
            parsed = security.parse_ciphered(ciphered)
            if parsed.header.policy != sec.policy:
                raise SecurityError(
                    "the RLRE is protected otherwise than the association",
                    code="security.policy_mismatch",
                )
            _, plain = security.decipher_apdu(parsed, self.server_system_title, sec.keys)
            self._check_server_counter(parsed.header.invocation_counter)
            user = acse.decode_user_information(plain)
            if not isinstance(user, acse.InitiateResponse):
                raise DecodeError(
                    "the RLRE's ciphered user-information is not an InitiateResponse",
                    code="acse.unexpected_user_information",
                )
        except (SecurityError, DecodeError) as exc:
            self.unverified_releases += 1
            self._events.append(
                Lenient("unverified_release", f"the RLRE's ciphered user-information: {exc}")
            )
            return attrs.evolve(rlre, ciphered_initiate=None)
        return attrs.evolve(rlre, initiate_response=user, ciphered_initiate=None)

    def _key_error(self, content: bytes) -> AssociationError:
        sec = self._sec
        assert sec is not None and sec.keys is not None and self.server_system_title is not None
        which = security.diagnose_failure(self.server_system_title, sec.keys, content, (0x08, 0x0E))
        if which == "authentication_key":
            return AssociationError(
                "wrong authentication key: the meter's AARE fails the GCM check"
                " (the block cipher key matches)",
                code="association.wrong_authentication_key",
            )
        if which == "block_cipher_key":
            return AssociationError(
                "wrong block cipher key: the meter's AARE does not decipher",
                code="association.wrong_block_cipher_key",
            )
        return AssociationError(
            "wrong authentication key or block cipher key: the meter's AARE fails the GMAC check",
            code="association.wrong_authentication_key",
        )

    def _refused_secured(self, aare: AARE) -> AssociationError | None:
        """A clearer error for a refused secured AARQ, when one can be given."""
        sec = self._sec
        if sec is None or aare.result == acse.AssociationResult.ACCEPTED:
            return None
        diag = aare.diagnostic
        if diag.source != acse.DiagnosticSource.USER:
            return None
        if diag.value == acse.AcseServiceUser.CALLING_AP_TITLE_NOT_RECOGNIZED:
            return AssociationError(
                f"wrong system title: the meter does not accept our system title"
                f" {sec.system_title.hex().upper()} (AARE diagnostic"
                " calling-AP-title-not-recognized)",
                code="association.wrong_system_title",
            )
        if diag.value == acse.AcseServiceUser.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED:
            return AssociationError(
                "security policy mismatch: the meter refuses the"
                f" {'ciphered' if sec.ciphered else 'unciphered'} application context",
                code="association.policy_mismatch",
            )
        if diag.value == acse.AcseServiceUser.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED:
            return AssociationError(
                f"the meter does not support {sec.mechanism.name}"
                " (AARE diagnostic authentication-mechanism-name-not-recognised)",
                code="association.mechanism_not_supported",
            )
        cse = aare.confirmed_service_error
        if (
            sec.ciphered
            and self.server_system_title is not None
            and cse is not None
            and cse.error_type == apdu.ServiceErrorType.INITIATE
            and cse.error_value == apdu.InitiateError.OTHER
        ):
            # The meter's own ciphered answer deciphered with our keys: the keys match, so
            # what it refused is the counter (or our title).
            return AssociationError(
                f"counter rejected: the meter refused the association with invocation counter"
                f" {self.client_counter} (keys and system titles match)",
                code="association.counter_rejected",
            )
        if sec.ciphered and diag.value == acse.AcseServiceUser.AUTHENTICATION_FAILURE:
            return AssociationError(
                "the meter could not decipher our AARQ: wrong block cipher key,"
                " authentication key or system title (AARE diagnostic authentication-failure)",
                code="association.authentication_failure",
            )
        if (
            sec.ciphered
            and aare.result == acse.AssociationResult.REJECTED_PERMANENT
            and diag.value == acse.AcseServiceUser.NO_REASON_GIVEN
            and cse is None
        ):
            # A meter that deciphered the AARQ answers ciphered (and says why); one that
            # refuses a ciphered AARQ without a reason and unciphered most likely could not.
            return AssociationError(
                "the meter refused our ciphered AARQ without a reason and did not answer"
                " ciphered: most likely it could not decipher it (wrong block cipher key,"
                " authentication key or system title; AARE diagnostic no-reason-given)",
                code="association.authentication_failure",
            )
        return None

    def _start_hls(self, aare: AARE) -> None:
        sec = self._sec
        assert sec is not None
        stoc = aare.authentication_value
        if not stoc:
            self.abort(self._now)
            raise AssociationError(
                "the meter sent no challenge (StoC) for HLS authentication",
                code="association.hls_failed",
            )
        self._stoc = stoc
        peer_title = self._peer_title()
        if sec.mechanism in _TITLED_MECHANISMS and not peer_title:
            self.abort(self._now)
            raise AssociationError(
                f"{sec.mechanism.name} needs the meter's system title and its AARE names none:"
                " configure the meter's system title",
                code="association.wrong_system_title",
            )
        party = hls.HlsParty(sec.mechanism, sec.system_title, sec.secret, sec.keys)
        counter = (
            self._next_counter() if sec.mechanism == acse.AuthenticationMechanism.HIGH_GMAC else 0
        )
        answer = hls.respond(
            party,
            stoc,
            peer_title=peer_title,
            my_challenge=self._ctos,
            invocation_counter=counter,
        )
        self._invoke_id = self._invoke_id % 15 + 1
        self._hls_invoke = InvokeId(self._invoke_id, confirmed=True, high_priority=True)
        action = ActionRequestNormal(
            self._hls_invoke,
            MethodDescriptor(
                hls.ASSOCIATION_LN_CLASS, hls.ASSOCIATION_LN, hls.REPLY_TO_HLS_AUTHENTICATION
            ),
            Data.octet_string(answer),
        )
        # With the global key even when a dedicated key was agreed: the association is not
        # established until this pass succeeds, and meters (gurux-based ones among them) only
        # use the dedicated key once it is; the global key is valid throughout.
        self._send_xdlms(apdu.encode_apdu(action), self._now, global_key=True)

    def _peer_title(self) -> bytes:
        """The meter's system title: from its AARE, else as configured (some meters name it
        only in a ciphered AARE, yet HLS-SHA256 and HLS-GMAC need it)."""
        sec = self._sec
        configured = None if sec is None else sec.server_system_title
        return self.server_system_title or configured or b""

    def _finish_hls(self, decoded: Apdu) -> None:
        sec = self._sec
        assert sec is not None
        if isinstance(decoded, (ExceptionResponse, ConfirmedServiceError)):
            self.abort(self._now)
            raise AssociationError(
                f"the meter refused reply_to_HLS_authentication: {decoded.error().message}",
                code="association.hls_failed",
            )
        if not isinstance(decoded, ActionResponseNormal) or (
            self._hls_invoke is not None and decoded.invoke.invoke_id != self._hls_invoke.invoke_id
        ):
            self._drop_stale()
            return
        what = (
            "authentication key"
            if sec.mechanism == acse.AuthenticationMechanism.HIGH_GMAC
            else "HLS secret"
        )
        code = (
            "association.wrong_authentication_key"
            if sec.mechanism == acse.AuthenticationMechanism.HIGH_GMAC
            else "association.wrong_secret"
        )
        if decoded.result != ActionResult.SUCCESS:
            self.abort(self._now)
            raise AssociationError(
                f"wrong {what}: the meter rejected our f(StoC)"
                f" (reply_to_HLS_authentication {decoded.result.label})",
                code=code,
            )
        data = decoded.return_data
        answer = (
            data.value if isinstance(data, Data) and data.type == DataType.OCTET_STRING else None
        )
        party = hls.HlsParty(sec.mechanism, self._peer_title(), sec.secret, sec.keys)
        if not isinstance(answer, bytes) or not hls.verify(
            party,
            answer,
            self._ctos,
            my_title=sec.system_title,
            peer_challenge=self._stoc,
        ):
            self.abort(self._now)
            raise AssociationError(
                f"the meter's f(CtoS) does not verify: wrong {what} on one side, or not the"
                " meter we think",
                code=code,
            )
        assert self.negotiated is not None
        self._go(_Ev.HLS_OK)
        self._events.append(Associated(self.negotiated))

    def _security_exception(self, decoded: ExceptionResponse) -> None:
        """Raise the installer's version of a ciphering exception-response, if it is one."""
        service = decoded.service_error
        if service == apdu.ExceptionServiceError.INVOCATION_COUNTER_ERROR:
            self.abort(self._now)
            expected = decoded.invocation_counter
            raise AssociationError(
                f"counter rejected: the meter refused invocation counter {self.client_counter}"
                + ("" if expected is None else f" (it expects at least {expected})"),
                code="association.counter_rejected",
            )
        if service == apdu.ExceptionServiceError.DECIPHERING_ERROR:
            self.abort(self._now)
            raise AssociationError(
                "the meter could not decipher our request (deciphering-error): wrong block"
                " cipher key, authentication key or system title",
                code="association.deciphering_error",
            )

    @staticmethod
    def _decode_or_raw(data: bytes) -> Apdu | bytes:
        try:
            return apdu.decode_apdu(data)
        except DecodeError:
            return data

    def _handle_apdu(self, data: bytes) -> None:
        state = self.state
        if data and security.is_ciphered(data[0]):
            data = self._decipher(data)
        elif (
            self._sec is not None
            and self._sec.ciphered
            and state in (S.WAITING, S.AUTHENTICATING)
            # Only the exception-response is sent unciphered, and exactly as long as it is
            # (3 bytes, 7 with the counter expected): nothing tampered passes as one.
            and not (data[:1] == b"\xd8" and len(data) in (3, 7))
        ):
            raise SecurityError(
                "security policy mismatch: the meter answered without ciphering",
                code="security.policy_mismatch",
            )
        steady = self._steady
        if steady is not None:
            current = self._current
            if state is S.WAITING and current is not None:
                # Anything else than the steady reply to this request (a stale reply, an
                # error, a block transfer) is decoded and handled the general way below.
                reading = steady.decode(data, 0, self._current_invoke)
                if reading is not None:
                    self._steady = None
                    self._current = None
                    self._deadline = None
                    self._go(_Ev.RESPONSE)
                    self._events.append(SteadyResponse(reading))
                    return
        try:
            decoded, trailing = apdu.decode_apdu_lenient(data)
        except DecodeError:
            if state is not S.RELEASING or data[:1] != b"\x63":
                raise
            # A malformed RLRE (some meters get its lengths wrong) still ends the association.
            decoded, trailing = RLRE(reason=None), b""
        if isinstance(decoded, GetResponseWithList) and (decoded.malformed or any(trailing)):
            # The list did not parse exactly: a result that does not decode, or bytes left
            # after the last one (a trailing padding of zeros is the one thing tolerated). A
            # value somewhere before was longer or shorter than it said, and the results after
            # it were read from the wrong place, yet may have decoded: none of the results can
            # be trusted, the caller reads them all again one by one.
            if decoded.malformed:
                first = next(r for r in decoded.results if isinstance(r, apdu.MalformedResult))
                code, message = first.code, first.message
            else:
                self._tolerate_trailing(trailing, "the result list")
                code = "apdu.list_misaligned"
                message = f"{len(trailing)} bytes left after the result list"
            decoded = GetResponseWithList(
                decoded.invoke,
                tuple(apdu.MalformedResult(code, message) for _ in decoded.results),
            )
            self._tolerate_malformed(decoded)
        elif trailing:
            self._tolerate_trailing(trailing, f"the {type(decoded).__name__}")
        if isinstance(decoded, AARE) and state is S.ASSOCIATING:
            try:
                if self._sec is not None:
                    decoded = self._secured_aare(decoded)
                    refused = self._refused_secured(decoded)
                    if refused is not None:
                        raise refused
                initiate = acse.check_aare(decoded)
            except AssociationError:
                self.abort(self._now)
                raise
            self.negotiated = Negotiated(
                conformance=initiate.negotiated_conformance,
                server_max_pdu_size=initiate.server_max_receive_pdu_size,
                dlms_version=initiate.negotiated_dlms_version,
            )
            if self._sec is not None and self._sec.mechanism in hls.HLS_MECHANISMS:
                self._go(_Ev.AARE_HLS)
                self._start_hls(decoded)
                return
            self._go(_Ev.AARE_OK)
            self._deadline = None
            self._events.append(Associated(self.negotiated))
        elif isinstance(decoded, RLRE) and state is S.RELEASING:
            if decoded.ciphered_initiate is not None:
                decoded = self._secured_rlre(decoded)
            self._go(_Ev.RLRE)
            self._events.append(Released(decoded))
            self.link.disconnect(self._now)
        elif isinstance(decoded, DataNotification):
            self._events.append(Notification(decoded))
            self._keep_waiting()  # a push is no reply
        elif state is S.WAITING:
            self._handle_response(decoded)
        elif state is S.AUTHENTICATING:
            self._finish_hls(decoded)
        elif state is S.ASSOCIATING and isinstance(
            decoded, (ExceptionResponse, ConfirmedServiceError)
        ):
            self.abort(self._now)
            error = decoded.error()
            raise AssociationError(
                f"the meter refused the association: {error.message}", code=error.code
            )
        else:
            self._drop_stale()

    def _handle_response(self, decoded: Apdu) -> None:
        current = self._current
        if isinstance(decoded, (AARQ, AARE, RLRQ, RLRE)):
            self._drop_stale()  # an ACSE APDU answers no GET/SET/ACTION
            return
        if self._sec is not None and isinstance(decoded, ExceptionResponse):
            self._security_exception(decoded)
        if isinstance(decoded, (ExceptionResponse, ConfirmedServiceError)):
            # Neither carries an invoke-id: it answers the request in flight.
            self._finish(decoded)
            return
        invoke = getattr(decoded, "invoke", None)
        if invoke is None or current is None or invoke.invoke_id != self._current_invoke:
            self._drop_stale()
            return
        if isinstance(decoded, GetResponseWithDatablock) and isinstance(
            current, (GetRequestNormal, GetRequestWithList, GetRequestNext)
        ):
            self._on_block(decoded)
            return
        self._finish(decoded)

    def _on_block(self, block: GetResponseWithDatablock) -> None:
        if isinstance(block.raw_data, apdu.DataAccessResult):
            # The meter gave up in the middle of the transfer.
            self._finish(GetResponseNormal(block.invoke, block.raw_data))
            return
        expected = len(self._blocks) + 1
        if block.block_number != expected:
            self.abort(self._now)
            raise RemoteProtocolError(
                f"block transfer: got block {block.block_number}, expected {expected}",
                code="association.block_number",
            )
        if expected > MAX_BLOCKS:
            self.abort(self._now)
            raise RemoteProtocolError(
                f"block transfer longer than {MAX_BLOCKS} blocks", code="association.too_long"
            )
        self._blocks_size += len(block.raw_data)
        if self._blocks_size > self.settings.max_response_size:
            received = self._blocks_size
            self._blocks = []
            self._blocks_size = 0
            self.abort(self._now)
            raise RemoteProtocolError(
                f"block transfer longer than {self.settings.max_response_size} bytes "
                f"({received} bytes in {expected} blocks)",
                code="association.too_long",
            )
        self._blocks.append(block.raw_data)
        self.blocks_received += 1
        if not block.last_block:
            self._send_xdlms(
                apdu.encode_apdu(GetRequestNext(block.invoke, block.block_number)), self._now
            )
            return
        raw = b"".join(self._blocks)
        self._blocks = []
        self._blocks_size = 0
        if isinstance(self._current, GetRequestWithList):
            # A long GET-with-list reply: the blocks hold the list of results.
            reader = apdu.Reader(raw)
            response = GetResponseWithList(
                block.invoke, reader.result_list("get-response result list")
            )
            if response.malformed:
                self._tolerate_malformed(response)
            elif reader.pos < len(raw):
                self._tolerate_trailing(raw[reader.pos :], "the result list")
            self._finish(response)
        else:
            value, end = decode_data(raw)
            if end < len(raw):
                self._tolerate_trailing(raw[end:], "the value of the block transfer")
            self._finish(GetResponseNormal(block.invoke, value))

    def _tolerate_trailing(self, trailing: bytes, after: str) -> None:
        self.trailing_bytes += len(trailing)
        self._events.append(
            Lenient("trailing_bytes", f"{len(trailing)} bytes ignored after {after}", trailing)
        )

    def _tolerate_malformed(self, response: GetResponseWithList) -> None:
        if not response.malformed:
            return  # an empty list (with bytes after it): no result to report
        self.malformed_results += response.malformed
        first = next(r for r in response.results if isinstance(r, apdu.MalformedResult))
        self._events.append(
            Lenient(
                "malformed_results",
                f"{response.malformed} of {len(response.results)} results not decoded: "
                f"{first.message}",
            )
        )

    def _drop_stale(self) -> None:
        """A reply that answers nothing in flight (another invoke-id, a late answer to an
        abandoned request): counted and dropped; the wait for the awaited one goes on."""
        self.stale_responses += 1
        self._keep_waiting()

    def _keep_waiting(self) -> None:
        """The APDU just received was not the awaited reply: the link's reply timer (which
        the arrival stopped) runs on, so the request ends within its reply timeout."""
        if self.state in _AWAITING:
            self.link.reply_dropped()
            self._reply_dropped = self.state is S.WAITING

    def _finish(self, response: XdlmsApdu) -> None:
        self._current = None
        self._steady = None
        self._deadline = None
        self._go(_Ev.RESPONSE)
        self._events.append(Response(response))
