"""What crosses the pipes between the service and a worker process, besides readings.

Requests (service -> worker, on the worker's stdin after its start payload), one line each::

    Q{"id": 7, "op": "rpc", "meter": "m0", "timeout": 10.0, ...}

``op`` is one of :data:`OPS`: ``rpc`` (``method``, ``params``, ``synchronised``: a ThingsBoard
RPC run by the meter's poller exactly as in the service), ``read_now`` (the console's read, on the
poller's association), ``set_interval`` (``interval_s``) and ``enable`` (``enabled``: start or
stop the meter's poller). Every request is answered once (worker -> service, on its stdout)::

    P{"id": 7, "result": {...}}
    P{"id": 7, "error": {"code": "timeout", "message": "...", "status": 504}}

Per-meter statistics (worker -> service) go once a second, only for the meters whose counters
changed, at most :data:`STATS_PER_LINE` meters per line; a report looks at no more than
:data:`METERS_PER_REPORT` meters (taken in turn), so that its cost is bounded whatever the fleet:
with more meters each one is reported every few seconds::

    S{"m0": {"g": 3, "f": [12, 12, 0, ...], "lat": [12034], ...}, "m1": null}

``g`` numbers the poller object in the worker: a new one (a restart) starts its counters from
zero. ``f`` holds the :data:`STAT_FIELDS` in their order (both ends run the same code), sent
when any of them changed; when only the counters a successful poll moves changed (the steady
state), ``c`` holds just those, the :data:`POLL_FIELDS` in their order; ``link``, ``units``,
``interval_s``, ``crashes``, ``profiles``, ``clock`` and ``fault`` (the crash summary while the
meter is faulted, :mod:`bridge.supervision`; null once it is not) only when they changed;
``lat`` the latencies of the reads since the last report, in microseconds.
``null`` means the meter is no longer polled there.
:class:`MeterReporter` builds these entries in the worker, :class:`RemoteMeter` keeps them in the
service with the attributes the console reads from a local poller (``stats``, ``units``,
``interval_s``).
"""

from __future__ import annotations

import json
import operator
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from bridge.latency import LatencyWindow
from bridge.poller import PollerStats

if TYPE_CHECKING:
    from bridge.poller import MeterPoller

__all__ = [
    "OPS",
    "POLL_FIELDS",
    "STATS_PER_LINE",
    "MeterReporter",
    "RemoteMeter",
    "WorkerRequestError",
    "chunks",
    "encode_stats",
]

#: The requests a worker carries out.
OPS = ("rpc", "read_now", "set_interval", "enable")
#: Meters per ``S`` line: a line stays far below the pipe's line limit.
STATS_PER_LINE = 200
#: Meters looked at per report (once a second), at most; the next report goes on from there.
#: Reports took ~15% of a worker's CPU at 500 meters a second (py-spy, 1,000 meters at 1 s):
#: with 1,000 meters per worker each is now reported every 4 s (its readings and alarms still
#: reach the service at once; the console's per-meter counters lag by up to that much).
METERS_PER_REPORT = 250
#: Latencies sent per meter and report, at most (the newest).
LATENCIES_PER_REPORT = 32
#: Latencies the service keeps per worker meter for its p50/p95 (a local poller keeps 512): the
#: service holds thousands of these, so they stay small.
REMOTE_LATENCIES = 64
#: The scalar counters and states of :class:`~bridge.poller.PollerStats` that are streamed.
STAT_FIELDS = tuple(
    f.name for f in attrs.fields(PollerStats) if f.name not in ("latencies", "link")
)
_stat_values = operator.attrgetter(*STAT_FIELDS)
#: The counters a successful poll moves (sent alone, as ``c``, when nothing else changed).
POLL_FIELDS = ("cycles", "successes", "readings", "last_success_ms")
_poll_values = operator.attrgetter(*POLL_FIELDS)
_other_values = operator.attrgetter(*(f for f in STAT_FIELDS if f not in POLL_FIELDS))


