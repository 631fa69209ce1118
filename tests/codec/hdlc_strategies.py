"""Hypothesis strategies for HDLC frames and hostile byte streams."""

from __future__ import annotations

from hypothesis import strategies as st

from codec.hdlc import FrameKind, HdlcAddress, encode_frame

_LIMITS = {1: 0x7F, 2: 0x3FFF, 4: 0x0FFFFFFF}

#: Bytes that break naive framers: flags, escapes, format-field and address bytes.
TRICKY = [0x7E, 0x7D, 0xA0, 0xA8, 0x03, 0x21, 0x93, 0x00, 0xFF]

addresses = st.sampled_from([1, 2, 4]).flatmap(
    lambda size: st.builds(HdlcAddress, st.integers(0, _LIMITS[size]), st.just(size))
)

#: Bytes biased towards the values that occur in frame headers and trip naive scanners.
tricky_bytes = st.lists(st.sampled_from(TRICKY) | st.integers(0, 255)).map(bytes)


def _info(min_size: int) -> st.SearchStrategy[bytes]:
    return st.lists(
        st.sampled_from(TRICKY) | st.integers(0, 255), min_size=min_size, max_size=300
    ).map(bytes)


@st.composite
def frame_specs(draw: st.DrawFn) -> dict[str, object]:
    """Keyword arguments of :func:`encode_frame` for any frame kind and address size."""
    kind = draw(st.sampled_from([k for k in FrameKind if k is not FrameKind.UNKNOWN]))
    spec: dict[str, object] = {
        "kind": kind,
        "dst": draw(addresses),
        "src": draw(addresses),
        "poll_final": draw(st.booleans()),
    }
    if kind is FrameKind.I:
        spec["ns"] = draw(st.integers(0, 7))
        spec["nr"] = draw(st.integers(0, 7))
        spec["info"] = draw(_info(1))
        spec["segmented"] = draw(st.booleans())
    elif kind in (FrameKind.RR, FrameKind.RNR, FrameKind.REJ, FrameKind.SREJ):
        spec["nr"] = draw(st.integers(0, 7))
    elif kind in (FrameKind.UI, FrameKind.SNRM, FrameKind.UA, FrameKind.FRMR, FrameKind.DM):
        spec["info"] = draw(_info(0))
        spec["segmented"] = draw(st.booleans()) if kind is FrameKind.UI else False
    return spec


def encoded(spec: dict[str, object], *, transparency: bool = False) -> bytes:
    """Encode a spec from :func:`frame_specs`."""
    return encode_frame(transparency=transparency, **spec)  # type: ignore[arg-type]


frames = frame_specs().map(encoded)


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    """Things that are not a frame: noise, truncated frames, frames with corrupted bytes."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(tricky_bytes)
    frame = draw(frames)
    if choice == 1:
        # A truncated frame: it never gets its closing flag.
        return frame[: draw(st.integers(1, len(frame) - 1))]
    if choice == 2:
        # A corrupted frame: one byte of its body changed.
        i = draw(st.integers(1, len(frame) - 2))
        delta = draw(st.integers(1, 255))
        return frame[:i] + bytes(((frame[i] + delta) & 0xFF,)) + frame[i + 1 :]
    # Bytes that look like a frame start claiming a long length.
    return bytes((0x7E, 0xA0 | draw(st.integers(0, 7)), draw(st.integers(0, 255)))) + draw(
        tricky_bytes
    )


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` split at random points (possibly into single bytes)."""
    if not data:
        return []
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=40))))
    out = []
    prev = 0
    for cut in [*cuts, len(data)]:
        if cut > prev:
            out.append(data[prev:cut])
            prev = cut
    return out
