"""Security suite 0: known answers (Green Book example), gurux_dlms as an independent peer,
tamper detection, the ciphered APDU forms and the HLS functions."""

from __future__ import annotations

import hashlib

import pytest
from gurux_dlms.AesGcmParameter import AesGcmParameter
from gurux_dlms.enums import Security
from gurux_dlms.GXCiphering import GXCiphering
from gurux_dlms.GXDLMSChippering import GXDLMSChippering
from hypothesis import given
from hypothesis import strategies as st

from codec import hls
from codec.acse import AuthenticationMechanism as M
from codec.errors import DecodeError, EncodeError, ProtocolError
from codec.security import (
    CipheredTag,
    MemoryCounter,
    SecurityError,
    SecurityKeys,
    SecurityPolicy,
    cipher_apdu,
    decipher_apdu,
    diagnose_failure,
    parse_ciphered,
    protect,
    unprotect,
)

# The Green Book's suite 0 example: keys, system title, counter and a GET of the clock.
EK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
AK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
TITLE = bytes.fromhex("4D4D4D0000BC614E")
IC = 0x01234567
GET_CLOCK = bytes.fromhex("C0010000080000010000FF0200")
KEYS = SecurityKeys(EK, AK)

GREEN_BOOK = {
    SecurityPolicy.AUTHENTICATED: (
        "C81E1001234567C0010000080000010000FF020006725D910F9221D263877516"
    ),
    SecurityPolicy.ENCRYPTED: "C8122001234567411312FF935A47566827C467BC",
    SecurityPolicy.AUTHENTICATED_ENCRYPTED: (
        "C81E3001234567411312FF935A47566827C467BC7D825C3BE4A77C3FCC056B6B"
    ),
}
_GURUX = {
    SecurityPolicy.AUTHENTICATED: Security.AUTHENTICATION,
    SecurityPolicy.ENCRYPTED: Security.ENCRYPTION,
    SecurityPolicy.AUTHENTICATED_ENCRYPTED: Security.AUTHENTICATION_ENCRYPTION,
}


@pytest.mark.parametrize("policy", list(SecurityPolicy))
def test_green_book_glo_get_request(policy: SecurityPolicy) -> None:
    ciphered = cipher_apdu(GET_CLOCK, policy, TITLE, IC, KEYS)
    assert ciphered.hex().upper() == GREEN_BOOK[policy]
    parsed, plain = decipher_apdu(ciphered, TITLE, KEYS)
    assert plain == GET_CLOCK
    assert parsed.tag is CipheredTag.GLO_GET_REQUEST
    assert parsed.header.invocation_counter == IC
    assert parsed.header.policy is policy


def _gurux_cipher(policy: SecurityPolicy, tag: int, plain: bytes, ic: int, key: bytes) -> bytes:
    p = AesGcmParameter(tag, bytearray(TITLE), bytearray(key), bytearray(AK))
    p.security = _GURUX[policy]
    p.invocationCounter = ic
    return bytes(GXDLMSChippering.encryptAesGcm(p, bytearray(plain)))


@given(
    policy=st.sampled_from(list(SecurityPolicy)),
    body=st.binary(max_size=300),
    ic=st.integers(0, 0xFFFFFFFF),
    service=st.sampled_from([0xC0, 0xC1, 0xC3, 0xC4, 0xC5, 0xC7]),
    dedicated=st.booleans(),
)
def test_same_bytes_as_gurux(
    policy: SecurityPolicy, body: bytes, ic: int, service: int, dedicated: bool
) -> None:
    plain = bytes((service,)) + body
    key = bytes(range(0x40, 0x50)) if dedicated else None
    ours = cipher_apdu(plain, policy, TITLE, ic, KEYS, dedicated_key=key)
    tag = ours[0]
    assert tag == service + (0x10 if dedicated else 0x08)
    assert ours == _gurux_cipher(policy, tag, plain, ic, key or EK)
    assert decipher_apdu(ours, TITLE, KEYS, dedicated_key=key)[1] == plain


@given(
    policy=st.sampled_from([SecurityPolicy.AUTHENTICATED, SecurityPolicy.AUTHENTICATED_ENCRYPTED]),
    body=st.binary(max_size=64),
    data=st.data(),
)
def test_tampering_with_any_byte_is_detected(
    policy: SecurityPolicy, body: bytes, data: st.DataObject
) -> None:
    ciphered = bytearray(cipher_apdu(b"\xc4" + body, policy, TITLE, IC, KEYS))
    index = data.draw(st.integers(0, len(ciphered) - 1))
    flip = data.draw(st.integers(1, 255))
    ciphered[index] ^= flip
    with pytest.raises((SecurityError, DecodeError)):
        decipher_apdu(bytes(ciphered), TITLE, KEYS)


def test_wrong_title_or_keys_fail_the_tag() -> None:
    ciphered = cipher_apdu(GET_CLOCK, SecurityPolicy.AUTHENTICATED_ENCRYPTED, TITLE, IC, KEYS)
    with pytest.raises(SecurityError) as info:
        decipher_apdu(ciphered, b"ABCDEFGH", KEYS)
    assert info.value.code == "security.authentication_failed"
    for keys in (SecurityKeys(EK, bytes(16)), SecurityKeys(bytes(16), AK)):
        with pytest.raises(SecurityError):
            decipher_apdu(ciphered, TITLE, keys)


def test_diagnosis_tells_which_key_is_wrong() -> None:
    content = protect(SecurityPolicy.AUTHENTICATED_ENCRYPTED, TITLE, IC, KEYS, b"\x08\x00\x06")
    assert diagnose_failure(TITLE, SecurityKeys(EK, bytes(16)), content, (0x08,)) == (
        "authentication_key"
    )
    assert diagnose_failure(TITLE, SecurityKeys(bytes(16), AK), content, (0x08,)) == (
        "block_cipher_key"
    )


