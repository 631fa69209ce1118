"""The alarms the service raises from what it measures (thresholds in ``[alarms]``).

- ``publisher.rate_low``: fewer than ``publish_ratio_min`` of the readings taken in the window
  were published (the broker refuses, is slow, or the bridge falls behind);
- ``meter.<name>.success_low``: the meter's successful cycles fell below ``success_rate_min``;
- ``meter.<name>.no_reading``: no reading for ``no_reading_intervals`` of its intervals;
- ``meter.<name>.resyncs``: its link resynchronised more than ``resyncs_per_hour_max`` per hour;
- ``meter.<name>.refused``: the meter refuses the association (a wrong password, say);
- ``outbox.high``: the outbox holds more than ``outbox_high_fraction`` of its bound.

Others come from the parts themselves: ``meter.<name>.failing`` (circuit open),
``mqtt.auth_refused`` (token), ``mqtt.session_takeover`` (client-id conflict),
``outbox.overflow`` (dropping readings). Each alarm clears itself once its cause is gone.

The rules are sans-IO: :meth:`AlarmRules.evaluate` takes :class:`Facts` (counters and times
the console collects from the service) and returns the alarms that should be active.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Mapping

import attrs

from bridge.config import AlarmsConfig

__all__ = ["AlarmRules", "Facts", "MeterFacts"]

#: Rates are not judged on fewer events than these.
MIN_READINGS = 5
MIN_CYCLES = 3
#: A meter that has not been read since the bridge started is reported after its intervals
#: without a reading, but not before the fleet had time to open its connections: a second per
#: this many meters (50 s for 5,000; they take turns). One that cannot be reached at all
#: raises `failing` sooner.
START_METERS_PER_S = 100
#: Samples kept per window.
SAMPLES_PER_WINDOW = 20


@attrs.frozen
class MeterFacts:
    """What the rules need to know about one meter."""

    interval_s: float
    cycles: int = 0
    successes: int = 0
    resyncs: int = 0
    #: Wall time of the last reading (s since the epoch), None if none yet.
    last_reading_s: float | None = None
    state: str = "starting"
    last_error: str | None = None


@attrs.frozen
class Facts:
    """One look at the service: monotonic counters and the times they were read at."""

    now: float  # monotonic seconds
    wall: float  # seconds since the epoch
    taken: int
    published: int
    meters: Mapping[str, MeterFacts]
    outbox_rows: int = 0
    outbox_bytes: int = 0
    outbox_max_rows: int = 1
    outbox_max_bytes: int = 1


@attrs.frozen
class _Sample:
    """The counters at one moment. A window holds about 20 of them, each with every meter's:
    kept as three 8-byte integers a meter (cycles, successes, resyncs) in one array, at the
    position ``index`` gives (one index shared by the samples of the same meters)."""

    at: float
    taken: int
    published: int
    index: Mapping[str, int]
    counters: array[int]

    def meter(self, name: str) -> tuple[int, int, int] | None:
        """The meter's (cycles, successes, resyncs) then; None if it was not there."""
        i = self.index.get(name)
        if i is None:
            return None
        c, at = self.counters, 3 * i
        return c[at], c[at + 1], c[at + 2]


