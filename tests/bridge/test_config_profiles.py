"""Config of profiles, clock health and control: resolved values and path-precise errors."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.config import ClockConfig, ConfigError, ProfileConfig, config_from_dict
from codec.obis import Obis


def document(defaults: dict[str, Any], **meter: Any) -> dict[str, Any]:
    return {
        "mqtt": {"host": "broker"},
        "defaults": {"port": 4061, "registers": "field-meter", **defaults},
        "meters": [{"name": "a", "host": "10.0.0.1", **meter}, {"name": "b", "host": "10.0.0.2"}],
    }


def errors(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc)
    return info.value.errors


def test_profiles_from_defaults_apply_to_every_meter_unless_it_sets_its_own() -> None:
    cfg = config_from_dict(
        document(
            {"profiles": [{"obis": "1-0:99.1.0", "backfill_hours": 24}]},
            profiles=[],
            allow_control=True,
            clock={"check_s": 0},
        )
    )
    a, b = cfg.meters
    assert a.profiles == () and a.allow_control and a.clock == ClockConfig(check_s=0)
    assert b.profiles == (ProfileConfig(obis=Obis.parse("1-0:99.1.0"), backfill_hours=24),)
    assert not b.allow_control and b.clock == ClockConfig()
    assert (b.profiles[0].every_s, b.profiles[0].chunk_hours) == (900.0, 24.0)


def test_profile_and_clock_errors_name_their_path() -> None:
    found = errors(
        document(
            {
                "profiles": [
                    {"obis": "1-0:99.1.0", "every_s": 0, "keys": {"1-1:1.8.0": "a b"}},
                    {"obis": "1-0:99.1.0", "chunk_hours": 1},
                    {"backfill_hours": 1},
                ],
                "clock": {"sync_threshold_s": 100, "sync_max_s": 10, "check_s": -1},
            },
        )
    )
    assert "defaults.profiles[0].every_s: must be a positive number, got 0.0" in found
    assert any(
        e.startswith('defaults.profiles[0].keys."1-1:1.8.0": must be letters') for e in found
    )
    assert "defaults.profiles[1].obis: duplicate of defaults.profiles[0].obis" in found
    assert "defaults.profiles[2].obis: required" in found
    assert any(e.startswith("defaults.clock.sync_threshold_s: 100 is more than") for e in found)
    assert "defaults.clock.check_s: must be >= 0, got -1.0" in found


def test_a_profile_key_must_be_an_obis_code() -> None:
    found = errors(document({}, profiles=[{"obis": "1-0:99.1.0", "keys": {"energy": "e"}}]))
    assert found == ["meters[0].profiles[0].keys.energy: not an OBIS code"]


def test_a_profile_setting_of_the_wrong_type_is_named() -> None:
    found = errors(document({"profiles": [{"obis": "1-0:99.1.0", "chunk_hours": "x"}]}))
    assert found == ["defaults.profiles[0].chunk_hours: expected a number, got 'x'"]


@pytest.mark.parametrize("key", ["backfill_hours", "chunk_hours"])
def test_profile_hours_beyond_ten_years_are_refused(key: str) -> None:
    # A date that far back is out of the calendar: accepted, it crashed every poller in `run`.
    found = errors(document({"profiles": [{"obis": "1-0:99.1.0", key: 1e9}]}))
    assert found == [
        f"defaults.profiles[0].{key}: must be more than 0 and at most 87600 (10 years), "
        "got 1000000000.0"
    ]
    config_from_dict(document({"profiles": [{"obis": "1-0:99.1.0", key: 87_600}]}))
