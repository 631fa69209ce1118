"""What a meter's poller does between its polls, on the same association.

- **Requests** (ThingsBoard RPCs) submitted with :meth:`MeterWork.submit` run first, one at a
  time: serialised with the polls, never a second association to the meter.
- **Clock health**: every ``clock.check_s`` the meter's clock is read; its drift from the box's
  clock (meter minus box, seconds, the request's round trip halved) is delivered as the
  ``clock_drift_s`` telemetry key; a drift past ``clock.drift_alarm_s`` raises the
  ``meter.<name>.clock_drift`` alarm; with ``clock.auto_sync`` a drift between
  ``sync_threshold_s`` and ``sync_max_s`` is corrected, but only while the box's own clock is
  synchronised (:func:`box_clock_synchronised`).
- **Profiles** (:mod:`bridge.profiles`): one range per pause between polls at least, more while
  the pause lasts; at most ``BACKFILL_SLOTS`` meters of the box read a range at the same moment
  (the ``limiter``: the service's, or each worker process's share of it), so that a fleet
  catching up after an outage leaves CPU and the outbox to live polling.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from bridge.logs import log_event
from bridge.profiles import (
    MAX_ENTRIES_PER_READ,
    SETTLE_S,
    HighWaterMarks,
    ProfileState,
    entries_from_buffer,
    next_due_wall,
    read_buffer_entries,
    read_buffer_range,
    read_layout,
)
from bridge.readings import Reading
from bridge.session import MeterIOError, MeterSession
from codec.apdu import AttributeDescriptor
from codec.axdr import Data
from codec.cosem_time import CosemDateTime
from codec.errors import DataAccessError, ProtocolError, RemoteProtocolError
from codec.obis import Obis

if TYPE_CHECKING:
    from bridge.poller import MeterPoller

__all__ = [
    "CLOCK_TIME",
    "ClockReading",
    "MeterWork",
    "RequestFailed",
    "box_clock_synchronised",
    "read_clock",
    "sync_clock",
]

log = logging.getLogger("bridge.meter_work")

CLOCK_TIME = AttributeDescriptor(8, Obis(0, 0, 1, 0, 0, 255), 2)
_UTC = _dt.UTC
#: How long a profile range may take (reply timeouts): a day of entries is a long GET.
_RANGE_BUDGET_TIMEOUTS = 12
#: The first clock check comes this long after the poller starts (or ``check_s``, if shorter).
FIRST_CLOCK_CHECK_S = 300.0
#: How long committing a range's entries and writing its mark may hold up a stop.
_COMMIT_BUDGET_S = 30.0
#: Requests waiting for their meter, at most; more are refused at once.
MAX_QUEUED_REQUESTS = 16


class RequestFailed(Exception):
    """A request between polls could not be carried out; the message says why."""

    def __init__(self, message: str, *, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


# -- the box's clock -----------------------------------------------------------------------------

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5
_MAXERROR_LIMIT_US = 16_000_000


def box_clock_synchronised() -> bool:
    """Whether the box's clock is synchronised, as systemd-timesyncd and ``timedatectl`` tell it.

    The kernel's NTP state (``adjtimex``: not TIME_ERROR, STA_UNSYNC clear, maximum error under
    16 s) is what ``timedatectl``'s NTPSynchronized reports; where it cannot be read, the flag
    file systemd-timesyncd keeps, ``/run/systemd/timesync/synchronized``, decides.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        # struct timex is 208 bytes on 64-bit Linux: modes (int + pad), offset, freq, maxerror,
        # esterror (longs), status (int), ...
        buffer = ctypes.create_string_buffer(256)
        state = libc.adjtimex(buffer)
        if state >= 0 and ctypes.sizeof(ctypes.c_long) == 8:
            maxerror = int.from_bytes(buffer.raw[24:32], "little", signed=True)
            status = int.from_bytes(buffer.raw[40:44], "little", signed=True)
            return (
                state != _TIME_ERROR
                and not status & _STA_UNSYNC
                and 0 <= maxerror < _MAXERROR_LIMIT_US
            )
    except (OSError, AttributeError):
        pass
    return os.path.exists("/run/systemd/timesync/synchronized")


# -- clock requests ------------------------------------------------------------------------------


@attrs.frozen
class ClockReading:
    """The meter's clock against the box's at one moment."""

    meter_time: _dt.datetime
    box_time: _dt.datetime
    drift_s: float
    status: int | None

    def to_json(self) -> dict[str, Any]:
        """JSON-safe view."""
        return {
            "meter_time": self.meter_time.isoformat(),
            "box_time": self.box_time.isoformat(),
            "drift_s": round(self.drift_s, 3),
            "clock_status": self.status,
        }


