"""The association's steady-poll shortcuts are the general path, byte for byte and state for
state: `steady_request` against `request(..., steady=...)` + `data_to_send`, and
`receive_steady` against `receive_data` + `next_event`, whatever the meter sends back (the
right reply, a corrupted, truncated, split, stale or lost one, garbage, frames of another
kind), on HDLC and on the TCP wrapper.

Two associations are driven in lockstep against one simulated meter (the simulator's sans-IO
server side): the meter answers what the first sends, and both get the same bytes.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from codec import _hdlc_py
from codec._speedups import IMPLEMENTATION as HDLC_IMPLEMENTATION
from codec.association import Associated, ClientAssociation, Response, SteadyResponse
from codec.client import DlmsClient, RegisterReading
from codec.errors import ProtocolError
from codec.hdlc import (
    NEED_DATA,
    Frame,
    FrameKind,
    FrameScanner,
    HdlcAddress,
    encode_frame,
    encode_with_control,
)
from codec.steady import SteadyDecoder, steady_receive, steady_send
from tests.codec.test_association import FIELD_METER as SPECS
from tests.codec.test_association import Wire

#: The addresses of Wire's HDLC link.
CLIENT = HdlcAddress.client(1)
SERVER = HdlcAddress.server(0, 1)


def _plain(value: Any) -> Any:
    """A comparable form of one attribute of an association or a link."""
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "stats") and callable(value.stats):  # the scanner: its counters
        return value.stats()
    if type(value).__name__ == "_Pending":
        return (value.raw, value.deadline, value.retries_left, value.what, value.fatal)
    return value


def snapshot(association: ClientAssociation) -> dict[str, Any]:
    """Everything the association and its link hold (every attribute, so a new one is
    compared too)."""
    state = {f"a.{k}": _plain(v) for k, v in vars(association).items() if k != "link"}
    state.update({f"l.{k}": _plain(v) for k, v in vars(association.link).items()})
    state["next_deadline"] = association.next_deadline()
    return state


def _events(association: ClientAssociation) -> list[Any]:
    """Events until the association needs data; an error ends the list."""
    out: list[Any] = []
    try:
        while True:
            event = association.next_event()
            if event is NEED_DATA:
                return out
            if isinstance(event, SteadyResponse):
                out.append(("steady", event.reading.as_tuple()))
            else:
                out.append(event)
    except ProtocolError as exc:
        out.append((type(exc).__name__, exc.code, str(exc)))
        return out


#: How the fast association is driven: its own methods, or codec.steady's one-call functions
#: (in C over HDLC when the extension is built).
CALLS = {
    "methods": (ClientAssociation.steady_request, ClientAssociation.receive_steady),
    "calls": (steady_send, steady_receive),
}


class Pair:
    """A fast and a general association in lockstep against one meter."""

    def __init__(self, transport: str, calls: str = "methods") -> None:
        self.steady_request, self.receive_steady = CALLS[calls]
        # Two client sides as the association tests make them; the meter is the first's.
        fast, slow = Wire(transport=transport), Wire(transport=transport)
        self.server: Any = fast.server
        self.fast, self.slow = fast.assoc, slow.assoc
        self.now = 1.0
        self.shortcuts = 0
        for a in (self.fast, self.slow):
            a.open(self.now)
        while True:
            events = self.exchange()
            assert events[0] == events[1]
            if events[0]:
                assert isinstance(events[0][0], Associated), events
                break
        client = DlmsClient(events[0][0].negotiated)
        # The general reads (the first one with the scalers) until the request is steady.
        for _ in range(2):
            readings = self.general_read(client)
        request = client.steady_request(SPECS)
        assert request is not None
        self.request = request
        self.decoder = SteadyDecoder(SPECS, readings)
        self.last_reply = b""
        self.replies: list[bytes] = []

    def general_read(self, client: DlmsClient) -> list[RegisterReading]:
        proc = client.read_registers(SPECS)
        request = next(proc)
        while True:
            for a in (self.fast, self.slow):
                a.request(request, self.now)
            events = self.exchange()
            assert events[0] == events[1] and isinstance(events[0][0], Response), events
            try:
                request = proc.send(events[0][0].apdu)
            except StopIteration as done:
                readings: list[RegisterReading] = done.value
                return readings

    def exchange(self) -> tuple[list[Any], list[Any]]:
        """Both send; the meter answers the fast one's bytes; both take the answer."""
        out = self.fast.data_to_send()
        assert out == self.slow.data_to_send()
        data = b"".join(self.server.receive_data(out, time.time())) if out else b""
        self.now += 0.01
        if data:
            for a in (self.fast, self.slow):
                a.receive_data(data, self.now)
        return _events(self.fast), _events(self.slow)

    def send(self) -> bytes | None:
        """The steady request, by the shortcut and the general way: the same bytes, the same
        state. None when both refuse it (the association is no longer usable)."""
        fast, slow = self.fast, self.slow
        self.now += 1.0
        before = snapshot(fast)
        raw = self.steady_request(fast, self.request, self.now, self.decoder)
        if raw is None:
            assert snapshot(fast) == before  # refused: nothing done
            try:
                fast.request(self.request, self.now, steady=self.decoder)
            except ProtocolError as exc:
                with pytest.raises(type(exc)):
                    slow.request(self.request, self.now, steady=self.decoder)
                return None
            raw = fast.data_to_send()
        else:
            self.shortcuts += 1
        slow.request(self.request, self.now, steady=self.decoder)
        assert slow.data_to_send() == raw
        assert snapshot(fast) == snapshot(slow)
        return raw

    def receive(self, pieces: list[bytes]) -> None:
        """The same bytes to both, piece by piece: receive_steady (then next_event) against
        receive_data then next_event."""
        for piece in pieces:
            if not piece:
                continue  # b"" would say the connection closed
            self.now += 0.001
            fast_events: list[Any] = []
            try:
                reading = self.receive_steady(self.fast, piece, self.now)
            except ProtocolError as exc:
                fast_events.append((type(exc).__name__, exc.code, str(exc)))
            else:
                if reading is not None:
                    fast_events.append(("steady", reading.as_tuple()))
                fast_events += _events(self.fast)
            try:
                self.slow.receive_data(piece, self.now)
            except ProtocolError as exc:
                slow_events = [(type(exc).__name__, exc.code, str(exc))]
            else:
                slow_events = _events(self.slow)
            assert fast_events == slow_events
            assert snapshot(self.fast) == snapshot(self.slow)

    def timer(self) -> bytes:
        """Time runs to the next deadline on both (a retransmission, a timeout)."""
        deadline = self.fast.next_deadline()
        if deadline is None:
            return b""
        self.now = max(self.now, deadline)
        results = []
        for a in (self.fast, self.slow):
            try:
                a.handle_timer(self.now)
                results.append(None)
            except ProtocolError as exc:
                results.append((type(exc).__name__, exc.code))
        assert results[0] == results[1]
        out = self.fast.data_to_send()
        assert out == self.slow.data_to_send()
        assert snapshot(self.fast) == snapshot(self.slow)
        return out


