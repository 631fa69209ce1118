"""``[bridge] workers``: the meters polled in worker processes, one outbox and one MQTT
connection in the service; a crashed worker is restarted without touching the others."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from bridge.service import BridgeService
from bridge.sharding import WORKER_SALT, bucket_of
from bridge.workers import worker_count
from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_service import bridge_config, telemetry


def test_worker_count_is_explicit_or_one_per_core_for_large_fleets() -> None:
    assert worker_count(3, 100) == 3
    assert worker_count(8, 2) == 2  # never more workers than meters
    assert worker_count(0, 10, cores=2) == 1  # small fleets stay in the service process
    assert worker_count(0, 1500, cores=2) == 2
    assert worker_count(0, 50_000, cores=4) == 4


async def test_two_workers_poll_every_meter_and_a_killed_one_is_restarted_alone(
    simulator: Any, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    meters = 8
    sim, ports = await simulator(meters=meters)
    config = bridge_config(tmp_path / "data", mosquitto, ports, bridge={"workers": 2})
    collector = Collector(mosquitto, ["v1/gateway/telemetry"], client_id="workers").start()
    names = [f"m{i}" for i in range(meters)]
    try:
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                service = BridgeService(config, handle_signals=False)
                await nursery.start(service.run)
                pool = service.pool
                assert pool is not None and pool.count == 2
                shares = [[m.name for m in share] for share in pool.shares]
                assert sorted(shares[0] + shares[1]) == names
                assert all(bucket_of(n, 2, WORKER_SALT) == 0 for n in shares[0])

                def seen() -> Counter[str]:
                    return Counter(meter for meter, _ts, _v in telemetry(collector))

                while len(seen()) < meters:
                    await trio.sleep(0.1)
                assert service.meters == {}  # nothing polls in the service process
                snapshot = service.snapshot()
                assert [w["alive"] for w in snapshot["workers"]] == [True, True]
                victim, bystander = pool.totals
                victim_pid, bystander_pid = victim.pid, bystander.pid
                assert victim_pid is not None
                os.kill(victim_pid, signal.SIGKILL)
                while "worker.0.crashed" not in service.alarms:
                    await trio.sleep(0.05)
                assert "exited with code -9" in service.alarms["worker.0.crashed"]
                while not (victim.alive and victim.pid != victim_pid):
                    await trio.sleep(0.05)
                assert bystander.pid == bystander_pid and bystander.restarts == 0
                # The restarted worker's meters deliver again.
                before = seen()
                while any(seen()[n] <= before[n] for n in shares[0]):
                    await trio.sleep(0.1)
                assert service.healthy()
                service.stop()
        # Every meter read, and each association released when the service stopped (the
        # killed worker's first associations were dropped, not released).
        assert all(seen()[n] >= 2 for n in names)
        for i in range(meters):
            counters = sim.meter(i).counters
            assert counters.releases >= 1, (i, counters)
    finally:
        collector.stop()
