"""The control interface, the ``dlms-bridge simulate`` command and the inactivity timeout."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.cli import main
from bridge.commands.simulate import port_ranges
from bridge.simulator import MeterSettings, SimulatorConfig
from codec.acse import AssociationResult
from codec.hdlc import FrameKind
from tests.bridge.test_simulator_rawclient import TIMEOUT, RawClient, running, value_of

REPO = Path(__file__).resolve().parents[2]


class Control:
    """A JSON-lines connection to the control port."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def __call__(self, request: Any) -> dict[str, Any]:
        raw = request if isinstance(request, bytes) else json.dumps(request).encode()
        await self.stream.send_all(raw + b"\n")
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            assert data, "the control port closed the connection"
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer


async def test_control_interface_sets_faults_and_reads_counters() -> None:
    config = SimulatorConfig(meters=4, port=0, control_port=0, faults="2:delay=0.01")
    with trio.fail_after(TIMEOUT):
        async with running(config) as (_, ports):
            assert ports.control is not None
            control = Control(await trio.open_tcp_stream("127.0.0.1", ports.control))
            status = await control({"cmd": "status"})
            assert status["ok"] and status["meters"] == 4 and status["ports"] == list(ports.meters)
            assert (await control({"cmd": "get_faults", "meters": "1-2"}))["faults"] == {
                "1": "",
                "2": "delay=0.01",
            }
            assert (await control({"cmd": "faults", "spec": "0-1:garbage;1:refuse"}))["meters"] == [
                0,
                1,
            ]
            client = await RawClient.open(ports.meters[1])
            await client.connect()
            aare = await client.associate()
            assert aare.result == AssociationResult.REJECTED_TRANSIENT
            counters = (await control({"cmd": "counters", "meters": "1"}))["counters"]["1"]
            assert counters["connections"] == 1
            assert counters["refusals"] == 1
            assert counters["faults"] == {"garbage": 2, "refuse": 1}
            assert counters["requests"] == 1
            assert (await control({"cmd": "clear", "meters": "all"}))["meters"] == [0, 1, 2, 3]
            assert (await control({"cmd": "get_faults"}))["faults"]["1"] == ""
            bad = await control({"cmd": "faults", "spec": "9:fcs"})
            assert not bad["ok"] and "meter 9 does not exist" in bad["error"]
            assert "unknown cmd" in (await control({"cmd": "explode"}))["error"]
            assert "not JSON" in (await control(b"{nope"))["error"]
            assert (
                "must be all, N or N-M"
                in (await control({"cmd": "counters", "meters": "x"}))["error"]
            )
            await client.aclose()
            await control.stream.aclose()


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
async def test_idle_links_are_closed_after_the_inactivity_timeout(transport: str) -> None:
    settings = MeterSettings(inactivity_timeout=0.3)
    config = SimulatorConfig(port=0, transport=transport, settings=settings)
    with trio.fail_after(TIMEOUT):
        async with running(config) as (sim, ports):
            client = await RawClient.open(ports.meters[0], transport=transport)
            await client.connect()
            await client.associate()
            await trio.sleep(0.2)
            await client.get(3, "1-1:32.7.0", 2)  # activity restarts the timer
            start = trio.current_time()
            assert await client.stream.receive_some(100) == b""
            assert 0.25 < trio.current_time() - start < 2
            assert sim.meter(0).counters.inactivity_closes == 1


def test_bad_fault_spec_exits_2_naming_the_part(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--meters", "3", "--faults", "all:garbage;2:fcs=2"]) == 2
    err = capsys.readouterr().err
    assert "fault spec part '2:fcs=2'" in err
    assert "between 0 and 1" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--meters", "0"], "--meters: 0 is out of range: 1..20000"),
        (["--port", "65000", "--meters", "1000"], "run past port 65535"),
        (["--max-info", "8"], "--max-info: 8 is out of range: 32..2030"),
        (["--profile-period", "0"], "--profile-period must be 1..86400 seconds"),
    ],
)
def test_bad_arguments_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *args]) == 2
    assert message in capsys.readouterr().err


def test_port_ranges() -> None:
    assert list(port_ranges((4061, 4062, 4063))) == [(0, 2, 4061, 4063)]
    assert list(port_ranges((5, 9, 10))) == [(0, 0, 5, 5), (1, 2, 9, 10)]


async def test_simulate_command_serves_until_sigterm() -> None:
    command = [
        sys.executable,
        "-m",
        "bridge.cli",
        "simulate",
        "--meters",
        "3",
        "--port",
        "0",
        "--control-port",
        "0",
        "--model",
        "three-phase",
        "--seed",
        "4",
    ]
    with trio.fail_after(TIMEOUT):
        process = await trio.lowlevel.open_process(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert process.stdout is not None
            output = b""
            while b"ready" not in output:
                data = await process.stdout.receive_some(4096)
                assert data, f"exited early: {output!r}"
                output += data
            text = output.decode()
            ports = [int(p) for p in re.findall(r"port (\d+) \(hdlc, three-phase\)", text)]
            assert len(ports) == 3, text
            assert re.search(r"ready: 3 meters on 127\.0\.0\.1, seed 4, control port \d+", text), (
                text
            )
            client = await RawClient.open(ports[2])
            await client.connect()
            await client.associate()
            volts = await client.get(3, "1-1:72.7.0", 2)
            assert 11_000 < value_of(volts) < 13_000
            assert (await client.disconnect()).kind is FrameKind.UA
            await client.aclose()
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
