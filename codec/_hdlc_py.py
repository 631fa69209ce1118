"""HDLC hot path, pure-Python reference implementation.

This module is the readable twin of the Cython extension ``codec._hdlc_c``: same API, same
results, same counters. Use :mod:`codec.hdlc`, which picks the fast one when it is available.

Frames are delimited by the length in the format field (IEC 62056-46 frame format type 3), never
by the next 0x7E: DLMS HDLC does no byte stuffing, so 0x7E and 0x7D occur inside real frames.
Transparency (ISO/IEC 13239 byte stuffing) is an explicit option of the scanner, off by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from codec._hdlc_shared import (
    DEFAULT_MAX_BUFFER,
    ESCAPE,
    ESCAPE_XOR,
    FCS_TABLE,
    FLAG,
    FORMAT_TYPE_3,
    MIN_FRAME_LENGTH,
    NEED_DATA,
    BytesLike,
    FrameKind,
    kind_of_control,
)
from codec.errors import FrameError, LocalProtocolError

if TYPE_CHECKING:
    from codec._steady_py import SteadyDecoder, SteadyReading
    from codec.apdu import Request
    from codec.association import ClientAssociation

__all__ = [
    "NEED_DATA",
    "Frame",
    "FrameScanner",
    "fcs16",
    "steady_receive",
    "steady_send",
    "stuff",
    "unstuff",
]

# Outcomes of checking one candidate frame start (values >= 0 are the closing flag's index).
_INCOMPLETE = -1
_BAD_HEADER = -2
_BAD_HCS = -3
_BAD_FCS = -4
_FILL = -5


def fcs16(data: BytesLike, crc: int = 0xFFFF) -> int:
    """HDLC frame check sequence (CRC-16/X.25) of ``data``: ``fcs16(b"123456789") == 0x906E``.

    The result is the value sent on the wire, least significant byte first.
    """
    table = FCS_TABLE
    for byte in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFF


def stuff(data: BytesLike) -> bytes:
    """Escape 0x7E and 0x7D as ISO/IEC 13239 transparency does (0x7D, byte XOR 0x20)."""
    raw = bytes(data)
    if FLAG not in raw and ESCAPE not in raw:
        return raw
    out = bytearray()
    for byte in raw:
        if byte in (FLAG, ESCAPE):
            out.append(ESCAPE)
            out.append(byte ^ ESCAPE_XOR)
        else:
            out.append(byte)
    return bytes(out)


def unstuff(data: BytesLike) -> bytes:
    """Undo :func:`stuff`. A dangling or flag-escaping 0x7D raises :class:`FrameError`."""
    raw = bytes(data)
    if ESCAPE not in raw:
        return raw
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        byte = raw[i]
        if byte == ESCAPE:
            if i + 1 >= n or raw[i + 1] == FLAG:
                raise FrameError(
                    "invalid transparency escape: 0x7D not followed by an escaped byte",
                    code="hdlc.bad_escape",
                    offset=i,
                )
            out.append(raw[i + 1] ^ ESCAPE_XOR)
            i += 2
        else:
            out.append(byte)
            i += 1
    return bytes(out)


class Frame:
    """One valid HDLC frame (format type 3), as received or to be sent.

    ``dst``/``src`` are address values with the extension bits removed (7 bits per address byte);
    ``dst_size``/``src_size`` are their lengths on the wire (1, 2 or 4 bytes).
    ``hcs`` is ``None`` when the frame has no information field.
    """

    __slots__ = ("control", "dst", "dst_size", "fcs", "hcs", "info", "segmented", "src", "src_size")

    def __init__(
        self,
        segmented: bool,
        dst: int,
        dst_size: int,
        src: int,
        src_size: int,
        control: int,
        info: bytes,
        hcs: int | None,
        fcs: int,
    ) -> None:
        self.segmented = segmented
        self.dst = dst
        self.dst_size = dst_size
        self.src = src
        self.src_size = src_size
        self.control = control
        self.info = info
        self.hcs = hcs
        self.fcs = fcs

    @property
    def length(self) -> int:
        """The frame length as in the format field (everything between the flags)."""
        n = 2 + self.dst_size + self.src_size + 1 + 2
        if self.info or self.hcs is not None:
            n += 2 + len(self.info)
        return n

    @property
    def kind(self) -> FrameKind:
        """The kind of frame its control field encodes."""
        return kind_of_control(self.control)

    @property
    def ns(self) -> int | None:
        """Send sequence number N(S) of an I frame, else ``None``."""
        return (self.control >> 1) & 0x07 if self.control & 0x01 == 0 else None

    @property
    def nr(self) -> int | None:
        """Receive sequence number N(R) of an I, RR or RNR frame, else ``None``."""
        return (self.control >> 5) & 0x07 if self.control & 0x03 != 0x03 else None

    @property
    def poll_final(self) -> bool:
        """The P/F bit."""
        return bool(self.control & 0x10)

    def as_tuple(self) -> tuple[Any, ...]:
        """All fields, for comparisons across implementations."""
        return (
            self.segmented,
            self.dst,
            self.dst_size,
            self.src,
            self.src_size,
            self.control,
            self.info,
            self.hcs,
            self.fcs,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return self.as_tuple() == other.as_tuple()

    def __hash__(self) -> int:
        return hash(self.as_tuple())

    def __repr__(self) -> str:
        return (
            f"Frame(kind={self.kind.value}, dst=0x{self.dst:x}/{self.dst_size}, "
            f"src=0x{self.src:x}/{self.src_size}, control=0x{self.control:02x}, "
            f"segmented={self.segmented}, info={self.info.hex()})"
        )


def _address_end(buf: bytearray, i: int, n: int) -> int:
    """Index after the address starting at ``i``; ``_INCOMPLETE`` or ``_BAD_HEADER``."""
    for size in range(1, 5):
        if i + size > n:
            return _INCOMPLETE
        if buf[i + size - 1] & 0x01:
            return i + size if size != 3 else _BAD_HEADER
    return _BAD_HEADER


def _check(buf: bytearray, f: int, n: int) -> int:
    """Check the candidate frame whose opening flag is ``buf[f]``, looking at ``buf[:n]`` only.

    Returns the index of its closing flag when a complete valid frame starts here, or one of
    the negative outcomes.
    """
    if f + 1 >= n:
        return _INCOMPLETE
    hi = buf[f + 1]
    if hi == FLAG:
        return _FILL
    if hi >> 4 != FORMAT_TYPE_3:
        return _BAD_HEADER
    if f + 2 >= n:
        return _INCOMPLETE
    length = ((hi & 0x07) << 8) | buf[f + 2]
    if length < MIN_FRAME_LENGTH:
        return _BAD_HEADER
    i = _address_end(buf, f + 3, n)
    if i < 0:
        return i
    i = _address_end(buf, i, n)
    if i < 0:
        return i
    header = i + 1 - (f + 1)  # format, addresses, control
    if length < header + 2 or header + 2 < length < header + 5:
        return _BAD_HEADER
    if i >= n:
        return _INCOMPLETE
    if length > header + 2:
        if i + 3 > n:
            return _INCOMPLETE
        hcs = buf[i + 1] | (buf[i + 2] << 8)
        if _fcs_range(buf, f + 1, i + 1) != hcs:
            return _BAD_HCS
    end = f + 1 + length
    if end >= n:
        return _INCOMPLETE
    if buf[end] != FLAG:
        return _BAD_HEADER
    fcs = buf[end - 2] | (buf[end - 1] << 8)
    if _fcs_range(buf, f + 1, end - 2) != fcs:
        return _BAD_FCS
    return end


def _fcs_range(buf: bytearray, start: int, stop: int) -> int:
    crc = 0xFFFF
    table = FCS_TABLE
    for k in range(start, stop):
        crc = (crc >> 8) ^ table[(crc ^ buf[k]) & 0xFF]
    return crc ^ 0xFFFF


def _make_frame(buf: bytearray, f: int, end: int) -> Frame:
    hi = buf[f + 1]
    i = f + 3
    dst = 0
    while True:
        b = buf[i]
        dst = (dst << 7) | (b >> 1)
        i += 1
        if b & 1:
            break
    dst_size = i - (f + 3)
    s0 = i
    src = 0
    while True:
        b = buf[i]
        src = (src << 7) | (b >> 1)
        i += 1
        if b & 1:
            break
    control = buf[i]
    i += 1
    hcs: int | None = None
    info = b""
    if end - 2 > i:
        hcs = buf[i] | (buf[i + 1] << 8)
        info = bytes(buf[i + 2 : end - 2])
    fcs = buf[end - 2] | (buf[end - 1] << 8)
    return Frame(bool(hi & 0x08), dst, dst_size, src, i - 1 - s0, control, info, hcs, fcs)


def _count_discarded(buf: bytearray, start: int, stop: int) -> int:
    """Bytes in ``buf[start:stop]`` other than flags: flags may be legitimate inter-frame fill."""
    return (stop - start) - buf.count(FLAG, start, stop)


class FrameScanner:
    """Streaming HDLC frame scanner: feed bytes with :meth:`receive_data`, take frames with
    :meth:`next_frame` until it returns ``NEED_DATA``.

    Garbage, truncated and corrupted frames are skipped: the scanner resynchronises on the next
    plausible frame start, and a valid frame that follows garbage is never lost, even when the
    garbage claims a length that runs past it. Everything skipped is counted.
    """

    def __init__(self, *, max_buffer: int = DEFAULT_MAX_BUFFER, transparency: bool = False):
        if max_buffer < 4096:
            raise LocalProtocolError("max_buffer must be at least 4096 bytes")
        self._buf = bytearray()
        self._pos = 0
        self._closed = False
        # Look-ahead resumes here: every flag in (pos, _ahead) is known not to start a frame.
        self._ahead = 0
        self.max_buffer = max_buffer
        self.transparency = transparency
        self.frames = 0
        self.bytes_received = 0
        self.bytes_discarded = 0
        self.resyncs = 0
        self.bad_hcs = 0
        self.bad_fcs = 0

    @property
    def pending(self) -> int:
        """Bytes buffered and not yet returned as frames or discarded."""
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
            "bad_hcs": self.bad_hcs,
            "bad_fcs": self.bad_fcs,
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
            self._ahead = max(0, self._ahead - self._pos)
            self._pos = 0
        if len(self._buf) + size > self.max_buffer:
            raise FrameError(
                f"receive buffer full: {len(self._buf)} bytes pending, {size} more received, "
                f"limit {self.max_buffer}",
                code="hdlc.buffer_overflow",
            )
        self._buf += data
        self.bytes_received += size

    def drain(self) -> int:
        """Discard everything pending (for a new request); returns the bytes counted."""
        dropped = _count_discarded(self._buf, self._pos, len(self._buf))
        if dropped:
            self.bytes_discarded += dropped
            self.resyncs += 1
        self._buf.clear()
        self._pos = 0
        self._ahead = 0
        return dropped

    def next_frame(self) -> Frame | Any:
        """The next complete valid frame, or ``NEED_DATA``."""
        if self.transparency:
            return self._next_transparent()
        buf = self._buf
        n = len(buf)
        while True:
            pos = self._pos
            f = buf.find(FLAG, pos)
            if f < 0:
                f = n
            if f > pos:
                self._skip(pos, f)
                if f == n:
                    return self._stalled(n)
            end = _check(buf, f, n)
            if end >= 0:
                self._pos = end
                self._ahead = 0
                self.frames += 1
                return _make_frame(buf, f, end)
            if end == _INCOMPLETE:
                g = self._look_ahead(f, n)
                if g < 0:
                    self._pos = f
                    return self._stalled(n)
                self._skip(f, g)
                continue
            self._pos = f + 1
            if end != _FILL:
                self._reject(end)

    def _look_ahead(self, f: int, n: int) -> int:
        """Start of a complete valid frame after the incomplete candidate at ``f``, else -1."""
        buf = self._buf
        g = max(f + 1, self._ahead)
        settled = True
        while True:
            g = buf.find(FLAG, g, n)
            if g < 0:
                return -1
            outcome = _check(buf, g, n)
            if outcome >= 0:
                return g
            if outcome == _INCOMPLETE:
                settled = False
            elif settled:
                self._ahead = g + 1
            g += 1

    def _stalled(self, n: int) -> Any:
        if self._closed and self._pos < n:
            self._skip(self._pos, n)
        return NEED_DATA

    def _skip(self, start: int, stop: int) -> None:
        # Skipping nothing but flags (inter-frame fill, a final closing flag) is no resync.
        dropped = _count_discarded(self._buf, start, stop)
        if dropped:
            self.bytes_discarded += dropped
            self.resyncs += 1
        self._pos = stop
        self._ahead = 0

    def _reject(self, outcome: int) -> None:
        self.resyncs += 1
        if outcome == _BAD_HCS:
            self.bad_hcs += 1
        elif outcome == _BAD_FCS:
            self.bad_fcs += 1

    def _next_transparent(self) -> Frame | Any:
        buf = self._buf
        n = len(buf)
        while True:
            pos = self._pos
            f = buf.find(FLAG, pos)
            if f < 0:
                f = n
            if f > pos:
                self._skip(pos, f)
                if f == n:
                    return self._stalled(n)
            e = buf.find(FLAG, f + 1)
            if e < 0:
                return self._stalled(n)
            if e == f + 1:
                self._pos = e
                continue
            try:
                body = unstuff(buf[f + 1 : e])
            except FrameError:
                self._skip(f, e)
                continue
            candidate = bytearray(b"\x7e" + body + b"\x7e")
            outcome = _check(candidate, 0, len(candidate))
            if outcome == len(candidate) - 1:
                self._pos = e
                self.frames += 1
                return _make_frame(candidate, 0, outcome)
            self.bytes_discarded += _count_discarded(buf, f, e)
            self._pos = e
            self._reject(outcome if outcome < 0 else _BAD_HEADER)


# -- the steady poll's exchange, one call each way ----------------------------------------------


def steady_send(
    association: ClientAssociation, request: Request, now: float, decoder: SteadyDecoder
) -> bytes | None:
    """``association.steady_request(request, now, decoder)``: the extension does it in C for
    an association over an HDLC link (the same bytes, the same state); here it is the method."""
    return association.steady_request(request, now, decoder)


def steady_receive(association: ClientAssociation, data: bytes, now: float) -> SteadyReading | None:
    """``association.receive_steady(data, now)``: the extension takes a reply that is one
    whole frame in C (the same reading, the same state); here it is the method."""
    return association.receive_steady(data, now)
