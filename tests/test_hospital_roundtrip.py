"""The whole gateway and the hospital's systems, end to end, as the supervisor runs it.

Real parts everywhere: a :class:`~pumpgw.gateway.app.Gateway` built from a configuration with
``[hl7]`` (the PIV order consumer), one ``[[epr.hl7]]`` and one ``[[epr.fhir]]`` receiver, run by
its supervisor; the rig's :class:`EmulatedEmar` (FHIR server, PIV order programmer, RRG^O16
receiver) and :class:`EmulatedEpr` (FHIR endpoint validating with the R4B models, MLLP receiver
validating every message with hl7apy STRICT) on loopback ports the system picks; the event log
on disk in ``tmp_path``. No pumps are configured: the infusion and alarm events are appended to the
gateway's log as the bedside workflow and the monitor write them (payloads as
``tests/event_samples.py``), each naming the patient and order.

What is checked at the far end is what the emulated EPR kept, with its own verdict: PCD-10
``ORU^R42`` and PCD-04 ``ORU^R40`` answered ``AA`` (IHE PCD TF-2, ``shared/reference/ihe-pcd.md``),
MedicationAdministrations stored once per event (conditional create on the event id).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from event_samples import sample

from pumpgw.gateway.app import EVENT_LOG_NAME, Gateway
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.config import GatewayConfig, parse_config
from pumpgw.gateway.events import Event, EventType, Refs
from pumpgw.hl7.message import parse_message
from pumpgw.hl7.pcd import control_id
from pumpgw.hl7.piv_consumer import PivConsumer
from pumpgw.hl7.validate import validate_strict
from pumpgw.rig.emar import EmulatedEmar
from pumpgw.rig.epr import EmulatedEpr, Hl7Received

NOW = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)
HL7_EPR = "epr-hl7"
FHIR_EPR = "epr-fhir"
PUMP = "bed-7-pump"
#: The eMAR's example order that names no pump (RIG-ORD-1 and -2 name rig-modbus-1, which this
#: gateway, configured without pumps, does not serve).
ORDER = "RIG-ORD-3"
PATIENT = "RIG-100002"
REFS = Refs(patient=PATIENT, order=ORDER, clinician="RN-17")


# -- the gateway, run by its supervisor ---------------------------------------------------------------


class Started:
    """The last part: ready once every part before it is (the supervisor starts them in order)."""

    name = "test-started"

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()
        self.event.set()
        await asyncio.Event().wait()


@dataclass
class Running:
    gateway: Gateway
    committed: asyncio.Event  # set after every commit of the gateway's event log

    @property
    def piv(self) -> PivConsumer:
        assert self.gateway.hospital.piv is not None
        return self.gateway.hospital.piv

    async def append(
        self, type_: EventType, payload: dict[str, Any] | None = None, *, refs: Refs = REFS, channel: int = 1
    ) -> Event:
        """An event as the bedside workflow or the monitor writes it: pump, channel, patient, order."""
        return await self.gateway.events.append(
            type_, sample(type_) if payload is None else payload, pump=PUMP, channel=channel, refs=refs
        )

    async def until(self, condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 15) -> None:
        """Wait until ``condition`` holds: looked at after every commit of the log, and at least every
        50 ms (what the EPR receives commits nothing here)."""
        async with asyncio.timeout(timeout_s):
            while True:
                result = condition()
                if await result if isinstance(result, Awaitable) else result:
                    return
                self.committed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self.committed.wait()

    async def delivery(self) -> dict[str, Any]:
        status: dict[str, Any] = (await self.gateway.status_json())["delivery"]
        return status

    async def all_delivered(self) -> bool:
        status = await self.delivery()
        return all(status[name]["backlog"] == 0 for name in (HL7_EPR, FHIR_EPR))

    async def events(self) -> list[Event]:
        return await self.gateway.events.read_after(0, limit=10_000)


@asynccontextmanager
async def running(config: GatewayConfig, clock: FakeClock) -> AsyncIterator[Running]:
    gateway = Gateway(config, clock)
    started = Started()
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop, extra=[started]), name="gateway-under-test")
    waiting = asyncio.create_task(started.event.wait())
    await asyncio.wait({task, waiting}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():
        waiting.cancel()
        stop.set()
        if task.done():
            task.result()  # it failed to start: say why
        raise AssertionError("the gateway did not start within 30 s")
    committed = asyncio.Event()
    gateway.events.subscribe(committed)
    try:
        yield Running(gateway, committed)
        assert not task.done(), "the gateway stopped on its own"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def gateway_config(tmp_path: Path, emar: EmulatedEmar, epr: EmulatedEpr) -> GatewayConfig:
    return parse_config(
        {
            "gateway": {"id": "gw-bed-7", "state_dir": str(tmp_path / "state")},
            "hl7": {
                "enabled": True,
                "listen_port": 0,
                "facility": "WARD7",
                "order_programmer_host": emar.host,
                "order_programmer_port": emar.rrg_port,
                "reply_timeout_s": 2,
            },
            "epr": {
                "hl7": [
                    {
                        "name": HL7_EPR,
                        "host": epr.host,
                        "port": epr.mllp_port,
                        "messages": ["ipec", "acm"],
                        "patient_id_authority": "RIG",
                        "reply_timeout_s": 2,
                    }
                ],
                "fhir": [{"name": FHIR_EPR, "base_url": epr.fhir_base, "timeout_s": 2}],
            },
        },
        "test",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
async def emar(clock: FakeClock) -> AsyncIterator[EmulatedEmar]:
    async with EmulatedEmar(clock, reply_timeout_s=5.0) as running_emar:
        yield running_emar


@pytest.fixture
async def epr(clock: FakeClock) -> AsyncIterator[EmulatedEpr]:
    async with EmulatedEpr(clock) as running_epr:
        yield running_epr


@pytest.fixture
def config(tmp_path: Path, emar: EmulatedEmar, epr: EmulatedEpr) -> GatewayConfig:
    return gateway_config(tmp_path, emar, epr)


@pytest.fixture
async def gw(config: GatewayConfig, clock: FakeClock) -> AsyncIterator[Running]:
    async with running(config, clock) as r:
        yield r


# -- what the EPR has -------------------------------------------------------------------------------------


def hl7_of(epr: EmulatedEpr, kind: str, verdict: str | None = "AA") -> list[Hl7Received]:
    return [
        m for m in epr.hl7_messages() if m.message_type == kind and (verdict is None or m.verdict == verdict)
    ]


def administrations(epr: EmulatedEpr) -> list[dict[str, Any]]:
    return epr.resources("MedicationAdministration")


def event_ids(resources: list[dict[str, Any]]) -> list[str]:
    """The event id each resource was made from (its identifier, ``urn:pumpgw:event|<id>``)."""
    out = []
    for resource in resources:
        (ident,) = resource["identifier"]
        assert ident["system"] == "urn:pumpgw:event"
        out.append(ident["value"])
    return out


def ipec_ids(events: list[Event]) -> list[str]:
    return [control_id(e, "ipec", 0) for e in events]


# -- orders in ----------------------------------------------------------------------------------------------


async def test_an_order_from_the_emar_is_answered_kept_and_shown_in_the_status(
    emar: EmulatedEmar, gw: Running
) -> None:
    sent = await emar.send_order(ORDER, "127.0.0.1", gw.piv.port)
    assert sent.ack is not None
    assert sent.ack.code == "CA"
    refused = await emar.send_order("RIG-ORD-1", "127.0.0.1", gw.piv.port)  # for rig-modbus-1
    await emar.wait_for_result(ORDER, 5)
    await emar.wait_for_result("RIG-ORD-1", 5)
    async with asyncio.timeout(5):
        await gw.piv.drained()
    assert sent.result is not None
    assert (sent.result.code, sent.result.acked_control_id) == ("AA", sent.control_id)
    validate_strict(sent.result.message)
    assert refused.result is not None
    assert refused.result.code == "AR"
    assert "'rig-modbus-1' is not served by this gateway (it serves: none)" in refused.result.errors[0]

    order = gw.gateway.orders.get(ORDER)
    assert order is not None
    held = emar.order(ORDER)
    assert (order.patient_id, order.drug, order.concentration, order.dose_rate, order.vtbi) == (
        held.patient_id, held.drug, held.concentration, held.dose_rate, held.vtbi,
    )  # fmt: skip
    assert gw.gateway.orders.get("RIG-ORD-1") is None

    status = await gw.gateway.status_json()
    assert status["orders"] == {
        "pending": 1,
        "piv": {"decided": 2, "rrg_sent": 2, "rrg_refused": 0, "rrg_failed": 0},
    }
    assert set(status["delivery"]) == {HL7_EPR, FHIR_EPR}
    for name in (HL7_EPR, FHIR_EPR):
        receiver = status["delivery"][name]
        assert receiver["destination"] == name
        assert receiver["failing"] is False
        assert receiver["last_error"] is None
    # The order events have nothing for the EPR, yet each receiver passes them (and the start-up
    # events) as done: nothing stays in a backlog.
    await gw.until(gw.all_delivered)
    last = gw.gateway.events.last_seq
    status = await gw.gateway.status_json()
    assert [status["delivery"][n]["delivered_seq"] for n in (HL7_EPR, FHIR_EPR)] == [last, last]


# -- events out ---------------------------------------------------------------------------------------------


async def test_an_infusion_is_documented_over_hl7_and_fhir_once_across_restarts(
    config: GatewayConfig, clock: FakeClock, epr: EmulatedEpr, tmp_path: Path
) -> None:
    """infusion.started and .completed, with patient and order: two PCD-10 ORU^R42 that the EPR
    validates (AA), naming the patient (PID-3) and the order (OBR-2); two MedicationAdministrations
    for that patient and order. A restart sends nothing again; a restart after a crash between the
    EPR's answers and the outbox's bookkeeping sends everything again, and the conditional create
    makes no second MedicationAdministration (the HL7 resends carry the same MSH-10)."""
    async with running(config, clock) as gw:
        started = await gw.append(EventType.INFUSION_STARTED)
        completed = await gw.append(EventType.INFUSION_COMPLETED)
        await gw.until(lambda: len(hl7_of(epr, "ORU^R42")) == 2 and len(administrations(epr)) == 2)
        await gw.until(gw.all_delivered)
    infusion = [started, completed]

    messages = hl7_of(epr, "ORU^R42")
    assert [m.control_id for m in messages] == ipec_ids(infusion)
    for m in messages:
        validate_strict(m.message)
        msg = parse_message(m.message)
        pid, obr = msg.segment("PID"), msg.segment("OBR")
        assert pid is not None
        assert obr is not None
        assert (pid.component(3, 1), pid.component(3, 4), pid.component(3, 5)) == (PATIENT, "RIG", "MR")
        assert obr.component(2, 1) == ORDER
    assert "MDC_EVT_PUMP_DELIV_START" in messages[0].message.decode()
    assert "MDC_EVT_PUMP_DELIV_COMP" in messages[1].message.decode()

    stored = administrations(epr)
    assert event_ids(stored) == [e.id for e in infusion]
    assert [a["status"] for a in stored] == ["in-progress", "completed"]
    for a in stored:
        assert a["subject"]["identifier"]["value"] == PATIENT
        assert a["request"]["identifier"]["value"] == ORDER

    # A plain restart: the outboxes resume after what was acknowledged; nothing goes again.
    requests_before = len(epr.fhir_requests())
    async with running(config, clock) as gw:
        await gw.until(gw.all_delivered)
    assert len(hl7_of(epr, "ORU^R42")) == 2
    assert len(epr.fhir_requests()) == requests_before

    # A crash after the EPR answered, before the outbox recorded it: the position is older.
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / EVENT_LOG_NAME)) as db, db:
        db.execute(
            "UPDATE outbox SET delivered_seq = ? WHERE destination IN (?, ?)",
            (started.seq - 1, HL7_EPR, FHIR_EPR),
        )
    async with running(config, clock) as gw:
        await gw.until(lambda: len(hl7_of(epr, "ORU^R42")) == 4)
        await gw.until(lambda: [r.verdict for r in epr.fhir_requests()].count("exists") == 2)
        await gw.until(gw.all_delivered)
    assert len(administrations(epr)) == 2  # the conditional create found each one
    assert event_ids(administrations(epr)) == [e.id for e in infusion]
    resent = [m.control_id for m in hl7_of(epr, "ORU^R42")]
    assert resent == ipec_ids(infusion) * 2  # the same MSH-10s: the EPR can drop the copies


@pytest.mark.hazard("HAZ-013")
async def test_an_epr_outage_is_shown_then_everything_arrives_in_order(epr: EmulatedEpr, gw: Running) -> None:
    epr.set_mode("fail")  # FHIR 503; MLLP connections closed without a reply
    infusion: list[Event] = []
    for i in range(3):
        refs = Refs(patient=f"RIG-10000{1 + i % 2}", order=f"ORD-{i}", clinician="RN-17")
        infusion.append(await gw.append(EventType.INFUSION_STARTED, refs=refs, channel=1 + i))
        infusion.append(await gw.append(EventType.INFUSION_COMPLETED, refs=refs, channel=1 + i))

    async def both_failing() -> bool:
        # The status turns failing as the outbox writes delivery.failed: wait for both.
        status = await gw.delivery()
        said = {e.payload["destination"] for e in await gw.events() if e.type == "delivery.failed"}
        return all(status[name]["failing"] for name in (HL7_EPR, FHIR_EPR)) and said == {HL7_EPR, FHIR_EPR}

    await gw.until(both_failing)
    status = await gw.delivery()
    for name in (HL7_EPR, FHIR_EPR):
        receiver = status[name]
        assert receiver["backlog"] >= len(infusion)  # the infusion events and the delivery.failed
        assert receiver["delivered_seq"] < infusion[0].seq
        assert receiver["oldest_undelivered_time"] is not None
        assert receiver["failing_since"] is not None
        assert receiver["last_error"]
        assert receiver["attempts"] >= 1
    assert "503" in status[FHIR_EPR]["last_error"]
    failed = [e for e in await gw.events() if e.type == "delivery.failed"]
    assert sorted(e.payload["destination"] for e in failed) == [FHIR_EPR, HL7_EPR]  # once each
    assert all(e.payload["backlog"] >= 1 for e in failed)
    assert hl7_of(epr, "ORU^R42") == []
    assert administrations(epr) == []
    assert hl7_of(epr, "ORU^R42", verdict="dropped")  # it was tried

    epr.set_mode("ok")
    await gw.until(lambda: len(hl7_of(epr, "ORU^R42")) == 6 and len(administrations(epr)) == 6)
    await gw.until(gw.all_delivered)
    # Everything, in the order it happened, none twice, none missing.
    assert [m.control_id for m in hl7_of(epr, "ORU^R42")] == ipec_ids(infusion)
    assert event_ids(administrations(epr)) == [e.id for e in infusion]
    events = await gw.events()
    restored = [e for e in events if e.type == "delivery.restored"]
    assert sorted(e.payload["destination"] for e in restored) == [FHIR_EPR, HL7_EPR]
    assert all(e.payload["attempts"] >= 1 for e in restored)
    assert [e.type for e in events].count("delivery.failed") == 2
    status = await gw.delivery()
    assert not any(status[name]["failing"] for name in (HL7_EPR, FHIR_EPR))


@pytest.mark.hazard("HAZ-013")
async def test_a_refusal_by_the_epr_is_recorded_once_and_the_next_event_still_goes(
    epr: EmulatedEpr, gw: Running
) -> None:
    """Mode reject for one request: HL7 AR, then FHIR 422. Each refusal is one delivery.rejected
    naming the receiver and the event; neither is retried, and the next event is delivered."""

    async def refusals() -> int:
        return [e.type for e in await gw.events()].count("delivery.rejected")

    async def refused_once() -> bool:
        return await refusals() == 1

    epr.set_mode("reject", count=1, on="hl7")
    first = await gw.append(EventType.INFUSION_STARTED)
    await gw.until(refused_once)
    second = await gw.append(EventType.INFUSION_COMPLETED)
    await gw.until(lambda: len(hl7_of(epr, "ORU^R42")) == 1 and len(administrations(epr)) == 2)

    epr.set_mode("reject", count=1, on="fhir")
    third = await gw.append(EventType.INFUSION_STARTED, channel=2)
    fourth = await gw.append(EventType.INFUSION_COMPLETED, channel=2)
    await gw.until(lambda: len(hl7_of(epr, "ORU^R42")) == 3 and len(administrations(epr)) == 3)
    await gw.until(gw.all_delivered)

    rejected = [e for e in await gw.events() if e.type == "delivery.rejected"]
    assert [(e.payload["destination"], e.payload["event_id"]) for e in rejected] == [
        (HL7_EPR, first.id),
        (FHIR_EPR, third.id),
    ]
    hl7_rejection, fhir_rejection = rejected
    assert hl7_rejection.payload["code"] == "AR"
    assert "rejected by the rig's EPR" in hl7_rejection.payload["reason"]
    assert fhir_rejection.payload["code"] == "HTTP 422"
    for e in rejected:  # about the same patient, order and pump as the refused event
        assert (e.patient, e.order, e.pump) == (PATIENT, ORDER, PUMP)
    # Neither refusal was retried; every other event arrived once.
    assert [m.verdict for m in hl7_of(epr, "ORU^R42", verdict=None)] == ["AR", "AA", "AA", "AA"]
    assert [m.control_id for m in hl7_of(epr, "ORU^R42")] == ipec_ids([second, third, fourth])
    assert event_ids(administrations(epr)) == [first.id, second.id, fourth.id]
    assert [r.verdict for r in epr.fhir_requests()].count("rejected") == 1
    status = await gw.delivery()
    assert not any(status[name]["failing"] for name in (HL7_EPR, FHIR_EPR))


async def test_an_alarm_is_sent_as_an_acm_oru_r40_that_the_epr_accepts(epr: EmulatedEpr, gw: Running) -> None:
    raised = await gw.append(EventType.ALARM_RAISED, {"alarm": "occlusion-downstream"})
    cleared = await gw.append(EventType.ALARM_CLEARED, {"alarm": "occlusion-downstream"})
    await gw.until(lambda: len(hl7_of(epr, "ORU^R40")) == 2)
    await gw.until(gw.all_delivered)
    start, end = hl7_of(epr, "ORU^R40")
    assert [start.control_id, end.control_id] == [control_id(raised, "acm", 0), control_id(cleared, "acm", 0)]
    for m in (start, end):
        text = m.message.decode()
        assert "|ORU^R40^ORU_R40|" in text
        assert "196616^MDC_EVT_ALARM^MDC" in text
        pid = parse_message(m.message).segment("PID")
        assert pid is not None
        assert pid.component(3, 1) == PATIENT
    assert "start" in start.message.decode()
    assert "end" in end.message.decode()
    observations = epr.resources("Observation")  # the alarm for the FHIR receiver too
    assert event_ids(observations) == [raised.id, cleared.id]