#: What happens to the meter's reply on its way back.
faults = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("split"), st.integers(1, 60)),
    st.tuples(st.just("flip"), st.integers(0, 200), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 60)),
    st.tuples(st.just("garbage"), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("append"), st.sampled_from(["rr", "ui", "garbage", "start", "again"])),
    st.tuples(st.just("stale")),
    st.tuples(
        st.just("other"),
        st.sampled_from(
            [
                b"\xd8\x01\x01",  # exception-response
                b"\xc4\x01\x41\x00\x06\x00\x00\x00\x01",  # GET.response-normal
                b"\xc4\x03\x41",  # another GET choice, cut short
                b"\x0f\x00\x00\x00\x01\x00\x09\x01\x41",  # a data-notification
                b"",  # an empty information field
                b"\xc4\x02",
            ]
        ),
    ),
    st.tuples(st.just("invoke"), st.integers(1, 15)),
    st.tuples(st.just("sequence"), st.integers(1, 7)),
    # The same reply from another server address (another value, or four bytes).
    st.tuples(st.just("address"), st.sampled_from([(2, 1), (0x1001, 4), (1, 4)])),
    st.tuples(st.just("lose")),
)


def _mangle(pair: Pair, reply: bytes, fault: tuple[Any, ...]) -> list[bytes]:
    kind = fault[0]
    if kind == "split":
        cut = fault[1] % max(1, len(reply))
        return [reply[:cut], reply[cut:]]
    if kind == "flip":
        mangled = bytearray(reply)
        mangled[fault[1] % len(mangled)] ^= fault[2]
        return [bytes(mangled)]
    if kind == "truncate":
        return [reply[: fault[1] % len(reply)]]
    if kind == "garbage":
        return [fault[1] + reply]
    if kind == "append":
        extra = {
            "rr": encode_frame(FrameKind.RR, CLIENT, SERVER, nr=1),
            "ui": encode_frame(FrameKind.UI, CLIENT, SERVER, info=b"\xe6\xe7\x00\x0f"),
            "garbage": b"\x7e\xa0\x07",
            "start": b"\x7e\xa0",  # a frame's first bytes: two bytes left held
            "again": reply,
        }[fault[1]]
        return [reply + extra]
    if kind == "stale":
        return [pair.replies[-2] if len(pair.replies) > 1 else reply]
    if kind == "lose":
        return []
    if kind == "sequence":
        # The same reply with another N(S) (the control byte's bits 1-3), checksums right.
        scanner = FrameScanner()
        scanner.receive_data(reply)
        frame = scanner.next_frame()
        if not isinstance(frame, Frame):
            return [reply]  # the wrapper has no sequence numbers
        ns = ((frame.control >> 1) + fault[1]) & 0x07
        control = (frame.control & 0xF1) | (ns << 1)
        dst = HdlcAddress(frame.dst, frame.dst_size)
        src = HdlcAddress(frame.src, frame.src_size)
        return [encode_with_control(dst, src, control, frame.info, segmented=frame.segmented)]
    if kind == "address":
        scanner = FrameScanner()
        scanner.receive_data(reply)
        frame = scanner.next_frame()
        if not isinstance(frame, Frame):
            return [reply]  # the wrapper's ports are not HDLC addresses
        dst = HdlcAddress(frame.dst, frame.dst_size)
        src = HdlcAddress(*fault[1])
        return [encode_with_control(dst, src, frame.control, frame.info)]
    if kind in ("other", "invoke"):
        # A reply in sequence, of another APDU: another service, or the same reply with
        # another invoke-id (the invoke-id-and-priority byte, the third of the APDU).
        payload, rewrap = _payload(reply)
        if kind == "other":
            payload = fault[1]
        else:
            payload = payload[:2] + bytes([(payload[2] & 0xF0) | fault[1]]) + payload[3:]
        return [rewrap(payload)]
    return [reply]


