"""The whole service against secured meters: config as a file gives it, a real broker, and
the invocation counters surviving a restart of the service."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from codec.acse import AuthenticationMechanism as M
from codec.security import SecurityPolicy as P
from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_service import bridge_config, running, stored, wait_delivered
from tests.security.test_secured_simulator import AK, EK, meter_settings


async def test_service_reads_secured_meters_across_a_restart(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge")
    with trio.fail_after(40):
        settings = meter_settings(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)
        sim, ports = await simulator(meters=2, seed=5, settings=settings)
        sub = collector(["v1/gateway/#"])
        config = bridge_config(
            tmp_path / "data",
            mosquitto,
            ports,
            defaults={
                "security": "hls-gmac",
                "block_cipher_key": EK.hex(),
                "authentication_key": AK.hex(),
            },
        )
        for _ in range(2):  # the second run starts above every counter the first reserved
            async with running(config):
                await trio.sleep(1.3)
        await wait_delivered(caplog, sub, 10)
    taken = stored(caplog)
    assert len(taken["m0"]) >= 4 and len(taken["m1"]) >= 4
    for index in (0, 1):
        meter = sim.meter(index)
        assert meter.counters.associations == 2
        assert meter.counters.auth_failures == 0
    files = sorted(p.name for p in (tmp_path / "data" / "counters").glob("*.ic"))
    assert [name.split("-")[0] for name in files] == ["m0", "m1"]
    assert not any(EK.hex() in r.getMessage().lower() for r in caplog.records)
