"""Releasing a ciphered association with the simulator's application layer, sans-IO: our RLRQ
carries the ciphered InitiateRequest, the simulator releases only on one that deciphers with the
association's keys and a fresh counter, and answers a ciphered InitiateResponse that our client
checks. A plain RLRQ (what many clients send) still releases."""

from __future__ import annotations

import pytest

from bridge.simulator.cosem_server import CosemServer
from bridge.simulator.meter import Meter
from bridge.simulator.models import get_model
from codec.acse import (
    RLRE,
    RLRQ,
    AuthenticationMechanism,
    InitiateRequest,
    ReleaseResponseReason,
    decode_acse,
    encode_acse,
    encode_initiate_request,
)
from codec.apdu import AttributeDescriptor, GetRequestNormal, GetResponseNormal, InvokeId
from codec.association import (
    Associated,
    AssociationSettings,
    ClientAssociation,
    Closed,
    Released,
    Response,
)
from codec.link import WrapperClientLink
from codec.obis import Obis
from codec.security import MemoryCounter, SecurityKeys, SecurityPolicy, cipher_apdu
from tests.security.test_secured_simulator import (
    CLIENT_TITLE,
    EK,
    KEYS,
    _exchange,
    _pump,
    _wrap,
    client_security,
    meter_settings,
)

M = AuthenticationMechanism
P = SecurityPolicy
VOLTAGE = AttributeDescriptor(3, Obis.parse("1-1:32.7.0"), 2)
WALL = 1_700_000_000.0


def opened(
    mechanism: M = M.HIGH_GMAC, policy: P = P.AUTHENTICATED_ENCRYPTED
) -> tuple[Meter, CosemServer, ClientAssociation]:
    meter = Meter.create(0, 1, meter_settings(mechanism, policy), get_model("single-phase"))
    server = CosemServer(meter)
    association = ClientAssociation(
        WrapperClientLink(1, 1),
        AssociationSettings(security=client_security(mechanism, policy, counter=MemoryCounter(1))),
    )
    association.open(0.0)
    assert isinstance(_pump(association, server), Associated)
    return meter, server, association


@pytest.mark.parametrize(
    ("mechanism", "policy"),
    [(M.HIGH_GMAC, p) for p in P] + [(M.HIGH_SHA256, P.AUTHENTICATED_ENCRYPTED)],
    ids=lambda v: getattr(v, "label", getattr(v, "name", v)),
)
def test_ciphered_release_both_ways(mechanism: M, policy: P) -> None:
    meter, server, association = opened(mechanism, policy)
    association.release(1.0)
    rlrq_bytes = association.data_to_send()[8:]
    rlrq = decode_acse(rlrq_bytes)
    assert isinstance(rlrq, RLRQ) and rlrq.ciphered_initiate is not None
    reply = server.handle(rlrq_bytes, 1, WALL)
    assert reply is not None
    rlre = decode_acse(reply)
    assert isinstance(rlre, RLRE) and rlre.reason == ReleaseResponseReason.NORMAL
    assert rlre.ciphered_initiate is not None and rlre.ciphered_initiate[0] == 0x28
    assert server.association is None
    assert meter.counters.releases == 1
    # The meter saw the RLRQ's counter, the last one the client used.
    assert meter.client_counters[CLIENT_TITLE] == association.client_counter
    association.receive_data(_wrap(reply), 1.0)
    released = association.next_event()
    assert isinstance(released, Released)
    assert released.rlre.initiate_response is not None
    assert released.rlre.initiate_response.server_max_receive_pdu_size == 1024
    assert association.server_counter == meter.invocation_counter - 1
    assert isinstance(association.next_event(), Closed)


def _forged(how: str, counter: int) -> bytes:
    initiate = encode_initiate_request(InitiateRequest())
    policy = P.AUTHENTICATED_ENCRYPTED
    if how == "other-keys":
        ciphered = cipher_apdu(initiate, policy, CLIENT_TITLE, counter, SecurityKeys(EK, EK))
    elif how == "replayed-counter":
        ciphered = cipher_apdu(initiate, policy, CLIENT_TITLE, 1, KEYS)
    elif how == "other-title":
        ciphered = cipher_apdu(initiate, policy, b"INTRUDER", counter, KEYS)
    else:
        assert how == "other-policy"
        ciphered = cipher_apdu(initiate, P.AUTHENTICATED, CLIENT_TITLE, counter, KEYS)
    return encode_acse(RLRQ(ciphered_initiate=ciphered))


@pytest.mark.parametrize("how", ["other-keys", "replayed-counter", "other-title", "other-policy"])
def test_an_rlrq_that_does_not_decipher_releases_nothing(how: str) -> None:
    meter, server, association = opened()
    failures = meter.counters.auth_failures
    assert association.client_counter is not None
    reply = server.handle(_forged(how, association.client_counter + 1), 1, WALL)
    assert reply is not None
    rlre = decode_acse(reply)
    assert rlre == RLRE(ReleaseResponseReason.NOT_FINISHED)
    assert server.association is not None
    assert meter.counters.releases == 0
    assert meter.counters.auth_failures == failures + 1
    # The client that associated goes on as if nothing happened, and releases.
    association.request(GetRequestNormal(InvokeId(), VOLTAGE), 2.0)
    association.receive_data(_wrap(_exchange(association, server)), 2.0)
    event = association.next_event()
    assert isinstance(event, Response) and isinstance(event.apdu, GetResponseNormal)
    association.release(3.0)
    association.receive_data(_wrap(_exchange(association, server)), 3.0)
    assert isinstance(association.next_event(), Released)
    assert meter.counters.releases == 1


def test_a_plain_rlrq_still_releases_a_ciphered_association() -> None:
    meter, server, _ = opened()
    reply = server.handle(encode_acse(RLRQ()), 1, WALL)
    assert reply is not None
    assert decode_acse(reply) == RLRE(ReleaseResponseReason.NORMAL)
    assert server.association is None
    assert meter.counters.releases == 1
