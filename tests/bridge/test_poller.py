"""MeterPoller against the real simulator code over in-memory streams, on Trio's virtual clock
(``autojump_clock``): cadence, overruns, keepalive, circuit breaker, backoff with jitter,
release on the way out. Nothing here depends on the machine's speed: every duration below is
virtual, so the assertions are exact to the millisecond."""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

from bridge.config import PRESETS, MeterConfig
from bridge.poller import MeterPoller
from bridge.readings import Reading
from bridge.simulator.meter import MeterSettings
from bridge.simulator.server import Simulator, SimulatorConfig
from tests.bridge.memnet import MemoryMeters
from tests.bridge.test_service import check_plausible

FIELD_KEYS = {r.key for r in PRESETS["field-meter"]}


def virtual_ms() -> float:
    """The poller's wall clock in these tests: Trio's virtual clock."""
    return trio.current_time()


def poller_for(meters: MemoryMeters, meter: MeterConfig, sink: Sink, **options: Any) -> MeterPoller:
    return MeterPoller(meter, sink, open_stream=meters, wall_clock=virtual_ms, **options)


@pytest.fixture
def meters(nursery: trio.Nursery) -> Any:
    """Factory: ``meters(**simulator_config)`` -> :class:`MemoryMeters`. Each test also takes
    ``autojump_clock`` (pytest-trio runs a test on the clock among its own arguments)."""

    def make(**config: Any) -> MemoryMeters:
        return MemoryMeters.start(nursery, **config)

    return make


def meter_config(port: int, **overrides: Any) -> MeterConfig:
    """A field meter as the simulator serves it (LLS password 00000000)."""
    settings: dict[str, Any] = {
        "name": "m0",
        "host": "127.0.0.1",
        "port": port,
        "password": "00000000",
        "registers": PRESETS["field-meter"],
        "interval_s": 0.2,
        "timeout_s": 0.15,
    }
    settings.update(overrides)
    return MeterConfig(**settings)


@attrs.define(eq=False)
class Sink:
    """Collects readings with the Trio time each was handed over; can stall once."""

    readings: list[Reading] = attrs.Factory(list)
    times: list[float] = attrs.Factory(list)
    stall_at: int | None = None
    stall_s: float = 0.0

    async def __call__(self, reading: Reading) -> None:
        self.readings.append(reading)
        self.times.append(trio.current_time())
        if self.stall_at is not None and len(self.readings) == self.stall_at:
            # An outbox commit that hangs (a slow disk): the cycle overruns in the sink.
            await trio.sleep(self.stall_s)

    async def wait_for(self, count: int) -> None:
        while len(self.readings) < count:
            await trio.sleep(0.01)


