"""FHIR R4 resources for the clinical events of the event log (docs/events.md, "FHIR mapping").

:func:`event_to_fhir` turns one logged :class:`~pumpgw.gateway.events.Event` into FHIR R4 resources
as JSON-ready dicts, each checked against its fhir.resources R4B model before it is returned:

- ``infusion.*``: a ``MedicationAdministration`` snapshot of what the pump reported at that moment,
  only when the event names the patient (``subject`` is required and never invented);
- ``channel.alarm_raised`` / ``channel.alarm_cleared``: an ``Observation`` of the alarm as IHE PCD-04
  (ACM) codes it: ``MDC_EVT_ALARM`` with the driver's alarm name and the phase (start/end);
- every clinical event (a type with a :data:`~pumpgw.gateway.events.CLINICAL_PREFIXES` prefix):
  an ``AuditEvent`` tied to the tamper-evident log by the event's id, seq and hashes;
- any other event: nothing.

What the dicts promise:

- Every resource has ``id`` = the event id, and those that have an ``identifier`` (``urn:pumpgw:event``
  | event id) carry it, so exporting the same event again (a re-export, an at-least-once retry) can
  never make a second copy downstream: ``PUT`` by id, or a conditional create on the identifier.
- Numbers are ``decimal.Decimal`` exactly as the payload wrote them (``"4.00"`` gives
  ``Decimal("4.00")``; in FHIR the precision of a decimal is significant). ``json.dumps`` refuses a
  Decimal, and fhir.resources' own ``model_dump_json`` turns it into a float (``4.0``), so a writer
  must emit ``str(value)`` as the JSON number itself.
- Times are the event's own text (``2026-11-22T03:19:16.123Z``), not re-formatted.
- Patients, orders and clinicians are referenced by identifier (``Reference.identifier``), as the
  gateway knows them; the gateway does not know the hospital's identifier systems, so only the
  patient's carries a type (``MR``, the wristband's medical record number) and none a ``system``.

The heavy fhir.resources import (~400 ms, 26 MiB) happens here and nowhere on the gateway's runtime
path: import this module only where FHIR is wanted (``tests/test_packaging.py`` guards that).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.observation import Observation
from pydantic import BaseModel, ValidationError

from pumpgw.gateway.events import (
    CLINICAL_PREFIXES,
    PAYLOADS,
    Alarm,
    DersOverride,
    DersResult,
    Event,
    EventType,
    Infusion,
    InfusionRateChanged,
    InfusionUnverified,
    OrderRejected,
    Payload,
    ReadBack,
    ReconciliationResult,
    ScanRejected,
)
from pumpgw.gateway.quantity import Quantity

from .administration import (
    MDC,
    Administered,
    AdministrationStatus,
    fhir_text,
    medication_administration,
    order_reference,
    patient_reference,
    practitioner_reference,
    pump_reference,
)

# -- code systems and identifier namespaces ------------------------------------------------------

EVENT_SYSTEM: Final = "urn:pumpgw:event"  # Identifier.system of every resource: value = the event id
EVENT_TYPE_SYSTEM: Final = "urn:pumpgw:event-type"  # AuditEvent.subtype: the event type, as logged
GATEWAY_SYSTEM: Final = "urn:pumpgw:gateway"  # the gateway Device: value = gateway id (as MQTT's source)

DICOM: Final = "http://dicom.nema.org/resources/ontology/DCM"
SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"

# IHE PCD-04 (ACM) codes, as in the IHE TF-2 example (shared/reference/hl7-examples/09_pcd04_*.hl7).
_MDC_EVT_ALARM: Final = {"system": MDC, "code": "196616", "display": "MDC_EVT_ALARM"}
_MDC_ATTR_EVENT_PHASE: Final = {"system": MDC, "code": "68481", "display": "MDC_ATTR_EVENT_PHASE"}

# AuditEvent.type: DICOM "Patient Record" (created, read, updated or deleted), as the HL7 Record
# Lifecycle Events IG uses for records of a patient's care; the precise event goes in subtype.
_PATIENT_RECORD: Final = {"system": DICOM, "code": "110110", "display": "Patient Record"}
_APPLICATION: Final = {"system": DICOM, "code": "110150", "display": "Application"}
_DATA_INTERFACE: Final = {"system": SOURCE_TYPE, "code": "2", "display": "Data Interface"}
_PERSON: Final = {"system": ENTITY_TYPE, "code": "1", "display": "Person"}
_SYSTEM_OBJECT: Final = {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
_ROLE_PATIENT: Final = {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
_ROLE_RESOURCE: Final = {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}

# MedicationAdministration.status per infusion event (value set medication-admin-status).
_STATUS: Final[dict[EventType, AdministrationStatus]] = {
    EventType.INFUSION_STARTED: "in-progress",
    EventType.INFUSION_RESUMED: "in-progress",
    EventType.INFUSION_RATE_CHANGED: "in-progress",
    EventType.INFUSION_BOLUS: "in-progress",
    EventType.INFUSION_PAUSED: "on-hold",
    EventType.INFUSION_COMPLETED: "completed",
    EventType.INFUSION_STOPPED: "stopped",
    EventType.INFUSION_UNVERIFIED: "in-progress",  # on-hold if the pump reports it paused
}
_ALARM_PHASE: Final = {EventType.ALARM_RAISED: "start", EventType.ALARM_CLEARED: "end"}

_MODELS: Final[dict[str, type[BaseModel]]] = {
    "MedicationAdministration": MedicationAdministration,
    "Observation": Observation,
    "AuditEvent": AuditEvent,
}


def event_to_fhir(event: Event) -> list[dict[str, Any]]:
    """The FHIR R4 resources of ``event`` (docs/events.md, "FHIR mapping"), or ``[]`` if it has none.

    The clinical resource (MedicationAdministration or Observation) comes first, the AuditEvent last.
    An event type this version does not know gets an AuditEvent if its prefix is clinical.

    Raises ValueError when the payload does not fit its type's model (the log refuses such a
    payload when it is written, so this means the log was edited or comes from another version).
    """
    if not event.type.startswith(CLINICAL_PREFIXES):
        return []
    type_ = _known_type(event.type)
    payload = _payload(event, type_)
    resources: list[dict[str, Any]] = []
    if type_ is not None and type_ in _STATUS:
        if isinstance(payload, Infusion) and _text(event.patient) is not None:
            resources.append(_medication_administration(event, type_, payload))
    elif type_ is not None and type_ in _ALARM_PHASE and isinstance(payload, Alarm):
        resources.append(_alarm_observation(event, type_, payload))
    resources.append(_audit_event(event, payload, resources))
    for resource in resources:
        _check(resource)
    return resources


# -- MedicationAdministration --------------------------------------------------------------------


def _medication_administration(event: Event, type_: EventType, p: Infusion) -> dict[str, Any]:
    status: AdministrationStatus = _STATUS[type_]
    if type_ is EventType.INFUSION_UNVERIFIED and p.state == "paused":
        status = "on-hold"
    notes = [_pump_report(event, p)]
    if isinstance(p, InfusionUnverified):
        notes.append(f"Not verified against an order: {_text(p.reason) or 'no reason given'}")
    # The rate is the one the pump reports while the infusion runs or is on hold. After completion
    # or a stop the reported rate is a KVO rate or a leftover setting, not the administration's
    # rate, so it stays in the note only (and a dosage needs a dose or a rate: FHIR invariant mad-1).
    # No route: the payload does not say how the line is placed (IV, epidural, subcutaneous ...).
    # No dose: volume_infused_ml is the pump's counter, which pumps clear at different moments.
    rate = None
    if status in ("in-progress", "on-hold") and p.rate_ml_h is not None:
        rate = Quantity(Decimal(p.rate_ml_h), "mL/h")  # exact, with the payload's precision
    at, start, end = _effective(event, type_)
    happened = Administered(
        event_id=event.id,
        status=status,
        at=at,
        start=start,
        end=end,
        patient_id=_text(event.patient),
        order_id=_text(event.order),
        drug=_text(p.drug),
        pump=_pump(event),
        clinician=_text(event.clinician),
        rate=rate,
        notes=tuple(notes),
    )
    # Checked with the other resources of the event in event_to_fhir.
    return medication_administration(
        happened, identifier_system=EVENT_SYSTEM, resource_id=event.id, validate=False
    )


def _effective(event: Event, type_: EventType) -> tuple[str | None, str | None, str | None]:
    """(at, start, end): a snapshot knows one moment: the start of the infusion, its end, or a
    change while it runs."""
    if type_ is EventType.INFUSION_STARTED:
        return None, event.time, None
    if type_ in (EventType.INFUSION_COMPLETED, EventType.INFUSION_STOPPED):
        return None, None, event.time
    return event.time, None, None


def _pump_report(event: Event, p: Infusion) -> str:
    """The pump's whole report in words: every value as the payload has it, none left out, none added."""
    facts = [f"state {p.state}"]
    if p.rate_ml_h is not None:
        facts.append(f"rate {p.rate_ml_h} mL/h")
    if isinstance(p, InfusionRateChanged) and p.previous_rate_ml_h is not None:
        facts.append(f"previous rate {p.previous_rate_ml_h} mL/h")
    if p.vtbi_ml is not None:
        facts.append(f"VTBI {p.vtbi_ml} mL")
    if p.volume_infused_ml is not None:
        facts.append(f"volume infused (pump counter) {p.volume_infused_ml} mL")
    for label, value in (("drug", p.drug), ("concentration", p.concentration), ("dose rate", p.dose_rate)):
        if (text := _text(value)) is not None:
            facts.append(f"{label} {text}")
    return f"{_where(event)} reported at {event.type} (pumpgw event {event.seq}): {'; '.join(facts)}."


