"""The meter's side of the link: HDLC (IEC 62056-46) or the TCP wrapper (IEC 62056-47), sans-IO.

A link is fed the bytes a client sent (:meth:`receive_data`) and returns the frames to send back,
each a complete frame (HDLC) or PDU (wrapper), in order. The fault layer may mangle each of them
separately. Complete request APDUs go to a :class:`~bridge.simulator.cosem_server.CosemServer`.

HDLC, as a secondary station with window 1:

- SNRM -> UA carrying the negotiated parameters (the meter's limits against the client's
  proposal); any association is released, the sequence numbers restart at 0;
- DISC -> UA when connected, DM when not; any frame but SNRM/DISC when disconnected -> DM;
- I-frames: N(S) must be the next expected (V(R)) and N(R) must acknowledge the meter's last
  I-frame (V(S)). A repeated request (same N(S) and N(R) as the previous one: the client lost the
  answer) gets the previous answer again; another N(S) is discarded and answered with RR(V(R));
  a bad N(R) gets FRMR. Segmented requests (S bit) are collected, each segment acknowledged by RR;
- long answers go out in I-frames of at most the negotiated maximum information field, the S bit
  on all but the last, each after the client's RR acknowledging the previous one;
- RR when idle -> RR (a poll); RR that does not acknowledge the last I-frame -> that frame again;
- frames for another server address are ignored; an unknown control field or an information
  field that is too long -> FRMR, after which only SNRM or DISC are answered (with the FRMR
  repeated to anything else).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.simulator.meter import FLAGS_LOGICAL
from codec.errors import FrameError
from codec.hdlc import (
    NEED_DATA,
    Frame,
    FrameKind,
    FrameScanner,
    HdlcAddress,
    encode_frame,
    fcs16,
)
from codec.hdlc_params import LinkParameters
from codec.wrapper import WrapperFrame, WrapperScanner

if TYPE_CHECKING:
    from bridge.simulator.cosem_server import CosemServer
    from bridge.simulator.meter import Meter

__all__ = [
    "LLC_REQUEST",
    "LLC_RESPONSE",
    "HdlcServerLink",
    "ServerLink",
    "WrapperServerLink",
    "i_frame",
]

LLC_REQUEST = b"\xe6\xe6\x00"
LLC_RESPONSE = b"\xe6\xe7\x00"

# FRMR reason bits (ISO/IEC 13239): W invalid control, X info not allowed, Y too long, Z bad N(R).
_FRMR_W, _FRMR_X, _FRMR_Y, _FRMR_Z = 0x01, 0x02, 0x04, 0x08

_DISCONNECTED, _CONNECTED, _FRAME_REJECT = "disconnected", "connected", "frame-reject"

#: What a "previous session" was being sent when it was cut off (the ``residual`` fault): a
#: GET-with-list answer of three energy values.
_PREVIOUS_ANSWER = bytes.fromhex("c403c10300060000dbe000060000dbe400060000dbe9")


#: The longest frame the format field can describe (11 bits).
_MAX_FRAME_LENGTH = 0x7FF


def i_frame(addresses: bytes, control: int, info: bytes, *, segmented: bool = False) -> bytes:
    """An I-frame: what ``encode_frame(FrameKind.I, ...)`` makes, from the address bytes
    (destination then source, as on the wire) and the control byte; ``info`` not empty."""
    length = 7 + len(addresses) + len(info)
    if not info or length > _MAX_FRAME_LENGTH:
        raise ValueError(f"no I-frame of {len(info)} information bytes")
    head = bytes(((0xA8 if segmented else 0xA0) | (length >> 8), length & 0xFF))
    head += addresses + bytes((control,))
    body = head + fcs16(head).to_bytes(2, "little") + info
    return b"\x7e" + body + fcs16(body).to_bytes(2, "little") + b"\x7e"


def _address_parts(value: int, size: int) -> tuple[int, int]:
    if size == 1:
        return 0, value
    bits = 7 if size == 2 else 14
    return value >> bits, value & ((1 << bits) - 1)


class HdlcServerLink:
    """The HDLC secondary station of one connection."""

    hdlc = True

    def __init__(self, meter: Meter, server: CosemServer) -> None:
        self.meter = meter
        self.server = server
        self.limits: LinkParameters = meter.settings.hdlc
        self.params = LinkParameters()
        self.state = _DISCONNECTED
        self._scanner = FrameScanner()
        self._vs = 0
        self._vr = 0
        # Addresses of the connected client, and of the meter as the client wrote it.
        self._peer: tuple[int, int] | None = None
        self._peer_address = HdlcAddress.client(1)
        self._own_address = HdlcAddress.server(
            meter.settings.server_logical, meter.settings.server_physical
        )
        self._addresses = self._peer_address.encode() + self._own_address.encode()
        #: The address bytes of the connected client's frames (ours, then its own), when the
        #: frames it sends to us need no alias: the steady path knows them by these.
        self._rx_addresses: bytes | None = None
        self._rx_segments = bytearray()
        self._tx_segments: list[bytes] = []
        self._last_request_control = -1
        self._last_reply: bytes | None = None
        self._frmr: bytes | None = None

    # -- public ----------------------------------------------------------------------------------

    def receive_data(self, data: bytes, wall: float) -> list[bytes]:
        """Feed received bytes; return the frames to send, in order (``b""`` is a no-op)."""
        if not data:
            return []
        if self._rx_addresses is not None and self._scanner.pending <= 1:  # (a closing flag)
            reply = self._steady(data, wall)
            if reply is not None:
                return [reply]
        try:
            self._scanner.receive_data(data)
        except FrameError:
            # Buffer full of garbage: start afresh with what just arrived.
            self._scanner.drain()
            self.meter.counters.link_errors += 1
            return []
        out: list[bytes] = []
        while True:
            frame = self._scanner.next_frame()
            if frame is NEED_DATA:
                return out
            reply = self._on_frame(frame, wall)
            if reply is not None:
                out.append(reply)

    def _steady(self, data: bytes, wall: float) -> bytes | None:
        """The answer to ``data`` when it is exactly one well-formed, in-sequence I-frame (P set)
        from the connected client carrying a request: what the scanner and the general frame
        path would give, with fewer steps; None (nothing changed) for anything else."""
        size = len(data)
        head = self._rx_addresses
        assert head is not None
        k = len(head)
        if (
            size < k + 10
            or data[0] != 0x7E
            or data[-1] != 0x7E
            or data[1] & 0xF8 != 0xA0
            or ((data[1] & 0x07) << 8 | data[2]) != size - 2
            or data[3 : 3 + k] != head
            or data[3 + k] != (self._vs << 5) | 0x10 | (self._vr << 1)
            or self._rx_segments
            or fcs16(data[1 : 4 + k]) != data[4 + k] | data[5 + k] << 8
            or fcs16(data[1 : size - 3]) != data[size - 3] | data[size - 2] << 8
        ):
            return None
        info = data[6 + k : size - 3]
        if len(info) > self.params.max_info_rx or not info.startswith(LLC_REQUEST):
            return None
        # From here on, what _on_frame and _i_frame do with this frame.
        self._vr = (self._vr + 1) & 7
        self._last_request_control = data[3 + k]
        self._tx_segments = []
        return self._answer(info, wall)

    def _answer(self, info: bytes, wall: float) -> bytes | None:
        """The reply to a request's LLC-headed information field: its first segment (the others
        wait for RRs), or a supervisory frame when the server has nothing to say."""
        response = self.server.handle(info[3:], self._peer_address.value, wall)
        if response is None:
            return self._remember(self._supervisory())
        payload = LLC_RESPONSE + response
        size = self.params.max_info_tx
        self._tx_segments = [payload[i : i + size] for i in range(size, len(payload), size)]
        return self._information(payload[:size])

    def expire(self) -> None:
        """The inactivity timeout: drop the link and the association, silently."""
        self._disconnect()

    def close(self) -> None:
        """The connection closed."""
        self._disconnect()

    def sample_reply(self) -> bytes:
        """A plausible I-frame answer of another session (for the ``residual`` fault)."""
        return encode_frame(
            FrameKind.I,
            HdlcAddress.client(1),
            self._own_address,
            ns=3,
            nr=5,
            info=LLC_RESPONSE + _PREVIOUS_ANSWER,
        )

    # -- frames ----------------------------------------------------------------------------------

    def _accepts(self, frame: Frame) -> bool:
        logical, physical = _address_parts(frame.dst, frame.dst_size)
        settings = self.meter.settings
        if physical != settings.server_physical:
            return False
        if logical == settings.server_logical:
            return True
        return frame.dst_size != 1 and logical == FLAGS_LOGICAL and self.meter.faults.flags

    def _on_frame(self, frame: Frame, wall: float) -> bytes | None:
        if not self._accepts(frame):
            self.meter.counters.ignored_frames += 1
            return None
        kind = frame.kind
        if kind is FrameKind.SNRM:
            return self._snrm(frame)
        if kind is FrameKind.DISC:
            if self.state == _DISCONNECTED:
                return self._u_frame(FrameKind.DM, frame)
            self._disconnect()
            return self._u_frame(FrameKind.UA, frame)
        if self.state == _DISCONNECTED:
            if (
                kind in (FrameKind.UI, FrameKind.UA, FrameKind.DM, FrameKind.FRMR)
                or not frame.poll_final
            ):
                self.meter.counters.ignored_frames += 1
                return None
            return self._u_frame(FrameKind.DM, frame)
        if (frame.src, frame.src_size) != self._peer:
            self.meter.counters.ignored_frames += 1
            return None
        if self.state == _FRAME_REJECT:
            return self._frmr
        if kind is FrameKind.I:
            return self._i_frame(frame, wall)
        if kind is FrameKind.RR or kind is FrameKind.RNR:
            return self._rr(frame)
        if kind is FrameKind.UI:
            self.meter.counters.ignored_frames += 1
            return None
        return self._reject(frame, _FRMR_W)

    def _snrm(self, frame: Frame) -> bytes:
        try:
            proposal = LinkParameters.decode(frame.info)
        except FrameError:
            self.meter.counters.link_errors += 1
            return self._u_frame(FrameKind.DM, frame)
        self.server.release()
        self.params = self.limits.negotiate(proposal)
        self.state = _CONNECTED
        self._vs = self._vr = 0
        self._peer = (frame.src, frame.src_size)
        self._peer_address = HdlcAddress(frame.src, frame.src_size)
        self._own_address = HdlcAddress(frame.dst, frame.dst_size)
        self._addresses = self._peer_address.encode() + self._own_address.encode()
        logical, physical = _address_parts(frame.dst, frame.dst_size)
        settings = self.meter.settings
        plain = (logical, physical) == (settings.server_logical, settings.server_physical)
        self._rx_addresses = (
            self._own_address.encode() + self._peer_address.encode() if plain else None
        )
        self._rx_segments.clear()
        self._tx_segments = []
        self._last_request_control = -1
        self._last_reply = None
        self._frmr = None
        return self._send(
            encode_frame(
                FrameKind.UA, self._peer_address, self._own_address, info=self.params.encode()
            )
        )

    def _i_frame(self, frame: Frame, wall: float) -> bytes | None:
        ns, nr = frame.ns, frame.nr
        if ns != self._vr:
            if frame.control == self._last_request_control and self._last_reply is not None:
                return self._send(self._last_reply)  # the client lost our answer
            self.meter.counters.link_errors += 1
            return self._supervisory()
        if nr != self._vs:
            return self._reject(frame, _FRMR_Z)
        if len(frame.info) > self.params.max_info_rx:
            return self._reject(frame, _FRMR_Y)
        self._vr = (self._vr + 1) & 7
        self._last_request_control = frame.control
        self._tx_segments = []
        if frame.segmented:
            self._rx_segments += frame.info
            return self._remember(self._supervisory())
        info = frame.info
        if self._rx_segments:
            self._rx_segments += info
            info = bytes(self._rx_segments)
            self._rx_segments.clear()
        if not info.startswith(LLC_REQUEST):
            self.meter.counters.link_errors += 1
            return self._remember(self._supervisory())
        return self._answer(info, wall)

    def _rr(self, frame: Frame) -> bytes | None:
        nr = frame.nr
        if nr == self._vs:
            if self._tx_segments and frame.kind is FrameKind.RR:
                return self._information(self._tx_segments.pop(0))
            return self._supervisory()
        if nr == (self._vs - 1) & 7 and self._last_reply is not None:
            return self._send(self._last_reply)  # our last I-frame was lost: send it again
        return self._reject(frame, _FRMR_Z)

    # -- building replies ------------------------------------------------------------------------

    def _information(self, info: bytes) -> bytes:
        control = (self._vr << 5) | 0x10 | (self._vs << 1)
        frame = i_frame(self._addresses, control, info, segmented=bool(self._tx_segments))
        self._vs = (self._vs + 1) & 7
        return self._remember(frame)

    def _supervisory(self) -> bytes:
        return self._send(
            encode_frame(FrameKind.RR, self._peer_address, self._own_address, nr=self._vr)
        )

    def _u_frame(self, kind: FrameKind, request: Frame) -> bytes:
        frame = encode_frame(
            kind,
            HdlcAddress(request.src, request.src_size),
            HdlcAddress(request.dst, request.dst_size),
            poll_final=request.poll_final,
        )
        return self._send(frame)

    def _reject(self, request: Frame, reason: int) -> bytes:
        self.meter.counters.link_errors += 1
        info = bytes((request.control, (self._vr << 5) | (self._vs << 1), reason))
        self._frmr = encode_frame(FrameKind.FRMR, self._peer_address, self._own_address, info=info)
        self.state = _FRAME_REJECT
        self._rx_addresses = None
        return self._send(self._frmr)

    def _remember(self, frame: bytes) -> bytes:
        self._last_reply = frame
        return self._send(frame)

    def _send(self, frame: bytes) -> bytes:
        self.meter.counters.replies += 1
        return frame

    def _disconnect(self) -> None:
        self.state = _DISCONNECTED
        self._rx_addresses = None
        self._peer = None
        self._rx_segments.clear()
        self._tx_segments = []
        self._last_reply = None
        self.server.release()


class WrapperServerLink:
    """The wrapper transport of one connection: each PDU carries one whole APDU."""

    hdlc = False

    def __init__(self, meter: Meter, server: CosemServer) -> None:
        self.meter = meter
        self.server = server
        self._scanner = WrapperScanner()

    def receive_data(self, data: bytes, wall: float) -> list[bytes]:
        """Feed received bytes; return the PDUs to send, in order (``b""`` is a no-op)."""
        if not data:
            return []
        try:
            self._scanner.receive_data(data)
        except FrameError:
            self._scanner.drain()
            self.meter.counters.link_errors += 1
            return []
        out: list[bytes] = []
        own = self.meter.settings.server_wport
        while True:
            pdu = self._scanner.next_frame()
            if pdu is NEED_DATA:
                return out
            assert isinstance(pdu, WrapperFrame)
            if pdu.dst_wport != own:
                self.meter.counters.ignored_frames += 1
                continue
            response = self.server.handle(pdu.payload, pdu.src_wport, wall)
            if response is not None:
                self.meter.counters.replies += 1
                out.append(WrapperFrame(own, pdu.src_wport, response).encode())

    def expire(self) -> None:
        """The inactivity timeout: drop the association."""
        self.server.release()

    def close(self) -> None:
        """The connection closed."""
        self.server.release()

    def sample_reply(self) -> bytes:
        """A plausible answer PDU of another session (for the ``residual`` fault)."""
        return WrapperFrame(self.meter.settings.server_wport, 1, _PREVIOUS_ANSWER).encode()


ServerLink = HdlcServerLink | WrapperServerLink
