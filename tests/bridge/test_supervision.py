"""Supervision of crashing pollers: the same crash three times puts the meter in the faulted
state, with an alarm carrying the exception, retried only at the slow cadence; the other meters
are not disturbed."""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.poller import MeterPoller
from bridge.supervision import CrashTracker, SupervisionSettings, crash_summary
from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_service import bridge_config, events, running, telemetry
from tests.bridge.waiting import wait_until


def boom(n: int = 1) -> RuntimeError:
    try:
        raise RuntimeError(f"bad value {n}")
    except RuntimeError as exc:
        return exc


def test_three_identical_crashes_fault_the_meter() -> None:
    settings = SupervisionSettings(backoff_s=1, backoff_max_s=8, fault_after=3, faulted_retry_s=60)
    tracker = CrashTracker(settings, random.Random(1))
    delays = [tracker.crashed(boom()) for _ in range(2)]
    assert not tracker.faulted
    assert 0.5 <= delays[0] <= 1.5 and 1 <= delays[1] <= 3  # exponential backoff with jitter
    assert tracker.crashed(boom()) == 60
    assert tracker.faulted and tracker.identical == 3
    assert tracker.last is not None and "RuntimeError: bad value 1" in tracker.last
    assert "test_supervision.py" in tracker.last  # where it happened
    tracker.reset()
    assert not tracker.faulted and tracker.crashes == 3


def test_different_crashes_do_not_fault() -> None:
    tracker = CrashTracker(SupervisionSettings(fault_after=3), random.Random(1))
    for n in range(6):
        tracker.crashed(boom(n % 2))
    assert not tracker.faulted
    assert tracker.identical == 1


def test_crash_summary_is_one_line() -> None:
    summary = crash_summary(ValueError("two\nlines"))
    assert summary == "ValueError: two lines"


async def test_a_poller_that_keeps_crashing_is_faulted_and_the_others_go_on(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    original = MeterPoller.run
    starts: list[float] = []  # Trio times the bad meter's poller was started

    async def run(self: MeterPoller, **kwargs: Any) -> None:
        if self.meter.name == "bad":
            starts.append(trio.current_time())
            await trio.sleep(0.01)
            raise TypeError("unsupported operand type(s) for *: 'list' and 'int'")
        await original(self, **kwargs)

    monkeypatch.setattr(MeterPoller, "run", run)
    with trio.fail_after(40):
        _, ports = await simulator(meters=2)
        sub = collector(["v1/gateway/telemetry"])
        config = bridge_config(
            tmp_path / "data", mosquitto, ports, names=["good", "bad"],
            bridge={"summary_interval_s": 0.5}, defaults={"interval_s": 0.2, "timeout_s": 0.1},
        )  # fmt: skip
        supervision = SupervisionSettings(backoff_s=0.05, backoff_max_s=0.1, faulted_retry_s=1.0)
        async with running(config, supervision=supervision) as service:
            await wait_until(
                lambda: "meter.bad.faulted" in service.snapshot()["alarms"], 10, "bad faulted"
            )
            alarm = service.snapshot()["alarms"].get("meter.bad.faulted", "")
            assert "crashed 3 times in a row" in alarm, service.snapshot()["alarms"]
            assert "TypeError: unsupported operand" in alarm
            assert "retried every 1 s" in alarm
            snapshot = service.snapshot()["meters"]
            assert snapshot["bad"]["state"] == "faulted"
            assert snapshot["bad"]["faulted"] is True
            assert snapshot["good"]["faulted"] is False
            # The slow cadence: one more attempt, and not before the faulted retry period.
            await wait_until(lambda: len(starts) >= 4, 10, "a fourth start of the bad poller")
            assert service.snapshot()["meters"]["bad"]["crashes"] >= 3
            await sub.wait_for(lambda ms: len(telemetry(sub)) >= 10, 10)
    # After the third identical crash the poller is started again only at the faulted
    # cadence (the short backoff would be 0.1 s at most). Trio's sleep never returns early:
    # this lower bound does not depend on the machine's speed.
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[2] >= 1.0, gaps
    assert {meter for meter, _, _ in telemetry(sub)} == {"good"}
    summaries = events(caplog, "summary")
    assert summaries and summaries[-1]["meters_faulted"] == 1
