"""Profile backfill pacing on Trio's virtual clock: MeterPollers with a load profile against the
simulator over memory streams (``autojump_clock``), the meters' wall clock following the
virtual one. Every duration is virtual, so the cadence assertions are exact."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import attrs
import trio
from trio.testing import MockClock

from bridge.config import PRESETS, MeterConfig, ProfileConfig
from bridge.poller import MeterPoller
from bridge.readings import Reading
from bridge.simulator.server import Simulator, SimulatorConfig
from codec.obis import Obis
from tests.bridge.memnet import MemoryMeters

LOAD_PROFILE = Obis.parse("1-0:99.1.0")
ENERGY = "1-1:1.8.0"
#: 2025-11-30 12:07:30 UTC: not on a quarter hour.
T0 = 1_764_504_450.0
WEEK_H = 168


def quarter_hours(after: float, upto: float) -> list[int]:
    """Capture times (ms) of 15-minute entries in (after, upto]."""
    first = math.floor(after / 900) + 1
    last = math.floor(upto / 900)
    return [k * 900_000 for k in range(first, last + 1)]


@attrs.define(eq=False)
class Meter:
    """What one poller handed over: its polls (``sink``) and its profile ranges (``sink_many``),
    each with the Trio time it came."""

    polls: list[tuple[float, Reading]] = attrs.Factory(list)
    ranges: list[tuple[float, list[Reading]]] = attrs.Factory(list)

    async def sink(self, reading: Reading) -> None:
        self.polls.append((trio.current_time(), reading))

    async def sink_many(self, readings: Sequence[Reading]) -> None:
        self.ranges.append((trio.current_time(), list(readings)))

    @property
    def entries(self) -> list[int]:
        return [r.ts_ms for _, batch in self.ranges for r in batch]


def meter_config(name: str, port: int) -> MeterConfig:
    return MeterConfig(
        name=name,
        host="127.0.0.1",
        port=port,
        password="00000000",
        registers=PRESETS["field-meter"],
        interval_s=0.5,
        timeout_s=0.2,
        profiles=(ProfileConfig(obis=LOAD_PROFILE, backfill_hours=WEEK_H, chunk_hours=6),),
    )


async def test_a_week_is_read_one_range_per_pause_while_polls_keep_their_grid(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """Two meters, a week of entries each (672) in 6-hour ranges, every reply 20 ms late (a
    range then takes a good part of a pause): the ranges are spread over the pauses, one per
    pause at least and none that would make the next poll late, so every poll of both meters
    starts on its 0.5 s grid to the millisecond, none missed or failed, and every entry comes
    once, oldest first, with the meter's own value."""
    base = trio.current_time()

    def wall() -> float:
        return T0 + (trio.current_time() - base)

    sim = Simulator(SimulatorConfig(port=0, meters=2, faults="all:delay=0.02"), clock=wall)
    sim.set_faults("all:delay=0.02")
    net = MemoryMeters(sim, nursery)
    limiter = trio.CapacityLimiter(2)
    meters = {name: Meter() for name in ("m0", "m1")}
    pollers = {
        name: MeterPoller(
            meter_config(name, net.port(i)),
            meters[name].sink,
            sink_many=meters[name].sink_many,
            open_stream=net,
            wall_clock=wall,
            work_options={"limiter": limiter},
        )
        for i, name in enumerate(meters)
    }
    expected = quarter_hours(T0 - WEEK_H * 3600, T0)
    assert len(expected) == 672
    with trio.fail_after(120):
        async with trio.open_nursery() as running:
            for poller in pollers.values():
                running.start_soon(poller.run)
            while any(len(m.entries) < len(expected) for m in meters.values()):
                await trio.sleep(0.05)
            # Caught up: a few more polls, no more ranges.
            await trio.sleep(2.0)
            running.cancel_scope.cancel()
    for index, (name, meter) in enumerate(meters.items()):
        stats = pollers[name].stats
        assert (stats.missed, stats.failures) == (0, 0), stats
        assert stats.profile_entries == 672
        assert meter.entries == expected, name
        energy = sim.meter(index).energy_wh
        assert all(
            r.values[ENERGY] == energy(r.ts_ms / 1000) for _, batch in meter.ranges for r in batch
        )
        # 28 ranges of 6 hours (24 entries at most each) ...
        assert len(meter.ranges) >= 28
        assert max(len(batch) for _, batch in meter.ranges) <= 24
        # ... spread over the pauses: one range in each pause from the first poll on, none
        # before it, until caught up (each range takes more than half a pause here).
        poll_times = [t for t, _ in meter.polls]
        range_times = [t for t, _ in meter.ranges]
        per_pause = [
            sum(1 for t in range_times if a < t < b) for a, b in itertools.pairwise(poll_times)
        ]
        assert range_times[0] > poll_times[0]
        assert per_pause[: len(range_times)] == [1] * len(range_times), per_pause
        # The polls never waited for a range: every one started on the grid (the first one
        # associates first).
        ts = [r.ts_ms for _, r in meter.polls]
        assert 0 < ts[0] - round(T0 * 1000) < 500
        assert all(t == round(T0 * 1000) + 500 * k for k, t in enumerate(ts) if k), ts
        assert len(ts) >= len(range_times) + 4
        assert all(set(r.values) == {s.key for s in PRESETS["field-meter"]} for _, r in meter.polls)
