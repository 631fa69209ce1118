"""Simulated meters reached over in-memory streams, for tests on Trio's virtual clock.

:class:`MemoryMeters` is a :data:`bridge.session.StreamFactory`: the meter is chosen by the
endpoint's port (port ``BASE_PORT + i`` is meter ``i``), each connection is served by the real
simulator code (link, COSEM server, faults) on the other end of a memory stream pair.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import attrs
import trio
import trio.testing

from bridge.session import MeterEndpoint
from bridge.simulator.server import Simulator, SimulatorConfig

BASE_PORT = 40000


@attrs.define(eq=False)
class MemoryMeters:
    """N simulator meters; ``await meters(endpoint)`` opens a connection to one of them."""

    sim: Simulator
    nursery: trio.Nursery
    #: Meters that refuse connections (as a closed port does).
    refusing: set[int] = attrs.Factory(set)
    #: Called with each new server-side stream; return False to hang up at once.
    accept: Callable[[int], bool] | None = None
    connects: list[tuple[int, float]] = attrs.Factory(list)
    #: Connect over a socket pair (real file descriptors, as the polling engine needs)
    #: instead of a memory stream pair.
    sockets: bool = False

    @classmethod
    def start(
        cls, nursery: trio.Nursery, *, sockets: bool = False, **config: object
    ) -> MemoryMeters:
        sim = Simulator(SimulatorConfig(port=0, **config))  # type: ignore[arg-type]
        return cls(sim, nursery, sockets=sockets)

    def port(self, index: int) -> int:
        return BASE_PORT + index

    async def __call__(self, endpoint: MeterEndpoint) -> trio.abc.Stream:
        index = endpoint.port - BASE_PORT
        self.connects.append((index, trio.current_time()))
        await trio.sleep(0)  # a connect is a checkpoint, as it is over TCP
        if index in self.refusing:
            raise OSError(errno.ECONNREFUSED, "Connection refused")
        client: trio.abc.Stream
        server: trio.abc.Stream
        if self.sockets:
            a, b = trio.socket.socketpair()
            client, server = trio.SocketStream(a), trio.SocketStream(b)
        else:
            client, server = trio.testing.memory_stream_pair()
        if self.accept is not None and not self.accept(index):
            await server.aclose()
        else:
            self.nursery.start_soon(self.sim.serve_stream, index, server)
        return client
