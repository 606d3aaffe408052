"""Reconciliation of order, scanned container and programming (gateway/reconcile.py).

The drug library is the example one (gateway/examples/drug-library.example.toml: fentanyl 2500
microgram in 50 mL, GTIN 09521234543213, RxNorm 4337). Scans use the vectors of
../shared/reference/barcodes.md: M1 (a drug pack, GTIN 09521234543213, expiry 2027-12-31, lot
ABC123, serial SN0001) and E1 (the same GTIN from a linear EAN-13, 13 digits). The incidents are
those of tests/test_fentanyl_incidents.py (HSIB fentanyl investigation, DESIGN.md "Why it exists"),
seen here from the reconciliation side. Codes: the IHE PIV application error codes where one fits
(../shared/reference/ihe-pcd.md: 9009, 9010, 9011, 9012, 9019) and PGW-2xx (the module docstring).
"""

from __future__ import annotations

import dataclasses
import tomllib
from datetime import date
from decimal import Decimal, localcontext
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.events import EventType, payload_problem
from pumpgw.gateway.library import Library, load_document, parse_library
from pumpgw.gateway.orders import Drug, Order, OrderSource, OrderStep
from pumpgw.gateway.quantity import Quantity
from pumpgw.gateway.reconcile import (
    CHECKS,
    Code,
    ContainerFacts,
    ContainerRefused,
    ContainerSource,
    Outcome,
    Planned,
    ReconCheck,
    ReconcileError,
    ReconcilePolicy,
    Reconciliation,
    container_from_gtin,
    container_from_label,
    library_code_system,
    reconcile,
)
from pumpgw.gateway.scan_types import LabelScan, MedicationScan

EXAMPLE = Path(__file__).parents[1] / "gateway" / "examples" / "drug-library.example.toml"
M1 = MedicationScan(
    raw="]d201095212345432131727123110ABC123\x1d21SN0001",
    gtin="09521234543213",
    expiry=date(2027, 12, 31),
    lot="ABC123",
    serial="SN0001",
)
FENTANYL_10_GTIN = "09521234500018"
PATIENT = "123456789012345675"  # the GSRN of barcodes.md W1
DEFAULT = ReconcilePolicy()


@cache
def library() -> Library:
    return parse_library(EXAMPLE.read_bytes(), str(EXAMPLE))


def variant(change: Any) -> Library:
    """The example library with ``change(data)`` applied to its parsed document."""
    data = tomllib.loads(EXAMPLE.read_text("utf-8"), parse_float=Decimal)
    change(data)
    return load_document(data, "variant")


def drug_data(data: dict[str, Any], drug_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in data["drugs"] if d["id"] == drug_id)
    return found


def q(text: str) -> Quantity:
    return Quantity.parse(text)


def conc(amount: str, volume: str) -> Concentration:
    return Concentration(q(amount), q(volume))


def fentanyl_order(**kw: Any) -> Order:
    """A fentanyl 50 microgram/mL order that gives every value, so that each check compares two."""
    base: dict[str, Any] = {
        "order_id": "ORD-1",
        "source": OrderSource.HL7,
        "patient_id": PATIENT,
        "drug": Drug("4337", "rxnorm", "fentanyl"),
        "concentration": conc("2500 ug", "50 mL"),
        "container_volume": q("50 mL"),
        "dose_rate": q("50 ug/h"),
        "rate": q("1 mL/h"),
        "dose": q("50 ug"),
        "vtbi": q("48 mL"),
        "duration": q("48 h"),
        "route": "IV",
        "weight": q("70 kg"),
        "pump_id": "PUMP-1",
        "channel": "1",
    }
    base.update(kw)
    return Order(**base)


def fentanyl_plan(**kw: Any) -> Planned:
    """The programming that is exactly :func:`fentanyl_order` on pump PUMP-1 channel 1."""
    base: dict[str, Any] = {
        "pump_id": "PUMP-1",
        "channel": "1",
        "drug": library().drugs["fentanyl-50"],
        "concentration": q("50 ug/mL"),
        "dose_rate": q("50 ug/h"),
        "rate": q("1 mL/h"),
        "bolus": q("50 ug"),
        "vtbi": q("48 mL"),
        "duration": q("48 h"),
        "route": "IV",
        "weight": q("70 kg"),
    }
    base.update(kw)
    return Planned(**base)


def gtin_container(scan: MedicationScan = M1, lib: Library | None = None) -> ContainerFacts:
    found = container_from_gtin(scan, lib or library())
    assert isinstance(found, ContainerFacts), found
    return found


def run(
    order: Order | None = None,
    container: ContainerFacts | None = None,
    planned: Planned | None = None,
    *,
    scanned: str = PATIENT,
    pump_patient: str | None = PATIENT,
    policy: ReconcilePolicy = DEFAULT,
) -> Reconciliation:
    result = reconcile(
        order or fentanyl_order(),
        container or gtin_container(),
        planned or fentanyl_plan(),
        scanned_patient=scanned,
        pump_patient=pump_patient,
        policy=policy,
    )
    assert payload_problem(EventType.RECONCILIATION, result.to_payload()) is None
    return result


def failed(result: Reconciliation) -> list[str]:
    return [c.check for c in result.failures()]


# -- everything agrees ----------------------------------------------------------------------------


def test_order_container_and_programming_that_agree_pass_every_check() -> None:
    result = run()
    assert result.ok, [c.detail for c in result.failures()]
    assert tuple(c.check for c in result.checks) == CHECKS
    assert all((c.outcome, c.code) == (Outcome.MATCH, Code.MATCH) for c in result.checks)
    payload = result.to_payload()
    assert payload["verdict"] == "matched"
    concentration = result.check("concentration")
    assert concentration.expected == "2500 ug in 50 mL"
    assert concentration.actual == "container: 2500 ug in 50 mL; to program: 50 ug/mL"
    assert "2500 microgram in 50 mL (50 microgram/mL)" in concentration.detail


def test_m1_pack_resolves_to_its_library_entry_with_concentration_and_volume() -> None:
    """barcodes.md M1: GTIN 09521234543213 with expiry, lot and serial."""
    container = gtin_container()
    assert container.source is ContainerSource.GTIN
    assert container.entry is not None
    assert container.entry.id == "fentanyl-50"
    assert container.concentration == conc("2500 ug", "50 mL")
    assert container.volume == q("50 mL")
    assert (container.lot, container.expiry, container.serial) == ("ABC123", date(2027, 12, 31), "SN0001")
    assert "fentaNYL 50 microgram/mL" in container.description


