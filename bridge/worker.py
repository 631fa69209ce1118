"""One worker process of :mod:`bridge.workers`: ``python -m bridge.worker INDEX``.

Reads its meters (pickled, after their length as 8 bytes) from stdin, polls them with one
:class:`~bridge.poller.MeterPoller` task each, and writes what they take to stdout as lines (see
:mod:`bridge.workers`). As in the service: a crashed poller is restarted by the same policy
(:mod:`bridge.supervision`: the same crash again and again makes the meter ``faulted``, reported
in its stats and by its alarm); profiles start from the marks the service handed over and each
new mark goes back to the service after its entries (``M`` lines); at most the worker's share of
the box-wide backfill slots read a profile range at the same moment. Then it reads requests
from stdin (:mod:`bridge.worker_link`) and answers each on stdout: an RPC or a read-now is run by
the meter's poller between its polls, exactly as in the service. Logs go to stderr with
``worker=INDEX``. SIGTERM or SIGINT, or the end of stdin (the service is gone): the pollers
release their associations, the last lines are flushed, the process exits 0.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import random
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from bridge import heap
from bridge.config import MeterConfig
from bridge.engine import PollEngine
from bridge.logs import log_event, setup_logging
from bridge.poller import OPENING_SLOTS, MeterPoller
from bridge.profiles import HighWaterMarks
from bridge.readings import Reading, dumps_compact
from bridge.rpc import IN_WORKER, METHODS, RpcError, RpcRequest, fit_answer, run_on_poller
from bridge.service import STAGGER_FROM_METERS, STAGGER_MAX_S
from bridge.session import MeterSession
from bridge.supervision import CrashTracker, SupervisionSettings, clear_if_healthy, poller_crashed
from bridge.worker_link import OPS, MeterReporter, WorkerRequestError, chunks, encode_stats
from bridge.workers import MAX_LINE
from codec.obis import Obis

log = logging.getLogger("bridge.worker")

#: Lines held while the service is slow to take them; the pollers wait beyond this.
MAX_PENDING = 20_000
RELEASE_S = 5.0
#: Requests being carried out at once, at most; more are answered "busy" at once.
MAX_REQUESTS = 64
#: The longest answer sent back (a profile's entries are cut to fit, as for ThingsBoard).
MAX_ANSWER = MAX_LINE // 2


def reading_line(reading: Reading) -> bytes:
    """The ``R`` line of ``reading`` (its stored form, :meth:`~bridge.readings.Reading.to_json`),
    newline included."""
    return b"R%b\n" % reading.to_json()


class _PollerHost:
    """Where an RPC method runs in a worker: on the meter's poller (:class:`bridge.rpc.RpcHost`)."""

    def __init__(self, poller: MeterPoller, synchronised: bool) -> None:
        self.poller = poller
        self.synchronised = synchronised

    def wall_clock(self, meter: MeterConfig) -> Callable[[], float]:
        return self.poller.wall_clock

    def clock_synchronised(self) -> bool:
        return self.synchronised

    async def on_meter(
        self, meter: MeterConfig, fn: Callable[[MeterSession], Awaitable[Any]]
    ) -> Any:
        return await run_on_poller(self.poller, meter, fn)

    async def apply_override(self, meter: str, key: str, value: Any) -> None:
        raise RpcError("internal", "runtime settings are kept by the service, not a worker")


class _RelayedMarks(HighWaterMarks):
    """The profile marks of a worker's meters: kept by the service, which writes them to disk.

    Starts from what the service handed over; each new mark is sent to the service (an ``M``
    line) after the readings of its entries, so that the service records it only once they are
    in its outbox.
    """

    def __init__(self, marks: dict[str, dict[str, int]], emit: Callable[[bytes], None]) -> None:
        super().__init__(None)
        self.marks = {meter: dict(profiles) for meter, profiles in marks.items()}
        self._send = emit

    def set(self, meter: str, profile: Obis, ts_ms: int) -> None:
        super().set(meter, profile, ts_ms)
        self._send(b"M" + dumps_compact([meter, str(profile), ts_ms]).encode() + b"\n")


