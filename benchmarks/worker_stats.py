"""What the per-meter stats of worker processes cost, against what their readings cost.

With ``[bridge] workers``, each worker reports the counters of the meters that changed once a
second (:mod:`bridge.worker_link`), and every reading crosses the same pipe as JSON. This measures,
in one run, both sides of both: per polled meter, the worker building and encoding its stats
entry and the service decoding and applying it, against encoding and decoding one reading of the
field meter's five registers. Every meter is polled once between two reports (1 s polls), which
is the worst case for the stats.

``python benchmarks/worker_stats.py [--meters N] [--rounds R] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.config import config_from_dict
from bridge.poller import MeterPoller
from bridge.readings import Reading
from bridge.worker_link import MeterReporter, RemoteMeter, chunks, encode_stats


def _pollers(count: int) -> dict[str, MeterPoller]:
    document = {
        "bridge": {"name": "bench", "data_dir": "unused"},
        "mqtt": {"host": "127.0.0.1"},
        "defaults": {"registers": "field-meter", "interval_s": 1.0, "timeout_s": 0.3},
        "meters": [{"name": f"m{i}", "host": "127.0.0.1", "port": 1024 + i} for i in range(count)],
    }

    async def sink(_reading: Reading) -> None:
        raise AssertionError("not polled")

    pollers = {m.name: MeterPoller(m, sink) for m in config_from_dict(document).meters}
    for poller in pollers.values():
        poller.units.update(
            active_energy="Wh", active_power="W", current_l1="A", frequency="Hz", voltage_l1="V"
        )
    return pollers


def _poll(pollers: dict[str, MeterPoller], rng: random.Random, now_ms: int) -> list[Reading]:
    """What one poll of every meter changes, and the readings it takes."""
    readings = []
    for name, poller in pollers.items():
        stats = poller.stats
        stats.cycles += 1
        stats.successes += 1
        stats.readings += 1
        stats.state = "ok"
        stats.last_success_ms = now_ms
        stats.latencies.append(0.002 + rng.random() * 0.01)
        stats.link = {"retransmissions": 0, "resyncs": 0, "stale_responses": 0}
        values = {
            "active_energy": 1234567.0 + rng.random(),
            "active_power": 1500.0 + rng.random() * 100,
            "current_l1": 6.5 + rng.random(),
            "frequency": 50.0 + rng.random() / 10,
            "voltage_l1": 230.0 + rng.random(),
        }
        readings.append(Reading(name, now_ms, values))
    return readings


def measure(meters: int, rounds: int) -> dict[str, Any]:
    rng = random.Random(1)
    pollers = _pollers(meters)
    reporter = MeterReporter(limit=max(meters, 1))  # every meter each report: the cost per meter
    remote: dict[str, RemoteMeter] = {}
    worker_s = service_s = readings_s = 0.0
    stats_bytes = reading_bytes = 0
    reporter.changes(pollers, {})  # the first report carries everything once
    for k in range(rounds):
        readings = _poll(pollers, rng, 1_800_000_000_000 + 1000 * k)
        t0 = time.perf_counter()
        lines = [encode_stats(part) for part in chunks(reporter.changes(pollers, {}))]
        t1 = time.perf_counter()
        for line in lines:
            for name, entry in json.loads(line).items():
                if entry is None:
                    continue
                key = (1, entry["g"])
                got = remote.get(name)
                if got is None or got.key != key:
                    got = remote[name] = RemoteMeter(0, key)
                got.update(entry)
        t2 = time.perf_counter()
        encoded = [r.to_json() for r in readings]
        decoded = [Reading.from_json(b) for b in encoded]
        t3 = time.perf_counter()
        assert len(decoded) == meters
        worker_s += t1 - t0
        service_s += t2 - t1
        readings_s += t3 - t2
        stats_bytes += sum(len(line) for line in lines)
        reading_bytes += sum(len(b) for b in encoded)
    polls = meters * rounds
    stats_us = (worker_s + service_s) / polls * 1e6
    reading_us = readings_s / polls * 1e6
    return {
        "meters": meters,
        "rounds": rounds,
        "stats_worker_us_per_meter": round(worker_s / polls * 1e6, 2),
        "stats_service_us_per_meter": round(service_s / polls * 1e6, 2),
        "stats_bytes_per_meter": round(stats_bytes / polls, 1),
        "reading_pipe_us_per_meter": round(reading_us, 2),
        "reading_bytes_per_meter": round(reading_bytes / polls, 1),
        "stats_over_reading": round(stats_us / reading_us, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=2500)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args.meters, args.rounds)
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
