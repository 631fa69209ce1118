"""The ``--faults`` spec and the fault layer's plans, sans-IO."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.simulator.faults import (
    Faults,
    FaultSpecError,
    FaultState,
    MeterRange,
    Reset,
    Send,
    Sleep,
    parse_fault_spec,
)
from codec.errors import FrameError
from codec.hdlc import FrameKind, HdlcAddress, decode_frame, encode_frame
from codec.wrapper import WrapperFrame, WrapperScanner

FRAME = encode_frame(
    FrameKind.I,
    HdlcAddress.client(1),
    HdlcAddress.server(0, 1),
    ns=1,
    nr=2,
    info=bytes.fromhex("e6e700c401c1000600000001"),
)


def test_spec_groups_and_defaults() -> None:
    spec = parse_fault_spec("garbage, residual;3-5:fcs=0.2,delay=1.5;4:silence=5@0.1,refuse")
    assert spec.for_meter(0) == Faults(garbage=1.0, residual=True)
    assert spec.for_meter(3) == Faults(garbage=1.0, residual=True, fcs=0.2, delay=1.5)
    assert spec.for_meter(4) == Faults(
        garbage=1.0, residual=True, fcs=0.2, delay=1.5, silence=(5.0, 0.1), refuse=1.0
    )
    assert spec.groups[1].meters == MeterRange(3, 5)
    assert parse_fault_spec("drip").for_meter(0).drip == 0.01
    assert parse_fault_spec("silence=2").for_meter(0).silence == (2.0, None)
    assert parse_fault_spec("").groups == ()
    assert parse_fault_spec(" ; all:flags ; ").for_meter(9).flags


def test_later_groups_override_earlier_ones() -> None:
    spec = parse_fault_spec("all:fcs=0.5;2:fcs=0.1")
    assert spec.for_meter(1).fcs == 0.5
    assert spec.for_meter(2).fcs == 0.1


def test_spec_text_round_trips() -> None:
    text = "all:garbage=0.3,chunks=1,flags;2-4:silence=3@0.5,reset=0.01;7:drip=0.02,delay=2"
    spec = parse_fault_spec(text)
    again = parse_fault_spec(str(spec))
    assert [again.for_meter(i) for i in range(10)] == [spec.for_meter(i) for i in range(10)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("garbge", "unknown fault 'garbge'"),
        ("fcs=1.5", "between 0 and 1"),
        ("fcs=-1", ">= 0"),
        ("fcs=often", "needs a number"),
        ("x:fcs", "meters 'x' must be all, N or N-M"),
        ("5-3:fcs", "empty or negative"),
        ("12:fcs", "meter 12 does not exist (meters are 0..9)"),
        ("delay", "'delay' needs a value"),
        ("flags=1", "'flags' takes no value"),
        ("fcs,,garbage", "stray comma"),
        ("3:", "no fault named"),
        ("silence=2@3", "between 0 and 1"),
    ],
)
def test_bad_specs_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(FaultSpecError) as info:
        parse_fault_spec(f"all:garbage;{text}", meter_count=10)
    assert message in str(info.value)
    assert f"fault spec part {text!r}" in str(info.value)


def test_meter_range_membership() -> None:
    assert 3 in MeterRange(3, 5) and 6 not in MeterRange(3, 5)
    assert 1000 in MeterRange()
    assert list(MeterRange(8).indices(10)) == [8, 9]


def _state(faults: Faults, seed: int = 1) -> FaultState:
    state = FaultState(random.Random(seed))
    state.apply(faults, now=0.0)
    return state


def _sent(ops: list[Send | Sleep | Reset]) -> bytes:
    return b"".join(op.data for op in ops if isinstance(op, Send))


def test_no_faults_sends_the_frame_as_is() -> None:
    assert _state(Faults()).plan(FRAME, 0.0, hdlc=True) == [Send(FRAME)]


def test_garbage_comes_before_the_frame_and_is_rich_in_flags() -> None:
    state = _state(Faults(garbage=1.0))
    garbage = b""
    for _ in range(20):
        ops = state.plan(FRAME, 0.0, hdlc=True)
        assert ops[-1] == Send(FRAME)
        garbage += _sent(ops[:-1])
    assert garbage.count(b"\x7e") > len(garbage) / 10
    assert b"\x7d" in garbage
    assert state.injected == {"garbage": 20}


def test_fcs_fault_breaks_only_the_check() -> None:
    (send,) = _state(Faults(fcs=1.0)).plan(FRAME, 0.0, hdlc=True)
    assert isinstance(send, Send)
    assert len(send.data) == len(FRAME)
    with pytest.raises(FrameError) as info:
        decode_frame(send.data)
    assert info.value.code == "hdlc.bad_fcs"
    pdu = WrapperFrame(1, 1, b"\xc4\x01\xc1\x00\x06\x00\x00\x00\x01").encode()
    (send,) = _state(Faults(fcs=1.0)).plan(pdu, 0.0, hdlc=False)
    assert isinstance(send, Send)
    scanner = WrapperScanner()
    scanner.receive_data(send.data)
    assert not isinstance(scanner.next_frame(), WrapperFrame)


def test_reset_cuts_inside_the_frame() -> None:
    ops = _state(Faults(reset=1.0)).plan(FRAME, 0.0, hdlc=True)
    assert ops[-1] == Reset()
    prefix = _sent(ops)
    assert 0 < len(prefix) < len(FRAME)
    assert FRAME.startswith(prefix)


@given(st.integers(0, 1000))
def test_chunks_and_drip_deliver_the_same_bytes(seed: int) -> None:
    chunked = _state(Faults(chunks=1.0), seed).plan(FRAME, 0.0, hdlc=True)
    assert _sent(chunked) == FRAME
    assert sum(isinstance(op, Send) for op in chunked) >= 2
    dripped = _state(Faults(drip=0.05), seed).plan(FRAME, 0.0, hdlc=True)
    assert _sent(dripped) == FRAME
    assert [op for op in dripped if isinstance(op, Sleep)] == [Sleep(0.05)] * (len(FRAME) - 1)


def test_delay_sleeps_first() -> None:
    ops = _state(Faults(delay=1.5)).plan(FRAME, 0.0, hdlc=True)
    assert ops == [Sleep(1.5), Send(FRAME)]


def test_silence_once_from_when_it_is_set() -> None:
    state = FaultState(random.Random(0))
    state.apply(Faults(silence=(10.0, None)), now=100.0)
    assert state.silenced(105.0)
    assert state.plan(FRAME, 105.0, hdlc=True) == []
    assert not state.silenced(110.5)
    assert state.plan(FRAME, 110.5, hdlc=True) == [Send(FRAME)]


def test_silence_with_probability_starts_at_a_reply() -> None:
    state = _state(Faults(silence=(3.0, 1.0)))
    assert not state.silenced(50.0)
    assert state.plan(FRAME, 50.0, hdlc=True) == []
    assert state.silenced(52.9)
    assert not state.silenced(53.1)


def test_residual_is_a_truncated_frame() -> None:
    state = _state(Faults(residual=True))
    (send,) = state.on_connect(FRAME)
    assert isinstance(send, Send)
    assert FRAME.startswith(send.data)
    assert len(FRAME) // 3 <= len(send.data) < len(FRAME) - 1
    assert _state(Faults()).on_connect(FRAME) == []


def test_faults_are_reproducible_from_the_seed() -> None:
    faults = Faults(garbage=0.5, chunks=0.5, fcs=0.3, reset=0.1)
    a, b, c = _state(faults, 7), _state(faults, 7), _state(faults, 8)
    plans_a = [a.plan(FRAME, 0.0, hdlc=True) for _ in range(50)]
    plans_b = [b.plan(FRAME, 0.0, hdlc=True) for _ in range(50)]
    plans_c = [c.plan(FRAME, 0.0, hdlc=True) for _ in range(50)]
    assert plans_a == plans_b
    assert plans_a != plans_c
    assert a.injected == b.injected


def test_probability_is_respected() -> None:
    state = _state(Faults(fcs=0.25), seed=3)
    corrupted = sum(state.plan(FRAME, 0.0, hdlc=True) != [Send(FRAME)] for _ in range(2000))
    assert 400 < corrupted < 600
    assert state.injected["fcs"] == corrupted
