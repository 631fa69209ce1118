"""FCS-16 and transparency (byte stuffing) of both hot-path implementations."""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec import _hdlc_py
from codec.errors import FrameError
from tests.codec.conftest import IMPLEMENTATIONS


def test_fcs16_known_answer(hdlc_impl: ModuleType) -> None:
    # CRC-16/X-25 check value, the one every HDLC implementation must reproduce.
    assert hdlc_impl.fcs16(b"123456789") == 0x906E


def test_fcs16_of_nothing(hdlc_impl: ModuleType) -> None:
    assert hdlc_impl.fcs16(b"") == 0x0000


def test_fcs16_accepts_any_buffer(hdlc_impl: ModuleType) -> None:
    data = b"\x7e\xa0\x08\x02\x23\x21\x93"
    expected = hdlc_impl.fcs16(data)
    assert hdlc_impl.fcs16(bytearray(data)) == expected
    assert hdlc_impl.fcs16(memoryview(data)) == expected


def test_fcs16_matches_a_real_frame(hdlc_impl: ModuleType, vectors: dict) -> None:
    # On the wire the FCS is sent least significant byte first, just before the closing flag.
    for frame in vectors["frames"]:
        raw = bytes.fromhex(frame["hex"])
        body = raw[1:-3]
        assert hdlc_impl.fcs16(body) == int.from_bytes(raw[-3:-1], "little"), frame["name"]


@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_fcs16_twin_equals_extension(data: bytes, seed: int) -> None:
    results = {name: mod.fcs16(data, seed) for name, mod in IMPLEMENTATIONS.items()}
    assert len(set(results.values())) == 1, results


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_fcs16_is_incremental(a: bytes, b: bytes) -> None:
    # fcs16(a + b) continues from the running (uncomplemented) CRC of a.
    for mod in IMPLEMENTATIONS.values():
        running = mod.fcs16(a) ^ 0xFFFF
        assert mod.fcs16(b, running) == mod.fcs16(a + b)


@given(st.binary(max_size=500))
def test_stuff_round_trip(data: bytes) -> None:
    for mod in IMPLEMENTATIONS.values():
        stuffed = mod.stuff(data)
        assert 0x7E not in stuffed
        assert mod.unstuff(stuffed) == data
        assert stuffed == _hdlc_py.stuff(data)


def test_stuff_known_answer(hdlc_impl: ModuleType) -> None:
    assert hdlc_impl.stuff(b"\x01\x7e\x7d\x02") == b"\x01\x7d\x5e\x7d\x5d\x02"


@pytest.mark.parametrize("bad", [b"\x01\x7d", b"\x7d\x7e", b"ab\x7d"])
def test_unstuff_rejects_bad_escape(hdlc_impl: ModuleType, bad: bytes) -> None:
    with pytest.raises(FrameError) as err:
        hdlc_impl.unstuff(bad)
    assert err.value.code == "hdlc.bad_escape"
    assert err.value.offset == bad.index(0x7D)
