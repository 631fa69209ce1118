"""The console of a `run` whose meters are polled in worker processes (``[bridge] workers = 2``)
shows them as it shows meters polled in the service: values and units, state, counters,
latencies, recoveries; reads them now through their own poller; and /metrics and `health`
count them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import trio

from bridge import cli
from bridge.status_socket import query_status, socket_path
from tests.bridge.console_harness import console_config, start_console
from tests.bridge.mosquitto import Mosquitto, free_port
from tests.bridge.test_console_read_now import one_link_meter
from tests.bridge.test_run_cli import bridge_process  # noqa: F401 (fixture)


def _with_values(meters: list[dict[str, Any]]) -> set[str]:
    return {m["name"] for m in meters if m["values"] and m["ts_ms"]}


def _metric(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(selector)}\}} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name}{{{selector}}} not in /metrics"
    return float(match.group(1))


async def _health(config: Path) -> dict[str, Any]:
    out = io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out):
            return cli.main(["health", "--json", "--config", str(config)])

    await trio.to_thread.run_sync(call)
    report: dict[str, Any] = json.loads(out.getvalue())
    return report


async def test_meters_polled_in_workers_show_their_counters_and_are_read_now(
    tmp_path: Path,
    nursery: trio.Nursery,
    mosquitto: Mosquitto,
    simulator: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    sim, ports = await simulator(meters=2)
    # m0 accepts one connection at a time, as many real meters do: a read-now that opened a
    # second association would be refused.
    port, refused = await one_link_meter(nursery, sim, 0)
    config, web_port = console_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"m0": port, "m1": ports[1], "dead": free_port()},
        data_dir=tmp_path / "data",
        bridge={"workers": 2},
        defaults={"interval_s": 1.0, "timeout_s": 0.5},
        # m1 waits long for its replies: a read-now of it stays in progress for a while.
        meter_extra={"m1": {"timeout_s": 3.0, "interval_s": 4.0}},
    )
    _process, api = await start_console(bridge_process, config, web_port)
    # Readings arrive (the history has them)...
    await api.wait_until(
        "/api/v1/meters/m0/history", lambda h: bool(h["series"]), 30, "readings from the workers"
    )

    def counted(view: dict[str, Any]) -> bool:
        return view["state"] == "ok" and view["counters"]["successes"] >= 2

    # ...with the poller's own state, counters, latencies and units.
    m0 = await api.wait_until("/api/v1/meters/m0", counted, 20, "m0's counters")
    assert m0["counters"]["cycles"] >= m0["counters"]["successes"] >= 2
    assert m0["success_rate"] is not None and m0["success_rate"] > 0
    assert 0 < m0["latency_p50_s"] <= m0["latency_p95_s"] < 0.5
    assert m0["circuit"] == "closed"
    assert set(m0["recoveries"]) == {"in_place", "reassociate", "reconnect"}
    assert m0["values"]["voltage_l1"]["unit"] == "V"
    assert m0["values"]["active_energy"]["unit"] == "Wh"
    dead = await api.wait_until(
        "/api/v1/meters/dead",
        lambda v: v["state"] == "failing" and v["counters"]["failures"] >= 1,
        20,
        "the unreachable meter failing",
    )
    assert dead["last_error"], dead
    # The listing shows the same, and keeps the values between polls.
    listing = await api.wait_until(
        "/api/v1/meters",
        lambda d: _with_values(d["meters"]) == {"m0", "m1"},
        10,
        "values of m0 and m1",
    )
    states = {m["name"]: m["state"] for m in listing["meters"]}
    # The unreachable meter keeps trying (with backoff): "connecting" while it tries again.
    assert states["m0"] == "ok" and states["dead"] in {"failing", "connecting"}, states
    # Read now: through m0's own poller in its worker (no second association), with units.
    for _ in range(3):
        read = await api.call("POST", "/api/v1/meters/m0/read")
        assert read.status == 200, read.text
        assert read.json["meter"] == "m0"
        assert read.json["values"]["voltage_l1"]["unit"] == "V"
        assert not read.json["errors"]
    assert not refused
    read = await api.call("POST", "/api/v1/meters/dead/read")
    assert read.status in (502, 504), read.text
    # The worker's poller counted the reads as requests.
    await api.wait_until(
        "/api/v1/status",
        lambda s: s["counters"]["readings_taken"] >= 4 and s["counters"]["failures"] >= 1,
        10,
        "totals",
    )
    # /metrics: per-meter series of worker meters.
    text = (await api.get("/metrics")).text
    assert _metric(text, "dlms_bridge_meter_reads_total", meter="m0", result="ok") >= 2
    assert _metric(text, "dlms_bridge_meter_reads_total", meter="dead", result="failed") >= 1
    assert _metric(text, "dlms_bridge_meter_cycle_latency_seconds_count", meter="m1") >= 1
    # health (over the status socket): one check per meter, worker meters included.
    report = await _health(config)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["meter:m0"]["status"] == "ok", checks
    assert checks["meter:m1"]["status"] == "ok", checks
    assert "meter:dead" in checks
    # A worker killed while a read-now of one of its meters is in progress: the read is
    # answered (503), the worker restarted, and the meter read again.
    status = await query_status(socket_path(tmp_path / "data"))
    worker = status["workers"][status["meters"]["m1"]["worker"]]
    sim.set_faults("1:delay=1.5")
    reads: list[Any] = []

    async def read_m1() -> None:
        reads.append(await api.call("POST", "/api/v1/meters/m1/read"))

    async with trio.open_nursery() as inner:
        inner.start_soon(read_m1)
        await trio.sleep(0.7)
        os.kill(worker["pid"], signal.SIGKILL)
    assert reads[0].status == 503, reads[0].text
    assert "worker process" in reads[0].json["errors"][0]["message"]
    sim.clear_faults()

    def restarted(s: dict[str, Any]) -> bool:
        pid = s["workers"][worker["index"]]["pid"]
        return bool(pid != worker["pid"] and s["meters"].get("m1", {}).get("state") == "ok")

    with trio.fail_after(20):
        while not restarted(await query_status(socket_path(tmp_path / "data"))):
            await trio.sleep(0.2)
    read = await api.call("POST", "/api/v1/meters/m1/read")
    assert read.status == 200 and read.json["values"]["voltage_l1"]["unit"] == "V", read.text
