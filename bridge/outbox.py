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

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

import attrs
import trio

from bridge.config import PublishConfig
from bridge.readings import Reading

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ROWS",
    "FILENAME",
    "AsyncOutbox",
    "Outbox",
    "OutboxError",
    "OutboxRow",
    "OutboxWriter",
]

log = logging.getLogger("bridge.outbox")

FILENAME = "outbox.sqlite"
# The defaults are the configuration's (one home: bridge.config.PublishConfig).
DEFAULT_MAX_ROWS = PublishConfig().outbox_max_rows
DEFAULT_MAX_BYTES = PublishConfig().outbox_max_bytes
_SCHEMA_VERSION = 1
# SQLite's default limit on host parameters is 32766 since 3.32; stay far below it.
_IDS_PER_STATEMENT = 500
# The overflow alarm clears once the outbox is back under this fraction of both bounds.
_ALARM_CLEAR_FRACTION = 0.9

Synchronous = Literal["full", "normal"]
_T = TypeVar("_T")


class OutboxError(Exception):
    """The outbox database cannot be opened or used; the message names the file."""


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
        if "locked" in text:
            return f"outbox database {self.path} is in use by another process ({text})"
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
            return f"outbox database {self.path} is corrupt or not an SQLite file ({text})"
        return f"outbox database {self.path}: {text}"

    def _open(self) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            raise sqlite3.OperationalError(f"directory {self.path.parent} does not exist")
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
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _guard(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except sqlite3.Error as exc:
            raise OutboxError(self._describe(exc)) from exc

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
        for reading, payload in zip(readings, payloads, strict=True):
            if len(payload) > self.max_bytes:
                raise ValueError(
                    f"reading of meter {reading.meter!r} is {len(payload)} bytes, larger than "
                    f"the whole outbox (max_bytes={self.max_bytes})"
                )
        return self._guard(lambda: self._append(readings, payloads))

    def _append(self, readings: Sequence[Reading], payloads: list[bytes]) -> list[int]:
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO outbox (meter, ts_ms, payload) VALUES (?, ?, ?)",
                [(r.meter, r.ts_ms, p) for r, p in zip(readings, payloads, strict=True)],
            )
            # AUTOINCREMENT under an exclusive lock hands out consecutive ids within one
            # transaction, so the batch's ids end at the last one inserted.
            last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
            rows, nbytes = len(payloads), sum(len(p) for p in payloads)
            dropped = 0
            if self.rows + rows > self.max_rows or self.bytes + nbytes > self.max_bytes:
                dropped, dropped_bytes = self._drop_oldest(conn, rows, nbytes)
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
        return list(range(last - len(payloads) + 1, last + 1))

    def _drop_oldest(self, conn: sqlite3.Connection, rows: int, nbytes: int) -> tuple[int, int]:
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
            return 0, 0
        conn.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
        self._meta_add("dropped_rows", freed_rows)
        return freed_rows, freed_bytes

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
        return self._guard(lambda: self._peek(limit_rows, limit_bytes, meter, after_id))

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
        for row_id, payload in cur:
            size = len(payload)
            if out and limit_bytes is not None and total + size > limit_bytes:
                break
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
        with self._transaction() as conn:
            for start in range(0, len(ids), _IDS_PER_STATEMENT):
                chunk = ids[start : start + _IDS_PER_STATEMENT]
                marks = ",".join("?" * len(chunk))
                for (size,) in conn.execute(
                    f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING length(payload)", chunk
                ).fetchall():
                    deleted += 1
                    freed += int(size)
            if counter is not None and deleted:
                self._meta_add(counter, deleted)
        self.rows -= deleted
        self.bytes -= freed
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
class _Put:
    reading: Reading
    done: trio.Event = attrs.Factory(trio.Event)
    row_id: int | None = None
    error: BaseException | None = None


@attrs.define(eq=False)
class WriterStats:
    """What the writer has done: readings committed, transactions, failures."""

    readings: int = 0
    batches: int = 0
    largest_batch: int = 0
    failures: int = 0


#: How long the outbox writer lets readings gather before it commits them (seconds): one fsync
#: per 20 ms at most instead of one per reading when a fleet's polls are spread over time.
WRITER_LINGER_S = 0.02


