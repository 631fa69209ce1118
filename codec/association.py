"""Client application association over an HDLC or wrapper link, sans-IO.

:class:`ClientAssociation` opens the link, sends the AARQ and checks the AARE, then carries one
confirmed xDLMS request at a time: it stamps each request with the next invoke-id, matches the
reply by invoke-id (a late reply to an abandoned request is dropped, not mistaken for the current
one), and fetches the remaining blocks of a long GET itself, so the caller always receives one
complete response. :meth:`ClientAssociation.release` sends RLRQ and then DISC.

The states and what may happen in each are a table (:data:`TRANSITIONS`); anything else is a
protocol error.
"""

from __future__ import annotations

import enum

import attrs

from codec import acse, apdu
from codec.acse import AARE, AARQ, RLRE, RLRQ, Conformance, InitiateRequest
from codec.apdu import (
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
    Request,
    XdlmsApdu,
)
from codec.axdr import decode_data
from codec.errors import (
    AssociationError,
    DecodeError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ResponseTimeout,
)
from codec.hdlc import NEED_DATA, NeedData
from codec.link import ApduReceived, Connected, Disconnected, Link, LinkState, UnsolicitedData
from codec.link import Event as LinkEvent

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


class AssociationState(enum.Enum):
    """Where the association is."""

    IDLE = "idle"
    LINKING = "linking"
    ASSOCIATING = "associating"
    READY = "ready"
    WAITING = "waiting"
    RELEASING = "releasing"
    UNLINKING = "unlinking"
    CLOSED = "closed"


class _Ev(enum.Enum):
    OPEN = "open()"
    LINK_UP = "link up"
    AARE_OK = "AARE accepted"
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
    (S.READY, _Ev.REQUEST): S.WAITING,
    (S.WAITING, _Ev.RESPONSE): S.READY,
    (S.READY, _Ev.RELEASE): S.RELEASING,
    (S.RELEASING, _Ev.RLRE): S.UNLINKING,
    **{(s, _Ev.ABORT): S.UNLINKING for s in (S.LINKING, S.ASSOCIATING, S.READY, S.WAITING)},
    (S.RELEASING, _Ev.ABORT): S.UNLINKING,
    **{(s, _Ev.LINK_DOWN): S.CLOSED for s in AssociationState},
}


