"""Encoding and decoding single HDLC frames; the real meter frames."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec.errors import EncodeError, FrameError
from codec.hdlc import (
    NEED_DATA,
    FrameKind,
    HdlcAddress,
    decode_frame,
    encode_frame,
    frame_to_bytes,
    frame_to_dict,
    make_control,
)
from tests.codec.conftest import IMPLEMENTATIONS
from tests.codec.hdlc_strategies import encoded, frame_specs


def scan_one(mod: ModuleType, raw: bytes, *, transparency: bool = False) -> Any:
    """The single frame that ``mod``'s scanner finds in ``raw``, which must hold exactly one."""
    scanner = mod.FrameScanner(transparency=transparency)
    scanner.receive_data(raw)
    frame = scanner.next_frame()
    assert frame is not NEED_DATA, scanner.stats()
    assert scanner.next_frame() is NEED_DATA
    assert scanner.bytes_discarded == 0
    return frame


def check_against_spec(frame: Any, spec: dict[str, Any]) -> None:
    assert frame.kind is spec["kind"]
    assert (frame.dst, frame.dst_size) == (spec["dst"].value, spec["dst"].size)
    assert (frame.src, frame.src_size) == (spec["src"].value, spec["src"].size)
    assert frame.info == spec.get("info", b"")
    assert frame.poll_final == spec["poll_final"]
    assert frame.segmented == spec.get("segmented", False)
    if spec["kind"] is FrameKind.I:
        assert (frame.ns, frame.nr) == (spec["ns"], spec["nr"])
    elif spec["kind"] in (FrameKind.RR, FrameKind.RNR, FrameKind.REJ, FrameKind.SREJ):
        assert (frame.ns, frame.nr) == (None, spec["nr"])
    else:
        assert (frame.ns, frame.nr) == (None, None)


@given(frame_specs(), st.booleans())
def test_round_trip_every_kind_and_address_size(spec: dict[str, Any], transparency: bool) -> None:
    raw = encoded(spec, transparency=transparency)
    if not transparency:
        # The format field's length counts everything between the flags.
        assert ((raw[1] & 0x07) << 8 | raw[2]) == len(raw) - 2
    results = []
    for mod in IMPLEMENTATIONS.values():
        frame = scan_one(mod, raw, transparency=transparency)
        check_against_spec(frame, spec)
        assert frame_to_bytes(frame, transparency=transparency) == raw
        assert frame.length == ((raw[1] & 0x07) << 8 | raw[2]) or transparency
        results.append(frame.as_tuple())
    assert all(r == results[0] for r in results)


@given(frame_specs())
def test_decode_frame_round_trip(spec: dict[str, Any]) -> None:
    raw = encoded(spec)
    check_against_spec(decode_frame(raw), spec)


@given(frame_specs(), st.data())
def test_any_flipped_bit_is_detected(spec: dict[str, Any], data: st.DataObject) -> None:
    raw = encoded(spec)
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FrameError):
        decode_frame(bytes(flipped))
    for mod in IMPLEMENTATIONS.values():
        scanner = mod.FrameScanner()
        scanner.receive_data(bytes(flipped))
        scanner.receive_data(b"")
        original = scan_one(mod, raw).as_tuple()
        found = []
        while (frame := scanner.next_frame()) is not NEED_DATA:
            found.append(frame.as_tuple())
        assert original not in found


def test_every_real_meter_frame_decodes(hdlc_impl: ModuleType, vectors: dict) -> None:
    for item in vectors["frames"]:
        raw = bytes.fromhex(item["hex"])
        frame = scan_one(hdlc_impl, raw)
        assert frame_to_bytes(frame) == raw, item["name"]
        assert frame.length == len(raw) - 2, item["name"]


