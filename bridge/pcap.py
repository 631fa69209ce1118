"""pcap files of TCP sessions: write a session as synthetic packets, read sessions back.

Writing (:class:`PcapWriter`, :class:`SessionRecorder`) produces a standard libpcap file
(LINKTYPE_ETHERNET) whose packets are synthetic Ethernet + IPv4 (or IPv6) + TCP headers around
each direction's payload: a SYN/SYN-ACK/ACK handshake, data segments with correct sequence and
acknowledgement numbers per direction, and FIN (or RST) at the end. Wireshark, ``tshark`` and
``tcpdump -r`` open such files and follow the stream like a real capture.

Reading (:func:`read_sessions`) takes those files and real captures alike (pcap or pcapng;
Ethernet, Linux cooked SLL/SLL2, raw IP or BSD loopback link layers; IPv4 and IPv6) and
reassembles each TCP connection by its 4-tuple and sequence numbers, dropping retransmitted
bytes, into :class:`RecordedSession` values.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import attrs
import dpkt

__all__ = [
    "CLIENT_TO_SERVER",
    "SERVER_TO_CLIENT",
    "CaptureError",
    "Endpoint",
    "PcapWriter",
    "RecordedSession",
    "Segment",
    "SessionRecorder",
    "read_sessions",
]

#: Direction of a segment sent by the client (the side that opened the connection).
CLIENT_TO_SERVER = "client->meter"
#: Direction of a segment sent by the server (the meter).
SERVER_TO_CLIENT = "meter->client"

#: ``(ip, port)`` of one end of a connection.
Endpoint = tuple[str, int]

_SNAPLEN = 65535
#: Largest payload put in one synthetic packet; keeps every IPv4/IPv6 packet under 64 KiB.
_MAX_PAYLOAD = 65000
_WINDOW = 65535
_SEQ_MOD = 1 << 32
#: Bytes held behind a hole in a stream before the hole is given up as lost.
_MAX_PENDING = 1 << 20
_CLIENT_MAC = bytes.fromhex("020000000001")
_SERVER_MAC = bytes.fromhex("020000000002")

# Link types (https://www.tcpdump.org/linktypes.html); DLT_RAW is 12 or 14 on some systems.
_LINKTYPE_NULL = 0
_LINKTYPE_ETHERNET = 1
_LINKTYPE_RAW = (12, 14, 101)
_LINKTYPE_LOOP = 108
_LINKTYPE_LINUX_SLL = 113
_LINKTYPE_IPV4 = 228
_LINKTYPE_IPV6 = 229
_LINKTYPE_LINUX_SLL2 = 276

_PCAP_MAGICS = frozenset(
    (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
)
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


class CaptureError(ValueError):
    """A capture file that cannot be read, with the file and the reason in the message."""


# -- writing ---------------------------------------------------------------------------------


#: Mode of every capture file written: owner read/write only.
CAPTURE_FILE_MODE = 0o600


def _open_private(path: Path) -> BinaryIO:
    """Open ``path`` for writing from empty, mode 0600 from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, CAPTURE_FILE_MODE)
    try:
        os.fchmod(fd, CAPTURE_FILE_MODE)  # an existing file keeps its mode through O_CREAT
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


class PcapWriter:
    """A libpcap file (Ethernet link type) open for appending packets.

    Every packet is flushed to the OS as it is written, so a process killed mid-session leaves
    a file that readers accept up to its last packet. A lock serialises writers, so recorders
    in several Trio tasks (or threads) may share one file.

    The file is readable by its owner only (0600), whatever the umask, even when it existed
    before: a capture holds the meter's password in clear.
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        self.packets = 0
        self._lock = threading.Lock()
        self._file: BinaryIO | None = _open_private(self.path)
        self._writer = dpkt.pcap.Writer(self._file, snaplen=_SNAPLEN, linktype=_LINKTYPE_ETHERNET)
        self._file.flush()

    def write_packet(self, packet: bytes, ts: float | None = None) -> None:
        """Append one link-layer packet stamped ``ts`` (seconds since the epoch; now if None)."""
        when = self.clock() if ts is None else ts
        # Round to whole microseconds first: dpkt would otherwise write 1_000_000 us for a
        # fraction a hair below the next second.
        sec, usec = divmod(round(when * 1_000_000), 1_000_000)
        with self._lock:
            if self._file is None:
                raise ValueError(f"pcap writer for {self.path} is closed")
            self._writer.writepkt_time(packet, sec + usec / 1_000_000)
            self._file.flush()
            self.packets += 1

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._file is None

    def close(self) -> None:
        """Close the file; further writes raise ValueError."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _normalise_ips(client_ip: str, server_ip: str) -> tuple[Any, Any]:
    """Both addresses of one family: IPv4-mapped IPv6 becomes IPv4, a mixed pair becomes IPv6."""

    def parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address

    client, server = parse(client_ip), parse(server_ip)
    if client.version != server.version:
        # A proxy between an IPv6 client and an IPv4 meter records one connection: map the IPv4
        # end into IPv6 so both fit in the same headers.
        client, server = (
            ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (client, server)
        )
    return client, server


