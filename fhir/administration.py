"""The one builder of FHIR R4 MedicationAdministration (and the pump's Device) in the gateway.

:func:`medication_administration` turns *what happened* at the bedside (:class:`Administered`: an
event id, a status, when, the pump, the clinician, the rate the pump ran at, the volume it gave),
optionally with the :class:`~pumpgw.gateway.orders.Order` it carried out, into a JSON-ready dict
checked against the fhir.resources R4B model. ``pumpgw.fhir.events`` builds its infusion snapshots
with it, and so does anything that documents an administration from an order.

What the dicts promise (the same as ``fhir/events.py``'s, docs/events.md "FHIR mapping"):

- ``identifier``: one, made from the event id, so a conditional create
  (``If-None-Exist: identifier=<system>|<value>``) never makes a second copy on a retry. With the
  default system ``urn:ietf:rfc:3986`` the value is ``urn:uuid:<event id>`` (the event id must then
  be a UUID); with any other system (``urn:pumpgw:event``, a hospital's) the value is the event id.
- Quantities are UCUM (``http://unitsofmeasure.org``) with ``code`` = ``unit`` = the gateway's UCUM
  code (``mL/h``, never ``ml/h``), and the value a ``Decimal`` with the precision it was given
  (``4.00`` stays ``4.00``). ``json.dumps`` refuses a Decimal; ``pumpgw.fhir.client.dumps_json``
  writes it digit for digit.
- Patients, orders and clinicians are referenced by identifier (``Reference.identifier``), as the
  gateway knows them from wristbands, orders and badges; the patient with type ``MR``.
- Nothing is invented: an element whose value is unknown is left out. FHIR invariant mad-1 (a
  dosage has a dose or a rate) is kept by leaving the dosage out when it has neither.

The rate: ``dosage.rateQuantity`` is the rate the pump ran at, in ``mL/h``, when given; else the
ordered dose rate (``4 ug/kg/min``) as ordered. A FHIR rate may also be a Ratio (the R4 example
``medadmin0309`` says ``rateRatio`` 50 mL / 1 h); the gateway emits the equivalent
``rateQuantity`` 50 mL/h, which is one number in the unit pumps are programmed in
(``tests/test_fhir_administration.py`` shows the two carry the same rate).
"""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from pydantic import BaseModel, ValidationError

from pumpgw.gateway.errors import FhirError
from pumpgw.gateway.orders import Order
from pumpgw.gateway.quantity import Quantity

# -- code systems --------------------------------------------------------------------------------

UCUM: Final = "http://unitsofmeasure.org"
MDC: Final = "urn:iso:std:iso:11073:10101"  # IEEE 11073 MDC codes in FHIR (shared/reference/ihe-pcd.md)
V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
DATA_ABSENT: Final = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
URI_SYSTEM: Final = "urn:ietf:rfc:3986"  # Identifier.system when the value is itself a URI (urn:uuid:...)
PUMP_SYSTEM: Final = "urn:pumpgw:pump"  # a pump Device: value = "<gateway>/<pump>" (pump ids are per gateway)

MRN_TYPE: Final = {"coding": [{"system": V2_0203, "code": "MR", "display": "Medical record number"}]}
# Containment level of an infusion pump in IEEE 11073 (ihe-pcd.md, "MDC codes"): the VMD, which is
# also the OBX-3 of the pump's identity in PIV and DEC messages.
INFUSION_PUMP_TYPE: Final = {
    "coding": [{"system": MDC, "code": "69986", "display": "MDC_DEV_PUMP_INFUS_VMD"}]
}

AdministrationStatus = Literal[
    "in-progress", "not-done", "on-hold", "completed", "entered-in-error", "stopped", "unknown"
]
_STATUSES: Final = frozenset(
    {"in-progress", "not-done", "on-hold", "completed", "entered-in-error", "stopped", "unknown"}
)


# -- what happened -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Administered:
    """What happened at the bedside, as the gateway saw it. Unknown values stay ``None``.

    When: ``at`` (one moment: a rate change, a snapshot) or ``start`` and/or ``end`` (a period);
    each an aware datetime or FHIR dateTime text (the event's own time, kept as written).
    ``rate`` is the flow the pump ran at (volume per time, sent as mL/h); ``volume_infused`` the
    volume it gave (sent as ``dosage.dose`` in mL). ``pump`` is a Device Reference
    (:func:`pump_reference`). ``patient_id``, ``order_id`` and ``drug`` are needed only without an
    order (with one, they must agree with it).
    """

    event_id: str
    status: AdministrationStatus
    at: str | datetime | None = None
    start: str | datetime | None = None
    end: str | datetime | None = None
    patient_id: str | None = None
    order_id: str | None = None
    drug: str | None = None
    pump: dict[str, Any] | None = None
    clinician: str | None = None
    rate: Quantity | None = None
    volume_infused: Quantity | None = None
    notes: tuple[str, ...] = field(default=())


