"""Meters polled in worker processes get what the service's own pollers have: profile
high-water marks that survive a restart of the bridge and a move between a worker and the
service, a share of the box-wide backfill slots, and the ``faulted`` state of a poller that
keeps crashing the same way, shown in the service's status and summary."""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from bridge.config import BridgeConfig, config_from_dict
from bridge.poller import MeterPoller
from bridge.profiles import HighWaterMarks
from bridge.service import BACKFILL_SLOTS
from bridge.simulator.meter import MeterSettings
from bridge.simulator.server import Simulator, SimulatorConfig
from bridge.supervision import SupervisionSettings
from bridge.worker import _Worker
from bridge.workers import WorkerPool, backfill_share
from codec.obis import Obis
from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.settable_clock import SettableClock
from tests.bridge.test_profile_backfill import quarter_hours, running
from tests.bridge.test_service import bridge_config, events
from tests.bridge.test_service import running as service_running
from tests.bridge.waiting import all_delivered, wait_until

LOAD_PROFILE = "1-0:99.1.0"
ENERGY = "1-1:1.8.0"
#: 2025-11-30 12:07:30 UTC: not on a quarter hour.
T0 = 1_764_504_450.0
BACKFILL_HOURS = 6
NAMES = ["m0", "m1"]


def profile_ts(sub: Collector, meter: str) -> list[int]:
    """Capture times of the profile entries of ``meter`` received, in arrival order."""
    return [
        int(entry["ts"])
        for message in sub.on("v1/gateway/telemetry")
        for entry in json.loads(message.payload).get(meter, [])
        if ENERGY in entry["values"]
    ]


def received(sub: Collector) -> int:
    return sum(
        len(readings)
        for message in sub.on("v1/gateway/telemetry")
        for readings in json.loads(message.payload).values()
    )


def config_for(data_dir: Path, broker: Mosquitto, ports: tuple[int, ...], workers: int) -> Any:
    return bridge_config(
        data_dir,
        broker,
        ports,
        bridge={"workers": workers},
        defaults={
            "profiles": [
                {"obis": LOAD_PROFILE, "backfill_hours": BACKFILL_HOURS, "chunk_hours": 12}
            ]
        },
    )


async def run_until_caught_up(
    config: BridgeConfig, clock: SettableClock, sub: Collector, workers: int
) -> None:
    """Run the bridge until every meter's profile is delivered up to the clock's last quarter
    hour (its mark recorded by the service) and everything taken reached the subscriber."""
    last = quarter_hours(clock.t - 900, clock.t)[-1]
    obis = Obis.parse(LOAD_PROFILE)
    before = received(sub)
    async with running(config, clock) as service:
        assert (service.pool.count if service.pool is not None else 1) == workers
        assert (service.meters == {}) == (workers > 1)  # polled in the workers, or here
        if service.pool is not None:  # one backfill slot each: two box-wide, as in the service
            assert service.pool.backfill_slots == 1 == backfill_share(BACKFILL_SLOTS, workers)
        marks = service.marks
        assert marks is not None
        await wait_until(
            lambda: all(marks.get(n, obis) == last for n in NAMES),
            10,
            f"every meter's mark at {last}",
            lambda: str(marks.marks),
        )
        # On disk while running too (written within a second of being recorded).
        data_dir = Path(config.bridge.data_dir)
        await wait_until(
            lambda: all(HighWaterMarks(data_dir).get(n, obis) == last for n in NAMES),
            5,
            "the marks written to disk",
        )
        await all_delivered(service, lambda: received(sub), before)
    await all_delivered(service, lambda: received(sub), before)


async def start_simulator(nursery: trio.Nursery, clock: SettableClock) -> tuple[int, ...]:
    sim = Simulator(
        SimulatorConfig(meters=len(NAMES), port=0, settings=MeterSettings()), clock=clock
    )
    ports = await nursery.start(sim.serve)
    return tuple(ports.meters)