@attrs.define(eq=False)
class _Side:
    """One sender's state in a recorded connection."""

    ip: Any
    port: int
    mac: bytes
    seq: int
    ip_id: int = 0
    finished: bool = False
    bytes_sent: int = 0


class SessionRecorder:
    """Writes one TCP connection between ``client`` and ``server`` into a :class:`PcapWriter`.

    The handshake is written when the recorder is created; call :meth:`client_to_server` and
    :meth:`server_to_client` with the bytes as they flow, :meth:`finish` when one side closes
    its direction, and :meth:`close` at the end (it writes the FINs still missing).
    """

    def __init__(
        self,
        writer: PcapWriter,
        client: Endpoint,
        server: Endpoint,
        *,
        initial_seq: tuple[int, int] | None = None,
    ) -> None:
        self.writer = writer
        self.client = (str(client[0]), int(client[1]))
        self.server = (str(server[0]), int(server[1]))
        client_ip, server_ip = _normalise_ips(self.client[0], self.server[0])
        isn = initial_seq or (random.getrandbits(32), random.getrandbits(32))
        self._c = _Side(client_ip, self.client[1], _CLIENT_MAC, isn[0] % _SEQ_MOD)
        self._s = _Side(server_ip, self.server[1], _SERVER_MAC, isn[1] % _SEQ_MOD)
        self._ip_ids = random.getrandbits(16)
        self.closed = False
        self.reset = False
        self._first_fin: _Side | None = None
        syn, ack = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK
        self._packet(self._c, self._s, syn, advance=1, with_ack=False)
        self._packet(self._s, self._c, syn | ack, advance=1)
        self._packet(self._c, self._s, ack)

    @property
    def client_bytes(self) -> int:
        """Payload bytes recorded from the client so far."""
        return self._c.bytes_sent

    @property
    def server_bytes(self) -> int:
        """Payload bytes recorded from the server so far."""
        return self._s.bytes_sent

    def client_to_server(self, data: bytes) -> None:
        """Record bytes the client sent."""
        self._data(self._c, self._s, data)

    def server_to_client(self, data: bytes) -> None:
        """Record bytes the server sent."""
        self._data(self._s, self._c, data)

    def finish(self, direction: str, *, reset: bool = False) -> None:
        """Record that the sender of ``direction`` closed it (FIN), or aborted (RST)."""
        if self.closed:
            return
        src, dst = self._sides(direction)
        if reset:
            self._packet(src, dst, dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK)
            self.reset = True
            self.closed = True
            return
        if src.finished:
            return
        self._packet(src, dst, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK, advance=1)
        src.finished = True
        if self._first_fin is None:
            self._first_fin = src

    def close(self) -> None:
        """Write the FINs not written yet (client first) and the last ACK; idempotent."""
        if self.closed:
            return
        for direction in (CLIENT_TO_SERVER, SERVER_TO_CLIENT):
            self.finish(direction)
        first = self._first_fin or self._c
        self._packet(first, self._s if first is self._c else self._c, dpkt.tcp.TH_ACK)
        self.closed = True

    # -- packets -----------------------------------------------------------------------------

    def _sides(self, direction: str) -> tuple[_Side, _Side]:
        if direction == CLIENT_TO_SERVER:
            return self._c, self._s
        if direction == SERVER_TO_CLIENT:
            return self._s, self._c
        raise ValueError(
            f"direction must be {CLIENT_TO_SERVER!r} or {SERVER_TO_CLIENT!r}, not {direction!r}"
        )

    def _data(self, src: _Side, dst: _Side, data: bytes) -> None:
        if self.closed or src.finished:
            raise ValueError(
                f"session {self.client} -> {self.server}: data recorded after that direction closed"
            )
        view = memoryview(data)
        for start in range(0, len(view), _MAX_PAYLOAD):
            chunk = bytes(view[start : start + _MAX_PAYLOAD])
            self._packet(src, dst, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, chunk, advance=len(chunk))
            src.bytes_sent += len(chunk)

    def _packet(
        self,
        src: _Side,
        dst: _Side,
        flags: int,
        payload: bytes = b"",
        *,
        advance: int = 0,
        with_ack: bool = True,
    ) -> None:
        tcp = dpkt.tcp.TCP(
            sport=src.port,
            dport=dst.port,
            seq=src.seq,
            ack=dst.seq if with_ack else 0,
            flags=flags,
            win=_WINDOW,
            data=payload,
        )
        if flags & dpkt.tcp.TH_SYN:
            # MSS option, as real stacks send it; Wireshark shows it in the handshake.
            tcp.opts = struct.pack(">BBH", dpkt.tcp.TCP_OPT_MSS, 4, 65495)
            tcp.off = 5 + len(tcp.opts) // 4
        src.seq = (src.seq + advance) % _SEQ_MOD
        ip: dpkt.Packet
        if src.ip.version == 4:
            src.ip_id = (src.ip_id + 1) & 0xFFFF
            ip = dpkt.ip.IP(
                src=src.ip.packed,
                dst=dst.ip.packed,
                p=dpkt.ip.IP_PROTO_TCP,
                ttl=64,
                id=(self._ip_ids + src.ip_id) & 0xFFFF,
                df=1,
                data=tcp,
            )
            ip.len = len(ip)
            ethertype = dpkt.ethernet.ETH_TYPE_IP
        else:
            ip = dpkt.ip6.IP6(
                src=src.ip.packed,
                dst=dst.ip.packed,
                nxt=dpkt.ip.IP_PROTO_TCP,
                hlim=64,
                data=tcp,
            )
            ip.p = dpkt.ip.IP_PROTO_TCP
            ip.plen = len(tcp)
            ip.extension_hdrs = {}
            ethertype = dpkt.ethernet.ETH_TYPE_IP6
        frame = dpkt.ethernet.Ethernet(src=src.mac, dst=dst.mac, type=ethertype, data=ip)
        self.writer.write_packet(bytes(frame))


