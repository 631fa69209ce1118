"""The Trio TCP server that hosts the simulated meters: one listening port per meter.

This is the thin shell around the sans-IO parts: it opens the listening sockets and hands them
to the :class:`~bridge.simulator.reactor.Reactor` (one thread that accepts and serves every
fault-free connection); a connection of a meter with faults (or any, when recording) is served
by a task here, which feeds received bytes to the meter's link and carries out the wire
operations the fault layer makes of each reply.

In-process use (tests, the demo)::

    sim = Simulator(SimulatorConfig(meters=3, port=0))
    ports = await nursery.start(sim.serve)      # SimulatorPorts: one port per meter
    sim.set_faults("1:fcs=0.5")                 # change faults while running
    sim.meter(1).snapshot()                     # its counters
"""

from __future__ import annotations

import logging
import math
import socket
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import trio

from bridge.capture import RecordingStream
from bridge.limits import raise_open_file_limit
from bridge.pcap import PcapWriter
from bridge.simulator.cosem_server import CosemServer
from bridge.simulator.faults import (
    FaultSpec,
    MeterRange,
    Reset,
    Send,
    Sleep,
    parse_fault_spec,
)
from bridge.simulator.meter import Meter, MeterSettings
from bridge.simulator.models import get_model
from bridge.simulator.reactor import RECEIVE_SIZE, Reactor
from bridge.simulator.server_link import HdlcServerLink, ServerLink, WrapperServerLink

__all__ = [
    "TRANSPORTS",
    "Simulator",
    "SimulatorConfig",
    "SimulatorError",
    "SimulatorPorts",
    "open_listeners",
    "raise_open_file_limit",
]

log = logging.getLogger("bridge.simulator")

TRANSPORTS = ("hdlc", "wrapper")
_RECEIVE_SIZE = RECEIVE_SIZE
#: Pending connections per meter's listening socket.
_BACKLOG = 128


class SimulatorError(Exception):
    """The simulator cannot start (a port in use, a bad setting)."""


@attrs.frozen
class SimulatorConfig:
    """Everything a simulator run needs; ``port=0`` gives every meter an ephemeral port."""

    meters: int = 1
    host: str = "127.0.0.1"
    port: int = 4061
    transport: str = "hdlc"
    settings: MeterSettings = attrs.field(factory=MeterSettings)
    faults: str | FaultSpec = ""
    seed: int = 0
    #: The control interface's port (``None``: no control interface, 0: an ephemeral port).
    control_port: int | None = None
    #: Record every session as pcap, one file per meter (``meter-0000.pcap``...) in this directory.
    record_dir: str | None = None
    #: Seconds the reactor lets requests gather between passes (see ``Reactor``); 0: answer each
    #: request as soon as it arrives.
    gather: float = 0.0


@attrs.frozen
class SimulatorPorts:
    """Where the simulator listens: ``meters[i]`` is the port of meter ``i``."""

    host: str
    meters: tuple[int, ...]
    control: int | None = None


def open_listeners(
    host: str, port: int, meters: int, indices: Sequence[int] | None = None
) -> list[tuple[int, socket.socket]]:
    """A listening socket for each meter (all, or ``indices``): meter i on ``port + i``, or on
    an ephemeral port when ``port`` is 0. Raises :class:`SimulatorError` naming the meter and the
    port that cannot be opened (the ones opened before are closed)."""
    selected = range(meters) if indices is None else indices
    opened: list[tuple[int, socket.socket]] = []
    try:
        found = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise SimulatorError(f"cannot listen on {host}: {exc.strerror or exc}") from None
    # Several addresses for the host: the first, as trio's listeners were used (one port each).
    family, kind, proto, _, address = found[0]
    for index in selected:
        number = port + index if port else 0
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], number, *address[2:]))
            sock.listen(_BACKLOG)
        except OSError as exc:
            sock.close()
            for _, other in opened:
                other.close()
            raise SimulatorError(
                f"meter {index}: cannot listen on {host}:{number}: {exc.strerror or exc}"
            ) from None
        opened.append((index, sock))
    return opened


