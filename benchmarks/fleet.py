"""Fleet benchmark: the bridge service against N simulated meters, and the conventional design.

One run, on this machine, measured from outside the processes:

1. a private Mosquitto (anonymous, loopback), the meter simulator as its own process
   (``dlms-bridge simulate --meters N``), and the bridge as its own process (``dlms-bridge run``
   on a generated config: N meters, ``field-meter`` registers in one GET-with-list, gateway mode,
   publish limits raised for a plain broker unless ``--shipped-publish``);
2. after a warm-up, ``--seconds`` of measurement: polls and missed cycles as delivered to the
   broker (every reading's ``ts`` is placed on its meter's grid), start delay (a reading's
   ``ts`` against its meter's grid), poll latency (the bridge's summary lines), CPU of the
   bridge's processes and of the simulator (utime + stime from ``/proc``), RSS per meter, readings
   taken vs delivered, MQTT messages and bytes per second;
3. optionally ``--outage S``: the broker is stopped for S seconds and started again; reports
   the time until the outbox is back to its steady depth and the delivery rate meanwhile;
4. the reference: a thread-per-meter gurux_dlms poller (benchmark-only dependency; no storage,
   no publishing) against the same simulator, same registers, same cadence; its polls per
   CPU-second and the ratio bridge/gurux, from the same run.

``--meters`` takes a list (``500,1000,2000``) to produce the PNG plot of CPU per poll and
start-delay p99 against N. ``--json OUT`` writes the numbers of the largest N at the top level
and every run under ``runs``. Keep runs short on a shared machine (``--meters 500 --seconds 10``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
TELEMETRY_TOPICS = ("v1/gateway/#", "fleet/#")
FIELD_REGISTERS = ("1.1.32.7.0.255", "1.1.31.7.0.255", "1.1.14.7.0.255", "1.1.1.7.0.255",
                   "1.1.1.8.0.255")  # fmt: skip
#: Publish limits for a plain broker (no ThingsBoard rate limits).
#: The gurux reference reads at most this many meters, one thread each (see main()).
GURUX_MAX_THREADS = 500

RAISED_PUBLISH = {
    "max_messages_per_s": 200.0,
    "max_payload_bytes": 262_144,
    "max_bytes_per_s": 50_000_000,
    "max_readings_per_message": 2000,
}


# -- /proc --------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (worker processes count as the bridge's)."""
    tree = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, ()))
    return out


def cpu_seconds(pids: list[int], *, system_only: bool = False) -> float:
    """utime + stime of the processes (only stime with ``system_only``), seconds (a process
    that exited counts 0)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[12]) + (0 if system_only else int(fields[11]))
    return total / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


# -- helpers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_range(count: int) -> int:
    """A base port with ``count`` free ports after it."""
    # From a random start: two runs on one machine should not race for the same range.
    start = 21000 + random.randrange(0, 997) * 31
    for base in [*range(start, 60000 - count, 997), *range(21000, start, 997)]:
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError(f"no range of {count} free ports")


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:g} s")


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stop(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Broker:
    """A private anonymous Mosquitto on a free loopback port."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise SystemExit("fleet: mosquitto is not installed")
        self.binary = binary
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 0\nmax_inflight_messages 100\nlog_dest none\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)])
        wait_port(self.port, 10)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


