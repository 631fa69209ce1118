"""The streaming frame scanner: chunking, garbage, resynchronisation, counters, limits."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec.errors import FrameError, LocalProtocolError, ProtocolError
from codec.hdlc import NEED_DATA, FrameKind, HdlcAddress, encode_frame
from tests.codec.conftest import IMPLEMENTATIONS
from tests.codec.hdlc_strategies import chunkings, frames, garbage, tricky_bytes

SERVER = HdlcAddress.server(0, 1)
CLIENT = HdlcAddress.client(1)


def scan(
    mod: ModuleType, chunks: list[bytes], *, eof: bool = False, transparency: bool = False
) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
    """Feed ``chunks`` one by one, taking frames after each; returns frames and counters."""
    scanner = mod.FrameScanner(transparency=transparency)
    found = []
    for chunk in chunks:
        scanner.receive_data(chunk)
        while (frame := scanner.next_frame()) is not NEED_DATA:
            found.append(frame.as_tuple())
    if eof:
        scanner.receive_data(b"")
        while (frame := scanner.next_frame()) is not NEED_DATA:
            found.append(frame.as_tuple())
    return found, scanner.stats()


def tuple_of(raw: bytes, *, transparency: bool = False) -> tuple[Any, ...]:
    found, _ = scan(IMPLEMENTATIONS["python"], [raw], transparency=transparency)
    assert len(found) == 1
    return found[0]


def is_subsequence(needles: list[Any], haystack: list[Any]) -> bool:
    it = iter(haystack)
    return all(n in it for n in needles)


@given(st.lists(frames, min_size=1, max_size=6), st.data())
def test_any_chunking_gives_the_same_frames(frame_list: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame_list)
    expected = [tuple_of(f) for f in frame_list]
    for mod in IMPLEMENTATIONS.values():
        whole, _ = scan(mod, [stream])
        single, _ = scan(mod, [stream[i : i + 1] for i in range(len(stream))])
        split, stats = scan(mod, data.draw(chunkings(stream)))
        assert whole == single == split == expected
        assert stats["bytes_discarded"] == 0 and stats["resyncs"] == 0


@given(st.lists(frames, min_size=2, max_size=5))
def test_a_flag_shared_between_frames(frame_list: list[bytes]) -> None:
    # Consecutive frames may share one flag: closing flag of one = opening flag of the next.
    stream = frame_list[0] + b"".join(f[1:] for f in frame_list[1:])
    expected = [tuple_of(f) for f in frame_list]
    for mod in IMPLEMENTATIONS.values():
        assert scan(mod, [stream])[0] == expected
        assert scan(mod, [stream[i : i + 1] for i in range(len(stream))])[0] == expected


@given(st.lists(st.tuples(garbage(), frames), min_size=1, max_size=5), st.data())
def test_garbage_never_loses_a_following_valid_frame(
    pairs: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(g + f for g, f in pairs)
    expected = [tuple_of(f) for _, f in pairs]
    chunks = data.draw(chunkings(stream))
    results = {}
    for name, mod in IMPLEMENTATIONS.items():
        for label, feed in (
            ("whole", [stream]),
            ("bytes", [stream[i : i + 1] for i in range(len(stream))]),
            ("split", chunks),
        ):
            found, stats = scan(mod, feed)
            assert is_subsequence(expected, found), (name, label, stats)
            results[(name, label)] = (found, stats)
    # The twin and the extension agree on everything, counters included, for each feeding.
    for label in ("whole", "bytes", "split"):
        assert len({repr(results[(n, label)]) for n in IMPLEMENTATIONS}) == 1


@given(st.lists(st.tuples(garbage(), frames), min_size=1, max_size=4))
def test_discarded_bytes_are_counted(pairs: list[tuple[bytes, bytes]]) -> None:
    stream = b"".join(g + f for g, f in pairs)
    for mod in IMPLEMENTATIONS.values():
        found, stats = scan(mod, [stream], eof=True)
        frame_bytes = sum(len(f) for _, f in pairs)
        non_flag_garbage = sum(len(g) - g.count(0x7E) for g, _ in pairs)
        assert stats["bytes_received"] == len(stream)
        assert stats["pending"] == 0
        if len(found) == len(pairs):
            # Every byte is accounted for: frames, or discarded garbage (flags are not counted).
            assert stats["bytes_discarded"] == non_flag_garbage
            if non_flag_garbage:
                assert stats["resyncs"] >= 1
        # (More frames than pairs: some "garbage" was a valid frame after all, e.g. a frame
        # missing only its closing flag, closed by the opening flag of the next one.)
        assert stats["bytes_discarded"] <= len(stream) - frame_bytes


@given(st.binary(max_size=3000), st.booleans())
def test_arbitrary_bytes_give_frames_or_protocol_errors(data: bytes, transparency: bool) -> None:
    outcomes = []
    for mod in IMPLEMENTATIONS.values():
        for feed in ([data], [data[i : i + 7] for i in range(0, len(data), 7)]):
            try:
                outcomes.append(scan(mod, feed, eof=True, transparency=transparency))
            except ProtocolError as exc:  # the only exception allowed out
                outcomes.append(("error", exc.code))
    by_impl = len(outcomes) // len(IMPLEMENTATIONS)
    for i in range(by_impl):
        assert len({repr(outcomes[i + k * by_impl]) for k in range(len(IMPLEMENTATIONS))}) == 1


@given(tricky_bytes, st.booleans())
def test_tricky_bytes_byte_by_byte(data: bytes, transparency: bool) -> None:
    results = {
        name: scan(mod, [data[i : i + 1] for i in range(len(data))], transparency=transparency)
        for name, mod in IMPLEMENTATIONS.items()
    }
    assert len({repr(r) for r in results.values()}) == 1


@given(st.lists(st.tuples(garbage(), frames), min_size=1, max_size=4), st.data())
def test_transparency_mode_finds_stuffed_frames(
    pairs: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    from codec.hdlc import decode_frame, frame_to_bytes

    stuffed = [frame_to_bytes(decode_frame(f), transparency=True) for _, f in pairs]
    stream = b"".join(
        g.replace(b"\x7d", b"") + s for (g, _), s in zip(pairs, stuffed, strict=False)
    )
    expected = [tuple_of(f) for _, f in pairs]
    results = set()
    for mod in IMPLEMENTATIONS.values():
        found, _stats = scan(mod, data.draw(chunkings(stream)), transparency=True)
        assert is_subsequence(expected, found)
        results.add(repr(scan(mod, [stream], transparency=True)))
    assert len(results) == 1


def test_truncated_frame_followed_by_a_valid_one_in_one_read(hdlc_impl: ModuleType) -> None:
    # A reply cut off by a reset claims a length that runs past the next, complete reply.
    long_frame = encode_frame(FrameKind.I, CLIENT, SERVER, info=bytes(range(200)))
    reply = encode_frame(FrameKind.I, CLIENT, SERVER, ns=1, nr=1, info=b"\xc4\x01\xc1\x00")
    scanner = hdlc_impl.FrameScanner()
    scanner.receive_data(long_frame[:60] + reply)
    frame = scanner.next_frame()
    assert frame is not NEED_DATA and frame.info == b"\xc4\x01\xc1\x00"
    assert scanner.next_frame() is NEED_DATA
    assert scanner.bytes_discarded == 60 - long_frame[:60].count(0x7E)
    assert scanner.resyncs == 1


def test_residual_bytes_before_a_reply_drip_fed(hdlc_impl: ModuleType) -> None:
    residue = bytes.fromhex("7ea02a410883130413e6e7000f40000000000101")  # a cut push frame
    reply = encode_frame(FrameKind.UA, CLIENT, SERVER)
    scanner = hdlc_impl.FrameScanner()
    found = []
    for byte in residue + reply:
        scanner.receive_data(bytes((byte,)))
        while (frame := scanner.next_frame()) is not NEED_DATA:
            found.append(frame)
    assert [f.kind for f in found] == [FrameKind.UA]


def test_incomplete_frame_waits_for_more_data(hdlc_impl: ModuleType) -> None:
    raw = encode_frame(FrameKind.I, CLIENT, SERVER, info=b"\x7e" * 50)
    scanner = hdlc_impl.FrameScanner()
    scanner.receive_data(raw[:-1])
    assert scanner.next_frame() is NEED_DATA
    assert scanner.pending == len(raw) - 1 and scanner.bytes_discarded == 0
    scanner.receive_data(raw[-1:])
    assert scanner.next_frame().info == b"\x7e" * 50


def test_drain_discards_pending_bytes(hdlc_impl: ModuleType) -> None:
    scanner = hdlc_impl.FrameScanner()
    # The start of a frame whose header (and HCS) is valid: it waits for the rest.
    scanner.receive_data(encode_frame(FrameKind.I, CLIENT, SERVER, info=bytes(100))[:9])
    assert scanner.next_frame() is NEED_DATA
    assert scanner.pending == 9 and scanner.bytes_discarded == 0
    assert scanner.drain() == 8
    assert scanner.pending == 0 and scanner.bytes_discarded == 8 and scanner.resyncs == 1
    reply = encode_frame(FrameKind.UA, CLIENT, SERVER)
    scanner.receive_data(reply)
    assert scanner.next_frame().kind is FrameKind.UA


def test_end_of_stream_discards_the_unfinished_frame(hdlc_impl: ModuleType) -> None:
    scanner = hdlc_impl.FrameScanner()
    raw = encode_frame(FrameKind.UA, CLIENT, SERVER)
    scanner.receive_data(raw + raw[:5])
    scanner.receive_data(b"")
    assert scanner.closed
    assert scanner.next_frame().kind is FrameKind.UA
    assert scanner.next_frame() is NEED_DATA
    assert scanner.pending == 0 and scanner.bytes_discarded == 4
    with pytest.raises(LocalProtocolError):
        scanner.receive_data(b"x")


def test_counters_for_bad_hcs_and_bad_fcs(hdlc_impl: ModuleType) -> None:
    good = encode_frame(FrameKind.I, CLIENT, SERVER, info=b"\x01\x02\x03")
    bad_hcs = bytearray(good)
    bad_hcs[6] ^= 0x01  # first HCS byte (flag, format x2, dst, src, control, HCS)
    bad_fcs = bytearray(good)
    bad_fcs[-2] ^= 0x01
    scanner = hdlc_impl.FrameScanner()
    scanner.receive_data(bytes(bad_hcs) + bytes(bad_fcs) + good)
    frame = scanner.next_frame()
    assert frame.info == b"\x01\x02\x03"
    assert scanner.next_frame() is NEED_DATA
    stats = scanner.stats()
    assert stats["bad_hcs"] == 1 and stats["bad_fcs"] == 1 and stats["frames"] == 1
    assert stats["bytes_discarded"] == 2 * (len(good) - 2)


def test_fill_flags_are_not_garbage(hdlc_impl: ModuleType) -> None:
    raw = encode_frame(FrameKind.UA, CLIENT, SERVER)
    scanner = hdlc_impl.FrameScanner()
    scanner.receive_data(b"\x7e\x7e\x7e" + raw + b"\x7e\x7e" + raw)
    assert scanner.next_frame().kind is FrameKind.UA
    assert scanner.next_frame().kind is FrameKind.UA
    assert scanner.bytes_discarded == 0 and scanner.resyncs == 0


def test_buffer_is_capped(hdlc_impl: ModuleType) -> None:
    scanner = hdlc_impl.FrameScanner(max_buffer=4096)
    raw = encode_frame(FrameKind.UA, CLIENT, SERVER)
    scanner.receive_data(raw * (4096 // len(raw)))
    with pytest.raises(FrameError) as err:
        scanner.receive_data(raw)
    assert err.value.code == "hdlc.buffer_overflow"
    # Taking frames makes room again.
    while scanner.next_frame() is not NEED_DATA:
        pass
    scanner.receive_data(raw)
    assert scanner.next_frame().kind is FrameKind.UA


def test_max_buffer_has_a_floor(hdlc_impl: ModuleType) -> None:
    with pytest.raises(LocalProtocolError):
        hdlc_impl.FrameScanner(max_buffer=100)


def test_long_streams_are_compacted(hdlc_impl: ModuleType) -> None:
    raw = encode_frame(FrameKind.I, CLIENT, SERVER, info=bytes(100))
    scanner = hdlc_impl.FrameScanner(max_buffer=8192)
    for _ in range(2000):  # far more than max_buffer in total
        scanner.receive_data(raw)
        assert scanner.next_frame() is not NEED_DATA
    assert scanner.frames == 2000 and scanner.pending == 1
