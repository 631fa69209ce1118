"""DLMS security suite 0 (AES-GCM-128): the security header and ciphered xDLMS APDUs, sans-IO.

What the Green Book (DLMS UA 1000-2, security) specifies and this module implements:

- the **security header**: a security-control byte (bits 0-3 the suite id, bit 4
  authentication, bit 5 encryption, bit 6 broadcast key, bit 7 compression) followed by the
  4-byte **invocation counter**;
- the **initialisation vector**: the sender's 8-byte system title followed by the counter;
- **authentication only**: the plain APDU followed by a 12-byte GMAC tag over
  ``SC || AK || plaintext``; **encryption only**: the AES-GCM ciphertext without a tag;
  **authenticated encryption**: the ciphertext and a 12-byte tag with ``SC || AK`` as associated
  data;
- the **ciphered APDUs**: glo- (global unicast key) and ded- (dedicated key) forms of the
  initiate request/response, GET/SET/ACTION requests and responses, event notification and
  confirmed-service-error, and general-glo-ciphering / general-ded-ciphering, which carry the
  sender's system title.

Everything below AES-GCM is the ``cryptography`` package's; nothing here is hand-rolled.
Keys never appear in a ``repr`` or an error message.
"""

from __future__ import annotations

import enum
import hmac
from typing import Protocol

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from codec.axdr import decode_length, encode_length
from codec.errors import DecodeError, EncodeError, RemoteProtocolError

__all__ = [
    "TAG_LENGTH",
    "CipheredApdu",
    "CipheredTag",
    "InvocationCounterSource",
    "MemoryCounter",
    "SecurityError",
    "SecurityHeader",
    "SecurityKeys",
    "SecurityPolicy",
    "cipher_apdu",
    "ciphered_tag_for",
    "decipher_apdu",
    "diagnose_failure",
    "gmac_tag",
    "is_ciphered",
    "parse_ciphered",
    "plain_tag_for",
    "protect",
    "unprotect",
]

#: Length of the GCM authentication tag used by suite 0 (96 bits).
TAG_LENGTH = 12
SYSTEM_TITLE_LENGTH = 8
KEY_LENGTH = 16
#: The largest invocation counter (it is a double-long-unsigned).
MAX_INVOCATION_COUNTER = 0xFFFFFFFF

_SC_AUTHENTICATION = 0x10
_SC_ENCRYPTION = 0x20
_SC_BROADCAST = 0x40
_SC_COMPRESSION = 0x80
_SUITE_0 = 0


class SecurityError(RemoteProtocolError):
    """A ciphered APDU that fails its check: wrong key, tampered bytes, replayed counter.

    Codes: ``security.authentication_failed`` (the GCM tag does not match: wrong keys, wrong
    system title or tampered bytes), ``security.replay`` (an invocation counter not above the
    last one seen), ``security.policy_mismatch`` (the peer protected the APDU otherwise than
    agreed), ``security.unsupported`` (another suite, compression), ``security.malformed``.
    """

    default_code = "security"


class SecurityPolicy(enum.IntEnum):
    """How APDUs are protected: the security-control bits 4 and 5."""

    AUTHENTICATED = _SC_AUTHENTICATION
    ENCRYPTED = _SC_ENCRYPTION
    AUTHENTICATED_ENCRYPTED = _SC_AUTHENTICATION | _SC_ENCRYPTION

    @property
    def label(self) -> str:
        """``authenticated``, ``encrypted`` or ``authenticated-encrypted``."""
        return (self.name or "").lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> SecurityPolicy:
        """The policy named ``label`` (as in the configuration); ValueError if unknown."""
        for member in cls:
            if member.label == label:
                return member
        raise ValueError(label)


