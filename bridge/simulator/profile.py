"""The load profile (Profile generic, class 7) of a simulated meter.

Each entry is ``{clock time, active energy, average power}`` at a boundary of the capture period
(``MeterSettings.profile_period``, 15 minutes by default) of the meter's clock, computed from the
meter's physics, so the buffer of the last days is the same whenever it is read and agrees with
the energy register. Rows are encoded once and cached per meter; the buffer can be read whole, by
range of clock time (selector 1, unless ``profile_range_access`` is off) or by entry number and
column (selector 2).
"""

from __future__ import annotations

import bisect
import datetime as _dt
import math
import struct
from typing import TYPE_CHECKING

from bridge.simulator.objects import AccessFailure
from codec.apdu import DataAccessResult, SelectiveAccess
from codec.axdr import encode_length
from codec.cosem import CaptureObject, EntryDescriptor, RangeDescriptor
from codec.cosem_time import CosemDateTime
from codec.errors import DecodeError
from codec.obis import Obis

if TYPE_CHECKING:
    from bridge.simulator.meter import Meter
    from bridge.simulator.physics import Physics

__all__ = [
    "CAPTURE_PERIOD",
    "ENTRIES_PER_DAY",
    "EVENT_CLOCK_SET",
    "EVENT_LOG_CAPACITY",
    "EVENT_REMOTE_DISCONNECT",
    "EVENT_REMOTE_RECONNECT",
    "EventLog",
    "LoadProfile",
    "date_time_bytes",
]

#: Seconds between entries by default (``MeterSettings.profile_period``).
CAPTURE_PERIOD = 900
ENTRIES_PER_DAY = 86_400 // CAPTURE_PERIOD
#: Entries the standard event log keeps (the oldest are overwritten).
EVENT_LOG_CAPACITY = 100
#: Event codes of the simulated meters' standard event log (0-0:99.98.0).
EVENT_CLOCK_SET = 5
EVENT_REMOTE_DISCONNECT = 60
EVENT_REMOTE_RECONNECT = 61
_UTC = _dt.UTC

Row = tuple[bytes, ...]


def date_time_bytes(t: float) -> bytes:
    """The 12-byte COSEM date-time of unix time ``t`` (UTC: deviation 0, status ok)."""
    return CosemDateTime.from_datetime(_dt.datetime.fromtimestamp(t, _UTC)).to_bytes()