@attrs.frozen
class AssociationSettings:
    """What the client proposes in the AARQ."""

    password: bytes | None = attrs.field(default=None, repr=False)
    #: The client's max receive PDU size; a longer APDU from the meter is a protocol error.
    max_pdu_size: int = DEFAULT_MAX_PDU_SIZE
    conformance: Conformance = acse.CLIENT_DEFAULT_CONFORMANCE
    dlms_version: int = 6
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
    value) or ``"malformed_results"`` (results of a GET-with-list that did not decode).
    """

    what: str
    detail: str
    data: bytes = b""


Event = Associated | Response | Notification | Released | Closed | Lenient


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
        self._blocks: list[bytes] = []
        self._blocks_size = 0
        self._deadline: float | None = None  # the overall deadline of the open exchange
        self._events: list[Event] = []
        self._now = 0.0
        self.requests = 0
        self.stale_responses = 0
        self.blocks_received = 0
        self.trailing_bytes = 0
        self.malformed_results = 0

    # -- the table ---------------------------------------------------------------------------

    def _go(self, event: _Ev) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
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

    def request(self, request: Request, now: float) -> InvokeId:
        """Send a confirmed GET/SET/ACTION request; its invoke-id is assigned here.

        ``request`` is any request APDU from :mod:`codec.apdu`; its ``invoke`` field is replaced.
        Returns the invoke-id used.
        """
        self._go(_Ev.REQUEST)
        self._now = now
        self._invoke_id = self._invoke_id % 15 + 1
        invoke = InvokeId(self._invoke_id, confirmed=True, high_priority=True)
        request = attrs.evolve(request, invoke=invoke)
        self._current = request
        self._blocks = []
        self._blocks_size = 0
        self._start_deadline(now)
        self.requests += 1
        self.link.send_apdu(apdu.encode_apdu(request), now)
        return invoke

    def release(self, now: float) -> None:
        """Release the association: RLRQ, then DISC once the meter answers RLRE.

        Safe to call in any state: with a request still in flight, or before the association
        is open, the link is simply disconnected.
        """
        self._now = now
        if self.state is S.READY:
            self._go(_Ev.RELEASE)
            self.link.send_apdu(acse.encode_acse(RLRQ()), now)
        elif self.state is S.IDLE:
            self.state = S.CLOSED
        elif self._meter_still_associated():
            # A reply we could not accept closed the association on our side only: the meter
            # still holds it (and may allow no other). Release it properly.
            self.state = S.RELEASING
            try:
                self.link.send_apdu(acse.encode_acse(RLRQ()), now)
            except LocalProtocolError:
                self.state = S.UNLINKING
                self.link.disconnect(now)
        else:
            self.abort(now)

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
        except ProtocolError:
            self.state = S.CLOSED
            raise

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
        }

    # -- events ------------------------------------------------------------------------------

    def next_event(self) -> Event | NeedData:
        """The next event, or ``NEED_DATA``."""
        while not self._events:
            try:
                event = self.link.next_event()
                if isinstance(event, NeedData):
                    return NEED_DATA
                self._handle_link_event(event)
            except ProtocolError:
                # Whatever went wrong, this association cannot be trusted any more.
                self.state = S.CLOSED
                self._current = None
                self._deadline = None
                self._blocks = []
                self._blocks_size = 0
                raise
        return self._events.pop(0)

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

    @staticmethod
    def _decode_or_raw(data: bytes) -> Apdu | bytes:
        try:
            return apdu.decode_apdu(data)
        except DecodeError:
            return data

    def _handle_apdu(self, data: bytes) -> None:
        state = self.state
        try:
            decoded, trailing = apdu.decode_apdu_lenient(data)
        except DecodeError:
            if state is not S.RELEASING or data[:1] != b"\x63":
                raise
            # A malformed RLRE (some meters get its lengths wrong) still ends the association.
            decoded, trailing = RLRE(reason=None), b""
        if isinstance(decoded, GetResponseWithList) and decoded.malformed:
            self._tolerate_malformed(decoded)  # what follows the bad result was left unread
        elif trailing:
            self._tolerate_trailing(trailing, f"the {type(decoded).__name__}")
        if isinstance(decoded, AARE) and state is S.ASSOCIATING:
            try:
                initiate = acse.check_aare(decoded)
            except AssociationError:
                self.abort(self._now)
                raise
            self.negotiated = Negotiated(
                conformance=initiate.negotiated_conformance,
                server_max_pdu_size=initiate.server_max_receive_pdu_size,
                dlms_version=initiate.negotiated_dlms_version,
            )
            self._go(_Ev.AARE_OK)
            self._deadline = None
            self._events.append(Associated(self.negotiated))
        elif isinstance(decoded, RLRE) and state is S.RELEASING:
            self._go(_Ev.RLRE)
            self._events.append(Released(decoded))
            self.link.disconnect(self._now)
        elif isinstance(decoded, DataNotification):
            self._events.append(Notification(decoded))
        elif state is S.WAITING:
            self._handle_response(decoded)
        elif state is S.ASSOCIATING and isinstance(
            decoded, (ExceptionResponse, ConfirmedServiceError)
        ):
            self.abort(self._now)
            error = decoded.error()
            raise AssociationError(
                f"the meter refused the association: {error.message}", code=error.code
            )
        else:
            self.stale_responses += 1

    def _handle_response(self, decoded: Apdu) -> None:
        current = self._current
        if isinstance(decoded, (AARQ, AARE, RLRQ, RLRE)):
            self.stale_responses += 1  # an ACSE APDU answers no GET/SET/ACTION
            return
        if isinstance(decoded, (ExceptionResponse, ConfirmedServiceError)):
            # Neither carries an invoke-id: it answers the request in flight.
            self._finish(decoded)
            return
        invoke = getattr(decoded, "invoke", None)
        if invoke is None or current is None or invoke.invoke_id != current.invoke.invoke_id:
            self.stale_responses += 1
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
            self.link.send_apdu(
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
        self.malformed_results += response.malformed
        first = next(r for r in response.results if isinstance(r, apdu.MalformedResult))
        self._events.append(
            Lenient(
                "malformed_results",
                f"{response.malformed} of {len(response.results)} results not decoded: "
                f"{first.message}",
            )
        )

    def _finish(self, response: XdlmsApdu) -> None:
        self._current = None
        self._deadline = None
        self._go(_Ev.RESPONSE)
        self._events.append(Response(response))
