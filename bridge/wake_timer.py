"""A Linux ``timerfd``: a file descriptor that becomes readable at a set time.

The polling engine (:mod:`bridge.engine`) wakes every few milliseconds while polls are in flight.
Waiting for such a file descriptor costs Trio one registration and one ``epoll`` event, where
``trio.sleep_until`` costs a cancel scope, a deadline and a delivered cancellation each time; and
the timer fires to the microsecond where Trio's ``epoll`` timeout is rounded up to the next
millisecond. Python 3.13 has ``os.timerfd_create``; before it, the C library's functions are
called through :mod:`ctypes`. :meth:`WakeTimer.open` returns None where neither is available.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import sys

__all__ = ["WakeTimer"]

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class WakeTimer:
    """A one-shot ``CLOCK_MONOTONIC`` timer as a non-blocking file descriptor."""

    def __init__(self, fd: int, settime: object) -> None:
        self._fd = fd
        #: ``timerfd_settime`` of the C library (None: ``os.timerfd_settime``).
        self._settime = settime
        self._spec = _Itimerspec()
        self._ref = ctypes.byref(self._spec)

    @classmethod
    def open(cls) -> WakeTimer | None:
        """A new timer, disarmed; None where the system has no ``timerfd``."""
        if not sys.platform.startswith("linux"):
            return None
        create = getattr(os, "timerfd_create", None)
        if create is not None:  # Python 3.13+
            flags = os.TFD_NONBLOCK | os.TFD_CLOEXEC  # type: ignore[attr-defined]
            return cls(create(_CLOCK_MONOTONIC, flags=flags), None)
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            libc_create = libc.timerfd_create
            settime = libc.timerfd_settime
        except (OSError, AttributeError):
            return None
        libc_create.argtypes = [ctypes.c_int, ctypes.c_int]
        settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        fd = libc_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            return None
        return cls(fd, settime)

    def fileno(self) -> int:
        """The file descriptor (readable once the timer fired, until :meth:`clear`)."""
        return self._fd

    def set(self, delay: float) -> None:
        """Fire ``delay`` seconds from now (at once for zero or less; never for infinity)."""
        # An all-zero value disarms the timer.
        delay = 0.0 if delay == math.inf else max(delay, 1e-6)
        if self._settime is None:
            os.timerfd_settime(self._fd, initial=delay)  # type: ignore[attr-defined]
            return
        spec = self._spec
        seconds = int(delay)
        spec.it_value.tv_sec = seconds
        spec.it_value.tv_nsec = int((delay - seconds) * 1e9)
        if self._settime(self._fd, 0, self._ref, None) != 0:  # type: ignore[operator]
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))

    def clear(self) -> bool:
        """Take the expiry (the descriptor is no longer readable); whether it had fired."""
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        """Close the descriptor."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
