"""The gateway's links to the hospital's systems, built from ``[hl7]``, ``[fhir]`` and ``[epr]``.

- ``[hl7]``: the PIV order consumer (RGV^O15 in, ACK^O15 at once, RRG^O16 to the order programmer),
  keeping accepted orders in :class:`~pumpgw.gateway.orders.PendingOrders`.
- ``[[epr.hl7]]``: one outbox per receiver, sending IHE PCD messages over MLLP.
- ``[[epr.fhir]]``: one outbox per receiver, conditional-creating MedicationAdministration (and
  alarm Observations) over FHIR R4.
- ``[fhir]``: the eMAR's FHIR server, for orders by patient (``pumpgw.fhir.order_source``). Read
  and checked; nothing in the running gateway asks it yet (the bedside workflow will).

Each receiver is an outbox destination (docs/events.md): in order, at least once, retried with
backoff while it is down; what a receiver refuses is recorded as ``delivery.rejected`` and not
retried. None of these links can stop the gateway or touch a pump.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .clock import Clock
from .config import EprHl7Receiver, FhirAuthSection, GatewayConfig
from .eventlog import EventLog
from .events import Event, EventType, Refs
from .orders import PendingOrders
from .outbox import OutboxPart
from .tls import client_context, server_context

if TYPE_CHECKING:  # imported when configured: fhir.resources alone costs ~400 ms and ~26 MiB here
    from pumpgw.fhir.client import Auth, FhirClient
    from pumpgw.hl7.build import Party
    from pumpgw.hl7.epr import Hl7EprDestination
    from pumpgw.hl7.piv_consumer import PivConsumer


def receiver_names(config: GatewayConfig) -> tuple[str, ...]:
    """The outbox names of the EPR receivers (retention keeps what any of them has not received)."""
    return tuple(r.name for r in config.epr.hl7) + tuple(r.name for r in config.epr.fhir)


def fhir_auth(section: FhirAuthSection | None, clock: Clock) -> Auth | None:
    from pumpgw.fhir.client import BearerToken, SmartBackendServices

    if section is None:
        return None
    if section.token_file is not None:
        return BearerToken(section.token_file)
    if section.smart_token_url is not None:
        # FhirAuthSection's validator has made sure the four smart_* keys come together.
        return SmartBackendServices(
            section.smart_token_url,
            section.smart_client_id or "",
            section.smart_key_file or Path(),
            section.smart_key_id or "",
            section.smart_scope,
            clock=clock,
        )
    return None


class ClientPart:
    """An outbox part whose FHIR client is opened for as long as the part runs."""

    def __init__(self, client: FhirClient, part: OutboxPart) -> None:
        self.client = client
        self.part = part
        self.name = part.name

    async def run(self, ready: asyncio.Event) -> None:
        async with self.client:
            await self.part.run(ready)


class Hl7Part:
    """An outbox part whose MLLP connection to the receiver is closed when the part stops (the
    destination keeps it open between messages; left open, it would outlive the gateway's loop)."""

    def __init__(self, destination: Hl7EprDestination, part: OutboxPart) -> None:
        self.destination = destination
        self.part = part
        self.name = part.name

    async def run(self, ready: asyncio.Event) -> None:
        try:
            await self.part.run(ready)
        finally:
            await asyncio.shield(self.destination.close())


class HospitalLinks:
    """Everything the gateway runs towards the hospital; empty when nothing is configured."""

    def __init__(
        self,
        config: GatewayConfig,
        events: EventLog,
        clock: Clock,
        pumps: Callable[[], dict[str, frozenset[str]]],
    ) -> None:
        self.orders = PendingOrders()
        self.piv: PivConsumer | None = None
        self.outboxes: list[OutboxPart] = []
        self.parts: list[Any] = []
        if not (config.hl7.enabled or config.epr.hl7 or config.epr.fhir):
            return
        from pumpgw.hl7.build import Party
        from pumpgw.hl7.piv_consumer import PivConsumer

        me = Party(config.hl7.application, config.hl7.facility or config.gateway.id)
        if config.hl7.enabled:
            self.piv = PivConsumer(
                config.hl7,
                events,
                self.orders,
                clock,
                pumps,
                server_ssl=server_context(config.hl7.tls, "hl7"),
                client_ssl=client_context(config.hl7.tls, "hl7") if config.hl7.tls else None,
                sender=me,
            )
            self.parts.append(self.piv)
        for i, h in enumerate(config.epr.hl7):
            hl7_destination = _hl7_destination(h, i, me, events, clock)
            part = OutboxPart(hl7_destination, events, clock)
            self.outboxes.append(part)
            self.parts.append(Hl7Part(hl7_destination, part))
        for i, f in enumerate(config.epr.fhir):
            from pumpgw.fhir.client import FhirClient
            from pumpgw.fhir.destination import FhirDestination, record_rejections

            client = FhirClient(
                f.base_url,
                ssl=client_context(f.tls, f"epr.fhir[{i}]"),
                auth=fhir_auth(f.auth, clock),
                timeout_s=f.timeout_s,
            )
            destination = FhirDestination(client, on_rejected=record_rejections(events, f.name), name=f.name)
            part = OutboxPart(destination, events, clock)
            self.outboxes.append(part)
            self.parts.append(ClientPart(client, part))

    async def delivery_status(self) -> dict[str, Any]:
        """Per EPR receiver: its outbox status (backlog, oldest, failing and why)."""
        return {part.destination.name: await part.outbox.status() for part in self.outboxes}

    def orders_status(self) -> dict[str, Any]:
        """Orders received over HL7 PIV: how many decided and pending, and the RRG^O16 answers."""
        status: dict[str, Any] = {"pending": len(self.orders)}
        if self.piv is not None:
            status["piv"] = {
                "decided": self.piv.processed,
                "rrg_sent": self.piv.rrg_sent,
                "rrg_refused": self.piv.rrg_refused,
                "rrg_failed": self.piv.rrg_failed,
            }
        return status


def _hl7_destination(
    r: EprHl7Receiver, index: int, me: Party, events: EventLog, clock: Clock
) -> Hl7EprDestination:
    from pumpgw.hl7.build import Party
    from pumpgw.hl7.epr import Hl7EprDestination
    from pumpgw.hl7.mllp_io import MllpClient
    from pumpgw.hl7.pcd import IpecCodes, PcdConfig

    client = MllpClient(
        r.host,
        r.port,
        ssl=client_context(r.tls, f"epr.hl7[{index}]"),
        reply_timeout_s=r.reply_timeout_s,
    )
    pcd = PcdConfig(
        sender=me,
        receiver=Party(r.application or r.name, r.facility or ""),
        messages=frozenset(r.messages),
        ipec_codes=IpecCodes(deliv_stop=r.ipec_stop_code, deliv_comp=r.ipec_complete_code),
        patient_id_authority=r.patient_id_authority,
    )

    async def rejected(event: Event, code: str, reason: str) -> None:
        await events.append(
            EventType.DELIVERY_REJECTED,
            {
                "destination": r.name,
                "event_id": event.id,
                "code": code,
                "reason": reason[:4000] or "no reason",
            },
            pump=event.pump,
            channel=event.channel,
            refs=Refs(patient=event.patient, order=event.order, clinician=event.clinician),
        )

    return Hl7EprDestination(r.name, client, pcd, clock, on_rejected=rejected, history=events.read_after)
