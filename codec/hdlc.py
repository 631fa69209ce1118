"""HDLC framing for DLMS (IEC 62056-46, frame format type 3), sans-IO.

- :func:`fcs16` - the frame check sequence (CRC-16/X.25).
- :class:`FrameScanner` - streaming scanner: ``receive_data(bytes)``, ``next_frame()`` returning a
  :class:`Frame` or ``NEED_DATA``; resynchronises after garbage and counts what it discards.
- :func:`encode_frame` / :func:`decode_frame` - one frame to and from bytes;
  :func:`encode_with_control` the same with a control byte made already (a link's hot path).
- :class:`HdlcAddress` - client and server addresses of 1, 2 or 4 bytes.

The hot path comes from the Cython extension when it is built, else from the pure-Python twin;
:data:`IMPLEMENTATION` says which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from codec._hdlc_shared import (
    ESCAPE,
    FLAG,
    FORMAT_TYPE_3,
    MAX_FRAME_LENGTH,
    MIN_FRAME_LENGTH,
    NEED_DATA,
    U_FRAME_CONTROL,
    FrameKind,
    NeedData,
    kind_of_control,
)
from codec._speedups import IMPLEMENTATION, impl
from codec.errors import EncodeError, FrameError

if TYPE_CHECKING:
    from codec._hdlc_py import Frame, FrameScanner, fcs16, stuff, unstuff
else:
    Frame = impl.Frame
    FrameScanner = impl.FrameScanner
    fcs16 = impl.fcs16
    stuff = impl.stuff
    unstuff = impl.unstuff

__all__ = [
    "ESCAPE",
    "FLAG",
    "IMPLEMENTATION",
    "MAX_FRAME_LENGTH",
    "NEED_DATA",
    "Frame",
    "FrameKind",
    "FrameScanner",
    "HdlcAddress",
    "NeedData",
    "decode_frame",
    "encode_frame",
    "encode_with_control",
    "fcs16",
    "frame_to_bytes",
    "frame_to_dict",
    "kind_of_control",
    "make_control",
    "stuff",
    "unstuff",
]

_ADDRESS_LIMITS = {1: 0x7F, 2: 0x3FFF, 4: 0x0FFFFFFF}
#: Frame kinds that may carry an information field (SNRM/UA carry link parameters).
_INFO_KINDS = frozenset(
    (FrameKind.I, FrameKind.UI, FrameKind.SNRM, FrameKind.UA, FrameKind.FRMR, FrameKind.DM)
)


@attrs.frozen
class HdlcAddress:
    """An HDLC address: its value (7 bits per byte, extension bits removed) and size in bytes.

    Client addresses are one byte holding the client SAP. Server addresses carry an upper
    (logical device) and a lower (physical device) part: 7 bits each in 2 bytes, 14 bits each in
    4 bytes. A 1-byte server address carries a single 7-bit value, the physical address with
    logical address 0 (so the field meter's "logical 0, physical 1" is the byte 0x03).
    """

    value: int
    size: int

    def __attrs_post_init__(self) -> None:
        limit = _ADDRESS_LIMITS.get(self.size)
        if limit is None:
            raise EncodeError(f"HDLC address size must be 1, 2 or 4 bytes, not {self.size}")
        if not 0 <= self.value <= limit:
            raise EncodeError(
                f"HDLC address value {self.value} does not fit in {self.size} byte(s) (max {limit})"
            )

    @classmethod
    def client(cls, sap: int) -> HdlcAddress:
        """The 1-byte address of a client SAP (1 = management, 16 = public client)."""
        return cls(sap, 1)

    @classmethod
    def server(cls, logical: int, physical: int, size: int | None = None) -> HdlcAddress:
        """A server address; ``size=None`` picks the smallest size that holds both parts."""
        if size is None:
            if logical == 0 and physical <= 0x7F:
                size = 1
            elif logical <= 0x7F and physical <= 0x7F:
                size = 2
            else:
                size = 4
        if size == 1:
            if logical != 0:
                raise EncodeError(
                    f"a 1-byte server address has no logical part (logical={logical}); use 2 or 4"
                )
            return cls(physical, 1)
        bits = 7 if size == 2 else 14
        top = (1 << bits) - 1
        if not (0 <= logical <= top and 0 <= physical <= top):
            raise EncodeError(
                f"server address logical={logical} physical={physical} does not fit in "
                f"{size} bytes ({bits} bits each)"
            )
        return cls((logical << bits) | physical, size)

    @property
    def logical(self) -> int:
        """Upper (logical device) part of a server address."""
        if self.size == 1:
            return 0
        return self.value >> (7 if self.size == 2 else 14)

    @property
    def physical(self) -> int:
        """Lower (physical device) part of a server address."""
        if self.size == 1:
            return self.value
        return self.value & (0x7F if self.size == 2 else 0x3FFF)

    def encode(self) -> bytes:
        """The address bytes on the wire, with the extension bit set on the last one."""
        out = bytearray()
        value = self.value
        for shift in range(7 * (self.size - 1), -1, -7):
            out.append(((value >> shift) & 0x7F) << 1)
        out[-1] |= 0x01
        return bytes(out)

    def __str__(self) -> str:
        return f"0x{self.value:x}/{self.size}"


def make_control(kind: FrameKind, *, ns: int = 0, nr: int = 0, poll_final: bool = True) -> int:
    """The control byte of a frame of ``kind`` with the given sequence numbers and P/F bit."""
    pf = 0x10 if poll_final else 0
    if not (0 <= ns <= 7 and 0 <= nr <= 7):
        raise EncodeError(f"sequence numbers must be 0..7 (N(S)={ns}, N(R)={nr})")
    if kind is FrameKind.I:
        return (nr << 5) | pf | (ns << 1)
    if kind in (FrameKind.RR, FrameKind.RNR, FrameKind.REJ, FrameKind.SREJ):
        s = (FrameKind.RR, FrameKind.RNR, FrameKind.REJ, FrameKind.SREJ).index(kind)
        return (nr << 5) | pf | (s << 2) | 0x01
    control = U_FRAME_CONTROL.get(kind)
    if control is None:
        raise EncodeError(f"cannot encode a frame of kind {kind.value}")
    return control | pf


#: Encoded frame heads (format, addresses, control and, with an information field, the HCS)
#: by what they depend on: a link sends the same few heads over and over. Keyed by the
#: addresses' numbers (a tuple of ints hashes in C; an address object's hash is Python code).
_HEADS: dict[tuple[bool, int, int, int, int, int, int], bytes] = {}
_HEADS_MAX = 4096


def _encode_body(
    segmented: bool, dst: HdlcAddress, src: HdlcAddress, control: int, info: bytes
) -> bytes:
    size = len(info)
    key = (segmented, dst.value, dst.size, src.value, src.size, control, size)
    head = _HEADS.get(key)
    if head is None:
        head = _encode_head(segmented, dst, src, control, size)
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        _HEADS[key] = head
    body = head + info
    return body + fcs16(body).to_bytes(2, "little")


def encode_with_control(
    dst: HdlcAddress,
    src: HdlcAddress,
    control: int,
    info: bytes,
    *,
    segmented: bool = False,
    transparency: bool = False,
) -> bytes:
    """One complete frame with a control byte made already (:func:`make_control`), flags
    included: :func:`encode_frame` without its checks of the kind, for a link's hot path."""
    body = _encode_body(segmented, dst, src, control, info)
    if transparency:
        body = stuff(body)
    return b"\x7e" + body + b"\x7e"


def _encode_head(
    segmented: bool, dst: HdlcAddress, src: HdlcAddress, control: int, info_size: int
) -> bytes:
    """Format field, addresses, control, and the HCS when an information field follows."""
    header = dst.encode() + src.encode() + bytes((control,))
    length = 2 + len(header) + 2
    if info_size:
        length += 2 + info_size
    if length > MAX_FRAME_LENGTH:
        raise EncodeError(
            f"HDLC frame of {length} bytes exceeds the format field's limit of {MAX_FRAME_LENGTH}; "
            "segment the information field"
        )
    fmt = bytes(((FORMAT_TYPE_3 << 4) | (0x08 if segmented else 0) | (length >> 8), length & 0xFF))
    head = fmt + header
    if info_size:
        head += fcs16(head).to_bytes(2, "little")
    return head


def encode_frame(
    kind: FrameKind,
    dst: HdlcAddress,
    src: HdlcAddress,
    *,
    ns: int = 0,
    nr: int = 0,
    poll_final: bool = True,
    info: bytes = b"",
    segmented: bool = False,
    transparency: bool = False,
) -> bytes:
    """Encode one complete frame, opening and closing flags included."""
    if info and kind not in _INFO_KINDS:
        raise EncodeError(f"a {kind.value} frame carries no information field")
    control = make_control(kind, ns=ns, nr=nr, poll_final=poll_final)
    return encode_with_control(
        dst, src, control, bytes(info), segmented=segmented, transparency=transparency
    )


def frame_to_bytes(frame: Frame, *, transparency: bool = False) -> bytes:
    """Encode a :class:`Frame` again (HCS and FCS are recomputed)."""
    body = _encode_body(
        frame.segmented,
        HdlcAddress(frame.dst, frame.dst_size),
        HdlcAddress(frame.src, frame.src_size),
        frame.control,
        frame.info,
    )
    if transparency:
        body = stuff(body)
    return b"\x7e" + body + b"\x7e"


def decode_frame(data: bytes, *, transparency: bool = False) -> Frame:
    """Decode exactly one frame (flags included); anything else raises :class:`FrameError`."""
    raw = bytes(data)
    scanner = FrameScanner(transparency=transparency, max_buffer=max(4096, 2 * len(raw)))
    if raw:
        scanner.receive_data(raw)
    frame = scanner.next_frame()
    if frame is not NEED_DATA and scanner.bytes_discarded == 0 and scanner.pending <= 1:
        assert isinstance(frame, Frame)
        return frame
    raise _diagnose(raw, transparency)


def _diagnose(raw: bytes, transparency: bool) -> FrameError:
    """Say precisely why ``raw`` is not exactly one valid frame."""
    if len(raw) < MIN_FRAME_LENGTH + 2:
        return FrameError(f"too short for an HDLC frame: {len(raw)} bytes", code="hdlc.truncated")
    if raw[0] != FLAG:
        return FrameError(f"no opening flag: first byte is 0x{raw[0]:02x}", code="hdlc.no_flag")
    if raw[-1] != FLAG:
        return FrameError(
            f"no closing flag: last byte is 0x{raw[-1]:02x}",
            code="hdlc.no_flag",
            offset=len(raw) - 1,
        )
    body = raw[1:-1]
    if transparency:
        body = unstuff(body)
    if body[0] >> 4 != FORMAT_TYPE_3:
        return FrameError(
            f"format type 0x{body[0] >> 4:x} is not frame format type 3 (0xA)",
            code="hdlc.bad_format",
            offset=1,
        )
    length = ((body[0] & 0x07) << 8) | body[1]
    if length != len(body):
        return FrameError(
            f"length field says {length} bytes but the frame holds {len(body)} between its flags",
            code="hdlc.bad_length",
            offset=1,
        )
    i = 2
    for name in ("destination", "source"):
        start = i
        while i < len(body) and not body[i] & 0x01:
            i += 1
        i += 1
        if i - start not in (1, 2, 4):
            return FrameError(
                f"{name} address of {i - start} bytes (must be 1, 2 or 4)",
                code="hdlc.bad_address",
                offset=1 + start,
            )
    if len(body) > i + 3:
        hcs = int.from_bytes(body[i + 1 : i + 3], "little")
        if fcs16(body[: i + 1]) != hcs:
            return FrameError(
                f"bad HCS: frame has 0x{hcs:04x}, computed 0x{fcs16(body[: i + 1]):04x}",
                code="hdlc.bad_hcs",
                offset=1 + i + 1,
            )
    fcs = int.from_bytes(body[-2:], "little")
    if fcs16(body[:-2]) != fcs:
        return FrameError(
            f"bad FCS: frame has 0x{fcs:04x}, computed 0x{fcs16(body[:-2]):04x}",
            code="hdlc.bad_fcs",
            offset=len(raw) - 3,
        )
    return FrameError("not exactly one valid HDLC frame", code="hdlc.invalid")


def frame_to_dict(frame: Frame) -> dict[str, Any]:
    """A JSON-safe description of a frame (used by ``dlms-bridge decode``)."""
    out: dict[str, Any] = {
        "kind": frame.kind.value,
        "dst": {"value": frame.dst, "size": frame.dst_size},
        "src": {"value": frame.src, "size": frame.src_size},
        "control": f"0x{frame.control:02x}",
        "poll_final": frame.poll_final,
        "segmented": frame.segmented,
        "length": frame.length,
    }
    if frame.ns is not None:
        out["ns"] = frame.ns
    if frame.nr is not None:
        out["nr"] = frame.nr
    out["info"] = frame.info.hex()
    out["hcs"] = None if frame.hcs is None else f"0x{frame.hcs:04x}"
    out["fcs"] = f"0x{frame.fcs:04x}"
    out["hcs_ok"] = True if frame.hcs is not None else None
    out["fcs_ok"] = True
    return out
