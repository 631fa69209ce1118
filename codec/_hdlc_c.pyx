# cython: language_level=3
"""HDLC hot path, Cython implementation.

The fast twin of :mod:`codec._hdlc_py`, which is the readable reference: same API, same results,
same counters. Frames are delimited by the length in the format field, never by the next 0x7E.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t
from libc.string cimport memchr

from codec._hdlc_shared import DEFAULT_MAX_BUFFER, MAX_FRAME_LENGTH, NEED_DATA, kind_of_control
from codec.errors import FrameError, LocalProtocolError

__all__ = [
    "NEED_DATA", "Frame", "FrameScanner", "fcs16", "steady_receive", "steady_send", "stuff", "unstuff"
]

DEF FLAG = 0x7E
DEF ESCAPE = 0x7D

cdef enum:
    INCOMPLETE = -1
    BAD_HEADER = -2
    BAD_HCS = -3
    BAD_FCS = -4
    FILL = -5

# Slicing-by-8 tables of the reflected CRC-16/X.25 polynomial 0x8408: table[k][b] is the CRC
# contribution of byte b followed by k zero bytes.
cdef uint16_t _T[8][256]


cdef void _init_tables() noexcept:
    cdef int b, k
    cdef uint16_t crc
    for b in range(256):
        crc = b
        for k in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        _T[0][b] = crc
    for k in range(1, 8):
        for b in range(256):
            _T[k][b] = (_T[k - 1][b] >> 8) ^ _T[0][_T[k - 1][b] & 0xFF]


_init_tables()


cdef inline uint16_t _crc(uint16_t crc, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    while n >= 8:
        crc ^= p[0] | (p[1] << 8)
        crc = (_T[7][crc & 0xFF] ^ _T[6][crc >> 8] ^ _T[5][p[2]] ^ _T[4][p[3]]
               ^ _T[3][p[4]] ^ _T[2][p[5]] ^ _T[1][p[6]] ^ _T[0][p[7]])
        p += 8
        n -= 8
    while n > 0:
        crc = (crc >> 8) ^ _T[0][(crc ^ p[0]) & 0xFF]
        p += 1
        n -= 1
    return crc


cdef inline uint16_t _fcs(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    return _crc(0xFFFF, p, n) ^ 0xFFFF


def fcs16(data, int crc=0xFFFF):
    """HDLC frame check sequence (CRC-16/X.25) of ``data``: ``fcs16(b"123456789") == 0x906E``.

    The result is the value sent on the wire, least significant byte first.
    """
    cdef Py_buffer view
    cdef uint16_t result
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        result = _crc(<uint16_t>crc, <const uint8_t*>view.buf, view.len) ^ 0xFFFF
    finally:
        PyBuffer_Release(&view)
    return result


def stuff(data):
    """Escape 0x7E and 0x7D as ISO/IEC 13239 transparency does (0x7D, byte XOR 0x20)."""
    cdef Py_buffer view
    cdef const uint8_t* p
    cdef Py_ssize_t n, i, extra = 0
    cdef uint8_t* out
    cdef uint8_t b
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        p = <const uint8_t*>view.buf
        n = view.len
        for i in range(n):
            if p[i] == FLAG or p[i] == ESCAPE:
                extra += 1
        result = PyBytes_FromStringAndSize(NULL, n + extra)
        out = <uint8_t*>PyBytes_AS_STRING(result)
        for i in range(n):
            b = p[i]
            if b == FLAG or b == ESCAPE:
                out[0] = ESCAPE
                out[1] = b ^ 0x20
                out += 2
            else:
                out[0] = b
                out += 1
    finally:
        PyBuffer_Release(&view)
    return result


def unstuff(data):
    """Undo :func:`stuff`. A dangling or flag-escaping 0x7D raises :class:`FrameError`."""
    cdef Py_buffer view
    cdef Py_ssize_t bad
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        result = bytearray(view.len)
        bad = _unstuff_into(<const uint8_t*>view.buf, view.len, result)
    finally:
        PyBuffer_Release(&view)
    if bad >= 0:
        raise FrameError(
            "invalid transparency escape: 0x7D not followed by an escaped byte",
            code="hdlc.bad_escape",
            offset=bad,
        )
    return bytes(result)


cdef Py_ssize_t _unstuff_into(const uint8_t* p, Py_ssize_t n, bytearray out) except -2:
    """Unescape ``p[:n]`` into ``out`` (resized); returns -1, or the offset of a bad escape."""
    cdef uint8_t* o = <uint8_t*>PyByteArray_AS_STRING(out)
    cdef Py_ssize_t i = 0, j = 0
    while i < n:
        if p[i] == ESCAPE:
            if i + 1 >= n or p[i + 1] == FLAG:
                return i
            o[j] = p[i + 1] ^ 0x20
            i += 2
        else:
            o[j] = p[i]
            i += 1
        j += 1
    del out[j:]
    return -1


cdef class Frame:
    """One valid HDLC frame (format type 3), as received or to be sent.

    ``dst``/``src`` are address values with the extension bits removed (7 bits per address byte);
    ``dst_size``/``src_size`` are their lengths on the wire (1, 2 or 4 bytes).
    ``hcs`` is ``None`` when the frame has no information field.
    """

    cdef readonly bint segmented
    cdef readonly int dst, dst_size, src, src_size, control, fcs
    cdef readonly bytes info
    cdef readonly object hcs

    def __init__(self, bint segmented, int dst, int dst_size, int src, int src_size,
                 int control, bytes info, hcs, int fcs):
        self.segmented = segmented
        self.dst = dst
        self.dst_size = dst_size
        self.src = src
        self.src_size = src_size
        self.control = control
        self.info = info
        self.hcs = hcs
        self.fcs = fcs

    @property
    def length(self):
        """The frame length as in the format field (everything between the flags)."""
        cdef int n = 2 + self.dst_size + self.src_size + 1 + 2
        if self.info or self.hcs is not None:
            n += 2 + len(self.info)
        return n

    @property
    def kind(self):
        """The kind of frame its control field encodes."""
        return kind_of_control(self.control)

    @property
    def ns(self):
        """Send sequence number N(S) of an I frame, else ``None``."""
        return (self.control >> 1) & 0x07 if self.control & 0x01 == 0 else None

    @property
    def nr(self):
        """Receive sequence number N(R) of an I, RR or RNR frame, else ``None``."""
        return (self.control >> 5) & 0x07 if self.control & 0x03 != 0x03 else None

    @property
    def poll_final(self):
        """The P/F bit."""
        return bool(self.control & 0x10)

    def as_tuple(self):
        """All fields, for comparisons across implementations."""
        return (bool(self.segmented), self.dst, self.dst_size, self.src, self.src_size,
                self.control, self.info, self.hcs, self.fcs)

    def __eq__(self, other):
        if not isinstance(other, Frame):
            return NotImplemented
        return self.as_tuple() == other.as_tuple()

    def __hash__(self):
        return hash(self.as_tuple())

    def __repr__(self):
        return (
            f"Frame(kind={self.kind.value}, dst=0x{self.dst:x}/{self.dst_size}, "
            f"src=0x{self.src:x}/{self.src_size}, control=0x{self.control:02x}, "
            f"segmented={bool(self.segmented)}, info={self.info.hex()})"
        )


cdef inline Py_ssize_t _address_end(const uint8_t* buf, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t size
    for size in range(1, 5):
        if i + size > n:
            return INCOMPLETE
        if buf[i + size - 1] & 0x01:
            return i + size if size != 3 else BAD_HEADER
    return BAD_HEADER


cdef Py_ssize_t _check(const uint8_t* buf, Py_ssize_t f, Py_ssize_t n) noexcept nogil:
    """Index of the closing flag of a complete valid frame opening at ``buf[f]``, or an outcome."""
    cdef uint8_t hi
    cdef Py_ssize_t length, i, header, end
    if f + 1 >= n:
        return INCOMPLETE
    hi = buf[f + 1]
    if hi == FLAG:
        return FILL
    if hi >> 4 != 0xA:
        return BAD_HEADER
    if f + 2 >= n:
        return INCOMPLETE
    length = ((hi & 0x07) << 8) | buf[f + 2]
    if length < 7:
        return BAD_HEADER
    i = _address_end(buf, f + 3, n)
    if i < 0:
        return i
    i = _address_end(buf, i, n)
    if i < 0:
        return i
    header = i + 1 - (f + 1)
    if length < header + 2 or (header + 2 < length < header + 5):
        return BAD_HEADER
    if i >= n:
        return INCOMPLETE
    if length > header + 2:
        if i + 3 > n:
            return INCOMPLETE
        if _fcs(buf + f + 1, i + 1 - (f + 1)) != (buf[i + 1] | (buf[i + 2] << 8)):
            return BAD_HCS
    end = f + 1 + length
    if end >= n:
        return INCOMPLETE
    if buf[end] != FLAG:
        return BAD_HEADER
    if _fcs(buf + f + 1, length - 2) != (buf[end - 2] | (buf[end - 1] << 8)):
        return BAD_FCS
    return end


cdef Frame _make_frame(const uint8_t* buf, Py_ssize_t f, Py_ssize_t end):
    cdef Frame frame = Frame.__new__(Frame)
    cdef Py_ssize_t i = f + 3, s0
    cdef int value = 0
    cdef uint8_t b
    while True:
        b = buf[i]
        value = (value << 7) | (b >> 1)
        i += 1
        if b & 1:
            break
    frame.dst = value
    frame.dst_size = <int>(i - (f + 3))
    s0 = i
    value = 0
    while True:
        b = buf[i]
        value = (value << 7) | (b >> 1)
        i += 1
        if b & 1:
            break
    frame.src = value
    frame.src_size = <int>(i - s0)
    frame.control = buf[i]
    i += 1
    frame.segmented = (buf[f + 1] & 0x08) != 0
    if end - 2 > i:
        frame.hcs = buf[i] | (buf[i + 1] << 8)
        frame.info = PyBytes_FromStringAndSize(<const char*>(buf + i + 2), end - 2 - (i + 2))
    else:
        frame.hcs = None
        frame.info = b""
    frame.fcs = buf[end - 2] | (buf[end - 1] << 8)
    return frame


cdef Py_ssize_t _count_discarded(const uint8_t* buf, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    cdef Py_ssize_t i, count = 0
    for i in range(start, stop):
        if buf[i] != FLAG:
            count += 1
    return count


cdef inline Py_ssize_t _find_flag(const uint8_t* buf, Py_ssize_t start, Py_ssize_t n) noexcept nogil:
    cdef const void* hit
    if start >= n:
        return -1
    hit = memchr(buf + start, FLAG, n - start)
    if hit == NULL:
        return -1
    return <const uint8_t*>hit - buf


cdef class FrameScanner:
    """Streaming HDLC frame scanner: feed bytes with :meth:`receive_data`, take frames with
    :meth:`next_frame` until it returns ``NEED_DATA``.

    Garbage, truncated and corrupted frames are skipped: the scanner resynchronises on the next
    plausible frame start, and a valid frame that follows garbage is never lost, even when the
    garbage claims a length that runs past it. Everything skipped is counted.
    """

    cdef bytearray _buf
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _ahead
    cdef bint _closed
    cdef readonly Py_ssize_t max_buffer
    cdef readonly bint transparency
    cdef public Py_ssize_t frames, bytes_received, bytes_discarded, resyncs, bad_hcs, bad_fcs

    def __init__(self, *, Py_ssize_t max_buffer=DEFAULT_MAX_BUFFER, bint transparency=False):
        if max_buffer < 4096:
            raise LocalProtocolError("max_buffer must be at least 4096 bytes")
        self._buf = bytearray()
        self._pos = 0
        self._ahead = 0
        self._closed = False
        self.max_buffer = max_buffer
        self.transparency = transparency
        self.frames = 0
        self.bytes_received = 0
        self.bytes_discarded = 0
        self.resyncs = 0
        self.bad_hcs = 0
        self.bad_fcs = 0

    @property
    def pending(self):
        """Bytes buffered and not yet returned as frames or discarded."""
        return PyByteArray_GET_SIZE(self._buf) - self._pos

    @property
    def closed(self):
        """True once ``receive_data(b"")`` signalled the end of the stream."""
        return bool(self._closed)

    def stats(self):
        """The counters, as a dict."""
        return {
            "frames": self.frames,
            "bytes_received": self.bytes_received,
            "bytes_discarded": self.bytes_discarded,
            "resyncs": self.resyncs,
            "bad_hcs": self.bad_hcs,
            "bad_fcs": self.bad_fcs,
            "pending": self.pending,
        }

    def receive_data(self, data):
        """Buffer received bytes; ``b""`` means the peer closed the stream."""
        cdef Py_ssize_t size, held
        if self._closed:
            raise LocalProtocolError("receive_data() after the end of the stream")
        size = len(memoryview(data))
        if size == 0:
            self._closed = True
            return
        held = PyByteArray_GET_SIZE(self._buf)
        if self._pos:
            if held + size > self.max_buffer or self._pos >= 4096:
                del self._buf[: self._pos]
                self._ahead = max(0, self._ahead - self._pos)
                self._pos = 0
                held = PyByteArray_GET_SIZE(self._buf)
        if held + size > self.max_buffer:
            raise FrameError(
                f"receive buffer full: {held} bytes pending, {size} more received, "
                f"limit {self.max_buffer}",
                code="hdlc.buffer_overflow",
            )
        self._buf += data
        self.bytes_received += size

    def drain(self):
        """Discard everything pending (for a new request); returns the bytes counted."""
        cdef const uint8_t* buf = <const uint8_t*>PyByteArray_AS_STRING(self._buf)
        cdef Py_ssize_t dropped = _count_discarded(buf, self._pos, PyByteArray_GET_SIZE(self._buf))
        if dropped:
            self.bytes_discarded += dropped
            self.resyncs += 1
        del self._buf[:]
        self._pos = 0
        self._ahead = 0
        return dropped

    def next_frame(self):
        """The next complete valid frame, or ``NEED_DATA``."""
        if self.transparency:
            return self._next_transparent()
        cdef const uint8_t* buf = <const uint8_t*>PyByteArray_AS_STRING(self._buf)
        cdef Py_ssize_t n = PyByteArray_GET_SIZE(self._buf)
        cdef Py_ssize_t pos, f, end, g
        while True:
            pos = self._pos
            f = _find_flag(buf, pos, n)
            if f < 0:
                f = n
            if f > pos:
                self._skip(buf, pos, f)
                if f == n:
                    return self._stalled(buf, n)
            end = _check(buf, f, n)
            if end >= 0:
                self._pos = end
                self._ahead = 0
                self.frames += 1
                return _make_frame(buf, f, end)
            if end == INCOMPLETE:
                g = self._look_ahead(buf, f, n)
                if g < 0:
                    self._pos = f
                    return self._stalled(buf, n)
                self._skip(buf, f, g)
                continue
            self._pos = f + 1
            if end != FILL:
                self._reject(end)

    cdef Py_ssize_t _look_ahead(self, const uint8_t* buf, Py_ssize_t f, Py_ssize_t n) noexcept:
        cdef Py_ssize_t g = max(f + 1, self._ahead), outcome
        cdef bint settled = True
        while True:
            g = _find_flag(buf, g, n)
            if g < 0:
                return -1
            outcome = _check(buf, g, n)
            if outcome >= 0:
                return g
            if outcome == INCOMPLETE:
                settled = False
            elif settled:
                self._ahead = g + 1
            g += 1

    cdef object _stalled(self, const uint8_t* buf, Py_ssize_t n):
        if self._closed and self._pos < n:
            self._skip(buf, self._pos, n)
        return NEED_DATA

    cdef void _skip(self, const uint8_t* buf, Py_ssize_t start, Py_ssize_t stop) noexcept:
        # Skipping nothing but flags (inter-frame fill, a final closing flag) is no resync.
        cdef Py_ssize_t dropped = _count_discarded(buf, start, stop)
        if dropped:
            self.bytes_discarded += dropped
            self.resyncs += 1
        self._pos = stop
        self._ahead = 0

    cdef void _reject(self, Py_ssize_t outcome) noexcept:
        self.resyncs += 1
        if outcome == BAD_HCS:
            self.bad_hcs += 1
        elif outcome == BAD_FCS:
            self.bad_fcs += 1

    cdef object _next_transparent(self):
        cdef const uint8_t* buf = <const uint8_t*>PyByteArray_AS_STRING(self._buf)
        cdef Py_ssize_t n = PyByteArray_GET_SIZE(self._buf)
        cdef Py_ssize_t pos, f, e, bad, outcome, m
        cdef bytearray candidate
        cdef const uint8_t* c
        while True:
            pos = self._pos
            f = _find_flag(buf, pos, n)
            if f < 0:
                f = n
            if f > pos:
                self._skip(buf, pos, f)
                if f == n:
                    return self._stalled(buf, n)
            e = _find_flag(buf, f + 1, n)
            if e < 0:
                return self._stalled(buf, n)
            if e == f + 1:
                self._pos = e
                continue
            # Unescape between the flags into "flag + body + flag" and check that as one frame.
            candidate = bytearray(e - f + 1)
            bad = _unstuff_into(buf + f + 1, e - f - 1, candidate)
            if bad >= 0:
                self._skip(buf, f, e)
                continue
            m = PyByteArray_GET_SIZE(candidate)
            candidate[0:0] = b"\x7e"
            candidate.append(FLAG)
            m += 2
            c = <const uint8_t*>PyByteArray_AS_STRING(candidate)
            outcome = _check(c, 0, m)
            if outcome == m - 1:
                self._pos = e
                self.frames += 1
                return _make_frame(c, 0, outcome)
            self.bytes_discarded += _count_discarded(buf, f, e)
            self._pos = e
            self._reject(outcome if outcome < 0 else BAD_HEADER)


# -- the steady poll's exchange, one call each way ----------------------------------------------
#
# ClientAssociation.steady_request and receive_steady (codec/association.py, the reference) for
# an association over an HDLC link, in C: the request frame built in one buffer, the reply
# taken straight from the bytes read when they are exactly that one frame. Whatever else comes
# (another link, a frame split across reads, anything the decoder does not take, ...) is
# handed to the association's own method, before anything is changed: the result and the
# state are the reference's in every case (tests/codec/test_steady_exchange.py drives both in
# lockstep). The codec modules are looked up on the first call (they import this one).

from cpython.bytes cimport PyBytes_GET_SIZE
from libc.string cimport memcmp, memcpy

cdef bint _refs_loaded = False
cdef object _HdlcClientLink, _CONNECTED, _Pending, _READY, _WAITING, _SENT, _ANSWERED
cdef tuple _INVOKE_BYTES
cdef bytes _LLC_REQUEST
#: The LLC headers' sizes: the request's (written) and the reply's (allowed beyond max_apdu).
cdef Py_ssize_t _LLC_REQUEST_SIZE, _LLC_RESPONSE_SIZE
#: The address bytes of a link's frames, both ways, by ``link._from_server``.
cdef dict _ADDRESSES = {}


cdef int _load_refs() except -1:
    global _refs_loaded, _HdlcClientLink, _CONNECTED, _Pending, _READY, _WAITING, _SENT
    global _ANSWERED, _INVOKE_BYTES, _LLC_REQUEST, _LLC_REQUEST_SIZE, _LLC_RESPONSE_SIZE
    from codec import association, link
    _HdlcClientLink = link.HdlcClientLink
    _CONNECTED = link.LinkState.CONNECTED
    _Pending = link._Pending
    _LLC_REQUEST = link.LLC_REQUEST
    _LLC_REQUEST_SIZE = len(link.LLC_REQUEST)
    _LLC_RESPONSE_SIZE = len(link.LLC_RESPONSE)
    _READY = association.AssociationState.READY
    _WAITING = association.AssociationState.WAITING
    _SENT = association._STEADY_SENT
    _ANSWERED = association._STEADY_ANSWERED
    _INVOKE_BYTES = association._INVOKE_BYTES
    _refs_loaded = True
    return 0


cdef tuple _addresses(link):
    """(server + client address bytes, as a request carries them; client + server, as a
    reply does)."""
    key = link._from_server
    found = _ADDRESSES.get(key)
    if found is None:
        server, client = link.server.encode(), link.client.encode()
        found = (server + client, client + server)
        if len(_ADDRESSES) >= 1024:
            _ADDRESSES.clear()
        _ADDRESSES[key] = found
    return <tuple>found


def steady_send(association, request, double now, decoder):
    """``association.steady_request(request, now, decoder)``: see the section's comment."""
    if not _refs_loaded:
        _load_refs()
    link = association.link
    if type(link) is not _HdlcClientLink or link.transparency:
        return association.steady_request(request, now, decoder)
    encoded = association._encoded
    if (
        encoded is None
        or (<tuple>encoded)[0] is not request
        or association.state is not _READY
        or association._events
        or link.state is not _CONNECTED
        or link._pending is not None
        or link._out
        or link._events
        or link._segments_out
        or link._segments_in
    ):
        return association.steady_request(request, now, decoder)
    sec = association._sec
    if sec is not None and sec.ciphered:
        return association.steady_request(request, now, decoder)
    plain = (<tuple>encoded)[1]
    if type(plain) is not bytes:
        return association.steady_request(request, now, decoder)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(plain)
    cdef Py_ssize_t info_size = _LLC_REQUEST_SIZE + size
    if size < 3 or info_size > link.negotiated.max_info_tx:
        return association.steady_request(request, now, decoder)
    cdef bytes addresses = <bytes>_addresses(link)[0]
    cdef Py_ssize_t a = PyBytes_GET_SIZE(addresses)
    # Format (2), addresses, control, HCS (2), information, FCS (2); flags around.
    cdef Py_ssize_t length = 2 + a + 1 + 2 + info_size + 2
    if length > MAX_FRAME_LENGTH:
        return association.steady_request(request, now, decoder)
    cdef int invoke_id = association._invoke_id % 15 + 1
    cdef int vs = link._vs
    cdef int vr = link._vr
    cdef bytes raw = PyBytes_FromStringAndSize(NULL, length + 2)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(raw)
    cdef uint16_t check
    p[0] = FLAG
    p[1] = 0xA0 | (length >> 8)
    p[2] = length & 0xFF
    memcpy(p + 3, PyBytes_AS_STRING(addresses), a)
    p[3 + a] = (vr << 5) | 0x10 | (vs << 1)
    check = _fcs(p + 1, 2 + a + 1)
    p[4 + a] = check & 0xFF
    p[5 + a] = check >> 8
    cdef uint8_t* info = p + 6 + a
    memcpy(info, PyBytes_AS_STRING(_LLC_REQUEST), _LLC_REQUEST_SIZE)
    memcpy(info + _LLC_REQUEST_SIZE, PyBytes_AS_STRING(plain), size)
    info[_LLC_REQUEST_SIZE + 2] = (<const uint8_t*>PyBytes_AS_STRING(_INVOKE_BYTES[invoke_id]))[0]
    check = _fcs(p + 1, length - 2)
    p[length - 1] = check & 0xFF
    p[length] = check >> 8
    p[length + 1] = FLAG
    # The link's send_single (_i_frame, frames_sent, _await) ...
    link._vs = (vs + 1) % 8
    link.frames_sent += 1
    link._pending = _Pending(raw, now + link.timeout, link.retries, "reply")
    link._answered_deadline = None
    link._busy_until = None
    # ... and the association's steady_request (the state, _begin, _reply_dropped).
    association.state = _SENT
    association._steady = decoder
    association._now = now
    association._invoke_id = invoke_id
    association._current_invoke = invoke_id
    association._current = request
    association._blocks = []
    association._blocks_size = 0
    timeout = association.settings.request_timeout
    association._deadline = None if timeout is None else now + timeout
    association.requests += 1
    association._reply_dropped = False
    return raw


