"""The client HDLC link, frame by frame, with time passed in."""

from __future__ import annotations

from typing import Any

import pytest

from codec.errors import LinkError, LocalProtocolError, ResponseTimeout
from codec.hdlc import NEED_DATA, FrameKind, FrameScanner, HdlcAddress, encode_frame
from codec.hdlc_params import LinkParameters
from codec.link import (
    ApduReceived,
    Connected,
    Disconnected,
    HdlcClientLink,
    LinkState,
    UnsolicitedData,
    WrapperClientLink,
)
from codec.wrapper import WrapperFrame

CLIENT = HdlcAddress.client(1)
SERVER = HdlcAddress.server(0, 1)


def sent_frames(link: HdlcClientLink) -> list[Any]:
    """Decode what the link wants to send."""
    scanner = FrameScanner()
    scanner.receive_data(link.data_to_send())
    out = []
    while (frame := scanner.next_frame()) is not NEED_DATA:
        out.append(frame)
    return out


def from_server(kind: FrameKind, **kwargs: Any) -> bytes:
    return encode_frame(kind, CLIENT, SERVER, **kwargs)


def events(link: HdlcClientLink | WrapperClientLink) -> list[Any]:
    out = []
    while (event := link.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def connected_link(**kwargs: Any) -> HdlcClientLink:
    link = HdlcClientLink(CLIENT, SERVER, **kwargs)
    link.connect(0.0)
    link.data_to_send()
    link.receive_data(from_server(FrameKind.UA, info=LinkParameters().encode()), 0.1)
    assert isinstance(link.next_event(), Connected)
    return link


def test_snrm_proposes_parameters_and_ua_negotiates() -> None:
    link = HdlcClientLink(CLIENT, SERVER, parameters=LinkParameters(512, 512, 1, 1))
    link.connect(0.0)
    (snrm,) = sent_frames(link)
    assert snrm.kind is FrameKind.SNRM and snrm.poll_final
    assert (snrm.dst, snrm.dst_size, snrm.src) == (1, 1, 1)
    assert LinkParameters.decode(snrm.info) == LinkParameters(512, 512, 1, 1)
    assert link.state is LinkState.CONNECTING
    # The meter can send 154 and receive 128 bytes per frame.
    link.receive_data(from_server(FrameKind.UA, info=LinkParameters(154, 128).encode()), 0.2)
    (event,) = events(link)
    assert event == Connected(LinkParameters(max_info_tx=128, max_info_rx=154))
    assert link.state is LinkState.CONNECTED and link.next_deadline() is None


def test_ua_without_parameters_means_defaults() -> None:
    link = HdlcClientLink(CLIENT, SERVER, parameters=LinkParameters(1024, 1024, 1, 1))
    link.connect(0.0)
    link.receive_data(from_server(FrameKind.UA), 0.1)
    assert events(link) == [Connected(LinkParameters(128, 128, 1, 1))]


def test_sequence_numbers_follow_next_expected_rule() -> None:
    link = connected_link()
    for i in range(10):
        link.send_apdu(b"\xc0\x01\xc1", float(i))
        (request,) = sent_frames(link)
        assert request.kind is FrameKind.I
        # N(S) counts our frames; N(R) is the next N(S) we expect from the meter.
        assert (request.ns, request.nr) == (i % 8, i % 8)
        assert request.info == b"\xe6\xe6\x00\xc0\x01\xc1"
        link.receive_data(
            from_server(FrameKind.I, ns=i % 8, nr=(i + 1) % 8, info=b"\xe6\xe7\x00\xc4"), i + 0.5
        )
        assert events(link) == [ApduReceived(b"\xc4")]


def test_segmented_reply_is_reassembled_with_rr() -> None:
    link = connected_link()
    link.send_apdu(b"\xc0\x01", 0.0)
    link.data_to_send()
    link.receive_data(
        from_server(FrameKind.I, ns=0, nr=1, info=b"\xe6\xe7\x00part1-", segmented=True), 0.1
    )
    assert events(link) == []
    (rr,) = sent_frames(link)
    assert rr.kind is FrameKind.RR and rr.nr == 1 and rr.poll_final
    link.receive_data(from_server(FrameKind.I, ns=1, nr=1, info=b"part2-", segmented=True), 0.2)
    assert events(link) == []
    (rr,) = sent_frames(link)
    assert rr.nr == 2
    link.receive_data(from_server(FrameKind.I, ns=2, nr=1, info=b"end"), 0.3)
    assert events(link) == [ApduReceived(b"part1-part2-end")]
    assert sent_frames(link) == []


def test_long_apdu_is_split_and_sent_after_each_rr() -> None:
    link = connected_link(parameters=LinkParameters(128, 128, 1, 1))
    apdu = bytes(range(256)) + bytes(44)  # 300 bytes + 3 LLC = 303 -> 128 + 128 + 47
    link.send_apdu(apdu, 0.0)
    (first,) = sent_frames(link)
    assert first.segmented and first.ns == 0 and len(first.info) == 128
    link.receive_data(from_server(FrameKind.RR, nr=1), 0.1)
    assert events(link) == []
    (second,) = sent_frames(link)
    assert second.segmented and second.ns == 1 and len(second.info) == 128
    link.receive_data(from_server(FrameKind.RR, nr=2), 0.2)
    events(link)
    (third,) = sent_frames(link)
    assert not third.segmented and third.ns == 2 and len(third.info) == 47
    assert first.info + second.info + third.info == b"\xe6\xe6\x00" + apdu
    link.receive_data(from_server(FrameKind.I, ns=0, nr=3, info=b"\xe6\xe7\x00\xc5"), 0.3)
    assert events(link) == [ApduReceived(b"\xc5")]


def test_timeout_retransmits_then_gives_up() -> None:
    link = connected_link(timeout=2.0, retries=2)
    link.send_apdu(b"\xc0", 10.0)
    (original,) = sent_frames(link)
    assert link.next_deadline() == 12.0
    link.handle_timer(11.9)
    assert sent_frames(link) == []
    link.handle_timer(12.0)
    assert sent_frames(link) == [original]
    assert link.next_deadline() == 14.0
    link.handle_timer(14.0)
    assert sent_frames(link) == [original]
    with pytest.raises(ResponseTimeout) as err:
        link.handle_timer(16.0)
    assert err.value.code == "link.timeout"
    assert link.retransmissions == 2 and link.state is LinkState.DISCONNECTED


def test_duplicate_reply_is_dropped() -> None:
    link = connected_link()
    link.send_apdu(b"\xc0", 0.0)
    reply = from_server(FrameKind.I, ns=0, nr=1, info=b"\xe6\xe7\x00\xc4")
    link.receive_data(reply + reply, 0.1)
    assert events(link) == [ApduReceived(b"\xc4")]
    assert link.frames_ignored == 1


def test_frames_for_someone_else_are_ignored() -> None:
    link = connected_link()
    link.send_apdu(b"\xc0", 0.0)
    other = encode_frame(
        FrameKind.I, HdlcAddress.client(16), SERVER, ns=0, nr=1, info=b"\xe6\xe7\x00\x01"
    )
    link.receive_data(other, 0.1)
    assert events(link) == []
    assert link.frames_ignored == 1


def test_dm_to_snrm_is_a_refusal() -> None:
    link = HdlcClientLink(CLIENT, SERVER)
    link.connect(0.0)
    link.receive_data(from_server(FrameKind.DM), 0.1)
    with pytest.raises(LinkError) as err:
        link.next_event()
    assert err.value.code == "link.refused"


def test_frmr_is_reported() -> None:
    link = connected_link()
    link.send_apdu(b"\xc0", 0.0)
    link.receive_data(from_server(FrameKind.FRMR, info=b"\x10\x00\x00"), 0.1)
    with pytest.raises(LinkError, match="FRMR 100000"):
        link.next_event()


def test_disc_from_the_meter_is_acknowledged() -> None:
    link = connected_link()
    link.receive_data(from_server(FrameKind.DISC), 1.0)
    assert events(link) == [Disconnected(by_peer=True, reason="DISC from the meter")]
    (ua,) = sent_frames(link)
    assert ua.kind is FrameKind.UA
    assert link.state is LinkState.DISCONNECTED


def test_disconnect_waits_for_ua() -> None:
    link = connected_link()
    link.disconnect(1.0)
    (disc,) = sent_frames(link)
    assert disc.kind is FrameKind.DISC
    link.receive_data(from_server(FrameKind.UA), 1.1)
    assert events(link) == [Disconnected(by_peer=False, reason="UA to DISC")]


def test_rnr_polls_again_later() -> None:
    link = connected_link(timeout=4.0)
    link.send_apdu(b"\xc0", 0.0)
    link.data_to_send()
    link.receive_data(from_server(FrameKind.RNR, nr=1), 0.2)
    assert events(link) == []
    assert link.next_deadline() == pytest.approx(0.7)
    link.handle_timer(0.7)
    (poll,) = sent_frames(link)
    assert poll.kind is FrameKind.RR and poll.poll_final


def test_ui_frames_are_pushes() -> None:
    link = connected_link()
    link.receive_data(from_server(FrameKind.UI, info=b"\xe6\xe7\x00\x0f\x00"), 0.1)
    assert events(link) == [UnsolicitedData(b"\x0f\x00")]


def test_send_apdu_needs_a_link() -> None:
    link = HdlcClientLink(CLIENT, SERVER)
    with pytest.raises(LocalProtocolError):
        link.send_apdu(b"\xc0", 0.0)


def test_reply_after_garbage_is_found() -> None:
    link = connected_link()
    link.send_apdu(b"\xc0", 0.0)
    reply = from_server(FrameKind.I, ns=0, nr=1, info=b"\xe6\xe7\x00\x7e\x7d")
    link.receive_data(b"\x7e\xa0\x7e\x00\x7d garbage" + reply[:5], 0.1)
    assert events(link) == []
    link.receive_data(reply[5:], 0.2)
    assert events(link) == [ApduReceived(b"\x7e\x7d")]
    assert link.stats()["bytes_discarded"] > 0


def test_wrapper_link() -> None:
    link = WrapperClientLink(1, 1, timeout=1.0, retries=1)
    link.connect(0.0)
    assert events(link) == [Connected(LinkParameters())]
    link.send_apdu(b"\xc0\x01", 0.0)
    assert link.data_to_send() == WrapperFrame(1, 1, b"\xc0\x01").encode()
    link.handle_timer(1.0)
    assert link.data_to_send() == WrapperFrame(1, 1, b"\xc0\x01").encode()
    link.receive_data(WrapperFrame(1, 1, b"\xc4\x01").encode(), 1.5)
    assert events(link) == [ApduReceived(b"\xc4\x01")]
    link.send_apdu(b"\xc0\x02", 2.0)
    link.handle_timer(3.0)
    with pytest.raises(ResponseTimeout):
        link.handle_timer(4.0)
