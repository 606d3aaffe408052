"""The EPR's FHIR endpoint as an outbox destination (fhir/destination.py): the real EventLog and
OutboxPart (as tests/test_outbox.py uses them) delivering to a FHIR server on 127.0.0.1, port 0
(tests/fhir_server.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from event_samples import sample
from fhir_server import FhirTestServer, Scripted, outcome
from part_harness import Sleeps, run, stop, until_delivered

from pumpgw.fhir.client import FhirClient
from pumpgw.fhir.destination import FhirDestination, Rejection, record_rejections
from pumpgw.gateway.backoff import Backoff
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.events import Event, EventType, Refs
from pumpgw.gateway.outbox import OutboxPart

pytestmark = pytest.mark.hazard("HAZ-013")

NAME = "fhir-epr"
REFS = Refs(patient="MRN-1", order="ORD-1", clinician="RN-1")


@pytest.fixture
async def server() -> AsyncIterator[FhirTestServer]:
    async with FhirTestServer() as s:
        yield s


@pytest.fixture
async def client(server: FhirTestServer) -> AsyncIterator[FhirClient]:
    async with FhirClient(server.base_url, retries=0, timeout_s=2.0) as c:
        yield c


async def infusion(log: EventLog, type: EventType = EventType.INFUSION_STARTED) -> Event:
    return await log.append(type, sample(type), pump="p1", channel=1, refs=REFS)


def event_ids(server: FhirTestServer, type: str = "MedicationAdministration") -> list[str]:
    """The event id of each resource the server holds, in the order they were created."""
    return [r["identifier"][0]["value"] for r in server.store.get(type, {}).values()]


def part_for(destination: FhirDestination, log: EventLog, sleeps: Sleeps | None = None) -> OutboxPart:
    backoff = Backoff(base_s=0.5, cap_s=4.0, rand=lambda: 1.0)
    return OutboxPart(destination, log, FakeClock(), backoff=backoff, sleep=sleeps or Sleeps())


async def test_clinical_events_are_delivered_in_order_and_the_rest_passed_over(
    eventlog: EventLog, server: FhirTestServer, client: FhirClient
) -> None:
    destination = FhirDestination(client, on_rejected=record_rejections(eventlog, NAME), max_batch=2)
    task = await run(part_for(destination, eventlog))
    try:
        started = await infusion(eventlog)
        alarm = await eventlog.append(
            EventType.ALARM_RAISED, {"alarm": "occlusion"}, pump="p1", channel=1, refs=REFS
        )
        await eventlog.append(EventType.LINK_RESTORED, {}, pump="p1")  # not clinical: nothing to send
        await eventlog.append(
            EventType.SCAN_ACCEPTED, sample(EventType.SCAN_ACCEPTED), refs=REFS
        )  # AuditEvent only
        completed = await infusion(eventlog, EventType.INFUSION_COMPLETED)
        await server.until(lambda: len(server.fhir_requests("POST")) == 3)
        await until_delivered(eventlog, NAME, completed.seq)
    finally:
        await stop(task)
    assert await eventlog.delivered_seq(NAME) == completed.seq
    posts = server.fhir_requests("POST")
    assert [p.path for p in posts] == [
        "/fhir/MedicationAdministration",
        "/fhir/Observation",
        "/fhir/MedicationAdministration",
    ]
    assert [p.headers["If-None-Exist"] for p in posts] == [
        f"identifier=urn:pumpgw:event|{e.id}" for e in (started, alarm, completed)
    ]
    assert event_ids(server) == [started.id, completed.id]
    assert "id" not in posts[0].json()  # the server assigns ids


async def test_a_crash_after_the_server_took_a_batch_does_not_duplicate_it(
    eventlog: EventLog, server: FhirTestServer, client: FhirClient
) -> None:
    destination = FhirDestination(client, on_rejected=record_rejections(eventlog, NAME), max_batch=10)

    class Died(BaseException):
        """The process dies: not an Exception, so no part can catch it and carry on."""

    class PowerCut:
        """Delivers, then the gateway dies before the outbox records the delivery."""

        name, max_batch = NAME, 10

        async def deliver(self, events: Sequence[Event]) -> None:
            await destination.deliver(events)
            raise Died("power cut")

    events = [await infusion(eventlog, t) for t in (EventType.INFUSION_STARTED, EventType.INFUSION_PAUSED)]
    first = await run(part_for(PowerCut(), eventlog))  # type: ignore[arg-type]
    await asyncio.wait({first})
    assert isinstance(first.exception(), Died)
    assert await eventlog.delivered_seq(NAME) == 0  # the log never heard back
    assert len(server.store["MedicationAdministration"]) == 2
    # After the restart the same events go again: the server finds them (200), and keeps one copy.
    again = await run(part_for(destination, eventlog))
    try:
        await server.until(lambda: len(server.fhir_requests("POST")) == 4)
        await until_delivered(eventlog, NAME, events[-1].seq)
    finally:
        await stop(again)
    assert await eventlog.delivered_seq(NAME) == events[-1].seq
    assert event_ids(server) == [e.id for e in events]  # one copy each


async def test_a_refused_event_is_recorded_and_the_next_one_still_goes(
    eventlog: EventLog, server: FhirTestServer, client: FhirClient
) -> None:
    bad: list[str] = []
    server.reject = lambda resource: (
        outcome("Patient MRN-1 is not known here", "MedicationAdministration.subject")
        if resource["identifier"][0]["value"] in bad
        else None
    )
    destination = FhirDestination(client, on_rejected=record_rejections(eventlog, NAME))
    first = await infusion(eventlog)
    refused = await infusion(eventlog, EventType.INFUSION_RATE_CHANGED)
    bad.append(refused.id)
    last = await infusion(eventlog, EventType.INFUSION_STOPPED)
    task = await run(part_for(destination, eventlog))
    try:
        await server.until(lambda: len(event_ids(server)) == 2)
        await until_delivered(eventlog, NAME, last.seq + 1)  # past the delivery.rejected event too
    finally:
        await stop(task)
    assert event_ids(server) == [first.id, last.id]
    [record] = [e for e in await eventlog.read_after(0, 100) if e.type == "delivery.rejected"]
    assert record.payload["destination"] == NAME
    assert record.payload["event_id"] == refused.id
    assert record.payload["code"] == "HTTP 422"
    assert (
        "error processing at MedicationAdministration.subject: Patient MRN-1 is not known here"
        in record.payload["reason"]
    )
    assert (record.pump, record.channel, record.patient, record.order) == ("p1", 1, "MRN-1", "ORD-1")
    assert len(server.fhir_requests("POST")) == 3  # the refusal was not retried
    assert not any(e.type == "delivery.failed" for e in await eventlog.read_after(0, 100))


async def test_a_busy_server_is_retried_with_backoff_until_it_takes_the_event(
    eventlog: EventLog, server: FhirTestServer, client: FhirClient
) -> None:
    server.then(Scripted(503, outcome("maintenance")), Scripted(503, outcome("maintenance")))
    sleeps = Sleeps()
    destination = FhirDestination(client, on_rejected=record_rejections(eventlog, NAME))
    started = await infusion(eventlog)
    task = await run(part_for(destination, eventlog, sleeps))
    try:
        await server.until(lambda: len(event_ids(server)) == 1)
        await until_delivered(eventlog, NAME, started.seq + 2)  # delivery.failed, delivery.restored
    finally:
        await stop(task)
    assert event_ids(server) == [started.id]
    restored = [e for e in await eventlog.read_after(0, 100) if e.type == "delivery.restored"]
    assert sleeps.delays == [0.5, 1.0]
    types = [e.type for e in await eventlog.read_after(0, 100)]
    assert types.count("delivery.failed") == 1
    assert types.count("delivery.rejected") == 0
    failed = next(e for e in await eventlog.read_after(0, 100) if e.type == "delivery.failed")
    assert "HTTP 503" in failed.payload["error"]
    assert restored[0].payload["attempts"] == 2


@pytest.mark.parametrize("status", [301, 307, 401, 403, 404, 429, 500])
async def test_answers_that_are_not_about_the_event_are_retried_not_rejected(
    server: FhirTestServer, client: FhirClient, status: int
) -> None:
    from pumpgw.gateway.errors import DeliveryError

    rejections: list[Rejection] = []

    async def on_rejected(event: Event, rejection: Rejection) -> None:
        rejections.append(rejection)

    server.then(Scripted(status, outcome("not now")))
    destination = FhirDestination(client, on_rejected=on_rejected)
    event = make_event(EventType.INFUSION_STARTED)
    with pytest.raises(DeliveryError, match=f"HTTP {status}"):
        await destination.deliver([event])
    assert rejections == []
    await destination.deliver([event])  # and it goes once the server is right
    assert event_ids(server) == [event.id]


async def test_no_token_is_never_the_event_s_fault(server: FhirTestServer, tmp_path: Any) -> None:
    from pumpgw.fhir.client import BearerToken
    from pumpgw.gateway.errors import DeliveryError

    async def on_rejected(event: Event, rejection: Rejection) -> None:
        raise AssertionError(rejection)

    async with FhirClient(server.base_url, auth=BearerToken(tmp_path / "missing"), retries=0) as client:
        with pytest.raises(DeliveryError, match="cannot read the token file"):
            await FhirDestination(client, on_rejected=on_rejected).deliver(
                [make_event(EventType.INFUSION_STARTED)]
            )
    assert server.requests == []


async def test_redelivery_reports_a_rejection_once_and_never_duplicates(
    server: FhirTestServer, client: FhirClient
) -> None:
    rejections: list[tuple[str, Rejection]] = []

    async def on_rejected(event: Event, rejection: Rejection) -> None:
        rejections.append((event.id, rejection))

    good, bad = make_event(EventType.INFUSION_STARTED, seq=1), make_event(EventType.INFUSION_PAUSED, seq=2)
    server.reject = lambda r: outcome("no") if r["identifier"][0]["value"] == bad.id else None
    destination = FhirDestination(client, on_rejected=on_rejected)
    for _ in range(3):
        await destination.deliver([good, bad])
    assert event_ids(server) == [good.id]
    assert [(eid, r.code, r.resource_type) for eid, r in rejections] == [
        (bad.id, "HTTP 422", "MedicationAdministration")
    ]


async def test_audit_events_go_by_put_on_their_id_when_asked_for(
    server: FhirTestServer, client: FhirClient
) -> None:
    async def on_rejected(event: Event, rejection: Rejection) -> None:
        raise AssertionError(rejection)

    destination = FhirDestination(
        client, on_rejected=on_rejected, resource_types={"MedicationAdministration", "AuditEvent"}
    )
    event = make_event(EventType.INFUSION_STARTED)
    await destination.deliver([event])
    await destination.deliver([event])
    assert list(server.store["AuditEvent"]) == [event.id]
    assert len(server.store["MedicationAdministration"]) == 1
    assert [r.method for r in server.fhir_requests() if "AuditEvent" in r.path] == ["PUT", "PUT"]


async def test_an_identified_pump_is_written_as_its_device_and_kept_current(
    server: FhirTestServer, client: FhirClient
) -> None:
    """pump.identified -> the pump as a Device (type MDC 69986), PUT under one id per gateway and
    pump: a second identification (new firmware) updates it, never a second Device."""

    async def on_rejected(event: Event, rejection: Rejection) -> None:
        raise AssertionError(rejection)

    destination = FhirDestination(client, on_rejected=on_rejected)
    payload = dict(sample(EventType.PUMP_IDENTIFIED), model="NE-1000", serial="SN 42", firmware="1.0")
    first = make_event(EventType.PUMP_IDENTIFIED, seq=1, payload=payload)
    again = make_event(EventType.PUMP_IDENTIFIED, seq=2, payload=dict(payload, firmware="2.0"))
    await destination.deliver([first, again])
    [(device_id, device)] = server.store["Device"].items()
    assert device_id == device_id_of(first)
    assert device["serialNumber"] == "SN 42"
    assert device["type"]["coding"][0]["code"] == "69986"
    assert device["identifier"][0]["value"] == f"{first.gateway}/{first.pump}"
    assert [r.method for r in server.fhir_requests() if "Device" in r.path] == ["PUT", "PUT"]


def device_id_of(event: Event) -> str:
    from pumpgw.fhir.destination import device_id

    return device_id(event.gateway, str(event.pump))


async def test_an_event_that_cannot_be_mapped_is_rejected_not_retried(
    server: FhirTestServer, client: FhirClient
) -> None:
    rejections: list[Rejection] = []

    async def on_rejected(event: Event, rejection: Rejection) -> None:
        rejections.append(rejection)

    broken = make_event(EventType.INFUSION_STARTED, payload={"state": "flying"})
    await FhirDestination(client, on_rejected=on_rejected).deliver([broken])
    [rejection] = rejections
    assert rejection.code == "mapping"
    assert "not a valid infusion.started payload" in rejection.reason
    assert server.requests == []


def make_event(type: EventType, *, seq: int = 1, payload: dict[str, Any] | None = None) -> Event:
    return Event(
        seq=seq,
        id=f"0193a1b2-0000-7000-8000-{seq:012d}",
        time="2026-11-22T03:19:16.123Z",
        gateway="gw-1",
        type=str(type),
        pump="p1",
        channel=1,
        patient="MRN-1",
        order="ORD-1",
        clinician="RN-1",
        payload=sample(type) if payload is None else payload,
        prev_hash="c" * 64,
        hash="d" * 64,
    )