@pytest.mark.parametrize(
    "order",
    [(2, 2), (2, 1), (1, 2)],
    ids=["worker-restarted", "worker-to-service", "service-to-worker"],
)
async def test_profiles_continue_after_a_restart_and_a_move_between_worker_and_service(
    order: tuple[int, ...],
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    nursery: trio.Nursery,
) -> None:
    clock = SettableClock(T0)
    ports = await start_simulator(nursery, clock)
    sub = collector(["v1/gateway/telemetry"])
    with trio.fail_after(60):
        for run, workers in enumerate(order):
            if run:
                clock.t += 3600  # four more entries per meter while the bridge was stopped
            config = config_for(tmp_path / "data", mosquitto, ports, workers)
            await run_until_caught_up(config, clock, sub, workers)
    expected = quarter_hours(T0 - BACKFILL_HOURS * 3600, clock.t)
    assert len(expected) == BACKFILL_HOURS * 4 + 4 * (len(order) - 1)
    for name in NAMES:
        ts = profile_ts(sub, name)
        twice = sorted(t for t, n in Counter(ts).items() if n > 1)
        assert not twice, f"{name}: {len(twice)} entries delivered twice"
        assert ts == expected, f"{name}: missing {sorted(set(expected) - set(ts))}"
    # The marks on disk are the service's file, whoever polled the meters.
    on_disk = HighWaterMarks(tmp_path / "data")
    assert all(on_disk.get(n, Obis.parse(LOAD_PROFILE)) == expected[-1] for n in NAMES)


# -- backfill pacing -------------------------------------------------------------------------


def test_each_worker_gets_an_even_share_of_the_backfill_slots() -> None:
    assert BACKFILL_SLOTS == 2
    assert [backfill_share(BACKFILL_SLOTS, n) for n in (1, 2, 3, 8)] == [2, 1, 1, 1]
    assert backfill_share(6, 4) == 2 and backfill_share(4, 2) == 2
    # The box-wide bound: no more than the slots while there are no more workers than slots.
    for slots in range(1, 9):
        for workers in range(1, slots + 1):
            assert workers <= workers * backfill_share(slots, workers) < slots + workers


def _meters(*names: str) -> list[Any]:
    document = {
        "bridge": {"name": "t", "data_dir": "unused"},
        "mqtt": {"host": "127.0.0.1"},
        "defaults": {"registers": "field-meter", "interval_s": 1.0, "timeout_s": 0.3},
        "meters": [{"name": n, "host": "127.0.0.1", "port": 4059 + i} for i, n in enumerate(names)],
    }
    return list(config_from_dict(document).meters)


async def test_a_worker_pollers_share_its_backfill_slots_and_its_marks() -> None:
    meters = _meters("m0", "m1")
    marks = {"m0": {LOAD_PROFILE: 1_000}}
    worker = _Worker(0, meters, {}, marks=marks, backfill_slots=1)
    pollers = [worker.new_poller(m) for m in meters]
    limiter = pollers[0].work.limiter
    assert limiter is not None and limiter.total_tokens == 1
    assert all(p.work.limiter is limiter for p in pollers)  # one limiter for the worker
    assert pollers[0].work.marks.get("m0", Obis.parse(LOAD_PROFILE)) == 1_000
    # A new mark goes to the service after the entries before it, on the same pipe.
    pollers[1].work.marks.set("m1", Obis.parse(LOAD_PROFILE), 2_000)
    assert worker.pending[-1] == b'M["m1","1-0:99.1.0",2000]\n'


def test_the_service_records_a_worker_mark_only_forward(tmp_path: Path) -> None:
    marks = HighWaterMarks(tmp_path)
    obis = Obis.parse(LOAD_PROFILE)
    assert marks.advance([("m0", LOAD_PROFILE, 2_000), ("m1", LOAD_PROFILE, 5_000)])
    # A worker that stopped after its meter moved may send an older mark last: kept out.
    assert not marks.advance([("m0", LOAD_PROFILE, 1_000)])
    assert HighWaterMarks(tmp_path).marks == {}  # in memory until written
    marks.save()
    reopened = HighWaterMarks(tmp_path)
    assert (reopened.get("m0", obis), reopened.get("m1", obis)) == (2_000, 5_000)
    assert reopened.of(["m1", "m9"]) == {"m1": {LOAD_PROFILE: 5_000}}


