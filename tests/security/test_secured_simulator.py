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
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.session import MeterEndpoint, MeterSession
from bridge.simulator import SimulatorConfig
from bridge.simulator.cosem_server import CosemServer
from bridge.simulator.meter import Meter, MeterSecurity, MeterSettings
from bridge.simulator.models import get_model
from codec.acse import AuthenticationMechanism as M
from codec.apdu import AttributeDescriptor, GetRequestNormal, InvokeId, MethodDescriptor
from codec.association import (
    Associated,
    AssociationSettings,
    AssociationState,
    ClientAssociation,
    SecuritySettings,
)
from codec.axdr import Data
from codec.client import RegisterSpec
from codec.errors import AssociationError, ProtocolError
from codec.hdlc import NEED_DATA
from codec.link import WrapperClientLink
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
    (M.HIGH_GMAC, None),
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
            await session.release()
            used = session.association.client_counter
            await session.aclose()
        assert meter.counters.associations == 1
        assert meter.counters.blocks >= 3
        assert meter.counters.releases == 1
        if policy is not None:
            # Every request, the RLRQ last, was ciphered with a fresh counter, seen by the meter.
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
            # ACTION: shift the meter's clock by 60 s (clock method 6, ciphered both ways).
            shift = MethodDescriptor(8, Obis.parse("0-0:1.0.0.255"), 6)
            await session.run(session._client().action(shift, Data.long(60)))
            await session.release()
            await session.aclose()
        assert sim.meter(0).message == b"secured"
        assert sim.meter(0).clock_offset == 60


@pytest.mark.parametrize("general", [False, True], ids=["ded", "general-ded"])
@pytest.mark.parametrize("policy", list(P), ids=lambda p: p.label)
async def test_dedicated_key_ciphering(policy: P, general: bool) -> None:
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(port=0, settings=meter_settings(M.HIGH_GMAC, policy))
        async with running(config) as (sim, ports):
            sec = client_security(
                M.HIGH_GMAC, policy, dedicated_key=True, general_ciphering=general
            )
            session = MeterSession(endpoint(ports.meters[0], sec, max_pdu_size=256))
            await session.open()
            entries = await session.object_list()
            assert len(entries) == len(sim.meter(0).model.objects)
            await session.release()
            await session.aclose()


async def _open_error(settings: MeterSettings, sec: SecuritySettings) -> AssociationError:
    with trio.fail_after(TIMEOUT):
        async with running(SimulatorConfig(port=0, settings=settings)) as (_, ports):
            session = MeterSession(endpoint(ports.meters[0], sec))
            with pytest.raises(AssociationError) as info:
                await session.open()
            await session.aclose()
    return info.value


GMAC_AE = (M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)


async def test_wrong_authentication_key_is_named() -> None:
    error = await _open_error(
        meter_settings(*GMAC_AE), client_security(*GMAC_AE, keys=SecurityKeys(EK, bytes(16)))
    )
    assert error.code == "association.wrong_authentication_key"
    assert "wrong authentication key" in str(error)
    assert AK.hex() not in str(error).lower()


async def test_wrong_block_cipher_key_is_named() -> None:
    error = await _open_error(
        meter_settings(*GMAC_AE), client_security(*GMAC_AE, keys=SecurityKeys(bytes(16), AK))
    )
    assert error.code == "association.wrong_block_cipher_key"
    assert "wrong block cipher key" in str(error)


async def test_wrong_hls_secret_is_named() -> None:
    error = await _open_error(
        meter_settings(M.HIGH_SHA256, None),
        client_security(M.HIGH_SHA256, None, secret=b"not the secret"),
    )
    assert error.code == "association.wrong_secret"
    assert "wrong HLS secret" in str(error)


async def test_wrong_meter_system_title_is_named() -> None:
    error = await _open_error(
        meter_settings(*GMAC_AE), client_security(*GMAC_AE, server_system_title=b"OTHERMTR")
    )
    assert error.code == "association.wrong_system_title"
    assert "4D4D4D0000BC614E" in str(error)


async def test_security_policy_mismatch_is_named() -> None:
    error = await _open_error(
        meter_settings(*GMAC_AE), client_security(M.HIGH_GMAC, P.AUTHENTICATED)
    )
    assert error.code == "association.policy_mismatch"
    assert "policy mismatch" in str(error)


async def test_unciphered_client_against_ciphering_meter_is_a_policy_mismatch() -> None:
    error = await _open_error(meter_settings(*GMAC_AE), client_security(M.HIGH_GMAC, None))
    assert error.code == "association.policy_mismatch"


async def test_counter_rejected_names_the_value_sent() -> None:
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(port=0, settings=meter_settings(*GMAC_AE))
        async with running(config) as (_, ports):
            first = MeterSession(endpoint(ports.meters[0], client_security(*GMAC_AE)))
            await first.open()
            await first.release()
            # A client restarted with a counter the meter has already seen.
            again = MeterSession(endpoint(ports.meters[0], client_security(*GMAC_AE)))
            with pytest.raises(AssociationError) as info:
                await again.open()
            await again.aclose()
    assert info.value.code == "association.counter_rejected"
    assert "invocation counter 100" in str(info.value)


async def test_meter_replay_is_detected_by_the_client() -> None:
    # The client remembers the meter's last counter: a meter counter going backwards is refused.
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(port=0, settings=meter_settings(*GMAC_AE))
        async with running(config) as (sim, ports):
            sec = client_security(*GMAC_AE, server_counter=10_000)
            session = MeterSession(endpoint(ports.meters[0], sec))
            with pytest.raises(AssociationError) as info:
                await session.open()
            await session.aclose()
            assert sim.meter(0).invocation_counter < 10_000
    assert "not above the last one seen" in str(info.value)


