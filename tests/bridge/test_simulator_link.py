"""The meter side of HDLC and the wrapper, driven sans-IO (no sockets, no event loop)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.simulator.cosem_server import CosemServer
from bridge.simulator.faults import Faults
from bridge.simulator.meter import Meter, MeterSettings
from bridge.simulator.models import get_model
from bridge.simulator.server_link import (
    LLC_REQUEST,
    LLC_RESPONSE,
    HdlcServerLink,
    WrapperServerLink,
)
from codec.acse import AARE, AARQ, AssociationResult, AuthenticationMechanism, InitiateRequest
from codec.apdu import (
    AttributeDescriptor,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithList,
    InvokeId,
    decode_apdu,
    encode_apdu,
)
from codec.axdr import Data
from codec.hdlc import Frame, FrameKind, HdlcAddress, decode_frame, encode_frame
from codec.hdlc_params import LinkParameters
from codec.obis import Obis
from codec.wrapper import WrapperFrame, WrapperScanner

WALL = 1_790_000_000.0
CLIENT = HdlcAddress.client(1)
SERVER = HdlcAddress.server(0, 1)
AARQ_LLS = encode_apdu(
    AARQ(
        mechanism=AuthenticationMechanism.LOW,
        password=b"00000000",
        initiate=InitiateRequest(client_max_receive_pdu_size=0xFFFF),
    )
)
OBJECT_LIST = GetRequestNormal(InvokeId(1), AttributeDescriptor(15, Obis(0, 0, 40, 0, 0), 2))


class Station:
    """A link under test and a client's bookkeeping of sequence numbers."""

    def __init__(self, settings: MeterSettings | None = None) -> None:
        self.meter = Meter.create(0, 0, settings or MeterSettings(), get_model("single-phase"))
        self.link = HdlcServerLink(self.meter, CosemServer(self.meter))
        self.vs = 0
        self.vr = 0

    def feed(self, raw: bytes) -> list[Frame]:
        return [decode_frame(b) for b in self.link.receive_data(raw, WALL)]

    def send(
        self, kind: FrameKind, *, dst: HdlcAddress = SERVER, src: HdlcAddress = CLIENT, **kw: Any
    ) -> list[Frame]:
        return self.feed(encode_frame(kind, dst, src, **kw))

    def one(self, kind: FrameKind, **kw: Any) -> Frame:
        frames = self.send(kind, **kw)
        assert len(frames) == 1, frames
        return frames[0]

    def connect(self, params: LinkParameters | None = None) -> LinkParameters:
        ua = self.one(FrameKind.SNRM, info=b"" if params is None else params.encode())
        assert ua.kind is FrameKind.UA
        return LinkParameters.decode(ua.info)

    def request(self, apdu: bytes) -> Frame:
        """Send one APDU in one I-frame; return the (first) answer frame."""
        frame = self.one(FrameKind.I, ns=self.vs, nr=self.vr, info=LLC_REQUEST + apdu)
        self.vs = (self.vs + 1) & 7
        if frame.kind is FrameKind.I:
            self.vr = (self.vr + 1) & 7
        return frame

    def associate(self) -> None:
        frame = self.request(AARQ_LLS)
        aare = decode_apdu(frame.info[3:])
        assert isinstance(aare, AARE)
        assert aare.result == AssociationResult.ACCEPTED


def test_snrm_negotiates_the_meters_limits() -> None:
    station = Station()
    assert station.connect() == LinkParameters(128, 128, 1, 1)
    big = Station(MeterSettings(hdlc=LinkParameters(254, 254, 1, 1)))
    assert big.connect(LinkParameters(512, 512, 7, 7)) == LinkParameters(254, 254, 1, 1)
    # The UA is from the meter's point of view: its transmit limit is the client's receive one.
    assert big.connect(LinkParameters(max_info_tx=200, max_info_rx=64)) == LinkParameters(
        64, 200, 1, 1
    )


def test_disconnected_mode_answers_dm() -> None:
    station = Station()
    assert station.one(FrameKind.I, ns=0, nr=0, info=LLC_REQUEST + AARQ_LLS).kind is FrameKind.DM
    assert station.one(FrameKind.DISC).kind is FrameKind.DM
    station.connect()
    assert station.one(FrameKind.DISC).kind is FrameKind.UA
    assert station.one(FrameKind.RR, nr=0).kind is FrameKind.DM