class CipheredTag(enum.IntEnum):
    """Tags of the ciphered xDLMS APDUs."""

    GLO_INITIATE_REQUEST = 0x21
    GLO_INITIATE_RESPONSE = 0x28
    GLO_CONFIRMED_SERVICE_ERROR = 0x2E
    DED_INITIATE_REQUEST = 0x41
    DED_INITIATE_RESPONSE = 0x48
    DED_CONFIRMED_SERVICE_ERROR = 0x4E
    GLO_GET_REQUEST = 0xC8
    GLO_SET_REQUEST = 0xC9
    GLO_EVENT_NOTIFICATION = 0xCA
    GLO_ACTION_REQUEST = 0xCB
    GLO_GET_RESPONSE = 0xCC
    GLO_SET_RESPONSE = 0xCD
    GLO_ACTION_RESPONSE = 0xCF
    DED_GET_REQUEST = 0xD0
    DED_SET_REQUEST = 0xD1
    DED_EVENT_NOTIFICATION = 0xD2
    DED_ACTION_REQUEST = 0xD3
    DED_GET_RESPONSE = 0xD4
    DED_SET_RESPONSE = 0xD5
    DED_ACTION_RESPONSE = 0xD7
    GENERAL_GLO_CIPHERING = 0xDB
    GENERAL_DED_CIPHERING = 0xDC

    @property
    def label(self) -> str:
        """E.g. ``glo-get-request``."""
        return (self.name or "").lower().replace("_", "-")

    @property
    def dedicated(self) -> bool:
        """Whether the dedicated key protects this APDU."""
        return (self.name or "").startswith(("DED_", "GENERAL_DED"))


# plain tag -> (glo tag, ded tag)
_CIPHERED_FORMS: dict[int, tuple[CipheredTag, CipheredTag]] = {
    0x01: (CipheredTag.GLO_INITIATE_REQUEST, CipheredTag.DED_INITIATE_REQUEST),
    0x08: (CipheredTag.GLO_INITIATE_RESPONSE, CipheredTag.DED_INITIATE_RESPONSE),
    0x0E: (CipheredTag.GLO_CONFIRMED_SERVICE_ERROR, CipheredTag.DED_CONFIRMED_SERVICE_ERROR),
    0xC0: (CipheredTag.GLO_GET_REQUEST, CipheredTag.DED_GET_REQUEST),
    0xC1: (CipheredTag.GLO_SET_REQUEST, CipheredTag.DED_SET_REQUEST),
    0xC2: (CipheredTag.GLO_EVENT_NOTIFICATION, CipheredTag.DED_EVENT_NOTIFICATION),
    0xC3: (CipheredTag.GLO_ACTION_REQUEST, CipheredTag.DED_ACTION_REQUEST),
    0xC4: (CipheredTag.GLO_GET_RESPONSE, CipheredTag.DED_GET_RESPONSE),
    0xC5: (CipheredTag.GLO_SET_RESPONSE, CipheredTag.DED_SET_RESPONSE),
    0xC7: (CipheredTag.GLO_ACTION_RESPONSE, CipheredTag.DED_ACTION_RESPONSE),
}
_PLAIN_TAG: dict[int, int] = {
    int(ciphered): plain for plain, forms in _CIPHERED_FORMS.items() for ciphered in forms
}
_CIPHERED_TAGS = frozenset(int(t) for t in CipheredTag)
_GENERAL = (CipheredTag.GENERAL_GLO_CIPHERING, CipheredTag.GENERAL_DED_CIPHERING)


def is_ciphered(tag: int) -> bool:
    """Whether ``tag`` starts a ciphered APDU."""
    return tag in _CIPHERED_TAGS


def ciphered_tag_for(plain_tag: int, *, dedicated: bool = False) -> CipheredTag:
    """The glo- (or ded-) tag that carries a plain APDU with tag ``plain_tag``."""
    forms = _CIPHERED_FORMS.get(plain_tag)
    if forms is None:
        raise EncodeError(
            f"APDU tag 0x{plain_tag:02X} has no service-specific ciphered form;"
            " use general-glo-ciphering",
            code="security.no_ciphered_form",
        )
    return forms[1 if dedicated else 0]


def plain_tag_for(tag: int) -> int | None:
    """The plain APDU tag a service-specific ciphered tag carries (None for general ciphering)."""
    return _PLAIN_TAG.get(tag)


@attrs.frozen(repr=False)
class SecurityKeys:
    """The global unicast encryption key (block cipher key) and the authentication key.

    Never shown: ``repr`` names only the lengths.
    """

    block_cipher_key: bytes = attrs.field(
        validator=lambda _i, _a, v: _check_key(v, "block cipher key")
    )
    authentication_key: bytes = attrs.field(
        validator=lambda _i, _a, v: _check_key(v, "authentication key")
    )

    def __repr__(self) -> str:
        return "SecurityKeys(<hidden>)"


