"""ThingsBoard RPCs and shared attributes for meters polled in worker processes (``[bridge]
workers = 2``): real worker processes, the simulator over TCP, a real Mosquitto. Each request
goes to the worker that polls the meter and runs on that meter's poller; every request is
answered, also when the worker is killed while the request is in progress."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.config import config_from_dict
from bridge.service import BridgeService
from bridge.workers import WorkerPool
from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_rpc import _as_document, gateway_rpc, running


def _worker_config(
    tmp_path: Path, broker: Mosquitto, ports: tuple[int, ...], **defaults: Any
) -> Any:
    document = _as_document(tmp_path, broker)
    document["bridge"]["workers"] = 2
    document["defaults"].update(defaults)
    document["meters"] = [
        {"name": f"m{i}", "host": "127.0.0.1", "port": port, "allow_control": True}
        for i, port in enumerate(ports)
    ]
    return config_from_dict(document)


def _pool(service: BridgeService) -> WorkerPool:
    pool = service.pool
    assert pool is not None and pool.count == 2
    assert service.meters == {}  # nothing polls in the service process
    return pool


async def _reported(pool: WorkerPool, name: str, check: Callable[[Any], bool]) -> Any:
    """The worker's report of ``name`` once ``check`` holds for it."""
    while True:
        remote = pool.remote.get(name)
        if remote is not None and check(remote):
            return remote
        await trio.sleep(0.05)


