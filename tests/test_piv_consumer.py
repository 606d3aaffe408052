"""The gateway's IHE PIV order consumer (hl7/piv_consumer.py) against the rig's emulated eMAR.

Real parts on both sides: the :class:`PivConsumer` listens on 127.0.0.1 (port 0) and records into
the real SQLite event log; the order programmer is the real :class:`EmulatedEmar`, which builds
each RGV^O15 with the PCD-03 builder, reads the ACK^O15 on the same connection and takes the
RRG^O16 on its own MLLP listener (IHE PCD TF-2 enhanced mode, ``shared/reference/ihe-pcd.md``;
the exchange as ``hl7-examples/05_...ack_o15...CA.hl7`` and ``08_...rrg_o16...AR...ERR.hl7``).
Every acknowledgement the gateway sends is validated with hl7apy STRICT, except the one answer
that cannot be valid (bytes that are not HL7 at all: see
:func:`test_bytes_that_are_not_hl7_get_cr_which_cannot_be_valid_hl7`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pumpgw.gateway.backoff import Backoff
from pumpgw.gateway.clock import Clock, FakeClock, SystemClock
from pumpgw.gateway.config import Hl7Section
from pumpgw.gateway.errors import EventLogError
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.events import Event, EventType
from pumpgw.gateway.orders import OrderSource, PendingOrders
from pumpgw.hl7.ack import AckResult, read_ack
from pumpgw.hl7.message import parse_message
from pumpgw.hl7.mllp_io import mllp_request
from pumpgw.hl7.piv import build_rgv_o15
from pumpgw.hl7.piv_consumer import PivConsumer
from pumpgw.hl7.validate import validate_strict, validation_report
from pumpgw.rig.emar import EMAR_PARTY, GATEWAY_PARTY, EmulatedEmar, SentOrder
from pumpgw.rig.emar_data import EXAMPLE_DATA, parse_emar_data

NOW = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)
#: The pumps this gateway serves: the rig's first Modbus pump, which the example orders name.
PUMPS = {"rig-modbus-1": frozenset({"1", "2"})}
CONSUMER_LOG = "pumpgw.hl7.piv_consumer"


# -- helpers ----------------------------------------------------------------------------------------


@dataclass
class Running:
    piv: PivConsumer
    orders: PendingOrders
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        return self.piv.port


@asynccontextmanager
async def consumer(
    events: EventLog,
    clock: Clock,
    programmer_port: int,
    *,
    pumps: dict[str, frozenset[str]] | None = None,
    backoff: Backoff | None = None,
    **hl7: Any,
) -> AsyncIterator[Running]:
    """A PivConsumer listening on a port the system picks, its RRG^O16s going to ``programmer_port``.
    On leaving, checks that it was still running (nothing sent to it stopped it)."""
    config = Hl7Section(
        enabled=True,
        listen_port=0,
        order_programmer_host="127.0.0.1",
        order_programmer_port=programmer_port,
        **hl7,
    )
    orders = PendingOrders()
    served = PUMPS if pumps is None else pumps
    piv = PivConsumer(config, events, orders, clock, lambda: served, backoff=backoff)
    ready = asyncio.Event()
    task = asyncio.create_task(piv.run(ready), name="piv-under-test")
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiting.cancel()
        task.result()  # it failed to start: say why
    try:
        yield Running(piv, orders, task)
        assert not task.done(), "the PIV consumer stopped"
    finally:
        task.cancel()
        await asyncio.wait({task})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
async def emar(clock: FakeClock) -> AsyncIterator[EmulatedEmar]:
    async with EmulatedEmar(clock, reply_timeout_s=5.0) as running:
        yield running


@pytest.fixture
async def piv(eventlog: EventLog, clock: FakeClock, emar: EmulatedEmar) -> AsyncIterator[Running]:
    async with consumer(eventlog, clock, emar.rrg_port) as running:
        yield running


async def decided(emar: EmulatedEmar, gateway: Running, order_id: str) -> SentOrder:
    """Send ``order_id`` from the eMAR and wait for the gateway's RRG^O16 (checking both
    acknowledgements are valid HL7 2.6 and name the RGV^O15 sent)."""
    sent = await emar.send_order(order_id, "127.0.0.1", gateway.port)
    assert sent.ack is not None
    assert (sent.ack.code, sent.ack.acked_control_id) == ("CA", sent.control_id)
    validate_strict(sent.ack.message)
    await emar.wait_for_result(order_id, 5)
    async with asyncio.timeout(5):
        await gateway.piv.drained()  # the gateway has read the eMAR's ACK^O16 too
    assert sent.result is not None, sent.describe()
    assert sent.result.acked_control_id == sent.control_id
    validate_strict(sent.result.message)
    return sent


async def logged(events: EventLog) -> list[Event]:
    return await events.read_after(0, limit=10_000)


def of_type(events: list[Event], type_: EventType) -> list[Event]:
    return [e for e in events if e.type == type_]


def err_fields(message: str) -> list[tuple[str, str, str]]:
    """(ERR-3.1, ERR-5.1, ERR-8) of each ERR segment of ``message``."""
    msg = parse_message(message)
    return [(e.component(3, 1), e.component(5, 1), e.component(8)) for e in msg.segments("ERR")]


def closed_port() -> int:
    """A loopback port nothing listens on (bound by the system, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class SignallingBackoff(Backoff):
    """The real backoff, short, that also counts the retries it was asked for."""

    def __init__(self) -> None:
        super().__init__(base_s=0.02, cap_s=0.1)
        self.retries = 0
        self._changed = asyncio.Event()

    def next(self) -> float:
        self.retries += 1
        self._changed.set()
        return super().next()

    async def until(self, retries: int, timeout_s: float = 10) -> None:
        async with asyncio.timeout(timeout_s):
            while self.retries < retries:
                self._changed.clear()
                await self._changed.wait()


class Said(logging.Handler):
    """Sets ``seen`` when a record containing ``text`` is logged (on the event loop's thread)."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.seen = asyncio.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self.text in record.getMessage():
            self.seen.set()


@contextmanager
def listening(logger: str, text: str) -> Iterator[Said]:
    handler = Said(text)
    target = logging.getLogger(logger)
    target.addHandler(handler)
    try:
        yield handler
    finally:
        target.removeHandler(handler)


# -- orders accepted and refused ----------------------------------------------------------------------


async def test_an_order_is_acknowledged_decided_kept_and_recorded(
    emar: EmulatedEmar, piv: Running, eventlog: EventLog
) -> None:
    """ACK^O15 CA at once, then RRG^O16 AA (ORC-1 OK, ORC-2 the order) at the eMAR; the order the
    gateway keeps is, value for value, the order the eMAR holds; order.received names the patient,
    the order, the clinician and the pump."""
    sent = await decided(emar, piv, "RIG-ORD-1")
    assert sent.result is not None
    assert (sent.result.code, sent.result.errors) == ("AA", ())
    orc = parse_message(sent.result.message).segment("ORC")
    assert orc is not None
    assert (orc.component(1), orc.component(2)) == ("OK", "RIG-ORD-1")

    kept = piv.orders.get("RIG-ORD-1")
    assert kept is not None
    assert kept.source is OrderSource.HL7
    assert kept.received_from == sent.control_id  # the audit trail names the message
    # Everything clinical is what the eMAR holds: drug, concentration, dose rate, VTBI, route,
    # weight, pump and channel, patient, who ordered and when.
    assert replace(kept, source=OrderSource.RIG, received_from=None) == emar.order("RIG-ORD-1")
    assert kept.ordered_at == NOW - timedelta(minutes=2)
    assert len(piv.orders) == 1

    (received,) = of_type(await logged(eventlog), EventType.ORDER_RECEIVED)
    assert (received.patient, received.order, received.clinician) == ("RIG-100001", "RIG-ORD-1", "Dr Example")
    assert received.pump == "rig-modbus-1"
    assert received.payload["source"] == "hl7"
    assert received.payload["order_id"] == "RIG-ORD-1"
    assert received.payload["drug"] == "noradrenaline"
    assert received.payload["rate"] == "0.1 ug/kg/min"
    assert received.payload["concentration"] == "4 mg in 50 mL"
    assert received.payload["vtbi"] == "50 mL"
    assert (piv.piv.processed, piv.piv.rrg_sent, piv.piv.rrg_failed) == (1, 1, 0)


async def test_the_stale_example_order_is_refused_with_9022(
    emar: EmulatedEmar, piv: Running, eventlog: EventLog
) -> None:
    """RRG^O16 AR with ERR-5 9022 (the PIV code in ERR-5, as hl7-examples/08 carries 9010),
    ERR-2 pointing at ORC-9; order.rejected names 9022; nothing is kept."""
    sent = await decided(emar, piv, "RIG-ORD-STALE")
    assert sent.result is not None
    assert sent.result.code == "AR"
    ((hl7_code, piv_code, text),) = err_fields(sent.result.message)
    assert (hl7_code, piv_code) == ("207", "9022")
    assert "20 min ago" in text
    assert "ORC^1^9" in sent.result.message  # ERR-2: where in the RGV^O15
    orc = parse_message(sent.result.message).segment("ORC")
    assert orc is not None
    assert (orc.component(1), orc.component(2)) == ("UA", "RIG-ORD-STALE")
    assert piv.orders.get("RIG-ORD-STALE") is None
    events = await logged(eventlog)
    assert of_type(events, EventType.ORDER_RECEIVED) == []
    (rejected,) = of_type(events, EventType.ORDER_REJECTED)
    assert rejected.payload["code"] == "9022"
    assert "9022" in rejected.payload["reason"]
    assert (rejected.patient, rejected.order) == ("RIG-100002", "RIG-ORD-STALE")


async def test_an_order_for_a_pump_this_gateway_does_not_serve_is_refused_with_204(
    eventlog: EventLog, clock: FakeClock, emar: EmulatedEmar
) -> None:
    async with consumer(eventlog, clock, emar.rrg_port, pumps={"bed-12-pump": frozenset({"1"})}) as piv:
        sent = await decided(emar, piv, "RIG-ORD-1")
    assert sent.result is not None
    assert sent.result.code == "AR"
    ((hl7_code, piv_code, text),) = err_fields(sent.result.message)
    assert (hl7_code, piv_code) == ("204", "")
    assert "'rig-modbus-1' is not served by this gateway" in text
    assert "bed-12-pump" in text  # and says which pumps it does serve
    assert len(piv.orders) == 0
    (rejected,) = of_type(await logged(eventlog), EventType.ORDER_REJECTED)
    assert rejected.payload["code"] == "204"
    assert "rig-modbus-1" in rejected.payload["reason"]


# -- what is not an order --------------------------------------------------------------------------------


async def test_a_message_that_is_not_an_rgv_o15_gets_cr_and_the_next_order_is_taken(
    emar: EmulatedEmar, piv: Running, eventlog: EventLog
) -> None:
    """A readable message of another type, and one that is not readable but has an MSH, get
    ACK^... CR naming the problem (ERR-3 200 / 102, ERR-8 the reason); both ACKs are valid HL7."""
    adt = b"MSH|^~\\&|ADT|HOSP|PUMPGW|WARD7|20260301100000+0000||ADT^A01^ADT_A01|ADT-1|P|2.6|||AL|NE\rPID|||42\r"
    reply = await mllp_request("127.0.0.1", piv.port, adt)
    ack = read_ack(reply)
    assert (ack.code, ack.acked_control_id, ack.message_type[:2]) == ("CR", "ADT-1", ("ACK", "A01"))
    ((code, text),) = ack.errors
    assert code == "200"
    assert text == "MSH-9: this gateway takes RGV^O15 orders here, not ADT^A01"
    validate_strict(reply)

    broken = (
        b"MSH|^~\\&|EMAR|HOSP|PUMPGW|WARD7|20260301100000+0000||RGV^O15^RGV_O15|BROKEN-1|P|2.6|||AL|AL\r"
        b"PID|||42\rrxg|1\r"
    )
    reply = await mllp_request("127.0.0.1", piv.port, broken)
    ack = read_ack(reply)
    assert (ack.code, ack.acked_control_id, ack.message_type[:2]) == ("CR", "BROKEN-1", ("ACK", "O15"))
    ((code, text),) = ack.errors
    assert code == "102"
    assert "segment 3 begins 'rxg|1'" in text
    validate_strict(reply)

    assert piv.piv.processed == 0  # neither was queued as an order
    sent = await decided(emar, piv, "RIG-ORD-1")
    assert sent.result is not None
    assert sent.result.code == "AA"
    assert [e.type for e in await logged(eventlog)] == ["order.received"]


async def test_bytes_that_are_not_hl7_get_cr_which_cannot_be_valid_hl7(
    emar: EmulatedEmar, piv: Running
) -> None:
    """Bytes with no MSH still get an answer: ACK CR, ERR-3 100 saying why. That answer cannot be
    valid HL7 2.6 whatever the gateway does: MSH-9.2 (the trigger) and MSA-2 (the control id
    acknowledged) are required, and unreadable bytes give neither. hl7apy says exactly that."""
    reply = await mllp_request("127.0.0.1", piv.port, b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n")
    ack = read_ack(reply)
    assert (ack.code, ack.acked_control_id) == ("CR", "")
    ((code, text),) = ack.errors
    assert code == "100"
    assert "not with an MSH segment" in text
    errors, _warnings = validation_report(reply)
    assert len(errors) == 2
    assert any("MSH_9" in e and "MSG_2" in e for e in errors)
    assert any("MSA_2" in e for e in errors)
    sent = await decided(emar, piv, "RIG-ORD-2")  # the server is still up, and takes orders
    assert sent.result is not None
    assert sent.result.code == "AA"


async def test_a_resent_order_is_acknowledged_again_and_decided_once(
    emar: EmulatedEmar, piv: Running, eventlog: EventLog
) -> None:
    """The eMAR did not see our ACK^O15 (or our RRG^O16) and sends the same RGV^O15 (same MSH-10)
    again: CA again, no second decision, one order.received, and the same RRG^O16 sent again."""
    first = await decided(emar, piv, "RIG-ORD-1")
    again = read_ack(await mllp_request("127.0.0.1", piv.port, first.message.encode()))
    assert (again.code, again.acked_control_id) == ("CA", first.control_id)
    # Orders are decided in arrival order: once the next order's RRG^O16 is back, a second
    # decision of the re-sent one would have been made and sent before it.
    await decided(emar, piv, "RIG-ORD-2")
    await piv.piv.drained()
    assert (piv.piv.processed, piv.piv.rrg_sent) == (2, 3)  # RIG-ORD-1's answer went twice
    assert emar.unmatched_results() == []
    received = of_type(await logged(eventlog), EventType.ORDER_RECEIVED)
    assert [e.order for e in received] == ["RIG-ORD-1", "RIG-ORD-2"]
    # The same control id from another sending system is another message.
    other = first.message.replace("|RIG_EMAR|RIG|", "|BCMA|WARD7|", 1).encode()
    assert other != first.message.encode()
    ack = read_ack(await mllp_request("127.0.0.1", piv.port, other))
    assert ack.code == "CA"
    await decided(emar, piv, "RIG-ORD-3")
    assert piv.piv.processed == 4


# -- the order programmer down -----------------------------------------------------------------------


async def test_the_rrg_is_retried_until_the_order_programmer_listens(
    eventlog: EventLog, clock: FakeClock
) -> None:
    port = closed_port()
    emar = EmulatedEmar(clock, rrg_port=port, reply_timeout_s=5.0)  # its RRG^O16 receiver not started yet
    backoff = SignallingBackoff()
    async with consumer(eventlog, clock, port, backoff=backoff) as piv:
        sent = await emar.send_order("RIG-ORD-1", "127.0.0.1", piv.port)
        assert sent.ack is not None
        assert sent.ack.code == "CA"
        await backoff.until(3)  # three deliveries refused, still trying
        assert (piv.piv.processed, piv.piv.rrg_sent, piv.piv.rrg_failed) == (1, 0, 0)
        assert piv.orders.get("RIG-ORD-1") is not None  # decided and kept meanwhile
        await emar.start()  # the eMAR's receiver comes up on the configured port
        try:
            await emar.wait_for_result("RIG-ORD-1", 5)
            await piv.piv.drained()
        finally:
            await emar.close()
        assert sent.result is not None
        assert (sent.result.code, sent.result.acked_control_id) == ("AA", sent.control_id)
        validate_strict(sent.result.message)
        assert (piv.piv.rrg_sent, piv.piv.rrg_failed) == (1, 0)


async def test_an_order_programmer_that_is_down_delays_its_answers_not_the_next_decisions(
    eventlog: EventLog, clock: FakeClock
) -> None:
    """The RRG^O16s wait in their own queue: while the first is being retried, later orders are
    still decided and kept for the bedside at once."""
    port = closed_port()
    emar = EmulatedEmar(clock, rrg_port=port, reply_timeout_s=5.0)  # its receiver not started
    backoff = SignallingBackoff()
    async with consumer(eventlog, clock, port, backoff=backoff) as piv:
        for order_id in ("RIG-ORD-1", "RIG-ORD-2", "RIG-ORD-3"):
            sent = await emar.send_order(order_id, "127.0.0.1", piv.port)
            assert sent.ack is not None
            assert sent.ack.code == "CA"
        await backoff.until(2)  # the first RRG^O16 is still being retried
        for _ in range(500):  # the decisions do not wait for it (bounded wait, 5 ms steps)
            if piv.piv.processed == 3:
                break
            await asyncio.sleep(0.005)
        assert piv.piv.processed == 3
        assert piv.piv.rrg_sent == 0
        assert [piv.orders.get(o) is not None for o in ("RIG-ORD-1", "RIG-ORD-2", "RIG-ORD-3")] == [True] * 3
        await emar.start()
        try:
            for order_id in ("RIG-ORD-1", "RIG-ORD-2", "RIG-ORD-3"):
                await emar.wait_for_result(order_id, 5)
            await piv.piv.drained()
        finally:
            await emar.close()
        assert (piv.piv.rrg_sent, piv.piv.rrg_failed) == (3, 0)


async def test_the_rrg_is_given_up_after_its_deadline_and_counted(eventlog: EventLog) -> None:
    """reply_timeout_s 0.2: the RRG^O16 is tried for 4 × 0.2 s, then given up; the order stays
    decided, kept and recorded, and the next order is still decided."""
    clock = SystemClock()
    async with EmulatedEmar(clock, reply_timeout_s=5.0) as emar:
        backoff = SignallingBackoff()
        with listening(CONSUMER_LOG, "given up") as said:
            async with consumer(eventlog, clock, closed_port(), backoff=backoff, reply_timeout_s=0.2) as piv:
                started = time.monotonic()
                await emar.send_order("RIG-ORD-1", "127.0.0.1", piv.port)
                async with asyncio.timeout(10):
                    await said.seen.wait()
                elapsed = time.monotonic() - started
                assert elapsed >= 0.8
                assert backoff.retries >= 2
                assert (piv.piv.rrg_sent, piv.piv.rrg_failed) == (0, 1)
                assert piv.orders.get("RIG-ORD-1") is not None
                sent = emar.sent("RIG-ORD-1")
                assert sent is not None
                assert sent.result is None  # the eMAR never heard
                # The consumer goes on: the next order is decided too (its RRG^O16 fails the same way).
                await emar.send_order("RIG-ORD-2", "127.0.0.1", piv.port)
                await backoff.until(backoff.retries + 1)
                assert piv.piv.processed == 2
                assert piv.orders.get("RIG-ORD-2") is not None
    (warning,) = [r for r in said.records if "given up" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    received = of_type(await logged(eventlog), EventType.ORDER_RECEIVED)
    assert [e.order for e in received] == ["RIG-ORD-1", "RIG-ORD-2"]


# -- the event log refusing writes ----------------------------------------------------------------------


async def on_log_thread(events: EventLog, sql: str) -> Any:
    """Run ``sql`` on the log's own connection, on its own thread (never beside a commit)."""
    store = events.store
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(events._executor, lambda: store._db.execute(sql).fetchone())


async def fill_the_disk(events: EventLog) -> None:
    """As tests/test_gateway_status.py does: cap the database at its size and fill it (SQLite then
    fails every commit with SQLITE_FULL, as a full file system does), then append ever smaller
    events until the log's own pages are full too."""
    (pages,) = await on_log_thread(events, "PRAGMA page_count")
    await on_log_thread(events, f"PRAGMA max_page_count = {pages + 2}")
    await on_log_thread(events, "CREATE TABLE IF NOT EXISTS filler (x BLOB)")
    for size in (4096, 512, 64, 8, 1):
        while True:
            try:
                await on_log_thread(events, f"INSERT INTO filler VALUES (randomblob({size}))")
            except sqlite3.OperationalError as exc:
                if "full" not in str(exc):
                    raise
                break
    for extra in (500, 50, 0):
        for i in range(10_000):
            try:
                await events.append(EventType.ALARM_RAISED, {"alarm": f"filler {i} " + "x" * extra})
            except EventLogError:
                break


@pytest.mark.hazard("HAZ-013")
async def test_an_order_the_log_cannot_record_is_refused_with_207_and_not_kept(
    emar: EmulatedEmar, piv: Running, eventlog: EventLog
) -> None:
    """The record comes first: an order that cannot be written to the event log is refused (AR,
    ERR-3 207, saying the gateway cannot record it) and not kept for the bedside."""
    await fill_the_disk(eventlog)
    assert not eventlog.health.ok
    sent = await decided(emar, piv, "RIG-ORD-1")
    assert sent.result is not None
    assert sent.result.code == "AR"
    ((hl7_code, piv_code, text),) = err_fields(sent.result.message)
    assert (hl7_code, piv_code) == ("207", "")
    assert "cannot record the order" in text
    assert "full" in text
    assert len(piv.orders) == 0
    assert (piv.piv.processed, piv.piv.rrg_sent) == (1, 1)
    assert of_type(await logged(eventlog), EventType.ORDER_RECEIVED) == []


# -- order of decisions ----------------------------------------------------------------------------------


class TickingClock(FakeClock):
    """A fake clock that moves on a millisecond each time its wall time is read, so the times the
    eMAR records (each RRG^O16's arrival) are in the order things happened."""

    def wall(self) -> datetime:
        now = super().wall()
        self.advance(0.001)
        return now


async def test_orders_are_decided_and_answered_in_arrival_order(eventlog: EventLog, clock: FakeClock) -> None:
    """Eight orders sent back to back (each as soon as the previous one's ACK^O15 is in), fresh and
    stale in turn: decisions are logged, and RRG^O16s arrive, in the order the orders were sent."""
    data = dict(EXAMPLE_DATA)
    template = EXAMPLE_DATA["orders"][0]
    data["orders"] = [{**template, "id": f"Q{i}", "ordered_at": "-20m" if i % 2 else "-1m"} for i in range(8)]
    emar_clock = TickingClock(NOW)
    emar = EmulatedEmar(emar_clock, parse_emar_data(data, "test"), reply_timeout_s=5.0)
    ids = [f"Q{i}" for i in range(8)]
    async with emar, consumer(eventlog, clock, emar.rrg_port) as piv:
        for order_id in ids:
            await emar.send_order(order_id, "127.0.0.1", piv.port)
        results = [await emar.wait_for_result(order_id, 10) for order_id in ids]
    arrivals = [s.result.at for s in results if s.result is not None]
    assert len(arrivals) == 8
    assert arrivals == sorted(arrivals)
    assert len(set(arrivals)) == 8
    codes = [s.result.code for s in results if s.result is not None]
    assert codes == ["AA", "AR"] * 4
    decisions = [e.order for e in await logged(eventlog) if e.type in ("order.received", "order.rejected")]
    assert decisions == ids


# -- anything at all on the wire ------------------------------------------------------------------------


_BASE = build_rgv_o15(
    EmulatedEmar(FakeClock(NOW)).order("RIG-ORD-1"),
    control_id="FUZZ-BASE",
    at=NOW,
    sender=EMAR_PARTY,
    receiver=GATEWAY_PARTY,
)
_FRAMING = {0x0B, 0x1C}  # MLLP start and end bytes: a message holding them cannot be framed at all


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A copy of a good RGV^O15 (built from the eMAR's RIG-ORD-1) with a few edits: bytes replaced,
    inserted or deleted, segments dropped or doubled."""
    data = bytearray(_BASE)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "drop-segment", "double-segment"]))
        if kind in ("drop-segment", "double-segment"):
            lines = bytes(data).rstrip(b"\r").split(b"\r")
            i = draw(st.integers(0, len(lines) - 1))
            lines[i:i + 1] = [] if kind == "drop-segment" else [lines[i], lines[i]]  # fmt: skip
            data = bytearray(b"\r".join(lines) + b"\r")
            continue
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
            continue
        chunk = draw(
            st.binary(min_size=1, max_size=4).map(lambda b: bytes(x for x in b if x not in _FRAMING))
        )
        if kind == "replace":
            data[at : at + len(chunk)] = chunk
        else:
            data[at:at] = chunk
    return bytes(data) or b"x"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=mutated())
async def test_mutated_orders_always_get_an_accept_ack_and_never_stop_the_consumer(
    data: bytes, emar: EmulatedEmar, piv: Running
) -> None:
    """Whatever the edits, the answer is an accept acknowledgement (CA when the copy is still an
    RGV^O15 the gateway can read, else CR), no handler or processing error is logged, and a good
    order sent after it is still decided. One consumer serves every example."""
    with (
        listening(CONSUMER_LOG, "failed unexpectedly") as bug,
        listening("pumpgw.hl7.mllp_io", "handler error") as crash,
    ):
        ack: AckResult = read_ack(await mllp_request("127.0.0.1", piv.port, data, reply_timeout_s=5))
        assert ack.code in ("CA", "CR")
        if ack.code == "CA":
            assert ack.acked_control_id == parse_message(data).control_id
        # Still up: a good order is acknowledged and decided after it (decisions go in arrival
        # order, so the mutated one, if taken, was decided first).
        sent = await decided(emar, piv, "RIG-ORD-2")
        assert sent.result is not None
        assert sent.result.code == "AA"
    assert not bug.seen.is_set(), [r.getMessage() for r in bug.records]
    assert not crash.seen.is_set(), [r.getMessage() for r in crash.records]
    assert not piv.task.done()


async def test_an_order_with_the_longest_control_id_is_still_answered(
    emar: EmulatedEmar, piv: Running, eventlog: EventLog
) -> None:
    """MSH-10 may be 199 characters (HL7 2.6 ST): the RRG^O16's own MSH-10 cannot then be the order's
    plus ``-RRG``; the answer must still be built and sent, and the consumer go on."""
    long_id = "L" * 199
    message = build_rgv_o15(
        emar.order("RIG-ORD-1"), control_id=long_id, at=NOW, sender=EMAR_PARTY, receiver=GATEWAY_PARTY
    )
    ack = read_ack(await mllp_request("127.0.0.1", piv.port, message))
    assert (ack.code, ack.acked_control_id) == ("CA", long_id)
    async with asyncio.timeout(5):
        await piv.piv.drained()
    (result,) = emar.unmatched_results()  # not an order the eMAR sent itself: kept apart
    assert (result.code, result.acked_control_id) == ("AA", long_id)
    assert result.control_id is not None
    assert 1 <= len(result.control_id) <= 199
    validate_strict(result.message)
    assert (piv.piv.processed, piv.piv.rrg_sent) == (1, 1)
    assert [e.order for e in of_type(await logged(eventlog), EventType.ORDER_RECEIVED)] == ["RIG-ORD-1"]


# -- found in review: reused control ids, MSH-16, a reader bug -----------------------------------------


def _rgv(emar: EmulatedEmar, order_id: str, control_id: str, *, app_ack: str = "AL") -> bytes:
    data = build_rgv_o15(
        emar.order(order_id), control_id=control_id, at=NOW, sender=EMAR_PARTY, receiver=GATEWAY_PARTY
    )
    fields = data.split(b"\r", 1)[0].split(b"|")
    fields[15] = app_ack.encode()  # MSH-16 (the field list counts MSH-1 as the separator)
    return b"|".join(fields) + b"\r" + data.split(b"\r", 1)[1]


async def test_a_new_order_that_reuses_an_old_control_id_is_decided_not_taken_for_a_resend(
    emar: EmulatedEmar, piv: Running, eventlog: EventLog
) -> None:
    """Programmers restart their counters: the same MSH-10 with other content is a new message."""
    for order_id in ("RIG-ORD-1", "RIG-ORD-2"):
        ack = read_ack(await mllp_request("127.0.0.1", piv.port, _rgv(emar, order_id, "1")))
        assert ack.code == "CA"
    await piv.piv.drained()
    assert piv.piv.processed == 2
    received = of_type(await logged(eventlog), EventType.ORDER_RECEIVED)
    assert [e.order for e in received] == ["RIG-ORD-1", "RIG-ORD-2"]


@pytest.mark.parametrize(
    ("app_ack", "order_id", "answered"),
    [("AL", "RIG-ORD-1", True), ("ER", "RIG-ORD-1", False), ("ER", "RIG-ORD-STALE", True),
     ("NE", "RIG-ORD-STALE", False)],
)  # fmt: skip
async def test_the_rrg_honours_msh_16(
    emar: EmulatedEmar, piv: Running, app_ack: str, order_id: str, answered: bool
) -> None:
    """HL7 table 0155: AL always, ER only on an error (example 03 asks ER), NE never."""
    data = _rgv(emar, order_id, f"M-{app_ack}", app_ack=app_ack)
    ack = read_ack(await mllp_request("127.0.0.1", piv.port, data))
    assert ack.code == "CA"
    await piv.piv.drained()
    assert piv.piv.processed == 1
    assert (piv.piv.rrg_sent + piv.piv.rrg_refused == 1) is answered
    assert (len(emar.unmatched_results()) == 1) is answered  # not sent by the eMAR: unmatched


async def test_a_reader_bug_still_gives_a_recorded_refusal_and_an_answer(
    emar: EmulatedEmar, piv: Running, eventlog: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug in the reader")

    monkeypatch.setattr("pumpgw.hl7.piv_consumer.read_rgv_o15", broken)
    ack = read_ack(await mllp_request("127.0.0.1", piv.port, _rgv(emar, "RIG-ORD-1", "BUG-1")))
    assert ack.code == "CA"
    await piv.piv.drained()
    [rejected] = of_type(await logged(eventlog), EventType.ORDER_REJECTED)
    assert rejected.payload["code"] == "207"
    assert "RuntimeError" in rejected.payload["reason"]
    [result] = emar.unmatched_results()
    assert result.code == "AR"
