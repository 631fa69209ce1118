"""The link's shortcuts for a steady poll are the general path, byte for byte and event for event:
`HdlcClientLink.next_apdu` (a reply that is one I-frame) against `next_event`, and the I-frames
`send_apdu` writes from the heads it keeps against `encode_frame`."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from codec.errors import ProtocolError
from codec.hdlc import NEED_DATA, FrameKind, HdlcAddress, NeedData, encode_frame
from codec.hdlc_params import LinkParameters
from codec.link import LLC_REQUEST, ApduReceived, Connected, HdlcClientLink

CLIENT = HdlcAddress.client(1)
SERVER = HdlcAddress.server(0, 1)
OTHER = HdlcAddress.server(0, 2)


def connected(transparency: bool = False, max_apdu: int = 64) -> HdlcClientLink:
    link = HdlcClientLink(CLIENT, SERVER, transparency=transparency, max_apdu=max_apdu)
    link.connect(0.0)
    link.data_to_send()
    ua = encode_frame(
        FrameKind.UA, CLIENT, SERVER, info=LinkParameters().encode(), transparency=transparency
    )
    link.receive_data(ua, 0.1)
    assert isinstance(link.next_event(), Connected)
    return link


# What the meter may send: I-frames in and out of sequence, segmented or not, from another
# address, too long, supervisory and unnumbered frames, garbage.
_frames = st.one_of(
    st.builds(
        lambda ns, nr, info, seg, src: ("I", ns, nr, info, seg, src),
        st.integers(0, 7), st.integers(0, 7),
        st.sampled_from([b"\xe6\xe7\x00\xc4\x01", b"\xe6\xe6\x00\xc4", b"\xc4\x02", b"",
                         b"\xe6\xe7\x00" + bytes(70), b"\xe6\xe7"]),
        st.booleans(), st.sampled_from([SERVER, SERVER, SERVER, OTHER]),
    ),
    st.tuples(st.sampled_from(["RR", "RNR", "DISC", "UI", "DM", "FRMR"]), st.integers(0, 7)),
    st.tuples(st.just("garbage"), st.binary(max_size=6)),
)  # fmt: skip


def _encode(spec: tuple[Any, ...]) -> bytes:
    if spec[0] == "I":
        _, ns, nr, info, seg, src = spec
        return encode_frame(FrameKind.I, CLIENT, src, ns=ns, nr=nr, info=info, segmented=seg)
    if spec[0] == "garbage":
        return bytes(spec[1])
    kind = FrameKind[spec[0]]
    info = b"\xe6\xe7\x00\x0f" if kind is FrameKind.UI else b""
    return encode_frame(kind, CLIENT, SERVER, nr=spec[1], info=info)


def _take(link: HdlcClientLink, shortcut: bool) -> list[Any]:
    """Everything the link gives until it needs data, as (kind, value) pairs; an error ends it."""
    out: list[Any] = []
    try:
        while True:
            if shortcut:
                apdu = link.next_apdu()
                if isinstance(apdu, NeedData):
                    return out
                if apdu is not None:
                    out.append(ApduReceived(apdu))
                    continue
            event = link.next_event()
            if event is NEED_DATA:
                return out
            out.append(event)
    except ProtocolError as exc:
        out.append((type(exc).__name__, exc.code))
        return out


def _state(link: HdlcClientLink) -> tuple[Any, ...]:
    pending = link._pending
    return (
        link.state, link._vs, link._vr, link.frames_ignored, link.frames_sent,
        link.retransmissions, link._answered_deadline, link._busy_until,
        None if pending is None else (pending.raw, pending.deadline, pending.what),
        link.next_deadline(), link.data_to_send(), link.stats(),
    )  # fmt: skip


@given(
    rounds=st.lists(
        st.tuples(st.booleans(), st.lists(_frames, min_size=1, max_size=4), st.integers(1, 4)),
        min_size=1, max_size=8,
    ),
)  # fmt: skip
@example(rounds=[(True, [("I", 0, 1, b"\xe6\xe7\x00\xc4\x01", False, SERVER)], 1)])
@example(rounds=[(True, [("I", 0, 1, b"\xe6\xe7\x00" + bytes(70), False, SERVER)], 1)])
@example(rounds=[(True, [("I", 0, 1, b"\xe6\xe7\x00\xc4\x01", True, SERVER),
                         ("I", 1, 1, b"\xc4\x02", False, SERVER)], 1)])  # fmt: skip
@settings(max_examples=400)
def test_next_apdu_is_next_event(rounds: list[tuple[bool, list[Any], int]]) -> None:
    """Two links get the same requests and the same bytes from the meter (split anywhere);
    one is read with next_apdu first, the other with next_event only: the same APDUs, events
    and errors, in the same order, and the same link state after each step."""
    fast, slow = connected(), connected()
    now = 1.0
    for send, frames, pieces in rounds:
        now += 1.0
        for link in (fast, slow):
            if send and link.state.value == "connected" and not link._segments_out:
                try:
                    link.send_apdu(b"\xc0\x01\xc1", now)
                except ProtocolError:
                    pass
        data = b"".join(_encode(f) for f in frames)
        step = max(1, len(data) // pieces)
        for start in range(0, len(data), step):
            for link in (fast, slow):
                link.receive_data(data[start : start + step], now)
            assert _take(fast, True) == _take(slow, False)
            assert _state(fast) == _state(slow)


@given(
    apdu=st.binary(max_size=300),
    steps=st.integers(0, 20),
    transparency=st.booleans(),
    client=st.sampled_from([HdlcAddress.client(1), HdlcAddress.client(0x10)]),
    server=st.sampled_from([HdlcAddress.server(0, 1), HdlcAddress.server(1, 17),
                            HdlcAddress(0x7E, 1), HdlcAddress.server(0x3FFF, 0x3FFF)]),
)  # fmt: skip
@settings(max_examples=300)
def test_i_frames_are_encode_frame_byte_for_byte(
    apdu: bytes, steps: int, transparency: bool, client: HdlcAddress, server: HdlcAddress
) -> None:
    """Whatever N(S)/N(R), size, segmentation, addresses and transparency: the frames sent
    are encode_frame's."""
    link = HdlcClientLink(
        client, server, transparency=transparency, parameters=LinkParameters(128, 128, 1, 1)
    )
    link.connect(0.0)
    link.data_to_send()
    ua = encode_frame(
        FrameKind.UA, client, server, info=LinkParameters(128, 128, 1, 1).encode(),
        transparency=transparency,
    )  # fmt: skip
    link.receive_data(ua, 0.1)
    assert isinstance(link.next_event(), Connected)
    link._vs, link._vr = steps % 8, (steps * 3) % 8
    vs, vr = link._vs, link._vr
    link.send_apdu(apdu, 1.0)
    data = LLC_REQUEST + apdu
    first = data[:128]
    assert link.data_to_send() == encode_frame(
        FrameKind.I, server, client, ns=vs, nr=vr, info=first,
        segmented=len(data) > 128, transparency=transparency,
    )  # fmt: skip
