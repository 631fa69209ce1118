"""``dlms-bridge simulate --workers N``: the meters split over worker processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from bridge.cli import main
from bridge.commands.simulate import AUTO_GATHER_MS, gather_seconds
from bridge.simulator.workers import auto_workers, shares
from codec.acse import AssociationResult
from tests.bridge.test_simulator_control import Control
from tests.bridge.test_simulator_rawclient import TIMEOUT, RawClient, value_of

REPO = Path(__file__).resolve().parents[2]


def test_shares_are_contiguous_and_even() -> None:
    assert shares(5, 2) == [range(2), range(2, 5)]
    assert shares(3, 3) == [range(1), range(1, 2), range(2, 3)]
    split = shares(5001, 4)
    assert [len(s) for s in split] == [1250, 1250, 1250, 1251]
    assert [i for s in split for i in s] == list(range(5001))


def test_auto_workers_stay_one_for_small_runs() -> None:
    assert auto_workers(1, cores=2) == 1
    assert auto_workers(999, cores=2) == 1
    assert auto_workers(2000, cores=2) == 2
    assert auto_workers(5000, cores=2) == 2
    assert auto_workers(5000, cores=8) == 5
    assert auto_workers(5000, cores=1) == 1


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_bad_worker_counts_exit_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--workers", value]) == 2
    assert "--workers" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "1001", "soon", "nan"])
def test_bad_gather_times_exit_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--gather-ms", value]) == 2
    assert "--gather-ms" in capsys.readouterr().err


def test_requests_gather_only_in_large_runs_unless_told() -> None:
    assert gather_seconds("auto", 99) == 0.0
    assert gather_seconds("auto", 100) == AUTO_GATHER_MS / 1000
    assert gather_seconds(0.0, 5000) == 0.0
    assert gather_seconds(3.0, 1) == 0.003


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@asynccontextmanager
async def simulate(*args: str) -> AsyncIterator[tuple[trio.Process, str]]:
    command = [sys.executable, "-m", "bridge.cli", "simulate", "--port", "0", *args]
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
        yield process, output.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_workers_serve_shares_and_the_control_port_speaks_for_all() -> None:
    with trio.fail_after(TIMEOUT):
        async with simulate(
            "--meters", "5", "--workers", "2", "--control-port", "0", "--seed", "3"
        ) as (process, text):
            assert re.search(r"ready: 5 meters on 127\.0\.0\.1, seed 3, 2 worker processes", text)
            ports = [int(p) for p in re.findall(r"port (\d+) \(hdlc, single-phase\)", text)]
            assert len(ports) == 5, text
            workers = _children(process.pid)
            assert len(workers) == 2
            control_port = int(re.findall(r"control port (\d+)", text)[0])
            control = Control(await trio.open_tcp_stream("127.0.0.1", control_port))
            status = await control({"cmd": "status"})
            assert status["ports"] == ports and status["workers"] == 2
            # Meter 0 is served by the first worker, meter 4 by the second.
            for index in (0, 4):
                client = await RawClient.open(ports[index])
                await client.connect()
                await client.associate()
                assert 11_000 < value_of(await client.get(3, "1-1:32.7.0", 2)) < 13_000
                await client.aclose()
            counters = (await control({"cmd": "counters"}))["counters"]
            assert [counters[str(i)]["connections"] for i in range(5)] == [1, 0, 0, 0, 1]
            assert [counters[str(i)]["requests"] for i in range(5)] == [2, 0, 0, 0, 2]
            # A fault set through the parent reaches the worker that serves the meter.
            assert (await control({"cmd": "faults", "spec": "4:refuse"}))["meters"] == [4]
            assert (await control({"cmd": "get_faults", "meters": "3-4"}))["faults"] == {
                "3": "",
                "4": "refuse=1",
            }
            client = await RawClient.open(ports[4])
            await client.connect()
            assert (await client.associate()).result == AssociationResult.REJECTED_TRANSIENT
            await client.aclose()
            assert (await control({"cmd": "counters", "meters": "4"}))["counters"]["4"][
                "refusals"
            ] == 1
            bad = await control({"cmd": "faults", "spec": "7:fcs"})
            assert not bad["ok"] and "meter 7 does not exist" in bad["error"]
            await control.stream.aclose()
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            assert not any(_alive(pid) for pid in workers)


async def test_a_dead_worker_stops_the_simulator() -> None:
    with trio.fail_after(TIMEOUT):
        async with simulate("--meters", "4", "--workers", "2") as (process, _):
            first, second = _children(process.pid)
            os.kill(first, signal.SIGKILL)
            assert await process.wait() == 1
            assert process.stderr is not None
            err = (await process.stderr.receive_some(65536)).decode()
            assert f"worker {first} stopped" in err
            assert not _alive(second)