def test_real_frames_have_the_expected_fields(hdlc_impl: ModuleType, vectors: dict) -> None:
    frames = {i["name"]: scan_one(hdlc_impl, bytes.fromhex(i["hex"])) for i in vectors["frames"]}
    snrm = frames["snrm-client-to-meter"]
    assert snrm.kind is FrameKind.SNRM and snrm.poll_final and snrm.info == b""
    assert HdlcAddress(snrm.dst, snrm.dst_size) == HdlcAddress.server(1, 17, size=2)
    assert HdlcAddress(snrm.src, snrm.src_size) == HdlcAddress.client(16)
    ua = frames["ua-with-negotiation"]
    assert ua.kind is FrameKind.UA and ua.info.startswith(b"\x81\x80")
    aare = frames["aare-iframe"]
    assert (aare.kind, aare.ns, aare.nr) == (FrameKind.I, 0, 1)
    assert aare.info[:3] == b"\xe6\xe7\x00" and aare.info[3] == 0x61
    # 0x7E and 0x7D inside the information field are data: no unescaping, no early end.
    assert 0x7E in frames["kaifa-push-7e-in-data"].info
    assert 0x7D in frames["aidon-push-7d-in-data"].info
    lg = frames["landis-gyr-e450-ui-gbt"]
    assert lg.kind is FrameKind.UI and lg.length == 0x7D and lg.fcs == 0x4EB3
    get = frames["get-request-normal"]
    assert get.dst_size == 4 and get.info.startswith(b"\xe6\xe6\x00\xc0\x01")


def test_real_frames_survive_a_naive_splitter(hdlc_impl: ModuleType, vectors: dict) -> None:
    # The old system cut replies at the next 0x7E. Those frames must come out whole.
    stream = b"".join(bytes.fromhex(i["hex"]) for i in vectors["frames"])
    assert stream.count(b"\x7e") > 2 * len(vectors["frames"])
    scanner = hdlc_impl.FrameScanner()
    scanner.receive_data(stream)
    found = []
    while (frame := scanner.next_frame()) is not NEED_DATA:
        found.append(frame_to_bytes(frame))
    assert found == [bytes.fromhex(i["hex"]) for i in vectors["frames"]]
    assert scanner.bytes_discarded == 0 and scanner.resyncs == 0


