"""``dlms-bridge demo`` with fewer meters than the default fault spec names."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bridge.mosquitto import free_port
from tests.bridge.test_demo import run_demo


async def test_demo_with_two_meters_runs(tmp_path: Path) -> None:
    result = await run_demo(
        "--duration", "3", "--meters", "2", "--interval", "1", "--sim-port", "0",
        "--mqtt-port", str(free_port()), "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    summary = json.loads(result.stdout.decode().strip().splitlines()[-1])["summary"]
    assert summary["meters"] == 2 and summary["readings_taken"] > 0


async def test_demo_refuses_faults_on_a_meter_it_does_not_run() -> None:
    result = await run_demo("--meters", "2", "--faults", "5:refuse", "--duration", "1")
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--faults" in lines[0] and "meter 5" in lines[0], lines
