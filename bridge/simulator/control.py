"""The simulator's runtime control interface: JSON lines over TCP.

Each request is one JSON object on one line; each answer is one line, ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. Commands (``meters`` is ``all``, ``N`` or ``N-M``)::

    {"cmd": "status"}                              -> meters, ports, transport, model, seed
    {"cmd": "faults", "spec": "0-9:fcs=0.2;3:refuse"}  -> set the faults of the meters named
    {"cmd": "clear", "meters": "0-9"}              -> remove their faults (default: all)
    {"cmd": "get_faults", "meters": "0-9"}         -> each meter's faults in spec syntax
    {"cmd": "counters", "meters": "0-9"}           -> each meter's counters and injected faults
    {"cmd": "clock", "meters": "0", "offset_s": 120}   -> set the meters' clocks 120 s fast

The same operations are methods of :class:`~bridge.simulator.server.Simulator` for in-process use.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from bridge.simulator.faults import FaultSpecError, MeterRange, parse_meter_range

if TYPE_CHECKING:
    from bridge.simulator.server import Simulator

__all__ = ["Answer", "handle_command", "serve_control", "serve_lines", "serve_stream"]

_MAX_LINE = 64 * 1024


class _CommandError(Exception):
    pass


def _meters(sim: Simulator, request: dict[str, Any]) -> range:
    text = request.get("meters", "all")
    if not isinstance(text, str | int):
        raise _CommandError("meters must be all, N or N-M")
    try:
        meters = parse_meter_range(str(text), len(sim.meters))
    except FaultSpecError as exc:
        raise _CommandError(str(exc)) from None
    return meters.indices(len(sim.meters))


def handle_command(sim: Simulator, request: object) -> dict[str, Any]:
    """Carry out one decoded request; the answer is JSON-safe."""
    try:
        if not isinstance(request, dict):
            raise _CommandError("a request is a JSON object")
        cmd = request.get("cmd")
        if cmd == "status":
            ports = sim.ports
            return {
                "ok": True,
                "meters": len(sim.meters),
                "host": sim.config.host,
                "ports": list(ports.meters) if ports else [],
                "transport": sim.config.transport,
                "model": sim.config.settings.model,
                "seed": sim.config.seed,
            }
        if cmd == "faults":
            spec = request.get("spec")
            if not isinstance(spec, str):
                raise _CommandError('"faults" needs "spec": a fault spec string')
            try:
                touched = sim.set_faults(spec)
            except FaultSpecError as exc:
                raise _CommandError(str(exc)) from None
            return {"ok": True, "meters": touched}
        if cmd == "clear":
            selected = _meters(sim, request)
            sim.clear_faults(MeterRange(selected.start, selected.stop - 1))
            return {"ok": True, "meters": list(selected)}
        if cmd == "get_faults":
            return {
                "ok": True,
                "faults": {
                    str(i): sim.meters[i].faults.faults.spec() for i in _meters(sim, request)
                },
            }
        if cmd == "counters":
            return {
                "ok": True,
                "counters": {str(i): sim.meters[i].snapshot() for i in _meters(sim, request)},
            }
        if cmd == "clock":
            offset = request.get("offset_s")
            if isinstance(offset, bool) or not isinstance(offset, int | float):
                raise _CommandError('"clock" needs "offset_s": seconds the meters\' clocks are off')
            if not -10 * 365 * 86400 <= offset <= 10 * 365 * 86400:
                raise _CommandError("offset_s must be within ten years")
            selected = _meters(sim, request)
            for i in selected:
                sim.meters[i].clock_offset = float(offset)
            return {"ok": True, "meters": list(selected)}
        raise _CommandError(
            f"unknown cmd {cmd!r} (known: status, faults, clear, get_faults, counters, clock)"
        )
    except _CommandError as exc:
        return {"ok": False, "error": str(exc)}


#: Answers one decoded request (the simulator's own, or the workers' supervisor's).
Answer = Callable[[object], Awaitable[dict[str, Any]]]


async def _serve_client(answer: Answer, stream: trio.abc.Stream) -> None:
    buffer = bytearray()
    async with stream:
        while True:
            try:
                data = await stream.receive_some(4096)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            buffer += data
            if len(buffer) > _MAX_LINE and b"\n" not in buffer:
                await stream.send_all(b'{"ok": false, "error": "request line too long"}\n')
                return
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                if not line.strip():
                    continue
                try:
                    request = json.loads(line)
                except ValueError as exc:
                    reply: dict[str, Any] = {"ok": False, "error": f"not JSON: {exc}"}
                else:
                    reply = await answer(request)
                try:
                    await stream.send_all(json.dumps(reply).encode() + b"\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return


def _answer(sim: Simulator) -> Answer:
    async def answer(request: object) -> dict[str, Any]:
        return handle_command(sim, request)

    return answer


async def serve_stream(sim: Simulator, stream: trio.abc.Stream) -> None:
    """Serve the control interface of ``sim`` over one stream until it closes."""
    await _serve_client(_answer(sim), stream)


async def serve_lines(
    answer: Answer,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve JSON lines answered by ``answer`` on ``host:port``; reports the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    for extra in listeners[1:]:
        extra.socket.close()
    listener = listeners[0]
    async with listener, trio.open_nursery() as nursery:
        task_status.started(listener.socket.getsockname()[1])
        while True:
            stream = await listener.accept()
            nursery.start_soon(_serve_client, answer, stream)


async def serve_control(
    sim: Simulator,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control interface on ``host:port``; reports the bound port when ready."""
    await serve_lines(_answer(sim), host, port, task_status=task_status)
