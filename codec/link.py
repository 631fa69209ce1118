"""Client (primary station) side of the DLMS HDLC link, sans-IO.

:class:`HdlcClientLink` opens the link with SNRM/UA (negotiating the maximum information field
lengths and windows), carries APDUs in I-frames with the LLC header, reassembles segmented replies
(asking for each next segment with RR), splits APDUs longer than the negotiated maximum, handles
RR/RNR, DM, FRMR and DISC, and retransmits on timeouts. Time is passed in: the caller asks
:meth:`next_deadline` and calls :meth:`handle_timer` when it has passed.

N(S)/N(R) follow IEC 62056-46: N(R) is the next N(S) expected, so after the first I-frame from
each side both sequence counters are 1.

:class:`WrapperClientLink` offers the same interface over the IEC 62056-47 wrapper, where the TCP
connection itself is the link.
"""

from __future__ import annotations

import enum
from typing import Protocol

import attrs

from codec.errors import LinkError, LocalProtocolError, RemoteProtocolError, ResponseTimeout
from codec.hdlc import (
    NEED_DATA,
    Frame,
    FrameKind,
    FrameScanner,
    HdlcAddress,
    NeedData,
    encode_frame,
    encode_with_control,
)
from codec.hdlc_params import LinkParameters
from codec.wrapper import WrapperFrame, WrapperScanner

__all__ = [
    "DEFAULT_MAX_APDU",
    "LLC_REQUEST",
    "LLC_RESPONSE",
    "ApduReceived",
    "Connected",
    "Disconnected",
    "HdlcClientLink",
    "Link",
    "LinkState",
    "UnsolicitedData",
    "WrapperClientLink",
    "strip_llc",
]

#: LLC header of a request (client to server) and of a response, IEC 62056-46 Annex.
LLC_REQUEST = b"\xe6\xe6\x00"
LLC_RESPONSE = b"\xe6\xe7\x00"
#: Largest APDU the links accept from the meter unless told otherwise: the largest a wrapper PDU
#: can carry. The association passes the client's negotiated max receive PDU size instead.
DEFAULT_MAX_APDU = 0xFFFF
#: First bytes of the APDUs a server sends: AARE, RLRE, GET/SET/ACTION responses,
#: exception-response, confirmed-service-error, data-notification, event-notification,
#: general-block-transfer, and the ciphered forms.
SERVER_APDU_TAGS = frozenset(
    {0x61, 0x63, 0xC4, 0xC5, 0xC7, 0xD8, 0x0E, 0x0F, 0xC2, 0xE0, 0xCC, 0xCD, 0xCF, 0xD4, 0xD5,
     0xD7, 0xDB, 0xDC, 0xDD, 0xDF}
)  # fmt: skip


@attrs.frozen
class Connected:
    """The link is up; ``parameters`` are the negotiated ones, from the client's point of view."""

    parameters: LinkParameters


@attrs.frozen
class ApduReceived:
    """A complete APDU from the server (segments reassembled, LLC header removed)."""

    apdu: bytes


@attrs.frozen
class UnsolicitedData:
    """A UI frame's information field (a meter push), LLC header removed."""

    data: bytes


@attrs.frozen
class Disconnected:
    """The link is down: released by us (UA to our DISC) or by the server (its DISC)."""

    by_peer: bool
    reason: str


Event = Connected | ApduReceived | UnsolicitedData | Disconnected


