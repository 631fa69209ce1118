"""Monotonic per-meter totals from the live pollers, for metrics and alarm rules.

A poller's counters start again from zero when it is restarted (a reload, a crash) and its link
counters when it reconnects; the tracker adds up what each poller object counted so that the
totals it reports only ever grow. Cycle latencies are taken from the poller's recent-latency
window at each ``sync``; the console syncs every second, far more often than that window fills.
"""

from __future__ import annotations

import bisect
import operator
from array import array
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

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


#: Every summed counter, in the order of :attr:`MeterTotals.counts`.
COUNTERS = STAT_COUNTERS + LINK_COUNTERS
_INDEX = {name: i for i, name in enumerate(COUNTERS)}
_LINK_BASE = len(STAT_COUNTERS)


class Counts(Mapping[str, int]):
    """A meter's totals by counter name (a read-only view of :class:`MeterTotals`' array)."""

    __slots__ = ("_values",)

    def __init__(self, values: array[int]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> int:
        return self._values[_INDEX[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(COUNTERS)

    def __len__(self) -> int:
        return len(COUNTERS)


#: The bounds in whole microseconds, as latencies are kept (``us / 1e6 <= bound`` exactly
#: when ``us <= round(bound * 1e6)``, for every whole ``us``).
_LATENCY_BUCKETS_US = tuple(round(bound * 1e6) for bound in LATENCY_BUCKETS)
_stat_values = operator.attrgetter(*STAT_COUNTERS)
_SEEN = len(COUNTERS)
_BUCKETS = 2 * len(COUNTERS)
_SIZE = _BUCKETS + len(LATENCY_BUCKETS) + 1


class MeterTotals:
    """What one meter did since the service started.

    Kept in one array of 8-byte integers (a service holds one per meter: dicts cost about
    2 KB a meter): the totals of :data:`COUNTERS`, then the last values seen of the poller's
    counters and of its link counters, then the latency histogram.
    """

    __slots__ = ("_data", "_latency_us", "_link", "_stats", "latency_count")

    def __init__(self) -> None:
        self._data = array("q", bytes(8 * _SIZE))
        #: The latencies' sum, in whole microseconds (as the poller keeps them): a sum of
        #: floats would show its rounding (0.007796000000000001).
        self._latency_us = 0
        self.latency_count = 0
        self._stats: Any = None
        self._link: Any = None

    @property
    def latency_sum(self) -> float:
        """The sum of the latencies counted, seconds."""
        return self._latency_us / 1e6

    @property
    def counts(self) -> Counts:
        """The totals by counter name (:data:`COUNTERS`)."""
        return Counts(self._data)

    @property
    def buckets(self) -> array[int]:
        """Counts per latency bucket of :data:`LATENCY_BUCKETS` (the last: above them all)."""
        return self._data[_BUCKETS:]

    def update(self, poller: HasStats) -> None:
        """Add what ``poller`` counted since the last update."""
        stats = poller.stats
        data = self._data
        if stats is not self._stats:
            # A new poller: its counters (and its link's) start from zero.
            self._stats = stats
            self._link = None
            for i in range(_SEEN, _BUCKETS):
                data[i] = 0
        new_successes = stats.successes - data[_SEEN + _INDEX["successes"]]
        for i, value in enumerate(_stat_values(stats)):
            before = data[_SEEN + i]
            if value != before:
                data[i] += max(0, value - before)
                data[_SEEN + i] = value
        link = stats.link
        if link is not self._link:
            # The link counters are a new dict whenever the poller takes them again.
            self._link = link
            for i, name in enumerate(LINK_COUNTERS, _LINK_BASE):
                value = link.get(name, 0)
                before = data[_SEEN + i]
                # A new session starts its counters from zero.
                data[i] += value - before if value >= before else value
                data[_SEEN + i] = value
        if new_successes > 0:
            # Only the newest, in whole microseconds as kept: no copy of the whole window per
            # meter and round, no conversion to seconds and back.
            newest = stats.latencies.newest_us(new_successes)
            for us in newest:
                data[_BUCKETS + bisect.bisect_left(_LATENCY_BUCKETS_US, us)] += 1
            self._latency_us += sum(newest)
            self.latency_count += len(newest)


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