class WorkerRequestError(Exception):
    """A request to a worker that was not carried out: its code, message and (for the console's
    read) the HTTP status it stands for."""

    def __init__(self, code: str, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def as_json(self) -> dict[str, Any]:
        """The ``error`` of a ``P`` line."""
        return {"code": self.code, "message": self.message, "status": self.status}

    @classmethod
    def from_json(cls, body: Any) -> WorkerRequestError:
        """From the ``error`` of a ``P`` line (anything malformed is an internal error)."""
        if not isinstance(body, dict):
            return cls("internal", "the worker sent a malformed error")
        status = body.get("status")
        return cls(
            str(body.get("code") or "internal"),
            str(body.get("message") or ""),
            status if isinstance(status, int) and 400 <= status <= 599 else 502,
        )


@attrs.define(eq=False)
class _Sent:
    """What was last sent of one poller."""

    poller: object
    generation: int
    #: The :data:`POLL_FIELDS`, and the other :data:`STAT_FIELDS`, as last sent.
    polled: tuple[Any, ...] = ()
    others: tuple[Any, ...] = ()
    link: dict[str, int] = attrs.Factory(dict)
    successes: int = 0
    units: int = -1
    interval_s: float = 0.0
    crashes: int = -1
    profiles: list[dict[str, Any]] | None = None
    clock: object = None
    fault: str | None = None


class MeterReporter:
    """The worker's side: the changes of each poller since the last report."""

    def __init__(self, limit: int = METERS_PER_REPORT) -> None:
        self.limit = limit
        self._sent: dict[str, _Sent] = {}
        self._generations = 0
        self._cursor = 0

    def changes(
        self,
        pollers: dict[str, MeterPoller],
        crashes: dict[str, int],
        faults: dict[str, str] | None = None,
    ) -> dict[str, dict[str, Any] | None]:
        """Entries of the meters whose stats changed (of at most ``limit`` meters, in turn);
        ``None`` for meters no longer polled. ``faults``: the faulted meters' crash summaries."""
        faults = faults or {}
        out: dict[str, dict[str, Any] | None] = {}
        for name in [n for n in self._sent if n not in pollers]:
            del self._sent[name]
            out[name] = None
        names = list(pollers)
        if len(names) > self.limit:
            start = self._cursor % len(names)
            names = (names[start:] + names[:start])[: self.limit]
            self._cursor = start + self.limit
        for name in names:
            entry = self._entry(name, pollers[name], crashes.get(name, 0), faults.get(name))
            if entry is not None:
                out[name] = entry
        return out

    def _entry(
        self, name: str, poller: MeterPoller, crashes: int, fault: str | None = None
    ) -> dict[str, Any] | None:
        sent = self._sent.get(name)
        if sent is None or sent.poller is not poller:
            self._generations += 1
            sent = self._sent[name] = _Sent(poller, self._generations)
        stats = poller.stats
        entry: dict[str, Any] = {}
        others = _other_values(stats)
        if others != sent.others:
            entry["f"] = _stat_values(stats)
            sent.others = others
            sent.polled = _poll_values(stats)
        else:
            polled = _poll_values(stats)
            if polled != sent.polled:
                entry["c"] = polled
                sent.polled = polled
        link = stats.link
        if link is not sent.link:
            # The poller replaces its link counters with a new dict, never changes them in
            # place: the one last sent is kept, not a copy of it (a dict per meter).
            if link != sent.link:
                entry["link"] = link
            sent.link = link
        new = stats.successes - sent.successes
        if new > 0:
            # Whole microseconds, as the window keeps them (no round trip through seconds,
            # whose truncation took 1 us off one value in ~80: 249 us came out 248).
            entry["lat"] = stats.latencies.newest_us(min(new, LATENCIES_PER_REPORT)).tolist()[::-1]
        sent.successes = stats.successes
        if len(poller.units) != sent.units:
            entry["units"] = dict(poller.units)
            sent.units = len(poller.units)
        if poller.interval_s != sent.interval_s:
            entry["interval_s"] = poller.interval_s
            sent.interval_s = poller.interval_s
        if crashes != sent.crashes:
            entry["crashes"] = crashes
            sent.crashes = crashes
        if fault != sent.fault:
            entry["fault"] = fault
            sent.fault = fault
        work = poller.work
        if work.profiles:
            profiles = [p.as_dict() for p in work.profiles]
            if profiles != sent.profiles:
                entry["profiles"] = profiles
                sent.profiles = profiles
        if work.last_clock is not sent.clock:
            sent.clock = work.last_clock
            entry["clock"] = work.last_clock.to_json() if work.last_clock is not None else None
        if not entry:
            return None
        entry["g"] = sent.generation
        return entry


def encode_stats(part: dict[str, dict[str, Any] | None]) -> bytes:
    """One ``S`` line's JSON (keys in any order: cheaper than the outbox's sorted form)."""
    return json.dumps(part, separators=(",", ":"), allow_nan=False).encode()


def chunks(
    entries: dict[str, dict[str, Any] | None], size: int = STATS_PER_LINE
) -> Iterable[dict[str, dict[str, Any] | None]]:
    """``entries`` in pieces of at most ``size`` meters (one ``S`` line each)."""
    items = list(entries.items())
    for start in range(0, len(items), size):
        yield dict(items[start : start + size])


def _shared(value: Any) -> Any:
    """A string from a worker's line as the one copy all meters share (a state, an error
    text, a unit): the service keeps thousands of these, each decoded afresh."""
    return sys.intern(value) if type(value) is str else value


@attrs.define(eq=False)
class RemoteMeter:
    """The service's side: a meter polled in a worker, as its last reports describe it.

    ``stats``, ``units`` and ``interval_s`` are what a local
    :class:`~bridge.poller.MeterPoller` offers the console; ``stats`` is a new object whenever
    the worker started a new poller (so that totals built on it never count twice).
    """

    worker: int
    key: tuple[int, int]
    stats: PollerStats = attrs.Factory(
        lambda: PollerStats(latencies=LatencyWindow(maxlen=REMOTE_LATENCIES))
    )
    units: dict[str, str | None] = attrs.Factory(dict)
    interval_s: float = 0.0
    crashes: int = 0
    profiles: list[dict[str, Any]] = attrs.Factory(list)
    clock: dict[str, Any] | None = None
    #: While the meter is faulted (:mod:`bridge.supervision`): the crash that keeps coming back.
    fault: str | None = None

    def update(self, entry: dict[str, Any]) -> None:
        """Apply one ``S`` entry (already known to be a dict)."""
        stats = self.stats
        fields = entry.get("f")
        if isinstance(fields, list) and len(fields) == len(STAT_FIELDS):
            # A reading that came in since may have told a later success already.
            last = stats.last_success_ms
            for name, value in zip(STAT_FIELDS, fields, strict=True):
                setattr(stats, name, _shared(value))
            if last is not None and (stats.last_success_ms or 0) < last:
                stats.last_success_ms = last
        link = entry.get("link")
        if isinstance(link, dict):
            stats.link = {sys.intern(str(k)): int(v) for k, v in link.items()}
        polled = entry.get("c")
        if isinstance(polled, list) and len(polled) == len(POLL_FIELDS):
            last = stats.last_success_ms
            stats.cycles, stats.successes, stats.readings, stats.last_success_ms = polled
            if last is not None and (stats.last_success_ms or 0) < last:
                stats.last_success_ms = last
        latencies = entry.get("lat")
        if isinstance(latencies, list):
            stats.latencies.extend(x / 1e6 for x in latencies)
        units = entry.get("units")
        if isinstance(units, dict):
            self.units = {
                sys.intern(str(k)): (None if v is None else sys.intern(str(v)))
                for k, v in units.items()
            }
        if "interval_s" in entry:
            self.interval_s = float(entry["interval_s"])
        if "crashes" in entry:
            self.crashes = int(entry["crashes"])
        profiles = entry.get("profiles")
        if isinstance(profiles, list):
            self.profiles = [p for p in profiles if isinstance(p, dict)]
        if "clock" in entry:
            clock = entry["clock"]
            self.clock = clock if isinstance(clock, dict) else None
        if "fault" in entry:
            fault = entry["fault"]
            self.fault = str(fault) if fault is not None else None
