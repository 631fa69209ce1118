"""The electrical quantities of a simulated meter as smooth functions of time.

Voltage, active power and frequency are each a constant plus a few sine waves (a daily load
curve, slower and faster wander). Active energy is the exact integral of active power, in closed
form, so it is monotonic, consistent with the power at every instant, and computable for any past
instant without keeping state: the load profile of the last days is the same energy function
sampled at quarter hours. Current follows from power: ``I = P / (V * pf)``, so ``P = V * I * pf``
holds by construction.

Every parameter comes from a :class:`random.Random` seeded with the simulation seed and the
meter's index, so meters differ from each other and a run is reproducible.
"""

from __future__ import annotations

import math
import random

import attrs

#: Energy is integrated from this instant (2024-01-01T00:00:00Z).
ENERGY_EPOCH = 1_704_067_200.0
_TAU = 2.0 * math.pi


@attrs.frozen
class Wave:
    """``mean + sum(amplitude * sin(2*pi*t/period + phase))`` over seconds since the epoch."""

    mean: float
    terms: tuple[tuple[float, float, float], ...]  # (amplitude, angular frequency, phase)
    #: The last (t, value): a poll reads several registers at one instant, and current and
    #: power both need the same power and voltage. One tuple, replaced whole (thread-safe).
    _last: list[tuple[float, float]] = attrs.field(
        factory=lambda: [(math.nan, 0.0)], eq=False, repr=False
    )

    def at(self, t: float) -> float:
        """The value at ``t`` seconds after :data:`ENERGY_EPOCH`."""
        last = self._last[0]
        if last[0] == t:
            return last[1]
        value = self.mean
        sin = math.sin
        for amplitude, omega, phase in self.terms:
            value += amplitude * sin(omega * t + phase)
        self._last[0] = (t, value)
        return value

    def integral(self, t: float) -> float:
        """The integral of the wave from 0 to ``t`` (value-seconds)."""
        total = self.mean * t
        for amplitude, omega, phase in self.terms:
            total += amplitude / omega * (math.cos(phase) - math.cos(omega * t + phase))
        return total

    @property
    def swing(self) -> float:
        """The largest possible distance from the mean."""
        return sum(abs(a) for a, _, _ in self.terms)


def _wave(rng: random.Random, mean: float, parts: tuple[tuple[float, float], ...]) -> Wave:
    """A wave with the given (amplitude, period in seconds) parts and random phases."""
    return Wave(
        mean,
        tuple(
            (
                amplitude * rng.uniform(0.8, 1.2),
                _TAU / (period * rng.uniform(0.9, 1.1)),
                rng.uniform(0, _TAU),
            )
            for amplitude, period in parts
        ),
    )


@attrs.frozen
class Phase:
    """One phase: its voltage (V) and active power (W) waves and its power factor."""

    voltage: Wave
    power: Wave
    power_factor: float

    def current(self, t: float) -> float:
        """The current (A) at ``t``: power / (voltage * power factor)."""
        return self.power.at(t) / (self.voltage.at(t) * self.power_factor)


@attrs.frozen
class Physics:
    """The quantities of one meter; ``t`` is always unix time in seconds."""

    phases: tuple[Phase, ...]
    frequency: Wave
    energy_offset: float  # Wh at the epoch

    @classmethod
    def generate(cls, rng: random.Random, phase_count: int) -> Physics:
        """Draw the parameters of one meter."""
        phases = []
        for _ in range(phase_count):
            nominal_v = 120.0 + rng.uniform(-1.5, 2.5)
            voltage = _wave(
                rng, nominal_v, ((2.0, 86_400.0), (0.8, 613.0), (0.3, 37.0), (0.12, 5.3))
            )
            p0 = rng.uniform(110.0, 190.0)
            # The swing stays well below the mean, so power is always positive and energy rises.
            power = _wave(
                rng,
                p0,
                (
                    (0.35 * p0, 86_400.0),
                    (0.12 * p0, 1_811.0),
                    (0.06 * p0, 97.0),
                    (0.04 * p0, 7.1),
                    (0.02 * p0, 2.3),
                ),
            )
            phases.append(Phase(voltage, power, rng.uniform(0.92, 0.98)))
        frequency = _wave(rng, 60.0, ((0.015, 613.0), (0.008, 47.0), (0.004, 3.1)))
        return cls(tuple(phases), frequency, rng.uniform(40_000.0, 70_000.0))

    def voltage(self, t: float, phase: int = 0) -> float:
        """Voltage of a phase (V)."""
        return self.phases[phase].voltage.at(t - ENERGY_EPOCH)

    def current(self, t: float, phase: int = 0) -> float:
        """Current of a phase (A)."""
        return self.phases[phase].current(t - ENERGY_EPOCH)

    def power(self, t: float) -> float:
        """Total active power (W), the sum over the phases."""
        s = t - ENERGY_EPOCH
        return sum(p.power.at(s) for p in self.phases)

    def energy(self, t: float) -> float:
        """Active energy (Wh) at ``t``: the offset plus the integral of :meth:`power`."""
        s = t - ENERGY_EPOCH
        return self.energy_offset + sum(p.power.integral(s) for p in self.phases) / 3600.0

    def frequency_at(self, t: float) -> float:
        """Grid frequency (Hz)."""
        return self.frequency.at(t - ENERGY_EPOCH)
