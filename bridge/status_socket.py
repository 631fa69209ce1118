"""The status socket: a Unix socket in the data directory that the running service always serves.

``dlms-bridge health`` (and anything else on the box that may read the data directory) asks it
for the service's status. The protocol is one request line and one reply line, then the server
closes the connection:

- request: ``status\\n`` (at most :data:`MAX_REQUEST_BYTES`; an empty request means the same);
- reply: one JSON object and ``\\n``: the service's :meth:`~bridge.service.BridgeService.status`
  with ``"protocol": 1``, or ``{"protocol": 1, "error": "..."}`` for a request it does not know.

The socket is ``<data_dir>/status.sock``, mode 0600 (the service user only; root can always
connect). A client that does not finish its request within :data:`REQUEST_DEADLINE_S` is
disconnected, and at most :data:`MAX_CLIENTS` are served at a time, so nothing a client does can
hold up the service. The socket file is removed when the service stops; a stale one left by a
crash is replaced at the next start (the instance lock guarantees no other service owns it).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket as _stdsocket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from bridge.logs import log_event

__all__ = [
    "MAX_CLIENTS",
    "MAX_REPLY_BYTES",
    "MAX_REQUEST_BYTES",
    "PROTOCOL_VERSION",
    "REQUEST_DEADLINE_S",
    "SOCKET_NAME",
    "StatusUnavailable",
    "query_status",
    "serve_status",
    "socket_path",
]

log = logging.getLogger("bridge.status_socket")

SOCKET_NAME = "status.sock"
PROTOCOL_VERSION = 1
#: A request longer than this is refused.
MAX_REQUEST_BYTES = 256
#: A client must send its request (or close its side) within this many seconds.
REQUEST_DEADLINE_S = 2.0
#: Clients served at the same time; more wait for a turn.
MAX_CLIENTS = 4
#: A reply longer than this is refused by the client (a runaway or foreign server).
MAX_REPLY_BYTES = 64 * 1024 * 1024
#: Longest path a Unix socket address can hold on Linux (sun_path, without the final NUL).
_SUN_PATH_MAX = 107


class StatusUnavailable(Exception):
    """The status socket cannot be reached or gave no usable answer; the message says why.

    ``not_running`` is True only when that is certain (no socket, or nobody listening on it).
    """

    def __init__(self, message: str, *, not_running: bool = False) -> None:
        super().__init__(message)
        self.not_running = not_running


def socket_path(data_dir: str | os.PathLike[str]) -> Path:
    """Where the service of this data directory serves its status."""
    return Path(data_dir) / SOCKET_NAME


async def _bind(path: Path) -> trio.SocketListener:
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, f"the socket path is longer than {_SUN_PATH_MAX} bytes")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
    try:
        # Bind with a umask that leaves the socket 0600 from its first moment, then make sure.
        old = os.umask(0o177)
        try:
            await sock.bind(os.fspath(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(MAX_CLIENTS * 4)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def serve_status(
    path: Path,
    status: Callable[[], Awaitable[dict[str, Any]]],
    *,
    task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``status()`` on the Unix socket ``path`` until cancelled.

    Reports the path through ``task_status`` (``None`` if the socket could not be created: that
    is logged as an error, and the service runs on without it).
    """
    try:
        listener = await _bind(path)
    except OSError as exc:
        log_event(
            log, logging.ERROR, "status_socket_failed", path=str(path),
            error=exc.strerror or str(exc),
        )  # fmt: skip
        task_status.started(None)
        return
    limiter = trio.CapacityLimiter(MAX_CLIENTS)
    try:
        async with listener, trio.open_nursery() as nursery:
            task_status.started(path)
            while True:
                stream = await listener.accept()
                nursery.start_soon(_serve_one, stream, status, limiter)
    finally:
        try:
            path.unlink()
        except OSError:
            pass


async def _serve_one(
    stream: trio.SocketStream,
    status: Callable[[], Awaitable[dict[str, Any]]],
    limiter: trio.CapacityLimiter,
) -> None:
    async with stream, limiter:
        try:
            request = await _read_request(stream)
            if request is None:
                return
            if request in ("", "status"):
                try:
                    reply = {"protocol": PROTOCOL_VERSION, **(await status())}
                except Exception:
                    # A bug in gathering the status must not take the service down with it.
                    log.exception("event=status_failed")
                    reply = {"protocol": PROTOCOL_VERSION, "error": "the status failed (see log)"}
            else:
                reply = {"protocol": PROTOCOL_VERSION, "error": "unknown request"}
            data = (json.dumps(reply, separators=(",", ":")) + "\n").encode()
            with trio.move_on_after(REQUEST_DEADLINE_S):
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away: nothing to tell it


async def _read_request(stream: trio.SocketStream) -> str | None:
    """The request line; None if the client was too slow or sent too much."""
    buffer = bytearray()
    with trio.move_on_after(REQUEST_DEADLINE_S):
        while b"\n" not in buffer:
            chunk = await stream.receive_some(MAX_REQUEST_BYTES)
            if not chunk:
                break
            buffer += chunk
            if len(buffer) > MAX_REQUEST_BYTES:
                return None
        return buffer.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    return None


async def query_status(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the service at ``path`` for its status; :class:`StatusUnavailable` says why not."""
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(os.fspath(path))
            async with stream:
                await stream.send_all(b"status\n")
                buffer = bytearray()
                while True:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    buffer += chunk
                    if len(buffer) > MAX_REPLY_BYTES:
                        raise StatusUnavailable(
                            f"{path}: reply larger than {MAX_REPLY_BYTES} bytes"
                        )
    except trio.TooSlowError:
        raise StatusUnavailable(f"{path}: no answer within {timeout:g} s") from None
    except FileNotFoundError:
        raise StatusUnavailable(
            f"{path} does not exist: the service is not running (or uses another data directory)",
            not_running=True,
        ) from None
    except ConnectionRefusedError:
        raise StatusUnavailable(
            f"{path}: connection refused: the service is not running (stale socket)",
            not_running=True,
        ) from None
    except PermissionError:
        raise StatusUnavailable(
            f"{path}: permission denied: run as the service user or root"
        ) from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise StatusUnavailable(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        reply = json.loads(bytes(buffer).decode())
    except (UnicodeDecodeError, ValueError):
        raise StatusUnavailable(f"{path}: the reply is not JSON") from None
    if not isinstance(reply, dict) or reply.get("protocol") != PROTOCOL_VERSION:
        raise StatusUnavailable(f"{path}: not a dlms-bridge status reply")
    if "error" in reply:
        raise StatusUnavailable(f"{path}: the service answered: {reply['error']}")
    return reply