def test_general_glo_ciphering_carries_the_title() -> None:
    ciphered = cipher_apdu(
        GET_CLOCK, SecurityPolicy.AUTHENTICATED_ENCRYPTED, TITLE, IC, KEYS, general=True
    )
    assert ciphered[:10] == b"\xdb\x08" + TITLE
    assert ciphered == _gurux_cipher(
        SecurityPolicy.AUTHENTICATED_ENCRYPTED, 0xDB, GET_CLOCK, IC, EK
    )
    parsed, plain = decipher_apdu(ciphered, b"IGNORED!", KEYS)
    assert parsed.system_title == TITLE and plain == GET_CLOCK


def test_ded_ciphering_needs_the_dedicated_key() -> None:
    key = bytes(range(0x60, 0x70))
    ciphered = cipher_apdu(GET_CLOCK, SecurityPolicy.ENCRYPTED, TITLE, IC, KEYS, dedicated_key=key)
    assert ciphered[0] == CipheredTag.DED_GET_REQUEST
    with pytest.raises(SecurityError) as info:
        decipher_apdu(ciphered, TITLE, KEYS)
    assert info.value.code == "security.policy_mismatch"
    assert decipher_apdu(ciphered, TITLE, KEYS, dedicated_key=key)[1] == GET_CLOCK


@pytest.mark.parametrize(
    "data", [b"", b"\xc8", b"\xc8\x05\x30\x00", b"\xc8\x10\x30\x00\x00\x00\x01", b"\xc0\x01"]
)
def test_malformed_ciphered_apdus_raise_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_ciphered(data)


def test_unprotect_refuses_other_suites_and_compression() -> None:
    with pytest.raises(SecurityError, match="suite 1"):
        unprotect(TITLE, KEYS, b"\x31\x00\x00\x00\x01" + bytes(20))
    with pytest.raises(SecurityError, match="compressed"):
        unprotect(TITLE, KEYS, b"\xb0\x00\x00\x00\x01" + bytes(20))


def test_keys_are_never_shown_and_checked() -> None:
    assert EK.hex() not in repr(KEYS).lower() and AK.hex() not in repr(KEYS).lower()
    with pytest.raises(EncodeError):
        SecurityKeys(b"short", AK)


def test_memory_counter_never_repeats_and_stops_at_the_top() -> None:
    counter = MemoryCounter(0xFFFFFFFE)
    assert [counter.next(), counter.next()] == [0xFFFFFFFE, 0xFFFFFFFF]
    with pytest.raises(EncodeError):
        counter.next()


# -- HLS ------------------------------------------------------------------------------------------

CTOS = bytes(range(16))
STOC = bytes(range(100, 116))
CLIENT = b"CLIENT01"
SECRET = b"12345678"


def test_hls_gmac_matches_gurux() -> None:
    cipher = GXCiphering(bytearray(TITLE))
    cipher.invocationCounter = IC
    expected = bytes(cipher.generateGmacPassword(bytearray(STOC)))
    party = hls.HlsParty(M.HIGH_GMAC, TITLE, keys=KEYS)
    answer = hls.respond(party, STOC, invocation_counter=IC)
    assert answer == expected
    assert hls.verify(party, answer, STOC)
    assert not hls.verify(party, answer, CTOS)
    other = hls.HlsParty(M.HIGH_GMAC, TITLE, keys=SecurityKeys(EK, bytes(16)))
    assert not hls.verify(other, answer, STOC)


def test_hls_md5_sha1_sha256_definitions() -> None:
    md5 = hls.HlsParty(M.HIGH_MD5, secret=SECRET)
    assert hls.respond(md5, STOC) == hashlib.md5(STOC + SECRET).digest()
    sha1 = hls.HlsParty(M.HIGH_SHA1, secret=SECRET)
    assert hls.respond(sha1, STOC) == hashlib.sha1(STOC + SECRET).digest()
    client = hls.HlsParty(M.HIGH_SHA256, CLIENT, secret=SECRET)
    answer = hls.respond(client, STOC, peer_title=TITLE, my_challenge=CTOS)
    assert answer == hashlib.sha256(SECRET + CLIENT + TITLE + STOC + CTOS).digest()
    # The meter checks it with its own view: the client's title, its StoC, the client's CtoS.
    assert hls.verify(client, answer, STOC, my_title=TITLE, peer_challenge=CTOS)
    assert not hls.verify(
        hls.HlsParty(M.HIGH_SHA256, CLIENT, secret=b"other"),
        answer,
        STOC,
        my_title=TITLE,
        peer_challenge=CTOS,
    )


def test_challenges_come_from_the_injected_source() -> None:
    assert hls.make_challenge(lambda n: b"\x07" * n) == b"\x07" * 16
    with pytest.raises(EncodeError):
        hls.make_challenge(lambda n: b"", 16)
    with pytest.raises(EncodeError):
        hls.make_challenge(length=4)


@given(data=st.binary(max_size=80), tag=st.sampled_from([int(t) for t in CipheredTag]))
def test_arbitrary_ciphered_bytes_raise_only_protocol_errors(data: bytes, tag: int) -> None:
    raw = bytes((tag,)) + data
    outcome: object
    try:
        outcome = decipher_apdu(raw, TITLE, KEYS, dedicated_key=EK)
    except ProtocolError as exc:
        outcome = exc
    if isinstance(outcome, ProtocolError):
        assert outcome.code.startswith(("security.", "decode."))
    else:
        # Only encryption-only content "deciphers" without a tag; it must carry its APDU.
        assert parse_ciphered(raw).header.policy is SecurityPolicy.ENCRYPTED
