"""Sending and receiving on a meter's TCP socket with fewer trips through the Trio scheduler.

``trio.SocketStream.send_all`` yields to the scheduler after every successful send, and
``receive_some`` once more after the data arrived: two task switches per request that buy
nothing for a poller, whose request always fits in the socket buffer and whose only real wait
is for the reply. :func:`send_now` writes what the socket takes at once, without a checkpoint;
:func:`receive_some` waits for the socket to become readable (a checkpoint) and reads.

Both work on the socket's file descriptor, which Trio keeps non-blocking. Any other stream
(memory streams in tests, TLS) takes the stream's own methods. Errors are the ones the socket
raises (:class:`OSError`), or Trio's when the stream was closed.
"""

from __future__ import annotations

import os

import trio

__all__ = ["receive_some", "send_now"]


def _socket_fd(stream: trio.abc.Stream) -> int | None:
    if type(stream) is trio.SocketStream:
        fd = stream.socket.fileno()
        if fd >= 0:
            return fd
    return None


def send_now(stream: trio.abc.Stream, data: bytes) -> int:
    """Write as much of ``data`` as the socket takes now, without waiting; return how many
    bytes that was (0 for a stream that is not a plain socket: send it the usual way)."""
    fd = _socket_fd(stream)
    if fd is None or not data:
        return 0
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


async def receive_some(stream: trio.abc.Stream, max_bytes: int) -> bytes:
    """Wait for data and return up to ``max_bytes`` of it (``b""`` at end of stream)."""
    fd = _socket_fd(stream)
    if fd is None:
        return bytes(await stream.receive_some(max_bytes))
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:  # woken without data (it happens): wait again
            continue
