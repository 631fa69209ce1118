"""Capacity: many meters in one process, each polled on a steady cadence over HDLC.

The pollers use pre-encoded frames so that the client side stays cheap. The quick test runs
both sides in this process; the slow one runs the simulator as its own process, as deployed.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from bridge.simulator import SimulatorConfig
from bridge.simulator.server_link import LLC_REQUEST
from codec.acse import AARQ, AuthenticationMechanism
from codec.apdu import (
    AttributeDescriptor,
    GetRequestWithList,
    GetResponseWithList,
    InvokeId,
    decode_apdu,
    encode_apdu,
)
from codec.axdr import Data
from codec.hdlc import NEED_DATA, Frame, FrameKind, FrameScanner, HdlcAddress, encode_frame
from codec.obis import Obis
from tests.bridge.test_simulator_rawclient import FIELD_REGISTERS, running

REPO = Path(__file__).resolve().parents[2]
CLIENT = HdlcAddress.client(1)
SERVER = HdlcAddress.server(0, 1)
POLL = encode_apdu(
    GetRequestWithList(
        InvokeId(1),
        tuple((AttributeDescriptor(3, Obis.parse(o), 2), None) for o in FIELD_REGISTERS),
    )
)
POLL_FRAMES = {
    (ns, nr): encode_frame(FrameKind.I, SERVER, CLIENT, ns=ns, nr=nr, info=LLC_REQUEST + POLL)
    for ns in range(8)
    for nr in range(8)
}
SNRM = encode_frame(FrameKind.SNRM, SERVER, CLIENT)
AARQ_FRAME = encode_frame(
    FrameKind.I,
    SERVER,
    CLIENT,
    ns=0,
    nr=0,
    info=LLC_REQUEST
    + encode_apdu(AARQ(mechanism=AuthenticationMechanism.LOW, password=b"00000000")),
)


class Poller:
    """One meter's client: connects, associates, then polls the five registers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.late = 0

    async def _frame(self, stream: trio.SocketStream, scanner: FrameScanner) -> Frame:
        while True:
            frame = scanner.next_frame()
            if frame is not NEED_DATA:
                assert isinstance(frame, Frame)
                return frame
            data = await stream.receive_some(4096)
            assert data, f"port {self.port} closed the connection"
            scanner.receive_data(data)

    async def run(self, first: float, polls: int, interval: float) -> None:
        scanner = FrameScanner()
        async with await trio.open_tcp_stream("127.0.0.1", self.port) as stream:
            await stream.send_all(SNRM)
            assert (await self._frame(stream, scanner)).kind is FrameKind.UA
            await stream.send_all(AARQ_FRAME)
            assert (await self._frame(stream, scanner)).kind is FrameKind.I
            ns = nr = 1
            tick = first
            for n in range(polls):
                await trio.sleep_until(tick)
                start = trio.current_time()
                await stream.send_all(POLL_FRAMES[ns, nr])
                frame = await self._frame(stream, scanner)
                end = trio.current_time()
                assert (frame.kind, frame.ns, frame.nr) == (FrameKind.I, nr, (ns + 1) & 7)
                if n == 0:
                    response = decode_apdu(frame.info[3:])
                    assert isinstance(response, GetResponseWithList)
                    assert all(isinstance(r, Data) for r in response.results)
                self.latencies.append(end - start)
                if end > tick + interval:
                    self.late += 1
                ns, nr = (ns + 1) & 7, (nr + 1) & 7
                tick += interval


async def _poll_all(meters: int, polls: int, interval: float) -> list[Poller]:
    async with running(SimulatorConfig(meters=meters, port=0)) as (sim, ports):
        pollers = [Poller(port) for port in ports.meters]
        first = trio.current_time() + max(1.0, meters / 500)  # time to connect everyone
        async with trio.open_nursery() as nursery:
            for poller in pollers:
                nursery.start_soon(poller.run, first + random.random() * interval, polls, interval)
        assert sum(m.counters.requests for m in sim.meters) == meters * (polls + 1)
        assert sum(m.counters.connections for m in sim.meters) == meters
    return pollers


async def test_hundreds_of_meters_answer_concurrently() -> None:
    with trio.fail_after(60):
        pollers = await _poll_all(meters=200, polls=3, interval=0.25)
    assert all(len(p.latencies) == 3 for p in pollers)


@pytest.mark.slow
async def test_2000_meters_polled_every_second() -> None:
    """The simulator in its own process (as ``dlms-bridge simulate`` runs), pollers here."""
    meters, polls = 2000, 10
    command = [sys.executable, "-m", "bridge.cli", "simulate", "--meters", str(meters)]
    command += ["--port", "0", "--control-port", "0"]
    with trio.fail_after(120):
        process = await trio.lowlevel.open_process(command, cwd=REPO, stdout=subprocess.PIPE)
        try:
            assert process.stdout is not None
            output = b""
            while b"ready" not in output:
                data = await process.stdout.receive_some(65536)
                assert data, output
                output += data
            match = re.search(rb"control port (\d+)", output)
            assert match, output
            async with await trio.open_tcp_stream("127.0.0.1", int(match[1])) as control:
                await control.send_all(b'{"cmd": "status"}\n')
                answer = b""
                while not answer.endswith(b"\n"):
                    answer += await control.receive_some(65536)
            ports = json.loads(answer)["ports"]
            assert len(ports) == meters
            cpu_before = _cpu_seconds(process.pid)
            started = trio.current_time()
            pollers = [Poller(port) for port in ports]
            first = trio.current_time() + 4.0  # time to connect everyone
            async with trio.open_nursery() as nursery:
                for poller in pollers:
                    nursery.start_soon(poller.run, first + random.random(), polls, 1.0)
            cpu = (_cpu_seconds(process.pid) - cpu_before) / (trio.current_time() - started)
        finally:
            process.terminate()
            await process.wait()
    latencies = sorted(latency for p in pollers for latency in p.latencies)
    late = sum(p.late for p in pollers)
    print(
        f"{meters} meters x {polls} polls: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
        f"p99 {latencies[len(latencies) * 99 // 100] * 1000:.1f} ms, late {late}, "
        f"simulator CPU {cpu:.0%} of one core"
    )
    assert len(latencies) == meters * polls
    # Both sides share two cores with whatever else runs: allow a little lateness, not more.
    assert late <= meters * polls // 100
    assert cpu < 0.8


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and of its child processes (the simulator's
    workers), from /proc."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(child) for child in (task / "children").read_text().split()]
    total = 0
    for each in pids:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
