"""OBIS codes (IEC 62056-6-1): the six-part logical names of COSEM objects.

Accepted text notations (surrounding whitespace ignored, every group a decimal 0..255):

- ``A-B:C.D.E`` (F is 255), e.g. ``1-1:32.7.0``
- ``A-B:C.D.E*F`` and ``A-B:C.D.E.F``, e.g. ``1-1:32.7.0*255``, ``1-1:32.7.0.255``
- ``A.B.C.D.E.F`` and ``A.B.C.D.E`` (F is 255), e.g. ``1.1.32.7.0.255``

Short forms without A and B (``32.7.0``) are deliberately refused: the defaults differ between
standards and guessing them silently reads the wrong register. Six raw bytes (``bytes``,
``bytearray`` or ``memoryview``) are also accepted.
"""

from __future__ import annotations

import re

import attrs

from codec.errors import DecodeError

__all__ = ["InvalidObis", "Obis"]


class InvalidObis(ValueError):
    """A text or value that is not an OBIS code (user input; a plain :class:`ValueError`)."""


_GROUP = r"\s*([0-9]{1,3})\s*"
_AB_FORM = re.compile(rf"{_GROUP}-{_GROUP}:{_GROUP}\.{_GROUP}\.{_GROUP}(?:[*.]{_GROUP})?")
_DOTTED_FORM = re.compile(rf"{_GROUP}\.{_GROUP}\.{_GROUP}\.{_GROUP}\.{_GROUP}(?:\.{_GROUP})?")


def _group(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise InvalidObis(f"OBIS group value must be an int 0..255, got {value!r}")
    return value


@attrs.frozen(order=True)
class Obis:
    """An OBIS code ``A-B:C.D.E*F``; hashable and ordered, usable as a dict key."""

    a: int = attrs.field(converter=_group)
    b: int = attrs.field(converter=_group)
    c: int = attrs.field(converter=_group)
    d: int = attrs.field(converter=_group)
    e: int = attrs.field(converter=_group)
    f: int = attrs.field(default=255, converter=_group)

    @classmethod
    def parse(cls, value: str | bytes | bytearray | memoryview | Obis) -> Obis:
        """Parse any accepted notation (see the module docstring) or six raw bytes.

        Raises :class:`InvalidObis` naming the input and what is wrong with it.
        """
        if isinstance(value, Obis):
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            if len(raw) != 6:
                raise InvalidObis(f"an OBIS code is 6 bytes, got {len(raw)}: {raw.hex()}")
            return cls(*raw)
        if not isinstance(value, str):
            raise InvalidObis(f"cannot parse an OBIS code from {type(value).__name__} {value!r}")
        match = _AB_FORM.fullmatch(value) or _DOTTED_FORM.fullmatch(value)
        if match is None:
            raise InvalidObis(
                f"{value!r} is not an OBIS code; expected A-B:C.D.E, A-B:C.D.E*F, "
                "A-B:C.D.E.F, A.B.C.D.E.F or A.B.C.D.E with decimal groups 0..255"
            )
        groups = [int(g) for g in match.groups() if g is not None]
        for name, number in zip("ABCDEF", groups, strict=False):
            if number > 255:
                raise InvalidObis(f"{value!r}: group {name} is {number}, above 255")
        return cls(*groups)

    @classmethod
    def from_bytes(cls, raw: bytes | bytearray | memoryview, *, offset: int = 0) -> Obis:
        """Read six bytes from a received frame at ``offset``.

        Raises :class:`~codec.errors.DecodeError` (code ``decode.obis``) if fewer remain.
        """
        if offset < 0 or len(raw) - offset < 6:
            raise DecodeError(
                f"an OBIS code needs 6 bytes, {max(0, len(raw) - offset)} remain",
                code="decode.obis",
                offset=offset,
            )
        a, b, c, d, e, f = bytes(raw[offset : offset + 6])
        return cls(a, b, c, d, e, f)

    def to_bytes(self) -> bytes:
        """The six-byte logical name."""
        return bytes((self.a, self.b, self.c, self.d, self.e, self.f))

    def dotted(self) -> str:
        """The ``A.B.C.D.E.F`` notation, e.g. ``1.1.32.7.0.255``."""
        return f"{self.a}.{self.b}.{self.c}.{self.d}.{self.e}.{self.f}"

    def __str__(self) -> str:
        text = f"{self.a}-{self.b}:{self.c}.{self.d}.{self.e}"
        return text if self.f == 255 else f"{text}*{self.f}"
