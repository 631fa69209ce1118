"""MeterPoller against the real simulator over loopback TCP: cadence, overruns, keepalive,
circuit breaker, backoff with jitter, release on the way out."""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio

from bridge.config import PRESETS, MeterConfig
from bridge.poller import MeterPoller
from bridge.readings import Reading
from bridge.simulator.meter import MeterSettings

FIELD_KEYS = {r.key for r in PRESETS["field-meter"]}


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


async def test_cadence_is_drift_free_when_replies_are_slow(simulator: Any) -> None:
    """Each reply is 50 ms late; a loop that slept ``interval`` after the work would drift
    by 50 ms per cycle (1 s over 20 cycles). Cycle k must start at start + k * interval."""
    with trio.fail_after(20):
        sim, ports = await simulator(faults="0:delay=0.05")
        sink = Sink()
        poller = MeterPoller(meter_config(ports[0], interval_s=0.2, timeout_s=0.15), sink)
        await run_for(poller, lambda: sink.wait_for(21))
        ts = [r.ts_ms for r in sink.readings]
        # Cycle 0 associates first (two more slow replies); the grid starts with cycle 1.
        base = ts[1] - 200
        errors = [t - (base + 200 * k) for k, t in enumerate(ts) if k >= 1]
        assert max(abs(e) for e in errors) < 60, errors
        assert abs(errors[-1] - errors[0]) < 60, f"accumulated drift: {errors}"
        assert all(r.meter == "m0" and set(r.values) == FIELD_KEYS for r in sink.readings)
        stats = poller.stats
        assert (stats.missed, stats.failures) == (0, 0)
        assert stats.successes == stats.readings == len(sink.readings)
        assert min(stats.latencies) >= 0.05  # the delay really applied to every read
        # Cancelling the poller released the association (RLRQ) before closing.
        assert sim.meter(0).counters.releases == 1
        assert sim.meter(0).counters.connections == 1


async def test_stalled_cycle_is_counted_as_missed_not_made_up(simulator: Any) -> None:
    """The sink (the outbox) hangs for 2.8 intervals in cycle 4: the two cycles that could not
    start within half an interval are counted as missed and skipped; the next readings are
    back on the grid, none squeezed in between."""
    with trio.fail_after(20):
        _sim, ports = await simulator()
        sink = Sink(stall_at=4, stall_s=0.56)
        poller = MeterPoller(meter_config(ports[0], interval_s=0.2), sink)
        await run_for(poller, lambda: sink.wait_for(10))
        assert poller.stats.missed == 2
        assert poller.stats.failures == 0
        ts = [r.ts_ms for r in sink.readings]
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        # One gap of 3 intervals where the two cycles were missed, the others one interval.
        assert sorted(gaps)[-1] == pytest.approx(600, abs=60), gaps
        assert all(g == pytest.approx(200, abs=60) for g in sorted(gaps)[:-1]), gaps
        base = ts[0]
        assert all((t - base + 60) % 200 < 120 for t in ts), f"off the grid: {ts}"


async def test_slow_meter_overruns_its_interval_and_still_delivers(simulator: Any) -> None:
    """A three-phase meter with 32-byte HDLC frames whose line turns slow (100 ms per reply)
    needs ~0.5 s per read with a 0.3 s interval. Every read still succeeds (no "ran out of
    time" failures); the cycles that fall inside a read are missed, and readings come every
    second tick, on the grid."""
    with trio.fail_after(20):
        sim, ports = await simulator(settings=MeterSettings(model="three-phase"))
        sink = Sink()
        meter = meter_config(
            ports[0],
            registers=PRESETS["three-phase"],
            interval_s=0.3,
            timeout_s=0.2,
            hdlc_max_info=32,
        )
        poller = MeterPoller(meter, sink)

        async def slow_down_then_wait() -> None:
            await sink.wait_for(2)
            sim.set_faults("0:delay=0.1")
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
        assert all(g == pytest.approx(600, abs=80) for g in gaps), gaps
        assert len(sink.readings[-1].values) == len(PRESETS["three-phase"])


@pytest.mark.parametrize("keepalive", [True, False], ids=["keepalive", "no-keepalive"])
async def test_keepalive_holds_the_association_across_long_intervals(
    simulator: Any, keepalive: bool
) -> None:
    """The meter drops a link idle for 0.4 s; polls are 1 s apart. With the meter's
    inactivity timeout configured, clock reads in between keep the one association alive;
    without it (the control case) the meter drops the link between polls."""
    with trio.fail_after(20):
        sim, ports = await simulator(settings=MeterSettings(inactivity_timeout=0.4))
        sink = Sink()
        meter = meter_config(
            ports[0], interval_s=1.0, timeout_s=0.3, inactivity_timeout_s=0.4 if keepalive else 60
        )
        poller = MeterPoller(meter, sink)
        await run_for(poller, lambda: sink.wait_for(3))
        counters = sim.meter(0).counters
        stats = poller.stats
        assert stats.successes == 3
        assert stats.failures == 0
        if keepalive:
            assert counters.inactivity_closes == 0
            assert (counters.connections, counters.associations) == (1, 1)
            assert stats.reconnects == 0 and stats.reassociations == 0
            # 2 s between the first and the last poll, one clock read every 0.2 s at most.
            assert stats.keepalives >= 6
        else:
            # The dropped connection is found dead at the next poll and opened again at once,
            # within the cycle: no reading is lost, but every poll pays a new association.
            assert counters.inactivity_closes >= 2
            assert counters.connections >= 3
            assert stats.reconnects >= 2
            assert stats.keepalives == 0