class LoadProfile:
    """The profile's columns and the rules for computing, caching and selecting its rows."""

    def __init__(self, columns: tuple[tuple[int, Obis, int], ...]) -> None:
        self.columns = tuple(CaptureObject(c, o, a, 0) for c, o, a in columns)

    @staticmethod
    def average_power(physics: Physics, end: float, period: int = CAPTURE_PERIOD) -> float:
        """Mean active power (W) over the capture period that ends at ``end``."""
        return (physics.energy(end) - physics.energy(end - period)) * 3600 / period

    @staticmethod
    def entry_count(meter: Meter) -> int:
        """Entries the buffer holds (also its capacity: the buffer is always full).

        ``profile_days`` days of 15-minute entries: the capacity in entries does not change
        with the capture period, as in a real meter's memory.
        """
        return meter.settings.profile_days * ENTRIES_PER_DAY

    def _row(self, meter: Meter, end: int) -> Row:
        energy = meter.energy_wh(end)
        return (
            b"\x09\x0c" + date_time_bytes(end),  # octet-string(12), as profiles carry it
            struct.pack(">BI", 6, energy),
            struct.pack(
                ">Bf", 23, self.average_power(meter.physics, end, meter.settings.profile_period)
            ),
        )

    def rows(self, meter: Meter, now: float) -> tuple[list[int], list[Row]]:
        """Times and encoded columns of the entries in the buffer at meter time ``now``."""
        period = meter.settings.profile_period
        last = math.floor(now / period) * period
        count = self.entry_count(meter)
        times = [last - period * k for k in range(count - 1, -1, -1)]
        rows_by_time = meter.profile_rows
        if meter.profile_flags != meter.faults.flags:
            # The energy column depends on the flags fault.
            rows_by_time.clear()
            meter.profile_flags = meter.faults.flags
        rows = []
        for t in times:
            row = rows_by_time.get(t)
            if row is None:
                row = rows_by_time[t] = self._row(meter, t)
            rows.append(row)
        if len(rows_by_time) > count + ENTRIES_PER_DAY:
            oldest = times[0]
            for t in [t for t in rows_by_time if t < oldest]:
                del rows_by_time[t]
        return times, rows

    def read(self, meter: Meter, now: float, access: SelectiveAccess | None) -> bytes:
        """The buffer attribute, encoded, with the selection ``access`` applied."""
        times, rows = self.rows(meter, now)
        columns: range | list[int] = range(len(self.columns))
        if access is None:
            pass
        elif access.selector == 1:
            if not meter.settings.profile_range_access:
                raise AccessFailure(DataAccessResult.OTHER_REASON, "no range access")
            rows, columns = self._by_range(times, rows, access)
        elif access.selector == 2:
            rows, columns = self._by_entry(rows, access)
        else:
            raise AccessFailure(
                DataAccessResult.OTHER_REASON, f"access selector {access.selector} unsupported"
            )
        out = bytearray(b"\x01")
        out += encode_length(len(rows))
        header = b"\x02" + encode_length(len(columns))
        if len(columns) == len(self.columns):
            for row in rows:
                out += header
                out += b"".join(row)
        else:
            for row in rows:
                out += header
                out += b"".join(row[c] for c in columns)
        return bytes(out)

    def _by_range(
        self, times: list[int], rows: list[Row], access: SelectiveAccess
    ) -> tuple[list[Row], range | list[int]]:
        try:
            descriptor = RangeDescriptor.from_access(access)
            start_dt, end_dt = descriptor.date_times()
            start = start_dt.to_datetime(default_tz=_UTC).timestamp()
            end = end_dt.to_datetime(default_tz=_UTC).timestamp()
        except DecodeError as exc:
            raise AccessFailure(DataAccessResult.TYPE_UNMATCHED, str(exc)) from None
        restricting = descriptor.restricting
        if (restricting.class_id, restricting.obis, restricting.attribute_index) != (
            self.columns[0].class_id,
            self.columns[0].obis,
            self.columns[0].attribute_index,
        ):
            raise AccessFailure(
                DataAccessResult.TYPE_UNMATCHED, "range access is by the clock column only"
            )
        lo = bisect.bisect_left(times, start)
        hi = bisect.bisect_right(times, end)
        columns: range | list[int] = range(len(self.columns))
        if descriptor.selected_values:
            columns = [self._column(c) for c in descriptor.selected_values]
        return rows[lo:hi], columns

    def _column(self, wanted: CaptureObject) -> int:
        for i, column in enumerate(self.columns):
            if (column.class_id, column.obis, column.attribute_index) == (
                wanted.class_id,
                wanted.obis,
                wanted.attribute_index,
            ):
                return i
        raise AccessFailure(
            DataAccessResult.TYPE_UNMATCHED, f"{wanted.obis} is not a column of the profile"
        )

    def _by_entry(self, rows: list[Row], access: SelectiveAccess) -> tuple[list[Row], range]:
        try:
            d = EntryDescriptor.from_access(access)
        except DecodeError as exc:
            raise AccessFailure(DataAccessResult.TYPE_UNMATCHED, str(exc)) from None
        first = max(d.from_entry, 1)
        last = len(rows) if d.to_entry == 0 else min(d.to_entry, len(rows))
        first_column = max(d.from_selected_value, 1)
        last_column = (
            len(self.columns)
            if d.to_selected_value == 0
            else min(d.to_selected_value, len(self.columns))
        )
        return rows[first - 1 : last], range(first_column - 1, last_column)


class EventLog(LoadProfile):
    """The standard event log: ``{clock time, event code}`` for each event the meter recorded
    (``Meter.events``: the clock set, the supply switched remotely), oldest first."""

    @staticmethod
    def entry_count(meter: Meter) -> int:
        """Events in the buffer."""
        return len(meter.events)

    def rows(self, meter: Meter, now: float) -> tuple[list[int], list[Row]]:
        """Times and encoded columns of the recorded events."""
        times = [t for t, _ in meter.events]
        rows: list[Row] = [
            (b"\x09\x0c" + date_time_bytes(t), struct.pack(">BB", 17, code))
            for t, code in meter.events
        ]
        return times, rows