async def test_frame_counter_read_through_the_public_client_unlocks_a_lost_counter() -> None:
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(port=0, settings=meter_settings(*GMAC_AE))
        async with running(config) as (sim, ports):
            first = MeterSession(endpoint(ports.meters[0], client_security(*GMAC_AE)))
            await first.open()
            await first.release()
            last = sim.meter(0).client_counters[CLIENT_TITLE]
            # The counter file was lost: starting again at 100 is refused...
            lost = MeterSession(endpoint(ports.meters[0], client_security(*GMAC_AE)))
            with pytest.raises(AssociationError):
                await lost.open()
            await lost.aclose()
            # ...unless the frame counter is read first through the public client.
            sec = client_security(*GMAC_AE)
            again = MeterSession(
                endpoint(ports.meters[0], sec, frame_counter=Obis.parse("0-0:43.1.0"))
            )
            assert await again.read_frame_counter() == last + 1
            await again.open()
            await again.release()
            assert sim.meter(0).client_counters[CLIENT_TITLE] > last


async def test_meter_counter_going_back_across_associations_is_refused() -> None:
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(port=0, settings=meter_settings(*GMAC_AE))
        async with running(config) as (sim, ports):
            sec = client_security(*GMAC_AE)
            first = MeterSession(endpoint(ports.meters[0], sec))
            await first.open()
            await first.release()
            # The same settings (as a poller keeps them) see the meter's counter start over.
            sim.meter(0).invocation_counter = 1
            again = MeterSession(endpoint(ports.meters[0], sec))
            with pytest.raises(AssociationError) as info:
                await again.open()
            await again.aclose()
    assert "not above the last one seen" in str(info.value)


async def test_general_glo_ciphering(monkeypatch: pytest.MonkeyPatch) -> None:
    tags: list[int] = []
    handle = CosemServer.handle

    def spy(self: CosemServer, apdu: bytes, client_sap: int, wall: float) -> bytes | None:
        tags.append(apdu[0])
        reply = handle(self, apdu, client_sap, wall)
        if reply:
            tags.append(reply[0])
        return reply

    monkeypatch.setattr(CosemServer, "handle", spy)
    with trio.fail_after(TIMEOUT):
        config = SimulatorConfig(port=0, settings=meter_settings(*GMAC_AE))
        async with running(config) as (_, ports):
            sec = client_security(*GMAC_AE, general_ciphering=True)
            session = MeterSession(endpoint(ports.meters[0], sec, max_pdu_size=256))
            await session.open()
            readings = await session.read_registers(
                RegisterSpec(Obis.parse(obis)) for obis in FIELD_REGISTERS
            )
            assert all(r.ok for r in readings)
            await session.release()
            await session.aclose()
    # AARQ, AARE, then general-glo-ciphering both ways (HLS action, GETs), then RLRQ/RLRE.
    assert tags[:2] == [0x60, 0x61] and tags[-2:] == [0x62, 0x63]
    assert set(tags[2:-2]) == {0xDB}


async def test_wrong_block_cipher_key_with_encryption_only() -> None:
    policy = (M.HIGH_GMAC, P.ENCRYPTED)
    error = await _open_error(
        meter_settings(*policy), client_security(*policy, keys=SecurityKeys(bytes(16), AK))
    )
    assert error.code == "association.wrong_block_cipher_key"


# -- tampering, sans-IO: our association against the simulator's application layer -----------


def _wrap(apdu: bytes) -> bytes:
    return b"\x00\x01\x00\x01\x00\x01" + len(apdu).to_bytes(2, "big") + apdu


def _exchange(association: ClientAssociation, server: CosemServer) -> bytes:
    """Hand what the association sent to the meter; return the meter's ciphered reply."""
    request = association.data_to_send()[8:]
    reply = server.handle(request, 1, 1_700_000_000.0)
    assert reply is not None
    return reply


def _pump(association: ClientAssociation, server: CosemServer) -> object:
    while True:
        event = association.next_event()
        if event is not NEED_DATA:
            return event
        association.receive_data(_wrap(_exchange(association, server)), 0.0)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_tampering_with_any_byte_of_a_ciphered_reply_is_detected(data: st.DataObject) -> None:
    meter = Meter.create(0, 1, meter_settings(*GMAC_AE), get_model("single-phase"))
    server = CosemServer(meter)
    association = ClientAssociation(
        WrapperClientLink(1, 1),
        AssociationSettings(security=client_security(*GMAC_AE, counter=MemoryCounter(1))),
    )
    association.open(0.0)
    assert isinstance(_pump(association, server), Associated)
    association.request(
        GetRequestNormal(InvokeId(), AttributeDescriptor(3, Obis.parse("1-1:32.7.0"), 2)), 0.0
    )
    reply = bytearray(_exchange(association, server))
    assert reply[0] == 0xCC  # glo-get-response
    index = data.draw(st.integers(0, len(reply) - 1))
    reply[index] ^= data.draw(st.integers(1, 255))
    association.receive_data(_wrap(bytes(reply)), 0.0)
    # Never accepted as the response: refused (the association is closed), or, with a first
    # byte no APDU starts with, discarded by the framing as garbage (the request times out).
    try:
        event = association.next_event()
    except ProtocolError:
        assert association.state is AssociationState.CLOSED
    else:
        assert event is NEED_DATA and index == 0
        assert association.state is AssociationState.WAITING