class _ConnectionReset(Exception):
    """The fault layer reset the connection."""


class Simulator:
    """N simulated meters served over TCP by one Trio task tree.

    ``clock`` gives the wall-clock time the meters' values follow (``time.time``); timers and
    fault timing use Trio's clock.
    """

    def __init__(self, config: SimulatorConfig, *, clock: Callable[[], float] = time.time) -> None:
        if config.meters < 1:
            raise SimulatorError(f"the number of meters must be at least 1, not {config.meters}")
        if config.transport not in TRANSPORTS:
            raise SimulatorError(
                f"unknown transport {config.transport!r} (known: {', '.join(TRANSPORTS)})"
            )
        if config.port and config.port + config.meters - 1 > 0xFFFF:
            raise SimulatorError(
                f"{config.meters} meters from port {config.port} run past port 65535"
            )
        try:
            model = get_model(config.settings.model)
        except ValueError as exc:
            raise SimulatorError(str(exc)) from None
        self.config = config
        self.clock = clock
        self.meters = [
            Meter.create(i, config.seed, config.settings, model) for i in range(config.meters)
        ]
        self._initial_faults = (
            config.faults
            if isinstance(config.faults, FaultSpec)
            else parse_fault_spec(config.faults, config.meters)
        )
        self.ports: SimulatorPorts | None = None
        self._recorders: dict[int, PcapWriter] = {}

    # -- control API -----------------------------------------------------------------------------

    def meter(self, index: int) -> Meter:
        """Meter ``index``; raises :class:`IndexError` naming the valid range."""
        if not 0 <= index < len(self.meters):
            raise IndexError(f"no meter {index} (meters are 0..{len(self.meters) - 1})")
        return self.meters[index]

    def set_faults(self, spec: str | FaultSpec) -> list[int]:
        """Set the faults of every meter the spec names (others keep theirs); returns them.

        A string is parsed first (:class:`~bridge.simulator.faults.FaultSpecError` if bad).
        Call from within Trio: a ``silence`` without probability starts now.
        """
        parsed = spec if isinstance(spec, FaultSpec) else parse_fault_spec(spec, len(self.meters))
        now = trio.current_time()
        touched = sorted(
            {i for group in parsed.groups for i in group.meters.indices(len(self.meters))}
        )
        for i in touched:
            self.meters[i].faults.apply(parsed.for_meter(i), now)
        return touched

    def clear_faults(self, meters: MeterRange | None = None) -> list[int]:
        """Remove every fault from the selected meters (all by default); returns them."""
        selected = list((meters or MeterRange()).indices(len(self.meters)))
        spec = FaultSpec()
        for i in selected:
            self.meters[i].faults.apply(spec.for_meter(i), 0.0)
        return selected

    # -- serving ---------------------------------------------------------------------------------

    async def serve(
        self,
        *,
        listeners: Sequence[tuple[int, socket.socket]] | None = None,
        task_status: trio.TaskStatus[SimulatorPorts] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen for every meter, report the ports via ``task_status``, serve until cancelled.

        ``listeners``: (meter index, listening socket) of the meters to serve, opened already
        (a worker process serves part of the meters on sockets its parent opened); by default
        every meter's port is opened here. The sockets are closed when serving ends.
        """
        raise_open_file_limit()
        now = trio.current_time()
        for meter in self.meters:
            meter.faults.apply(self._initial_faults.for_meter(meter.index), now)
        config = self.config
        opened: list[tuple[int, socket.socket]] = list(listeners or ())
        served = [index for index, _ in opened] if listeners is not None else range(config.meters)
        if config.record_dir is not None:
            directory = Path(config.record_dir)
            try:
                # The captures hold the password in clear: a new directory is the owner's only.
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                for index in served:
                    self._recorders[index] = PcapWriter(directory / f"meter-{index:04d}.pcap")
            except OSError as exc:
                self._close_recorders()
                for _, sock in opened:
                    sock.close()
                raise SimulatorError(f"--record {config.record_dir}: {exc}") from None
        try:
            if listeners is None:
                opened = open_listeners(config.host, config.port, config.meters)
            reactor = Reactor(
                make_link=self._link,
                handover=self._serve_socket,
                clock=self.clock,
                inactivity_timeout=config.settings.inactivity_timeout,
                recording=bool(self._recorders),
                gather=config.gather,
            )
            for index, sock in opened:
                reactor.add_listener(sock, self.meters[index])
            async with trio.open_nursery() as nursery:
                control = None
                if config.control_port is not None:
                    from bridge.simulator.control import serve_control

                    control = await nursery.start(
                        serve_control, self, config.host, config.control_port
                    )
                await nursery.start(reactor.run)
                self.ports = SimulatorPorts(
                    config.host, tuple(sock.getsockname()[1] for _, sock in opened), control
                )
                task_status.started(self.ports)
        finally:
            for _, sock in opened:
                sock.close()
            self._close_recorders()

    def _close_recorders(self) -> None:
        for writer in self._recorders.values():
            writer.close()
        self._recorders.clear()

    async def _serve_socket(
        self, meter: Meter, sock: socket.socket, link: ServerLink | None
    ) -> None:
        """A connection the reactor hands over: served in this task until it closes."""
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        writer = self._recorders.get(meter.index)
        if writer is not None:
            await self._serve_connection(meter, RecordingStream(stream, writer), link)
        else:
            await self._serve_connection(meter, stream, link)

    def _link(self, meter: Meter) -> ServerLink:
        server = CosemServer(meter)
        if self.config.transport == "hdlc":
            return HdlcServerLink(meter, server)
        return WrapperServerLink(meter, server)

    async def serve_stream(self, index: int, stream: trio.abc.Stream) -> None:
        """Serve one connection to meter ``index`` over any byte stream until it closes.

        What the TCP listeners do for each accepted connection; tests pass in-memory streams
        to run the meters on Trio's virtual clock. A ``reset`` fault just closes such a stream.
        """
        await self._serve_connection(self.meter(index), stream)

    async def _serve_connection(
        self, meter: Meter, stream: trio.abc.Stream, link: ServerLink | None = None
    ) -> None:
        """Serve one connection; ``link``: the one it was served with so far (none: a new one)."""
        counters = meter.counters
        faults = meter.faults
        timeout = meter.settings.inactivity_timeout or math.inf
        try:
            if link is None:
                counters.connections += 1
                link = self._link(meter)
                await self._perform(stream, meter, faults.on_connect(link.sample_reply()))
            while True:
                with trio.move_on_after(timeout) as idle:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                if idle.cancelled_caught:
                    # The field meter drops an idle link and the connection with it.
                    counters.inactivity_closes += 1
                    link.expire()
                    return
                if not data:
                    return
                counters.bytes_in += len(data)
                active = faults.active
                if active and faults.silenced(trio.current_time()):
                    continue
                for reply in link.receive_data(bytes(data), self.clock()):
                    if active:
                        ops = faults.plan(reply, trio.current_time(), hdlc=link.hdlc)
                        await self._perform(stream, meter, ops)
                    else:
                        counters.bytes_out += len(reply)
                        await stream.send_all(reply)
        except _ConnectionReset:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            if link is not None:
                link.close()
            await trio.aclose_forcefully(stream)

    async def _perform(
        self, stream: trio.abc.Stream, meter: Meter, ops: list[Send | Sleep | Reset]
    ) -> None:
        for op in ops:
            if isinstance(op, Send):
                meter.counters.bytes_out += len(op.data)
                await stream.send_all(op.data)
            elif isinstance(op, Sleep):
                await trio.sleep(op.seconds)
            elif not isinstance(stream, trio.SocketStream):
                raise _ConnectionReset
            else:
                # SO_LINGER 0: close() sends RST instead of FIN.
                stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                stream.socket.close()
                raise _ConnectionReset
