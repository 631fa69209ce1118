"""Load-profile backfill end to end: the simulator's profile over TCP, the real outbox, a real
Mosquitto and a subscriber that sees what ThingsBoard would see.

The simulator and the bridge share a settable wall clock, so "the meter collected a day of
entries" is an exact set of capture times, and an outage can last hours in a second.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.config import BridgeConfig
from bridge.poller import MeterPoller
from bridge.profiles import FILENAME, HighWaterMarks
from bridge.service import BridgeService
from bridge.simulator.meter import MeterSettings
from bridge.simulator.server import Simulator, SimulatorConfig
from codec.obis import Obis
from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_service import bridge_config, events
from tests.bridge.waiting import all_delivered, wait_until

LOAD_PROFILE = "1-0:99.1.0"
ENERGY = "1-1:1.8.0"
AVERAGE_POWER = "1-1:1.5.0"
#: 2025-11-30 12:07:30 UTC: not on a quarter hour.
T0 = 1_764_504_450.0
#: The last entry the meter has at T0: 12:00:00.
T_LAST = 1_764_504_000_000


class Clock:
    """A wall clock the test sets; shared by the simulated meters and the bridge."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def start_simulator(
    nursery: trio.Nursery, clock: Clock, **settings: Any
) -> tuple[Simulator, tuple[int, ...]]:
    sim = Simulator(
        SimulatorConfig(meters=1, port=0, settings=MeterSettings(**settings)), clock=clock
    )
    ports = await nursery.start(sim.serve)
    return sim, ports.meters


@asynccontextmanager
async def running(config: BridgeConfig, clock: Clock) -> AsyncIterator[BridgeService]:
    async with trio.open_nursery() as nursery:
        service = BridgeService(config, handle_signals=False, poller_options={"wall_clock": clock})
        await nursery.start(service.run)
        try:
            yield service
        finally:
            service.stop()


def profile_entries(sub: Collector, meter: str = "m0") -> list[tuple[int, dict[str, Any]]]:
    """Every profile entry received (readings carrying the energy column), in arrival order."""
    out = []
    for message in sub.on("v1/gateway/telemetry"):
        for entry in json.loads(message.payload).get(meter, []):
            if ENERGY in entry["values"]:
                out.append((entry["ts"], entry["values"]))
    return out


def received(sub: Collector, meter: str = "m0") -> int:
    """Readings of ``meter`` received (register polls and profile entries)."""
    return sum(
        len(json.loads(message.payload).get(meter, []))
        for message in sub.on("v1/gateway/telemetry")
    )


async def more_polls_delivered(
    service: BridgeService, sub: Collector, polls: int, before: int = 0
) -> None:
    """Wait for ``polls`` more polls of m0, then for everything taken to be delivered."""
    poller = service.meters["m0"].poller
    assert poller is not None
    target = poller.stats.successes + polls
    await wait_until(lambda: poller.stats.successes >= target, 10, f"{polls} more polls")
    await all_delivered(service, lambda: received(sub), before)


async def more_cycles(poller: MeterPoller, cycles: int) -> None:
    """Wait for ``cycles`` more poll cycles, successful or not."""
    target = poller.stats.cycles + cycles
    await wait_until(lambda: poller.stats.cycles >= target, 10, f"{cycles} more poll cycles")


def quarter_hours(after: float, upto: float) -> list[int]:
    """Capture times (ms) of 15-minute entries in (after, upto]."""
    first = math.floor(after / 900) + 1
    last = math.floor(upto / 900)
    return [k * 900_000 for k in range(first, last + 1)]


def config_for(
    tmp_path: Path, broker: Mosquitto, ports: tuple[int, ...], **profile: Any
) -> BridgeConfig:
    return bridge_config(
        tmp_path / "data",
        broker,
        ports,
        defaults={"profiles": [{"obis": LOAD_PROFILE, "backfill_hours": 24, **profile}]},
    )


