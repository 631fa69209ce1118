"""What a worker process writes to the service: readings serialised from cached parts must be the
general serialisation byte for byte, and stats reports of polls in the steady state carry
only the poll counters, yet leave the service with the worker's exact counters."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import readings as readings_module
from bridge.readings import Reading, RegisterError, encode_reading
from bridge.worker import reading_line
from bridge.worker_link import STAT_FIELDS, MeterReporter, RemoteMeter, chunks, encode_stats
from tests.bridge.test_workers import _pollers

names = st.text(min_size=1, max_size=12).filter(lambda s: s.strip() == s and s.isprintable())
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e300, -1e-300, 5e-324, 230.1, 0.1 + 0.2]),
)
scalars = st.one_of(numbers, st.none(), st.booleans(), st.text(max_size=8))
values = st.dictionaries(names, st.one_of(numbers, scalars, st.lists(numbers, max_size=3)))


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    plain = draw(st.booleans())
    vals = draw(st.dictionaries(names, numbers, max_size=8) if plain else values)
    keys = list(vals)
    quality = {} if plain or not keys else {keys[0]: "nan"} if draw(st.booleans()) else {}
    errors = {} if plain or not draw(st.booleans()) else {"e": RegisterError("x.y", "bad ü")}
    attributes = {} if plain or not draw(st.booleans()) else {"serial": "SN-1"}
    return Reading.taken(
        draw(names),
        draw(st.integers(min_value=0, max_value=2**45)),
        vals,
        quality=quality,
        errors=errors,
        attributes=attributes,
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(readings(), min_size=1, max_size=6))
def test_readings_are_serialised_byte_for_byte_as_the_general_path(batch: list[Reading]) -> None:
    """A plain reading of numbers is serialised from parts kept per key set and meter name:
    the same bytes as the general path (the JSON object, keys sorted), made and then from the
    parts kept; a worker's line is that form."""
    for _ in range(2):  # made, then from the cached parts
        for reading in batch:
            general = readings_module._encode_general(reading)
            assert encode_reading(reading) == general
            assert json.loads(general)["values"] == dict(reading.values)
            fresh = Reading.taken(
                reading.meter, reading.ts_ms, dict(reading.values), quality=dict(reading.quality),
                errors=dict(reading.errors), attributes=dict(reading.attributes),
            )  # fmt: skip
            assert reading_line(fresh) == b"R" + general + b"\n"
            # A telemetry entry taken from the stored form is the one made afresh.
            telemetry = json.dumps(
                fresh.telemetry(), separators=(",", ":"), sort_keys=True, ensure_ascii=False
            ).encode()
            entry = b'{"ts":%d,"values":%b}' % (reading.ts_ms, telemetry)
            assert fresh.telemetry_entry() == entry
            if not set(fresh.errors) & set(fresh.values):  # else not a reading from_json takes
                assert Reading.from_json(general).telemetry_entry() == entry


@pytest.mark.parametrize(
    ("meter", "values"),
    [
        ("m%d", {"a%s": 1, "%r": 2.5, "%%": -0.0}),
        ('zähler "7"', {"ä": 10**30, "b\\": 1e-300, "\u2028": 5e-324}),
        ("m", {}),
        ("m", {"v": True}),
        ("m", {"v": 1, "w": "x"}),
    ],
)
def test_the_shortcut_takes_any_key_and_leaves_anything_else_to_the_general_path(
    meter: str, values: dict[str, Any]
) -> None:
    reading = Reading.taken(meter, 7, values, quality={}, errors={}, attributes={})
    assert encode_reading(reading) == readings_module._encode_general(reading)
    assert json.loads(encode_reading(reading)) == {"meter": meter, "ts": 7, "values": values}


def test_what_json_cannot_carry_is_refused_as_the_general_path_does() -> None:
    """A non-finite float never becomes a stored form or a line."""
    ok = Reading.taken("m", 1, {"v": 1.0}, quality={}, errors={}, attributes={})
    assert reading_line(ok) == b'R{"meter":"m","ts":1,"values":{"v":1.0}}\n'
    for bad in (math.inf, -math.inf, math.nan):
        reading = Reading.taken("m", 1, {"v": bad}, quality={}, errors={}, attributes={})
        try:
            reading_line(reading)
        except ValueError:
            continue
        raise AssertionError(f"{bad} was written")


def test_the_parts_kept_are_bounded() -> None:
    for i in range(readings_module._LAYOUTS_MAX + 10):
        reading = Reading.taken(f"m{i}", i, {f"k{i}": i}, quality={}, errors={}, attributes={})
        assert encode_reading(reading) == readings_module._encode_general(reading)
        assert len(readings_module._LAYOUTS) <= readings_module._LAYOUTS_MAX


def _deliver(
    reporter: MeterReporter, pollers: Any, remote: dict[str, RemoteMeter]
) -> dict[str, Any]:
    entries = reporter.changes(pollers, {})
    sent: dict[str, Any] = {}
    for part in chunks(entries, size=3):
        for name, entry in json.loads(encode_stats(part)).items():
            sent[name] = entry
            key = (1, entry["g"])
            if name not in remote or remote[name].key != key:
                remote[name] = RemoteMeter(0, key)
            remote[name].update(entry)
    return sent


