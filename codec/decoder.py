"""Describe a captured byte stream: frames and the APDUs inside them, as JSON-safe dicts.

Used by ``dlms-bridge decode``, ``read --trace`` and the pcap readers. One
:class:`StreamDecoder` per direction of a connection: segmented HDLC I-frames are reassembled
(up to :data:`MAX_APDU` bytes) and the APDU is described on the frame that completes it.

Secrets are never shown: the authentication values inside an AARQ or AARE (the LLS password,
HLS challenges), the client's reply to an HLS challenge and (with :meth:`StreamDecoder.pair`)
the meter's answer to it appear as ``**`` per byte in every hex field and as ``"masked"`` in
the APDU's description, and the FCS of a frame that carried one is withheld (it is a checksum
over the secret).
"""

from __future__ import annotations

from typing import Any, Literal

from codec import acse, security
from codec import apdu as apdu_mod
from codec.acse import mask_secrets, secret_spans
from codec.errors import ProtocolError
from codec.hdlc import NEED_DATA, FrameKind, FrameScanner, frame_to_dict
from codec.wrapper import WrapperScanner

__all__ = [
    "MAX_APDU",
    "DecipherContext",
    "StreamDecoder",
    "apdu_secret_spans",
    "describe_apdu_bytes",
]

#: Longest segmented APDU reassembled for description; longer ones are reported and dropped.
MAX_APDU = 0xFFFF
#: An AARQ/AARE is scanned for secrets up to this size; whatever follows is masked whole.
_SECRET_SCAN = 4096
#: First bytes (after the LLC header) of the APDUs that may hold a secret: AARQ, AARE, and
#: ACTION-request (the client's reply to an HLS challenge). An ACTION-response is one when it
#: answers such a request (see :meth:`StreamDecoder.pair`).
_SECRET_TAGS = (0x60, 0x61, 0xC3)
_ACTION_RESPONSE_NORMAL = b"\xc7\x01"
#: The association LN object's reply_to_HLS_authentication: class 15, method 1.
_HLS_REPLY = (15, 1)


def apdu_secret_spans(data: bytes) -> list[tuple[int, int]]:
    """Where secrets lie in an APDU (or its beginning): the AARQ/AARE authentication values
    (:func:`codec.acse.secret_spans`) and the parameter of an ACTION-request-normal invoking
    reply_to_HLS_authentication (the client's answer to the meter's challenge)."""
    if data[:2] == b"\xc3\x01" and len(data) >= 13:
        class_id = int.from_bytes(data[3:5], "big")
        if (class_id, data[11]) == _HLS_REPLY and data[12] == 1:
            return [(13, max(len(data), 14))]
        return []
    return secret_spans(data)


# Ciphered tags sent by the client (the rest are sent by the meter).
_CLIENT_TAGS = frozenset({0x21, 0x41, 0xC8, 0xC9, 0xCB, 0xD0, 0xD1, 0xD3})


