"""Invocation counters that never repeat, across restarts and crashes.

A meter refuses (or worse, an attacker could replay) an APDU whose invocation counter it has
already seen from the client's system title, so the counter must be strictly increasing for the
whole life of the title, not only of the process. :class:`PersistentCounter` reserves counters in
blocks: before the first value of a block is used, the end of the block is written to disk
(atomically, fsynced). After a crash, even a SIGKILL, the next process starts at the stored end,
above every value the previous one could have used. The cost is one small synchronous write per
``reserve`` APDUs; the gap left by a crash is at most ``reserve`` values.

Two processes may count for the same meter and title (the service and a ``diagnose`` run):
reservations are made under a lock and start above whatever the file holds, and
:meth:`PersistentCounter.sync` (called before each association) moves past a block another
process reserved, so their counters never overlap.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from codec.errors import EncodeError, LocalProtocolError
from codec.security import MAX_INVOCATION_COUNTER

__all__ = ["DEFAULT_RESERVE", "CounterFileError", "PersistentCounter", "counter_path"]

#: Counters reserved per disk write: at a few APDUs per poll, one fsync per meter every hour
#: or so; a crash skips at most this many (of 2**32).
DEFAULT_RESERVE = 1024


class CounterFileError(LocalProtocolError):
    """The counter file cannot be read or written; its message names the file.

    A protocol error on our side: the association cannot go on without a counter, and a
    poller counts it as a failed cycle (and retries) rather than crashing.
    """

    default_code = "security.counter_file"


def counter_path(directory: str | os.PathLike[str], meter: str, system_title: bytes) -> Path:
    """The file holding the counters of ``meter`` for the client ``system_title``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", meter).strip("._") or "meter"
    return Path(directory) / "counters" / f"{safe}-{system_title.hex()}.ic"


class PersistentCounter:
    """An :class:`~codec.security.InvocationCounterSource` backed by a file (see module doc)."""

    def __init__(self, path: str | os.PathLike[str], *, reserve: int = DEFAULT_RESERVE) -> None:
        if reserve < 1:
            raise ValueError("reserve must be at least 1")
        self.path = Path(path)
        self.reserve = reserve
        self._next: int | None = None  # loaded on first use: construction never fails
        self._ceiling = 0
        #: Disk writes made (for tests and metrics).
        self.writes = 0

    def _current(self) -> int:
        if self._next is None:
            self._next = self._load()
            self._ceiling = self._next
        return self._next

    def _load(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 1
        except (OSError, UnicodeDecodeError) as exc:
            raise CounterFileError(
                f"cannot read the invocation counter file {self.path}:"
                f" {getattr(exc, 'strerror', None) or exc}"
            ) from None
        if not text.isdigit():
            raise CounterFileError(
                f"the invocation counter file {self.path} does not hold a counter"
            )
        return int(text)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CounterFileError(
                f"cannot lock the invocation counter file {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def sync(self) -> None:
        """Move past a block another process reserved since ours (call before associating)."""
        stored = self._load()
        if self._next is None or stored > self._ceiling:
            self._next = max(stored, self._next or 0)
            self._ceiling = self._next

    def _store(self, value: int) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, f"{value}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise CounterFileError(
                f"cannot write the invocation counter file {self.path}: {exc.strerror or exc}"
            ) from None
        self.writes += 1

    @property
    def value(self) -> int:
        """The next counter :meth:`next` will return."""
        return self._current()

    def next(self) -> int:
        """The next counter; its block is on disk before it is returned."""
        value = self._current()
        if value > MAX_INVOCATION_COUNTER:
            raise EncodeError(
                "the invocation counter is exhausted: new keys are needed",
                code="security.counter_exhausted",
            )
        if value >= self._ceiling:
            with self._locked():
                # Start above anything another process reserved meanwhile.
                value = max(value, self._load())
                if value > MAX_INVOCATION_COUNTER:
                    raise EncodeError(
                        "the invocation counter is exhausted: new keys are needed",
                        code="security.counter_exhausted",
                    )
                ceiling = min(value + self.reserve, MAX_INVOCATION_COUNTER + 1)
                self._store(ceiling)
            self._ceiling = ceiling
        self._next = value + 1
        return value

    @property
    def peer_path(self) -> Path:
        """Where the meters' last counters are kept (a replay floor across restarts)."""
        return self.path.with_suffix(".peer")

    def load_peers(self) -> dict[bytes, int]:
        """The last counter seen from each meter system title (empty if none or unreadable).

        A stale or lost floor only weakens the replay check; it never refuses a good APDU.
        """
        peers: dict[bytes, int] = {}
        try:
            text = self.peer_path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return peers
        for line in text.splitlines()[:64]:
            title, _, counter = line.partition(" ")
            if len(title) == 16 and counter.isdigit():
                try:
                    peers[bytes.fromhex(title)] = int(counter)
                except ValueError:
                    continue
        return peers

    def save_peers(self, peers: dict[bytes, int]) -> None:
        """Keep the meters' last counters (written at release; no fsync needed)."""
        text = "".join(f"{t.hex()} {c}\n" for t, c in list(peers.items())[:64])
        try:
            tmp = self.peer_path.with_suffix(".peer.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, text.encode("ascii"))
            finally:
                os.close(fd)
            os.replace(tmp, self.peer_path)
        except OSError as exc:
            raise CounterFileError(
                f"cannot write {self.peer_path}: {exc.strerror or exc}"
            ) from None

    def advance_to(self, value: int) -> None:
        """Skip ahead so that the next counter is at least ``value`` (e.g. the meter's)."""
        if value > self._current():
            self._next = value
