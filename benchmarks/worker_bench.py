"""One worker process alone: its CPU per poll, without the service, the outbox or a broker.

``python benchmarks/worker_bench.py [--meters N] [--interval S] [--seconds S] [--repo DIR]``
starts the meter simulator (``dlms-bridge simulate``) and one worker process (``python -m
bridge.worker 0``, given its meters on stdin as the service gives them: ``field-meter``
registers, the interval, timeout 0.9 x the interval), reads the worker's stdout as the service
would (counting ``R`` lines, the readings), and after a warm-up measures over ``--seconds``:
readings per second, the worker's CPU (utime + stime from ``/proc``) per reading and its kernel
part, and the simulator's CPU per reading. ``--repo DIR`` runs the worker of another checkout
(for before/after runs in the same minutes); ``--profile OUT`` records the worker with py-spy
(raw format) during the measured window.

This isolates the worker's share of a fleet run (``benchmarks/fleet.py --workers 2``) on a
machine where the whole fleet run is too heavy to repeat often; the fleet benchmark stays the
reference for the whole bridge.
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> tuple[float, float]:
    """(utime + stime, stime) of ``pid`` in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[12]) / CLK_TCK


def free_ports(count: int) -> int:
    """A base port with ``count`` free ports after it (best effort)."""
    for base in range(20000, 60000 - count, 1000):
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", base))
            with socket.socket() as s:
                s.bind(("127.0.0.1", base + count - 1))
        except OSError:
            continue
        return base
    raise SystemExit("no free port range")


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the simulator did not open port {port}")


def payload(repo: Path, meters: int, base: int, interval: float) -> bytes:
    sys.path.insert(0, str(repo))
    from bridge.config import PRESETS, MeterConfig

    common = {
        "host": "127.0.0.1", "password": "00000000", "registers": PRESETS["field-meter"],
        "interval_s": interval, "timeout_s": interval * 0.9,
    }  # fmt: skip
    share = [MeterConfig(name=f"m{i:05d}", port=base + i, **common) for i in range(meters)]
    body = pickle.dumps(
        {"meters": share, "log_level": "warning", "poller_options": {}, "overrides": {}}
    )
    return len(body).to_bytes(8, "big") + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=1000, help="meters in the worker (1000)")
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, s (1)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time, s (15)")
    parser.add_argument("--warmup", type=float, default=8.0, help="s after every meter read (8)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to run")
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the worker here")
    args = parser.parse_args()
    repo = args.repo.resolve()
    env = {**os.environ, "PYTHONPATH": str(repo)}
    base = free_ports(args.meters)
    sim = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "simulate", "--meters", str(args.meters),
         "--port", str(base)],
        cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker: subprocess.Popen[bytes] | None = None
    try:
        wait_port(base + args.meters - 1, 60 + args.meters / 100)
        log = Path(f"/tmp/worker_bench-{os.getpid()}.log")
        worker = subprocess.Popen(
            [sys.executable, "-m", "bridge.worker", "0"],
            cwd=repo, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log.open("wb"),
        )  # fmt: skip
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(payload(repo, args.meters, base, args.interval))
        worker.stdin.flush()
        counts = {"R": 0, "lines": 0, "writes": 0}
        seen: set[bytes] = set()
        out = worker.stdout

        def read() -> None:
            pending = b""
            while True:
                chunk = os.read(out.fileno(), 65536)
                if not chunk:
                    return
                counts["writes"] += 1
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    counts["lines"] += 1
                    if line[:1] == b"R":
                        counts["R"] += 1
                        if len(seen) < args.meters:
                            seen.add(line.partition(b'"meter":')[2][:8])

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 60 + args.meters / 20
        while len(seen) < args.meters and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(args.warmup)
        spy = None
        if args.profile is not None:
            spy = subprocess.Popen(
                ["py-spy", "record", "-p", str(worker.pid), "-d", str(int(args.seconds)),
                 "-r", "250", "-f", "raw", "-o", str(args.profile)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        r0, w0, t0 = dict(counts), cpu(worker.pid), time.monotonic()
        s0 = cpu(sim.pid)[0]
        time.sleep(args.seconds)
        r1, w1, t1 = dict(counts), cpu(worker.pid), time.monotonic()
        s1 = cpu(sim.pid)[0]
        if spy is not None:
            spy.wait()
        readings = r1["R"] - r0["R"]
        elapsed = t1 - t0
        per = 1e6 / max(1, readings)
        print(
            f"{args.meters} meters at {args.interval:g} s, {elapsed:.1f} s: "
            f"{readings / elapsed:.0f} readings/s; worker {(w1[0] - w0[0]) * per:.0f} us "
            f"per reading (kernel {(w1[1] - w0[1]) * per:.0f}), "
            f"{(w1[0] - w0[0]) / elapsed:.2f} cores; "
            f"{(r1['writes'] - r0['writes']) / elapsed:.0f} pipe reads/s, "
            f"{(r1['lines'] - r0['lines'] - readings) / elapsed:.1f} other lines/s; "
            f"simulator {(s1 - s0) * per:.0f} us per reading"
        )
        print(f"(the worker's log: {log})")
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        sim.terminate()
        try:
            sim.wait(15)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()


if __name__ == "__main__":
    main()