def _date_time(data: Data) -> CosemDateTime:
    value = data.value
    if isinstance(value, CosemDateTime):
        return value
    if isinstance(value, bytes) and len(value) == 12:
        return CosemDateTime.from_bytes(value)
    raise RemoteProtocolError(
        f"the clock's time is {data.type.name}, not a date-time", code="clock.bad_time"
    )


async def read_clock(session: MeterSession, wall_clock: Callable[[], float]) -> ClockReading:
    """Read the meter's clock; the drift is taken against the middle of the round trip."""
    t0 = wall_clock()
    data = await session.get(CLOCK_TIME)
    t1 = wall_clock()
    stamp = _date_time(data)
    meter_time = stamp.to_datetime(default_tz=_UTC)
    box = (t0 + t1) / 2
    return ClockReading(
        meter_time=meter_time,
        box_time=_dt.datetime.fromtimestamp(box, _UTC),
        drift_s=meter_time.timestamp() - box,
        status=None if stamp.clock_status is None else int(stamp.clock_status),
    )


async def sync_clock(
    session: MeterSession,
    wall_clock: Callable[[], float],
    *,
    threshold_s: float,
    max_s: float | None = None,
    synchronised: Callable[[], bool] = box_clock_synchronised,
) -> dict[str, Any]:
    """Set the meter's clock from the box's when the drift exceeds ``threshold_s``.

    Refused (:class:`RequestFailed`) when the box's clock is not synchronised, or when the drift
    is over ``max_s``. The time is written in the deviation the meter itself uses.
    """
    if not synchronised():
        raise RequestFailed(
            "the box's clock is not synchronised (NTP, systemd-timesyncd): refusing to set the "
            "meter's clock from it",
            code="box_clock_unsynchronised",
        )
    before = await read_clock(session, wall_clock)
    drift = before.drift_s
    if abs(drift) < threshold_s:
        return {"synced": False, "drift_s": round(drift, 3), "threshold_s": threshold_s}
    if max_s is not None and abs(drift) > max_s:
        raise RequestFailed(
            f"the meter's clock is {drift:+.1f} s off, more than the {max_s:g} s the bridge may "
            "correct on its own",
            code="drift_too_large",
        )
    raw = await session.get(CLOCK_TIME)
    stamp = _date_time(raw)
    now = _dt.datetime.fromtimestamp(wall_clock(), _UTC)
    if stamp.deviation is None:
        target = CosemDateTime.from_datetime(now.replace(tzinfo=None))
    else:
        zone = stamp.to_datetime().tzinfo
        target = CosemDateTime.from_datetime(now.astimezone(zone))
    assert session.client is not None
    await session.run(session.client.set(CLOCK_TIME, Data.octet_string(target.to_bytes())))
    after = await read_clock(session, wall_clock)
    return {
        "synced": True,
        "drift_before_s": round(drift, 3),
        "drift_after_s": round(after.drift_s, 3),
    }


# -- jobs ----------------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Job:
    fn: Callable[[MeterSession], Awaitable[Any]]
    done: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: BaseException | None = None
    abandoned: bool = False


# -- the work ------------------------------------------------------------------------------------


_NO_MARKS = HighWaterMarks(None)


