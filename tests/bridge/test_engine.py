"""The polling engine (bridge.engine): pollers park their steady polls in it and take them back
for other work and for recovery. Real simulator code over socket pairs (the engine needs real
file descriptors), on Trio's virtual clock: every duration is virtual, so cadence assertions are
exact to the engine's tick."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

from bridge.engine import (
    BUSY_POLLS_PER_S,
    BUSY_TICK_S,
    COMMIT_LIMIT_S,
    HAND_OVER_S,
    TICK_S,
    PollEngine,
)
from bridge.poller import MeterPoller
from bridge.readings import Reading
from bridge.session import MeterSession
from codec.apdu import AttributeDescriptor
from codec.obis import Obis
from tests.bridge.memnet import MemoryMeters
from tests.bridge.test_poller import FIELD_KEYS, Sink, meter_config, virtual_ms

TICK_MS = TICK_S * 1000


@attrs.define(eq=False)
class EngineSink:
    """The engine's batch sink, feeding the same :class:`Sink` as the pollers' own cycles."""

    sink: Sink
    batches: list[int] = attrs.Factory(list)

    async def __call__(self, readings: Sequence[Reading]) -> None:
        self.batches.append(len(readings))
        for reading in readings:
            await self.sink(reading)


@attrs.define(eq=False)
class Rig:
    net: MemoryMeters
    engine: PollEngine
    sink: Sink
    nursery: trio.Nursery

    def poller(self, index: int, **overrides: Any) -> MeterPoller:
        overrides.setdefault("name", f"m{index}")
        options = {
            k: overrides.pop(k) for k in ("backoff_initial", "backoff_max") if k in overrides
        }
        return MeterPoller(
            meter_config(self.net.port(index), **overrides),
            self.sink,
            open_stream=self.net,
            wall_clock=virtual_ms,
            engine=self.engine,
            **options,
        )


@pytest.fixture
async def rig(nursery: trio.Nursery) -> Any:
    async def make(**config: Any) -> Rig:
        net = MemoryMeters.start(nursery, sockets=True, **config)
        sink = Sink()
        engine = PollEngine(EngineSink(sink), wall_clock=virtual_ms)
        await nursery.start(engine.run)
        return Rig(net, engine, sink, nursery)

    return make


def of(sink: Sink, meter: str) -> list[Reading]:
    return [r for r in sink.readings if r.meter == meter]


async def wait_for(sink: Sink, meter: str, count: int) -> None:
    while len(of(sink, meter)) < count:
        await trio.sleep(0.01)


async def start_stoppable(nursery: trio.Nursery, engine: PollEngine) -> trio.CancelScope:
    """Run ``engine`` in ``nursery`` under a scope of its own: cancel it to stop the engine
    alone (as the service stops it), with the pollers going on."""
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await engine.run(task_status=task_status)

    await nursery.start(run)
    return scope


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
async def test_steady_polls_run_in_the_engine_on_a_drift_free_grid(
    rig: Any, autojump_clock: MockClock, transport: str
) -> None:
    """Replies 50 ms late, 0.2 s interval: the polls after the first are the engine's, each
    cycle starts on the grid (within one engine tick), nothing is missed or failed, and the
    association is released (RLRQ) when the poller stops; over HDLC and over the TCP
    wrapper (each link's one-frame send of the steady request)."""
    with trio.fail_after(30):
        r = await rig(transport=transport)
        r.net.sim.set_faults("0:delay=0.05")
        poller = r.poller(0, interval_s=0.2, timeout_s=0.15, transport=transport)
        async with trio.open_nursery() as n:
            n.start_soon(poller.run)
            await wait_for(r.sink, "m0", 21)
            assert r.engine.parked == 1
            n.cancel_scope.cancel()
        ts = [x.ts_ms for x in of(r.sink, "m0")]
        base = ts[1] - 200
        errors = [t - (base + 200 * k) for k, t in enumerate(ts) if k >= 1]
        assert all(0 <= e <= TICK_MS + 1 for e in errors), errors
        assert all(set(x.values) == FIELD_KEYS for x in r.sink.readings)
        stats = poller.stats
        assert (stats.missed, stats.failures) == (0, 0)
        assert stats.successes == stats.readings == len(r.sink.readings)
        assert r.engine.polls >= 19  # every poll after the first association's
        # All but the engine's first poll decoded straight to values (codec.steady).
        assert r.engine.steady_polls == r.engine.polls - 1
        assert min(stats.latencies) >= 0.05 - 1e-9
        counters = r.net.sim.meter(0).counters
        assert (counters.releases, counters.connections) == (1, 1)
        assert r.engine.parked == 0


async def test_one_task_serves_many_meters_and_batches_their_readings(
    rig: Any, autojump_clock: MockClock
) -> None:
    """Twenty meters at the same 0.5 s interval: their polls are taken in shared engine
    wake-ups, so the sink gets batches of several readings, and every meter is on its grid."""
    with trio.fail_after(60):
        r = await rig(meters=20)
        pollers = [r.poller(i, interval_s=0.5, timeout_s=0.2) for i in range(20)]
        async with trio.open_nursery() as n:
            for p in pollers:
                n.start_soon(p.run)
            for i in range(20):
                await wait_for(r.sink, f"m{i}", 8)
            assert r.engine.parked == 20
            n.cancel_scope.cancel()
        assert max(r.engine.sink_batch.batches) > 1  # type: ignore[attr-defined]
        for i, p in enumerate(pollers):
            ts = [x.ts_ms for x in of(r.sink, f"m{i}")]
            gaps = [b - a for a, b in itertools.pairwise(ts[1:])]
            assert all(abs(g - 500) <= TICK_MS + 1 for g in gaps), (i, gaps)
            assert (p.stats.missed, p.stats.failures) == (0, 0)


@pytest.mark.parametrize(("meters", "busy"), [(6, False), (60, True)])
async def test_a_busy_engine_ticks_less_often(
    rig: Any, autojump_clock: MockClock, meters: int, busy: bool
) -> None:
    """At 0.1 s, 6 meters make 60 polls a second and 60 meters 600 (over
    BUSY_POLLS_PER_S): with replies 30 ms late, the busy engine (always a poll in flight)
    waits BUSY_TICK_S between its rounds, the quiet one TICK_S, and each poll starts within
    its engine's tick of its grid."""
    assert (meters * 10 >= BUSY_POLLS_PER_S) is busy
    tick_ms = (BUSY_TICK_S if busy else TICK_S) * 1000
    with trio.fail_after(120):
        r = await rig(meters=meters)
        r.net.sim.set_faults("all:delay=0.03")  # every poll in flight for 30 ms
        pollers = [r.poller(i, interval_s=0.1, timeout_s=0.08) for i in range(meters)]
        async with trio.open_nursery() as n:
            for p in pollers:
                n.start_soon(p.run)
            # 25 more polls each (2.5 s): two whole seconds counted with every meter parked.
            for i in range(meters):
                await wait_for(r.sink, f"m{i}", 28)
            assert r.engine.tick_s == (BUSY_TICK_S if busy else TICK_S)
            ticks, start = r.engine.ticks, trio.current_time()
            for i in range(meters):  # 20 more polls each: 2 s
                await wait_for(r.sink, f"m{i}", 48)
            elapsed = trio.current_time() - start
            ticks_per_s = (r.engine.ticks - ticks) / elapsed
            n.cancel_scope.cancel()
        assert elapsed < 2.1  # twenty polls of every meter took their two seconds
        # Every round of polls (all in phase) is in flight 30 ms: ~6 ticks of 5 ms, ~2 of 20.
        assert 0 < ticks_per_s <= 1000 / tick_ms + 1
        late = []
        for i, p in enumerate(pollers):
            ts = [x.ts_ms for x in of(r.sink, f"m{i}")[3:]]
            late += [(b - a) - 100 for a, b in itertools.pairwise(ts)]
            assert (p.stats.missed, p.stats.failures) == (0, 0)
        assert all(abs(x) <= tick_ms + 1 for x in late), max(late, key=abs)


async def test_a_faulty_meter_recovers_without_disturbing_its_neighbours(
    rig: Any, autojump_clock: MockClock
) -> None:
    """Meter 1's line corrupts frames, injects garbage and drops replies while it is in the
    engine: it recovers (in place, or handed back to its poller to re-associate) and keeps
    delivering; meters 0 and 2 are read every cycle on their grid."""
    with trio.fail_after(60):
        r = await rig(meters=3)
        pollers = [r.poller(i, interval_s=0.2, timeout_s=0.15) for i in range(3)]
        async with trio.open_nursery() as n:
            for p in pollers:
                n.start_soon(p.run)
            for i in range(3):
                await wait_for(r.sink, f"m{i}", 3)
            r.net.sim.set_faults("1:fcs=0.3,garbage=0.3,chunks=0.5,silence=0.4@0.05")
            await trio.sleep(6)
            r.net.sim.clear_faults()
            await trio.sleep(1)
            n.cancel_scope.cancel()
        faulty = pollers[1].stats
        assert faulty.recovered_in_place + faulty.reassociations > 0
        assert r.engine.errors > 0 or faulty.recovered_in_place > 0
        assert len(of(r.sink, "m1")) >= 10  # of 35 cycles, despite every kind of fault
        for i in (0, 2):
            ts = [x.ts_ms for x in of(r.sink, f"m{i}")]
            gaps = [b - a for a, b in itertools.pairwise(ts[1:])]
            assert all(abs(g - 200) <= TICK_MS + 1 for g in gaps), (i, gaps)
            assert (pollers[i].stats.missed, pollers[i].stats.failures) == (0, 0)


async def test_a_reset_connection_is_reopened_by_the_poller_and_polling_returns_to_the_engine(
    rig: Any, autojump_clock: MockClock
) -> None:
    with trio.fail_after(30):
        r = await rig()
        poller = r.poller(0, interval_s=0.2, backoff_initial=0.2, backoff_max=0.2)
        async with trio.open_nursery() as n:
            n.start_soon(poller.run)
            await wait_for(r.sink, "m0", 3)
            assert r.engine.parked == 1
            r.net.sim.set_faults("0:reset=1")
            while poller.stats.failures < 2:
                await trio.sleep(0.01)
            r.net.sim.clear_faults()
            taken = len(r.sink.readings)
            await wait_for(r.sink, "m0", taken + 5)
            assert r.engine.parked == 1
            n.cancel_scope.cancel()
        assert poller.stats.reconnects >= 2
        assert poller.stats.consecutive_failures == 0


async def test_work_between_polls_takes_the_meter_back_and_it_parks_again(
    rig: Any, autojump_clock: MockClock
) -> None:
    """An RPC-like request submitted while the meter is in the engine is served by the poller
    between two polls, on the same association; then the engine polls the meter again."""
    with trio.fail_after(30):
        r = await rig()
        poller = r.poller(0, interval_s=0.5)
        async with trio.open_nursery() as n:
            n.start_soon(poller.run)
            await wait_for(r.sink, "m0", 3)
            assert r.engine.parked == 1
            polls = r.engine.polls

            async def read_clock(session: MeterSession) -> Any:
                return await session.get(AttributeDescriptor(8, Obis(0, 0, 1, 0, 0, 255), 2))

            value = await poller.submit(read_clock, timeout=5)
            assert value.value is not None
            taken = len(r.sink.readings)
            await wait_for(r.sink, "m0", taken + 3)
            assert r.engine.parked == 1
            assert r.engine.polls > polls
            n.cancel_scope.cancel()
        assert poller.stats.requests == 1
        assert r.net.sim.meter(0).counters.connections == 1
        assert poller.stats.failures == 0


async def test_a_new_interval_applies_at_once_while_in_the_engine(
    rig: Any, autojump_clock: MockClock
) -> None:
    with trio.fail_after(30):
        r = await rig()
        poller = r.poller(0, interval_s=0.5)
        async with trio.open_nursery() as n:
            n.start_soon(poller.run)
            await wait_for(r.sink, "m0", 3)
            poller.set_interval(0.2)
            taken = len(r.sink.readings)
            await wait_for(r.sink, "m0", taken + 8)
            n.cancel_scope.cancel()
        ts = [x.ts_ms for x in of(r.sink, "m0")][taken + 1 :]
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        assert all(abs(g - 200) <= TICK_MS + 1 for g in gaps), gaps


async def test_cancelled_while_a_request_is_in_the_engine_still_releases(
    rig: Any, autojump_clock: MockClock
) -> None:
    with trio.fail_after(30):
        r = await rig()
        poller = r.poller(0, interval_s=1.0, timeout_s=0.5)
        counters = r.net.sim.meter(0).counters
        async with trio.open_nursery() as n:
            n.start_soon(poller.run)
            await wait_for(r.sink, "m0", 2)
            r.net.sim.set_faults("0:delay=0.2")
            requests = counters.requests
            while counters.requests == requests:
                await trio.sleep(0.005)
            n.cancel_scope.cancel()
        assert len(r.sink.readings) == 2
        assert counters.releases == 1, counters
        assert poller.stats.state == "stopped"
        assert r.engine.parked == 0


async def test_engine_stopping_hands_every_meter_back(rig: Any, autojump_clock: MockClock) -> None:
    """The pollers keep polling (the general way) when the engine is gone."""
    with trio.fail_after(30):
        r = await rig(meters=2)
        # A second engine the test can stop (the rig's own runs until the test ends).
        second = PollEngine(EngineSink(r.sink), wall_clock=virtual_ms)
        r.engine = second
        async with trio.open_nursery() as n:
            engine_scope = await start_stoppable(n, second)
            pollers = [r.poller(i, interval_s=0.2) for i in range(2)]
            for p in pollers:
                n.start_soon(p.run)
            for i in range(2):
                await wait_for(r.sink, f"m{i}", 3)
            assert second.parked == 2
            engine_scope.cancel()
            taken = len(r.sink.readings)
            for i in range(2):
                await wait_for(r.sink, f"m{i}", len(of(r.sink, f"m{i}")) + 5)
            assert second.parked == 0
            assert not second.accepts(pollers[0])
            n.cancel_scope.cancel()
        assert len(r.sink.readings) >= taken + 10
        assert all(p.stats.failures <= 1 for p in pollers)


async def test_a_meter_closing_an_idle_connection_between_polls_costs_no_cycle(
    rig: Any, autojump_clock: MockClock
) -> None:
    """The meter drops its idle connection 0.4 s after each poll (no keepalive configured):
    the engine sees it between polls and hands the meter back without a failed cycle; every
    poll is taken, on its grid, each on a new connection."""
    from bridge.simulator.meter import MeterSettings

    with trio.fail_after(30):
        r = await rig(settings=MeterSettings(inactivity_timeout=0.4))
        poller = r.poller(0, interval_s=1.0, timeout_s=0.3, inactivity_timeout_s=0)
        async with trio.open_nursery() as n:
            n.start_soon(poller.run)
            await wait_for(r.sink, "m0", 6)
            n.cancel_scope.cancel()
        assert (poller.stats.failures, poller.stats.missed) == (0, 0)
        counters = r.net.sim.meter(0).counters
        assert counters.inactivity_closes >= 4
        assert counters.connections >= 5
        ts = [x.ts_ms for x in of(r.sink, "m0")]
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        assert all(abs(g - 1000) <= TICK_MS + 1 for g in gaps), gaps


async def test_steady_readings_equal_the_general_paths_for_every_kind_of_register(
    rig: Any, autojump_clock: MockClock
) -> None:
    """A meter whose list has a register it does not have (an error of that register) and a
    device attribute (its serial, a text): the readings the engine decodes straight to values
    are the ones the general path gives for the same replies (same keys, errors, attributes)."""
    from bridge.config import RegisterConfig

    registers = (
        *meter_config(0).registers,
        RegisterConfig(key="missing", obis=Obis.parse("1.0.99.99.0.255"), class_id=3),
    )
    with trio.fail_after(30):
        r = await rig()
        serial = RegisterConfig(key="serial", obis=Obis.parse("0.0.96.1.0.255"), class_id=1)
        poller = r.poller(0, interval_s=0.2, registers=registers, attributes=(serial,))
        async with trio.open_nursery() as n:
            n.start_soon(poller.run)
            await wait_for(r.sink, "m0", 12)
            n.cancel_scope.cancel()
        assert r.engine.steady_polls >= 8
        first, *rest = of(r.sink, "m0")  # the first: the poller's own, general read
        for reading in rest:
            assert set(reading.values) == set(first.values) == FIELD_KEYS
            assert dict(reading.errors) == dict(first.errors)
            assert set(reading.errors) == {"missing"}
            assert dict(reading.quality) == dict(first.quality)
            assert set(reading.attributes) == {"serial"}
            assert reading.attributes == first.attributes
        assert {k: v for k, v in poller.units.items() if k in FIELD_KEYS} == {
            "voltage_l1": "V", "current_l1": "A", "frequency": "Hz",
            "active_power": "W", "active_energy": "Wh",
        }  # fmt: skip


async def test_readings_taken_when_the_engine_stops_are_all_committed(
    rig: Any, autojump_clock: MockClock
) -> None:
    """The sink (the outbox) is slow when the engine is stopped: the batch being committed
    finishes, and the readings taken meanwhile are committed too; none is lost."""
    with trio.fail_after(30):
        r = await rig()
        committed: list[Reading] = []
        stalls = [0]

        async def slow_sink(readings: Sequence[Reading]) -> None:
            if stalls[0] < 1 and len(committed) >= 3:
                stalls[0] += 1
                await trio.sleep(1.0)  # a slow commit; polls go on meanwhile
            committed.extend(readings)

        engine = PollEngine(slow_sink, wall_clock=virtual_ms)
        r.engine = engine
        async with trio.open_nursery() as n:
            engine_scope = await start_stoppable(n, engine)
            poller = r.poller(0, interval_s=0.1)
            n.start_soon(poller.run)
            while stalls[0] == 0:
                await trio.sleep(0.01)
            await trio.sleep(0.5)  # five more polls taken while the commit is stalled
            engine_scope.cancel()
            await trio.sleep(2)
            taken = engine.polls
            n.cancel_scope.cancel()
        engine_readings = [x for x in committed]
        assert taken >= 8
        assert len(engine_readings) == taken, (len(engine_readings), taken)


async def test_a_sink_slower_than_the_stop_limit_loses_nothing_while_running(
    rig: Any, autojump_clock: MockClock
) -> None:
    """The outbox (or a worker's pipe to the service) stalls for a minute while the engine
    runs: the engine waits for it - nothing taken is dropped - and polls on afterwards."""
    with trio.fail_after(300):
        r = await rig()
        committed: list[Reading] = []
        stalled = [False]

        async def stalling_sink(readings: Sequence[Reading]) -> None:
            if not stalled[0] and len(committed) >= 3:
                stalled[0] = True
                await trio.sleep(6 * COMMIT_LIMIT_S)
            committed.extend(readings)

        engine = PollEngine(stalling_sink, wall_clock=virtual_ms)
        r.engine = engine
        async with trio.open_nursery() as n:
            await n.start(engine.run)
            poller = r.poller(0, interval_s=0.5)
            n.start_soon(poller.run)
            while not stalled[0]:
                await trio.sleep(0.01)
            await trio.sleep(6 * COMMIT_LIMIT_S + 5)
            taken = engine.polls
            n.cancel_scope.cancel()
        assert taken > 6 * COMMIT_LIMIT_S / 0.5  # polling went on
        assert len(committed) == taken
        assert len({x.ts_ms for x in committed}) == len(committed)


async def test_readings_are_handed_over_every_few_ticks_and_at_once_by_a_sink_that_can(
    rig: Any, autojump_clock: MockClock
) -> None:
    """Polls always in flight (replies 45 ms late, every 50 ms): the readings go to
    the sink at most every HAND_OVER_S, none later than HAND_OVER_S + a tick after its reply;
    a sink that cannot take them at once (every third call) gets them through ``sink_batch``
    instead; every reading arrives exactly once and each meter's in order."""
    with trio.fail_after(30):
        r = await rig(meters=3)
        r.net.sim.set_faults("0:delay=0.045;1:delay=0.045;2:delay=0.045")
        arrived: list[tuple[str, int, float, str]] = []  # meter, ts, when, which way
        calls: list[float] = []

        def sink_nowait(readings: Sequence[Reading]) -> bool:
            calls.append(trio.current_time())
            if len(calls) % 3 == 0:
                return False
            arrived.extend((x.meter, x.ts_ms, trio.current_time(), "nowait") for x in readings)
            return True

        async def sink_batch(readings: Sequence[Reading]) -> None:
            await trio.sleep(0.003)  # a commit takes a while; polls go on meanwhile
            arrived.extend((x.meter, x.ts_ms, trio.current_time(), "batch") for x in readings)

        engine = PollEngine(sink_batch, sink_nowait=sink_nowait, wall_clock=virtual_ms)
        r.engine = engine
        async with trio.open_nursery() as n:
            engine_scope = await start_stoppable(n, engine)
            pollers = [r.poller(i, interval_s=0.05, timeout_s=0.049) for i in range(3)]
            for p in pollers:
                n.start_soon(p.run)
            while engine.polls < 120:
                await trio.sleep(0.01)
            engine_scope.cancel()
            await trio.sleep(0.5)
            n.cancel_scope.cancel()
        assert engine.steady_polls > 100
        # The engine's readings: each once, each meter's in order, whichever way they went.
        mine = arrived[len(arrived) - engine.polls :]
        assert {way for *_, way in mine} == {"nowait", "batch"}
        for i in range(3):
            ts = [t for m, t, *_ in arrived if m == f"m{i}"]
            assert ts == sorted(set(ts)), i
        # Handed over at most every HAND_OVER_S (several ticks) while polls are in flight...
        assert HAND_OVER_S >= 3 * TICK_S
        gaps = [b - a for a, b in itertools.pairwise(calls[1:-1])]
        assert min(gaps) >= HAND_OVER_S - 1e-9, gaps
        # ... and never long after the reply came (taken at ts + 45 ms, within a tick).
        for _m, ts, when, way in mine:
            if way == "nowait":
                assert when - (ts / 1000 + 0.045) <= HAND_OVER_S + 2 * TICK_S + 1e-6, (ts, when)


async def test_an_engine_going_idle_hands_its_readings_over_at_once(
    rig: Any, autojump_clock: MockClock
) -> None:
    """Two meters polled together, the second answering 10 ms after the first: the first
    reading is handed over at once, the second too although the last hand-over was only 10 ms
    before, since nothing is in flight any more (no waiting for the next poll a second later)."""
    with trio.fail_after(30):
        r = await rig(meters=2)
        r.net.sim.set_faults("1:delay=0.01")
        handed: list[tuple[str, int, float]] = []

        def sink_nowait(readings: Sequence[Reading]) -> bool:
            handed.extend((x.meter, x.ts_ms, trio.current_time()) for x in readings)
            return True

        async def sink_batch(_readings: Sequence[Reading]) -> None:
            raise AssertionError("a sink that takes readings at once is never awaited")

        engine = PollEngine(sink_batch, sink_nowait=sink_nowait, wall_clock=virtual_ms)
        r.engine = engine
        await r.nursery.start(engine.run)
        pollers = [r.poller(i, interval_s=1.0, timeout_s=0.3) for i in range(2)]
        async with trio.open_nursery() as n:
            for p in pollers:
                n.start_soon(p.run)
            while engine.polls < 10:
                await trio.sleep(0.01)
            n.cancel_scope.cancel()
        assert len(handed) == engine.polls
        m1 = [(ts, when) for m, ts, when in handed if m == "m1"]
        assert len(m1) >= 4
        for ts, when in m1:
            assert when - (ts / 1000 + 0.01) <= TICK_S + 1e-6, (ts, when)


@pytest.mark.slow
async def test_on_the_system_clock_the_engine_wakes_by_its_timer(rig: Any) -> None:
    """Real time (so marked slow): the engine's ticks and waits come from its timerfd, and the
    steady polls run as on the virtual clock (each meter read every cycle)."""
    with trio.fail_after(60):
        r = await rig(meters=3)
        assert r.engine._timer is not None
        pollers = [r.poller(i, interval_s=0.3, timeout_s=0.25) for i in range(3)]
        async with trio.open_nursery() as n:
            for p in pollers:
                n.start_soon(p.run)
            for i in range(3):
                await wait_for(r.sink, f"m{i}", 8)
            n.cancel_scope.cancel()
        assert r.engine.steady_polls >= 15
        assert r.engine.timer_wakes >= 10  # the ticks while polls were in flight at least
        for i, p in enumerate(pollers):
            assert p.stats.failures == 0, i
            ts = [x.ts_ms for x in of(r.sink, f"m{i}")]
            assert len(ts) >= 8