class LinkState(enum.Enum):
    """States of the client link."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTING = "disconnecting"


class Link(Protocol):
    """What the association needs from a transport link (HDLC or wrapper)."""

    state: LinkState
    #: Largest APDU accepted from the meter (reassembled); a longer one is a protocol error.
    max_apdu: int

    def connect(self, now: float) -> None: ...
    def disconnect(self, now: float) -> None: ...
    def send_apdu(self, apdu: bytes, now: float) -> None: ...
    def send_single(self, apdu: bytes, now: float) -> bytes | None: ...
    def receive_data(self, data: bytes, now: float) -> None: ...
    def next_event(self) -> Event | NeedData: ...
    def next_apdu(self) -> bytes | NeedData | None: ...
    def next_info(self) -> bytes | NeedData | None: ...
    def data_to_send(self) -> bytes: ...
    def next_deadline(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def reply_dropped(self) -> None: ...
    def drain(self) -> int: ...
    def stats(self) -> dict[str, int]: ...


def strip_llc(data: bytes) -> bytes:
    """The APDU of an information field: its LLC header cut off when it has one."""
    # Meters answer with E6 E7 00; some echo E6 E6 00. Anything else is taken as a bare APDU.
    if data[:2] in (b"\xe6\xe7", b"\xe6\xe6") and len(data) >= 3:
        return data[3:]
    return data


@attrs.define(eq=False)
class _Pending:
    """The frame we wait an answer for, and how to resend it."""

    raw: bytes
    deadline: float
    retries_left: int
    what: str
    #: Whether the link is down when the wait ends with no answer (False: the meter answered
    #: something else meanwhile, so the link itself is known to work).
    fatal: bool = True


class HdlcClientLink:
    """Sans-IO HDLC client link to one server. See the module docstring.

    Feed received bytes with :meth:`receive_data`, take events with :meth:`next_event` (until
    ``NEED_DATA``), send whatever :meth:`data_to_send` returns, and call :meth:`handle_timer` once
    :meth:`next_deadline` has passed. Protocol failures raise :class:`~codec.errors.LinkError`;
    a reply that never comes, after ``retries`` retransmissions, raises
    :class:`~codec.errors.ResponseTimeout`.
    """

    def __init__(
        self,
        client: HdlcAddress,
        server: HdlcAddress,
        *,
        parameters: LinkParameters | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        transparency: bool = False,
        max_apdu: int = DEFAULT_MAX_APDU,
    ) -> None:
        self.client = client
        self.server = server
        self.proposed = parameters or LinkParameters()
        self.negotiated = LinkParameters()
        self.timeout = timeout
        self.retries = retries
        self.transparency = transparency
        #: Largest reassembled reply (LLC header excluded); more is a protocol error. The
        #: association sets it from the max receive PDU size it proposes.
        self.max_apdu = max_apdu
        self.state = LinkState.DISCONNECTED
        self.scanner = FrameScanner(transparency=transparency)
        self._vs = 0  # N(S) of our next I-frame
        self._vr = 0  # N(S) we expect next from the server
        self._out = bytearray()
        self._events: list[Event] = []
        self._pending: _Pending | None = None
        # The reply deadline of the last APDU delivered, kept for reply_dropped().
        self._answered_deadline: float | None = None
        self._segments_out: list[bytes] = []  # further segments of an APDU being sent
        self._segments_in: list[bytes] = []  # segments of a reply being received
        self._segments_in_size = 0
        self._busy_until: float | None = None
        self._now = 0.0
        # (dst, dst size, src, src size) of the frames from the server, as a frame has them.
        self._from_server = (client.value, client.size, server.value, server.size)
        self.frames_sent = 0
        self.frames_ignored = 0
        self.retransmissions = 0

    # -- outgoing ----------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Send SNRM with our proposed parameters."""
        if self.state is not LinkState.DISCONNECTED:
            raise LocalProtocolError(f"connect() while the link is {self.state.value}")
        self._vs = self._vr = 0
        self._clear_segments_in()
        self._segments_out.clear()
        self.state = LinkState.CONNECTING
        self._send(self._frame(FrameKind.SNRM, info=self.proposed.encode()), now, "UA to SNRM")

    def disconnect(self, now: float) -> None:
        """Send DISC; the link is down once the server answers UA (or DM)."""
        if self.state is LinkState.DISCONNECTED:
            return
        self.state = LinkState.DISCONNECTING
        self._segments_out.clear()
        self._clear_segments_in()
        self._send(self._frame(FrameKind.DISC), now, "UA to DISC")

    def send_apdu(self, apdu: bytes, now: float) -> None:
        """Send an APDU in one or more I-frames (the LLC header is added here)."""
        if self.state is not LinkState.CONNECTED:
            raise LocalProtocolError(f"send_apdu() while the link is {self.state.value}")
        if self._pending is not None:
            raise LocalProtocolError("send_apdu() while a previous exchange is still open")
        data = LLC_REQUEST + apdu
        size = self.negotiated.max_info_tx
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        self._clear_segments_in()
        self._segments_out = chunks[1:]
        self._send_i(chunks[0], segmented=len(chunks) > 1, now=now)

    def send_single(self, apdu: bytes, now: float) -> bytes | None:
        """A steady poll's :meth:`send_apdu`: when the APDU goes in one I-frame and nothing is
        open (no reply awaited, no segment either way, no byte waiting to be sent), it is sent
        exactly as :meth:`send_apdu` sends it, and the frame is returned to be written at once
        (what :meth:`data_to_send` would give). Nothing open includes no event waiting to be
        taken: then the link needs data, as after :meth:`send_apdu`. None, with nothing done,
        otherwise."""
        if (
            self.state is not LinkState.CONNECTED
            or self._pending is not None
            or self._out
            or self._events
            or self._segments_out
            or self._segments_in
        ):
            return None
        info = LLC_REQUEST + apdu
        if len(info) > self.negotiated.max_info_tx:
            return None
        raw = self._i_frame(info, segmented=False)
        self.frames_sent += 1
        self._await(raw, now, "reply")
        return raw

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now (and forget)."""
        if not self._out:
            return b""  # the usual answer: no copy, nothing to clear
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- incoming ----------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Buffer bytes from the peer, received at ``now``; ``b""`` means the connection closed."""
        self._now = now
        self.scanner.receive_data(data)

    def drain(self) -> int:
        """Forget buffered bytes (before a retry); returns how many were discarded."""
        return self.scanner.drain()

    def next_event(self) -> Event | NeedData:
        """The next event, or ``NEED_DATA``."""
        while not self._events:
            frame = self.scanner.next_frame()
            if isinstance(frame, NeedData):
                return NEED_DATA
            self._handle_frame(frame)
        return self._events.pop(0)

    def next_apdu(self) -> bytes | NeedData | None:
        """A reply's shortcut: when the next frame is a whole reply on its own (an I-frame of
        this link, in sequence, not segmented, within the size limit, with no other event
        waiting and no segment open either way), its APDU, exactly as :meth:`next_event` would
        deliver it in :class:`ApduReceived`, with the same bookkeeping. ``NEED_DATA`` when no
        frame is complete. None otherwise: any frame taken was handled as :meth:`next_event`
        handles it (events queued, counters, errors raised), and :meth:`next_event` goes on."""
        info = self.next_info()
        if info is None or isinstance(info, NeedData):
            return info
        return strip_llc(info)

    def next_info(self) -> bytes | NeedData | None:
        """:meth:`next_apdu` with the reply's information field as received: its LLC header
        not cut off (:func:`strip_llc` gives the APDU; a steady decoder reads the field as it
        is, without the copy)."""
        if (
            self._events
            or self._segments_out
            or self._segments_in
            or self.state is not LinkState.CONNECTED
        ):
            return None
        frame = self.scanner.next_frame()
        if isinstance(frame, NeedData):
            return NEED_DATA
        control = frame.control
        info = frame.info
        if (
            control & 0x01  # not an I-frame
            or frame.segmented
            or (control >> 1) & 0x07 != self._vr
            or (frame.dst, frame.dst_size, frame.src, frame.src_size) != self._from_server
            or len(info) > self.max_apdu + len(LLC_RESPONSE)
        ):
            self._handle_frame(frame)
            return None
        self._vr = (self._vr + 1) % 8
        pending = self._pending
        self._answered_deadline = None if pending is None else pending.deadline
        self._pending = None
        return info

    def stats(self) -> dict[str, int]:
        """Scanner and link counters."""
        return {
            **self.scanner.stats(),
            "frames_sent": self.frames_sent,
            "frames_ignored": self.frames_ignored,
            "retransmissions": self.retransmissions,
        }

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called, or ``None`` if nothing is awaited."""
        if self._pending is None:
            return None
        if self._busy_until is not None:
            return min(self._busy_until, self._pending.deadline)
        return self._pending.deadline

    def handle_timer(self, now: float) -> None:
        """Retransmit or give up for whatever has timed out by ``now``."""
        pending = self._pending
        if pending is None:
            return
        if self._busy_until is not None and self._busy_until <= now < pending.deadline:
            # The server said RNR: ask again whether it is ready.
            self._busy_until = None
            self._emit(self._frame(FrameKind.RR, nr=self._vr))
            return
        if now < pending.deadline:
            return
        if pending.retries_left <= 0:
            self._pending = None
            if not pending.fatal:
                raise ResponseTimeout(
                    f"no reply to the request within {self.timeout:g} s (the meter answered"
                    " with a reply to another request)",
                    code="link.timeout",
                )
            self.state = LinkState.DISCONNECTED
            raise ResponseTimeout(
                f"no {pending.what} from the meter within {self.timeout:g} s "
                f"({self.retries} retransmissions)",
                code="link.timeout",
            )
        self.retransmissions += 1
        pending.retries_left -= 1
        pending.deadline = now + self.timeout
        self._emit(pending.raw)

    def reply_dropped(self) -> None:
        """The APDU just delivered answered nothing awaited (a stale reply): keep waiting for
        the reply, until the reply timer that was running ends. Nothing is retransmitted (the
        meter got the request); if nothing comes, :meth:`handle_timer` raises
        :class:`~codec.errors.ResponseTimeout` and the link stays up."""
        deadline, self._answered_deadline = self._answered_deadline, None
        if deadline is None or self._pending is not None or self.state is not LinkState.CONNECTED:
            return
        # An RR polls the meter should it ask (after RR/RNR from it) what is awaited.
        poll = self._frame(FrameKind.RR, nr=self._vr)
        self._pending = _Pending(poll, deadline, 0, "reply", fatal=False)

    # -- internals ---------------------------------------------------------------------------

    def _frame(
        self,
        kind: FrameKind,
        *,
        info: bytes = b"",
        ns: int = 0,
        nr: int = 0,
        segmented: bool = False,
    ) -> bytes:
        return encode_frame(
            kind,
            self.server,
            self.client,
            ns=ns,
            nr=nr,
            info=info,
            segmented=segmented,
            transparency=self.transparency,
        )

    def _emit(self, raw: bytes) -> None:
        self._out += raw
        self.frames_sent += 1

    def _send(self, raw: bytes, now: float, what: str) -> None:
        self._emit(raw)
        self._await(raw, now, what)

    def _await(self, raw: bytes, now: float, what: str) -> None:
        """``raw`` has gone out: wait for ``what``, resending ``raw`` on a timeout."""
        self._pending = _Pending(raw, now + self.timeout, self.retries, what)
        self._answered_deadline = None
        self._busy_until = None

    def _i_frame(self, info: bytes, *, segmented: bool) -> bytes:
        """The next I-frame (N(S) taken), P/F set: encode_frame's, without its keyword call
        and checks of the kind."""
        vs = self._vs
        raw = encode_with_control(
            self.server, self.client, (self._vr << 5) | 0x10 | (vs << 1), info,
            segmented=segmented, transparency=self.transparency,
        )  # fmt: skip
        self._vs = (vs + 1) % 8
        return raw

    def _send_i(self, info: bytes, *, segmented: bool, now: float) -> None:
        self._send(self._i_frame(info, segmented=segmented), now, "reply")

    def _handle_frame(self, frame: Frame) -> None:
        if (frame.dst, frame.dst_size, frame.src, frame.src_size) != self._from_server:
            self.frames_ignored += 1
            return
        kind = frame.kind
        state = self.state
        if kind is FrameKind.UI:
            self._events.append(UnsolicitedData(strip_llc(frame.info)))
        elif kind is FrameKind.UA:
            self._on_ua(frame)
        elif kind is FrameKind.DM:
            self._pending = None
            self.state = LinkState.DISCONNECTED
            if state is LinkState.DISCONNECTING:
                self._events.append(Disconnected(by_peer=False, reason="DM to DISC"))
            elif state is LinkState.CONNECTING:
                raise LinkError(
                    "the meter refused the link (DM to SNRM): wrong server address, or busy",
                    code="link.refused",
                )
            else:
                raise LinkError(
                    "the meter reports the link is down (DM)", code="link.disconnected_mode"
                )
        elif kind is FrameKind.FRMR:
            self._pending = None
            self.state = LinkState.DISCONNECTED
            raise LinkError(
                f"the meter rejected a frame (FRMR {frame.info.hex()})", code="link.frame_reject"
            )
        elif kind is FrameKind.DISC:
            # The server ends the link (its inactivity timeout, say): acknowledge and report it.
            self._emit(
                encode_frame(FrameKind.UA, self.server, self.client, transparency=self.transparency)
            )
            self._pending = None
            self.state = LinkState.DISCONNECTED
            self._events.append(Disconnected(by_peer=True, reason="DISC from the meter"))
        elif state is not LinkState.CONNECTED:
            self.frames_ignored += 1
        elif kind is FrameKind.I:
            self._on_i(frame)
        elif kind is FrameKind.RR:
            self._on_rr(frame)
        elif kind is FrameKind.RNR:
            # Receiver not ready: poll again a little later, within the reply timeout.
            self._busy_until = self._now + min(0.5, self.timeout / 4)
        else:
            self.frames_ignored += 1

    def _on_ua(self, frame: Frame) -> None:
        if self.state is LinkState.CONNECTING:
            server_view = LinkParameters.decode(frame.info)
            mine = server_view.swapped()
            self.negotiated = LinkParameters(
                max_info_tx=min(self.proposed.max_info_tx, mine.max_info_tx),
                max_info_rx=min(self.proposed.max_info_rx, mine.max_info_rx),
                window_tx=min(self.proposed.window_tx, mine.window_tx),
                window_rx=min(self.proposed.window_rx, mine.window_rx),
            )
            self._pending = None
            self.state = LinkState.CONNECTED
            self._events.append(Connected(self.negotiated))
        elif self.state is LinkState.DISCONNECTING:
            self._pending = None
            self.state = LinkState.DISCONNECTED
            self._events.append(Disconnected(by_peer=False, reason="UA to DISC"))
        else:
            self.frames_ignored += 1

    def _on_i(self, frame: Frame) -> None:
        ns = frame.ns
        if ns != self._vr:
            # A repeat of a frame we already have (our acknowledgement was lost), or out of
            # order: drop it; the retransmission timer keeps the exchange going.
            self.frames_ignored += 1
            return
        if self._segments_out:
            # The server must acknowledge our segments before answering.
            self.frames_ignored += 1
            return
        self._vr = (self._vr + 1) % 8
        self._segments_in.append(frame.info)
        self._segments_in_size += len(frame.info)
        limit = self.max_apdu + len(LLC_RESPONSE)
        if self._segments_in_size > limit:
            # A meter that never clears the segmentation bit (or ignores the negotiated size)
            # would otherwise grow this reply without end.
            received, count = self._segments_in_size, len(self._segments_in)
            self._clear_segments_in()
            self._pending = None
            self.state = LinkState.DISCONNECTED
            raise RemoteProtocolError(
                f"the meter's reply exceeds the negotiated maximum PDU size: {received} bytes "
                f"in {count} segments, more than the {self.max_apdu} accepted",
                code="link.reply_too_long",
            )
        if frame.segmented:
            # Ask for the next segment.
            self._send(self._frame(FrameKind.RR, nr=self._vr), self._now, "segment")
            return
        self._answered_deadline = None if self._pending is None else self._pending.deadline
        self._pending = None
        data = b"".join(self._segments_in)
        self._clear_segments_in()
        self._events.append(ApduReceived(strip_llc(data)))

    def _clear_segments_in(self) -> None:
        self._segments_in.clear()
        self._segments_in_size = 0

    def _on_rr(self, frame: Frame) -> None:
        if self._segments_out and frame.nr == self._vs:
            # Our last segment is acknowledged: send the next one.
            chunk = self._segments_out.pop(0)
            self._send_i(chunk, segmented=bool(self._segments_out), now=self._now)
        elif self._pending is not None and frame.nr != self._vs:
            # The server did not get our last I-frame: send it again now.
            self.retransmissions += 1
            self._emit(self._pending.raw)
        else:
            self.frames_ignored += 1


class WrapperClientLink:
    """The :class:`HdlcClientLink` interface over the IEC 62056-47 wrapper.

    The TCP connection is the link: :meth:`connect` reports :class:`Connected` at once. There is
    no link-level acknowledgement: a request that gets no reply in time is sent again, up to
    ``retries`` times (a late reply to the first copy is told apart by its invoke-id upstream),
    then :class:`~codec.errors.ResponseTimeout` is raised.
    """

    def __init__(
        self,
        client_wport: int,
        server_wport: int,
        *,
        timeout: float = 5.0,
        retries: int = 1,
        max_payload: int = 0xFFFF,
        max_apdu: int = DEFAULT_MAX_APDU,
    ) -> None:
        self.client_wport = client_wport
        self.server_wport = server_wport
        self.timeout = timeout
        self.retries = retries
        self._last = b""
        self._retries_left = 0
        self.retransmissions = 0
        #: Largest APDU accepted from the meter; a longer one is a protocol error.
        self.max_apdu = max_apdu
        self.state = LinkState.DISCONNECTED
        self.negotiated = LinkParameters()
        self.scanner = WrapperScanner(
            max_payload=max_payload,
            expect_src=server_wport,
            expect_dst=client_wport,
            first_bytes=SERVER_APDU_TAGS,
        )
        self._out = bytearray()
        self._events: list[Event] = []
        self._deadline: float | None = None
        # The reply deadline of the last APDU delivered, kept for reply_dropped().
        self._answered_deadline: float | None = None
        self._stale_wait = False
        self.frames_sent = 0

    def connect(self, now: float) -> None:
        """Nothing to send: the TCP connection is the link."""
        self.state = LinkState.CONNECTED
        self._events.append(Connected(self.negotiated))

    def disconnect(self, now: float) -> None:
        """Nothing to send: closing the TCP connection ends the link."""
        if self.state is not LinkState.DISCONNECTED:
            self.state = LinkState.DISCONNECTED
            self._deadline = None
            self._events.append(Disconnected(by_peer=False, reason="released"))

    def send_apdu(self, apdu: bytes, now: float) -> None:
        """Wrap and queue an APDU."""
        if self.state is not LinkState.CONNECTED:
            raise LocalProtocolError(f"send_apdu() while the link is {self.state.value}")
        self._last = WrapperFrame(self.client_wport, self.server_wport, apdu).encode()
        self._out += self._last
        self.frames_sent += 1
        self._deadline = now + self.timeout
        self._answered_deadline = None
        self._stale_wait = False
        self._retries_left = self.retries

    def send_single(self, apdu: bytes, now: float) -> bytes | None:
        """:meth:`send_apdu` followed by :meth:`data_to_send`, when nothing else waits to be
        sent (a wrapper frame is always one); None, with nothing done, otherwise."""
        if self.state is not LinkState.CONNECTED or self._out:
            return None
        self.send_apdu(apdu, now)
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now (and forget)."""
        if not self._out:
            return b""  # the usual answer: no copy, nothing to clear
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes, now: float) -> None:
        """Buffer bytes from the peer, received at ``now``; ``b""`` means the connection closed."""
        self.scanner.receive_data(data)

    def drain(self) -> int:
        """Forget buffered bytes (before a retry); returns how many were discarded."""
        return self.scanner.drain()

    def next_event(self) -> Event | NeedData:
        """The next event, or ``NEED_DATA``."""
        if self._events:
            return self._events.pop(0)
        apdu = self.next_apdu()
        if apdu is None or isinstance(apdu, NeedData):
            return NEED_DATA  # (None only while an event waits: not here)
        return ApduReceived(apdu)

    def next_apdu(self) -> bytes | NeedData | None:
        """The next frame's APDU (a wrapper frame is one whole APDU): what :meth:`next_event`
        delivers in :class:`ApduReceived`, which it takes from here; ``NEED_DATA`` when no frame
        is complete. None when an event waits (take :meth:`next_event`)."""
        if self._events:
            return None
        frame = self.scanner.next_frame()
        if isinstance(frame, NeedData):
            return NEED_DATA
        if len(frame.payload) > self.max_apdu:
            self._deadline = None
            self.state = LinkState.DISCONNECTED
            raise RemoteProtocolError(
                f"the meter's reply exceeds the negotiated maximum PDU size: "
                f"{len(frame.payload)} bytes, more than the {self.max_apdu} accepted",
                code="link.reply_too_long",
            )
        self._answered_deadline, self._deadline = self._deadline, None
        return frame.payload

    def next_info(self) -> bytes | NeedData | None:
        """:meth:`next_apdu` (the wrapper has no LLC header: the field is the APDU)."""
        return self.next_apdu()

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called, or ``None``."""
        return self._deadline

    def reply_dropped(self) -> None:
        """The APDU just delivered answered nothing awaited (a stale reply): keep waiting for
        the reply, until the reply timer that was running ends. Nothing more is retransmitted
        (the meter got the request); if nothing comes, :meth:`handle_timer` raises
        :class:`~codec.errors.ResponseTimeout`."""
        deadline, self._answered_deadline = self._answered_deadline, None
        if deadline is None or self._deadline is not None or self.state is not LinkState.CONNECTED:
            return
        self._deadline = deadline
        self._retries_left = 0
        self._stale_wait = True

    def handle_timer(self, now: float) -> None:
        """Send the request again, or give up on a reply that is overdue."""
        if self._deadline is None or now < self._deadline:
            return
        if self._stale_wait:
            self._deadline = None
            self._stale_wait = False
            raise ResponseTimeout(
                f"no reply to the request within {self.timeout:g} s (the meter answered"
                " with a reply to another request)",
                code="link.timeout",
            )
        if self._retries_left > 0:
            self._retries_left -= 1
            self.retransmissions += 1
            self.frames_sent += 1
            self._out += self._last
            self._deadline = now + self.timeout
            return
        self._deadline = None
        raise ResponseTimeout(
            f"no reply from the meter within {self.timeout:g} s ({self.retries} retransmissions)",
            code="link.timeout",
        )

    def stats(self) -> dict[str, int]:
        """Scanner and link counters."""
        return {
            **self.scanner.stats(),
            "frames_sent": self.frames_sent,
            "retransmissions": self.retransmissions,
        }
