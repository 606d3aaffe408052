"""Orders pulled from the eMAR's FHIR server: by patient (on the wristband scan) and by id.

``orders_for_patient`` finds the Patient by the identifier on the wristband, then that patient's
active MedicationRequests, fetching each referenced Medication (and the Patient) so that
:func:`~pumpgw.fhir.orders.medication_request_to_order` can map them. A request that cannot be
mapped unambiguously is not dropped silently: it comes back as an :class:`OrderRefused` naming the
element, next to the orders that mapped, so the nurse sees that an order exists but cannot be used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pumpgw.gateway.errors import FhirError
from pumpgw.gateway.orders import Order, OrderProblem, OrderRefused, PivError

from .client import FhirClient


@dataclass(frozen=True, slots=True)
class PatientOrders:
    """What the eMAR holds for one patient: the usable orders and the refused ones, with why."""

    patient_identifier: str
    orders: tuple[Order, ...]
    refused: tuple[OrderRefused, ...]


async def orders_for_patient(
    client: FhirClient, identifier: str, *, mrn_system: str | None = None
) -> PatientOrders:
    """The active orders of the patient whose identifier is ``identifier`` (``mrn_system``: the
    identifier's system, when configured). Raises FhirError when the server cannot be asked, and
    OrderRefused (9012) when no patient, or more than one, has that identifier."""
    token = f"{mrn_system}|{identifier}" if mrn_system else identifier
    patients = await client.search("Patient", [("identifier", token)])
    if len(patients) != 1:
        found = "no patient" if not patients else f"{len(patients)} patients"
        raise OrderRefused(
            None,
            [
                OrderProblem(
                    PivError.PATIENT_MISMATCH,
                    "Patient.identifier",
                    f"the eMAR has {found} with identifier {token!r}",
                )
            ],
        )
    patient = patients[0]
    # ``patient`` (not ``subject``): both are R4 search parameters of MedicationRequest, but
    # ``patient`` is the one US Core requires servers to support (and the one EHR vendors' FHIR
    # APIs document); ``subject`` would also match requests about a group.
    requests = await client.search(
        "MedicationRequest", [("patient", f"Patient/{patient.get('id')}"), ("status", "active")]
    )
    orders: list[Order] = []
    refused: list[OrderRefused] = []
    for request in requests:
        try:
            orders.append(await _map(client, request, patient, mrn_system))
        except OrderRefused as exc:
            refused.append(exc)
    return PatientOrders(identifier, tuple(orders), tuple(refused))


async def order_by_id(client: FhirClient, request_id: str, *, mrn_system: str | None = None) -> Order:
    """The MedicationRequest ``request_id``, with its Medication and Patient, as an Order."""
    request = await client.read("MedicationRequest", request_id)
    patient = await _reference(client, request.get("subject"))
    return await _map(client, request, patient, mrn_system)


async def _map(
    client: FhirClient, request: dict[str, Any], patient: dict[str, Any] | None, mrn_system: str | None
) -> Order:
    from .orders import medication_request_to_order

    medication = await _reference(client, request.get("medicationReference"))
    return medication_request_to_order(
        request,
        medication=medication,
        patient=patient,
        received_from=f"{client.base_url}/MedicationRequest/{request.get('id')}",
        mrn_system=mrn_system,
    )


async def _reference(client: FhirClient, ref: object) -> dict[str, Any] | None:
    """The resource a ``{"reference": "Type/id"}`` points at on this server; None for a contained
    (``#id``) or absent reference (the mapper reads contained resources itself)."""
    if not isinstance(ref, dict):
        return None
    target = ref.get("reference")
    if not isinstance(target, str) or target.startswith("#") or target.count("/") != 1:
        return None
    kind, _, rid = target.partition("/")
    try:
        return await client.read(kind, rid)
    except FhirError as exc:
        if exc.status == 404:
            raise OrderRefused(
                None, [OrderProblem("204", f"reference {target}", "the eMAR does not have it (404)")]
            ) from None
        raise
