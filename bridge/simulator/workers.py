"""The simulator over several processes: ``dlms-bridge simulate --workers N``.

The parent opens every meter's listening socket, then forks N workers; worker k serves the
k-th contiguous share of the meters on the sockets it inherited (one reactor thread each, see
:mod:`bridge.simulator.reactor`), so the meters' ports, values and faults are what one process
would give. Every worker holds every meter's state but serves only its share's connections.

The parent serves the control interface: ``status`` it answers itself; every other command goes
to every worker (so that faults and clock offsets stay the same everywhere), and the answer is
the workers' common one, with each meter's counters taken from the worker that serves it. A
worker that dies takes the simulator down (exit status 1, the others stopped); SIGTERM or
Ctrl-C stops them all.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from bridge.simulator.server import Simulator, SimulatorError, SimulatorPorts, open_listeners

__all__ = ["AUTO_METERS_PER_WORKER", "auto_workers", "serve_in_workers", "shares"]

#: ``--workers auto``: one worker per this many meters, at most one per core.
AUTO_METERS_PER_WORKER = 1000
_MAX_LINE = 16 * 1024 * 1024


def auto_workers(meters: int, cores: int | None = None) -> int:
    """The workers ``--workers auto`` uses: one per :data:`AUTO_METERS_PER_WORKER` meters, at
    least one, at most one per core (so small runs stay in one process)."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(cores, meters // AUTO_METERS_PER_WORKER))


def shares(meters: int, workers: int) -> list[range]:
    """The meters of each worker: contiguous, sizes differing by one at most."""
    return [range(k * meters // workers, (k + 1) * meters // workers) for k in range(workers)]


@attrs.define(eq=False)
class _Worker:
    pid: int
    meters: range
    stream: trio.SocketStream | None = None
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    buffer: bytearray = attrs.field(factory=bytearray)

    async def line(self) -> bytes:
        assert self.stream is not None
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise OSError(f"simulator worker {self.pid} went away")
            self.buffer += data
            if len(self.buffer) > _MAX_LINE:
                raise OSError(f"simulator worker {self.pid}: answer too long")
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer[:] = rest
        return line

    async def ask(self, request: bytes) -> dict[str, Any]:
        async with self.lock:
            assert self.stream is not None
            await self.stream.send_all(request + b"\n")
            answer = json.loads(await self.line())
            assert isinstance(answer, dict)
            return answer


def serve_in_workers(
    sim: Simulator, workers: int, announce: Callable[[SimulatorPorts], None]
) -> int:
    """Serve ``sim``'s meters from ``workers`` forked processes until SIGTERM or Ctrl-C.

    ``announce(ports)`` is called once every worker serves. Returns the exit status (0, or 1
    if a worker died). Raises :class:`~bridge.simulator.server.SimulatorError` if a port cannot
    be opened. Call before any Trio run or thread exists in this process.
    """
    config = sim.config
    listeners = open_listeners(config.host, config.port, config.meters)
    ports = tuple(sock.getsockname()[1] for _, sock in listeners)
    started: list[_Worker] = []
    ends: list[socket.socket] = []
    try:
        for meters in shares(config.meters, workers):
            mine, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:  # the worker
                mine.close()
                for other in ends:
                    other.close()
                _worker_process(sim, [pair for pair in listeners if pair[0] in meters], theirs)
            theirs.close()
            ends.append(mine)
            started.append(_Worker(pid, meters))
    finally:
        for _, sock in listeners:
            sock.close()  # the workers hold them
    try:
        return trio.run(_supervise, sim, started, ends, ports, announce)
    finally:
        _stop(started)


def _worker_process(
    sim: Simulator, listeners: Sequence[tuple[int, socket.socket]], control: socket.socket
) -> None:
    """The body of a forked worker: never returns."""
    status = 0
    try:
        sim.config = attrs.evolve(sim.config, control_port=None)
        trio.run(_work, sim, listeners, control)
    except KeyboardInterrupt:
        pass
    except SimulatorError as exc:
        print(f"dlms-bridge simulate: {exc}", file=sys.stderr)
        status = 1
    except BaseException as exc:  # noqa: BLE001 (a worker reports and exits, never returns)
        print(f"dlms-bridge simulate: worker {os.getpid()}: {exc!r}", file=sys.stderr)
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


async def _work(
    sim: Simulator, listeners: Sequence[tuple[int, socket.socket]], control: socket.socket
) -> None:
    from bridge.simulator.control import serve_stream

    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            await nursery.start(functools.partial(sim.serve, listeners=listeners))
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(control))
            await stream.send_all(b'{"ready": true}\n')
            await serve_stream(sim, stream)
            nursery.cancel_scope.cancel()  # the parent went away


async def _supervise(
    sim: Simulator,
    workers: list[_Worker],
    ends: list[socket.socket],
    ports: tuple[int, ...],
    announce: Callable[[SimulatorPorts], None],
) -> int:
    config = sim.config
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGCHLD) as signals:
        for worker, end in zip(workers, ends, strict=True):
            worker.stream = trio.SocketStream(trio.socket.from_stdlib_socket(end))
        async with trio.open_nursery() as nursery:
            for worker in workers:
                try:
                    ready = json.loads(await worker.line())
                except (OSError, ValueError):
                    return 1  # it could not start, and said why on stderr
                assert ready.get("ready") is True, ready
            control = None
            if config.control_port is not None:
                control = await nursery.start(
                    _serve_control, sim, workers, ports, config.host, config.control_port
                )
            announce(SimulatorPorts(config.host, ports, control))
            async for signum in signals:
                if signum == signal.SIGTERM:
                    nursery.cancel_scope.cancel()
                    return 0
                dead = _reap(workers)
                if dead:
                    print(
                        f"dlms-bridge simulate: worker {dead} stopped; stopping the others",
                        file=sys.stderr,
                    )
                    nursery.cancel_scope.cancel()
                    return 1
    return 0