# -- the fentanyl incidents ----------------------------------------------------------------------


@pytest.mark.hazard("HAZ-001")
def test_incident_wrong_syringe_50_microgram_per_ml_for_a_10_microgram_per_ml_order() -> None:
    """The container scanned is the 50 microgram/mL syringe; the order (and the programming taken
    from it) is 10 microgram/mL: every dose would be five times the one intended."""
    order = fentanyl_order(concentration=conc("500 ug", "50 mL"))
    planned = fentanyl_plan(drug=library().drugs["fentanyl-10"], concentration=q("10 ug/mL"))
    result = run(order, gtin_container(), planned)
    assert not result.ok
    check = result.check("concentration")
    assert (check.outcome, check.code) == (Outcome.MISMATCH, Code.CONCENTRATION_MISMATCH)
    assert check.expected == "500 ug in 50 mL"
    assert check.actual is not None
    assert "2500 ug in 50 mL" in check.actual
    assert "500 microgram in 50 mL (10 microgram/mL)" in check.detail
    assert "2500 microgram in 50 mL (50 microgram/mL)" in check.detail
    assert check.detail.endswith("use the container the order is for, or have the order corrected.")
    # The entry to program is not the container's either: a second, independent stop.
    assert result.check("drug").code is Code.DRUG_MISMATCH


@pytest.mark.hazard("HAZ-001")
def test_incident_1_concentration_programmed_fifty_times_too_low() -> None:
    """The pump is told 1 microgram/mL for the 50 microgram/mL syringe (test_fentanyl_incidents.py
    incident 1): the order and the container agree, the programming does not."""
    result = run(planned=fentanyl_plan(concentration=q("1 ug/mL")))
    assert failed(result) == ["concentration"]
    check = result.check("concentration")
    assert check.code is Code.CONCENTRATION_MISMATCH
    assert check.actual == "container: 2500 ug in 50 mL; to program: 1 ug/mL"
    assert "the concentration to program is 1 microgram/mL" in check.detail
    assert check.detail.endswith("Do not program this: program the ordered concentration.")
    assert "2500 microgram in 50 mL (50 microgram/mL)" in check.detail


@pytest.mark.hazard("HAZ-002")
@pytest.mark.hazard("HAZ-008")
def test_incident_2_bolus_keyed_as_a_volume_is_a_units_mismatch() -> None:
    """The intended 50 microgram bolus is keyed as 50 mL: the whole syringe."""
    result = run(planned=fentanyl_plan(bolus=q("50 mL")))
    assert failed(result) == ["bolus"]
    check = result.check("bolus")
    assert (check.outcome, check.code) == (Outcome.MISMATCH, Code.UNITS_MISMATCH)
    assert (check.expected, check.actual) == ("50 ug", "50 mL")
    assert "50 microgram" in check.detail
    assert "50 mL" in check.detail


@pytest.mark.hazard("HAZ-010")
def test_incident_3_library_bypassed_with_a_basic_infusion_cannot_be_verified() -> None:
    """A basic infusion (no library entry) with a 50 mL bolus from the fentanyl syringe."""
    result = run(planned=fentanyl_plan(drug=None, bolus=q("50 mL")))
    drug = result.check("drug")
    assert (drug.outcome, drug.code) == (Outcome.NOT_CHECKABLE, Code.DRUG_UNVERIFIABLE)
    assert "basic infusion" in drug.detail
    assert result.check("bolus").code is Code.UNITS_MISMATCH
    assert not result.ok


def test_the_intended_programming_passes() -> None:
    # The control must not stop the right thing: 50 microgram from the 50 microgram/mL syringe.
    result = run()
    assert result.ok
    assert "the bolus (1 mL)" in result.check("container").detail


# -- each check, failing alone --------------------------------------------------------------------


def _multistep(order: Order) -> Order:
    return dataclasses.replace(order, later_steps=(OrderStep(2, dose_rate=q("25 ug/h")),))


# (check, what to change, outcome, code): each case changes one thing and only that check fails.
ALONE: list[tuple[str, dict[str, Any], Outcome, Code]] = [
    ("patient", {"scanned": "999"}, Outcome.MISMATCH, Code.PATIENT_MISMATCH),
    ("patient", {"pump_patient": "999"}, Outcome.MISMATCH, Code.PATIENT_MISMATCH),
    ("patient", {"scanned": " "}, Outcome.NOT_CHECKABLE, Code.PATIENT_MISMATCH),
    ("pump", {"order": {"pump_id": "PUMP-2"}}, Outcome.MISMATCH, Code.PUMP_MISMATCH),
    ("pump", {"order": {"channel": "2"}}, Outcome.MISMATCH, Code.PUMP_MISMATCH),
    ("drug", {"order": {"drug": Drug("7052", "rxnorm", "morphine")}}, Outcome.MISMATCH, Code.DRUG_MISMATCH),
    (
        "drug",
        {"order": {"drug": Drug("4337", None, "fentanyl")}},
        Outcome.NOT_CHECKABLE,
        Code.DRUG_UNVERIFIABLE,
    ),
    (
        "concentration",
        {"plan": {"concentration": q("10 ug/mL")}},
        Outcome.MISMATCH,
        Code.CONCENTRATION_MISMATCH,
    ),
    ("concentration", {"plan": {"concentration": None}}, Outcome.NOT_CHECKABLE, Code.VALUE_UNKNOWN),
    ("concentration", {"order": {"concentration": None}}, Outcome.NOT_CHECKABLE, Code.VALUE_UNKNOWN),
    ("dose", {"plan": {"dose_rate": q("60 ug/h")}}, Outcome.MISMATCH, Code.DIFFERS),
    ("dose", {"plan": {"dose_rate": q("50 ug/kg/h")}}, Outcome.MISMATCH, Code.UNITS_MISMATCH),
    ("rate", {"plan": {"rate": q("1.2 mL/h")}}, Outcome.MISMATCH, Code.DIFFERS),
    ("bolus", {"plan": {"bolus": q("60 ug")}}, Outcome.MISMATCH, Code.DIFFERS),
    ("bolus", {"plan": {"bolus": None}}, Outcome.MISMATCH, Code.NOT_PROGRAMMED),
    ("vtbi", {"plan": {"vtbi": q("40 mL")}}, Outcome.MISMATCH, Code.DIFFERS),
    ("vtbi", {"plan": {"vtbi": None}}, Outcome.MISMATCH, Code.NOT_PROGRAMMED),
    ("duration", {"plan": {"duration": q("40 h")}}, Outcome.MISMATCH, Code.DIFFERS),
    ("route", {"plan": {"route": "SC"}}, Outcome.MISMATCH, Code.ROUTE_MISMATCH),
    ("route", {"order": {"route": None}}, Outcome.MISMATCH, Code.NOT_ORDERED),
    ("weight", {"plan": {"weight": q("75 kg")}}, Outcome.MISMATCH, Code.WEIGHT_MISMATCH),
    (
        "container",
        {"order": {"vtbi": q("60 mL")}, "plan": {"vtbi": q("60 mL")}},
        Outcome.MISMATCH,
        Code.CONTAINER_TOO_SMALL,
    ),
]