# -- Observation (alarms) ------------------------------------------------------------------------


def _alarm_observation(event: Event, type_: EventType, p: Alarm) -> dict[str, Any]:
    # The alarm's kind stays the driver's name, as text: mapping driver names onto MDC event codes
    # (196940 MDC_EVT_FLUID_LINE_OCCL, ...) needs a reviewed table per driver, which does not exist.
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": event.id,
        "identifier": [_event_identifier(event)],
        "status": "final",
        "code": {"coding": [_MDC_EVT_ALARM], "text": "Infusion pump alarm"},
        "effectiveDateTime": event.time,
        "valueCodeableConcept": {"text": _text(p.alarm) or "unnamed alarm"},
        "component": [
            {"code": {"coding": [_MDC_ATTR_EVENT_PHASE]}, "valueString": _ALARM_PHASE[type_]},
        ],
    }
    if _text(event.patient) is not None:
        resource["subject"] = _patient(event)
    if (pump := _pump(event)) is not None:
        resource["device"] = pump
    return resource


# -- AuditEvent ----------------------------------------------------------------------------------


def _audit_event(event: Event, payload: Payload | None, made: list[dict[str, Any]]) -> dict[str, Any]:
    gateway = _gateway(event)
    agents: list[dict[str, Any]] = [{"type": {"coding": [_APPLICATION]}, "who": gateway, "requestor": False}]
    clinicians = [_text(event.clinician)]
    if isinstance(payload, DersOverride):
        clinicians.append(_text(payload.clinician))  # who overrode, as the payload names them
    agents.extend(
        {"who": _practitioner(badge), "requestor": True}
        for badge in dict.fromkeys(c for c in clinicians if c is not None)
    )

    entities: list[dict[str, Any]] = [
        {
            "what": {"identifier": _event_identifier(event), "display": f"pumpgw event {event.seq}"},
            "type": _SYSTEM_OBJECT,
            "name": f"{event.type} #{event.seq}",
            # The log's own column names and values: enough to find the record and check its chain.
            "detail": [
                {"type": name, "valueString": value}
                for name, value in (
                    ("id", event.id),
                    ("seq", str(event.seq)),
                    ("type", event.type),
                    ("gateway", event.gateway),
                    ("hash", event.hash),
                    ("prev_hash", event.prev_hash),
                )
                if _text(value) is not None
            ],
        }
    ]
    if _text(event.patient) is not None:
        entities.append({"what": _patient(event), "type": _PERSON, "role": _ROLE_PATIENT})
    if (order := _order(event)) is not None:
        entities.append({"what": order, "type": _SYSTEM_OBJECT, "role": _ROLE_RESOURCE})
    if (pump := _pump(event)) is not None:
        entities.append({"what": pump, "type": _SYSTEM_OBJECT})
    for resource in made:
        ref = {"type": resource["resourceType"], "identifier": _event_identifier(event)}
        entities.append({"what": ref, "type": _SYSTEM_OBJECT, "role": _ROLE_RESOURCE})

    audit: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": event.id,  # AuditEvent has no identifier in R4: the id is the de-duplication key
        "type": _PATIENT_RECORD,
        "subtype": [{"system": EVENT_TYPE_SYSTEM, "code": event.type}],
        "action": "C",  # the gateway created a record of the event
        "recorded": event.time,
        "agent": agents,
        "source": {"observer": gateway, "type": [_DATA_INTERFACE]},
        "entity": entities,
    }
    audit["outcome"], description = _outcome(payload)
    if description is not None:
        audit["outcomeDesc"] = description
    return audit


