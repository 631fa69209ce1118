"""The per-meter latency window: what a bounded deque of floats gave, in 4 bytes a value."""

from __future__ import annotations

import itertools
import random
import sys
from collections import deque

import pytest

from bridge.latency import MAX_US, LatencyWindow
from bridge.poller import PollerStats


def test_keeps_values_in_order_until_full() -> None:
    window = LatencyWindow(maxlen=4)
    window.extend([0.001, 0.002, 0.003])
    assert len(window) == 3
    assert list(window) == [0.001, 0.002, 0.003]
    assert list(reversed(window)) == [0.003, 0.002, 0.001]


def test_wraps_around_dropping_the_oldest() -> None:
    window = LatencyWindow(maxlen=3)
    reference: deque[float] = deque(maxlen=3)
    for i in range(1, 11):
        seconds = i / 1000
        window.append(seconds)
        reference.append(seconds)
        assert list(window) == list(reference), i
        assert list(reversed(window)) == list(reversed(reference)), i
        assert len(window) == len(reference)
    assert list(window) == [0.008, 0.009, 0.01]


def test_matches_a_deque_of_floats_at_the_microsecond() -> None:
    rng = random.Random(12)
    window = LatencyWindow(maxlen=512)
    reference: deque[float] = deque(maxlen=512)
    for _ in range(1500):
        seconds = rng.expovariate(200)
        window.append(seconds)
        reference.append(seconds)
    assert len(window) == 512
    for got, want in zip(window, reference, strict=True):
        assert got == pytest.approx(want, abs=0.5e-6)
    # The newest few, as the reports take them.
    newest = list(itertools.islice(reversed(window), 4))
    assert newest == pytest.approx(list(reference)[-1:-5:-1], abs=0.5e-6)


def test_whole_microseconds_come_back_exactly() -> None:
    window = LatencyWindow([0.02, 0.01, 0.05, 1.5], maxlen=8)
    assert list(window) == [0.02, 0.01, 0.05, 1.5]


def test_out_of_range_durations_are_clamped() -> None:
    window = LatencyWindow([-0.5, 1e9], maxlen=2)
    assert list(window) == [0.0, MAX_US / 1e6]


def test_quantiles_of_the_stats_come_from_the_window() -> None:
    stats = PollerStats()
    assert stats.latencies.maxlen == 512
    # 1000 polls of 1..1000 ms: the window holds the last 512 (489..1000 ms).
    stats.latencies.extend(ms / 1000 for ms in range(1, 1001))
    view = stats.as_dict()
    assert "latencies" not in view
    assert view["latency_p50"] == 0.489 + 0.256
    assert view["latency_p95"] == 0.489 + int(0.95 * 512) / 1000


def test_a_full_window_is_small() -> None:
    window = LatencyWindow(maxlen=512)
    window.extend(x / 1000 for x in range(2000))
    # 4 bytes a value (and the array's spare room), against ~16 KiB for a deque of floats.
    assert sys.getsizeof(window._data) < 512 * 4 * 1.2 + 100
    window.clear()
    assert len(window) == 0
    assert list(window) == []


def test_maxlen_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxlen"):
        LatencyWindow(maxlen=0)


@pytest.mark.parametrize("maxlen", [1, 3, 7])
def test_newest_is_the_reversed_window_cut_short(maxlen: int) -> None:
    """newest(n), taken by slices, is islice(reversed(window), n) at every fill level and
    wrap position, for every n (more than the window holds included)."""
    window = LatencyWindow(maxlen=maxlen)
    for i in range(3 * maxlen + 2):
        for n in range(-1, maxlen + 3):
            expected = list(itertools.islice(reversed(window), max(n, 0)))
            assert window.newest(n) == expected, (i, n)
            assert [us / 1e6 for us in window.newest_us(n)] == expected, (i, n)
        window.append(i / 1000)
