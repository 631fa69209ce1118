"""Memory per meter: the bridge's RSS at a few fleet sizes, per process, and its slope.

The bridge runs as ``dlms-bridge run`` does in production and as ``benchmarks/fleet.py`` runs it
(its helpers are reused: a private Mosquitto, the simulator as its own process, the same
generated config: N meters at ``--interval``, ``field-meter`` registers, gateway mode). For each
fleet size, once every meter has delivered a reading and after ``--warmup`` seconds, the RSS of
each of the bridge's processes (the supervisor, each worker) is sampled ``--samples`` times a
second apart (the median is kept). The numbers reported:

- per process and in total: RSS at each size, the slope in KiB per extra meter between the
  smallest and the largest size, and the fixed base it implies (RSS at size 0 on that line);
- ``--breakdown``: the same runs with ``tracemalloc`` on in every bridge process (one frame per
  allocation; a ``sitecustomize`` put on the bridge's ``PYTHONPATH`` dumps the allocations by
  source line and the GC-tracked objects by type on SIGUSR2), and the slope of each source line
  and each object type between the sizes: where the bytes of one more meter go.

Each size takes about 20-40 s (simulator start, associations, warm-up); ``--meters 200,2000``
runs in about a minute and a half. ``--json OUT`` writes the numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import REPO, Broker, process_tree, running_bridge, simulator

#: Dumps this process's allocations and objects on SIGUSR2 (only with BRIDGE_MEMORY_PROBE set).
PROBE = """\
import os

