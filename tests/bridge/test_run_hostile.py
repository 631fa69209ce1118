"""``dlms-bridge run`` beside hostile meters on raw sockets, at the default reply timeout:
the service stays up, its RSS (from /proc) stays flat, and a good meter keeps delivering."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.simulator.server import Simulator, SimulatorConfig, SimulatorPorts
from tests.bridge.hostile import serve_socket
from tests.bridge.mosquitto import Mosquitto
from tests.bridge.test_run_cli import bridge_process, write_config  # noqa: F401 - a fixture

#: The unbounded service peaked at 3.24 GB with endless segments.
RSS_LIMIT_KB = 200 * 1024
HOSTILE = ("endless", "endless", "drip", "deaf")


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


@pytest.fixture
def hostile_meters() -> Iterator[dict[str, int]]:
    listeners = [serve_socket(mode) for mode in HOSTILE]
    yield {
        f"{mode}-{i}": int(sock.getsockname()[1])
        for i, (mode, sock) in enumerate(zip(HOSTILE, listeners, strict=True))
    }
    for sock in listeners:
        sock.close()


@pytest.mark.slow
async def test_service_stays_bounded_beside_hostile_meters(
    tmp_path: Path,
    mosquitto: Mosquitto,
    nursery: trio.Nursery,
    bridge_process: Any,  # noqa: F811
    hostile_meters: dict[str, int],
) -> None:
    simulator = Simulator(SimulatorConfig(meters=1, port=0))
    ports: SimulatorPorts = await nursery.start(simulator.serve)
    config = write_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"good": ports.meters[0], **hostile_meters},
        data_dir=tmp_path / "data",
        # Hostile meters at the default reply timeout (5 s); the good one polled every second.
        defaults={"interval_s": 6.0, "timeout_s": 5.0},
        meter_extra={"good": {"interval_s": 1.0, "timeout_s": 0.5}},
    )
    bridge = await bridge_process(config)
    assert bridge.proc is not None
    peak = 0
    with trio.move_on_after(20):
        while True:
            peak = max(peak, _rss_kb(bridge.proc.pid))
            assert peak < RSS_LIMIT_KB, f"RSS {peak} KiB"
            assert bridge.proc.poll() is None, "\n".join(bridge.stderr[-20:])
            await trio.sleep(0.1)
    stored = bridge.stored()
    assert len(stored.get("good", [])) >= 12, stored.keys()
    assert not any(name in stored for name in hostile_meters)
    # The endless meters were cut off by the PDU bound and re-associated (level 2).
    errors = bridge.events("protocol_error")
    assert any("maximum PDU size" in str(e) for e in errors), errors[:3]
    assert "Traceback" not in "\n".join(bridge.stderr + bridge.stdout)
    assert peak > 0
    print(f"bridge peak RSS {peak} KiB beside {len(hostile_meters)} hostile meters")