async def run_for(poller: MeterPoller, until: Callable[[], Any]) -> None:
    """Run the poller until ``await until()`` returns, then cancel it (it releases)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller.run)
        await until()
        nursery.cancel_scope.cancel()


async def test_cadence_is_drift_free_when_replies_are_slow(
    meters: Any, autojump_clock: MockClock
) -> None:
    """Each reply is 50 ms late; a loop that slept ``interval`` after the work would drift
    by 50 ms per cycle (1 s over 20 cycles). Cycle k must start at start + k * interval."""
    with trio.fail_after(20):
        net = meters(faults="0:delay=0.05")
        net.sim.set_faults("0:delay=0.05")
        sink = Sink()
        poller = poller_for(net, meter_config(net.port(0), interval_s=0.2, timeout_s=0.15), sink)
        await run_for(poller, lambda: sink.wait_for(21))
        ts = [r.ts_ms for r in sink.readings]
        # Cycle 0 associates first (two more slow replies); the grid starts with cycle 1.
        base = ts[1] - 200
        errors = [t - (base + 200 * k) for k, t in enumerate(ts) if k >= 1]
        assert max(abs(e) for e in errors) <= 1, errors
        assert all(r.meter == "m0" and set(r.values) == FIELD_KEYS for r in sink.readings)
        stats = poller.stats
        assert (stats.missed, stats.failures) == (0, 0)
        assert stats.successes == stats.readings == len(sink.readings)
        assert min(stats.latencies) >= 0.05 - 1e-9  # the delay really applied to every read
        # Cancelling the poller released the association (RLRQ) before closing.
        assert net.sim.meter(0).counters.releases == 1
        assert net.sim.meter(0).counters.connections == 1


async def test_stalled_cycle_is_counted_as_missed_not_made_up(
    meters: Any, autojump_clock: MockClock
) -> None:
    """The sink (the outbox) hangs for 2.8 intervals in cycle 4: the two cycles that could not
    start within half an interval are counted as missed and skipped; the next readings are
    back on the grid, none squeezed in between."""
    with trio.fail_after(20):
        net = meters()
        sink = Sink(stall_at=4, stall_s=0.56)
        poller = poller_for(net, meter_config(net.port(0), interval_s=0.2), sink)
        await run_for(poller, lambda: sink.wait_for(10))
        assert poller.stats.missed == 2
        assert poller.stats.failures == 0
        ts = [r.ts_ms for r in sink.readings]
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        # One gap of 3 intervals where the two cycles were missed, the others one interval.
        assert sorted(gaps)[-1] == pytest.approx(600, abs=2), gaps
        assert all(g == pytest.approx(200, abs=2) for g in sorted(gaps)[:-1]), gaps
        base = ts[0]
        assert all((t - base + 2) % 200 < 4 for t in ts), f"off the grid: {ts}"


async def test_slow_meter_overruns_its_interval_and_still_delivers(
    meters: Any, autojump_clock: MockClock
) -> None:
    """A three-phase meter with 32-byte HDLC frames whose line turns slow (100 ms per reply)
    needs ~0.5 s per read with a 0.3 s interval. Every read still succeeds (no "ran out of
    time" failures); the cycles that fall inside a read are missed, and readings come every
    second tick, on the grid."""
    with trio.fail_after(20):
        net = meters(settings=MeterSettings(model="three-phase"))
        sink = Sink()
        meter = meter_config(
            net.port(0),
            registers=PRESETS["three-phase"],
            interval_s=0.3,
            timeout_s=0.2,
            hdlc_max_info=32,
        )
        poller = poller_for(net, meter, sink)

        async def slow_down_then_wait() -> None:
            await sink.wait_for(2)
            net.sim.set_faults("0:delay=0.1")
            await sink.wait_for(8)

        await run_for(poller, slow_down_then_wait)
        stats = poller.stats
        assert stats.failures == 0, stats.last_error
        assert stats.successes == 8
        slow = list(stats.latencies)[3:]
        assert min(slow) > 0.3, slow  # these reads really overran the interval
        assert stats.missed >= 4
        ts = [r.ts_ms for r in sink.readings]
        gaps = [b - a for a, b in itertools.pairwise(ts[3:])]
        assert all(g == pytest.approx(600, abs=2) for g in gaps), gaps
        assert len(sink.readings[-1].values) == len(PRESETS["three-phase"])


@pytest.mark.parametrize("keepalive", [True, False], ids=["keepalive", "no-keepalive"])
async def test_keepalive_holds_the_association_across_long_intervals(
    meters: Any, keepalive: bool, autojump_clock: MockClock
) -> None:
    """The meter drops a link idle for 0.4 s; polls are 1 s apart. With the meter's
    inactivity timeout configured, clock reads in between keep the one association alive;
    without it (the control case) the meter drops the link between polls."""
    with trio.fail_after(20):
        net = meters(settings=MeterSettings(inactivity_timeout=0.4))
        sink = Sink()
        meter = meter_config(
            net.port(0),
            interval_s=1.0,
            timeout_s=0.3,
            inactivity_timeout_s=0.4 if keepalive else 60,
        )
        poller = poller_for(net, meter, sink)
        await run_for(poller, lambda: sink.wait_for(3))
        counters = net.sim.meter(0).counters
        stats = poller.stats
        assert stats.successes == 3
        assert stats.failures == 0
        if keepalive:
            assert counters.inactivity_closes == 0
            assert (counters.connections, counters.associations) == (1, 1)
            assert stats.reconnects == 0 and stats.reassociations == 0
            # 2 s between the first and the last poll: four clock reads in each 1 s gap.
            assert stats.keepalives >= 8
        else:
            # The dropped connection is found dead at the next poll and opened again at once,
            # within the cycle: no reading is lost, but every poll pays a new association.
            assert counters.inactivity_closes == 2
            assert counters.connections == 3
            assert stats.reconnects == 2
            assert stats.keepalives == 0


async def test_circuit_breaker_opens_with_an_alarm_and_closes_when_the_meter_is_back(
    meters: Any, autojump_clock: MockClock
) -> None:
    with trio.fail_after(30):
        net = meters()
        sink = Sink()
        alarms: list[tuple[str, bool, str]] = []
        poller = poller_for(
            net,
            meter_config(net.port(0), interval_s=0.1, timeout_s=0.05),
            sink,
            on_alarm=lambda name, active, message: alarms.append((name, active, message)),
            breaker_threshold=3,
            backoff_initial=0.1,
            backoff_max=0.4,
            rng=random.Random(1),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run)
            await sink.wait_for(2)
            net.sim.set_faults("0:silence=1000")  # the meter stops answering
            while not poller.stats.circuit_open:
                await trio.sleep(0.01)
            assert poller.stats.consecutive_failures == 3
            assert poller.stats.circuit_opens == 1
            assert len(alarms) == 1
            name, active, message = alarms[0]
            assert (name, active) == ("meter.m0.failing", True)
            assert "m0" in message and "3 cycles in a row" in message
            # While open, the meter is tried at the backoff's pace (<= 0.4 s * 1.5, each
            # attempt taking up to the cycle budget of 4 timeouts), not every 0.1 s tick.
            failures = poller.stats.consecutive_failures
            await trio.sleep(1.0)
            tried = poller.stats.consecutive_failures - failures
            assert 1 <= tried <= 4, tried
            assert len(alarms) == 1, "the alarm is raised once, not at every failure"
            taken = len(sink.readings)
            net.sim.clear_faults()
            while poller.stats.circuit_open:
                await trio.sleep(0.01)
            await sink.wait_for(taken + 3)
            nursery.cancel_scope.cancel()
        assert [(n, a) for n, a, _ in alarms] == [
            ("meter.m0.failing", True),
            ("meter.m0.failing", False),
        ]
        assert poller.stats.consecutive_failures == 0
        assert poller.stats.state == "stopped"
        # The meter came back by re-association or reconnection; both are counted.
        assert poller.stats.reassociations + poller.stats.reconnects >= 1


async def test_failing_meters_back_off_exponentially_with_jitter(
    meters: Any, autojump_clock: MockClock
) -> None:
    """Four meters that accept the connection and hang up at once. Each poller's retries must
    space out (doubling) and the four must not retry in lockstep (each has its own jitter)."""
    net = meters(meters=4)
    net.accept = lambda _index: False
    with trio.fail_after(30):
        master = random.Random(5)
        pollers = [
            poller_for(
                net,
                meter_config(net.port(i), name=f"m{i}", interval_s=0.02, timeout_s=0.015),
                Sink(),
                backoff_initial=0.1,
                backoff_max=10.0,
                rng=random.Random(master.random()),  # as the service seeds them
            )
            for i in range(4)
        ]
        attempts: dict[int, list[float]] = {i: [] for i in range(4)}
        async with trio.open_nursery() as polling:
            for poller in pollers:
                polling.start_soon(poller.run)
            while min(len(a) for a in attempts.values()) < 6:
                await trio.sleep(0.02)
                for i in attempts:
                    attempts[i] = [t for index, t in net.connects if index == i]
            polling.cancel_scope.cancel()
    for index, times in attempts.items():
        gaps = [b - a for a, b in itertools.pairwise(times)][:5]
        base = [0.1 * 2**k for k in range(len(gaps))]
        # Each delay is base * [0.5, 1.5), rounded up to the next 20 ms tick.
        for gap, b in zip(gaps, base, strict=True):
            assert 0.5 * b - 1e-6 <= gap <= 1.5 * b + 0.02 + 1e-6, (index, gaps)
        assert gaps[4] > gaps[1], f"meter {index} does not back off: {gaps}"
        ratios = [g / b for g, b in zip(gaps, base, strict=True)]
        assert statistics.pstdev(ratios) > 0.02, f"meter {index}: no jitter in {ratios}"
    # Not in lockstep: the 5th attempts of the four meters are spread out in time.
    fifth = sorted(times[4] for times in attempts.values())
    assert fifth[-1] - fifth[0] > 0.03, fifth
    assert all(p.stats.consecutive_failures >= 6 for p in pollers)
    assert all(p.stats.successes == 0 for p in pollers)


async def test_refused_connection_backs_off_then_recovers(
    meters: Any, autojump_clock: MockClock
) -> None:
    """A meter whose port refuses connections fails its cycles with the OS's reason, backs
    off, and is read again on the next attempt once it accepts."""
    with trio.fail_after(30):
        net = meters()
        net.refusing.add(0)
        sink = Sink()
        poller = poller_for(
            net,
            meter_config(net.port(0), interval_s=0.1, timeout_s=0.05),
            sink,
            backoff_initial=0.2,
            backoff_max=0.2,
            rng=random.Random(3),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run)
            while poller.stats.consecutive_failures < 3:
                await trio.sleep(0.01)
            assert "Connection refused" in (poller.stats.last_error or "")
            assert sink.readings == []
            net.refusing.clear()
            await sink.wait_for(2)
            nursery.cancel_scope.cancel()
        refused = [t for _i, t in net.connects][:4]
        gaps = [b - a for a, b in itertools.pairwise(refused)]
        # Backoff 0.2 s * [0.5, 1.5), on the 0.1 s grid: never every tick.
        assert all(g >= 0.1 - 1e-6 for g in gaps), gaps
        assert poller.stats.failures >= 3
        assert poller.stats.consecutive_failures == 0


async def test_reset_connection_is_reopened_and_reading_resumes(
    meters: Any, autojump_clock: MockClock
) -> None:
    """The meter resets the connection in the middle of every reply for a while: the poller
    fails those cycles (a reused connection found dead is reopened at once, and reset again),
    then reads on a new connection as soon as the meter behaves."""
    with trio.fail_after(20):
        net = meters()
        sink = Sink()
        poller = poller_for(
            net,
            meter_config(net.port(0), interval_s=0.2),
            sink,
            backoff_initial=0.2,
            backoff_max=0.2,
        )

        async def reset_then_wait() -> None:
            await sink.wait_for(2)
            net.sim.set_faults("0:reset=1")
            while poller.stats.failures < 2:
                await trio.sleep(0.01)
            taken = len(sink.readings)
            net.sim.clear_faults()
            await sink.wait_for(taken + 3)

        await run_for(poller, reset_then_wait)
        stats = poller.stats
        assert "broke" in (stats.last_error or "") or "closed" in (stats.last_error or "")
        assert stats.reconnects >= 2
        assert net.sim.meter(0).counters.connections == len(net.connects) >= 3
        assert stats.consecutive_failures == 0 and stats.state == "stopped"
        assert stats.successes == len(sink.readings)


async def test_cancelled_in_the_middle_of_a_read_still_releases(
    meters: Any, autojump_clock: MockClock
) -> None:
    """Shutdown or reload may cancel a poller while a request is out. The release is shielded
    and takes the late reply first, so the meter still gets a proper RLRQ, not just a DISC."""
    with trio.fail_after(20):
        net = meters()
        sink = Sink()
        poller = poller_for(net, meter_config(net.port(0), interval_s=1.0, timeout_s=0.5), sink)
        counters = net.sim.meter(0).counters
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run)
            await sink.wait_for(1)
            net.sim.set_faults("0:delay=0.2")
            requests = counters.requests
            while counters.requests == requests:  # the next poll has reached the meter
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
        assert len(sink.readings) == 1  # the interrupted read delivered nothing
        assert counters.releases == 1, counters
        assert poller.stats.state == "stopped"


async def test_set_interval_holds_to_the_one_bound() -> None:
    # An override kept from before the bound (or any caller) cannot stop the polling.
    poller = MeterPoller(meter_config(1), Sink())
    poller.set_interval(86_400)
    assert poller.interval_s == 86_400
    with pytest.raises(ValueError, match=r"interval_s must be at most 86400 s \(one day\)"):
        poller.set_interval(1e300)
    assert poller.interval_s == 86_400


async def test_set_interval_starts_a_new_cadence_at_once(
    meters: Any, autojump_clock: MockClock
) -> None:
    """Polls every second; at 2.5 s the interval becomes 0.4 s (a ThingsBoard shared
    attribute): the pause in progress is cut short, the next poll comes at once and the
    following ones 400 ms apart, on the new grid."""
    with trio.fail_after(20):
        net = meters()
        sink = Sink()
        poller = poller_for(net, meter_config(net.port(0), interval_s=1.0, timeout_s=0.3), sink)

        async def change_then_wait() -> None:
            await trio.sleep(2.5)
            poller.set_interval(0.4)
            await sink.wait_for(9)

        start = trio.current_time()
        await run_for(poller, change_then_wait)
    times = [round((t - start) * 1000) for t in sink.times]
    assert times[:3] == [0, 1000, 2000], times
    assert times[3:9] == [2500 + 400 * k for k in range(6)], times
    assert (poller.stats.missed, poller.stats.failures) == (0, 0)


async def test_a_faulty_meter_recovers_while_the_others_keep_their_cadence(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """Four pollers side by side, as the service runs them; meter 1's line garbles, corrupts,
    resets, drips and goes silent. The faulty meter keeps producing correct readings (it
    recovers in place or by re-association/reconnection); the other three are read on their
    0.5 s grid to the millisecond, every cycle, with values the simulator's model gives at
    that very instant."""
    faults = "1:garbage=0.3,fcs=0.15,reset=0.1,drip=0.002,silence=0.7@0.03"
    # The meters' values follow the virtual clock, as the pollers' timestamps do (from an
    # epoch where the simulated energy registers are well into their range).

    def wall() -> float:
        return 1_764_504_450.0 + trio.current_time()

    sim = Simulator(SimulatorConfig(port=0, meters=4, seed=11, faults=faults), clock=wall)
    sim.set_faults(faults)  # (the config's faults apply when serving TCP)
    net = MemoryMeters(sim, nursery)
    sinks = [Sink() for _ in range(4)]
    pollers = [
        MeterPoller(
            meter_config(net.port(i), name=f"m{i}", interval_s=0.5, timeout_s=0.3),
            sinks[i],
            open_stream=net,
            wall_clock=wall,
            rng=random.Random(i),
        )
        for i in range(4)
    ]
    with trio.fail_after(120):
        async with trio.open_nursery() as polling:
            for poller in pollers:
                polling.start_soon(poller.run)
            start = wall()
            await trio.sleep(30.2)
            polling.cancel_scope.cancel()
    injected = sim.meter(1).faults.injected
    for fault in ("garbage", "fcs", "reset", "drip"):
        assert injected.get(fault, 0) > 0, injected
    bad = pollers[1].stats
    assert bad.successes >= 30, bad  # it kept producing readings
    assert bad.recovered_in_place >= 1, bad
    assert bad.reassociations + bad.reconnects >= 1, bad
    for i in (0, 2, 3):
        good = pollers[i].stats
        assert sim.meter(i).faults.injected == {}
        assert (good.missed, good.failures) == (0, 0), (i, good)
        assert (good.recovered_in_place, good.reconnects, good.reassociations) == (0, 0, 0)
        ts = [r.ts_ms for r in sinks[i].readings]
        assert len(ts) == good.successes == 61, (i, len(ts))  # cycles 0..60 in 30.2 s
        assert all(abs(t - (start * 1000 + 500 * k)) <= 1 for k, t in enumerate(ts)), (i, ts)
    # Whatever the faults did to the bytes, no corrupted value got through: every value is the
    # model's at the moment the meter answered (at once for the good meters; within the
    # faulty meter's slow or retried cycle for meter 1).
    for i, sink in enumerate(sinks):
        for reading in sink.readings:
            window = 0.3 * 4 if i == 1 else 0.001
            check_plausible(sim.meter(i), reading.ts_ms, dict(reading.values), window_s=window)


async def test_a_fleet_opening_at_once_takes_turns_for_the_opening_slots(
    meters: Any, autojump_clock: MockClock
) -> None:
    """Twelve meters start together with three opening slots: at most three connections are
    being opened at any moment (connect and association, each slow here), every meter is
    read, and no cycle fails for having waited its turn within its budget."""
    with trio.fail_after(60):
        net = meters(meters=12, faults="all:delay=0.02")
        openings = trio.CapacityLimiter(3)
        most = [0]

        async def counting(endpoint: Any) -> trio.abc.Stream:
            # Called inside the poller's slot: how many are opening now, this one included.
            most[0] = max(most[0], openings.borrowed_tokens)
            return await net(endpoint)

        sinks = [Sink() for _ in range(12)]
        pollers = [
            MeterPoller(
                meter_config(net.port(i), name=f"m{i}", interval_s=1.0, timeout_s=0.5),
                sinks[i],
                open_stream=counting,
                wall_clock=virtual_ms,
                openings=openings,
            )
            for i in range(12)
        ]
        async with trio.open_nursery() as nursery:
            for poller in pollers:
                nursery.start_soon(poller.run)
            for sink in sinks:
                await sink.wait_for(3)
            nursery.cancel_scope.cancel()
        assert most[0] == 3
        assert openings.borrowed_tokens == 0
        assert all(p.stats.failures == 0 for p in pollers)


async def _held_slot() -> tuple[trio.CapacityLimiter, object]:
    """One opening slot, held by someone else (release it with ``release_on_behalf_of``)."""
    openings = trio.CapacityLimiter(1)
    holder = object()
    await openings.acquire_on_behalf_of(holder)
    return openings, holder


async def test_a_cycle_whose_time_goes_waiting_for_an_opening_slot_is_missed_not_failed(
    meters: Any, autojump_clock: MockClock
) -> None:
    """Every slot is held (a storm of openings): the meter's cycles find no turn within their
    budget. That is the bridge's limit, not the meter's fault: missed cycles, no failure, no
    backoff - and once a slot frees, the meter is read at its next cycle."""
    with trio.fail_after(60):
        net = meters(meters=1)
        openings, holder = await _held_slot()
        sink = Sink()
        config = meter_config(net.port(0), interval_s=1.0, timeout_s=0.5)
        poller = poller_for(net, config, sink, openings=openings)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run)
            await trio.sleep(10.5)
            assert sink.readings == []
            assert poller.stats.failures == 0
            assert poller.stats.missed >= 8
            openings.release_on_behalf_of(holder)
            released = trio.current_time()
            await sink.wait_for(1)
            assert trio.current_time() - released <= 1.0 + 0.1
            nursery.cancel_scope.cancel()
        assert poller.stats.failures == 0


@pytest.mark.parametrize("overrun", [0.0, 0.05], ids=["before_the_end", "as_it_expires"])
async def test_a_turn_to_open_given_late_in_a_cycle(
    meters: Any, autojump_clock: MockClock, overrun: float
) -> None:
    """The slot comes free just before the waiting cycle's budget ends: the opening and the
    read it is for get a whole budget from then (the wait was bounded, not the work). When the
    turn is handed over in the same round of the event loop in which the budget runs out (a
    loop busy with a fleet's start: the clock moves on while the round runs), the cycle cannot
    be given more time any more: it is missed, not failed, with no backoff, and the meter is
    read at its next cycle."""
    with trio.fail_after(60):
        net = meters(meters=1, faults="all:delay=0.02")
        net.sim.set_faults("all:delay=0.02")  # each reply 20 ms late: the work takes time
        openings, holder = await _held_slot()
        sink = Sink()
        config = meter_config(net.port(0), interval_s=10.0, timeout_s=0.5)
        poller = poller_for(net, config, sink, openings=openings)
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(poller.run)
            await trio.sleep(poller.cycle_budget - 0.01)
            openings.release_on_behalf_of(holder)
            if overrun:
                autojump_clock.jump(overrun)  # the round the turn is given in ends past the budget
            await sink.wait_for(1)
            took = trio.current_time() - start
            nursery.cancel_scope.cancel()
        if overrun:
            assert took >= config.interval_s
            assert poller.stats.missed == 1
        else:
            assert took < poller.cycle_budget + 1.0
            assert poller.stats.missed == 0
        assert poller.stats.failures == 0
        assert poller.stats.last_error is None
