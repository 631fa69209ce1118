"""The whole service against secured meters: config as a file gives it, a real broker, and
the invocation counters surviving a restart of the service."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from codec.acse import AuthenticationMechanism as M
from codec.security import SecurityPolicy as P
from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_run_cli import bridge_process, write_config  # noqa: F401 (fixture)
from tests.bridge.test_service import bridge_config, running, stored, wait_delivered
from tests.bridge.waiting import wait_until
from tests.security.test_secured_simulator import AK, EK, meter_settings


@pytest.mark.parametrize("workers", [1, 2])
async def test_service_reads_secured_meters_across_a_restart(
    workers: int,
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge")
    with trio.fail_after(60):
        settings = meter_settings(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)
        sim, ports = await simulator(meters=2, seed=5, settings=settings)
        sub = collector(["v1/gateway/#"])
        config = bridge_config(
            tmp_path / "data",
            mosquitto,
            ports,
            bridge={"workers": workers},
            defaults={
                "security": "hls-gmac",
                "block_cipher_key": EK.hex(),
                "authentication_key": AK.hex(),
            },
        )
        meters = [sim.meter(index) for index in (0, 1)]
        for run in range(2):  # the second run starts above every counter the first reserved
            base = [m.counters.requests for m in meters]
            async with running(config):
                # Each meter associated (AARQ, HLS action) and polled twice in this run.
                await wait_until(
                    lambda run=run, base=base: all(
                        m.counters.associations >= run + 1 and m.counters.requests >= b + 4
                        for m, b in zip(meters, base, strict=True)
                    ),
                    30,
                    "both meters associated and polled twice",
                )
                if workers == 1:
                    await wait_until(
                        lambda run=run: all(
                            len(stored(caplog).get(m, [])) >= 2 * (run + 1) for m in ("m0", "m1")
                        ),
                        10,
                        "two readings of each meter stored",
                    )
        await wait_delivered(caplog, sub, 10)
    if workers == 1:  # worker processes log in their own process
        taken = stored(caplog)
        assert len(taken["m0"]) >= 4 and len(taken["m1"]) >= 4
    for index in (0, 1):
        meter = sim.meter(index)
        assert meter.counters.associations == 2
        assert meter.counters.auth_failures == 0
        assert meter.counters.requests >= 8  # AARQ, HLS action, GETs, RLRQ, twice
    files = sorted(p.name for p in (tmp_path / "data" / "counters").glob("*.ic"))
    assert [name.split("-")[0] for name in files] == ["m0", "m1"]
    assert not any(EK.hex() in r.getMessage().lower() for r in caplog.records)


async def test_kill_9_of_the_service_never_reuses_a_counter(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    bridge_process: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    """``run`` as a process, SIGKILLed while polling a strict secured meter (one that refuses
    any counter it has seen), then started again: the meter accepts every association."""
    with trio.fail_after(60):
        sim, ports = await simulator(
            meters=1, seed=2, settings=meter_settings(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)
        )
        assert sim.meter(0).settings.security.strict_counters
        config = write_config(
            tmp_path / "b.toml", mosquitto, {"m0": ports[0]}, data_dir=tmp_path / "data",
            defaults={
                "security": "hls-gmac",
                "block_cipher_key": EK.hex(),
                "authentication_key": AK.hex(),
                "interval_s": 0.2,
                "timeout_s": 0.15,
            },
        )  # fmt: skip
        seen: list[int] = []
        for _ in range(3):
            process = await bridge_process(config)
            await process.wait_for(
                lambda p=process: len(p.stored().get("m0", [])) >= 3, 20, "3 readings"
            )
            process.proc.kill()
            assert await process.wait_exit() == -signal.SIGKILL
            seen.append(sim.meter(0).client_counters[max(sim.meter(0).client_counters)])
    meter = sim.meter(0)
    assert meter.counters.associations == 3
    assert meter.counters.auth_failures == 0
    assert seen == sorted(seen) and len(set(seen)) == 3