def _payload(reply: bytes) -> tuple[bytes, Any]:
    """The APDU of a reply (one HDLC I-frame or one wrapper PDU), and how to send another
    APDU the same way."""
    if reply[:1] != b"\x7e":
        header = reply[:6]
        return reply[8:], lambda apdu: header + len(apdu).to_bytes(2, "big") + apdu
    scanner = FrameScanner()
    scanner.receive_data(reply)
    frame = scanner.next_frame()
    assert isinstance(frame, Frame)
    llc = frame.info[:3]

    def rewrap(apdu: bytes) -> bytes:
        return encode_with_control(
            HdlcAddress(frame.dst, frame.dst_size), HdlcAddress(frame.src, frame.src_size),
            frame.control, llc + apdu, segmented=frame.segmented,
        )  # fmt: skip

    return frame.info[3:], rewrap


@pytest.mark.parametrize("calls", sorted(CALLS))
@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
@given(rounds=st.lists(faults, min_size=1, max_size=6))
@example(rounds=[("none",)] * 3)
@example(rounds=[("stale",), ("stale",), ("none",)])
@example(rounds=[("lose",), ("none",)])
@example(rounds=[("append", "again"), ("none",)])
@example(rounds=[("invoke", 3), ("none",)])
@example(rounds=[("other", b"\xd8\x01\x01"), ("none",)])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_steady_shortcuts_are_the_general_path(
    transport: str, calls: str, rounds: list[Any]
) -> None:
    pair = Pair(transport, calls)
    clean = 0  # sends after nothing but clean rounds: the shortcut must take every one
    for n, fault in enumerate(rounds):
        if all(r == ("none",) for r in rounds[:n]):
            clean += 1
        raw = pair.send()
        if raw is None:
            break
        reply = b"".join(pair.server.receive_data(raw, time.time()))
        pair.replies.append(reply)
        pieces = _mangle(pair, reply, fault)
        pair.receive(pieces)
        # Whatever was left unanswered: the timers run (retransmissions reach the meter).
        for _ in range(4):
            if pair.fast.next_deadline() is None:
                break
            out = pair.timer()
            if out:
                pair.receive([b"".join(pair.server.receive_data(out, time.time()))])
    # The shortcut was taken on every send of a clean start (it is not simply refused).
    assert pair.shortcuts >= clean