class Collector:
    """Subscribes to the telemetry topics; records every reading's (meter, ts) as delivered."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.lock = threading.Lock()
        self.readings: dict[str, list[int]] = {}
        self.arrivals: list[tuple[float, int, int]] = []  # (arrival time, readings, bytes)
        self.messages = 0
        self.bytes = 0
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet-collector-{os.getpid()}"
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1.0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: Any, *_: Any) -> None:
        for topic in TELEMETRY_TOPICS:
            client.subscribe(topic, qos=1)

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        topic = message.topic
        if topic.startswith("v1/gateway/") and topic != "v1/gateway/telemetry":
            return
        payload = json.loads(message.payload)
        found: list[tuple[str, int]] = []
        if topic == "v1/gateway/telemetry":
            for meter, rows in payload.items():
                found.extend((meter, int(row["ts"])) for row in rows)
        elif isinstance(payload, dict) and "ts" in payload:
            found.append((payload.get("meter") or topic.rsplit("/", 1)[-1], int(payload["ts"])))
        now = time.time()
        with self.lock:
            self.messages += 1
            self.bytes += len(message.payload)
            self.arrivals.append((now, len(found), len(message.payload)))
            for meter, ts in found:
                self.readings.setdefault(meter, []).append(ts)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class LogTail(threading.Thread):
    """Follows the bridge's log file; keeps every ``event=summary`` line with its arrival time."""

    PAIR = re.compile(r'(\w+)=("[^"]*"|\S+)')

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.summaries: list[tuple[float, dict[str, str]]] = []
        self.running_at: float | None = None
        self.errors: list[str] = []
        self._stop = threading.Event()

    def run(self) -> None:
        partial = ""
        with self.path.open("r", errors="replace") as f:
            while not self._stop.is_set():
                line = partial + f.readline()
                if not line.endswith("\n"):  # the writer is in the middle of this line
                    partial = line
                    time.sleep(0.05)
                    continue
                partial = ""
                if "event=summary" in line:
                    fields = {k: v.strip('"') for k, v in self.PAIR.findall(line)}
                    self.summaries.append((time.time(), fields))
                elif "event=running" in line and self.running_at is None:
                    self.running_at = time.time()
                elif "Traceback" in line or "event=poller_crashed" in line:
                    self.errors.append(line.strip())

    def stop(self) -> None:
        self._stop.set()

    def between(self, t0: float, t1: float) -> list[dict[str, str]]:
        return [f for t, f in self.summaries if t0 < t <= t1]

    def last(self, key: str) -> float | None:
        for _t, f in reversed(self.summaries):
            if key in f and f[key] not in ("None", ""):
                return float(f[key])
        return None


# -- the bridge run -----------------------------------------------------------------------------


def bridge_config(
    path: Path, *, data_dir: Path, broker_port: int, base_port: int, args: argparse.Namespace,
    meters: int,
) -> None:  # fmt: skip
    lines = [
        "[bridge]",
        'name = "fleet"',
        f'data_dir = "{data_dir}"',
        "summary_interval_s = 1.0",
    ]
    if args.workers is not None:
        lines.append(f"workers = {args.workers}")
    lines += [
        "",
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {broker_port}",
        'token = "fleet-gateway"',
        f'client_id = "fleet-bench-{os.getpid()}"',
        "",
        "[publish]",
        f'outbox_synchronous = "{args.outbox_synchronous}"',
    ]
    if not args.shipped_publish:
        lines += [f"{k} = {v}" for k, v in RAISED_PUBLISH.items()]
    lines += [
        "",
        *args.extra_config,
        "",
        "[defaults]",
        'password = "00000000"',
        'registers = "field-meter"',
        f"interval_s = {args.interval}",
        f"timeout_s = {min(5.0, args.interval * 0.9):g}",
        "",
    ]
    for i in range(meters):
        lines += [
            "[[meters]]",
            f'name = "m{i:05d}"',
            'host = "127.0.0.1"',
            f"port = {base_port + i}",
        ]
    path.write_text("\n".join(lines) + "\n")


def grid_phase(offsets: Sequence[float], step: float) -> float:
    """The phase of a meter's grid: where its readings' offsets (mod ``step``) start, taken
    after the largest empty stretch of the circle. (A minimum over offsets folded into
    [-step/2, step/2) breaks when the phase is near the fold: one reading 200 ms late then
    wraps round and makes every other one look 800 ms late.)"""
    points = sorted(off % step for off in offsets)
    best_gap, phase = -1.0, points[0]
    previous = points[-1] - step
    for point in points:
        if point - previous > best_gap:
            best_gap, phase = point - previous, point
        previous = point
    return phase


