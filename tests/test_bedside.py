"""The bedside workflow at work (gateway/bedside.py), with real parts: a real event log on disk, the
rig's emulated Modbus pump over real TCP on loopback, the example drug library signed, installed and
verified as the gateway loads it, and real barcodes.

Barcodes from ``../shared/reference/barcodes.md`` §5: W1 (wristband, GSRN 123456789012345675), S1
(staff badge, GSRN 795260646688514634), M1 (fentanyl pack: GTIN 09521234543213, the example
library's fentanyl-50 entry, expiry 2027-12-31, lot ABC123, serial SN0001), A1 (pump asset label,
GIAI 9520614141234567). The 10 microgram/mL pack is M1 with the example library's fentanyl-10 GTIN
09521234500018 [computed: a valid GTIN-14 from the library].

Time is a FakeClock for the pump's physics, the event log and the workflow; nothing sleeps. The
nurse starting the pump is the emulated pump's front panel (its channel physics), never the driver.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import install

from pumpgw.drivers.base import ChannelProgram, ChannelState, ChannelStatus, PumpIdentity
from pumpgw.drivers.modbus import ModbusTcpDriver
from pumpgw.drivers.modbus_map import load_builtin_map
from pumpgw.fhir.client import FhirClient
from pumpgw.gateway.bedside import Bedside, PumpDrug
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.events import Event
from pumpgw.gateway.library import Library
from pumpgw.gateway.library_fitness import LibraryState
from pumpgw.gateway.monitor import BedsideMonitor
from pumpgw.gateway.orders import Drug, Order, OrderSource, PendingOrders
from pumpgw.gateway.poller import PumpPoller
from pumpgw.gateway.quantity import Quantity
from pumpgw.gateway.scan import ScanConfig
from pumpgw.gateway.workflow import Effect, Input, ReadBackDone, ReconcileDone, State, Workflow
from pumpgw.rig.emar import EmulatedEmar
from pumpgw.rig.modbus_pump import EmulatedModbusPump
from pumpgw.rig.modbus_server import ModbusPumpServer

PUMP = "bed-7-pump"
FENTANYL_ID = 3  # the drugs' ids in the emulated pump's own drug list
DOBUTAMINE_ID = 4
W1 = "]d28018123456789012345675\x1d8019123"
S1 = "]d28017795260646688514634"
M1 = "]d201095212345432131727123110ABC123\x1d21SN0001"
M1_10 = "]d201095212345000181727123110ABC123\x1d21SN0002"
A1 = "]C180049520614141234567"
PATIENT = "123456789012345675"
NURSE = "795260646688514634"
NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)


class Readiness:
    """What Gateway.readiness(pump) answers, from the same facts: the monitor's link and fitness."""

    def __init__(self, allowed: bool, reasons: tuple[str, ...]) -> None:
        self.allowed = allowed
        self.reasons = reasons


@dataclasses.dataclass
class Bed:
    bedside: Bedside
    pump: EmulatedModbusPump
    driver: NeverStart
    poller: PumpPoller
    events: EventLog
    orders: PendingOrders
    clock: FakeClock
    monitor: BedsideMonitor
    build: Callable[..., Bedside]

    def state(self) -> State:
        return self.bedside.workflow.state

    async def logged(self) -> list[Event]:
        return await self.events.read_after(0, limit=10_000)

    async def types(self) -> list[str]:
        return [e.type for e in await self.logged()]

    async def of_type(self, type_: str) -> list[Event]:
        return [e for e in await self.logged() if e.type == type_]

    async def scan_all(self, *scans: str) -> None:
        for raw in scans:
            await self.bedside.scan(raw, scanner="bed-7-scanner")
            await self.bedside.fetched()


class NeverStart:
    """The real driver, refusing start/stop (any call is a failed test). With ``read_rate`` set it
    misreports every channel's rate: a pump whose registers disagree with what it was sent."""

    def __init__(self, driver: ModbusTcpDriver) -> None:
        self._driver = driver
        self.pump_id = driver.pump_id
        self.capabilities = driver.capabilities
        self.read_rate: Quantity | None = None

    async def connect(self) -> None:
        await self._driver.connect()

    async def close(self) -> None:
        await self._driver.close()

    async def identify(self) -> PumpIdentity:
        return await self._driver.identify()

    async def read_status(self) -> tuple[ChannelStatus, ...]:
        channels = await self._driver.read_status()
        if self.read_rate is None:
            return channels
        return tuple(dataclasses.replace(c, rate=self.read_rate) for c in channels)

    async def program(self, channel: int, program: ChannelProgram) -> None:
        await self._driver.program(channel, program)

    async def start(self, channel: int) -> None:
        raise AssertionError("the gateway must never start a pump")

    async def stop(self, channel: int) -> None:
        raise AssertionError("the gateway must never stop a pump")


