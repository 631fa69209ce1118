"""The physical units of COSEM scaler-unit values (IEC 62056-6-2 / DLMS Blue Book, "unit" enum).

A register's scaler-unit attribute carries a unit code; :func:`unit_for` turns it into a
:class:`Unit` with the usual symbol (``27`` -> ``W``). Codes not in the table give a placeholder
unit (``unit(200)``) rather than an error, so an unfamiliar meter still reads.

Codes 1..72 are the Blue Book table; 128..174 are the imperial/US customary units added in later
editions; 253 is reserved, 254 "other unit" and 255 "count" (no unit).
"""

from __future__ import annotations

import attrs

__all__ = ["UNITS", "Unit", "unit_for"]


@attrs.frozen
class Unit:
    """A unit code with its symbol (``"Wh"``) and the quantity it measures (``"active energy"``)."""

    code: int
    symbol: str
    name: str

    def __str__(self) -> str:
        return self.symbol


_TABLE: tuple[tuple[int, str, str], ...] = (
    (1, "a", "time (year)"),
    (2, "mo", "time (month)"),
    (3, "wk", "time (week)"),
    (4, "d", "time (day)"),
    (5, "h", "time (hour)"),
    (6, "min", "time (minute)"),
    (7, "s", "time (second)"),
    (8, "°", "phase angle (degree)"),
    (9, "°C", "temperature (degree Celsius)"),
    (10, "currency", "local currency"),
    (11, "m", "length (metre)"),
    (12, "m/s", "speed (metre per second)"),
    (13, "m³", "volume (cubic metre)"),
    (14, "m³", "corrected volume (cubic metre)"),
    (15, "m³/h", "volume flux (cubic metre per hour)"),
    (16, "m³/h", "corrected volume flux (cubic metre per hour)"),
    (17, "m³/d", "volume flux (cubic metre per day)"),
    (18, "m³/d", "corrected volume flux (cubic metre per day)"),
    (19, "l", "volume (litre)"),
    (20, "kg", "mass (kilogram)"),
    (21, "N", "force (newton)"),
    (22, "Nm", "energy (newton metre)"),
    (23, "Pa", "pressure (pascal)"),
    (24, "bar", "pressure (bar)"),
    (25, "J", "energy (joule)"),
    (26, "J/h", "thermal power (joule per hour)"),
    (27, "W", "active power (watt)"),
    (28, "VA", "apparent power (volt-ampere)"),
    (29, "var", "reactive power (var)"),
    (30, "Wh", "active energy (watt-hour)"),
    (31, "VAh", "apparent energy (volt-ampere-hour)"),
    (32, "varh", "reactive energy (var-hour)"),
    (33, "A", "current (ampere)"),
    (34, "C", "electrical charge (coulomb)"),
    (35, "V", "voltage (volt)"),
    (36, "V/m", "electric field strength (volt per metre)"),
    (37, "F", "capacitance (farad)"),
    (38, "Ω", "resistance (ohm)"),
    (39, "Ωm²/m", "resistivity (ohm metre)"),
    (40, "Wb", "magnetic flux (weber)"),
    (41, "T", "magnetic flux density (tesla)"),
    (42, "A/m", "magnetic field strength (ampere per metre)"),
    (43, "H", "inductance (henry)"),
    (44, "Hz", "frequency (hertz)"),
    (45, "1/(Wh)", "active energy meter constant or pulse value"),
    (46, "1/(varh)", "reactive energy meter constant or pulse value"),
    (47, "1/(VAh)", "apparent energy meter constant or pulse value"),
    (48, "V²h", "volt-squared hour"),
    (49, "A²h", "ampere-squared hour"),
    (50, "kg/s", "mass flux (kilogram per second)"),
    (51, "S", "conductance (siemens)"),
    (52, "K", "temperature (kelvin)"),
    (53, "1/(V²h)", "volt-squared hour meter constant or pulse value"),
    (54, "1/(A²h)", "ampere-squared hour meter constant or pulse value"),
    (55, "1/m³", "volume meter constant or pulse value"),
    (56, "%", "percentage"),
    (57, "Ah", "ampere-hour"),
    (60, "Wh/m³", "energy per volume"),
    (61, "J/m³", "calorific value, Wobbe index"),
    (62, "Mol %", "molar fraction of gas composition (mole percent)"),
    (63, "g/m³", "mass density, quantity of material"),
    (64, "Pa s", "dynamic viscosity (pascal second)"),
    (65, "J/kg", "specific energy (joule per kilogram)"),
    (66, "g/cm²", "pressure (gram per square centimetre)"),
    (67, "atm", "pressure (atmosphere)"),
    (70, "dBm", "signal strength (dB milliwatt)"),
    (71, "dBµV", "signal strength (dB microvolt)"),
    (72, "dB", "logarithmic ratio (decibel)"),
    (128, "in", "length (inch)"),
    (129, "ft", "length (foot)"),
    (130, "lb", "mass (pound)"),
    (131, "°F", "temperature (degree Fahrenheit)"),
    (132, "°R", "temperature (degree Rankine)"),
    (133, "sq in", "area (square inch)"),
    (134, "sq ft", "area (square foot)"),
    (135, "ac", "area (acre)"),
    (136, "cu in", "volume (cubic inch)"),
    (137, "cu ft", "volume (cubic foot)"),
    (138, "ac-ft", "volume (acre-foot)"),
    (139, "gal (imp)", "volume (imperial gallon)"),
    (140, "gal (US)", "volume (US gallon)"),
    (141, "lbf", "force (pound-force)"),
    (142, "psi", "pressure (pound-force per square inch)"),
    (143, "lb/cu ft", "density (pound per cubic foot)"),
    (144, "lb/(ft s)", "dynamic viscosity (pound per foot second)"),
    (145, "sq ft/s", "kinematic viscosity (square foot per second)"),
    (146, "BTU", "energy (British thermal unit)"),
    (147, "thm (EU)", "energy (therm, EU)"),
    (148, "thm (US)", "energy (therm, US)"),
    (149, "BTU/lb", "specific energy (BTU per pound)"),
    (150, "BTU/cu ft", "calorific value (BTU per cubic foot)"),
    (151, "cu ft", "volume (cubic feet)"),
    (152, "ft/s", "speed (foot per second)"),
    (153, "cu ft/s", "volume flux (cubic foot per second)"),
    (154, "cu ft/min", "volume flux (cubic foot per minute)"),
    (155, "cu ft/h", "volume flux (cubic foot per hour)"),
    (156, "cu ft/d", "volume flux (cubic foot per day)"),
    (157, "ac-ft/s", "volume flux (acre-foot per second)"),
    (158, "ac-ft/min", "volume flux (acre-foot per minute)"),
    (159, "ac-ft/h", "volume flux (acre-foot per hour)"),
    (160, "ac-ft/d", "volume flux (acre-foot per day)"),
    (161, "imp gal", "volume (imperial gallon)"),
    (162, "imp gal/s", "volume flux (imperial gallon per second)"),
    (163, "imp gal/min", "volume flux (imperial gallon per minute)"),
    (164, "imp gal/h", "volume flux (imperial gallon per hour)"),
    (165, "imp gal/d", "volume flux (imperial gallon per day)"),
    (166, "US gal", "volume (US gallon)"),
    (167, "US gal/s", "volume flux (US gallon per second)"),
    (168, "US gal/min", "volume flux (US gallon per minute)"),
    (169, "US gal/h", "volume flux (US gallon per hour)"),
    (170, "US gal/d", "volume flux (US gallon per day)"),
    (171, "BTU/s", "power (BTU per second)"),
    (172, "BTU/min", "power (BTU per minute)"),
    (173, "BTU/h", "power (BTU per hour)"),
    (174, "BTU/d", "power (BTU per day)"),
    (253, "reserved", "reserved"),
    (254, "other", "other unit"),
    (255, "count", "no unit, unitless, count"),
)

#: Every known unit by code.
UNITS: dict[int, Unit] = {code: Unit(code, symbol, name) for code, symbol, name in _TABLE}


def unit_for(code: int) -> Unit:
    """The unit of ``code``; unknown codes give ``Unit(code, "unit(<code>)", "unknown unit")``."""
    unit = UNITS.get(code)
    if unit is None:
        return Unit(code, f"unit({code})", "unknown unit")
    return unit