async def test_the_service_writes_the_workers_marks_coalesced_and_at_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: MockClock
) -> None:
    obis = Obis.parse(LOAD_PROFILE)
    marks = HighWaterMarks(tmp_path)
    writes: list[int | None] = []
    save = marks.save

    def counted() -> None:
        writes.append(marks.get("m0", obis))
        save()

    monkeypatch.setattr(marks, "save", counted)

    async def inline(fn: Callable[[], None], *_args: Any, **_kwargs: Any) -> None:
        fn()  # the write in the loop's own thread: the virtual clock waits for it

    monkeypatch.setattr(trio.to_thread, "run_sync", inline)
    pool = WorkerPool(
        1, _meters("m0"), on_readings=_no_readings, on_alarm=_no_alarm, set_alarm=_no_alarm,
        marks=marks,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool._write_marks)
        for ts in range(1, 21):  # twenty ranges' marks within a second
            pool._save_marks([("m0", LOAD_PROFILE, ts)])
            await trio.sleep(0.05)
        await trio.sleep(2)
        # Once a (virtual) second at most over these three seconds.
        assert writes[-1] == 20 and len(writes) <= 4, writes
        assert HighWaterMarks(tmp_path).get("m0", obis) == 20
        nursery.cancel_scope.cancel()
    # The last marks, sent as the workers stop: written by the stop, not a second later.
    pool._save_marks([("m0", LOAD_PROFILE, 21)])
    pool._done[0].set()  # no worker process here
    await pool.stop(5)
    assert HighWaterMarks(tmp_path).get("m0", obis) == 21


# -- crashes ---------------------------------------------------------------------------------


async def _no_readings(_readings: list[Any]) -> None:
    raise AssertionError("no readings here")


def _no_alarm(_name: str, _active: bool, _message: str) -> None:
    raise AssertionError("no pool alarm here")


async def test_a_worker_faults_a_poller_that_keeps_crashing_and_clears_it_once_healthy(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: MockClock
) -> None:
    """The worker's side, on the virtual clock: the same policy as the service's, and what
    its stats lines tell the service."""
    (meter,) = _meters("bad")
    starts: list[float] = []

    async def run(self: MeterPoller, **_kwargs: Any) -> None:
        starts.append(trio.current_time())
        if len(starts) <= 4:
            raise TypeError("unsupported operand type(s) for *: 'list' and 'int'")
        await trio.sleep_forever()  # cured: runs on

    monkeypatch.setattr(MeterPoller, "run", run)
    settings = SupervisionSettings(
        backoff_s=1, backoff_max_s=2, fault_after=3, faulted_retry_s=60, healthy_after_s=120
    )
    worker = _Worker(0, [meter], {}, supervision=settings)
    pool = WorkerPool(1, [meter], on_readings=_no_readings, on_alarm=_no_alarm, set_alarm=_no_alarm)

    def report() -> list[list[Any]]:
        """The alarms sent since the last report; the stats lines go to the service's pool."""
        worker.report()
        alarms = []
        for line in worker.pending:
            if line[:1] == b"A":
                alarms.append(json.loads(line[1:]))
            elif line[:1] == b"S":
                pool._stats(0, 1, json.loads(line[1:]))
        worker.pending.clear()
        return alarms

    async with trio.open_nursery() as nursery:
        worker._pollers_nursery = nursery
        worker.start(meter)
        await trio.sleep(10)
        assert len(starts) == 3
        alarms = report()
        assert [a[:2] for a in alarms] == [
            ["meter.bad.crashed", True],
            ["meter.bad.crashed", True],
            ["meter.bad.faulted", True],
        ]
        assert "crashed 3 times in a row" in alarms[-1][2]
        assert "retried every 60 s" in alarms[-1][2]
        remote = pool.remote["bad"]
        assert remote.fault is not None and "TypeError: unsupported operand" in remote.fault
        assert remote.stats.state == "faulted" and remote.crashes == 3
        # Retried at the slow cadence only, and still faulted after one more identical crash.
        await trio.sleep(200)
        assert len(starts) == 5
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps[2] >= 60 - 1e-6 and gaps[3] >= 60 - 1e-6, gaps  # float sums of the clock
        report()
        assert pool.remote["bad"].fault is not None
        # Healthy for healthy_after_s: the state and its alarms are cleared.
        await trio.sleep(settings.healthy_after_s - (trio.current_time() - starts[4]) + 1)
        cleared = [a[:2] for a in report()]
        assert cleared == [["meter.bad.faulted", False], ["meter.bad.crashed", False]]
        assert pool.remote["bad"].fault is None
        nursery.cancel_scope.cancel()


