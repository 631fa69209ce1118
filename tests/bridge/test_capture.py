"""pcap captures: the writer and reader, the recording proxy, replay, and ``decode --pcap``.

Everything runs over real sockets on 127.0.0.1; the meter is the simulator (in this process) or
a small Trio peer. Files are also checked with dpkt directly, and with tcpdump and tshark when
they are installed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import dpkt
import pytest
import trio

from bridge.capture import (
    PcapWriter,
    RecordingProxy,
    ReplayServer,
    decode_pcap,
    recording_handler,
)
from bridge.cli import main
from bridge.pcap import (
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    CaptureError,
    RecordedSession,
    SessionRecorder,
    read_sessions,
)
from bridge.session import MeterEndpoint, MeterSession
from bridge.simulator.server import Simulator, SimulatorConfig, SimulatorPorts
from codec.obis import Obis

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "benchmarks" / "captures"
IO_TIMEOUT = 15


def _load_recorder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "record_captures", REPO / "benchmarks" / "record_captures.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


record_captures = _load_recorder()


# -- peers and utilities ---------------------------------------------------------------------------


class TappedSession(MeterSession):
    """Our client, keeping a copy of every byte it sends and receives."""

    def __init__(self, endpoint: MeterEndpoint) -> None:
        super().__init__(endpoint)
        self.sent = bytearray()
        self.received = bytearray()

    async def _send(self, data: bytes) -> None:
        await super()._send(data)
        self.sent += data

    async def _receive(self) -> bytes:
        data = await super()._receive()
        self.received += data
        return data


async def _read_meter(session: MeterSession) -> list[dict[str, Any]]:
    """Associate, read the five registers twice and a profile by entry, release."""
    await session.open()
    readings = []
    for _ in range(2):
        readings += [r.to_json() for r in await session.read_registers(record_captures.REGISTERS)]
    profile = await session.read_profile(Obis.parse("1-0:99.1.0"), from_entry=1, to_entry=12)
    await session.release()
    return [*readings, profile.to_json()]


def _endpoint(port: int, **kwargs: Any) -> MeterEndpoint:
    settings = {"password": b"00000000", "timeout": 2.0, "max_pdu_size": 256, **kwargs}
    return MeterEndpoint("127.0.0.1", port, **settings)


async def _upper_peer(stream: trio.SocketStream) -> None:
    """A meter stand-in: answers every chunk with it upper-cased; b"RESET" resets."""
    async for data in stream:
        if b"reset" in data:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()
            return
        await stream.send_all(data.upper())


async def _start_peer(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, _upper_peer, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def _start_simulator(nursery: trio.Nursery, faults: str = "") -> SimulatorPorts:
    simulator = Simulator(SimulatorConfig(port=0, faults=faults, seed=3))
    ports: SimulatorPorts = await nursery.start(simulator.serve)
    return ports


async def _start_proxy(
    nursery: trio.Nursery, writer: PcapWriter, meter_port: int, **kwargs: Any
) -> tuple[RecordingProxy, int]:
    proxy = RecordingProxy(writer, ("127.0.0.1", meter_port), **kwargs)
    addresses = await nursery.start(proxy.serve, 0, "127.0.0.1")
    return proxy, addresses[0][1]


async def _wait_for(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.01)


def _run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def _read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        data = await stream.receive_some(4096)
        if not data:
            raise EOFError(f"stream ended; got {bytes(buffer)!r}")
        buffer += data
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


def _write_sample(path: Path, *, initial_seq: tuple[int, int] | None = None) -> list[bytes]:
    """One session: three requests and replies (one of 70 kB), closed by the client."""
    chunks = [b"\x7e\xa0\x08\x03\x21\x93\x0f\x01\x7e", b"hello meter", b"q" * 5, b"R" * 70_000]
    with PcapWriter(path) as writer:
        recorder = SessionRecorder(
            writer, ("127.0.0.1", 40001), ("127.0.0.2", 4059), initial_seq=initial_seq
        )
        recorder.client_to_server(chunks[0])
        recorder.server_to_client(chunks[1])
        recorder.client_to_server(chunks[2])
        recorder.server_to_client(chunks[3])
        recorder.close()
    return chunks


# -- writing and reading ---------------------------------------------------------------------


def test_round_trip_keeps_segments_order_and_ends(tmp_path: Path) -> None:
    path = tmp_path / "s.pcap"
    before = time.time()
    # Sequence numbers that wrap past 2**32 in both directions.
    chunks = _write_sample(path, initial_seq=(2**32 - 3, 2**32 - 20))
    [session] = read_sessions(path)
    assert session.client == ("127.0.0.1", 40001)
    assert session.server == ("127.0.0.2", 4059)
    payloads = [(s.direction, s.payload) for s in session.segments]
    # The 70 kB write is split into packets that fit in an IP datagram.
    assert payloads == [
        (CLIENT_TO_SERVER, chunks[0]),
        (SERVER_TO_CLIENT, chunks[1]),
        (CLIENT_TO_SERVER, chunks[2]),
        (SERVER_TO_CLIENT, chunks[3][:65000]),
        (SERVER_TO_CLIENT, chunks[3][65000:]),
    ]
    assert session.client_bytes == chunks[0] + chunks[2]
    assert session.server_bytes == chunks[1] + chunks[3]
    assert session.closed_by == CLIENT_TO_SERVER
    assert not session.reset
    assert session.retransmissions == session.missing_bytes == 0
    times = [s.ts for s in session.segments]
    assert times == sorted(times)
    assert before - 0.001 <= session.start <= times[0] <= session.end <= time.time() + 0.001


def test_ipv6_mixed_families_and_interleaved_sessions(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pcap"
    with PcapWriter(path) as writer:
        a = SessionRecorder(writer, ("::1", 50000), ("::1", 4059))
        b = SessionRecorder(writer, ("::ffff:127.0.0.1", 50001), ("127.0.0.1", 4059))
        c = SessionRecorder(writer, ("::1", 50002), ("127.0.0.1", 4059))
        for i in range(3):
            a.client_to_server(b"a%d" % i)
            b.client_to_server(b"b%d" % i)
            c.server_to_client(b"c%d" % i)
            b.server_to_client(b"B%d" % i)
        a.finish(SERVER_TO_CLIENT, reset=True)
        b.finish(SERVER_TO_CLIENT)
        b.close()
        c.close()
    sessions = read_sessions(path)
    assert [(s.client, s.server) for s in sessions] == [
        (("::1", 50000), ("::1", 4059)),
        # A mapped IPv4 address is written as plain IPv4; a mixed pair as IPv6.
        (("127.0.0.1", 50001), ("127.0.0.1", 4059)),
        (("::1", 50002), ("::ffff:127.0.0.1", 4059)),
    ]
    assert sessions[0].client_bytes == b"a0a1a2" and sessions[0].reset
    assert sessions[1].server_bytes == b"B0B1B2" and sessions[1].client_bytes == b"b0b1b2"
    assert sessions[1].closed_by == SERVER_TO_CLIENT and not sessions[1].reset
    assert sessions[2].server_bytes == b"c0c1c2" and sessions[2].closed_by == CLIENT_TO_SERVER


def test_dpkt_reads_the_file_on_its_own(tmp_path: Path) -> None:
    """Headers, checksums, the handshake, sequence/ack numbers and FINs, checked with dpkt alone."""
    path = tmp_path / "s.pcap"
    chunks = _write_sample(path)
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        packets = [(ts, dpkt.ethernet.Ethernet(buf)) for ts, buf in reader]
    tcps = []
    for _, eth in packets:
        ip = eth.data
        assert isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP)
        raw_ip = bytes(ip)
        assert dpkt.in_cksum(raw_ip[: ip.hl * 4]) == 0, "bad IPv4 header checksum"
        pseudo = struct.pack(">4s4sxBH", ip.src, ip.dst, 6, len(raw_ip) - ip.hl * 4)
        assert dpkt.in_cksum(pseudo + raw_ip[ip.hl * 4 :]) == 0, "bad TCP checksum"
        assert ip.len == len(raw_ip)
        tcps.append(ip.data)
    syn, syn_ack, ack = tcps[:3]
    assert syn.flags == dpkt.tcp.TH_SYN
    assert syn_ack.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK and syn_ack.ack == syn.seq + 1
    assert ack.flags == dpkt.tcp.TH_ACK and ack.ack == syn_ack.seq + 1
    # Each data segment starts where its direction's previous one ended and acknowledges all
    # the other direction has sent.
    next_seq = {40001: syn.seq + 1, 4059: syn_ack.seq + 1}
    data = {40001: b"", 4059: b""}
    for tcp in tcps[3:]:
        other = 4059 if tcp.sport == 40001 else 40001
        assert tcp.seq == next_seq[tcp.sport]
        assert tcp.ack == next_seq[other]
        data[tcp.sport] += tcp.data
        next_seq[tcp.sport] += len(tcp.data) + (1 if tcp.flags & dpkt.tcp.TH_FIN else 0)
    assert data[40001] == chunks[0] + chunks[2]
    assert data[4059] == chunks[1] + chunks[3]
    fins = [t.sport for t in tcps if t.flags & dpkt.tcp.TH_FIN]
    assert fins == [40001, 4059]
    assert tcps[-1].flags == dpkt.tcp.TH_ACK
    stamps = [ts for ts, _ in packets]
    assert stamps == sorted(stamps)


def test_tcpdump_reads_the_file(tmp_path: Path) -> None:
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        pytest.skip("tcpdump is not installed")
    path = tmp_path / "s.pcap"
    _write_sample(path)
    done = subprocess.run(
        [tcpdump, "-nr", str(path)], capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 + 5 + 3  # handshake, data, FIN/FIN/ACK
    assert "127.0.0.1.40001 > 127.0.0.2.4059: Flags [S]" in lines[0]
    assert "Flags [P.], seq 1:10, ack 1" in lines[3]
    assert "Flags [P.], seq 1:12, ack 10" in lines[4]
    assert "Flags [F.]" in lines[-3] and "Flags [F.]" in lines[-2]


def test_tshark_follows_the_stream_without_complaint() -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    path = CAPTURES / "clean.pcap"
    problems = subprocess.run(
        [
            tshark,
            "-r",
            str(path),
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "ip.check_checksum:TRUE",
            "-Y",
            "tcp.analysis.flags || tcp.checksum.status == 0 || ip.checksum.status == 0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert problems.returncode == 0, problems.stderr
    assert problems.stdout == ""
    follow = subprocess.run(
        [tshark, "-r", str(path), "-q", "-z", "follow,tcp,raw,0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert follow.returncode == 0, follow.stderr
    [session] = read_sessions(path)
    # tshark's own reassembly gives the same bytes in each direction (the server's lines are
    # indented with a tab).
    hex_lines = [line for line in follow.stdout.splitlines() if re.fullmatch(r"\t?[0-9a-f]+", line)]
    client = "".join(line for line in hex_lines if not line.startswith("\t"))
    server = "".join(line.strip() for line in hex_lines if line.startswith("\t"))
    assert bytes.fromhex(server) == session.server_bytes
    assert bytes.fromhex(client) == session.client_bytes


def _packet(
    src: tuple[str, int],
    dst: tuple[str, int],
    seq: int,
    flags: int,
    payload: bytes = b"",
    *,
    ack: int = 0,
) -> dpkt.ip.IP:
    tcp = dpkt.tcp.TCP(
        sport=src[1], dport=dst[1], seq=seq, ack=ack, flags=flags, win=1000, data=payload
    )
    return dpkt.ip.IP(
        src=socket.inet_aton(src[0]), dst=socket.inet_aton(dst[0]), p=6, data=tcp, ttl=64
    )


CLIENT = ("10.0.0.5", 51000)
METER = ("10.0.0.9", 3333)
ACK, PSH, SYN, FIN = dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_SYN, dpkt.tcp.TH_FIN


def _messy_stream() -> list[dpkt.ip.IP]:
    """A connection with a retransmission, an overlap and segments out of order."""
    c, s = 1000, 5000
    return [
        _packet(CLIENT, METER, c, SYN),
        _packet(METER, CLIENT, s, SYN | ACK, ack=c + 1),
        _packet(CLIENT, METER, c + 1, ACK, ack=s + 1),
        _packet(CLIENT, METER, c + 1, PSH | ACK, b"abcdef", ack=s + 1),
        _packet(CLIENT, METER, c + 1, PSH | ACK, b"abcdef", ack=s + 1),  # retransmitted
        _packet(METER, CLIENT, s + 5, PSH | ACK, b"456789", ack=c + 7),  # early
        _packet(METER, CLIENT, s + 1, PSH | ACK, b"0123", ack=c + 7),  # fills the hole
        _packet(CLIENT, METER, c + 4, PSH | ACK, b"defGHI", ack=s + 11),  # overlaps 3 bytes
        _packet(CLIENT, METER, c + 10, FIN | ACK, ack=s + 11),
        _packet(METER, CLIENT, s + 11, FIN | ACK, ack=c + 11),
    ]


def _check_messy(sessions: list[RecordedSession]) -> None:
    [session] = sessions
    assert session.client == CLIENT and session.server == METER
    assert session.client_bytes == b"abcdefGHI"
    assert session.server_bytes == b"0123456789"
    assert [s.direction for s in session.segments] == [
        CLIENT_TO_SERVER,
        SERVER_TO_CLIENT,
        SERVER_TO_CLIENT,
        CLIENT_TO_SERVER,
    ]
    assert session.retransmissions == 1
    assert session.missing_bytes == 0
    assert session.closed_by == CLIENT_TO_SERVER


def _write_raw(path: Path, linktype: int, frames: list[bytes]) -> None:
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=linktype, snaplen=65535)
        for i, frame in enumerate(frames):
            writer.writepkt(frame, ts=1_700_000_000 + i / 10)


def test_reassembly_drops_retransmissions_and_reorders(tmp_path: Path) -> None:
    path = tmp_path / "messy.pcap"
    _write_raw(path, 1, [bytes(dpkt.ethernet.Ethernet(data=p)) for p in _messy_stream()])
    _check_messy(read_sessions(path))


@pytest.mark.parametrize("link", ["sll", "sll2", "raw", "loopback", "pcapng"])
def test_captures_from_real_tools_link_layers(tmp_path: Path, link: str) -> None:
    """What tcpdump -i any (SLL/SLL2), raw-IP, BSD loopback and Wireshark (pcapng) write."""
    path = tmp_path / f"{link}.pcap"
    ips = [bytes(p) for p in _messy_stream()]
    if link == "sll":
        _write_raw(path, 113, [bytes(dpkt.sll.SLL(data=ip)) for ip in ips])
    elif link == "sll2":
        _write_raw(path, 276, [bytes(dpkt.sll2.SLL2(ethtype=0x0800)) + ip for ip in ips])
    elif link == "raw":
        _write_raw(path, 101, ips)
    elif link == "loopback":
        _write_raw(path, 0, [struct.pack("<I", socket.AF_INET) + ip for ip in ips])
    else:
        with open(path, "wb") as f:
            writer = dpkt.pcapng.Writer(f, linktype=1)
            for i, ip in enumerate(ips):
                writer.writepkt(bytes(dpkt.ethernet.Ethernet(data=ip)), ts=1_700_000_000 + i)
    _check_messy(read_sessions(path))


def test_capture_started_mid_connection_and_port_reuse(tmp_path: Path) -> None:
    """No handshake: the ephemeral (higher) port is the client. A new SYN on the same
    4-tuple starts a new session."""
    frames = [
        _packet(METER, CLIENT, 7000, PSH | ACK, b"reply", ack=300),
        _packet(CLIENT, METER, 300, PSH | ACK, b"next", ack=7005),
        _packet(CLIENT, METER, 304, FIN | ACK, ack=7005),
        _packet(METER, CLIENT, 7005, FIN | ACK, ack=305),
        _packet(CLIENT, METER, 90, SYN),
        _packet(METER, CLIENT, 800, SYN | ACK, ack=91),
        _packet(CLIENT, METER, 91, PSH | ACK, b"again", ack=801),
    ]
    path = tmp_path / "mid.pcap"
    _write_raw(path, 1, [bytes(dpkt.ethernet.Ethernet(data=p)) for p in frames])
    first, second = read_sessions(path)
    assert first.client == CLIENT
    assert [(s.direction, s.payload) for s in first.segments] == [
        (SERVER_TO_CLIENT, b"reply"),
        (CLIENT_TO_SERVER, b"next"),
    ]
    assert second.client_bytes == b"again" and second.closed_by is None


def test_a_packet_lost_by_the_capture_is_skipped_and_counted(tmp_path: Path) -> None:
    """A hole that never fills: the bytes behind it are delivered (in order with the other
    direction) once more than 1 MiB waits, and the hole is counted as missing."""
    c, s = 1000, 5000
    frames = [
        _packet(CLIENT, METER, c, SYN),
        _packet(METER, CLIENT, s, SYN | ACK, ack=c + 1),
        _packet(CLIENT, METER, c + 1, PSH | ACK, b"a" * 1000, ack=s + 1),
        # c + 1001: 1000 bytes the capture never saw.
    ]
    big = [bytes([65 + i]) * 60_000 for i in range(18)]
    seq = c + 2001
    for chunk in big:
        frames.append(_packet(CLIENT, METER, seq, PSH | ACK, chunk, ack=s + 1))
        seq += len(chunk)
    frames.append(_packet(METER, CLIENT, s + 1, PSH | ACK, b"ok", ack=seq))
    path = tmp_path / "hole.pcap"
    _write_raw(path, 1, [bytes(dpkt.ethernet.Ethernet(data=p)) for p in frames])
    [session] = read_sessions(path)
    assert session.missing_bytes == 1000
    assert session.client_bytes == b"a" * 1000 + b"".join(big)
    assert session.segments[-1] == (SERVER_TO_CLIENT, pytest.approx(1_700_000_002.1), b"ok")
    assert session.retransmissions == 0


def test_cut_files_keep_what_was_complete(tmp_path: Path) -> None:
    path = tmp_path / "s.pcap"
    chunks = _write_sample(path)
    whole = path.read_bytes()
    # Cut inside the 5000-byte packet near the end: its captured part is kept and the rest is
    # counted as missing; then cut inside a record header.
    path.write_bytes(whole[: -(3 * 70) - 1000])
    [session] = read_sessions(path)
    assert session.client_bytes == chunks[0] + chunks[2]
    assert session.server_bytes == (chunks[1] + chunks[3])[:-1000]
    assert session.missing_bytes == 1000
    path.write_bytes(whole[: 24 + 16 + 58 + 5])
    [session] = read_sessions(path)
    assert session.segments == [] and session.client == ("127.0.0.1", 40001)


def test_a_killed_writer_leaves_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "killed.pcap"
    code = (
        "import os, signal\n"
        "from bridge.pcap import PcapWriter, SessionRecorder\n"
        f"w = PcapWriter({str(path)!r})\n"
        "r = SessionRecorder(w, ('127.0.0.1', 40000), ('127.0.0.1', 4059))\n"
        "r.client_to_server(b'request'); r.server_to_client(b'reply')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=30, check=False)
    assert done.returncode == -signal.SIGKILL
    [session] = read_sessions(path)
    assert session.client_bytes == b"request" and session.server_bytes == b"reply"
    assert session.closed_by is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        (b"hello, this is text\n" * 3, "not a pcap or pcapng capture (starts with 68656c6c"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "damaged capture file header"),
    ],
)
def test_bad_files_raise_capture_error_naming_the_file(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError) as info:
        read_sessions(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_unsupported_link_type_is_named(tmp_path: Path) -> None:
    path = tmp_path / "wifi.pcap"
    _write_raw(path, 105, [b"\x00" * 40])
    with pytest.raises(CaptureError, match="link type 105 is not supported"):
        read_sessions(path)


def test_recorder_rejects_data_after_its_direction_closed(tmp_path: Path) -> None:
    with PcapWriter(tmp_path / "x.pcap") as writer:
        recorder = SessionRecorder(writer, ("127.0.0.1", 1), ("127.0.0.1", 2))
        recorder.finish(CLIENT_TO_SERVER)
        recorder.server_to_client(b"still allowed: half-close")
        with pytest.raises(ValueError, match="after that direction closed"):
            recorder.client_to_server(b"late")
        with pytest.raises(ValueError, match="direction must be"):
            recorder.finish("sideways")


# -- the recording proxy ---------------------------------------------------------------------


async def test_proxy_records_a_simulator_session_byte_exact(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "sim.pcap"
    writer = PcapWriter(path)
    ports = await _start_simulator(nursery)
    proxy, port = await _start_proxy(nursery, writer, ports.meters[0])
    client = TappedSession(_endpoint(port))
    with trio.fail_after(IO_TIMEOUT):
        await _read_meter(client)
        await _wait_for(lambda: len(proxy.sessions) == 1)
    writer.close()
    [summary] = proxy.sessions
    assert summary.client_bytes == len(client.sent) and summary.meter_bytes == len(client.received)
    assert summary.ended == "client closed"
    [session] = read_sessions(path)
    assert session.client_bytes == client.sent
    assert session.server_bytes == client.received
    assert session.server == ("127.0.0.1", ports.meters[0])
    assert session.client[0] == "127.0.0.1" and session.client[1] != port


async def test_proxy_several_sessions_reset_and_unreachable_meter(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "peer.pcap"
    writer = PcapWriter(path)
    peer_port = await _start_peer(nursery)
    seen: list[str] = []
    proxy, port = await _start_proxy(
        nursery, writer, peer_port, on_session=lambda s: seen.append(s.describe())
    )
    with trio.fail_after(IO_TIMEOUT):
        # Two clean sessions, in several chunks each way.
        for n in range(2):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            for word in (b"snrm%d" % n, b"aarq" * 50):
                await stream.send_all(word)
                got = b""
                while len(got) < len(word):
                    got += await stream.receive_some(4096)
                assert got == word.upper()
            await stream.aclose()
        # The meter resets: the client sees the reset, the capture shows it.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"reset please")
        with pytest.raises(trio.BrokenResourceError):
            await _drain(stream, bytearray())
        await stream.aclose()
        await _wait_for(lambda: len(proxy.sessions) == 3)
    # A meter that does not listen: the client's connection is reset.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    proxy.meter = ("127.0.0.1", dead_port)
    with trio.fail_after(IO_TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert await _receive_or_reset(stream) == b""
        await _wait_for(lambda: len(proxy.sessions) == 4)
    writer.close()
    endings = [s.ended for s in proxy.sessions]
    assert endings[:3] == ["client closed", "client closed", "meter reset"]
    assert endings[3].startswith("meter unreachable: ")
    assert "session 0: 127.0.0.1:" in seen[0] and "client sent 205 bytes" in seen[0]
    sessions = read_sessions(path)
    assert len(sessions) == 4
    assert [s.client_bytes for s in sessions[:2]] == [
        b"snrm0" + b"aarq" * 50,
        b"snrm1" + b"aarq" * 50,
    ]
    assert sessions[0].server_bytes == b"SNRM0" + b"AARQ" * 50
    assert sessions[2].client_bytes == b"reset please" and sessions[2].server_bytes == b""
    assert sessions[2].reset and sessions[2].closed_by == SERVER_TO_CLIENT
    assert sessions[3].reset and sessions[3].server == ("127.0.0.1", dead_port)


async def _drain(stream: trio.SocketStream, into: bytearray) -> None:
    """Read until the end of the stream (a reset raises BrokenResourceError)."""
    while data := await stream.receive_some(100):
        into += data


async def _receive_or_reset(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(100)
    except trio.BrokenResourceError:
        return b""
    finally:
        await stream.aclose()


async def test_recording_handler_records_inside_a_server(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """What ``simulate --record`` uses: the server records its own connections, including a
    reset done the simulator's way (SO_LINGER 0 on the socket, then closing the socket)."""
    path = tmp_path / "server.pcap"
    writer = PcapWriter(path)

    async def handler(stream: Any) -> None:
        data = await stream.receive_some(100)
        await stream.send_all(data[::-1])
        if data == b"reset":
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.socket.close()
            return
        assert await stream.receive_some(100) == b""

    listeners = await nursery.start(
        partial(trio.serve_tcp, recording_handler(handler, writer), 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(IO_TIMEOUT):
        for word in (b"hello", b"reset"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(word)
            assert await stream.receive_some(100) == word[::-1]
            await stream.aclose()
        await _wait_for(lambda: writer.packets >= 14)
        await trio.sleep(0.05)
    writer.close()
    first, second = read_sessions(path)
    assert first.server == ("127.0.0.1", port)
    assert (first.client_bytes, first.server_bytes) == (b"hello", b"olleh")
    assert first.closed_by == CLIENT_TO_SERVER and not first.reset
    assert (second.client_bytes, second.server_bytes) == (b"reset", b"teser")
    assert second.reset and second.closed_by == SERVER_TO_CLIENT


# -- replay ----------------------------------------------------------------------------------


async def test_record_then_replay_gives_the_same_bytes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The round trip: record our client against the simulator, replay the capture as a meter,
    run the same client again: it sends the same requests and gets byte-identical replies."""
    path = tmp_path / "rt.pcap"
    writer = PcapWriter(path)
    ports = await _start_simulator(nursery)
    proxy, port = await _start_proxy(nursery, writer, ports.meters[0])
    first = TappedSession(_endpoint(port))
    with trio.fail_after(IO_TIMEOUT):
        first_values = await _read_meter(first)
        await _wait_for(lambda: len(proxy.sessions) == 1)
    writer.close()
    sessions = read_sessions(path)
    warnings: list[str] = []
    replay = ReplayServer(sessions, speed=0, on_warning=warnings.append)
    with trio.fail_after(IO_TIMEOUT):
        addresses = await nursery.start(replay.serve, 0, "127.0.0.1")
        second = TappedSession(_endpoint(addresses[0][1]))
        second_values = await _read_meter(second)
        await _wait_for(lambda: len(replay.results) == 1)
    assert second.sent == first.sent
    assert second.received == first.received == sessions[0].server_bytes
    assert second_values == first_values
    [result] = replay.results
    assert result.complete and result.mismatches == 0 and warnings == []
    assert result.turns_done == result.turns > 10
    assert result.bytes_sent == len(sessions[0].server_bytes)


def _ping_pong(path: Path, *, reset: bool) -> list[RecordedSession]:
    with PcapWriter(path) as writer:
        recorder = SessionRecorder(writer, ("127.0.0.1", 40000), ("127.0.0.1", 4059))
        recorder.client_to_server(b"ping-1")
        recorder.server_to_client(b"pong-1")
        recorder.server_to_client(b"+more")
        recorder.client_to_server(b"ping-2")
        recorder.server_to_client(b"pong-2")
        recorder.finish(SERVER_TO_CLIENT, reset=reset)
        recorder.close()
    return read_sessions(path)


async def _exchange(port: int, requests: list[bytes], expect: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    got = b""
    try:
        for request in requests:
            await stream.send_all(request)
        while len(got) < expect:
            data = await stream.receive_some(100)
            if not data:
                break
            got += data
    finally:
        await stream.aclose()
    return got


async def test_replay_counts_mismatches_and_keeps_going(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    sessions = _ping_pong(tmp_path / "pp.pcap", reset=False)
    warnings: list[str] = []
    replay = ReplayServer(sessions, loop=True, speed=0, idle=0.2, on_warning=warnings.append)
    with trio.fail_after(IO_TIMEOUT):
        [(_, port)] = await nursery.start(replay.serve, 0, "127.0.0.1")
        # As recorded, then with a differing byte, then with a short request.
        assert await _exchange(port, [b"ping-1", b"ping-2"], 17) == b"pong-1+morepong-2"
        assert await _exchange(port, [b"ping-1", b"pXng-2"], 17) == b"pong-1+morepong-2"
        assert await _exchange(port, [b"ping-1", b"pin"], 17) == b"pong-1+morepong-2"
        await _wait_for(lambda: len(replay.results) == 3)
    assert [r.mismatches for r in replay.results] == [0, 1, 1]
    assert [r.complete for r in replay.results] == [True, False, False]
    assert replay.warnings == 2
    assert "turn 1: the client's 6 bytes differ from the recording, first at byte 1" in warnings[0]
    assert "(got 58" in warnings[0] and "recorded 69" in warnings[0]
    assert "turn 1: the client sent 3 bytes where 6 were recorded" in warnings[1]


async def test_replay_resets_like_the_recording_and_stops_when_done(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    sessions = _ping_pong(tmp_path / "pp.pcap", reset=True)
    replay = ReplayServer(sessions, only=0, speed=0)
    with trio.fail_after(IO_TIMEOUT):
        [(_, port)] = await nursery.start(replay.serve, 0, "127.0.0.1")
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"ping-1ping-2")
        got = bytearray()
        with pytest.raises(trio.BrokenResourceError):
            await _drain(stream, got)
        await stream.aclose()
        assert got == b"pong-1+morepong-2"
        await _wait_for(lambda: len(replay.results) == 1)
    # Without --loop the single session was handed out: nobody listens any more.
    with trio.fail_after(IO_TIMEOUT), pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_replay_paces_replies_as_recorded(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "slow.pcap"
    clock = iter([0.0, 0.0, 0.0, 10.0, 10.0, 10.4, 10.8, 11.0, 11.0, 11.0, 11.0]).__next__
    with PcapWriter(path, clock=clock) as writer:
        recorder = SessionRecorder(writer, ("127.0.0.1", 40000), ("127.0.0.1", 4059))
        recorder.client_to_server(b"q")  # t=10.0
        recorder.server_to_client(b"a")  # t=10.0
        recorder.server_to_client(b"b")  # t=10.4
        recorder.server_to_client(b"c")  # t=10.8
        recorder.close()
    replay = ReplayServer(read_sessions(path), speed=0.5)
    with trio.fail_after(IO_TIMEOUT):
        [(_, port)] = await nursery.start(replay.serve, 0, "127.0.0.1")
        started = trio.current_time()
        assert await _exchange(port, [b"q"], 3) == b"abc"
    assert 0.35 <= trio.current_time() - started < 1.5  # 0.8 s recorded at half speed


def test_replay_rejects_bad_sessions_and_speed() -> None:
    with pytest.raises(ValueError, match="no session"):
        ReplayServer([])
    sessions = read_sessions(CAPTURES / "clean.pcap")
    with pytest.raises(ValueError, match="session 4 is not in the capture"):
        ReplayServer(sessions, only=4)
    with pytest.raises(ValueError, match="speed"):
        ReplayServer(sessions, speed=-1)


# -- decode --------------------------------------------------------------------------------


def test_decode_pcap_describes_frames_and_apdus_in_order() -> None:
    items: list[dict[str, Any]] = []
    count, stats = decode_pcap(CAPTURES / "clean.pcap", items.append)
    assert count == len(items) > 20
    assert stats["sessions"] == 1 and stats["bad_fcs"] == 0 and stats["bytes_discarded"] == 0
    first, second = items[0], items[1]
    assert (first["direction"], first["kind"]) == (CLIENT_TO_SERVER, "SNRM")
    assert (second["direction"], second["kind"]) == (SERVER_TO_CLIENT, "UA")
    apdus = [i["apdu"]["kind"] for i in items if "apdu" in i]
    assert apdus[:2] == ["aarq", "aare"]
    assert "get-response-with-datablock" in apdus and "get-request-next" in apdus
    assert apdus[-2:] == ["rlrq", "rlre"]
    assert any(i.get("segmented") for i in items)
    assert items[-1]["kind"] == "UA" and items[-2]["kind"] == "DISC"
    assert all(i["session"] == 0 for i in items)
    stamps = [i["ts"] for i in items]
    assert stamps == sorted(stamps)


@pytest.mark.parametrize(
    ("name", "counter"),
    [("garbage", "bytes_discarded"), ("fcs", "bad_fcs"), ("residual", "bytes_discarded")],
)
def test_decode_pcap_counts_what_faults_did(name: str, counter: str) -> None:
    count, stats = decode_pcap(CAPTURES / f"{name}.pcap", lambda item: None)
    assert count > 5
    assert stats[counter] > 0


def test_decode_cli_prints_json_lines_for_a_committed_capture() -> None:
    done = _run_cli("decode", "--pcap", str(CAPTURES / "clean.pcap"))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    summary = lines[-1]["summary"]
    frames = lines[:-1]
    assert summary["decoded"] == len(frames) and summary["sessions"] == 1
    assert {f["direction"] for f in frames} == {CLIENT_TO_SERVER, SERVER_TO_CLIENT}
    assert all({"session", "direction", "ts", "kind"} <= f.keys() for f in frames)
    assert [f["apdu"]["kind"] for f in frames if "apdu" in f][:2] == ["aarq", "aare"]


def test_decode_cli_rejects_a_file_that_is_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "notes.pcap"
    path.write_text("7e a0 07 03 21 93 0f 01 7e\n")
    done = _run_cli("decode", "--pcap", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    assert f"decode: {path}: not a pcap or pcapng capture" in done.stderr
    missing = _run_cli("decode", "--pcap", str(tmp_path / "none.pcap"))
    assert missing.returncode == 2 and "No such file" in missing.stderr


# -- the commands ------------------------------------------------------------------------


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``dlms-bridge`` in this process; argparse's own errors exit too."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_replay_cli_lists_and_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(capsys, "replay", str(CAPTURES / "reset.pcap"), "--list")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(read_sessions(CAPTURES / "reset.pcap")) >= 2
    assert lines[0].startswith("session 0: 127.0.0.1:") and "(reset)" in lines[0]
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x00" * 30)
    code, _, err = _main(capsys, "replay", str(bad), "--port", "0")
    assert code == 2 and f"replay: {bad}: not a pcap" in err
    clean = str(CAPTURES / "clean.pcap")
    code, _, err = _main(capsys, "replay", clean, "--port", "0", "--session", "3")
    assert code == 2
    assert "session 3 is not in the capture (it has sessions 0 to 0)" in err
    code, _, err = _main(capsys, "replay", clean)
    assert code == 2 and "give --port" in err
    code, _, err = _main(capsys, "replay", clean, "--port", "70000")
    assert code == 2 and "--port: '70000' is not a port" in err


def test_capture_cli_rejects_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x.pcap")
    cases = [
        (["--listen", "0", "--meter", "meter.example", "--out", out], "is not HOST:PORT"),
        (["--listen", "0", "--meter", "h:99999", "--out", out], "port '99999' is not a number"),
        (["--listen", "0", "--meter", "::1:4059", "--out", out], "IPv6 address in brackets"),
        (["--listen", "70000", "--meter", "h:1", "--out", out], "--listen: '70000' is not a port"),
        (["--listen", "0", "--meter", "h:1", "--out", "/no/such/dir/x.pcap"], "does not exist"),
        (["--listen", "0", "--meter", "h:1", "--out", str(tmp_path)], "is a directory"),
        (["--listen", "x", "--meter", "h:1", "--out", out], "--listen: 'x' is not a port"),
        (["--meter", "h:1", "--out", out], "required: --listen"),
    ]
    for args, message in cases:
        code, _, err = _main(capsys, "capture", *args)
        assert code == 2, (args, err)
        assert message in err, (args, err)
    assert not (tmp_path / "x.pcap").exists()


async def test_capture_cli_records_and_closes_on_sigterm(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    peer_port = await _start_peer(nursery)
    out = tmp_path / "cli.pcap"
    command = [sys.executable, "-m", "bridge.cli", "capture", "--listen", "0"]
    command += ["--meter", f"127.0.0.1:{peer_port}", "--out", str(out)]
    with trio.fail_after(IO_TIMEOUT):
        process = await trio.lowlevel.open_process(command, cwd=REPO, stdout=subprocess.PIPE)
        assert process.stdout is not None
        buffer = bytearray()
        try:
            line = await _read_line(process.stdout, buffer)
            assert line.startswith("listening on 127.0.0.1:") and str(out) in line
            port = int(line.split(",")[0].rsplit(":", 1)[1])
            assert await _exchange(port, [b"hello"], 5) == b"HELLO"
            line = await _read_line(process.stdout, buffer)
            assert line.startswith("session 0: 127.0.0.1:")
            assert "client sent 5 bytes, meter sent 5 bytes" in line
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            line = await _read_line(process.stdout, buffer)
            assert line.startswith(f"recorded 1 session(s), 8 packets, to {out}")
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    [session] = read_sessions(out)
    assert (session.client_bytes, session.server_bytes) == (b"hello", b"HELLO")


async def test_replay_cli_serves_a_committed_capture_to_our_client() -> None:
    """The clean capture replayed: the recording client's procedure completes byte-exact."""
    scenario = next(s for s in record_captures.SCENARIOS if s.name == "clean")
    command = [sys.executable, "-m", "bridge.cli", "replay", str(CAPTURES / "clean.pcap")]
    command += ["--port", "0", "--speed", "0"]
    with trio.fail_after(IO_TIMEOUT):
        process = await trio.lowlevel.open_process(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdout is not None and process.stderr is not None
        buffer = bytearray()
        try:
            line = await _read_line(process.stdout, buffer)
            assert line.startswith("serving 1 session(s) from ")
            port = int(line.rsplit(":", 1)[1])
            endpoint = record_captures.endpoint_for(scenario, "127.0.0.1", port)
            notes = await record_captures.run_client(endpoint, scenario)
            assert notes[-1].startswith("session ok"), notes
            assert await process.wait() == 0
            result = await _read_line(process.stdout, buffer)
            assert "session 0" in result and "0 mismatches, complete" in result
            assert await _read_line(process.stdout, buffer) == (
                "served 1 connection(s), 0 warning(s)"
            )
            assert await process.stderr.receive_some(1000) == b""
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
