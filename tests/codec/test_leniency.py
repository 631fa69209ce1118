"""Leniency where real stacks are sloppy: tolerated, counted, never silent.

The meter is the simulator's sans-IO server side; its replies are padded (as a Gurux server pads
its last GET block) or corrupted in the middle of a GET-with-list on their way to the client.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bridge.simulator.cosem_server import CosemServer
from codec.apdu import (
    DataAccessResult,
    GetResponseNormal,
    GetResponseWithList,
    InvokeId,
    MalformedResult,
    decode_apdu,
    decode_apdu_lenient,
    encode_apdu,
)
from codec.axdr import Data
from codec.client import DlmsClient
from codec.errors import DecodeError
from codec.obis import Obis
from tests.codec.test_association import FIELD_METER, Wire, check_field_meter_values

PAD = bytes(11)


def patch_replies(monkeypatch: pytest.MonkeyPatch, change: Callable[[bytes], bytes]) -> None:
    original = CosemServer.handle

    def handle(self: CosemServer, apdu: bytes, client_sap: int, wall: float) -> bytes | None:
        reply = original(self, apdu, client_sap, wall)
        return change(reply) if reply is not None and reply[:1] == b"\xc4" else reply

    monkeypatch.setattr(CosemServer, "handle", handle)


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
def test_padding_after_each_get_reply_is_ignored_and_counted(
    monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    padded: list[bytes] = []

    def pad(reply: bytes) -> bytes:
        padded.append(reply)
        return reply + PAD

    patch_replies(monkeypatch, pad)
    wire = Wire(transport=transport)
    client = DlmsClient(wire.open())
    check_field_meter_values(wire.run(client.read_registers(FIELD_METER)))
    # A long GET: every block is padded, the last one included.
    profile = wire.run(client.read_profile(Obis.parse("1-0:99.1.0")))
    assert len(profile.rows) > 500
    stats = wire.assoc.stats()
    replies = len(padded)  # every GET reply, each block of the long GET included
    assert replies > wire.assoc.requests
    assert stats["trailing_bytes"] == len(PAD) * replies
    assert len(wire.tolerated) == replies
    assert all(e.what == "trailing_bytes" and e.data == PAD for e in wire.tolerated)


def test_strict_decoding_still_refuses_trailing_bytes() -> None:
    reply = encode_apdu(GetResponseNormal(InvokeId(), Data.unsigned(5)))
    with pytest.raises(DecodeError, match="11 unexpected bytes"):
        decode_apdu(reply + PAD)
    assert decode_apdu_lenient(reply + PAD) == (
        GetResponseNormal(InvokeId(), Data.unsigned(5)),
        PAD,
    )


def test_list_items_before_a_malformed_one_are_kept() -> None:
    good = GetResponseWithList(
        InvokeId(), (Data.long_unsigned(2300), DataAccessResult.OBJECT_UNDEFINED, Data.unsigned(7))
    )
    raw = encode_apdu(good)
    # Cut the list inside its third item: a structure claiming 9 elements.
    broken = raw[:-2] + b"\x02\x09\x11"
    apdu, trailing = decode_apdu_lenient(broken)
    assert trailing == b"\x00\x02\x09\x11"  # from the malformed item on: left unread
    assert isinstance(apdu, GetResponseWithList)
    assert apdu.results[:2] == good.results[:2]
    assert isinstance(apdu.results[2], MalformedResult)
    assert "item 3" in apdu.results[2].message
    assert apdu.malformed == 1
    with pytest.raises(DecodeError):
        decode_apdu(broken)


def test_a_malformed_list_item_is_an_error_of_its_register_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The meter's GET-with-list reply breaks at the third value: the first two are kept, the
    rest are read again one at a time, and the register whose value is bad is an error."""
    original = CosemServer.handle
    bad_obis = FIELD_METER[2].obis

    def handle(self: CosemServer, apdu: bytes, client_sap: int, wall: float) -> bytes | None:
        reply = original(self, apdu, client_sap, wall)
        if reply is None or reply[:2] != b"\xc4\x01" or bad_obis.to_bytes() not in apdu:
            request = decode_apdu(apdu) if apdu[:1] == b"\xc0" else None
            if request is None or not hasattr(request, "items"):
                return reply
            decoded = decode_apdu(reply)
            assert isinstance(decoded, GetResponseWithList)
            keep = encode_apdu(GetResponseWithList(decoded.invoke, decoded.results[:2]))
            return keep[:3] + bytes([len(decoded.results)]) + keep[4:] + b"\x00\x02\x05"
        # The single GET of the bad register: a value cut short.
        return reply[:3] + b"\x00\x02\x05"

    monkeypatch.setattr(CosemServer, "handle", handle)
    wire = Wire()
    client = DlmsClient(wire.open())
    readings = wire.run(client.read_registers(FIELD_METER))
    by_key = {r.spec.name: r for r in readings}
    assert by_key["frequency"].error_code is not None
    assert not by_key["frequency"].ok
    good = [r for r in readings if r.spec.name != "frequency"]
    assert all(r.ok for r in good), good
    assert wire.assoc.stats()["malformed_results"] >= 1


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
def test_an_empty_list_reply_with_bytes_after_it_is_a_refused_list(
    monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    """A GET-with-list reply of no results followed by bytes that are not padding: the bytes
    are tolerated and counted, the list counts as refused (its registers are read one by one),
    and nothing escapes the association (it once raised StopIteration)."""

    def empty(reply: bytes) -> bytes:
        if reply[:2] != b"\xc4\x03":
            return reply
        return reply[:3] + b"\x00\x01\x02"  # no results, then three stray bytes

    patch_replies(monkeypatch, empty)
    wire = Wire(transport=transport)
    client = DlmsClient(wire.open())
    check_field_meter_values(wire.run(client.read_registers(FIELD_METER)))
    assert client.list_refused
    assert any(e.what == "trailing_bytes" and e.data == b"\x01\x02" for e in wire.tolerated)
    assert wire.assoc.stats()["malformed_results"] == 0
