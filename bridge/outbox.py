"""The durable outbox: every reading is committed to SQLite before it counts as taken.

Rows leave the outbox only when the broker has acknowledged them (QoS 1 PUBACK), so readings
survive broker outages, restarts and ``kill -9`` (at-least-once delivery; the consumer may see
a reading twice, never zero times).

Three layers:

- `Outbox`: the synchronous core over one ``outbox.sqlite`` file (WAL journal,
  ``synchronous=FULL`` by default, exclusive lock so a second process cannot use the same file).
  Bounded by `max_rows` and `max_bytes` (payload bytes); when full, the OLDEST rows are dropped,
  counted in `dropped_rows` (persisted) and the ``outbox.overflow`` alarm is raised.
- `AsyncOutbox`: the same API for Trio, running the core in one worker thread at a time
  (`trio.to_thread.run_sync` with a `trio.CapacityLimiter` of 1) so the event loop never
  blocks on SQLite; `appended` is an Event that wakes the publisher when rows arrive.
- `OutboxWriter`: group commit. Producers ``await writer.put(reading)``, which returns once
  the reading is committed; everything that arrived while the previous transaction was being
  written goes into the next one.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

import attrs
import trio

from bridge.config import PublishConfig
from bridge.lock import private_file
from bridge.readings import Reading
from bridge.sqlite_rows import insert_rows

__all__ = [
    "ALARM_WRITE_FAILED",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_SPILL_MAX_BYTES",
    "DEFAULT_SPILL_RETRY_S",
    "FILENAME",
    "SPILL_OVERHEAD",
    "AsyncOutbox",
    "Outbox",
    "OutboxError",
    "OutboxRow",
    "OutboxWriter",
    "WriterStats",
]

log = logging.getLogger("bridge.outbox")

FILENAME = "outbox.sqlite"
# The defaults are the configuration's (one home: bridge.config.PublishConfig).
DEFAULT_MAX_ROWS = PublishConfig().outbox_max_rows
DEFAULT_MAX_BYTES = PublishConfig().outbox_max_bytes
_SCHEMA_VERSION = 1
# SQLite's default limit on host parameters is 32766 since 3.32 (999 before); stay below both.
_IDS_PER_STATEMENT = 500
#: Ids to delete that form at most this many runs of consecutive ids are deleted run by run
#: (a count and a range delete each: ~1.6 us a row against ~3.0 for a list with RETURNING);
#: scattered ones by lists.
_MAX_DELETE_RUNS = 4
# The overflow alarm clears once the outbox is back under this fraction of both bounds.
_ALARM_CLEAR_FRACTION = 0.9
_WAL_CHECKPOINT_PAGES = 256
#: Readings kept in memory by row id after they are committed, so that the publisher's read
#: of rows it is about to send (moments later, as a rule) does not parse their JSON again.
RECENT_READINGS = 4096
_WAL_SIZE_LIMIT = 1024 * 1024

Synchronous = Literal["full", "normal"]
_T = TypeVar("_T")


#: SQLite primary result codes that mean the storage under the database failed, not the
#: database: SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN.
_DISK_CODES = {8: "read-only", 10: "I/O error", 13: "disk full", 14: "cannot open a file"}


class OutboxError(Exception):
    """The outbox database cannot be opened or used; the message names the file.

    `disk` is True when the storage failed (disk full, read-only file system, I/O error): the
    condition may go away by itself, and the database is intact.
    """

    def __init__(self, message: str, *, disk: bool = False) -> None:
        super().__init__(message)
        self.disk = disk


def _runs(ids: Sequence[int], limit: int) -> list[tuple[int, int]] | None:
    """``ids`` as runs of consecutive ids, ``(first, last)`` in order; None when they make more
    than ``limit`` runs."""
    if not ids:
        return []
    ordered = sorted(set(ids))
    runs: list[tuple[int, int]] = []
    first = previous = ordered[0]
    for row_id in ordered[1:]:
        if row_id != previous + 1:
            if len(runs) + 1 >= limit:
                return None
            runs.append((first, previous))
            first = row_id
        previous = row_id
    runs.append((first, previous))
    return runs


def _refuse_oversize(readings: Sequence[Reading], payloads: list[bytes], max_bytes: int) -> None:
    """`ValueError` naming the first reading whose stored form alone exceeds ``max_bytes``."""
    if not payloads or max(map(len, payloads)) <= max_bytes:
        return
    for reading, payload in zip(readings, payloads, strict=True):
        if len(payload) > max_bytes:
            raise ValueError(
                f"reading of meter {reading.meter!r} is {len(payload)} bytes, larger than "
                f"the whole outbox (max_bytes={max_bytes})"
            )


def _disk_problem(exc: BaseException) -> str | None:
    """What kind of storage failure an SQLite error is, or None if it is not one."""
    if isinstance(exc, OSError):
        return exc.strerror or "I/O error"
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.Error) and isinstance(code, int):
        return _DISK_CODES.get(code & 0xFF)
    return None


@attrs.frozen
class OutboxRow:
    """One stored reading: its row id (insertion order), the reading and its stored size."""

    id: int
    reading: Reading
    size: int


class Outbox:
    """Synchronous SQLite outbox; see the module docstring.

    `path` is either a directory (the database is ``<path>/outbox.sqlite``) or the database
    file itself. Not thread-safe: use it from one thread at a time (`AsyncOutbox` does).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        synchronous: Synchronous = "full",
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"outbox max_rows must be >= 1, got {max_rows}")
        if max_bytes < 1:
            raise ValueError(f"outbox max_bytes must be >= 1, got {max_bytes}")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"outbox synchronous must be 'full' or 'normal', got {synchronous!r}")
        p = Path(path)
        self.path = p / FILENAME if p.is_dir() else p
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.synchronous: Synchronous = synchronous
        self.rows = 0
        self.bytes = 0
        self.dropped_rows = 0
        self.corrupt_rows = 0
        self.overflow = False
        #: Row id -> the reading committed under it, the newest `RECENT_READINGS` (row ids are
        #: never reused, so an entry can only ever stand for its own row).
        #: Insertion-ordered with O(1) removal of the oldest: a plain dict's first key is found
        #: by a scan past every entry deleted before it (a row's insert and trim measured 4.4 us
        #: while a backlog keeps the map full, 0.5 with this).
        #: Every entry is a row stored (a row deleted or dropped leaves it): when it holds as
        #: many as are stored, it holds them all, and `peek` answers from it (`_peek_recent`).
        self._recent: OrderedDict[int, Reading] = OrderedDict()
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = self._open()
        except sqlite3.Error as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise OutboxError(self._describe(exc)) from exc

    # -- opening -----------------------------------------------------------------------------

    def _describe(self, exc: BaseException) -> str:
        text = str(exc)
        problem = _disk_problem(exc)
        if problem is not None:
            return f"outbox database {self.path} cannot be written ({problem}: {text})"
        if "locked" in text:
            return f"outbox database {self.path} is in use by another process ({text})"
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
            return f"outbox database {self.path} is corrupt or not an SQLite file ({text})"
        return f"outbox database {self.path}: {text}"

    def _open(self) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            raise sqlite3.OperationalError(f"directory {self.path.parent} does not exist")
        # SQLite gives its journal the mode of the database file: create both 0600 (the
        # readings are nobody else's business), and tighten files left by older versions.
        for suffix in ("", "-wal", "-shm", "-journal"):
            name = f"{self.path}{suffix}"
            if suffix == "" or os.path.exists(name):
                try:
                    private_file(name)
                except OSError as exc:
                    raise sqlite3.OperationalError(f"cannot create {name}: {exc.strerror}") from exc
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) so a batch is
        # exactly one transaction. check_same_thread is off because AsyncOutbox calls us from
        # whichever worker thread Trio picks, one at a time.
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=0.5
        )
        self._conn = conn
        # Exclusive locking before the first WAL access: no shared-memory index is needed and a
        # second process (a second bridge on the same data) is refused instead of interleaving.
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL journal (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        # Keep the WAL small (checkpoint every ~1 MiB, truncate it back to 1 MiB): small SD
        # cards and tmpfs data directories must not be filled by the journal alone.
        conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        with self._transaction():
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this program understands "
                    f"({_SCHEMA_VERSION})"
                )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS outbox ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " meter TEXT NOT NULL,"
                " ts_ms INTEGER NOT NULL,"
                " payload BLOB NOT NULL)"
            )
            conn.execute("CREATE INDEX IF NOT EXISTS outbox_meter_id ON outbox (meter, id)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )
            if version != _SCHEMA_VERSION:
                # Only when it changes: opening an existing outbox writes nothing, so that a
                # bridge can start on a full disk and keep its readings in memory meanwhile.
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            rows, nbytes = conn.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox"
            ).fetchone()
            self.rows, self.bytes = int(rows), int(nbytes)
            self.dropped_rows = self._meta_get("dropped_rows")
            self.corrupt_rows = self._meta_get("corrupt_rows")
        return conn

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"outbox database {self.path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (after SQLITE_FULL, say); a second ROLLBACK
            # would raise and hide the error that matters.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _guard(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except sqlite3.Error as exc:
            raise OutboxError(self._describe(exc), disk=_disk_problem(exc) is not None) from exc

    def _meta_get(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _meta_add(self, key: str, delta: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            (key, delta),
        )

    # -- public API --------------------------------------------------------------------------

    def append(self, readings: Sequence[Reading]) -> list[int]:
        """Commit `readings` in one transaction and return their row ids, in order.

        Raises `ValueError` (before writing anything) if one reading alone exceeds `max_bytes`.
        """
        if not readings:
            return []
        payloads = [r.to_json() for r in readings]
        _refuse_oversize(readings, payloads, self.max_bytes)
        return self._guard(lambda: self._append(readings, payloads))

    def _append(self, readings: Sequence[Reading], payloads: list[bytes]) -> list[int]:
        with self._transaction() as conn:
            params = [
                v for r, p in zip(readings, payloads, strict=True) for v in (r.meter, r.ts_ms, p)
            ]
            # A few multi-row statements, not one a row (see bridge.sqlite_rows).
            insert_rows(conn, "INSERT INTO outbox (meter, ts_ms, payload)", 3, params)
            # AUTOINCREMENT under an exclusive lock hands out consecutive ids within one
            # transaction, so the batch's ids end at the last one inserted.
            last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
            rows, nbytes = len(payloads), sum(map(len, payloads))
            dropped = dropped_to = 0
            if self.rows + rows > self.max_rows or self.bytes + nbytes > self.max_bytes:
                dropped, dropped_bytes, dropped_to = self._drop_oldest(conn, rows, nbytes)
        self.rows += rows
        self.bytes += nbytes
        if dropped:
            self.rows -= dropped
            self.bytes -= dropped_bytes
            self.dropped_rows += dropped
            if not self.overflow:
                log.warning(
                    "outbox %s is full (max_rows=%d, max_bytes=%d): dropping the oldest readings "
                    "(%d dropped so far)",
                    self.path,
                    self.max_rows,
                    self.max_bytes,
                    self.dropped_rows,
                )
            self.overflow = True
        ids = list(range(last - len(payloads) + 1, last + 1))
        recent = self._recent
        recent.update(zip(ids[-RECENT_READINGS:], readings[-RECENT_READINGS:], strict=True))
        for _ in range(len(recent) - RECENT_READINGS):
            recent.popitem(last=False)
        # Rows dropped for room (the oldest, some maybe of this batch) leave the memory too.
        while dropped and recent and next(iter(recent)) <= dropped_to:
            recent.popitem(last=False)
        return ids

    def _drop_oldest(
        self, conn: sqlite3.Connection, rows: int, nbytes: int
    ) -> tuple[int, int, int]:
        """Delete the oldest rows that make room for ``rows`` more of ``nbytes``: returns how
        many rows and bytes went, and the last id deleted."""
        excess_rows = self.rows + rows - self.max_rows
        excess_bytes = self.bytes + nbytes - self.max_bytes
        freed_rows = freed_bytes = 0
        last_id = None
        for row_id, size in conn.execute("SELECT id, length(payload) FROM outbox ORDER BY id"):
            if freed_rows >= excess_rows and freed_bytes >= excess_bytes:
                break
            freed_rows += 1
            freed_bytes += int(size)
            last_id = row_id
        if last_id is None:
            return 0, 0, 0
        conn.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
        self._meta_add("dropped_rows", freed_rows)
        return freed_rows, freed_bytes, int(last_id)

    def peek(
        self,
        limit_rows: int = 100,
        limit_bytes: int | None = None,
        *,
        meter: str | None = None,
        after_id: int = 0,
    ) -> list[OutboxRow]:
        """The oldest rows (optionally of one meter, optionally after a row id), in order.

        Returns at most `limit_rows` rows whose sizes add up to at most `limit_bytes`, except
        that the first row is always returned so that progress is possible.
        """
        if limit_rows < 1:
            raise ValueError(f"peek limit_rows must be >= 1, got {limit_rows}")
        if len(self._recent) == self.rows and self._conn is not None:
            return self._peek_recent(limit_rows, limit_bytes, meter, after_id)
        return self._guard(lambda: self._peek(limit_rows, limit_bytes, meter, after_id))

    def _peek_recent(
        self, limit_rows: int, limit_bytes: int | None, meter: str | None, after_id: int
    ) -> list[OutboxRow]:
        """`peek` from the readings kept in memory, while they are every row stored: the
        same rows, in the same order, with the sizes stored (the payload is the reading's
        `to_json`), without a query or a row copied out of the database (a steady fleet's
        outbox holds only what is in flight; measured 1.0-1.5 us a row, 1.9-3.1 by SQLite)."""
        out: list[OutboxRow] = []
        total = 0
        for row_id, reading in self._recent.items():
            if row_id <= after_id or (meter is not None and reading.meter != meter):
                continue
            size = len(reading.to_json())
            if out and limit_bytes is not None and total + size > limit_bytes:
                break
            out.append(OutboxRow(id=row_id, reading=reading, size=size))
            total += size
            if len(out) >= limit_rows:
                break
        return out

    def _peek(
        self, limit_rows: int, limit_bytes: int | None, meter: str | None, after_id: int
    ) -> list[OutboxRow]:
        if meter is None:
            cur = self._db.execute(
                "SELECT id, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit_rows),
            )
        else:
            cur = self._db.execute(
                "SELECT id, payload FROM outbox WHERE meter = ? AND id > ? ORDER BY id LIMIT ?",
                (meter, after_id, limit_rows),
            )
        out: list[OutboxRow] = []
        corrupt: list[int] = []
        total = 0
        recent = self._recent
        for row_id, payload in cur:
            size = len(payload)
            if out and limit_bytes is not None and total + size > limit_bytes:
                break
            reading = recent.get(row_id)
            if reading is not None:
                out.append(OutboxRow(id=int(row_id), reading=reading, size=size))
                total += size
                continue
            try:
                reading = Reading.from_json(payload)
            except ValueError as exc:
                log.error(
                    "outbox %s: row %d is unreadable and is removed: %s", self.path, row_id, exc
                )
                corrupt.append(row_id)
                continue
            out.append(OutboxRow(id=int(row_id), reading=reading, size=size))
            total += size
        cur.close()
        if corrupt:
            # A row that can never be decoded would stall delivery forever; count and remove it.
            self._remove(corrupt, counter="corrupt_rows")
            self.corrupt_rows += len(corrupt)
        return out

    def delete(self, ids: Sequence[int]) -> int:
        """Delete rows by id (ids already gone are ignored); return how many were deleted."""
        if not ids:
            return 0
        return self._guard(lambda: self._remove(list(ids)))

    def _remove(self, ids: list[int], counter: str | None = None) -> int:
        deleted = freed = 0
        runs = _runs(ids, _MAX_DELETE_RUNS)
        with self._transaction() as conn:
            if runs is not None:
                # Every id from lo to hi was asked for: what the range holds is what goes.
                for lo, hi in runs:
                    count, size = conn.execute(
                        "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox"
                        " WHERE id BETWEEN ? AND ?",
                        (lo, hi),
                    ).fetchone()
                    if count:
                        conn.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", (lo, hi))
                        deleted += int(count)
                        freed += int(size)
            else:
                for start in range(0, len(ids), _IDS_PER_STATEMENT):
                    chunk = ids[start : start + _IDS_PER_STATEMENT]
                    marks = ",".join("?" * len(chunk))
                    for (size,) in conn.execute(
                        f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING length(payload)",
                        chunk,
                    ).fetchall():
                        deleted += 1
                        freed += int(size)
            if counter is not None and deleted:
                self._meta_add(counter, deleted)
        self.rows -= deleted
        self.bytes -= freed
        recent = self._recent
        for row_id in ids:
            recent.pop(row_id, None)
        if (
            self.overflow
            and self.rows < self.max_rows * _ALARM_CLEAR_FRACTION
            and self.bytes < self.max_bytes * _ALARM_CLEAR_FRACTION
        ):
            self.overflow = False
            log.info("outbox %s is below its bounds again", self.path)
        return deleted

    def depth(self) -> tuple[int, int]:
        """(rows, payload bytes) currently stored."""
        return self.rows, self.bytes

    def oldest_ts_ms(self) -> int | None:
        """When the oldest unsent reading was taken (ms since the epoch), None if empty."""
        return self._guard(
            lambda: next(
                (
                    int(ts)
                    for (ts,) in self._db.execute("SELECT ts_ms FROM outbox ORDER BY id LIMIT 1")
                ),
                None,
            )
        )

    def pending_meters(self) -> list[str]:
        """The meters that have rows waiting, sorted."""
        return self._guard(
            lambda: [
                str(m)
                for (m,) in self._db.execute("SELECT DISTINCT meter FROM outbox ORDER BY meter")
            ]
        )

    @property
    def alarms(self) -> frozenset[str]:
        """``{"outbox.overflow"}`` while readings are being dropped to stay within bounds."""
        return frozenset({"outbox.overflow"}) if self.overflow else frozenset()

    def close(self) -> None:
        """Close the database (idempotent)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncOutbox:
    """`Outbox` for Trio: every call runs in a worker thread, one at a time."""

    def __init__(self, core: Outbox) -> None:
        self.core = core
        self._limiter = trio.CapacityLimiter(1)
        self._appended = trio.Event()

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        synchronous: Synchronous = "full",
    ) -> AsyncOutbox:
        """Open (or create) the outbox in a worker thread."""
        core = await trio.to_thread.run_sync(
            lambda: Outbox(path, max_rows=max_rows, max_bytes=max_bytes, synchronous=synchronous)
        )
        return cls(core)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    @property
    def appended(self) -> trio.Event:
        """An Event that the next successful `append` sets.

        Take it BEFORE looking at the outbox, then wait on it if there was nothing to do: no
        wake-up can be missed in between.
        """
        return self._appended

    async def append(self, readings: Sequence[Reading]) -> list[int]:
        """Commit readings; see `Outbox.append`."""
        ids = await self._run(lambda: self.core.append(readings))
        if ids:
            self._appended.set()
            self._appended = trio.Event()
        return ids

    async def peek(
        self,
        limit_rows: int = 100,
        limit_bytes: int | None = None,
        *,
        meter: str | None = None,
        after_id: int = 0,
    ) -> list[OutboxRow]:
        """See `Outbox.peek`."""
        return await self._run(
            lambda: self.core.peek(limit_rows, limit_bytes, meter=meter, after_id=after_id)
        )

    async def delete(self, ids: Sequence[int]) -> int:
        """See `Outbox.delete`."""
        return await self._run(lambda: self.core.delete(ids))

    async def oldest_ts_ms(self) -> int | None:
        """See `Outbox.oldest_ts_ms`."""
        return await self._run(self.core.oldest_ts_ms)

    async def pending_meters(self) -> list[str]:
        """See `Outbox.pending_meters`."""
        return await self._run(self.core.pending_meters)

    def depth(self) -> tuple[int, int]:
        """(rows, bytes), from counters kept in memory: no database access."""
        return self.core.rows, self.core.bytes

    @property
    def dropped_rows(self) -> int:
        """Rows dropped to stay within bounds, over the life of the database file."""
        return self.core.dropped_rows

    @property
    def alarms(self) -> frozenset[str]:
        """See `Outbox.alarms`."""
        return self.core.alarms

    async def aclose(self) -> None:
        """Close the database once no other call is running."""
        await self._run(self.core.close)


@attrs.define(eq=False)
class _Ticket:
    """What one `put` or `put_many` waits for: all its readings settled (one event a call,
    not one a reading)."""

    remaining: int
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class _Put:
    reading: Reading
    ticket: _Ticket
    row_id: int | None = None
    error: BaseException | None = None

    def settle(self) -> None:
        """This reading is committed, spilled or failed (``row_id``, ``error`` set before)."""
        ticket = self.ticket
        ticket.remaining -= 1
        if ticket.remaining <= 0:
            ticket.done.set()


@attrs.define(eq=False)
class WriterStats:
    """What the writer has done: readings committed, transactions, failures, spill."""

    readings: int = 0
    batches: int = 0
    largest_batch: int = 0
    failures: int = 0
    #: Readings kept in memory because the outbox could not write, over the writer's life.
    spilled: int = 0
    #: Spilled readings dropped (oldest first) because the spill reached its bound.
    spill_dropped: int = 0
    #: Times the outbox stopped being writable.
    spill_episodes: int = 0


#: Alarm raised while the outbox cannot write and readings wait in memory.
ALARM_WRITE_FAILED = "outbox.write_failed"
#: Default bound of the in-memory spill (the configuration's: one home for each default).
DEFAULT_SPILL_MAX_BYTES = PublishConfig().outbox_spill_max_bytes
#: Seconds between attempts to write the spill while the outbox cannot write.
DEFAULT_SPILL_RETRY_S = 1.0

AlarmHook = Callable[[str, bool, str], None]
#: Memory a spilled reading costs besides its JSON (deque slot, tuple, int, bytes header).
SPILL_OVERHEAD = 128


def _spill_size(payload: bytes) -> int:
    return len(payload) + SPILL_OVERHEAD


#: How long the outbox writer lets readings gather before it commits them (seconds): one fsync
#: per 50 ms at most instead of one per reading when readings come one by one (pollers' own
#: cycles). Batches gathered by their producer already (a polling engine's hand-overs, in this
#: process or a worker's) are committed without it (`OutboxWriter.put_many`'s ``gathered``).
WRITER_LINGER_S = 0.05


class OutboxWriter:
    """Group commit in front of an `AsyncOutbox`.

    ``await writer.put(reading)`` returns the row id once the reading is committed. While one
    transaction is being written, new readings queue up and all go into the next transaction
    (at most `max_batch` per transaction), so thousands of readings per second cost a handful
    of fsyncs. A transaction starts at most `linger_s` after the first reading waiting for it
    (sooner once `max_batch` wait), so that readings arriving in a trickle (pollers spread over
    their interval) still share transactions. Run `run` as a task; when it stops, waiting and
    later `put` calls fail with `OutboxError`.

    When the storage fails (disk full, read-only file system, I/O error; or the database, the
    same way) readings are not lost and producers are not failed: they go into an in-memory
    *spill* (FIFO, at most `spill_max_bytes` of payload; beyond that the oldest spilled readings
    are dropped and counted) and `put` returns None at once. The writer tries to write the spill
    every `spill_retry_s` seconds; once it can, the spilled readings are committed in their
    order, before any newer one. An episode is reported once when it starts and once when it
    ends, through ``on_alarm(name, active, message)`` (alarm ``outbox.write_failed``) or,
    without it, as log lines.
    """

    def __init__(
        self,
        outbox: AsyncOutbox,
        *,
        max_batch: int = 5000,
        linger_s: float = WRITER_LINGER_S,
        spill_max_bytes: int = DEFAULT_SPILL_MAX_BYTES,
        spill_retry_s: float = DEFAULT_SPILL_RETRY_S,
        on_alarm: AlarmHook | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not 0 <= linger_s <= 1:
            raise ValueError(f"linger_s must be 0..1 s, got {linger_s!r}")
        if spill_max_bytes < 1:
            raise ValueError(f"spill_max_bytes must be >= 1, got {spill_max_bytes}")
        self.outbox = outbox
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.spill_max_bytes = spill_max_bytes
        self.spill_retry_s = spill_retry_s
        self.on_alarm = on_alarm
        self.stats = WriterStats()
        self._queue: list[_Put] = []
        self._wakeup = trio.Event()
        # A batch gathered by its producer waits in the queue: commit without lingering.
        self._gathered = False
        self._stopped = False
        # (sequence number, reading, payload size), oldest first.
        # (sequence number, the reading's JSON), oldest first: compact, unlike Reading objects.
        self._spill: deque[tuple[int, bytes]] = deque()
        self._spill_seq = 0
        self._in_flight_seq = 0  # spilled readings up to this one are being written
        self._spill_bytes = 0
        self._spilling: str | None = None  # why the outbox cannot write, during an episode
        self._episode_start = 0.0
        self._next_try = 0.0
        self._episode_spilled = 0
        self._episode_dropped = 0

    @property
    def writable(self) -> bool:
        """False while the outbox cannot write (readings go to the in-memory spill)."""
        return self._spilling is None

    @property
    def problem(self) -> str | None:
        """Why the outbox cannot write, during an episode."""
        return self._spilling

    def spill_depth(self) -> tuple[int, int]:
        """(readings, payload bytes) waiting in memory for the outbox."""
        return len(self._spill), self._spill_bytes

    @property
    def alarms(self) -> frozenset[str]:
        """``{"outbox.write_failed"}`` while the outbox cannot write."""
        return frozenset() if self._spilling is None else frozenset({ALARM_WRITE_FAILED})

    async def put(self, reading: Reading) -> int | None:
        """Commit one reading (batched with others) and return its row id; None if it was
        kept in the in-memory spill because the outbox cannot write now."""
        payload = reading.to_json()
        size = len(payload)
        if size > self.outbox.core.max_bytes:
            raise ValueError(
                f"reading of meter {reading.meter!r} is {size} bytes, larger than the whole "
                f"outbox (max_bytes={self.outbox.core.max_bytes})"
            )
        if self._stopped:
            raise OutboxError(f"outbox writer for {self.outbox.core.path} is stopped")
        if self._spilling is not None:
            self._to_spill(reading, payload)
            return None
        item = _Put(reading, _Ticket(1))
        self._queue.append(item)
        self._wakeup.set()
        await item.ticket.done.wait()
        if item.error is not None:
            raise OutboxError(
                f"reading of meter {reading.meter!r} was not stored: {item.error}"
            ) from item.error
        return item.row_id

    async def put_many(
        self, readings: Sequence[Reading], *, gathered: bool = False
    ) -> list[int | None]:
        """Commit several readings, in order, in as few transactions as possible; return their
        row ids (None for those kept in the in-memory spill because the outbox cannot write
        now). If one fails, `OutboxError` is raised (the others may be committed).

        ``gathered``: the producer let these readings gather already (a polling engine's
        hand-over): they are committed at once, with whatever waits, not after `linger_s`."""
        items: list[_Put] = []
        payloads = [reading.to_json() for reading in readings]
        _refuse_oversize(readings, payloads, self.outbox.core.max_bytes)
        if self._stopped:
            raise OutboxError(f"outbox writer for {self.outbox.core.path} is stopped")
        if self._spilling is not None:
            for reading, payload in zip(readings, payloads, strict=True):
                self._to_spill(reading, payload)
            return [None] * len(readings)
        ticket = _Ticket(len(readings))
        for reading in readings:
            item = _Put(reading, ticket)
            self._queue.append(item)
            items.append(item)
        if gathered and items:
            self._gathered = True
        self._wakeup.set()
        if items:
            await ticket.done.wait()
        ids: list[int | None] = []
        for item in items:
            if item.error is not None:
                raise OutboxError(
                    f"reading of meter {item.reading.meter!r} was not stored: {item.error}"
                ) from item.error
            ids.append(item.row_id)
        return ids

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued readings until cancelled."""
        task_status.started()
        try:
            while True:
                if self._spilling is not None:
                    await self._drain_spill()
                    continue
                if not self._queue:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    continue
                if self.linger_s and len(self._queue) < self.max_batch and not self._gathered:
                    # Let the readings of the next few milliseconds join this transaction.
                    with trio.move_on_after(self.linger_s):
                        while len(self._queue) < self.max_batch and not self._gathered:
                            self._wakeup = trio.Event()
                            await self._wakeup.wait()
                batch = self._queue[: self.max_batch]
                del self._queue[: len(batch)]
                if not self._queue:
                    self._gathered = False
                await self._commit(batch)
        finally:
            self._stopped = True
            stranded, self._queue = self._queue, []
            for item in stranded:
                item.error = OutboxError("the outbox writer stopped before committing it")
                item.settle()
            if self._spill:
                # One last try, so that a disk freed just before a stop loses nothing.
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await self.outbox.append(
                            [Reading.from_json(payload) for _, payload in self._spill]
                        )
                        self._spill.clear()
                    except (OutboxError, ValueError) as exc:
                        log.debug("last write of the spilled readings failed: %s", exc)
            if self._spill:
                log.error(
                    "outbox %s: %d readings kept in memory were never written (the outbox could "
                    "not write until the writer stopped: %s)",
                    self.outbox.core.path,
                    len(self._spill),
                    self._spilling,
                )

    async def _commit(self, batch: list[_Put]) -> None:
        try:
            ids = await self.outbox.append([item.reading for item in batch])
        except OutboxError as exc:
            # The storage failed (disk full, read-only, I/O error) or the database did: either
            # way the pollers go on and the readings wait in memory until a write succeeds.
            self._start_episode(str(exc))
            for item in batch:
                self._to_spill(item.reading)
                item.settle()
            return
        except ValueError as exc:
            self._refuse(batch, exc)
            return
        except BaseException as exc:
            # Cancelled while the worker thread ran: the thread finished (it cannot be
            # abandoned), but the result is lost with the cancellation; the readings may or may
            # not be committed, so report failure rather than claim success.
            for item in batch:
                item.error = OutboxError(f"outbox write interrupted ({type(exc).__name__})")
                item.settle()
            raise
        self._committed(len(batch))
        for item, row_id in zip(batch, ids, strict=True):
            item.row_id = row_id
            item.settle()

    def _refuse(self, batch: list[_Put], exc: Exception) -> None:
        self.stats.failures += 1
        log.error("outbox write of %d readings failed: %s", len(batch), exc)
        for item in batch:
            item.error = exc
            item.settle()

    def _committed(self, count: int) -> None:
        self.stats.readings += count
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, count)

    # -- the spill ---------------------------------------------------------------------------

    def _to_spill(self, reading: Reading, payload: bytes | None = None) -> None:
        if payload is None:
            payload = reading.to_json()
        self._spill_seq += 1
        self._spill.append((self._spill_seq, payload))
        self._spill_bytes += _spill_size(payload)
        self.stats.spilled += 1
        self._episode_spilled += 1
        # Drop the oldest readings beyond the bound, except those a write in progress carries
        # (they may be stored by now: dropping them would count them wrongly as lost).
        while self._spill_bytes > self.spill_max_bytes:
            index = 0
            while index < len(self._spill) and self._spill[index][0] <= self._in_flight_seq:
                index += 1
            if index >= len(self._spill) - 1:
                break  # keep the reading just added
            _, dropped = self._spill[index]
            del self._spill[index]
            self._spill_bytes -= _spill_size(dropped)
            self.stats.spill_dropped += 1
            self._episode_dropped += 1

    def _start_episode(self, problem: str) -> None:
        self._spilling = problem
        self.stats.spill_episodes += 1
        self._episode_start = trio.current_time()
        self._next_try = self._episode_start + self.spill_retry_s
        self._episode_spilled = self._episode_dropped = 0
        self._report(
            True,
            f"the outbox cannot write: {problem}; polling goes on and readings are kept in "
            f"memory (up to {self.spill_max_bytes} bytes) until it can",
        )

    async def _drain_spill(self) -> None:
        """During an episode: every `spill_retry_s`, move queued puts to the spill and try to
        write it, oldest first."""
        await trio.sleep_until(self._next_try)
        self._next_try = trio.current_time() + self.spill_retry_s
        queued, self._queue = self._queue, []
        for item in queued:
            self._to_spill(item.reading)
            item.settle()
        while self._spill:
            entries = list(itertools.islice(self._spill, self.max_batch))
            last_seq = entries[-1][0]
            self._in_flight_seq = last_seq
            try:
                try:
                    await self.outbox.append([Reading.from_json(p) for _, p in entries])
                finally:
                    self._in_flight_seq = 0
            except OutboxError as exc:
                # Still failing: the episode's alarm says why; no line per attempt.
                log.debug("outbox write of %d spilled readings failed: %s", len(entries), exc)
                return
            except ValueError as exc:
                # Cannot happen for readings `put` accepted; never let one block the rest.
                log.error("spilled readings cannot be stored and are dropped: %s", exc)
                self.stats.failures += 1
            else:
                self._committed(len(entries))
            # New readings may have joined (at the end) while the worker thread wrote.
            while self._spill and self._spill[0][0] <= last_seq:
                _, payload = self._spill.popleft()
                self._spill_bytes -= _spill_size(payload)
        lasted = trio.current_time() - self._episode_start
        spilled, dropped = self._episode_spilled, self._episode_dropped
        self._spilling = None
        lost = f", {dropped} dropped (the spill was full)" if dropped else ", none lost"
        self._report(
            False,
            f"the outbox writes again after {lasted:.1f} s: {spilled - dropped} readings kept "
            f"in memory were written{lost}",
        )

    def _report(self, active: bool, message: str) -> None:
        if self.on_alarm is not None:
            self.on_alarm(ALARM_WRITE_FAILED, active, message)
        elif active:
            log.error("%s", message)
        else:
            log.warning("outbox %s: %s", self.outbox.core.path, message)
