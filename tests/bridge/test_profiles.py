"""Profile entries from buffers, and the high-water marks file (no I/O beyond a temp dir)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from bridge.config import ProfileConfig
from bridge.profiles import (
    FILENAME,
    HighWaterMarks,
    ProfileLayout,
    ProfileState,
    entries_from_buffer,
    next_due_wall,
)
from codec.axdr import Data
from codec.cosem import CaptureObject, ScalerUnit
from codec.cosem_time import ClockStatus, CosemDateTime
from codec.errors import RemoteProtocolError
from codec.obis import Obis

CLOCK = CaptureObject(8, Obis.parse("0-0:1.0.0"), 2)
ENERGY = CaptureObject(3, Obis.parse("1-1:1.8.0"), 2)
STATUS = CaptureObject(1, Obis.parse("0-0:96.10.1"), 2)
PROFILE = ProfileConfig(obis=Obis.parse("1-0:99.1.0"), keys=(("1-1:1.8.0", "energy"),))
LAYOUT = ProfileLayout(
    columns=(CLOCK, ENERGY, STATUS),
    scalers=(None, ScalerUnit(-1, 30), None),
    clock_index=0,
    period_s=900,
)


def stamp(when: dt.datetime, **kwargs: object) -> Data:
    return Data.octet_string(CosemDateTime.from_datetime(when, **kwargs).to_bytes())  # type: ignore[arg-type]


def row(*cells: Data) -> Data:
    return Data.structure(cells)


def entry(time: Data, energy: int, status: int = 0) -> Data:
    return row(time, Data.double_long_unsigned(energy), Data.unsigned(status))


UNSPECIFIED = Data.octet_string(CosemDateTime(None, None, None, None, None, None, None).to_bytes())
DOUBTFUL = int(ClockStatus.DOUBTFUL)


def test_entries_carry_their_capture_time_with_the_deviation_honoured() -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    buffer = Data.array(
        (
            entry(stamp(dt.datetime(2026, 11, 30, 13, 0, tzinfo=cet)), 12345),
            entry(stamp(dt.datetime(2026, 11, 30, 12, 15, tzinfo=dt.UTC), clock_status=DOUBTFUL),
                  12350, 8),
        )
    )  # fmt: skip
    found = entries_from_buffer(buffer, LAYOUT, PROFILE)
    noon = int(dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC).timestamp() * 1000)
    assert found.entries == (
        (noon, {"energy": 1234.5, "status": 0}),
        (noon + 900_000, {"energy": 1235.0, "status": 8, "clock_status": DOUBTFUL}),
    )  # fmt: skip
    assert found.skipped == 0


def test_compressed_rows_follow_the_previous_one_by_the_capture_period() -> None:
    first = dt.datetime(2026, 11, 30, 0, 0, tzinfo=dt.UTC)
    buffer = Data.array(
        (
            entry(Data.null(), 1),  # no predecessor: skipped
            entry(stamp(first), 2),
            entry(Data.null(), 3),
            entry(UNSPECIFIED, 4),
        )
    )  # fmt: skip
    found = entries_from_buffer(buffer, LAYOUT, PROFILE)
    base = int(first.timestamp() * 1000)
    assert [ts for ts, _ in found.entries] == [base, base + 900_000, base + 1_800_000]
    assert [v["energy"] for _, v in found.entries] == [0.2, 0.3, 0.4]
    assert found.skipped == 1


def test_column_names_default_to_obis_and_attribute() -> None:
    layout = ProfileLayout(
        columns=(CLOCK, ENERGY, CaptureObject(4, Obis.parse("1-1:1.6.0"), 5)),
        scalers=(None, None, None),
        clock_index=0,
        period_s=0,
    )
    buffer = Data.array(
        (
            row(
                stamp(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
                Data.double_long_unsigned(7),
                Data.visible_string("x"),
            ),
        )
    )  # fmt: skip
    found = entries_from_buffer(buffer, layout, ProfileConfig(obis=Obis.parse("0-0:98.1.0")))
    assert found.entries[0][1] == {"1-1:1.8.0": 7, "1-1:1.6.0:5": "x"}


def test_a_buffer_that_is_not_an_array_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError, match="not an array"):
        entries_from_buffer(Data.unsigned(1), LAYOUT, PROFILE)


def test_marks_survive_a_reopen_and_a_corrupt_file_is_set_aside(tmp_path: Path) -> None:
    obis = Obis.parse("1-0:99.1.0")
    marks = HighWaterMarks(tmp_path)
    assert marks.get("m0", obis) is None
    marks.set("m0", obis, 1_000)
    marks.set("m0", obis, 2_000)
    assert HighWaterMarks(tmp_path).get("m0", obis) == 2_000
    assert json.loads((tmp_path / FILENAME).read_text()) == {"m0": {"1-0:99.1.0": 2000}}
    (tmp_path / FILENAME).write_text('{"m0": {"1-0:99.1.0": "soon"}}')
    again = HighWaterMarks(tmp_path)
    assert again.get("m0", obis) is None
    assert (tmp_path / "profiles.corrupt").exists()


def test_the_first_range_starts_at_the_backfill_window_then_at_the_mark() -> None:
    state = ProfileState(ProfileConfig(obis=Obis.parse("1-0:99.1.0"), backfill_hours=24))
    now = 1_800_000_000_000
    assert state.start_ms(now) == now - 86_400_000
    state.mark = now - 3_600_000
    assert state.start_ms(now) == now - 3_600_000
    state.mark = now - 30 * 86_400_000  # older than the window: the window bounds the read
    assert state.start_ms(now) == now - 86_400_000
    assert next_due_wall(1_000.0, 900) == pytest.approx(1_800 + 30)
