"""Quantities: exact decimals with UCUM units, refused when inexact or unknown."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pumpgw.gateway.errors import QuantityError
from pumpgw.gateway.quantity import Quantity, dimension_of, known_units


def test_parse_and_str_round_trip() -> None:
    q = Quantity.parse("5.5 mL/h")
    assert q == Quantity(Decimal("5.5"), "mL/h")
    assert str(q) == "5.5 mL/h"


@pytest.mark.hazard("HAZ-012")
def test_float_is_refused_with_the_value_named() -> None:
    with pytest.raises(QuantityError, match="floats are not exact") as info:
        Quantity(0.1, "mL")  # type: ignore[arg-type]
    assert info.value.value == 0.1
    assert info.value.unit == "mL"


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_values_are_refused(bad: str) -> None:
    with pytest.raises(QuantityError, match="finite"):
        Quantity(Decimal(bad), "mL")


@pytest.mark.parametrize("text", ["", "5", "5 mL/h extra", "five mL", "1e400x mL"])
def test_malformed_text_is_refused(text: str) -> None:
    with pytest.raises(QuantityError):
        Quantity.parse(text)


@pytest.mark.hazard("HAZ-008")
def test_unknown_unit_is_refused() -> None:
    with pytest.raises(QuantityError, match="unknown unit") as info:
        Quantity.of("5", "ml/hr")
    assert info.value.unit == "ml/hr"


def test_bool_is_not_a_number() -> None:
    with pytest.raises(QuantityError):
        Quantity.of(True, "mL")


@pytest.mark.hazard("HAZ-012")
def test_conversion_is_exact() -> None:
    # 0.1 ug/kg/min is 6 ug/kg/h exactly; in binary floats 0.1 * 60 is 6.000000000000001.
    assert Quantity.of("0.1", "ug/kg/min").to("ug/kg/h").value == Decimal("6")
    assert Quantity.of("250", "uL/min").to("mL/h").value == Decimal("15")


@pytest.mark.hazard("HAZ-012")
def test_conversion_that_would_round_is_refused() -> None:
    with pytest.raises(QuantityError, match="no exact decimal value in uL/min"):
        Quantity.of("1", "mL/h").to("uL/min")


@pytest.mark.hazard("HAZ-008")
def test_conversion_across_dimensions_is_refused() -> None:
    with pytest.raises(QuantityError, match="cannot convert"):
        Quantity.of("5", "mg/h").to("mL/h")


def test_every_unit_the_drivers_report_is_known() -> None:
    # The drivers build Quantities from their own unit tables; a code missing from the gateway's
    # UCUM table (or misspelt there, "ml/h") would only fail when a pump first reported it.
    from pumpgw.drivers.modbus_map import load_builtin_map
    from pumpgw.drivers.newera_codec import RATE_UNITS, VOLUME_UNITS

    used = set(RATE_UNITS.values()) | set(VOLUME_UNITS.values())
    used |= set(load_builtin_map("rig-multichannel-v1").enum("concentration_unit").names.values())
    used.discard("")
    assert used <= known_units(), used - known_units()
    assert {dimension_of(u) for u in RATE_UNITS.values()} == {"volume/time"}


units = st.sampled_from(sorted(known_units()))
decimals = st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**9), max_value=10**9, places=6)


@given(decimals, units)
def test_round_trip_through_every_unit_of_the_dimension(value: Decimal, unit: str) -> None:
    q = Quantity(value, unit)
    for other in known_units():
        if dimension_of(other) == q.dimension:
            try:
                there = q.to(other)
            except QuantityError:
                continue  # no exact form in that unit: refused, never rounded
            assert there.to(unit).value == value