# -- reading ---------------------------------------------------------------------------------


class Segment(NamedTuple):
    """Payload bytes of one direction, in the order they appear in the capture."""

    direction: str
    ts: float
    payload: bytes


@attrs.frozen
class RecordedSession:
    """One TCP connection read from a capture: its ends and its payload, in capture order."""

    index: int
    client: Endpoint
    server: Endpoint
    segments: list[Segment]
    start: float
    end: float
    #: Direction whose FIN (or RST) came first, or None when the capture shows no end.
    closed_by: str | None = None
    #: When that first FIN (or RST) was captured.
    closed_at: float | None = None
    #: True when the connection ended with an RST.
    reset: bool = False
    #: Segments dropped because their bytes had been seen already (retransmissions).
    retransmissions: int = 0
    #: Bytes never seen (holes in the sequence space, e.g. packets the capture lost).
    missing_bytes: int = 0

    @property
    def client_bytes(self) -> bytes:
        """Everything the client sent."""
        return b"".join(s.payload for s in self.segments if s.direction == CLIENT_TO_SERVER)

    @property
    def server_bytes(self) -> bytes:
        """Everything the server sent."""
        return b"".join(s.payload for s in self.segments if s.direction == SERVER_TO_CLIENT)

    @property
    def label(self) -> str:
        """``client -> server`` for messages."""
        return f"{_show(self.client)} -> {_show(self.server)}"


