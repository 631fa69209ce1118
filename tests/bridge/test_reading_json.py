"""A reading is serialised once: later calls return the same bytes, and the cached form takes
no part in equality, hashing, repr or evolve."""

from __future__ import annotations

import attrs

from bridge.readings import Reading, RegisterError, encode_reading


def test_to_json_is_made_once_and_equals_the_encoder() -> None:
    reading = Reading(
        "m1",
        1_700_000_000_000,
        {"voltage": 230.1, "energy": 12},
        errors={"power": RegisterError("data-access.object-undefined", "object-undefined")},
    )
    first = reading.to_json()
    assert first == encode_reading(reading)
    assert reading.to_json() is first
    fresh = Reading("m1", 1_700_000_000_000, {"voltage": 230.1, "energy": 12}, errors={
        "power": RegisterError("data-access.object-undefined", "object-undefined")
    })  # fmt: skip
    assert fresh == reading and hash(fresh) == hash(reading)
    assert repr(fresh) == repr(reading)
    assert Reading.from_json(first) == reading
    later = attrs.evolve(reading, ts_ms=1_700_000_001_000)
    assert later.to_json() == encode_reading(later) != first