@pytest.mark.parametrize(("check", "change", "outcome", "code"), ALONE)
def test_each_check_fails_alone(check: str, change: dict[str, Any], outcome: Outcome, code: Code) -> None:
    result = run(
        fentanyl_order(**change.get("order", {})),
        None,
        fentanyl_plan(**change.get("plan", {})),
        scanned=change.get("scanned", PATIENT),
        pump_patient=change.get("pump_patient", PATIENT),
    )
    assert failed(result) == [check], [c.detail for c in result.failures()]
    found = result.check(check)
    assert (found.outcome, found.code) == (outcome, code), found.detail
    assert not found.ok
    assert result.to_payload()["verdict"] == "mismatch"
    if found.outcome is Outcome.NOT_CHECKABLE:
        assert found.detail.startswith("Not checkable: ")


def test_every_check_has_a_case_that_fails_it_alone() -> None:
    assert {c for c, *_ in ALONE} == set(CHECKS)


def test_a_multistep_order_is_not_checkable() -> None:
    result = run(_multistep(fentanyl_order()))
    assert failed(result) == ["steps"]
    steps = result.check("steps")
    assert (steps.outcome, steps.code) == (Outcome.NOT_CHECKABLE, Code.MULTISTEP)
    assert steps.expected == "2 steps"


def test_a_patient_mismatch_names_both_patients() -> None:
    check = run(scanned="555").check("patient")
    assert check.expected == PATIENT
    assert check.actual == f"wristband 555; pump channel {PATIENT}"
    assert f"the order is for patient {PATIENT}, but the wristband is patient 555" in check.detail


def test_a_pump_channel_without_a_patient_is_not_a_mismatch() -> None:
    check = run(pump_patient=None).check("patient")
    assert check.ok
    assert check.actual == f"wristband {PATIENT}"


def test_a_channel_scanned_as_a_number_is_the_orders_channel_in_text() -> None:
    # PumpScan.channel is an int; PIV OBX-18 "PUMP-1/1" gives the text "1".
    assert run(planned=fentanyl_plan(channel=1)).check("pump").ok
    assert run(planned=fentanyl_plan(channel=2)).check("pump").code is Code.PUMP_MISMATCH


def test_an_order_naming_no_pump_runs_on_the_pump_scanned() -> None:
    result = run(fentanyl_order(pump_id=None, channel=None))
    assert result.check("pump").ok
    assert result.check("pump").actual == "PUMP-1/1"


# -- tolerance ------------------------------------------------------------------------------------

TEN = ReconcilePolicy(tolerance_percent=Decimal(10))


@pytest.mark.hazard("HAZ-005")
@pytest.mark.hazard("HAZ-006")
@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("dose_rate", "55 ug/h", True),  # exactly 10 % above 50 ug/h
        ("dose_rate", "55.0000000001 ug/h", False),
        ("dose_rate", "45 ug/h", True),  # exactly 10 % below
        ("dose_rate", "44.9999999999 ug/h", False),
        ("dose_rate", "0.055 mg/h", True),  # the same 55 ug/h, in mg
        ("dose_rate", "0.0550001 mg/h", False),
        ("rate", "1.1 mL/h", True),
        ("rate", "1.1001 mL/h", False),
        ("bolus", "55 ug", True),
        ("bolus", "55.001 ug", False),
        ("vtbi", "43.2 mL", True),
        ("vtbi", "43.1999 mL", False),
        ("duration", "52.8 h", True),
        ("duration", "3168 min", True),  # 52.8 h
        ("duration", "3168.001 min", False),
    ],
)
def test_tolerance_is_inclusive_at_the_limit_and_exact(field: str, value: str, ok: bool) -> None:
    check_name = {"dose_rate": "dose"}.get(field, field)
    result = run(planned=fentanyl_plan(**{field: q(value)}), policy=TEN)
    check = result.check(check_name)
    assert check.ok is ok, check.detail
    if not ok:
        assert check.code is Code.DIFFERS
        assert "within 10 %" in check.detail


@pytest.mark.parametrize(
    ("value", "ok"), [("50", True), ("50.000", True), ("50.0000000001", False), ("0.05", False)]
)
def test_the_default_tolerance_is_none(value: str, ok: bool) -> None:
    check = run(planned=fentanyl_plan(dose_rate=q(f"{value} ug/h"))).check("dose")
    assert check.ok is ok
    if not ok:
        assert "it must match exactly" in check.detail


@pytest.mark.hazard("HAZ-007")
@pytest.mark.parametrize(
    ("entered", "ok"),
    [
        ("73.5 kg", True),
        ("66.5 kg", True),
        ("73.51 kg", False),
        ("66499 g{body}", False),
        ("66500 g{body}", True),
    ],
)
def test_weight_tolerance_is_inclusive_at_the_limit(entered: str, ok: bool) -> None:
    policy = ReconcilePolicy(weight_tolerance_percent=Decimal(5))
    check = run(planned=fentanyl_plan(weight=q(entered)), policy=policy).check("weight")
    assert check.ok is ok, check.detail
    if not ok:
        assert check.code is Code.WEIGHT_MISMATCH
        assert check.detail.startswith("Weight mismatch: ")


def test_a_mismatch_says_by_how_much() -> None:
    check = run(planned=fentanyl_plan(dose_rate=q("60 ug/h"))).check("dose")
    assert check.detail == (
        "The dose to program, 60 microgram/h, is not the dose ordered, 50 microgram/h, 20 % off "
        "(it must match exactly). Program what was ordered, or have the order corrected."
    )
    assert (check.expected, check.actual) == ("50 ug/h", "60 ug/h")


# -- exact concentrations and units ---------------------------------------------------------------


