"""Pollers next to hostile meters (raw sockets on 127.0.0.1): every cycle ends within its
budget, a violation is a level-2 recovery (re-association) or a level-3 one (reconnect), and a
good meter polled at the same time keeps delivering."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio

from bridge.poller import MeterPoller
from bridge.readings import Reading
from bridge.simulator.server import Simulator, SimulatorConfig, SimulatorPorts
from tests.bridge.hostile import serve_socket
from tests.bridge.test_poller import meter_config


@pytest.fixture
def hostile_ports() -> Iterator[dict[str, int]]:
    listeners = {mode: serve_socket(mode) for mode in ("endless", "drip", "deaf")}
    yield {mode: int(sock.getsockname()[1]) for mode, sock in listeners.items()}
    for sock in listeners.values():
        sock.close()


@pytest.mark.slow
async def test_hostile_meters_never_hold_a_poller(
    nursery: trio.Nursery, hostile_ports: dict[str, int]
) -> None:
    simulator = Simulator(SimulatorConfig(meters=1, port=0))
    ports: SimulatorPorts = await nursery.start(simulator.serve)
    readings: dict[str, list[Reading]] = {}

    def sink_for(name: str) -> Any:
        async def sink(reading: Reading) -> None:
            readings.setdefault(name, []).append(reading)

        return sink

    pollers = {
        "good": MeterPoller(
            meter_config(ports.meters[0], name="good", interval_s=1.0, timeout_s=0.5),
            sink_for("good"),
        )
    }
    for mode, port in hostile_ports.items():
        pollers[mode] = MeterPoller(
            meter_config(port, name=mode, interval_s=1.0, timeout_s=0.5),
            sink_for(mode),
            backoff_initial=0.1,
            backoff_max=0.5,
        )
    # Each cycle's budget: max(interval, 4 timeouts) = 2 s; the request deadline 0.5 x 4 = 2 s.
    start = trio.current_time()
    with trio.move_on_after(6.5):
        async with trio.open_nursery() as inner:
            for poller in pollers.values():
                inner.start_soon(poller.run)
    took = trio.current_time() - start
    assert len(readings.get("good", [])) >= 4
    for mode in hostile_ports:
        stats = pollers[mode].stats
        assert mode not in readings
        assert stats.failures >= 2, (mode, stats)
        assert stats.cycles >= 2, (mode, stats)
    # The endless segments were a protocol error: the association was opened again (level 2),
    # on a connection the meter keeps flooding, so the cycle then runs out of its budget.
    assert pollers["endless"].stats.reassociations >= 1
    # A segment every 2 s: the request's deadline or the cycle's budget (both 2 s) ends it.
    drip = pollers["drip"].stats
    assert drip.last_error is not None
    assert "overall deadline" in drip.last_error or "ran out of time" in drip.last_error
    assert took < 6.5 + 3 + 2  # the run, the shielded release, slack
