"""Interoperability: our client against gurux_dlms's secure server, an independent meter that
requires HLS and suite 0 ciphering (see tests/security/gurux_secure_meter.py for the bugs of
that peer worked around on the test side).

gurux_dlms is GPL and is used here only as a test peer.
"""

from __future__ import annotations

import pytest
import trio

from bridge.session import MeterEndpoint, MeterSession
from codec.acse import AuthenticationMechanism as M
from codec.apdu import AttributeDescriptor, MethodDescriptor
from codec.association import SecuritySettings
from codec.axdr import Data, DataType
from codec.client import RegisterSpec
from codec.obis import Obis
from codec.security import MemoryCounter, SecurityKeys
from codec.security import SecurityPolicy as P
from tests.security.gurux_secure_meter import (
    AK,
    BIG,
    BIG_VALUE,
    CURRENT,
    EK,
    FREQUENCY,
    MESSAGE,
    METER_TITLE,
    PASSWORD,
    SECRET,
    VOLTAGE,
    gurux_secure_meter,
)

pytestmark = pytest.mark.interop
TIMEOUT = 30
CLIENT_TITLE = b"DLMSBRDG"


def security(mechanism: M, policy: P | None, **changes: object) -> SecuritySettings:
    settings = SecuritySettings(
        mechanism=mechanism,
        policy=policy,
        system_title=CLIENT_TITLE,
        keys=SecurityKeys(EK, AK),
        secret=SECRET,
        counter=MemoryCounter(100),
    )
    for name, value in changes.items():
        settings = __import__("attrs").evolve(settings, **{name: value})
    return settings


def endpoint(port: int, sec: SecuritySettings) -> MeterEndpoint:
    return MeterEndpoint(
        "127.0.0.1",
        port,
        transport="wrapper",
        client_sap=1,
        server_logical=1,
        password=PASSWORD,
        security=sec,
        max_pdu_size=256,  # the big octet string then needs block transfer
        timeout=2.0,
    )


async def test_hls_gmac_authenticated_encrypted(monkeypatch: pytest.MonkeyPatch) -> None:
    mechanism, policy = M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED
    with gurux_secure_meter(monkeypatch, mechanism, policy) as (port, peer), trio.fail_after(
        TIMEOUT
    ):
        session = MeterSession(endpoint(port, security(mechanism, policy)))
        await session.open()
        readings = await session.read_registers(
            RegisterSpec(Obis.parse(obis)) for obis in (VOLTAGE, CURRENT, FREQUENCY)
        )
        big = await session.get(AttributeDescriptor(1, Obis.parse(BIG), 2))
        message = AttributeDescriptor(1, Obis.parse(MESSAGE), 2)
        await session.run(session._client().set(message, Data.octet_string(b"secured")))
        written = await session.get(message)
        reset = MethodDescriptor(3, Obis.parse(VOLTAGE), 1)
        await session.run(session._client().action(reset, Data.integer(0)))
        after = await session.get(AttributeDescriptor(3, Obis.parse(VOLTAGE), 2))
        await session.release()
        await session.aclose()
    print(readings, big, written, after, peer.meters[0].released)
    assert [r.value for r in readings] == [pytest.approx(230.12), pytest.approx(5.12), pytest.approx(49.99)]
    assert big.value == BIG_VALUE
    assert written.value == b"secured"
    assert after.type == DataType.NULL_DATA
    assert session.association is not None
    assert session.association.server_system_title == METER_TITLE