def test_steady_polls_report_only_their_counters_and_the_service_keeps_exact_stats() -> None:
    pollers = _pollers(4)
    reporter = MeterReporter()
    remote: dict[str, RemoteMeter] = {}
    first = _deliver(reporter, pollers, remote)
    assert all("f" in e for e in first.values())
    rng = random.Random(7)
    for step in range(60):
        for poller in pollers.values():
            stats = poller.stats
            if rng.random() < 0.7:  # a successful poll
                stats.cycles += 1
                stats.successes += 1
                stats.readings += 1
                stats.last_success_ms = 1_000 * (step + 1)
                stats.latencies.append(0.01 + step / 1000)
            if rng.random() < 0.1:  # anything else
                stats.failures += 1
                stats.state = rng.choice(["ok", "failing", "circuit_open"])
                stats.last_error = f"error {step}"
        sent = _deliver(reporter, pollers, remote)
        for entry in sent.values():
            # A report carries either every field or only the poll counters.
            assert ("f" in entry) != ("c" in entry) or set(entry) <= {"g", "lat"}
        for name, poller in pollers.items():
            mine = {f: getattr(poller.stats, f) for f in STAT_FIELDS}
            theirs = {f: getattr(remote[name].stats, f) for f in STAT_FIELDS}
            assert mine == theirs, (step, name)
            assert list(remote[name].stats.latencies)[-1:] == list(poller.stats.latencies)[-1:]
    # In the steady state proper (polls only), only the counters cross.
    for poller in pollers.values():
        poller.stats.cycles += 1
        poller.stats.successes += 1
        poller.stats.readings += 1
        poller.stats.latencies.append(0.000249)
    sent = _deliver(reporter, pollers, remote)
    assert sent and all(set(e) == {"g", "c", "lat"} for e in sent.values()), sent
    # Exact to the microsecond (249 us, which a round trip through seconds made 248).
    assert all(list(r.stats.latencies)[-1] == 0.000249 for r in remote.values())


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, numbers, max_size=8), names, st.integers(0, 2**45))
def test_the_stored_form_made_from_a_values_json_is_the_general_one(
    values: dict[str, Any], meter: str, ts: int
) -> None:
    """A steady reading's values come serialised from the decoder: the stored form made from
    them is the general serialisation; with a flag, an error or an attribute it is not used."""
    values_json = json.dumps(
        values, separators=(",", ":"), sort_keys=True, ensure_ascii=False
    ).encode()
    reading = Reading.taken(
        meter, ts, dict(values), quality={}, errors={}, attributes={}, values_json=values_json
    )
    assert reading._json is not None  # made at once
    assert reading.to_json() == readings_module._encode_general(reading)
    flagged = Reading.taken(
        meter, ts, dict(values), quality={}, errors={}, attributes={"fw": "1"},
        values_json=b"{}",
    )  # fmt: skip
    assert flagged._json is None
    assert flagged.to_json() == readings_module._encode_general(flagged)


@pytest.mark.parametrize("attributes", [False, True])
def test_a_steady_poll_stores_the_decoders_json(attributes: bool) -> None:
    """MeterPoller.took_steady: the reading's stored form is the general serialisation, made
    from the decoder's values_json (none when configured attributes leave the values)."""
    from bridge.config import PRESETS, MeterConfig, RegisterConfig
    from bridge.poller import MeterPoller
    from codec.apdu import InvokeId
    from codec.client import RegisterReading
    from codec.obis import Obis
    from codec.steady import SteadyDecoder

    extra = (RegisterConfig(key="serial", obis=Obis.parse("0-0:96.1.0"), class_id=1),)
    meter = MeterConfig(
        name='m "1"', host="127.0.0.1", port=1, registers=PRESETS["field-meter"],
        attributes=extra if attributes else (), interval_s=1.0, timeout_s=0.9,
    )  # fmt: skip
    poller = MeterPoller(meter, lambda r: None)  # type: ignore[arg-type, return-value]
    specs = poller.specs
    first = [RegisterReading(spec, value=1) for spec in specs]
    decoder = SteadyDecoder(specs, first)
    results = b"".join(
        b"\x00\x12" + (2300 + i).to_bytes(2, "big") if spec.class_id == 3 else b"\x00\x11\x07"
        for i, spec in enumerate(specs)
    )
    apdu = bytes((0xC4, 3, InvokeId().to_byte(), len(specs))) + results
    steady = decoder.decode(apdu)
    assert steady is not None and steady.values_json is not None
    reading = poller.took_steady(steady, decoder.units, 1_700_000_000_000, 0.01, False, 1.0)
    assert (reading._json is None) == attributes  # made at once unless attributes moved
    assert reading.to_json() == readings_module._encode_general(reading)
    assert ("serial" in reading.attributes) == attributes