class DecipherContext:
    """The keys to decipher a capture with, and the system titles learnt from AARQ and AARE.

    Share one between the two directions of a connection. Keys are never described.
    """

    def __init__(
        self,
        keys: security.SecurityKeys | None,
        *,
        client_title: bytes | None = None,
        server_title: bytes | None = None,
    ) -> None:
        self.keys = keys
        self.client_title = client_title
        self.server_title = server_title
        self.dedicated_key: bytes | None = None

    def __repr__(self) -> str:
        return "DecipherContext(<keys hidden>)"

    def learn(self, decoded: object) -> None:
        """Take the system titles from an AARQ or AARE."""
        if isinstance(decoded, acse.AARQ) and decoded.calling_ap_title:
            self.client_title = decoded.calling_ap_title
            self.dedicated_key = None
        elif isinstance(decoded, acse.AARE) and decoded.responding_ap_title:
            self.server_title = decoded.responding_ap_title

    def describe(self, data: bytes) -> dict[str, Any]:
        """A ciphered APDU: its kind and header, and its content when it deciphers."""
        try:
            parsed = security.parse_ciphered(data)
        except ProtocolError as exc:
            return {"error": str(exc), "code": exc.code, "hex": data.hex()}
        header = parsed.header
        out: dict[str, Any] = {
            "kind": parsed.tag.label,
            "security": {
                "policy": None if header.policy is None else header.policy.label,
                "suite": header.suite,
                "invocation_counter": header.invocation_counter,
            },
            "length": len(data),
        }
        if parsed.system_title is not None:
            out["system_title"] = parsed.system_title.hex().upper()
        title = self.client_title if data[0] in _CLIENT_TAGS else self.server_title
        if self.keys is None or title is None:
            out["content"] = None
            return out
        try:
            _, plain = security.decipher_apdu(
                parsed, title, self.keys, dedicated_key=self.dedicated_key
            )
        except ProtocolError as exc:
            out["content"] = {"error": str(exc), "code": exc.code}
            return out
        if plain[:1] in (b"\x01", b"\x08") or (
            plain[:1] == b"\x0e" and data[0] in (0x28, 0x48, 0x2E, 0x4E)
        ):
            try:
                user = acse.decode_user_information(plain)
            except ProtocolError as exc:
                out["content"] = {"error": str(exc), "code": exc.code}
                return out
            if isinstance(user, acse.InitiateRequest):
                self.dedicated_key = user.dedicated_key
            out["content"] = acse.describe_user_information(user)
            return out
        out["content"] = describe_apdu_bytes(plain, context=self)
        return out


def describe_apdu_bytes(
    data: bytes,
    spans: list[tuple[int, int]] | None = None,
    context: DecipherContext | None = None,
) -> dict[str, Any]:
    """Describe one APDU, or say why it does not decode (never raises).

    ``spans``: where its secrets are, when the caller knows better than
    :func:`apdu_secret_spans` (the meter's answer to an HLS challenge). Ciphered APDUs are
    shown by kind and security header; with a ``context`` holding the keys their content is
    deciphered and described too (secrets in it masked the same way).
    """
    if not data:
        return {"error": "empty information field"}
    if security.is_ciphered(data[0]):
        return (context or DecipherContext(None)).describe(data)
    if spans is None:
        spans = apdu_secret_spans(data)
    try:
        decoded = apdu_mod.decode_apdu(data)
        described = apdu_mod.describe(decoded)
        if spans and isinstance(decoded, apdu_mod.ActionRequestNormal):
            described["parameters"] = "masked"
        if spans and isinstance(decoded, apdu_mod.ActionResponseNormal):
            described["return_data"] = "masked"
    except ProtocolError as exc:
        return {"error": str(exc), "code": exc.code, "hex": mask_secrets(data, spans)}
    if context is not None:
        context.learn(decoded)
        ciphered = getattr(decoded, "ciphered_initiate", None)
        if isinstance(ciphered, bytes):
            described["ciphered_user_information"] = context.describe(ciphered)
    return described


