"""Describe a captured byte stream: frames and the APDUs inside them, as JSON-safe dicts.

Used by ``dlms-bridge decode``, ``read --trace`` and the pcap readers. One
:class:`StreamDecoder` per direction of a connection: segmented HDLC I-frames are reassembled
and the APDU is described on the frame that completes it.
"""

from __future__ import annotations

from typing import Any, Literal

from codec import acse, security
from codec import apdu as apdu_mod
from codec.errors import ProtocolError
from codec.hdlc import NEED_DATA, FrameKind, FrameScanner, frame_to_dict
from codec.wrapper import WrapperScanner

__all__ = ["DecipherContext", "StreamDecoder", "describe_apdu_bytes"]

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
        out["content"] = describe_apdu_bytes(plain, self)
        return out


def describe_apdu_bytes(data: bytes, context: DecipherContext | None = None) -> dict[str, Any]:
    """Describe one APDU, or say why it does not decode (never raises).

    Ciphered APDUs are shown by kind and security header; with a ``context`` holding the keys
    their content is deciphered and described too.
    """
    if not data:
        return {"error": "empty information field"}
    if security.is_ciphered(data[0]):
        return (context or DecipherContext(None)).describe(data)
    try:
        decoded = apdu_mod.decode_apdu(data)
    except ProtocolError as exc:
        return {"error": str(exc), "code": exc.code, "hex": data.hex()}
    if context is not None:
        context.learn(decoded)
    described = apdu_mod.describe(decoded)
    ciphered = getattr(decoded, "ciphered_initiate", None)
    if context is not None and isinstance(ciphered, bytes):
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
    ) -> None:
        self.transport = transport
        self.apdus = apdus
        #: Keys and system titles for ciphered APDUs (share it with the other direction).
        self.context = context
        self.scanner: FrameScanner | WrapperScanner = (
            WrapperScanner() if transport == "wrapper" else FrameScanner(transparency=transparency)
        )
        self._segments: list[bytes] = []

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
            described: dict[str, Any] = {
                "wrapper": {
                    "version": frame.version,
                    "src_wport": frame.src_wport,
                    "dst_wport": frame.dst_wport,
                    "length": len(frame.payload),
                },
                "payload": frame.payload.hex(),
            }
            if self.apdus:
                described["apdu"] = describe_apdu_bytes(frame.payload, self.context)
            return described
        described = frame_to_dict(frame)
        if not self.apdus or frame.kind not in (FrameKind.I, FrameKind.UI) or not frame.info:
            return described
        self._segments.append(frame.info)
        if frame.segmented:
            described["segment"] = len(self._segments)
            return described
        data = b"".join(self._segments)
        if len(self._segments) > 1:
            described["segments"] = len(self._segments)
        self._segments.clear()
        if data[:2] in (b"\xe6\xe6", b"\xe6\xe7") and len(data) >= 3:
            described["llc"] = data[:3].hex()
            data = data[3:]
        described["apdu"] = describe_apdu_bytes(data, self.context)
        return described