class AlarmRules:
    """Evaluates the rules; call :meth:`evaluate` about once a second."""

    def __init__(self, config: AlarmsConfig) -> None:
        self.config = config
        self._samples: deque[_Sample] = deque()
        self._every = max(1.0, config.window_s / SAMPLES_PER_WINDOW)
        self._first_seen: dict[str, float] = {}
        self._active: dict[str, str] = {}

    def evaluate(self, facts: Facts) -> dict[str, str]:
        """The rule alarms that are active now, name -> message.

        An alarm keeps the message it was raised with while it stays active (its numbers would
        otherwise change every second).
        """
        cfg = self.config
        now = facts.now
        if not self._samples or now - self._samples[-1].at >= self._every:
            meters = facts.meters
            index = self._samples[-1].index if self._samples else {}
            if len(index) != len(meters) or any(a != b for a, b in zip(index, meters, strict=True)):
                index = {name: i for i, name in enumerate(meters)}
            counters = array(
                "q", (n for m in meters.values() for n in (m.cycles, m.successes, m.resyncs))
            )
            self._samples.append(_Sample(now, facts.taken, facts.published, index, counters))
        while len(self._samples) > 1 and self._samples[1].at <= now - cfg.window_s:
            self._samples.popleft()
        base = self._samples[0]
        span = now - base.at
        found: dict[str, str] = {}

        d_taken, d_pub = facts.taken - base.taken, facts.published - base.published
        # Judged over half a window at least: the first readings of a start are not yet
        # acknowledged, and that is no alarm.
        judged = span >= cfg.window_s / 2
        if judged and d_taken >= MIN_READINGS and d_pub < cfg.publish_ratio_min * d_taken:
            found["publisher.rate_low"] = (
                f"only {d_pub} of {d_taken} readings taken in the last {span:.0f} s were "
                f"published (threshold {cfg.publish_ratio_min:.0%})"
            )

        start_grace = len(facts.meters) / START_METERS_PER_S
        for name, m in facts.meters.items():
            first = self._first_seen.setdefault(name, now)
            b = base.meter(name)
            # A meter newer than the oldest sample counts from zero, since it appeared.
            m_span = span if b is not None else now - first
            b = b if b is not None else (0, 0, 0)
            cycles, ok = m.cycles - b[0], m.successes - b[1]
            if cycles >= MIN_CYCLES and ok < cfg.success_rate_min * cycles:
                found[f"meter.{name}.success_low"] = (
                    f"meter {name}: {ok} of {cycles} cycles succeeded in the last "
                    f"{m_span:.0f} s (threshold {cfg.success_rate_min:.0%})"
                )
            resyncs = m.resyncs - b[2]
            if m_span >= cfg.window_s / 2 and resyncs / m_span * 3600 > cfg.resyncs_per_hour_max:
                found[f"meter.{name}.resyncs"] = (
                    f"meter {name}: {resyncs} link resynchronisations in the last {m_span:.0f} s "
                    f"({resyncs / m_span * 3600:.0f}/h, threshold {cfg.resyncs_per_hour_max:g}/h)"
                )
            if m.last_reading_s is not None:
                silent_for, since = facts.wall - m.last_reading_s, "for"
                limit = cfg.no_reading_intervals * m.interval_s
            else:
                silent_for, since = now - first, "since it started,"
                limit = max(cfg.no_reading_intervals * m.interval_s, start_grace)
            if silent_for > limit:
                threshold = (
                    f"{cfg.no_reading_intervals} intervals of {m.interval_s:g} s"
                    if limit == cfg.no_reading_intervals * m.interval_s
                    else f"{limit:g} s after the start"
                )
                found[f"meter.{name}.no_reading"] = (
                    f"meter {name}: no reading {since} {silent_for:.0f} s (threshold {threshold})"
                )
            # Between two attempts the poller goes through connecting and associating: the
            # refusal stands until an association succeeds (it must not flap with each retry).
            retrying = m.state in ("failing", "connecting", "associating")
            if retrying and "[association." in (m.last_error or ""):
                found[f"meter.{name}.refused"] = (
                    f"meter {name} refuses the association (wrong password or client "
                    f"address?): {m.last_error}"
                )

        fraction = max(
            facts.outbox_rows / max(1, facts.outbox_max_rows),
            facts.outbox_bytes / max(1, facts.outbox_max_bytes),
        )
        if fraction > cfg.outbox_high_fraction:
            found["outbox.high"] = (
                f"the outbox is {fraction:.0%} full ({facts.outbox_rows} readings, "
                f"{facts.outbox_bytes} bytes; threshold {cfg.outbox_high_fraction:.0%})"
            )

        for name in list(self._first_seen):
            if name not in facts.meters:
                del self._first_seen[name]
        self._active = {name: self._active.get(name, msg) for name, msg in found.items()}
        return dict(self._active)