async def test_a_day_of_entries_is_delivered_once_with_its_own_timestamps(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    clock = Clock(T0)
    sim, ports = await start_simulator(nursery, clock)
    sub = collector(["v1/gateway/#"])
    config = config_for(tmp_path, mosquitto, ports)
    expected = quarter_hours(T0 - 24 * 3600, T0)
    assert len(expected) == 96 and expected[-1] == T_LAST
    with trio.fail_after(30):
        async with running(config, clock) as service:
            await sub.wait_for(lambda _m: len(profile_entries(sub)) >= 96, timeout=20)
            await more_polls_delivered(service, sub, 2)  # nothing more may come meanwhile
            (state,) = service.snapshot()["meters"]["m0"]["profiles"]
            assert (state["obis"], state["entries"], state["mark"]) == (LOAD_PROFILE, 96, T_LAST)
    entries = profile_entries(sub)
    assert [ts for ts, _ in entries] == expected
    meter = sim.meter(0)
    for ts, values in entries:
        assert values[ENERGY] == meter.energy_wh(ts / 1000)
        assert isinstance(values[AVERAGE_POWER], float)
        assert "clock_status" not in values  # the simulator's clock status is 0
    marks = HighWaterMarks(tmp_path / "data")
    assert marks.get("m0", Obis.parse(LOAD_PROFILE)) == expected[-1]
    assert (tmp_path / "data" / FILENAME).stat().st_mode & 0o077 == 0

    await all_delivered(service, lambda: received(sub))  # what the stop flushed, too
    before = received(sub)
    # A clean restart: a new association (a gap), a new read, nothing sent again.
    with trio.fail_after(30):
        async with running(config, clock) as service:
            await sub.wait_for(
                lambda _m: any(
                    r.poller is not None and r.poller.generation >= 1 and r.poller.stats.successes
                    for r in service.meters.values()
                ),
                timeout=10,
            )
            poller = service.meters["m0"].poller
            assert poller is not None
            await wait_until(lambda: poller.work.profiles[0].reads >= 1, 10, "a profile read")
            await more_polls_delivered(service, sub, 2, before)
    assert [ts for ts, _ in profile_entries(sub)] == expected


async def test_new_entries_follow_and_an_outage_of_broker_and_meter_leaves_no_hole(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    nursery: trio.Nursery,
) -> None:
    clock = Clock(T0)
    sim, ports = await start_simulator(nursery, clock)
    sub = collector(["v1/gateway/#"])
    config = config_for(tmp_path, mosquitto, ports, every_s=1)
    with trio.fail_after(60):
        async with running(config, clock) as service:
            await sub.wait_for(lambda _m: len(profile_entries(sub)) >= 96, timeout=20)
            clock.t += 900  # a quarter hour later: one new entry
            await sub.wait_for(lambda _m: len(profile_entries(sub)) >= 97, timeout=10)
            # The broker and the meter go away for six hours.
            mosquitto.stop()
            sim.set_faults("0:refuse")
            poller = service.meters["m0"].poller
            assert poller is not None
            # A few poll cycles before and after the six hours pass.
            await more_cycles(poller, 2)
            clock.t += 6 * 3600
            await more_cycles(poller, 2)
            sim.clear_faults()
            with trio.fail_after(20):
                while poller.work.profiles[0].mark != quarter_hours(T0, clock.t)[-1]:
                    await trio.sleep(0.1)
            mosquitto.start()
            end = clock.t
            await sub.wait_for(
                lambda _m: (
                    {ts for ts, _ in profile_entries(sub)}
                    >= set(quarter_hours(T0 - 24 * 3600, end))
                ),
                timeout=20,
            )
    delivered = [ts for ts, _ in profile_entries(sub)]
    expected = quarter_hours(T0 - 24 * 3600, end)
    assert sorted(set(delivered)) == expected  # no hole
    assert len(expected) == 96 + 1 + 24


async def test_a_meter_without_range_access_is_read_by_entry_number(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    clock = Clock(T0)
    sim, ports = await start_simulator(nursery, clock, profile_range_access=False)
    sub = collector(["v1/gateway/#"])
    # Ranges of 6 hours: the day is read in several overlapping chunks of entries.
    config = config_for(tmp_path, mosquitto, ports, chunk_hours=6, every_s=1)
    expected = quarter_hours(T0 - 24 * 3600, T0)
    with trio.fail_after(40):
        async with running(config, clock) as service:
            await sub.wait_for(lambda _m: len(profile_entries(sub)) >= 96, timeout=20)
            clock.t += 1800  # two more entries
            await sub.wait_for(lambda _m: len(profile_entries(sub)) >= 98, timeout=10)
            await more_polls_delivered(service, sub, 2)  # nothing more may come meanwhile
    delivered = [ts for ts, _ in profile_entries(sub)]
    assert delivered == expected + quarter_hours(T0, T0 + 1800)
    assert len(events(caplog, "profile_range_refused")) == 1
    meter = sim.meter(0)
    assert all(v[ENERGY] == meter.energy_wh(ts / 1000) for ts, v in profile_entries(sub))


async def test_large_gap_is_read_in_chunks_for_two_meters(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two days of entries (192) for each of two meters, in 6-hour ranges, through the service
    (its backfill slots, the outbox, the broker): every entry once, in order, no range larger
    than 6 hours. The pacing (one range per pause, polls on their grid meanwhile) is checked
    exactly on the virtual clock in test_profile_cadence.py."""
    caplog.set_level(logging.DEBUG, logger="bridge")
    clock = Clock(T0)
    sim = Simulator(SimulatorConfig(meters=2, port=0), clock=clock)
    ports = (await nursery.start(sim.serve)).meters
    sub = collector(["v1/gateway/#"])
    config = config_for(tmp_path, mosquitto, ports, backfill_hours=48, chunk_hours=6)
    with trio.fail_after(60):
        async with running(config, clock) as service:
            await sub.wait_for(
                lambda _m: all(len(profile_entries(sub, m)) >= 192 for m in ("m0", "m1")),
                timeout=40,
            )
            stats = {name: r.poller.stats for name, r in service.meters.items() if r.poller}
    ranges = events(caplog, "profile_entries")
    assert len(ranges) >= 2 * 8  # 2 days in 6-hour ranges, per meter
    assert max(r["entries"] for r in ranges) <= 24
    for name in ("m0", "m1"):
        assert [ts for ts, _ in profile_entries(sub, name)] == quarter_hours(T0 - 48 * 3600, T0)
        assert stats[name].profile_entries == 192 and stats[name].successes > 0, stats[name]


async def test_the_simulator_profile_period_sets_the_entries_spacing(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    nursery: trio.Nursery,
) -> None:
    clock = Clock(T0)
    _sim, ports = await start_simulator(nursery, clock, profile_period=60)
    sub = collector(["v1/gateway/#"])
    config = config_for(tmp_path, mosquitto, ports, backfill_hours=1)
    with trio.fail_after(30):
        async with running(config, clock) as service:
            await sub.wait_for(lambda _m: len(profile_entries(sub)) >= 60, timeout=20)
            await more_polls_delivered(service, sub, 2)  # nothing more may come meanwhile
    first = (math.floor((T0 - 3600) / 60) + 1) * 60_000
    assert [ts for ts, _ in profile_entries(sub)] == [first + k * 60_000 for k in range(60)]


async def test_a_last_range_just_short_of_now_is_read_to_now(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    nursery: trio.Nursery,
) -> None:
    """A window of 24 h and 36 s in 24-hour ranges leaves 36 s for a second range: that range
    must reach now (and find the events in it), not stop short of it again and again."""
    clock = Clock(T0)
    sim, ports = await start_simulator(nursery, clock)
    sim.meter(0).record_event(T0 - 10, 60)
    sub = collector(["v1/gateway/#"])
    config = bridge_config(
        tmp_path / "data",
        mosquitto,
        ports,
        defaults={
            "profiles": [
                {
                    "obis": "0-0:99.98.0",
                    "backfill_hours": 24.01,
                    "chunk_hours": 24,
                    "keys": {"0-0:96.11.0": "event_code"},
                }
            ]
        },
    )

    def events() -> list[tuple[int, int]]:
        return [
            (entry["ts"], entry["values"]["event_code"])
            for message in sub.on("v1/gateway/telemetry")
            for entry in json.loads(message.payload).get("m0", [])
            if "event_code" in entry["values"]
        ]

    with trio.fail_after(30):
        async with running(config, clock):
            await sub.wait_for(lambda _m: len(events()) >= 1, timeout=10)
    assert events() == [(int(T0 - 10) * 1000, 60)]
