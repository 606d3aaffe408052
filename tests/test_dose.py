"""Exact dose conversions: golden values worked by hand, missing factors, and round trips."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pumpgw.gateway.dose import Concentration, MissingFactor, convert, round_rate
from pumpgw.gateway.errors import DersError, QuantityError
from pumpgw.gateway.quantity import Quantity, known_units, unit_parts


def q(text: str) -> Quantity:
    return Quantity.parse(text)


def conc(amount: str, volume: str) -> Concentration:
    return Concentration(q(amount), q(volume))


# Worked by hand: rate (mL/h) = dose x weight x 60 (per min) / concentration.
GOLDEN = [
    # dopamine 400 mg in 250 mL = 1600 ug/mL; 5 ug/kg/min x 70 kg x 60 / 1600 = 13.125 mL/h
    ("5 ug/kg/min", "mL/h", ("400 mg", "250 mL"), "70 kg", "13.125"),
    # noradrenaline 4 mg in 50 mL = 80 ug/mL; 0.1 x 73.4 x 60 / 80 = 5.505
    ("0.1 ug/kg/min", "mL/h", ("4 mg", "50 mL"), "73.4 kg", "5.505"),
    # fentanyl 2500 ug in 50 mL: 100 ug/h / 50 ug/mL = 2 mL/h
    ("100 ug/h", "mL/h", ("2500 ug", "50 mL"), None, "2"),
    # heparin 25000 units in 500 mL = 50 units/mL: 18 units/kg/h x 80 kg / 50 = 28.8 mL/h
    ("18 [iU]/kg/h", "mL/h", ("25000 [iU]", "500 mL"), "80 kg", "28.8"),
    # oxytocin 30 units in 500 mL = 60 milliunits/mL: 2 mU/min x 60 / 60 = 2 mL/h
    ("2 m[iU]/min", "mL/h", ("30 [iU]", "500 mL"), None, "2"),
    # potassium 40 mmol in 1000 mL: 10 mmol/h = 250 mL/h
    ("10 mmol/h", "mL/h", ("40 mmol", "1000 mL"), None, "250"),
    # magnesium 20 g in 500 mL: a 4 g loading dose is 100 mL
    ("4 g", "mL", ("20 g", "500 mL"), None, "100"),
    # and back: 5.505 mL/h of noradrenaline for 73.4 kg is 0.1 ug/kg/min
    ("5.505 mL/h", "ug/kg/min", ("4 mg", "50 mL"), "73.4 kg", "0.1"),
    # same amount kind, no factor needed: 60 ug/min = 3.6 mg/h
    ("60 ug/min", "mg/h", None, None, "3.6"),
]


@pytest.mark.hazard("HAZ-012")
@pytest.mark.parametrize(("value", "unit", "concentration", "weight", "expected"), GOLDEN)
def test_golden_conversions(
    value: str, unit: str, concentration: tuple[str, str] | None, weight: str | None, expected: str
) -> None:
    c = None if concentration is None else conc(*concentration)
    w = None if weight is None else q(weight)
    result = convert(q(value), unit, concentration=c, weight=w)
    assert result.unit == unit
    assert result.value == Decimal(expected)


def test_a_concentration_that_does_not_divide_is_never_rounded_in_between() -> None:
    # 100 mg in 30 mL is 3.333... mg/mL; 1 mg/h is 0.3 mL/h exactly when kept as amount in volume.
    c = conc("100 mg", "30 mL")
    rate = convert(q("1 mg/h"), "mL/h", concentration=c)
    assert rate.value == Decimal("0.3")
    assert convert(rate, "mg/h", concentration=c).value == 1


@pytest.mark.hazard("HAZ-007")
def test_missing_weight_is_an_error_never_a_default() -> None:
    with pytest.raises(MissingFactor) as info:
        convert(q("5 ug/kg/min"), "mL/h", concentration=conc("400 mg", "250 mL"))
    assert info.value.factor == "patient weight"
    assert isinstance(info.value, DersError)


def test_missing_concentration_and_bsa_are_errors() -> None:
    with pytest.raises(MissingFactor, match="concentration"):
        convert(q("100 ug/h"), "mL/h")
    with pytest.raises(MissingFactor, match="body surface area"):
        convert(q("10 mg/m2/h"), "mL/h", concentration=conc("100 mg", "100 mL"))


@pytest.mark.hazard("HAZ-008")
@pytest.mark.parametrize(
    ("value", "unit", "concentration"),
    [
        ("5 mg/h", "mL", ("50 mg", "50 mL")),  # a rate is not an amount
        ("5 mg/h", "[iU]/h", ("50 mg", "50 mL")),  # mass is not units
        ("5 [iU]/h", "mL/h", ("50 mg", "50 mL")),  # units through a mass concentration
    ],
)
def test_incompatible_units_are_refused(value: str, unit: str, concentration: tuple[str, str]) -> None:
    with pytest.raises(QuantityError):
        convert(q(value), unit, concentration=conc(*concentration))


def test_a_weight_must_be_a_body_mass() -> None:
    with pytest.raises(QuantityError, match="weight"):
        convert(q("5 ug/kg/min"), "mL/h", concentration=conc("400 mg", "250 mL"), weight=q("70 mg"))


def test_concentrations_compare_exactly_across_units() -> None:
    assert conc("2500 ug", "50 mL").compare(Concentration.of(q("50 ug/mL"))) == 0
    assert conc("2500 ug", "50 mL").compare(Concentration.of(q("0.05 mg/mL"))) == 0
    assert conc("2500 ug", "50 mL").compare(Concentration.of(q("10 ug/mL"))) == 1
    assert conc("100 mg", "30 mL").compare(conc("10 mg", "3 mL")) == 0
    with pytest.raises(QuantityError):
        conc("50 [iU]", "50 mL").compare(Concentration.of(q("1 mg/mL")))


@pytest.mark.parametrize(
    "bad", [("0 ug", "50 mL"), ("50 ug", "0 mL"), ("50 mL", "50 mL"), ("50 ug", "50 ug")]
)
def test_a_concentration_must_be_a_positive_amount_in_a_volume(bad: tuple[str, str]) -> None:
    with pytest.raises(QuantityError):
        conc(*bad)


@pytest.mark.hazard("HAZ-012")
@pytest.mark.parametrize(
    ("exact", "resolution", "expected"),
    [
        ("13.125", "0.01", "13.12"),  # a tie goes to the even step
        ("13.135", "0.01", "13.14"),
        ("13.1251", "0.01", "13.13"),
        ("54.75", "0.1", "54.8"),
        ("5", "0.01", "5.00"),
        ("0.004", "0.01", "0.00"),
    ],
)
def test_round_rate_rule(exact: str, resolution: str, expected: str) -> None:
    rounded = round_rate(Quantity(Decimal(exact), "mL/h"), Decimal(resolution))
    assert str(rounded.value) == expected
    assert rounded.unit == "mL/h"


def test_round_rate_refuses_what_is_not_a_rate() -> None:
    with pytest.raises(QuantityError):
        round_rate(q("5 mg/h"))
    with pytest.raises(QuantityError, match="not a rate any pump"):
        round_rate(q("1E+9 mL/h"))


def _dose_units() -> list[str]:
    out = []
    for unit in sorted(known_units()):
        try:
            parts = unit_parts(unit)
        except QuantityError:
            continue
        if parts.per_time is not None and parts.amount_kind in ("mass", "volume") and parts.basis != "m2":
            out.append(unit)
    return out


positive = st.decimals(min_value=Decimal("0.001"), max_value=Decimal(10000), places=3, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    value=positive,
    unit=st.sampled_from(_dose_units()),
    amount=st.decimals(min_value=Decimal("0.1"), max_value=Decimal(5000), places=1),
    volume=st.sampled_from(["1 mL", "3 mL", "7 mL", "50 mL", "250 mL", "1 L"]),
    weight=st.decimals(min_value=Decimal("0.5"), max_value=Decimal(300), places=1),
)
def test_conversion_round_trips(
    value: Decimal, unit: str, amount: Decimal, volume: str, weight: Decimal
) -> None:
    c = Concentration(Quantity(amount, "mg"), q(volume))
    w = Quantity(weight, "kg")
    there = convert(Quantity(value, unit), "mL/h", concentration=c, weight=w)
    back = convert(there, unit, concentration=c, weight=w)
    # 34 significant digits throughout: the round trip is exact to far below any clinical meaning.
    assert abs(back.value - value) <= value * Decimal("1E-30")