class StreamDecoder:
    """Feed bytes of one direction; get one description per frame or wrapper PDU."""

    def __init__(
        self,
        transport: Literal["hdlc", "wrapper"] = "hdlc",
        *,
        transparency: bool = False,
        apdus: bool = True,
        context: DecipherContext | None = None,
        hls_replies: set[int] | None = None,
    ) -> None:
        self.transport = transport
        self.apdus = apdus
        self.context = context
        self.hls_replies = hls_replies
        self.scanner: FrameScanner | WrapperScanner = (
            WrapperScanner() if transport == "wrapper" else FrameScanner(transparency=transparency)
        )
        self._segments: list[bytes] = []
        self._size = 0  # bytes in _segments
        self._secret = False  # the APDU being reassembled may hold a secret

    @classmethod
    def pair(
        cls, transport: Literal["hdlc", "wrapper"] = "hdlc", **options: Any
    ) -> tuple[StreamDecoder, StreamDecoder]:
        """Decoders for the two directions of one connection (client to meter, meter to
        client) that share what one needs from the other to mask secrets."""
        shared: set[int] = set()
        return (
            cls(transport, hls_replies=shared, **options),
            cls(transport, hls_replies=shared, **options),
        )

    def _spans(self, apdu: bytes, *, complete: bool) -> list[tuple[int, int]]:
        """Where the secrets of ``apdu`` (or its beginning) are; tracks HLS replies."""
        spans = apdu_secret_spans(apdu)
        hls = self.hls_replies
        if hls is None or len(apdu) < 3:
            return spans
        invoke = apdu[2] & 0x0F
        if spans and apdu[:2] == b"\xc3\x01":
            hls.add(invoke)
        elif apdu[:2] == _ACTION_RESPONSE_NORMAL and invoke in hls:
            # The meter's f(CtoS): everything after invoke-id and result.
            spans = [(4, max(len(apdu), 5))]
            if complete:
                hls.discard(invoke)
        return spans

    def _may_hold_secret(self, head: bytes) -> bool:
        """Whether an APDU starting with ``head`` (at least 3 bytes known) may hold a secret."""
        if head[:1] and head[0] in _SECRET_TAGS:
            return True
        return (
            self.hls_replies is not None
            and head[:2] == _ACTION_RESPONSE_NORMAL
            and len(head) >= 3
            and head[2] & 0x0F in self.hls_replies
        )

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Decode what ``data`` completes; ``b""`` marks the end of the stream."""
        self.scanner.receive_data(data)
        out = []
        while (frame := self.scanner.next_frame()) is not NEED_DATA:
            out.append(self._describe(frame))
        return out

    def stats(self) -> dict[str, int]:
        """What the scanner found and discarded."""
        return self.scanner.stats()

    def _describe(self, frame: Any) -> dict[str, Any]:
        if self.transport == "wrapper":
            payload = frame.payload
            described: dict[str, Any] = {
                "wrapper": {
                    "version": frame.version,
                    "src_wport": frame.src_wport,
                    "dst_wport": frame.dst_wport,
                    "length": len(payload),
                },
            }
            spans = self._spans(payload, complete=True)
            described["payload"] = mask_secrets(payload, spans)
            if self.apdus:
                described["apdu"] = describe_apdu_bytes(payload, spans, self.context)
            return described
        described = frame_to_dict(frame)
        if frame.kind not in (FrameKind.I, FrameKind.UI) or not frame.info:
            return described
        offset = self._size
        if not self._segments:
            head = frame.info[3:6] if _has_llc(frame.info) else frame.info[:3]
            self._secret = self._may_hold_secret(bytes(head))
        self._segments.append(frame.info)
        self._size += len(frame.info)
        found: list[tuple[int, int]] | None = None  # secrets in the APDU (LLC header excluded)
        if self._secret and self._size > _SECRET_SCAN:
            # Not a plausible AARQ/AARE any more: show none of it rather than scan on.
            described["info"] = "**" * len(frame.info)
            described["fcs"] = "masked"
            found = [(0, self._size)]
        elif self._secret:
            joined = b"".join(self._segments)
            llc = 3 if _has_llc(joined) else 0
            found = self._spans(joined[llc:], complete=not frame.segmented)
            spans = [(a + llc, b + llc) for a, b in found]
            if any(a < self._size and b > offset for a, b in spans):
                described["info"] = mask_secrets(frame.info, spans, offset)
                described["fcs"] = "masked"
        if self._size > MAX_APDU:
            described["error"] = (
                f"segmented APDU longer than {MAX_APDU} bytes ({len(self._segments)} segments): "
                "not reassembled"
            )
            self._segments.clear()
            self._size = 0
            return described
        if frame.segmented:
            described["segment"] = len(self._segments)
            return described
        data = b"".join(self._segments)
        if len(self._segments) > 1:
            described["segments"] = len(self._segments)
        self._segments.clear()
        self._size = 0
        if not self.apdus:
            return described
        if _has_llc(data):
            described["llc"] = data[:3].hex()
            data = data[3:]
        described["apdu"] = describe_apdu_bytes(data, found, self.context)
        return described


def _has_llc(data: bytes) -> bool:
    return data[:2] in (b"\xe6\xe6", b"\xe6\xe7") and len(data) >= 3