def _reap(workers: list[_Worker]) -> int | None:
    """The pid of a worker that ended (collected), or None."""
    for worker in workers:
        if worker.pid <= 0:
            continue
        try:
            pid, _ = os.waitpid(worker.pid, os.WNOHANG)
        except ChildProcessError:
            pid = worker.pid
        if pid:
            worker.pid = -worker.pid
            return pid
    return None


def _stop(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
    for worker in workers:
        if worker.pid > 0:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(worker.pid, 0)
            worker.pid = -worker.pid


# -- the control interface, over the workers ------------------------------------------------------


async def _serve_control(
    sim: Simulator,
    workers: list[_Worker],
    ports: tuple[int, ...],
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    from bridge.simulator.control import serve_lines

    async def answer(request: object) -> dict[str, Any]:
        return await _forward(sim, workers, ports, request)

    await serve_lines(answer, host, port, task_status=task_status)


async def _forward(
    sim: Simulator, workers: list[_Worker], ports: tuple[int, ...], request: object
) -> dict[str, Any]:
    if isinstance(request, dict) and request.get("cmd") == "status":
        config = sim.config
        return {
            "ok": True,
            "meters": config.meters,
            "host": config.host,
            "ports": list(ports),
            "transport": config.transport,
            "model": config.settings.model,
            "seed": config.seed,
            "workers": len(workers),
        }
    line = json.dumps(request).encode()
    answers: list[dict[str, Any]] = [{} for _ in workers]
    try:
        async with trio.open_nursery() as nursery:
            for k, worker in enumerate(workers):

                async def ask(k: int = k, worker: _Worker = worker) -> None:
                    answers[k] = await worker.ask(line)

                nursery.start_soon(ask)
    except (OSError, ValueError, trio.BrokenResourceError) as exc:
        return {"ok": False, "error": f"a simulator worker did not answer: {exc}"}
    for answer in answers:
        if not answer.get("ok"):
            return answer
    merged = dict(answers[0])
    counters = merged.get("counters")
    if isinstance(counters, dict):
        owner = {}
        for k, worker in enumerate(workers):
            for i in worker.meters:
                owner[str(i)] = k
        merged["counters"] = {
            key: answers[owner.get(key, 0)]["counters"].get(key, value)
            for key, value in counters.items()
        }
    return merged
