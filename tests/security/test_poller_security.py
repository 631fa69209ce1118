"""The service's poller reads a secured meter with counters kept in the data directory."""

from __future__ import annotations

from pathlib import Path

import trio

from bridge.config import PRESETS, MeterConfig
from bridge.poller import MeterPoller
from bridge.simulator import SimulatorConfig
from codec.acse import AuthenticationMechanism as M
from codec.security import SecurityPolicy as P
from tests.bridge.test_poller import Sink, run_for
from tests.bridge.test_simulator_rawclient import running
from tests.security.test_secured_simulator import AK, EK, meter_settings


def secured_meter(port: int) -> MeterConfig:
    return MeterConfig(
        name="secured",
        host="127.0.0.1",
        port=port,
        registers=PRESETS["field-meter"],
        interval_s=0.2,
        timeout_s=0.15,
        security="hls-gmac",
        block_cipher_key=EK.hex(),
        authentication_key=AK.hex(),
        system_title="444C420000000001",
    )


async def test_poller_reads_and_restarts_without_reusing_counters(tmp_path: Path) -> None:
    with trio.fail_after(30):
        config = SimulatorConfig(
            port=0, settings=meter_settings(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)
        )
        async with running(config) as (sim, ports):
            for round_ in (1, 2):
                # Each round is a fresh poller (as after a crash or a restart).
                sink = Sink()
                poller = MeterPoller(secured_meter(ports.meters[0]), sink, data_dir=str(tmp_path))
                await run_for(poller, lambda sink=sink: sink.wait_for(3))
                assert all(r.values for r in sink.readings)
                assert sim.meter(0).counters.associations == round_
            files = list((tmp_path / "counters").glob("secured-*.ic"))
            assert len(files) == 1 and files[0].name.endswith("444c420000000001.ic")
            # The meter never saw a counter twice: the second poller started above the first.
            assert sim.meter(0).counters.auth_failures == 0


async def test_meter_counter_going_back_is_refused_across_restarts(tmp_path: Path) -> None:
    with trio.fail_after(30):
        config = SimulatorConfig(
            port=0, settings=meter_settings(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)
        )
        async with running(config) as (sim, ports):
            sink = Sink()
            poller = MeterPoller(secured_meter(ports.meters[0]), sink, data_dir=str(tmp_path))
            await run_for(poller, lambda: sink.wait_for(2))
            assert list((tmp_path / "counters").glob("*.peer"))
            # The meter starts its counter over (or an attacker replays its old APDUs); a new
            # poller, as after a restart of the service, still knows the last counter seen.
            sim.meter(0).invocation_counter = 1
            again = MeterPoller(secured_meter(ports.meters[0]), Sink(), data_dir=str(tmp_path))
            assert not await again.cycle()
            assert again.stats.failures == 1
            assert "not above the last one seen" in (again.stats.last_error or "")
            assert again.endpoint.security is not None
            assert again.endpoint.security.server_counters