def order(dose: str = "100 ug/h", **over: Any) -> Order:
    fields: dict[str, Any] = {
        "order_id": "ORD-1",
        "source": OrderSource.HL7,
        "patient_id": PATIENT,
        "drug": Drug("4337", "RXNORM", "fentanyl"),
        "concentration": Concentration(Quantity.parse("2500 ug"), Quantity.parse("50 mL")),
        "container_volume": Quantity.parse("50 mL"),
        "dose_rate": Quantity.parse(dose),
        "vtbi": Quantity.parse("20 mL"),
        "route": "IV",
        "ordered_at": NOW - timedelta(minutes=5),
    }
    fields.update(over)
    return Order(**fields)


@pytest.fixture
async def bed(tmp_path: Path) -> AsyncIterator[Bed]:
    clock = FakeClock(NOW)
    _, verified = install(tmp_path)
    library: Library = verified.library
    events = EventLog(tmp_path / "events.sqlite3", "gw-test", clock)
    ready = asyncio.Event()
    writer = asyncio.create_task(events.run(ready))
    await ready.wait()
    pump = EmulatedModbusPump(
        load_builtin_map("rig-multichannel-v1"),
        manufacturer="pumpgw rig",
        model="RIG-MC2",
        serial="RIG-0001",
        firmware="1.0.0",
        library_version=7,
        library_name="example library",
        channels=2,
        drug_library={FENTANYL_ID: "fentanyl", DOBUTAMINE_ID: "dobutamine"},
    )
    async with ModbusPumpServer(pump, clock) as server:
        raw = ModbusTcpDriver(PUMP, "127.0.0.1", server.port, timeout_s=0.5)
        driver = NeverStart(raw)
        monitor = BedsideMonitor(events, {PUMP: "modbus-tcp"}, clock)
        await monitor.set_library(LibraryState(verified))
        poller = PumpPoller(driver, clock, [monitor])
        assert await poller.poll_once()

        def readiness(pump_id: str | None) -> Readiness:
            view = monitor.pumps.get(pump_id or "")
            reasons = [] if view is None or view.link == "up" else [f"pump {pump_id} link is {view.link}"]
            if view is not None and not view.fitness.fit:
                reasons.append(f"pump {pump_id}: {view.fitness.reason}")
            return Readiness(not reasons, tuple(reasons))

        orders = PendingOrders()

        def build(**over: Any) -> Bedside:
            return Bedside(
                events,
                {PUMP: driver},
                clock,
                ScanConfig(pumps={"9520614141234567": (PUMP, 1)}),
                **{
                    "library": lambda: library,
                    "care_area": "icu-adult",
                    "orders": orders,
                    "readiness": readiness,
                    "monitor": monitor,
                    "pump_drugs": {
                        "fentanyl-50": PumpDrug("fentanyl", str(FENTANYL_ID)),
                        "dobutamine-variable": PumpDrug("dobutamine", str(DOBUTAMINE_ID)),
                    },
                    **over,
                },
            )

        bedside = build()
        await bedside.tick()  # the workflow knows the time from its first tick
        try:
            yield Bed(bedside, pump, driver, poller, events, orders, clock, monitor, build)
        finally:
            await raw.close()
            writer.cancel()
            await asyncio.wait({writer})
            await events.close()