@pytest.mark.hazard("HAZ-001")
@pytest.mark.parametrize(
    "ordered",
    [
        conc("2.5 mg", "50 mL"),
        conc("2500 ug", "50 mL"),
        conc("50 ug", "1 mL"),
        conc("0.05 mg", "1 mL"),
        conc("2500 ug", "0.05 L"),
    ],
)
@pytest.mark.parametrize(
    "programmed", [q("50 ug/mL"), q("0.05 mg/mL"), q("50000 ug/L"), conc("5 mg", "100 mL")]
)
def test_mg_and_ug_concentrations_compare_exactly(
    ordered: Concentration, programmed: Quantity | Concentration
) -> None:
    result = run(fentanyl_order(concentration=ordered), planned=fentanyl_plan(concentration=programmed))
    assert result.check("concentration").ok, result.check("concentration").detail


@pytest.mark.hazard("HAZ-001")
def test_a_concentration_that_differs_in_the_34th_digit_is_not_rounded_into_agreement() -> None:
    # 100 mg in 30 mL is 3.333... mg/mL; no decimal of any length is equal to it.
    lib = variant(
        lambda data: drug_data(data, "morphine-1").update(
            concentration={"amount": "100 mg", "volume": "30 mL"},
            codes={"gtin": ["09520123456788"], "rxnorm": ["7052"]},
        )
    )
    container = gtin_container(dataclasses.replace(M1, gtin="09520123456788"), lib)
    entry = lib.drugs["morphine-1"]
    order = fentanyl_order(
        drug=Drug("7052", "rxnorm", "morphine"),
        concentration=conc("100 mg", "30 mL"),
        dose_rate=q("1 mg/h"),
        rate=None,
        dose=None,
        vtbi=None,
        duration=None,
        container_volume=q("30 mL"),
    )
    plan = fentanyl_plan(drug=entry, dose_rate=q("1 mg/h"), rate=None, bolus=None, vtbi=None, duration=None)
    assert run(order, container, dataclasses.replace(plan, concentration=conc("10 mg", "3 mL"))).ok
    rounded = dataclasses.replace(plan, concentration=q("3.333333333333333333333333333333333 mg/mL"))
    check = run(order, container, rounded).check("concentration")
    assert check.code is Code.CONCENTRATION_MISMATCH
    assert "100 mg in 30 mL (3.3333… mg/mL)" in check.detail


@pytest.mark.hazard("HAZ-008")
def test_a_concentration_of_another_kind_is_a_units_mismatch() -> None:
    check = run(planned=fentanyl_plan(concentration=q("50 [iU]/mL"))).check("concentration")
    assert (check.outcome, check.code) == (Outcome.MISMATCH, Code.UNITS_MISMATCH)


@pytest.mark.hazard("HAZ-008")
def test_a_programmed_concentration_that_is_not_a_concentration_is_not_checkable() -> None:
    check = run(planned=fentanyl_plan(concentration=q("50 ug"))).check("concentration")
    assert (check.outcome, check.code) == (Outcome.NOT_CHECKABLE, Code.UNITS_MISMATCH)
    assert "50 ug" in check.detail


@pytest.mark.hazard("HAZ-008")
def test_a_per_kg_dose_programmed_as_an_absolute_one_is_a_units_mismatch() -> None:
    order, plan, container = noradrenaline()
    check = run(order, container, dataclasses.replace(plan, dose_rate=q("7 ug/min"))).check("dose")
    assert (check.outcome, check.code) == (Outcome.MISMATCH, Code.UNITS_MISMATCH)
    assert "(mass/body mass/time)" in check.detail
    assert "(mass/time)" in check.detail


# -- weight ---------------------------------------------------------------------------------------


def noradrenaline(**order_kw: Any) -> tuple[Order, Planned, ContainerFacts]:
    """Noradrenaline 4 mg in 50 mL, 0.1 microgram/kg/min: a per-kg dose."""
    base: dict[str, Any] = {
        "drug": Drug("7512", "rxnorm", "noradrenaline"),
        "concentration": conc("4 mg", "50 mL"),
        "dose_rate": q("0.1 ug/kg/min"),
        "rate": None,
        "dose": None,
        "vtbi": None,
        "duration": None,
    }
    base.update(order_kw)
    order = fentanyl_order(**base)
    plan = fentanyl_plan(
        drug=library().drugs["noradrenaline-80"],
        concentration=q("80 ug/mL"),
        dose_rate=q("0.1 ug/kg/min"),
        rate=None,
        bolus=None,
        vtbi=None,
        duration=None,
    )
    return order, plan, gtin_container(dataclasses.replace(M1, gtin="09521234500056"))


def test_the_noradrenaline_case_passes() -> None:
    order, plan, container = noradrenaline()
    assert run(order, container, plan).ok


@pytest.mark.hazard("HAZ-007")
@pytest.mark.parametrize(
    ("order_weight", "entered", "missing"),
    [
        (None, "70 kg", "the order gives no weight"),
        ("70 kg", None, "no weight was entered"),
        (None, None, "the order gives no weight and none was entered"),
    ],
)
def test_a_weight_missing_for_a_per_kg_dose_is_not_checkable(
    order_weight: str | None, entered: str | None, missing: str
) -> None:
    order, plan, container = noradrenaline(weight=None if order_weight is None else q(order_weight))
    plan = dataclasses.replace(plan, weight=None if entered is None else q(entered))
    result = run(order, container, plan)
    assert failed(result) == ["weight"]
    check = result.check("weight")
    assert (check.outcome, check.code) == (Outcome.NOT_CHECKABLE, Code.WEIGHT_MISSING)
    assert missing in check.detail


@pytest.mark.hazard("HAZ-007")
def test_a_per_kg_entry_needs_the_weight_even_when_programmed_in_ml_per_hour() -> None:
    # The dose is keyed in mL/h, but the library entry doses per kg: the weight is still needed.
    order, plan, container = noradrenaline(dose_rate=None, rate=q("5.25 mL/h"), weight=None)
    plan = dataclasses.replace(plan, dose_rate=None, rate=q("5.25 mL/h"))
    check = run(order, container, plan).check("weight")
    assert check.code is Code.WEIGHT_MISSING


def test_a_weight_on_one_side_is_not_needed_for_a_dose_that_is_not_per_kg() -> None:
    result = run(planned=fentanyl_plan(weight=None))
    assert result.ok
    assert "not needed" in result.check("weight").detail


