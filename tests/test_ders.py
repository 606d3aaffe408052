"""DERS evaluation against the example library: each parameter, each outcome, overrides, codes.

Codes are the IHE PIV application error codes where one fits (shared/reference/ihe-pcd.md, "PIV":
9009 units, 9010 not in library, 9018 parameter differs, 9019 weight missing, 9021 care area, 9024
hard limit) and our own PGW- codes otherwise (docs/ders.md).
"""

from __future__ import annotations

from decimal import Decimal
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pumpgw.gateway.ders import (
    PARAMETERS,
    Code,
    Outcome,
    Override,
    Programming,
    Verdict,
    evaluate,
)
from pumpgw.gateway.dose import Concentration, convert
from pumpgw.gateway.errors import DersError
from pumpgw.gateway.events import EventType, payload_problem
from pumpgw.gateway.library import Library, parse_library
from pumpgw.gateway.quantity import Quantity, base_value, known_units

EXAMPLE = Path(__file__).parents[1] / "gateway" / "examples" / "drug-library.example.toml"
REASON = "Dose confirmed with the prescriber"


@cache
def library() -> Library:
    return parse_library(EXAMPLE.read_bytes(), str(EXAMPLE))


def q(text: str) -> Quantity:
    return Quantity.parse(text)


def fentanyl(**kw: object) -> Programming:
    base: dict[str, object] = {
        "drug": "fentanyl-50",
        "concentration": q("50 ug/mL"),
        "dose_rate": q("100 ug/h"),
    }
    base.update(kw)
    return Programming("icu-adult", **base)  # type: ignore[arg-type]


def noradrenaline(**kw: object) -> Programming:
    base: dict[str, object] = {
        "drug": "noradrenaline-80",
        "concentration": q("80 ug/mL"),
        "dose_rate": q("0.1 ug/kg/min"),
        "weight": q("70 kg"),
    }
    base.update(kw)
    return Programming("icu-adult", **base)  # type: ignore[arg-type]


# -- within limits, and the rate to program ----------------------------------------------------


@pytest.mark.parametrize(
    ("programming", "rate"),
    [
        (fentanyl(), "2.00"),
        (noradrenaline(), "5.25"),  # 0.1 x 70 x 60 / 80
        (noradrenaline(weight=q("73.4 kg")), "5.50"),  # 5.505 rounds half-even to 5.50
        (
            Programming(
                "icu-adult",
                drug="heparin-50",
                concentration=q("50 [iU]/mL"),
                dose_rate=q("18 [iU]/kg/h"),
                weight=q("80 kg"),
            ),
            "28.80",
        ),
        (
            Programming(
                "maternity",
                drug="oxytocin-30-in-500",
                concentration=q("60 m[iU]/mL"),
                dose_rate=q("2 m[iU]/min"),
            ),
            "2.00",
        ),
        (
            Programming("ward-adult", drug="hartmanns-1000", dose_rate=q("125 mL/h"), vtbi=q("1000 mL")),
            "125.00",
        ),
    ],
)
def test_within_limits_passes_with_the_rate_to_program(programming: Programming, rate: str) -> None:
    result = evaluate(programming, library())
    assert result.verdict is Verdict.PASS, [c.message for c in result.problems()]
    assert result.rate_ml_h == Quantity(Decimal(rate), "mL/h")
    assert all(c.outcome is Outcome.WITHIN for c in result.checks)
    assert result.library_hash == library().hash


def test_a_dose_given_as_a_rate_is_checked_as_the_dose_it_delivers() -> None:
    # 6.5 mL/h of fentanyl 50 microgram/mL is 325 microgram/h: above the hard maximum 300.
    result = evaluate(fentanyl(dose_rate=None, rate=q("6.5 mL/h")), library())
    dose = result.check("dose")
    assert dose is not None
    assert dose.outcome is Outcome.HARD_HIGH
    assert dose.value == q("325 ug/h")


# -- soft and hard limits ----------------------------------------------------------------------