class _Worker:
    def __init__(
        self,
        index: int,
        meters: list[MeterConfig],
        options: dict[str, Any],
        overrides: dict[str, dict[str, Any]] | None = None,
        *,
        marks: dict[str, dict[str, int]] | None = None,
        faults: dict[str, dict[str, Any]] | None = None,
        supervision: SupervisionSettings | None = None,
        backfill_slots: int = 1,
    ) -> None:
        self.index = index
        self.meters = meters
        self.by_name = {m.name: m for m in meters}
        self.options = options
        #: Runtime settings from the service: interval_s, enabled (kept across poller restarts).
        self.overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        self.pollers: dict[str, MeterPoller] = {}
        self.crashes: dict[str, int] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.pending: list[bytes] = []
        self._wake = trio.Event()
        self._room = trio.Event()
        self._rng = random.Random()
        self._reported: dict[str, int] = {}
        self._reporter = MeterReporter()
        self._requests = 0
        self._pollers_nursery: trio.Nursery | None = None
        self.stop = trio.Event()
        self.engine = PollEngine(self.sink_batch, sink_nowait=self.sink_nowait)
        #: The pipe to the service (stdout), once running; written at once when it can be.
        self._out_fd = -1
        #: The flush task is writing (a write now would overtake its data).
        self._sending = False
        #: Connections being opened at once by this worker's pollers, at most.
        self.openings = trio.CapacityLimiter(OPENING_SLOTS)
        self.marks = _RelayedMarks(marks or {}, self._emit)
        #: The worker's share of the box-wide backfill slots (``backfill_share``).
        self.backfill_limiter = trio.CapacityLimiter(max(1, backfill_slots))
        self.supervision = supervision or SupervisionSettings()
        #: Per meter that crashed: its crash history (kept across its pollers); the meters
        #: faulted now; when each meter's poller started.
        self.trackers: dict[str, CrashTracker] = {}
        self.faulted: set[str] = set()
        self.started: dict[str, float] = {}
        for name, fault in (faults or {}).items():
            # Faulted before this worker started (a restart): it stays so, retried slowly.
            self.crashes[name] = int(fault.get("crashes", 0))
            self.trackers[name] = CrashTracker(
                self.supervision,
                self._rng,
                crashes=self.crashes[name],
                identical=self.supervision.fault_after,
                last=str(fault.get("fault")),
                faulted=True,
            )
            self.faulted.add(name)

    def _emit(self, line: bytes) -> None:
        self.pending.append(line)
        self._wake.set()

    def _write_now(self) -> None:
        """Write what is pending to the pipe at once, without waiting; what the pipe does not
        take now is left to the flush task."""
        if self._sending or self._out_fd < 0:
            self._wake.set()
            return
        data = b"".join(self.pending)
        try:
            sent = os.write(self._out_fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The service is gone: the flush task meets the same error and ends the worker.
            self.pending = [data]
            self._wake.set()
            return
        self._room.set()
        if sent < len(data):
            self.pending = [data[sent:]]
            self._wake.set()
        else:
            self.pending = []

    async def sink(self, reading: Reading) -> None:
        while len(self.pending) >= MAX_PENDING:
            self._room = trio.Event()
            await self._room.wait()
        # The outbox's own form: every field (values, quality, errors, attributes) crosses.
        self._emit(reading_line(reading))

    async def sink_batch(self, readings: Sequence[Reading]) -> None:
        while len(self.pending) >= MAX_PENDING:
            self._room = trio.Event()
            await self._room.wait()
        self.pending.extend([reading_line(reading) for reading in readings])
        self._wake.set()

    def sink_nowait(self, readings: Sequence[Reading]) -> bool:
        """The engine's readings, written to the pipe at once (False: too much is pending,
        the engine awaits :meth:`sink_batch`)."""
        if len(self.pending) >= MAX_PENDING:
            return False
        self.pending.extend([reading_line(reading) for reading in readings])
        self._write_now()
        return True

    def on_alarm(self, name: str, active: bool, message: str) -> None:
        self._emit(b"A" + dumps_compact([name, active, message]).encode() + b"\n")

    async def flush_forever(self, out: trio.abc.SendStream) -> None:
        while True:
            if not self.pending:
                self._wake = trio.Event()
                await self._wake.wait()
            await self.flush(out)

    async def flush(self, out: trio.abc.SendStream) -> None:
        data, self.pending = b"".join(self.pending), []
        self._room.set()
        if data:
            self._sending = True
            try:
                await out.send_all(data)
            finally:
                self._sending = False

    async def report_forever(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.report()

    def report(self) -> None:
        cycles = successes = failures = missed = 0
        latencies: list[float] = []
        reported = self._reported
        for name, poller in self.pollers.items():
            s = poller.stats
            cycles += s.cycles
            done = s.successes
            successes += done
            failures += s.failures
            missed += s.missed
            new = done - reported.get(name, 0)
            if new > 0:
                reported[name] = done
                # The newest (at most 4), oldest first; the window itself is not copied.
                newest = s.latencies.newest(min(new, 4))
                newest.reverse()
                latencies += newest
            elif new < 0:
                reported[name] = done  # a new poller (restarted) counts from zero
        body = {
            "cycles": cycles,
            "successes": successes,
            "failures": failures,
            "missed": missed,
            "latencies": [round(x, 5) for x in latencies[-2048:]],
        }
        self._emit(b"T" + dumps_compact(body).encode() + b"\n")
        self.check_faulted()
        faults = {n: self.trackers[n].last or "" for n in self.faulted}
        for part in chunks(self._reporter.changes(self.pollers, self.crashes, faults)):
            self._emit(b"S" + encode_stats(part) + b"\n")

    def check_faulted(self) -> None:
        """Clear the faulted state of meters whose poller has run healthy long enough (as the
        service does for its own, ``BridgeService._check_faulted``)."""
        now = trio.current_time()
        for name in list(self.faulted):
            started = self.started.get(name)
            if started is not None and clear_if_healthy(
                name, self.trackers[name], now - started, self.on_alarm
            ):
                self.faulted.discard(name)

    def _settled(self) -> bool:
        """Every meter this worker polls has tried its first cycle."""
        for meter in self.meters:
            if self.overrides.get(meter.name, {}).get("enabled") is False:
                continue
            poller = self.pollers.get(meter.name)
            if poller is None or poller.stats.cycles == 0:
                return False
        return True

    def start(self, meter: MeterConfig) -> None:
        """Start polling ``meter`` (unless it was switched off)."""
        if self.overrides.get(meter.name, {}).get("enabled") is False:
            log_event(log, logging.INFO, "meter_paused", meter=meter.name, reason="enabled=false")
            return
        assert self._pollers_nursery is not None
        running = self.scopes.get(meter.name)
        if running is not None and not running.cancel_called:
            return  # polled already (a poller being stopped is replaced by a new one)
        scope = self.scopes[meter.name] = trio.CancelScope()
        self._pollers_nursery.start_soon(self.supervise, meter, scope)

    def new_poller(self, meter: MeterConfig) -> MeterPoller:
        """A poller for ``meter`` with the worker's marks and backfill slots."""
        options = dict(self.options)
        work_options = {
            "marks": self.marks,
            "limiter": self.backfill_limiter,
            **options.pop("work_options", {}),
        }
        return MeterPoller(
            meter,
            self.sink,
            on_alarm=self.on_alarm,
            rng=self._rng,  # one for all: a Random is 2.5 KB of state
            engine=self.engine,
            work_options=work_options,
            openings=self.openings,
            **options,
        )

    async def supervise(self, meter: MeterConfig, scope: trio.CancelScope) -> None:
        """Run one meter's poller; a crash (a bug) is logged and the poller started again,
        until the same crash keeps coming back (:mod:`bridge.supervision`)."""
        name = meter.name
        try:
            with scope:
                while True:
                    poller = self.new_poller(meter)
                    interval = self.overrides.get(name, {}).get("interval_s")
                    if interval is not None:
                        try:
                            poller.set_interval(interval)
                        except ValueError as exc:
                            log_event(
                                log, logging.WARNING, "override_ignored", meter=name,
                                key="interval_s", error=str(exc),
                            )  # fmt: skip
                    self.pollers[name] = poller
                    first = name not in self.trackers and len(self.meters) >= STAGGER_FROM_METERS
                    start_delay = (
                        self._rng.random() * min(meter.interval_s, STAGGER_MAX_S) if first else 0
                    )
                    self.started[name] = trio.current_time()
                    try:
                        await poller.run(start_delay=start_delay)
                    except Exception as exc:
                        tracker = self.trackers.get(name)
                        if tracker is None:
                            # Made at the first crash: most meters never need one.
                            tracker = CrashTracker(self.supervision, self._rng)
                            self.trackers[name] = tracker
                        ran_s = trio.current_time() - self.started[name]
                        delay = poller_crashed(name, tracker, exc, ran_s, self.on_alarm)
                        self.crashes[name] = tracker.crashes
                        log.exception(
                            "worker=%d meter=%s event=poller_crashed crashes=%d identical=%d",
                            self.index, name, tracker.crashes, tracker.identical,
                        )  # fmt: skip
                        if tracker.faulted:
                            self.faulted.add(name)
                            poller.stats.state = "faulted"
                        else:
                            self.faulted.discard(name)
                        await trio.sleep(delay)
        finally:
            if self.scopes.get(name) is scope:
                del self.scopes[name]
                self.pollers.pop(name, None)
                self.started.pop(name, None)

    # -- requests from the service ---------------------------------------------------------------

    async def read_requests(self, stdin: trio.abc.ReceiveStream, nursery: trio.Nursery) -> None:
        """Take requests from stdin until it ends (the service is gone: stop)."""
        pending = b""
        try:
            while True:
                chunk = await stdin.receive_some(65536)
                if not chunk:
                    return
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_LINE:
                    log_event(log, logging.ERROR, "request_line_too_long", worker=self.index)
                    return
                for line in lines:
                    if line[:1] == b"Q":
                        self._take(line[1:], nursery)
        finally:
            self.stop.set()

    def _take(self, body: bytes, nursery: trio.Nursery) -> None:
        try:
            request = json.loads(body)
            request_id = request["id"]
            if not isinstance(request_id, int):
                raise TypeError("the id is not an integer")
        except (ValueError, TypeError, KeyError) as exc:
            log_event(log, logging.ERROR, "bad_request", worker=self.index, error=str(exc))
            return
        if request.get("op") in ("enable", "set_interval"):
            # Settings apply at once, in the order they came (tasks may run in any order).
            try:
                result = self.setting(request)
            except WorkerRequestError as exc:
                self._reply(request_id, error=exc)
            else:
                self._reply(request_id, result=result)
            return
        if self._requests >= MAX_REQUESTS:
            error = WorkerRequestError("busy", "too many requests in progress", 503)
            self._reply(request_id, error=error)
            return
        self._requests += 1
        nursery.start_soon(self._carry_out, request_id, request)

    async def _carry_out(self, request_id: int, request: dict[str, Any]) -> None:
        try:
            timeout = float(request.get("timeout", 10.0))
            # The request's own deadline; the poller's timeouts end it earlier in practice.
            with trio.fail_after(max(0.0, timeout)):
                result = await self.execute(request)
        except WorkerRequestError as exc:
            self._reply(request_id, error=exc)
        except RpcError as exc:
            self._reply(request_id, error=WorkerRequestError(exc.code, exc.message))
        except trio.TooSlowError:
            message = f"the request was not carried out within {request.get('timeout')} s"
            self._reply(request_id, error=WorkerRequestError("timeout", message, 504))
        except Exception as exc:
            # A bug must not take the worker down, and the request is still answered.
            log.exception("worker=%d event=request_crashed op=%s", self.index, request.get("op"))
            why = f"the request failed inside the bridge ({type(exc).__name__})"
            self._reply(request_id, error=WorkerRequestError("internal", why, 500))
        else:
            self._reply(request_id, result=result)
        finally:
            self._requests -= 1

    def _reply(
        self, request_id: int, result: Any = None, error: WorkerRequestError | None = None
    ) -> None:
        if error is not None:
            line = dumps_compact({"id": request_id, "error": error.as_json()}).encode()
        else:
            # Within the pipe's line limit: a profile's entries are cut to fit, as for TB.
            fitted = fit_answer(RpcRequest("", request_id, "", None, "", False), result, MAX_ANSWER)
            line = b'{"id":%d,"result":%s}' % (request_id, fitted)
        self._emit(b"P" + line + b"\n")

    def _meter_of(self, request: dict[str, Any]) -> MeterConfig:
        op, name = request.get("op"), request.get("meter")
        if op not in OPS:
            raise WorkerRequestError("internal", f"unknown request {op!r}", 500)
        meter = self.by_name.get(name) if isinstance(name, str) else None
        if meter is None:
            raise WorkerRequestError("unknown_device", f"this worker does not poll {name!r}", 404)
        return meter

    def setting(self, request: dict[str, Any]) -> dict[str, Any]:
        """Apply ``enable`` or ``set_interval`` (kept for the meter's later pollers too)."""
        meter = self._meter_of(request)
        if request["op"] == "enable":
            return self._enable(meter, bool(request.get("enabled")))
        value = request.get("interval_s")
        self.overrides.setdefault(meter.name, {})["interval_s"] = value
        poller = self.pollers.get(meter.name)
        if poller is not None and value is not None:
            try:
                poller.set_interval(value)
            except ValueError as exc:
                raise WorkerRequestError("bad_params", str(exc), 422) from None
        return {"interval_s": poller.interval_s if poller is not None else value}

    async def execute(self, request: dict[str, Any]) -> Any:
        """Carry out a request that talks to the meter (``rpc``, ``read_now``)."""
        meter = self._meter_of(request)
        if request["op"] not in ("rpc", "read_now"):
            raise WorkerRequestError("internal", f"not a meter request: {request['op']!r}", 500)
        poller = self.pollers.get(meter.name)
        if request["op"] == "read_now":
            from bridge.web.admin import AdminError, read_now

            try:
                return await read_now(meter, self.options.get("data_dir") or "", poller)
            except AdminError as exc:
                message = "; ".join(e["message"] for e in exc.errors)
                raise WorkerRequestError("read_failed", message, exc.status) from None
        method = request.get("method")
        if method not in IN_WORKER:
            raise WorkerRequestError("unknown_method", f"unknown method {method!r}", 400)
        if poller is None:
            raise RpcError("unavailable", f"meter {meter.name} is not being polled right now")
        params = request.get("params")
        host = _PollerHost(poller, bool(request.get("synchronised")))
        return await METHODS[method](host, meter, params if isinstance(params, dict) else {})

    def _enable(self, meter: MeterConfig, enabled: bool) -> dict[str, Any]:
        settings = self.overrides.setdefault(meter.name, {})
        if enabled:
            settings.pop("enabled", None)
            self.start(meter)
        else:
            settings["enabled"] = False
            scope = self.scopes.get(meter.name)
            if scope is not None:
                scope.cancel()  # the poller releases its association on the way out
        return {"enabled": enabled}

    async def run(self) -> None:
        out = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
        self._out_fd = out.fileno()
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.flush_forever, out)
            nursery.start_soon(self.report_forever)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                pollers = trio.CancelScope()
                stopped = trio.Event()
                started = trio.Event()

                async def run_pollers() -> None:
                    try:
                        with pollers:
                            async with trio.open_nursery() as inner:
                                await inner.start(self.engine.run)
                                self._pollers_nursery = inner
                                for meter in self.meters:
                                    self.start(meter)
                                started.set()
                                await trio.sleep_forever()
                    finally:
                        stopped.set()

                signal_scope = trio.CancelScope()

                async def until_signal() -> None:
                    with signal_scope:
                        async for _signum in signals:
                            break
                        self.stop.set()

                nursery.start_soon(run_pollers)
                await started.wait()
                nursery.start_soon(self.read_requests, stdin, nursery)
                nursery.start_soon(until_signal)
                nursery.start_soon(
                    functools.partial(heap.settle, self._settled, where=f"worker {self.index}")
                )
                log_event(log, logging.INFO, "worker_running", worker=self.index,
                          meters=len(self.meters))  # fmt: skip
                await self.stop.wait()
                signal_scope.cancel()
            # Stop polling; each poller releases its association on the way out (shielded).
            pollers.cancel()
            with trio.move_on_after(RELEASE_S):
                await stopped.wait()
            self.report()
            with trio.move_on_after(RELEASE_S):
                # The flush task writes what is left (a second writer would collide with a
                # write of its in progress).
                while self.pending or self._sending:
                    self._wake.set()
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        self._out_fd = -1
        await out.aclose()


def _read_exactly(fd: int, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("stdin ended before the worker's settings")
        data += chunk
    return bytes(data)


def main() -> None:
    index = int(sys.argv[1])
    # Unbuffered reads: what follows the settings on stdin is the requests.
    fd = sys.stdin.fileno()
    size = int.from_bytes(_read_exactly(fd, 8), "big")
    payload = pickle.loads(_read_exactly(fd, size))
    setup_logging(payload["log_level"], stream=sys.stderr)
    heap.tune_collector()
    worker = _Worker(
        index,
        payload["meters"],
        payload["poller_options"],
        payload.get("overrides"),
        marks=payload.get("marks"),
        faults=payload.get("faults"),
        supervision=payload.get("supervision"),
        backfill_slots=payload.get("backfill_slots", 1),
    )
    trio.run(worker.run)


if __name__ == "__main__":
    main()
