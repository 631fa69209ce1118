"""Process limits the service and the simulator need: a socket per meter, and few malloc arenas."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource

__all__ = ["MALLOC_ARENAS", "limit_malloc_arenas", "raise_open_file_limit"]

log = logging.getLogger("bridge.limits")

#: glibc malloc arenas a process of the service may use (``MALLOC_ARENA_MAX``).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter, from glibc's malloc.h


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Let glibc's malloc use at most ``arenas`` arenas, in this process and (through
    ``MALLOC_ARENA_MAX``) in the processes it starts; True if the limit is in force.

    By default glibc gives every thread that allocates an arena of its own (up to 8 per core),
    each keeping freed memory: the outbox's and the console's SQLite threads held megabytes
    that way at fleet rates. A ``MALLOC_ARENA_MAX`` set by the operator is left as it is.
    Does nothing on a C library other than glibc.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    os.environ["MALLOC_ARENA_MAX"] = str(arenas)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open file limit from %d to %d: %s", soft, target, exc)
        return soft, hard
    return target, hard
