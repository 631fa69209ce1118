"""HDLC link parameter negotiation (IEC 62056-46, the information field of SNRM and UA).

The field is ``81 80 <length>`` followed by parameters ``<id> <length> <value>``:
0x05 maximum information field length transmit, 0x06 receive, 0x07 window size transmit,
0x08 receive. Values are big-endian integers of 1, 2 or 4 bytes. A missing parameter takes its
default (128 bytes, window 1). "Transmit" and "receive" are from the sender's point of view, so a
client reads the server's transmit values as its own receive values (:meth:`swapped`).
"""

from __future__ import annotations

import attrs

from codec.errors import EncodeError, FrameError

FORMAT_ID = 0x81
GROUP_ID = 0x80
_MAX_INFO_TX, _MAX_INFO_RX, _WINDOW_TX, _WINDOW_RX = 0x05, 0x06, 0x07, 0x08
DEFAULT_MAX_INFO = 128
DEFAULT_WINDOW = 1


def _int_bytes(value: int) -> bytes:
    for size in (1, 2, 4):
        if value < 1 << (8 * size):
            return value.to_bytes(size, "big")
    raise EncodeError(f"HDLC parameter value {value} does not fit in 4 bytes")


@attrs.frozen
class LinkParameters:
    """Maximum information field lengths and window sizes, from the sender's point of view."""

    max_info_tx: int = DEFAULT_MAX_INFO
    max_info_rx: int = DEFAULT_MAX_INFO
    window_tx: int = DEFAULT_WINDOW
    window_rx: int = DEFAULT_WINDOW

    def __attrs_post_init__(self) -> None:
        for name in ("max_info_tx", "max_info_rx"):
            value = getattr(self, name)
            if not 1 <= value <= 2030:
                raise EncodeError(f"{name} must be 1..2030 bytes, not {value}")
        for name in ("window_tx", "window_rx"):
            value = getattr(self, name)
            if not 1 <= value <= 7:
                raise EncodeError(f"{name} must be 1..7, not {value}")

    def swapped(self) -> LinkParameters:
        """The same parameters seen from the peer's side (transmit and receive exchanged)."""
        return LinkParameters(self.max_info_rx, self.max_info_tx, self.window_rx, self.window_tx)

    def encode(self) -> bytes:
        """The information field of an SNRM or UA carrying these parameters."""
        params = bytearray()
        for pid, value in (
            (_MAX_INFO_TX, self.max_info_tx),
            (_MAX_INFO_RX, self.max_info_rx),
            (_WINDOW_TX, self.window_tx),
            (_WINDOW_RX, self.window_rx),
        ):
            # Windows are sent as 4 bytes, as meters and most clients do.
            raw = value.to_bytes(4, "big") if pid in (_WINDOW_TX, _WINDOW_RX) else _int_bytes(value)
            params += bytes((pid, len(raw))) + raw
        return bytes((FORMAT_ID, GROUP_ID, len(params))) + bytes(params)

    @classmethod
    def decode(cls, info: bytes) -> LinkParameters:
        """Parse an SNRM/UA information field; empty means all defaults."""
        if not info:
            return cls()
        if len(info) < 3 or info[0] != FORMAT_ID or info[1] != GROUP_ID:
            raise FrameError(
                f"HDLC parameter field must start with 81 80, got {info[:2].hex()}",
                code="hdlc.bad_parameters",
            )
        end = 3 + info[2]
        if end > len(info):
            raise FrameError(
                f"HDLC parameter group claims {info[2]} bytes but {len(info) - 3} follow",
                code="hdlc.bad_parameters",
                offset=2,
            )
        values = {
            _MAX_INFO_TX: DEFAULT_MAX_INFO,
            _MAX_INFO_RX: DEFAULT_MAX_INFO,
            _WINDOW_TX: DEFAULT_WINDOW,
            _WINDOW_RX: DEFAULT_WINDOW,
        }
        i = 3
        while i < end:
            if i + 2 > end:
                raise FrameError("truncated HDLC parameter", code="hdlc.bad_parameters", offset=i)
            pid, size = info[i], info[i + 1]
            if size not in (1, 2, 4) or i + 2 + size > end:
                raise FrameError(
                    f"HDLC parameter 0x{pid:02x} has a bad length {size}",
                    code="hdlc.bad_parameters",
                    offset=i + 1,
                )
            value = int.from_bytes(info[i + 2 : i + 2 + size], "big")
            if pid in values:  # unknown parameters are skipped, as the standard allows
                values[pid] = value
            i += 2 + size
        try:
            return cls(
                values[_MAX_INFO_TX], values[_MAX_INFO_RX], values[_WINDOW_TX], values[_WINDOW_RX]
            )
        except EncodeError as exc:
            raise FrameError(
                f"unusable HDLC parameters: {exc}", code="hdlc.bad_parameters"
            ) from None

    def negotiate(self, peer: LinkParameters) -> LinkParameters:
        """What a server answers to a client's proposal ``peer`` given its own limits ``self``.

        Both are from their sender's point of view; the result is from the server's.
        """
        return LinkParameters(
            max_info_tx=min(self.max_info_tx, peer.max_info_rx),
            max_info_rx=min(self.max_info_rx, peer.max_info_tx),
            window_tx=min(self.window_tx, peer.window_rx),
            window_rx=min(self.window_rx, peer.window_tx),
        )
