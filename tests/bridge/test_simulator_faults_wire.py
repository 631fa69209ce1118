"""Every fault, observed on a real TCP connection to the simulator."""

from __future__ import annotations

import pytest
import trio

from bridge.simulator import SimulatorConfig
from codec.acse import AssociationResult
from codec.errors import FrameError
from codec.hdlc import FrameKind, HdlcAddress, decode_frame, encode_frame
from codec.hdlc_params import LinkParameters
from tests.bridge.test_simulator_rawclient import TIMEOUT, RawClient, running, value_of

SNRM = encode_frame(FrameKind.SNRM, HdlcAddress.server(0, 1), HdlcAddress.client(1))


def config(faults: str, transport: str = "hdlc") -> SimulatorConfig:
    return SimulatorConfig(meters=2, port=0, transport=transport, faults=faults, seed=5)


async def test_garbage_before_replies_is_skipped_by_the_scanner() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config("1:garbage")) as (sim, ports):
            client = await RawClient.open(ports.meters[1])
            await client.connect()
            await client.associate()
            # Garbage came before the UA and the AARE, and the scanner skipped it.
            assert client.scanner.bytes_discarded > 0
            assert len(client.received) > sum(f.length + 2 for f in client.frames_received)
            assert sim.meter(1).snapshot()["faults"] == {"garbage": 2}
            # Meter 0 has no faults.
            clean = await RawClient.open(ports.meters[0])
            await clean.connect()
            assert clean.scanner.bytes_discarded == 0
            await client.aclose()
            await clean.aclose()


async def test_residual_bytes_arrive_on_connect() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config("0:residual")) as (sim, ports):
            stream = await trio.open_tcp_stream("127.0.0.1", ports.meters[0])
            residue = await stream.receive_some(4096)
            assert residue.startswith(b"\x7e\xa0")
            with pytest.raises(FrameError):
                decode_frame(residue)
            client = RawClient(stream)
            client.scanner.receive_data(residue)
            await client.connect()  # the truncated frame is skipped
            assert (await client.associate()).result == AssociationResult.ACCEPTED
            assert sim.meter(0).snapshot()["faults"] == {"residual": 1}
            await client.aclose()


async def test_chunked_replies_arrive_in_pieces() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config("0:chunks")) as (_, ports):
            client = await RawClient.open(ports.meters[0])
            await client.connect()
            await client.associate()
            for _ in range(5):
                await client.get(3, "1-1:32.7.0", 2)
            # 7 replies, each cut at least once and sent with pauses in between.
            assert client.reads > 7
            await client.aclose()


async def test_drip_sends_byte_by_byte() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config("0:drip=0.01")) as (_, ports):
            client = await RawClient.open(ports.meters[0])
            start = trio.current_time()
            await client.connect()
            elapsed = trio.current_time() - start
            ua_length = len(client.received)
            assert ua_length > 20
            assert elapsed >= (ua_length - 1) * 0.01 * 0.9
            assert client.reads > ua_length / 2
            await client.aclose()


async def test_flags_put_7e_and_7d_inside_frames() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config("0:flags")) as (_, ports):
            alias = HdlcAddress.server(63, 1, 2)
            client = await RawClient.open(ports.meters[0], server=alias)
            await client.connect()
            await client.associate()
            energy = value_of(await client.get(3, "1-1:1.8.0", 2))
            assert energy >> 16 == 0x7E7D
            # The meter's address (7E 03) is in every frame, the energy's 7E 7D in the last.
            assert client.received.count(b"\x7e\x03") >= 3
            assert b"\x7e\x7d" in client.received
            ldn = value_of(await client.get(1, "0-0:42.0.0.255", 2))
            assert b"~}" in ldn
            # Every frame was read whole despite the flag bytes inside.
            assert client.scanner.bytes_discarded == 0
            await client.aclose()


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
async def test_corrupted_replies_are_rejected(transport: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config("0:fcs", transport)) as (sim, ports):
            stream = await trio.open_tcp_stream("127.0.0.1", ports.meters[0])
            if transport == "hdlc":
                await stream.send_all(SNRM)
                reply = await stream.receive_some(4096)
                with pytest.raises(FrameError) as info:
                    decode_frame(reply)
                assert info.value.code == "hdlc.bad_fcs"
            else:
                client = RawClient(stream, transport="wrapper")
                with trio.move_on_after(0.5):
                    await client.associate()
                    pytest.fail("a corrupted wrapper PDU was accepted")
                assert client.scanner.bytes_discarded > 0
            assert sim.meter(0).snapshot()["faults"] == {"fcs": 1}
            await stream.aclose()


async def test_delayed_replies() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config("0:delay=0.3")) as (_, ports):
            client = await RawClient.open(ports.meters[0])
            start = trio.current_time()
            await client.connect()
            assert trio.current_time() - start >= 0.3
            await client.aclose()


async def test_silence_then_answers_again() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config("0:silence=0.6")) as (sim, ports):
            client = await RawClient.open(ports.meters[0])
            with trio.move_on_after(0.3) as scope:
                await client.connect()
            assert scope.cancelled_caught
            await trio.sleep(0.4)
            await client.connect()
            assert sim.meter(0).snapshot()["faults"]["silence"] >= 1
            await client.aclose()


async def test_reset_in_the_middle_of_a_frame() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config("0:reset")) as (sim, ports):
            stream = await trio.open_tcp_stream("127.0.0.1", ports.meters[0])
            await stream.send_all(SNRM)
            received = b""
            error: BaseException | None = None
            while error is None:
                try:
                    data = await stream.receive_some(4096)
                except trio.BrokenResourceError as exc:
                    error = exc
                else:
                    assert data, "the connection ended with FIN, not RST"
                    received += data
            assert isinstance(error.__cause__, ConnectionResetError)
            assert received.startswith(b"\x7e")
            ua = encode_frame(
                FrameKind.UA,
                HdlcAddress.client(1),
                HdlcAddress.server(0, 1),
                info=LinkParameters(128, 128).encode(),
            )
            assert len(received) < len(ua)
            assert ua.startswith(received)
            assert sim.meter(0).snapshot()["faults"] == {"reset": 1}


async def test_refused_association() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config("0:refuse")) as (sim, ports):
            client = await RawClient.open(ports.meters[0])
            await client.connect()
            aare = await client.associate()
            assert aare.result == AssociationResult.REJECTED_TRANSIENT
            assert sim.meter(0).counters.refusals == 1
            await client.aclose()


async def test_faults_change_while_running() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config("")) as (sim, ports):
            client = await RawClient.open(ports.meters[1])
            await client.connect()
            await client.associate()
            assert sim.set_faults("1:garbage") == [1]
            await client.get(3, "1-1:32.7.0", 2)
            assert client.scanner.bytes_discarded > 0
            discarded = client.scanner.bytes_discarded
            sim.clear_faults()
            await client.get(3, "1-1:32.7.0", 2)
            assert client.scanner.bytes_discarded == discarded
            await client.aclose()
