"""The EPR's FHIR endpoint as an outbox destination (``pumpgw.gateway.outbox.Destination``).

:class:`FhirDestination` sends each clinical event's FHIR resources (``pumpgw.fhir.events``
``event_to_fhir``: a MedicationAdministration for an infusion event, an Observation for an alarm)
with a *conditional create* on the identifier made from the event id
(``If-None-Exist: identifier=urn:pumpgw:event|<event id>``), so delivering an event again, after
a crash between the server's answer and the outbox's bookkeeping, finds the resource already there
(200) instead of making a second copy. AuditEvents (no identifier in R4) are sent only when
``resource_types`` asks for them, with ``PUT AuditEvent/<event id>`` (idempotent). A
``pump.identified`` event writes the pump as a Device (``PUT Device/pump-<gateway>-<pump>``: each
identification updates the same Device, so its firmware and serial stay current); the
administrations refer to it by its identifier.

What happens to each answer (the outbox delivers in order and moves on only past acknowledged
events):

- 200 or 201: delivered;
- an event that maps to no resource of ``resource_types``: nothing to send, acknowledged;
- a refusal of *this event* (400, 409, 410, 412, 422 and other 4xx not listed below): not retried
  forever, which would stall every later event behind it. It is reported to ``on_rejected``
  (:func:`record_rejections` writes a ``delivery.rejected`` event to the log) and delivery moves on;
- a failure of the *link or the setup*, not of the event: no answer, a timeout, 5xx, a redirect
  (3xx: redirects are not followed, so the configured base URL is out of date), 408, 429, and
  401/403 (credentials), 404/405 (wrong base URL, resource type not supported), 406/415
  (content negotiation), and any failure to get a token: raises DeliveryError; the OutboxPart
  retries with backoff and writes ``delivery.failed`` once, so the operator sees it and nothing is
  lost.

Resources of one event are sent in order; if one is rejected, the event's other resources are
still sent. A rejected event is reported once per process (a batch repeated after a later
failure in it does not report it again).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pumpgw.gateway.errors import DeliveryError, FhirError
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.events import Event, EventType, Refs

from .administration import pump_device
from .client import FhirAuthError, FhirClient, identifier_query
from .events import event_to_fhir


def device_id(gateway: str, pump: str) -> str:
    """The FHIR id of a pump's Device: ``pump-<gateway>-<pump>``, in the id alphabet (A-Z a-z 0-9 - .)."""
    raw = f"pump-{gateway}-{pump}"
    return "".join(c if c.isascii() and (c.isalnum() or c in "-.") else "-" for c in raw)[:64]


log = logging.getLogger(__name__)

#: 4xx answers that say the link or the configuration is wrong, not the event: retried.
NOT_THE_EVENTS_FAULT: Final = frozenset({401, 403, 404, 405, 406, 408, 415, 429})
DEFAULT_TYPES: Final = frozenset({"MedicationAdministration", "Observation", "Device"})
_REASON_MAX: Final = 4000  # the delivery.rejected payload's reason is Text (1..4000)


@dataclass(frozen=True, slots=True)
class Rejection:
    """The EPR refused one resource made from an event: the HTTP status and what it said."""

    event_id: str
    resource_type: str
    status: int | None
    reason: str

    @property
    def code(self) -> str:
        """For ``delivery.rejected``: ``HTTP 422``, or ``mapping`` when no resource could be made."""
        return f"HTTP {self.status}" if self.status is not None else "mapping"


OnRejected = Callable[[Event, Rejection], Awaitable[None]]
ToFhir = Callable[[Event], list[dict[str, Any]]]


class FhirDestination:
    """Delivers clinical events to a FHIR server through ``client`` (already open)."""

    def __init__(
        self,
        client: FhirClient,
        *,
        on_rejected: OnRejected,
        name: str = "fhir-epr",
        max_batch: int = 20,
        resource_types: Collection[str] = DEFAULT_TYPES,
        to_fhir: ToFhir = event_to_fhir,
    ) -> None:
        self.name = name
        self.max_batch = max_batch
        self._client = client
        self._on_rejected = on_rejected
        self._types = frozenset(resource_types)
        self._to_fhir = to_fhir
        self._reported: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def deliver(self, events: Sequence[Event]) -> None:
        """Send each event's resources in order. Returns once every event is delivered or
        rejected (and the rejection reported); raises DeliveryError to be tried again later."""
        for event in events:
            if event.type == EventType.PUMP_IDENTIFIED and "Device" in self._types:
                await self._send_device(event)
                continue
            try:
                resources = self._to_fhir(event)
            except (
                ValueError,
                FhirError,
            ) as exc:  # the payload does not make a resource: no retry can fix it
                await self._reject(event, Rejection(event.id, "(none)", None, str(exc)))
                continue
            for resource in resources:
                if resource.get("resourceType") in self._types:
                    await self._send(event, resource)

    async def _send_device(self, event: Event) -> None:
        """The pump as a Device, written (PUT) under an id made from gateway and pump, so that each
        identification updates the same resource (firmware, serial) instead of adding one."""
        p = event.payload
        try:
            device = pump_device(
                str(event.pump),
                p.get("model"),
                p.get("serial"),
                p.get("manufacturer"),
                gateway=event.gateway,
                resource_id=device_id(event.gateway, str(event.pump)),
            )
        except FhirError as exc:
            await self._reject(event, Rejection(event.id, "Device", None, str(exc)))
            return
        await self._send(event, device)

    async def _send(self, event: Event, resource: dict[str, Any]) -> None:
        kind = str(resource["resourceType"])
        try:
            if kind in ("AuditEvent", "Device"):  # AuditEvent: no identifier in R4; Device: kept current
                await self._client.update(resource)
            else:
                ident = resource["identifier"][0]
                await self._client.create(
                    resource, if_none_exist=identifier_query(ident["system"], ident["value"])
                )
        except FhirAuthError as exc:  # no credential: the setup's fault, whatever the status
            raise DeliveryError(self.name, str(exc)) from exc
        except FhirError as exc:
            if (
                exc.status is None
                or exc.status >= 500
                or exc.status < 400  # a redirect (not followed): the base URL is out of date
                or exc.status in NOT_THE_EVENTS_FAULT
            ):
                raise DeliveryError(self.name, str(exc)) from exc
            await self._reject(event, Rejection(event.id, kind, exc.status, str(exc)))

    async def _reject(self, event: Event, rejection: Rejection) -> None:
        key = (event.id, rejection.resource_type)
        if key in self._reported:
            return
        log.warning(
            "the FHIR server refused an event; recorded and passed over",
            extra={"destination": self.name, "event": event.id, "seq": event.seq, "code": rejection.code},
        )
        await self._on_rejected(event, rejection)  # raises (EventLogError): the batch is retried
        self._reported[key] = None
        while len(self._reported) > 10_000:
            self._reported.popitem(last=False)


def record_rejections(events: EventLog, destination: str) -> OnRejected:
    """An ``on_rejected`` that writes ``delivery.rejected`` (destination, event id, code, reason)
    to the log, about the same pump, channel, patient, order and clinician as the rejected event."""

    async def record(event: Event, rejection: Rejection) -> None:
        reason = rejection.reason.strip() or "no reason given"
        if len(reason) > _REASON_MAX:
            reason = reason[: _REASON_MAX - 3] + "..."
        await events.append(
            EventType.DELIVERY_REJECTED,
            {"destination": destination, "event_id": event.id, "code": rejection.code, "reason": reason},
            pump=event.pump,
            channel=event.channel,
            refs=Refs(patient=event.patient, order=event.order, clinician=event.clinician),
        )

    return record
