"""Interoperability: gurux_dlms's secure client, an independent implementation, reads a simulator
that requires HLS and suite 0 ciphering, and is refused with a wrong key.

gurux_dlms is GPL and is used here only as a test peer.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import attrs
import pytest
import trio
from gurux_dlms import GXDLMSException
from gurux_dlms.enums import (
    AssociationResult,
    Authentication,
    InterfaceType,
    Security,
    SourceDiagnostic,
)
from gurux_dlms.objects import GXDLMSData, GXDLMSProfileGeneric, GXDLMSRegister
from gurux_dlms.secure import GXDLMSSecureClient

from bridge.simulator import SimulatorConfig
from bridge.simulator.cosem_server import CosemServer
from codec.acse import RLRE, RLRQ, ReleaseResponseReason, decode_acse
from codec.acse import AuthenticationMechanism as M
from codec.security import SecurityPolicy as P
from tests.bridge.test_simulator_interop import GuruxSession
from tests.bridge.test_simulator_rawclient import FIELD_REGISTERS, running
from tests.security.test_secured_simulator import (
    AK,
    EK,
    METER_TITLE,
    SECRET,
    meter_settings,
)

pytestmark = pytest.mark.interop
TIMEOUT = 60
GURUX_TITLE = b"GRXCLNT1"

_AUTH = {
    M.HIGH_GMAC: Authentication.HIGH_GMAC,
    M.HIGH_MD5: Authentication.HIGH_MD5,
    M.HIGH_SHA1: Authentication.HIGH_SHA1,
    M.HIGH_SHA256: Authentication.HIGH_SHA256,
}
_SECURITY = {
    None: Security.NONE,
    P.AUTHENTICATED: Security.AUTHENTICATION,
    P.ENCRYPTED: Security.ENCRYPTION,
    P.AUTHENTICATED_ENCRYPTED: Security.AUTHENTICATION_ENCRYPTION,
}


class SecureGuruxSession(GuruxSession):
    """The interop session with gurux's secure client in place of the plain one."""

    def __init__(
        self, port: int, transport: str, mechanism: M, policy: P | None, *, ak: bytes = AK
    ) -> None:
        super().__init__(port, transport)
        interface = InterfaceType.HDLC if transport == "hdlc" else InterfaceType.WRAPPER
        secret = None if mechanism == M.HIGH_GMAC else SECRET
        self.client = GXDLMSSecureClient(True, 1, 1, _AUTH[mechanism], secret, interface)
        self.client.maxReceivePDUSize = 256
        cipher = self.client.ciphering
        cipher.security = _SECURITY[policy]
        cipher.systemTitle = bytearray(GURUX_TITLE)
        cipher.blockCipherKey = bytearray(EK)
        cipher.authenticationKey = bytearray(ak)
        cipher.invocationCounter = 1000

    def open(self) -> None:
        super().open()
        if self.client.isAuthenticationRequired:
            reply = self.transfer(self.client.getApplicationAssociationRequest())
            self.client.parseApplicationAssociationResponse(reply.data)


def _read(port: int, transport: str, mechanism: M, policy: P | None) -> dict[str, Any]:
    session = SecureGuruxSession(port, transport, mechanism, policy)
    session.open()
    out: dict[str, Any] = {"server_title": bytes(session.client.settings.sourceSystemTitle or b"")}
    for ln in FIELD_REGISTERS:
        register = GXDLMSRegister(ln.replace("-", ".").replace(":", ".") + ".255")
        session.read(register, 3)
        session.read(register, 2)
        out[ln] = register.value
    objects = session.client.parseObjects(
        session.transfer(session.client.getObjectsRequest()).data, True
    )
    out["objects"] = len(objects)
    profile = GXDLMSProfileGeneric("1.0.99.1.0.255")
    session.read(profile, 3)
    now = dt.datetime.now(dt.UTC)
    reply = session.transfer(
        session.client.readRowsByRange(profile, now - dt.timedelta(hours=2), now)
    )
    profile.buffer = []
    session.client.updateValue(profile, 2, reply.value)
    out["rows"] = len(profile.buffer)
    message = GXDLMSData("0.0.96.13.0.255")
    message.value = "gurux-secure"
    session.transfer(session.client.write(message, 2))
    message.value = None
    session.read(message, 2)
    out["message"] = message.value
    session.close()
    return out