def _check_key(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != KEY_LENGTH:
        raise EncodeError(
            f"the {what} must be {KEY_LENGTH} bytes"
            f" (got {len(value) if isinstance(value, bytes) else type(value).__name__})",
            code="security.bad_key",
        )


def check_system_title(value: bytes, what: str = "system title") -> bytes:
    """``value`` if it is an 8-byte system title, else EncodeError."""
    if not isinstance(value, bytes) or len(value) != SYSTEM_TITLE_LENGTH:
        raise EncodeError(
            f"the {what} must be {SYSTEM_TITLE_LENGTH} bytes", code="security.bad_system_title"
        )
    return value


@attrs.frozen
class SecurityHeader:
    """The security-control byte and the invocation counter in front of a protected payload."""

    control: int
    invocation_counter: int

    @property
    def suite(self) -> int:
        """The security suite id (0 for AES-GCM-128)."""
        return self.control & 0x0F

    @property
    def authenticated(self) -> bool:
        """Whether a GCM tag follows the payload."""
        return bool(self.control & _SC_AUTHENTICATION)

    @property
    def encrypted(self) -> bool:
        """Whether the payload is encrypted."""
        return bool(self.control & _SC_ENCRYPTION)

    @property
    def broadcast(self) -> bool:
        """Whether the broadcast key was used."""
        return bool(self.control & _SC_BROADCAST)

    @property
    def compressed(self) -> bool:
        """Whether the plaintext was compressed before protection."""
        return bool(self.control & _SC_COMPRESSION)

    @property
    def policy(self) -> SecurityPolicy | None:
        """The policy this header declares (None: neither bit set)."""
        bits = self.control & (_SC_AUTHENTICATION | _SC_ENCRYPTION)
        return SecurityPolicy(bits) if bits else None

    def encode(self) -> bytes:
        """The 5 header bytes."""
        return bytes((self.control,)) + self.invocation_counter.to_bytes(4, "big")


def _iv(system_title: bytes, invocation_counter: int) -> bytes:
    return check_system_title(system_title) + invocation_counter.to_bytes(4, "big")


def _check_counter(invocation_counter: int) -> int:
    if isinstance(invocation_counter, bool) or not (
        0 <= invocation_counter <= MAX_INVOCATION_COUNTER
    ):
        raise EncodeError(
            f"invocation counter must be 0..{MAX_INVOCATION_COUNTER}, got {invocation_counter}",
            code="security.counter_exhausted",
        )
    return invocation_counter


def _gcm_encrypt(key: bytes, iv: bytes, aad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    encryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(aad)
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    return ciphertext, encryptor.tag[:TAG_LENGTH]


def _gcm_decrypt(key: bytes, iv: bytes, aad: bytes, ciphertext: bytes, tag: bytes) -> bytes:
    decryptor = Cipher(
        algorithms.AES(key), modes.GCM(iv, tag, min_tag_length=TAG_LENGTH)
    ).decryptor()
    decryptor.authenticate_additional_data(aad)
    try:
        return decryptor.update(ciphertext) + decryptor.finalize()
    except InvalidTag:
        raise SecurityError(
            "the authentication tag does not match (wrong keys, wrong system title"
            " or altered bytes)",
            code="security.authentication_failed",
        ) from None


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    # GCM's ciphertext without its tag: AES-CTR starting at counter block 2 (J0 + 1).
    transform = Cipher(algorithms.AES(key), modes.CTR(iv + b"\x00\x00\x00\x02")).encryptor()
    return transform.update(data) + transform.finalize()


def protect(
    policy: SecurityPolicy,
    system_title: bytes,
    invocation_counter: int,
    keys: SecurityKeys,
    plaintext: bytes,
    *,
    encryption_key: bytes | None = None,
) -> bytes:
    """``SC || IC || payload [|| tag]``: ``plaintext`` protected under ``policy`` (suite 0).

    ``system_title`` is the sender's; ``encryption_key`` replaces the block cipher key (the
    dedicated key of ded- ciphering).
    """
    policy = SecurityPolicy(policy)
    header = SecurityHeader(int(policy) | _SUITE_0, _check_counter(invocation_counter))
    key = keys.block_cipher_key if encryption_key is None else encryption_key
    iv = _iv(system_title, invocation_counter)
    sc = bytes((header.control,))
    if policy is SecurityPolicy.AUTHENTICATED:
        _, tag = _gcm_encrypt(key, iv, sc + keys.authentication_key + plaintext, b"")
        return header.encode() + plaintext + tag
    if policy is SecurityPolicy.ENCRYPTED:
        return header.encode() + _ctr(key, iv, plaintext)
    ciphertext, tag = _gcm_encrypt(key, iv, sc + keys.authentication_key, plaintext)
    return header.encode() + ciphertext + tag


def unprotect(
    system_title: bytes,
    keys: SecurityKeys,
    data: bytes,
    *,
    encryption_key: bytes | None = None,
) -> tuple[SecurityHeader, bytes]:
    """Check and decipher ``SC || IC || payload [|| tag]`` sent by ``system_title``.

    Returns the header and the plaintext; raises :class:`SecurityError`.
    """
    if len(data) < 5:
        raise SecurityError(
            f"ciphered content of {len(data)} bytes has no security header",
            code="security.malformed",
        )
    header = SecurityHeader(data[0], int.from_bytes(data[1:5], "big"))
    if header.suite != _SUITE_0:
        raise SecurityError(
            f"security suite {header.suite} is not supported (only suite 0, AES-GCM-128)",
            code="security.unsupported",
        )
    if header.compressed:
        raise SecurityError("compressed APDUs are not supported", code="security.unsupported")
    key = keys.block_cipher_key if encryption_key is None else encryption_key
    iv = _iv(system_title, header.invocation_counter)
    body = data[5:]
    sc = data[:1]
    policy = header.policy
    if policy is None:
        raise SecurityError(
            f"security control 0x{header.control:02X} neither authenticates nor encrypts",
            code="security.policy_mismatch",
        )
    if policy is SecurityPolicy.ENCRYPTED:
        return header, _ctr(key, iv, body)
    if len(body) < TAG_LENGTH:
        raise SecurityError(
            f"ciphered content too short for its {TAG_LENGTH}-byte tag", code="security.malformed"
        )
    payload, tag = body[:-TAG_LENGTH], body[-TAG_LENGTH:]
    if policy is SecurityPolicy.AUTHENTICATED:
        _gcm_decrypt(key, iv, sc + keys.authentication_key + payload, b"", tag)
        return header, payload
    return header, _gcm_decrypt(key, iv, sc + keys.authentication_key, payload, tag)


def gmac_tag(
    system_title: bytes, invocation_counter: int, keys: SecurityKeys, message: bytes
) -> bytes:
    """The 12-byte GMAC of ``message`` (SC = authentication, suite 0), as HLS-GMAC uses it."""
    iv = _iv(system_title, _check_counter(invocation_counter))
    sc = bytes((_SC_AUTHENTICATION | _SUITE_0,))
    return _gcm_encrypt(keys.block_cipher_key, iv, sc + keys.authentication_key + message, b"")[1]


def tags_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two tags or challenges' responses."""
    return hmac.compare_digest(a, b)


# -- ciphered APDUs -------------------------------------------------------------------------------


@attrs.frozen
class CipheredApdu:
    """A ciphered APDU taken apart, before any key is used."""

    tag: CipheredTag
    #: The sender's system title (general-glo/ded-ciphering only).
    system_title: bytes | None
    header: SecurityHeader
    #: ``SC || IC || payload [|| tag]``, what :func:`unprotect` takes.
    content: bytes

    @property
    def dedicated(self) -> bool:
        """Whether the dedicated key protects it."""
        return self.tag.dedicated


def parse_ciphered(data: bytes) -> CipheredApdu:
    """Split a ciphered APDU into tag, optional system title and protected content."""
    if not data or data[0] not in _CIPHERED_TAGS:
        raise DecodeError(
            f"not a ciphered APDU (tag 0x{data[0]:02X})" if data else "empty APDU",
            code="security.not_ciphered",
            offset=0,
        )
    tag = CipheredTag(data[0])
    pos = 1
    title: bytes | None = None
    if tag in _GENERAL:
        length, pos = decode_length(data, pos)
        if pos + length > len(data):
            raise DecodeError("truncated system title", code="security.malformed", offset=pos)
        title = bytes(data[pos : pos + length])
        pos += length
    start = pos
    length, pos = decode_length(data, pos)
    if pos + length != len(data):
        raise DecodeError(
            f"{tag.label} claims {length} bytes of ciphered content, {len(data) - pos} follow",
            code="security.malformed",
            offset=start,
        )
    content = bytes(data[pos:])
    if len(content) < 5:
        raise DecodeError(
            f"{tag.label} without a security header", code="security.malformed", offset=pos
        )
    header = SecurityHeader(content[0], int.from_bytes(content[1:5], "big"))
    return CipheredApdu(tag, title, header, content)


def cipher_apdu(
    plain: bytes,
    policy: SecurityPolicy,
    system_title: bytes,
    invocation_counter: int,
    keys: SecurityKeys,
    *,
    dedicated_key: bytes | None = None,
    general: bool = False,
) -> bytes:
    """Wrap the plain APDU ``plain`` in its glo- (``dedicated_key``: ded-) ciphered form.

    ``general`` uses general-glo-ciphering / general-ded-ciphering, which also carries
    ``system_title``.
    """
    if not plain:
        raise EncodeError("cannot cipher an empty APDU", code="security.empty")
    content = protect(
        policy, system_title, invocation_counter, keys, plain, encryption_key=dedicated_key
    )
    dedicated = dedicated_key is not None
    if general:
        tag = _GENERAL[1 if dedicated else 0]
        title = check_system_title(system_title)
        return (
            bytes((tag,))
            + encode_length(len(title))
            + title
            + encode_length(len(content))
            + content
        )
    tag = ciphered_tag_for(plain[0], dedicated=dedicated)
    return bytes((tag,)) + encode_length(len(content)) + content


def decipher_apdu(
    data: bytes | CipheredApdu,
    system_title: bytes,
    keys: SecurityKeys,
    *,
    dedicated_key: bytes | None = None,
) -> tuple[CipheredApdu, bytes]:
    """Check and decipher a ciphered APDU sent by ``system_title``; returns it and the plain APDU.

    A general-ciphering APDU names its sender; that title is used instead of ``system_title``
    only when it is 8 bytes long.
    """
    ciphered = data if isinstance(data, CipheredApdu) else parse_ciphered(data)
    if ciphered.dedicated and dedicated_key is None:
        raise SecurityError(
            f"{ciphered.tag.label} needs a dedicated key, none was agreed",
            code="security.policy_mismatch",
        )
    sender = system_title
    if ciphered.system_title is not None and len(ciphered.system_title) == SYSTEM_TITLE_LENGTH:
        sender = ciphered.system_title
    _, plain = unprotect(
        sender,
        keys,
        ciphered.content,
        encryption_key=dedicated_key if ciphered.dedicated else None,
    )
    expected = plain_tag_for(ciphered.tag)
    if expected is not None and (not plain or plain[0] != expected):
        raise SecurityError(
            f"{ciphered.tag.label} does not carry the APDU its tag promises",
            code="security.malformed",
        )
    return ciphered, plain


def diagnose_failure(
    system_title: bytes, keys: SecurityKeys, content: bytes, expected_tags: tuple[int, ...]
) -> str:
    """Which key is wrong, judged from ``content`` that failed :func:`unprotect`.

    The peer protected ``content`` (``SC || IC || ciphertext || tag``) with its keys. Without
    checking the tag, the ciphertext is deciphered with our block cipher key: if it yields one
    of the APDU tags expected, our block cipher key is the peer's and the authentication key is
    the wrong one. Returns ``"authentication_key"``, ``"block_cipher_key"`` or
    ``"keys"`` (cannot tell: authentication-only protection uses both in the tag).
    """
    if len(content) < 5:
        return "keys"
    header = SecurityHeader(content[0], int.from_bytes(content[1:5], "big"))
    body = content[5:]
    if header.policy is SecurityPolicy.AUTHENTICATED:
        return "keys"
    if header.authenticated:
        body = body[:-TAG_LENGTH]
    if not body:
        return "keys"
    first = _ctr(keys.block_cipher_key, _iv(system_title, header.invocation_counter), body[:1])
    return "authentication_key" if first[0] in expected_tags else "block_cipher_key"


class InvocationCounterSource(Protocol):
    """Where the client's invocation counters come from (each value used once)."""

    def next(self) -> int:
        """The next counter to put on an APDU; never returns the same value twice."""
        ...

    def advance_to(self, value: int) -> None:
        """Skip ahead so that the next counter is at least ``value``."""
        ...


@attrs.define
class MemoryCounter:
    """An in-memory counter source starting at ``value`` (tests, one-shot commands)."""

    value: int = 1

    def next(self) -> int:
        """The current value, then one more."""
        value = _check_counter(self.value)
        self.value += 1
        return value

    def advance_to(self, value: int) -> None:
        """Skip ahead so that the next counter is at least ``value``."""
        self.value = max(self.value, value)
