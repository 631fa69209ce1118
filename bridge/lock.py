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
import stat
from types import TracebackType

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "LOCK_NAME",
    "AlreadyRunning",
    "InstanceLock",
    "ensure_private_dir",
    "private_file",
]

#: Name of the lock file inside the data directory.
LOCK_NAME = "bridge.lock"
#: Mode of the data directory the bridge creates, and of every file it writes there: the outbox
#: holds readings and the lock a PID, nothing for other users.
DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_private_dir(path: str | os.PathLike[str]) -> None:
    """Create `path` (and parents) with mode 0700, or tighten an existing one: no access for
    others and no writing for the group (0750 at most, for a group that reads the data)."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    tight = mode & ~(stat.S_IRWXO | stat.S_IWGRP)
    if tight != mode:
        os.chmod(path, tight)


def private_file(path: str | os.PathLike[str]) -> None:
    """Create `path` empty with mode 0600 if it is missing; make an existing one 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


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
        ensure_private_dir(self.data_dir)
        # O_CLOEXEC (Python's default): a child process must not inherit, and so keep, the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # a lock file left by an older version may be 0644
        except OSError:
            os.close(fd)
            raise
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
