"""Backfill benchmark: does live polling keep its cadence while meters catch up on a week of
load profile?

Runs the same fleet of simulated meters twice in one process, over real TCP sockets: first
polling only (the reference), then polling while half of the meters backfill 7 days of 15-minute
entries (672 each) in 24-hour ranges, two at a time box-wide. Prints, for the meters that do not
backfill and for those that do, the poll latency (p50, p95), missed and failed cycles, and the
ratio against the reference; and how long the backfill took.

    python benchmarks/backfill.py              # 40 meters, 1 s interval, 30 s per run
    python benchmarks/backfill.py --quick      # 10 meters, 10 s per run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.config import PRESETS, MeterConfig, ProfileConfig
from bridge.poller import MeterPoller
from bridge.profiles import HighWaterMarks
from bridge.readings import Reading
from bridge.simulator.server import Simulator, SimulatorConfig
from codec.obis import Obis

LOAD_PROFILE = Obis.parse("1-0:99.1.0")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run_fleet(meters: int, interval: float, seconds: float, backfill: bool) -> dict[str, Any]:
    sim = Simulator(SimulatorConfig(meters=meters, port=0))
    limiter = trio.CapacityLimiter(2)
    marks = HighWaterMarks(None)
    entries = 0
    per_meter: dict[str, int] = {}
    done_at: dict[str, float] = {}

    async def sink(reading: Reading) -> None:
        return None

    async with trio.open_nursery() as nursery:
        ports = (await nursery.start(sim.serve)).meters
        pollers = []
        start = trio.current_time()
        for i, port in enumerate(ports):
            profiles: tuple[ProfileConfig, ...] = ()
            if backfill and i % 2 == 1:
                profiles = (ProfileConfig(obis=LOAD_PROFILE, backfill_hours=168, chunk_hours=24),)
            meter = MeterConfig(
                name=f"m{i}", host="127.0.0.1", port=port, password="00000000",
                registers=PRESETS["field-meter"], interval_s=interval, timeout_s=interval * 0.8,
                profiles=profiles,
            )  # fmt: skip

            async def sink_many(readings: Any, name: str = meter.name) -> None:
                nonlocal entries
                entries += len(readings)
                per_meter[name] = per_meter.get(name, 0) + len(readings)
                if per_meter[name] >= 672 and name not in done_at:
                    done_at[name] = trio.current_time() - start

            poller = MeterPoller(
                meter, sink, sink_many=sink_many,
                work_options={"marks": marks, "limiter": limiter},
            )  # fmt: skip
            pollers.append(poller)
            nursery.start_soon(poller.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    elapsed = trio.current_time() - start
    groups: dict[str, list[MeterPoller]] = {
        "steady": [p for p in pollers if not p.meter.profiles],
        "backfilling": [p for p in pollers if p.meter.profiles],
    }
    out: dict[str, Any] = {
        "elapsed": elapsed,
        "entries": entries,
        "backfill_done_s": max(done_at.values()) if done_at else None,
    }
    for name, group in groups.items():
        if not group:
            continue
        latencies = [x for p in group for x in p.stats.latencies]
        out[name] = {
            "meters": len(group),
            "p50_ms": 1000 * quantile(latencies, 0.5),
            "p95_ms": 1000 * quantile(latencies, 0.95),
            "missed": sum(p.stats.missed for p in group),
            "failures": sum(p.stats.failures for p in group),
            "successes": sum(p.stats.successes for p in group),
            "complete": sum(1 for p in group if all(s.entries >= 672 for s in p.work.profiles)),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=40)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.meters, args.seconds = 10, 10.0
    t0 = time.perf_counter()
    reference = trio.run(run_fleet, args.meters, args.interval, args.seconds, False)
    loaded = trio.run(run_fleet, args.meters, args.interval, args.seconds, True)
    ref = reference["steady"]
    print(
        f"{args.meters} meters, {args.interval:g} s interval, {args.seconds:g} s per run "
        f"({time.perf_counter() - t0:.0f} s in all)"
    )
    print(f"{'run':<24}{'meters':>7}{'p50 ms':>9}{'p95 ms':>9}{'missed':>8}{'failed':>8}"
          f"{'p95 / ref':>11}{'backfilled':>12}")  # fmt: skip
    rows = [("polling only (ref)", ref), ("backfill: steady meters", loaded["steady"])]
    rows.append(("backfill: backfilling", loaded["backfilling"]))
    for label, r in rows:
        done = f"{r['complete']}/{r['meters']}" if label.endswith("backfilling") else ""
        print(
            f"{label:<24}{r['meters']:>7}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['missed']:>8}"
            f"{r['failures']:>8}{r['p95_ms'] / ref['p95_ms']:>11.2f}{done:>12}"
        )
    done = loaded["backfill_done_s"]
    when = f"all done after {done:.1f} s" if done is not None else "not all done"
    print(f"profile entries read in the backfill run: {loaded['entries']} ({when})")


if __name__ == "__main__":
    main()
