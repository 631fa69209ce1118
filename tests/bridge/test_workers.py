"""``[bridge] workers``: the meters polled in worker processes, one outbox and one MQTT
connection in the service; a crashed worker is restarted without touching the others."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from bridge.config import config_from_dict
from bridge.poller import MeterPoller
from bridge.readings import Reading, dumps_compact
from bridge.service import BridgeService
from bridge.sharding import WORKER_SALT, bucket_of
from bridge.worker_link import MeterReporter, RemoteMeter, chunks, encode_stats
from bridge.workers import POLLS_PER_AUTO_WORKER, WorkerPool, worker_count
from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_service import bridge_config, telemetry


def test_worker_count_is_explicit_or_one_per_core_for_busy_fleets() -> None:
    assert worker_count(3, 100, 100.0) == 3
    assert worker_count(8, 2, 2.0) == 2  # never more workers than meters
    assert worker_count(0, 10, 10.0, cores=2) == 1  # small fleets stay in the service process
    # One process while the polls fit one event loop with room to spare; then one per core.
    assert worker_count(0, 2000, 2000.0, cores=2) == 1
    assert worker_count(0, POLLS_PER_AUTO_WORKER + 1, POLLS_PER_AUTO_WORKER + 1, cores=2) == 2
    assert worker_count(0, 5000, 5000.0, cores=2) == 2
    assert worker_count(0, 50_000, 50_000 / 15, cores=4) == 2  # 15 s: 3,333 polls a second
    assert worker_count(0, 50_000, 50_000.0, cores=4) == 4
    assert worker_count(0, 3, 30.0, cores=8) == 1


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


def _pollers(count: int) -> dict[str, MeterPoller]:
    document = {
        "bridge": {"name": "t", "data_dir": "unused"},
        "mqtt": {"host": "127.0.0.1"},
        "defaults": {"registers": "field-meter", "interval_s": 1.0, "timeout_s": 0.3},
        "meters": [{"name": f"m{i}", "host": "127.0.0.1", "port": 4059 + i} for i in range(count)],
    }

    async def sink(_reading: Any) -> None:
        raise AssertionError("not polled")

    return {m.name: MeterPoller(m, sink) for m in config_from_dict(document).meters}


def test_per_meter_stats_cross_as_changes_only_and_in_bounded_reports() -> None:
    pollers = _pollers(5)
    reporter = MeterReporter(limit=3)
    remote: dict[str, RemoteMeter] = {}

    def deliver(pid: int = 1) -> dict[str, Any]:
        entries = reporter.changes(pollers, {"m1": 2})
        # Across the pipe as the worker writes it.
        for part in chunks(entries, size=2):
            for name, entry in json.loads(encode_stats(part)).items():
                if entry is None:
                    remote.pop(name, None)
                    continue
                key = (pid, entry["g"])
                if name not in remote or remote[name].key != key:
                    remote[name] = RemoteMeter(0, key)
                remote[name].update(entry)
        return entries

    # At most 3 meters per report, in turn: every meter within two reports.
    assert set(deliver()) == {"m0", "m1", "m2"}
    assert set(deliver()) == {"m3", "m4"}  # m0 again too, but it has not changed
    assert remote["m1"].crashes == 2 and remote["m0"].units == {}
    assert deliver() == {} and deliver() == {}  # nothing changed: nothing sent
    # A poll: counters, latencies, units and state come across.
    poller = pollers["m4"]
    stats = poller.stats
    stats.cycles, stats.successes, stats.state = 3, 2, "ok"
    stats.latencies.extend([0.02, 0.01])
    stats.link = {"resyncs": 1}
    poller.units["voltage_l1"] = "V"
    while "m4" not in deliver():
        pass
    got = remote["m4"]
    assert (got.stats.cycles, got.stats.successes, got.stats.state) == (3, 2, "ok")
    assert list(got.stats.latencies) == [0.02, 0.01]
    assert got.stats.link == {"resyncs": 1} and got.units == {"voltage_l1": "V"}
    assert got.stats.as_dict()["latency_p50"] == 0.02
    assert got.interval_s == 1.0
    # A new poller object (a restart in the worker): a new stats object in the service, so
    # that totals built on the old one are not counted twice.
    before = got.stats
    pollers["m4"] = _pollers(5)["m4"]
    while "m4" not in deliver():
        pass
    assert remote["m4"].stats is not before and remote["m4"].stats.cycles == 0
    # A meter no longer polled there (switched off) is dropped.
    del pollers["m2"]
    assert deliver()["m2"] is None and "m2" not in remote


async def test_a_worker_answers_requests_on_its_pipes_and_stops_when_its_stdin_ends(
    simulator: Any,
) -> None:
    """The worker process alone, driven as the service drives it: settings, then requests."""
    sim, ports = await simulator(meters=1)
    document = {
        "bridge": {"name": "t", "data_dir": "unused"},
        "mqtt": {"host": "127.0.0.1"},
        "defaults": {
            "password": "00000000",
            "registers": "field-meter",
            "interval_s": 0.5,
            "timeout_s": 0.3,
        },
        "meters": [{"name": "m0", "host": "127.0.0.1", "port": ports[0]}],
    }
    meters = list(config_from_dict(document).meters)
    payload = pickle.dumps(
        {"meters": meters, "log_level": "warning", "poller_options": {}, "overrides": {}}
    )
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bridge.worker", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    lines: list[bytes] = []
    pending = b""

    async def answer(request_id: int) -> dict[str, Any]:
        nonlocal pending
        while True:
            for line in lines:
                if line.startswith(b"P") and json.loads(line[1:])["id"] == request_id:
                    body: dict[str, Any] = json.loads(line[1:])
                    return body
            assert proc.stdout is not None
            chunk = await proc.stdout.receive_some(65536)
            assert chunk, "the worker ended its stdout"
            pending += chunk
            *new, pending = pending.split(b"\n")
            lines.extend(new)

    try:
        with trio.fail_after(30):
            await proc.stdin.send_all(len(payload).to_bytes(8, "big") + payload)
            requests = [
                {"id": 1, "op": "rpc", "meter": "m0", "timeout": 10, "method": "read"},
                {"id": 2, "op": "rpc", "meter": "m9", "timeout": 10, "method": "read"},
                {"id": 3, "op": "reboot", "meter": "m0", "timeout": 10},
                {"id": 4, "op": "set_interval", "meter": "m0", "timeout": 5, "interval_s": 0.1},
            ]
            await proc.stdin.send_all(
                b"Qnot json\n"
                + b"".join(b"Q" + dumps_compact(r).encode() + b"\n" for r in requests)
            )
            read = await answer(1)
            assert read["result"]["units"]["voltage_l1"] == "V", read
            assert (await answer(2))["error"]["code"] == "unknown_device"
            assert (await answer(3))["error"]["code"] == "internal"
            assert (await answer(4))["error"]["code"] == "bad_params"  # not above timeout_s
            # Switched off and at once on again: polled again (not left off by the old poller
            # still releasing its association).
            toggles = [
                {"id": 5, "op": "enable", "meter": "m0", "timeout": 5, "enabled": False},
                {"id": 6, "op": "enable", "meter": "m0", "timeout": 5, "enabled": True},
            ]
            await proc.stdin.send_all(
                b"".join(b"Q" + dumps_compact(r).encode() + b"\n" for r in toggles)
            )
            assert (await answer(5))["result"] == {"enabled": False}
            assert (await answer(6))["result"] == {"enabled": True}
            request = {"id": 7, "op": "rpc", "meter": "m0", "timeout": 10, "method": "read"}
            await proc.stdin.send_all(b"Q" + dumps_compact(request).encode() + b"\n")
            seven = await answer(7)
            assert "result" in seven, seven
            assert seven["result"]["units"]["voltage_l1"] == "V", seven
            # The service is gone: its end of stdin closes, and the worker releases and exits.
            await proc.stdin.aclose()
            assert await proc.wait() == 0
        assert sim.meter(0).counters.releases == 2  # the switched-off poller's, the last one's
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_a_worker_meters_last_success_follows_its_readings_between_stats_reports() -> None:
    pollers = _pollers(2)
    meters = [p.meter for p in pollers.values()]

    async def readings(_r: list[Reading]) -> None:
        raise AssertionError("not delivered here")

    def alarm(_name: str, _active: bool, _message: str) -> None:
        raise AssertionError("no alarm here")

    pool = WorkerPool(1, meters, on_readings=readings, on_alarm=alarm, set_alarm=alarm)
    reporter = MeterReporter()
    pollers["m0"].stats.last_success_ms = 1_000
    pool._stats(0, 42, json.loads(dumps_compact(reporter.changes(pollers, {}))))
    assert pool.remote["m0"].stats.last_success_ms == 1_000
    # A reading taken since: the meter answered, whatever the next report says.
    pool._note_readings([Reading("m0", 5_000, {"v": 1.0})])
    assert pool.remote["m0"].stats.last_success_ms == 5_000
    pollers["m0"].stats.cycles += 1  # a report taken before that reading's poll was counted
    pool._stats(0, 42, json.loads(dumps_compact(reporter.changes(pollers, {}))))
    assert pool.remote["m0"].stats.cycles == 1
    assert pool.remote["m0"].stats.last_success_ms == 5_000
    # Reports of a meter the pool does not give that worker are ignored.
    pool._stats(0, 42, {"elsewhere": {"g": 1, "f": []}})
    assert "elsewhere" not in pool.remote
