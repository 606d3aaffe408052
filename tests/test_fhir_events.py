"""FHIR mapping of logged events (fhir/events.py, docs/events.md "FHIR mapping").

Every resource is validated again here with its R4B model, and the FHIR rules fhir.resources does
not check (value sets of status codes, invariant mad-1, ele-1: no empty elements) are checked by hand.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from decimal import Decimal
from typing import Any, get_args

import pytest
from event_samples import sample
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.observation import Observation
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pumpgw.fhir.events import event_to_fhir
from pumpgw.gateway.events import CLINICAL_PREFIXES, ChannelStateText, Event, EventType, payload_problem

EVENT_ID = "01934e7f-8a2b-7c3d-8e4f-0123456789ab"  # UUIDv7: version nibble 7, variant 8
TIME = "2026-11-22T03:19:16.123Z"
MODELS: dict[str, type[BaseModel]] = {
    "MedicationAdministration": MedicationAdministration,
    "Observation": Observation,
    "AuditEvent": AuditEvent,
}
INFUSIONS = [t for t in EventType if t.value.startswith("infusion.")]
ALARMS = [EventType.ALARM_RAISED, EventType.ALARM_CLEARED]
MA_STATUS = {"in-progress", "not-done", "on-hold", "completed", "entered-in-error", "stopped", "unknown"}
PATIENT = {
    "type": "Patient",
    "identifier": {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": "MR",
                    "display": "Medical record number",
                }
            ]
        },
        "value": "MRN-1",
    },
}
PUMP = {
    "type": "Device",
    "identifier": {"system": "urn:pumpgw:pump", "value": "gw-1/p1"},
    "display": "pump p1 channel 2 (gateway gw-1)",
}
GATEWAY = {
    "type": "Device",
    "identifier": {"system": "urn:pumpgw:gateway", "value": "gw-1"},
    "display": "pumpgw gateway gw-1",
}
EVENT_IDENTIFIER = {"system": "urn:pumpgw:event", "value": EVENT_ID}


def make_event(
    type: EventType | str,
    payload: dict[str, Any] | None = None,
    *,
    patient: str | None = "MRN-1",
    order: str | None = "ORD-1",
    clinician: str | None = "RN-1",
    pump: str | None = "p1",
    channel: int | None = 2,
) -> Event:
    return Event(
        seq=12,
        id=EVENT_ID,
        time=TIME,
        gateway="gw-1",
        type=str(type),
        pump=pump,
        channel=channel,
        patient=patient,
        order=order,
        clinician=clinician,
        payload=sample(EventType(type)) if payload is None else payload,
        prev_hash="c" * 64,
        hash="d" * 64,
    )


def assert_valid(resource: dict[str, Any]) -> None:
    """Valid R4: the R4B model, plus what the model does not check."""
    MODELS[resource["resourceType"]].model_validate(resource)
    assert_no_empty_elements(resource, resource["resourceType"])
    assert resource["id"] == EVENT_ID
    if resource["resourceType"] == "MedicationAdministration":
        assert resource["status"] in MA_STATUS
        assert "subject" in resource  # 1..1
        if "dosage" in resource:  # mad-1: a dosage has a dose or a rate
            assert {"dose", "rateQuantity", "rateRatio"} & set(resource["dosage"])
    if resource["resourceType"] == "Observation":
        assert resource["status"] == "final"
    if resource["resourceType"] == "AuditEvent":
        assert resource["outcome"] in {"0", "4", "8", "12"}
        assert resource["action"] in {"C", "R", "U", "D", "E"}


def assert_no_empty_elements(value: Any, path: str) -> None:
    """FHIR ele-1 and the JSON rules: no null, no empty string, list or object; no floats."""
    assert value is not None, path
    assert not isinstance(value, float), path
    if isinstance(value, str):
        assert value.strip(), path
    elif isinstance(value, dict):
        assert value, path
        for key, item in value.items():
            assert_no_empty_elements(item, f"{path}.{key}")
    elif isinstance(value, list):
        assert value, path
        for i, item in enumerate(value):
            assert_no_empty_elements(item, f"{path}[{i}]")


def reference_types(value: Any) -> set[str]:
    """The resource types of every Reference in ``value`` (a Reference's ``type`` is a string)."""
    if isinstance(value, list):
        return set().union(*map(reference_types, value))
    if not isinstance(value, dict):
        return set()
    found = {value["type"]} if isinstance(value.get("type"), str) else set()
    return found.union(*map(reference_types, value.values()))


def by_type(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {r["resourceType"]: r for r in resources}
    assert len(out) == len(resources), "one resource of each type per event"
    return out


def expected_types(type: EventType) -> list[str]:
    if type in INFUSIONS:
        return ["MedicationAdministration", "AuditEvent"]
    if type in ALARMS:
        return ["Observation", "AuditEvent"]
    if type.value.startswith(CLINICAL_PREFIXES):
        return ["AuditEvent"]
    return []


# -- every type ----------------------------------------------------------------------------------


@pytest.mark.parametrize("type", list(EventType), ids=str)
def test_every_event_type_maps_to_valid_resources(type: EventType) -> None:
    resources = event_to_fhir(make_event(type))
    assert [r["resourceType"] for r in resources] == expected_types(type)
    for resource in resources:
        assert_valid(resource)


@pytest.mark.parametrize("type", list(EventType), ids=str)
def test_every_event_type_maps_without_any_reference(type: EventType) -> None:
    event = make_event(type, patient=None, order=None, clinician=None, pump=None, channel=None)
    resources = event_to_fhir(event)
    expected = [t for t in expected_types(type) if t != "MedicationAdministration"]
    assert [r["resourceType"] for r in resources] == expected
    for resource in resources:
        assert_valid(resource)
        assert not {"Patient", "MedicationRequest"} & reference_types(resource)
        if type is not EventType.DERS_OVERRIDE:  # its payload names the clinician who overrode
            assert "Practitioner" not in reference_types(resource)


def test_non_clinical_events_have_no_fhir_form() -> None:
    for type in (EventType.LIBRARY_LOADED, EventType.PUMP_LIBRARY_OUTDATED, EventType.CHANNEL_STATE):
        assert event_to_fhir(make_event(type)) == []


# -- MedicationAdministration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type", "status"),
    [
        (EventType.INFUSION_STARTED, "in-progress"),
        (EventType.INFUSION_RESUMED, "in-progress"),
        (EventType.INFUSION_RATE_CHANGED, "in-progress"),
        (EventType.INFUSION_BOLUS, "in-progress"),
        (EventType.INFUSION_PAUSED, "on-hold"),
        (EventType.INFUSION_COMPLETED, "completed"),
        (EventType.INFUSION_STOPPED, "stopped"),
        (EventType.INFUSION_UNVERIFIED, "in-progress"),
    ],
    ids=str,
)
def test_status_per_infusion_event(type: EventType, status: str) -> None:
    ma = by_type(event_to_fhir(make_event(type)))["MedicationAdministration"]
    assert ma["status"] == status


def test_started_infusion_in_full() -> None:
    ma = by_type(event_to_fhir(make_event(EventType.INFUSION_STARTED)))["MedicationAdministration"]
    assert ma["id"] == EVENT_ID
    assert ma["identifier"] == [EVENT_IDENTIFIER]
    assert ma["medicationCodeableConcept"] == {"text": "fentaNYL"}  # the pump's name, no code invented
    assert ma["subject"] == PATIENT
    assert ma["request"] == {"type": "MedicationRequest", "identifier": {"value": "ORD-1"}}
    assert ma["performer"] == [{"actor": {"type": "Practitioner", "identifier": {"value": "RN-1"}}}]
    assert ma["device"] == [PUMP]
    assert ma["effectivePeriod"] == {"start": TIME}
    assert "effectiveDateTime" not in ma
    rate = ma["dosage"]["rateQuantity"]
    assert rate == {
        "value": Decimal("4.00"),
        "unit": "mL/h",
        "system": "http://unitsofmeasure.org",
        "code": "mL/h",
    }
    assert isinstance(rate["value"], Decimal)
    assert str(rate["value"]) == "4.00"  # the precision is kept, not just the value
    assert set(ma["dosage"]) == {"rateQuantity"}  # no route, no dose: the payload states neither
    assert ma["note"] == [
        {
            "text": "pump p1 channel 2 (gateway gw-1) reported at infusion.started (pumpgw event 12): "
            "state infusing; rate 4.00 mL/h; VTBI 50 mL; volume infused (pump counter) 0.0 mL; "
            "drug fentaNYL; concentration 50 ug/mL; dose rate 200 ug/h."
        }
    ]


def test_rate_change_names_both_rates_at_the_moment_of_the_change() -> None:
    payload = {**sample(EventType.INFUSION_RATE_CHANGED), "rate_ml_h": "0.5", "previous_rate_ml_h": "0.25"}
    ma = by_type(event_to_fhir(make_event(EventType.INFUSION_RATE_CHANGED, payload)))[
        "MedicationAdministration"
    ]
    assert ma["effectiveDateTime"] == TIME
    assert "effectivePeriod" not in ma
    assert ma["dosage"]["rateQuantity"]["value"] == Decimal("0.5")
    assert "rate 0.5 mL/h; previous rate 0.25 mL/h" in ma["note"][0]["text"]


@pytest.mark.parametrize("type", [EventType.INFUSION_COMPLETED, EventType.INFUSION_STOPPED], ids=str)
def test_completed_and_stopped_end_the_period_and_claim_no_rate(type: EventType) -> None:
    # After completion the pump reports a KVO rate, after a stop a leftover setting: neither is the
    # rate the drug was given at, so neither becomes dosage.rate (it stays in the note).
    ma = by_type(event_to_fhir(make_event(type)))["MedicationAdministration"]
    assert ma["effectivePeriod"] == {"end": TIME}
    assert "dosage" not in ma
    assert "rate 4.00 mL/h" in ma["note"][0]["text"]


def test_paused_keeps_the_rate_it_would_resume_at() -> None:
    ma = by_type(event_to_fhir(make_event(EventType.INFUSION_PAUSED)))["MedicationAdministration"]
    assert ma["status"] == "on-hold"
    assert ma["dosage"]["rateQuantity"]["value"] == Decimal("4.00")


def test_unverified_infusion_says_why_in_a_note_and_fails_the_audit() -> None:
    resources = by_type(event_to_fhir(make_event(EventType.INFUSION_UNVERIFIED)))
    ma = resources["MedicationAdministration"]
    assert ma["status"] == "in-progress"
    assert ma["note"][1] == {
        "text": "Not verified against an order: no active order for this patient matches"
    }
    audit = resources["AuditEvent"]
    assert audit["outcome"] == "4"
    assert audit["outcomeDesc"] == "no active order for this patient matches"


def test_unverified_infusion_on_a_paused_pump_is_on_hold() -> None:
    payload = {**sample(EventType.INFUSION_UNVERIFIED), "state": "paused"}
    ma = by_type(event_to_fhir(make_event(EventType.INFUSION_UNVERIFIED, payload)))[
        "MedicationAdministration"
    ]
    assert ma["status"] == "on-hold"


@pytest.mark.parametrize("type", INFUSIONS, ids=str)
@pytest.mark.parametrize("patient", [None, "", "  "])
def test_no_medication_administration_without_a_patient(type: EventType, patient: str | None) -> None:
    # subject is 1..1 and a patient is never invented: the infusion is only audited.
    resources = event_to_fhir(make_event(type, patient=patient))
    assert [r["resourceType"] for r in resources] == ["AuditEvent"]
    audit = resources[0]
    assert_valid(audit)
    assert all(e["what"].get("type") != "Patient" for e in audit["entity"])
    assert all(e["what"].get("type") != "MedicationAdministration" for e in audit["entity"])


def test_unknown_drug_is_marked_absent_not_named() -> None:
    payload = {**sample(EventType.INFUSION_STARTED), "drug": None, "concentration": None, "dose_rate": None}
    ma = by_type(event_to_fhir(make_event(EventType.INFUSION_STARTED, payload)))["MedicationAdministration"]
    assert ma["medicationCodeableConcept"] == {
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
        ]
    }
    assert "drug" not in ma["note"][0]["text"]
    assert "concentration" not in ma["note"][0]["text"]


