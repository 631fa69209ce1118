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
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

import attrs

from bridge.config import AlarmsConfig

if TYPE_CHECKING:
    from bridge.service import BridgeService
    from bridge.web.tracker import Tracker

__all__ = ["AlarmRules"]

#: Rates are not judged on fewer events than these.
MIN_READINGS = 5
MIN_CYCLES = 3
#: Samples kept per window.
SAMPLES_PER_WINDOW = 20


@attrs.frozen
class _Sample:
    at: float
    taken: int
    published: int
    meters: dict[str, tuple[int, int, int]]  # cycles, successes, resyncs


class AlarmRules:
    """Evaluates the rules; call :meth:`evaluate` about once a second."""

    def __init__(self, service: BridgeService, tracker: Tracker, config: AlarmsConfig) -> None:
        self.service = service
        self.tracker = tracker
        self.config = config
        self._samples: deque[_Sample] = deque()
        self._raised: set[str] = set()
        self._every = max(1.0, config.window_s / SAMPLES_PER_WINDOW)
        self._first_seen: dict[str, float] = {}

    def _set(self, name: str, active: bool, message: str, now_raised: set[str]) -> None:
        # The message of an active alarm is the one it was raised with: numbers that change
        # every second would otherwise rewrite it (and log it) every second.
        if active:
            now_raised.add(name)
            if name not in self._raised or name not in self.service.alarms:
                self.service._set_alarm(name, True, message)
        elif name in self._raised:
            self.service._set_alarm(name, False, message)

    def evaluate(self, last_reading_s: dict[str, float], now: float | None = None) -> None:
        """Raise and clear the rule alarms. ``last_reading_s``: meter -> wall time of its last
        reading."""
        mono = time.monotonic() if now is None else now
        wall = time.time()
        cfg = self.config
        service = self.service
        meters = {
            name: totals.counts
            for name, totals in self.tracker.meters.items()
            if name in service.meters
        }
        taken = sum(t.counts["readings"] for t in self.tracker.meters.values())
        published = service.publisher.stats.published_readings if service.publisher else 0
        if not self._samples or mono - self._samples[-1].at >= self._every:
            self._samples.append(
                _Sample(
                    mono,
                    taken,
                    published,
                    {n: (c["cycles"], c["successes"], c["resyncs"]) for n, c in meters.items()},
                )
            )
        while len(self._samples) > 1 and self._samples[1].at <= mono - cfg.window_s:
            self._samples.popleft()
        base = self._samples[0]
        span = mono - base.at
        raised: set[str] = set()

        d_taken, d_pub = taken - base.taken, published - base.published
        low = d_taken >= MIN_READINGS and d_pub < cfg.publish_ratio_min * d_taken
        self._set(
            "publisher.rate_low", low,
            f"only {d_pub} of {d_taken} readings taken in the last {span:.0f} s were published "
            f"(threshold {cfg.publish_ratio_min:.0%})" if low else "publishing keeps up again",
            raised,
        )  # fmt: skip

        for name, running in service.meters.items():
            self._first_seen.setdefault(name, mono)
            counts = meters.get(name)
            poller = running.poller
            interval = running.meter.interval_s
            if counts is not None:
                b = base.meters.get(name, (0, 0, 0))
                cycles, ok = counts["cycles"] - b[0], counts["successes"] - b[1]
                rate_low = cycles >= MIN_CYCLES and ok < cfg.success_rate_min * cycles
                self._set(
                    f"meter.{name}.success_low", rate_low,
                    f"meter {name}: {ok} of {cycles} cycles succeeded in the last {span:.0f} s "
                    f"(threshold {cfg.success_rate_min:.0%})" if rate_low else "success rate ok",
                    raised,
                )  # fmt: skip
                resyncs = counts["resyncs"] - b[2]
                per_hour = resyncs / span * 3600 if span >= cfg.window_s / 2 else 0.0
                many = name in base.meters and per_hour > cfg.resyncs_per_hour_max
                self._set(
                    f"meter.{name}.resyncs", many,
                    f"meter {name}: {resyncs} link resynchronisations in the last {span:.0f} s "
                    f"({per_hour:.0f}/h, threshold {cfg.resyncs_per_hour_max:g}/h)"
                    if many else "resyncs back to normal",
                    raised,
                )  # fmt: skip
            last = last_reading_s.get(name)
            silent_for = wall - last if last is not None else mono - self._first_seen[name]
            silent = silent_for > cfg.no_reading_intervals * interval
            since = "for" if last is not None else "since it started,"
            self._set(
                f"meter.{name}.no_reading", silent,
                f"meter {name}: no reading {since} {silent_for:.0f} s "
                f"(threshold {cfg.no_reading_intervals} intervals of {interval:g} s)"
                if silent else "readings again",
                raised,
            )  # fmt: skip
            refused = (
                poller is not None
                and poller.stats.state == "failing"
                and "[association." in (poller.stats.last_error or "")
            )
            self._set(
                f"meter.{name}.refused", refused,
                f"meter {name} refuses the association (wrong password or client address?): "
                f"{poller.stats.last_error if poller else ''}" if refused else "association ok",
                raised,
            )  # fmt: skip

        outbox = service.outbox
        if outbox is not None:
            rows, nbytes = outbox.depth()
            limits = service.config.publish
            fraction = max(rows / limits.outbox_max_rows, nbytes / limits.outbox_max_bytes)
            high = fraction > cfg.outbox_high_fraction
            self._set(
                "outbox.high", high,
                f"the outbox is {fraction:.0%} full ({rows} readings, {nbytes} bytes; "
                f"threshold {cfg.outbox_high_fraction:.0%})" if high else "outbox below threshold",
                raised,
            )  # fmt: skip

        # Meters removed since: their rule alarms go with them.
        for name in self._raised - raised:
            if name in service.alarms:
                service._set_alarm(name, False, "cause gone")
        self._raised = raised
        for name in list(self._first_seen):
            if name not in service.meters:
                del self._first_seen[name]
