"""Monotonic per-meter totals from the live pollers, for metrics and alarm rules.

A poller's counters start again from zero when it is restarted (a reload, a crash) and its link
counters when it reconnects; the tracker adds up what each poller object counted so that the
totals it reports only ever grow. Cycle latencies are taken from the poller's recent-latency
window at each ``sync``; the console syncs every second, far more often than that window fills.
"""

from __future__ import annotations

import bisect
import itertools
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    from bridge.poller import PollerStats

__all__ = ["LATENCY_BUCKETS", "MeterTotals", "Tracker"]

#: Upper bounds (seconds) of the cycle latency histogram.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Poller counters that are summed.
STAT_COUNTERS = (
    "cycles",
    "successes",
    "failures",
    "missed",
    "readings",
    "recovered_in_place",
    "reassociations",
    "reconnects",
)
#: Link counters that are summed.
LINK_COUNTERS = ("resyncs", "bytes_discarded", "retransmissions", "bad_fcs", "stale_responses")


class HasStats(Protocol):
    """A poller, here or in a worker process (:class:`bridge.worker_link.RemoteMeter`)."""

    @property
    def stats(self) -> PollerStats:
        """Its counters (a new object when the poller was restarted)."""


@attrs.define(eq=False)
class MeterTotals:
    """What one meter did since the service started."""

    counts: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(STAT_COUNTERS + LINK_COUNTERS, 0))
    buckets: list[int] = attrs.Factory(lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0
    _stats: Any = None
    _stat_seen: dict[str, int] = attrs.Factory(dict)
    _link_seen: dict[str, int] = attrs.Factory(dict)
    _link: Any = None

    def update(self, poller: HasStats) -> None:
        """Add what ``poller`` counted since the last update."""
        stats = poller.stats
        seen = self._stat_seen
        if stats is not self._stats:
            self._stats = stats
            seen = self._stat_seen = {}
            self._link_seen = {}
            self._link = None
        counts = self.counts
        new_successes = stats.successes - seen.get("successes", 0)
        for name in STAT_COUNTERS:
            value = getattr(stats, name)
            before = seen.get(name, 0)
            if value != before:
                counts[name] += max(0, value - before)
                seen[name] = value
        link = stats.link
        if link is not self._link:
            # The link counters are a new dict whenever the poller takes them again.
            self._link = link
            link_seen = self._link_seen
            for name in LINK_COUNTERS:
                value = link.get(name, 0)
                before = link_seen.get(name, 0)
                # A new session starts its counters from zero.
                counts[name] += value - before if value >= before else value
                link_seen[name] = value
        if new_successes > 0:
            # Only the newest: no copy of the whole window per meter and second.
            buckets = self.buckets
            total = 0.0
            taken = 0
            for seconds in itertools.islice(reversed(stats.latencies), new_successes):
                buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
                total += seconds
                taken += 1
            self.latency_sum += total
            self.latency_count += taken


class Tracker:
    """Totals of every meter seen (removed meters keep theirs until forgotten)."""

    def __init__(self) -> None:
        self.meters: dict[str, MeterTotals] = {}

    def update(self, name: str, poller: HasStats | None) -> MeterTotals:
        """Update and return one meter's totals."""
        totals = self.meters.get(name)
        if totals is None:
            totals = self.meters[name] = MeterTotals()
        if poller is not None:
            totals.update(poller)
        return totals

    def forget(self, keep: set[str]) -> None:
        """Drop meters not in ``keep`` (removed from the service)."""
        for name in list(self.meters):
            if name not in keep:
                del self.meters[name]
