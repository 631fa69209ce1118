"""One worker process of :mod:`bridge.workers`: ``python -m bridge.worker INDEX``.

Reads its meters (pickled) from stdin, polls them with one :class:`~bridge.poller.MeterPoller`
task each (a crashed poller is restarted, as in the service), and writes what they take to
stdout as lines (see :mod:`bridge.workers`). Logs go to stderr with ``worker=INDEX``. SIGTERM or
SIGINT: the pollers release their associations, the last lines are flushed, the process exits 0.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

from bridge.config import MeterConfig
from bridge.engine import PollEngine
from bridge.logs import log_event, setup_logging
from bridge.poller import MeterPoller
from bridge.readings import Reading, dumps_compact
from bridge.service import STAGGER_FROM_METERS, STAGGER_MAX_S

log = logging.getLogger("bridge.worker")

#: Lines held while the service is slow to take them; the pollers wait beyond this.
MAX_PENDING = 20_000
CRASH_BACKOFF_S = 5.0
RELEASE_S = 5.0


class _Worker:
    def __init__(self, index: int, meters: list[MeterConfig], options: dict[str, Any]) -> None:
        self.index = index
        self.meters = meters
        self.options = options
        self.pollers: dict[str, MeterPoller] = {}
        self.pending: list[bytes] = []
        self._wake = trio.Event()
        self._room = trio.Event()
        self._rng = random.Random()
        self._reported: dict[str, int] = {}
        self.engine = PollEngine(self.sink_batch)

    def _emit(self, line: bytes) -> None:
        self.pending.append(line)
        self._wake.set()

    async def sink_batch(self, readings: Sequence[Reading]) -> None:
        while len(self.pending) >= MAX_PENDING:
            self._room = trio.Event()
            await self._room.wait()
        for reading in readings:
            self.pending.append(b"R" + reading.to_json() + b"\n")
        self._wake.set()

    async def sink(self, reading: Reading) -> None:
        while len(self.pending) >= MAX_PENDING:
            self._room = trio.Event()
            await self._room.wait()
        # The outbox's own form: every field (values, quality, errors, attributes) crosses.
        self._emit(b"R" + reading.to_json() + b"\n")

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
            await out.send_all(data)

    async def report_forever(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.report()

    def report(self) -> None:
        cycles = successes = failures = missed = 0
        latencies: list[float] = []
        for name, poller in self.pollers.items():
            s = poller.stats
            cycles += s.cycles
            successes += s.successes
            failures += s.failures
            missed += s.missed
            new = s.successes - self._reported.get(name, 0)
            self._reported[name] = s.successes
            if new > 0:
                latencies.extend(list(s.latencies)[-min(new, 4) :])
        body = {
            "cycles": cycles,
            "successes": successes,
            "failures": failures,
            "missed": missed,
            "latencies": [round(x, 5) for x in latencies[-2048:]],
        }
        self._emit(b"T" + dumps_compact(body).encode() + b"\n")

    async def supervise(self, meter: MeterConfig) -> None:
        delay = CRASH_BACKOFF_S
        while True:
            poller = MeterPoller(
                meter,
                self.sink,
                on_alarm=self.on_alarm,
                rng=random.Random(self._rng.random()),
                engine=self.engine,
                **self.options,
            )
            self.pollers[meter.name] = poller
            first = delay == CRASH_BACKOFF_S and len(self.meters) >= STAGGER_FROM_METERS
            start_delay = self._rng.random() * min(meter.interval_s, STAGGER_MAX_S) if first else 0
            try:
                await poller.run(start_delay=start_delay)
            except Exception:
                log.exception("worker=%d meter=%s event=poller_crashed", self.index, meter.name)
                self.on_alarm(
                    f"meter.{meter.name}.crashed",
                    True,
                    f"the poller of meter {meter.name} crashed; restarting it",
                )
                await trio.sleep(delay * (0.5 + self._rng.random()))
                delay = min(300.0, delay * 2)

    async def run(self) -> None:
        out = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.flush_forever, out)
            nursery.start_soon(self.report_forever)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                pollers = trio.CancelScope()
                stopped = trio.Event()

                async def run_pollers() -> None:
                    try:
                        with pollers:
                            async with trio.open_nursery() as inner:
                                await inner.start(self.engine.run)
                                for meter in self.meters:
                                    inner.start_soon(self.supervise, meter)
                    finally:
                        stopped.set()

                nursery.start_soon(run_pollers)
                log_event(log, logging.INFO, "worker_running", worker=self.index,
                          meters=len(self.meters))  # fmt: skip
                async for _signum in signals:
                    break
            # Stop polling; each poller releases its association on the way out (shielded).
            pollers.cancel()
            with trio.move_on_after(RELEASE_S):
                await stopped.wait()
            self.report()
            with trio.move_on_after(RELEASE_S):
                await self.flush(out)
            nursery.cancel_scope.cancel()
        await out.aclose()


def main() -> None:
    index = int(sys.argv[1])
    payload = pickle.load(sys.stdin.buffer)
    setup_logging(payload["log_level"], stream=sys.stderr)
    worker = _Worker(index, payload["meters"], payload["poller_options"])
    trio.run(worker.run)


if __name__ == "__main__":
    main()
