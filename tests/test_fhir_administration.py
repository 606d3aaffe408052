"""The shared MedicationAdministration and Device builder (fhir/administration.py).

Every built resource is validated with its fhir.resources R4B model. The shape is compared with
the R4 example /work/shared/reference/fhir-examples/
r4_MedicationAdministration_medadmin0309_TPN_1000mL_50mL_h_rateRatio_device.json (HL7 FHIR R4
4.0.1 ``medicationadministration0309.json``: TPN 1000 mL at rateRatio 50 mL / 1 h, device, period).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.medicationadministration import MedicationAdministration

from pumpgw.fhir.administration import (
    Administered,
    event_identifier,
    medication_administration,
    pump_device,
    pump_reference,
)
from pumpgw.fhir.client import dumps_json, loads_json
from pumpgw.fhir.orders import fhir_quantity, ratio_rate
from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.errors import FhirError
from pumpgw.gateway.orders import Drug, Order, OrderSource
from pumpgw.gateway.quantity import Quantity, known_units

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "fhir-examples"
if not REFERENCE.is_dir():  # the shared reference sits beside the checkout
    REFERENCE = Path("/work/shared/reference/fhir-examples")
TPN = REFERENCE / "r4_MedicationAdministration_medadmin0309_TPN_1000mL_50mL_h_rateRatio_device.json"
EVENT_ID = "0193a1b2-0000-7000-8000-00000000000a"
AT = datetime(2026, 11, 22, 3, 19, 16, tzinfo=UTC)
UCUM = "http://unitsofmeasure.org"
MR = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
            "code": "MR",
            "display": "Medical record number",
        }
    ]
}
DOPAMINE = Order(
    order_id="12345689",
    source=OrderSource.FHIR,
    patient_id="MRN-1",
    drug=Drug("1114879", "http://www.nlm.nih.gov/research/umls/rxnorm", "Dopamine"),
    concentration=Concentration(Quantity.of(400, "mg"), Quantity.of(500, "mL")),
    dose_rate=Quantity.of(4, "ug/kg/min"),
    route="Intravenous route (qualifier value)",
)
PUMP = pump_reference("p1", gateway="gw-1", display="pump p1 channel 2 (gateway gw-1)")


def happened(**changes: Any) -> Administered:
    values: dict[str, Any] = {
        "event_id": EVENT_ID,
        "status": "in-progress",
        "start": AT,
        "pump": PUMP,
        "clinician": "RN-1",
        "rate": Quantity(Decimal("12.50"), "mL/h"),
    }
    values.update(changes)
    return Administered(**values)


def quantities(value: Any) -> list[dict[str, Any]]:
    """Every FHIR Quantity (a value with a unit or the UCUM system) in ``value``."""
    if isinstance(value, list):
        return [q for item in value for q in quantities(item)]
    if not isinstance(value, dict):
        return []
    found = [value] if "value" in value and ("unit" in value or value.get("system") == UCUM) else []
    return found + [q for item in value.values() for q in quantities(item)]


def test_an_administration_of_an_order_in_full() -> None:
    ma = medication_administration(happened(), DOPAMINE)
    MedicationAdministration.model_validate(ma)
    assert ma == {
        "resourceType": "MedicationAdministration",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{EVENT_ID}"}],
        "status": "in-progress",
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "1114879",
                    "display": "Dopamine",
                }
            ],
            "text": "Dopamine",
        },
        "subject": {"type": "Patient", "identifier": {"type": MR, "value": "MRN-1"}},
        "effectivePeriod": {"start": "2026-11-22T03:19:16+00:00"},
        "performer": [{"actor": {"type": "Practitioner", "identifier": {"value": "RN-1"}}}],
        "request": {"type": "MedicationRequest", "identifier": {"value": "12345689"}},
        "device": [
            {
                "type": "Device",
                "identifier": {"system": "urn:pumpgw:pump", "value": "gw-1/p1"},
                "display": "pump p1 channel 2 (gateway gw-1)",
            }
        ],
        "dosage": {
            "route": {"text": "Intravenous route (qualifier value)"},
            "rateQuantity": {"value": Decimal("12.50"), "unit": "mL/h", "system": UCUM, "code": "mL/h"},
        },
    }
    assert b'"rateQuantity":{"value":12.50,' in dumps_json(ma)  # the precision goes out on the wire


def test_without_the_pump_s_rate_the_ordered_dose_rate_is_the_rate() -> None:
    ma = medication_administration(happened(rate=None), DOPAMINE)
    MedicationAdministration.model_validate(ma)
    assert ma["dosage"]["rateQuantity"] == {
        "value": Decimal(4),
        "unit": "ug/kg/min",
        "system": UCUM,
        "code": "ug/kg/min",
    }


@pytest.mark.parametrize("status", ["in-progress", "on-hold", "completed", "stopped"])
def test_each_status_and_time_makes_a_valid_resource(status: str) -> None:
    ends = {"start": None, "end": AT} if status in ("completed", "stopped") else {"start": None, "at": AT}
    ma = medication_administration(happened(status=status, **ends), DOPAMINE)
    MedicationAdministration.model_validate(ma)
    assert ma["status"] == status
    assert ("effectivePeriod" in ma) == (status in ("completed", "stopped"))


def test_volumes_and_rates_go_out_in_ml_and_ml_per_hour_exactly() -> None:
    ma = medication_administration(
        happened(volume_infused=Quantity(Decimal("0.25"), "L"), rate=Quantity.of(1, "mL/min")), DOPAMINE
    )
    MedicationAdministration.model_validate(ma)
    assert ma["dosage"]["dose"] == {"value": Decimal("250.00"), "unit": "mL", "system": UCUM, "code": "mL"}
    assert ma["dosage"]["rateQuantity"]["value"] == 60
    assert len(quantities(ma)) == 2
    for q in quantities(ma):  # strictly valid UCUM: the gateway's own codes, never "ml/h"
        assert q["code"] == q["unit"]
        assert q["code"] in known_units()
        assert q["system"] == UCUM


def test_without_an_order_the_drug_is_the_pump_s_word_and_the_patient_is_required() -> None:
    ma = medication_administration(happened(patient_id="MRN-2", drug="fenta\x00NYL", rate=None))
    MedicationAdministration.model_validate(ma)
    assert ma["medicationCodeableConcept"] == {"text": "fenta\\x00NYL"}
    assert ma["subject"]["identifier"]["value"] == "MRN-2"
    assert "dosage" not in ma  # neither a dose nor a rate: no dosage (mad-1)
    unknown = medication_administration(happened(patient_id="MRN-2", drug=None))
    assert unknown["medicationCodeableConcept"]["extension"][0]["valueCode"] == "unknown"
    with pytest.raises(FhirError, match="no patient: subject is required"):
        medication_administration(happened())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"patient_id": "MRN-9"}, "the patient 'MRN-9' is not the order's patient 'MRN-1'"),
        ({"order_id": "OTHER"}, "the order 'OTHER' is not the order's order '12345689'"),
        ({"start": datetime(2026, 1, 1, 10, 0)}, "has no time zone offset"),  # noqa: DTZ001 - on purpose
        ({"at": AT}, "either one moment"),
        ({"start": None}, "no time"),
        ({"rate": Quantity.of(5, "ug/h")}, "the rate 5 ug/h cannot be given in mL/h"),
        ({"status": "running"}, "not in medication-admin-status"),
    ],
)
def test_facts_that_do_not_make_a_valid_administration_are_refused(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(FhirError, match=message):
        medication_administration(happened(**changes), DOPAMINE)


def test_the_identifier_system_is_configurable() -> None:
    ma = medication_administration(
        happened(), DOPAMINE, identifier_system="urn:pumpgw:event", resource_id=EVENT_ID
    )
    assert ma["identifier"] == [{"system": "urn:pumpgw:event", "value": EVENT_ID}]
    assert ma["id"] == EVENT_ID
    assert event_identifier(str(uuid.UUID(EVENT_ID)).upper())["value"] == f"urn:uuid:{EVENT_ID}"
    with pytest.raises(FhirError, match="not a UUID"):
        event_identifier("event-12")


def test_the_pump_device() -> None:
    device = pump_device("p1", "Alaris 8100", "SN-123", "BD", "(01)00885403081009(21)SN-123", gateway="gw-1")
    Device.model_validate(device)
    assert device == {
        "resourceType": "Device",
        "identifier": [{"system": "urn:pumpgw:pump", "value": "gw-1/p1"}],
        "udiCarrier": [{"carrierHRF": "(01)00885403081009(21)SN-123"}],
        "manufacturer": "BD",
        "serialNumber": "SN-123",
        "deviceName": [{"name": "Alaris 8100", "type": "model-name"}],
        "type": {
            "coding": [
                {
                    "system": "urn:iso:std:iso:11073:10101",
                    "code": "69986",
                    "display": "MDC_DEV_PUMP_INFUS_VMD",
                }
            ]
        },
    }
    # The administration's device reference finds this Device by the same identifier.
    assert PUMP["identifier"] == device["identifier"][0]
    minimal = pump_device("p2", None, None, None)
    Device.model_validate(minimal)
    assert set(minimal) == {"resourceType", "identifier", "type"}  # nothing unknown is filled in
    with pytest.raises(FhirError, match="pump id is empty"):
        pump_device(" ", None, None, None)


def test_the_r4_tpn_example_can_be_expressed_by_the_builder() -> None:
    """medadmin0309: TPN 1000 mL given at 50 mL/h over 4 h, completed, with a device and a
    performer. The example's rateRatio 50 mL / 1 h, read with the gateway's reader, is the rate the
    builder emits as rateQuantity 50 mL/h (one number, in the unit pumps are programmed in)."""
    example = loads_json(TPN.read_bytes())
    MedicationAdministration.model_validate(example)
    dose = example["dosage"]["dose"]
    rate = ratio_rate(example["dosage"]["rateRatio"], "MedicationAdministration.dosage.rateRatio")
    assert rate == Quantity.of(50, "mL/h")
    tpn = Order(
        order_id="medrx0323",
        source=OrderSource.FHIR,
        patient_id="MRN-1",
        drug=Drug("0338-1134-03", "http://hl7.org/fhir/sid/ndc", "Clinimix 4.25/10 sulfite-free"),
        route="Intravenous",
    )
    ours = medication_administration(
        Administered(
            event_id=EVENT_ID,
            status=example["status"],
            start=example["effectivePeriod"]["start"],
            end=example["effectivePeriod"]["end"],
            pump=pump_reference("p1", gateway="gw-1"),
            clinician="RN-1",
            rate=rate,
            volume_infused=fhir_quantity(dose),
        ),
        tpn,
    )
    MedicationAdministration.model_validate(ours)
    # The same elements as the example (medication as a concept, not a contained Medication; no
    # narrative), plus the identifier a conditional create needs.
    same = {"status", "subject", "effectivePeriod", "performer", "request", "device", "dosage"}
    assert same <= set(example)
    assert set(ours) == same | {"resourceType", "identifier", "medicationCodeableConcept"}
    assert ours["status"] == "completed"
    assert ours["effectivePeriod"] == example["effectivePeriod"]  # the text, as given
    assert ours["dosage"]["dose"] == dose  # 1000 mL, UCUM, exactly as the example
    assert ours["dosage"]["rateQuantity"] == {
        "value": Decimal(50),
        "unit": "mL/h",
        "system": UCUM,
        "code": "mL/h",
    }
    assert ours["dosage"]["route"] == {"text": example["dosage"]["route"]["coding"][0]["display"]}
    start = datetime.fromisoformat(ours["effectivePeriod"]["start"])
    end = datetime.fromisoformat(ours["effectivePeriod"]["end"])
    assert (end - start) * 50 / timedelta(hours=1) == 200  # 4 h at 50 mL/h (of the 1000 mL bag)
    assert start.utcoffset() == timezone(timedelta(hours=1)).utcoffset(None)
