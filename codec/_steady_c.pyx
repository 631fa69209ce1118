# cython: language_level=3
"""The steady-state reply decoded straight to register readings, Cython implementation.

The fast twin of :mod:`codec._steady_py`, which is the readable reference: same API, same
results. The public API and its contract are documented in :mod:`codec.steady`.

Integers, enums, bcd, booleans, null-data, visible-strings and floats are converted here in C,
by the same arithmetic as :mod:`codec.values` (a negative scaler divides by ``10**-scaler`` as
Python's correctly rounded int division does; float32 takes its shortest decimal and a scaled
float goes through its decimal repr, both by CPython's own float formatting and parsing).
A division beyond exact doubles (a 64-bit integer above 2**53, a scaler below -22) is
Python's own int division; octet-strings (text, hex or a COSEM date-time) go through the general
conversion itself.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.math cimport isfinite, isnan
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport atoi
from libc.string cimport memcpy, strchr

from codec._steady_shared import (
    CONVERT,
    json_layout,
    LLC_HEADERS,
    SCALER_ERROR,
    build_plan,
    convert_general,
)
from codec.apdu import DataAccessResult
from codec.axdr import Data, DataType
from codec.values import Quality

__all__ = ["SteadyDecoder", "SteadyReading"]


cdef extern from "Python.h":
    int Py_DTSF_ADD_DOT_0
    long long PyLong_AsLongLongAndOverflow(object obj, int* overflow) except? -1
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int* ptype) except NULL
    double PyOS_string_to_double(const char* s, char** endptr,
                                 PyObject* overflow_exception) except? -1.0
    object PyUnicode_DecodeLatin1(const char* s, Py_ssize_t size, const char* errors)


cdef enum:
    T_NULL = 0
    T_BOOLEAN = 3
    T_DOUBLE_LONG = 5
    T_DOUBLE_LONG_UNSIGNED = 6
    T_OCTET_STRING = 9
    T_VISIBLE_STRING = 10
    T_BCD = 13
    T_INTEGER = 15
    T_LONG = 16
    T_UNSIGNED = 17
    T_LONG_UNSIGNED = 18
    T_LONG64 = 20
    T_LONG64_UNSIGNED = 21
    T_ENUM = 22
    T_FLOAT32 = 23
    T_FLOAT64 = 24

# Register modes (codec._steady_shared).
cdef int M_CONVERT = CONVERT
cdef int M_SCALER_ERROR = SCALER_ERROR

#: 2**53: integers up to this magnitude are exact doubles.
cdef int64_t EXACT_INT = 9007199254740992
cdef enum:
    #: 10**22 is the largest power of ten that is an exact double.
    MAX_EXACT_POW10 = 22

cdef double _POW10[MAX_EXACT_POW10 + 1]
_p = 1.0
for _i in range(MAX_EXACT_POW10 + 1):
    _POW10[_i] = _p
    _p *= 10.0

#: Data-Access-Result code -> its error (code, message), None where the standard defines none.
cdef list _ACCESS_ERRORS = [None] * 256
for _r in DataAccessResult:
    _ACCESS_ERRORS[int(_r)] = (f"data-access.{_r.label}", _r.label)

cdef str _Q_NAN = Quality.NAN.value
cdef str _Q_POS_INF = Quality.POS_INF.value
cdef str _Q_NEG_INF = Quality.NEG_INF.value
cdef str _Q_INVALID_BCD = Quality.INVALID_BCD.value
cdef object _OCTET_STRING_TYPE = DataType.OCTET_STRING
cdef tuple _LLC_HEADERS = tuple(LLC_HEADERS)


cdef class SteadyReading:
    """One steady reply as the poller records it: see :class:`codec.steady.SteadyReading`."""

    cdef readonly int invoke
    cdef readonly dict values
    cdef readonly dict quality
    cdef readonly dict errors
    cdef readonly dict labels
    cdef readonly object values_json

    def __init__(self, int invoke, dict values, dict quality, dict errors, dict labels,
                 values_json=None):
        self.invoke = invoke
        self.values = values
        self.quality = quality
        self.errors = errors
        self.labels = labels
        self.values_json = values_json

    def as_tuple(self):
        """All fields, for comparisons across implementations."""
        return (self.invoke, self.values, self.quality, self.errors, self.labels,
                self.values_json)

    def __eq__(self, other):
        if not isinstance(other, SteadyReading):
            return NotImplemented
        return self.as_tuple() == other.as_tuple()

    __hash__ = None

    def __repr__(self):
        return (
            f"SteadyReading(invoke={self.invoke}, values={self.values!r}, "
            f"quality={self.quality!r}, errors={self.errors!r}, labels={self.labels!r})"
        )


cdef inline uint64_t _be(const uint8_t* p, int n) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n):
        v = (v << 8) | p[i]
    return v


cdef double _float32_shortest(double value) except? -1.0:
    """codec.values.float32_shortest: the shortest of 6 to 9 significant digits that is the
    same float32, by CPython's own 'g' formatting and float parsing."""
    cdef float target = <float>value
    cdef float candidate
    cdef uint32_t a, b
    cdef double short
    cdef char* text
    cdef int digits
    memcpy(&a, &target, 4)
    for digits in range(6, 10):
        text = PyOS_double_to_string(value, b'g', digits, 0, NULL)
        try:
            short = PyOS_string_to_double(text, NULL, NULL)
        finally:
            PyMem_Free(text)
        candidate = <float>short
        memcpy(&b, &candidate, 4)
        if a == b:
            return short
    return value