@pytest.mark.hazard("HAZ-005")
def test_hard_maximum_blocks_and_names_value_limit_unit_and_entry() -> None:
    result = evaluate(fentanyl(dose_rate=q("350 ug/h")), library())
    dose = result.check("dose")
    assert result.verdict is Verdict.BLOCKED
    assert dose is not None
    assert (dose.outcome, dose.code) == (Outcome.HARD_HIGH, Code.HARD_LIMIT)
    assert (dose.value, dose.limit, dose.limit_name) == (q("350 ug/h"), q("300 ug/h"), "hard_max")
    assert dose.source == "fentanyl-50 / icu-adult: dose.hard_max"
    assert "350 microgram/h" in dose.message
    assert "hard maximum of 300 microgram/h" in dose.message
    assert result.rate_ml_h is None  # nothing to program


@pytest.mark.hazard("HAZ-005")
def test_soft_maximum_needs_an_override() -> None:
    result = evaluate(fentanyl(dose_rate=q("250 ug/h")), library())
    dose = result.check("dose")
    assert result.verdict is Verdict.OVERRIDE_REQUIRED
    assert dose is not None
    assert (dose.outcome, dose.code, dose.limit) == (
        Outcome.SOFT_HIGH,
        Code.SOFT_HIGH,
        q("200 ug/h"),
    )
    assert "hard maximum 300 microgram/h" in dose.message


@pytest.mark.hazard("HAZ-006")
def test_soft_and_hard_minimum() -> None:
    low = evaluate(
        Programming(
            "icu-adult",
            drug="dopamine-1600",
            concentration=q("1600 ug/mL"),
            dose_rate=q("1 ug/kg/min"),
            weight=q("70 kg"),
        ),
        library(),
    )
    check = low.check("dose")
    assert check is not None
    assert (check.outcome, check.limit) == (Outcome.SOFT_LOW, q("2 ug/kg/min"))
    weight = evaluate(noradrenaline(weight=q("20 kg")), library()).check("weight")
    assert weight is not None
    assert (weight.outcome, weight.code, weight.limit) == (
        Outcome.HARD_LOW,
        Code.HARD_LIMIT,
        q("30 kg"),
    )


def test_limits_compare_across_units_of_one_dimension() -> None:
    # 0.3 mg/h is 300 microgram/h: exactly at the hard maximum, which is allowed (soft-high).
    result = evaluate(fentanyl(dose_rate=q("0.3 mg/h")), library())
    dose = result.check("dose")
    assert dose is not None
    assert dose.outcome is Outcome.SOFT_HIGH


# -- overrides ---------------------------------------------------------------------------------


@pytest.mark.hazard("HAZ-009")
def test_an_override_with_clinician_and_listed_reason_passes_a_soft_limit() -> None:
    override = Override("dose", "RN A. Nurse", REASON)
    result = evaluate(fentanyl(dose_rate=q("250 ug/h")), library(), overrides=[override])
    assert result.verdict is Verdict.PASS
    dose = result.check("dose")
    assert dose is not None
    assert dose.override == override
    assert dose.outcome is Outcome.SOFT_HIGH
    event = result.as_event()
    assert event["overrides"] == [{"parameter": "dose", "clinician": "RN A. Nurse", "reason": REASON}]
    assert result.rate_ml_h == q("5.00 mL/h")


@pytest.mark.hazard("HAZ-009")
@pytest.mark.parametrize(
    ("override", "why"),
    [
        (Override("dose", "", REASON), "must name the clinician"),
        (Override("dose", "RN A. Nurse", "because"), "not one of the library's override reasons"),
        (Override("vtbi", "RN A. Nurse", REASON), "nothing to override"),
    ],
)
def test_an_override_without_clinician_or_listed_reason_is_refused(override: Override, why: str) -> None:
    result = evaluate(fentanyl(dose_rate=q("250 ug/h"), vtbi=q("10 mL")), library(), overrides=[override])
    assert result.verdict is Verdict.OVERRIDE_REQUIRED
    assert len(result.refused_overrides) == 1
    assert why in result.refused_overrides[0][1]
    assert result.as_event()["refused_overrides"][0]["why"] == result.refused_overrides[0][1]