def test_unknown_values_are_left_out_not_filled_in() -> None:
    payload = {
        **sample(EventType.INFUSION_STARTED),
        "rate_ml_h": None,
        "vtbi_ml": None,
        "volume_infused_ml": None,
    }
    event = make_event(EventType.INFUSION_STARTED, payload, order=None, clinician=None)
    ma = by_type(event_to_fhir(event))["MedicationAdministration"]
    assert "dosage" not in ma
    assert "request" not in ma
    assert "performer" not in ma
    assert ma["note"][0]["text"].endswith(
        "(pumpgw event 12): state infusing; drug fentaNYL; concentration 50 ug/mL; dose rate 200 ug/h."
    )


def test_control_characters_from_a_driver_are_escaped() -> None:
    payload = {**sample(EventType.INFUSION_STARTED), "drug": "fenta\x00NYL\x0b"}
    resources = event_to_fhir(make_event(EventType.INFUSION_STARTED, payload))
    ma = by_type(resources)["MedicationAdministration"]
    assert ma["medicationCodeableConcept"] == {"text": "fenta\\x00NYL\\x0b"}
    assert_valid(ma)


# -- Observation (alarms) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type", "phase"), [(EventType.ALARM_RAISED, "start"), (EventType.ALARM_CLEARED, "end")], ids=str
)
def test_alarm_is_an_observation_coded_as_pcd04(type: EventType, phase: str) -> None:
    obs = by_type(event_to_fhir(make_event(type)))["Observation"]
    assert obs["identifier"] == [EVENT_IDENTIFIER]
    assert obs["status"] == "final"
    assert obs["code"] == {
        "coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "196616", "display": "MDC_EVT_ALARM"}],
        "text": "Infusion pump alarm",
    }
    assert obs["valueCodeableConcept"] == {"text": "occlusion-downstream"}
    assert obs["component"] == [
        {
            "code": {
                "coding": [
                    {
                        "system": "urn:iso:std:iso:11073:10101",
                        "code": "68481",
                        "display": "MDC_ATTR_EVENT_PHASE",
                    }
                ]
            },
            "valueString": phase,
        }
    ]
    assert obs["effectiveDateTime"] == TIME
    assert obs["device"] == PUMP
    assert obs["subject"] == PATIENT