def _info_putting_0x7e_at(position: str) -> tuple[bytes, HdlcAddress]:
    """A frame whose length byte, address, HCS or FCS holds 0x7E."""
    server = (
        HdlcAddress.server(63, 1, size=2) if position == "address" else HdlcAddress.server(0, 1)
    )
    if position == "length":
        return bytes(126 - 9), server
    if position == "address":
        return b"\x01", server
    # The HCS covers the header only, so vary the length as well as the content.
    for n in range(1, 3000):
        info = bytes(range(n % 7, n % 7 + 1 + n // 7))
        raw = encode_frame(FrameKind.I, server, HdlcAddress.client(1), info=info)
        if (position == "hcs" and 0x7E in raw[6:8]) or (position == "fcs" and 0x7E in raw[-3:-1]):
            return info, server
    raise AssertionError(position)


@pytest.mark.parametrize("position", ["length", "address", "hcs", "fcs"])
def test_0x7e_inside_the_header_and_check_sequences(hdlc_impl: ModuleType, position: str) -> None:
    info, server = _info_putting_0x7e_at(position)
    raw = encode_frame(FrameKind.I, server, HdlcAddress.client(1), info=info)
    assert raw[1:-1].count(0x7E) >= 1
    frame = scan_one(hdlc_impl, raw)
    assert frame.info == info and frame_to_bytes(frame) == raw


def test_field_meter_address_is_one_byte_0x03(vectors: dict) -> None:
    meter = vectors["meter_in_the_field"]
    address = HdlcAddress.server(meter["server_logical"], meter["server_physical"])
    assert address.encode() == bytes.fromhex(meter["server_address_bytes"].split("0x")[1][:2])
    assert address.size == 1
    assert HdlcAddress.client(meter["client_sap"]).encode() == b"\x03"


@pytest.mark.parametrize(
    ("logical", "physical", "size", "wire"),
    [
        (0, 1, 1, "03"),
        (1, 17, 2, "0223"),
        (1, 0x1234, 4, "00024869"),
        (0x3FFF, 0x3FFF, 4, "fefefeff"),
    ],
)
def test_server_address_encoding(logical: int, physical: int, size: int, wire: str) -> None:
    address = HdlcAddress.server(logical, physical, size)
    assert address.encode().hex() == wire
    assert (address.logical, address.physical) == (logical, physical)


def test_server_address_size_is_chosen_when_omitted() -> None:
    assert HdlcAddress.server(0, 5).size == 1
    assert HdlcAddress.server(1, 5).size == 2
    assert HdlcAddress.server(1, 200).size == 4


@pytest.mark.parametrize(
    ("value", "size"), [(0x80, 1), (0x4000, 2), (0x10000000, 4), (1, 3), (-1, 1)]
)
def test_bad_addresses_are_refused(value: int, size: int) -> None:
    with pytest.raises(EncodeError):
        HdlcAddress(value, size)


def test_one_byte_server_address_has_no_logical_part() -> None:
    with pytest.raises(EncodeError, match="no logical part"):
        HdlcAddress.server(1, 1, size=1)


@pytest.mark.parametrize(
    ("kind", "kwargs", "control"),
    [
        (FrameKind.SNRM, {}, 0x93),
        (FrameKind.UA, {}, 0x73),
        (FrameKind.DISC, {}, 0x53),
        (FrameKind.DM, {}, 0x1F),
        (FrameKind.FRMR, {}, 0x97),
        (FrameKind.UI, {"poll_final": False}, 0x03),
        (FrameKind.RR, {"nr": 1}, 0x31),
        (FrameKind.RNR, {"nr": 7}, 0xF5),
        (FrameKind.I, {"ns": 0, "nr": 0}, 0x10),
        (FrameKind.I, {"ns": 1, "nr": 1}, 0x32),
        (FrameKind.I, {"ns": 7, "nr": 3, "poll_final": False}, 0x6E),
    ],
)
def test_control_field(kind: FrameKind, kwargs: dict[str, Any], control: int) -> None:
    assert make_control(kind, **kwargs) == control


def test_information_field_only_where_allowed() -> None:
    with pytest.raises(EncodeError, match="RR frame carries no information"):
        encode_frame(FrameKind.RR, HdlcAddress.server(0, 1), HdlcAddress.client(1), info=b"x")


def test_frames_longer_than_the_format_field_are_refused() -> None:
    with pytest.raises(EncodeError, match="exceeds"):
        encode_frame(FrameKind.I, HdlcAddress.server(0, 1), HdlcAddress.client(1), info=bytes(2040))
    # The largest that fits: 2047 bytes between the flags.
    raw = encode_frame(
        FrameKind.I, HdlcAddress.server(0, 1), HdlcAddress.client(1), info=bytes(2047 - 9)
    )
    assert len(raw) == 2049
    assert decode_frame(raw).info == bytes(2038)


def test_sequence_numbers_are_range_checked() -> None:
    with pytest.raises(EncodeError, match=r"0\.\.7"):
        make_control(FrameKind.I, ns=8)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("7ea0", "hdlc.truncated"),
        ("00a00802232193bd647e", "hdlc.no_flag"),
        ("7ea00802232193bd6400", "hdlc.no_flag"),
        ("7eb00802232193bd647e", "hdlc.bad_format"),
        ("7ea00902232193bd647e", "hdlc.bad_length"),
        ("7ea00802222193bd647e", "hdlc.bad_address"),
        ("7ea00802232193bd657e", "hdlc.bad_fcs"),
        (
            "7EA0382102233035E7E6E7006129A109060760857405080101A203020100A305A103020100BE10040E08"
            "00065F1F0400001E1D04C80007B86A7E",
            "hdlc.bad_hcs",
        ),
    ],
)
def test_decode_frame_says_what_is_wrong(raw: str, code: str) -> None:
    with pytest.raises(FrameError) as err:
        decode_frame(bytes.fromhex(raw))
    assert err.value.code == code
    assert str(err.value)


def test_frame_to_dict_is_json_safe(vectors: dict) -> None:
    import json

    raw = bytes.fromhex(next(i for i in vectors["frames"] if i["name"] == "aare-iframe")["hex"])
    described = frame_to_dict(decode_frame(raw))
    assert json.loads(json.dumps(described)) == described
    assert described["kind"] == "I" and described["ns"] == 0 and described["nr"] == 1
    assert described["hcs_ok"] is True and described["fcs_ok"] is True