cdef double _scale_float(double number, int scaler) except? -1.0:
    """``float(Decimal(repr(number)).scaleb(scaler))`` for a finite number: its repr's decimal
    value times 10**scaler, correctly rounded by CPython's float parsing."""
    cdef char* text = PyOS_double_to_string(number, b'r', 0, 0, NULL)
    cdef char* e
    cdef int exponent = scaler
    cdef char buf[64]
    try:
        e = strchr(text, b'e')
        if e != NULL:
            exponent += atoi(e + 1)
            e[0] = 0
        snprintf(buf, sizeof(buf), b"%se%d", text, exponent)
    finally:
        PyMem_Free(text)
    return PyOS_string_to_double(buf, NULL, NULL)


cdef Py_ssize_t _exact_decimal(int64_t whole, int places, char* out) noexcept:
    """``repr(whole / 10**places)`` written into ``out`` (32 bytes) without the float's
    shortest-digits search, for 0 < places <= 22 and ``|whole| < 10**15``: such a quotient,
    correctly rounded, is the nearest double to a decimal of at most 15 significant digits,
    whose shortest repr is that decimal itself (trailing zeros dropped, ``.0`` kept). Returns
    the length, or 0 when repr would not be that plain decimal (exponent notation below
    1e-4, or the bounds not met): then the caller formats the float itself."""
    cdef char digits[24]
    cdef int nd, point, i, last, n = 0
    cdef uint64_t magnitude
    if places <= 0 or places > 22 or whole >= 1000000000000000 or whole <= -1000000000000000:
        return 0
    if whole == 0:
        memcpy(out, b"0.0", 3)
        return 3
    magnitude = <uint64_t>(-whole) if whole < 0 else <uint64_t>whole
    nd = snprintf(digits, sizeof(digits), "%llu", <unsigned long long>magnitude)
    point = nd - places  # digits before the decimal point (0 or less: "0.000ddd")
    if point <= -4:
        return 0  # repr writes it with an exponent (1e-05)
    last = nd - 1
    while last >= 0 and last >= point and digits[last] == 48:  # trailing zeros of the fraction
        last -= 1
    if whole < 0:
        out[n] = 45  # "-"
        n += 1
    if point <= 0:
        out[n] = 48
        out[n + 1] = 46
        n += 2
        for i in range(-point):
            out[n] = 48
            n += 1
        for i in range(0, last + 1):
            out[n] = digits[i]
            n += 1
        return n
    for i in range(point):
        out[n] = digits[i]
        n += 1
    out[n] = 46  # "."
    n += 1
    if last < point:
        out[n] = 48  # a whole number: "x.0"
        return n + 1
    for i in range(point, last + 1):
        out[n] = digits[i]
        n += 1
    return n