@pytest.mark.hazard("HAZ-007")
def test_a_weight_in_grams_compares_exactly_with_kilograms() -> None:
    assert run(planned=fentanyl_plan(weight=q("70000 g{body}"))).check("weight").ok
    check = run(planned=fentanyl_plan(weight=q("7000 g{body}"))).check("weight")
    assert check.code is Code.WEIGHT_MISMATCH
    assert "90 % off" in check.detail


# -- container volume -----------------------------------------------------------------------------


@pytest.mark.hazard("HAZ-020")
def test_a_vtbi_above_the_container_volume_is_stopped() -> None:
    result = run(fentanyl_order(vtbi=q("50.01 mL")), planned=fentanyl_plan(vtbi=q("50.01 mL")))
    assert failed(result) == ["container"]
    check = result.check("container")
    assert check.code is Code.CONTAINER_TOO_SMALL
    assert (check.expected, check.actual) == ("50 mL", "VTBI 50.01 mL; bolus 1 mL")
    assert "The container holds 50 mL: the volume to be infused (50.01 mL) is more than that" in check.detail


@pytest.mark.hazard("HAZ-020")
def test_a_vtbi_equal_to_the_container_volume_passes() -> None:
    assert run(fentanyl_order(vtbi=q("0.05 L")), planned=fentanyl_plan(vtbi=q("50 mL"))).ok


@pytest.mark.hazard("HAZ-020")
@pytest.mark.hazard("HAZ-002")
def test_a_bolus_larger_than_the_container_is_stopped() -> None:
    # 3000 microgram at 50 microgram/mL is 60 mL, from a 50 mL syringe: as ordered, but impossible.
    result = run(fentanyl_order(dose=q("3 mg")), planned=fentanyl_plan(bolus=q("3000 ug")))
    assert failed(result) == ["container"]
    check = result.check("container")
    assert check.code is Code.CONTAINER_TOO_SMALL
    assert "the bolus (60 mL)" in check.detail


@pytest.mark.hazard("HAZ-020")
@pytest.mark.hazard("HAZ-007")
def test_a_per_kg_bolus_without_a_weight_cannot_be_shown_to_fit_the_container() -> None:
    lib = library()
    order = fentanyl_order(
        drug=Drug("8782", "rxnorm", "propofol"),
        concentration=conc("500 mg", "50 mL"),
        dose_rate=q("2 mg/kg/h"),
        rate=None,
        dose=q("1 mg/kg"),
        weight=None,
    )
    plan = fentanyl_plan(
        drug=lib.drugs["propofol-10"],
        concentration=q("10 mg/mL"),
        dose_rate=q("2 mg/kg/h"),
        rate=None,
        bolus=q("1 mg/kg"),
        weight=None,
    )
    container = gtin_container(dataclasses.replace(M1, gtin="09521234500032"))
    result = run(order, container, plan)
    assert failed(result) == ["weight", "container"]
    assert result.check("container").code is Code.WEIGHT_MISSING
    with_weight = run(
        dataclasses.replace(order, weight=q("70 kg")), container, dataclasses.replace(plan, weight=q("70 kg"))
    )
    assert with_weight.ok, [c.detail for c in with_weight.failures()]
    assert "the bolus (7 mL)" in with_weight.check("container").detail


def test_an_unknown_container_volume_is_not_checkable() -> None:
    label = LabelScan(raw="LBL", order_id="ORD-1")
    order = fentanyl_order(container_volume=None)
    container = container_from_label(label, order)
    assert isinstance(container, ContainerFacts)
    result = run(order, container)
    assert failed(result) == ["container"]
    check = result.check("container")
    assert (check.outcome, check.code) == (Outcome.NOT_CHECKABLE, Code.VALUE_UNKNOWN)


def test_nothing_to_bound_by_the_container_passes_and_says_so() -> None:
    result = run(fentanyl_order(vtbi=None, dose=None), planned=fentanyl_plan(vtbi=None, bolus=None))
    assert result.ok
    assert "runs until the container is empty" in result.check("container").detail


# -- drug codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "system",
    [
        "rxnorm",
        "RXNORM",
        "RxNorm",
        "http://www.nlm.nih.gov/research/umls/rxnorm",
        "urn:oid:2.16.840.1.113883.6.88",
        "2.16.840.1.113883.6.88",
    ],
)
def test_the_order_drug_matches_by_code_in_any_spelling_of_its_system(system: str) -> None:
    assert run(fentanyl_order(drug=Drug("4337", system, "fentanyl"))).check("drug").ok


@pytest.mark.parametrize("code", ["4338", "43370", "433", "04337", "4337a"])
def test_drug_codes_compare_exactly(code: str) -> None:
    check = run(fentanyl_order(drug=Drug(code, "rxnorm", "fentanyl"))).check("drug")
    assert (check.outcome, check.code) == (Outcome.MISMATCH, Code.DRUG_MISMATCH)
    assert f"rxnorm {code}" in check.detail
    assert "fentaNYL 50 microgram/mL" in check.detail


def test_the_system_uris_of_the_rig_emar_are_understood() -> None:
    from pumpgw.rig.emar_data import DRUG_SYSTEM_URIS

    for name, uri in DRUG_SYSTEM_URIS.items():
        assert library_code_system(uri) == name
        assert library_code_system(name) == name
    assert library_code_system("http://snomed.info/sct") is None
    assert library_code_system(None) is None


@pytest.mark.parametrize("gtin", ["09521234543213", "9521234543213"])
def test_an_order_coded_by_gtin_matches_with_or_without_the_leading_zero(gtin: str) -> None:
    assert run(fentanyl_order(drug=Drug(gtin, "https://www.gs1.org/gtin", "fentanyl"))).check("drug").ok


@pytest.mark.parametrize(
    ("drug", "words"),
    [
        (Drug("fentanyl", None, "fentanyl"), "names no code system"),  # a name alone is never enough
        (Drug("4337", "http://snomed.info/sct", "fentanyl"), "not one the drug library uses"),
        (Drug("4337", None, None), "names no code system"),
        (Drug("0409-9094-22", "ndc", "fentanyl"), "has no ndc code to compare it with"),
        (Drug("", "rxnorm", "fentanyl"), "gives no drug code"),
    ],
)
def test_a_drug_that_cannot_be_identified_by_code_is_unverifiable(drug: Drug, words: str) -> None:
    check = run(fentanyl_order(drug=drug)).check("drug")
    assert (check.outcome, check.code) == (Outcome.NOT_CHECKABLE, Code.DRUG_UNVERIFIABLE)
    assert words in check.detail


