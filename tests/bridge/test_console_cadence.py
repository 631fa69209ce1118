"""How often the console's alarm rules look at the fleet."""

from __future__ import annotations

from bridge.web.console import RULES_METERS_PER_S, TICK_S, rules_every_s


def test_rules_run_every_tick_in_a_small_fleet_and_less_often_in_a_large_one() -> None:
    assert rules_every_s(0) == TICK_S
    assert rules_every_s(RULES_METERS_PER_S) == TICK_S
    assert rules_every_s(5 * RULES_METERS_PER_S) == 5.0
    sizes = [10, 1_000, 2_000, 5_000, 20_000]
    cadences = [rules_every_s(n) for n in sizes]
    assert cadences == sorted(cadences)
