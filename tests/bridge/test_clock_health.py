"""Clock health end to end: drift telemetry, the drift alarm, automatic sync within bounds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_rpc import running
from tests.bridge.test_service import bridge_config


def drifts(sub: Collector, meter: str) -> list[float]:
    out = []
    for message in sub.on("v1/gateway/telemetry"):
        for entry in json.loads(message.payload).get(meter, []):
            if "clock_drift_s" in entry["values"]:
                out.append(entry["values"]["clock_drift_s"])
    return out


async def test_drift_is_published_alarmed_and_corrected_within_bounds(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
) -> None:
    sim, ports = await simulator(meters=2)
    sim.meter(0).clock_offset = 100.0  # fast, within the bounds of automatic sync
    sim.meter(1).clock_offset = -5000.0  # too far off to be corrected without an operator
    sub = collector(["v1/gateway/#"])
    clock = {
        "check_s": 1,
        "drift_alarm_s": 30,
        "auto_sync": True,
        "sync_threshold_s": 5,
        "sync_max_s": 600,
    }
    config = bridge_config(tmp_path / "data", mosquitto, ports, defaults={"clock": clock})
    with trio.fail_after(40):
        async with running(config) as service:
            await sub.wait_for(lambda _m: len(drifts(sub, "m0")) >= 2, timeout=15)
            await sub.wait_for(lambda _m: len(drifts(sub, "m1")) >= 2, timeout=15)
            alarms = dict(service.all_alarms())
    m0, m1 = drifts(sub, "m0"), drifts(sub, "m1")
    assert 98 < m0[0] < 102, m0  # seen, alarmed, then set
    assert all(abs(d) < 2 for d in m0[1:]), m0
    assert abs(sim.meter(0).clock_offset) < 2
    assert "meter.m0.clock_drift" not in alarms  # cleared once the clock was set
    assert all(-5002 < d < -4998 for d in m1), m1
    assert sim.meter(1).clock_offset == -5000.0
    assert "meter.m1.clock_drift" in alarms
    assert "-5000" in alarms["meter.m1.clock_drift"]


async def test_no_automatic_sync_while_the_box_clock_is_unsynchronised(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
) -> None:
    sim, ports = await simulator(meters=1)
    sim.meter(0).clock_offset = 100.0
    sub = collector(["v1/gateway/#"])
    clock = {"check_s": 1, "auto_sync": True, "sync_threshold_s": 5}
    config = bridge_config(tmp_path / "data", mosquitto, ports, defaults={"clock": clock})
    with trio.fail_after(30):
        async with running(config, synchronised=False) as service:
            await sub.wait_for(lambda _m: len(drifts(sub, "m0")) >= 2, timeout=15)
            assert "meter.m0.clock_drift" in service.all_alarms()
    assert sim.meter(0).clock_offset == 100.0


def test_the_simulator_control_sets_the_meters_clocks() -> None:
    from bridge.simulator.control import handle_command
    from bridge.simulator.server import Simulator, SimulatorConfig

    sim = Simulator(SimulatorConfig(meters=3, port=0))
    assert handle_command(sim, {"cmd": "clock", "meters": "1-2", "offset_s": -90}) == {
        "ok": True,
        "meters": [1, 2],
    }
    assert [m.clock_offset for m in sim.meters] == [0.0, -90.0, -90.0]
    bad = handle_command(sim, {"cmd": "clock", "offset_s": "soon"})
    assert bad["ok"] is False and "offset_s" in bad["error"]