@pytest.mark.hazard("HAZ-005")
@pytest.mark.hazard("HAZ-009")
def test_a_hard_limit_cannot_be_overridden() -> None:
    result = evaluate(
        fentanyl(dose_rate=q("350 ug/h")), library(), overrides=[Override("dose", "Dr B", REASON)]
    )
    assert result.verdict is Verdict.BLOCKED
    assert "hard limits cannot be overridden" in result.refused_overrides[0][1]


def test_an_override_of_an_unknown_parameter_is_a_usage_error() -> None:
    with pytest.raises(DersError, match="unknown parameter"):
        evaluate(fentanyl(), library(), overrides=[Override("dosage", "Dr B", REASON)])


# -- concentration -----------------------------------------------------------------------------


@pytest.mark.hazard("HAZ-001")
def test_missing_concentration_blocks() -> None:
    check = evaluate(fentanyl(concentration=None), library()).check("concentration")
    assert check is not None
    assert (check.outcome, check.code) == (Outcome.NOT_CHECKABLE, Code.VALUE_MISSING)


@pytest.mark.hazard("HAZ-001")
def test_equal_concentration_in_other_units_matches() -> None:
    result = evaluate(fentanyl(concentration=Concentration(q("2.5 mg"), q("50 mL"))), library())
    assert result.verdict is Verdict.PASS


@pytest.mark.hazard("HAZ-001")
@pytest.mark.hazard("HAZ-008")
def test_concentration_of_another_amount_kind_is_a_units_mismatch() -> None:
    check = evaluate(fentanyl(concentration=q("50 [iU]/mL")), library()).check("concentration")
    assert check is not None
    assert (check.outcome, check.code) == (Outcome.NOT_CHECKABLE, Code.UNITS_MISMATCH)


@pytest.mark.hazard("HAZ-001")
def test_variable_concentration_needs_confirmation_and_limits() -> None:
    def dobutamine(conc: str, confirmed: bool) -> Programming:
        return Programming(
            "icu-adult",
            drug="dobutamine-variable",
            concentration=q(conc),
            dose_rate=q("5 ug/kg/min"),
            weight=q("80 kg"),
            concentration_confirmed=confirmed,
        )

    unconfirmed = evaluate(dobutamine("2 mg/mL", False), library())
    assert unconfirmed.verdict is Verdict.CONFIRMATION_REQUIRED
    check = unconfirmed.check("concentration")
    assert check is not None
    assert check.code is Code.CONFIRM_CONCENTRATION
    confirmed = evaluate(dobutamine("2 mg/mL", True), library())
    assert confirmed.verdict is Verdict.PASS
    assert confirmed.rate_ml_h == q("12.00 mL/h")
    too_strong = evaluate(dobutamine("6 mg/mL", True), library()).check("concentration")
    assert too_strong is not None
    assert (too_strong.outcome, too_strong.limit) == (
        Outcome.HARD_HIGH,
        q("5 mg/mL"),
    )


@pytest.mark.hazard("HAZ-001")
def test_a_rate_that_does_not_deliver_the_dose_is_blocked() -> None:
    # The pump's own arithmetic used another concentration: 100 microgram/h at 50 microgram/mL is
    # 2 mL/h, and 10 mL/h is what 10 microgram/mL would need.
    check = evaluate(fentanyl(rate=q("10 mL/h")), library()).check("rate")
    assert check is not None
    assert (check.outcome, check.code) == (Outcome.HARD_HIGH, Code.RATE_DOSE_MISMATCH)
    assert check.limit == q("2.00 mL/h")


# -- patient -----------------------------------------------------------------------------------


@pytest.mark.hazard("HAZ-007")
def test_weight_based_dose_without_weight_is_blocked_with_9019() -> None:
    result = evaluate(noradrenaline(weight=None), library())
    weight = result.check("weight")
    assert result.verdict is Verdict.BLOCKED
    assert weight is not None
    assert (weight.outcome, weight.code) == (
        Outcome.NOT_CHECKABLE,
        Code.WEIGHT_MISSING,
    )
    assert result.rate_ml_h is None


@pytest.mark.hazard("HAZ-007")
@pytest.mark.hazard("HAZ-008")
def test_weight_in_the_wrong_unit_is_a_units_mismatch() -> None:
    weight = evaluate(noradrenaline(weight=q("70 mg")), library()).check("weight")
    assert weight is not None
    assert weight.code is Code.UNITS_MISMATCH


