"""A reading is serialised once: later calls return the same bytes, and the cached form takes
no part in equality, hashing, repr or evolve."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

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
        Reading("m1", 5, {"v": None, "v_quality": 1, "w": 2}, quality={"v": "nan"}),
        Reading("m1", 5, {"v": 1, "w_error": 3}, errors={"w": RegisterError("c", "m")}),
        Reading("m1", 5, {}),
    ],
)
def test_values_json_from_the_stored_form_equals_the_encoder(reading: Reading) -> None:
    """Telemetry taken from a stored reading's JSON (the publisher's path) is exactly what
    encoding its telemetry gives, for plain readings and every other kind."""
    stored = Reading.from_json(reading.to_json())
    assert stored.values_json() == dumps_compact(reading.telemetry())
    assert json.loads(stored.values_json()) == reading.telemetry()
    assert stored.datapoints() == reading.datapoints() == len(reading.telemetry())
    entry = b'{"ts":%d,"values":%b}' % (reading.ts_ms, dumps_compact(reading.telemetry()).encode())
    assert stored.telemetry_entry() == reading.telemetry_entry() == entry


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=6,
)


def _decoded_by_constructor(obj: object) -> Reading | str:
    """What the validated constructor makes of a decoded object (the slow path), or why not."""
    try:
        if not isinstance(obj, dict) or not {"meter", "ts", "values"} <= obj.keys():
            return "shape"
        if obj.keys() - {"meter", "ts", "values", "quality", "errors", "attributes"}:
            return "shape"
        if not isinstance(obj["values"], dict):
            return "shape"
        return Reading(
            meter=obj["meter"],
            ts_ms=obj["ts"],
            values=obj["values"],
            quality=obj.get("quality", {}),
            errors=obj.get("errors", {}),
            attributes=obj.get("attributes", {}),
        )
    except (ValueError, TypeError) as exc:
        return type(exc).__name__


@given(
    meter=st.sampled_from(["m1", "m1", "m1", "", 7, None]),
    ts=st.sampled_from([1_700_000_000_000, 1_700_000_000_000, 0, -1, 1.5, True, None]),
    values=st.one_of(
        st.dictionaries(st.text(max_size=3), _json_values, max_size=4),
        st.dictionaries(st.text(max_size=3), _json_scalars, max_size=4),
        _json_values,
    ),
    extra=st.sampled_from([None, None, None, "quality", "bogus"]),
)
@example(meter="m1", ts=5, values={"a": float("nan")}, extra=None)
@example(meter="m1", ts=5, values={"a": 1.5, "b": float("-inf")}, extra=None)
@example(meter="m1", ts=5, values={"": 1}, extra=None)
@example(meter="m1", ts=5, values={"a": [1, 2]}, extra=None)
@example(meter="m1", ts=True, values={"a": 1}, extra=None)
@example(meter="", ts=5, values={"a": 1}, extra=None)
@settings(max_examples=300)
def test_decoding_a_plain_form_checks_as_the_constructor_does(
    meter: object, ts: object, values: object, extra: str | None
) -> None:
    """The plain form's shortcut (meter, ts and scalar values) accepts exactly what the
    constructor accepts and gives an equal reading; anything else takes the full path."""
    obj: dict[str, object] = {"meter": meter, "ts": ts, "values": values}
    if extra is not None:
        obj[extra] = {}
    data = json.dumps(obj, allow_nan=True).encode()
    expected = _decoded_by_constructor(json.loads(data))
    try:
        got: Reading | str = Reading.from_json(data)
    except ValueError:
        got = "rejected"
    if isinstance(expected, Reading):
        assert isinstance(got, Reading)
        assert got == expected
        assert encode_reading(got) == encode_reading(expected)
    else:
        assert got == "rejected"


def _decoded_by_json_loads(data: bytes) -> Reading | str:
    """The reference for any bytes: ``json.loads`` (which also takes whitespace around the
    object, a BOM, UTF-16 and UTF-32), then the constructor."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "rejected"
    got = _decoded_by_constructor(obj)
    return got if isinstance(got, Reading) else "rejected"


@given(
    meter=st.sampled_from(["m1", "zähler-7", "m\u2028", 'm"\\', "", "m1"]),
    values=st.dictionaries(st.text(max_size=3), _json_scalars, max_size=4),
    framing=st.sampled_from(
        [
            "plain",
            "plain",
            "space-before",
            "newline-after",
            "bom",
            "utf-16",
            "utf-32",
            "cut",
            "extra-byte",
            "two-objects",
            "latin-1",
            "nested",
        ]
    ),
)
@example(meter="zähler-7", values={"ä": 1.5}, framing="plain")
@example(meter="m1", values={"a": 1}, framing="two-objects")
@example(meter="m1", values={"a": 1}, framing="nested")
@settings(max_examples=300)
def test_decoding_stored_bytes_agrees_with_json_loads(
    meter: str, values: dict[str, object], framing: str
) -> None:
    """The stored form is scanned at once when it is one UTF-8 object and nothing else; for
    every other framing of the same bytes, decode_reading still agrees with json.loads and the
    constructor (an equal reading, or a ValueError - never another exception)."""
    obj = {"meter": meter, "ts": 5, "values": values}
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    data = {
        "plain": lambda: text.encode(),
        "space-before": lambda: b" " + text.encode(),
        "newline-after": lambda: text.encode() + b"\n",
        "bom": lambda: b"\xef\xbb\xbf" + text.encode(),
        "utf-16": lambda: text.encode("utf-16"),
        "utf-32": lambda: text.encode("utf-32"),
        "cut": lambda: text.encode()[:-1],
        "extra-byte": lambda: text.encode() + b"}",
        "two-objects": lambda: text.encode() + text.encode(),
        "latin-1": lambda: text.encode("latin-1", "replace"),
        "nested": lambda: text[:-1].encode() + b',"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    }[framing]()
    expected = _decoded_by_json_loads(data)
    try:
        got: Reading | str = Reading.from_json(data)
    except ValueError:
        got = "rejected"
    assert got == expected
    if isinstance(got, Reading) and framing == "plain":
        assert got.to_json() == encode_reading(got) == data


@pytest.mark.parametrize("meter", ["m1", 'm"1', "zähler 7", "a\\b"])
@pytest.mark.parametrize(
    "values", [{"v": 1.5, "w": -2}, {}, {"e": 10**20, "p": 0.001}, {"v": None, "w": 1}]
)
def test_a_reading_taken_with_its_values_json_gives_the_general_telemetry(
    meter: str, values: dict[str, object]
) -> None:
    """The steady path's reading (stored form made from the decoder's values JSON, where its
    telemetry starts known at once) gives the telemetry the general path makes, and so does
    the same reading read back from its stored form."""
    values_json = dumps_compact(values).encode()
    fast = Reading.taken(meter, 7, dict(values), quality={}, errors={}, attributes={},
                         values_json=values_json)  # fmt: skip
    general = Reading(meter, 7, values)
    assert fast.to_json() == encode_reading(general)
    for reading in (fast, Reading.from_json(fast.to_json())):
        assert reading.values_json_bytes() == dumps_compact(general.telemetry()).encode()
        assert (
            reading.telemetry_entry()
            == general.telemetry_entry()
            == b'{"ts":7,"values":%b}' % (dumps_compact(general.telemetry()).encode())
        )