def test_frames_for_another_address_are_ignored() -> None:
    station = Station()
    assert station.send(FrameKind.SNRM, dst=HdlcAddress.server(0, 2)) == []
    assert station.send(FrameKind.SNRM, dst=HdlcAddress.server(1, 1, 2)) == []
    assert station.meter.counters.ignored_frames == 2
    # The same meter addressed with 2 or 4 bytes answers from the address the client used.
    for address in (HdlcAddress.server(0, 1, 2), HdlcAddress.server(0, 1, 4)):
        ua = station.one(FrameKind.SNRM, dst=address)
        assert (ua.src, ua.src_size) == (address.value, address.size)


def test_request_and_answer_carry_sequence_numbers() -> None:
    station = Station()
    station.connect()
    station.associate()
    frame = station.request(encode_apdu(OBJECT_LIST))
    assert (frame.ns, frame.nr) == (1, 2)
    rr = station.one(FrameKind.RR, nr=station.vr)
    assert rr.kind is FrameKind.I  # the next segment of the long object list


def test_out_of_sequence_i_frame_is_discarded_with_rr() -> None:
    station = Station()
    station.connect()
    rr = station.one(FrameKind.I, ns=3, nr=0, info=LLC_REQUEST + AARQ_LLS)
    assert (rr.kind, rr.nr) == (FrameKind.RR, 0)
    assert station.meter.counters.requests == 0
    station.associate()  # N(S) 0 is still expected


def test_bad_nr_gets_frmr_until_snrm() -> None:
    station = Station()
    station.connect()
    frmr = station.one(FrameKind.I, ns=0, nr=5, info=LLC_REQUEST + AARQ_LLS)
    assert frmr.kind is FrameKind.FRMR
    assert frmr.info[2] & 0x08  # Z: invalid N(R)
    assert station.one(FrameKind.RR, nr=0).kind is FrameKind.FRMR
    station.connect()
    station.associate()


def test_unknown_control_and_too_long_info_get_frmr() -> None:
    station = Station()
    station.connect()
    # SREJ (selective reject) is not supported by this station.
    frmr = station.one(FrameKind.SREJ, nr=0)
    assert frmr.kind is FrameKind.FRMR
    assert frmr.info[2] & 0x01  # W
    station.connect()
    frmr = station.one(FrameKind.I, ns=0, nr=0, info=LLC_REQUEST + bytes(200))
    assert frmr.kind is FrameKind.FRMR
    assert frmr.info[2] & 0x04  # Y: information field too long


def test_lost_answer_is_sent_again() -> None:
    station = Station()
    station.connect()
    first = station.link.receive_data(
        encode_frame(FrameKind.I, SERVER, CLIENT, ns=0, nr=0, info=LLC_REQUEST + AARQ_LLS), WALL
    )
    again = station.link.receive_data(
        encode_frame(FrameKind.I, SERVER, CLIENT, ns=0, nr=0, info=LLC_REQUEST + AARQ_LLS), WALL
    )
    assert again == first
    assert station.meter.counters.requests == 1
    # An RR that does not acknowledge the answer also gets it again.
    assert (
        station.link.receive_data(encode_frame(FrameKind.RR, SERVER, CLIENT, nr=0), WALL) == first
    )
    # An RR that does is a poll: RR back.
    rr = station.one(FrameKind.RR, nr=1)
    assert (rr.kind, rr.nr) == (FrameKind.RR, 1)


def test_long_answer_is_segmented_and_paced_by_rr() -> None:
    station = Station()
    station.connect()
    station.associate()
    frames = [station.request(encode_apdu(OBJECT_LIST))]
    while frames[-1].segmented:
        frames.append(station.one(FrameKind.RR, nr=station.vr))
        station.vr = (station.vr + 1) & 7
    assert len(frames) > 3
    assert all(f.kind is FrameKind.I and len(f.info) <= 128 for f in frames)
    assert [f.ns for f in frames] == [(1 + i) & 7 for i in range(len(frames))]
    payload = b"".join(f.info for f in frames)
    assert payload.startswith(LLC_RESPONSE)
    response = decode_apdu(payload[3:])
    assert isinstance(response, GetResponseNormal)
    assert isinstance(response.result, Data)