cdef class SteadyDecoder:
    """Decode the steady reply to one register list: see :class:`codec.steady.SteadyDecoder`."""

    cdef readonly tuple specs
    cdef readonly tuple keys
    cdef readonly dict units
    cdef tuple _plans
    cdef tuple _scaler_errors
    cdef tuple _enum_names
    cdef tuple _factors
    cdef tuple _json_order
    cdef tuple _json_prefixes
    cdef Py_ssize_t _n
    cdef int* _modes
    cdef int* _scalers
    # Scratch of one decode: each register's integer when its value is that integer over a
    # power of ten computed exactly (-1 digits otherwise), for the values' JSON.
    cdef int64_t* _whole
    cdef int* _places

    def __cinit__(self):
        self._modes = NULL
        self._scalers = NULL
        self._whole = NULL
        self._places = NULL

    def __init__(self, specs, readings):
        cdef Py_ssize_t i
        plans = build_plan(specs, readings)
        self.specs = tuple(specs)
        self._plans = plans
        self.keys = tuple(p.key for p in plans)
        self.units = {p.key: p.unit for p in plans}
        self._scaler_errors = tuple(("register.scaler_unit", p.message) for p in plans)
        self._enum_names = tuple(p.enum_names for p in plans)
        self._factors = tuple(10 ** abs(p.scaler or 0) for p in plans)
        layout = json_layout(self.keys)
        self._json_order = None if layout is None else layout[0]
        self._json_prefixes = None if layout is None else layout[1]
        self._n = len(plans)
        PyMem_Free(self._modes)
        PyMem_Free(self._scalers)
        PyMem_Free(self._whole)
        PyMem_Free(self._places)
        self._modes = <int*>PyMem_Malloc(self._n * sizeof(int))
        self._scalers = <int*>PyMem_Malloc(self._n * sizeof(int))
        self._whole = <int64_t*>PyMem_Malloc((self._n or 1) * sizeof(int64_t))
        self._places = <int*>PyMem_Malloc((self._n or 1) * sizeof(int))
        if (self._modes == NULL or self._scalers == NULL or self._whole == NULL
                or self._places == NULL):
            raise MemoryError()
        for i in range(self._n):
            self._modes[i] = plans[i].mode
            self._scalers[i] = plans[i].scaler or 0

    def __dealloc__(self):
        PyMem_Free(self._modes)
        PyMem_Free(self._scalers)
        PyMem_Free(self._whole)
        PyMem_Free(self._places)

    def decode_info(self, info, int invoke_id=-1):
        """:meth:`decode` of an HDLC information field: the LLC header is skipped as the link
        skips it (``E6 E7 xx`` or ``E6 E6 xx``; without one the field is the APDU)."""
        cdef Py_buffer view
        cdef const uint8_t* p
        PyObject_GetBuffer(info, &view, PyBUF_SIMPLE)
        try:
            p = <const uint8_t*>view.buf
            if view.len >= 3 and p[0] == 0xE6 and (p[1] == 0xE7 or p[1] == 0xE6):
                return self._decode(p, 3, view.len, invoke_id)
            return self._decode(p, 0, view.len, invoke_id)
        finally:
            PyBuffer_Release(&view)

    def decode(self, buf, Py_ssize_t start=0, int invoke_id=-1):
        """The reading of the GET.response in ``buf[start:]``, or None (see the public doc)."""
        cdef Py_buffer view
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            if start < 0:
                return None
            return self._decode(<const uint8_t*>view.buf, start, view.len, invoke_id)
        finally:
            PyBuffer_Release(&view)

    cdef object _decode(self, const uint8_t* p, Py_ssize_t pos, Py_ssize_t end, int invoke_id):
        cdef Py_ssize_t i, n = self._n, size
        cdef int invoke, tag, mode, scaler, width
        cdef uint64_t raw
        cdef int64_t sv
        cdef uint32_t bits32
        cdef float f32
        cdef double number
        cdef bint unsigned_big, is_float
        cdef object key, value, label
        cdef str flag
        if end - pos < 4 or p[pos] != 0xC4:
            return None
        invoke = p[pos + 2]
        if invoke_id >= 0 and (invoke & 0x0F) != invoke_id:
            return None
        if n == 1:
            if p[pos + 1] != 1:  # get-response-normal answers a lone register
                return None
            pos += 3
        else:
            if p[pos + 1] != 3 or p[pos + 3] != n:
                return None
            pos += 4
        cdef dict values = {}
        cdef dict quality = {}
        cdef dict errors = {}
        cdef dict labels = {}
        for i in range(n):
            self._places[i] = -1
            if pos + 2 > end:
                return None
            key = self.keys[i]
            if p[pos] == 1:  # a data-access-result
                error = _ACCESS_ERRORS[p[pos + 1]]
                if error is None:
                    return None
                errors[key] = error
                pos += 2
                continue
            if p[pos] != 0:
                return None
            tag = p[pos + 1]
            pos += 2
            mode = self._modes[i]
            scaler = self._scalers[i]
            flag = None
            label = None
            # Integers: the scaler applies, no flag, no label.
            if (tag == T_DOUBLE_LONG or tag == T_DOUBLE_LONG_UNSIGNED or tag == T_INTEGER
                    or tag == T_LONG or tag == T_UNSIGNED or tag == T_LONG_UNSIGNED
                    or tag == T_LONG64 or tag == T_LONG64_UNSIGNED):
                if tag == T_INTEGER or tag == T_UNSIGNED:
                    width = 1
                elif tag == T_LONG or tag == T_LONG_UNSIGNED:
                    width = 2
                elif tag == T_DOUBLE_LONG or tag == T_DOUBLE_LONG_UNSIGNED:
                    width = 4
                else:
                    width = 8
                if pos + width > end:
                    return None
                raw = _be(p + pos, width)
                pos += width
                if mode != M_CONVERT:
                    if mode != M_SCALER_ERROR:
                        return None
                    errors[key] = self._scaler_errors[i]
                    continue
                unsigned_big = False
                if tag == T_INTEGER:
                    sv = <signed char>raw
                elif tag == T_LONG:
                    sv = <short>raw
                elif tag == T_DOUBLE_LONG:
                    sv = <int>raw
                elif tag == T_LONG64:
                    sv = <int64_t>raw
                elif tag == T_LONG64_UNSIGNED and raw > <uint64_t>0x7FFFFFFFFFFFFFFF:
                    unsigned_big = True
                    sv = 0
                else:
                    sv = <int64_t>raw
                if unsigned_big:
                    value = raw
                else:
                    value = sv
                if scaler == 0:
                    values[key] = value
                elif scaler < 0 and not unsigned_big and -scaler <= MAX_EXACT_POW10 and (
                        -EXACT_INT <= sv <= EXACT_INT):
                    # Both exact doubles: IEEE division is the correctly rounded quotient,
                    # which is what Python's int / int gives.
                    values[key] = <double>sv / _POW10[-scaler]
                    self._whole[i] = sv
                    self._places[i] = -scaler
                elif scaler < 0:
                    values[key] = value / self._factors[i]
                else:
                    values[key] = value * self._factors[i]
                continue
            if tag == T_FLOAT32 or tag == T_FLOAT64:
                width = 4 if tag == T_FLOAT32 else 8
                if pos + width > end:
                    return None
                raw = _be(p + pos, width)
                pos += width
                if mode != M_CONVERT:
                    if mode != M_SCALER_ERROR:
                        return None
                    errors[key] = self._scaler_errors[i]
                    continue
                if tag == T_FLOAT32:
                    bits32 = <uint32_t>raw
                    memcpy(&f32, &bits32, 4)
                    number = <double>f32
                    if isfinite(number):
                        number = _float32_shortest(number)
                else:
                    memcpy(&number, &raw, 8)
                if scaler != 0 and isfinite(number):
                    number = _scale_float(number, scaler)
                if isfinite(number):
                    values[key] = number
                    continue
                if isnan(number):
                    flag = _Q_NAN
                elif number > 0:
                    flag = _Q_POS_INF
                else:
                    flag = _Q_NEG_INF
                values[key] = None
                quality[key] = flag
                continue
            if tag == T_ENUM or tag == T_BCD or tag == T_BOOLEAN:
                if pos + 1 > end:
                    return None
                raw = p[pos]
                pos += 1
                if mode != M_CONVERT:
                    if mode != M_SCALER_ERROR:
                        return None
                    errors[key] = self._scaler_errors[i]
                    continue
                if tag == T_BOOLEAN:
                    values[key] = raw != 0
                elif tag == T_ENUM:
                    values[key] = <int>raw
                    names = self._enum_names[i]
                    if names is not None:
                        label = (<dict>names).get(<int>raw)
                        if label is not None:
                            labels[key] = label
                elif (raw >> 4) > 9 or (raw & 0x0F) > 9:
                    values[key] = None
                    quality[key] = _Q_INVALID_BCD
                else:
                    values[key] = <int>((raw >> 4) * 10 + (raw & 0x0F))
                continue
            if tag == T_NULL:
                if mode != M_CONVERT:
                    if mode != M_SCALER_ERROR:
                        return None
                    errors[key] = self._scaler_errors[i]
                    continue
                values[key] = None
                continue
            if tag == T_VISIBLE_STRING or tag == T_OCTET_STRING:
                if pos >= end or p[pos] >= 0x80:  # a long-form length: the general path's
                    return None
                size = p[pos]
                if pos + 1 + size > end:
                    return None
                pos += 1 + size
                if mode != M_CONVERT:
                    if mode != M_SCALER_ERROR:
                        return None
                    errors[key] = self._scaler_errors[i]
                    continue
                if tag == T_VISIBLE_STRING:
                    values[key] = PyUnicode_DecodeLatin1(<const char*>(p + pos - size), size,
                                                         NULL)
                    continue
                data = Data(_OCTET_STRING_TYPE, (<const char*>(p + pos - size))[:size])
                value, flag, label, error = convert_general(data, self._plans[i])
                if error is not None:
                    errors[key] = error
                    continue
                values[key] = value
                if flag is not None:
                    quality[key] = flag
                if label is not None:
                    labels[key] = label
                continue
            return None
        if pos != end:
            return None
        cdef SteadyReading reading = SteadyReading.__new__(SteadyReading)
        reading.invoke = invoke
        reading.values = values
        reading.quality = quality
        reading.errors = errors
        reading.labels = labels
        if self._json_order is not None and not quality and not errors:
            reading.values_json = self._values_json(values)
        else:
            reading.values_json = None
        return reading

    cdef object _values_json(self, dict values):
        """The values as compact JSON with sorted keys when each is an int or a finite float
        (ints as %d, floats as their repr, as the twin writes them), else None."""
        cdef Py_ssize_t k
        cdef bytearray out = bytearray()
        cdef char digits[32]
        cdef char* text
        cdef long long whole
        cdef int overflow
        cdef double number
        cdef tuple order = self._json_order
        cdef tuple prefixes = self._json_prefixes
        cdef Py_ssize_t i, size
        for k in range(self._n):
            i = <Py_ssize_t>order[k]
            value = values[self.keys[i]]
            out += <bytes>prefixes[k]
            if self._places[i] > 0:
                size = _exact_decimal(self._whole[i], self._places[i], digits)
                if size > 0:
                    out += digits[:size]
                    continue
            if type(value) is int:
                overflow = 0
                whole = PyLong_AsLongLongAndOverflow(value, &overflow)
                if overflow:
                    out += (<str>str(value)).encode("ascii")
                else:
                    snprintf(digits, sizeof(digits), "%lld", whole)
                    out += <bytes>digits
            elif type(value) is float:
                number = value
                if not isfinite(number):
                    return None
                text = PyOS_double_to_string(number, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
                try:
                    out += <bytes>text
                finally:
                    PyMem_Free(text)
            else:
                return None  # a bool, a text, None, a list
        if self._n == 0:
            return b"{}"
        out += b"}"
        return bytes(out)
