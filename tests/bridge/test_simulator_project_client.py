"""The project's own client (codec association and client, bridge session) against the simulator."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import trio

from bridge.session import MeterEndpoint, MeterSession
from bridge.simulator import SimulatorConfig
from bridge.simulator.meter import MeterSettings
from codec.client import RegisterSpec
from codec.errors import AssociationError
from codec.obis import Obis
from tests.bridge.test_simulator_rawclient import FIELD_REGISTERS, TIMEOUT, running

KEYS = ("voltage_l1", "current_l1", "frequency", "active_power", "active_energy")


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
async def test_session_reads_registers_object_list_and_profile(transport: str) -> None:
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(meters=2, port=0, transport=transport, seed=21)
        async with running(config) as (sim, ports):
            endpoint = MeterEndpoint(
                "127.0.0.1",
                ports.meters[1],
                transport=transport,
                password=b"00000000",
            )
            session = MeterSession(endpoint)
            await session.open()
            before = time.time()
            readings = await session.read_registers(
                RegisterSpec(Obis.parse(obis), key=key)
                for obis, key in zip(FIELD_REGISTERS, KEYS, strict=True)
            )
            after = time.time()
            meter = sim.meter(1)
            physics = meter.physics
            expected = {
                "voltage_l1": (physics.voltage, 0.01, "V"),
                "current_l1": (physics.current, 0.001, "A"),
                "frequency": (physics.frequency_at, 0.01, "Hz"),
                "active_power": (physics.power, 0.001, "W"),
                "active_energy": (meter.energy_wh, 1, "Wh"),
            }
            for reading in readings:
                assert reading.ok, reading
                assert reading.spec.key is not None
                quantity, tolerance, symbol = expected[reading.spec.key]
                samples = [quantity(before + (after - before) * k / 10) for k in range(11)]
                assert min(samples) - tolerance <= reading.value <= max(samples) + tolerance
                assert reading.unit is not None and reading.unit.symbol == symbol
            entries = await session.object_list()
            assert {e.obis for e in entries} == {o.obis for o in meter.model.objects.values()}
            now = dt.datetime.now(dt.UTC)
            profile = await session.read_profile(
                Obis.parse("1-0:99.1.0.255"), start=now - dt.timedelta(hours=3), end=now
            )
            assert 11 <= len(profile.rows) <= 12
            assert len(profile.columns) == 3
            await session.release()
            await session.aclose()
        assert meter.counters.associations == 1
        assert meter.counters.releases == 1


async def test_session_wrong_password_is_an_authentication_failure() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(SimulatorConfig(port=0)) as (_, ports):
            session = MeterSession(MeterEndpoint("127.0.0.1", ports.meters[0], password=b"bad"))
            with pytest.raises(AssociationError) as info:
                await session.open()
            assert info.value.code == "association.authentication_failure"
            await session.aclose()


THREE_PHASE = {
    "1-1:32.7.0": "V", "1-1:52.7.0": "V", "1-1:72.7.0": "V",
    "1-1:31.7.0": "A", "1-1:51.7.0": "A", "1-1:71.7.0": "A",
    "1-1:14.7.0": "Hz", "1-1:1.7.0": "W", "1-1:1.8.0": "Wh",
}  # fmt: skip


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
async def test_session_reads_the_three_phase_model(transport: str) -> None:
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(
            meters=1, port=0, transport=transport, settings=MeterSettings(model="three-phase")
        )
        async with running(config) as (_sim, ports):
            session = MeterSession(
                MeterEndpoint(
                    "127.0.0.1", ports.meters[0], transport=transport, password=b"00000000"
                )
            )
            await session.open()
            readings = await session.read_registers(RegisterSpec(obis) for obis in THREE_PHASE)
            await session.release()
    assert [r.unit.symbol for r in readings] == list(THREE_PHASE.values())
    volts = [r.value for r in readings if r.unit.symbol == "V"]
    amps = [r.value for r in readings if r.unit.symbol == "A"]
    power = next(r.value for r in readings if r.unit.symbol == "W")
    assert all(100 < v < 140 for v in volts)
    # Total power is the sum over the three phases: below V*I summed (power factor <= 1).
    assert 0 < power <= sum(v * i for v, i in zip(volts, amps, strict=True)) * 1.01
