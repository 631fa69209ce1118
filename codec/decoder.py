"""Describe a captured byte stream: frames and the APDUs inside them, as JSON-safe dicts.

Used by ``dlms-bridge decode``, ``read --trace`` and the pcap readers. One
:class:`StreamDecoder` per direction of a connection: segmented HDLC I-frames are reassembled
and the APDU is described on the frame that completes it.
"""

from __future__ import annotations

from typing import Any, Literal

from codec import apdu as apdu_mod
from codec.errors import ProtocolError
from codec.hdlc import NEED_DATA, FrameKind, FrameScanner, frame_to_dict
from codec.wrapper import WrapperScanner

__all__ = ["StreamDecoder", "describe_apdu_bytes"]


def describe_apdu_bytes(data: bytes) -> dict[str, Any]:
    """Describe one APDU, or say why it does not decode (never raises)."""
    if not data:
        return {"error": "empty information field"}
    try:
        return apdu_mod.describe(apdu_mod.decode_apdu(data))
    except ProtocolError as exc:
        return {"error": str(exc), "code": exc.code, "hex": data.hex()}


class StreamDecoder:
    """Feed bytes of one direction; get one description per frame or wrapper PDU."""

    def __init__(
        self,
        transport: Literal["hdlc", "wrapper"] = "hdlc",
        *,
        transparency: bool = False,
        apdus: bool = True,
    ) -> None:
        self.transport = transport
        self.apdus = apdus
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
                described["apdu"] = describe_apdu_bytes(frame.payload)
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
        described["apdu"] = describe_apdu_bytes(data)
        return described
