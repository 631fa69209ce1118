"""Sans-IO DLMS/COSEM protocol core: HDLC and wrapper framing, A-XDR, xDLMS, COSEM objects."""

from codec._speedups import IMPLEMENTATION
from codec.errors import (
    DecodeError,
    EncodeError,
    FrameError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)

__all__ = [
    "IMPLEMENTATION",
    "DecodeError",
    "EncodeError",
    "FrameError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]