def grid_stats(
    readings: dict[str, list[int]], t0: float, t1: float, interval: float
) -> dict[str, Any]:
    """Place every reading on its meter's grid: polls and missed slots in [t0, t1), start delay
    (how long after its meter's grid slot a reading was taken). A slot's reading counts by its
    slot: one taken a little after t1 for a slot before t1 is that slot's poll, not a miss."""
    step = interval * 1000
    lo, hi = t0 * 1000, t1 * 1000
    polls = missed = expected = 0
    delays: list[float] = []
    for ts_list in readings.values():
        # The grid from the readings of the window and half a step either side (not the
        # warm-up's, which may be off-grid), each of them placed on it: the phase is where
        # they start, so none is taken before its slot. (From the window's alone, a slot
        # starting at its very edge whose reading came a millisecond earlier than the ones
        # measured, just before the window, looked empty: a "missed" poll that was not.)
        measured = [ts for ts in ts_list if lo - step / 2 <= ts < hi + step / 2]
        if not measured:
            continue
        origin = grid_phase(measured, step)
        first = math.ceil((lo - origin) / step)
        last = math.ceil((hi - origin) / step)
        slots = set()
        for ts in measured:
            delay = (ts - origin) % step
            slot = round((ts - delay - origin) / step)
            if first <= slot < last:
                delays.append(delay)
                slots.add(slot)
        expected += last - first
        polls += len(slots)
        missed += max(0, (last - first) - len(slots))
    return {
        "expected": expected,
        "polls": polls,
        "missed": missed,
        "start_delay_p50_ms": quantile(delays, 0.5),
        "start_delay_p99_ms": quantile(delays, 0.99),
    }


def _floats(summaries: list[dict[str, str]], key: str) -> list[float]:
    return [float(f[key]) for f in summaries if f.get(key) not in (None, "None", "")]


def progress(label: str, seconds: float, report: Any) -> None:
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        print(f"\r  {label}: {left:5.1f} s left  {report()}", end="", file=sys.stderr, flush=True)
        time.sleep(min(1.0, left))
    print(file=sys.stderr)


@attrs.frozen
class RunningBridge:
    """A bridge started by `running_bridge`, every meter delivered once."""

    process: subprocess.Popen[bytes]
    collector: Collector
    tail: LogTail
    log_path: Path
    #: Meters that delivered within the wait (all of them unless the bridge fell behind).
    delivered: int


