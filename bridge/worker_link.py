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
changed, at most :data:`STATS_PER_LINE` meters per line::

    S{"m0": {"g": 3, "cycles": 12, "successes": 12, "lat": [0.012], ...}, "m1": null}

``g`` numbers the poller object in the worker: a new one (a restart) starts its counters from
zero, and then every field is sent. ``null`` means the meter is no longer polled there.
:class:`MeterReporter` builds these entries in the worker, :class:`RemoteMeter` keeps them in the
service with the attributes the console reads from a local poller (``stats``, ``units``,
``interval_s``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from bridge.poller import PollerStats

if TYPE_CHECKING:
    from bridge.poller import MeterPoller

__all__ = [
    "OPS",
    "STATS_PER_LINE",
    "MeterReporter",
    "RemoteMeter",
    "WorkerRequestError",
]

#: The requests a worker carries out.
OPS = ("rpc", "read_now", "set_interval", "enable")
#: Meters per ``S`` line: a line stays far below the pipe's line limit.
STATS_PER_LINE = 200
#: Latencies sent per meter and report, at most (the newest).
LATENCIES_PER_REPORT = 32
#: The scalar counters and states of :class:`~bridge.poller.PollerStats` that are streamed.
STAT_FIELDS = tuple(
    f.name for f in attrs.fields(PollerStats) if f.name not in ("latencies", "link")
)


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
    fields: tuple[Any, ...] = ()
    link: dict[str, int] = attrs.Factory(dict)
    successes: int = 0
    units: int = -1
    interval_s: float = 0.0
    crashes: int = -1
    profiles: list[dict[str, Any]] | None = None
    clock: object = None


class MeterReporter:
    """The worker's side: the changes of each poller since the last report."""

    def __init__(self) -> None:
        self._sent: dict[str, _Sent] = {}
        self._generations = 0

    def changes(
        self, pollers: dict[str, MeterPoller], crashes: dict[str, int]
    ) -> dict[str, dict[str, Any] | None]:
        """Entries of the meters whose stats changed; ``None`` for meters no longer polled."""
        out: dict[str, dict[str, Any] | None] = {}
        for name in [n for n in self._sent if n not in pollers]:
            del self._sent[name]
            out[name] = None
        for name, poller in pollers.items():
            entry = self._entry(name, poller, crashes.get(name, 0))
            if entry is not None:
                out[name] = entry
        return out

    def _entry(self, name: str, poller: MeterPoller, crashes: int) -> dict[str, Any] | None:
        sent = self._sent.get(name)
        if sent is None or sent.poller is not poller:
            self._generations += 1
            sent = self._sent[name] = _Sent(poller, self._generations)
        stats = poller.stats
        entry: dict[str, Any] = {}
        fields = tuple(getattr(stats, f) for f in STAT_FIELDS)
        if fields != sent.fields:
            if sent.fields:
                entry.update(
                    (f, v)
                    for f, v, old in zip(STAT_FIELDS, fields, sent.fields, strict=True)
                    if v != old
                )
            else:
                entry.update(zip(STAT_FIELDS, fields, strict=True))
            sent.fields = fields
        if stats.link != sent.link:
            entry["link"] = dict(stats.link)
            sent.link = dict(stats.link)
        new = stats.successes - sent.successes
        if new > 0:
            newest = list(stats.latencies)[-min(new, LATENCIES_PER_REPORT) :]
            entry["lat"] = [round(x, 5) for x in newest]
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


def chunks(
    entries: dict[str, dict[str, Any] | None], size: int = STATS_PER_LINE
) -> Iterable[dict[str, dict[str, Any] | None]]:
    """``entries`` in pieces of at most ``size`` meters (one ``S`` line each)."""
    items = list(entries.items())
    for start in range(0, len(items), size):
        yield dict(items[start : start + size])


@attrs.define(eq=False)
class RemoteMeter:
    """The service's side: a meter polled in a worker, as its last reports describe it.

    ``stats``, ``units`` and ``interval_s`` are what a local
    :class:`~bridge.poller.MeterPoller` offers the console; ``stats`` is a new object whenever
    the worker started a new poller (so that totals built on it never count twice).
    """

    worker: int
    key: tuple[int, int]
    stats: PollerStats = attrs.Factory(PollerStats)
    units: dict[str, str | None] = attrs.Factory(dict)
    interval_s: float = 0.0
    crashes: int = 0
    profiles: list[dict[str, Any]] = attrs.Factory(list)
    clock: dict[str, Any] | None = None

    def update(self, entry: dict[str, Any]) -> None:
        """Apply one ``S`` entry (already known to be a dict)."""
        stats = self.stats
        for name in STAT_FIELDS:
            if name in entry:
                setattr(stats, name, entry[name])
        link = entry.get("link")
        if isinstance(link, dict):
            stats.link = {str(k): int(v) for k, v in link.items()}
        latencies = entry.get("lat")
        if isinstance(latencies, list):
            stats.latencies.extend(float(x) for x in latencies)
        units = entry.get("units")
        if isinstance(units, dict):
            self.units = {str(k): (None if v is None else str(v)) for k, v in units.items()}
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