def _outcome(payload: Payload | None) -> tuple[str, str | None]:
    """AuditEvent.outcome and outcomeDesc: 0 success; 4 minor failure (the gateway refused or could
    not verify something, and says why); 8 serious failure (the pump holds other than was sent)."""
    if isinstance(payload, ScanRejected | InfusionUnverified):
        return "4", _text(payload.reason)
    if isinstance(payload, OrderRejected):
        return "4", _text(f"{payload.code}: {payload.reason}")
    if isinstance(payload, ReconciliationResult) and payload.verdict == "mismatch":
        reason = "; ".join(c.reason for c in payload.checks if c.outcome == "mismatch")
        return "4", _text(reason) or "mismatch"
    if isinstance(payload, DersResult) and payload.verdict == "blocked":
        reason = "; ".join(c.message for c in payload.checks if c.outcome.startswith("hard"))
        return "4", _text(reason) or "blocked"
    if isinstance(payload, ReadBack) and not payload.matches:
        reason = "; ".join(f"{d.field}: sent {d.sent}, read {d.read}" for d in payload.differences)
        return "8", _text(reason) or "read-back mismatch"
    return "0", None


# -- references, identifiers and values ----------------------------------------------------------


def _event_identifier(event: Event) -> dict[str, Any]:
    return {"system": EVENT_SYSTEM, "value": event.id}


