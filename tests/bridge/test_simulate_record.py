"""``simulate --record DIR``: every session of the simulator written as pcap, then read back."""

from __future__ import annotations

from pathlib import Path

import trio

from bridge.capture import read_sessions
from bridge.session import MeterEndpoint, MeterSession
from bridge.simulator.server import Simulator, SimulatorConfig, SimulatorPorts
from codec.client import RegisterSpec
from codec.decoder import StreamDecoder


async def test_sessions_are_recorded_per_meter(nursery: trio.Nursery, tmp_path: Path) -> None:
    simulator = Simulator(
        SimulatorConfig(meters=2, port=0, record_dir=str(tmp_path), faults="1:garbage")
    )
    ports: SimulatorPorts = await nursery.start(simulator.serve)
    with trio.fail_after(20):
        for port in ports.meters:
            session = MeterSession(MeterEndpoint(ports.host, port, password=b"00000000"))
            await session.open()
            await session.read_registers([RegisterSpec("1-1:32.7.0")])
            await session.release()
        await trio.sleep(0.2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meter-0000.pcap", "meter-0001.pcap"]
    for index, port in enumerate(ports.meters):
        (recorded,) = read_sessions(tmp_path / f"meter-{index:04d}.pcap")
        assert recorded.server[1] == port
        # The client's side decodes into SNRM, AARQ, GET, RLRQ, DISC; the meter's into answers.
        requests = StreamDecoder().feed(recorded.client_bytes)
        kinds = [r["kind"] for r in requests]
        assert kinds[0] == "SNRM" and kinds[-1] == "DISC"
        replies = StreamDecoder()
        answers = replies.feed(recorded.server_bytes)
        assert [a.get("apdu", {}).get("kind") for a in answers if "apdu" in a][:1] == ["aare"]
        if index == 1:
            # The garbage the meter sent is in the capture, and skipped by the decoder.
            assert replies.stats()["bytes_discarded"] > 0