async def test_happy_path_scans_to_programmed_then_the_nurse_starts_it_on_the_pump(bed: Bed) -> None:
    """W1, S1, M1, A1 (barcodes.md §5): matched, reconciled, DERS pass, programmed, read back; the
    nurse starts the pump on the pump and the gateway sees it infusing."""
    bed.orders.put(order())
    await bed.scan_all(W1, S1, M1, A1)
    assert bed.state() is State.AWAITING_START_CONFIRMATION, bed.bedside.latest_prompt
    assert bed.bedside.latest_prompt is not None
    assert "press start" in bed.bedside.latest_prompt
    channel = bed.pump.channel(1)
    # 100 ug/h of 50 ug/mL is 2 mL/h; the drug and the concentration are the library entry's.
    assert (channel.state, channel.rate_ml_h, channel.vtbi_ml) == (ChannelState.IDLE, Decimal(2), Decimal(20))
    assert (channel.drug, channel.concentration, channel.concentration_unit) == (
        "fentanyl",
        Decimal(50),
        "ug/mL",
    )
    assert bed.pump.channel(2).rate_ml_h == 0  # the other channel untouched

    await bed.bedside.confirm(NURSE)
    bed.pump.channel(1).start()  # the nurse presses start on the pump
    assert await bed.poller.poll_once()
    await bed.bedside.tick()
    assert bed.state() is State.INFUSING

    types = await bed.types()
    expected = [
        "scan.accepted",
        "workflow.order_selected",
        "reconciliation.result",
        "ders.result",
        "programming.sent",
        "programming.read_back",
        "workflow.confirmed",
        "infusion.started",
        "workflow.infusing",
    ]
    positions = [types.index(t) for t in expected]
    assert positions == sorted(positions), types
    assert types.count("scan.accepted") == 4
    scans = await bed.of_type("scan.accepted")
    assert {e.payload["scanner"] for e in scans} == {"bed-7-scanner"}
    assert [e.payload["kind"] for e in scans] == ["patient", "clinician", "medication", "pump"]
    (recon,) = await bed.of_type("reconciliation.result")
    assert recon.payload["verdict"] == "matched"
    assert (recon.patient, recon.order, recon.pump, recon.channel) == (PATIENT, "ORD-1", PUMP, 1)
    (ders,) = await bed.of_type("ders.result")
    assert (ders.payload["verdict"], ders.payload["rate_ml_h"]) == ("pass", "2.00")
    (sent,) = await bed.of_type("programming.sent")
    assert sent.payload["concentration"] == "50 ug/mL"
    assert (sent.payload["rate_ml_h"], sent.payload["vtbi_ml"]) == ("2.00", "20")
    (read,) = await bed.of_type("programming.read_back")
    assert read.payload == {"matches": True, "differences": []}
    assert "channel.alarm_raised" not in types


@pytest.mark.hazard("HAZ-001")
@pytest.mark.parametrize(
    "pack",
    [pytest.param(M1_10, id="10-microgram-pack-for-a-50-microgram-order")],
)
async def test_a_pack_of_another_concentration_is_blocked_and_never_programmed(bed: Bed, pack: str) -> None:
    """The fentanyl incident (HAZ-001): the order is for 50 microgram/mL, the pack scanned is the
    library's 10 microgram/mL entry. Reconciliation stops it; the pump channel is never written."""
    bed.orders.put(order())
    await bed.scan_all(W1, S1, pack, A1)
    assert bed.state() is State.BLOCKED
    (recon,) = await bed.of_type("reconciliation.result")
    assert recon.payload["verdict"] == "mismatch"
    conc = next(c for c in recon.payload["checks"] if c["check"] == "concentration")
    assert conc["outcome"] == "mismatch"
    assert "PGW-203" in conc["reason"]
    types = await bed.types()
    assert "programming.sent" not in types
    assert "workflow.blocked" in types
    channel = bed.pump.channel(1)
    assert (channel.rate_ml_h, channel.drug, channel.state) == (Decimal(0), "", ChannelState.IDLE)


async def test_a_soft_limit_needs_an_override_with_a_reason_then_programs(bed: Bed) -> None:
    """250 ug/h is above the example library's fentanyl soft maximum (200 ug/h), below its hard one."""
    bed.orders.put(order("250 ug/h"))
    await bed.scan_all(W1, S1, M1, A1)
    assert bed.state() is State.LIBRARY_CHECKED
    assert bed.pump.channel(1).rate_ml_h == 0  # nothing sent before the override
    await bed.bedside.override("dose", NURSE, "")
    assert bed.state() is State.LIBRARY_CHECKED  # a reason is needed
    await bed.bedside.override("dose", NURSE, "Dose confirmed with the prescriber")
    assert bed.state() is State.AWAITING_START_CONFIRMATION, bed.bedside.latest_prompt
    assert bed.pump.channel(1).rate_ml_h == 5  # 250 ug/h of 50 ug/mL
    ders = await bed.of_type("ders.result")
    assert [e.payload["verdict"] for e in ders] == ["override-required", "pass"]
    (override,) = await bed.of_type("ders.override")
    assert override.payload["clinician"] == NURSE
    assert override.payload["reason"] == "Dose confirmed with the prescriber"
    assert (override.payload["value"], override.payload["limit_name"]) == ("250 ug/h", "soft_max")
    assert override.clinician == NURSE


