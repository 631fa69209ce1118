"""A-XDR encoding of DLMS ``Data`` values (IEC 61334-6; DLMS UA 1000-2, "Data" and compact-array).

A value on the wire is a one-byte tag (:class:`DataType`) followed by its content: fixed-size
big-endian integers and floats, length-prefixed strings, count-prefixed arrays and structures, or
a compact-array whose elements are written without tags after one shared type description.

:func:`decode_data` accepts untrusted bytes: any input gives a :class:`Data` or a
:class:`~codec.errors.DecodeError` carrying the offset of the problem, and the :class:`Limits`
bound nesting, element counts and string lengths before anything is allocated.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Iterable

import attrs

from codec.cosem_time import CosemDate, CosemDateTime, CosemTime
from codec.errors import DecodeError, EncodeError

__all__ = [
    "DEFAULT_LIMITS",
    "BitString",
    "CompactArray",
    "Data",
    "DataType",
    "Limits",
    "TypeDescription",
    "decode_data",
    "decode_data_exact",
    "decode_length",
    "encode_data",
    "encode_length",
]

Buffer = bytes | bytearray | memoryview


class DataType(enum.IntEnum):
    """The tag of a DLMS ``Data`` CHOICE."""

    NULL_DATA = 0
    ARRAY = 1
    STRUCTURE = 2
    BOOLEAN = 3
    BIT_STRING = 4
    DOUBLE_LONG = 5
    DOUBLE_LONG_UNSIGNED = 6
    OCTET_STRING = 9
    VISIBLE_STRING = 10
    UTF8_STRING = 12
    BCD = 13
    INTEGER = 15
    LONG = 16
    UNSIGNED = 17
    LONG_UNSIGNED = 18
    COMPACT_ARRAY = 19
    LONG64 = 20
    LONG64_UNSIGNED = 21
    ENUM = 22
    FLOAT32 = 23
    FLOAT64 = 24
    DATE_TIME = 25
    DATE = 26
    TIME = 27
    DONT_CARE = 255


_TAGS: dict[int, DataType] = {int(t): t for t in DataType}

# Fixed-size integer types: struct format and (inclusive) value range. BCD is one raw byte and
# ENUM one unsigned byte (DLMS UA 1000-2); both are ints here.
_INT_FORMATS: dict[DataType, struct.Struct] = {
    DataType.DOUBLE_LONG: struct.Struct(">i"),
    DataType.DOUBLE_LONG_UNSIGNED: struct.Struct(">I"),
    DataType.BCD: struct.Struct(">B"),
    DataType.INTEGER: struct.Struct(">b"),
    DataType.LONG: struct.Struct(">h"),
    DataType.UNSIGNED: struct.Struct(">B"),
    DataType.LONG_UNSIGNED: struct.Struct(">H"),
    DataType.LONG64: struct.Struct(">q"),
    DataType.LONG64_UNSIGNED: struct.Struct(">Q"),
    DataType.ENUM: struct.Struct(">B"),
}
_INT_RANGES: dict[DataType, tuple[int, int]] = {
    t: (-(1 << (8 * s.size - 1)), (1 << (8 * s.size - 1)) - 1)
    if s.format[-1].islower()
    else (0, (1 << (8 * s.size)) - 1)
    for t, s in _INT_FORMATS.items()
}
_FLOAT_FORMATS: dict[DataType, struct.Struct] = {
    DataType.FLOAT32: struct.Struct(">f"),
    DataType.FLOAT64: struct.Struct(">d"),
}
_TIME_TYPES: dict[DataType, tuple[int, type[CosemDateTime] | type[CosemDate] | type[CosemTime]]] = {
    DataType.DATE_TIME: (12, CosemDateTime),
    DataType.DATE: (5, CosemDate),
    DataType.TIME: (4, CosemTime),
}
_STRING_TYPES = frozenset({DataType.OCTET_STRING, DataType.VISIBLE_STRING, DataType.UTF8_STRING})
_NULL_TYPES = frozenset({DataType.NULL_DATA, DataType.DONT_CARE})
_U16 = struct.Struct(">H")


@attrs.frozen
class Limits:
    """Bounds applied while decoding untrusted input.

    ``max_depth`` is the deepest nesting of arrays and structures (a scalar is depth 1),
    ``max_elements`` the largest element count of one array or structure, ``max_length`` the
    longest string in bytes. A compact-array, whose untagged elements can expand, may build at
    most ``max(max_elements, max_depth * content_bytes)`` values.
    """

    max_depth: int = 16
    max_elements: int = 65535
    max_length: int = 1 << 20


DEFAULT_LIMITS = Limits()


@attrs.frozen
class BitString:
    """A bit-string: ``bits`` significant bits, the first bit the most significant bit of
    ``data[0]``. ``data`` holds exactly ``ceil(bits / 8)`` bytes; unused trailing bits are kept as
    received."""

    bits: int
    data: bytes

    @classmethod
    def from_str(cls, text: str) -> BitString:
        """Parse ``"1010"`` (first character = first bit)."""
        if text.strip("01"):
            raise ValueError(f"bit-string text may hold only '0' and '1', got {text!r}")
        n = len(text)
        if n == 0:
            return cls(0, b"")
        pad = -n % 8
        value = int(text, 2) << pad
        return cls(n, value.to_bytes((n + pad) // 8, "big"))

    def __getitem__(self, index: int) -> bool:
        if not -self.bits <= index < self.bits:
            raise IndexError(f"bit {index} out of range for {self.bits} bits")
        index %= self.bits
        return bool(self.data[index >> 3] & (0x80 >> (index & 7)))

    def __len__(self) -> int:
        return self.bits

    def __str__(self) -> str:
        if self.bits == 0:
            return ""
        return format(int.from_bytes(self.data, "big"), f"0{len(self.data) * 8}b")[: self.bits]


@attrs.frozen
class TypeDescription:
    """The contents-description of a compact-array.

    ``count`` and ``element`` are set for arrays, ``elements`` for structures, neither for
    simple types. Build with :meth:`simple`, :meth:`array`, :meth:`structure` or :meth:`of`.
    """

    type: DataType
    count: int | None = None
    element: TypeDescription | None = None
    elements: tuple[TypeDescription, ...] | None = None

    @classmethod
    def simple(cls, type: DataType) -> TypeDescription:
        """The description of a simple (non-constructed) type."""
        return cls(DataType(type))

    @classmethod
    def array(cls, count: int, element: TypeDescription) -> TypeDescription:
        """An array of ``count`` elements described by ``element``."""
        return cls(DataType.ARRAY, count=count, element=element)

    @classmethod
    def structure(cls, elements: Iterable[TypeDescription]) -> TypeDescription:
        """A structure whose members are described by ``elements``."""
        return cls(DataType.STRUCTURE, elements=tuple(elements))

    @classmethod
    def of(cls, value: Data) -> TypeDescription:
        """The description that ``value`` conforms to (arrays are described by their first
        element; an empty array by ``null-data``)."""
        if value.type == DataType.ARRAY:
            items = _items(value)
            element = cls.of(items[0]) if items else cls(DataType.NULL_DATA)
            return cls.array(len(items), element)
        if value.type == DataType.STRUCTURE:
            return cls.structure(cls.of(item) for item in _items(value))
        if value.type == DataType.COMPACT_ARRAY:
            raise EncodeError("a compact-array cannot be an element of a compact-array")
        return cls(DataType(value.type))

    def __str__(self) -> str:
        if self.type == DataType.ARRAY:
            return f"array[{self.count}] of {self.element}"
        if self.type == DataType.STRUCTURE:
            return "structure{" + ", ".join(str(e) for e in self.elements or ()) + "}"
        return self.type.name.lower().replace("_", "-")


@attrs.frozen
class CompactArray:
    """A compact-array value: every element conforms to ``element_type``."""

    element_type: TypeDescription
    elements: tuple[Data, ...]


@attrs.frozen
class Data:
    """A typed DLMS value.

    Value representation by type: null-data and dont-care ``None``; array and structure a
    ``tuple`` of :class:`Data`; boolean ``bool``; bit-string :class:`BitString`; every integer
    type, enum and bcd ``int``; octet-string ``bytes``; visible-string ``str`` (latin-1 on the
    wire); utf8-string ``str``; float32/float64 ``float``; date-time, date, time the
    :mod:`codec.cosem_time` classes; compact-array :class:`CompactArray`.
    """

    type: DataType
    value: object

    @classmethod
    def null(cls) -> Data:
        """null-data."""
        return cls(DataType.NULL_DATA, None)

    @classmethod
    def dont_care(cls) -> Data:
        """dont-care."""
        return cls(DataType.DONT_CARE, None)

    @classmethod
    def unsigned(cls, v: int) -> Data:
        """unsigned (u8)."""
        return cls(DataType.UNSIGNED, v)

    @classmethod
    def long_unsigned(cls, v: int) -> Data:
        """long-unsigned (u16)."""
        return cls(DataType.LONG_UNSIGNED, v)

    @classmethod
    def double_long(cls, v: int) -> Data:
        """double-long (i32)."""
        return cls(DataType.DOUBLE_LONG, v)

    @classmethod
    def double_long_unsigned(cls, v: int) -> Data:
        """double-long-unsigned (u32)."""
        return cls(DataType.DOUBLE_LONG_UNSIGNED, v)

    @classmethod
    def integer(cls, v: int) -> Data:
        """integer (i8)."""
        return cls(DataType.INTEGER, v)

    @classmethod
    def long(cls, v: int) -> Data:
        """long (i16)."""
        return cls(DataType.LONG, v)

    @classmethod
    def long64(cls, v: int) -> Data:
        """long64 (i64)."""
        return cls(DataType.LONG64, v)

    @classmethod
    def long64_unsigned(cls, v: int) -> Data:
        """long64-unsigned (u64)."""
        return cls(DataType.LONG64_UNSIGNED, v)

    @classmethod
    def enum(cls, v: int) -> Data:
        """enum (u8)."""
        return cls(DataType.ENUM, v)

    @classmethod
    def bcd(cls, v: int) -> Data:
        """bcd: one raw byte (two packed digits), kept as an int 0..255."""
        return cls(DataType.BCD, v)

    @classmethod
    def boolean(cls, v: bool) -> Data:
        """boolean."""
        return cls(DataType.BOOLEAN, v)

    @classmethod
    def octet_string(cls, b: bytes | bytearray | memoryview) -> Data:
        """octet-string."""
        return cls(DataType.OCTET_STRING, bytes(b))

    @classmethod
    def visible_string(cls, s: str) -> Data:
        """visible-string (latin-1 on the wire)."""
        return cls(DataType.VISIBLE_STRING, s)

    @classmethod
    def utf8_string(cls, s: str) -> Data:
        """utf8-string."""
        return cls(DataType.UTF8_STRING, s)

    @classmethod
    def float32(cls, x: float) -> Data:
        """float32."""
        return cls(DataType.FLOAT32, x)

    @classmethod
    def float64(cls, x: float) -> Data:
        """float64."""
        return cls(DataType.FLOAT64, x)

    @classmethod
    def array(cls, items: Iterable[Data]) -> Data:
        """array (elements should share one type; not enforced)."""
        return cls(DataType.ARRAY, tuple(items))

    @classmethod
    def structure(cls, items: Iterable[Data]) -> Data:
        """structure."""
        return cls(DataType.STRUCTURE, tuple(items))

    @classmethod
    def compact_array(
        cls, items: Iterable[Data], element_type: TypeDescription | None = None
    ) -> Data:
        """compact-array; ``element_type`` defaults to the description of the first item."""
        elements = tuple(items)
        if element_type is None:
            if not elements:
                raise EncodeError("an empty compact-array needs an explicit element_type")
            element_type = TypeDescription.of(elements[0])
        return cls(DataType.COMPACT_ARRAY, CompactArray(element_type, elements))

    @classmethod
    def date_time(cls, dt: CosemDateTime) -> Data:
        """date-time."""
        return cls(DataType.DATE_TIME, dt)

    @classmethod
    def date(cls, d: CosemDate) -> Data:
        """date."""
        return cls(DataType.DATE, d)

    @classmethod
    def time(cls, t: CosemTime) -> Data:
        """time."""
        return cls(DataType.TIME, t)

    @classmethod
    def bit_string(cls, bs: BitString | str) -> Data:
        """bit-string, from a :class:`BitString` or its ``"1010"`` text."""
        return cls(DataType.BIT_STRING, BitString.from_str(bs) if isinstance(bs, str) else bs)

    @property
    def is_integer_type(self) -> bool:
        """Whether the value is an int on the wire (integer types, enum, bcd)."""
        return self.type in _INT_FORMATS

    @property
    def is_numeric_type(self) -> bool:
        """Whether the value is a number (integer types, enum, bcd, floats)."""
        return self.type in _INT_FORMATS or self.type in _FLOAT_FORMATS

    @property
    def is_constructed(self) -> bool:
        """Whether the value holds other values (array, structure, compact-array)."""
        return self.type in (DataType.ARRAY, DataType.STRUCTURE, DataType.COMPACT_ARRAY)

    def to_python(self) -> object:
        """Plain Python: ints, floats, bools, bytes, str, ``None``, lists for arrays, structures
        and compact-arrays, ``"1010"`` text for bit-strings, ``datetime``/``date``/``time`` for
        fully specified COSEM times (else the ``Cosem*`` object itself)."""
        t = self.type
        v = self.value
        if t == DataType.ARRAY or t == DataType.STRUCTURE:
            return [item.to_python() for item in _items(self)]
        if t == DataType.COMPACT_ARRAY:
            assert isinstance(v, CompactArray)
            return [item.to_python() for item in v.elements]
        if t == DataType.BIT_STRING:
            return str(v)
        if t in _TIME_TYPES:
            return _time_to_python(v)
        return v

    def to_json(self) -> object:
        """A JSON-safe structure that shows the wire value (the ``decode`` command, a raw
        column): like :meth:`to_python`, with bytes as lowercase hex, times as ISO 8601 text
        (naive when the deviation is unspecified, ``*`` for unspecified fields) and non-finite
        floats as ``"NaN"``/``"Infinity"``/``"-Infinity"``. The values delivered to users
        follow the value contract instead: :func:`codec.values.convert`."""
        t = self.type
        v = self.value
        if t == DataType.ARRAY or t == DataType.STRUCTURE:
            return [item.to_json() for item in _items(self)]
        if t == DataType.COMPACT_ARRAY:
            assert isinstance(v, CompactArray)
            return [item.to_json() for item in v.elements]
        if t == DataType.OCTET_STRING:
            assert isinstance(v, bytes | bytearray)
            return v.hex()
        if t == DataType.BIT_STRING:
            return str(v)
        if t in _FLOAT_FORMATS:
            assert isinstance(v, float | int)
            if math.isfinite(v):
                return v
            return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        if t in _TIME_TYPES:
            return _time_to_json(v)
        return v


def _items(d: Data) -> tuple[Data, ...]:
    v = d.value
    if not isinstance(v, tuple):
        raise EncodeError(f"{_name(d.type)} value must be a tuple of Data, not {v!r}")
    return v


def _time_to_python(v: object) -> object:
    try:
        if isinstance(v, CosemDateTime):
            return v.to_datetime()
        if isinstance(v, CosemDate):
            return v.to_date()
        if isinstance(v, CosemTime):
            return v.to_time()
    except DecodeError:
        pass  # not a calendar value: the Cosem* object itself is the best plain answer
    return v


def _time_to_json(v: object) -> object:
    try:
        if isinstance(v, CosemDateTime):
            if v.deviation is None:
                return v.to_naive_datetime().isoformat()
            return v.to_datetime().isoformat()
        if isinstance(v, CosemDate):
            return v.to_date().isoformat()
        if isinstance(v, CosemTime):
            return v.to_time().isoformat()
    except DecodeError:
        pass  # not a calendar value: fall back to the wildcard text form
    return str(v)


def _name(t: int) -> str:
    tag = _TAGS.get(t)
    return tag.name.lower().replace("_", "-") if tag is not None else f"type {t}"


# --- lengths -------------------------------------------------------------------------------


def encode_length(n: int) -> bytes:
    """The A-XDR (BER definite form) encoding of a length or element count."""
    if n < 0:
        raise EncodeError(f"length {n} is negative")
    if n < 0x80:
        return bytes((n,))
    if n <= 0xFF:
        return bytes((0x81, n))
    if n <= 0xFFFF:
        return b"\x82" + n.to_bytes(2, "big")
    if n <= 0xFFFFFFFF:
        return b"\x84" + n.to_bytes(4, "big")
    raise EncodeError(f"length {n} does not fit in 32 bits")


def decode_length(buf: Buffer, offset: int) -> tuple[int, int]:
    """Decode an A-XDR length at ``offset``; return it and the offset after it.

    Accepts the one-byte form and ``0x81``..``0x84`` followed by 1 to 4 big-endian bytes.
    """
    end = len(buf)
    if offset >= end:
        raise DecodeError("truncated: length expected", code="decode.truncated", offset=offset)
    first = buf[offset]
    if first < 0x80:
        return first, offset + 1
    size = first & 0x7F
    if not 1 <= size <= 4:
        raise DecodeError(
            f"invalid length prefix 0x{first:02x} (only 0x81..0x84 are allowed)",
            code="decode.bad_length",
            offset=offset,
        )
    if offset + 1 + size > end:
        raise DecodeError(
            f"truncated: {size}-byte length expected", code="decode.truncated", offset=offset
        )
    return int.from_bytes(buf[offset + 1 : offset + 1 + size], "big"), offset + 1 + size


# --- encoding ------------------------------------------------------------------------------


def encode_data(d: Data) -> bytes:
    """Encode a :class:`Data` value: tag and content.

    Raises :class:`EncodeError` naming the type and the offending value when the value does
    not fit its type.
    """
    out = bytearray()
    _encode(d, out)
    return bytes(out)


def _encode(d: Data, out: bytearray) -> None:
    if not isinstance(d, Data):
        raise EncodeError(f"expected a Data value, got {d!r}", code="encode.type")
    t = d.type
    if t not in _TAGS:
        raise EncodeError(f"unknown data type {t!r}")
    out.append(t)
    if t == DataType.ARRAY or t == DataType.STRUCTURE:
        items = _items(d)
        out += encode_length(len(items))
        for item in items:
            _encode(item, out)
    elif t == DataType.COMPACT_ARRAY:
        _encode_compact_array(d, out)
    else:
        _encode_content(DataType(t), d.value, out)


def _encode_content(t: DataType, v: object, out: bytearray) -> None:
    """Append the content (no tag) of a simple type."""
    fmt = _INT_FORMATS.get(t)
    if fmt is not None:
        if not isinstance(v, int):
            raise EncodeError(f"{_name(t)} value must be an int, not {v!r}", code="encode.type")
        lo, hi = _INT_RANGES[t]
        if not lo <= v <= hi:
            raise EncodeError(f"{_name(t)} value {v} out of range {lo}..{hi}", code="encode.range")
        out += fmt.pack(v)
        return
    if t in _STRING_TYPES:
        raw = _string_bytes(t, v)
        out += encode_length(len(raw))
        out += raw
        return
    ffmt = _FLOAT_FORMATS.get(t)
    if ffmt is not None:
        if not isinstance(v, float | int) or isinstance(v, bool):
            raise EncodeError(f"{_name(t)} value must be a float, not {v!r}", code="encode.type")
        try:
            out += ffmt.pack(v)
        except (OverflowError, struct.error):
            raise EncodeError(f"{_name(t)} value {v!r} out of range", code="encode.range") from None
        return
    if t in _TIME_TYPES:
        cls = _TIME_TYPES[t][1]
        if not isinstance(v, cls):
            raise EncodeError(
                f"{_name(t)} value must be a {cls.__name__}, not {v!r}", code="encode.type"
            )
        out += v.to_bytes()
        return
    if t == DataType.BOOLEAN:
        if not isinstance(v, bool):
            raise EncodeError(f"boolean value must be a bool, not {v!r}", code="encode.type")
        out.append(1 if v else 0)
        return
    if t == DataType.BIT_STRING:
        if not isinstance(v, BitString):
            raise EncodeError(
                f"bit-string value must be a BitString, not {v!r}", code="encode.type"
            )
        if v.bits < 0 or len(v.data) != (v.bits + 7) // 8:
            raise EncodeError(
                f"bit-string of {v.bits} bits needs {(v.bits + 7) // 8} data bytes, "
                f"has {len(v.data)}",
                code="encode.range",
            )
        out += encode_length(v.bits)
        out += v.data
        return
    if t in _NULL_TYPES:
        if v is not None:
            raise EncodeError(f"{_name(t)} value must be None, not {v!r}", code="encode.type")
        return
    raise EncodeError(f"{_name(t)} cannot be encoded as a simple value", code="encode.type")


def _string_bytes(t: DataType, v: object) -> bytes:
    if t == DataType.OCTET_STRING:
        if not isinstance(v, bytes | bytearray | memoryview):
            raise EncodeError(f"octet-string value must be bytes, not {v!r}", code="encode.type")
        return bytes(v)
    if not isinstance(v, str):
        raise EncodeError(f"{_name(t)} value must be a str, not {v!r}", code="encode.type")
    if t == DataType.UTF8_STRING:
        try:
            return v.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates
            raise EncodeError(
                f"utf8-string value {v!r} is not encodable: {exc.reason}", code="encode.range"
            ) from None
    try:
        return v.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise EncodeError(
            f"visible-string value {v!r} has a character outside latin-1 at index {exc.start}",
            code="encode.range",
        ) from None


def _encode_type_description(td: TypeDescription, out: bytearray) -> None:
    t = td.type
    if t not in _TAGS or t == DataType.COMPACT_ARRAY:
        raise EncodeError(f"{_name(t)} is not allowed in a compact-array type description")
    out.append(t)
    if t == DataType.ARRAY:
        if td.count is None or td.element is None or not 0 <= td.count <= 0xFFFF:
            raise EncodeError(
                f"array type description needs a count 0..65535 and an element type, got {td!r}"
            )
        out += _U16.pack(td.count)
        _encode_type_description(td.element, out)
    elif t == DataType.STRUCTURE:
        if td.elements is None:
            raise EncodeError(f"structure type description needs elements, got {td!r}")
        out += encode_length(len(td.elements))
        for element in td.elements:
            _encode_type_description(element, out)


def _encode_compact_array(d: Data, out: bytearray) -> None:
    ca = d.value
    if not isinstance(ca, CompactArray):
        raise EncodeError(f"compact-array value must be a CompactArray, not {ca!r}")
    td = ca.element_type
    _encode_type_description(td, out)
    if ca.elements and _min_width(td) == 0:
        raise EncodeError(
            f"compact-array elements of type {td} take no bytes, so their number cannot be "
            f"encoded ({len(ca.elements)} given)",
            code="encode.range",
        )
    contents = bytearray()
    for index, element in enumerate(ca.elements):
        _encode_untagged(element, td, contents, index)
    out += encode_length(len(contents))
    out += contents


def _encode_untagged(d: Data, td: TypeDescription, out: bytearray, index: int) -> None:
    if not isinstance(d, Data) or d.type != td.type:
        raise EncodeError(
            f"compact-array element {index} is {d!r}, which does not match the type {td}",
            code="encode.type",
        )
    if td.type == DataType.ARRAY:
        items = _items(d)
        if len(items) != td.count or td.element is None:
            raise EncodeError(
                f"compact-array element {index}: array of {len(items)} items where the type "
                f"says {td.count}",
                code="encode.type",
            )
        for item in items:
            _encode_untagged(item, td.element, out, index)
    elif td.type == DataType.STRUCTURE:
        items = _items(d)
        elements = td.elements or ()
        if len(items) != len(elements):
            raise EncodeError(
                f"compact-array element {index}: structure of {len(items)} items where the "
                f"type says {len(elements)}",
                code="encode.type",
            )
        for item, element in zip(items, elements, strict=True):
            _encode_untagged(item, element, out, index)
    else:
        _encode_content(td.type, d.value, out)


_FIXED_WIDTH: dict[DataType, int] = {
    **{t: s.size for t, s in _INT_FORMATS.items()},
    **{t: s.size for t, s in _FLOAT_FORMATS.items()},
    **{t: size for t, (size, _) in _TIME_TYPES.items()},
    DataType.BOOLEAN: 1,
    DataType.NULL_DATA: 0,
    DataType.DONT_CARE: 0,
}


def _min_width(td: TypeDescription) -> int:
    """The fewest bytes an untagged value of this type takes (length prefixes count 1)."""
    if td.type == DataType.ARRAY:
        if not td.count or td.element is None:
            return 0
        return td.count * _min_width(td.element)
    if td.type == DataType.STRUCTURE:
        return sum(_min_width(e) for e in td.elements or ())
    return _FIXED_WIDTH.get(td.type, 1)


# --- decoding ------------------------------------------------------------------------------


def decode_data(
    buf: Buffer, offset: int = 0, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[Data, int]:
    """Decode one :class:`Data` value at ``offset``; return it and the offset after it.

    Raises :class:`DecodeError` (with the offset of the fault) for truncated, malformed or
    over-limit input, and for nothing else.
    """
    if isinstance(buf, memoryview) and (buf.ndim != 1 or buf.itemsize != 1):
        buf = buf.cast("B")
    if offset < 0 or offset > len(buf):
        raise DecodeError(f"offset {offset} outside the buffer", code="decode.offset")
    try:
        return _Decoder(buf, limits).value(offset, 1)
    except RecursionError:
        raise DecodeError(
            "nesting too deep for this interpreter", code="decode.too_deep", offset=offset
        ) from None


def decode_data_exact(buf: Buffer, *, limits: Limits = DEFAULT_LIMITS) -> Data:
    """Decode a buffer that holds exactly one :class:`Data` value and nothing after it."""
    value, end = decode_data(buf, 0, limits=limits)
    if end != len(buf):
        raise DecodeError(
            f"{len(buf) - end} byte(s) left after the value", code="decode.trailing", offset=end
        )
    return value


class _Decoder:
    """One decoding pass over a buffer (holds the buffer and limits to keep calls short)."""

    __slots__ = ("buf", "end", "limits")

    def __init__(self, buf: Buffer, limits: Limits, end: int | None = None) -> None:
        self.buf = buf
        self.end = len(buf) if end is None else end
        self.limits = limits

    def fail(self, message: str, code: str, offset: int) -> DecodeError:
        return DecodeError(message, code=code, offset=offset)

    def count(self, pos: int, what: str, min_item_size: int) -> tuple[int, int]:
        """Read an element count and check it against the limits and the bytes left."""
        n, after = decode_length(self.buf, pos)
        if n > self.limits.max_elements:
            raise self.fail(
                f"{what} claims {n} elements, more than the limit {self.limits.max_elements}",
                "decode.too_many",
                pos,
            )
        if n * min_item_size > self.end - after:
            raise self.fail(
                f"truncated: {what} claims {n} elements but only {self.end - after} byte(s) remain",
                "decode.truncated",
                pos,
            )
        return n, after

    def value(self, pos: int, depth: int) -> tuple[Data, int]:
        if pos >= self.end:
            raise self.fail("truncated: data tag expected", "decode.truncated", pos)
        tag = self.buf[pos]
        t = _TAGS.get(tag)
        if t is None:
            raise self.fail(f"unknown data type tag {tag} (0x{tag:02x})", "decode.bad_tag", pos)
        pos += 1
        if t == DataType.ARRAY or t == DataType.STRUCTURE:
            if depth >= self.limits.max_depth:
                raise self.fail(
                    f"{_name(t)} nested deeper than the limit {self.limits.max_depth}",
                    "decode.too_deep",
                    pos - 1,
                )
            n, pos = self.count(pos, _name(t), 1)
            items = []
            for _ in range(n):
                item, pos = self.value(pos, depth + 1)
                items.append(item)
            return Data(t, tuple(items)), pos
        if t == DataType.COMPACT_ARRAY:
            return self.compact_array(pos, depth)
        v, pos = self.content(t, pos)
        return Data(t, v), pos

    def content(self, t: DataType, pos: int) -> tuple[object, int]:
        """Decode the content (no tag) of a simple type."""
        fmt = _INT_FORMATS.get(t) or _FLOAT_FORMATS.get(t)
        if fmt is not None:
            after = pos + fmt.size
            if after > self.end:
                raise self.fail(
                    f"truncated: {_name(t)} needs {fmt.size} byte(s)", "decode.truncated", pos
                )
            return fmt.unpack_from(self.buf, pos)[0], after
        if t in _STRING_TYPES:
            return self.string(t, pos)
        if t in _TIME_TYPES:
            size, cls = _TIME_TYPES[t]
            after = pos + size
            if after > self.end:
                raise self.fail(
                    f"truncated: {_name(t)} needs {size} bytes", "decode.truncated", pos
                )
            return cls.from_bytes(self.buf[pos:after]), after
        if t == DataType.BOOLEAN:
            if pos >= self.end:
                raise self.fail("truncated: boolean needs 1 byte", "decode.truncated", pos)
            return self.buf[pos] != 0, pos + 1
        if t == DataType.BIT_STRING:
            bits, start = decode_length(self.buf, pos)
            size = (bits + 7) // 8
            self.check_length("bit-string", size, start, pos)
            return BitString(bits, bytes(self.buf[start : start + size])), start + size
        if t in _NULL_TYPES:
            return None, pos
        raise self.fail(f"{_name(t)} is not a simple type here", "decode.bad_tag", pos)

    def check_length(self, what: str, size: int, start: int, pos: int) -> None:
        if size > self.limits.max_length:
            raise self.fail(
                f"{what} claims {size} bytes, more than the limit {self.limits.max_length}",
                "decode.too_long",
                pos,
            )
        if start + size > self.end:
            raise self.fail(
                f"truncated: {what} claims {size} bytes but only {max(0, self.end - start)} remain",
                "decode.truncated",
                pos,
            )

    def string(self, t: DataType, pos: int) -> tuple[object, int]:
        size, start = decode_length(self.buf, pos)
        self.check_length(_name(t), size, start, pos)
        raw = bytes(self.buf[start : start + size])
        after = start + size
        if t == DataType.OCTET_STRING:
            return raw, after
        if t == DataType.VISIBLE_STRING:
            return raw.decode("latin-1"), after
        try:
            return raw.decode("utf-8"), after
        except UnicodeDecodeError as exc:
            raise self.fail(
                f"utf8-string is not valid UTF-8: {exc.reason}",
                "decode.bad_utf8",
                start + exc.start,
            ) from None

    def type_description(self, pos: int, depth: int) -> tuple[TypeDescription, int]:
        if pos >= self.end:
            raise self.fail("truncated: type description expected", "decode.truncated", pos)
        tag = self.buf[pos]
        t = _TAGS.get(tag)
        if t is None or t == DataType.COMPACT_ARRAY:
            raise self.fail(
                f"type {tag} (0x{tag:02x}) is not allowed in a compact-array type description",
                "decode.bad_tag",
                pos,
            )
        start = pos
        pos += 1
        if (t == DataType.ARRAY or t == DataType.STRUCTURE) and depth >= self.limits.max_depth:
            raise self.fail(
                f"type description nested deeper than the limit {self.limits.max_depth}",
                "decode.too_deep",
                start,
            )
        if t == DataType.ARRAY:
            if pos + 2 > self.end:
                raise self.fail(
                    "truncated: array type description needs a 2-byte count",
                    "decode.truncated",
                    pos,
                )
            n = _U16.unpack_from(self.buf, pos)[0]
            if n > self.limits.max_elements:
                raise self.fail(
                    f"array type claims {n} elements, more than the limit "
                    f"{self.limits.max_elements}",
                    "decode.too_many",
                    pos,
                )
            element, pos = self.type_description(pos + 2, depth + 1)
            return TypeDescription(t, count=n, element=element), pos
        if t == DataType.STRUCTURE:
            n, pos = self.count(pos, "structure type description", 1)
            elements = []
            for _ in range(n):
                element, pos = self.type_description(pos, depth + 1)
                elements.append(element)
            return TypeDescription(t, elements=tuple(elements)), pos
        return TypeDescription(t), pos

    def compact_array(self, pos: int, depth: int) -> tuple[Data, int]:
        td, pos = self.type_description(pos, depth)
        size, start = decode_length(self.buf, pos)
        self.check_length("compact-array contents", size, start, pos)
        stop = start + size
        if size and _min_width(td) == 0:
            raise self.fail(
                f"compact-array of {td} elements (which take no bytes) has {size} content bytes",
                "decode.bad_compact_array",
                start,
            )
        # Untagged elements can expand: bound the values built to what the bytes can justify.
        per_element = _node_count(td, self.limits.max_elements + 1)
        budget = max(self.limits.max_elements, self.limits.max_depth * size)
        if per_element > budget:
            raise self.fail(
                f"compact-array element type {td} expands to too many values",
                "decode.too_many",
                pos,
            )
        sub = _Decoder(self.buf, self.limits, stop)
        elements: list[Data] = []
        built = 0
        pos = start
        while pos < stop:
            if len(elements) >= self.limits.max_elements or built + per_element > budget:
                raise self.fail(
                    "compact-array holds more elements than the limits allow",
                    "decode.too_many",
                    pos,
                )
            element, pos = sub.untagged(td, pos, depth + 1)
            elements.append(element)
            built += per_element
        return Data(DataType.COMPACT_ARRAY, CompactArray(td, tuple(elements))), stop

    def untagged(self, td: TypeDescription, pos: int, depth: int) -> tuple[Data, int]:
        t = td.type
        if t == DataType.ARRAY:
            assert td.element is not None
            assert td.count is not None
            items = []
            for _ in range(td.count):
                item, pos = self.untagged(td.element, pos, depth + 1)
                items.append(item)
            return Data(t, tuple(items)), pos
        if t == DataType.STRUCTURE:
            items = []
            for element in td.elements or ():
                item, pos = self.untagged(element, pos, depth + 1)
                items.append(item)
            return Data(t, tuple(items)), pos
        v, pos = self.content(t, pos)
        return Data(t, v), pos


def _node_count(td: TypeDescription, cap: int) -> int:
    """How many :class:`Data` values one element of this type builds (stops counting at cap)."""
    if td.type == DataType.ARRAY:
        assert td.element is not None
        assert td.count is not None
        inner = _node_count(td.element, cap)
        return min(cap, 1 + td.count * inner)
    if td.type == DataType.STRUCTURE:
        total = 1
        for element in td.elements or ():
            total += _node_count(element, cap)
            if total >= cap:
                return cap
        return total
    return 1