def test_segmented_request_is_acknowledged_and_reassembled() -> None:
    station = Station()
    station.connect()
    station.associate()
    request = GetRequestWithList(
        InvokeId(2),
        tuple((AttributeDescriptor(3, Obis(1, 1, 32, 7, 0), 2), None) for _ in range(12)),
    )
    info = LLC_REQUEST + encode_apdu(request)
    pieces = [info[i : i + 60] for i in range(0, len(info), 60)]
    assert len(pieces) >= 2
    for n, piece in enumerate(pieces[:-1]):
        rr = station.one(FrameKind.I, ns=station.vs, nr=station.vr, info=piece, segmented=True)
        station.vs = (station.vs + 1) & 7
        assert (rr.kind, rr.nr) == (FrameKind.RR, station.vs), n
    answer = station.one(FrameKind.I, ns=station.vs, nr=station.vr, info=pieces[-1])
    response = decode_apdu(answer.info[3:])
    assert isinstance(response, GetResponseWithList)
    assert len(response.results) == 12


def test_frame_without_llc_is_not_processed() -> None:
    station = Station()
    station.connect()
    rr = station.one(FrameKind.I, ns=0, nr=0, info=AARQ_LLS)
    assert rr.kind is FrameKind.RR
    assert station.meter.counters.requests == 0
    assert station.meter.counters.link_errors == 1


def test_flags_fault_adds_the_7e_address_alias() -> None:
    station = Station()
    alias = HdlcAddress.server(63, 1, 2)
    assert alias.encode()[0] == 0x7E
    assert station.send(FrameKind.SNRM, dst=alias) == []
    station.meter.faults.apply(Faults(flags=True), 0.0)
    raw = station.link.receive_data(encode_frame(FrameKind.SNRM, alias, CLIENT), WALL)
    assert len(raw) == 1
    assert b"\x7e" in raw[0][1:-1]
    assert decode_frame(raw[0]).kind is FrameKind.UA


def test_ui_frames_are_ignored() -> None:
    station = Station()
    station.connect()
    assert station.send(FrameKind.UI, info=b"\x01\x02") == []


# -- wrapper ------------------------------------------------------------------------------------


def _wrapper_exchange(link: WrapperServerLink, pdu: WrapperFrame) -> list[WrapperFrame]:
    scanner = WrapperScanner()
    for raw in link.receive_data(pdu.encode(), WALL):
        scanner.receive_data(raw)
    out = []
    while True:
        frame = scanner.next_frame()
        if not isinstance(frame, WrapperFrame):
            return out
        out.append(frame)


@pytest.mark.parametrize("client_wport", [1, 16])
def test_wrapper_answers_from_the_server_wport(client_wport: int) -> None:
    meter = Meter.create(0, 0, MeterSettings(), get_model("single-phase"))
    link = WrapperServerLink(meter, CosemServer(meter))
    (answer,) = _wrapper_exchange(link, WrapperFrame(client_wport, 1, AARQ_LLS))
    assert (answer.src_wport, answer.dst_wport) == (1, client_wport)
    assert isinstance(decode_apdu(answer.payload), AARE)
    assert _wrapper_exchange(link, WrapperFrame(client_wport, 2, AARQ_LLS)) == []
    assert meter.counters.ignored_frames == 1


# -- robustness -----------------------------------------------------------------------------------


@given(st.binary(max_size=400), st.lists(st.integers(1, 50), max_size=10))
def test_hdlc_link_survives_any_bytes(garbage: bytes, cuts: list[int]) -> None:
    station = Station()
    station.connect()
    station.associate()
    stream = garbage + encode_frame(
        FrameKind.I, SERVER, CLIENT, ns=1, nr=1, info=LLC_REQUEST + encode_apdu(OBJECT_LIST)
    )
    replies = []
    position = 0
    for cut in [*cuts, len(stream)]:
        replies += station.link.receive_data(stream[position : position + cut], WALL)
        position += cut
    for reply in replies:
        decode_frame(reply)  # every reply is one valid frame


@given(
    st.sampled_from(
        [b"", b"\x60", b"\x62", b"\xc0\x01", b"\xc0\x02", b"\xc0\x03", b"\xc1\x01", b"\xc3\x01"]
    ),
    st.binary(max_size=200),
)
def test_cosem_server_answers_any_apdu(prefix: bytes, body: bytes) -> None:
    meter = Meter.create(0, 0, MeterSettings(), get_model("single-phase"))
    server = CosemServer(meter)
    server.handle(AARQ_LLS, 1, WALL)
    answer = server.handle(prefix + body, 1, WALL)
    assert answer is not None
    decode_apdu(answer)  # a well-formed APDU, whatever came in