def _show(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.define(eq=False)
class _Stream:
    """Reassembly of one direction: the next expected sequence number and early segments."""

    next_seq: int | None = None
    #: Segments that arrived before the bytes in front of them: seq -> (ts, payload, lost).
    pending: dict[int, tuple[float, bytes, int]] = attrs.field(factory=dict)
    pending_bytes: int = 0
    retransmissions: int = 0
    missing: int = 0

    def accept(
        self, seq: int, ts: float, payload: bytes, lost: int = 0
    ) -> list[tuple[float, bytes]]:
        """Take one segment; return the bytes that are now in order.

        ``lost`` counts bytes the segment carried but the capture cut off (snap length, or a
        file that ends inside the packet): they advance the sequence but are never delivered.
        """
        if self.next_seq is None:
            self.next_seq = seq
        offset = _seq_diff(seq, self.next_seq)
        if offset + len(payload) + lost <= 0:
            self.retransmissions += 1
            return []
        if offset <= 0:
            return self._deliver(ts, payload, lost, offset)
        known = self.pending.get(seq)
        if known is not None and len(known[1]) + known[2] >= len(payload) + lost:
            self.retransmissions += 1
            return []
        if known is not None:
            self._pop(seq)
        self.pending[seq] = (ts, payload, lost)
        self.pending_bytes += len(payload)
        if self.pending_bytes > _MAX_PENDING:
            # The capture lost a packet that is never coming: skip the hole rather than hold
            # the rest of the connection back until the end.
            return self._skip_hole()
        return []

    def flush_gaps(self) -> list[tuple[float, bytes]]:
        """At the end of the capture: deliver what waits behind holes, counting the holes."""
        out: list[tuple[float, bytes]] = []
        while self.pending:
            out.extend(self._skip_hole())
        return out

    def _pop(self, seq: int) -> tuple[float, bytes, int]:
        held = self.pending.pop(seq)
        self.pending_bytes -= len(held[1])
        return held

    def _skip_hole(self) -> list[tuple[float, bytes]]:
        assert self.next_seq is not None
        base = self.next_seq
        seq = min(self.pending, key=lambda s: _seq_diff(s, base))
        self.missing += max(0, _seq_diff(seq, base))
        self.next_seq = seq
        return self._deliver(*self._pop(seq), 0)

    def _deliver(
        self, ts: float, payload: bytes, lost: int, offset: int
    ) -> list[tuple[float, bytes]]:
        """Deliver a segment starting ``-offset`` bytes before the next expected one, then
        whatever it lets through from the pending segments."""
        out: list[tuple[float, bytes]] = []
        while True:
            assert self.next_seq is not None
            skip = -offset
            data = payload[skip:]
            if data:
                out.append((ts, data))
            # Bytes cut off by the capture still occupy sequence space.
            tail = max(0, lost - max(0, skip - len(payload)))
            self.missing += tail
            self.next_seq = (self.next_seq + len(data) + tail) % _SEQ_MOD
            ready = self._next_pending()
            if ready is None:
                return out
            offset, (held_ts, payload, lost) = ready
            ts = max(ts, held_ts)

    def _next_pending(self) -> tuple[int, tuple[float, bytes, int]] | None:
        """The first pending segment that now starts at or before the next expected byte."""
        while self.pending:
            base = self.next_seq or 0
            seq = min(self.pending, key=lambda s: _seq_diff(s, base))
            offset = _seq_diff(seq, base)
            if offset > 0:
                return None
            held = self._pop(seq)
            if offset + len(held[1]) + held[2] > 0:
                return offset, held
            self.retransmissions += 1
        return None


def _seq_diff(a: int, b: int) -> int:
    """``a - b`` in 32-bit sequence space, as a signed number."""
    diff = (a - b) % _SEQ_MOD
    return diff - _SEQ_MOD if diff >= 1 << 31 else diff


@attrs.define(eq=False)
class _Connection:
    """One TCP connection being reassembled."""

    a: Endpoint
    b: Endpoint
    start: float
    #: The client end once known (the SYN sender; the SYN-ACK receiver).
    client: Endpoint | None = None
    streams: dict[Endpoint, _Stream] = attrs.field(factory=dict)
    segments: list[tuple[Endpoint, float, bytes]] = attrs.field(factory=list)
    end: float = 0.0
    closed_by: Endpoint | None = None
    closed_at: float | None = None
    reset: bool = False
    #: Sequence number of the client's SYN, when the capture has it.
    syn_seq: int | None = None

    def stream(self, src: Endpoint) -> _Stream:
        return self.streams.setdefault(src, _Stream())


def _open_capture(path: Path, f: BinaryIO) -> Any:
    magic = f.read(4)
    f.seek(0)
    try:
        if magic in _PCAP_MAGICS:
            return dpkt.pcap.Reader(f)
        if magic == _PCAPNG_MAGIC:
            return dpkt.pcapng.Reader(f)
    except (ValueError, dpkt.UnpackError) as exc:
        raise CaptureError(f"{path}: damaged capture file header ({exc})") from None
    if not magic:
        raise CaptureError(f"{path}: empty file, not a pcap capture")
    raise CaptureError(
        f"{path}: not a pcap or pcapng capture (starts with {magic.hex()}, "
        "expected a libpcap or pcapng magic number)"
    )


def _packets(path: Path, reader: Any) -> Iterator[tuple[float, bytes]]:
    """The packets of a capture; a file cut short inside its last record ends quietly."""
    iterator = iter(reader)
    while True:
        try:
            ts, buf = next(iterator)
        except StopIteration:
            return
        except (dpkt.NeedData, dpkt.UnpackError, struct.error):
            # A writer killed in the middle of a record: keep every complete packet before it.
            return
        yield float(ts), bytes(buf)


def _ip_layer(linktype: int, buf: bytes) -> Any:
    """The IPv4/IPv6 packet inside one link-layer frame, or None."""
    if linktype == _LINKTYPE_ETHERNET:
        frame: Any = dpkt.ethernet.Ethernet(buf)
    elif linktype == _LINKTYPE_LINUX_SLL:
        frame = dpkt.sll.SLL(buf)
    elif linktype == _LINKTYPE_LINUX_SLL2:
        frame = dpkt.sll2.SLL2(buf)
    elif linktype in (_LINKTYPE_NULL, _LINKTYPE_LOOP):
        frame = _raw_ip(buf[4:])
    elif linktype in _LINKTYPE_RAW or linktype in (_LINKTYPE_IPV4, _LINKTYPE_IPV6):
        frame = _raw_ip(buf)
    else:
        return None
    # Ethernet and SLL put the parsed network layer in .data; dpkt leaves bytes when unknown.
    ip = frame if isinstance(frame, (dpkt.ip.IP, dpkt.ip6.IP6)) else getattr(frame, "data", None)
    return ip if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) else None


