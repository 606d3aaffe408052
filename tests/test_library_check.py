"""Every clinical consistency rule of a drug library (gateway/library_check.py), one test each.

Each test makes one small edit to the example library and asserts the problem parse_library
reports: where (the path a pharmacist looks up in the file) and what (the words they read). Then
how a library is read (exact decimals, every problem at once, shape before sense) and its identity
(the canonical hash: what changes it and what does not). docs/library.md lists the same rules.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from decimal import Decimal
from functools import cache
from pathlib import Path

import pytest

from pumpgw.gateway.errors import LibraryError
from pumpgw.gateway.library import LibraryDocument, canonical_bytes, library_hash, parse_library

EXAMPLE = (Path(__file__).parents[1] / "gateway" / "examples" / "drug-library.example.toml").read_text(
    encoding="utf-8"
)

# The example's entries and care areas by position, as the paths name them.
FENTANYL_50 = "drugs[0]"
FENTANYL_DOSE = 'dose = { soft_max = "200 ug/h", hard_max = "300 ug/h" }'  # fentanyl-50, icu-adult
FENTANYL_CONC = 'concentration = { amount = "2500 ug", volume = "50 mL" }'
DOBUTAMINE_CONC = 'concentration = { variable = true, min = "0.5 mg/mL", max = "5 mg/mL" }'
NEW_DRUG = """
[[drugs]]
id = "glucose-10"
name = "glucose 10 %"
display_name = "glucose 10 %"
dose_unit = "mL/h"
"""


def edited(*changes: tuple[str, str]) -> str:
    """The example library with each ``(old, new)`` applied to the first ``old`` (which must exist)."""
    text = EXAMPLE
    for old, new in changes:
        assert old in text, f"not in the example library: {old!r}"
        text = text.replace(old, new, 1)
    return text


def problems(*changes: tuple[str, str]) -> list[str]:
    """Every problem parse_library reports for the edited example, as ``"path: message"``."""
    try:
        parse_library(edited(*changes).encode("utf-8"), "edited.toml")
    except LibraryError as exc:
        return [str(p) for p in exc.problems]
    raise AssertionError("the edited library was accepted")


def test_the_example_library_is_valid() -> None:
    library = parse_library(EXAMPLE.encode("utf-8"), "example.toml")
    assert library.doc.example is True
    assert library.hash.startswith("sha256:")


# --- limit sets ---------------------------------------------------------------------------------


@pytest.mark.hazard("HAZ-011")
def test_a_limit_set_with_no_limit_in_it() -> None:
    assert problems(('bolus_volume = { hard_max = "2 mL" }', "bolus_volume = {}")) == [
        "drugs[0].care_areas.icu-adult.bolus_volume: fentanyl-50 bolus volume: no limit set "
        "(give at least one of hard_min, soft_min, soft_max, hard_max)"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_soft_maximum_above_the_hard_maximum() -> None:
    assert problems((FENTANYL_DOSE, 'dose = { soft_max = "400 ug/h", hard_max = "300 ug/h" }')) == [
        "drugs[0].care_areas.icu-adult.dose.hard_max: fentanyl-50 dose: hard max 300 ug/h is below "
        "soft max 400 ug/h (soft limits must lie inside the hard ones)"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_soft_minimum_below_the_hard_minimum() -> None:
    old = 'dose = { soft_min = "0.3 mg/kg/h"'
    assert problems((old, 'dose = { hard_min = "0.5 mg/kg/h", soft_min = "0.3 mg/kg/h"')) == [
        "drugs[3].care_areas.icu-adult.dose.soft_min: propofol-10 dose: soft min 0.3 mg/kg/h is below "
        "hard min 0.5 mg/kg/h (soft limits must lie inside the hard ones)"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_soft_minimum_above_the_soft_maximum() -> None:
    old = 'dose = { soft_min = "0.3 mg/kg/h", soft_max = "4 mg/kg/h"'
    assert problems((old, 'dose = { soft_min = "4.5 mg/kg/h", soft_max = "4 mg/kg/h"')) == [
        "drugs[3].care_areas.icu-adult.dose.soft_max: propofol-10 dose: soft max 4 mg/kg/h is below "
        "soft min 4.5 mg/kg/h (soft limits must lie inside the hard ones)"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_hard_maximum_below_the_hard_minimum() -> None:
    assert problems(
        ('vtbi = { hard_max = "50 mL" }', 'vtbi = { hard_min = "60 mL", hard_max = "50 mL" }')
    ) == [
        "drugs[0].care_areas.icu-adult.vtbi.hard_max: fentanyl-50 VTBI: hard max 50 mL is below hard min 60 mL"
    ]


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_limits_in_different_units_of_one_dimension_are_compared_exactly() -> None:
    # 0.1 mg/h is 100 microgram/h: below the soft maximum of 200, whatever the units look like.
    assert problems((FENTANYL_DOSE, 'dose = { soft_max = "200 ug/h", hard_max = "0.1 mg/h" }')) == [
        "drugs[0].care_areas.icu-adult.dose.hard_max: fentanyl-50 dose: hard max 0.1 mg/h is below "
        "soft max 200 ug/h (soft limits must lie inside the hard ones)"
    ]
    parse_library(
        edited((FENTANYL_DOSE, 'dose = { soft_max = "200 ug/h", hard_max = "0.3 mg/h" }')).encode(), "ok.toml"
    )


@pytest.mark.hazard("HAZ-011")
def test_a_negative_limit() -> None:
    assert problems(
        (FENTANYL_DOSE, 'dose = { hard_min = "-1 ug/h", soft_max = "200 ug/h", hard_max = "300 ug/h" }')
    ) == ["drugs[0].care_areas.icu-adult.dose.hard_min: fentanyl-50 dose: -1 ug/h is negative"]


@pytest.mark.hazard("HAZ-011")
def test_a_maximum_of_zero() -> None:
    assert problems(('vtbi = { hard_max = "50 mL" }', 'vtbi = { hard_max = "0 mL" }')) == [
        "drugs[0].care_areas.icu-adult.vtbi.hard_max: fentanyl-50 VTBI: a maximum of 0 mL allows nothing"
    ]


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_a_limit_in_the_wrong_dimension() -> None:
    assert problems(('vtbi = { hard_max = "50 mL" }', 'vtbi = { hard_max = "50 mL/h" }')) == [
        "drugs[0].care_areas.icu-adult.vtbi.hard_max: fentanyl-50 VTBI: 50 mL/h is volume/time, expected volume"
    ]


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_a_per_kg_dose_limit_on_an_absolute_dose_entry() -> None:
    assert problems((FENTANYL_DOSE, 'dose = { soft_max = "200 ug/h", hard_max = "3 ug/kg/h" }')) == [
        "drugs[0].care_areas.icu-adult.dose.hard_max: fentanyl-50 dose: 3 ug/kg/h is mass/body mass/time, "
        "expected mass/time"
    ]


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_a_bolus_limit_in_another_unit_than_the_bolus_unit() -> None:
    old = 'bolus_dose = { soft_max = "50 ug", hard_max = "100 ug" }'
    assert problems((old, 'bolus_dose = { soft_max = "50 ug", hard_max = "1 ug/kg" }')) == [
        "drugs[0].care_areas.icu-adult.bolus_dose.hard_max: fentanyl-50 bolus dose: 1 ug/kg is "
        "mass/body mass, expected mass"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_bolus_rate_with_limits_in_two_dimensions() -> None:
    # A bolus rate may be limited in mL/h or in dose per time, but one limit set uses one of them.
    assert problems(
        (
            'bolus_rate = { hard_max = "300 mL/h" }',
            'bolus_rate = { soft_max = "100 ug/min", hard_max = "300 mL/h" }',
        )
    ) == [
        "drugs[0].care_areas.icu-adult.bolus_rate: fentanyl-50 bolus rate: limits in different dimensions "
        "(100 ug/min, 300 mL/h)"
    ]


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-007")
def test_an_implausible_weight_limit() -> None:
    # 2500 kg: grams typed for kilograms, or a stray zero.
    old = 'weight = { hard_min = "30 kg", hard_max = "250 kg" }'
    assert problems((old, 'weight = { hard_min = "30 kg", hard_max = "2500 kg" }')) == [
        "drugs[3].care_areas.icu-adult.weight.hard_max: propofol-10 patient weight: 2500 kg is not a "
        "plausible value (expected 0.2 kg to 650 kg)"
    ]
    assert problems((old, 'weight = { hard_min = "30 g{body}", hard_max = "250 kg" }')) == [
        "drugs[3].care_areas.icu-adult.weight.hard_min: propofol-10 patient weight: 30 g{body} is not a "
        "plausible value (expected 0.2 kg to 650 kg)"
    ]


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-007")
def test_a_weight_limit_that_is_not_a_body_mass() -> None:
    old = 'weight = { hard_min = "30 kg", hard_max = "250 kg" }'
    assert problems((old, 'weight = { hard_min = "30 mg", hard_max = "250 kg" }')) == [
        "drugs[3].care_areas.icu-adult.weight.hard_min: propofol-10 patient weight: 30 mg is mass, "
        "expected body mass"
    ]


@pytest.mark.hazard("HAZ-011")
def test_an_implausible_body_surface_area_limit() -> None:
    assert problems(
        (FENTANYL_DOSE, FENTANYL_DOSE + '\nbsa = { hard_min = "0.01 m2", hard_max = "2.5 m2" }')
    ) == [
        "drugs[0].care_areas.icu-adult.bsa.hard_min: fentanyl-50 body surface area: 0.01 m2 is not a "
        "plausible value (expected 0.05 m2 to 5 m2)"
    ]


# --- the dosing mode: units that fit together ---------------------------------------------------


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_an_unknown_dose_unit() -> None:
    found = problems(('dose_unit = "ug/h"', 'dose_unit = "mcg/h"'))
    assert (
        found[0] == "drugs[0].dose_unit: fentanyl-50: 'mcg/h': unknown unit (not in the gateway's UCUM table)"
    )


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_a_dose_unit_that_is_not_a_dose() -> None:
    found = problems(('dose_unit = "ug/h"', 'dose_unit = "mm[Hg]"'))
    assert found[0] == (
        "drugs[0].dose_unit: fentanyl-50: 'mm[Hg]': not a dose, bolus or rate unit (amount [/kg|/m2] [/h|/min])"
    )


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_a_dose_unit_that_is_not_a_rate() -> None:
    found = problems(('dose_unit = "ug/h"', 'dose_unit = "ug"'))
    assert "drugs[0].dose_unit: fentanyl-50: ug is not a rate (per h or per min)" in found


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_a_bolus_unit_that_is_a_rate() -> None:
    found = problems(('bolus_unit = "ug"', 'bolus_unit = "ug/h"'))
    assert "drugs[0].bolus_unit: fentanyl-50: ug/h is a rate; a bolus is an amount (ug, ug/kg, mL)" in found


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_a_bolus_unit_of_another_amount_kind_than_the_dose() -> None:
    found = problems(('bolus_unit = "ug"', 'bolus_unit = "[iU]"'))
    assert "drugs[0].bolus_unit: fentanyl-50: [iU] (units) does not fit the dose unit ug/h (mass)" in found


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_an_unknown_bolus_unit() -> None:
    found = problems(('bolus_unit = "ug"', 'bolus_unit = "mcg"'))
    assert "drugs[0].bolus_unit: fentanyl-50: 'mcg': unknown unit (not in the gateway's UCUM table)" in found


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_a_loading_unit_of_another_amount_kind_than_the_dose() -> None:
    found = problems(('loading_unit = "g"', 'loading_unit = "mmol"'))
    assert (
        "drugs[12].loading_unit: magnesium-40: mmol (substance) does not fit the dose unit g/h (mass)"
        in found
    )


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_a_loading_unit_that_is_a_rate() -> None:
    found = problems(('loading_unit = "g"', 'loading_unit = "g/h"'))
    assert (
        "drugs[12].loading_unit: magnesium-40: g/h is a rate; a loading is an amount (ug, ug/kg, mL)" in found
    )


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-007")
def test_weight_required_cannot_be_false_for_a_per_kg_dose() -> None:
    assert problems(("weight_required = true", "weight_required = false")) == [
        "drugs[3].care_areas.icu-adult.weight_required: propofol-10: dosing per kg needs the patient's weight; "
        "weight_required cannot be false"
    ]


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-007")
def test_weight_required_cannot_be_false_for_a_per_kg_bolus_either() -> None:
    # Insulin is dosed in units/h; a bolus in units/kg still needs the weight.
    insulin_dose = 'dose = { soft_max = "15 [iU]/h", hard_max = "30 [iU]/h" }'
    assert problems(
        ('dose_unit = "[iU]/h"', 'dose_unit = "[iU]/h"\nbolus_unit = "[iU]/kg"'),
        (insulin_dose, insulin_dose + '\nweight_required = false\nbolus_dose = { hard_max = "0.1 [iU]/kg" }'),
    ) == [
        "drugs[9].care_areas.icu-adult.weight_required: insulin-1: dosing per kg needs the patient's weight; "
        "weight_required cannot be false"
    ]


# --- concentrations -----------------------------------------------------------------------------


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_a_dose_in_an_amount_needs_a_concentration() -> None:
    assert problems((FENTANYL_CONC + "\n", "")) == [
        "drugs[0].concentration: fentanyl-50: dosing in ug/h needs a concentration to convert to mL/h"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_concentration_both_fixed_and_variable() -> None:
    assert problems(
        (DOBUTAMINE_CONC, DOBUTAMINE_CONC.replace("}", ', amount = "250 mg", volume = "50 mL" }'))
    ) == [
        "drugs[7].concentration: dobutamine-variable: a concentration is either fixed (amount, volume) or "
        "variable (min, max), not both"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_fixed_concentration_without_its_volume() -> None:
    assert problems((FENTANYL_CONC, 'concentration = { amount = "2500 ug" }')) == [
        "drugs[0].concentration: fentanyl-50: a fixed concentration needs amount and volume"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_fixed_concentration_with_a_range() -> None:
    assert problems(
        (FENTANYL_CONC, 'concentration = { amount = "2500 ug", volume = "50 mL", max = "60 ug/mL" }')
    ) == [
        "drugs[0].concentration: fentanyl-50: min and max belong to a variable concentration (variable = true)"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_fixed_concentration_whose_amount_is_not_a_drug_amount() -> None:
    assert problems((FENTANYL_CONC, 'concentration = { amount = "50 ug/mL", volume = "50 mL" }')) == [
        "drugs[0].concentration.amount: fentanyl-50: 50 ug/mL is not a drug amount (mass, units, mmol or meq)"
    ]


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_a_fixed_concentration_of_another_amount_kind_than_the_dose() -> None:
    assert problems((FENTANYL_CONC, 'concentration = { amount = "2500 [iU]", volume = "50 mL" }')) == [
        "drugs[0].concentration.amount: fentanyl-50: 2500 [iU] (units) does not fit the dose unit ug/h (mass)"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_fixed_concentration_whose_volume_is_not_a_volume() -> None:
    assert problems((FENTANYL_CONC, 'concentration = { amount = "2500 ug", volume = "50 mg" }')) == [
        "drugs[0].concentration.volume: fentanyl-50: 50 mg is not a volume"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_fixed_concentration_of_zero() -> None:
    assert problems((FENTANYL_CONC, 'concentration = { amount = "0 ug", volume = "50 mL" }')) == [
        "drugs[0].concentration.amount: fentanyl-50: 0 ug must be above zero"
    ]
    assert problems((FENTANYL_CONC, 'concentration = { amount = "2500 ug", volume = "0 mL" }')) == [
        "drugs[0].concentration.volume: fentanyl-50: 0 mL must be above zero"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_variable_concentration_without_its_maximum() -> None:
    assert problems((DOBUTAMINE_CONC, 'concentration = { variable = true, min = "0.5 mg/mL" }')) == [
        "drugs[7].concentration: dobutamine-variable: a variable concentration needs min and max"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_variable_concentration_bound_that_is_not_a_concentration() -> None:
    assert problems(
        (DOBUTAMINE_CONC, 'concentration = { variable = true, min = "0.5 mg", max = "5 mg/mL" }')
    ) == [
        "drugs[7].concentration.min: dobutamine-variable: 0.5 mg is not a concentration (amount per volume)"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_variable_concentration_bound_of_zero() -> None:
    assert problems(
        (DOBUTAMINE_CONC, 'concentration = { variable = true, min = "0 mg/mL", max = "5 mg/mL" }')
    ) == ["drugs[7].concentration.min: dobutamine-variable: 0 mg/mL must be above zero"]


@pytest.mark.hazard("HAZ-011")
def test_a_variable_concentration_whose_bounds_are_different_dimensions() -> None:
    assert problems(
        (DOBUTAMINE_CONC, 'concentration = { variable = true, min = "0.5 mg/mL", max = "5 [iU]/mL" }')
    ) == [
        "drugs[7].concentration: dobutamine-variable: min 0.5 mg/mL and max 5 [iU]/mL are different dimensions"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_variable_concentration_whose_maximum_is_below_its_minimum() -> None:
    # 500 microgram/mL is 0.5 mg/mL: below 5 mg/mL, compared exactly across units.
    assert problems(
        (DOBUTAMINE_CONC, 'concentration = { variable = true, min = "5 mg/mL", max = "500 ug/mL" }')
    ) == ["drugs[7].concentration.max: dobutamine-variable: max 500 ug/mL is below min 5 mg/mL"]


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_a_variable_concentration_of_another_amount_kind_than_the_dose() -> None:
    assert problems(
        (DOBUTAMINE_CONC, 'concentration = { variable = true, min = "0.5 [iU]/mL", max = "5 [iU]/mL" }')
    ) == [
        "drugs[7].concentration: dobutamine-variable: a units concentration does not fit the dose unit ug/kg/min"
    ]


# --- care areas an entry names, and what it must limit in each ----------------------------------


@pytest.mark.hazard("HAZ-011")
def test_an_entry_in_no_care_area() -> None:
    assert problems(("[[care_areas]]", NEW_DRUG + "care_areas = {}\n\n[[care_areas]]")) == [
        "drugs[0].care_areas: glucose-10: the entry is in no care area"
    ]


@pytest.mark.hazard("HAZ-011")
def test_an_entry_naming_a_care_area_that_does_not_exist() -> None:
    assert problems(("[drugs.care_areas.icu-adult]", "[drugs.care_areas.icu-adults]")) == [
        "drugs[0].care_areas.icu-adults: fentanyl-50: care area 'icu-adults' is not defined in care_areas"
    ]


@pytest.mark.hazard("HAZ-011")
def test_an_entry_without_dose_limits_in_a_care_area() -> None:
    assert problems((FENTANYL_DOSE + "\n", "")) == [
        "drugs[0].care_areas.icu-adult.dose: fentanyl-50: no hard maximum dose in this care area "
        "(every entry must set dose.hard_max)"
    ]


@pytest.mark.hazard("HAZ-011")
def test_bolus_limits_without_a_bolus_unit() -> None:
    found = problems(('bolus_unit = "ug"\n', ""))
    assert (
        found[0]
        == "drugs[0].care_areas.icu-adult.bolus_dose: fentanyl-50: bolus limits need the entry's bolus_unit"
    )


@pytest.mark.hazard("HAZ-011")
def test_loading_dose_limits_without_a_loading_unit() -> None:
    found = problems(('loading_unit = "g"\n', ""))
    assert found[0] == (
        "drugs[12].care_areas.maternity.loading_dose: magnesium-40: loading dose limits need the entry's loading_unit"
    )


# --- basic infusions (no library entry) ---------------------------------------------------------


@pytest.mark.hazard("HAZ-011")
def test_basic_infusions_allowed_need_a_rate_hard_maximum() -> None:
    old = 'basic_rate = { soft_max = "150 mL/h", hard_max = "250 mL/h" }'
    assert problems((old, 'basic_rate = { soft_max = "150 mL/h" }')) == [
        "care_areas[1].basic_rate: ward-adult: basic infusions are allowed, so a rate hard_max is required"
    ]
    assert problems((old + "\n", "")) == [
        "care_areas[1].basic_rate: ward-adult: basic infusions are allowed, so a rate hard_max is required"
    ]


@pytest.mark.hazard("HAZ-011")
@pytest.mark.hazard("HAZ-008")
def test_basic_infusion_limits_in_the_wrong_dimension() -> None:
    assert problems(('basic_vtbi = { hard_max = "1000 mL" }', 'basic_vtbi = { hard_max = "1000 mL/h" }')) == [
        "care_areas[0].basic_vtbi.hard_max: icu-adult basic infusion VTBI: 1000 mL/h is volume/time, expected volume"
    ]
    found = problems(('hard_max = "500 mL/h" }', 'hard_max = "500 mL" }'))
    assert (
        "care_areas[0].basic_rate.hard_max: icu-adult basic infusion rate: 500 mL is volume, expected volume/time"
        in found
    )


# --- duplicates and codes -----------------------------------------------------------------------


@pytest.mark.hazard("HAZ-011")
def test_a_care_area_id_used_twice() -> None:
    found = problems(('id = "ward-adult"', 'id = "icu-adult"'))
    assert found[0] == "care_areas[1]: care area id 'icu-adult' is used twice (first at care_areas[0])"


@pytest.mark.hazard("HAZ-011")
def test_a_drug_id_used_twice() -> None:
    assert problems(('id = "fentanyl-10"', 'id = "fentanyl-50"')) == [
        "drugs[1]: drug id 'fentanyl-50' is used twice (first at drugs[0])"
    ]


@pytest.mark.hazard("HAZ-011")
def test_an_override_reason_listed_twice_whatever_its_case_and_spaces() -> None:
    reason = '  "Dose confirmed with the prescriber",\n'
    assert problems((reason, reason + '  " dose confirmed with the PRESCRIBER ",\n')) == [
        "override_reasons[1]: override reason 'dose confirmed with the prescriber' is used twice "
        "(first at override_reasons[0])"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_pump_model_listed_twice() -> None:
    line = 'version = "7"\n'
    assert problems((line, line + '\n[[pump_libraries]]\nmodel = "RIG-MC2"\nversion = "6"\n')) == [
        "pump_libraries[1]: pump model 'RIG-MC2' is used twice (first at pump_libraries[0])"
    ]


@pytest.mark.hazard("HAZ-011")
def test_the_same_drug_and_concentration_twice_however_written() -> None:
    # fentanyl-10 made into 25 mg in 500 mL: 50 microgram/mL in ug/h, as fentanyl-50 already is.
    assert problems(('amount = "500 ug", volume = "50 mL"', 'amount = "25 mg", volume = "500 mL"')) == [
        "drugs[1]: drug, concentration and dose unit 'fentanyl 0.05 mass/mL ug/h' is used twice (first at drugs[0])"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_gtin_with_a_wrong_check_digit() -> None:
    assert problems(('"09521234543213"', '"09521234543214"')) == [
        "drugs[0].codes.gtin: fentanyl-50: GTIN 09521234543214 has a wrong check digit"
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_product_code_on_two_entries() -> None:
    assert problems(('"09521234500018"', '"09521234543213"')) == [
        "drugs[1].codes.gtin: fentanyl-10: gtin code 09521234543213 is also the code of fentanyl-50"
    ]
    both_local = ('rxnorm = ["4337"] }', 'rxnorm = ["4337"], local = ["FENT"] }')
    assert problems(both_local, both_local) == [
        "drugs[1].codes.local: fentanyl-10: local code FENT is also the code of fentanyl-50"
    ]


def test_an_rxnorm_ingredient_code_may_name_every_concentration_of_it() -> None:
    # RxNorm 4337 is fentanyl, the ingredient: both syringes carry it, and a lookup finds both.
    library = parse_library(EXAMPLE.encode("utf-8"), "example.toml")
    assert [d.id for d in library.by_code[("rxnorm", "4337")]] == ["fentanyl-50", "fentanyl-10"]
    assert [d.id for d in library.by_code[("gtin", "09521234543213")]] == ["fentanyl-50"]


# --- found in review: what library_check does not do yet (reported to the lead) -----------------


def test_an_unknown_dose_unit_is_reported_once() -> None:
    assert problems(('dose_unit = "ug/h"', 'dose_unit = "mcg/h"')) == [
        "drugs[0].dose_unit: fentanyl-50: 'mcg/h': unknown unit (not in the gateway's UCUM table)"
    ]


@pytest.mark.hazard("HAZ-005")
def test_a_dose_limit_set_without_a_maximum() -> None:
    found = problems((FENTANYL_DOSE, 'dose = { soft_min = "10 ug/h" }'))
    assert any(p.startswith("drugs[0].care_areas.icu-adult.dose") for p in found)


# --- reading a library --------------------------------------------------------------------------


@pytest.mark.hazard("HAZ-012")
def test_numbers_are_read_as_exact_decimals_never_binary_floats() -> None:
    # A bare number is refused (a quantity is text with its unit), and the refusal shows what the
    # reader made of it: the exact decimal written, not the nearest binary float.
    toml = edited(('amount = "2500 ug"', "amount = 0.1"))
    with pytest.raises(LibraryError) as from_toml:
        parse_library(toml.encode(), "edited.toml")
    data = tomllib.loads(EXAMPLE)
    data["drugs"][0]["concentration"]["amount"] = "AMOUNT"
    as_json = json.dumps(data).replace('"AMOUNT"', "0.1")
    with pytest.raises(LibraryError) as from_json:
        parse_library(as_json.encode(), "edited.json")
    for caught in (from_toml, from_json):
        assert [str(p) for p in caught.value.problems] == [
            "drugs[0].concentration.amount: expected text such as '50 ug/mL' (a number, a space, a UCUM unit), "
            "not Decimal('0.1')"
        ]
    # A version is an integer: 7.0 is refused, not truncated.
    with pytest.raises(LibraryError, match="version: Input should be a valid integer"):
        parse_library(edited(("version = 7\n", "version = 7.0\n")).encode(), "v.toml")


@pytest.mark.hazard("HAZ-011")
def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(LibraryError) as caught:
        parse_library(
            edited(
                ('"09521234543213"', '"09521234543214"'),
                ('id = "fentanyl-10"', 'id = "fentanyl-50"'),
                ('vtbi = { hard_max = "50 mL" }', 'vtbi = { hard_max = "0 mL" }'),
            ).encode(),
            "edited.toml",
        )
    assert [p.path for p in caught.value.problems] == [
        "drugs[1]",
        "drugs[0].codes.gtin",
        "drugs[0].care_areas.icu-adult.vtbi.hard_max",
    ]
    assert str(caught.value).startswith("drug library edited.toml: 3 problems\n  drugs[1]: drug id")


@pytest.mark.hazard("HAZ-011")
def test_every_shape_problem_is_reported_at_once_before_any_clinical_check() -> None:
    # Two shape problems and one clinical one: the shape is fixed first, so only those two show.
    found = problems(
        ('dose_unit = "ug/h"\n', ""),
        ('hard_max = "500 mL/h" }', 'hard_mx = "500 mL/h" }'),
        ('"09521234543213"', '"09521234543214"'),
    )
    assert found == [
        "care_areas[0].basic_rate.hard_mx: no such key (check the spelling; see docs/library.md)",
        "drugs[0].dose_unit: required key is missing",
    ]


def test_not_utf8_and_not_toml_are_problems_with_a_place() -> None:
    with pytest.raises(LibraryError, match=r"\(file\): not UTF-8 text at byte 0"):
        parse_library(b"\xff", "bad.toml")
    with pytest.raises(LibraryError, match=r"\(syntax\): not valid TOML"):
        parse_library(b"format = ", "bad.toml")
    with pytest.raises(LibraryError, match=r"\(syntax, line 1\): not valid JSON"):
        parse_library(b"{ nope", "bad.json")


# --- the canonical form and the hash ------------------------------------------------------------


def hash_of(text: str) -> str:
    return parse_library(text.encode("utf-8"), "x").hash


def shape_hash(text: str) -> str:
    """The hash of a document whose shape is valid, clinically consistent or not."""
    return library_hash(LibraryDocument.model_validate(tomllib.loads(text, parse_float=Decimal)))


@cache
def example_hash() -> str:
    return hash_of(EXAMPLE)


def test_the_hash_is_the_sha256_of_the_canonical_form() -> None:
    library = parse_library(EXAMPLE.encode("utf-8"), "example.toml")
    assert library.hash == "sha256:" + hashlib.sha256(canonical_bytes(library.doc)).hexdigest()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", library.hash)
    assert library.label == f"Example library v7 ({library.hash[:19]})"


def test_the_canonical_form_of_a_small_library_byte_for_byte() -> None:
    # A golden value: a change here changes the hash of every library ever signed.
    text = """
