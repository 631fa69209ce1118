"""One poller task per meter: connect, associate, read on a drift-free cadence, recover.

Cadence: cycle *k* starts at ``start + k * interval`` (``trio.sleep_until``), whatever the
previous cycle cost. A cycle may run past its interval (a slow meter, retransmissions) up to
``CYCLE_BUDGET_TIMEOUTS`` reply timeouts: its reading is worth more than the schedule. A cycle
that then cannot start within half an interval of its time is counted as missed and skipped,
never made up in a burst, so readings stay on the grid.

Recovery, in three levels, each counted:

1. in place - inside the link: the frame scanner skips garbage and resynchronises, corrupted or
   lost replies are retransmitted, stale replies are dropped by invoke-id. A cycle that needed any
   of it counts as recovered in place.
2. re-associate - a protocol error (link reset, refused frame, timeout after retransmissions,
   undecodable reply) drops the association; the next attempt sends DISC, SNRM and AARQ again on
   the same TCP connection.
3. reconnect - an I/O error closes the TCP connection. A connection kept from earlier cycles
   that turns out dead is opened again at once; a new one that fails is retried with
   exponential backoff and jitter. After ``breaker_threshold`` failed cycles in a row the
   circuit opens: an alarm is raised and the meter is tried only at the backoff's pace until
   it answers again.

The association is kept alive within the meter's inactivity timeout: when polls are further apart
than that, a cheap read of the clock is sent in between.

Between polls, on the same association (so never concurrently with a poll), the poller also does
the meter's other work (:mod:`bridge.meter_work`): requests submitted with
:meth:`MeterPoller.submit` (ThingsBoard RPCs), the clock health check and the profile backfill,
one profile range per pause at least and more while the pause lasts. The interval can be changed
at runtime (:meth:`MeterPoller.set_interval`); the cadence then starts again from that moment.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import trio

from bridge import meter_security
from bridge.config import MeterConfig, interval_problem
from bridge.engine import EngineStopped, Handback, PollEngine, log_stored
from bridge.latency import LatencyWindow
from bridge.logs import log_event
from bridge.meter_work import MeterWork
from bridge.readings import Reading, RegisterError, Value, check_value
from bridge.session import MeterEndpoint, MeterIOError, MeterSession, StreamFactory, open_tcp
from codec.apdu import AttributeDescriptor
from codec.client import RegisterReading, RegisterSpec
from codec.errors import AssociationError, DataAccessError, ProtocolError
from codec.hdlc_params import LinkParameters
from codec.obis import Obis
from codec.steady import SteadyReading

__all__ = ["MeterPoller", "PollerStats", "endpoint_for"]

log = logging.getLogger("bridge.poller")

#: Counters of the link that say the cycle needed in-place recovery.
_IN_PLACE_COUNTERS = ("retransmissions", "resyncs", "stale_responses")
#: Read to keep an idle association alive: every meter has a clock.
CLOCK_TIME = AttributeDescriptor(8, Obis(0, 0, 1, 0, 0, 255), 2)
#: A cycle may take this many reply timeouts even when that is longer than the interval: enough
#: for a reply that needed retransmissions, or for a quick re-association and a second try.
CYCLE_BUDGET_TIMEOUTS = 4
#: The jitter of the pollers given no generator of their own: one for all (a ``Random`` holds
#: 2.5 KB of state, a lot to keep per meter).
_JITTER = random.Random()
#: Connections a process opens at the same moment (TCP connect, link set-up, association, and
#: the read of the cycle that opened it), at most: after a start or an outage thousands of
#: meters reconnect at once, and opening them all together starved the event loop until their
#: own timeouts fired (a storm that fed itself). A wait for a slot counts in the cycle's budget
#: like any other step.
OPENING_SLOTS = 256


def endpoint_for(meter: MeterConfig) -> MeterEndpoint:
    """The session settings of a configured meter."""
    return MeterEndpoint(
        host=meter.host,
        port=meter.port,
        transport=meter.transport,
        client_sap=meter.client_sap,
        server_logical=meter.server_logical,
        server_physical=meter.server_physical,
        server_address_size=meter.server_address_size,
        password=meter.password.encode() if meter.password is not None else None,
        timeout=meter.timeout_s,
        connect_timeout=meter.timeout_s,
        max_pdu_size=meter.max_pdu_size,
        link_parameters=LinkParameters(
            max_info_tx=meter.hdlc_max_info,
            max_info_rx=meter.hdlc_max_info,
            window_tx=meter.hdlc_window,
            window_rx=meter.hdlc_window,
        ),
        byte_stuffing=meter.byte_stuffing,
    )


def secured_endpoint_for(meter: MeterConfig, data_dir: str | None) -> MeterEndpoint:
    """:func:`endpoint_for` with the meter's security, its invocation counters kept in
    ``data_dir`` (reserved ahead); without a data directory, the meter's security is left out."""
    endpoint = endpoint_for(meter)
    if meter.security is None or data_dir is None:
        return endpoint
    security = meter_security.client_settings_for(meter, data_dir)
    return attrs.evolve(endpoint, security=security, frame_counter=meter.frame_counter)


