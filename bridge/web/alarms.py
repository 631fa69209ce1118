"""The persistent alarm store: every alarm the service raised, when it cleared, who acknowledged.

The service decides which alarms are active (``BridgeService.all_alarms()``); the store follows
it (``sync``) and keeps the history in ``<data_dir>/alarms.sqlite`` so that alarms survive a
restart. An alarm still active at shutdown is listed as active after the restart until the
service has had ``grace_s`` to raise it again; if it does not, it is cleared. Acknowledging
keeps an alarm listed until it clears. Cleared alarms are kept ``keep_cleared_s``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

__all__ = ["FILENAME", "AlarmChange", "AlarmStore"]

FILENAME = "alarms.sqlite"
#: Cleared alarms are listed for a day, and at most this many are kept.
KEEP_CLEARED_S = 86400.0
MAX_CLEARED = 1000


@attrs.frozen
class AlarmChange:
    """An alarm raised, changed or cleared by a ``sync``."""

    kind: str  # "raised", "changed", "cleared"
    alarm: dict[str, Any]


_COLUMNS = ("id", "name", "message", "raised_ms", "updated_ms", "cleared_ms", "acked_ms")


def _row(values: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(_COLUMNS, values, strict=True))
    out["active"] = out["cleared_ms"] is None
    out["acked"] = out["acked_ms"] is not None
    return out


class AlarmStore:
    """Alarms by id; see the module docstring. Small and synchronous (a few rows change)."""

    def __init__(self, data_dir: str | os.PathLike[str], *, grace_s: float = 60.0) -> None:
        self.path = Path(data_dir) / FILENAME
        self.grace_s = grace_s
        self._db: sqlite3.Connection | None = None
        self._active: dict[str, int] = {}  # name -> id
        self._messages: dict[str, str] = {}  # name -> message, of the active ones
        self._restored: dict[str, float] = {}  # name -> monotonic deadline
        self._started = time.monotonic()

    def open(self) -> None:
        """Open (or create) the store; alarms active at the last stop are restored."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        os.chmod(self.path, 0o600)
        db.execute(
            "CREATE TABLE IF NOT EXISTS alarms (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " name TEXT NOT NULL, message TEXT NOT NULL, raised_ms INTEGER NOT NULL,"
            " updated_ms INTEGER NOT NULL, cleared_ms INTEGER, acked_ms INTEGER)"
        )
        self._db = db
        deadline = time.monotonic() + self.grace_s
        for alarm_id, name, message in db.execute(
            "SELECT id, name, message FROM alarms WHERE cleared_ms IS NULL ORDER BY id"
        ):
            if name in self._active:  # a duplicate left by a crash: keep the newest
                self._clear(self._active[name], "superseded")
            self._active[name] = alarm_id
            self._messages[name] = message
            self._restored[name] = deadline

    def close(self) -> None:
        """Close the database."""
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        """The open connection."""
        if self._db is None:
            raise RuntimeError("the alarm store is not open")
        return self._db

    def _clear(self, alarm_id: int, _why: str) -> None:
        now = _now_ms()
        self.db.execute(
            "UPDATE alarms SET cleared_ms = ?, updated_ms = ? WHERE id = ?", (now, now, alarm_id)
        )

    def get(self, alarm_id: int) -> dict[str, Any] | None:
        """One alarm by id."""
        row = self.db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM alarms WHERE id = ?", (alarm_id,)
        ).fetchone()
        return None if row is None else _row(row)

    def sync(self, current: Mapping[str, str]) -> list[AlarmChange]:
        """Follow the service's active alarms (name -> message); returns what changed.

        One transaction (one write to disk) however many alarms changed: a fleet-wide outage
        raises thousands at once, and a commit each took seconds of the event loop. If it
        fails, nothing is written and the store stays as it was (the next sync tries again).
        """
        db = self.db
        kept = (dict(self._active), dict(self._messages), dict(self._restored))
        db.execute("BEGIN IMMEDIATE")
        try:
            changes = self._sync(current)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._active, self._messages, self._restored = kept
            raise
        return changes

    def _sync(self, current: Mapping[str, str]) -> list[AlarmChange]:
        changes: list[AlarmChange] = []
        now = _now_ms()
        mono = time.monotonic()
        for name, message in current.items():
            self._restored.pop(name, None)
            alarm_id = self._active.get(name)
            if alarm_id is None:
                cur = self.db.execute(
                    "INSERT INTO alarms (name, message, raised_ms, updated_ms) VALUES (?, ?, ?, ?)",
                    (name, message, now, now),
                )
                assert cur.lastrowid is not None
                self._active[name] = cur.lastrowid
                self._messages[name] = message
                changes.append(AlarmChange("raised", self._must_get(cur.lastrowid)))
                continue
            if self._messages.get(name) != message:
                self.db.execute(
                    "UPDATE alarms SET message = ?, updated_ms = ? WHERE id = ?",
                    (message, now, alarm_id),
                )
                self._messages[name] = message
                changes.append(AlarmChange("changed", self._must_get(alarm_id)))
        for name in list(self._active):
            if name in current:
                continue
            if name in self._restored and mono < self._restored[name]:
                continue  # from before the restart: give the service time to raise it again
            self._restored.pop(name, None)
            alarm_id = self._active.pop(name)
            self._messages.pop(name, None)
            self._clear(alarm_id, "cause gone")
            changes.append(AlarmChange("cleared", self._must_get(alarm_id)))
        if changes:
            self._prune(now)
        return changes

    def _must_get(self, alarm_id: int) -> dict[str, Any]:
        alarm = self.get(alarm_id)
        assert alarm is not None
        return alarm

    def _prune(self, now_ms: int) -> None:
        self.db.execute(
            "DELETE FROM alarms WHERE cleared_ms IS NOT NULL AND cleared_ms < ?",
            (now_ms - int(KEEP_CLEARED_S * 1000),),
        )
        self.db.execute(
            "DELETE FROM alarms WHERE id IN (SELECT id FROM alarms WHERE cleared_ms IS NOT NULL"
            " ORDER BY cleared_ms DESC LIMIT -1 OFFSET ?)",
            (MAX_CLEARED,),
        )

    def ack(self, alarm_id: int) -> dict[str, Any] | None:
        """Acknowledge an alarm; None if there is no such alarm."""
        alarm = self.get(alarm_id)
        if alarm is None:
            return None
        if alarm["acked_ms"] is None:
            self.db.execute("UPDATE alarms SET acked_ms = ? WHERE id = ?", (_now_ms(), alarm_id))
        return self.get(alarm_id)

    def listing(self) -> dict[str, list[dict[str, Any]]]:
        """Active alarms and the recently cleared ones, newest first."""
        rows = [
            _row(r)
            for r in self.db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM alarms ORDER BY id DESC LIMIT ?",
                (MAX_CLEARED + 1000,),
            )
        ]
        return {
            "active": [r for r in rows if r["active"]],
            "recent": [r for r in rows if not r["active"]],
        }

    def newest_active(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` active alarms, newest first."""
        return [
            _row(r)
            for r in self.db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM alarms WHERE cleared_ms IS NULL"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        ]

    def active(self) -> dict[str, int]:
        """Active alarm names -> ids."""
        return dict(self._active)


def _now_ms() -> int:
    return int(time.time() * 1000)