_DIR = os.environ.get("BRIDGE_MEMORY_PROBE")
if _DIR:
    import gc
    import json
    import signal
    import sys
    import tracemalloc

    tracemalloc.start(1)

    def _dump(_signum, _frame):
        sites = {}
        for stat in tracemalloc.take_snapshot().statistics("lineno"):
            frame = stat.traceback[0]
            sites[f"{frame.filename}:{frame.lineno}"] = [stat.size, stat.count]
        types = {}
        objects = gc.get_objects()
        for obj in objects:
            name = type(obj).__qualname__
            types[name] = types.get(name, 0) + 1
        body = {"argv": sys.argv, "sites": sites, "types": types, "tracked": len(objects)}
        del objects
        path = os.path.join(_DIR, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(body, f)
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR2, _dump)
"""


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon of ``pid``, KiB (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            out[key] = int(value.split()[0])
    return out


def mappings_kib(pid: int) -> dict[str, int]:
    """RSS of ``pid`` by kind of mapping, KiB: ``heap`` (malloc's: SQLite, large Python
    objects), ``anon`` (other anonymous memory: Python's object arenas, big buffers), ``file``
    (the interpreter, extensions, SQLite files), ``stack``."""
    out = {"heap": 0, "anon": 0, "file": 0, "stack": 0}
    kind = "anon"
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            name = head[5] if len(head) > 5 else ""
            if name == "[heap]":
                kind = "heap"
            elif name.startswith("[stack"):
                kind = "stack"
            elif name.startswith("/"):
                kind = "file"
            else:
                kind = "anon"
        elif line.startswith("Rss:"):
            out[kind] += int(line.split()[1])
    return out


def roles(bridge_pid: int) -> dict[str, int]:
    """The bridge's processes by role: ``supervisor``, ``worker 0``, ``worker 1``, ..."""
    found = {"supervisor": bridge_pid}
    for pid in process_tree(bridge_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"bridge.worker" in argv:
            found[f"worker {argv[argv.index(b'bridge.worker') + 1].decode()}"] = pid
    return found


def measure(
    args: argparse.Namespace, meters: int, work: Path, broker: Broker, probe: Path | None
) -> dict[str, Any]:
    """One fleet size: the RSS of each of the bridge's processes once it is steady."""
    with simulator(meters, work) as (base, _sim):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        dumps = work / f"dumps-{meters}"
        if probe is not None:
            dumps.mkdir()
            env["PYTHONPATH"] = f"{probe}{os.pathsep}{REPO}"
            env["BRIDGE_MEMORY_PROBE"] = str(dumps)
        with running_bridge(args, meters, work, broker, base, env=env, name="memory") as bridge:
            tail = bridge.tail
            print(f"  {meters} meters: {bridge.delivered} delivered, warm-up {args.warmup:g} s",
                  file=sys.stderr)  # fmt: skip
            time.sleep(args.warmup)
            pids = roles(bridge.process.pid)
            samples: dict[str, list[dict[str, int]]] = {role: [] for role in pids}
            for i in range(args.samples):
                if i:
                    time.sleep(1.0)
                for role, pid in pids.items():
                    samples[role].append({**status_kib(pid), **mappings_kib(pid)})
            result: dict[str, Any] = {
                "meters": meters,
                "meters_delivered": bridge.delivered,
                "rss_kib": {
                    r: int(statistics.median(s.get("VmRSS", 0) for s in v))
                    for r, v in samples.items()
                },
                "anon_kib": {
                    r: int(statistics.median(s.get("RssAnon", 0) for s in v))
                    for r, v in samples.items()
                },
                "maps_kib": {
                    r: {
                        k: int(statistics.median(s.get(k, 0) for s in v))
                        for k in ("heap", "anon", "file", "stack")
                    }
                    for r, v in samples.items()
                },
                "summary": {
                    k: tail.summaries[-1][1].get(k)
                    for k in ("readings", "missed", "outbox_rows", "latency_p99_ms")
                }
                if tail.summaries
                else {},
                "errors": tail.errors[:5],
            }
            if probe is not None:
                result["dumps"] = collect_dumps(pids, dumps)  # from the running processes
            return result


def collect_dumps(pids: dict[str, int], directory: Path) -> dict[str, Any]:
    """Ask every process for its allocations and objects (SIGUSR2); wait for the files."""
    for pid in pids.values():
        os.kill(pid, signal.SIGUSR2)
    out: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while len(out) < len(pids) and time.monotonic() < deadline:
        for role, pid in pids.items():
            path = directory / f"{pid}.json"
            if role not in out and path.exists():
                out[role] = json.loads(path.read_text())
        time.sleep(0.2)
    return out


def slope(lo: dict[str, Any], hi: dict[str, Any], key: str) -> dict[str, dict[str, float]]:
    """KiB per extra meter and the implied fixed base, per process and in total."""
    dn = hi["meters"] - lo["meters"]
    out: dict[str, dict[str, float]] = {}
    for role in hi[key]:
        if role not in lo[key]:
            continue
        per = (hi[key][role] - lo[key][role]) / dn
        out[role] = {
            "kib_per_meter": round(per, 2),
            "base_kib": round(lo[key][role] - per * lo["meters"]),
        }
    total_lo, total_hi = sum(lo[key].values()), sum(hi[key].values())
    per = (total_hi - total_lo) / dn
    out["total"] = {
        "kib_per_meter": round(per, 2),
        "base_kib": round(total_lo - per * lo["meters"]),
    }
    return out


def _group(dumps: dict[str, Any], part: str) -> dict[str, dict[str, Any]]:
    """The workers' dumps summed (one group ``workers``), the supervisor's on its own."""
    groups: dict[str, dict[str, Any]] = {}
    for role, body in dumps.items():
        name = "workers" if role.startswith("worker") else role
        into = groups.setdefault(name, {})
        for key, value in body[part].items():
            if isinstance(value, list):
                was = into.get(key, [0, 0])
                into[key] = [was[0] + value[0], was[1] + value[1]]
            else:
                into[key] = into.get(key, 0) + value
    return groups


def _short(site: str) -> str:
    for root in (str(REPO) + os.sep, *sorted(sys.path, key=len, reverse=True)):
        if root and site.startswith(root):
            return site[len(root) :].lstrip(os.sep)
    return site


def breakdown(lo: dict[str, Any], hi: dict[str, Any], top: int) -> dict[str, Any]:
    """Per source line and per object type: bytes and objects per extra meter."""
    dn = hi["meters"] - lo["meters"]
    out: dict[str, Any] = {}
    sites_lo, sites_hi = _group(lo["dumps"], "sites"), _group(hi["dumps"], "sites")
    types_lo, types_hi = _group(lo["dumps"], "types"), _group(hi["dumps"], "types")
    for group in sites_hi:
        a, b = sites_lo.get(group, {}), sites_hi[group]
        rows = []
        for site in set(a) | set(b):
            size = (b.get(site, [0, 0])[0] - a.get(site, [0, 0])[0]) / dn
            count = (b.get(site, [0, 0])[1] - a.get(site, [0, 0])[1]) / dn
            rows.append((size, count, _short(site)))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows)
        ta, tb = types_lo.get(group, {}), types_hi.get(group, {})
        kinds = sorted(
            (((tb.get(t, 0) - ta.get(t, 0)) / dn, t) for t in set(ta) | set(tb)), reverse=True
        )
        out[group] = {
            "traced_bytes_per_meter": round(total),
            "tracked_objects_per_meter": round(sum(k[0] for k in kinds), 1),
            "sites": [
                {"site": s, "bytes_per_meter": round(size), "blocks_per_meter": round(count, 2)}
                for size, count, s in rows[:top]
            ],
            "types": [{"type": t, "per_meter": round(n, 2)} for n, t in kinds[:top]],
        }
    return out


def report(runs: list[dict[str, Any]], slopes: dict[str, Any], parts: dict[str, Any]) -> None:
    sizes = [r["meters"] for r in runs]
    header = f"{'process':<12}" + "".join(f"{f'RSS@{n}':>12}" for n in sizes)
    print()
    print(header + f"{'KiB/meter':>11}{'base KiB':>10}{'anon/meter':>12}")
    for role in [*runs[-1]["rss_kib"], "total"]:
        if role == "total":
            cells = [sum(r["rss_kib"].values()) for r in runs]
        else:
            cells = [r["rss_kib"].get(role, 0) for r in runs]
        s, a = slopes["rss"].get(role, {}), slopes["anon"].get(role, {})
        print(
            f"{role:<12}" + "".join(f"{c:>12,}" for c in cells)
            + f"{s.get('kib_per_meter', 0):>11.2f}{s.get('base_kib', 0):>10,}"
            + f"{a.get('kib_per_meter', 0):>12.2f}"
        )  # fmt: skip
    if len(runs) > 2:
        for step in slopes["steps"]:
            parts = ", ".join(
                f"{role} {v['kib_per_meter']:.2f}"
                for role, v in step.items()
                if isinstance(v, dict)
            )
            print(f"KiB per meter from {step['from']} to {step['to']}: {parts}")
    print("\nKiB per extra meter by kind of mapping (heap: malloc, anon: Python's arenas):")
    for role in runs[-1]["maps_kib"]:
        kinds = slopes["maps"].get(role, {})
        print(f"{role:<12}" + "".join(f"{k:>6} {v:6.2f}" for k, v in kinds.items()))
    for run in runs:
        if run["meters_delivered"] < run["meters"]:
            print(
                f"NOT VALID: only {run['meters_delivered']} of {run['meters']} meters delivered "
                "(a port taken, the machine overloaded): run again"
            )
        if run["errors"]:
            print(f"errors at {run['meters']}: {run['errors']}")
    for group, body in parts.items():
        print(
            f"\n{group}: traced {body['traced_bytes_per_meter']:,} B per meter, "
            f"{body['tracked_objects_per_meter']} GC-tracked objects per meter"
        )
        for row in body["sites"]:
            size, blocks = row["bytes_per_meter"], row["blocks_per_meter"]
            print(f"  {size:>8,} B {blocks:>7} blocks  {row['site']}")
        print(
            "  objects per meter: "
            + ", ".join(f"{t['type']} {t['per_meter']}" for t in body["types"])
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", default="200,2000", help="fleet sizes N1,N2[,N3] (200,2000)")
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, s (1)")
    parser.add_argument(
        "--warmup", type=float, default=8.0, help="s after every meter delivered (8)"
    )
    parser.add_argument("--samples", type=int, default=3, help="RSS samples, 1 s apart (3)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="[bridge] workers (1: what the default gives up to 2,500 polls a second; the same "
        "split at every size keeps the slope about meters only)",
    )
    parser.add_argument("--breakdown", action="store_true", help="tracemalloc in every process")
    parser.add_argument("--top", type=int, default=15, help="source lines and types shown (15)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--work", type=Path, help="keep configs and logs in this directory")
    args = parser.parse_args()
    # What fleet.bridge_config reads besides these.
    args.extra_config, args.shipped_publish, args.outbox_synchronous = [], False, "full"
    sizes = sorted(int(n) for n in args.meters.split(","))
    if len(sizes) < 2:
        parser.error("--meters needs at least two sizes")
    runs = []
    with tempfile.TemporaryDirectory(prefix="memory-") as tmp:
        work = Path(tmp)
        if args.work is not None:
            work = args.work
            work.mkdir(parents=True, exist_ok=True)
        probe = None
        if args.breakdown:
            probe = work / "probe"
            probe.mkdir(exist_ok=True)
            (probe / "sitecustomize.py").write_text(PROBE)
        broker = Broker(work)
        broker.start()
        try:
            for meters in sizes:
                runs.append(measure(args, meters, work, broker, probe))
        finally:
            broker.stop()
    lo, hi = runs[0], runs[-1]
    slopes: dict[str, Any] = {
        "rss": slope(lo, hi, "rss_kib"),
        # Between each size and the next (with three sizes or more: is it a straight line?).
        "steps": [
            {"from": a["meters"], "to": b["meters"], **slope(a, b, "rss_kib")}
            for a, b in itertools.pairwise(runs)
        ],
        "anon": slope(lo, hi, "anon_kib"),
        "maps": {
            role: {
                kind: round(
                    (hi["maps_kib"][role][kind] - lo["maps_kib"][role][kind])
                    / (hi["meters"] - lo["meters"]),
                    2,
                )
                for kind in hi["maps_kib"][role]
            }
            for role in hi["maps_kib"]
            if role in lo["maps_kib"]
        },
    }
    parts = breakdown(lo, hi, args.top) if args.breakdown else {}
    report(runs, slopes, parts)
    if args.json:
        for run in runs:
            run.pop("dumps", None)
        body = {
            "sizes": sizes,
            "interval_s": args.interval,
            "kib_per_meter": slopes["rss"]["total"]["kib_per_meter"],
            "base_kib": slopes["rss"]["total"]["base_kib"],
            "slopes": slopes,
            "breakdown": parts,
            "runs": runs,
            "loadavg": os.getloadavg(),
            "cpus": os.cpu_count(),
        }
        args.json.write_text(json.dumps(body, indent=2) + "\n")


if __name__ == "__main__":
    main()
