"""Profile generics (load profile, billing profiles, event logs) delivered as telemetry.

A meter keeps its own profile for days or weeks; whatever the bridge missed (it was down, the
broker was, the meter link was) is still there. For each configured profile the poller reads,
between its register polls:

- the capture objects (the columns) once per association, with the scaler_unit of every register
  column (cached with the register scalers);
- the buffer by range of capture time (selector 1) from the profile's high-water mark (the
  capture time of the last entry committed to the outbox) or, the first time, from
  ``now - backfill_hours``; a meter that refuses range access is read by entry number
  (selector 2) instead, the entries wanted estimated from the capture period;
- long gaps in ranges of ``chunk_hours``, one range per pause between two polls (and only a
  few meters at once box-wide), so that live polling keeps its cadence.

Each entry becomes a :class:`~bridge.readings.Reading` stamped with its own capture time (the
COSEM date-time, deviation honoured; unspecified deviation is read as UTC). Columns are named by
the profile's ``keys`` or their OBIS code (``"<obis>:<attribute>"`` for attributes other than 2);
register columns are scaled. A clock status other than 0 is kept as the ``clock_status`` quality
key; status columns (0-0:96.10.x) are published as ``status`` unless named otherwise.

The high-water marks live in ``profiles.json`` in the data directory, written (atomically,
fsynced) after the entries are committed: a clean restart never sends an entry twice; a crash
between the commit and the write re-sends at most that last range (at-least-once). The service
process is the file's only writer: a meter polled in a worker process (``[bridge] workers``)
sends each new mark to the service after its entries, on the same pipe, and the service records
it once the entries before it are in the outbox (:meth:`HighWaterMarks.advance`); a worker
starts from the marks of its meters the service hands it. So a meter keeps its mark when it
moves between workers, or between a worker and the service.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import threading
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

import attrs

from bridge.config import ProfileConfig
from bridge.readings import Value, dumps_compact
from codec import cosem
from codec.apdu import AttributeDescriptor
from codec.axdr import Data, DataType
from codec.client import DlmsClient
from codec.cosem import CaptureObject, InterfaceClass, ScalerUnit
from codec.cosem_time import CosemDateTime
from codec.errors import DataAccessError, ProtocolError, RemoteProtocolError
from codec.obis import Obis
from codec.values import context_for, convert

__all__ = [
    "FILENAME",
    "HighWaterMarks",
    "ProfileLayout",
    "ProfileState",
    "entries_from_buffer",
]

log = logging.getLogger("bridge.profiles")

FILENAME = "profiles.json"
_UTC = _dt.UTC
#: The newest range ends this long before now before it counts as complete: an entry may be
#: written a moment after its capture time.
SETTLE_S = 60.0
#: Entries at most per read by entry number, whatever the chunk size says.
MAX_ENTRIES_PER_READ = 2000

Procedure = Generator[Any, Any, Any]


# -- high-water marks ----------------------------------------------------------------------------


class HighWaterMarks:
    """Per meter and profile: the capture time (ms) of the last entry committed to the outbox.

    One small JSON file, ``{"<meter>": {"<obis>": ts_ms}}``, rewritten atomically (temporary
    file, fsync, rename) at each change. ``path=None`` keeps the marks in memory only.
    An unreadable file is set aside (``.corrupt``) and the marks start empty: the profiles are
    then read from ``now - backfill_hours`` again (at-least-once, never a hole).
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) / FILENAME if path is not None and Path(path).is_dir() else path
        self.marks: dict[str, dict[str, int]] = {}
        # Pollers write their marks from worker threads: one write at a time (``_writing``, held
        # from taking the marks' JSON to the rename, so the file never goes back to older
        # marks); ``_lock`` guards the marks themselves, and is held only briefly.
        self._writing = threading.Lock()
        self._lock = threading.Lock()
        if self.path is not None:
            self.marks = self._load(Path(self.path))

    @staticmethod
    def _load(path: Path) -> dict[str, dict[str, int]]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.error("cannot read profile high-water marks %s: %s", path, exc)
            return {}
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            marks: dict[str, dict[str, int]] = {}
            for meter, profiles in data.items():
                if not isinstance(profiles, dict):
                    raise ValueError(f"{meter!r}: not an object")
                for obis, ts in profiles.items():
                    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
                        raise ValueError(f"{meter!r} {obis!r}: {ts!r} is not a time in ms")
                marks[str(meter)] = dict(profiles)
            return marks
        except (ValueError, UnicodeDecodeError) as exc:
            aside = path.with_suffix(".corrupt")
            log.error(
                "profile high-water marks %s are unreadable (%s); moved to %s, profiles are "
                "read from their backfill window again",
                path,
                exc,
                aside,
            )
            try:
                path.replace(aside)
            except OSError as move_error:
                log.error("cannot move %s aside: %s", path, move_error)
            return {}

    def get(self, meter: str, profile: Obis) -> int | None:
        """The mark of one profile of one meter, None before its first entry."""
        return self.marks.get(meter, {}).get(str(profile))

    def set(self, meter: str, profile: Obis, ts_ms: int) -> None:
        """Record a new mark and write the file (blocking: call it from a worker thread).

        Raises :class:`OSError` when the file cannot be written (the mark is kept in memory)."""
        with self._writing:
            with self._lock:
                self.marks.setdefault(meter, {})[str(profile)] = ts_ms
                data = dumps_compact(self.marks).encode() if self.path is not None else b""
            if self.path is not None:
                self._write(Path(self.path), data)

    def advance(self, marks: Iterable[tuple[str, str, int]]) -> bool:
        """Record, in memory, the marks a worker process sent (``(meter, obis, ts_ms)``), each
        only if newer than the one held; :meth:`save` writes them. Returns whether any changed.

        A mark moves forward only: an older one (from a worker that stopped after the meter
        moved to another) never takes the place of a newer.
        """
        changed = False
        with self._lock:
            for meter, obis, ts_ms in marks:
                profiles = self.marks.setdefault(meter, {})
                if ts_ms > profiles.get(obis, -1):
                    profiles[obis] = ts_ms
                    changed = True
        return changed

    def save(self) -> None:
        """Write the file with the marks held now (blocking: call it from a worker thread).

        Raises :class:`OSError` when it cannot be written."""
        if self.path is None:
            return
        with self._writing:
            with self._lock:
                data = dumps_compact(self.marks).encode()
            self._write(Path(self.path), data)

    def of(self, meters: Iterable[str]) -> dict[str, dict[str, int]]:
        """A copy of the marks of ``meters`` (what a worker process starts from)."""
        with self._lock:
            return {m: dict(self.marks[m]) for m in meters if m in self.marks}

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# -- the columns ----------------------------------------------------------------------------------


