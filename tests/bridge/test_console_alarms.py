"""Alarms raised by real faults and cleared when the faults go, seen through the API, kept
across a restart, acknowledged, and published as the gateway device's attributes."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import trio

from tests.bridge.console_harness import ConsoleClient, console_config, start_console
from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_run_cli import bridge_process  # noqa: F401 (fixture)


def _active(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in data["active"]}


async def _wait_active(api: ConsoleClient, names: set[str], timeout: float) -> dict[str, Any]:
    data = await api.wait_until(
        "/api/v1/alarms", lambda d: names <= set(_active(d)), timeout, f"alarms {sorted(names)}"
    )
    return _active(data)


async def _wait_cleared(api: ConsoleClient, names: set[str], timeout: float) -> dict[str, Any]:
    data = await api.wait_until(
        "/api/v1/alarms",
        lambda d: not (names & set(_active(d))) and names <= {a["name"] for a in d["recent"]},
        timeout,
        f"{sorted(names)} cleared",
    )
    return {a["name"]: a for a in data["recent"]}


async def test_meter_fault_alarms_raise_clear_ack_and_survive_a_restart(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    sim, ports = await simulator(meters=3)
    config, port = console_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"m0": ports[0], "m1": ports[1], "m2": ports[2]},
        data_dir=tmp_path / "data",
        alarms={
            "window_s": 3.0,
            "no_reading_intervals": 4,
            "success_rate_min": 0.8,
            "resyncs_per_hour_max": 1.0,
        },
    )
    process, api = await start_console(bridge_process, config, port)
    await api.wait_until(
        "/api/v1/meters", lambda d: all(m["values"] for m in d["meters"]), 20, "first values"
    )
    assert _active((await api.get("/api/v1/alarms")).json) == {}

    sim.set_faults("0:silence=1000;2:garbage")
    # A wrong password, set through the API: the meter refuses the association.
    wrong = await api.call("PATCH", "/api/v1/meters/m1", {"password": "wrong-pw"})
    assert wrong.status == 200, wrong.text
    expected = {
        "meter.m0.no_reading",
        "meter.m0.success_low",
        "meter.m1.refused",
        "meter.m2.resyncs",
    }
    active = await _wait_active(api, expected, 30)
    assert "cycles succeeded" in active["meter.m0.success_low"]["message"]
    assert "refuses the association" in active["meter.m1.refused"]["message"]
    # Shown with the meter, and in the log.
    m1 = (await api.get("/api/v1/meters/m1")).json
    assert "meter.m1.refused" in m1["alarms"]
    assert process.events("alarm", alarm="meter.m1.refused")

    # Acknowledge: still listed (active) until it clears.
    refused_id = active["meter.m1.refused"]["id"]
    acked = await api.call("POST", f"/api/v1/alarms/{refused_id}/ack")
    assert acked.status == 200 and acked.json["acked"] is True and acked.json["active"] is True
    assert (await api.call("POST", "/api/v1/alarms/999999/ack")).status == 404
    assert (await api.call("POST", "/api/v1/alarms/x/ack")).status == 400
    listed = _active((await api.get("/api/v1/alarms")).json)
    assert listed["meter.m1.refused"]["acked"] is True

    # A restart keeps them: same alarm, same id, still acknowledged.
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0
    process, api = await start_console(bridge_process, config, port)
    restored = _active((await api.get("/api/v1/alarms")).json)
    assert restored["meter.m1.refused"]["id"] == refused_id
    assert restored["meter.m1.refused"]["acked"] is True
    # The service raises them again itself (the log says so).
    await process.wait_event("alarm", timeout=20, alarm="meter.m1.refused")
    await process.wait_event("alarm", timeout=20, alarm="meter.m2.resyncs")
    assert _active((await api.get("/api/v1/alarms")).json)["meter.m1.refused"]["id"] == refused_id

    # The faults go: every alarm clears itself.
    sim.clear_faults()
    right = await api.call("PATCH", "/api/v1/meters/m1", {"password": None})
    assert right.status == 200, right.text
    cleared = await _wait_cleared(api, expected, 60)
    assert cleared["meter.m1.refused"]["id"] == refused_id
    await process.wait_event("alarm_cleared", timeout=10, alarm="meter.m2.resyncs")
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0


async def test_delivery_alarms_when_the_broker_is_gone(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Any,
    simulator: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    _sim, ports = await simulator(meters=3)
    config, port = console_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"m0": ports[0], "m1": ports[1], "m2": ports[2]},
        data_dir=tmp_path / "data",
        publish={"outbox_max_rows": 100},
        defaults={"interval_s": 0.1, "timeout_s": 0.09},
        alarms={"window_s": 3.0, "outbox_high_fraction": 0.5},
    )
    process, api = await start_console(bridge_process, config, port)
    await api.wait_until(
        "/api/v1/status", lambda d: d["counters"]["readings_published"] > 5, 20, "delivery"
    )
    mosquitto.stop()
    expected = {"publisher.rate_low", "outbox.high", "outbox.overflow"}
    active = await _wait_active(api, expected, 30)
    assert "were published" in active["publisher.rate_low"]["message"]
    status = (await api.get("/api/v1/status")).json
    assert status["mqtt"]["connected"] is False
    assert status["outbox"]["dropped"] > 0 and status["outbox"]["oldest_unsent_age_s"] > 0

    # The broker comes back: the outbox drains, every alarm clears, and the gateway device's
    # attributes say so.
    mosquitto.start()
    attributes: Collector = collector(["v1/devices/me/attributes"])
    await _wait_cleared(api, expected, 40)

    def alarm_details() -> list[Any] | None:
        bodies = [json.loads(m.payload) for m in attributes.on("v1/devices/me/attributes")]
        details = [b["alarm_details"] for b in bodies if "alarm_details" in b]
        return details[-1] if details else None

    with trio.fail_after(20):
        while alarm_details() != []:
            await trio.sleep(0.1)
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0