#: Register lists shared by the pollers of meters that read the same registers (most of a
#: fleet): by (obis, class, attribute, key) of each. Bounded; emptied when full.
_SPECS: dict[tuple[tuple[Obis, int, int, str], ...], tuple[RegisterSpec, ...]] = {}
_SPECS_MAX = 1024


def specs_for(meter: MeterConfig) -> tuple[RegisterSpec, ...]:
    """What a poll of ``meter`` reads: its registers, then its attributes (one tuple for all
    meters with the same list)."""
    key = tuple(
        (r.obis, r.class_id, r.attribute, r.key) for r in (*meter.registers, *meter.attributes)
    )
    specs = _SPECS.get(key)
    if specs is None:
        if len(_SPECS) >= _SPECS_MAX:
            _SPECS.clear()
        specs = _SPECS[key] = tuple(RegisterSpec(*k) for k in key)
    return specs


_NO_KEYS: frozenset[str] = frozenset()
#: Unit tables shared by the pollers whose meters report the same units (bounded: emptied
#: when full).
_UNITS: dict[tuple[tuple[str, str | None], ...], dict[str, str | None]] = {}


def _shared_units(
    known: dict[str, str | None], new: Iterable[tuple[str, str | None]]
) -> dict[str, str | None]:
    """``known`` with ``new`` added, as one dict for all the pollers with the same table."""
    merged = {**known, **dict(new)}
    key = tuple(merged.items())
    found = _UNITS.get(key)
    if found is None:
        if len(_UNITS) >= _SPECS_MAX:
            _UNITS.clear()
        found = _UNITS[key] = merged
    return found


