"""Definitions shared by both HDLC hot-path implementations (the twin and the extension)."""

from __future__ import annotations

import enum
from typing import Union

#: What the byte-level functions accept.
BytesLike = Union[bytes, bytearray, memoryview]  # noqa: UP007 - a runtime alias

FLAG = 0x7E
ESCAPE = 0x7D
ESCAPE_XOR = 0x20
#: Frame format type 3 (IEC 62056-46): the high nibble of the format field is 0xA.
FORMAT_TYPE_3 = 0xA
#: The length subfield has 11 bits.
MAX_FRAME_LENGTH = 0x7FF
#: Format field (2) + destination (1) + source (1) + control (1) + FCS (2).
MIN_FRAME_LENGTH = 7
DEFAULT_MAX_BUFFER = 256 * 1024


class _NeedData:
    """Returned by ``next_frame()`` when no complete frame is buffered yet."""

    _instance: _NeedData | None = None

    def __new__(cls) -> _NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __reduce__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
#: The type of ``NEED_DATA`` (for annotations and ``isinstance``).
NeedData = _NeedData


class FrameKind(enum.Enum):
    """The frame kinds of the HDLC control field that DLMS uses."""

    I = "I"  # noqa: E741 - the standard's name for information frames
    RR = "RR"
    RNR = "RNR"
    REJ = "REJ"
    SREJ = "SREJ"
    SNRM = "SNRM"
    DISC = "DISC"
    UA = "UA"
    DM = "DM"
    FRMR = "FRMR"
    UI = "UI"
    UNKNOWN = "UNKNOWN"


#: Control byte of each unnumbered frame kind, with the P/F bit cleared.
U_FRAME_CONTROL: dict[FrameKind, int] = {
    FrameKind.SNRM: 0x83,
    FrameKind.DISC: 0x43,
    FrameKind.UA: 0x63,
    FrameKind.DM: 0x0F,
    FrameKind.FRMR: 0x87,
    FrameKind.UI: 0x03,
}
_U_BY_CONTROL = {v: k for k, v in U_FRAME_CONTROL.items()}
#: Supervisory frame kinds by the two S bits of the control byte.
S_FRAME_KINDS = (FrameKind.RR, FrameKind.RNR, FrameKind.REJ, FrameKind.SREJ)


def kind_of_control(control: int) -> FrameKind:
    """The frame kind encoded in an HDLC control byte."""
    if control & 0x01 == 0:
        return FrameKind.I
    if control & 0x03 == 0x01:
        return S_FRAME_KINDS[(control >> 2) & 0x03]
    return _U_BY_CONTROL.get(control & 0xEF, FrameKind.UNKNOWN)


def _fcs_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


#: Byte-wise table of the reflected CRC-16/X.25 polynomial 0x8408.
FCS_TABLE = _fcs_table()
