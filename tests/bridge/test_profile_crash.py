"""``dlms-bridge run`` killed with SIGKILL in the middle of a profile backfill: the restarted
bridge leaves no hole in the profile series and sends again at most the range that was being
committed (at-least-once); a clean stop after that sends nothing twice."""

from __future__ import annotations

import json
import math
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_run_cli import bridge_process, write_config

__all__ = ["bridge_process"]

ENERGY = "1-1:1.8.0"
#: Entries in one 3-hour range of 15-minute entries.
PER_RANGE = 12


def profile_ts(sub: Collector) -> list[int]:
    out = []
    for message in sub.on("v1/gateway/telemetry"):
        for entry in json.loads(message.payload).get("m0", []):
            if ENERGY in entry["values"]:
                out.append(int(entry["ts"]))
    return out


def polls_received(sub: Collector) -> int:
    """Poll readings (without the profile's energy column) of m0 received."""
    return sum(
        1
        for message in sub.on("v1/gateway/telemetry")
        for entry in json.loads(message.payload).get("m0", [])
        if ENERGY not in entry["values"]
    )


def stored_polls(*processes: Any) -> int:
    """Poll readings of m0 the processes took (their ``reading_stored`` lines)."""
    return sum(len(p.stored().get("m0", [])) for p in processes)


async def more_polls(process: Any, polls: int) -> None:
    target = stored_polls(process) + polls
    await process.wait_for(lambda: stored_polls(process) >= target, 10, f"{polls} more polls")


def with_profiles(path: Path) -> Path:
    text = path.read_text().replace(
        "[defaults]\n",
        '[defaults]\nprofiles = [{ obis = "1-0:99.1.0", backfill_hours = 24, chunk_hours = 3 }]\n',
    )
    path.write_text(text)
    return path


async def test_kill_9_during_backfill_resends_at_most_one_range(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    bridge_process: Any,
) -> None:
    _sim, ports = await simulator(meters=1)
    sub = collector(["v1/gateway/telemetry"])
    config = with_profiles(
        write_config(tmp_path / "b.toml", mosquitto, {"m0": ports[0]}, data_dir=tmp_path / "d")
    )
    before = time.time()
    with trio.fail_after(90):
        first = await bridge_process(config)
        await first.wait_event("profile_entries")
        first.proc.kill()  # SIGKILL: between a range's commit and its mark, most likely
        assert await first.wait_exit() == -signal.SIGKILL
        second = await bridge_process(config)
        await sub.wait_for(lambda _m: len(set(profile_ts(sub))) >= 96, timeout=40)
        await more_polls(second, 2)
        second.signal(signal.SIGTERM)
        assert await second.wait_exit() == 0
        await sub.wait_for(lambda _m: polls_received(sub) >= stored_polls(first, second), 10)
        delivered_before_restart = len(profile_ts(sub))
        third = await bridge_process(config)
        # The clean restart reads the profile (a new association), then polls on.
        await third.wait_event("profile_read")
        await more_polls(third, 2)
        third.signal(signal.SIGTERM)
        assert await third.wait_exit() == 0
        # Everything it took reached the broker and the subscriber (the outbox is sent in
        # order: profile entries taken before these polls, too).
        total = stored_polls(first, second, third)
        await sub.wait_for(lambda _m: polls_received(sub) >= total, 10)
    after = time.time()
    ts = profile_ts(sub)
    first_quarter = (math.floor((before - 86400) / 900) + 1) * 900_000
    last_quarter = math.floor(after / 900) * 900_000
    unique = sorted(set(ts))
    # No hole: every quarter hour from the first delivered to the last.
    assert unique == list(range(unique[0], unique[-1] + 1, 900_000))
    assert first_quarter <= unique[0] <= first_quarter + 900_000
    assert unique[-1] >= last_quarter - 900_000
    repeated = sum(n - 1 for n in Counter(ts).values())
    print(f"\nkill -9 during backfill: {len(unique)} entries, {repeated} sent twice")
    assert repeated <= PER_RANGE, f"{repeated} entries sent twice"
    # The clean restart sent nothing again (only entries captured since, if any).
    assert len(ts) - delivered_before_restart <= 1