def test_alarm_without_a_patient_has_no_subject() -> None:
    obs = by_type(event_to_fhir(make_event(EventType.ALARM_RAISED, patient=None)))["Observation"]
    assert "subject" not in obs
    assert obs["device"] == PUMP


# -- AuditEvent ----------------------------------------------------------------------------------


def test_audit_event_ties_the_record_to_the_hash_chain() -> None:
    audit = by_type(event_to_fhir(make_event(EventType.INFUSION_STARTED)))["AuditEvent"]
    assert audit["id"] == EVENT_ID
    assert audit["type"] == {
        "system": "http://dicom.nema.org/resources/ontology/DCM",
        "code": "110110",
        "display": "Patient Record",
    }
    assert audit["subtype"] == [{"system": "urn:pumpgw:event-type", "code": "infusion.started"}]
    assert audit["action"] == "C"
    assert audit["recorded"] == TIME
    assert audit["outcome"] == "0"
    assert "outcomeDesc" not in audit
    assert audit["agent"] == [
        {
            "type": {
                "coding": [
                    {
                        "system": "http://dicom.nema.org/resources/ontology/DCM",
                        "code": "110150",
                        "display": "Application",
                    }
                ]
            },
            "who": GATEWAY,
            "requestor": False,
        },
        {"who": {"type": "Practitioner", "identifier": {"value": "RN-1"}}, "requestor": True},
    ]
    assert audit["source"] == {
        "observer": GATEWAY,
        "type": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "2",
                "display": "Data Interface",
            }
        ],
    }
    record, patient, order, pump, made = audit["entity"]
    assert record["what"] == {"identifier": EVENT_IDENTIFIER, "display": "pumpgw event 12"}
    assert record["name"] == "infusion.started #12"
    assert {d["type"]: d["valueString"] for d in record["detail"]} == {
        "id": EVENT_ID,
        "seq": "12",
        "type": "infusion.started",
        "gateway": "gw-1",
        "hash": "d" * 64,
        "prev_hash": "c" * 64,
    }
    assert patient["what"] == PATIENT
    assert patient["role"]["code"] == "1"
    assert order["what"] == {"type": "MedicationRequest", "identifier": {"value": "ORD-1"}}
    assert pump["what"] == PUMP
    # The MedicationAdministration made from the same event, by the identifier it carries.
    assert made["what"] == {"type": "MedicationAdministration", "identifier": EVENT_IDENTIFIER}