# -- units -------------------------------------------------------------------------------------


@pytest.mark.hazard("HAZ-008")
@pytest.mark.parametrize("dose", ["0.1 mg/h", "0.1 ug/min", "100 [iU]/h"])
def test_a_dose_in_another_dosing_mode_is_9009(dose: str) -> None:
    # noradrenaline is dosed in microgram/kg/min; an absolute dose (no per kg) or another amount
    # kind is not converted, it is refused. The same dimension in other units is compared:
    # 100 mg/kg/h is 1667 microgram/kg/min, far above the hard maximum.
    check = evaluate(noradrenaline(dose_rate=q(dose)), library()).check("dose")
    assert check is not None
    assert (check.outcome, check.code) == (Outcome.NOT_CHECKABLE, Code.UNITS_MISMATCH)
    same_dimension = evaluate(noradrenaline(dose_rate=q("100 mg/kg/h")), library()).check("dose")
    assert same_dimension is not None
    assert same_dimension.outcome is Outcome.HARD_HIGH


# -- drug and care area ------------------------------------------------------------------------


@pytest.mark.hazard("HAZ-010")
def test_unknown_drug_unknown_care_area_and_drug_not_in_care_area() -> None:
    unknown = evaluate(Programming("icu-adult", drug="ketamine-10", dose_rate=q("1 mg/h")), library()).check(
        "drug"
    )
    assert unknown is not None
    assert unknown.code is Code.NOT_IN_LIBRARY
    area = evaluate(Programming("theatre", drug="fentanyl-50"), library()).check("care_area")
    assert area is not None
    assert area.code is Code.CARE_AREA
    ward = evaluate(
        Programming("ward-adult", drug="fentanyl-50", concentration=q("50 ug/mL"), dose_rate=q("50 ug/h")),
        library(),
    )
    check = ward.check("drug")
    assert ward.verdict is Verdict.BLOCKED
    assert check is not None
    assert check.code is Code.NOT_IN_LIBRARY
    assert "Adult general ward" in check.message


def test_a_drug_by_gtin_and_an_ingredient_code_resolved_by_concentration() -> None:
    by_gtin = evaluate(
        Programming(
            "icu-adult",
            drug_code=("gtin", "09521234543213"),
            concentration=q("50 ug/mL"),
            dose_rate=q("100 ug/h"),
        ),
        library(),
    )
    assert by_gtin.drug == "fentanyl-50"
    assert by_gtin.verdict is Verdict.PASS
    # RxNorm 4337 (fentanyl) names both fentanyl entries; the concentration picks one.
    by_rxnorm = evaluate(
        Programming(
            "icu-adult", drug_code=("rxnorm", "4337"), concentration=q("10 ug/mL"), dose_rate=q("50 ug/h")
        ),
        library(),
    )
    assert by_rxnorm.drug == "fentanyl-10"
    ambiguous = evaluate(
        Programming("icu-adult", drug_code=("rxnorm", "4337"), dose_rate=q("50 ug/h")), library()
    )
    check = ambiguous.check("drug")
    assert check is not None
    assert check.code is Code.AMBIGUOUS_DRUG


def test_both_an_entry_and_a_code_is_a_usage_error() -> None:
    with pytest.raises(DersError):
        evaluate(
            Programming("icu-adult", drug="fentanyl-50", drug_code=("gtin", "09521234543213")), library()
        )


@pytest.mark.hazard("HAZ-010")
def test_basic_infusion_follows_the_care_area_policy() -> None:
    allowed = evaluate(Programming("ward-adult", rate=q("100 mL/h"), vtbi=q("1000 mL")), library())
    assert allowed.verdict is Verdict.PASS
    assert allowed.check("drug") is not None
    drug = allowed.check("drug")
    assert drug is not None
    assert drug.code is Code.BASIC_INFUSION
    too_fast = evaluate(Programming("ward-adult", rate=q("300 mL/h")), library()).check("rate")
    assert too_fast is not None
    assert (too_fast.outcome, too_fast.limit) == (Outcome.HARD_HIGH, q("250 mL/h"))
    blocked = evaluate(Programming("maternity", rate=q("100 mL/h")), library())
    assert blocked.verdict is Verdict.BLOCKED
    a_dose = evaluate(Programming("ward-adult", dose_rate=q("5 mg/h")), library()).check("rate")
    assert a_dose is not None
    assert a_dose.code is Code.UNITS_MISMATCH


