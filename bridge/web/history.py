"""Local history of the numeric values, for the dashboard's charts.

SQLite in ``<data_dir>/history.sqlite``, separate from the outbox (losing it loses no reading
that still has to be delivered). Bounded by age and by row count: older rows are deleted
periodically. Readings wait in a bounded in-memory buffer and are written in one transaction
per flush. Long ranges are thinned to at most ``max_points`` averaged buckets per key.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any

import trio

from bridge.readings import Reading
from bridge.sqlite_rows import insert_rows

__all__ = ["FILENAME", "HistoryStore"]

FILENAME = "history.sqlite"
#: Values waiting to be written; beyond it the oldest waiting ones are dropped (and counted).
MAX_PENDING = 100_000
#: Points per key that a query returns at most.
MAX_POINTS = 600


#: The journal is checkpointed and cut back to this size: the data directory it shares with the
#: outbox may be small (an SD card, a tmpfs), and SQLite's default lets a WAL reach 4 MB and stay.
WAL_SIZE_LIMIT = 512 * 1024
_WAL_CHECKPOINT_PAGES = 64


class HistoryStore:
    """Numeric values by meter, key and time (ms since the epoch)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        max_age_s: float,
        max_rows: int,
        step_s: float = 0.0,
    ):
        self.path = Path(data_dir) / FILENAME
        self.max_age_s = max_age_s
        self.max_rows = max_rows
        #: A meter's values are kept at most this often (0: every reading).
        self.step_ms = int(step_s * 1000)
        self._kept_ms: dict[str, int] = {}
        self.dropped = 0
        self._pending: deque[tuple[str, str, int, float]] = deque()
        self._db: sqlite3.Connection | None = None
        self._lock = trio.Lock()

    def open(self) -> None:
        """Open (or create) the database."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        os.chmod(self.path, 0o600)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA wal_autocheckpoint={_WAL_CHECKPOINT_PAGES}")
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS samples ("
            " meter TEXT NOT NULL, key TEXT NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS samples_mkt ON samples (meter, key, ts)")
        db.execute("CREATE INDEX IF NOT EXISTS samples_ts ON samples (ts)")
        self._db = db

    def close(self) -> None:
        """Close the database (pending values are written first)."""
        if self._db is not None:
            self._write(self._take())
            self._db.close()
            self._db = None

    def add(self, reading: Reading) -> None:
        """Queue the numeric values of a reading (booleans and strings are not charted), at
        most one reading of a meter per step."""
        if self.step_ms:
            kept = self._kept_ms.get(reading.meter)
            if kept is not None and kept <= reading.ts_ms < kept + self.step_ms:
                return
            self._kept_ms[reading.meter] = reading.ts_ms
        for key, value in reading.values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                v = float(value)
                if math.isfinite(v):
                    self._pending.append((reading.meter, key, reading.ts_ms, v))
        excess = len(self._pending) - MAX_PENDING
        for _ in range(max(0, excess)):
            self._pending.popleft()
            self.dropped += 1

    def _take(self) -> list[tuple[str, str, int, float]]:
        rows = list(self._pending)
        self._pending.clear()
        return rows

    def _write(self, rows: list[tuple[str, str, int, float]]) -> None:
        if not rows or self._db is None:
            return
        params = [v for row in rows for v in row]
        with self._db:
            self._db.execute("BEGIN")
            # A few multi-row statements, not one a row (see bridge.sqlite_rows).
            insert_rows(self._db, "INSERT INTO samples (meter, key, ts, value)", 4, params)

    async def flush(self) -> None:
        """Write what is pending."""
        rows = self._take()
        if rows:
            async with self._lock:
                await trio.to_thread.run_sync(self._write, rows)

    def _prune(self, now_ms: int) -> int:
        assert self._db is not None
        cutoff = now_ms - int(self.max_age_s * 1000)
        deleted = self._db.execute("DELETE FROM samples WHERE ts < ?", (cutoff,)).rowcount
        count = self._db.execute("SELECT count(*) FROM samples").fetchone()[0]
        if count > self.max_rows:
            surplus = count - self.max_rows
            deleted += self._db.execute(
                "DELETE FROM samples WHERE rowid IN "
                "(SELECT rowid FROM samples ORDER BY ts LIMIT ?)",
                (surplus,),
            ).rowcount
        return int(deleted)

    async def prune(self, now_ms: int | None = None) -> int:
        """Delete what is older than the age bound and what exceeds the row bound."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        async with self._lock:
            return await trio.to_thread.run_sync(self._prune, now)

    async def rows(self) -> int:
        """Rows stored."""
        assert self._db is not None
        db = self._db
        async with self._lock:
            return int(
                await trio.to_thread.run_sync(
                    lambda: db.execute("SELECT count(*) FROM samples").fetchone()[0]
                )
            )

    def _query(
        self, meter: str, since: int, until: int, key: str | None, max_points: int
    ) -> dict[str, Any]:
        assert self._db is not None
        where = "meter = ? AND ts >= ? AND ts <= ?"
        params: list[Any] = [meter, since, until]
        if key is not None:
            where += " AND key = ?"
            params.append(key)
        # Raw points when they fit; averaged buckets (thinned) when there are more, over the
        # span the stored values actually cover.
        counts = self._db.execute(
            f"SELECT key, count(*), min(ts), max(ts) FROM samples WHERE {where} GROUP BY key",
            params,
        ).fetchall()
        thin = any(n > max_points for _, n, _, _ in counts)
        first = min((lo for _, _, lo, _ in counts), default=since)
        last = max((hi for _, _, _, hi in counts), default=until)
        bucket = max(1, math.ceil((last - first + 1) / max_points))
        if thin:
            sql = (
                f"SELECT key, (ts / {bucket}) * {bucket} + {bucket // 2} AS t, avg(value) "
                f"FROM samples WHERE {where} GROUP BY key, ts / {bucket} ORDER BY key, t"
            )
        else:
            sql = f"SELECT key, ts, value FROM samples WHERE {where} ORDER BY key, ts"
        series: dict[str, list[list[float]]] = {}
        for k, t, v in self._db.execute(sql, params):
            series.setdefault(k, []).append([int(t), v])
        return {
            "meter": meter,
            "since": since,
            "until": until,
            "bucket_ms": bucket if thin else None,
            "series": series,
        }

    async def query(
        self,
        meter: str,
        since: int,
        until: int,
        key: str | None = None,
        max_points: int = MAX_POINTS,
    ) -> dict[str, Any]:
        """The values of one meter between two times (ms), thinned to ``max_points`` per key."""
        await self.flush()
        async with self._lock:
            return await trio.to_thread.run_sync(self._query, meter, since, until, key, max_points)