def test_ders_override_audits_the_clinician_who_overrode() -> None:
    audit = by_type(event_to_fhir(make_event(EventType.DERS_OVERRIDE, clinician=None)))["AuditEvent"]
    assert audit["agent"][1] == {
        "who": {"type": "Practitioner", "identifier": {"value": "RN-1"}},
        "requestor": True,
    }
    # The same clinician in the refs and the payload is one agent, not two.
    audit = by_type(event_to_fhir(make_event(EventType.DERS_OVERRIDE)))["AuditEvent"]
    assert len(audit["agent"]) == 2


@pytest.mark.parametrize(
    ("type", "change", "outcome", "desc"),
    [
        (EventType.SCAN_REJECTED, {}, "4", "the group separator after lot 10 was dropped"),
        (EventType.ORDER_REJECTED, {}, "4", "9001: stale"),
        (EventType.RECONCILIATION, {}, "4", "the container is five times the ordered concentration"),
        (EventType.RECONCILIATION, {"verdict": "matched", "checks": []}, "0", None),
        (EventType.DERS_RESULT, {}, "0", None),
        (EventType.PROGRAMMING_READ_BACK, {}, "8", "rate_ml_h: sent 4.00, read 40.0"),
        (EventType.PROGRAMMING_READ_BACK, {"matches": True, "differences": []}, "0", None),
        (EventType.SCAN_ACCEPTED, {}, "0", None),
    ],
)
def test_audit_outcome_says_when_the_gateway_refused(
    type: EventType, change: dict[str, Any], outcome: str, desc: str | None
) -> None:
    audit = by_type(event_to_fhir(make_event(type, {**sample(type), **change})))["AuditEvent"]
    assert audit["outcome"] == outcome
    assert audit.get("outcomeDesc") == desc


