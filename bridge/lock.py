"""One bridge per data directory: an exclusive ``flock`` on ``<data_dir>/bridge.lock``.

Two bridges on one outbox would deliver every reading twice and fight over the SQLite file, so
the second one must refuse to start. ``flock`` locks belong to the open file, so the kernel
releases them when the process dies, ``kill -9`` included: a stale lock file is harmless and is
never deleted (deleting it would let two processes lock two different files). The file holds the
owner's PID, for the error message and for operators.
"""

from __future__ import annotations

import errno
import fcntl
import os
from types import TracebackType

__all__ = ["LOCK_NAME", "AlreadyRunning", "InstanceLock"]

#: Name of the lock file inside the data directory.
LOCK_NAME = "bridge.lock"


class AlreadyRunning(Exception):
    """Another process holds the lock on this data directory."""

    def __init__(self, data_dir: str, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"another dlms-bridge ({who}) is already using {data_dir}")


class InstanceLock:
    """The exclusive lock of one data directory; a context manager.

    ``acquire()`` creates the directory if needed, takes the lock without waiting (raising
    :class:`AlreadyRunning` if it is held) and writes our PID into the file. ``release()`` empties
    the file and drops the lock; it is safe to call twice.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = os.fspath(data_dir)
        self.path = os.path.join(self.data_dir, LOCK_NAME)
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`AlreadyRunning` naming the holder's PID."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this object")
        os.makedirs(self.data_dir, mode=0o750, exist_ok=True)
        # O_CLOEXEC (Python's default): a child process must not inherit, and so keep, the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunning(self.data_dir, holder) from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays, empty)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    """The PID written by the holder, or None if there is none yet (it may be writing it)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