async def test_a_hard_limit_blocks_and_nothing_is_sent(bed: Bed) -> None:
    """350 ug/h is above the example library's fentanyl hard maximum (300 ug/h)."""
    bed.orders.put(order("350 ug/h"))
    await bed.scan_all(W1, S1, M1, A1)
    assert bed.state() is State.BLOCKED
    (ders,) = await bed.of_type("ders.result")
    assert ders.payload["verdict"] == "blocked"
    await bed.bedside.override("dose", NURSE, "Dose confirmed with the prescriber")
    assert bed.state() is State.BLOCKED
    assert "programming.sent" not in await bed.types()
    assert bed.pump.channel(1).rate_ml_h == 0


@pytest.mark.hazard("HAZ-015")
async def test_a_read_back_mismatch_raises_an_alarm_and_never_waits_for_a_start(bed: Bed) -> None:
    """The pump reads back 20 mL/h after 2 mL/h was programmed (a driver that misreports)."""
    bed.orders.put(order())
    bed.driver.read_rate = Quantity.of("20", "mL/h")
    await bed.scan_all(W1, S1, M1, A1)
    assert bed.state() is not State.AWAITING_START_CONFIRMATION
    assert bed.state() in (State.BLOCKED, State.CANCELLED)
    (read,) = await bed.of_type("programming.read_back")
    assert read.payload["matches"] is False
    assert {"field": "rate_ml_h", "sent": "2.00", "read": "20"} in read.payload["differences"]
    alarms = await bed.of_type("channel.alarm_raised")
    assert alarms
    assert "read-back mismatch" in alarms[-1].payload["alarm"]
    assert (alarms[-1].pump, alarms[-1].channel) == (PUMP, 1)
    assert bed.bedside.alarms
    assert bed.pump.channel(1).state is ChannelState.IDLE  # programmed, never started


async def test_a_running_channel_is_never_reprogrammed(bed: Bed) -> None:
    """Channel 1 already runs an infusion: the sequence stops before anything is written."""
    running = bed.pump.channel(1)
    running.program(Decimal(7), Decimal(100), drug="fentanyl")
    running.start()
    bed.orders.put(order())
    await bed.scan_all(W1, S1, M1, A1)
    assert bed.state() is State.BLOCKED
    assert "programming.sent" not in await bed.types()
    assert (running.state, running.rate_ml_h, running.vtbi_ml) == (
        ChannelState.INFUSING,
        Decimal(7),
        Decimal(100),
    )
    assert bed.bedside.latest_prompt is not None
    assert "infusing" in bed.bedside.latest_prompt


async def test_a_bad_scan_is_rejected_with_its_scanner(bed: Bed) -> None:
    """N1 (barcodes.md §5): the group separator dropped; refused, logged with the scanner's name."""
    await bed.scan_all("01095212345432131727123110ABC12321SN0001")
    (rejected,) = await bed.of_type("scan.rejected")
    assert rejected.payload["scanner"] == "bed-7-scanner"
    assert bed.state() is State.IDLE


class TrustsEveryReconciliation(Workflow):
    """A faulty state machine: it takes every reconciliation for a match."""

    def step(self, inp: Input) -> list[Effect]:
        if isinstance(inp, ReconcileDone) and not inp.ok:
            inp = dataclasses.replace(inp, ok=True)
        return super().step(inp)


@pytest.mark.hazard("HAZ-001")
async def test_the_interlock_never_programs_what_it_did_not_see_pass(bed: Bed) -> None:
    """HAZ-001 defence in depth: with a state machine that ignores a failed reconciliation (the
    10 microgram/mL pack for a 50 microgram/mL order), the bedside layer still sends nothing."""
    bedside = bed.build(workflow=TrustsEveryReconciliation())
    await bedside.tick()
    bed.orders.put(order())
    for raw in (W1, S1, M1_10, A1):
        await bedside.scan(raw)
        await bedside.fetched()
    assert bedside.workflow.state is State.BLOCKED
    assert bedside.latest_prompt is not None
    assert "interlock" in bedside.latest_prompt
    assert "programming.sent" not in await bed.types()
    channel = bed.pump.channel(1)
    assert (channel.rate_ml_h, channel.drug) == (Decimal(0), "")


class TrustsEveryReadBack(Workflow):
    """A faulty state machine: it takes every read-back for a match."""

    def step(self, inp: Input) -> list[Effect]:
        if isinstance(inp, ReadBackDone) and not inp.matches:
            inp = dataclasses.replace(inp, matches=True, differences=())
        return super().step(inp)


