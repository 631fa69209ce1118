"""High-level security (HLS) authentication: challenges and the f(challenge) of each mechanism.

The 4-pass procedure of the Green Book:

1. the client sends a random challenge CtoS in the AARQ (calling-authentication-value);
2. the meter answers its own challenge StoC in the AARE (responding-authentication-value);
3. the client proves it knows the secret with f(StoC), sent as the parameter of
   ``reply_to_HLS_authentication`` (method 1 of the association object 0-0:40.0.0.255);
4. the meter returns f(CtoS) in the action response and the client checks it.

f() per mechanism (all using the ``cryptography`` primitives):

- HLS-MD5: ``MD5(challenge || secret)``; HLS-SHA1: ``SHA1(challenge || secret)``;
- HLS-SHA256: ``SHA256(secret || title of the sender || title of the receiver || the challenge
  the receiver sent || the challenge the sender sent)``;
- HLS-GMAC: ``SC || IC || GMAC(SC || AK || challenge)`` with SC = 0x10 and the sender's system
  title and invocation counter as the IV.

Sans-IO: the random source is injected so that tests are reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs
from cryptography.hazmat.primitives import hashes

from codec.acse import AuthenticationMechanism
from codec.errors import EncodeError
from codec.obis import Obis
from codec.security import SecurityKeys, gmac_tag, tags_equal

__all__ = [
    "ASSOCIATION_LN",
    "ASSOCIATION_LN_CLASS",
    "HLS_MECHANISMS",
    "REPLY_TO_HLS_AUTHENTICATION",
    "HlsParty",
    "RandomSource",
    "make_challenge",
    "respond",
    "verify",
]

#: The current association object and its reply_to_HLS_authentication method.
ASSOCIATION_LN = Obis.parse("0-0:40.0.0.255")
ASSOCIATION_LN_CLASS = 15
REPLY_TO_HLS_AUTHENTICATION = 1

HLS_MECHANISMS = frozenset(
    {
        AuthenticationMechanism.HIGH_MD5,
        AuthenticationMechanism.HIGH_SHA1,
        AuthenticationMechanism.HIGH_SHA256,
        AuthenticationMechanism.HIGH_GMAC,
    }
)

#: ``n -> n random bytes``; :func:`os.urandom` unless a test injects its own.
RandomSource = Callable[[int], bytes]

CHALLENGE_LENGTH = 16


def make_challenge(random: RandomSource = os.urandom, length: int = CHALLENGE_LENGTH) -> bytes:
    """A fresh challenge of ``length`` (8..64) bytes."""
    if not 8 <= length <= 64:
        raise EncodeError(
            f"an HLS challenge is 8..64 bytes, not {length}", code="hls.bad_challenge"
        )
    challenge = random(length)
    if len(challenge) != length:
        raise EncodeError("the random source returned too few bytes", code="hls.bad_challenge")
    return challenge


@attrs.frozen(repr=False)
class HlsParty:
    """What one side needs to compute f(): its system title, its secret or keys.

    ``secret`` is the HLS secret of MD5/SHA1/SHA256; ``keys`` are used by GMAC.
    """

    mechanism: AuthenticationMechanism
    system_title: bytes = b""
    secret: bytes | None = None
    keys: SecurityKeys | None = None

    def __repr__(self) -> str:
        return f"HlsParty({self.mechanism.name}, <secrets hidden>)"


def _hash(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


def respond(
    me: HlsParty,
    challenge: bytes,
    *,
    peer_title: bytes = b"",
    my_challenge: bytes = b"",
    invocation_counter: int = 0,
) -> bytes:
    """f(``challenge``): the answer ``me`` sends to the peer's challenge.

    ``peer_title`` and ``my_challenge`` (the challenge ``me`` sent) are used by HLS-SHA256;
    ``invocation_counter`` (``me``'s next one) by HLS-GMAC.
    """
    mechanism = me.mechanism
    if mechanism == AuthenticationMechanism.HIGH_GMAC:
        if me.keys is None:
            raise EncodeError("HLS-GMAC needs the keys", code="hls.missing_secret")
        tag = gmac_tag(me.system_title, invocation_counter, me.keys, challenge)
        return b"\x10" + invocation_counter.to_bytes(4, "big") + tag
    if me.secret is None:
        raise EncodeError(f"{mechanism.name} needs the HLS secret", code="hls.missing_secret")
    if mechanism == AuthenticationMechanism.HIGH_MD5:
        return _hash(hashes.MD5(), challenge + me.secret)
    if mechanism == AuthenticationMechanism.HIGH_SHA1:
        return _hash(hashes.SHA1(), challenge + me.secret)
    if mechanism == AuthenticationMechanism.HIGH_SHA256:
        return _hash(
            hashes.SHA256(),
            me.secret + me.system_title + peer_title + challenge + my_challenge,
        )
    raise EncodeError(
        f"authentication mechanism {mechanism.name} is not an HLS mechanism",
        code="hls.unsupported",
    )


def verify(
    peer: HlsParty,
    answer: bytes,
    challenge: bytes,
    *,
    my_title: bytes = b"",
    peer_challenge: bytes = b"",
) -> bool:
    """Whether ``answer`` is the peer's correct f(``challenge``) (the challenge we sent).

    ``peer`` holds the peer's system title and the shared secret or keys; ``peer_challenge`` is
    the challenge the peer sent us (HLS-SHA256). For HLS-GMAC the invocation counter is taken
    from the answer itself.
    """
    if peer.mechanism == AuthenticationMechanism.HIGH_GMAC:
        if len(answer) != 17 or answer[0] != 0x10:
            return False
        counter = int.from_bytes(answer[1:5], "big")
        expected = respond(peer, challenge, invocation_counter=counter)
    else:
        expected = respond(peer, challenge, peer_title=my_title, my_challenge=peer_challenge)
    return tags_equal(expected, answer)
