"""The outbox: at least once, in order, per destination, resumable, with capped jittered retries.

The destination here is an in-process receiver that fails when told to (the EPR's real HL7 and
FHIR receivers plug into the same :class:`OutboxPart`); the log is the real SQLite log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from part_harness import Sleeps, run, stop, until_delivered

from pumpgw.gateway.backoff import Backoff
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import DeliveryError
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.events import Event, EventType
from pumpgw.gateway.outbox import Outbox, OutboxPart

pytestmark = pytest.mark.hazard("HAZ-013")


class Receiver:
    """Acknowledges batches, except while ``failures`` is above zero (each call uses one up)."""

    def __init__(self, name: str = "epr", max_batch: int = 3, failures: int = 0) -> None:
        self.name = name
        self.max_batch = max_batch
        self.failures = failures
        self.received: list[Event] = []
        self.calls = 0
        self.changed = asyncio.Event()

    async def deliver(self, events: Sequence[Event]) -> None:
        self.calls += 1
        self.changed.set()
        if self.failures > 0:
            self.failures -= 1
            raise DeliveryError(self.name, "503 Service Unavailable")
        assert len(events) <= self.max_batch
        self.received.extend(events)

    async def until(self, condition: object, timeout_s: float = 10) -> None:
        assert callable(condition)
        async with asyncio.timeout(timeout_s):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


async def test_delivers_in_order_in_batches_and_records_the_position(eventlog: EventLog) -> None:
    receiver = Receiver(max_batch=3)
    task = await run(OutboxPart(receiver, eventlog, FakeClock(), sleep=Sleeps()))
    try:
        for i in range(7):
            await eventlog.append(EventType.ALARM_RAISED, {"alarm": f"a{i}"})
        await receiver.until(lambda: len(receiver.received) == 7)
        assert [e.seq for e in receiver.received] == list(range(1, 8))
        await until_delivered(eventlog, "epr", 7)
    finally:
        await stop(task)
    assert await eventlog.delivered_seq("epr") == 7


async def test_a_failing_receiver_is_retried_with_capped_jittered_backoff_and_said_once(
    eventlog: EventLog,
) -> None:
    receiver = Receiver(failures=6)
    sleeps = Sleeps()
    backoff = Backoff(base_s=0.5, cap_s=4.0, rand=lambda: 1.0)  # the ceiling of each jittered delay
    part = OutboxPart(receiver, eventlog, FakeClock(), backoff=backoff, sleep=sleeps)
    for i in range(4):
        await eventlog.append(EventType.ALARM_RAISED, {"alarm": f"a{i}"})
    task = await run(part)
    try:
        await receiver.until(lambda: len(receiver.received) >= 4)
        # delivery.failed and delivery.restored are events too, and are delivered after the others.
        await receiver.until(lambda: any(e.type == "delivery.restored" for e in receiver.received))
    finally:
        await stop(task)
    assert sleeps.delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]  # doubling, capped
    seqs = [e.seq for e in receiver.received]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    types = [e.type for e in receiver.received]
    assert types.count("delivery.failed") == 1
    assert types.count("delivery.restored") == 1
    failed = next(e for e in receiver.received if e.type == "delivery.failed")
    assert failed.payload == {
        "destination": "epr",
        "error": "delivery to epr: 503 Service Unavailable",
        "backlog": 4,
    }
    restored = next(e for e in receiver.received if e.type == "delivery.restored")
    assert restored.payload["attempts"] == 6


async def test_a_restart_resumes_after_the_last_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    received: list[int] = []
    for round_ in range(2):
        log = EventLog(path, "gw", FakeClock())
        ready = asyncio.Event()
        writer = asyncio.create_task(log.run(ready))
        await ready.wait()
        receiver = Receiver(max_batch=2)
        task = await run(OutboxPart(receiver, log, FakeClock(), sleep=Sleeps()))
        for i in range(3):
            await log.append(EventType.ALARM_RAISED, {"alarm": f"r{round_}-{i}"})
        await receiver.until(
            lambda log=log, r=receiver: bool(r.received) and r.received[-1].seq == log.last_seq
        )
        await stop(task)
        received += [e.seq for e in receiver.received]
        writer.cancel()
        await asyncio.wait({writer})
        await log.close()
    assert received == list(range(1, 7))  # nothing twice, nothing missing


async def test_select_passes_over_what_a_destination_does_not_take(eventlog: EventLog) -> None:
    receiver = Receiver(max_batch=10)
    only_alarms = OutboxPart(
        receiver, eventlog, FakeClock(), select=lambda e: e.type == "channel.alarm_raised", sleep=Sleeps()
    )
    task = await run(only_alarms)
    try:
        await eventlog.append(EventType.LINK_RESTORED, {}, pump="p1")
        await eventlog.append(EventType.ALARM_RAISED, {"alarm": "occlusion"}, pump="p1", channel=1)
        await eventlog.append(EventType.LINK_RESTORED, {}, pump="p1")
        await receiver.until(lambda: len(receiver.received) == 1)
        await until_delivered(eventlog, "epr", 3)  # passed over, yet recorded as done
    finally:
        await stop(task)
    assert [e.type for e in receiver.received] == ["channel.alarm_raised"]


async def test_status_reports_the_backlog_and_its_age(eventlog: EventLog) -> None:
    clock = FakeClock()
    outbox = Outbox(eventlog, "epr", clock)
    first = await eventlog.append(EventType.ALARM_RAISED, {"alarm": "a"})
    await eventlog.append(EventType.ALARM_RAISED, {"alarm": "b"})
    clock.advance(90)
    status = await outbox.status()
    assert status["backlog"] == 2
    assert status["oldest_undelivered_time"] == first.time
    assert status["oldest_undelivered_age_s"] == 90.0
    assert status["failing"] is False


async def test_a_bug_in_a_destination_is_retried_and_never_ends_the_part(
    eventlog: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: an exception other than DeliveryError (a receiver's answer that our code
    could not read) ended the part, and the supervisor then stopped the whole gateway with it."""

    class Buggy(Receiver):
        async def deliver(self, events: Sequence[Event]) -> None:
            if self.failures:
                self.failures -= 1
                raise UnicodeDecodeError("iso8859-7", b"\xff", 0, 1, "undefined")
            await super().deliver(events)

    receiver = Buggy(max_batch=10, failures=2)
    sleeps = Sleeps()
    task = await run(OutboxPart(receiver, eventlog, FakeClock(), sleep=sleeps))
    try:
        event = await eventlog.append(EventType.ALARM_RAISED, {"alarm": "occlusion"})
        await receiver.until(lambda: event.id in [e.id for e in receiver.received])
        # ... and the recovery is recorded (and delivered, like every event)
        await receiver.until(lambda: "delivery.restored" in [e.type for e in receiver.received])
    finally:
        await stop(task)
    assert not task.done() or task.cancelled()
    assert len(sleeps.delays) == 2  # backed off twice, then delivered
    assert any("delivery failed unexpectedly" in r.getMessage() and r.exc_info for r in caplog.records)
    types = [e.type for e in await eventlog.read_after(0, limit=100)]
    assert "delivery.failed" in types
    assert "delivery.restored" in types
