"""A reading is serialised once: later calls return the same bytes, and the cached form takes
no part in equality, hashing, repr or evolve."""

from __future__ import annotations

import json

import attrs
import pytest

from bridge.readings import Reading, RegisterError, dumps_compact, encode_reading


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


def test_taken_builds_the_same_reading_as_the_constructor() -> None:
    """The poller's shortcut (values checked already) gives a reading equal to the validated
    constructor's, frozen the same way, with the same JSON."""
    values = {"voltage": 230.1, "state": "on", "list": [1, "a", None], "nan": None}
    quality = {"nan": "nan"}
    errors = {"serial": RegisterError("data-access.object-undefined", "object-undefined")}
    attributes = {"firmware": "1.2"}
    fast = Reading.taken("m1", 1_700_000_000_000, dict(values), quality=dict(quality),
                         errors=dict(errors), attributes=dict(attributes))  # fmt: skip
    slow = Reading("m1", 1_700_000_000_000, values, quality=quality, errors=errors,
                   attributes=attributes)  # fmt: skip
    assert fast == slow
    assert fast.to_json() == slow.to_json() == encode_reading(slow)
    assert Reading.from_json(fast.to_json()) == slow
    for mapping in (fast.values, fast.quality, fast.errors, fast.attributes):
        with pytest.raises(TypeError):
            mapping["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    "reading",
    [
        Reading("m1", 5, {"v": 1.5, "s": 'x"values":{', "l": [1, None]}),
        Reading('m"1', 5, {"values": 2, "z": "}}"}),
        Reading("m1", 5, {"v": None}, quality={"v": "nan"}),
        Reading("m1", 5, {"v": None}),
        Reading("m1", 5, {"v": 1}, errors={"w": RegisterError("c", "m")}),
        Reading("m1", 5, {"v": 1}, attributes={"fw": "1"}),
        Reading("m1", 5, {}),
    ],
)
def test_values_json_from_the_stored_form_equals_the_encoder(reading: Reading) -> None:
    """Telemetry taken from a stored reading's JSON (the publisher's path) is exactly what
    encoding its telemetry gives, for plain readings and every other kind."""
    stored = Reading.from_json(reading.to_json())
    assert stored.values_json() == dumps_compact(reading.telemetry())
    assert json.loads(stored.values_json()) == reading.telemetry()
