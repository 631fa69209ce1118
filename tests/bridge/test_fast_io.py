"""bridge.fast_io over real sockets (a connected pair: no timing involved) and memory streams."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bridge.fast_io import receive_some, send_now


def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_send_now_and_receive_over_a_socket() -> None:
    a, b = socket_pair()
    async with a, b:
        assert send_now(a, b"\x7e\xa0\x07") == 3
        assert await receive_some(b, 100) == b"\x7e\xa0\x07"
        assert send_now(a, b"") == 0


async def test_a_full_socket_takes_what_it_can_and_the_rest_is_sent_the_usual_way() -> None:
    a, b = socket_pair()
    big = bytes(range(256)) * 40_000  # 10 MB: more than any socket buffer
    async with a, b:
        sent = send_now(a, big)
        assert 0 < sent < len(big)
        assert send_now(a, big[sent:]) == 0  # full now
        got = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, big[sent:])
            while len(got) < len(big):
                got += await receive_some(b, 65536)
        assert bytes(got) == big


async def test_end_of_stream_and_closed_streams() -> None:
    a, b = socket_pair()
    await a.aclose()
    assert await receive_some(b, 10) == b""
    await b.aclose()
    assert send_now(b, b"x") == 0  # closed: left to send_all, which says so
    with pytest.raises(trio.ClosedResourceError):
        await receive_some(b, 10)


async def test_a_peer_that_went_away_is_an_os_error() -> None:
    a, b = socket_pair()
    await b.aclose()
    with pytest.raises(OSError):
        send_now(a, b"x")
    await a.aclose()


async def test_waiting_for_data_is_cancellable() -> None:
    a, b = socket_pair()
    async with a, b:
        with trio.CancelScope() as scope:
            scope.cancel()
            await receive_some(b, 10)
        assert scope.cancelled_caught


async def test_other_streams_use_their_own_methods() -> None:
    a, b = trio.testing.memory_stream_pair()
    assert send_now(a, b"abc") == 0
    await a.send_all(b"abc")
    assert await receive_some(b, 10) == b"abc"
