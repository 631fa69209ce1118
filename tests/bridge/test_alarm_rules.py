"""The threshold alarms as pure rules over counters and times (no clock, no I/O): each raised
exactly past its threshold and cleared once its cause is gone."""

from __future__ import annotations

import attrs

from bridge.config import AlarmsConfig
from bridge.web.alarm_rules import START_METERS_PER_S, AlarmRules, Facts, MeterFacts

CFG = AlarmsConfig(
    window_s=60.0,
    publish_ratio_min=0.5,
    success_rate_min=0.8,
    no_reading_intervals=5,
    resyncs_per_hour_max=60.0,
    outbox_high_fraction=0.8,
)
WALL = 1_800_000_000.0


def facts(t: float, **kw: object) -> Facts:
    base: dict[str, object] = {"now": t, "wall": WALL + t, "taken": 0, "published": 0}
    base.setdefault("meters", {})
    return Facts(**{**base, **kw})  # type: ignore[arg-type]


def meter(t: float, n: int, ok: int, **kw: object) -> MeterFacts:
    """A meter with 1 s interval that read at time ``t``."""
    return MeterFacts(
        **{"interval_s": 1.0, "cycles": n, "successes": ok, "last_reading_s": WALL + t, **kw}  # type: ignore[arg-type]
    )


def test_publish_ratio() -> None:
    rules = AlarmRules(CFG)
    assert rules.evaluate(facts(0, taken=0, published=0)) == {}
    # 30 taken, 15 published: exactly 50% is not below the threshold.
    assert "publisher.rate_low" not in rules.evaluate(facts(30, taken=30, published=15))
    active = rules.evaluate(facts(31, taken=30, published=14))
    assert "only 14 of 30 readings" in active["publisher.rate_low"]
    # The message stays the one it was raised with.
    again = rules.evaluate(facts(32, taken=32, published=14))
    assert again["publisher.rate_low"] == active["publisher.rate_low"]
    # Too few readings to judge: no alarm.
    assert AlarmRules(CFG).evaluate(facts(0)) == {}
    rules2 = AlarmRules(CFG)
    rules2.evaluate(facts(0))
    assert rules2.evaluate(facts(40, taken=4, published=0)) == {}
    # Nothing acknowledged yet in the first seconds after a start: not judged before half a
    # window has passed.
    rules3 = AlarmRules(CFG)
    rules3.evaluate(facts(0))
    assert rules3.evaluate(facts(2, taken=50, published=0)) == {}
    assert "publisher.rate_low" in rules3.evaluate(facts(30, taken=500, published=0))
    # The backlog goes out: cleared. Later, the window forgets the bad period.
    assert "publisher.rate_low" not in rules.evaluate(facts(40, taken=40, published=40))


def test_success_rate_no_reading_and_refused() -> None:
    rules = AlarmRules(CFG)
    rules.evaluate(facts(0, meters={"a": meter(0, 0, 0)}))
    # 10 cycles, 8 ok: 80% is fine; 7 of 10 is not.
    assert rules.evaluate(facts(10, meters={"a": meter(10, 10, 8)})) == {}
    low = rules.evaluate(facts(11, meters={"a": meter(11, 10, 7)}))
    assert "7 of 10 cycles" in low["meter.a.success_low"]
    # Silent for 5 intervals is the limit; past it, the alarm.
    assert "meter.a.no_reading" not in rules.evaluate(facts(16, meters={"a": meter(11, 10, 7)}))
    silent = rules.evaluate(facts(16.5, meters={"a": meter(11, 10, 7)}))
    assert "no reading for 6 s" in silent["meter.a.no_reading"]
    refused = rules.evaluate(
        facts(
            17,
            meters={
                "a": meter(17, 11, 8, state="failing", last_error="refused [association.rejected]")
            },
        )
    )
    assert "refuses the association" in refused["meter.a.refused"]
    assert "meter.a.no_reading" not in refused  # it read at 17
    # The poller's next attempt passes through connecting and associating: no flapping.
    for state in ("connecting", "associating"):
        retrying = rules.evaluate(
            facts(
                17.5,
                meters={
                    "a": meter(17, 11, 8, state=state, last_error="refused [association.rejected]")
                },
            )
        )
        assert "meter.a.refused" in retrying, state
    # Associated again: the refusal is over even before the cycle ends.
    associated = rules.evaluate(
        facts(
            17.8,
            meters={
                "a": meter(
                    17, 11, 8, state="associated", last_error="refused [association.rejected]"
                )
            },
        )
    )
    assert "meter.a.refused" not in associated
    # An I/O failure is not a refusal.
    other = rules.evaluate(
        facts(18, meters={"a": meter(18, 12, 9, state="failing", last_error="timed out")})
    )
    assert "meter.a.refused" not in other
    # Removed meter: its alarms go.
    assert rules.evaluate(facts(19, meters={})) == {}


