"""The systemd notification protocol (sd_notify(3)), without libsystemd.

A ``Type=notify`` service tells systemd it is ready, how it is doing (``STATUS=``), that it is
alive (``WATCHDOG=1``, at least every ``WatchdogSec=``) and that it is reloading or stopping, by
sending newline-separated ``KEY=value`` datagrams to the AF_UNIX socket named in
``$NOTIFY_SOCKET``. A name starting with ``@`` is in the abstract namespace. Outside systemd the
variable is unset and every call here does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["notify", "watchdog_interval"]


def _socket_address(env: Mapping[str, str]) -> str | None:
    name = env.get("NOTIFY_SOCKET", "")
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None  # unset, or a kind we do not speak (vsock:)


def notify(
    *,
    ready: bool = False,
    status: str | None = None,
    watchdog: bool = False,
    reloading: bool = False,
    stopping: bool = False,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Send one notification; return whether it was sent.

    ``False`` means there is no systemd to tell (``NOTIFY_SOCKET`` unset) or nothing to say; a
    socket error is raised as :class:`OSError` for the caller to log. ``reloading`` includes the
    ``MONOTONIC_USEC`` that ``Type=notify-reload`` requires; send ``ready`` when the reload is done.
    """
    address = _socket_address(os.environ if env is None else env)
    lines = []
    if reloading:
        lines += [
            "RELOADING=1",
            f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
        ]
    if ready:
        lines.append("READY=1")
    if stopping:
        lines.append("STOPPING=1")
    if watchdog:
        lines.append("WATCHDOG=1")
    if status is not None:
        # One datagram is a list of lines: a newline would end the status early.
        lines.append("STATUS=" + " ".join(status.splitlines()))
    if address is None or not lines:
        return False
    message = ("\n".join(lines) + "\n").encode("utf-8")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message, address)
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds when systemd expects ``WATCHDOG=1`` from us, else None.

    Ping at half this interval. ``WATCHDOG_PID``, when set, must be our PID: a child process
    that inherited the environment is not the one being watched.
    """
    environ = os.environ if env is None else env
    raw = environ.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    return usec / 1_000_000
