"""Bounded time and memory against hostile meters, on Trio's virtual clock.

The meter is a :class:`~tests.bridge.hostile.HostileMeter` at the far end of an in-memory
lockstep stream (a send completes only when the other side reads, as on a full socket): it
associates honestly, then misbehaves on the first GET. Every test would hang or grow without
the bounds (``trio.fail_after`` turns a hang into a failure).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from bridge.session import MeterEndpoint, MeterIOError, MeterSession
from codec.client import RegisterSpec
from codec.errors import ProtocolError, ResponseTimeout
from tests.bridge.hostile import PASSWORD, HostileMeter

VOLTAGE = [RegisterSpec("1-1:32.7.0")]
#: The test fails rather than hangs when a bound is missing.
HANG = 10_000.0


class StreamSession(MeterSession):
    """A session over a given stream instead of a TCP connection."""

    def __init__(self, endpoint: MeterEndpoint, stream: Any) -> None:
        super().__init__(endpoint)
        self._given = stream

    async def connect(self) -> None:
        self.stream = self._given


def endpoint(transport: str = "hdlc", **kwargs: Any) -> MeterEndpoint:
    return MeterEndpoint("hostile.test", 4059, transport=transport, password=PASSWORD, **kwargs)  # type: ignore[arg-type]


async def run_peer(
    stream: Any, meter: HostileMeter, *, push_every: float | None = None, flood: bool = False
) -> None:
    """Answer the client; push on a timer or flood; a ``deaf`` meter stops reading."""
    lock = trio.Lock()

    async def send(data: bytes) -> None:
        if data:
            async with lock:
                await stream.send_all(data)

    async with trio.open_nursery() as nursery:

        async def pusher() -> None:
            while not meter.hostile:
                await trio.sleep(0.01)
            while True:
                if push_every is not None:
                    await trio.sleep(push_every)
                await send(meter.push())

        if push_every is not None or flood:
            nursery.start_soon(pusher)
        while True:
            data = await stream.receive_some(65536)
            if not data:
                nursery.cancel_scope.cancel()
                return
            await send(meter.receive(data))
            if meter.hostile and meter.mode == "deaf":
                await trio.sleep_forever()


async def read_against(
    meter: HostileMeter, ep: MeterEndpoint, **peer: Any
) -> tuple[BaseException, float, StreamSession]:
    """Open, read one register, and return what it raised and how long the read took."""
    client_stream, meter_stream = trio.testing.lockstep_stream_pair()
    session = StreamSession(ep, client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_peer(meter_stream, meter, **peer))
        with trio.fail_after(HANG):
            await session.open()
            start = trio.current_time()
            with pytest.raises((ProtocolError, MeterIOError)) as caught:
                await session.read_registers(VOLTAGE)
            took = trio.current_time() - start
        await session.aclose()
        nursery.cancel_scope.cancel()
    return caught.value, took, session


async def test_endless_segments_stop_at_the_max_pdu_size(autojump_clock: Any) -> None:
    meter = HostileMeter("endless")
    ep = endpoint(max_pdu_size=1024)
    error, took, _ = await read_against(meter, ep, flood=True)
    assert isinstance(error, ProtocolError) and error.code == "link.reply_too_long"
    # The proposed 1024 bytes, and the allowance for padding.
    assert "more than the 1088 accepted" in str(error)
    # The client took no more than the bound (11 segments of 100 bytes), whatever was flooded.
    assert meter.sent < 1024 + 65536
    assert took < ep.timeout


async def test_segment_every_2s_ends_at_the_overall_deadline(autojump_clock: Any) -> None:
    meter = HostileMeter("drip")
    ep = endpoint(timeout=5.0, retries=2)
    error, took, _ = await read_against(meter, ep, push_every=2.0)
    assert isinstance(error, ResponseTimeout) and error.code == "association.deadline"
    # Each segment came well within the reply timeout; only the overall deadline ends it.
    assert took == pytest.approx(ep.request_deadline, abs=0.1)
    assert ep.request_deadline == 20.0


async def test_request_timeout_is_the_overall_deadline(autojump_clock: Any) -> None:
    meter = HostileMeter("drip")
    ep = endpoint(timeout=5.0, retries=2, request_timeout=7.0)
    error, took, _ = await read_against(meter, ep, push_every=2.0)
    assert isinstance(error, ResponseTimeout) and error.code == "association.deadline"
    assert took == pytest.approx(7.0, abs=0.1)


async def test_peer_that_stops_reading_fails_the_send(autojump_clock: Any) -> None:
    meter = HostileMeter("deaf")
    ep = endpoint(timeout=3.0, retries=2)
    error, took, session = await read_against(meter, ep)
    assert isinstance(error, MeterIOError) and "stopped reading" in str(error)
    # One reply timeout for the GET, then its retransmission cannot be sent for another.
    assert took == pytest.approx(6.0, abs=0.1)
    assert session.stream is None


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
async def test_endless_block_transfer_is_bounded(autojump_clock: Any, transport: str) -> None:
    meter = HostileMeter("blocks", transport=transport)
    ep = endpoint(transport, request_timeout=HANG / 2)
    error, _, session = await read_against(meter, ep)
    assert isinstance(error, ProtocolError) and error.code == "association.too_long"
    bound = ep.max_response_size
    assert bound == 256 * 1024 and f"{bound} bytes" in str(error)
    # The transfer stopped at the block that crossed the bound: 256 KiB of data, not more.
    assert meter.block == bound // 1000 + 1
    assert session.stats()["blocks_received"] == bound // 1000


async def test_wrapper_reply_longer_than_the_max_pdu_is_a_protocol_error(
    autojump_clock: Any,
) -> None:
    meter = HostileMeter("oversized", transport="wrapper")
    error, _, _ = await read_against(meter, endpoint("wrapper"))
    assert isinstance(error, ProtocolError) and error.code == "link.reply_too_long"


async def test_honest_meter_still_reads_under_the_bounds(autojump_clock: Any) -> None:
    # The same peer, never turning hostile, answers normally within every bound.
    meter = HostileMeter("never")
    meter.receive = meter.honest_receive  # type: ignore[method-assign]
    client_stream, meter_stream = trio.testing.lockstep_stream_pair()
    session = StreamSession(endpoint(), client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_peer(meter_stream, meter))
        with trio.fail_after(60):
            await session.open()
            (reading,) = await session.read_registers(VOLTAGE)
        assert reading.ok and 100 < reading.value < 140
        await session.aclose()
        nursery.cancel_scope.cancel()