# -- bolus, loading dose, volume and container -------------------------------------------------


@pytest.mark.hazard("HAZ-002")
def test_bolus_checked_as_dose_and_as_volume() -> None:
    result = evaluate(fentanyl(bolus_dose=q("75 ug")), library())
    bolus, volume = result.check("bolus_dose"), result.check("bolus_volume")
    assert bolus is not None
    assert bolus.outcome is Outcome.SOFT_HIGH
    assert volume is not None
    assert volume.outcome is Outcome.WITHIN
    assert volume.value == q("1.5 mL")


@pytest.mark.hazard("HAZ-002")
def test_a_bolus_without_bolus_limits_cannot_be_checked() -> None:
    check = evaluate(noradrenaline(bolus_dose=q("10 ug")), library()).check("bolus_dose")
    assert check is not None
    assert (check.outcome, check.code) == (Outcome.NOT_CHECKABLE, Code.NO_LIMITS)


@pytest.mark.hazard("HAZ-002")
@pytest.mark.hazard("HAZ-020")
def test_a_bolus_larger_than_the_container_is_blocked() -> None:
    # 160 units/kg would be within no limit anyway; use heparin: 80 units/kg x 80 kg = 6400 units =
    # 128 mL, more than the 100 mL left in the bag.
    result = evaluate(
        Programming(
            "icu-adult",
            drug="heparin-50",
            concentration=q("50 [iU]/mL"),
            dose_rate=q("18 [iU]/kg/h"),
            bolus_dose=q("80 [iU]/kg"),
            weight=q("80 kg"),
            container_volume=q("100 mL"),
        ),
        library(),
    )
    container = [c for c in result.checks if c.code is Code.CONTAINER]
    assert result.verdict is Verdict.BLOCKED
    assert len(container) == 1
    assert container[0].parameter == "bolus_volume"
    assert (container[0].value, container[0].limit) == (q("128 mL"), q("100 mL"))


@pytest.mark.hazard("HAZ-020")
def test_vtbi_larger_than_the_container_is_blocked() -> None:
    result = evaluate(fentanyl(vtbi=q("50 mL"), container_volume=q("48 mL")), library())
    check = result.check("vtbi")
    assert check is not None
    assert check.code is Code.CONTAINER


@pytest.mark.hazard("HAZ-019")
def test_loading_dose_limits_and_volume() -> None:
    def magnesium(loading: str) -> Programming:
        return Programming(
            "maternity",
            drug="magnesium-40",
            concentration=q("40 mg/mL"),
            dose_rate=q("1 g/h"),
            loading_dose=q(loading),
        )

    ok = evaluate(magnesium("4 g"), library())
    volume = ok.check("loading_volume")
    assert ok.verdict is Verdict.PASS
    assert volume is not None
    assert volume.value == q("100 mL")
    soft = evaluate(magnesium("5 g"), library()).check("loading_dose")
    assert soft is not None
    assert soft.outcome is Outcome.SOFT_HIGH
    hard = evaluate(magnesium("8 g"), library()).check("loading_dose")
    assert hard is not None
    assert (hard.outcome, hard.limit) == (Outcome.HARD_HIGH, q("6 g"))


def test_vtbi_and_duration_limits() -> None:
    vtbi = evaluate(fentanyl(vtbi=q("60 mL")), library()).check("vtbi")
    assert vtbi is not None
    assert (vtbi.outcome, vtbi.limit) == (Outcome.HARD_HIGH, q("50 mL"))
    # Magnesium: 500 mL at 12.5 mL/h (0.5 g/h) lasts 40 h, past the 24 h hard maximum.
    slow = evaluate(
        Programming(
            "maternity",
            drug="magnesium-40",
            concentration=q("40 mg/mL"),
            dose_rate=q("0.5 g/h"),
            vtbi=q("500 mL"),
        ),
        library(),
    ).check("duration")
    assert slow is not None
    assert (slow.outcome, slow.limit) == (Outcome.HARD_HIGH, q("24 h"))