@attrs.define(eq=False)
class PollerStats:
    """What one poller did; read by the summary, the metrics and the dashboard."""

    cycles: int = 0
    successes: int = 0
    failures: int = 0
    missed: int = 0
    readings: int = 0
    register_errors: int = 0
    recovered_in_place: int = 0
    reassociations: int = 0
    reconnects: int = 0
    keepalives: int = 0
    circuit_opens: int = 0
    #: Profile entries committed, clock checks, requests (RPCs) served.
    profile_entries: int = 0
    clock_checks: int = 0
    requests: int = 0
    consecutive_failures: int = 0
    circuit_open: bool = False
    state: str = "starting"
    last_error: str | None = None
    last_success_ms: int | None = None
    #: Durations of the last successful reads (512), seconds.
    latencies: LatencyWindow = attrs.field(factory=LatencyWindow)
    #: The link's counters as of the last read that changed them: replaced by a new dict, never
    #: changed in place (the worker's reporter and the console's totals rely on that).
    link: dict[str, int] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        out = attrs.asdict(self, filter=lambda a, _v: a.name != "latencies")
        lat = sorted(self.latencies)
        out["latency_p50"] = _quantile(lat, 0.5)
        out["latency_p95"] = _quantile(lat, 0.95)
        return out


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class MeterPoller:
    """Reads one meter forever (until cancelled) and hands each reading to ``sink``.

    ``sink`` must return only once the reading is durable (the outbox writer's ``put``).
    ``on_alarm(name, active, message)`` is told when the circuit opens and closes.
    """

    def __init__(
        self,
        meter: MeterConfig,
        sink: Callable[[Reading], Awaitable[None]],
        *,
        on_alarm: Callable[[str, bool, str], None] | None = None,
        breaker_threshold: int = 5,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        data_dir: str | None = None,
        open_stream: StreamFactory = open_tcp,
        sink_many: Callable[[Sequence[Reading]], Awaitable[None]] | None = None,
        work_options: Mapping[str, Any] | None = None,
        engine: PollEngine | None = None,
        openings: trio.CapacityLimiter | None = None,
    ) -> None:
        self.meter = meter
        self.sink = sink
        self.on_alarm = on_alarm
        self.breaker_threshold = breaker_threshold
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.rng = rng or _JITTER
        self.wall_clock = wall_clock
        self.open_stream = open_stream
        self.endpoint = secured_endpoint_for(meter, data_dir)
        self.specs = specs_for(meter)
        self.attribute_keys = frozenset(r.key for r in meter.attributes) or _NO_KEYS
        self.stats = PollerStats()
        #: Telemetry key -> unit symbol (None: no unit), as the meter reported them. Read-only:
        #: replaced when it grows, and shared by the pollers of meters with the same units.
        self.units: dict[str, str | None] = {}
        self.session: MeterSession | None = None
        self._connected = False  # TCP is up (the association may not be)
        self._next_attempt = -math.inf
        self._failures_in_a_row = 0
        self._last_activity = -math.inf
        #: The interval in force (the configured one unless changed at runtime).
        self.interval_s = meter.interval_s
        self._rescheduled = False
        #: Counts associations: profiles are read again after every new one (a gap).
        self.generation = 0
        self.sink_many = sink_many or self._sink_each
        #: Serves the steady polls of this meter when set (see :mod:`bridge.engine`).
        self.engine = engine
        #: Shared by the pollers of a process: connections being opened at once (see
        #: `OPENING_SLOTS`).
        self.openings = openings
        self._slot_wait_cut = False
        self._slot_held = False
        #: The running cycle's overall deadline (see `_ensure_session`).
        self._cycle_scope: trio.CancelScope | None = None
        self.work = MeterWork(self, **dict(work_options or {}))

    # -- the loop ----------------------------------------------------------------------------

    async def run(
        self,
        *,
        start_delay: float = 0.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Poll until cancelled (the first cycle after ``start_delay`` seconds); the
        association is released on the way out."""
        interval = self.interval_s
        task_status.started()
        start = trio.current_time() + start_delay
        tick = 0
        try:
            while True:
                if self._rescheduled:
                    # The interval was changed at runtime: a new cadence starts now.
                    self._rescheduled = False
                    interval = self.interval_s
                    start, tick = trio.current_time(), 0
                due = start + tick * interval
                now = trio.current_time()
                if now - due > interval / 2:
                    # The previous cycle overran: the cycles that cannot start within half an
                    # interval of their time are missed, not made up in a burst.
                    late = math.floor((now - due) / interval + 0.5)
                    self.stats.missed += late
                    tick += late
                    due = start + tick * interval
                await self._wait_until(due)
                if self._rescheduled:
                    continue
                tick += 1
                await self.cycle(deadline=due + self.cycle_budget)
                self.work.new_pause()
                if self.engine is not None and self._may_park(start + tick * interval, interval):
                    handback = await self.engine.serve(
                        self, start=start, tick=tick, interval=interval, work_at=self.work.wake_at()
                    )
                    tick = handback.tick
                    if handback.error is not None:
                        await self._engine_failed(handback)
                        self.work.new_pause()
        finally:
            self.stats.state = "stopped"
            await self._close(release=True)

    def _may_park(self, next_due: float, interval: float) -> bool:
        """Whether the next polls can be left to the engine: a kept association on a plain
        socket, no other work before the next poll, no keepalive needed between polls."""
        engine = self.engine
        if engine is None or self._rescheduled or not engine.accepts(self):
            return False
        keepalive_every = self.meter.inactivity_timeout_s * 0.5
        if keepalive_every > 0 and interval >= keepalive_every:
            return False
        return self.work.idle_before(next_due)

    async def _engine_failed(self, handback: Handback) -> None:
        """A cycle failed in the engine: recover as the general path does, and try that cycle
        again within its budget (a timeout of the whole cycle is counted as failed)."""
        exc = handback.error
        assert exc is not None
        if isinstance(exc, MeterIOError):
            await self._close(release=False)
        elif isinstance(exc, ProtocolError | trio.TooSlowError | EngineStopped):
            if isinstance(exc, ProtocolError):
                log_event(
                    log, logging.INFO, "protocol_error",
                    meter=self.meter.name, recovery="reassociate", error=_one_line(exc),
                )  # fmt: skip
            await self._drop_association()
        else:
            raise exc  # a bug: this poller crashes and its supervisor restarts it
        if not handback.in_cycle:
            # Between polls (the meter closed the link or the connection): no cycle failed,
            # the next one opens a new association.
            if isinstance(exc, MeterIOError):
                log_event(
                    log, logging.INFO, "connection_lost",
                    meter=self.meter.name, recovery="reconnect", error=_one_line(exc),
                )  # fmt: skip
            return
        if isinstance(exc, trio.TooSlowError):
            self._failed(exc)
            return
        if isinstance(exc, AssociationError):
            self._failed(exc)
            return
        deadline = handback.due + self.cycle_budget
        if trio.current_time() < deadline:
            await self.cycle(deadline=deadline)
        else:
            self._failed(exc)

    @property
    def cycle_budget(self) -> float:
        """How long one cycle may take, recovery included (seconds)."""
        return max(self.interval_s, CYCLE_BUDGET_TIMEOUTS * self.meter.timeout_s)

    def set_interval(self, interval_s: float) -> None:
        """Poll every ``interval_s`` from now on (it must exceed the reply timeout and be at
        most :data:`~bridge.config.INTERVAL_MAX_S`)."""
        if (
            isinstance(interval_s, bool)
            or not isinstance(interval_s, int | float)
            or not (math.isfinite(interval_s) and interval_s > self.meter.timeout_s)
        ):
            raise ValueError(
                f"interval_s must be a number greater than the meter's timeout_s "
                f"({self.meter.timeout_s:g}), got {interval_s!r}"
            )
        problem = interval_problem(interval_s)
        if problem is not None:
            raise ValueError(f"interval_s {problem}")
        if interval_s != self.interval_s:
            self.interval_s = float(interval_s)
            self._rescheduled = True
            self.work.poke()

    async def submit(self, fn: Callable[[MeterSession], Awaitable[Any]], timeout: float) -> Any:
        """Run ``fn(session)`` between polls, on this meter's association; see
        :meth:`bridge.meter_work.MeterWork.submit`."""
        return await self.work.submit(fn, timeout)

    async def _wait_until(self, due: float) -> None:
        """Sleep until ``due``, keeping the association alive and doing the meter's other
        work (requests, clock checks, profile ranges) on the way."""
        keepalive_every = self.meter.inactivity_timeout_s * 0.5
        while True:
            await self.work.run(until=due)
            if self._rescheduled:
                return
            wake = min(due, self.work.wake_at())
            if self.session is not None and self.session.is_open and keepalive_every > 0:
                wake = min(wake, self._last_activity + keepalive_every)
            await self.work.sleep_until(wake)
            now = trio.current_time()
            if now >= due or self._rescheduled:
                return
            if (
                self.session is not None
                and self.session.is_open
                and keepalive_every > 0
                and now >= self._last_activity + keepalive_every
            ):
                await self._keepalive()

    async def _keepalive(self) -> None:
        assert self.session is not None
        try:
            with trio.fail_after(self.meter.timeout_s * 3):
                await self.session.get(CLOCK_TIME)
            self.stats.keepalives += 1
            self._last_activity = trio.current_time()
        except (ProtocolError, MeterIOError, trio.TooSlowError) as exc:
            log_event(
                log, logging.INFO, "keepalive_failed", meter=self.meter.name, error=_one_line(exc)
            )
            await self._close(release=False)

    # -- one cycle ---------------------------------------------------------------------------

    async def cycle(self, *, deadline: float | None = None) -> bool:
        """Poll once (with recovery); returns True when a reading was taken."""
        stats = self.stats
        if trio.current_time() < self._next_attempt:
            # Backing off (or the circuit is open): this cycle is not attempted.
            stats.cycles += 1
            stats.failures += 1
            return False
        budget = deadline if deadline is not None else trio.current_time() + self.cycle_budget
        self._slot_wait_cut = False
        try:
            with trio.fail_at(budget) as self._cycle_scope:
                try:
                    readings, started_ms, duration, in_place = await self._read_with_recovery()
                finally:
                    self._cycle_scope = None
                    self._release_slot()
        except (ProtocolError, MeterIOError, trio.TooSlowError) as exc:
            if self._slot_wait_cut:
                # The cycle's time went waiting for a turn to open the connection: the
                # bridge's own limit, not the meter's failure - missed, and no backoff.
                self._slot_wait_cut = False
                stats.missed += 1
                return False
            if isinstance(exc, trio.TooSlowError):
                # Cut off in the middle of an exchange: the association still waits for that
                # reply and would refuse the next request. Start the next cycle from a new one.
                await self._drop_association()
            self._failed(exc)
            return False
        reading = self._with_units(readings, started_ms)
        await self.sink(reading)
        # Counted once durable, as the engine's polls are counted once taken (their batch is
        # committed right after).
        self._account(reading, duration, in_place, None)
        log_stored(reading)
        return True

    def took(
        self,
        readings: list[RegisterReading],
        started_ms: int,
        duration: float,
        in_place: bool,
        now: float | None = None,
    ) -> Reading:
        """Account for a successful poll (here or in the engine) and return its reading."""
        reading = self._with_units(readings, started_ms)
        self._account(reading, duration, in_place, now)
        return reading

    def _with_units(self, readings: list[RegisterReading], started_ms: int) -> Reading:
        """The reading of a general read; the units of its registers noted."""
        reading = self._reading(readings, started_ms)
        if len(self.units) < len(reading.values):
            self.units = _shared_units(
                self.units,
                (
                    (r.spec.name, r.unit.symbol if r.unit is not None else None)
                    for r in readings
                    if r.ok
                ),
            )
        return reading

    def took_steady(
        self,
        steady: SteadyReading,
        units: Mapping[str, str | None],
        started_ms: int,
        duration: float,
        in_place: bool,
        now: float,
    ) -> Reading:
        """:meth:`took` for a reply the engine decoded straight to values
        (:class:`codec.steady.SteadyDecoder`: JSON-safe values, as the general path gives)."""
        values: dict[str, Value] = steady.values
        quality = steady.quality
        errors = (
            {k: RegisterError(code, message) for k, (code, message) in steady.errors.items()}
            if steady.errors
            else {}
        )
        values_json = steady.values_json
        if self.attribute_keys:
            values, quality = dict(values), dict(quality)  # the decoder's own dicts kept as is
            values_json = None  # the attributes leave the values
        reading = self._new_reading(started_ms, values, quality, errors, values_json)
        if len(self.units) < len(reading.values):
            self.units = _shared_units(self.units, ((k, units.get(k)) for k in reading.values))
        self._account(reading, duration, in_place, now)
        return reading

    def _account(
        self, reading: Reading, duration: float, in_place: bool, now: float | None
    ) -> None:
        stats = self.stats
        started_ms = reading.ts_ms
        if reading.errors:
            stats.register_errors += len(reading.errors)
            for key, error in reading.errors.items():
                log_event(
                    log, logging.WARNING, "register_error",
                    meter=self.meter.name, key=key, code=error.code, error=error.message,
                )  # fmt: skip
        stats.cycles += 1
        stats.readings += 1
        stats.successes += 1
        stats.latencies.append(duration)
        stats.last_success_ms = started_ms
        if in_place:
            stats.recovered_in_place += 1
            self.stats.link = self._link_counters()
        if now is not None:
            self._last_activity = now
        if stats.consecutive_failures or stats.state != "ok":
            self._succeeded()

    def _reading(self, readings: list[RegisterReading], started_ms: int) -> Reading:
        """The reading of one cycle: a register whose value JSON cannot carry is an error of
        that register, never of the cycle."""
        values: dict[str, Value] = {}
        quality: dict[str, str] = {}
        errors: dict[str, RegisterError] = {}
        for r in readings:
            key = r.spec.name
            if not r.ok:
                errors[key] = RegisterError(r.error_code or "register.error", r.error or "")
                continue
            problem = check_value(r.value)
            if problem is not None:
                errors[key] = RegisterError("value.unrepresentable", problem)
                continue
            values[key] = r.value
            if r.quality is not None:
                quality[key] = r.quality.value
        # Every value was checked just above: no second validation.
        return self._new_reading(started_ms, values, quality, errors)

    def _new_reading(
        self,
        started_ms: int,
        values: dict[str, Value],
        quality: dict[str, str],
        errors: dict[str, RegisterError],
        values_json: bytes | None = None,
    ) -> Reading:
        """A reading of checked values; the configured ``attributes`` moved out of ``values``
        (and ``quality``), which are changed in place. ``values_json``: see
        :meth:`Reading.taken` (ignored when there are attributes)."""
        attributes: dict[str, Value] = {}
        if self.attribute_keys:
            attributes = {k: values.pop(k) for k in list(values) if k in self.attribute_keys}
            for key in attributes:
                quality.pop(key, None)
        return Reading.taken(
            self.meter.name,
            started_ms,
            values,
            quality=quality,
            errors=errors,
            attributes=attributes,
            values_json=values_json,
        )

    async def _read_with_recovery(self) -> tuple[list[RegisterReading], int, float, bool]:
        """Read the registers, re-associating (level 2) or reconnecting (level 3) as needed."""
        last: BaseException | None = None
        for _attempt in range(3):
            # A connection kept from earlier cycles may have died while idle (the meter's
            # inactivity timeout, a NAT or firewall forgetting it): that is no reason to fail.
            reused = self.session is not None and self._connected
            try:
                await self._ensure_session(hold=True)
                assert self.session is not None
                before = self._link_counters()
                started_ms = int(self.wall_clock() * 1000)
                t0 = trio.current_time()
                readings = await self.session.read_registers(self.specs)
                self._last_activity = trio.current_time()
                duration = self._last_activity - t0
                after = self._link_counters()
                in_place = any(after.get(k, 0) > before.get(k, 0) for k in _IN_PLACE_COUNTERS)
                self.stats.link = after
                return readings, started_ms, duration, in_place
            except AssociationError:
                # Refused (wrong password, say): trying again right away will not help.
                await self._close(release=False)
                raise
            except ProtocolError as exc:
                last = exc
                log_event(
                    log, logging.INFO, "protocol_error",
                    meter=self.meter.name, recovery="reassociate", error=_one_line(exc),
                )  # fmt: skip
                await self._drop_association()
            except MeterIOError as exc:
                last = exc
                await self._close(release=False)
                if not reused:
                    raise
                log_event(
                    log, logging.INFO, "connection_lost",
                    meter=self.meter.name, recovery="reconnect", error=_one_line(exc),
                )  # fmt: skip
        assert last is not None
        raise last

    def _link_counters(self) -> dict[str, int]:
        return self.session.stats() if self.session is not None else {}

    async def _ensure_session(self, *, hold: bool = False) -> None:
        """An open association. With ``hold``, an opening slot taken for it is kept until
        `_release_slot` (the end of the cycle: its first read is part of the opening's work)."""
        if self.session is not None and self.session.is_open:
            return
        if self.openings is None:
            await self._open_session()
            return
        if not self._slot_held:
            try:
                await self.openings.acquire()
            except trio.Cancelled:
                self._slot_wait_cut = True  # the cycle's time ran out before its turn came
                raise
            self._slot_held = True
            scope = self._cycle_scope
            if scope is not None and scope.cancel_called:
                # The turn came as the cycle's time ran out (handed over in the same round of
                # the event loop as the budget expired): too late to extend, so the cycle is
                # missed like one whose wait was cut short - not failed, no backoff.
                self._slot_wait_cut = True
                await trio.lowlevel.checkpoint()  # the cancellation, delivered here
            if scope is not None:
                # The wait for the turn was bounded by the cycle's budget; what the turn is for
                # (opening, and the cycle's read) gets a whole budget from now.
                scope.deadline = max(scope.deadline, trio.current_time() + self.cycle_budget)
        try:
            await self._open_session()
        finally:
            if not hold:
                self._release_slot()

    def _release_slot(self) -> None:
        if self._slot_held:
            self._slot_held = False
            assert self.openings is not None
            self.openings.release()

    async def _open_session(self) -> None:
        # A live connection whose association was dropped (level 2) is re-associated.
        reassociate = self.session is not None and self._connected
        if self.session is None or not self._connected:
            self.session = MeterSession(self.endpoint, open_stream=self.open_stream)
            self.stats.state = "connecting"
            await self.session.connect()
            self._connected = True
            if self.stats.successes or self.stats.failures:
                self.stats.reconnects += 1
            log_event(
                log, logging.INFO, "connected", meter=self.meter.name, address=self.meter.address
            )
        elif reassociate:
            self.stats.reassociations += 1
        self.stats.state = "associating"
        negotiated = await self.session.associate()
        self.generation += 1
        self.stats.state = "associated"
        log_event(
            log, logging.INFO, "associated", meter=self.meter.name,
            max_pdu=negotiated.server_max_pdu_size, list=negotiated.multiple_references,
        )  # fmt: skip

    async def ensure_session(self) -> MeterSession:
        """An open association (connecting and associating if needed), for work between polls."""
        await self._ensure_session()
        assert self.session is not None
        return self.session

    async def recover(self, exc: BaseException) -> None:
        """After a failed request between polls: drop what the error leaves unusable."""
        if isinstance(exc, MeterIOError):
            await self._close(release=False)
        elif isinstance(exc, trio.TooSlowError) or (
            isinstance(exc, ProtocolError) and not isinstance(exc, DataAccessError)
        ):
            await self._drop_association()

    async def _sink_each(self, readings: Sequence[Reading]) -> None:
        for reading in readings:
            await self.sink(reading)

    def note_activity(self) -> None:
        """A request between polls used the association (it counts for the keepalive)."""
        self._last_activity = trio.current_time()

    async def _drop_association(self) -> None:
        """Level 2: abandon the association; the link is re-opened on the same connection."""
        if self.session is None:
            return
        try:
            await self.session.abort()
        except MeterIOError:
            await self._close(release=False)

    async def _close(self, *, release: bool) -> None:
        session, self.session = self.session, None
        self._connected = False
        if session is not None:
            if release:
                await session.release()
            else:
                await session.aclose()

    # -- bookkeeping -------------------------------------------------------------------------

    def _succeeded(self) -> None:
        stats = self.stats
        if stats.circuit_open:
            stats.circuit_open = False
            message = (
                f"meter {self.meter.name} answers again after {stats.consecutive_failures} "
                "failed cycles"
            )
            log_event(
                log, logging.WARNING, "circuit_closed", meter=self.meter.name, message=message
            )
            if self.on_alarm is not None:
                self.on_alarm(f"meter.{self.meter.name}.failing", False, message)
        stats.consecutive_failures = 0
        stats.state = "ok"
        self._failures_in_a_row = 0
        self._next_attempt = -math.inf

    def _failed(self, exc: BaseException) -> None:
        stats = self.stats
        stats.cycles += 1
        stats.failures += 1
        stats.consecutive_failures += 1
        self._failures_in_a_row += 1
        message = _one_line(exc)
        if isinstance(exc, trio.TooSlowError):
            # Where the time went: an operator tells a meter that connects slowly from one that
            # answers slowly.
            step = _SLOW_STEPS.get(stats.state, "reading")
            message = f"the cycle ran out of time ({step})"
        stats.last_error = message
        stats.state = "failing"
        delay = min(self.backoff_max, self.backoff_initial * 2 ** (self._failures_in_a_row - 1))
        delay *= 0.5 + self.rng.random()  # jitter: meters that failed together retry apart
        self._next_attempt = trio.current_time() + delay
        log_event(
            log, logging.WARNING, "cycle_failed", meter=self.meter.name,
            failures=stats.consecutive_failures, retry_in_s=round(delay, 1), error=message,
        )  # fmt: skip
        if not stats.circuit_open and stats.consecutive_failures >= self.breaker_threshold:
            stats.circuit_open = True
            stats.circuit_opens += 1
            alarm = (
                f"meter {self.meter.name} ({self.meter.address}) keeps failing: "
                f"{stats.consecutive_failures} cycles in a row, last error: {message}"
            )
            log_event(log, logging.ERROR, "circuit_open", meter=self.meter.name, message=alarm)
            if self.on_alarm is not None:
                self.on_alarm(f"meter.{self.meter.name}.failing", True, alarm)


#: What a cycle was doing when its time ran out, by the poller's state then.
_SLOW_STEPS = {"connecting": "connecting", "associating": "associating"}


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    code = getattr(exc, "code", None)
    return f"{text} [{code}]" if code else text