@attrs.frozen
class ProfileLayout:
    """A profile's columns, their scalers, the index of its clock column and its period."""

    columns: tuple[CaptureObject, ...]
    scalers: tuple[ScalerUnit | None, ...]
    clock_index: int
    #: capture_period in seconds (0: asynchronous, e.g. an event log).
    period_s: int


def _is_clock(column: CaptureObject) -> bool:
    return column.class_id == InterfaceClass.CLOCK and column.attribute_index == 2


def read_layout(client: DlmsClient, obis: Obis) -> Procedure:
    """Procedure: the :class:`ProfileLayout` of ``obis`` (capture objects cached by the client,
    scalers in the client's scaler cache)."""
    columns = yield from client.capture_objects(obis)
    clock_index = next((i for i, c in enumerate(columns) if _is_clock(c)), -1)
    if clock_index < 0:
        raise RemoteProtocolError(
            f"profile {obis} has no clock column (0-0:1.0.0 attribute 2) among its "
            f"{len(columns)} capture objects: its entries cannot be placed in time",
            code="profile.no_clock",
        )
    scalers: list[ScalerUnit | None] = []
    for column in columns:
        scaler_attr = cosem.scaler_unit_attribute(column.class_id, column.obis)
        if scaler_attr is None or column.attribute_index != 2:
            scalers.append(None)
            continue
        key = (column.class_id, column.obis)
        if key not in client.scalers:
            try:
                data = yield from client.get(scaler_attr)
            except DataAccessError as exc:
                client.scalers[key] = exc.name
            else:
                try:
                    client.scalers[key] = ScalerUnit.from_data(data, f"{column.obis} scaler_unit")
                except ProtocolError as exc:
                    client.scalers[key] = exc.message
        cached = client.scalers[key]
        scalers.append(cached if isinstance(cached, ScalerUnit) else None)
    period = 0
    try:
        period_data = yield from client.get(
            AttributeDescriptor(int(InterfaceClass.PROFILE_GENERIC), obis, 4)
        )
        if isinstance(period_data.value, int) and not isinstance(period_data.value, bool):
            period = max(0, period_data.value)
    except DataAccessError:
        period = 0
    return ProfileLayout(columns, tuple(scalers), clock_index, period)


