"""The fleet benchmark's grid: start delays and missed slots measured from delivered readings."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from hypothesis import example, given
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]


def _fleet() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_bench", REPO / "benchmarks" / "fleet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fleet = _fleet()
BASE = 1_796_000_000_000


def test_phase_near_the_fold_one_late_reading_is_the_only_late_one() -> None:
    # The grid at +482 ms from the first (off-grid) reading; one reading 190 ms late. Folding
    # offsets into [-500, 500) took that reading (-329) as the phase: the others looked 811 ms
    # late.
    ts = [BASE] + [BASE + 482 + 1000 * k + (190 if k == 11 else 0) for k in range(1, 30)]
    grid = fleet.grid_stats({"m": ts}, (BASE + 1000) / 1000, (BASE + 30_000) / 1000, 1.0)
    assert grid["start_delay_p50_ms"] == 0
    assert grid["start_delay_p99_ms"] == 190
    assert grid["missed"] == 0
    assert grid["polls"] == grid["expected"] == 29


def test_a_missing_slot_is_missed() -> None:
    ts = [BASE + 1000 * k + 7 for k in range(20) if k != 5]
    grid = fleet.grid_stats({"m": ts}, BASE / 1000, (BASE + 20_000) / 1000, 1.0)
    assert (grid["polls"], grid["missed"], grid["expected"]) == (19, 1, 20)


@given(
    phase=st.integers(min_value=0, max_value=999),
    late=st.lists(st.integers(min_value=0, max_value=300), min_size=20, max_size=20),
    late_at=st.sets(st.integers(min_value=0, max_value=19), max_size=2),
)
# The last slot's reading taken after the window's end (17 ms late, at the end exactly): that
# slot's poll, not a missed one.
@example(phase=983, late=[0] * 19 + [17], late_at={19})
def test_delays_are_lateness_against_the_grid(
    phase: int, late: list[int], late_at: set[int]
) -> None:
    """Whatever the phase, with at most two late readings (< 0.3 of an interval) in 20 the
    delays measured are exactly the lateness given."""
    ts = [BASE + phase + 1000 * k + (late[k] if k in late_at else 0) for k in range(20)]
    grid = fleet.grid_stats({"m": ts}, BASE / 1000, (BASE + 20_000) / 1000, 1.0)
    assert grid["missed"] == 0
    expected = sorted([late[k] for k in late_at] + [0] * (20 - len(late_at)))
    assert grid["start_delay_p99_ms"] == fleet.quantile(expected, 0.99)
    assert grid["start_delay_p50_ms"] == 0


def test_a_slot_at_the_windows_edge_whose_reading_came_just_before_it_is_not_missed() -> None:
    """As in a judged run: the polls of a meter start 0-19 ms after their due times; the one of
    the slot at the window's very start was on time, 1.4 ms before the window, while every
    reading inside the window was 2 ms or more late. Its slot is not empty."""
    lateness = [0, 12, 6, 2, 14, 7, 11, 3, 9, 15, 4, 10, 8, 5, 13, 16, 2, 6, 9, 11]
    ts = [BASE + 761 + 1000 * k + late for k, late in enumerate(lateness)]
    start = (BASE + 762.4) / 1000  # the first reading (k = 0) is 1.4 ms before the window
    grid = fleet.grid_stats({"m": ts[:-1]}, start, (BASE + 18_762.4) / 1000, 1.0)
    assert grid["missed"] == 0
    assert grid["polls"] == grid["expected"] == 18
    assert grid["start_delay_p99_ms"] <= 16