# -- rounding ----------------------------------------------------------------------------------


@pytest.mark.hazard("HAZ-012")
def test_a_rate_rounded_past_a_hard_limit_is_blocked() -> None:
    # 1 ug/kg/min (the hard maximum) for 73 kg at 80 ug/mL is exactly 54.75 mL/h; a pump with
    # 0.1 mL/h steps would run 54.8 mL/h, which delivers 1.0009 ug/kg/min: past the hard maximum.
    result = evaluate(
        noradrenaline(dose_rate=q("1 ug/kg/min"), weight=q("73 kg")),
        library(),
        rate_resolution=Decimal("0.1"),
    )
    rounding = [c for c in result.checks if c.code is Code.ROUNDING]
    assert result.verdict is Verdict.BLOCKED
    assert len(rounding) == 1
    assert "54.8 mL/h" in rounding[0].message
    fine = evaluate(noradrenaline(dose_rate=q("1 ug/kg/min"), weight=q("73 kg")), library())
    assert fine.verdict is Verdict.OVERRIDE_REQUIRED  # 54.75 at 0.01 steps is exact; only soft-high


def test_every_code_is_documented() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "ders.md").read_text(encoding="utf-8")
    missing = [c.value for c in Code if f"`{c.value}`" not in doc]
    assert not missing, f"codes not in docs/ders.md: {missing}"


# -- properties --------------------------------------------------------------------------------


def _limits_hold(result_drug: str, care_area: str, dose: Quantity, p: Programming) -> list[str]:
    """Every hard limit of the entry the programming used, checked independently of DERS."""
    lib = library()
    rules = lib.drugs[result_drug].care_areas[care_area]
    broken = []
    pairs = [
        (rules.dose, dose),
        (rules.bolus_dose, p.bolus_dose),
        (rules.weight, p.weight),
        (rules.vtbi, p.vtbi),
    ]
    for limits, value in pairs:
        if limits is None or value is None or (limits.hard_max is None and limits.hard_min is None):
            continue
        v = base_value(value)
        if limits.hard_max is not None and v > base_value(limits.hard_max):
            broken.append(f"{value} > {limits.hard_max}")
        if limits.hard_min is not None and v < base_value(limits.hard_min):
            broken.append(f"{value} < {limits.hard_min}")
    return broken


def _entries() -> list[tuple[str, str]]:
    return [
        (d.id, area)
        for d in library().doc.drugs
        for area in d.care_areas
        if d.concentration is None or not d.concentration.variable
    ]


@pytest.mark.hazard("HAZ-005")
@pytest.mark.hazard("HAZ-012")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entry=st.sampled_from(_entries()),
    factor=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(3), places=3),
    weight=st.decimals(min_value=Decimal(10), max_value=Decimal(300), places=1),
    bolus_factor=st.none() | st.decimals(min_value=Decimal("0.1"), max_value=Decimal(3), places=2),
    vtbi=st.none() | st.decimals(min_value=Decimal(1), max_value=Decimal(1500), places=0),
    override=st.booleans(),
    resolution=st.sampled_from([Decimal("0.01"), Decimal("0.1"), Decimal(1)]),
)
def test_whatever_passes_ders_is_within_every_hard_limit(
    entry: tuple[str, str],
    factor: Decimal,
    weight: Decimal,
    bolus_factor: Decimal | None,
    vtbi: Decimal | None,
    override: bool,
    resolution: Decimal,
) -> None:
    drug_id, area = entry
    drug = library().drugs[drug_id]
    rules = drug.care_areas[area]
    assert rules.dose is not None
    reference = rules.dose.hard_max or rules.dose.soft_max
    assert reference is not None
    dose = Quantity(reference.value * factor, reference.unit)
    conc = None
    if drug.concentration is not None and drug.concentration.amount and drug.concentration.volume:
        conc = Concentration(drug.concentration.amount, drug.concentration.volume)
    bolus = None
    if bolus_factor is not None and rules.bolus_dose is not None and rules.bolus_dose.hard_max is not None:
        bolus = Quantity(rules.bolus_dose.hard_max.value * bolus_factor, rules.bolus_dose.hard_max.unit)
    p = Programming(
        area,
        drug=drug_id,
        concentration=conc,
        dose_rate=dose,
        weight=Quantity(weight, "kg"),
        bolus_dose=bolus,
        vtbi=None if vtbi is None else Quantity(vtbi, "mL"),
    )
    overrides = [Override(name, "RN A. Nurse", REASON) for name in PARAMETERS] if override else []
    result = evaluate(p, library(), overrides=overrides, rate_resolution=resolution)
    if result.verdict is not Verdict.PASS:
        return
    assert not _limits_hold(drug_id, area, dose, p)
    assert result.rate_ml_h is not None
    # The rate actually programmed delivers a dose within the hard limits too.
    delivered = convert(result.rate_ml_h, drug.dose_unit, concentration=conc, weight=Quantity(weight, "kg"))
    assert not _limits_hold(drug_id, area, delivered, p)