def medication_administration(
    happened: Administered,
    order: Order | None = None,
    *,
    identifier_system: str = URI_SYSTEM,
    resource_id: str | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """The R4 MedicationAdministration of ``happened`` (carrying out ``order``, if given).

    With an order: the medication is the order's coded drug, the subject its patient, ``request``
    its order id, the dosage route its route, and the rate the pump's (else the ordered dose
    rate). Without one: the drug as ``happened.drug`` names it (text only; unknown is marked with
    ``data-absent-reason``), and the patient is ``happened.patient_id`` (required: ``subject`` is
    1..1 and never invented).

    ``resource_id`` sets ``id`` (for a PUT, or an export that keys on it); a create leaves it out.
    Raises FhirError when the facts do not make a valid resource (no patient, a patient or order
    that differs from the order's, a naive time, a rate that is not a volume per time).
    """
    what = f"MedicationAdministration for event {happened.event_id}"
    if happened.status not in _STATUSES:
        raise FhirError(what, f"status {happened.status!r} is not in medication-admin-status")
    patient = _one_of(what, "patient", happened.patient_id, order.patient_id if order else None)
    if patient is None:
        raise FhirError(what, "no patient: subject is required (1..1) and is never invented")
    order_id = _one_of(what, "order", happened.order_id, order.order_id if order else None)

    resource: dict[str, Any] = {"resourceType": "MedicationAdministration"}
    if resource_id is not None:
        resource["id"] = resource_id
    resource["identifier"] = [event_identifier(happened.event_id, identifier_system)]
    resource["status"] = happened.status
    resource["medicationCodeableConcept"] = (
        _order_medication(order) if order is not None else _pump_medication(happened.drug)
    )
    resource["subject"] = patient_reference(patient)
    resource.update(_effective(what, happened))
    if (clinician := practitioner_reference(happened.clinician)) is not None:
        resource["performer"] = [{"actor": clinician}]
    if (request := order_reference(order_id)) is not None:
        resource["request"] = request
    if happened.pump is not None:
        resource["device"] = [happened.pump]
    notes = [text for note in happened.notes if (text := fhir_text(note)) is not None]
    if notes:
        resource["note"] = [{"text": note} for note in notes]
    if (dosage := _dosage(what, happened, order)) is not None:
        resource["dosage"] = dosage
    if validate:
        check(resource)
    return resource


def _one_of(what: str, name: str, given: str | None, ordered: str | None) -> str | None:
    given, ordered = fhir_text(given), fhir_text(ordered)
    if given is not None and ordered is not None and given != ordered:
        raise FhirError(what, f"the {name} {given!r} is not the order's {name} {ordered!r}")
    return ordered if ordered is not None else given


def _order_medication(order: Order) -> dict[str, Any]:
    drug = order.drug
    coding: dict[str, Any] = {}
    if (system := fhir_text(drug.system)) is not None:
        coding["system"] = system
    coding["code"] = drug.code
    if (name := fhir_text(drug.name)) is not None:
        coding["display"] = name
    concept: dict[str, Any] = {"coding": [coding]}
    if name is not None:
        concept["text"] = name
    return concept


def _pump_medication(drug: str | None) -> dict[str, Any]:
    # The drug as the pump names it; no code is looked up. Unknown: the standard "absent" marker.
    text = fhir_text(drug)
    if text is None:
        return {"extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}]}
    return {"text": text}


def _effective(what: str, happened: Administered) -> dict[str, Any]:
    if happened.at is not None:
        if happened.start is not None or happened.end is not None:
            raise FhirError(what, "give either one moment (at) or a period (start, end), not both")
        return {"effectiveDateTime": _datetime(what, happened.at)}
    period = {
        key: _datetime(what, value)
        for key, value in (("start", happened.start), ("end", happened.end))
        if value is not None
    }
    if not period:
        raise FhirError(what, "no time: effective[x] is required (1..1)")
    return {"effectivePeriod": period}


def _datetime(what: str, value: str | datetime) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise FhirError(what, f"time {value.isoformat()} has no time zone offset (FHIR requires one)")
    return value.isoformat()


def _dosage(what: str, happened: Administered, order: Order | None) -> dict[str, Any] | None:
    dosage: dict[str, Any] = {}
    if order is not None and (route := fhir_text(order.route)) is not None:
        dosage["route"] = {"text": route}
    if happened.volume_infused is not None:
        dosage["dose"] = quantity_json(_in(what, happened.volume_infused, "mL", "volume infused"))
    if happened.rate is not None:
        dosage["rateQuantity"] = quantity_json(_in(what, happened.rate, "mL/h", "rate"))
    elif order is not None and order.dose_rate is not None:
        dosage["rateQuantity"] = quantity_json(order.dose_rate)
    # mad-1: a dosage needs a dose or a rate; a route alone cannot be sent.
    if "dose" not in dosage and "rateQuantity" not in dosage:
        return None
    return dosage


def _in(what: str, q: Quantity, unit: str, name: str) -> Quantity:
    if q.unit == unit:
        return q
    try:
        return q.to(unit)
    except ValueError as exc:  # QuantityError: another dimension, or no exact value in the unit
        raise FhirError(what, f"the {name} {q} cannot be given in {unit}: {exc}") from exc


# -- the pump ------------------------------------------------------------------------------------


def pump_device(
    pump_id: str,
    model: str | None,
    serial: str | None,
    manufacturer: str | None,
    udi: str | None = None,
    *,
    gateway: str | None = None,
    resource_id: str | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """The R4 Device of an infusion pump: type MDC 69986 (``MDC_DEV_PUMP_INFUS_VMD``), identifier
    ``urn:pumpgw:pump|<gateway>/<pump>`` (the one ``pump_reference`` and fhir/events.py refer to),
    ``serialNumber``, ``manufacturer``, the model as ``deviceName`` (type ``model-name``), and the
    UDI's human-readable form (``udiCarrier.carrierHRF``) when known. Unknown values are left out."""
    what = f"Device for pump {pump_id}"
    value = fhir_text(pump_id if gateway is None else f"{gateway}/{pump_id}")
    if value is None:
        raise FhirError(what, "the pump id is empty")
    device: dict[str, Any] = {"resourceType": "Device"}
    if resource_id is not None:
        device["id"] = resource_id
    device["identifier"] = [{"system": PUMP_SYSTEM, "value": value}]
    if (udi_text := fhir_text(udi)) is not None:
        device["udiCarrier"] = [{"carrierHRF": udi_text}]
    if (maker := fhir_text(manufacturer)) is not None:
        device["manufacturer"] = maker
    if (serial_text := fhir_text(serial)) is not None:
        device["serialNumber"] = serial_text
    if (model_text := fhir_text(model)) is not None:
        device["deviceName"] = [{"name": model_text, "type": "model-name"}]
    device["type"] = INFUSION_PUMP_TYPE
    if validate:
        check(device)
    return device


def pump_reference(pump_id: str, *, gateway: str | None = None, display: str | None = None) -> dict[str, Any]:
    """A Reference to the pump's Device by its identifier (as :func:`pump_device` writes it)."""
    ref: dict[str, Any] = {
        "type": "Device",
        "identifier": {
            "system": PUMP_SYSTEM,
            "value": pump_id if gateway is None else f"{gateway}/{pump_id}",
        },
    }
    if (text := fhir_text(display)) is not None:
        ref["display"] = text
    return ref


# -- references, identifiers, values -------------------------------------------------------------


def event_identifier(event_id: str, system: str = URI_SYSTEM) -> dict[str, Any]:
    """The identifier of a resource made from one event: ``urn:ietf:rfc:3986|urn:uuid:<id>``, or
    ``<system>|<id>`` for any other system. Raises FhirError for a non-UUID under the URI system."""
    if system != URI_SYSTEM:
        return {"system": system, "value": event_id}
    try:
        uuid.UUID(event_id)
    except ValueError:
        raise FhirError(
            f"identifier for event {event_id!r}", f"not a UUID, so it cannot be a urn:uuid under {URI_SYSTEM}"
        ) from None
    return {"system": URI_SYSTEM, "value": f"urn:uuid:{event_id.lower()}"}


def patient_reference(patient_id: str) -> dict[str, Any]:
    """The patient by the identifier on the wristband (type MR; the gateway knows no system)."""
    return {"type": "Patient", "identifier": {"type": MRN_TYPE, "value": patient_id}}


def practitioner_reference(badge: str | None) -> dict[str, Any] | None:
    text = fhir_text(badge)
    return None if text is None else {"type": "Practitioner", "identifier": {"value": text}}


def order_reference(order_id: str | None) -> dict[str, Any] | None:
    text = fhir_text(order_id)
    return None if text is None else {"type": "MedicationRequest", "identifier": {"value": text}}


def quantity_json(q: Quantity) -> dict[str, Any]:
    """A FHIR Quantity: the exact Decimal, and the gateway's UCUM code as both unit and code."""
    return {"value": q.value, "unit": q.unit, "system": UCUM, "code": q.unit}


def fhir_text(value: str | None) -> str | None:
    """``value`` as a FHIR string, or None when it holds nothing printable (no name, no identifier).

    Control characters (FHIR strings may not hold them, XML cannot) are escaped as ``\\xNN``.
    """
    if value is None or not any(c.isprintable() and not c.isspace() for c in value):
        return None
    return "".join(
        f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" and c not in "\t\r\n" else c for c in value
    )


_MODELS: Final[dict[str, type[BaseModel]]] = {
    "MedicationAdministration": MedicationAdministration,
    "Device": Device,
}


def check(resource: dict[str, Any]) -> None:
    """Validate ``resource`` with its R4B model; a mapping mistake fails here, not at the EPR."""
    kind = resource["resourceType"]
    try:
        _MODELS[kind].model_validate(resource)
    except ValidationError as exc:
        problems = "; ".join(f"{kind}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise FhirError(f"building {kind}", problems) from exc
