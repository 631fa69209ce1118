"""Against gurux_dlms as the meter: text, structure, NaN and enum values next to a voltage
register. ``read --json`` gives strict JSON with every value, and the plain register intact."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.bridge.gurux_meter import (
    ENUM,
    NAN,
    PASSWORD,
    SERIAL,
    SERIAL_TEXT,
    STRUCTURE,
    VOLTAGE,
    gurux_meter,
    read_args,
)
from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_cli_read_decode import cli
from tests.bridge.test_service import bridge_config, running, telemetry

pytestmark = pytest.mark.interop


def strict(text: bytes) -> Any:
    def refuse(literal: str) -> Any:
        raise AssertionError(f"non-strict JSON literal {literal}")

    return json.loads(text, parse_constant=refuse)


def one_per_cycle(stamps: list[int], interval_ms: int = 1000) -> bool:
    """One reading a cycle, none missed or doubled: consecutive readings a cycle apart. Not to
    the millisecond: on a busy machine the first cycle, before the steady state, may start
    late (869 ms to the next one was seen)."""
    return all(round((b - a) / interval_ms) == 1 for a, b in itertools.pairwise(stamps))


async def test_read_json_of_every_kind_of_value(monkeypatch: pytest.MonkeyPatch) -> None:
    with gurux_meter(monkeypatch) as port:
        result = await cli(
            "read", *read_args(port), "--json",
            VOLTAGE, f"1/{SERIAL}/2", f"1/{STRUCTURE}/2", NAN, f"1/{ENUM}/2",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    voltage, serial, structure, nan, enum = strict(result.stdout)["registers"]
    assert voltage["value"] == pytest.approx(230.12) and voltage["unit"] == "V"
    assert serial["value"] == SERIAL_TEXT
    assert structure["value"] == [1, "pair"]
    assert nan["value"] is None and nan["quality"] == "nan" and nan["type"] == "float32"
    assert enum["value"] == 3 and enum["type"] == "enum"


async def test_run_keeps_delivering_the_voltage_next_to_odd_values(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    registers = [
        {"key": "voltage", "obis": VOLTAGE},
        {"key": "pair", "obis": STRUCTURE, "class_id": 1},
        {"key": "nan", "obis": NAN},
        {"key": "mode", "obis": ENUM, "class_id": 1},
    ]
    with gurux_meter(monkeypatch) as port, trio.fail_after(30):
        sub = collector(["v1/gateway/telemetry", "v1/gateway/attributes"])
        config = bridge_config(
            tmp_path / "data", mosquitto, (port,),
            defaults={
                "transport": "wrapper", "client_sap": 16, "server_logical": 1,
                "password": PASSWORD.decode(), "interval_s": 1.0, "timeout_s": 0.5,
                "registers": registers,
                "attributes": [{"key": "serial", "obis": SERIAL, "class_id": 1}],
            },
        )  # fmt: skip
        async with running(config):
            await sub.wait_for(lambda ms: len(telemetry(sub)) >= 4, 20)
    for message in sub.messages:
        strict(message.payload)
    readings = telemetry(sub)
    stamps = [ts for _, ts, _ in readings]
    assert one_per_cycle(stamps), stamps
    for _, _, values in readings:
        assert values["voltage"] == pytest.approx(230.12)
        assert values["pair"] == [1, "pair"]
        assert "nan" not in values and values["nan_quality"] == "nan"
        assert values["mode"] == 3
    attributes = [strict(m.payload) for m in sub.on("v1/gateway/attributes")]
    assert {"m0": {"serial": SERIAL_TEXT}} in attributes
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


# -- a register configured with the wrong interface class ----------------------------------------
# gurux serves the serial number as a Data object (class 1). Asked for it as a Register (class 3,
# the default), it answers the GET-with-list with a result list that does not decode, and the
# single GET of the value with the invoke-id of an earlier request: no reply to that request ever
# comes. That register fails on its own, within about one reply timeout; the voltage still comes.


async def test_read_json_keeps_the_voltage_next_to_a_register_of_the_wrong_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with gurux_meter(monkeypatch) as port:
        started = trio.current_time()
        result = await cli(
            "read", *read_args(port), "--json", "--timeout", "1", "--request-timeout", "30",
            VOLTAGE, SERIAL,
        )  # fmt: skip
        elapsed = trio.current_time() - started
    assert result.returncode == 5, result.stderr.decode()  # some register failed
    voltage, serial = strict(result.stdout)["registers"]
    assert voltage["value"] == pytest.approx(230.12) and voltage["unit"] == "V"
    assert serial["key"] == SERIAL and "value" not in serial
    assert serial["error_code"] == "link.timeout", serial
    assert "no reply" in serial["error"]
    # One reply timeout (1 s) for the odd register, not the request's overall deadline (30 s).
    assert elapsed < 15, elapsed
    assert f"{SERIAL}: no reply" in result.stderr.decode()


async def test_run_delivers_the_voltage_every_cycle_next_to_a_register_of_the_wrong_class(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    registers = [{"key": "voltage", "obis": VOLTAGE}, {"key": "serial", "obis": SERIAL}]
    with gurux_meter(monkeypatch) as port, trio.fail_after(40):
        sub = collector(["v1/gateway/telemetry"])
        config = bridge_config(
            tmp_path / "data", mosquitto, (port,),
            defaults={
                "transport": "wrapper", "client_sap": 16, "server_logical": 1,
                "password": PASSWORD.decode(), "interval_s": 1.0, "timeout_s": 0.3,
                "registers": registers,
            },
        )  # fmt: skip
        async with running(config):
            await sub.wait_for(lambda ms: len(telemetry(sub)) >= 4, 30)
    for message in sub.messages:
        strict(message.payload)
    readings = telemetry(sub)
    stamps = [ts for _, ts, _ in readings]
    assert one_per_cycle(stamps), stamps
    for _, _, values in readings:
        assert values["voltage"] == pytest.approx(230.12)
        assert "serial" not in values
        assert values["serial_error"].startswith("link.timeout: no reply"), values
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert not [r for r in caplog.records if "cycle_failed" in r.getMessage()]
