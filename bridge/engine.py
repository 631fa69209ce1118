"""The steady-state polling engine: the repeating polls of many meters driven from one task.

A :class:`~bridge.poller.MeterPoller` does everything a meter needs (connecting, associating,
recovery, RPCs, profiles, clock checks) in its own Trio task. Most of a meter's life, though, is
one identical poll per interval on a kept association, and doing that in a task per meter costs
more in the scheduler (a sleep, a cancel scope and a deadline per request, two task switches per
reply) than the protocol work itself. So once a poller is in that steady state it *parks* in the
engine (:meth:`PollEngine.serve`) and the engine runs its polls:

- one task serves every parked meter: the due polls in time slots (:mod:`bridge.due_slots`),
  one ``epoll`` set of the meters' sockets (itself waited on through Trio), non-blocking
  ``os.write``/``os.read`` on the sockets; a poll's timer is kept aside for one round of the
  loop and goes into the timers' heap only if the poll is still in flight then (most replies
  come within the round: their timers never touch the heap);
- the protocol work is the codec's, unchanged: the same :class:`~codec.association.
  ClientAssociation` and :class:`~codec.client.DlmsClient` procedure the poller would use, so
  retransmissions, resynchronisation, stale replies and ciphering behave exactly as in the
  general path, and the poller takes the association back in a consistent state;
- the cadence is the poller's: cycle *k* at ``start + k * interval``, a cycle that cannot start
  within half an interval of its time is missed, one overall budget per cycle;
- readings are handed to the sink in batches, never one by one: while polls go on, at most every
  :data:`HAND_OVER_S` (and at once when the engine goes idle); a sink that can take them without
  waiting (``sink_nowait``, a worker process's pipe) is called from the loop itself, else a
  task of the engine awaits ``sink_batch`` (the outbox).

The engine hands a meter back to its poller (the poller's ``serve`` call returns a
:class:`Handback`) at a rest point when the poller has other work (an RPC, a profile range, a
clock check, a new interval: :meth:`PollEngine.release`), and at once on any error, with the
error: the poller then recovers (re-associates or reconnects) and retries the cycle the general
way. An error in one meter never touches another; an exception the engine does not expect is
handed back to that meter's poller, which crashes and is restarted by its supervisor.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import os
import select
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from bridge.due_slots import DueSlots
from bridge.logs import log_event
from bridge.readings import Reading
from bridge.session import MeterIOError
from bridge.wake_timer import WakeTimer
from codec.apdu import Request, XdlmsApdu
from codec.association import (
    AssociationState,
    ClientAssociation,
    Closed,
    Lenient,
    Notification,
    Response,
    SteadyResponse,
)
from codec.client import RegisterReading
from codec.errors import LinkError, ProtocolError
from codec.hdlc import NeedData
from codec.steady import (
    SteadyDecoder,
    SteadyReading,
    shared_decoder,
    steady_receive,
    steady_send,
)

if TYPE_CHECKING:
    from bridge.poller import MeterPoller

__all__ = ["EngineStopped", "Handback", "PollEngine", "log_stored"]

log = logging.getLogger("bridge.engine")
_poller_log = logging.getLogger("bridge.poller")

#: Bytes read from a socket at once (a steady reply is well under 1 KiB).
_RECEIVE_SIZE = 65536
#: The engine's beat while requests are in flight: replies that arrived and polls that fell
#: due within one tick are taken together (a poll starts at most this late).
TICK_S = 0.005
#: The beat of a busy engine (at least `BUSY_POLLS_PER_S` polls a second over the last
#: second; back to `TICK_S` below 80% of it). Each tick has a fixed cost (a wake-up of the
#: process, the loop's round, cold caches): a worker of 1,000 meters at 1 s took ~126 us of
#: CPU per poll at a 10 ms tick and ~105 at 20 ms (benchmarks/README.md); a quiet engine
#: keeps the short beat, which measures a reply's latency to a few milliseconds.
BUSY_TICK_S = 0.020
BUSY_POLLS_PER_S = 500.0
#: How long a batch of readings may take to reach the sink once the engine is stopping (while
#: running there is no limit: a slow sink holds the engine back, and nothing taken is lost).
COMMIT_LIMIT_S = 10.0
#: While polls are in flight, readings are handed to the sink at most this often (one hand-over
#: per tick would cost a task switch, a commit and a wake-up of the reader per tick). The outbox
#: writer commits a hand-over without lingering on it, so a reading waits at most about this
#: long in memory before its commit starts. 100 ms (with the writer's 50 ms linger dropped for
#: these batches, about the same wait as before) rather than 50 took 2,000 meters at 1 s in one
#: process from 164-178 to 148-157 us of CPU per poll, half the commits and messages.
HAND_OVER_S = 0.1
#: Readings taken but not yet handed to the sink, at most (then the engine waits for the sink:
#: the same back-pressure a poller gets from awaiting its sink).
MAX_PENDING_READINGS = 20_000


@attrs.define
class Handback:
    """Why and where a parked poller got its meter back.

    ``tick`` is the next cycle to run on the poller's cadence. With ``error``, the cycle
    ``tick - 1`` (due at ``due``) failed in the engine with that exception and is the poller's
    to recover and retry.
    """

    tick: int
    error: BaseException | None = None
    due: float = 0.0
    #: The error ended a poll in flight (else it came between polls: a link closed by the
    #: meter, a connection reset, and no cycle failed).
    in_cycle: bool = False


class EngineStopped(Exception):
    """The engine stopped while a request of this meter was in flight."""


class _Parked:
    """One meter served by the engine."""

    __slots__ = (
        "association",
        "budget",
        "busy",
        "client",
        "cycle_budget",
        "decoder",
        "done",
        "due",
        "fd",
        "gone",
        "in_place",
        "interval",
        "link",
        "poller",
        "proc",
        "release",
        "request",
        "result",
        "scanner",
        "seq",
        "start",
        "started_ms",
        "t0",
        "tick",
        "timer",
        "work_at",
    )

    def __init__(self, poller: MeterPoller, fd: int, start: float, tick: int, interval: float):
        session = poller.session
        assert session is not None and session.association is not None
        assert session.client is not None
        self.poller = poller
        self.association: ClientAssociation = session.association
        self.link = session.association.link
        #: The link's frame scanner, for the in-place recovery marker (None: it has none).
        self.scanner = getattr(self.link, "scanner", None)
        self.client = session.client
        #: How long one cycle may take (the poller's, fixed while parked: a new interval or
        #: timeout hands the meter back first).
        self.cycle_budget = poller.cycle_budget
        self.fd = fd
        self.start = start
        self.tick = tick
        self.interval = interval
        self.due = start + tick * interval
        self.done = trio.Event()
        #: Handed back or removed (``done`` is set, or about to be): its due and timer entries
        #: are skipped.
        self.gone = False
        self.result: Handback | None = None
        #: A poll is in flight.
        self.busy = False
        #: The general client procedure of the poll in flight (None for a steady poll).
        self.proc: Generator[Request, XdlmsApdu, list[RegisterReading]] | None = None
        #: Decodes the steady reply straight to values (made after the first general poll).
        self.decoder: SteadyDecoder | None = None
        #: The request of the steady poll (the client's own, made once per association).
        self.request: Request | None = None
        self.release = False
        self.seq = 0  # bumped on every timer change: stale timer entries are skipped
        self.timer = math.inf
        self.budget = math.inf
        self.started_ms = 0
        self.t0 = 0.0
        self.in_place = 0
        #: Hand the meter back before the first poll due at or after this time (its poller has
        #: work then).
        self.work_at = math.inf


def _on_system_clock() -> bool:
    """Whether Trio runs on its own (real) clock: then a ``timerfd`` can stand for its
    deadlines; a virtual clock (the tests') keeps Trio's."""
    clock = type(trio.lowlevel.current_clock())
    return clock.__name__ == "SystemClock" and clock.__module__.startswith("trio.")


def log_stored(reading: Reading) -> None:
    """The DEBUG line saying a reading is durable (``event=reading_stored``)."""
    if _poller_log.isEnabledFor(logging.DEBUG):
        log_event(
            _poller_log,
            logging.DEBUG,
            "reading_stored",
            meter=reading.meter,
            ts=reading.ts_ms,
            values=len(reading.values),
        )


def _in_place_marker(parked: _Parked) -> int:
    """A number that grows whenever the link recovered in place (retransmission, resync,
    stale reply)."""
    scanner = parked.scanner
    resyncs: int = scanner.resyncs if scanner is not None else 0
    retransmissions: int = getattr(parked.link, "retransmissions", 0)
    return retransmissions + resyncs + parked.association.stale_responses


class PollEngine:
    """Runs the steady polls of parked meters; see the module docstring.

    ``sink_batch(readings)`` must return once the readings are durable (the outbox writer's
    ``put_many`` and whatever the service does with a reading). ``sink_nowait(readings)``, when
    given, takes them without waiting and returns True, or returns False (having taken none)
    when it cannot now: the engine then awaits ``sink_batch`` with them.
    """

    def __init__(
        self,
        sink_batch: Callable[[Sequence[Reading]], Awaitable[None]],
        *,
        sink_nowait: Callable[[Sequence[Reading]], bool] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.sink_batch = sink_batch
        self.sink_nowait = sink_nowait
        self.wall_clock = wall_clock
        self._epoll: select.epoll | None = None
        self._parked: dict[int, _Parked] = {}
        self._due: DueSlots[_Parked] = DueSlots(TICK_S)
        self._timers: list[tuple[float, int, int, _Parked]] = []
        #: Timers set since the loop's last round (time, seq, meter): see :meth:`_expire`.
        self._young: list[tuple[float, int, _Parked]] = []
        self._counter = itertools.count()
        self._pending: list[Reading] = []
        self._flush_wake = trio.Event()
        #: A batch is being awaited by the flush task (a later one must wait for it: order).
        self._committing = False
        #: When readings were last handed over (trio time).
        self._handed_at = -math.inf
        self._room = trio.Event()
        self._wait_scope: trio.CancelScope | None = None
        #: The engine's wake-ups on the system clock (else Trio's deadlines, as on the virtual
        #: clock of the tests); see :mod:`bridge.wake_timer`.
        self._timer: WakeTimer | None = None
        #: When the timer fires while the loop waits for the meters' sockets (None: the loop
        #: is not waiting so; it sets the timer itself before it waits).
        self._timer_at: float | None = None
        self._running = False
        #: Set once :meth:`run` has handed every meter back and committed what it took.
        self.stopped = trio.Event()
        #: The shield of the batch being handed to the sink (given a deadline once stopping).
        self._commit_scope: trio.CancelScope | None = None
        #: :meth:`run` has started (and will set :attr:`stopped`).
        self.started = False
        #: Counters: polls done, and polls that ended in an error (the meter handed back).
        self.polls = 0
        #: Of them, taken by the steady decoder (the others the general way).
        self.steady_polls = 0
        self.errors = 0
        #: Wake-ups by the engine's timer (on the system clock).
        self.timer_wakes = 0
        #: Ticks waited for while polls were in flight, and the beat now (`TICK_S`, or
        #: `BUSY_TICK_S` for a busy engine).
        self.ticks = 0
        self.tick_s = TICK_S

    # -- the pollers' side ---------------------------------------------------------------------

    @property
    def parked(self) -> int:
        """Meters served by the engine now."""
        return len(self._parked)

    def accepts(self, poller: MeterPoller) -> bool:
        """Whether the engine can serve this poller's meter now (a plain TCP socket)."""
        session = poller.session
        if not self._running or session is None or not session.is_open:
            return False
        stream = session.stream
        return type(stream) is trio.SocketStream and stream.socket.fileno() >= 0

    async def serve(
        self, poller: MeterPoller, *, start: float, tick: int, interval: float, work_at: float
    ) -> Handback:
        """Poll ``poller``'s meter on its cadence (cycle ``tick`` next) until it is handed back.

        Returns at a rest point when :meth:`release` is called or the cycle due at or after
        ``work_at`` comes, and at once after an error.
        """
        session = poller.session
        assert session is not None and session.stream is not None
        assert type(session.stream) is trio.SocketStream
        assert self._epoll is not None
        fd = session.stream.socket.fileno()
        parked = _Parked(poller, fd, start, tick, interval)
        parked.work_at = work_at
        self._parked[fd] = parked
        self._epoll.register(fd, select.EPOLLIN)
        self._schedule(parked)
        try:
            await parked.done.wait()
        finally:
            if not parked.done.is_set():
                # The poller was cancelled (stopped, reloaded): the meter leaves the engine as
                # it is; a request still in flight is the poller's release to finish.
                self._remove(parked)
                parked.done.set()
        assert parked.result is not None
        return parked.result

    def release(self, poller: MeterPoller) -> None:
        """Hand ``poller``'s meter back at the next rest point (now, if it is between polls)."""
        for parked in self._parked.values():
            if parked.poller is poller:
                if not parked.busy:
                    self._hand_back(parked, Handback(parked.tick))
                else:
                    parked.release = True
                return

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve parked meters until cancelled; they are all handed back on the way out."""
        self._epoll = select.epoll()
        if _on_system_clock():
            self._timer = WakeTimer.open()
            if self._timer is not None:
                self._epoll.register(self._timer.fileno(), select.EPOLLIN)
        self._running = True
        self.started = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flush_forever)
                task_status.started()
                try:
                    await self._loop()
                finally:
                    # Stopping: the batch being committed gets COMMIT_LIMIT_S at most.
                    self._limit_commit()
        finally:
            self._running = False
            for parked in list(self._parked.values()):
                error = EngineStopped("the polling engine stopped") if parked.busy else None
                self._hand_back(parked, Handback(parked.tick, error, parked.due, in_cycle=True))
            # Readings taken in the last moments are committed before the engine goes.
            pending, self._pending = self._pending, []
            if pending:
                await self._commit(pending, limit_s=COMMIT_LIMIT_S)
            self._epoll.close()
            self._epoll = None
            if self._timer is not None:
                trio.lowlevel.notify_closing(self._timer.fileno())
                self._timer.close()
                self._timer = None
            self.stopped.set()

    async def _loop(self) -> None:
        epoll = self._epoll
        assert epoll is not None
        epoll_fd = epoll.fileno()
        tick = TICK_S
        timer = self._timer
        counted_at = trio.current_time()
        counted = self.polls
        while True:
            if timer is not None and timer.clear():
                self.timer_wakes += 1
            now = trio.current_time()
            # The timers set before this round: the polls they belong to had a round to
            # answer; what is still in flight goes to the heap (see _expire).
            aged, self._young = self._young, []
            if now - counted_at >= 1.0:
                tick = self._next_tick(tick, (self.polls - counted) / (now - counted_at))
                self.tick_s = tick
                counted_at, counted = now, self.polls
            ready = epoll.poll(0)
            for fd, _events in ready:
                parked = self._parked.get(fd)
                if parked is not None:
                    self._readable(parked, now)
            self._start_due(now)
            self._expire(now, aged)
            next_due = self._due.first_at()
            busy = bool(self._timers) or bool(self._young) or next_due < now + tick
            pending = self._pending
            if pending and (
                not busy
                or now - self._handed_at >= HAND_OVER_S
                or len(pending) >= MAX_PENDING_READINGS
            ):
                self._hand_over(now)
                if len(self._pending) >= MAX_PENDING_READINGS:
                    self._room = trio.Event()
                    await self._room.wait()
                    continue
            if busy:
                # Requests in flight (or polls due): wake on the next tick and take everything
                # that came meanwhile in one go. One wake-up then serves many meters, instead
                # of one wake-up (and one cancelled wait) per reply.
                self.ticks += 1
                if timer is None:
                    await trio.sleep_until(now + tick)
                else:
                    timer.set(now + tick - trio.current_time())
                    await trio.lowlevel.wait_readable(timer.fileno())
                continue
            # Nothing in flight: sleep until the next poll, or until a meter sends something.
            wake = math.ceil(next_due / tick) * tick if next_due < math.inf else math.inf
            if timer is None:
                with trio.CancelScope(deadline=wake) as scope:
                    self._wait_scope = scope
                    await trio.lowlevel.wait_readable(epoll_fd)
                self._wait_scope = None
            else:
                # The timer is in the epoll set too: whichever comes first.
                self._timer_at = wake
                timer.set(wake - trio.current_time())
                try:
                    await trio.lowlevel.wait_readable(epoll_fd)
                finally:
                    self._timer_at = None

    @staticmethod
    def _next_tick(tick: float, polls_per_s: float) -> float:
        """The beat for the next second, from the polls of the last (with hysteresis)."""
        if polls_per_s >= BUSY_POLLS_PER_S:
            return BUSY_TICK_S
        if polls_per_s < 0.8 * BUSY_POLLS_PER_S:
            return TICK_S
        return tick

    def _hand_over(self, now: float) -> None:
        """Hand the readings taken to the sink: at once when it takes them without waiting,
        else through the flush task."""
        self._handed_at = now
        if self.sink_nowait is not None and not self._committing:
            batch = self._pending
            if self.sink_nowait(batch):
                self._pending = []
                self._log_stored(batch)
                return
        self._flush_wake.set()

    def _wake_loop(self, at: float) -> None:
        scope = self._wait_scope
        if scope is not None and at < scope.deadline:
            scope.deadline = at
        elif self._timer_at is not None and at < self._timer_at and self._timer is not None:
            self._timer_at = at
            self._timer.set(at - trio.current_time())

    async def _commit(self, batch: list[Reading], *, limit_s: float | None = None) -> None:
        """Hand ``batch`` to the sink. Running, it waits as long as the sink takes (a slow
        outbox holds the engine back through `MAX_PENDING_READINGS`; nothing taken is dropped);
        stopping, not cut short by the cancellation, only by :data:`COMMIT_LIMIT_S`."""
        try:
            with trio.CancelScope(shield=True) as scope:
                if limit_s is not None:
                    scope.deadline = trio.current_time() + limit_s
                self._commit_scope = scope
                try:
                    await self.sink_batch(batch)
                finally:
                    self._commit_scope = None
        except Exception as exc:
            if trio.current_effective_deadline() != -math.inf:
                raise  # not stopping: the sink's failure is the engine's
            # Stopping, and the sink is gone already (the outbox writer stopped first).
            log_event(
                log, logging.ERROR, "engine_readings_not_committed",
                readings=len(batch), error=str(exc) or type(exc).__name__,
            )  # fmt: skip
            return
        if scope.cancelled_caught:
            log_event(
                log, logging.ERROR, "engine_commit_timeout",
                readings=len(batch), limit_s=COMMIT_LIMIT_S,
            )  # fmt: skip

    def _limit_commit(self) -> None:
        scope = self._commit_scope
        if scope is not None:
            scope.deadline = min(scope.deadline, trio.current_time() + COMMIT_LIMIT_S)

    async def _flush_forever(self) -> None:
        while True:
            if not self._pending:
                self._flush_wake = trio.Event()
                await self._flush_wake.wait()
            batch, self._pending = self._pending, []
            self._room.set()
            self._committing = True
            try:
                await self._commit(batch)
            finally:
                self._committing = False
            self._log_stored(batch)

    @staticmethod
    def _log_stored(batch: list[Reading]) -> None:
        if _poller_log.isEnabledFor(logging.DEBUG):
            for reading in batch:
                log_stored(reading)

    # -- scheduling ----------------------------------------------------------------------------

    def _schedule(self, parked: _Parked, now: float | None = None) -> None:
        """Queue ``parked``'s next cycle (skipping the ones that can no longer start in time);
        ``now``: the loop's time, when it calls."""
        if now is None:
            now = trio.current_time()
        due = parked.start + parked.tick * parked.interval
        if now - due > parked.interval / 2:
            late = math.floor((now - due) / parked.interval + 0.5)
            parked.poller.stats.missed += late
            parked.tick += late
            due = parked.start + parked.tick * parked.interval
        parked.due = due
        self._due.add(due, parked)
        self._wake_loop(due)

    def _arm(self, parked: _Parked) -> None:
        """A poll waits for the meter: its timer at the association's next deadline, within
        the cycle's budget."""
        deadline = parked.association.next_deadline()
        at = parked.budget if deadline is None else min(deadline, parked.budget)
        if at != parked.timer:
            self._set_timer(parked, at)

    def _set_timer(self, parked: _Parked, at: float) -> None:
        parked.seq += 1
        parked.timer = at
        if at < math.inf:
            self._young.append((at, parked.seq, parked))
            self._wake_loop(at)

    def _start_due(self, now: float) -> None:
        take = self._due.take
        while batch := take(now):  # again: a late cycle rescheduled may be due at once
            for due, parked in batch:
                if parked.gone or parked.due != due or parked.busy:
                    continue
                if parked.release or due >= parked.work_at:
                    self._hand_back(parked, Handback(parked.tick))
                    continue
                if now - due > parked.interval / 2:  # the engine itself ran late
                    self._schedule(parked, now)
                    continue
                self._start_poll(parked, now)

    def _expire(self, now: float, aged: list[tuple[float, int, _Parked]]) -> None:
        """Fire the timers due: ``aged``, the timers set before this round, join the heap
        first, those of polls still in flight only (a poll answered within its first round,
        most of them, leaves a stale entry that is dropped here, not pushed and popped)."""
        heap = self._timers
        counter = self._counter
        for at, seq, parked in aged:
            if not (parked.gone or seq != parked.seq or not parked.busy):
                heapq.heappush(heap, (at, next(counter), seq, parked))
        while heap:
            at, _n, seq, parked = heap[0]
            if parked.gone or seq != parked.seq or not parked.busy:
                # A timer of a poll that is over: dropped now, so that a heap that is not
                # empty means a poll in flight (the loop ticks only then).
                heapq.heappop(heap)
                continue
            if at > now:
                break
            heapq.heappop(heap)
            if now >= parked.budget:
                self._fail(parked, trio.TooSlowError())
                continue
            try:
                parked.association.handle_timer(now)
            except ProtocolError as exc:
                if not self._throw(parked, exc, now):
                    continue
            except Exception as exc:  # noqa: BLE001 - handed to that meter's poller, which raises it
                self._fail(parked, exc)
                continue
            self._pump(parked, now)

    # -- one poll ------------------------------------------------------------------------------

    def _start_poll(self, parked: _Parked, now: float) -> None:
        parked.tick += 1
        parked.budget = parked.due + parked.cycle_budget
        parked.started_ms = int(self.wall_clock() * 1000)
        parked.t0 = now
        parked.in_place = _in_place_marker(parked)
        parked.busy = True
        try:
            decoder, request = parked.decoder, parked.request
            if decoder is not None and request is not None:
                # The steady poll: the reply is decoded straight to values by the decoder,
                # or (anything unexpected) the general way (see _general).
                association = parked.association
                association.drain()
                raw = steady_send(association, request, now, decoder)
                if raw is not None:
                    # Sent in one frame with nothing else open: the association needs the
                    # reply now (what _pump would find), so only the write and the timer.
                    self._send(parked, raw)
                    self._arm(parked)
                    return
                association.request(request, now, steady=decoder)
            else:
                proc = self._general(parked)
                self._request(parked, next(proc), now)
        except Exception as exc:  # noqa: BLE001 - handed to that meter's poller
            self._fail(parked, exc)
            return
        self._pump(parked, now)

    def _general(self, parked: _Parked) -> Generator[Request, XdlmsApdu, list[RegisterReading]]:
        """The client's procedure for this poll (its first request not sent yet)."""
        proc = parked.client.read_registers(parked.poller.specs)
        parked.proc = proc
        return proc

    def _request(self, parked: _Parked, request: Request, now: float) -> None:
        association = parked.association
        association.drain()
        association.request(request, now)

    def _send(self, parked: _Parked, data: bytes) -> None:
        try:
            sent = os.write(parked.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise MeterIOError(
                f"connection to {parked.poller.endpoint.label} broke: {exc}"
            ) from None
        session = parked.poller.session
        if session is not None:
            session.bytes_sent += sent
        if sent < len(data):
            # A request always fits an idle socket's buffer: a meter that does not take it
            # has stopped reading, and part of a frame may have gone.
            raise MeterIOError(
                f"{parked.poller.endpoint.label} stopped reading: {len(data)} bytes could not "
                "be sent at once"
            )

    def _readable(self, parked: _Parked, now: float) -> None:
        try:
            data = os.read(parked.fd, _RECEIVE_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            label = parked.poller.endpoint.label
            self._fail(parked, MeterIOError(f"connection to {label} broke: {exc}"))
            return
        if not data:
            label = parked.poller.endpoint.label
            self._fail(parked, MeterIOError(f"{label} closed the connection"))
            return
        session = parked.poller.session
        if session is not None:
            session.bytes_received += len(data)
        association = parked.association
        try:
            # The reply of a steady poll comes straight as values; anything else (and any
            # reply of a general poll) as the association's events, through _pump.
            steady = steady_receive(association, data, now)
        except ProtocolError as exc:
            if self._throw(parked, exc, now):
                self._pump(parked, now)
            return
        except Exception as exc:  # noqa: BLE001 - handed to that meter's poller
            self._fail(parked, exc)
            return
        if steady is None:
            self._pump(parked, now)
            return
        out = association.data_to_send()
        if out:
            try:
                self._send(parked, out)
            except Exception as exc:  # noqa: BLE001 - handed to that meter's poller
                self._fail(parked, exc)
                return
        self._complete_steady(parked, steady, now)

    def _throw(self, parked: _Parked, exc: ProtocolError, now: float) -> bool:
        """A request failed: as :meth:`MeterSession.run`, the procedure may carry on when the
        association stays usable. Returns True when the exchange goes on."""
        proc = parked.proc
        if not parked.busy or parked.association.state is not AssociationState.READY:
            self._fail(parked, exc)
            return False
        try:
            if proc is None:
                # A steady poll: the general procedure takes over (its first request is the
                # one that failed).
                proc = self._general(parked)
                next(proc)
            request = proc.throw(exc)
        except StopIteration as stop:
            self._complete(parked, stop.value, now)
            return False
        except Exception as error:  # noqa: BLE001 - handed to that meter's poller
            self._fail(parked, error)
            return False
        try:
            self._request(parked, request, now)
        except Exception as error:  # noqa: BLE001 - handed to that meter's poller
            self._fail(parked, error)
            return False
        return True

    def _pump(self, parked: _Parked, now: float) -> None:
        """Take the association's events until it needs data (or the poll is over)."""
        association = parked.association
        try:
            while True:
                try:
                    event = association.next_event()
                except ProtocolError as exc:
                    if not self._throw(parked, exc, now):
                        return
                    continue
                out = association.data_to_send()
                if out:
                    self._send(parked, out)
                if isinstance(event, NeedData):
                    if parked.busy:
                        self._arm(parked)
                    return
                if isinstance(event, SteadyResponse):
                    self._complete_steady(parked, event.reading, now)
                    return
                if isinstance(event, Response):
                    if not parked.busy:
                        continue  # no request open: nothing to answer (never expected)
                    proc = parked.proc
                    if proc is None:
                        # A steady poll answered otherwise (an error, a block transfer, a
                        # value of another type): the general procedure takes the reply.
                        proc = self._general(parked)
                        next(proc)
                    try:
                        request = proc.send(event.apdu)
                    except StopIteration as stop:
                        self._complete(parked, stop.value, now)
                        return
                    self._request(parked, request, now)
                    continue
                if isinstance(event, (Notification, Lenient)):
                    if isinstance(event, Lenient):
                        log.debug("%s: %s", parked.poller.endpoint.label, event.detail)
                    continue
                if isinstance(event, Closed):
                    session = parked.poller.session
                    if session is not None:
                        session.client = None  # as MeterSession.request does
                    self._fail(
                        parked,
                        LinkError(
                            f"the meter closed the link ({event.reason})", code="link.closed"
                        ),
                    )
                    return
                # Anything else (a late RLRE, say) is the general path's to handle.
                self._fail(parked, LinkError(f"unexpected {type(event).__name__}"))
                return
        except Exception as exc:  # noqa: BLE001 - handed to that meter's poller
            self._fail(parked, exc)

    def _complete(self, parked: _Parked, readings: list[RegisterReading], now: float) -> None:
        """A poll ended with its readings (the general way)."""
        parked.proc = None
        poller = parked.poller
        parked.request = parked.client.steady_request(poller.specs)
        # The next polls take the steady path when there is one (a decoder made again after
        # every general read, so that a register whose first read failed is taken once it
        # answers).
        parked.decoder = (
            shared_decoder(poller.specs, readings) if parked.request is not None else None
        )
        in_place = _in_place_marker(parked) != parked.in_place
        reading = poller.took(readings, parked.started_ms, now - parked.t0, in_place, now)
        self._done(parked, reading, now)

    def _complete_steady(self, parked: _Parked, steady: SteadyReading, now: float) -> None:
        """A steady poll ended with its values."""
        self.steady_polls += 1
        decoder = parked.decoder
        assert decoder is not None
        in_place = _in_place_marker(parked) != parked.in_place
        reading = parked.poller.took_steady(
            steady, decoder.units, parked.started_ms, now - parked.t0, in_place, now
        )
        self._done(parked, reading, now)

    def _done(self, parked: _Parked, reading: Reading, now: float) -> None:
        parked.busy = False
        self._set_timer(parked, math.inf)
        self._pending.append(reading)
        self.polls += 1
        if parked.release:
            self._hand_back(parked, Handback(parked.tick))
        else:
            self._schedule(parked, now)

    def _fail(self, parked: _Parked, exc: BaseException) -> None:
        self.errors += 1
        busy, parked.busy = parked.busy, False
        proc, parked.proc = parked.proc, None
        if proc is not None:
            proc.close()
        self._hand_back(parked, Handback(parked.tick, exc, parked.due, in_cycle=busy))

    def _hand_back(self, parked: _Parked, result: Handback) -> None:
        if parked.done.is_set():
            return
        self._remove(parked)
        parked.result = result
        parked.done.set()
        if result.error is not None and not isinstance(result.error, EngineStopped):
            log_event(
                log, logging.DEBUG, "engine_handback",
                meter=parked.poller.meter.name, error=str(result.error) or type(result.error),
            )  # fmt: skip

    def _remove(self, parked: _Parked) -> None:
        parked.gone = True
        if self._parked.get(parked.fd) is parked:
            del self._parked[parked.fd]
            if self._epoll is not None:
                # A socket closed already has left the set by itself (the kernel drops it).
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(parked.fd)
        parked.seq += 1
