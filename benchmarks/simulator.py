"""Simulator benchmark: CPU of ``dlms-bridge simulate`` per answered steady-state poll.

``dlms-bridge simulate --meters N`` runs as its own process (``--workers`` passed through); this
process is a cheap load generator (one epoll loop, pre-encoded frames): every meter is
connected, associated (SNRM/UA, AARQ/AARE with LLS) and then polled every ``--interval`` seconds
with the bridge's steady-state request (one GET-with-list of the five field-meter registers, the
invoke-id cycling 1..15 as the bridge's client does, N(S)/N(R) following the link), the polls
spread evenly over the interval. After ``--warmup`` seconds, ``--seconds`` are measured:

- polls answered per second, late polls (answered after the next one was due),
  latency p50/p99 (send to complete reply);
- the simulator's CPU (utime + stime of the process and its workers, from ``/proc``) per
  answered poll, and the share of one core it used;
- the load generator's own CPU per poll (so that a starved client is noticed).

``--json OUT`` writes the numbers. Run from the repository root::

    python benchmarks/simulator.py --meters 2000 --seconds 10
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.simulator.server_link import LLC_REQUEST  # noqa: E402
from codec.acse import AARQ, AuthenticationMechanism  # noqa: E402
from codec.apdu import AttributeDescriptor, GetRequestWithList, InvokeId, encode_apdu  # noqa: E402
from codec.hdlc import (  # noqa: E402
    NEED_DATA,
    Frame,
    FrameKind,
    FrameScanner,
    HdlcAddress,
    encode_frame,
)
from codec.obis import Obis  # noqa: E402

FIELD_REGISTERS = ("1-1:32.7.0", "1-1:31.7.0", "1-1:14.7.0", "1-1:1.7.0", "1-1:1.8.0")
CLIENT = HdlcAddress.client(1)
SERVER = HdlcAddress.server(0, 1)
_ITEMS = tuple((AttributeDescriptor(3, Obis.parse(o), 2), None) for o in FIELD_REGISTERS)
#: The steady poll frame by (N(S), invoke-id); N(R) = N(S) in the steady state of window 1.
POLL_FRAMES = {
    (ns, invoke): encode_frame(
        FrameKind.I,
        SERVER,
        CLIENT,
        ns=ns,
        nr=ns,
        info=LLC_REQUEST + encode_apdu(GetRequestWithList(InvokeId(invoke), _ITEMS)),
    )
    for ns in range(8)
    for invoke in range(1, 16)
}
SNRM = encode_frame(FrameKind.SNRM, SERVER, CLIENT)
AARQ_FRAME = encode_frame(
    FrameKind.I,
    SERVER,
    CLIENT,
    info=LLC_REQUEST
    + encode_apdu(AARQ(mechanism=AuthenticationMechanism.LOW, password=b"00000000")),
)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user + system, system) CPU seconds of a process and its running children, from /proc."""
    total = system = 0
    for p in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return total / tick, system / tick


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


class Meter:
    """One meter's connection from the load generator."""

    __slots__ = ("due", "index", "invoke", "ns", "scanner", "sent_at", "sock", "state")

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.scanner = FrameScanner()
        self.state = "snrm"
        self.ns = 1
        self.invoke = 0
        self.sent_at = 0.0
        self.due = 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bridge.cli", "simulate", "--meters", str(args.meters)]
    cmd += ["--port", str(args.port), "--control-port", "0"]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.gather_ms is not None:
        cmd += ["--gather-ms", str(args.gather_ms)]
    log = open(args.log, "wb") if args.log else subprocess.DEVNULL  # noqa: SIM115
    cwd = args.repo or REPO
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        assert proc.stdout is not None
        output = b""
        while b"ready" not in output:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"the simulator exited: {output.decode(errors='replace')}")
            output += line
        control = int(re.search(rb"control port (\d+)", output)[1])  # type: ignore[index]
        with socket.create_connection(("127.0.0.1", control)) as c:
            c.sendall(b'{"cmd": "status"}\n')
            answer = b""
            while not answer.endswith(b"\n"):
                answer += c.recv(1 << 20)
        ports = json.loads(answer)["ports"]
        return _load(args, proc.pid, ports)
    finally:
        proc.terminate()
        proc.wait(30)


