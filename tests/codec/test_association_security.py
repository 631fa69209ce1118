"""The secured client association, sans-IO: reproducible AARQ from an injected random source."""

from __future__ import annotations

from typing import Any

import pytest

from codec import hls
from codec.acse import (
    AARE,
    AARQ,
    AcseServiceUser,
    ApplicationContext,
    AssociationResult,
    AuthenticationMechanism,
    Conformance,
    InitiateResponse,
    SourceDiagnostic,
    decode_acse,
    encode_acse,
    encode_initiate_response,
)
from codec.apdu import ActionRequestNormal, decode_apdu
from codec.association import AssociationSettings, ClientAssociation, SecuritySettings
from codec.axdr import Data
from codec.errors import AssociationError
from codec.hdlc import NEED_DATA
from codec.link import WrapperClientLink
from codec.security import (
    MemoryCounter,
    SecurityKeys,
    SecurityPolicy,
    cipher_apdu,
    decipher_apdu,
)
from codec.wrapper import WrapperFrame, decode_wrapper

KEYS = SecurityKeys(bytes(range(16)), bytes(range(0xD0, 0xE0)))
TITLE = b"DLMSBRDG"


def first_aarq() -> bytes:
    security = SecuritySettings(
        mechanism=AuthenticationMechanism.HIGH_GMAC,
        policy=SecurityPolicy.AUTHENTICATED_ENCRYPTED,
        system_title=TITLE,
        keys=KEYS,
        counter=MemoryCounter(5),
        random=lambda n: bytes(range(n)),
    )
    association = ClientAssociation(WrapperClientLink(1, 1), AssociationSettings(security=security))
    association.open(0.0)
    assert association.next_event() is NEED_DATA
    return association.data_to_send()[8:]  # after the wrapper header


def test_aarq_is_reproducible_with_an_injected_random_source() -> None:
    raw = first_aarq()
    assert raw == first_aarq()
    aarq = decode_acse(raw)
    assert isinstance(aarq, AARQ)
    assert aarq.context == ApplicationContext.LOGICAL_NAME_CIPHERED
    assert aarq.password == bytes(range(16))  # the challenge CtoS
    assert aarq.calling_ap_title == TITLE
    assert aarq.initiate is None and aarq.ciphered_initiate is not None
    parsed, plain = decipher_apdu(aarq.ciphered_initiate, TITLE, KEYS)
    assert parsed.header.invocation_counter == 5
    assert plain[0] == 0x01  # an InitiateRequest


# -- refusals and HLS details, against hand-made AAREs ---------------------------------------

METER_TITLE = bytes.fromhex("4D4D4D0000BC614E")
RESPONSE = InitiateResponse(6, Conformance.GET | Conformance.ACTION, 512, 0x0007)


def _client(
    mechanism: AuthenticationMechanism, policy: SecurityPolicy | None, **changes: Any
) -> ClientAssociation:
    security = SecuritySettings(
        mechanism=mechanism,
        policy=policy,
        system_title=TITLE,
        keys=KEYS,
        secret=b"hls-secret",
        counter=MemoryCounter(5),
        random=lambda n: bytes(range(n)),
        **changes,
    )
    association = ClientAssociation(WrapperClientLink(1, 1), AssociationSettings(security=security))
    association.open(0.0)
    assert association.next_event() is NEED_DATA
    association.data_to_send()  # the AARQ
    return association


def _answer(association: ClientAssociation, aare: AARE) -> None:
    association.receive_data(WrapperFrame(1, 1, encode_acse(aare)).encode(), 0.0)


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (AssociationResult.REJECTED_PERMANENT, "association.authentication_failure"),
        (AssociationResult.REJECTED_TRANSIENT, "association.rejected"),
    ],
)
def test_ciphered_aarq_refused_without_reason_and_unciphered(
    result: AssociationResult, code: str
) -> None:
    """What gurux_dlms's server answers to an AARQ it could not decipher: refused, no reason,
    a plain InitiateResponse. A transient refusal says nothing about the keys."""
    association = _client(AuthenticationMechanism.HIGH_GMAC, SecurityPolicy.AUTHENTICATED_ENCRYPTED)
    _answer(
        association,
        AARE(
            result,
            SourceDiagnostic(value=AcseServiceUser.NO_REASON_GIVEN),
            context=ApplicationContext.LOGICAL_NAME_CIPHERED,
            initiate_response=RESPONSE,
            responding_ap_title=METER_TITLE,
        ),
    )
    with pytest.raises(AssociationError) as info:
        association.next_event()
    assert info.value.code == code
    if code == "association.authentication_failure":
        assert "could not decipher it" in str(info.value)


def _sha256_aare(title: bytes | None) -> AARE:
    return AARE(
        AssociationResult.ACCEPTED,
        SourceDiagnostic(value=AcseServiceUser.AUTHENTICATION_REQUIRED),
        initiate_response=RESPONSE,
        mechanism=AuthenticationMechanism.HIGH_SHA256,
        responding_ap_title=title,
        authentication_value=b"S" * 16,
    )


def test_hls_sha256_without_any_meter_title_is_named() -> None:
    association = _client(AuthenticationMechanism.HIGH_SHA256, None)
    _answer(association, _sha256_aare(None))
    with pytest.raises(AssociationError) as info:
        association.next_event()
    assert info.value.code == "association.wrong_system_title"
    assert "needs the meter's system title" in str(info.value)
    assert association.data_to_send() == b""  # no f(StoC) computed with a made-up title


@pytest.mark.parametrize("configured", [True, False], ids=["configured", "from-aare"])
def test_hls_sha256_uses_the_meter_title_from_the_aare_or_the_config(configured: bool) -> None:
    changes = {"server_system_title": METER_TITLE} if configured else {}
    association = _client(AuthenticationMechanism.HIGH_SHA256, None, **changes)
    _answer(association, _sha256_aare(None if configured else METER_TITLE))
    assert association.next_event() is NEED_DATA
    action = decode_apdu(decode_wrapper(association.data_to_send()).payload)
    assert isinstance(action, ActionRequestNormal)
    assert isinstance(action.parameters, Data)
    me = hls.HlsParty(AuthenticationMechanism.HIGH_SHA256, TITLE, b"hls-secret")
    expected = hls.respond(me, b"S" * 16, peer_title=METER_TITLE, my_challenge=bytes(range(16)))
    assert action.parameters.value == expected


def test_hls_reply_goes_with_the_global_key_even_with_a_dedicated_key() -> None:
    policy = SecurityPolicy.AUTHENTICATED_ENCRYPTED
    association = _client(AuthenticationMechanism.HIGH_GMAC, policy, dedicated_key=True)
    _answer(
        association,
        AARE(
            AssociationResult.ACCEPTED,
            SourceDiagnostic(value=AcseServiceUser.AUTHENTICATION_REQUIRED),
            context=ApplicationContext.LOGICAL_NAME_CIPHERED,
            mechanism=AuthenticationMechanism.HIGH_GMAC,
            responding_ap_title=METER_TITLE,
            authentication_value=b"S" * 16,
            ciphered_initiate=cipher_apdu(
                encode_initiate_response(RESPONSE), policy, METER_TITLE, 1, KEYS
            ),
        ),
    )
    assert association.next_event() is NEED_DATA
    action = decode_wrapper(association.data_to_send()).payload
    assert action[0] == 0xCB  # glo-action-request, not ded-action-request (0xD3)
    _, plain = decipher_apdu(action, TITLE, KEYS)
    assert plain[0] == 0xC3