async def test_rpcs_to_meters_polled_in_workers_run_on_their_pollers(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
) -> None:
    sim, ports = await simulator(meters=5)
    sub = collector(["v1/gateway/#"])
    with trio.fail_after(90):
        async with running(_worker_config(tmp_path, mosquitto, ports)) as service:
            pool = _pool(service)
            # A meter of each worker: both serve requests.
            names = [share[0].name for share in pool.shares if share]
            assert len(names) == 2, pool.shares
            for name in names:
                data = await gateway_rpc(sub, name, "read")
                assert 100 < data["values"]["voltage_l1"] < 140, data
                assert data["units"]["voltage_l1"] == "V" and data["errors"] == {}
            name = names[0]
            index = int(name[1:])
            data = await gateway_rpc(
                sub, name, "read", {"registers": [{"obis": "1-0:0.2.0", "class_id": 1}]}
            )
            assert list(data["values"]) == ["1-0:0.2.0"]
            # read_profile: one hour of 15-minute entries.
            hour = (int(time.time()) // 3600 - 2) * 3600
            start = datetime.datetime.fromtimestamp(hour, datetime.UTC)
            data = await gateway_rpc(
                sub, name, "read_profile",
                {"from": start.isoformat(),
                 "to": (start + datetime.timedelta(hours=1)).isoformat()},
            )  # fmt: skip
            assert [e["ts"] for e in data["entries"]] == [
                hour * 1000 + k * 900_000 for k in range(5)
            ]
            # get_clock / sync_clock; the service's verdict on the box's clock goes along.
            sim.meter(index).clock_offset = 120.0
            data = await gateway_rpc(sub, name, "get_clock")
            assert 118 < data["drift_s"] < 122, data
            service.clock_synchronised = lambda: False
            data = await gateway_rpc(sub, name, "sync_clock", {"threshold_s": 5})
            assert data["error"]["code"] == "box_clock_unsynchronised", data
            assert sim.meter(index).clock_offset == 120.0
            service.clock_synchronised = lambda: True
            data = await gateway_rpc(sub, name, "sync_clock", {"threshold_s": 5})
            assert data["synced"] is True and abs(data["drift_after_s"]) < 2, data
            # disconnect / reconnect on the meter's own association.
            data = await gateway_rpc(sub, name, "disconnect")
            assert data == {"output_state": False}
            assert not sim.meter(index).supply_connected
            data = await gateway_rpc(sub, name, "reconnect")
            assert data == {"output_state": True}
            # Bad requests are answered as in the service.
            data = await gateway_rpc(sub, name, "reboot")
            assert data["error"]["code"] == "unknown_method"
            data = await gateway_rpc(sub, name, "read", {"registers": ["1-1:99"]})
            assert data["error"]["code"] == "bad_params"
            # A request too large for the pipe is refused in the service; the worker goes on.
            data = await gateway_rpc(sub, name, "read", {"registers": ["x" * 70_000]})
            assert data["error"]["code"] == "bad_params", data
            assert "too large" in data["error"]["message"]
            data = await gateway_rpc(sub, "nope", "read")
            assert data["error"]["code"] == "unknown_device"
            assert name in data["error"]["message"]  # worker meters are listed as polled
            data = await gateway_rpc(sub, name, "set_interval", {"interval_s": 0.1})
            assert data["error"]["code"] == "bad_params"
            # set_interval: kept by the service, applied by the worker's poller.
            data = await gateway_rpc(sub, name, "set_interval", {"interval_s": 0.7})
            assert data == {"interval_s": 0.7}
            await _reported(pool, name, lambda r: r.interval_s == 0.7)
            # The 7 requests that reached the meter ran on the poller's one association.
            remote = await _reported(pool, name, lambda r: r.stats.requests >= 7)
            assert remote.stats.successes > 0 and remote.stats.state == "ok"
            assert sim.meter(index).counters.connections == 1
    overrides = json.loads((tmp_path / "data" / "overrides.json").read_text())
    assert overrides == {name: {"interval_s": 0.7}}


async def test_shared_attributes_switch_a_worker_meter_off_and_on(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
) -> None:
    sim, ports = await simulator(meters=5)
    sub = collector(["v1/gateway/#", "v1/devices/me/attributes"])
    cfg = _worker_config(tmp_path, mosquitto, ports, interval_s=1.0)
    with trio.fail_after(90):
        async with running(cfg) as service:
            pool = _pool(service)
            name = pool.shares[0][0].name
            index = int(name[1:])
            await _reported(pool, name, lambda r: r.stats.successes >= 1)
            sub.publish(
                "v1/gateway/attributes", json.dumps({"device": name, "data": {"interval_s": 0.4}})
            )
            remote = await _reported(pool, name, lambda r: r.interval_s == 0.4)
            changed_ms = time.time() * 1000

            def polled_since() -> list[int]:
                """The times of the meter's readings taken after the change, as delivered."""
                out = []
                for m in sub.on("v1/gateway/telemetry"):
                    out += [e["ts"] for e in json.loads(m.payload).get(name, [])]
                return sorted(t for t in out if t > changed_ms)

            await sub.wait_for(lambda _m: len(polled_since()) >= 5, timeout=30)
            # On the new cadence: readings 0.4 s apart (the grid's times, not the machine's).
            steps = [b - a for a, b in itertools.pairwise(polled_since())]
            assert statistics.median(steps) == pytest.approx(400, abs=60), steps
            sub.publish(
                "v1/gateway/attributes", json.dumps({"device": name, "data": {"enabled": False}})
            )
            while name in pool.remote:  # the worker stopped its poller
                await trio.sleep(0.05)
            assert name in service.paused
            releases = sim.meter(index).counters.releases
            assert releases >= 1  # the poller released its association on the way out
            data = await gateway_rpc(sub, name, "read")
            assert data["error"]["code"] == "unknown_device"
            # The other meters of that worker go on.
            other = pool.shares[0][1].name if len(pool.shares[0]) > 1 else pool.shares[1][0].name
            before = pool.remote[other].stats.successes
            await _reported(pool, other, lambda r: r.stats.successes > before)
        # Kept across a restart: the worker starts without the meter, until switched on.
        async with running(cfg) as service:
            pool = _pool(service)
            assert name in service.paused
            await _reported(pool, other, lambda r: r.stats.successes >= 1)
            assert name not in pool.remote
            await sub.wait_for(
                lambda _m: any(
                    json.loads(m.payload)["meters"] == 4 for m in sub.on("v1/devices/me/attributes")
                ),
                timeout=15,
            )
            sub.publish(
                "v1/gateway/attributes", json.dumps({"device": name, "data": {"enabled": True}})
            )
            remote = await _reported(pool, name, lambda r: r.stats.successes >= 1)
            assert remote.interval_s == 0.4  # the shared interval, kept across the restart
            assert name not in service.paused
            data = await gateway_rpc(sub, name, "read")
            assert data["units"]["voltage_l1"] == "V"
    # The gateway's own attributes count the meters polled in the workers, less the one off.
    counts = [json.loads(m.payload)["meters"] for m in sub.on("v1/devices/me/attributes")]
    assert 5 in counts and 4 in counts[counts.index(5) :], counts


async def test_a_worker_killed_during_an_rpc_answers_it_with_an_error_and_is_restarted(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
) -> None:
    sim, ports = await simulator(meters=5)
    sub = collector(["v1/gateway/#"])
    # Replies take 1 s: a request stays in progress in the worker long enough to kill it.
    cfg = _worker_config(tmp_path, mosquitto, ports, timeout_s=3.0, interval_s=5.0)
    with trio.fail_after(90):
        async with running(cfg) as service:
            pool = _pool(service)
            name = pool.shares[0][0].name
            index = int(name[1:])
            await _reported(pool, name, lambda r: r.stats.successes >= 1)
            sim.set_faults(f"{index}:delay=1.0")
            victim = pool.totals[0]
            victim_pid, bystander_pid = victim.pid, pool.totals[1].pid
            assert victim_pid is not None
            answers: list[dict[str, Any]] = []

            async def ask() -> None:
                answers.append(await gateway_rpc(sub, name, "read", timeout=30))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                while pool.pending_requests(0) == 0:
                    await trio.sleep(0.01)
                await trio.sleep(0.3)  # the worker has it: its poller waits for the meter
                killed = trio.current_time()
                os.kill(victim_pid, signal.SIGKILL)
            # Answered at once with an error, long before the request's own deadline (18 s).
            assert trio.current_time() - killed < 5
            assert answers[0]["error"]["code"] == "worker_exited", answers
            assert pool.pending_requests(0) == 0
            # Its meters are shown as such until the new worker reports them (after >= 1 s).
            assert pool.remote[name].stats.state == "worker_restarting"
            # The worker is restarted alone, and its meters answer again.
            while not (victim.alive and victim.pid != victim_pid):
                await trio.sleep(0.05)
            assert pool.totals[1].pid == bystander_pid
            assert "worker.0.crashed" in service.alarms
            sim.clear_faults()
            data = await gateway_rpc(sub, name, "read", timeout=30)
            assert data["units"]["voltage_l1"] == "V", data
            remote = await _reported(pool, name, lambda r: r.key[0] == victim.pid)
            assert remote.stats.state != "worker_restarting"