class OutboxWriter:
    """Group commit in front of an `AsyncOutbox`.

    ``await writer.put(reading)`` returns the row id once the reading is committed. While one
    transaction is being written, new readings queue up and all go into the next transaction
    (at most `max_batch` per transaction), so thousands of readings per second cost a handful
    of fsyncs. A transaction starts at most `linger_s` after the first reading waiting for it
    (sooner once `max_batch` wait), so that readings arriving in a trickle (pollers spread over
    their interval) still share transactions. Run `run` as a task; when it stops, waiting and
    later `put` calls fail with `OutboxError`.
    """

    def __init__(
        self, outbox: AsyncOutbox, *, max_batch: int = 5000, linger_s: float = WRITER_LINGER_S
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not 0 <= linger_s <= 1:
            raise ValueError(f"linger_s must be 0..1 s, got {linger_s!r}")
        self.outbox = outbox
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.stats = WriterStats()
        self._queue: list[_Put] = []
        self._wakeup = trio.Event()
        self._stopped = False

    async def put(self, reading: Reading) -> int:
        """Commit one reading (batched with others) and return its row id."""
        size = len(reading.to_json())
        if size > self.outbox.core.max_bytes:
            raise ValueError(
                f"reading of meter {reading.meter!r} is {size} bytes, larger than the whole "
                f"outbox (max_bytes={self.outbox.core.max_bytes})"
            )
        if self._stopped:
            raise OutboxError(f"outbox writer for {self.outbox.core.path} is stopped")
        item = _Put(reading)
        self._queue.append(item)
        self._wakeup.set()
        await item.done.wait()
        if item.error is not None:
            raise OutboxError(
                f"reading of meter {reading.meter!r} was not stored: {item.error}"
            ) from item.error
        assert item.row_id is not None
        return item.row_id

    async def put_many(self, readings: Sequence[Reading]) -> list[int]:
        """Commit several readings, in order, in as few transactions as possible; return their
        row ids. If one fails, `OutboxError` is raised (the others may be committed)."""
        items: list[_Put] = []
        for reading in readings:
            size = len(reading.to_json())
            if size > self.outbox.core.max_bytes:
                raise ValueError(
                    f"reading of meter {reading.meter!r} is {size} bytes, larger than the "
                    f"whole outbox (max_bytes={self.outbox.core.max_bytes})"
                )
        if self._stopped:
            raise OutboxError(f"outbox writer for {self.outbox.core.path} is stopped")
        for reading in readings:
            item = _Put(reading)
            self._queue.append(item)
            items.append(item)
        self._wakeup.set()
        ids: list[int] = []
        for item in items:
            await item.done.wait()
            if item.error is not None:
                raise OutboxError(
                    f"reading of meter {item.reading.meter!r} was not stored: {item.error}"
                ) from item.error
            assert item.row_id is not None
            ids.append(item.row_id)
        return ids

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued readings until cancelled."""
        task_status.started()
        try:
            while True:
                if not self._queue:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    continue
                if self.linger_s and len(self._queue) < self.max_batch:
                    # Let the readings of the next few milliseconds join this transaction.
                    with trio.move_on_after(self.linger_s):
                        while len(self._queue) < self.max_batch:
                            self._wakeup = trio.Event()
                            await self._wakeup.wait()
                batch = self._queue[: self.max_batch]
                del self._queue[: len(batch)]
                await self._commit(batch)
        finally:
            self._stopped = True
            stranded, self._queue = self._queue, []
            for item in stranded:
                item.error = OutboxError("the outbox writer stopped before committing it")
                item.done.set()

    async def _commit(self, batch: list[_Put]) -> None:
        try:
            ids = await self.outbox.append([item.reading for item in batch])
        except (OutboxError, ValueError) as exc:
            self.stats.failures += 1
            log.error("outbox write of %d readings failed: %s", len(batch), exc)
            for item in batch:
                item.error = exc
                item.done.set()
            return
        except BaseException as exc:
            # Cancelled while the worker thread ran: the thread finished (it cannot be
            # abandoned), but the result is lost with the cancellation; the readings may or may
            # not be committed, so report failure rather than claim success.
            for item in batch:
                item.error = OutboxError(f"outbox write interrupted ({type(exc).__name__})")
                item.done.set()
            raise
        self.stats.readings += len(batch)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for item, row_id in zip(batch, ids, strict=True):
            item.row_id = row_id
            item.done.set()
