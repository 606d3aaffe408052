"""FHIR R4 MedicationRequest → Order (fhir/orders.py): the R4 example medrx0336 as a golden vector,
named mutations of it, and a property test of random edits.

Golden vector: /work/shared/reference/fhir-examples/
r4_MedicationRequest_medrx0336_dopamine_400mg_500mL_D5W_4mcg_kg_min_rateQuantity.json (HL7 FHIR
R4 4.0.1 example ``medicationrequest0336.json``; SOURCES.md: dopamine 400 mg in 500 mL D5W,
4 ug/kg/min, duration 33.33 h, the rateQuantity has unit and system but no code).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pumpgw.fhir.orders import (
    UNIT_ALIASES,
    fhir_quantity,
    medication_request_to_order,
    operation_outcome,
    ratio_rate,
)
from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.orders import (
    Drug,
    Order,
    OrderPolicy,
    OrderProblem,
    OrderRefused,
    OrderSource,
    check_order,
)
from pumpgw.gateway.quantity import Quantity, known_units

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "fhir-examples"
if not EXAMPLES.is_dir():  # the shared reference sits beside the checkout
    EXAMPLES = Path("/work/shared/reference/fhir-examples")
DOPAMINE = EXAMPLES / "r4_MedicationRequest_medrx0336_dopamine_400mg_500mL_D5W_4mcg_kg_min_rateQuantity.json"
MR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
HOSPITAL_MRN = "urn:oid:2.16.840.1.113883.19.5"
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pat1",
    "identifier": [
        {"type": MR, "system": HOSPITAL_MRN, "value": "MRN-1"},
        {"system": "urn:oid:2.16.840.1.113883.2.4.6.3", "value": "999911120"},  # a national number
    ],
    "name": [{"use": "official", "family": "Duck", "given": ["Donald"]}],
}
RATE = "MedicationRequest.dosageInstruction[0].doseAndRate[0].rateQuantity"
INGREDIENT = "MedicationRequest.contained[0].ingredient"


def dopamine() -> dict[str, Any]:
    request: dict[str, Any] = json.loads(DOPAMINE.read_text(), parse_float=Decimal)
    return request


def edited(edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    request = dopamine()
    edit(request)
    return request


def refused(request: dict[str, Any], **kwargs: Any) -> list[OrderProblem]:
    kwargs.setdefault("patient", PATIENT)
    with pytest.raises(OrderRefused) as caught:
        medication_request_to_order(request, **kwargs)
    assert caught.value.problems
    return list(caught.value.problems)


def only(problems: list[OrderProblem]) -> OrderProblem:
    assert len(problems) == 1, problems
    return problems[0]


def rate_entry(request: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = request["dosageInstruction"][0]["doseAndRate"][0]
    return entry


# -- the golden vector ---------------------------------------------------------------------------


def test_the_r4_dopamine_example_maps_to_the_order_it_states() -> None:
    """medrx0336: dopamine 400 mg in 500 mL D5W at 4 ug/kg/min for 33.33 h, IV."""
    order = medication_request_to_order(
        dopamine(), patient=PATIENT, received_from="https://emar.example/fhir/MedicationRequest/medrx0336"
    )
    assert order == Order(
        order_id="12345689",  # the identifier with a system, not the resource id
        source=OrderSource.FHIR,
        patient_id="MRN-1",  # the Patient's MR identifier: what the wristband carries
        drug=Drug(code="1114879", system="http://www.nlm.nih.gov/research/umls/rxnorm", name="Dopamine"),
        status="completed",
        concentration=Concentration(Quantity.of(400, "mg"), Quantity.of(500, "mL")),
        container_volume=None,  # the example does not say how big the bag is
        dose_rate=Quantity.of(4, "ug/kg/min"),  # unit + system, no code: read from unit
        duration=Quantity(Decimal("33.33"), "h"),
        route="Intravenous route (qualifier value)",
        weight=None,  # supportingInformation is Observation/example: not contained, not given
        ordered_at=None,  # authoredOn 2015-01-15: a day, not a time
        ordered_by="Patrick Pump (Practitioner/f007)",
        patient_name="Donald Duck",
        received_from="https://emar.example/fhir/MedicationRequest/medrx0336",
    )
    assert order.concentration is not None
    assert order.concentration.per_ml() == Decimal("0.8")
    assert str(order.duration) == "33.33 h"


def test_the_example_passes_check_order_only_for_what_it_really_lacks() -> None:
    order = medication_request_to_order(dopamine(), patient=PATIENT)
    problems = check_order(order, now=datetime(2015, 1, 15, 12, tzinfo=UTC), policy=OrderPolicy(), pumps={})
    assert {p.element for p in problems} == {"status", "ordered_at"}  # completed; no time of day


def test_the_subject_s_identifier_is_enough_without_a_patient() -> None:
    request = edited(
        lambda r: r.update(
            subject={"identifier": {"system": HOSPITAL_MRN, "value": "MRN-7"}, "display": "D. Duck"}
        )
    )
    order = medication_request_to_order(request)
    assert (order.patient_id, order.patient_name) == ("MRN-7", "D. Duck")


def test_the_wristband_system_when_configured_picks_the_identifier() -> None:
    patient = copy.deepcopy(PATIENT)
    del patient["identifier"][0]["type"]  # no type: only the configured system says which it is
    with pytest.raises(OrderRefused, match="no identifier typed MR or PI"):
        medication_request_to_order(dopamine(), patient=patient)
    order = medication_request_to_order(dopamine(), patient=patient, mrn_system=HOSPITAL_MRN)
    assert order.patient_id == "MRN-1"


# -- named mutations -----------------------------------------------------------------------------


def test_a_subject_that_is_only_a_reference_is_refused() -> None:
    problem = only(refused(dopamine(), patient=None))
    assert problem.element == "MedicationRequest.subject.reference"
    assert problem.code == "9012"
    assert "Patient/pat1" in problem.reason
    assert "wristband is matched against an identifier" in problem.reason


def test_a_missing_subject_is_refused() -> None:
    problem = only(refused(edited(lambda r: r.pop("subject"))))
    assert (problem.element, problem.code) == ("MedicationRequest.subject", "101")


def test_a_patient_that_is_not_the_subject_is_refused() -> None:
    problem = only(refused(dopamine(), patient={**PATIENT, "id": "someone-else"}))
    assert (problem.element, problem.code) == ("MedicationRequest.subject", "9012")
    assert "someone-else" in problem.reason


def test_two_wristband_identifiers_are_ambiguous() -> None:
    patient = copy.deepcopy(PATIENT)
    patient["identifier"].append({"type": MR, "system": "urn:other", "value": "MRN-2"})
    problem = only(refused(dopamine(), patient=patient))
    assert problem.element == "Patient.identifier"
    assert "MRN-1, MRN-2" in problem.reason


def test_a_drug_without_a_code_is_refused() -> None:
    request = edited(
        lambda r: r["contained"][0]["ingredient"][0]["itemCodeableConcept"]["coding"][0].pop("code")
    )
    problem = only(refused(request))
    assert problem.element == f"{INGREDIENT}[0].itemCodeableConcept.coding"
    assert problem.code == "101"
    assert "never on a name" in problem.reason


def test_two_active_ingredients_with_a_strength_are_ambiguous() -> None:
    def both_active(r: dict[str, Any]) -> None:
        for ingredient in r["contained"][0]["ingredient"]:
            ingredient["isActive"] = True

    problem = only(refused(edited(both_active)))
    assert (problem.element, problem.code) == (INGREDIENT, "207")
    assert "2 drug ingredients have a strength (ingredient[0], ingredient[1])" in problem.reason


def test_without_the_diluent_table_the_example_is_ambiguous_until_marked() -> None:
    problem = only(refused(dopamine(), diluents=()))
    assert problem.element == INGREDIENT
    marked = edited(lambda r: r["contained"][0]["ingredient"][1].update(isActive=False))
    assert medication_request_to_order(marked, patient=PATIENT, diluents=()).concentration == Concentration(
        Quantity.of(400, "mg"), Quantity.of(500, "mL")
    )
    active = edited(lambda r: r["contained"][0]["ingredient"][0].update(isActive=True))
    assert medication_request_to_order(active, patient=PATIENT, diluents=()).drug.code == "1114879"


@pytest.mark.parametrize(
    ("quantity", "element", "code"),
    [
        ({"value": 4, "unit": "mcg/kg/minute", "system": "http://unitsofmeasure.org"}, f"{RATE}.unit", "103"),
        ({"value": 4, "code": "ug/kg/mn", "system": "http://unitsofmeasure.org"}, f"{RATE}.code", "103"),
        ({"value": 4, "code": "ug/kg/min"}, f"{RATE}.system", "101"),  # qty-3: a code needs its system
        ({"value": 4, "code": "258997004", "system": "http://snomed.info/sct"}, f"{RATE}.system", "103"),
        ({"value": 4, "unit": "mcg/kg/min", "code": "mg/kg/min", "system": "http://unitsofmeasure.org"}, f"{RATE}.unit", "207"),
        ({"value": 4, "unit": "mg", "system": "http://unitsofmeasure.org"}, f"{RATE}.unit", "102"),  # not a rate
        ({"value": 4}, f"{RATE}.code", "101"),
        ({"value": 0, "unit": "ug/kg/min"}, f"{RATE}.value", "102"),
        ({"value": 4, "comparator": "<", "unit": "ug/kg/min"}, f"{RATE}.comparator", "102"),
        ({"value": 4.5, "unit": "ug/kg/min"}, f"{RATE}.value", "102"),  # a float: not exact
    ],
    ids=["unknown-unit", "unknown-code", "code-without-system", "snomed-units", "unit-vs-code", "not-a-rate",
         "no-unit", "zero", "comparator", "float"],
)  # fmt: skip
def test_a_rate_whose_unit_or_value_cannot_be_read_exactly_is_refused(
    quantity: dict[str, Any], element: str, code: str
) -> None:
    problem = only(refused(edited(lambda r: rate_entry(r).update(rateQuantity=quantity))))
    assert (problem.element, problem.code) == (element, code)


def test_a_float_rate_says_how_to_read_the_json() -> None:
    problem = only(refused(edited(lambda r: rate_entry(r)["rateQuantity"].update(value=4.5))))
    assert "parse_float=Decimal" in problem.reason


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ({"value": Decimal("12.5"), "unit": "ml/h"}, Quantity(Decimal("12.5"), "mL/h")),
        ({"value": 12, "unit": "mL/hr"}, Quantity.of(12, "mL/h")),
        ({"value": 4, "code": "ml/h", "system": "http://unitsofmeasure.org"}, Quantity.of(4, "mL/h")),
        ({"value": 4, "unit": "mcg/kg/min", "code": "ug/kg/min", "system": "http://unitsofmeasure.org"},
         Quantity.of(4, "ug/kg/min")),
        ({"value": Decimal("0.50"), "unit": "[iU]/h"}, Quantity(Decimal("0.50"), "[iU]/h")),
    ],
    ids=["ml/h", "mL/hr", "ucum-ml", "mcg-shown", "units"],
)  # fmt: skip
def test_units_real_servers_send_are_read_through_the_alias_table(
    quantity: dict[str, Any], expected: Quantity
) -> None:
    order = medication_request_to_order(
        edited(lambda r: rate_entry(r).update(rateQuantity=quantity)), patient=PATIENT
    )
    ordered = ordered_rate(order)
    assert ordered == expected
    assert str(ordered.value) == str(expected.value)  # the precision is kept


def ordered_rate(order: Order) -> Quantity:
    """The rate as ordered: a plain flow is the order's ``rate`` (as PIV gives it), a dose rate its
    ``dose_rate``; never both."""
    assert (order.rate is None) != (order.dose_rate is None), (order.rate, order.dose_rate)
    rate = order.rate or order.dose_rate
    assert rate is not None
    assert (rate.dimension == "volume/time") == (order.rate is not None)
    return rate


def test_every_alias_names_a_unit_the_gateway_knows() -> None:
    assert set(UNIT_ALIASES.values()) <= known_units()
    assert not set(UNIT_ALIASES) & known_units()  # an alias never shadows a real code


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (("50", "mL", "1", "h"), Quantity.of(50, "mL/h")),  # the medadmin0309 rate
        (("100", "mL", "30", "min"), Quantity.of(200, "mL/h")),  # no exact mL/min: per hour
        (("5", "mg", "2", "h"), Quantity(Decimal("2.5"), "mg/h")),
        (("5", "ug/kg", "1", "min"), Quantity.of(5, "ug/kg/min")),
        (("24", "mL", "1", "d"), Quantity.of(1, "mL/h")),
    ],
)
def test_a_rate_ratio_is_converted_exactly(ratio: tuple[str, str, str, str], expected: Quantity) -> None:
    n, n_unit, d, d_unit = ratio
    rate = {
        "numerator": {"value": Decimal(n), "unit": n_unit},
        "denominator": {"value": Decimal(d), "unit": d_unit},
    }

    def to_ratio(r: dict[str, Any]) -> None:
        del rate_entry(r)["rateQuantity"]
        rate_entry(r)["rateRatio"] = rate

    order = medication_request_to_order(edited(to_ratio), patient=PATIENT)
    assert ordered_rate(order) == expected
    assert ordered_rate(order).unit == expected.unit


@pytest.mark.parametrize(
    ("ratio", "element", "fragment"),
    [
        ({"numerator": {"value": 1, "unit": "mL"}, "denominator": {"value": 3, "unit": "h"}},
         "rateRatio", "not a rate the gateway can state exactly"),
        ({"numerator": {"value": 1, "unit": "mL"}, "denominator": {"value": 1, "unit": "mL"}},
         "rateRatio.denominator.code", "not a time"),
        ({"numerator": {"value": 1, "unit": "mL"}, "denominator": {"value": 0, "unit": "h"}},
         "rateRatio.denominator.value", "not above zero"),
        ({"numerator": {"value": 1, "unit": "mL"}}, "rateRatio.denominator", "a rate needs a time"),
    ],
    ids=["inexact", "not-time", "zero", "no-denominator"],
)  # fmt: skip
def test_a_rate_ratio_that_is_not_an_exact_rate_is_refused(
    ratio: dict[str, Any], element: str, fragment: str
) -> None:
    def to_ratio(r: dict[str, Any]) -> None:
        del rate_entry(r)["rateQuantity"]
        rate_entry(r)["rateRatio"] = ratio

    problem = only(refused(edited(to_ratio)))
    assert problem.element == f"MedicationRequest.dosageInstruction[0].doseAndRate[0].{element}"
    assert fragment in problem.reason


def test_two_different_rates_are_ambiguous_and_the_same_rate_twice_is_not() -> None:
    def second_rate(value: int) -> Callable[[dict[str, Any]], None]:
        def edit(r: dict[str, Any]) -> None:
            entries = r["dosageInstruction"][0]["doseAndRate"]
            entries.append(
                {
                    "type": {"coding": [{"code": "calculated"}]},
                    "rateQuantity": {"value": value, "unit": "ug/kg/min"},
                }
            )

        return edit

    problem = only(refused(edited(second_rate(5))))
    assert problem.element == "MedicationRequest.dosageInstruction[0].doseAndRate"
    assert "4 ug/kg/min (ordered), 5 ug/kg/min (calculated)" in problem.reason
    assert medication_request_to_order(edited(second_rate(4)), patient=PATIENT).dose_rate == Quantity.of(
        4, "ug/kg/min"
    )


def test_a_dose_rate_ordered_with_the_flow_it_comes_to_is_one_order() -> None:
    """ "ordered" 4 ug/kg/min with "calculated" 12 mL/h is a common form (found in review: refused
    as two rates); both are kept, as a PIV order carries both (RXG-15 and a flow). Two flows that
    differ are still ambiguous."""

    def with_flow(*values: int) -> Callable[[dict[str, Any]], None]:
        def edit(r: dict[str, Any]) -> None:
            for value in values:
                r["dosageInstruction"][0]["doseAndRate"].append(
                    {
                        "type": {"coding": [{"code": "calculated"}]},
                        "rateQuantity": {
                            "value": value,
                            "unit": "mL/h",
                            "system": "http://unitsofmeasure.org",
                            "code": "mL/h",
                        },
                    }
                )

        return edit

    order = medication_request_to_order(edited(with_flow(12)), patient=PATIENT)
    assert (order.dose_rate, order.rate) == (Quantity.of(4, "ug/kg/min"), Quantity.of(12, "mL/h"))
    problem = only(refused(edited(with_flow(12, 13))))
    assert "2 different rates" in problem.reason


def test_two_dosage_instructions_that_differ_are_ambiguous() -> None:
    def two(r: dict[str, Any]) -> None:
        other = copy.deepcopy(r["dosageInstruction"][0])
        other["timing"]["repeat"]["duration"] = 12
        r["dosageInstruction"].append(other)

    problem = only(refused(edited(two)))
    assert problem.element == "MedicationRequest.dosageInstruction"
    assert "for 33.33 h" in problem.reason
    assert "for 12 h" in problem.reason


@pytest.mark.parametrize(
    ("edit", "element", "code"),
    [
        (lambda r: r.update(intent="proposal"), "MedicationRequest.intent", "207"),
        (lambda r: r.update(doNotPerform=True), "MedicationRequest.doNotPerform", "207"),
        (lambda r: rate_entry(r).update(rateRange={"low": {"value": 2, "unit": "ug/kg/min"}}),
         "MedicationRequest.dosageInstruction[0].doseAndRate[0]", "102"),
        (lambda r: r["dosageInstruction"][0]["timing"]["repeat"].update(durationUnit="wk"),
         "MedicationRequest.dosageInstruction[0].timing.repeat.durationUnit", "102"),
        (lambda r: r["dosageInstruction"][0]["timing"]["repeat"].update(durationMax=40),
         "MedicationRequest.dosageInstruction[0].timing.repeat.durationMax", "207"),
        (lambda r: r.update(authoredOn="2015-01-15T10:00:00"), "MedicationRequest.authoredOn", "102"),
        (lambda r: r.update(medicationReference={"reference": "Medication/med0336"}),
         "MedicationRequest.medicationReference", "101"),
        (lambda r: r.update(medicationReference={"reference": "#nothing"}),
         "MedicationRequest.medicationReference.reference", "204"),
    ],
    ids=["proposal", "do-not-perform", "rate-and-range", "weeks", "duration-max", "time-without-offset",
         "medication-not-given", "dangling-contained"],
)  # fmt: skip
def test_what_is_not_one_clear_order_is_refused(
    edit: Callable[[dict[str, Any]], object], element: str, code: str
) -> None:
    problem = only(refused(edited(edit)))
    assert (problem.element, problem.code) == (element, code)


def test_a_range_is_refused_even_where_the_model_allows_it() -> None:
    def only_range(r: dict[str, Any]) -> None:
        del rate_entry(r)["rateQuantity"]
        rate_entry(r)["rateRange"] = {
            "low": {"value": 2, "unit": "ug/kg/min"},
            "high": {"value": 5, "unit": "ug/kg/min"},
        }

    problem = only(refused(edited(only_range)))
    assert problem.element == f"{RATE.rsplit('.', 1)[0]}.rateRange"
    assert "a rate range" in problem.reason


def test_every_problem_is_reported_at_once() -> None:
    def two_faults(r: dict[str, Any]) -> None:
        rate_entry(r)["rateQuantity"]["unit"] = "drops/min"
        r["intent"] = "plan"

    problems = refused(edited(two_faults), patient=None)
    assert {p.element for p in problems} == {
        f"{RATE}.unit",
        "MedicationRequest.intent",
        "MedicationRequest.subject.reference",
    }


def test_authored_on_with_an_offset_is_an_aware_time() -> None:
    order = medication_request_to_order(
        edited(lambda r: r.update(authoredOn="2015-01-15T22:03:00+01:00")), patient=PATIENT
    )
    assert order.ordered_at == datetime(2015, 1, 15, 22, 3, tzinfo=timezone(timedelta(hours=1)))


def test_a_duration_in_days_is_exact_hours() -> None:
    request = edited(
        lambda r: r["dosageInstruction"][0]["timing"]["repeat"].update(
            duration=Decimal("1.5"), durationUnit="d"
        )
    )
    assert medication_request_to_order(request, patient=PATIENT).duration == Quantity.of(36, "h")


# -- medication, container and weight ------------------------------------------------------------


def test_a_referenced_medication_is_read_when_given_and_must_be_the_one_named() -> None:
    request = dopamine()
    medication = request.pop("contained")[0]
    request["medicationReference"] = {"reference": "Medication/med0336"}
    medication["code"] = {
        "coding": [
            {
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": "1743862",
                "display": "dopamine 0.8 MG/ML in D5W",
            }
        ]
    }
    medication["amount"] = {
        "numerator": {"value": 500, "unit": "mL"},
        "denominator": {"value": 1, "unit": "{bag}"},
    }
    order = medication_request_to_order(request, medication=medication, patient=PATIENT)
    assert order.drug == Drug(
        "1743862", "http://www.nlm.nih.gov/research/umls/rxnorm", "dopamine 0.8 MG/ML in D5W"
    )
    assert order.container_volume == Quantity.of(500, "mL")
    assert order.concentration == Concentration(Quantity.of(400, "mg"), Quantity.of(500, "mL"))
    problem = only(refused(request, medication={**medication, "id": "med9"}))
    assert problem.element == "MedicationRequest.medicationReference.reference"
    request["dispenseRequest"] = {"quantity": {"value": 250, "unit": "mL"}}
    problem = only(refused(request, medication=medication))
    assert problem.element == "Medication.amount"
    assert "500 mL here but the dispense quantity says 250 mL" in problem.reason


def test_a_coded_medication_concept_has_no_concentration() -> None:
    def concept(r: dict[str, Any]) -> None:
        del r["medicationReference"], r["contained"]
        r["medicationCodeableConcept"] = {
            "coding": [{"system": "http://snomed.info/sct", "code": "412383006"}],
            "text": "Dopamine",
        }

    order = medication_request_to_order(edited(concept), patient=PATIENT)
    assert order.drug == Drug("412383006", "http://snomed.info/sct", "Dopamine")
    assert order.concentration is None


WEIGHT: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "example",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
    "subject": {"reference": "Patient/pat1"},
    "valueQuantity": {
        "value": Decimal("72.5"),
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    },
}


def test_the_example_s_weight_is_read_when_the_observation_is_given() -> None:
    order = medication_request_to_order(dopamine(), patient=PATIENT, supporting=[WEIGHT])
    assert order.weight == Quantity(Decimal("72.5"), "kg")


def test_a_contained_weight_is_read() -> None:
    def contained_weight(r: dict[str, Any]) -> None:
        r["contained"].append({**WEIGHT, "id": "w"})
        r["supportingInformation"] = [{"reference": "#w"}]

    assert medication_request_to_order(edited(contained_weight), patient=PATIENT).weight == Quantity(
        Decimal("72.5"), "kg"
    )


@pytest.mark.parametrize(
    ("change", "element", "fragment"),
    [
        ({"status": "preliminary"}, "Observation.status", "not final"),
        ({"valueQuantity": {"value": 185, "unit": "lbs", "system": "http://unitsofmeasure.org", "code": "[lb_av]"}},
         "Observation.valueQuantity.code", "neither one of the gateway's UCUM units"),
        ({"valueQuantity": {"value": 80, "unit": "g", "system": "http://unitsofmeasure.org", "code": "g"}},
         "Observation.valueQuantity.code", "not a body weight in kg"),
    ],
    ids=["preliminary", "pounds", "grams"],
)  # fmt: skip
def test_a_weight_that_cannot_be_used_to_dose_is_refused(
    change: dict[str, Any], element: str, fragment: str
) -> None:
    problem = only(refused(dopamine(), supporting=[{**WEIGHT, **change}]))
    assert problem.element == element
    assert fragment in problem.reason


# -- OperationOutcome ----------------------------------------------------------------------------


def test_refusals_become_a_valid_operation_outcome_naming_each_element() -> None:
    problems = refused(edited(lambda r: rate_entry(r)["rateQuantity"].update(unit="drops/min")), patient=None)
    oo = operation_outcome(problems)
    OperationOutcome.model_validate(oo)
    assert [i["expression"] for i in oo["issue"]] == [[p.element] for p in problems]
    by_code = {i["details"]["coding"][0]["code"]: i for i in oo["issue"]}
    assert by_code["103"]["code"] == "code-invalid"
    assert by_code["103"]["details"]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0357"
    assert by_code["9012"]["details"]["coding"][0]["system"] == "urn:pumpgw:piv-error"
    assert all(i["severity"] == "error" and i["diagnostics"] for i in oo["issue"])
    with pytest.raises(ValueError, match="at least one"):
        operation_outcome([])


def test_the_quantity_and_ratio_readers_are_usable_alone() -> None:
    assert fhir_quantity({"value": 5, "unit": "mcg/mL"}) == Quantity.of(5, "ug/mL")
    assert ratio_rate({"numerator": {"value": 50, "code": "mL", "system": "http://unitsofmeasure.org"},
                       "denominator": {"value": 1, "code": "h", "system": "http://unitsofmeasure.org"}}) == Quantity.of(50, "mL/h")  # fmt: skip
    with pytest.raises(OrderRefused, match=r"dose\.unit: 'drops' is neither"):
        fhir_quantity({"value": 5, "unit": "drops"}, "dose")


# -- property: random edits of the example -------------------------------------------------------


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*path, i))
    return found


PATHS = [p for p in _paths(dopamine()) if p[:1] != ("text",)]
UNITISH = ["mL/h", "ml/h", "mcg/kg/min", "ug/kg/min", "mg", "mL", "h", "d", "wk", "g", "kg", "[iU]/h"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
    st.decimals(allow_nan=False, allow_infinity=False, min_value=-10**6, max_value=10**6),
    st.text(max_size=12), st.sampled_from(UNITISH),
    st.sampled_from(["#med0336", "Patient/pat1", "http://unitsofmeasure.org", "active", "order", "2015-01-15T10:00:00Z"]),
)  # fmt: skip
VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(st.sampled_from(["value", "unit", "code", "system", "x"]), SCALARS, max_size=3)
)  # fmt: skip


def _apply(request: dict[str, Any], path: tuple[Any, ...], op: str, value: Any) -> None:
    parent: Any = request
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    elif op == "add" and isinstance(parent[last], dict):
        parent[last]["extraKey"] = value
    else:
        parent[last] = value


def _numbers(value: Any) -> set[Decimal]:
    if isinstance(value, dict):
        return set().union(*map(_numbers, value.values()))
    if isinstance(value, list):
        return set().union(*map(_numbers, value))
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return {Decimal(value)}
    return set()


def _strings(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*map(_strings, value.values()))
    if isinstance(value, list):
        return set().union(*map(_strings, value))
    return {value} if isinstance(value, str) else set()


def _map_or_refuse(request: dict[str, Any]) -> Order | None:
    """The order, or None when refused with problems that each name an element and a reason.
    Any other exception fails the test."""
    problems: tuple[OrderProblem, ...] = ()
    try:
        return medication_request_to_order(request, patient=PATIENT)
    except OrderRefused as refusal:
        problems = refusal.problems
    assert problems
    assert all(p.element.startswith(("MedicationRequest", "Patient")) and p.reason for p in problems)
    return None


def _strengths(request: dict[str, Any]) -> list[tuple[tuple[Decimal, str], tuple[Decimal, str]]]:
    """(amount, volume) of every well-formed ingredient strength of the contained Medication."""
    found = []
    for ingredient in request["contained"][0]["ingredient"]:
        try:
            num, den = ingredient["strength"]["numerator"], ingredient["strength"]["denominator"]
            found.append(((Decimal(num["value"]), _unit_of(num)), (Decimal(den["value"]), _unit_of(den))))
        except (KeyError, TypeError, AssertionError):
            continue
    return found


def _unit_of(q: dict[str, Any]) -> str:
    text = q.get("code") or q.get("unit")
    assert isinstance(text, str)
    return UNIT_ALIASES.get(text, text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(PATHS), st.sampled_from(["replace", "delete", "duplicate", "add"]), VALUES),
        min_size=1,
        max_size=3,
    )
)
def test_random_edits_are_refused_or_mapped_faithfully(edits: list[tuple[tuple[Any, ...], str, Any]]) -> None:
    request = dopamine()
    for path, op, value in edits:
        try:
            _apply(request, path, op, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced what this one aimed at
    snapshot = copy.deepcopy(request)
    order = _map_or_refuse(request)
    assert request == snapshot  # the input is never changed
    event("refused" if order is None else "mapped")
    if order is None:
        return
    # Mapped: every value is one the request states.
    strings = _strings(request) | _strings(PATIENT)
    numbers = _numbers(request)
    assert order.order_id in strings
    assert order.status == request["status"]
    assert order.patient_id == "MRN-1"
    assert {order.drug.code, order.drug.system} <= strings
    assert order.route is None or order.route in strings
    if order.concentration is not None:
        c = order.concentration
        assert ((c.amount.value, c.amount.unit), (c.volume.value, c.volume.unit)) in _strengths(request)
    for instruction in request.get("dosageInstruction") or []:
        for entry in instruction.get("doseAndRate") or []:
            if order.dose_rate is not None and "rateQuantity" in entry:
                assert order.dose_rate == Quantity(
                    Decimal(entry["rateQuantity"]["value"]), _unit_of(entry["rateQuantity"])
                )
        repeat = (instruction.get("timing") or {}).get("repeat") or {}
        if order.duration is not None:
            factor = 24 if repeat["durationUnit"] == "d" else 1
            with localcontext() as exact:  # the mapper keeps every digit; so must the expectation
                exact.prec = 100
                assert order.duration.value == Decimal(repeat["duration"]) * factor
    if order.dose_rate is not None:
        assert order.dose_rate.value in numbers or order.dose_rate.unit.endswith("/h")  # a converted ratio
    assert order.ordered_at is None or order.ordered_at.isoformat()[:10] == request["authoredOn"][:10]