def test_codes_without_a_system_match_only_when_the_ward_says_which_system_they_are() -> None:
    order = fentanyl_order(drug=Drug("4337", None, "fentanyl"))
    assert not run(order).check("drug").ok
    assert run(order, policy=ReconcilePolicy(unqualified_code_system="rxnorm")).check("drug").ok
    assert run(order, policy=ReconcilePolicy(unqualified_code_system="local")).check("drug").code is (
        Code.DRUG_UNVERIFIABLE
    )


def test_the_entry_to_program_must_be_the_scanned_packs_entry() -> None:
    check = run(planned=fentanyl_plan(drug=library().drugs["fentanyl-10"])).check("drug")
    assert check.code is Code.DRUG_MISMATCH
    assert "fentanyl-10" in check.detail
    assert "Choose the container's entry" in check.detail


def test_the_entry_to_program_must_carry_the_order_code() -> None:
    # A pharmacy-prepared fentanyl syringe programmed with the morphine entry.
    order = fentanyl_order()
    container = container_from_label(LabelScan(raw="L", order_id="ORD-1"), order)
    assert isinstance(container, ContainerFacts)
    check = run(order, container, fentanyl_plan(drug=library().drugs["morphine-1"])).check("drug")
    assert check.code is Code.DRUG_MISMATCH
    assert "morPHINE" in check.detail


# -- containers: GTIN and pharmacy labels ---------------------------------------------------------


def test_an_unknown_gtin_is_refused_with_9010() -> None:
    refused = container_from_gtin(dataclasses.replace(M1, gtin="09520123456788"), library())
    assert isinstance(refused, ContainerRefused)
    assert refused.code is Code.NOT_IN_LIBRARY
    assert "09520123456788" in str(refused)
    assert "(code 9010)" in str(refused)


def test_a_gtin_13_in_the_library_is_found_from_its_14_digit_scan() -> None:
    """barcodes.md §6.3 and E1: GTIN-8/12/13 are left-padded to 14 digits for lookup."""
    lib = variant(lambda data: drug_data(data, "fentanyl-50")["codes"].update(gtin=["9521234543213"]))
    container = gtin_container(M1, lib)
    assert container.entry is not None
    assert container.entry.id == "fentanyl-50"
    assert container.identifier == "09521234543213"


def test_a_gtin_on_a_variable_concentration_entry_gives_no_concentration() -> None:
    lib = variant(
        lambda data: drug_data(data, "dobutamine-variable")["codes"].update(gtin=["09520123456788"])
    )
    container = gtin_container(dataclasses.replace(M1, gtin="09520123456788"), lib)
    assert (container.concentration, container.volume) == (None, None)
    order = fentanyl_order(
        drug=Drug("3616", "rxnorm", "dobutamine"),
        concentration=conc("250 mg", "50 mL"),
        dose_rate=q("5 ug/kg/min"),
        rate=None,
        dose=None,
        vtbi=None,
        duration=None,
    )
    plan = fentanyl_plan(
        drug=lib.drugs["dobutamine-variable"],
        concentration=q("5 mg/mL"),
        dose_rate=q("5 ug/kg/min"),
        rate=None,
        bolus=None,
        vtbi=None,
        duration=None,
    )
    result = run(order, container, plan)
    assert failed(result) == ["concentration"]
    check = result.check("concentration")
    assert check.code is Code.VALUE_UNKNOWN
    assert "variable concentration" in check.detail


def test_a_pharmacy_label_carries_the_orders_own_facts() -> None:
    order = fentanyl_order()
    container = container_from_label(LabelScan(raw="LBL-1", order_id="ORD-1", patient_id=PATIENT), order)
    assert isinstance(container, ContainerFacts)
    assert container.from_label
    assert (container.concentration, container.volume) == (order.concentration, order.container_volume)
    result = run(order, container)
    assert result.ok, [c.detail for c in result.failures()]
    assert "from the pharmacy label" in (result.check("concentration").actual or "")
    assert f"pharmacy label {PATIENT}" in (result.check("patient").actual or "")


def test_a_pharmacy_label_for_another_patient_is_a_patient_mismatch() -> None:
    order = fentanyl_order()
    container = container_from_label(LabelScan(raw="LBL-1", order_id="ORD-1", patient_id="777"), order)
    assert isinstance(container, ContainerFacts)
    result = run(order, container)
    assert failed(result) == ["patient"]
    assert "the pharmacy label is patient 777" in result.check("patient").detail


def test_a_pharmacy_label_for_another_order_is_a_drug_mismatch() -> None:
    other = fentanyl_order(order_id="ORD-2")
    container = container_from_label(LabelScan(raw="LBL-2", order_id="ORD-2"), other)
    assert isinstance(container, ContainerFacts)
    check = run(fentanyl_order(), container).check("drug")
    assert check.code is Code.LABEL_OTHER_ORDER
    assert "order ORD-2, not for this order (ORD-1)" in check.detail


def test_a_pharmacy_label_for_a_changed_order_with_another_drug_is_a_drug_mismatch() -> None:
    # The same order id, but the version of the order the label was made for named another drug.
    old = fentanyl_order(drug=Drug("7052", "rxnorm", "morphine"))
    container = container_from_label(LabelScan(raw="LBL-1", order_id="ORD-1"), old)
    assert isinstance(container, ContainerFacts)
    check = run(fentanyl_order(), container).check("drug")
    assert check.code is Code.DRUG_MISMATCH


def test_a_label_that_names_no_order_is_refused_and_a_wrong_pairing_raises() -> None:
    refused = container_from_label(LabelScan(raw="DISP-9", dispense_id="D9"), fentanyl_order())
    assert isinstance(refused, ContainerRefused)
    assert refused.code is Code.LABEL_WITHOUT_ORDER
    with pytest.raises(ReconcileError, match="names order 'ORD-9'"):
        container_from_label(LabelScan(raw="L", order_id="ORD-9"), fentanyl_order())


# -- values one side states and the other does not -----------------------------------------------


def test_a_vtbi_or_duration_the_order_does_not_state_may_be_programmed_by_default() -> None:
    result = run(fentanyl_order(vtbi=None, duration=None))
    assert result.ok
    assert "The order gives no VTBI; 48 mL is to be programmed" in result.check("vtbi").detail
    strict = ReconcilePolicy(not_ordered_ok=frozenset())
    result = run(fentanyl_order(vtbi=None, duration=None), policy=strict)
    assert failed(result) == ["vtbi", "duration"]
    assert {c.code for c in result.failures()} == {Code.NOT_ORDERED}


