"""What a poller keeps per meter: shared where meters are alike, made only when used.

A fleet of thousands of pollers in one process pays every per-meter object thousands of times;
these tests pin that the state which can be shared is (register lists, request items,
descriptors, the jitter generator) and that the pause's wake-up event exists only while the
poller sleeps, without changing what ``poke`` does (virtual clock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from trio.testing import MockClock

from bridge.config import PRESETS, MeterConfig, RegisterConfig
from bridge.poller import MeterPoller, specs_for
from bridge.readings import Reading
from codec.client import RegisterSpec, _list_items
from codec.obis import Obis


def meter(name: str, **overrides: Any) -> MeterConfig:
    settings: dict[str, Any] = {
        "name": name,
        "host": "127.0.0.1",
        "port": 4059,
        "password": "00000000",
        "registers": PRESETS["field-meter"],
        "interval_s": 1.0,
        "timeout_s": 0.5,
    }
    settings.update(overrides)
    return MeterConfig(**settings)


async def discard(_reading: Reading) -> None:
    pass


def test_meters_reading_the_same_registers_share_one_list() -> None:
    a, b = meter("a"), meter("b")
    other = meter("c", registers=(RegisterConfig(key="x", obis=Obis.parse("1-1:1.8.0")),))
    assert specs_for(a) is specs_for(b)
    assert specs_for(a) is not specs_for(other)
    assert [s.name for s in specs_for(a)] == [r.key for r in PRESETS["field-meter"]]
    assert [s.name for s in specs_for(other)] == ["x"]
    assert MeterPoller(a, discard).specs is MeterPoller(b, discard).specs


def test_equal_specs_share_their_descriptor_and_request_items() -> None:
    obis = Obis.parse("1-1:32.7.0")
    one, two = RegisterSpec(obis, 3, 2, "v"), RegisterSpec(obis, 3, 2, "v")
    assert one.descriptor is two.descriptor
    assert one.descriptor != RegisterSpec(obis, 3, 3, "v").descriptor
    items = _list_items([one.descriptor, RegisterSpec("1-1:1.8.0").descriptor])
    assert items is _list_items([two.descriptor, RegisterSpec("1-1:1.8.0").descriptor])
    assert items == ((one.descriptor, None), (RegisterSpec("1-1:1.8.0").descriptor, None))


def test_pollers_without_a_generator_share_one() -> None:
    assert MeterPoller(meter("a"), discard).rng is MeterPoller(meter("b"), discard).rng


async def test_a_poke_before_the_pause_ends_the_next_pause_at_once(
    autojump_clock: MockClock,
) -> None:
    work = MeterPoller(meter("a"), discard).work
    assert work._wakeup is None
    work.poke()
    t0 = trio.current_time()
    await work.sleep_until(t0 + 10)
    assert trio.current_time() == t0
    # Taken by that pause: the next one sleeps its time.
    await work.sleep_until(t0 + 10)
    assert trio.current_time() == t0 + 10
    assert work._wakeup is None


async def test_a_poke_during_the_pause_wakes_the_poller(autojump_clock: MockClock) -> None:
    work = MeterPoller(meter("a"), discard).work
    t0 = trio.current_time()
    woke: list[float] = []

    async def pause() -> None:
        await work.sleep_until(t0 + 10)
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pause)
        await trio.sleep(3)
        assert work._wakeup is not None  # made for the pause
        work.poke()
    assert woke == [t0 + 3]
    assert work._wakeup is None
    assert not work._poked


def test_clients_and_decoders_of_alike_meters_share_their_plan() -> None:
    from codec.axdr import Data
    from codec.steady import SteadyDecoder, shared_decoder
    from tests.codec.test_steady_decoder import APDU, FIELD_SCALERS, FIELD_SPECS, first_read

    values = [Data.long_unsigned(23000 + i) for i in range(5)]
    one, readings_one = first_read(FIELD_SPECS, FIELD_SCALERS, values)
    two, readings_two = first_read(FIELD_SPECS, FIELD_SCALERS, values)
    assert one._plan is two._plan
    assert one.scalers[(3, FIELD_SPECS[0].obis)] is two.scalers[(3, FIELD_SPECS[0].obis)]
    decoder = shared_decoder(FIELD_SPECS, readings_one)
    assert shared_decoder(FIELD_SPECS, readings_two) is decoder
    # It decodes exactly as a decoder of its own would.
    own = SteadyDecoder(FIELD_SPECS, readings_two)
    assert decoder.decode(APDU) == own.decode(APDU) is not None
    # Another scaler (for the first register): another plan, another decoder.
    other_scalers = (Data.structure([Data.integer(-1), Data.enum(35)]), *FIELD_SCALERS[1:])
    three, readings_three = first_read(FIELD_SPECS, other_scalers, values)
    assert three._plan is not one._plan
    other = shared_decoder(FIELD_SPECS, readings_three)
    assert other is not decoder
    assert other.decode(APDU) != decoder.decode(APDU)
    assert other.decode(APDU) == SteadyDecoder(FIELD_SPECS, readings_three).decode(APDU)


def test_the_console_keeps_a_compact_last_reading() -> None:
    from bridge.web.console import LastReading

    none: dict[str, Any] = {"quality": {}, "errors": {}, "attributes": {}}
    one = Reading.taken(
        "m1", 1_700_000_000_123, {"voltage": 230.1, "energy": 12345, "on": True}, **none
    )
    # As the service gets them from a worker: decoded from JSON, every key a string of its own.
    one = Reading.from_json(one.to_json())
    two = Reading.from_json(
        Reading.taken(
            "m2", 1_700_000_001_000, {"voltage": 229.5, "energy": 7, "on": False}, **none
        ).to_json()
    )
    a, b = LastReading(one), LastReading(two)
    assert a.ts_ms == 1_700_000_000_123 and b.ts_ms == 1_700_000_001_000
    assert a.values == {"voltage": 230.1, "energy": 12345, "on": True}
    assert list(b.values.items()) == list(two.values.items())
    assert b.values == {"voltage": 229.5, "energy": 7, "on": False}
    assert a._keys is b._keys  # one key tuple for the meters reporting the same keys
    other = LastReading(Reading.taken("m3", 1, {"current": 1.5}, **none))
    assert other.values == {"current": 1.5} and other._keys is not a._keys
    # A meter's next reading is kept in the same object, keys shared as before.
    a.take(two)
    assert a.ts_ms == 1_700_000_001_000 and a.values == b.values and a._keys is b._keys
    a.take(Reading.taken("m1", 5, {"current": 2.5}, **none))
    assert (a.ts_ms, a.values) == (5, {"current": 2.5}) and a._keys is other._keys


def test_pollers_with_the_same_units_share_the_table() -> None:
    from codec.client import RegisterReading
    from codec.units import unit_for

    volts = unit_for(35)
    a, b = MeterPoller(meter("a"), discard), MeterPoller(meter("b"), discard)
    assert a.units is not b.units  # each its own (empty) table to begin with
    for poller in (a, b):
        readings = [
            RegisterReading(spec, value=1.5, unit=volts if i == 0 else None)
            for i, spec in enumerate(poller.specs)
        ]
        poller.took(readings, 1_700_000_000_000, 0.01, False)
    first_key = a.specs[0].name
    assert a.units == {s.name: ("V" if s.name == first_key else None) for s in a.specs}
    assert a.units is b.units
    other = MeterPoller(meter("c"), discard)
    other.took([RegisterReading(s, value=1) for s in other.specs], 1, 0.01, False)
    assert other.units is not a.units and other.units[first_key] is None


def test_meters_with_the_same_clock_settings_and_host_share_them(tmp_path: Path) -> None:
    from bridge.config import ClockConfig, parse_config

    meters = "".join(
        f'[[meters]]\nname = "m{i}"\nhost = "10.0.0.{7 if i < 3 else 8}"\nport = {3000 + i}\n'
        for i in range(4)
    )
    text = (
        '[mqtt]\nhost = "broker.local"\n\n[defaults]\nregisters = "field-meter"\n\n'
        f"[defaults.clock]\ncheck_s = 600\n\n{meters}"
        '[[meters]]\nname = "own"\nhost = "10.0.0.9"\nport = 4000\n'
        "clock = { check_s = 60 }\n"
    )
    config = parse_config(text, env={}, base_dir=tmp_path)
    m0, m1, m2, m3, own = config.meters
    assert m0.clock == ClockConfig(check_s=600) and m0.clock is m3.clock
    assert own.clock.check_s == 60 and own.clock is not m0.clock
    assert m0.host is m1.host is m2.host and m0.host == "10.0.0.7" and m3.host == "10.0.0.8"