def test_a_meter_that_never_read() -> None:
    """Never read since the start: after its intervals without a reading, but in a large fleet
    not before the fleet had time to open its connections (a second per 100 meters)."""
    rules = AlarmRules(CFG)
    never = MeterFacts(interval_s=2.0)
    assert rules.evaluate(facts(100, meters={"b": never})) == {}
    assert rules.evaluate(facts(110, meters={"b": never})) == {}
    active = rules.evaluate(facts(110.5, meters={"b": never}))
    assert "since it started" in active["meter.b.no_reading"]
    assert "threshold 5 intervals of 2 s" in active["meter.b.no_reading"]
    # 3,000 meters never read: 30 s.
    rules = AlarmRules(CFG)
    fleet = {f"m{i}": never for i in range(30 * START_METERS_PER_S)}
    assert rules.evaluate(facts(100, meters=fleet)) == {}
    assert rules.evaluate(facts(130, meters=fleet)) == {}
    active = rules.evaluate(facts(130.5, meters=fleet))
    assert len(active) == len(fleet)
    assert "threshold 30 s after the start" in active["meter.m0.no_reading"]


def test_resyncs_per_hour_over_the_window() -> None:
    rules = AlarmRules(CFG)

    def at(t: float, resyncs: int) -> dict[str, str]:
        return rules.evaluate(facts(t, meters={"a": attrs.evolve(meter(t, t, t), resyncs=resyncs)}))

    assert at(0, 0) == {}
    # One resync in 20 s would be 180/h, but a rate is judged only over half a window or more.
    assert at(20, 1) == {}
    assert "meter.a.resyncs" not in at(29, 1)
    assert "120/h" in at(30, 1)["meter.a.resyncs"]
    # No new resync (evaluated every second, as the console does): the rate over the window
    # falls to the threshold (1 in 60 s = 60/h) at 60 s, and the alarm clears.
    cleared_at = next(t for t in range(31, 200) if "meter.a.resyncs" not in at(t, 1))
    assert cleared_at == 60
    # And once the window no longer holds the resync, nothing is left of it.
    assert at(85, 1) == {}


def test_outbox_fill_level() -> None:
    rules = AlarmRules(CFG)
    limits = {"outbox_max_rows": 1000, "outbox_max_bytes": 10_000}
    assert rules.evaluate(facts(0, outbox_rows=800, outbox_bytes=10, **limits)) == {}
    by_rows = rules.evaluate(facts(1, outbox_rows=801, outbox_bytes=10, **limits))
    assert "80% full" in by_rows["outbox.high"]
    by_bytes = rules.evaluate(facts(2, outbox_rows=1, outbox_bytes=9000, **limits))
    assert "outbox.high" in by_bytes
    assert rules.evaluate(facts(3, outbox_rows=0, outbox_bytes=0, **limits)) == {}


def test_meters_that_appear_after_the_first_look_are_judged_too() -> None:
    # The console looks before the pollers start, and meters are added later through the API.
    rules = AlarmRules(CFG)
    assert rules.evaluate(facts(0, meters={})) == {}
    assert rules.evaluate(facts(5, meters={"late": meter(5, 2, 0)})) == {}
    active = rules.evaluate(facts(10, meters={"late": meter(10, 3, 0)}))
    assert "0 of 3 cycles" in active["meter.late.success_low"]
    # Resyncs are judged over the time since it appeared (at least half a window).
    assert "meter.late.resyncs" not in rules.evaluate(
        facts(20, meters={"late": attrs.evolve(meter(20, 20, 20), resyncs=5)})
    )
    late = rules.evaluate(facts(35, meters={"late": attrs.evolve(meter(35, 35, 35), resyncs=5)}))
    assert "meter.late.resyncs" in late


def test_each_meter_is_judged_against_its_own_counters_when_the_meters_change() -> None:
    # The samples keep every meter's counters by position: a meter removed, one added or the
    # order changed must never make a meter judged on another's counters.
    rules = AlarmRules(CFG)
    start = {"a": meter(0, 100, 100), "b": meter(0, 0, 0), "c": meter(0, 50, 50)}
    assert rules.evaluate(facts(0, meters=start)) == {}
    # 3 s later (the next sample: every window_s / 20 s) "a" is gone and the others swapped.
    later = {"c": meter(3, 50, 50), "b": meter(3, 0, 0), "d": meter(3, 0, 0)}
    assert rules.evaluate(facts(3, meters=later)) == {}
    # Against the first sample: "b" had 10 cycles and none succeeded, "c" 10 and all did;
    # "d", unknown then, counts from zero.
    now = {"c": meter(6, 60, 60), "b": meter(6, 10, 0), "d": meter(6, 4, 4)}
    active = rules.evaluate(facts(6, meters=now))
    assert set(active) == {"meter.b.success_low"}
    assert "0 of 10 cycles" in active["meter.b.success_low"]
    # Five minutes on, with the same meters throughout: still judged by their own counters.
    for t in range(9, 300, 3):
        same = {
            "c": meter(t, 60 + t, 60 + t),
            "b": meter(t, 10 + t, 0),
            "d": meter(t, 4 + t, 4 + t // 2),
        }
        active = rules.evaluate(facts(t, meters=same))
    assert set(active) == {"meter.b.success_low", "meter.d.success_low"}