def _raw_ip(buf: bytes) -> Any:
    version = buf[0] >> 4 if buf else 0
    if version == 4:
        return dpkt.ip.IP(buf)
    if version == 6:
        return dpkt.ip6.IP6(buf)
    return None


def _cut_off(ip: Any, tcp: Any, captured: int) -> int:
    """Payload bytes the IP header announces beyond those the capture holds."""
    header = (int(tcp.off) & 0xF) * 4
    if isinstance(ip, dpkt.ip.IP):
        if not ip.len:  # segmentation offload: the length field is not filled in
            return 0
        announced = int(ip.len) - (int(ip.hl) * 4) - header
    else:
        if not ip.plen:
            return 0
        extensions = sum(len(h) for h in getattr(ip, "all_extension_headers", ()))
        announced = int(ip.plen) - extensions - header
    return max(0, announced - captured)


def _address(ip: Any, packed: bytes) -> str:
    family = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
    return socket.inet_ntop(family, packed)


_SUPPORTED_LINKTYPES = (
    _LINKTYPE_NULL,
    _LINKTYPE_ETHERNET,
    *_LINKTYPE_RAW,
    _LINKTYPE_LOOP,
    _LINKTYPE_LINUX_SLL,
    _LINKTYPE_IPV4,
    _LINKTYPE_IPV6,
    _LINKTYPE_LINUX_SLL2,
)