def read_buffer_range(client: DlmsClient, obis: Obis, start_ms: int, end_ms: int) -> Procedure:
    """Procedure: the buffer rows captured between ``start_ms`` and ``end_ms`` (inclusive)."""
    start = _dt.datetime.fromtimestamp(start_ms / 1000, _UTC)
    end = _dt.datetime.fromtimestamp(end_ms / 1000, _UTC)
    buffer = yield from client.get(
        AttributeDescriptor(int(InterfaceClass.PROFILE_GENERIC), obis, 2),
        cosem.range_descriptor(start, end),
    )
    return buffer


def read_buffer_entries(client: DlmsClient, obis: Obis, back: int, count: int) -> Procedure:
    """Procedure: ``count`` entries by number, starting ``back`` entries before the newest;
    returns ``(buffer, reached_the_newest)``."""
    in_use_data = yield from client.get(
        AttributeDescriptor(int(InterfaceClass.PROFILE_GENERIC), obis, 7)
    )
    in_use = in_use_data.value
    if not isinstance(in_use, int) or isinstance(in_use, bool) or in_use < 0:
        raise RemoteProtocolError(
            f"profile {obis} entries_in_use is {in_use_data.type.name}, not a count",
            code="profile.bad_entries_in_use",
        )
    if in_use == 0:
        return Data.array(()), True
    first = max(1, in_use - back + 1)
    last = min(in_use, first + max(1, count) - 1)
    buffer = yield from client.get(
        AttributeDescriptor(int(InterfaceClass.PROFILE_GENERIC), obis, 2),
        cosem.entry_descriptor(first, last),
    )
    return buffer, last >= in_use


# -- entries -------------------------------------------------------------------------------------


@attrs.frozen
class Entries:
    """What a buffer held: entries as (ts_ms, values), in buffer order, and what was skipped."""

    entries: tuple[tuple[int, dict[str, Value]], ...]
    #: Rows whose capture time could not be known.
    skipped: int = 0


def column_key(profile: ProfileConfig, column: CaptureObject) -> str:
    """The telemetry key of a column."""
    configured = profile.key_for(column.obis)
    if configured is not None:
        return configured
    if column.obis.c == 96 and column.obis.d == 10 and column.obis.a == 0:
        return "status"
    if column.attribute_index == 2:
        return str(column.obis)
    return f"{column.obis}:{column.attribute_index}"


def cell_value(cell: Data, scaler: ScalerUnit | None, column: CaptureObject) -> Value:
    """A buffer cell as a telemetry value, by the codec's value contract (:mod:`codec.values`):
    register columns scaled; a value that cannot be represented is null."""
    context = context_for(column.class_id, column.obis, column.attribute_index)
    converted = convert(cell, context=context, scaler=scaler.scaler if scaler else None)
    return converted.value if converted.ok else None


def _capture_time(cell: Data) -> CosemDateTime | None:
    value = cell.value
    if isinstance(value, CosemDateTime):
        return value
    if isinstance(value, bytes) and len(value) == 12:
        return CosemDateTime.from_bytes(value)
    return None