def steady_receive(association, data, double now):
    """``association.receive_steady(data, now)``: see the section's comment."""
    if not _refs_loaded:
        _load_refs()
    link = association.link
    if type(link) is not _HdlcClientLink or type(data) is not bytes:
        return association.receive_steady(data, now)
    decoder = association._steady
    if (
        decoder is None
        or association._events
        or association.state is not _WAITING
        or association._current is None
        or link._events
        or link._segments_out
        or link._segments_in
        or link.state is not _CONNECTED
        or type(link.scanner) is not FrameScanner
    ):
        return association.receive_steady(data, now)
    sec = association._sec
    if sec is not None and sec.ciphered:
        return association.receive_steady(data, now)
    cdef FrameScanner scanner = link.scanner
    cdef Py_ssize_t held = PyByteArray_GET_SIZE(scanner._buf) - scanner._pos
    if scanner._closed or scanner.transparency or held > 1 or (
        held == 1 and (<uint8_t*>PyByteArray_AS_STRING(scanner._buf))[scanner._pos] != FLAG
    ):
        # What the scanner holds would change how these bytes are read: its own way.
        return association.receive_steady(data, now)
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n < 10 or p[0] != FLAG or p[1] & 0x08 or _check(p, 0, n) != n - 1:
        return association.receive_steady(data, now)  # not one whole unsegmented frame
    cdef bytes addresses = <bytes>_addresses(link)[1]
    cdef Py_ssize_t a = PyBytes_GET_SIZE(addresses)
    # The information field, if the frame's addresses are ours: sized before any byte past
    # the addresses is read (a frame with shorter addresses may end sooner).
    cdef Py_ssize_t start = 6 + a, size = n - 3 - (6 + a)
    if size <= 0 or size > link.max_apdu + _LLC_RESPONSE_SIZE:
        return association.receive_steady(data, now)
    cdef int vr = link._vr
    cdef uint8_t control = p[3 + a]
    if (
        memcmp(p + 3, PyBytes_AS_STRING(addresses), a) != 0
        or control & 0x01
        or ((control >> 1) & 0x07) != vr
    ):
        return association.receive_steady(data, now)
    reading = decoder.decode_info(
        PyBytes_FromStringAndSize(<const char*>(p + start), size), association._current_invoke
    )
    if reading is None:
        return association.receive_steady(data, now)
    # What receive_data, the scanner's next_frame and next_info leave: the frame counted, its
    # closing flag held (it may open the next frame), N(R) on, the reply no longer awaited ...
    association._now = now
    link._now = now
    scanner.bytes_received += n
    scanner.frames += 1
    del scanner._buf[:]
    scanner._buf.append(FLAG)
    scanner._pos = 0
    scanner._ahead = 0
    link._vr = (vr + 1) % 8
    pending = link._pending
    link._answered_deadline = None if pending is None else pending.deadline
    link._pending = None
    # ... and receive_steady: the request answered.
    association._steady = None
    association._current = None
    association._deadline = None
    association.state = _ANSWERED
    return reading
