"""The simulated quantities: consistent with each other, reproducible, different per meter."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.simulator.faults import Faults
from bridge.simulator.meter import Meter, MeterSettings
from bridge.simulator.models import MODELS, get_model
from bridge.simulator.objects import encode_number
from bridge.simulator.physics import Physics
from bridge.simulator.profile import CAPTURE_PERIOD
from codec.axdr import Data, DataType, encode_data

T = 1_790_000_000.0
times = st.floats(min_value=1.72e9, max_value=2.0e9)


def meter(index: int = 0, seed: int = 0, model: str = "single-phase") -> Meter:
    return Meter.create(index, seed, MeterSettings(model=model), get_model(model))


@given(times)
def test_power_is_volts_times_amps_times_power_factor(t: float) -> None:
    physics = meter().physics
    phase = physics.phases[0]
    assert physics.power(t) == pytest.approx(
        physics.voltage(t) * physics.current(t) * phase.power_factor, rel=1e-12
    )
    assert 110 < physics.voltage(t) < 130
    assert 0.3 < physics.current(t) < 3.5
    assert 59.95 < physics.frequency_at(t) < 60.05


@given(times)
def test_three_phase_power_is_the_sum_of_the_phases(t: float) -> None:
    physics = meter(model="three-phase").physics
    by_phase = [
        physics.voltage(t, k) * physics.current(t, k) * physics.phases[k].power_factor
        for k in range(3)
    ]
    assert physics.power(t) == pytest.approx(sum(by_phase), rel=1e-12)
    assert len({round(physics.voltage(t, k), 6) for k in range(3)}) == 3


def test_energy_is_the_integral_of_power() -> None:
    physics = meter(3, seed=11).physics
    step = 0.25
    start = T
    total = 0.0
    for k in range(int(3600 / step)):
        a = start + k * step
        total += (physics.power(a) + physics.power(a + step)) / 2 * step
    assert physics.energy(start + 3600) - physics.energy(start) == pytest.approx(
        total / 3600, rel=1e-5
    )


@given(times, st.floats(min_value=0.001, max_value=86_400))
def test_energy_never_decreases(t: float, dt: float) -> None:
    m = meter()
    assert m.energy_wh(t + dt) >= m.energy_wh(t)
    assert m.physics.energy(t + dt) > m.physics.energy(t)


def test_values_are_reproducible_and_differ_between_meters() -> None:
    assert meter(5, seed=3).physics == meter(5, seed=3).physics
    assert meter(5, seed=3).physics != meter(6, seed=3).physics
    assert meter(5, seed=3).physics != meter(5, seed=4).physics
    assert meter(5, seed=3).serial != meter(6, seed=3).serial
    voltages = {round(meter(i).physics.voltage(T), 2) for i in range(20)}
    assert len(voltages) > 15


def test_values_drift_from_second_to_second() -> None:
    m = meter()
    spec = m.model.register("current_l1")
    raws = {spec.encode(m, T + s) for s in range(10)}
    assert len(raws) >= 8


def test_flags_fault_puts_7e_7d_in_the_energy_value() -> None:
    m = meter()
    plain = m.model.register("active_energy").encode(m, T)
    m.faults.apply(Faults(flags=True), 0.0)
    flagged = m.model.register("active_energy").encode(m, T)
    assert flagged[1:3] == b"\x7e\x7d"
    assert b"\x7e\x7d" not in plain[1:3]
    assert b"~}" in m.logical_device_name


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        (DataType.LONG_UNSIGNED, 12345),
        (DataType.DOUBLE_LONG_UNSIGNED, 4_000_000_000),
        (DataType.DOUBLE_LONG, -5),
        (DataType.LONG, -300),
        (DataType.FLOAT32, 1.5),
        (DataType.FLOAT64, 59.98),
    ],
)
def test_fast_number_encoding_matches_the_codec(dtype: DataType, value: float) -> None:
    assert encode_number(dtype, value) == encode_data(Data(dtype, value))


def test_integer_encodings_are_clamped_not_wrapped() -> None:
    assert encode_number(DataType.LONG_UNSIGNED, 70_000) == encode_data(Data.long_unsigned(0xFFFF))
    assert encode_number(DataType.LONG_UNSIGNED, -1) == encode_data(Data.long_unsigned(0))


def test_profile_rows_follow_the_energy_register() -> None:
    m = meter(2)
    times, rows = m.model.profile.rows(m, T)
    assert len(rows) == 960
    assert times[-1] == math.floor(T / CAPTURE_PERIOD) * CAPTURE_PERIOD
    assert all(b - a == CAPTURE_PERIOD for a, b in itertools.pairwise(times))
    for t, row in zip(times[-5:], rows[-5:], strict=True):
        assert int.from_bytes(row[1][1:], "big") == m.energy_wh(t)
    # Cached rows are the same rows; a quarter later one new row appears at the end.
    later_times, later_rows = m.model.profile.rows(m, T + CAPTURE_PERIOD)
    assert later_rows[:-1] == rows[1:]
    assert later_times[-1] == times[-1] + CAPTURE_PERIOD


def test_model_names() -> None:
    assert set(MODELS) == {"single-phase", "three-phase"}
    with pytest.raises(ValueError, match="unknown meter model 'x'"):
        get_model("x")


def test_physics_parameters_come_from_the_rng() -> None:
    a = Physics.generate(random.Random(1), 1)
    b = Physics.generate(random.Random(1), 1)
    c = Physics.generate(random.Random(2), 1)
    assert a == b != c