format = "pumpgw-drug-library/1"
name = "Tiny"
version = 1
override_reasons = ["Confirmed"]
drugs = []

[[care_areas]]
id = "ward"
name = "Ward"
basic_infusion = "allowed"
basic_rate = { hard_max = "250.00 mL/h" }
"""
    library = parse_library(text.encode(), "tiny.toml")
    assert canonical_bytes(library.doc) == (
        b'{"care_areas":[{"basic_infusion":"allowed","basic_rate":{"hard_max":"250 mL/h"},"id":"ward",'
        b'"name":"Ward"}],"drugs":[],"example":false,"format":"pumpgw-drug-library/1","name":"Tiny",'
        b'"override_reasons":["Confirmed"],"pump_libraries":[],"version":1}'
    )
    assert library.hash == "sha256:" + hashlib.sha256(canonical_bytes(library.doc)).hexdigest()


def test_comments_and_blank_lines_do_not_change_the_hash() -> None:
    no_comments = "\n".join(
        line for line in EXAMPLE.splitlines() if line.strip() and not line.startswith("#")
    )
    assert no_comments != EXAMPLE
    assert hash_of(no_comments) == example_hash()


def test_key_order_does_not_change_the_hash() -> None:
    reordered = edited(
        ('id = "fentanyl-50"\nname = "fentanyl"\n', 'name = "fentanyl"\nid = "fentanyl-50"\n'),
        (FENTANYL_DOSE, 'dose = { hard_max = "300 ug/h", soft_max = "200 ug/h" }'),
        (FENTANYL_CONC, 'concentration = { volume = "50 mL", amount = "2500 ug" }'),
        (
            'format = "pumpgw-drug-library/1"\nname = "Example library"\n',
            'name = "Example library"\nformat = "pumpgw-drug-library/1"\n',
        ),
    )
    assert hash_of(reordered) == example_hash()


def test_the_order_of_care_areas_within_an_entry_does_not_change_the_hash() -> None:
    # An entry's care areas are a table (keyed by id), not a list: their order means nothing.
    ward = """[drugs.care_areas.ward-adult]