def _patient(event: Event) -> dict[str, Any]:
    return patient_reference(_text(event.patient) or "")


def _practitioner(badge: str | None) -> dict[str, Any] | None:
    return practitioner_reference(badge)


def _order(event: Event) -> dict[str, Any] | None:
    return order_reference(_text(event.order))


def _gateway(event: Event) -> dict[str, Any]:
    return {
        "type": "Device",
        "identifier": {"system": GATEWAY_SYSTEM, "value": event.gateway},
        "display": f"pumpgw gateway {event.gateway}",
    }


def _pump(event: Event) -> dict[str, Any] | None:
    if (pump := _text(event.pump)) is None:
        return None
    # The channel is not a Device of its own here: it is named in the display.
    return pump_reference(pump, gateway=event.gateway, display=_where(event))


def _where(event: Event) -> str:
    if (pump := _text(event.pump)) is None:
        return f"gateway {event.gateway}"
    channel = "" if event.channel is None else f" channel {event.channel}"
    return f"pump {pump}{channel} (gateway {event.gateway})"


_text = fhir_text  # FHIR string or None; control characters escaped (fhir/administration.py)


def _known_type(type_: str) -> EventType | None:
    try:
        return EventType(type_)
    except ValueError:
        return None


def _payload(event: Event, type_: EventType | None) -> Payload | None:
    if type_ is None:
        return None
    try:
        return PAYLOADS[type_].model_validate(event.payload)
    except ValidationError as exc:
        raise ValueError(
            f"event {event.seq} ({event.id}): the payload is not a valid {event.type} payload: {exc}"
        ) from exc


def _check(resource: dict[str, Any]) -> None:
    """Validate ``resource`` with its R4B model: a mapping mistake fails here, not at the EPR."""
    _MODELS[resource["resourceType"]].model_validate(resource)
