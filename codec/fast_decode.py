"""The steady-state reply, decoded in one pass: a GET.response-with-list of simple values.

A poller's reply has the same shape every cycle: ``C4 03 <invoke> <n>`` then ``n`` results,
each ``00`` (data) and a simple value (an integer, a float, a boolean, a short string). The
general decoder (:func:`codec.apdu.decode_xdlms`) walks it through a cursor object with a
bounds check and a method call per field; :func:`decode_get_with_list` reads it in a single loop
over the bytes instead.

It is a pure shortcut: it returns exactly what the general decoder returns for the same bytes
(the same :class:`~codec.axdr.Data` values, in the same order) or ``None`` for anything outside
that shape (a data-access-result, a structure, a long length, trailing bytes, a truncated
value, ...), and the caller then uses the general decoder, which also reports what is wrong.
"""

from __future__ import annotations

import struct

from codec.axdr import Data, DataType

__all__ = ["decode_get_with_list"]

#: GET.response (0xC4), choice get-response-with-list (3).
_GET_RESPONSE = 0xC4
_WITH_LIST = 3

# Per data tag: (type, struct) for fixed-size numbers.
_FIXED: dict[int, tuple[DataType, struct.Struct]] = {
    int(t): (t, struct.Struct(fmt))
    for t, fmt in (
        (DataType.DOUBLE_LONG, ">i"),
        (DataType.DOUBLE_LONG_UNSIGNED, ">I"),
        (DataType.BCD, ">B"),
        (DataType.INTEGER, ">b"),
        (DataType.LONG, ">h"),
        (DataType.UNSIGNED, ">B"),
        (DataType.LONG_UNSIGNED, ">H"),
        (DataType.LONG64, ">q"),
        (DataType.LONG64_UNSIGNED, ">Q"),
        (DataType.ENUM, ">B"),
        (DataType.FLOAT32, ">f"),
        (DataType.FLOAT64, ">d"),
    )
}
_BOOLEAN = int(DataType.BOOLEAN)
_NULL = int(DataType.NULL_DATA)
_OCTET_STRING = int(DataType.OCTET_STRING)
_VISIBLE_STRING = int(DataType.VISIBLE_STRING)
_NULL_DATA = Data(DataType.NULL_DATA, None)


def decode_get_with_list(buf: bytes) -> tuple[int, tuple[Data, ...]] | None:
    """``(invoke-id-and-priority byte, results)`` of a GET.response-with-list whose results
    are all simple data and which ends exactly at the end of ``buf``; else ``None``."""
    end = len(buf)
    if end < 4 or buf[0] != _GET_RESPONSE or buf[1] != _WITH_LIST:
        return None
    n = buf[3]
    if n >= 0x80:  # a long-form length: rare, left to the general decoder
        return None
    pos = 4
    results: list[Data] = []
    fixed = _FIXED
    for _ in range(n):
        if pos + 2 > end or buf[pos] != 0:  # a data-access-result, or truncated
            return None
        tag = buf[pos + 1]
        pos += 2
        spec = fixed.get(tag)
        if spec is not None:
            t, fmt = spec
            after = pos + fmt.size
            if after > end:
                return None
            results.append(Data(t, fmt.unpack_from(buf, pos)[0]))
            pos = after
        elif tag in (_OCTET_STRING, _VISIBLE_STRING):
            if pos >= end:
                return None
            size = buf[pos]
            after = pos + 1 + size
            if size >= 0x80 or after > end:
                return None
            raw = buf[pos + 1 : after]
            if tag == _OCTET_STRING:
                results.append(Data(DataType.OCTET_STRING, raw))
            else:
                results.append(Data(DataType.VISIBLE_STRING, raw.decode("latin-1")))
            pos = after
        elif tag == _BOOLEAN:
            if pos >= end:
                return None
            results.append(Data(DataType.BOOLEAN, buf[pos] != 0))
            pos += 1
        elif tag == _NULL:
            results.append(_NULL_DATA)
        else:
            return None
    if pos != end:
        return None
    return buf[2], tuple(results)