def entries_from_buffer(buffer: Data, layout: ProfileLayout, profile: ProfileConfig) -> Entries:
    """Turn a buffer (an array of structures) into timestamped entries.

    A row whose clock cell is null-data or wholly unspecified is a compressed entry: it is
    ``capture_period`` after the previous one (the Blue Book's rule); without a previous row or
    a period it is skipped and counted.
    """
    if buffer.type is not DataType.ARRAY or not isinstance(buffer.value, tuple):
        raise RemoteProtocolError(
            f"profile {profile.obis} buffer is {buffer.type.name}, not an array",
            code="profile.bad_buffer",
        )
    keys = [column_key(profile, c) for c in layout.columns]
    out: list[tuple[int, dict[str, Value]]] = []
    skipped = 0
    previous: int | None = None
    for row in buffer.value:
        cells = row.value if isinstance(row.value, tuple) else (row,)
        ts_ms: int | None = None
        status: int | None = None
        if layout.clock_index < len(cells):
            try:
                stamp = _capture_time(cells[layout.clock_index])
                if stamp is not None:
                    status = None if stamp.clock_status is None else int(stamp.clock_status)
                    ts_ms = round(stamp.to_datetime(default_tz=_UTC).timestamp() * 1000)
            except ProtocolError:
                ts_ms = None
        if ts_ms is None and previous is not None and layout.period_s > 0:
            ts_ms = previous + layout.period_s * 1000
        if ts_ms is None or ts_ms < 0:
            skipped += 1
            continue
        previous = ts_ms
        values: dict[str, Value] = {}
        for i, cell in enumerate(cells):
            if i == layout.clock_index or i >= len(keys):
                continue
            values[keys[i]] = cell_value(cell, layout.scalers[i], layout.columns[i])
        if status:
            values["clock_status"] = status
        out.append((ts_ms, values))
    return Entries(tuple(out), skipped)


# -- the state of one profile of one meter -------------------------------------------------------


@attrs.define(eq=False)
class ProfileState:
    """Where one profile of one meter stands: its mark, its next read, how it is read."""

    config: ProfileConfig
    #: Capture time (ms) of the last entry committed, None before the first.
    mark: int | None = None
    #: Start (ms) of the next range when the last ones held nothing new (a gap in the meter's
    #: own data); never persisted.
    cursor: int | None = None
    #: Trio time of the next read (the first read happens at once).
    due: float = -math.inf
    #: The association (the poller's counter) the last complete read was made in.
    generation: int = -1
    #: Set when the meter refused range access: entries are read by number from then on.
    by_entry: bool = False
    #: By entry number: how far back from the newest entry the next read starts.
    entry_back: int | None = None
    layout: ProfileLayout | None = None
    layout_generation: int = -1
    #: Counters.
    reads: int = 0
    entries: int = 0
    errors: int = 0
    last_error: str | None = None

    def start_ms(self, now_ms: int) -> int:
        """Where the next range starts: the mark, or the backfill window's start if later."""
        window = now_ms - round(self.config.backfill_hours * 3_600_000)
        start = window if self.mark is None else max(self.mark, window)
        if self.cursor is not None:
            start = max(start, self.cursor)
        return start

    def pending(self, now: float, generation: int) -> bool:
        """Whether a read is due: on schedule, or after a gap (a new association)."""
        return now >= self.due or generation != self.generation

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe view."""
        return {
            "obis": str(self.config.obis),
            "mark": self.mark,
            "by_entry": self.by_entry,
            "reads": self.reads,
            "entries": self.entries,
            "errors": self.errors,
            "last_error": self.last_error,
        }


def next_due_wall(now_s: float, every_s: float) -> float:
    """The next read after ``now_s`` (wall clock): on the ``every_s`` grid plus a settling
    delay, so that entries written at a boundary are found by the read after it."""
    settle = min(SETTLE_S / 2, every_s * 0.05)
    return (math.floor(now_s / every_s) + 1) * every_s + settle
