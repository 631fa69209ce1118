"""The console of a service whose meters are polled in worker processes shows their values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.bridge.console_harness import console_config, start_console
from tests.bridge.mosquitto import Mosquitto
from tests.bridge.test_run_cli import bridge_process  # noqa: F401 (fixture)


def _with_values(meters: list[dict[str, Any]]) -> set[str]:
    return {m["name"] for m in meters if m["values"] and m["ts_ms"]}


async def test_meters_polled_in_workers_show_their_values(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    _sim, ports = await simulator(meters=2)
    config, web_port = console_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"m0": ports[0], "m1": ports[1]},
        data_dir=tmp_path / "data",
        bridge={"workers": 2},
        defaults={"interval_s": 2.0, "timeout_s": 1.0},
    )
    _process, api = await start_console(bridge_process, config, web_port)
    # Readings arrive (the history has them)...
    await api.wait_until(
        "/api/v1/meters/m0/history", lambda h: bool(h["series"]), 30, "readings from the workers"
    )
    # ...and the meters' last values are shown, and stay shown between polls.
    await api.wait_until(
        "/api/v1/meters", lambda d: _with_values(d["meters"]) == {"m0", "m1"}, 10, "values"
    )
    for _ in range(12):
        listing = (await api.get("/api/v1/meters")).json
        assert _with_values(listing["meters"]) == {"m0", "m1"}, listing
        assert {m["state"] for m in listing["meters"]} == {"in-worker"}
        await trio.sleep(0.3)