async def test_a_restarted_worker_keeps_a_faulted_meter_faulted(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: MockClock
) -> None:
    """The pool hands a faulted meter's crash history to its worker's next process: the same
    crash again keeps it faulted, retried at the slow cadence (as across the service's own
    restarts of a poller)."""
    (meter,) = _meters("bad")
    starts: list[float] = []

    async def run(self: MeterPoller, **_kwargs: Any) -> None:
        starts.append(trio.current_time())
        raise TypeError("unsupported operand type(s) for *: 'list' and 'int'")

    monkeypatch.setattr(MeterPoller, "run", run)
    settings = SupervisionSettings(backoff_s=1, backoff_max_s=2, fault_after=3, faulted_retry_s=60)
    pool = WorkerPool(1, [meter], on_readings=_no_readings, on_alarm=_no_alarm, set_alarm=_no_alarm)
    for pid in (1, 2):  # the worker process, then the one started after it exited
        worker = _Worker(0, [meter], {}, supervision=settings, faults=pool._faults([meter]))
        async with trio.open_nursery() as nursery:
            worker._pollers_nursery = nursery
            worker.start(meter)
            await trio.sleep(10)
            worker.report()
            alarms = [json.loads(line[1:]) for line in worker.pending if line[:1] == b"A"]
            for line in worker.pending:
                if line[:1] == b"S":
                    pool._stats(0, pid, json.loads(line[1:]))
            nursery.cancel_scope.cancel()
        assert pool.remote["bad"].fault is not None
    # The second process: one crash, the identical one, and the meter is faulted at once.
    assert len(starts) == 4
    assert [a[:2] for a in alarms] == [["meter.bad.faulted", True]]
    assert "crashed 4 times in a row" in alarms[0][2]
    assert pool.remote["bad"].crashes == 4


async def test_a_worker_meter_that_keeps_crashing_is_faulted_in_the_status_and_summary(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Real worker processes: the bad meter's poller crashes in its worker (the patch of the
    in-process tests carried into the worker by ``crash_site/sitecustomize.py``)."""
    caplog.set_level(logging.INFO)
    here = Path(__file__).resolve().parent
    paths = [str(here / "crash_site"), str(here.parents[1])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.setenv("DLMS_BRIDGE_TEST_CRASH", "bad")
    with trio.fail_after(40):
        _, ports = await simulator(meters=2)
        sub = collector(["v1/gateway/telemetry"])
        config = bridge_config(
            tmp_path / "data", mosquitto, ports, names=["good", "bad"],
            bridge={"workers": 2, "summary_interval_s": 0.5},
            defaults={"interval_s": 0.2, "timeout_s": 0.1},
        )  # fmt: skip
        supervision = SupervisionSettings(backoff_s=0.05, backoff_max_s=0.1, faulted_retry_s=1.0)
        async with service_running(config, supervision=supervision) as service:
            assert service.pool is not None and service.meters == {}
            await wait_until(lambda: "meter.bad.faulted" in service.alarms, 10, "bad faulted")
            alarm = service.alarms["meter.bad.faulted"]
            assert "crashed 3 times in a row" in alarm, alarm
            assert "TypeError: unsupported operand" in alarm and "retried every 1 s" in alarm
            await wait_until(
                lambda: service.snapshot()["meters"].get("bad", {}).get("faulted") is True,
                5,
                "bad faulted in the status",
            )
            status = await service.status()
            bad, good = status["meters"]["bad"], status["meters"]["good"]
            assert bad["state"] == "faulted" and "TypeError" in bad["fault"]
            assert bad["crashes"] >= 3 and "worker" in bad
            assert good["faulted"] is False and "fault" not in good
            await wait_until(
                lambda: any(e["meters_faulted"] == 1 for e in events(caplog, "summary")),
                5,
                "a summary counting the faulted meter",
            )
            await sub.wait_for(lambda ms: any("good" in json.loads(m.payload) for m in ms), 10)
