"""``dlms-bridge read`` output: a table for people, strict JSON with ``--json``, dates as dates,
strings as text; and the association released even when a reply cannot be decoded."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import trio

from bridge.simulator.cosem_server import CosemServer
from bridge.simulator.server import Simulator, SimulatorConfig, SimulatorPorts
from tests.bridge.test_cli_read_decode import cli, meter_args

CLOCK = "8/0-0:1.0.0/2"
LDN = "1/0-0:42.0.0/2"
SERIAL = "1/0-0:96.1.0/2"
VOLTAGE = "1-1:32.7.0"
CLOCK_BASE = "8/0-0:1.0.0/9"


def strict(text: bytes) -> Any:
    def refuse(literal: str) -> Any:
        raise AssertionError(f"non-strict JSON literal {literal}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
async def sim(nursery: trio.Nursery) -> tuple[Simulator, SimulatorPorts]:
    simulator = Simulator(SimulatorConfig(meters=1, port=0, seed=3))
    ports: SimulatorPorts = await nursery.start(simulator.serve)
    return simulator, ports


async def test_json_has_dates_as_dates_and_strings_as_text(
    sim: tuple[Simulator, SimulatorPorts],
) -> None:
    simulator, ports = sim
    result = await cli(
        "read", *meter_args(ports), "--password", "00000000", "--json",
        CLOCK, LDN, SERIAL, VOLTAGE, CLOCK_BASE,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    registers = {
        r["obis"] + "/" + str(i): r for i, r in enumerate(strict(result.stdout)["registers"])
    }
    clock, ldn, serial, voltage, base = registers.values()
    when = dt.datetime.fromisoformat(clock["value"])
    assert abs(when.timestamp() - dt.datetime.now(dt.UTC).timestamp()) < 120
    assert clock["type"] == "octet-string"
    assert ldn["value"] == simulator.meters[0].logical_device_name.decode()
    assert serial["value"] == simulator.meters[0].serial
    assert isinstance(voltage["value"], float)
    assert voltage["unit"] == "V"
    assert base["value"] == 1 and base["label"] == "internal-crystal"


async def test_table_for_people(sim: tuple[Simulator, SimulatorPorts]) -> None:
    simulator, ports = sim
    result = await cli(
        "read", *meter_args(ports), "--password", "00000000", "--table", CLOCK, LDN, VOLTAGE
    )
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    header = next(line for line in lines if line.startswith("OBIS"))
    assert header.split() == ["OBIS", "KEY", "VALUE", "TYPE"]
    by_obis = {line.split()[0]: line for line in lines if line[:1].isdigit()}
    assert "long-unsigned" in by_obis["1-1:32.7.0"]
    assert by_obis["1-1:32.7.0"].split()[3] == "V"
    assert simulator.meters[0].logical_device_name.decode() in by_obis["0-0:42.0.0"]
    year = str(dt.datetime.now(dt.UTC).year)
    assert f" {year}-" in by_obis["0-0:1.0.0"]


async def test_a_reply_that_does_not_decode_still_releases_the_association(
    sim: tuple[Simulator, SimulatorPorts], monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator, ports = sim
    original = CosemServer.handle

    def handle(self: CosemServer, apdu: bytes, client_sap: int, wall: float) -> bytes | None:
        reply = original(self, apdu, client_sap, wall)
        if apdu[:1] == b"\xc0":
            return b"\xc4\x07" + reply[2:]  # no such GET-response choice
        return reply

    monkeypatch.setattr(CosemServer, "handle", handle)
    result = await cli("read", *meter_args(ports), "--password", "00000000", VOLTAGE)
    assert result.returncode == 6, result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    counters = simulator.meters[0].counters
    assert counters.associations == 1
    assert counters.releases == 1
