"""Many meters' sockets served by one thread: the simulator's steady-state engine.

A Trio task per connection costs several scheduler passes per request (the wake-up, the
receive, the send's checkpoints, the inactivity cancel scope): most of the simulator's CPU. The
:class:`Reactor` keeps every listening socket and every fault-free connection in one ``epoll``
set, served by one thread of its own in a plain loop: wait, then accept, read, answer and write
for every ready socket, with non-blocking socket calls. Under load one wait serves many requests;
with a ``gather`` time the thread lets requests gather between passes, fewer and fuller passes
for replies up to that much later (a wake-up of the thread costs more than answering a poll).
The meter side of each connection is the same sans-IO link and COSEM server as on the
task-per-connection path, so the bytes on the wire are the same.

A connection leaves the reactor for a Trio task of its own (the ``handover`` coroutine, started
in the reactor's nursery) when its meter has a fault set (faults need timed sends: delays, drips,
chunks, resets; the meter's faults are checked before each read) or when sessions are recorded;
it does not come back. Replies the peer does not take at once are kept (at most
:data:`MAX_PENDING_OUT` bytes) and the connection is not read until they are out, so a client
that stops reading stalls only itself, as with ``send_all``. Connections idle for the meters'
inactivity timeout are closed, as the per-connection path does.

Threads: the reactor thread reads and changes the meters (counters, association state) of the
connections it holds; Trio code (the control interface) changes faults and clock offsets, plain
attribute writes that the thread sees at its next request. The wall clock (``clock``) is called
from the reactor thread.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from bridge.simulator.meter import Meter
    from bridge.simulator.server_link import ServerLink

__all__ = ["MAX_PENDING_OUT", "RECEIVE_SIZE", "Handover", "Reactor"]

log = logging.getLogger("bridge.simulator")

#: Bytes received in one read (as the per-connection path).
RECEIVE_SIZE = 4096
#: Unsent reply bytes kept for a slow reader; beyond that the connection is closed.
MAX_PENDING_OUT = 1 << 20
#: Ready sockets taken from the epoll set per wait.
_BATCH = 1024
#: Connections accepted per listener per wait (fairness between meters).
_ACCEPTS_PER_PASS = 16
#: How long accept() errors that mean "out of resources for now" are waited out (as trio does).
_ACCEPT_BACKOFF_S = 0.1
_ACCEPT_BACKOFF_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
# The client gave up before its connection was accepted: nothing to do.
_ACCEPT_SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_OUT_DONE = _OUT | select.EPOLLERR | select.EPOLLHUP

#: ``handover(meter, sock, link)``: serve this connection in a task of its own until it closes;
#: ``link`` is None for a connection just accepted (nothing counted yet), else the link that
#: served it so far.
Handover = Callable[["Meter", socket.socket, "ServerLink | None"], Awaitable[None]]


class _Connection:
    __slots__ = ("fd", "last", "link", "meter", "out", "sock")

    def __init__(self, sock: socket.socket, meter: Meter, link: ServerLink, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.meter = meter
        self.link = link
        self.last = now
        self.out: bytearray | None = None


class Reactor:
    """Listeners and connections of many meters, served by a thread while :meth:`run` runs.

    ``make_link(meter)`` gives a new connection's link; ``handover`` serves a connection in a
    Trio task of its own: a meter's connections do so while it has faults, and every connection
    with ``recording``; ``clock`` is the wall clock the meters' values follow;
    ``inactivity_timeout`` (seconds, 0 never) closes idle connections; ``gather`` (seconds):
    after serving what arrived, the thread waits that long before it looks again, so that the
    requests that come meanwhile are served in one pass (a reply may leave up to that much later;
    0: every request is answered as soon as it arrives).
    """

    def __init__(
        self,
        *,
        make_link: Callable[[Meter], ServerLink],
        handover: Handover,
        clock: Callable[[], float],
        inactivity_timeout: float,
        recording: bool = False,
        gather: float = 0.0,
    ) -> None:
        self._make_link = make_link
        self._gather = gather
        self._handover = handover
        self._clock = clock
        self._timeout = inactivity_timeout or math.inf
        self._recording = recording
        self._epoll = select.epoll()
        self._listeners: dict[int, tuple[socket.socket, Meter]] = {}
        self._connections: dict[int, _Connection] = {}
        #: Listeners waiting out an accept error: fd -> when to watch them again.
        self._resting: dict[int, float] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._epoll.register(self._wake_r, _IN)
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def connections(self) -> int:
        """Connections served by the reactor now."""
        return len(self._connections)

    def add_listener(self, sock: socket.socket, meter: Meter) -> None:
        """Accept ``meter``'s connections from this listening socket (before :meth:`run`)."""
        sock.setblocking(False)
        self._listeners[sock.fileno()] = (sock, meter)
        self._epoll.register(sock.fileno(), _IN)

    # -- the Trio side ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; then stop the thread and close every connection it holds.

        Reports through ``task_status`` once the thread runs. An error in the reactor thread is
        raised here.
        """
        self._token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        failure: list[BaseException] = []

        def target() -> None:
            try:
                self._serve()
            except BaseException as exc:  # noqa: BLE001 (handed to the Trio side, raised there)
                failure.append(exc)
            finally:
                self._close_all()
                try:
                    assert self._token is not None
                    self._token.run_sync_soon(finished.set)
                except trio.RunFinishedError:
                    pass  # Trio is gone: nobody waits for this thread

        thread = threading.Thread(target=target, name="simulator-reactor", daemon=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                thread.start()
                task_status.started()
                try:
                    await finished.wait()
                finally:
                    self._stop(thread)
                if failure:
                    raise failure[0]
                raise RuntimeError("the simulator's reactor thread stopped")
        finally:
            self._nursery = None
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _stop(self, thread: threading.Thread) -> None:
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full: the thread wakes anyway
        if thread.is_alive():
            thread.join()

    def _start_handover(self, meter: Meter, sock: socket.socket, link: ServerLink | None) -> None:
        """In Trio's thread: start serving a connection the reactor let go."""
        nursery = self._nursery
        try:
            if nursery is None:
                raise RuntimeError("not serving")
            nursery.start_soon(self._handover, meter, sock, link)
        except RuntimeError:  # serving is ending: the connection goes with it
            if link is not None:
                link.close()
            sock.close()

    def _hand_over(self, meter: Meter, sock: socket.socket, link: ServerLink | None) -> None:
        assert self._token is not None
        try:
            self._token.run_sync_soon(self._start_handover, meter, sock, link)
        except trio.RunFinishedError:
            if link is not None:
                link.close()
            sock.close()

    # -- the reactor thread ----------------------------------------------------------------------

    def _serve(self) -> None:
        epoll = self._epoll
        listeners = self._listeners
        connections = self._connections
        readable = self._readable
        timeout = self._timeout
        gather = self._gather
        next_sweep = time.monotonic() + timeout
        while not self._stopping:
            wait = -1.0
            if next_sweep != math.inf:
                wait = max(0.0, next_sweep - time.monotonic())
            if self._resting:
                until = min(self._resting.values()) - time.monotonic()
                wait = max(0.0, until) if wait < 0 else max(0.0, min(wait, until))
            events = epoll.poll(wait, _BATCH)
            now = time.monotonic()
            for fd, mask in events:
                conn = connections.get(fd)
                if conn is not None:
                    if conn.out is None:
                        readable(conn, now)
                    elif mask & _OUT_DONE:
                        self._flush(conn)
                elif fd in listeners:
                    self._accept(fd, now)
            if now >= next_sweep:
                next_sweep = self._sweep(now)
            if self._resting:
                self._wake_listeners(now)
            if gather and events:
                # Let requests gather: the next wait serves them together (fewer wake-ups).
                rest = gather - (time.monotonic() - now)
                if rest > 0:
                    time.sleep(rest)

    def _readable(self, conn: _Connection, now: float) -> None:
        meter = conn.meter
        if meter.faults.active or self._recording:
            self._release(conn)
            self._hand_over(meter, conn.sock, conn.link)
            return
        try:
            data = conn.sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.last = now
        counters = meter.counters
        counters.bytes_in += len(data)
        for reply in conn.link.receive_data(data, self._clock()):
            counters.bytes_out += len(reply)
            if not self._send(conn, reply):
                return

    def _send(self, conn: _Connection, data: bytes) -> bool:
        """Send or keep ``data``; False if the connection was closed."""
        out = conn.out
        if out is not None:
            if len(out) + len(data) > MAX_PENDING_OUT:
                self._close(conn)
                return False
            out += data
            return True
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(conn)
            return False
        if sent < len(data):
            conn.out = bytearray(data[sent:])
            self._epoll.modify(conn.fd, _OUT)
        return True

    def _flush(self, conn: _Connection) -> None:
        out = conn.out
        assert out is not None
        try:
            sent = conn.sock.send(out)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        del out[:sent]
        if not out:
            conn.out = None
            self._epoll.modify(conn.fd, _IN)

    def _accept(self, fd: int, now: float) -> None:
        listener, meter = self._listeners[fd]
        for _ in range(_ACCEPTS_PER_PASS):
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_SKIP_ERRNOS:
                    continue
                log.warning("meter %d: accept failed (%s), retrying", meter.index, exc)
                self._epoll.unregister(fd)
                self._resting[fd] = now + _ACCEPT_BACKOFF_S
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if meter.faults.active or self._recording:
                self._hand_over(meter, sock, None)
                continue
            meter.counters.connections += 1
            conn = _Connection(sock, meter, self._make_link(meter), now)
            self._connections[conn.fd] = conn
            self._epoll.register(conn.fd, _IN)

    def _wake_listeners(self, now: float) -> None:
        for fd, until in list(self._resting.items()):
            if until <= now:
                del self._resting[fd]
                self._epoll.register(fd, _IN)

    def _sweep(self, now: float) -> float:
        """Close connections idle for the inactivity timeout; when to look again."""
        timeout = self._timeout
        earliest = now + timeout
        for conn in list(self._connections.values()):
            expiry = conn.last + timeout
            if expiry <= now:
                # The field meter drops an idle link and the connection with it.
                conn.meter.counters.inactivity_closes += 1
                conn.link.expire()
                self._close(conn)
            elif expiry < earliest:
                earliest = expiry
        return earliest

    def _release(self, conn: _Connection) -> None:
        del self._connections[conn.fd]
        self._epoll.unregister(conn.fd)

    def _close(self, conn: _Connection) -> None:
        if self._connections.pop(conn.fd, None) is None:
            return
        self._epoll.unregister(conn.fd)
        conn.link.close()
        conn.sock.close()

    def _close_all(self) -> None:
        for conn in list(self._connections.values()):
            self._close(conn)
        self._epoll.close()
