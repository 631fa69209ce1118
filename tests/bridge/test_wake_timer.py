"""The engine's wake-up timer (bridge.wake_timer): a one-shot timerfd. Functional checks only
(a timer set to fire at once is readable within a generous bound; a disarmed or cleared one is
not), no timing claims."""

from __future__ import annotations

import math
import select
import sys

import pytest

from bridge.wake_timer import WakeTimer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux timerfd")


def readable(timer: WakeTimer, timeout: float) -> bool:
    ready, _, _ = select.select([timer.fileno()], [], [], timeout)
    return bool(ready)


def test_a_timer_fires_once_and_is_cleared_by_taking_it() -> None:
    timer = WakeTimer.open()
    assert timer is not None
    try:
        assert not readable(timer, 0) and not timer.clear()  # disarmed when opened
        timer.set(0)  # at once
        assert readable(timer, 10)
        assert timer.clear()
        assert not readable(timer, 0) and not timer.clear()  # one-shot
        timer.set(-5.0)  # in the past: at once too
        assert readable(timer, 10) and timer.clear()
    finally:
        timer.close()
    assert timer.fileno() == -1


def test_a_timer_set_far_or_to_infinity_does_not_fire_now() -> None:
    timer = WakeTimer.open()
    assert timer is not None
    try:
        timer.set(3600.5)
        assert not readable(timer, 0.05)
        timer.set(0)  # re-armed earlier
        assert readable(timer, 10) and timer.clear()
        timer.set(3600)
        timer.set(math.inf)  # disarmed
        assert not readable(timer, 0.05)
    finally:
        timer.close()
