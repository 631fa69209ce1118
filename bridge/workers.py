"""Poller processes: ``[bridge] workers = N`` runs the meters in N worker processes.

One Python process runs its event loop on one core; past a thousand meters or so at 1 s the
loop is the limit. With workers, the service process stays the single owner of the outbox
(one writer, group commit) and of the MQTT connection; each worker process runs the pollers of
its share of the meters (rendezvous hashing on the meter name, so a meter stays on its worker
across restarts and reloads) and streams what it takes to the service over a pipe:

- ``R{reading}`` a reading in the outbox's JSON form (the service commits it to the outbox);
- ``A[name, active, message]`` a meter alarm raised or cleared;
- ``T{...}`` the worker's poll counters and recent latencies, once a second.

A worker that exits unexpectedly is started again (with backoff, alarm ``worker.<i>.crashed``)
without touching the others. On a reload only the workers whose share of the meters changed are
restarted. The meters are sent to a worker on its stdin (pickled: parent to its own child).
"""

from __future__ import annotations

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
from bridge.readings import Reading
from bridge.sharding import WORKER_SALT, split

__all__ = ["METERS_PER_AUTO_WORKER", "WorkerPool", "WorkerTotals", "worker_count"]

log = logging.getLogger("bridge.workers")

#: ``workers = 0`` (automatic) starts one worker per core, but no more than one per this many
#: meters: below it one event loop keeps up easily and a process costs ~30 MB.
METERS_PER_AUTO_WORKER = 1000
#: A worker that exited unexpectedly is restarted after this long (doubling up to the maximum).
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 60.0
#: The longest line a worker may send (a reading of many registers is a few KiB).
MAX_LINE = 1 << 20


def worker_count(workers: int, meters: int, cores: int | None = None) -> int:
    """How many worker processes to run; 1 means the pollers run in the service process."""
    if workers > 0:
        return max(1, min(workers, meters))
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(cores, math.ceil(meters / METERS_PER_AUTO_WORKER)))


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


class WorkerPool:
    """Runs ``count`` worker processes for ``meters`` and feeds what they take to ``on_readings``.

    ``on_readings(readings)`` must return once they are durable (the outbox writer);
    ``on_alarm(name, active, message)`` receives the meters' alarms; ``set_alarm`` the pool's own.
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
    ) -> None:
        self.count = count
        self.on_readings = on_readings
        self.on_alarm = on_alarm
        self.set_alarm = set_alarm
        self.log_level = log_level
        self.poller_options = dict(poller_options or {})
        self.totals = [WorkerTotals(i) for i in range(count)]
        self.shares: list[list[MeterConfig]] = self.assign(meters)
        self._procs: list[trio.Process | None] = [None] * count
        self._stopping = False
        self._done = [trio.Event() for _ in range(count)]

    def assign(self, meters: Sequence[MeterConfig]) -> list[list[MeterConfig]]:
        """Each worker's meters (rendezvous hashing on the name)."""
        return [split(meters, self.count, i, salt=WORKER_SALT) for i in range(self.count)]

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the workers until cancelled (use :meth:`stop` first for a graceful end)."""
        async with trio.open_nursery() as nursery:
            for index in range(self.count):
                nursery.start_soon(self._supervise, index)
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

    def update(self, meters: Sequence[MeterConfig]) -> list[int]:
        """A reload: restart the workers whose share changed; returns their indices."""
        shares = self.assign(meters)
        changed = [i for i in range(self.count) if shares[i] != self.shares[i]]
        self.shares = shares
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

    async def _run_once(self, index: int, share: list[MeterConfig]) -> int:
        totals = self.totals[index]
        payload = pickle.dumps(
            {"meters": share, "log_level": self.log_level, "poller_options": self.poller_options}
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
        try:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                await proc.stdin.send_all(payload)
            except trio.BrokenResourceError:
                pass  # it died at once; its exit code says why
            await proc.stdin.aclose()
            await self._read(index, proc.stdout)
            with trio.CancelScope(shield=True):
                code = await proc.wait()
            return code
        finally:
            totals.alive = False
            self._procs[index] = None
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()

    async def _read(self, index: int, stdout: trio.abc.ReceiveStream) -> None:
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
                except (ValueError, TypeError, KeyError) as exc:
                    log_event(log, logging.ERROR, "worker_bad_line", worker=index, error=str(exc))
            if readings:
                await self.on_readings(readings)