def _load(args: argparse.Namespace, pid: int, ports: list[int]) -> dict[str, Any]:
    ep = select.epoll()
    meters: dict[int, Meter] = {}
    pending = list(enumerate(ports))
    connected = 0
    # Connect and associate everyone, a few hundred at a time.
    deadline = time.monotonic() + 60 + len(ports) / 50
    while connected < len(ports):
        while pending and len(meters) - connected < 200:
            i, port = pending.pop()
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            m = Meter(i, sock)
            meters[sock.fileno()] = m
            ep.register(sock.fileno(), select.EPOLLIN)
            sock.send(SNRM)
        for fd, _ in ep.poll(1.0):
            m = meters[fd]
            for frame in _frames(m):
                if m.state == "snrm":
                    assert frame.kind is FrameKind.UA, frame
                    m.state = "aarq"
                    m.sock.send(AARQ_FRAME)
                elif m.state == "aarq":
                    assert frame.kind is FrameKind.I and frame.info[3] == 0x61, frame
                    m.state = "steady"
                    connected += 1
        if time.monotonic() > deadline:
            raise SystemExit(f"only {connected} of {len(ports)} meters associated")
    interval = args.interval
    start = time.monotonic() + 0.5
    heap: list[tuple[float, int]] = []
    for n, m in enumerate(meters.values()):
        m.due = start + interval * n / len(meters)
        heap.append((m.due, m.sock.fileno()))
    heapq.heapify(heap)
    measure_from = start + args.warmup
    measure_to = measure_from + args.seconds
    latencies: list[float] = []
    late = polls = errors = 0
    cpu0 = cpu1 = (0.0, 0.0)
    own0 = own1 = 0.0
    measuring = False
    while True:
        now = time.monotonic()
        if not measuring and now >= measure_from:
            measuring = True
            cpu0, own0 = cpu_seconds(pid), time.process_time()
        if now >= measure_to:
            cpu1, own1 = cpu_seconds(pid), time.process_time()
            break
        while heap and heap[0][0] <= now:
            due, fd = heapq.heappop(heap)
            m = meters[fd]
            if m.sent_at:  # the previous poll is still unanswered
                if measuring:
                    late += 1
                m.due = due + interval
                heapq.heappush(heap, (m.due, fd))
                continue
            m.invoke = m.invoke % 15 + 1
            m.sent_at = now
            m.sock.send(POLL_FRAMES[m.ns, m.invoke])
            m.due = due + interval
            heapq.heappush(heap, (m.due, fd))
        timeout = max(0.0, heap[0][0] - time.monotonic()) if heap else 0.1
        for fd, _ in ep.poll(min(timeout, 0.05)):
            m = meters[fd]
            for frame in _frames(m):
                if frame.kind is not FrameKind.I or frame.nr != (m.ns + 1) & 7:
                    errors += 1
                done = time.monotonic()
                if measuring and m.sent_at:
                    latencies.append(done - m.sent_at)
                    polls += 1
                m.sent_at = 0.0
                m.ns = (m.ns + 1) & 7
    for m in meters.values():
        m.sock.close()
    ep.close()
    latencies.sort()
    cpu = cpu1[0] - cpu0[0]
    system = cpu1[1] - cpu0[1]
    return {
        "meters": len(ports),
        "workers": args.workers,
        "gather_ms": args.gather_ms,
        "interval_s": interval,
        "seconds": args.seconds,
        "polls": polls,
        "polls_per_s": round(polls / args.seconds, 1),
        "late": late,
        "errors": errors,
        "latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "latency_p99_ms": round(latencies[len(latencies) * 99 // 100] * 1000, 2)
        if latencies
        else None,
        "sim_cpu_us_per_poll": round(cpu / polls * 1e6, 1) if polls else None,
        "sim_system_us_per_poll": round(system / polls * 1e6, 1) if polls else None,
        "sim_cores": round(cpu / args.seconds, 3),
        "client_cpu_us_per_poll": round((own1 - own0) / polls * 1e6, 1) if polls else None,
        "load_average": os.getloadavg()[0],
    }


def _frames(m: Meter) -> list[Frame]:
    try:
        data = m.sock.recv(65536)
    except BlockingIOError:
        return []
    if not data:
        raise SystemExit(f"meter {m.index}: the simulator closed the connection")
    m.scanner.receive_data(data)
    out = []
    while (frame := m.scanner.next_frame()) is not NEED_DATA:
        assert isinstance(frame, Frame)
        out.append(frame)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=0, help="port of meter 0 (0: any)")
    parser.add_argument("--workers", default=None, help="simulate --workers")
    parser.add_argument("--gather-ms", default=None, help="simulate --gather-ms")
    parser.add_argument("--json", metavar="OUT", help="write the numbers here")
    parser.add_argument("--log", metavar="FILE", help="the simulator's stderr")
    parser.add_argument(
        "--repo", metavar="DIR", help="run the simulator of another checkout (before/after)"
    )
    args = parser.parse_args()
    result = run(args)
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