advisory = "Monitor sedation score and respiratory rate hourly."
dose = { soft_max = "4 mg/h", hard_max = "8 mg/h" }
bolus_dose = { soft_max = "2 mg", hard_max = "4 mg" }
bolus_volume = { hard_max = "4 mL" }
vtbi = { hard_max = "50 mL" }
"""
    text = edited(
        (ward, ""),
        (
            '[drugs.care_areas.icu-adult]\ndose = { soft_max = "10 mg/h"',
            ward + '\n[drugs.care_areas.icu-adult]\ndose = { soft_max = "10 mg/h"',
        ),
    )
    assert hash_of(text) == example_hash()


def test_toml_and_json_of_one_library_have_one_hash() -> None:
    as_json = json.dumps(tomllib.loads(EXAMPLE), indent=2)
    assert parse_library(as_json.encode(), "example.json").hash == example_hash()


def test_trailing_zeros_exponents_and_written_defaults_do_not_change_the_hash() -> None:
    text = edited(
        (FENTANYL_CONC, 'concentration = { amount = "2.5E3 ug", volume = "50.000 mL" }'),
        (FENTANYL_DOSE, 'dose = { soft_max = "200.0 ug/h", hard_max = "+300 ug/h" }'),
        (
            'display_name = "propofol 1 % (10 mg/mL)"\n',
            'display_name = "propofol 1 % (10 mg/mL)"\nhigh_alert = false\n',
        ),
    )
    assert hash_of(text) == example_hash()


QUANTITY = re.compile(r'"(\d+(?:\.\d+)?) ([^"]+)"')


@pytest.mark.hazard("HAZ-004")
def test_any_change_to_any_quantity_changes_the_hash() -> None:
    # Every quantity in the example, one at a time, changed by its own last significant digit.
    matches = [
        m
        for m in QUANTITY.finditer(EXAMPLE)
        if not EXAMPLE[EXAMPLE.rfind("\n", 0, m.start()) + 1 :].startswith("#")
    ]
    assert len(matches) > 100
    seen = {shape_hash(EXAMPLE)}
    for m in matches:
        value = Decimal(m.group(1))
        bumped = value + Decimal(1).scaleb(value.as_tuple().exponent)  # type: ignore[arg-type]
        text = f'{EXAMPLE[: m.start()]}"{bumped} {m.group(2)}"{EXAMPLE[m.end() :]}'
        digest = shape_hash(text)
        assert digest not in seen, f"changing {m.group(0)} to {bumped} did not change the hash"
        seen.add(digest)


@pytest.mark.hazard("HAZ-004")
def test_the_unit_as_written_and_every_other_clinical_word_is_part_of_the_hash() -> None:
    changes = [
        (FENTANYL_DOSE, 'dose = { soft_max = "200 ug/h", hard_max = "0.3 mg/h" }'),  # same dose, other unit
        ("high_alert = true", "high_alert = false"),
        ('display_name = "fentaNYL 50 microgram/mL"', 'display_name = "fentanyl 50 microgram/mL"'),
        ("Check the syringe concentration", "Check the syringe"),
        ('"Patient-specific protocol"', '"Patient specific protocol"'),
        ('version = "7"', 'version = "8"'),  # the pump-side library version
        ("version = 7\n", "version = 8\n"),
        ('basic_infusion = "blocked"', 'basic_infusion = "allowed"\nbasic_rate = { hard_max = "100 mL/h" }'),
    ]
    for old, new in changes:
        assert hash_of(edited((old, new))) != example_hash(), new


@pytest.mark.hazard("HAZ-004")
def test_the_order_of_entries_is_part_of_the_hash() -> None:
    # Lists keep their order (override reasons are offered in it); reordering is a new version.
    reasons = '  "Dose confirmed with the prescriber",\n  "Patient-specific protocol",\n'
    swapped = '  "Patient-specific protocol",\n  "Dose confirmed with the prescriber",\n'
    assert hash_of(edited((reasons, swapped))) != example_hash()
