"""The EPR over HL7 v2 (hl7/epr.py): events from the real event log, through the real OutboxPart, to a
real MLLP server on 127.0.0.1 (port 0) that validates every message with hl7apy STRICT and answers
with the gateway's own ACK builder, or misbehaves on cue (refuses, drops the connection, answers for
another message, answers garbage, does not answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from event_samples import SAMPLES
from part_harness import Sleeps, run, stop

from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import DeliveryError, Hl7Error
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.events import Event, EventType, Refs
from pumpgw.gateway.outbox import OutboxPart
from pumpgw.hl7.ack import build_ack
from pumpgw.hl7.build import Party, hl7_time
from pumpgw.hl7.epr import BUILD_FAILED, Hl7EprDestination
from pumpgw.hl7.message import Hl7Message, parse_message
from pumpgw.hl7.mllp_io import MllpClient, MllpServer, Peer
from pumpgw.hl7.pcd import KINDS, PcdConfig, control_id
from pumpgw.hl7.validate import validate_strict

pytestmark = pytest.mark.hazard("HAZ-013")

CONFIG = PcdConfig(
    Party("PUMPGW", "WARD7"), Party("EPR", "HOSP"), messages=KINDS, patient_id_authority="HOSP"
)
REFS = Refs(patient="MRN-0042", order="AB12345", clinician="RN-17")


class Epr:
    """An EPR behind a real MLLP server. Every message is validated with hl7apy STRICT (ACM's
    ORU_R40 against ORU_R01: hl7apy has no ORU_R40) and recorded in arrival order, resends included.
    ``script[control id]`` says how to answer that message once: ``AR``/``AE`` (refuse), ``drop``
    (close the connection without answering), ``wrong`` (an ACK naming another message),
    ``garbage`` (a frame that is not HL7), ``silent`` (no answer at all); default ``AA``."""

    def __init__(self) -> None:
        self.received: list[Hl7Message] = []
        self.invalid: list[str] = []
        self.script: dict[str, str] = {}
        self.changed = asyncio.Event()
        self.server = MllpServer(self.handle)

    async def handle(self, data: bytes, peer: Peer) -> bytes | None:
        msg = parse_message(data)
        try:
            validate_strict(data.replace(b"|ORU^R40^ORU_R40|", b"|ORU^R40^ORU_R01|", 1))
        except Hl7Error as exc:
            self.invalid.append(f"{msg.control_id}: {exc}")
        self.received.append(msg)
        self.changed.set()
        action = self.script.pop(msg.control_id, "AA")
        sender = Party("EPR", "HOSP")
        at = FakeClock().wall()
        if action == "drop":
            raise ConnectionAbortedError("the EPR drops the connection (test)")
        if action == "silent":
            return None
        if action == "garbage":
            return b"this is not HL7"
        if action == "wrong":
            return build_ack(msg, "AA", at=at, sender=sender).replace(
                msg.control_id.encode(), b"someone-else"
            )
        if action == "empty-msa-2":
            return build_ack(msg, "AA", at=at, sender=sender).replace(b"|" + msg.control_id.encode(), b"|")
        return build_ack(msg, action, at=at, sender=sender, text="unknown patient" if action != "AA" else "")

    @property
    def ids(self) -> list[str]:
        return [m.control_id for m in self.received]

    async def until(self, condition: Any, timeout_s: float = 10) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def epr() -> AsyncIterator[Epr]:
    receiver = Epr()
    async with receiver.server:
        yield receiver


@dataclass
class Rejections:
    """``on_rejected``: records each refusal and writes it to the log as the gateway does."""

    log: EventLog
    name: str = "epr-hl7"
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    async def __call__(self, event: Event, code: str, reason: str) -> None:
        self.seen.append((event.id, code, reason))
        await self.log.append(
            EventType.DELIVERY_REJECTED,
            {"destination": self.name, "event_id": event.id, "code": code, "reason": reason},
        )


class Watched:
    """The destination as the OutboxPart sees it, saying when each batch was acknowledged."""

    def __init__(self, inner: Hl7EprDestination) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_batch = inner.max_batch
        self.through = 0  # seq of the last event of the last batch delivered
        self.changed = asyncio.Event()

    async def deliver(self, events: Sequence[Event]) -> None:
        await self.inner.deliver(events)
        self.through = events[-1].seq
        self.changed.set()

    async def until_through(self, seq: int, timeout_s: float = 10) -> None:
        async with asyncio.timeout(timeout_s):
            while self.through < seq:
                self.changed.clear()
                await self.changed.wait()


def destination(epr: Epr, log: EventLog, rejections: Rejections, **kwargs: Any) -> Hl7EprDestination:
    client = MllpClient(
        "127.0.0.1", epr.server.port, connect_timeout_s=2, reply_timeout_s=kwargs.pop("reply_timeout_s", 5)
    )
    return Hl7EprDestination(
        "epr-hl7", client, CONFIG, FakeClock(), on_rejected=rejections, history=log.read_after, **kwargs
    )


async def add(log: EventLog, type_: EventType, payload: dict[str, Any] | None = None, **kwargs: Any) -> Event:
    return await log.append(
        type_,
        SAMPLES[type_] if payload is None else payload,
        pump=kwargs.pop("pump", "pump-a"),
        channel=kwargs.pop("channel", 1),
        refs=kwargs.pop("refs", REFS),
    )


def started(volume: str = "0.0") -> dict[str, Any]:
    return {**SAMPLES[EventType.INFUSION_STARTED], "volume_infused_ml": volume}


# -- in order, valid, related ----------------------------------------------------------------------


async def test_events_are_delivered_in_order_and_every_message_validates(
    eventlog: EventLog, epr: Epr
) -> None:
    rejections = Rejections(eventlog)
    dest = destination(epr, eventlog, rejections, max_batch=3)
    watched = Watched(dest)
    part = OutboxPart(watched, eventlog, FakeClock(), sleep=Sleeps())
    start = await add(eventlog, EventType.INFUSION_STARTED, started("0.0"))
    rate = await add(eventlog, EventType.INFUSION_RATE_CHANGED)
    raised = await add(eventlog, EventType.ALARM_RAISED)
    link = await add(eventlog, EventType.LINK_LOST, channel=None, refs=Refs())
    cleared = await add(eventlog, EventType.ALARM_CLEARED)
    done = await add(eventlog, EventType.INFUSION_COMPLETED)
    after = await add(eventlog, EventType.INFUSION_STOPPED)
    expected = [
        control_id(start, "ipec"),
        control_id(rate, "ipec", 0),
        control_id(rate, "ipec", 1),
        control_id(rate, "dec"),
        control_id(raised, "acm"),
        control_id(cleared, "acm"),
        control_id(done, "ipec"),
        control_id(done, "ras"),
        control_id(after, "ipec"),  # no RAS: the completion documented the administration already
    ]
    task = await run(part)
    try:
        await watched.until_through(after.seq)
    finally:
        await stop(task)
        await dest.close()
    assert epr.ids == expected
    assert epr.invalid == []
    assert link.id not in " ".join(epr.ids)
    assert rejections.seen == []
    assert dest.sent == len(expected)
    # The end of the alarm names its start (OBR-29), the administration starts when the infusion did.
    end = epr.received[5]
    assert end.segment("OBR").subcomponent(29, 2, 1) == control_id(raised, "acm")  # type: ignore[union-attr]
    ras = epr.received[7]
    assert ras.segment("RXA").field(6) == "50.0"  # type: ignore[union-attr]
    assert ras.segment("RXA").field(3) == epr.received[0].segment("OBR").field(7)  # type: ignore[union-attr]


async def test_after_a_restart_related_events_are_read_back_from_the_log(
    eventlog: EventLog, epr: Epr
) -> None:
    start = await add(eventlog, EventType.INFUSION_STARTED, started("10.0"))
    for _ in range(3):
        await add(eventlog, EventType.LINK_RESTORED, channel=None, refs=Refs())
    await add(eventlog, EventType.INFUSION_STARTED, started("0.0"), channel=2)  # another channel
    done = await add(eventlog, EventType.INFUSION_COMPLETED)
    fresh = destination(epr, eventlog, Rejections(eventlog))  # remembers nothing: as after a restart
    await fresh.deliver([done])
    assert epr.ids == [control_id(done, "ipec"), control_id(done, "ras")]
    rxa = epr.received[1].segment("RXA")
    assert rxa is not None
    assert rxa.field(6) == "40.0"  # 50.0 on the counter at the end, 10.0 at this channel's start
    assert rxa.field(3) == hl7_time(datetime.fromisoformat(start.time.replace("Z", "+00:00")))
    # Without the log there is no start to find: the administration is not stated, the event still goes.
    client = MllpClient("127.0.0.1", epr.server.port)
    blind = Hl7EprDestination("epr-hl7", client, CONFIG, FakeClock(), on_rejected=Rejections(eventlog))
    await blind.deliver([done])
    assert epr.ids[2:] == [control_id(done, "ipec")]
    await fresh.close()
    await blind.close()


async def test_events_it_did_not_see_are_looked_up_so_nothing_is_documented_twice(
    eventlog: EventLog, epr: Epr
) -> None:
    """The destination remembers the last start of each channel; events it did not see (passed over
    by a select, sent before a restart) make that memory stale, so it reads the log instead."""
    dest = destination(epr, eventlog, Rejections(eventlog))
    start = await add(eventlog, EventType.INFUSION_STARTED)
    await add(eventlog, EventType.INFUSION_COMPLETED)  # never handed to this destination
    stopped = await add(eventlog, EventType.INFUSION_STOPPED)
    await dest.deliver([start])
    await dest.deliver([stopped])
    assert control_id(stopped, "ras") not in epr.ids  # the completion documented it already
    assert epr.ids == [control_id(start, "ipec"), control_id(stopped, "ipec")]  # no second RAS
    await dest.close()


# -- refusals are recorded, not retried --------------------------------------------------------------


async def test_a_refused_message_is_recorded_once_and_the_next_event_still_goes(
    eventlog: EventLog, epr: Epr
) -> None:
    rejections = Rejections(eventlog)
    sleeps = Sleeps()
    watched = Watched(destination(epr, eventlog, rejections))
    part = OutboxPart(watched, eventlog, FakeClock(), sleep=sleeps)
    first = await add(eventlog, EventType.INFUSION_STARTED)
    second = await add(eventlog, EventType.INFUSION_PAUSED)
    epr.script[control_id(first, "ipec")] = "AR"
    task = await run(part)
    try:
        await watched.until_through(second.seq)
    finally:
        await stop(task)
        await watched.inner.close()
    assert epr.ids == [control_id(first, "ipec"), control_id(second, "ipec")]  # nothing resent
    assert len(rejections.seen) == 1
    event_id, code, reason = rejections.seen[0]
    assert (event_id, code) == (first.id, "AR")
    assert "unknown patient" in reason
    assert control_id(first, "ipec") in reason
    assert sleeps.delays == []  # a refusal is not an outage
    logged = [e for e in await eventlog.read_after(0, 100) if e.type == "delivery.rejected"]
    assert [e.payload["event_id"] for e in logged] == [first.id]


async def test_an_event_that_cannot_be_written_as_hl7_is_recorded_and_skipped(
    eventlog: EventLog, epr: Epr
) -> None:
    rejections = Rejections(eventlog)
    dest = destination(epr, eventlog, rejections)
    bad = await add(eventlog, EventType.INFUSION_STARTED, {**started(), "concentration": "50 mcg/mL"})
    good = await add(eventlog, EventType.INFUSION_PAUSED)
    await dest.deliver([bad, good])
    assert epr.ids == [control_id(good, "ipec")]
    assert [(e, c) for e, c, _ in rejections.seen] == [(bad.id, BUILD_FAILED)]
    assert "MDC_CONC_DRUG" in rejections.seen[0][2]
    await dest.close()


# -- failures are retried, nothing lost, the same MSH-10 ---------------------------------------------


async def test_a_dropped_connection_mid_batch_resends_with_the_same_control_id(
    eventlog: EventLog, epr: Epr
) -> None:
    rejections = Rejections(eventlog)
    sleeps = Sleeps()
    dest = destination(epr, eventlog, rejections, max_batch=10)
    watched = Watched(dest)
    part = OutboxPart(watched, eventlog, FakeClock(), sleep=sleeps)
    events = [
        await add(eventlog, EventType.INFUSION_STARTED),
        await add(eventlog, EventType.INFUSION_PAUSED),
        await add(eventlog, EventType.INFUSION_RESUMED),
    ]
    ids = [control_id(e, "ipec") for e in events]
    epr.script[ids[1]] = "drop"
    task = await run(part)
    try:
        await watched.until_through(events[-1].seq)
    finally:
        await stop(task)
        await dest.close()
    # The first was acknowledged before the drop and is not sent again; the second, unanswered,
    # is resent with the same MSH-10 on a new connection; none is lost.
    assert epr.ids == [ids[0], ids[1], ids[1], ids[2]]
    assert epr.server.accepted == 2
    assert len(sleeps.delays) == 1
    assert rejections.seen == []
    assert epr.invalid == []
    types = [e.type for e in await eventlog.read_after(0, 100)]
    assert types.count("delivery.failed") == 1


async def test_a_resend_after_a_crash_carries_the_same_control_ids(eventlog: EventLog, epr: Epr) -> None:
    events = [
        await add(eventlog, EventType.INFUSION_RATE_CHANGED),
        await add(eventlog, EventType.ALARM_RAISED),
    ]
    before = destination(epr, eventlog, Rejections(eventlog))
    await before.deliver(events)
    after = destination(epr, eventlog, Rejections(eventlog))  # a new process: nothing remembered
    await after.deliver(events)
    half = len(epr.ids) // 2
    assert epr.ids[:half] == epr.ids[half:]
    assert len(set(epr.ids)) == half == 4
    await before.close()
    await after.close()


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("wrong", "the ACK names 'someone-else' in MSA-2"),
        ("garbage", "not an HL7 ACK"),
        ("drop", "closed by the peer"),
        ("silent", "no reply within"),
    ],
)
async def test_an_answer_that_is_not_our_ack_is_a_delivery_error(
    eventlog: EventLog, epr: Epr, action: str, expected: str
) -> None:
    rejections = Rejections(eventlog)
    # Short only where the silence is the point; the retry below must not time out on a busy machine.
    dest = destination(epr, eventlog, rejections, reply_timeout_s=1.0 if action == "silent" else 5.0)
    ev = await add(eventlog, EventType.INFUSION_STARTED)
    epr.script[control_id(ev, "ipec")] = action
    with pytest.raises(DeliveryError, match=expected) as caught:
        await dest.deliver([ev])
    assert caught.value.destination == "epr-hl7"
    assert rejections.seen == []
    # The next attempt starts on a fresh connection and goes through.
    await dest.deliver([ev])
    assert epr.ids == [control_id(ev, "ipec")] * 2
    assert epr.server.accepted == 2
    await dest.close()


async def test_an_unreachable_epr_is_a_delivery_error(eventlog: EventLog) -> None:
    server = MllpServer(lambda data, peer: asyncio.sleep(0, None))
    async with server:
        port = server.port
    client = MllpClient("127.0.0.1", port, connect_timeout_s=1)
    dest = Hl7EprDestination("epr-hl7", client, CONFIG, FakeClock(), on_rejected=Rejections(eventlog))
    ev = await add(eventlog, EventType.INFUSION_STARTED)
    with pytest.raises(DeliveryError, match="connection refused"):
        await dest.deliver([ev])


async def test_events_without_messages_send_nothing(eventlog: EventLog, epr: Epr) -> None:
    dest = destination(epr, eventlog, Rejections(eventlog))
    quiet: Sequence[Event] = [
        await add(eventlog, EventType.GATEWAY_STARTED, channel=None, pump=None, refs=Refs()),
        await add(eventlog, EventType.INFUSION_STARTED, refs=Refs()),  # no patient: not to the record
    ]
    await dest.deliver(quiet)
    assert epr.received == []
    assert epr.server.accepted == 0


async def test_an_ack_with_an_empty_msa_2_is_taken_for_the_one_message_outstanding(
    eventlog: EventLog, epr: Epr
) -> None:
    """A known defect of real receivers (found in review: it stalled the outbox for ever). One
    message is outstanding per connection, so the reply can only be to it."""
    rejections = Rejections(eventlog)
    dest = destination(epr, eventlog, rejections)
    ev = await add(eventlog, EventType.INFUSION_STARTED)
    epr.script[control_id(ev, "ipec")] = "empty-msa-2"
    await dest.deliver([ev])
    assert dest.sent == 1
    assert rejections.seen == []
    await dest.close()