def read_sessions(path: str | os.PathLike[str]) -> list[RecordedSession]:
    """Every TCP connection in a pcap/pcapng file, reassembled, in the order they started.

    Raises :class:`CaptureError` for a file that is not a capture or uses a link type other
    than Ethernet, Linux cooked (SLL, SLL2), raw IP or BSD loopback; OSError when it cannot be
    opened.
    """
    path = Path(path)
    with open(path, "rb") as f:
        reader = _open_capture(path, f)
        linktype = int(reader.datalink())
        if linktype not in _SUPPORTED_LINKTYPES:
            raise CaptureError(
                f"{path}: link type {linktype} is not supported (Ethernet, Linux cooked, raw IP "
                "and loopback captures are)"
            )
        return _reassemble(path, linktype, _packets(path, reader))


def _reassemble(
    path: Path, linktype: int, packets: Iterator[tuple[float, bytes]]
) -> list[RecordedSession]:
    live: dict[frozenset[Endpoint], _Connection] = {}
    done: list[_Connection] = []
    for ts, buf in packets:
        try:
            ip = _ip_layer(linktype, buf)
        except (dpkt.UnpackError, IndexError, struct.error):
            continue
        if ip is None or not isinstance(ip.data, dpkt.tcp.TCP):
            continue
        tcp = ip.data
        src = (_address(ip, ip.src), int(tcp.sport))
        dst = (_address(ip, ip.dst), int(tcp.dport))
        key = frozenset((src, dst))
        flags = int(tcp.flags)
        syn_only = flags & dpkt.tcp.TH_SYN and not flags & dpkt.tcp.TH_ACK
        seq = int(tcp.seq)
        conn = live.get(key)
        if conn is not None and syn_only and conn.syn_seq != seq:
            # The same 4-tuple opened again (a new initial sequence number): a new session.
            done.append(live.pop(key))
            conn = None
        if conn is None:
            conn = live[key] = _Connection(src, dst, ts)
        conn.end = ts
        stream = conn.stream(src)
        if flags & dpkt.tcp.TH_SYN:
            if syn_only:
                conn.syn_seq = seq
            if conn.client is None:
                conn.client = dst if flags & dpkt.tcp.TH_ACK else src
            seq = (seq + 1) % _SEQ_MOD
            stream.next_seq = seq
            stream.pending.clear()
        payload = bytes(tcp.data)
        lost = _cut_off(ip, tcp, len(payload))
        if payload or lost:
            for when, chunk in stream.accept(seq, ts, payload, lost):
                conn.segments.append((src, when, chunk))
        if flags & (dpkt.tcp.TH_RST | dpkt.tcp.TH_FIN):
            conn.reset = conn.reset or bool(flags & dpkt.tcp.TH_RST)
            if conn.closed_by is None:
                conn.closed_by, conn.closed_at = src, ts
    done.extend(live.values())
    done.sort(key=lambda c: c.start)
    sessions: list[RecordedSession] = []
    for conn in done:
        for src, stream in conn.streams.items():
            conn.segments.extend((src, ts, chunk) for ts, chunk in stream.flush_gaps())
        if not conn.segments and not conn.client:
            continue  # a stray packet (keep-alive, ACK) of a connection the capture missed
        sessions.append(_session(len(sessions), conn))
    return sessions


def _session(index: int, conn: _Connection) -> RecordedSession:
    client = conn.client or _guess_client(conn)
    server = conn.b if client == conn.a else conn.a
    segments = [
        Segment(CLIENT_TO_SERVER if src == client else SERVER_TO_CLIENT, ts, payload)
        for src, ts, payload in conn.segments
    ]
    closed_by = None
    if conn.closed_by is not None:
        closed_by = CLIENT_TO_SERVER if conn.closed_by == client else SERVER_TO_CLIENT
    streams = conn.streams.values()
    return RecordedSession(
        index=index,
        client=client,
        server=server,
        segments=segments,
        start=conn.start,
        end=conn.end,
        closed_by=closed_by,
        closed_at=conn.closed_at,
        reset=conn.reset,
        retransmissions=sum(s.retransmissions for s in streams),
        missing_bytes=sum(s.missing for s in streams),
    )


def _guess_client(conn: _Connection) -> Endpoint:
    """Without a handshake in the capture, the end with the higher (ephemeral) port."""
    return conn.a if conn.a[1] >= conn.b[1] else conn.b
