"""IEC 62056-47 TCP/UDP wrapper framing, sans-IO.

Each APDU travels after an 8-byte header: version (always 1), source wPort, destination wPort and
the payload length, all big-endian 16-bit. There is no checksum, so the scanner resynchronises on
garbage by plausibility: the version, a length within ``max_payload`` and, when given, the
expected wPorts. :class:`WrapperScanner` has the same streaming API as the HDLC scanner.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs

from codec._hdlc_shared import NEED_DATA, BytesLike
from codec.errors import EncodeError, FrameError, LocalProtocolError

__all__ = ["HEADER_SIZE", "NEED_DATA", "WrapperFrame", "WrapperScanner", "decode_wrapper"]

VERSION = 0x0001
HEADER_SIZE = 8
_HEADER = struct.Struct(">HHHH")
_VERSION_BYTES = VERSION.to_bytes(2, "big")


@attrs.frozen
class WrapperFrame:
    """One wrapper PDU: the wPorts and the APDU it carries."""

    src_wport: int
    dst_wport: int
    payload: bytes
    version: int = VERSION

    def encode(self) -> bytes:
        """The header and payload as sent on the wire."""
        if not (0 <= self.src_wport <= 0xFFFF and 0 <= self.dst_wport <= 0xFFFF):
            raise EncodeError(f"wPorts must be 0..65535 ({self.src_wport}, {self.dst_wport})")
        if len(self.payload) > 0xFFFF:
            raise EncodeError(f"wrapper payload of {len(self.payload)} bytes exceeds 65535")
        header = _HEADER.pack(self.version, self.src_wport, self.dst_wport, len(self.payload))
        return header + self.payload


def decode_wrapper(data: BytesLike) -> WrapperFrame:
    """Decode exactly one wrapper PDU; anything else raises :class:`FrameError`."""
    raw = bytes(data)
    if len(raw) < HEADER_SIZE:
        raise FrameError(
            f"wrapper PDU of {len(raw)} bytes is shorter than its 8-byte header",
            code="wrapper.truncated",
        )
    version, src, dst, length = _HEADER.unpack_from(raw)
    if version != VERSION:
        raise FrameError(f"wrapper version {version}, expected 1", code="wrapper.bad_version")
    if length != len(raw) - HEADER_SIZE:
        raise FrameError(
            f"wrapper length field says {length} bytes but {len(raw) - HEADER_SIZE} follow",
            code="wrapper.bad_length",
            offset=6,
        )
    return WrapperFrame(src, dst, raw[HEADER_SIZE:], version)


class WrapperScanner:
    """Streaming wrapper PDU scanner: ``receive_data(bytes)``, ``next_frame()`` returning a
    :class:`WrapperFrame` or ``NEED_DATA``, ``drain()``, and the same counters as the HDLC one.

    ``expect_src``/``expect_dst`` restrict accepted headers to the wPorts of this association,
    and ``first_bytes`` the first payload byte (the APDU tags the peer may send): with no
    checksum in the wrapper, that is what makes resynchronisation after garbage reliable.
    """

    def __init__(
        self,
        *,
        max_payload: int = 0xFFFF,
        max_buffer: int = 256 * 1024,
        expect_src: int | None = None,
        expect_dst: int | None = None,
        first_bytes: frozenset[int] | None = None,
    ) -> None:
        if max_buffer < max_payload + HEADER_SIZE:
            raise LocalProtocolError("max_buffer must hold at least one maximal wrapper PDU")
        self._buf = bytearray()
        self._pos = 0
        self._closed = False
        self.max_payload = max_payload
        self.max_buffer = max_buffer
        self.expect_src = expect_src
        self.expect_dst = expect_dst
        self.first_bytes = first_bytes
        self.frames = 0
        self.bytes_received = 0
        self.bytes_discarded = 0
        self.resyncs = 0

    @property
    def pending(self) -> int:
        """Bytes buffered and not yet returned as PDUs or discarded."""
        return len(self._buf) - self._pos

    @property
    def closed(self) -> bool:
        """True once ``receive_data(b"")`` signalled the end of the stream."""
        return self._closed

    def stats(self) -> dict[str, int]:
        """The counters, as a dict."""
        return {
            "frames": self.frames,
            "bytes_received": self.bytes_received,
            "bytes_discarded": self.bytes_discarded,
            "resyncs": self.resyncs,
            "pending": self.pending,
        }

    def receive_data(self, data: BytesLike) -> None:
        """Buffer received bytes; ``b""`` means the peer closed the stream."""
        if self._closed:
            raise LocalProtocolError("receive_data() after the end of the stream")
        size = len(memoryview(data))
        if size == 0:
            self._closed = True
            return
        if self._pos and (len(self._buf) + size > self.max_buffer or self._pos >= 4096):
            del self._buf[: self._pos]
            self._pos = 0
        if len(self._buf) + size > self.max_buffer:
            raise FrameError(
                f"receive buffer full: {len(self._buf)} bytes pending, {size} more received, "
                f"limit {self.max_buffer}",
                code="wrapper.buffer_overflow",
            )
        self._buf += data
        self.bytes_received += size

    def drain(self) -> int:
        """Discard everything pending (for a new request); returns the bytes discarded."""
        dropped = self.pending
        if dropped:
            self.bytes_discarded += dropped
            self.resyncs += 1
        self._buf.clear()
        self._pos = 0
        return dropped

    def _plausible(self, at: int) -> bool | None:
        """Whether a header starts at ``at``; ``None`` while too few bytes are buffered."""
        buf = self._buf
        if len(buf) - at < HEADER_SIZE:
            # Judge the partial header by what is there: the version bytes first.
            have = bytes(buf[at : at + 2])
            return None if _VERSION_BYTES.startswith(have) else False
        version, src, dst, length = _HEADER.unpack_from(buf, at)
        if not (
            version == VERSION
            and length <= self.max_payload
            and (self.expect_src is None or src == self.expect_src)
            and (self.expect_dst is None or dst == self.expect_dst)
        ):
            return False
        if self.first_bytes is None or length == 0:
            return True
        if len(buf) - at <= HEADER_SIZE:
            return None
        return buf[at + HEADER_SIZE] in self.first_bytes

    def next_frame(self) -> WrapperFrame | Any:
        """The next complete PDU, or ``NEED_DATA``."""
        buf = self._buf
        while True:
            pos = self._pos
            n = len(buf)
            if pos >= n:
                return NEED_DATA
            at = pos
            ok: bool | None = False
            while at < n:
                ok = self._plausible(at)
                if ok is not False:
                    break
                at = buf.find(b"\x00", at + 1)
                if at < 0:
                    at = n
            if at > pos:
                self.bytes_discarded += at - pos
                self.resyncs += 1
                self._pos = at
            if at >= n or ok is None:
                return self._stalled()
            length = int.from_bytes(buf[at + 6 : at + 8], "big")
            end = at + HEADER_SIZE + length
            if end > n:
                later = self._complete_after(at)
                if later < 0:
                    return self._stalled()
                self.bytes_discarded += later - at
                self.resyncs += 1
                self._pos = later
                continue
            src, dst = _HEADER.unpack_from(buf, at)[1:3]
            self._pos = end
            self.frames += 1
            return WrapperFrame(src, dst, bytes(buf[at + HEADER_SIZE : end]))

    def _complete_after(self, at: int) -> int:
        """A later plausible PDU that ends exactly where the buffered data ends, else -1.

        The header at ``at`` claims more bytes than have arrived. If a complete PDU follows it
        and fills the buffer to its end, the claim was garbage (a truncated PDU, say) and that
        PDU is the peer's real answer: replies arrive whole and nothing follows them unasked.
        """
        buf = self._buf
        n = len(buf)
        g = buf.find(_VERSION_BYTES, at + 1)
        while 0 <= g <= n - HEADER_SIZE:
            if (
                self._plausible(g)
                and g + HEADER_SIZE + int.from_bytes(buf[g + 6 : g + 8], "big") == n
            ):
                return g
            g = buf.find(_VERSION_BYTES, g + 1)
        return -1

    def _stalled(self) -> Any:
        if self._closed and self.pending:
            self.bytes_discarded += self.pending
            self.resyncs += 1
            self._pos = len(self._buf)
        return NEED_DATA
