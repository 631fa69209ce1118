"""The console's monotonic per-meter totals (bridge.web.tracker)."""

from __future__ import annotations

import bisect
from types import SimpleNamespace
from typing import Any

from bridge.poller import PollerStats
from bridge.web.tracker import COUNTERS, LATENCY_BUCKETS, Tracker


def poller(stats: PollerStats) -> Any:
    return SimpleNamespace(stats=stats)


def test_totals_only_grow_across_restarts_and_reconnects() -> None:
    tracker = Tracker()
    stats = PollerStats()
    p = poller(stats)
    stats.cycles, stats.successes = 3, 2
    stats.latencies.extend([0.005, 0.2])
    stats.link = {"resyncs": 1, "retransmissions": 2}
    totals = tracker.update("m", p)
    assert (totals.counts["cycles"], totals.counts["successes"]) == (3, 2)
    assert (totals.counts["resyncs"], totals.counts["retransmissions"]) == (1, 2)
    assert totals.latency_count == 2 and abs(totals.latency_sum - 0.205) < 1e-9
    assert totals.buckets[0] == 1 and totals.buckets[LATENCY_BUCKETS.index(0.25)] == 1
    # Nothing new: nothing added (the same link dict is not counted twice).
    tracker.update("m", p)
    assert totals.counts["cycles"] == 3 and totals.counts["resyncs"] == 1
    # More polls; the link counters taken again (a new dict), then a reconnect (from zero).
    stats.cycles, stats.successes = 5, 4
    stats.latencies.extend([0.03, 0.04])
    stats.link = {"resyncs": 3, "retransmissions": 2}
    tracker.update("m", p)
    assert (totals.counts["cycles"], totals.counts["resyncs"]) == (5, 3)
    assert totals.latency_count == 4
    stats.link = {"resyncs": 1}
    tracker.update("m", p)
    assert totals.counts["resyncs"] == 4 and totals.counts["retransmissions"] == 2
    # A restarted poller (new stats) counts from zero again.
    fresh = PollerStats()
    fresh.cycles = fresh.successes = 1
    fresh.latencies.append(0.001)
    tracker.update("m", poller(fresh))
    assert (totals.counts["cycles"], totals.counts["successes"]) == (6, 5)
    assert totals.latency_count == 5


def test_counts_read_as_a_mapping_of_every_counter() -> None:
    tracker = Tracker()
    stats = PollerStats()
    stats.cycles, stats.failures, stats.reconnects = 7, 2, 1
    stats.link = {"bytes_discarded": 40}
    totals = tracker.update("m", poller(stats))
    counts = dict(totals.counts)
    assert set(counts) == set(COUNTERS) and len(totals.counts) == len(COUNTERS)
    assert counts["cycles"] == 7 and counts["failures"] == 2 and counts["reconnects"] == 1
    assert counts["bytes_discarded"] == 40 and counts["successes"] == 0
    assert totals.counts.get("missed", -1) == 0
    assert totals.counts.get("no_such_counter") is None
    # A restarted poller whose link was never taken: its link counters start from zero.
    fresh = PollerStats()
    fresh.link = {"bytes_discarded": 5}
    tracker.update("m", poller(fresh))
    assert totals.counts["bytes_discarded"] == 45


def test_the_latency_sum_is_exact_in_microseconds() -> None:
    tracker = Tracker()
    stats = PollerStats()
    durations = [0.004217, 0.2, 0.1]
    stats.successes = len(durations)
    stats.latencies.extend(durations)
    totals = tracker.update("m", poller(stats))
    assert totals.latency_count == 3
    # Summed as floats (newest first) this is 0.30421700000000007; the metrics show the sum.
    assert 0.1 + 0.2 + 0.004217 != 0.304217
    assert repr(totals.latency_sum) == "0.304217"


def test_latencies_fall_in_the_buckets_their_seconds_fall_in() -> None:
    """Latencies are bucketed by their whole microseconds, as kept: each lands where its
    seconds would by the bounds in seconds, at and around every bound."""
    durations_us = sorted(
        {max(0, round(bound * 1e6) + d) for bound in LATENCY_BUCKETS for d in (-1, 0, 1)}
        | {0, 31_000_000, 4_294_967_295}
    )
    tracker = Tracker()
    stats = PollerStats()
    for us in durations_us:
        stats.latencies.append(us / 1e6)
    stats.successes = len(durations_us)
    totals = tracker.update("m", poller(stats))
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    for us in durations_us:
        expected[bisect.bisect_left(LATENCY_BUCKETS, us / 1e6)] += 1
    assert list(totals.buckets) == expected
    assert totals.latency_count == len(durations_us)
    assert totals.latency_sum == sum(durations_us) / 1e6