def test_blocked_ders_result_names_the_hard_limits() -> None:
    payload = sample(EventType.DERS_RESULT)
    payload["verdict"] = "blocked"
    payload["checks"][0] |= {"outcome": "hard-high", "message": "300 ug/h is above the hard maximum 250 ug/h"}
    audit = by_type(event_to_fhir(make_event(EventType.DERS_RESULT, payload)))["AuditEvent"]
    assert (audit["outcome"], audit["outcomeDesc"]) == ("4", "300 ug/h is above the hard maximum 250 ug/h")


# -- what the mapping refuses --------------------------------------------------------------------


def test_a_payload_that_does_not_fit_its_type_is_refused_with_the_event_named() -> None:
    payload = {**sample(EventType.INFUSION_STARTED), "rate_ml_h": 4.0}  # a float, not exact text
    with pytest.raises(
        ValueError, match=r"event 12 \(01934e7f-.*\): the payload is not a valid infusion.started"
    ):
        event_to_fhir(make_event(EventType.INFUSION_STARTED, payload))


def test_a_type_from_a_newer_version_is_audited_when_clinical() -> None:
    # Its payload cannot be read, but the AuditEvent needs only the envelope.
    event = dataclasses.replace(make_event(EventType.SCAN_ACCEPTED), type="scan.cancelled", payload={"x": 1})
    (audit,) = event_to_fhir(event)
    assert_valid(audit)
    assert audit["subtype"] == [{"system": "urn:pumpgw:event-type", "code": "scan.cancelled"}]
    assert event_to_fhir(dataclasses.replace(event, type="gateway.rebooted")) == []