class MeterWork:
    """The between-polls work of one poller; see the module docstring."""

    def __init__(
        self,
        poller: MeterPoller,
        *,
        marks: HighWaterMarks | None = None,
        limiter: trio.CapacityLimiter | None = None,
        synchronised: Callable[[], bool] = box_clock_synchronised,
    ) -> None:
        self.poller = poller
        self.meter = poller.meter
        if marks is None:
            # In memory only; a meter without profiles writes none: one for all of them.
            marks = HighWaterMarks(None) if poller.meter.profiles else _NO_MARKS
        self.marks = marks
        self.limiter = limiter
        self.synchronised = synchronised
        self.profiles = [
            ProfileState(p, mark=self.marks.get(self.meter.name, p.obis))
            for p in self.meter.profiles
        ]
        #: Trio time of the next clock check (set when the poller starts).
        self.clock_due: float | None = None
        self.last_clock: ClockReading | None = None
        #: Requests waiting (at most MAX_QUEUED_REQUESTS: a list, lighter than a deque).
        self._jobs: list[_Job] = []
        #: Set while the poller sleeps in :meth:`sleep_until` (made then: most meters are
        #: parked in the engine most of the time and never need one).
        self._wakeup: trio.Event | None = None
        #: :meth:`poke` came while the poller was not sleeping: its next sleep returns at once.
        self._poked = False
        self._may_read_range = True

    # -- the poller's side -------------------------------------------------------------------

    def poke(self) -> None:
        """Wake the poller from its pause (taking its meter back from the engine)."""
        if self._wakeup is not None:
            self._wakeup.set()
        else:
            self._poked = True
        engine = self.poller.engine
        if engine is not None:
            engine.release(self.poller)

    def idle_before(self, at: float) -> bool:
        """Whether there is no work to do before ``at`` (no request waiting, no profile
        pending, the clock check not due)."""
        if self._jobs or (self.meter.clock.check_s > 0 and self.clock_due is None):
            return False  # requests waiting, or the clock checks not scheduled yet
        now = trio.current_time()
        generation = self.poller.generation
        if any(state.pending(now, generation) for state in self.profiles):
            return False
        return self.wake_at() > at

    def new_pause(self) -> None:
        """A poll just ended: the next pause may read one profile range whatever its length."""
        self._may_read_range = True

    def wake_at(self) -> float:
        """When the pause should be interrupted for work that falls due."""
        session = self.poller.session
        if session is None or not session.is_open:
            return math.inf
        wake = math.inf
        if self.meter.clock.check_s > 0 and self.clock_due is not None:
            wake = self.clock_due
        now = trio.current_time()
        for state in self.profiles:
            # A profile already pending waits for the pause after the next poll (the pause was
            # too short for it): waking for it now would only spin.
            if not state.pending(now, self.poller.generation):
                wake = min(wake, state.due)
        return wake

    async def sleep_until(self, wake: float) -> None:
        """Sleep until ``wake`` or until a request arrives (or :meth:`poke`)."""
        if self._jobs:
            return
        if self._poked:
            self._poked = False
            await trio.lowlevel.checkpoint()
            return
        self._wakeup = wakeup = trio.Event()
        try:
            with trio.move_on_at(wake):
                await wakeup.wait()
        finally:
            self._wakeup = None

    async def run(self, *, until: float) -> None:
        """Do what is due, leaving the poll due at ``until`` its time."""
        await self._run_jobs()
        session = self.poller.session
        if session is None or not session.is_open:
            return
        now = trio.current_time()
        check_s = self.meter.clock.check_s
        if self.clock_due is None:
            self.clock_due = now + min(check_s, FIRST_CLOCK_CHECK_S)
        if check_s > 0 and now >= self.clock_due:
            await self._check_clock()
        margin = 2 * self.meter.timeout_s
        for state in self.profiles:
            while self._open() and state.pending(trio.current_time(), self.poller.generation):
                if not self._may_read_range and trio.current_time() + margin > until:
                    return
                self._may_read_range = False
                complete = await self._read_range(state)
                await self._run_jobs()
                if complete:
                    break

    def _open(self) -> bool:
        session = self.poller.session
        return session is not None and session.is_open

    # -- requests ----------------------------------------------------------------------------

    async def submit(self, fn: Callable[[MeterSession], Awaitable[Any]], timeout: float) -> Any:
        """Run ``fn(session)`` on the meter's association between two polls; return its result.

        Raises :class:`RequestFailed` when the meter cannot be reached, the request queue is
        full, or nothing came back within ``timeout`` seconds (the request is then dropped if
        it has not started); errors of ``fn`` itself are raised as they are.
        """
        if len(self._jobs) >= MAX_QUEUED_REQUESTS:
            raise RequestFailed(
                f"meter {self.meter.name} has {len(self._jobs)} requests waiting already",
                code="busy",
            )
        job = _Job(fn)
        self._jobs.append(job)
        self.poke()
        with trio.move_on_after(timeout):
            await job.done.wait()
        if not job.done.is_set():
            job.abandoned = True
            raise RequestFailed(
                f"meter {self.meter.name} did not answer within {timeout:g} s", code="timeout"
            )
        if job.error is not None:
            raise job.error
        return job.result

    async def _run_jobs(self) -> None:
        while self._jobs:
            job = self._jobs.pop(0)
            if job.abandoned:
                continue
            try:
                job.result = await self._run_job(job)
            except (ProtocolError, MeterIOError, RequestFailed, ValueError) as exc:
                job.error = exc
            except Exception as exc:
                # A bug in a request must not take the meter's polling down with it.
                log.exception("meter=%s event=request_crashed", self.meter.name)
                job.error = RequestFailed(
                    f"the request failed inside the bridge ({type(exc).__name__}); see its log",
                    code="internal",
                )
            finally:
                job.done.set()

    async def _run_job(self, job: _Job) -> Any:
        poller = self.poller
        budget = 3 * 4 * self.meter.timeout_s
        try:
            with trio.fail_after(budget):
                session = await poller.ensure_session()
                result = await job.fn(session)
        except trio.TooSlowError:
            await poller.recover(trio.TooSlowError())
            raise RequestFailed(
                f"meter {self.meter.name} did not complete the request within {budget:g} s",
                code="timeout",
            ) from None
        except (ProtocolError, MeterIOError) as exc:
            await poller.recover(exc)
            raise
        poller.note_activity()
        poller.stats.requests += 1
        return result

    # -- clock health ------------------------------------------------------------------------

    async def _check_clock(self) -> None:
        poller = self.poller
        cfg = self.meter.clock
        self.clock_due = trio.current_time() + cfg.check_s
        session = poller.session
        assert session is not None
        try:
            with trio.fail_after(3 * self.meter.timeout_s):
                reading = await read_clock(session, poller.wall_clock)
        except (ProtocolError, MeterIOError, trio.TooSlowError) as exc:
            log_event(
                log, logging.INFO, "clock_check_failed", meter=self.meter.name, error=str(exc)
            )
            await poller.recover(exc)
            return
        poller.note_activity()
        poller.stats.clock_checks += 1
        self.last_clock = reading
        drift = round(reading.drift_s, 3)
        await poller.sink(
            Reading(self.meter.name, int(poller.wall_clock() * 1000), {"clock_drift_s": drift})
        )
        alarm = f"meter.{self.meter.name}.clock_drift"
        too_far = abs(drift) > cfg.drift_alarm_s
        if poller.on_alarm is not None:
            message = (
                f"meter {self.meter.name} clock is {drift:+.1f} s off the box's clock "
                f"(alarm past {cfg.drift_alarm_s:g} s)"
            )
            poller.on_alarm(alarm, too_far, message)
        if cfg.auto_sync and cfg.sync_threshold_s <= abs(drift) <= cfg.sync_max_s:
            try:
                with trio.fail_after(4 * 3 * self.meter.timeout_s):
                    result = await sync_clock(
                        session,
                        poller.wall_clock,
                        threshold_s=cfg.sync_threshold_s,
                        max_s=cfg.sync_max_s,
                        synchronised=self.synchronised,
                    )
            except RequestFailed as exc:
                log_event(
                    log, logging.WARNING, "clock_sync_refused", meter=self.meter.name,
                    drift_s=drift, reason=str(exc),
                )  # fmt: skip
                return
            except (ProtocolError, MeterIOError, trio.TooSlowError) as exc:
                log_event(
                    log, logging.WARNING, "clock_sync_failed", meter=self.meter.name,
                    error=str(exc),
                )  # fmt: skip
                await poller.recover(exc)
                return
            log_event(log, logging.INFO, "clock_synced", meter=self.meter.name, **result)
            if poller.on_alarm is not None and too_far:
                poller.on_alarm(alarm, False, f"meter {self.meter.name} clock was set")

    # -- profiles ----------------------------------------------------------------------------

    async def _read_range(self, state: ProfileState) -> bool:
        """Read one range of a profile and commit its new entries; True once caught up."""
        budget = _RANGE_BUDGET_TIMEOUTS * self.meter.timeout_s
        try:
            with trio.fail_after(budget):
                if self.limiter is not None:
                    async with self.limiter:
                        return await self._range(state)
                return await self._range(state)
        except (DataAccessError, RemoteProtocolError) as exc:
            if not isinstance(exc, DataAccessError) and exc.code not in (
                "profile.no_clock",
                "profile.bad_buffer",
                "profile.bad_entries_in_use",
            ):
                return await self._range_failed(state, exc)
            # The meter answered, but not with a usable profile: try again at the next read.
            self._profile_problem(state, exc)
            return True
        except (ProtocolError, MeterIOError, trio.TooSlowError) as exc:
            return await self._range_failed(state, exc)

    async def _range_failed(self, state: ProfileState, exc: BaseException) -> bool:
        state.errors += 1
        state.last_error = str(exc) or type(exc).__name__
        log_event(
            log, logging.INFO, "profile_read_failed", meter=self.meter.name,
            profile=str(state.config.obis), error=state.last_error,
        )  # fmt: skip
        await self.poller.recover(exc)
        return True

    def _profile_problem(self, state: ProfileState, exc: ProtocolError) -> None:
        state.errors += 1
        state.last_error = str(exc)
        state.generation = self.poller.generation
        state.due = trio.current_time() + state.config.every_s
        log_event(
            log, logging.WARNING, "profile_error", meter=self.meter.name,
            profile=str(state.config.obis), error=str(exc),
        )  # fmt: skip

    async def _range(self, state: ProfileState) -> bool:
        poller = self.poller
        session = poller.session
        assert session is not None and session.client is not None
        client = session.client
        obis = state.config.obis
        generation = poller.generation
        if state.layout is None or state.layout_generation != generation:
            state.layout = await session.run(read_layout(client, obis))
            state.layout_generation = generation
        layout = state.layout
        assert layout is not None
        now_s = poller.wall_clock()
        now_ms = int(now_s * 1000)
        start = state.start_ms(now_ms)
        chunk_ms = max(1000, round(state.config.chunk_hours * 3_600_000))
        end = min(start + chunk_ms, now_ms)
        if end >= now_ms - SETTLE_S * 1000:
            # The last range reaches now: a sliver left for later would be read forever.
            end = now_ms
        complete = end >= now_ms
        buffer: Data | None = None
        if not state.by_entry:
            try:
                buffer = await session.run(read_buffer_range(client, obis, start, end))
            except DataAccessError as exc:
                state.by_entry = True
                log_event(
                    log, logging.INFO, "profile_range_refused", meter=self.meter.name,
                    profile=str(obis), error=str(exc), fallback="entries",
                )  # fmt: skip
        if buffer is None:
            # By entry number: how many entries the time since the start needs, estimated from
            # the capture period, read oldest first in chunks that overlap by two entries (the
            # numbers shift when the meter adds an entry meanwhile); the ts filter below drops
            # what was seen before.
            period_ms = (layout.period_s or 900) * 1000
            per_read = max(3, min(MAX_ENTRIES_PER_READ, math.ceil(chunk_ms / period_ms)))
            if state.entry_back is None:
                state.entry_back = math.ceil((now_ms - start) / period_ms) + 1
            buffer, complete = await session.run(
                read_buffer_entries(client, obis, state.entry_back, per_read)
            )
            state.entry_back = None if complete else max(1, state.entry_back - per_read + 2)
            end = now_ms
        poller.note_activity()
        state.reads += 1
        found = entries_from_buffer(buffer, layout, state.config)
        log_event(
            log, logging.DEBUG, "profile_read", meter=self.meter.name, profile=str(obis),
            start=start, end=end, rows=len(found.entries), by_entry=state.by_entry,
        )  # fmt: skip
        # Stable: events that share a capture time keep their order.
        fresh = sorted(
            ((ts, values) for ts, values in found.entries if start < ts <= end),
            key=lambda entry: entry[0],
        )
        if found.skipped:
            log_event(
                log, logging.WARNING, "profile_entries_skipped", meter=self.meter.name,
                profile=str(obis), skipped=found.skipped, reason="capture time unknown",
            )  # fmt: skip
        if fresh:
            # Shielded: a stop (SIGTERM, reload) must not fall between the commit of the
            # entries and the write of their mark, or a clean restart would send them again.
            # Bounded: an outbox that takes longer than that is no reason to hang a stop (the
            # mark is then not written: at-least-once).
            with trio.move_on_after(_COMMIT_BUDGET_S, shield=True):
                await self._commit(state, fresh)
        elif not complete and end <= now_ms - SETTLE_S * 1000:
            # Nothing in this range (the meter was off): the next range starts after it.
            state.cursor = end
        if complete:
            state.generation = generation
            state.due = trio.current_time() + (next_due_wall(now_s, state.config.every_s) - now_s)
        return complete

    async def _commit(self, state: ProfileState, fresh: list[tuple[int, dict[str, Any]]]) -> None:
        poller = self.poller
        obis = state.config.obis
        readings = [Reading(self.meter.name, ts, values) for ts, values in fresh]
        await poller.sink_many(readings)
        last = fresh[-1][0]
        state.mark = last
        state.entries += len(fresh)
        poller.stats.profile_entries += len(fresh)
        log_event(
            log, logging.INFO, "profile_entries", meter=self.meter.name, profile=str(obis),
            entries=len(fresh), first=fresh[0][0], last=last,
        )  # fmt: skip
        try:
            if self.marks.path is None:
                # Kept in memory only: nothing to write, no worker thread to wait for.
                self.marks.set(self.meter.name, obis, last)
            else:
                await trio.to_thread.run_sync(self.marks.set, self.meter.name, obis, last)
        except OSError as exc:
            # The entries are committed; only a restart would send them again.
            log_event(
                log, logging.ERROR, "profile_mark_unsaved", meter=self.meter.name,
                profile=str(obis), error=str(exc),
            )  # fmt: skip