_UNITS = sorted(known_units())
_any_quantity = st.builds(
    Quantity,
    st.decimals(
        allow_nan=False, allow_infinity=False, min_value=Decimal("-1E6"), max_value=Decimal("1E9"), places=4
    ),
    st.sampled_from(_UNITS),
)
_maybe = st.none() | _any_quantity


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    area=st.sampled_from(["icu-adult", "ward-adult", "maternity", "theatre"]),
    drug=st.none() | st.sampled_from([*library().drugs, "nonexistent"]),
    code=st.none()
    | st.tuples(st.sampled_from(["gtin", "rxnorm", "ndc"]), st.sampled_from(["4337", "09521234543213", "0"])),
    values=st.tuples(*[_maybe] * 11),
    confirmed=st.booleans(),
    overrides=st.lists(
        st.builds(Override, st.sampled_from(PARAMETERS), st.text(max_size=5), st.sampled_from([REASON, "x"])),
        max_size=3,
    ),
)
def test_no_input_makes_the_evaluator_raise(
    area: str,
    drug: str | None,
    code: tuple[str, str] | None,
    values: tuple[Quantity | None, ...],
    confirmed: bool,
    overrides: list[Override],
) -> None:
    conc, dose, rate, vtbi, duration, bolus, bolus_rate, loading, weight, bsa, container = values
    p = Programming(
        area,
        drug=drug,
        drug_code=None if drug is not None else code,
        concentration=conc,
        dose_rate=dose,
        rate=rate,
        vtbi=vtbi,
        duration=duration,
        bolus_dose=bolus,
        bolus_rate=bolus_rate,
        loading_dose=loading,
        weight=weight,
        bsa=bsa,
        container_volume=container,
        concentration_confirmed=confirmed,
    )
    result = evaluate(p, library(), overrides=overrides)  # must not raise
    assert result.checks, "every evaluation reports at least one check"
    if result.verdict is Verdict.PASS:
        assert all(not c.blocks for c in result.checks)
        assert result.rate_ml_h is not None
    if result.verdict is Verdict.BLOCKED:
        assert result.rate_ml_h is None


@pytest.mark.parametrize(
    ("programming", "overrides"),
    [
        (fentanyl(), []),
        (fentanyl(dose_rate=q("250 ug/h")), [Override("dose", "RN A. Nurse", REASON)]),
        (fentanyl(dose_rate=q("250 ug/h"), vtbi=q("10 mL")), [Override("dose", "", REASON)]),
        (fentanyl(dose_rate=q("350 ug/h")), [Override("dose", "Dr B", REASON)]),
        (fentanyl(concentration=q("10 ug/mL")), []),
        (noradrenaline(weight=None), []),
        (noradrenaline(), []),
    ],
)
def test_the_audit_payload_fits_the_published_event_schema(
    programming: Programming, overrides: list[Override]
) -> None:
    # What ders.result events carry (docs/schema/events-1.schema.json), for every kind of verdict.
    result = evaluate(programming, library(), overrides=overrides)
    assert payload_problem(EventType.DERS_RESULT, result.as_event()) is None
