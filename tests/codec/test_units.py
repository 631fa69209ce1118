"""The unit table, checked against the table of an independent implementation."""

from __future__ import annotations

import pytest

from codec.units import UNITS, Unit, unit_for


@pytest.mark.parametrize(
    ("code", "symbol"),
    [
        (27, "W"),
        (28, "VA"),
        (29, "var"),
        (30, "Wh"),
        (31, "VAh"),
        (32, "varh"),
        (33, "A"),
        (35, "V"),
        (44, "Hz"),
        (9, "°C"),
        (7, "s"),
        (56, "%"),
        (255, "count"),
    ],
)
def test_electrical_units(code: int, symbol: str) -> None:
    assert unit_for(code).symbol == symbol
    assert str(unit_for(code)) == symbol
    assert unit_for(code).code == code


def test_names_describe_the_quantity() -> None:
    assert unit_for(27).name == "active power (watt)"
    assert unit_for(30).name == "active energy (watt-hour)"
    assert unit_for(35).name == "voltage (volt)"
    assert unit_for(44).name == "frequency (hertz)"


@pytest.mark.parametrize("code", [0, 58, 59, 68, 100, 200, 252, -1, 1000])
def test_unknown_codes_never_raise(code: int) -> None:
    unit = unit_for(code)
    assert unit == Unit(code, f"unit({code})", "unknown unit")


def test_table_is_consistent() -> None:
    assert all(code == unit.code for code, unit in UNITS.items())
    assert set(range(1, 58)) <= set(UNITS)
    assert {253, 254, 255} <= set(UNITS)
    assert all(unit.symbol and unit.name for unit in UNITS.values())


@pytest.mark.interop
def test_same_codes_as_gurux() -> None:
    gurux_unit = pytest.importorskip("gurux_dlms.enums").Unit
    theirs = {int(member) for member in gurux_unit} - {0}  # 0 is gurux's "none", not a unit
    assert set(UNITS) - {253} == theirs  # 253 is reserved in the Blue Book; gurux omits it


@pytest.mark.interop
@pytest.mark.parametrize(
    "code", [8, 9, 11, 20, 21, 27, 28, 29, 30, 31, 32, 33, 35, 40, 44, 51, 52, 56, 57]
)
def test_quantities_agree_with_gurux_names(code: int) -> None:
    gurux_unit = pytest.importorskip("gurux_dlms.enums").Unit
    words = set(gurux_unit(code).name.lower().split("_")) - {"kg"}
    ours = unit_for(code).name.lower().replace("(", " ").replace(")", " ")
    assert any(word in ours for word in words), (code, gurux_unit(code).name, ours)