@pytest.mark.hazard("HAZ-015")
async def test_a_read_back_mismatch_is_never_left_awaiting_a_start(bed: Bed) -> None:
    """HAZ-015 defence in depth: a state machine that would wait for the start after a mismatch is
    overruled: the bedside layer raises the alarm and cancels the sequence."""
    bedside = bed.build(workflow=TrustsEveryReadBack())
    await bedside.tick()
    bed.orders.put(order())
    bed.driver.read_rate = Quantity.of("20", "mL/h")
    for raw in (W1, S1, M1, A1):
        await bedside.scan(raw)
        await bedside.fetched()
    assert bedside.workflow.state is State.CANCELLED
    (alarm,) = await bed.of_type("channel.alarm_raised")
    assert "read-back mismatch" in alarm.payload["alarm"]
    assert "do not start" in alarm.payload["alarm"]
    assert bed.pump.channel(1).state is ChannelState.IDLE


async def test_ticks_from_the_running_part_time_a_held_badge_out(bed: Bed) -> None:
    """The part ticks on its own (one tick per turn of the injected sleep) with the clock's time."""
    turns: asyncio.Queue[None] = asyncio.Queue()
    ticked = asyncio.Event()

    async def sleep(_: float) -> None:
        ticked.set()
        await turns.get()

    bedside = bed.build(sleep=sleep)
    await bedside.scan(S1)
    assert bedside.workflow.state is State.IDLE
    ready = asyncio.Event()
    task = asyncio.create_task(bedside.run(ready))
    try:
        await ready.wait()
        for advance in (0, 121):  # the first tick starts the 2 min timeout, the next one ends it
            bed.clock.advance(advance)
            ticked.clear()
            turns.put_nowait(None)
            await ticked.wait()
    finally:
        task.cancel()
        await asyncio.wait({task})
    (timed_out,) = await bed.of_type("workflow.timed_out")
    assert timed_out.payload == {"state": "idle", "after_s": "120"}
    assert bedside.latest_prompt is not None
    assert "Timed out" in bedside.latest_prompt


async def test_a_pump_with_an_outdated_library_is_refused_when_its_label_is_scanned(bed: Bed) -> None:
    """Library-version mismatch on a pump blocks auto-programming on it, visibly (readiness)."""
    bed.pump.library_version = 6
    await bed.driver.close()  # a reconnection identifies the pump again
    bed.poller.connected = False
    assert await bed.poller.poll_once()
    assert not bed.monitor.fitness(PUMP).fit
    bed.orders.put(order())
    await bed.scan_all(W1, S1, M1, A1)
    assert bed.state() is State.MEDICATION  # another pump may be scanned
    assert bed.bedside.latest_prompt is not None
    assert "cannot be auto-programmed" in bed.bedside.latest_prompt
    (rejected,) = await bed.of_type("scan.rejected")
    assert "drug library version 6" in rejected.payload["reason"]
    types = await bed.types()
    assert "programming.sent" not in types
    assert "pump.library_outdated" in types


async def test_the_emar_unreachable_blocks_and_says_so(bed: Bed) -> None:
    """Orders are fetched over FHIR on the wristband scan; the eMAR not answering stops the sequence
    (even with a PIV order held: the eMAR may hold a newer word on this patient)."""
    async with EmulatedEmar(bed.clock) as emar:
        base = emar.fhir_base  # the eMAR is gone once this block ends: nothing listens there
    async with FhirClient(base, timeout_s=2, backoff_base_s=0.01, backoff_cap_s=0.02) as client:
        bedside = bed.build(fhir=client)
        await bedside.tick()
        bed.orders.put(order())
        await bedside.scan(W1)
        await bedside.fetched()
    assert bedside.workflow.state is State.BLOCKED
    assert bedside.latest_prompt is not None
    assert "eMAR could not be asked" in bedside.latest_prompt
    assert "programming.sent" not in await bed.types()


async def test_a_patient_the_emar_does_not_know_still_gets_the_piv_order(bed: Bed) -> None:
    """The rig's eMAR (real FHIR over HTTP) has no patient with the W1 wristband's GSRN: its answer
    is a refusal, and the PIV order held for that patient is matched and programmed."""
    async with EmulatedEmar(bed.clock) as emar, FhirClient(emar.fhir_base, timeout_s=5) as client:
        bedside = bed.build(fhir=client)
        await bedside.tick()
        bed.orders.put(order())
        for raw in (W1, S1, M1, A1):
            await bedside.scan(raw)
            await bedside.fetched()
    assert bedside.workflow.state is State.AWAITING_START_CONFIRMATION, bedside.latest_prompt
    assert bed.pump.channel(1).rate_ml_h == Decimal(2)


