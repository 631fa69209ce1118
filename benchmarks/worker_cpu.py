"""CPU per poll of each process of the bridge, during a fleet run.

``python benchmarks/worker_cpu.py [--window S] -- FLEET-ARGS...`` runs ``benchmarks/fleet.py``
with ``FLEET-ARGS`` (for example ``--meters 2000 --seconds 20 --no-gurux --workers 1``) and,
once its measured window has begun, samples utime + stime of the bridge's processes from
``/proc`` over ``--window`` seconds (15 by default, starting 2 s into the window): the
supervisor (``bridge.cli run``) and each worker (``bridge.worker``), and each process's
threads. Prints the fleet benchmark's own output, then CPU microseconds per poll of each
process, with the polls per second the fleet benchmark counted (split evenly across workers).
``--repo DIR`` runs the fleet benchmark (and so the bridge) of another checkout, for before/after
runs in the same minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import process_tree

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu(path: str) -> float:
    try:
        stat = Path(path).read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _bridge_processes(fleet_pid: int) -> dict[int, str]:
    """The bridge's processes under this fleet run: pid -> role."""
    out: dict[int, str] = {}
    for pid in process_tree(fleet_pid):
        cmd = _cmdline(pid)
        if "bridge.cli run" in cmd:
            out[pid] = "supervisor"
        elif "bridge.worker" in cmd:
            out[pid] = f"worker {cmd.split()[-1]}"
    return out


def _threads(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        key = "main" if tid == str(pid) else name
        out[key] = out.get(key, 0.0) + _cpu(f"/proc/{pid}/task/{tid}/stat")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=15.0, help="seconds sampled (15)")
    parser.add_argument("--skip", type=float, default=2.0, help="s into the window first (2)")
    parser.add_argument("--repo", type=Path, default=REPO, help="run this checkout's fleet.py")
    parser.add_argument("fleet", nargs=argparse.REMAINDER, help="fleet.py's arguments")
    args = parser.parse_args()
    fleet_args = [a for a in args.fleet if a != "--"]
    proc = subprocess.Popen(
        [sys.executable, str(args.repo / "benchmarks" / "fleet.py"), *fleet_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=args.repo,
    )  # fmt: skip
    measuring = threading.Event()
    err: list[str] = []

    def watch_stderr() -> None:
        assert proc.stderr is not None
        while True:
            chunk = proc.stderr.read(256)
            if not chunk:
                return
            err.append(chunk)
            if "measuring" in "".join(err[-2:]):
                measuring.set()

    threading.Thread(target=watch_stderr, daemon=True).start()
    result: dict[str, tuple[float, dict[str, float]]] = {}
    if measuring.wait(timeout=600):
        time.sleep(args.skip)
        pids = _bridge_processes(proc.pid)
        before = {pid: (_cpu(f"/proc/{pid}/stat"), _threads(pid)) for pid in pids}
        t0 = time.monotonic()
        time.sleep(args.window)
        elapsed = time.monotonic() - t0
        for pid, role in pids.items():
            cpu0, threads0 = before[pid]
            threads1 = _threads(pid)
            per_thread = {k: v - threads0.get(k, 0.0) for k, v in threads1.items()}
            result[role] = ((_cpu(f"/proc/{pid}/stat") - cpu0) / elapsed, per_thread)
    out, _ = proc.communicate()
    print(out)
    match = re.search(r"polls/s: ([\d.]+)", out)
    if not result:
        print("worker_cpu: the measured window was not seen", file=sys.stderr)
        raise SystemExit(1)
    polls = float(match.group(1)) if match else float("nan")
    workers = sum(1 for role in result if role.startswith("worker")) or 1
    print(f"CPU per poll over {args.window:g} s ({polls:g} polls/s):")
    for role, (cores, per_thread) in sorted(result.items()):
        share = polls if role == "supervisor" else polls / workers
        threads = ", ".join(
            f"{name} {v / args.window / share * 1e6:.0f}"
            for name, v in sorted(per_thread.items(), key=lambda kv: -kv[1])
            if v > 0
        )
        print(f"  {role}: {cores * 1e6 / share:.0f} us ({cores:.2f} cores; threads: {threads})")


if __name__ == "__main__":
    main()
