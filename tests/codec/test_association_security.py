"""The secured client association, sans-IO: reproducible AARQ from an injected random source."""

from __future__ import annotations

from codec.acse import AARQ, ApplicationContext, AuthenticationMechanism, decode_acse
from codec.association import AssociationSettings, ClientAssociation, SecuritySettings
from codec.hdlc import NEED_DATA
from codec.link import WrapperClientLink
from codec.security import MemoryCounter, SecurityKeys, SecurityPolicy, decipher_apdu

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