async def test_an_order_of_another_patient_is_never_programmed(bed: Bed) -> None:
    """W1's patient has no order; the only order held is another patient's (would verify HAZ-016)."""
    bed.orders.put(order(patient_id="795260646688514634"))
    await bed.scan_all(W1, S1, M1, A1)
    (blocked,) = await bed.of_type("workflow.blocked")
    assert PATIENT in blocked.payload["reason"]
    assert "no active infusion order" in blocked.payload["reason"]
    assert "programming.sent" not in await bed.types()
    assert bed.pump.channel(1).rate_ml_h == Decimal(0)


async def test_a_stale_order_is_never_programmed(bed: Bed) -> None:
    """An order made 30 min ago, older than the 15 min the policy allows (would verify HAZ-017)."""
    bed.orders.put(order(ordered_at=NOW - timedelta(minutes=30)))
    await bed.scan_all(W1, S1, M1, A1)
    assert bed.state() is State.BLOCKED
    (blocked,) = await bed.of_type("workflow.blocked")
    assert "9022" in blocked.payload["reason"]
    assert "programming.sent" not in await bed.types()
    assert bed.pump.channel(1).rate_ml_h == Decimal(0)


async def test_a_pharmacy_label_of_a_variable_concentration_needs_a_confirmation(bed: Bed) -> None:
    """A pharmacy-prepared dobutamine syringe (the example library's variable-concentration entry),
    scanned by its label (``RX-`` and the order id, the default [scanning] label_pattern): the
    concentration must be confirmed by an identified clinician before anything is programmed."""
    bed.orders.put(
        order(
            "5 ug/kg/min",
            order_id="ORD-2",
            drug=Drug("3616", "RXNORM", "dobutamine"),
            concentration=Concentration(Quantity.parse("250 mg"), Quantity.parse("50 mL")),
            weight=Quantity.parse("70 kg"),
        )
    )
    await bed.scan_all(W1, S1, "]C0RX-ORD-2", A1)
    assert bed.state() is State.LIBRARY_CHECKED, bed.bedside.latest_prompt
    assert bed.pump.channel(1).rate_ml_h == Decimal(0)
    await bed.bedside.confirm("somebody-else")
    assert bed.state() is State.LIBRARY_CHECKED  # not an identified clinician
    await bed.bedside.confirm(NURSE)
    assert bed.state() is State.AWAITING_START_CONFIRMATION, bed.bedside.latest_prompt
    channel = bed.pump.channel(1)
    # 5 ug/kg/min x 70 kg = 21 mg/h; of 5 mg/mL that is 4.2 mL/h.
    assert (channel.rate_ml_h, channel.drug) == (Decimal("4.2"), "dobutamine")
    assert (channel.concentration, channel.concentration_unit) == (Decimal(5), "mg/mL")
    (confirmed,) = await bed.of_type("workflow.confirmed")
    assert confirmed.payload == {"what": "concentration", "by": NURSE}


HOSTILE = (
    "",
    "\r\n",
    "\x00\x01\x1b[2J",
    "x" * 10_000,
    "=A9999",  # ISBT 128
    "+A123BJC5D6E71G",  # HIBC (barcodes.md §4)
    "(01)09521234543213",  # typed text
    "]Zz123",
    "]d2" + "\x1d" * 5,
    "\udcff\u202e\ufeff",
    "https://id.gs1.org/01/12345678901231/21/XYZ\x00",
)


async def test_whatever_a_scanner_sends_is_answered_and_never_crashes_the_bedside(bed: Bed) -> None:
    """Bad input from any wire gets a clear answer (scan.rejected and a prompt) and the bedside stays
    usable: the happy path still works after every one of these."""
    for raw in HOSTILE:
        await bed.bedside.scan(raw, scanner="wedge")
    rejected = await bed.of_type("scan.rejected")
    assert len(rejected) == len(HOSTILE)
    assert all(e.payload["reason"] for e in rejected)
    bed.orders.put(order())
    await bed.scan_all(W1, S1, M1, A1)
    assert bed.state() is State.AWAITING_START_CONFIRMATION