def test_a_route_the_order_does_not_state_fails_unless_the_policy_allows_it() -> None:
    assert run(fentanyl_order(route=None)).check("route").code is Code.NOT_ORDERED
    allowed = ReconcilePolicy(not_ordered_ok=frozenset({"route"}))
    assert run(fentanyl_order(route=None), policy=allowed).check("route").ok


def test_routes_compare_without_case() -> None:
    assert run(planned=fentanyl_plan(route=" iv ")).check("route").ok
    assert run(planned=fentanyl_plan(route=None)).check("route").code is Code.NOT_PROGRAMMED


def test_a_bolus_the_order_does_not_give_is_refused() -> None:
    check = run(fentanyl_order(dose=None)).check("bolus")
    assert (check.outcome, check.code) == (Outcome.MISMATCH, Code.NOT_ORDERED)


def test_a_rate_beside_the_dose_on_one_side_only_is_reported_not_compared() -> None:
    programmed_by_dose = run(planned=fentanyl_plan(rate=None))
    assert programmed_by_dose.ok
    assert "programmed by the dose" in programmed_by_dose.check("rate").detail
    derived = run(fentanyl_order(rate=None))
    assert derived.ok
    assert "comes from the dose" in derived.check("rate").detail


def test_an_order_by_flow_compares_flows() -> None:
    order = fentanyl_order(dose_rate=q("1 mL/h"), rate=None)
    plan = fentanyl_plan(dose_rate=None, rate=q("1 mL/h"))
    result = run(order, planned=plan)
    assert result.ok
    assert result.check("rate").expected == "1 mL/h"
    assert run(order, planned=dataclasses.replace(plan, rate=q("10 mL/h"))).check("rate").code is Code.DIFFERS
    # Programming a dose for an order by flow is not what was ordered.
    dosed = dataclasses.replace(plan, dose_rate=q("50 ug/h"))
    assert run(order, planned=dosed).check("dose").code is Code.NOT_ORDERED


def test_two_different_rates_on_one_side_are_not_checkable() -> None:
    check = run(planned=fentanyl_plan(dose_rate=q("2 mL/h"), rate=q("1 mL/h"))).check("rate")
    assert check.outcome is Outcome.NOT_CHECKABLE
    assert "two different rates" in check.detail


def test_an_order_with_nothing_to_program_is_not_checkable() -> None:
    order = fentanyl_order(dose_rate=None, rate=None, dose=None)
    check = run(order, planned=fentanyl_plan(dose_rate=None, rate=None, bolus=None)).check("dose")
    assert check.outcome is Outcome.NOT_CHECKABLE


def test_a_fluid_dosed_by_volume_needs_no_concentration() -> None:
    order = fentanyl_order(
        drug=Drug("09521234500131", "gtin", "Hartmann's"),
        concentration=None,
        container_volume=q("1000 mL"),
        dose_rate=q("125 mL/h"),
        rate=None,
        dose=None,
        vtbi=q("1000 mL"),
        duration=q("8 h"),
        weight=None,
    )
    plan = fentanyl_plan(
        drug=library().drugs["hartmanns-1000"],
        concentration=None,
        dose_rate=None,
        rate=q("125 mL/h"),
        bolus=None,
        vtbi=q("1000 mL"),
        duration=q("8 h"),
        weight=None,
    )
    # The library gives no volume for an entry without a concentration: a label gives the order's.
    container = container_from_label(LabelScan(raw="L", order_id="ORD-1"), order)
    assert isinstance(container, ContainerFacts)
    result = run(order, container, plan)
    assert result.ok, [c.detail for c in result.failures()]
    assert "dosed by volume" in result.check("concentration").detail
    pack = gtin_container(dataclasses.replace(M1, gtin="09521234500131"))
    assert pack.volume is None
    assert failed(run(order, pack, plan)) == ["container"]


# -- the policy and the payload -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"tolerance_percent": Decimal(-1)},
        {"tolerance_percent": Decimal(101)},
        {"tolerance_percent": Decimal("NaN")},
        {"tolerance_percent": 5},
        {"weight_tolerance_percent": 0.5},
        {"not_ordered_ok": frozenset({"dose"})},
        {"unqualified_code_system": "snomed"},
    ],
)
def test_a_policy_that_makes_no_sense_is_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ReconcileError):
        ReconcilePolicy(**kw)


def test_a_very_long_detail_still_fits_the_payload_with_its_code() -> None:
    check = ReconCheck("drug", Outcome.MISMATCH, Code.DRUG_MISMATCH, "x", "y", "z" * 5000)
    payload = Reconciliation("ORD-1", (check,)).to_payload()
    assert payload_problem(EventType.RECONCILIATION, payload) is None
    reason = payload["checks"][0]["reason"]  # type: ignore[index]
    assert len(reason) <= 4000
    assert reason.endswith("(code PGW-201)")


def test_the_payload_is_the_event_model_exactly() -> None:
    result = run(scanned="555", planned=fentanyl_plan(concentration=q("10 ug/mL")))
    payload = result.to_payload()
    assert payload["verdict"] == "mismatch"
    checks = payload["checks"]
    assert isinstance(checks, list)
    assert checks[0] == {
        "check": "patient",
        "outcome": "mismatch",
        "expected": PATIENT,
        "found": f"wristband 555; pump channel {PATIENT}",
        "reason": result.check("patient").detail + " (code 9012)",
    }
    assert [c["check"] for c in checks] == list(CHECKS)


def test_the_summary_lists_every_failed_check_with_its_code() -> None:
    assert run().summary() == ""
    summary = run(scanned="555", planned=fentanyl_plan(concentration=q("10 ug/mL"))).summary()
    assert summary.startswith("Wrong patient: ")
    assert "(code 9012) Concentration mismatch: " in summary
    assert summary.endswith("(code PGW-203)")


def test_an_empty_reconciliation_is_never_ok() -> None:
    assert not Reconciliation("ORD-1", ()).ok


# -- properties -----------------------------------------------------------------------------------

_FIXED = [
    d.id
    for d in library().doc.drugs
    if d.codes.gtin and d.concentration is not None and not d.concentration.variable
]


