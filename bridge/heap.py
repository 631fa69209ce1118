"""Python's cycle collector, set for a process that keeps thousands of meters' objects.

With CPython's default thresholds (700, 10, 10) an object that outlives a few thousand
allocations - a request in flight for 10 ms is enough at 2,000 polls/s - is promoted to the
oldest generation, and a full collection, which walks every tracked object (~170 per meter:
poller, session, association, link, stats), follows every few seconds. Measured at 2,000 meters
in one process: 150-250 ms per full collection, every ~4 s, during which no poll starts - every
one due then starts late.

Two measures, used by the processes that poll (`dlms-bridge run` and its worker processes;
never by a library user's process, whose heap is not ours):

- `tune_collector`: a higher first threshold, so the objects of one poll are freed before a
  young collection can promote them; full collections become rare.
- `settle`: once the fleet has settled (every meter tried its first cycle, or `SETTLE_LIMIT_S`
  passed), one full collection and `gc.freeze()`: what is alive then (modules, configuration,
  every meter's long-lived objects) is left out of every later collection, so a full
  collection walks only what was made since (measured: 5-9 ms instead of 150-250 ms).

The price, bounded: an object frozen at that moment that later becomes part of unreachable
cycles (a meter's old association after a reconnect) is not reclaimed. At most the heap as it
was when frozen; `refreeze` (after a configuration reload, which replaces meters' objects)
gives the frozen objects back to the collector, collects, and freezes again.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import trio

from bridge.logs import log_event

log = logging.getLogger(__name__)

#: Young-generation threshold (CPython's default is 700): net tracked allocations between two
#: young collections. At 2,000 polls/s this is ~0.1-1 s of work, long enough for a poll's
#: objects to be freed by reference counting before a collection looks at them.
GEN0_THRESHOLD = 20_000
#: Young collections per middle one, middle ones per considered full one.
GEN1_THRESHOLD = 20
GEN2_THRESHOLD = 10
#: The longest wait for the fleet to settle before the heap is frozen anyway.
SETTLE_LIMIT_S = 60.0
#: How often `settle` asks whether the fleet has settled.
SETTLE_POLL_S = 1.0


def tune_collector() -> None:
    """Set the collector's thresholds for a polling process (see the module's docstring)."""
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)


def freeze() -> int:
    """Collect everything unreachable, then leave what is alive out of later collections;
    return how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def refreeze() -> int:
    """Give the frozen objects back to the collector, collect, and freeze what is alive."""
    gc.unfreeze()
    return freeze()


async def settle(
    settled: Callable[[], bool],
    *,
    where: str,
    limit_s: float = SETTLE_LIMIT_S,
    poll_s: float = SETTLE_POLL_S,
) -> int:
    """Wait until ``settled()`` is true (or ``limit_s`` passed), then `freeze`; return how
    many objects are frozen. ``where`` names the process in the log line."""
    with trio.move_on_after(limit_s):
        while not settled():
            await trio.sleep(poll_s)
    started = time.perf_counter()
    count = freeze()
    log_event(
        log, logging.INFO, "heap_frozen", where=where, objects=count,
        seconds=round(time.perf_counter() - started, 3),
    )  # fmt: skip
    return count