@pytest.mark.parametrize("calls", sorted(CALLS))
def test_the_shortcuts_are_taken_on_a_clean_steady_poll(calls: str) -> None:
    """The right reply comes straight as the reading, the same the general path decodes."""
    pair = Pair("hdlc", calls)
    for _ in range(3):
        raw = pair.send()
        assert raw is not None
        reply = b"".join(pair.server.receive_data(raw, time.time()))
        reading = pair.receive_steady(pair.fast, reply, pair.now)
        pair.slow.receive_data(reply, pair.now)
        event = pair.slow.next_event()
        assert isinstance(event, SteadyResponse)
        assert reading is not None and reading == event.reading
        assert snapshot(pair.fast) == snapshot(pair.slow)
    assert pair.shortcuts == 3


@pytest.mark.skipif(HDLC_IMPLEMENTATION != "cython", reason="the HDLC extension is not in use")
def test_the_extension_takes_clean_steady_polls_itself() -> None:
    """Built, the one-call functions are the extension's, and they take a clean steady poll
    (with the scanner drained, or holding the closing flag of the frame before) without
    handing anything to the association's methods."""
    assert steady_send is not _hdlc_py.steady_send
    assert steady_receive is not _hdlc_py.steady_receive
    pair = Pair("hdlc", "calls")
    pair.send()  # the first steady request: its encoding is made by the general request
    pair.receive([b"".join(pair.server.receive_data(pair.slow.link._pending.raw, time.time()))])

    def refuse(*_args: object) -> None:
        raise AssertionError("handed to the association's method")

    fast = pair.fast
    for drained in (True, False, True):
        fast.steady_request = refuse  # type: ignore[method-assign]
        fast.receive_steady = refuse  # type: ignore[method-assign]
        if drained:
            fast.drain()  # as the engine does before a poll: nothing held
        else:
            assert fast.link.scanner.pending == 1  # the last reply's closing flag, held
        raw = steady_send(fast, pair.request, pair.now + 1, pair.decoder)
        assert raw is not None
        reply = b"".join(pair.server.receive_data(raw, time.time()))
        assert steady_receive(fast, reply, pair.now + 1.001) is not None
        del fast.steady_request, fast.receive_steady
        assert fast.link.scanner.pending == 1  # the reply's closing flag, as the scanner keeps
