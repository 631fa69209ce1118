"""Releasing a ciphered association, sans-IO: the RLRQ carries the InitiateRequest ciphered
with the next invocation counter; the meter's RLRE is accepted plain or with a ciphered
InitiateResponse, which is checked like any ciphered response (a bad one is tolerated and
reported, the association ends all the same)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.acse import (
    AARE,
    RLRE,
    RLRQ,
    AcseServiceUser,
    ApplicationContext,
    AssociationResult,
    AuthenticationMechanism,
    Conformance,
    InitiateRequest,
    InitiateResponse,
    SourceDiagnostic,
    decode_acse,
    decode_user_information,
    encode_acse,
    encode_initiate_response,
)
from codec.association import (
    Associated,
    AssociationSettings,
    AssociationState,
    ClientAssociation,
    Closed,
    Event,
    Lenient,
    Released,
    SecuritySettings,
)
from codec.hdlc import NEED_DATA
from codec.link import WrapperClientLink
from codec.security import (
    MAX_INVOCATION_COUNTER,
    MemoryCounter,
    SecurityError,
    SecurityKeys,
    SecurityPolicy,
    cipher_apdu,
    decipher_apdu,
)
from codec.wrapper import WrapperFrame, decode_wrapper

KEYS = SecurityKeys(bytes(range(16)), bytes(range(0xD0, 0xE0)))
CLIENT_TITLE = b"DLMSBRDG"
METER_TITLE = bytes.fromhex("4D4D4D0000BC614E")
P = SecurityPolicy
RESPONSE = InitiateResponse(6, Conformance.GET | Conformance.SET, 512, 0x0007)


def wrapped(apdu: bytes) -> bytes:
    """``apdu`` as the meter (wPort 1) sends it to the client (wPort 1)."""
    return WrapperFrame(1, 1, apdu).encode()


def drain_events(association: ClientAssociation) -> list[Event]:
    events: list[Event] = []
    while (event := association.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        events.append(event)
    return events


def sent_apdu(association: ClientAssociation) -> bytes:
    return decode_wrapper(association.data_to_send()).payload


def associated(policy: P | None, counter: MemoryCounter | None = None) -> ClientAssociation:
    """A client association opened with LLS (no HLS passes) and ``policy``, by a meter that
    counts its own invocation counter from 50."""
    security = SecuritySettings(
        mechanism=AuthenticationMechanism.LOW,
        policy=policy,
        system_title=CLIENT_TITLE,
        keys=KEYS,
        counter=counter or MemoryCounter(10),
    )
    association = ClientAssociation(
        WrapperClientLink(1, 1), AssociationSettings(password=b"12345678", security=security)
    )
    association.open(0.0)
    assert association.next_event() is NEED_DATA
    sent_apdu(association)  # the AARQ
    ciphered = (
        None
        if policy is None
        else cipher_apdu(encode_initiate_response(RESPONSE), policy, METER_TITLE, 50, KEYS)
    )
    aare = AARE(
        AssociationResult.ACCEPTED,
        SourceDiagnostic(value=AcseServiceUser.NULL),
        context=ApplicationContext.LOGICAL_NAME
        if policy is None
        else ApplicationContext.LOGICAL_NAME_CIPHERED,
        initiate_response=RESPONSE if policy is None else None,
        mechanism=AuthenticationMechanism.LOW,
        responding_ap_title=METER_TITLE,
        ciphered_initiate=ciphered,
    )
    association.receive_data(wrapped(encode_acse(aare)), 0.0)
    assert [type(e) for e in drain_events(association)] == [Associated]
    return association


def release(association: ClientAssociation) -> RLRQ:
    association.release(1.0)
    rlrq = decode_acse(sent_apdu(association))
    assert isinstance(rlrq, RLRQ)
    return rlrq


@pytest.mark.parametrize("policy", list(P), ids=lambda p: p.label)
def test_rlrq_of_a_ciphered_association_carries_the_ciphered_initiate_request(
    policy: P,
) -> None:
    association = associated(policy)
    rlrq = release(association)
    assert rlrq.initiate is None and rlrq.ciphered_initiate is not None
    assert rlrq.ciphered_initiate[0] == 0x21  # glo-initiate-request
    parsed, plain = decipher_apdu(rlrq.ciphered_initiate, CLIENT_TITLE, KEYS)
    assert parsed.header.policy == policy
    assert parsed.header.invocation_counter == 11  # the AARQ used 10
    assert association.client_counter == 11
    initiate = decode_user_information(plain)
    assert isinstance(initiate, InitiateRequest)
    settings = association.settings
    assert initiate.proposed_conformance == settings.conformance
    assert initiate.client_max_receive_pdu_size == settings.max_pdu_size
    assert initiate.dedicated_key is None
    # With other keys it does not decipher: the meter can tell who released.
    with pytest.raises(SecurityError):
        decipher_apdu(rlrq.ciphered_initiate, CLIENT_TITLE, SecurityKeys(bytes(16), bytes(16)))


def test_rlrq_of_an_unciphered_association_is_plain() -> None:
    association = associated(None)
    rlrq = release(association)
    assert rlrq == RLRQ()
    assert association.client_counter is None


@pytest.mark.parametrize("policy", list(P), ids=lambda p: p.label)
def test_ciphered_rlre_is_deciphered(policy: P) -> None:
    association = associated(policy)
    release(association)
    ciphered = cipher_apdu(encode_initiate_response(RESPONSE), policy, METER_TITLE, 51, KEYS)
    association.receive_data(wrapped(encode_acse(RLRE(ciphered_initiate=ciphered))), 1.0)
    events = drain_events(association)
    assert [type(e) for e in events] == [Released, Closed]
    released = events[0]
    assert isinstance(released, Released)
    assert released.rlre.initiate_response == RESPONSE
    assert released.rlre.ciphered_initiate is None
    assert association.server_counter == 51
    assert association.state is AssociationState.CLOSED


def test_plain_rlre_to_a_ciphered_rlrq_is_accepted() -> None:
    association = associated(P.AUTHENTICATED_ENCRYPTED)
    release(association)
    association.receive_data(wrapped(encode_acse(RLRE())), 1.0)
    events = drain_events(association)
    assert events[0] == Released(RLRE())
    assert [type(e) for e in events] == [Released, Closed]


def _bad_rlre(how: str) -> bytes:
    plain = encode_initiate_response(RESPONSE)
    if how == "tampered":
        ciphered = bytearray(cipher_apdu(plain, P.AUTHENTICATED_ENCRYPTED, METER_TITLE, 51, KEYS))
        ciphered[-1] ^= 0x01
        return bytes(ciphered)
    if how == "replayed":
        return cipher_apdu(plain, P.AUTHENTICATED_ENCRYPTED, METER_TITLE, 50, KEYS)
    if how == "other-policy":
        return cipher_apdu(plain, P.AUTHENTICATED, METER_TITLE, 51, KEYS)
    assert how == "wrong-key"
    return cipher_apdu(
        plain,
        P.AUTHENTICATED_ENCRYPTED,
        METER_TITLE,
        51,
        SecurityKeys(bytes(16), KEYS.authentication_key),
    )


@pytest.mark.parametrize("how", ["tampered", "replayed", "other-policy", "wrong-key"])
def test_ciphered_rlre_that_does_not_check_is_reported_and_still_ends(how: str) -> None:
    association = associated(P.AUTHENTICATED_ENCRYPTED)
    release(association)
    rlre = encode_acse(RLRE(ciphered_initiate=_bad_rlre(how)))
    association.receive_data(wrapped(rlre), 1.0)
    events = drain_events(association)
    assert [type(e) for e in events] == [Lenient, Released, Closed]
    lenient, released, _ = events
    assert isinstance(lenient, Lenient) and lenient.what == "unverified_release"
    assert "RLRE" in lenient.detail
    assert isinstance(released, Released)
    assert released.rlre.initiate_response is None and released.rlre.ciphered_initiate is None
    assert association.server_counter == 50  # nothing of the bad RLRE was believed
    assert association.stats()["unverified_releases"] == 1
    assert association.state is AssociationState.CLOSED


def test_no_counter_left_for_the_rlrq_drops_the_link_instead() -> None:
    counter = MemoryCounter(MAX_INVOCATION_COUNTER)
    association = associated(P.AUTHENTICATED_ENCRYPTED, counter)
    association.release(1.0)
    assert association.state is AssociationState.UNLINKING
    assert association.data_to_send() == b""  # the wrapper has no DISC: the socket is closed
    events = drain_events(association)
    assert [type(e) for e in events] == [Closed]


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_tampered_ciphered_rlre_still_releases_and_is_never_believed(data: st.DataObject) -> None:
    """Any byte of a ciphered RLRE changed (but its tag): the association still ends, and the
    InitiateResponse is taken only when it checks, i.e. unchanged."""
    association = associated(P.AUTHENTICATED_ENCRYPTED)
    release(association)
    ciphered = cipher_apdu(
        encode_initiate_response(RESPONSE), P.AUTHENTICATED_ENCRYPTED, METER_TITLE, 51, KEYS
    )
    rlre = bytearray(encode_acse(RLRE(ciphered_initiate=ciphered)))
    index = data.draw(st.integers(1, len(rlre) - 1))
    rlre[index] ^= data.draw(st.integers(1, 255))
    association.receive_data(wrapped(bytes(rlre)), 1.0)
    events = drain_events(association)
    released = [e for e in events if isinstance(e, Released)]
    assert len(released) == 1 and isinstance(events[-1], Closed)
    assert released[0].rlre.initiate_response in (None, RESPONSE)
    assert association.server_counter in (50, 51)