async def test_circuit_breaker_opens_with_an_alarm_and_closes_when_the_meter_is_back(
    simulator: Any,
) -> None:
    with trio.fail_after(30):
        sim, ports = await simulator()
        sink = Sink()
        alarms: list[tuple[str, bool, str]] = []
        poller = MeterPoller(
            meter_config(ports[0], interval_s=0.1, timeout_s=0.05),
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
            sim.set_faults("0:silence=1000")  # the meter stops answering
            while not poller.stats.circuit_open:
                await trio.sleep(0.01)
            assert poller.stats.consecutive_failures == 3
            assert poller.stats.circuit_opens == 1
            assert len(alarms) == 1
            name, active, message = alarms[0]
            assert (name, active) == ("meter.m0.failing", True)
            assert "m0" in message and "3 cycles in a row" in message
            # While open, the meter is tried at the backoff's pace, not every 0.1 s tick.
            failures = poller.stats.consecutive_failures
            await trio.sleep(1.0)
            tried = poller.stats.consecutive_failures - failures
            assert 1 <= tried <= 4, tried
            assert len(alarms) == 1, "the alarm is raised once, not at every failure"
            taken = len(sink.readings)
            sim.clear_faults()
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


async def test_failing_meters_back_off_exponentially_with_jitter() -> None:
    """Four meters that accept TCP and hang up at once. Each poller's retries must space out
    (doubling) and the four must not retry in lockstep (each has its own jitter)."""
    attempts: dict[int, list[float]] = {}

    async def hang_up(stream: trio.SocketStream, index: int) -> None:
        attempts[index].append(trio.current_time())
        await stream.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            ports = []
            for index in range(4):
                attempts[index] = []
                listeners = await nursery.start(
                    trio.serve_tcp,
                    lambda s, i=index: hang_up(s, i),
                    0,
                )
                ports.append(listeners[0].socket.getsockname()[1])
            master = random.Random()
            pollers = [
                MeterPoller(
                    meter_config(port, name=f"m{i}", interval_s=0.02, timeout_s=0.015),
                    Sink(),
                    backoff_initial=0.1,
                    backoff_max=10.0,
                    rng=random.Random(master.random()),  # as the service seeds them
                )
                for i, port in enumerate(ports)
            ]
            async with trio.open_nursery() as polling:
                for poller in pollers:
                    polling.start_soon(poller.run)
                while min(len(a) for a in attempts.values()) < 6:
                    await trio.sleep(0.02)
                polling.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    for index, times in attempts.items():
        gaps = [b - a for a, b in itertools.pairwise(times)][:5]
        base = [0.1 * 2**k for k in range(len(gaps))]
        # Each delay is base * [0.5, 1.5), rounded up to the next 20 ms tick.
        for gap, b in zip(gaps, base, strict=True):
            assert 0.5 * b - 0.01 <= gap <= 1.5 * b + 0.06, (index, gaps)
        assert gaps[4] > gaps[1], f"meter {index} does not back off: {gaps}"
        ratios = [g / b for g, b in zip(gaps, base, strict=True)]
        assert statistics.pstdev(ratios) > 0.02, f"meter {index}: no jitter in {ratios}"
    # Not in lockstep: the 5th attempts of the four meters are spread out in time.
    fifth = sorted(times[4] for times in attempts.values())
    assert fifth[-1] - fifth[0] > 0.03, fifth
    assert all(p.stats.consecutive_failures >= 6 for p in pollers)
    assert all(p.stats.successes == 0 for p in pollers)


async def test_cancelled_in_the_middle_of_a_read_still_releases(simulator: Any) -> None:
    """Shutdown or reload may cancel a poller while a request is out. The release is shielded
    and takes the late reply first, so the meter still gets a proper RLRQ, not just a DISC."""
    with trio.fail_after(20):
        sim, ports = await simulator()
        sink = Sink()
        poller = MeterPoller(meter_config(ports[0], interval_s=1.0, timeout_s=0.5), sink)
        counters = sim.meter(0).counters
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run)
            await sink.wait_for(1)
            sim.set_faults("0:delay=0.2")
            requests = counters.requests
            while counters.requests == requests:  # the next poll has reached the meter
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
        assert len(sink.readings) == 1  # the interrupted read delivered nothing
        assert counters.releases == 1, counters
        assert poller.stats.state == "stopped"