@pytest.mark.parametrize(
    ("mechanism", "policy"),
    [
        (M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED),
        (M.HIGH_GMAC, P.AUTHENTICATED),
        (M.HIGH_GMAC, P.ENCRYPTED),
        (M.HIGH_GMAC, None),
        (M.HIGH_MD5, None),
        (M.HIGH_SHA1, None),
        (M.HIGH_SHA256, None),
        (M.HIGH_SHA256, P.AUTHENTICATED_ENCRYPTED),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
async def test_gurux_secure_client_reads_secured_simulator(
    transport: str, mechanism: M, policy: P | None
) -> None:
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(
            port=0, transport=transport, settings=meter_settings(mechanism, policy)
        )
        async with running(config) as (sim, ports):
            result = await trio.to_thread.run_sync(
                _read, ports.meters[0], transport, mechanism, policy
            )
    meter = sim.meter(0)
    assert 110 < result["1-1:32.7.0"] < 130
    assert result["objects"] == len(meter.model.objects)
    assert 7 <= result["rows"] <= 8
    assert result["message"] in ("gurux-secure", b"gurux-secure")
    assert meter.counters.blocks >= 3
    assert meter.counters.associations == 1
    if policy is not None:
        assert result["server_title"] == METER_TITLE
        assert meter.client_counters[GURUX_TITLE] > 1000


def _wrong_key(port: int) -> GXDLMSException:
    session = SecureGuruxSession(port, "hdlc", M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED, ak=bytes(16))
    try:
        session.open()
    except GXDLMSException as exc:
        return exc
    finally:
        session.sock.close()
    raise AssertionError("gurux was served with a wrong authentication key")


async def test_gurux_secure_client_refused_with_wrong_key() -> None:
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(
            port=0, settings=meter_settings(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)
        )
        async with running(config) as (sim, ports):
            error = await trio.to_thread.run_sync(_wrong_key, ports.meters[0])
    assert isinstance(error, GXDLMSException)
    assert error.result == AssociationResult.PERMANENT_REJECTED
    assert error.diagnostic == SourceDiagnostic.AUTHENTICATION_FAILURE
    assert sim.meter(0).counters.associations == 0
    assert sim.meter(0).counters.auth_failures >= 1


async def test_gurux_restarting_its_counter_is_served_by_a_lenient_meter_only() -> None:
    """gurux starts every session at the same counter: fine for ``simulate`` by default (only
    within one association must it go up), refused by a strict meter (as a real one)."""
    policy = P.AUTHENTICATED_ENCRYPTED
    for strict in (False, True):
        settings = meter_settings(M.HIGH_GMAC, policy)
        assert settings.security is not None
        settings = attrs.evolve(
            settings, security=attrs.evolve(settings.security, strict_counters=strict)
        )
        with trio.fail_after(TIMEOUT):
            async with running(SimulatorConfig(port=0, settings=settings)) as (sim, ports):
                await trio.to_thread.run_sync(_read, ports.meters[0], "hdlc", M.HIGH_GMAC, policy)
                if strict:
                    error = await trio.to_thread.run_sync(_open_again, ports.meters[0])
                    assert error.diagnostic == SourceDiagnostic.NO_REASON_GIVEN
                else:
                    await trio.to_thread.run_sync(
                        _read, ports.meters[0], "hdlc", M.HIGH_GMAC, policy
                    )
                    assert sim.meter(0).counters.associations == 2


def _open_again(port: int) -> GXDLMSException:
    session = SecureGuruxSession(port, "hdlc", M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)
    try:
        session.open()
    except GXDLMSException as exc:
        return exc
    finally:
        session.sock.close()
    raise AssertionError("a replayed counter was accepted by a strict meter")


def _read_dedicated(port: int) -> tuple[float, int]:
    session = SecureGuruxSession(port, "wrapper", M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)
    session.client.ciphering.dedicatedKey = bytearray(range(0x30, 0x40))
    session.open()
    register = GXDLMSRegister("1.1.32.7.0.255")
    session.read(register, 3)
    session.read(register, 2)
    objects = session.client.parseObjects(
        session.transfer(session.client.getObjectsRequest()).data, True
    )
    session.close()
    return register.value, len(objects)


async def test_gurux_secure_client_with_a_dedicated_key(monkeypatch: pytest.MonkeyPatch) -> None:
    tags: list[int] = []
    handle = CosemServer.handle

    def spy(self: CosemServer, apdu: bytes, client_sap: int, wall: float) -> bytes | None:
        tags.append(apdu[0])
        return handle(self, apdu, client_sap, wall)

    monkeypatch.setattr(CosemServer, "handle", spy)
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(
            port=0,
            transport="wrapper",
            settings=meter_settings(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED),
        )
        async with running(config) as (sim, ports):
            volts, objects = await trio.to_thread.run_sync(_read_dedicated, ports.meters[0])
    assert 110 < volts < 130
    assert objects == len(sim.meter(0).model.objects)
    # gurux sends its HLS action glo-ciphered, then its GETs ded-ciphered.
    assert 0xCB in tags and 0xD0 in tags


def _read_and_release_protected(port: int, transport: str) -> float:
    session = SecureGuruxSession(port, transport, M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)
    session.client.useProtectedRelease = True  # the RLRQ carries the ciphered InitiateRequest
    session.open()
    register = GXDLMSRegister("1.1.32.7.0.255")
    session.read(register, 3)
    session.read(register, 2)
    session.close()
    return float(register.value)


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
async def test_gurux_protected_release_is_accepted(
    monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    """gurux's ciphered RLRQ (useProtectedRelease) releases the simulator's association: it
    deciphers with the association's keys and a fresh counter, and is answered ciphered."""
    rlrqs: list[bytes] = []
    replies: list[bytes] = []
    handle = CosemServer.handle

    def spy(self: CosemServer, apdu: bytes, client_sap: int, wall: float) -> bytes | None:
        reply = handle(self, apdu, client_sap, wall)
        if apdu[:1] == b"\x62":
            rlrqs.append(apdu)
            replies.append(reply or b"")
        return reply

    monkeypatch.setattr(CosemServer, "handle", spy)
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(
            port=0,
            transport=transport,
            settings=meter_settings(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED),
        )
        async with running(config) as (sim, ports):
            volts = await trio.to_thread.run_sync(
                _read_and_release_protected, ports.meters[0], transport
            )
    assert 110 < volts < 130
    (rlrq,) = rlrqs
    decoded = decode_acse(rlrq)
    assert isinstance(decoded, RLRQ) and decoded.ciphered_initiate is not None
    assert decoded.ciphered_initiate[0] == 0x21  # glo-initiate-request, from gurux
    rlre = decode_acse(replies[0])
    assert isinstance(rlre, RLRE) and rlre.reason == ReleaseResponseReason.NORMAL
    assert rlre.ciphered_initiate is not None  # answered ciphered
    assert sim.meter(0).counters.releases == 1
