"""Poller processes: ``[bridge] workers = N`` runs the meters in N worker processes.

One Python process runs its event loop on one core; past a thousand meters or so at 1 s the
loop is the limit. With workers, the service process stays the single owner of the outbox
(one writer, group commit) and of the MQTT connection; each worker process runs the pollers of
its share of the meters (rendezvous hashing on the meter name, so a meter stays on its worker
across restarts and reloads) and streams what it takes to the service over a pipe:

- ``R{reading}`` a reading in the outbox's JSON form (the service commits it to the outbox);
- ``A[name, active, message]`` a meter alarm raised or cleared;
- ``T{...}`` the worker's poll counters and recent latencies, once a second;
- ``S{...}`` per-meter counters and states, once a second, only for the meters that changed
  (:mod:`bridge.worker_link`), a meter's ``faulted`` state among them; the console serves them
  as it serves its own pollers';
- ``M[meter, obis, ts_ms]`` a profile's new high-water mark, after the readings of its entries:
  the service records it (``profiles.json``) once the readings before it are in the outbox;
- ``P{...}`` the answer to a request.

The service sends requests the other way, on the worker's stdin (``Q{...}``: a ThingsBoard RPC,
the console's read-now, a new interval, a meter switched on or off), each with an id and a
deadline, for the poller that owns the meter to carry out between its polls. Every request is
answered: by the worker, or with an error when its deadline passes or the worker exits first.

A worker that exits unexpectedly is started again (with backoff, alarm ``worker.<i>.crashed``)
without touching the others. On a reload only the workers whose share of the meters changed are
restarted. The meters are sent to a worker on its stdin (pickled: parent to its own child, after
its length as 8 bytes), with their profile high-water marks, their crash history when they are
faulted, the restart policy of crashed pollers and the worker's share of the box-wide backfill
slots, followed by the requests.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from bridge.config import MeterConfig
from bridge.logs import log_event
from bridge.profiles import HighWaterMarks
from bridge.readings import Reading, dumps_compact
from bridge.sharding import WORKER_SALT, split
from bridge.supervision import SupervisionSettings
from bridge.worker_link import RemoteMeter, WorkerRequestError

__all__ = [
    "POLLS_PER_AUTO_WORKER",
    "WorkerPool",
    "WorkerRequestError",
    "WorkerTotals",
    "backfill_share",
    "worker_count",
]

log = logging.getLogger("bridge.workers")

#: ``workers = 0`` (automatic) starts one worker per core, but no more than one per this many
#: polls a second (the meters' 1 / interval_s summed): below it one event loop keeps up with
#: room to spare, and workers cost more CPU per poll than one process (every reading crosses a
#: pipe as JSON): 2,000 meters at 1 s took ~167 us of CPU per poll in one process against ~192
#: in two workers; 2,500 in one process ~144 us with start delays p99 20 ms
#: (benchmarks/README.md).
POLLS_PER_AUTO_WORKER = 2500.0
#: A worker that exited unexpectedly is restarted after this long (doubling up to the maximum).
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 60.0
#: The longest line a worker may send (a reading of many registers is a few KiB).
MAX_LINE = 1 << 20
#: Requests waiting for one worker's answers, at most; more are refused ("busy") at once.
MAX_PENDING_REQUESTS = 256
#: The longest request sent to a worker (an RPC's params are a few hundred bytes).
MAX_REQUEST = 64 * 1024
#: The profile marks the workers send are written to disk (one file for every meter) at most
#: this often; a crash of the service re-sends at most the entries of that long (at-least-once).
MARKS_WRITE_S = 1.0
#: How much longer than a request's own deadline the service waits for the worker's answer
#: (the worker answers a request whose deadline passed itself; this covers a stuck worker).
ANSWER_GRACE_S = 5.0


def worker_count(workers: int, meters: int, polls_per_s: float, cores: int | None = None) -> int:
    """How many worker processes to run for ``meters`` polled ``polls_per_s`` times a second
    in all; 1 means the pollers run in the service process."""
    if workers > 0:
        return max(1, min(workers, meters))
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(cores, meters, math.ceil(polls_per_s / POLLS_PER_AUTO_WORKER)))


def backfill_share(slots: int, workers: int) -> int:
    """How many of the box's ``slots`` backfill slots each of ``workers`` processes gets: an
    even share, rounded up (so at most ``slots`` box-wide while there are no more workers than
    slots; one per worker beyond that, or a worker's meters could never catch up)."""
    return max(1, math.ceil(slots / max(1, workers)))


@attrs.define(eq=False)
class WorkerTotals:
    """What one worker process reported last (counters since it started) and its lifecycle."""

    index: int
    meters: int = 0
    pid: int | None = None
    alive: bool = False
    restarts: int = 0
    cycles: int = 0
    successes: int = 0
    failures: int = 0
    missed: int = 0
    latencies: deque[float] = attrs.field(factory=lambda: deque(maxlen=4096))

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return attrs.asdict(self, filter=lambda a, _v: a.name != "latencies")


@attrs.define(eq=False)
class _Pending:
    """A request sent to a worker, waiting for its answer."""

    done: trio.Event = attrs.Factory(trio.Event)
    result: Any = None
    error: WorkerRequestError | None = None

    def answer(self, result: Any = None, error: WorkerRequestError | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


@attrs.define(eq=False)
class _Link:
    """The request side of one running worker process: its stdin queue and pending requests."""

    pid: int
    send: trio.MemorySendChannel[bytes]
    pending: dict[int, _Pending] = attrs.Factory(dict)


class WorkerPool:
    """Runs ``count`` worker processes for ``meters`` and feeds what they take to ``on_readings``.

    ``on_readings(readings)`` must return once they are durable (the outbox writer);
    ``on_alarm(name, active, message)`` receives the meters' alarms; ``set_alarm`` the pool's own.
    ``overrides(meters)`` gives, when a worker starts, the runtime settings of its meters
    (``{name: {"interval_s": ..., "enabled": ...}}``, :mod:`bridge.overrides`).
    ``marks`` are the profile high-water marks (the service's, in the data directory): a worker
    starts from its meters' marks and sends the new ones back (``M`` lines, recorded here).
    ``supervision`` is the restart policy of crashed pollers; ``backfill_slots`` how many of a
    worker's meters may read a profile range at the same moment.
    """

    def __init__(
        self,
        count: int,
        meters: Sequence[MeterConfig],
        *,
        on_readings: Callable[[list[Reading]], Awaitable[None]],
        on_alarm: Callable[[str, bool, str], None],
        set_alarm: Callable[[str, bool, str], None],
        log_level: str = "info",
        poller_options: dict[str, Any] | None = None,
        overrides: Callable[[Sequence[MeterConfig]], dict[str, dict[str, Any]]] | None = None,
        marks: HighWaterMarks | None = None,
        supervision: SupervisionSettings | None = None,
        backfill_slots: int = 1,
    ) -> None:
        self.count = count
        self.on_readings = on_readings
        self.on_alarm = on_alarm
        self.set_alarm = set_alarm
        self.log_level = log_level
        self.poller_options = dict(poller_options or {})
        self.overrides = overrides
        self.marks = marks if marks is not None else HighWaterMarks(None)
        self.supervision = supervision or SupervisionSettings()
        self.backfill_slots = backfill_slots
        self.totals = [WorkerTotals(i) for i in range(count)]
        #: Meter name -> what its worker last reported of it (the console's per-meter view).
        self.remote: dict[str, RemoteMeter] = {}
        self.shares: list[list[MeterConfig]] = []
        self._owners: dict[str, tuple[int, MeterConfig]] = {}
        self._set_shares(self.assign(meters))
        self._procs: list[trio.Process | None] = [None] * count
        self._links: list[_Link | None] = [None] * count
        self._ids = itertools.count(1)
        self._stopping = False
        self._done = [trio.Event() for _ in range(count)]
        #: Marks recorded in memory and not written yet; set when there are.
        self._marks_dirty = trio.Event()

    def assign(self, meters: Sequence[MeterConfig]) -> list[list[MeterConfig]]:
        """Each worker's meters (rendezvous hashing on the name)."""
        return [split(meters, self.count, i, salt=WORKER_SALT) for i in range(self.count)]

    def _set_shares(self, shares: list[list[MeterConfig]]) -> None:
        self.shares = shares
        self._owners = {m.name: (i, m) for i, share in enumerate(shares) for m in share}

    def owns(self, meter: str) -> bool:
        """True when ``meter`` is polled by one of the workers."""
        return meter in self._owners

    def meter_config(self, meter: str) -> MeterConfig | None:
        """The config of a meter polled by a worker (None for any other)."""
        owner = self._owners.get(meter)
        return owner[1] if owner is not None else None

    def pending_requests(self, index: int) -> int:
        """Requests sent to worker ``index`` and not answered yet."""
        link = self._links[index]
        return len(link.pending) if link is not None else 0

    def meter_names(self) -> list[str]:
        """Every meter the workers poll."""
        return list(self._owners)

    # -- requests --------------------------------------------------------------------------------

    async def request(self, meter: str, op: str, body: dict[str, Any], timeout: float) -> Any:
        """Have the worker that polls ``meter`` carry out ``op``; its result.

        ``timeout`` is the request's own deadline, sent with it (the worker answers "timeout"
        when it passes); the service waits :data:`ANSWER_GRACE_S` more. Raises
        :class:`WorkerRequestError`: the worker's error, or ``unavailable`` (the worker is not
        running), ``busy``, ``timeout``, ``worker_exited`` (it exited before answering).
        """
        owner = self._owners.get(meter)
        if owner is None:
            raise WorkerRequestError("unknown_device", f"no worker polls meter {meter!r}", 404)
        index = owner[0]
        link = self._links[index]
        if link is None:
            raise WorkerRequestError(
                "unavailable",
                f"the worker process of meter {meter} is not running (restarting); try again",
                503,
            )
        if len(link.pending) >= MAX_PENDING_REQUESTS:
            raise WorkerRequestError(
                "busy", f"worker {index} has {len(link.pending)} requests in progress", 503
            )
        request_id = next(self._ids)
        line = dumps_compact(
            {"id": request_id, "op": op, "meter": meter, "timeout": timeout, **body}
        )
        if len(line) > MAX_REQUEST:
            raise WorkerRequestError(
                "bad_params", f"the request is too large ({len(line)} bytes, at most "
                f"{MAX_REQUEST})", 413,
            )  # fmt: skip
        pending = link.pending[request_id] = _Pending()
        try:
            try:
                link.send.send_nowait(b"Q" + line.encode() + b"\n")
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                raise WorkerRequestError(
                    "busy", f"worker {index} is not taking requests right now", 503
                ) from None
            with trio.move_on_after(timeout + ANSWER_GRACE_S):
                await pending.done.wait()
        finally:
            link.pending.pop(request_id, None)
        if not pending.done.is_set():
            raise WorkerRequestError(
                "timeout",
                f"worker {index} did not answer the request for meter {meter} within "
                f"{timeout + ANSWER_GRACE_S:g} s",
                504,
            )
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _answer(self, index: int, body: Any) -> None:
        link = self._links[index]
        if link is None or not isinstance(body, dict):
            return
        request_id = body.get("id")
        pending = link.pending.get(request_id) if isinstance(request_id, int) else None
        if pending is None:
            return  # given up already (its deadline passed)
        if "error" in body:
            pending.answer(error=WorkerRequestError.from_json(body["error"]))
        else:
            pending.answer(result=body.get("result"))

    def _stats(self, index: int, pid: int, body: Any) -> None:
        if not isinstance(body, dict):
            return
        for name, entry in body.items():
            owner = self._owners.get(name)
            if owner is None or owner[0] != index:
                continue  # a meter moved away by a reload: its new worker reports it
            if entry is None:
                self.remote.pop(name, None)
                continue
            if not isinstance(entry, dict):
                continue
            key = (pid, int(entry.get("g", 0)))
            remote = self.remote.get(name)
            if remote is None or remote.key != key:
                remote = self.remote[name] = RemoteMeter(index, key, interval_s=owner[1].interval_s)
            remote.update(entry)

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the workers until cancelled (use :meth:`stop` first for a graceful end)."""
        async with trio.open_nursery() as nursery:
            for index in range(self.count):
                nursery.start_soon(self._supervise, index)
            nursery.start_soon(self._write_marks)
            task_status.started()

    async def stop(self, timeout: float) -> None:
        """Ask every worker to release its meters and exit; wait up to ``timeout``."""
        self._stopping = True
        for proc in self._procs:
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            for done in self._done:
                await done.wait()
        # The marks of the last entries the workers sent (their readings are in the outbox).
        with trio.move_on_after(timeout):
            await self.flush_marks()

    def update(self, meters: Sequence[MeterConfig]) -> list[int]:
        """A reload: restart the workers whose share changed; returns their indices."""
        shares = self.assign(meters)
        changed = [i for i in range(self.count) if shares[i] != self.shares[i]]
        self._set_shares(shares)
        for name in [n for n in self.remote if n not in self._owners]:
            del self.remote[name]
        for index in changed:
            proc = self._procs[index]
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)  # _supervise starts it again with its share
        return changed

    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping

    def alive(self) -> bool:
        """True while every worker process runs."""
        return all(t.alive for t in self.totals)

    # -- one worker ------------------------------------------------------------------------------

    async def _supervise(self, index: int) -> None:
        delay = RESTART_BACKOFF_S
        totals = self.totals[index]
        alarm = f"worker.{index}.crashed"
        try:
            while not self.stopping():
                share = self.shares[index]
                started = trio.current_time()
                code = await self._run_once(index, share)
                if self.stopping():
                    return
                if code == 0 or code == -signal.SIGTERM:
                    # Restarted on purpose (a reload changed its share): no alarm, no backoff.
                    totals.restarts += 1
                    continue
                totals.restarts += 1
                message = (
                    f"worker process {index} ({len(share)} meters) exited with code {code}; "
                    "restarting it"
                )
                log_event(log, logging.ERROR, "worker_exited", worker=index, code=code)
                self.set_alarm(alarm, True, message)
                if trio.current_time() - started > 10 * RESTART_BACKOFF_MAX_S:
                    delay = RESTART_BACKOFF_S  # it had run well for a long time
                await trio.sleep(delay)
                delay = min(RESTART_BACKOFF_MAX_S, delay * 2)
        finally:
            self._done[index].set()

    def _faults(self, share: list[MeterConfig]) -> dict[str, dict[str, Any]]:
        """The crash history of the faulted meters of ``share``: a restarted worker keeps them
        faulted (and retried at the slow cadence), as the service keeps its own."""
        out = {}
        for meter in share:
            remote = self.remote.get(meter.name)
            if remote is not None and remote.fault is not None:
                out[meter.name] = {"crashes": remote.crashes, "fault": remote.fault}
        return out

    def _save_marks(self, marks: list[tuple[str, str, int]]) -> None:
        """Record the marks a worker sent (the readings before them are in the outbox); they
        are written by :meth:`_write_marks`, at most every :data:`MARKS_WRITE_S`."""
        if self.marks.advance(marks):
            self._marks_dirty.set()

    async def _write_marks(self) -> None:
        """Write the marks the workers sent, coalesced: rewriting the whole file for every range
        of every meter would cost the service's loop more than the marks are worth."""
        while True:
            await self._marks_dirty.wait()
            await self.flush_marks()
            await trio.sleep(MARKS_WRITE_S)

    async def flush_marks(self) -> None:
        """Write the marks recorded since the last write, if any."""
        if not self._marks_dirty.is_set():
            return
        self._marks_dirty = trio.Event()
        try:
            await trio.to_thread.run_sync(self.marks.save)
        except OSError as exc:
            # The entries are committed; only a restart would send them again.
            self._marks_dirty.set()
            log_event(log, logging.ERROR, "profile_mark_unsaved", error=str(exc))

    async def _run_once(self, index: int, share: list[MeterConfig]) -> int:
        totals = self.totals[index]
        overrides = self.overrides(share) if self.overrides is not None else {}
        payload = pickle.dumps(
            {
                "meters": share,
                "log_level": self.log_level,
                "poller_options": self.poller_options,
                "overrides": overrides,
                "marks": self.marks.of(m.name for m in share),
                "faults": self._faults(share),
                "supervision": self.supervision,
                "backfill_slots": self.backfill_slots,
            }
        )
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bridge.worker", str(index)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the workers log to the service's stderr, with a worker= field
        )
        self._procs[index] = proc
        totals.pid, totals.alive, totals.meters = proc.pid, True, len(share)
        log_event(
            log, logging.INFO, "worker_started", worker=index, pid=proc.pid, meters=len(share)
        )
        send, receive = trio.open_memory_channel[bytes](MAX_PENDING_REQUESTS)
        link = _Link(proc.pid, send)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                await proc.stdin.send_all(len(payload).to_bytes(8, "big") + payload)
            except trio.BrokenResourceError:
                pass  # it died at once; its exit code says why
            self._links[index] = link
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, proc.stdin, receive)
                await self._read(index, proc.pid, proc.stdout)
                nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                code = await proc.wait()
            return code
        finally:
            self._links[index] = None
            send.close()
            for pending in link.pending.values():
                pending.answer(
                    error=WorkerRequestError(
                        "worker_exited",
                        f"worker process {index} exited before answering (it is restarted)",
                        503,
                    )
                )
            for remote in self.remote.values():
                if remote.key[0] == proc.pid:
                    # Shown as such until the restarted worker reports the meter again.
                    remote.stats.state = "worker_restarting"
            totals.alive = False
            self._procs[index] = None
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
            if proc.stdin is not None:
                with trio.CancelScope(shield=True):
                    await proc.stdin.aclose()

    @staticmethod
    async def _write(stdin: trio.abc.SendStream, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        """Send the queued requests to the worker, in order."""
        try:
            async for line in receive:
                await stdin.send_all(line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the worker is gone; its requests are answered when its stdout ends

    async def _read(self, index: int, pid: int, stdout: trio.abc.ReceiveStream) -> None:
        totals = self.totals[index]
        pending = b""
        while True:
            chunk = await stdout.receive_some(65536)
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > MAX_LINE:
                log_event(log, logging.ERROR, "worker_line_too_long", worker=index)
                return
            readings: list[Reading] = []
            marks: list[tuple[str, str, int]] = []
            for line in lines:
                kind, body = line[:1], line[1:]
                try:
                    if kind == b"R":
                        readings.append(Reading.from_json(body))
                    elif kind == b"A":
                        name, active, message = json.loads(body)
                        self.on_alarm(name, bool(active), str(message))
                    elif kind == b"T":
                        report = json.loads(body)
                        totals.cycles = int(report["cycles"])
                        totals.successes = int(report["successes"])
                        totals.failures = int(report["failures"])
                        totals.missed = int(report["missed"])
                        totals.latencies.extend(float(x) for x in report["latencies"])
                    elif kind == b"S":
                        self._stats(index, pid, json.loads(body))
                    elif kind == b"P":
                        self._answer(index, json.loads(body))
                    elif kind == b"M":
                        meter, obis, ts_ms = json.loads(body)
                        if not isinstance(ts_ms, int) or isinstance(ts_ms, bool) or ts_ms < 0:
                            raise ValueError(f"mark {ts_ms!r} is not a time in ms")
                        marks.append((str(meter), str(obis), ts_ms))
                except (ValueError, TypeError, KeyError) as exc:
                    log_event(log, logging.ERROR, "worker_bad_line", worker=index, error=str(exc))
            if readings:
                self._note_readings(readings)
                await self.on_readings(readings)
            if marks:
                # After the readings they follow are durable: never a mark ahead of its entries.
                self._save_marks(marks)

    def _note_readings(self, readings: list[Reading]) -> None:
        """A reading says its meter answered, before the next stats report does (with many
        meters per worker each one is reported only every few seconds)."""
        for reading in readings:
            remote = self.remote.get(reading.meter)
            if remote is not None and reading.ts_ms > (remote.stats.last_success_ms or 0):
                remote.stats.last_success_ms = reading.ts_ms
