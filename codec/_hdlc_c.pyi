"""Type stub of the Cython HDLC hot path (same API as codec._hdlc_py)."""

from typing import Any

from codec._hdlc_shared import NEED_DATA as NEED_DATA
from codec._hdlc_shared import BytesLike, FrameKind
from codec._steady_py import SteadyDecoder, SteadyReading
from codec.apdu import Request
from codec.association import ClientAssociation

def fcs16(data: BytesLike, crc: int = 0xFFFF) -> int: ...
def stuff(data: BytesLike) -> bytes: ...
def unstuff(data: BytesLike) -> bytes: ...

class Frame:
    segmented: bool
    dst: int
    dst_size: int
    src: int
    src_size: int
    control: int
    info: bytes
    hcs: int | None
    fcs: int
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
    ) -> None: ...
    @property
    def length(self) -> int: ...
    @property
    def kind(self) -> FrameKind: ...
    @property
    def ns(self) -> int | None: ...
    @property
    def nr(self) -> int | None: ...
    @property
    def poll_final(self) -> bool: ...
    def as_tuple(self) -> tuple[Any, ...]: ...

class FrameScanner:
    max_buffer: int
    transparency: bool
    frames: int
    bytes_received: int
    bytes_discarded: int
    resyncs: int
    bad_hcs: int
    bad_fcs: int
    def __init__(self, *, max_buffer: int = ..., transparency: bool = False) -> None: ...
    @property
    def pending(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def stats(self) -> dict[str, int]: ...
    def receive_data(self, data: BytesLike) -> None: ...
    def drain(self) -> int: ...
    def next_frame(self) -> Frame | Any: ...

def steady_send(
    association: ClientAssociation, request: Request, now: float, decoder: SteadyDecoder
) -> bytes | None: ...
def steady_receive(
    association: ClientAssociation, data: bytes, now: float
) -> SteadyReading | None: ...
