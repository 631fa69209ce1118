"""The README's first command: ``dlms-bridge demo`` runs meters, a broker and the bridge."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.bridge.mosquitto import find_mosquitto, free_port

REPO = Path(__file__).resolve().parents[2]


async def run_demo(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(90):
        return await trio.run_process(
            [sys.executable, "-m", "bridge.cli", "demo", "--no-live", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=REPO,
        )


@pytest.mark.parametrize(
    "broker",
    [
        pytest.param(
            "mosquitto",
            marks=pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed"),
        ),
        "amqtt",
    ],
)
async def test_demo_reads_and_delivers_everything(broker: str, tmp_path: Path) -> None:
    result = await run_demo(
        "--duration", "8", "--meters", "3", "--interval", "1", "--broker", broker,
        "--sim-port", "0", "--mqtt-port", str(free_port()), "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "mosquitto_sub -h 127.0.0.1" in out
    assert "dlms-bridge read --host 127.0.0.1" in out
    # The operators' console is started too, and its URL printed.
    assert re.search(r"Console: +http://127\.0\.0\.1:\d+/", out), out
    summary = json.loads(out.strip().splitlines()[-1])["summary"]
    assert summary["broker"] == broker
    assert summary["meters"] == 3
    # Three meters read every second for 8 s, one of them with stream faults.
    assert summary["readings_taken"] >= 15
    # Everything taken was delivered before the demo stopped.
    assert summary["readings_delivered"] >= summary["readings_taken"]
    assert summary["outbox_rows"] == 0
    # The generated config is a valid bridge config the user can run.
    config = tmp_path / "bridge.toml"
    check = await trio.run_process(
        [sys.executable, "-m", "bridge.cli", "check-config", str(config)],
        capture_stdout=True,
        check=False,
        cwd=REPO,
    )
    assert check.returncode == 0
    assert b"OK: 3 meters" in check.stdout


async def test_demo_refuses_a_bad_fault_spec() -> None:
    result = await run_demo("--faults", "2:nonsense=1", "--duration", "1")
    assert result.returncode == 2
    assert b"--faults" in result.stderr