@st.composite
def agreeing(draw: st.DrawFn) -> tuple[Order, ContainerFacts, Planned]:
    """An order, its container (pack or pharmacy label) and the programming that is the order."""
    lib = library()
    entry = lib.drugs[draw(st.sampled_from(_FIXED))]
    spec = entry.concentration
    assert spec is not None
    amount, volume = spec.amount, spec.volume
    assert amount is not None
    assert volume is not None
    scale = draw(st.sampled_from([Decimal(1), Decimal(2), Decimal("0.5"), Decimal(10)]))
    with localcontext() as ctx:
        ctx.prec = 60
        ordered = Concentration(
            Quantity(amount.value * scale, amount.unit), Quantity(volume.value * scale, volume.unit)
        )
    amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(500), places=2)
    per_kg = "/kg" in entry.dose_unit or (entry.bolus_unit is not None and "/kg" in entry.bolus_unit)
    weight = (
        Quantity(draw(amounts.filter(lambda d: d > 1)), "kg")
        if per_kg
        else draw(st.none() | st.just(q("70 kg")))
    )
    dose_rate = Quantity(draw(amounts), entry.dose_unit)
    rate = draw(st.none() | amounts.map(lambda d: Quantity(d, "mL/h")))
    fraction = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("0.8"), places=2)
    vtbi = draw(st.none() | fraction.map(lambda f: Quantity(f * volume.value, volume.unit)))
    bolus = None
    if entry.bolus_unit is not None and "/kg" not in entry.bolus_unit:
        bolus = draw(st.none() | fraction.map(lambda f: Quantity(f * amount.value, amount.unit)))
    duration = draw(st.none() | amounts.map(lambda d: Quantity(d, "h")))
    route = draw(st.sampled_from(["IV", "SC", "EP"]))
    patient = draw(st.from_regex(r"[0-9A-Z]{1,18}", fullmatch=True))
    system = draw(st.sampled_from(["rxnorm", "RXNORM", "http://www.nlm.nih.gov/research/umls/rxnorm"]))
    order = Order(
        order_id=draw(st.from_regex(r"ORD-[0-9]{1,6}", fullmatch=True)),
        source=OrderSource.FHIR,
        patient_id=patient,
        drug=Drug(entry.codes.rxnorm[0], system, entry.name),
        concentration=ordered,
        container_volume=volume,
        dose_rate=dose_rate,
        rate=rate,
        dose=bolus,
        vtbi=vtbi,
        duration=duration,
        route=route,
        weight=weight,
    )
    if draw(st.booleans()):
        container = container_from_gtin(dataclasses.replace(M1, gtin=entry.codes.gtin[0]), lib)
    else:
        container = container_from_label(
            LabelScan(raw="L", order_id=order.order_id, patient_id=patient), order
        )
    assert isinstance(container, ContainerFacts)
    # The programming is the order, written in other units where that is exact.
    programmed = draw(
        st.sampled_from([ordered, Concentration.of(Quantity(ordered.per_ml(), f"{_base(ordered)}/mL"))])
    )
    planned = Planned(
        pump_id="PUMP-1",
        channel="1",
        drug=entry,
        concentration=programmed,
        dose_rate=dose_rate,
        rate=rate,
        bolus=bolus,
        vtbi=vtbi,
        duration=duration if duration is None or draw(st.booleans()) else duration.to("min"),
        route=route.lower() if draw(st.booleans()) else route,
        weight=weight,
    )
    return order, container, planned


def _base(c: Concentration) -> str:
    return {"mass": "mg", "units": "[iU]", "substance": "mmol", "equivalents": "meq"}[c.kind]


@given(agreeing())
def test_property_a_programming_equal_to_the_order_with_its_container_always_passes(
    case: tuple[Order, ContainerFacts, Planned],
) -> None:
    order, container, planned = case
    result = reconcile(
        order, container, planned, scanned_patient=order.patient_id, pump_patient=None, policy=DEFAULT
    )
    assert result.ok, [c.detail for c in result.failures()]
    assert payload_problem(EventType.RECONCILIATION, result.to_payload()) is None


_PERTURBABLE = {
    "dose_rate": "dose",
    "rate": "rate",
    "bolus": "bolus",
    "vtbi": "vtbi",
    "duration": "duration",
    "weight": "weight",
}


@given(
    agreeing(),
    st.sampled_from(sorted(_PERTURBABLE)),
    st.sampled_from([Decimal(0), Decimal("0.5"), Decimal(5), Decimal(10), Decimal(20)]),
    st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(50), places=4),
    st.booleans(),
)
def test_property_a_value_beyond_the_tolerance_never_passes_and_within_it_always_does(
    case: tuple[Order, ContainerFacts, Planned], field: str, tolerance: Decimal, beyond: Decimal, up: bool
) -> None:
    order, container, planned = case
    value: Quantity | None = getattr(planned, field)
    if value is None or value.value == 0:
        return
    policy = ReconcilePolicy(tolerance_percent=tolerance, weight_tolerance_percent=tolerance)
    with localcontext() as ctx:
        ctx.prec = 80
        over = (tolerance + beyond) / 100
        edge = tolerance / 100
        outside = value.value * (1 + over if up else 1 - min(over, Decimal("0.99")))
        at_edge = value.value * (1 + edge if up else 1 - edge)
    check = _PERTURBABLE[field]
    for new, expect_ok in ((outside, False), (at_edge, True)):
        change: dict[str, Any] = {field: Quantity(new, value.unit)}
        changed = dataclasses.replace(planned, **change)
        result = reconcile(
            order, container, changed, scanned_patient=order.patient_id, pump_patient=None, policy=policy
        )
        assert result.check(check).ok is expect_ok, result.check(check).detail
        if not expect_ok:
            assert not result.ok
        assert payload_problem(EventType.RECONCILIATION, result.to_payload()) is None


@pytest.mark.hazard("HAZ-001")
@given(agreeing(), st.sampled_from(_FIXED))
def test_property_a_container_of_another_concentration_never_passes(
    case: tuple[Order, ContainerFacts, Planned], other: str
) -> None:
    order, _, planned = case
    entry = library().drugs[other]
    container = gtin_container(dataclasses.replace(M1, gtin=entry.codes.gtin[0]))
    ordered, theirs = order.concentration, container.concentration
    assert ordered is not None
    assert theirs is not None
    assert planned.drug is not None
    result = reconcile(
        order, container, planned, scanned_patient=order.patient_id, pump_patient=None, policy=DEFAULT
    )
    if ordered.kind != theirs.kind or ordered.compare(theirs) != 0:
        assert not result.check("concentration").ok
        assert not result.ok
    else:
        assert result.check("concentration").ok
    if entry.id != planned.drug.id:
        assert not result.check("drug").ok