@contextlib.contextmanager
def running_bridge(
    args: argparse.Namespace,
    meters: int,
    work: Path,
    broker: Broker,
    base_port: int,
    *,
    env: dict[str, str] | None = None,
    python_args: tuple[str, ...] = (),
    name: str = "fleet",
) -> Iterator[RunningBridge]:
    """`dlms-bridge run` for N meters as its own process (config and log in ``work``), yielded
    once it is running and every meter delivered a reading (or the wait for that ran out);
    stopped on the way out."""
    data_dir = work / f"data-{meters}"
    # A --work directory used before: this run starts from an empty outbox all the same.
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir()
    cfg = work / f"bridge-{meters}.toml"
    bridge_config(
        cfg, data_dir=data_dir, broker_port=broker.port, base_port=base_port, args=args,
        meters=meters,
    )  # fmt: skip
    collector = Collector(broker.port)
    log_path = work / f"bridge-{meters}.log"
    log_file = log_path.open("wb")
    bridge = subprocess.Popen(
        [sys.executable, *python_args, "-m", "bridge.cli", "run", "-c", str(cfg)],
        cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
        env=env if env is not None else {**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    tail = LogTail(log_path)
    tail.start()
    try:
        deadline = time.monotonic() + 60 + meters / 50
        while tail.running_at is None:
            if bridge.poll() is not None:
                tail_text = log_path.read_text(errors="replace")[-2000:]
                raise SystemExit(f"{name}: the bridge exited ({bridge.returncode}):\n{tail_text}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: the bridge did not start; see {log_path}")
            time.sleep(0.1)
        # Warm-up starts once every meter has delivered (workers and associations are up).
        deadline = time.monotonic() + 60 + meters / 50
        while len(collector.readings) < meters and time.monotonic() < deadline:
            print(f"\r  {len(collector.readings)}/{meters} meters delivered", end="",
                  file=sys.stderr, flush=True)  # fmt: skip
            time.sleep(0.5)
        print(file=sys.stderr)
        yield RunningBridge(bridge, collector, tail, log_path, len(collector.readings))
    finally:
        stop(bridge, 30)
        tail.stop()
        collector.close()
        log_file.close()


def run_bridge(
    args: argparse.Namespace, meters: int, work: Path, broker: Broker, base_port: int
) -> dict[str, Any]:
    profile = ("-m", "cProfile", "-o", str(args.profile)) if args.profile else ()
    with running_bridge(args, meters, work, broker, base_port, python_args=profile) as running:
        return measure_bridge(args, meters, broker, running)


def measure_bridge(
    args: argparse.Namespace, meters: int, broker: Broker, running: RunningBridge
) -> dict[str, Any]:
    """The measured window of a running bridge (and the outage, with ``--outage``)."""
    bridge, collector, tail = running.process, running.collector, running.tail
    result: dict[str, Any] = {"meters": meters, "interval_s": args.interval}
    warmup = args.warmup if args.warmup is not None else max(5.0, meters / 400)

    def status() -> str:
        rows = tail.last("outbox_rows")
        rate = tail.last("published_per_s")
        sent = collector.messages
        return f"outbox {rows and int(rows)} rows, published {rate}/s, {sent} msgs   "

    progress(f"{meters} meters warm-up", warmup, status)
    pids = process_tree(bridge.pid)
    sim_pids = process_tree(args.simulator_pid)
    c0, s0, t0 = cpu_seconds(pids), cpu_seconds(sim_pids), time.time()
    k0 = cpu_seconds(pids, system_only=True)
    progress(f"{meters} meters measuring", args.seconds, status)
    pids = process_tree(bridge.pid)
    c1, s1, t1 = cpu_seconds(pids), cpu_seconds(sim_pids), time.time()
    k1 = cpu_seconds(pids, system_only=True)
    rss = rss_kib(pids)
    # Let what was taken in the window reach the broker (the grace is not measured).
    grace_end = time.monotonic() + max(10.0, 3 * args.interval)
    while time.monotonic() < grace_end:
        with collector.lock:
            newest = min((max(v) for v in collector.readings.values()), default=0)
        if newest >= t1 * 1000:
            break
        time.sleep(0.2)
    with collector.lock:
        snapshot = {m: sorted(v) for m, v in collector.readings.items()}
        messages = [(n, size) for t, n, size in collector.arrivals if t0 <= t < t1]
    grid = grid_stats(snapshot, t0, t1, args.interval)
    if args.readings:
        # Every delivered reading's time per meter, and the window: when were polls late?
        args.readings.write_text(json.dumps({"t0": t0, "t1": t1, "readings": snapshot}))
    summaries = tail.between(t0, t1)
    taken = sum(int(f.get("readings", 0)) for f in summaries)
    p50s = [
        float(f["latency_p50_ms"])
        for f in summaries
        if f.get("latency_p50_ms") not in (None, "None")
    ]
    p99s = [
        float(f["latency_p99_ms"])
        for f in summaries
        if f.get("latency_p99_ms") not in (None, "None")
    ]
    polls = grid["polls"]
    cpu = c1 - c0
    elapsed = t1 - t0
    result.update(
        seconds=round(elapsed, 2),
        polls=polls,
        expected=grid["expected"],
        missed=grid["missed"],
        missed_by_bridge=sum(int(f.get("missed", 0)) for f in summaries),
        polls_per_s=round(polls / elapsed, 1),
        start_delay_p50_ms=grid["start_delay_p50_ms"],
        start_delay_p99_ms=grid["start_delay_p99_ms"],
        latency_p50_ms=quantile(p50s, 0.5),
        latency_p99_ms=max(p99s) if p99s else None,
        cpu_us_per_poll=round(cpu / polls * 1e6, 1) if polls else None,
        # The kernel's part (sockets, epoll, fsync) of the bridge's CPU per poll.
        system_cpu_us_per_poll=round((k1 - k0) / polls * 1e6, 1) if polls else None,
        bridge_cpu_percent=round(100 * cpu / elapsed, 1),
        bridge_processes=len(pids),
        simulator_cpu_us_per_poll=round((s1 - s0) / polls * 1e6, 1) if polls else None,
        rss_kib=rss,
        rss_kib_per_meter=round(rss / meters, 1),
        taken=taken,
        delivered=polls,
        mqtt_messages_per_s=round(len(messages) / elapsed, 1),
        mqtt_bytes_per_s=round(sum(size for _n, size in messages) / elapsed),
        bridge_polls_per_cpu_s=round(polls / cpu, 1) if cpu else None,
        errors=tail.errors[:5],
    )
    if args.outage:
        result["outage"] = outage(args, broker, collector, tail, meters)
    return result


def outage(
    args: argparse.Namespace, broker: Broker, collector: Collector, tail: LogTail, meters: int
) -> dict[str, Any]:
    """Stop the broker for ``args.outage`` s; time the drain of the backlog after it is back."""
    print(f"  broker stopped for {args.outage:g} s", file=sys.stderr)
    broker.stop()
    stopped = time.time()
    time.sleep(args.outage)
    backlog = tail.last("outbox_rows") or 0
    broker.start()
    restarted = time.time()
    steady = max(2 * meters, 100)  # about the rows of one or two cycles in flight
    drained_at = None
    limit = time.monotonic() + args.drain_limit
    while time.monotonic() < limit:
        latest = tail.summaries[-1] if tail.summaries else None
        if (
            latest
            and latest[0] > restarted + 1
            and float(latest[1].get("outbox_rows", 1e9)) <= steady
        ):
            drained_at = latest[0]
            break
        rows = latest[1].get("outbox_rows") if latest else "?"
        print(f"\r  draining: outbox {rows} rows", end="", file=sys.stderr, flush=True)
        time.sleep(0.5)
    print(file=sys.stderr)
    end = drained_at or time.time()
    with collector.lock:
        delivered = sum(n for t, n, _size in collector.arrivals if restarted <= t < end)
        snapshot = {m: sorted(v) for m, v in collector.readings.items()}
    gap = grid_stats(snapshot, stopped, restarted, args.interval)
    return {
        "outage_s": args.outage,
        "backlog_rows": int(backlog),
        "drain_s": round(end - restarted, 1) if drained_at else None,
        "drained": drained_at is not None,
        "drain_readings_per_s": round(delivered / max(0.001, end - restarted), 1),
        "outage_readings_expected": gap["expected"],
        "outage_readings_delivered": gap["polls"],
    }


# -- the gurux_dlms reference -------------------------------------------------------------------


def gurux_worker(args: argparse.Namespace) -> None:
    """Thread-per-meter poller with gurux_dlms over blocking sockets; prints JSON on stdout."""
    from gurux_dlms import GXByteBuffer, GXDLMSClient, GXReplyData
    from gurux_dlms.enums import Authentication, InterfaceType
    from gurux_dlms.objects import GXDLMSRegister

    threading.stack_size(256 * 1024)
    interval = args.interval
    stop_event = threading.Event()
    lock = threading.Lock()
    polls: list[tuple[float, float, float]] = []  # (start, delay, latency)
    failures = [0]
    start = time.monotonic() + max(1.0, args.meters / 500)

    def poll_meter(index: int) -> None:
        client = GXDLMSClient(True, 1, 1, Authentication.LOW, "00000000", InterfaceType.HDLC)
        try:
            sock = socket.create_connection(("127.0.0.1", args.port + index), timeout=10)
        except OSError:
            with lock:
                failures[0] += 1
            return

        def transfer(frames: Any) -> GXReplyData:
            reply = GXReplyData()
            for frame in frames if isinstance(frames, list) else [frames]:
                sock.sendall(bytes(frame))
                received = GXByteBuffer()
                notify = GXReplyData()
                while not client.getData(received, reply, notify):
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    received.set(chunk)
            return reply

        try:
            client.parseUAResponse(transfer(client.snrmRequest()).data)
            client.parseAareResponse(transfer(client.aarqRequest()).data)
            registers = [GXDLMSRegister(ln) for ln in FIELD_REGISTERS]
            for register in registers:  # scalers and units once
                client.updateValue(register, 3, transfer(client.read(register, 3)).value)
            items = [(r, 2) for r in registers]
            tick = 0
            phase = start + (index / args.meters) * interval
            while not stop_event.is_set():
                due = phase + tick * interval
                now = time.monotonic()
                if now - due > interval / 2:
                    tick += math.floor((now - due) / interval + 0.5)
                    continue
                if due > now:
                    time.sleep(due - now)
                t = time.monotonic()
                reply = transfer([f for message in client.readList(items) for f in message])
                client.updateValues(items, reply.value)
                done = time.monotonic()
                with lock:
                    polls.append((t, t - due, done - t))
                tick += 1
            with contextlib.suppress(Exception):
                transfer(client.releaseRequest())
                transfer(client.disconnectRequest())
        except Exception:  # noqa: BLE001 - any failure of one meter is counted, the others go on
            with lock:
                failures[0] += 1
        finally:
            sock.close()

    threads = [
        threading.Thread(target=poll_meter, args=(i,), daemon=True) for i in range(args.meters)
    ]
    for thread in threads:
        thread.start()
    warm_end = start + (args.warmup if args.warmup is not None else max(5.0, args.meters / 400))
    time.sleep(max(0.0, warm_end - time.monotonic()))
    c0, t0 = cpu_seconds([os.getpid()]), time.monotonic()
    time.sleep(args.seconds)
    c1, t1 = cpu_seconds([os.getpid()]), time.monotonic()
    rss = rss_kib([os.getpid()])
    stop_event.set()
    with lock:
        window = [p for p in polls if t0 <= p[0] < t1]
    cpu = c1 - c0
    print(json.dumps({
        "polls": len(window),
        "seconds": round(t1 - t0, 2),
        "failed_meters": failures[0],
        "cpu_s": round(cpu, 3),
        "cpu_us_per_poll": round(cpu / len(window) * 1e6, 1) if window else None,
        "polls_per_cpu_s": round(len(window) / cpu, 1) if cpu else None,
        "start_delay_p99_ms": round(1000 * (quantile([p[1] for p in window], 0.99) or 0), 2),
        "latency_p50_ms": round(1000 * (quantile([p[2] for p in window], 0.5) or 0), 2),
        "rss_kib": rss,
    }))  # fmt: skip
    sys.stdout.flush()
    os._exit(0)  # threads blocked in recv need not be joined


def run_gurux(args: argparse.Namespace, meters: int, base_port: int) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "--gurux-worker", "--port", str(base_port),
        "--meters", str(meters), "--interval", str(args.interval), "--seconds", str(args.seconds),
    ]  # fmt: skip
    if args.warmup is not None:
        cmd += ["--warmup", str(args.warmup)]
    print(f"  gurux_dlms reference, {meters} threads ...", file=sys.stderr)
    # Thousands of threads contend for one GIL: the reference's own clock thread may not get
    # its turn for minutes. Past its planned time plus a margin, it is reported as not done.
    warmup = args.warmup if args.warmup is not None else max(5.0, meters / 400)
    limit = max(1.0, meters / 500) + warmup + args.seconds + 120
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": [f"did not finish within {limit:.0f} s ({meters} threads thrash)"]}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:] or ["failed"]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# -- main ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def simulator(meters: int, work: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    base = free_port_range(meters)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = (work / "simulator.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "simulate", "--meters", str(meters),
         "--port", str(base)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        wait_port(base + meters - 1, 60 + meters / 100)
        yield base, proc
    finally:
        stop(proc)
        log.close()


def print_table(runs: list[dict[str, Any]]) -> None:
    cols = [
        ("meters", "meters"), ("polls/s", "polls_per_s"), ("missed", "missed"),
        ("delay p50", "start_delay_p50_ms"), ("delay p99", "start_delay_p99_ms"),
        ("lat p50", "latency_p50_ms"), ("lat p99", "latency_p99_ms"),
        ("cpu us/poll", "cpu_us_per_poll"), ("  of it system", "system_cpu_us_per_poll"),
        ("sim us/poll", "simulator_cpu_us_per_poll"),
        ("KiB/meter", "rss_kib_per_meter"), ("taken", "taken"), ("delivered", "delivered"),
        ("msgs/s", "mqtt_messages_per_s"), ("bytes/s", "mqtt_bytes_per_s"),
        ("bridge polls/cpu-s", "bridge_polls_per_cpu_s"),
        ("gurux polls/cpu-s", "gurux_polls_per_cpu_s"),
        ("bridge/gurux", "ratio_vs_gurux"),
    ]  # fmt: skip
    for run in runs:
        print()
        for label, key in cols:
            print(f"{label:>20}: {run.get(key)}")
        if "outage" in run:
            print(f"{'outage':>20}: {run['outage']}")


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["meters"] for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(n, [r.get("cpu_us_per_poll") for r in runs], "o-", label="bridge (outbox + MQTT)")
    a.plot(n, [r.get("gurux_cpu_us_per_poll") for r in runs], "s--", label="gurux_dlms threads")
    a.set_xlabel("meters")
    a.set_ylabel("CPU µs per poll")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(n, [r.get("start_delay_p99_ms") for r in runs], "o-", label="bridge")
    b.plot(n, [r.get("gurux_start_delay_p99_ms") for r in runs], "s--", label="gurux_dlms")
    b.set_xlabel("meters")
    b.set_ylabel("start delay p99, ms")
    b.legend()
    b.grid(alpha=0.3)
    fig.suptitle(f"fleet benchmark, interval {runs[0]['interval_s']:g} s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", default="500", help="N, or a list N1,N2,... (500)")
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, s (1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time, s (10)")
    parser.add_argument("--warmup", type=float, default=None, help="s (max(5, N/400))")
    parser.add_argument("--outage", type=float, default=0.0, help="stop the broker S seconds")
    parser.add_argument("--drain-limit", type=float, default=900.0, help="s to wait for a drain")
    parser.add_argument("--workers", type=int, default=None, help="[bridge] workers")
    parser.add_argument(
        "--extra-config",
        action="append",
        default=[],
        metavar="TOML",
        help="more lines for the bridge's config, before [defaults] (repeatable), "
        'e.g. --extra-config "[web]" --extra-config "enabled = false"',
    )
    parser.add_argument(
        "--shipped-publish",
        action="store_true",
        help="keep the shipped [publish] pacing (default: limits raised for a plain broker)",
    )
    parser.add_argument("--outbox-synchronous", default="full", choices=["full", "normal", "off"])
    parser.add_argument("--no-gurux", action="store_true", help="skip the gurux reference")
    parser.add_argument(
        "--gurux-threads",
        type=int,
        default=GURUX_MAX_THREADS,
        help=f"most meters (threads) the gurux reference reads ({GURUX_MAX_THREADS})",
    )
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument(
        "--readings", type=Path, help="write every delivered reading's time (per meter) here"
    )
    parser.add_argument("--work", type=Path, help="keep configs and logs in this directory")
    parser.add_argument("--png", type=Path, help="plot (default: next to --json)")
    parser.add_argument(
        "--profile", type=Path, help="run the bridge under cProfile, stats to this file"
    )
    parser.add_argument("--gurux-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gurux_worker:
        args.meters = int(args.meters)
        gurux_worker(args)
        return
    sizes = sorted(int(n) for n in str(args.meters).split(","))
    runs = []
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        work = Path(tmp)
        if args.work is not None:
            work = args.work
            work.mkdir(parents=True, exist_ok=True)
        broker = Broker(work)
        broker.start()
        try:
            for meters in sizes:
                with simulator(meters, work) as (base, sim):
                    args.simulator_pid = sim.pid
                    run = run_bridge(args, meters, work, broker, base)
                    if not args.no_gurux:
                        # Past GURUX_MAX_THREADS the threads thrash on the GIL (2,000 did 60
                        # polls per CPU-second and often never finished): the reference reads
                        # that many of the meters, which is its best efficiency.
                        ref_meters = min(meters, args.gurux_threads)
                        ref = run_gurux(args, ref_meters, base)
                        ref["meters"] = ref_meters
                        run["gurux"] = ref
                        run["gurux_meters"] = ref_meters
                        run["gurux_polls_per_cpu_s"] = ref.get("polls_per_cpu_s")
                        run["gurux_cpu_us_per_poll"] = ref.get("cpu_us_per_poll")
                        run["gurux_start_delay_p99_ms"] = ref.get("start_delay_p99_ms")
                        bridge_rate = run.get("bridge_polls_per_cpu_s")
                        gurux_rate = ref.get("polls_per_cpu_s")
                        if bridge_rate and gurux_rate:
                            run["ratio_vs_gurux"] = round(bridge_rate / gurux_rate, 2)
                    runs.append(run)
        finally:
            broker.stop()
    print_table(runs)
    load = os.getloadavg()
    top = {**runs[-1], "runs": runs, "loadavg": load, "cpus": os.cpu_count()}
    if args.json:
        args.json.write_text(json.dumps(top, indent=2) + "\n")
    png = args.png or (args.json.with_suffix(".png") if args.json else None)
    if png:
        plot(runs, png)
        print(f"\nplot: {png}")


if __name__ == "__main__":
    main()
