"""The codec's bounds on what a meter controls, frame by frame, with time passed in:
reassembly limited by the negotiated max PDU size, block transfers by a byte budget, and one
overall deadline per request that no activity of the meter extends."""

from __future__ import annotations

import pytest

from codec.apdu import (
    AttributeDescriptor,
    GetRequestNormal,
    GetResponseWithDatablock,
    InvokeId,
    encode_apdu,
)
from codec.association import (
    PDU_PADDING_ALLOWANCE,
    AssociationSettings,
    AssociationState,
    ClientAssociation,
)
from codec.errors import RemoteProtocolError, ResponseTimeout
from codec.hdlc import NEED_DATA, FrameKind
from codec.link import ApduReceived, LinkState, WrapperClientLink
from codec.obis import Obis
from codec.wrapper import WrapperFrame
from tests.codec.test_link import connected_link, events, from_server

GET = GetRequestNormal(InvokeId(1), AttributeDescriptor(3, Obis(1, 1, 32, 7, 0, 255), 2))


def test_segments_past_max_apdu_are_a_protocol_error() -> None:
    link = connected_link()
    link.max_apdu = 250
    link.send_apdu(b"\xc0\x01", 0.0)
    link.data_to_send()
    sent = []

    def endless_segments() -> None:
        while True:  # a meter that never clears the segmentation bit
            ns = len(sent) % 8
            link.receive_data(
                from_server(FrameKind.I, ns=ns, nr=1, info=b"\x55" * 100, segmented=True), 0.1
            )
            sent.append(ns)
            events(link)

    with pytest.raises(RemoteProtocolError) as caught:
        endless_segments()
    assert caught.value.code == "link.reply_too_long"
    assert "300 bytes in 3 segments, more than the 250 accepted" in str(caught.value)
    assert len(sent) == 3 and link.state is LinkState.DISCONNECTED


def test_a_reply_of_exactly_max_apdu_is_taken() -> None:
    link = connected_link()
    link.max_apdu = 200
    link.send_apdu(b"\xc0\x01", 0.0)
    link.receive_data(
        from_server(FrameKind.I, ns=0, nr=1, info=b"\xe6\xe7\x00" + b"a" * 100, segmented=True),
        0.1,
    )
    assert events(link) == []
    link.receive_data(from_server(FrameKind.I, ns=1, nr=1, info=b"b" * 100), 0.2)
    assert events(link) == [ApduReceived(b"a" * 100 + b"b" * 100)]


def test_wrapper_reply_past_max_apdu_is_a_protocol_error() -> None:
    link = WrapperClientLink(1, 1, max_apdu=1024)
    link.connect(0.0)
    events(link)
    link.send_apdu(b"\xc0\x01", 0.0)
    link.receive_data(WrapperFrame(1, 1, b"\xc4" + b"\x00" * 1024).encode(), 0.1)
    with pytest.raises(RemoteProtocolError) as caught:
        events(link)
    assert caught.value.code == "link.reply_too_long"
    link = WrapperClientLink(1, 1, max_apdu=1024)
    link.connect(0.0)
    events(link)
    link.send_apdu(b"\xc0\x01", 0.0)
    link.receive_data(WrapperFrame(1, 1, b"\xc4" + b"\x00" * 1023).encode(), 0.1)
    assert events(link) == [ApduReceived(b"\xc4" + b"\x00" * 1023)]


def ready_association(**settings: object) -> ClientAssociation:
    """An association in READY over a wrapper link, without a meter (state set directly)."""
    link = WrapperClientLink(1, 1, timeout=5.0, retries=2)
    association = ClientAssociation(link, AssociationSettings(**settings))  # type: ignore[arg-type]
    link.connect(0.0)
    link.next_event()
    association.state = AssociationState.READY
    return association


def test_the_association_gives_the_link_its_max_pdu_size() -> None:
    association = ready_association(max_pdu_size=512)
    # With room for the padding some meters add after a full reply, and no more.
    assert association.link.max_apdu == 512 + PDU_PADDING_ALLOWANCE == 576


def test_replies_that_keep_coming_do_not_extend_the_request_deadline() -> None:
    association = ready_association(request_timeout=7.0)
    invoke = association.request(GET, 100.0)
    assert association.next_deadline() == 105.0  # the link's reply timeout comes first
    blocks: list[float] = []

    def a_block_every_2s() -> None:
        now = 100.0
        while True:
            now += 2.0  # each block well within the reply timeout
            deadline = association.next_deadline()
            assert deadline is not None and deadline <= 107.0
            if deadline <= now:
                association.handle_timer(deadline)
            blocks.append(now)
            reply = GetResponseWithDatablock(invoke, False, len(blocks), b"\x00" * 10)
            association.receive_data(WrapperFrame(1, 1, encode_apdu(reply)).encode(), now)
            assert association.next_event() is NEED_DATA  # the next block is asked for
            assert association.data_to_send()

    with pytest.raises(ResponseTimeout) as caught:
        a_block_every_2s()
    assert caught.value.code == "association.deadline"
    assert "7 s" in str(caught.value)
    assert association.state is AssociationState.CLOSED
    assert blocks == [102.0, 104.0, 106.0]  # the deadline at 107 ends it


def test_block_transfer_past_max_response_size_is_refused() -> None:
    association = ready_association(max_response_size=4096)
    invoke = association.request(GET, 0.0)

    def blocks_without_end() -> None:
        for block in range(1, 100):
            reply = GetResponseWithDatablock(invoke, False, block, b"\x00" * 1000)
            association.receive_data(WrapperFrame(1, 1, encode_apdu(reply)).encode(), 0.1)
            association.next_event()
            association.data_to_send()

    with pytest.raises(RemoteProtocolError) as caught:
        blocks_without_end()
    assert caught.value.code == "association.too_long"
    assert "4096 bytes" in str(caught.value) and "5000 bytes in 5 blocks" in str(caught.value)
    assert association.blocks_received == 4