# -- properties ----------------------------------------------------------------------------------

decimals = st.from_regex(r"-?[0-9]{1,12}(\.[0-9]{1,10})?", fullmatch=True)
texts = st.none() | st.text(max_size=60)
quantities = st.none() | st.text(min_size=1, max_size=200)
refs = st.none() | st.text(max_size=30)


@st.composite
def infusion_events(draw: st.DrawFn) -> Event:
    type = draw(st.sampled_from(INFUSIONS))
    payload: dict[str, Any] = {
        "state": draw(st.sampled_from(get_args(ChannelStateText))),
        "rate_ml_h": draw(st.none() | decimals),
        "vtbi_ml": draw(st.none() | decimals),
        "volume_infused_ml": draw(st.none() | decimals),
        "drug": draw(texts),
        "concentration": draw(quantities),
        "dose_rate": draw(quantities),
    }
    if type is EventType.INFUSION_RATE_CHANGED:
        payload["previous_rate_ml_h"] = draw(st.none() | decimals)
    if type is EventType.INFUSION_UNVERIFIED:
        payload["reason"] = draw(st.text(min_size=1, max_size=100))
    assert payload_problem(type, payload) is None
    return make_event(
        type,
        payload,
        patient=draw(refs),
        order=draw(refs),
        clinician=draw(refs),
        pump=draw(st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
        channel=draw(st.none() | st.integers(1, 8)),
    )


@settings(max_examples=300, deadline=None)
@given(infusion_events())
def test_any_valid_infusion_event_maps_to_valid_resources_with_the_exact_rate(event: Event) -> None:
    resources = event_to_fhir(event)
    assert resources[-1]["resourceType"] == "AuditEvent"
    for resource in resources:
        assert_valid(resource)
    mas = [r for r in resources if r["resourceType"] == "MedicationAdministration"]
    printable = event.patient is not None and any(c.isprintable() and not c.isspace() for c in event.patient)
    assert len(mas) == (1 if printable else 0)
    for ma in mas:
        rate = event.payload["rate_ml_h"]
        if "dosage" in ma:
            value = ma["dosage"]["rateQuantity"]["value"]
            assert isinstance(value, Decimal)
            assert value == Decimal(rate)
            assert value.as_tuple() == Decimal(rate).as_tuple()  # same digits and exponent
            assert ma["status"] in ("in-progress", "on-hold")
        else:
            assert rate is None or ma["status"] in ("completed", "stopped")


# -- the import stays out of the gateway's runtime path -----------------------------------------


def test_fhir_resources_is_imported_only_by_the_fhir_mapping() -> None:
    code = (
        "import sys\n"
        "import pumpgw.gateway.events, pumpgw.gateway.eventlog, pumpgw.gateway.cli, pumpgw.gateway.mqtt\n"
        "before = 'fhir.resources' in sys.modules\n"
        "import pumpgw.fhir.events\n"
        "print(before, 'fhir.resources.R4B.auditevent' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]
