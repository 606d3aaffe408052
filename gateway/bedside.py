"""The bedside workflow at work: the thin asyncio layer around :class:`~.workflow.Workflow`.

:class:`Bedside` is a supervised part (``name``, ``async run(ready)``) owning the one workflow of
this gateway's bedside. It turns what happens at the bedside into the machine's inputs (a raw scan
through :func:`~.scan.parse_scan`, a nurse's confirm / cancel / override, a :class:`~.workflow.Tick`
every second from the injected clock, the programmed channel turning infusing as the
:class:`~.monitor.BedsideMonitor` sees it) and carries out the effects the machine returns:

=================  =================================================================================
effect             done here
=================  =================================================================================
FetchOrders        PendingOrders.for_patient, plus the eMAR over FHIR when a client is given
                   (``fhir/order_source.py``; a FHIR failure -> OrdersUnavailable). In a task, so
                   the nurse can go on scanning meanwhile.
Reconcile          the container (``container_from_gtin`` or ``container_from_label``), the
                   programming planned from the order, the library entry and the concentration
                   that *will be programmed* (the library entry's: never a copy of the order's),
                   ``reconcile`` -> ReconcileDone; ``reconciliation.result`` is written.
CheckDers          ``ders.evaluate`` against the verified library (None: blocked) -> DersDone;
                   ``ders.result`` (and ``ders.override`` for each override applied) written.
Program            the gateway's readiness for the pump (refused: PumpNotReady); the channel must
                   not be running (a running infusion is never touched); ``programming.sent`` is
                   written *before* anything is sent (no audit trail, no programming); then
                   ``driver.program`` -> ProgramSent.
ReadBack           ``driver.read_status``; rate, VTBI, drug and concentration compared exactly
                   with what was sent -> ReadBackDone; ``programming.read_back`` written.
Emit               the event log (the workflow's own types are ``workflow.*`` in gateway/events.py).
Prompt             kept as :attr:`Bedside.latest_prompt` and logged at INFO.
Alarm              ``channel.alarm_raised`` with the reason, and a WARNING log.
=================  =================================================================================

It never starts a pump (no driver ``start`` is called anywhere here: the nurse starts the infusion
on the pump) and never stops or changes a running one: every failure ends the sequence and leaves
the pump as it is.

Two checks here do not rely on the state machine being right (defence in depth): a programme is
sent only for the administration this layer itself saw reconciled with every check matching and
with the very DERS result it saw pass (:meth:`Bedside._interlock`); and a read-back mismatch that
left the machine waiting for a start raises the alarm here and cancels the sequence.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Context, DecimalException, Inexact
from typing import TYPE_CHECKING, Any, Final, Protocol

from pumpgw.drivers.base import READBACK_MISMATCH, ChannelProgram, ChannelState, ChannelStatus, PumpDriver

from .clock import Clock
from .ders import DersResult, Programming, Verdict, evaluate
from .ders import Outcome as DersOutcome
from .dose import Concentration
from .errors import DeviceError, DriverError, EventLogError, FhirError, PumpGwError, QuantityError
from .eventlog import EventLog
from .events import EventType, Refs
from .library import Drug as LibraryEntry
from .library import Library
from .monitor import BedsideMonitor
from .orders import Order, OrderRefused, PendingOrders
from .quantity import Quantity
from .reconcile import Code as ReconCode
from .reconcile import (
    ContainerFacts,
    ContainerRefused,
    Planned,
    ReconcileError,
    ReconcilePolicy,
    container_from_gtin,
    container_from_label,
    library_code_system,
    reconcile,
)
from .scan import ScanConfig, parse_scan
from .scan_types import PumpScan, ScanRejected
from .supervisor import raise_if_cancelling
from .workflow import (
    Administration,
    Alarm,
    Cancel,
    CheckDers,
    Confirm,
    DersDone,
    Effect,
    Emit,
    FetchOrders,
    Input,
    OrdersFound,
    OrdersUnavailable,
    OverrideGiven,
    Program,
    ProgramSent,
    Prompt,
    PumpNotReady,
    PumpStarted,
    ReadBack,
    ReadBackDone,
    Reconcile,
    ReconcileDone,
    ScanError,
    ScanInput,
    State,
    Tick,
    Workflow,
    WorkflowPolicy,
)

if TYPE_CHECKING:
    from pumpgw.fhir.client import FhirClient

log = logging.getLogger(__name__)

TICK_S: Final = 1.0
#: Channel states in which a channel may be programmed: nothing is running or paused on it.
PROGRAMMABLE: Final = frozenset({ChannelState.IDLE, ChannelState.STANDBY, ChannelState.COMPLETE})
#: The programmed channel reported in one of these states: the nurse started it on the pump.
STARTED: Final = frozenset({ChannelState.INFUSING, ChannelState.BOLUS})
_EXACT: Final = Context(prec=50, traps=[Inexact])


class ReadinessLike(Protocol):
    """What ``Gateway.readiness(pump)`` returns (gateway/app.py Readiness)."""

    @property
    def allowed(self) -> bool: ...

    @property
    def reasons(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class PumpDrug:
    """How the pumps name a library entry's drug: the name a pump shows (and reads back) and, for
    pumps that select a drug from their own list (Modbus: ``ChannelProgram.extra["drug_id"]``),
    its id there. Without one, the entry's generic name is sent and no id: a pump that needs an
    id then refuses before anything is written, and the sequence stops."""

    name: str
    pump_drug_id: str | None = None


@dataclass(frozen=True, slots=True)
class _Sent:
    """What was programmed, for the read-back and the start watch."""

    pump: str
    channel: int
    program: ChannelProgram
    polls: int  # the monitor's poll count of the pump when the programme was sent
    driver_said: str | None = None  # the driver's own read-back difference, if it reported one


class Bedside:
    """The bedside workflow as a supervised part. See the module docstring.

    ``library`` returns the verified drug library now (None: none is verified); ``readiness``
    is ``Gateway.readiness`` (asked when a pump label is scanned and again just before programming);
    ``monitor`` is read at every tick to see the programmed channel start; ``workflow`` replaces the
    state machine (``policy`` is then unused); ``pump_drugs`` maps a library entry id to the pumps'
    name and id of its drug. Public methods are safe to call from any task; inputs are handled one at a time.
    """

    name = "bedside"

    def __init__(
        self,
        events: EventLog,
        drivers: Mapping[str, PumpDriver],
        clock: Clock,
        scan_config: ScanConfig,
        *,
        library: Callable[[], Library | None],
        care_area: str,
        orders: PendingOrders,
        readiness: Callable[[str | None], ReadinessLike],
        monitor: BedsideMonitor | None = None,
        fhir: FhirClient | None = None,
        mrn_system: str | None = None,
        pump_drugs: Mapping[str, PumpDrug] | None = None,
        reconcile_policy: ReconcilePolicy | None = None,
        policy: WorkflowPolicy | None = None,
        workflow: Workflow | None = None,
        tick_s: float = TICK_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._events = events
        self._drivers = dict(drivers)
        self._clock = clock
        self._scan_config = scan_config
        self._library = library
        self._care_area = care_area
        self._orders = orders
        self._readiness = readiness
        self._monitor = monitor
        self._fhir = fhir
        self._mrn_system = mrn_system
        self._pump_drugs = dict(pump_drugs or {})
        self._reconcile_policy = reconcile_policy or ReconcilePolicy()
        self._tick_s = tick_s
        self._sleep = sleep
        self.workflow = workflow if workflow is not None else Workflow(policy)
        self.latest_prompt: str | None = None
        self.alarms: deque[str] = deque(maxlen=100)  # the alarms raised, newest last (status, CLI)
        self._lock = asyncio.Lock()
        self._scanner: str | None = None
        self._sent: _Sent | None = None
        # The interlock: what this layer itself saw pass, for the administration about to be programmed.
        self._reconciled: Administration | None = None
        self._passed: tuple[Administration, DersResult] | None = None
        self._fetches: set[asyncio.Task[None]] = set()

    # -- the part ----------------------------------------------------------------------------------
    async def run(self, ready: asyncio.Event) -> None:
        """Tick every ``tick_s`` and watch the monitor, until cancelled."""
        ready.set()
        try:
            while True:
                await self._sleep(self._tick_s)
                raise_if_cancelling()
                try:
                    await self.tick()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("bedside tick failed unexpectedly")
        finally:
            for task in list(self._fetches):
                task.cancel()
            if self._fetches:
                await asyncio.wait(set(self._fetches))

    # -- inputs ------------------------------------------------------------------------------------
    async def scan(self, raw: str, scanner: str | None = None) -> None:
        """One scan, exactly as the scanner delivered it (``scanner``: its name, for the log)."""
        try:
            inp: Input = ScanInput(parse_scan(raw, self._scan_config))
        except ScanRejected as exc:
            inp = ScanError(exc.raw, exc.reason)
        if isinstance(inp, ScanInput) and isinstance(inp.scan, PumpScan):
            # A pump the gateway may not auto-program is refused at its label, visibly, not later.
            ready = self._readiness(inp.scan.pump_id)
            if not ready.allowed:
                why = "; ".join(ready.reasons)
                inp = ScanError(raw, f"pump {inp.scan.pump_id} cannot be auto-programmed now: {why}")
        async with self._lock:
            self._scanner = scanner
            try:
                await self._feed(inp)
            finally:
                self._scanner = None

    async def confirm(self, by: str) -> None:
        await self._input(Confirm(by))

    async def cancel(self, by: str) -> None:
        await self._input(Cancel(by))

    async def override(self, parameter: str, clinician: str, reason: str) -> None:
        await self._input(OverrideGiven(parameter, clinician, reason))

    async def pump_started(self, pump: str, channel: int) -> None:
        """The hook for whoever sees a channel start (the monitor does it through :meth:`tick`)."""
        await self._input(PumpStarted(pump, channel))

    async def tick(self) -> None:
        """Give the machine the time, and tell it if the programmed channel has started."""
        await self._input(Tick(self._clock.wall()))
        await self._watch_start()

    def describe(self) -> dict[str, str | None]:
        """Where the sequence is, for the status and the CLI."""
        return {**self.workflow.describe(), "prompt": self.latest_prompt}

    async def _input(self, inp: Input) -> None:
        async with self._lock:
            await self._feed(inp)

    # -- the loop: step, carry out the effects, feed their results back ---------------------------
    async def _feed(self, first: Input) -> None:
        todo: deque[Input] = deque([first])
        while todo:
            inp = todo.popleft()
            try:
                effects = self.workflow.step(inp)
            except Exception:
                # A bug in the machine: say so loudly, carry out nothing for this input, stay up.
                log.exception("the bedside workflow failed on an input", extra={"input": type(inp).__name__})
                return
            for effect in effects:
                result = await self._do(effect)
                if result is not None:
                    todo.append(result)
            if isinstance(inp, ReadBackDone) and not inp.matches:
                await self._never_start_a_mismatch(inp, todo)

    async def _never_start_a_mismatch(self, inp: ReadBackDone, todo: deque[Input]) -> None:
        # Belt and braces: a read-back mismatch must stop the sequence whatever the machine does
        # with it. Should the machine ever go on to "awaiting start", the gateway alarms and cancels.
        if self.workflow.state not in (State.AWAITING_START_CONFIRMATION, State.INFUSING):
            return
        diffs = "; ".join(inp.differences) or "not said"
        log.error("workflow went on after a read-back mismatch; cancelling it", extra={"differences": diffs})
        sent = self._sent
        await self._alarm(
            Alarm(
                f"read-back mismatch ({diffs}): do not start the pump",
                sent.pump if sent else None,
                sent.channel if sent else None,
            )
        )
        todo.append(Cancel("pumpgw (read-back mismatch)"))

    async def _do(self, effect: Effect) -> Input | None:
        try:
            if isinstance(effect, Emit):
                await self._emit(effect)
            elif isinstance(effect, Prompt):
                self.latest_prompt = effect.message
                log.info("bedside: %s", effect.message)
            elif isinstance(effect, Alarm):
                await self._alarm(effect)
            elif isinstance(effect, FetchOrders):
                self._fetch_in_background(effect)
            elif isinstance(effect, Reconcile):
                return await self._reconcile(effect)
            elif isinstance(effect, CheckDers):
                return await self._check_ders(effect)
            elif isinstance(effect, Program):
                return await self._program(effect)
            elif isinstance(effect, ReadBack):
                return await self._read_back(effect)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug here must end the sequence, never leave it waiting or touch the pump.
            log.exception("bedside effect failed unexpectedly", extra={"effect": type(effect).__name__})
            return _failed(effect, f"unexpected {type(exc).__name__}: {exc}")
        return None

    # -- events, prompts, alarms -------------------------------------------------------------------
    async def _emit(self, effect: Emit) -> None:
        payload = dict(effect.payload)
        type_ = EventType(str(effect.type))
        if type_ in (EventType.SCAN_ACCEPTED, EventType.SCAN_REJECTED) and payload.get("scanner") is None:
            payload["scanner"] = self._scanner
        await self._append(type_, payload, effect.refs, effect.pump, effect.channel)

    async def _append(
        self,
        type_: EventType,
        payload: dict[str, Any],
        refs: Refs | None = None,
        pump: str | None = None,
        channel: int | None = None,
    ) -> bool:
        try:
            await self._events.append(type_, payload, pump=pump, channel=channel, refs=refs)
        except EventLogError:
            log.exception("event could not be written", extra={"type": str(type_)})
            return False
        return True

    async def _alarm(self, effect: Alarm) -> None:
        self.alarms.append(effect.reason)
        log.warning(
            "bedside alarm: %s", effect.reason, extra={"pump": effect.pump, "channel": effect.channel}
        )
        await self._append(
            EventType.ALARM_RAISED, {"alarm": effect.reason[:4000]}, pump=effect.pump, channel=effect.channel
        )

    # -- FetchOrders -------------------------------------------------------------------------------
    def _fetch_in_background(self, effect: FetchOrders) -> None:
        task = asyncio.create_task(self._fetch(effect), name=f"bedside:orders:{effect.request}")
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def fetched(self) -> None:
        """Wait until every order fetch started so far has been answered (for tests and the CLI)."""
        while self._fetches:
            await asyncio.wait(set(self._fetches))

    async def _fetch(self, effect: FetchOrders) -> None:
        try:
            result = await self._orders_of(effect)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("fetching orders failed unexpectedly")
            result = OrdersUnavailable(effect.request, f"unexpected {type(exc).__name__}: {exc}")
        await self._input(result)

    async def _orders_of(self, effect: FetchOrders) -> OrdersFound | OrdersUnavailable:
        found: list[Order] = list(self._orders.for_patient(effect.patient_id))
        refused: list[OrderRefused] = []
        if self._fhir is not None:
            from pumpgw.fhir.order_source import orders_for_patient

            try:
                emar = await orders_for_patient(self._fhir, effect.patient_id, mrn_system=self._mrn_system)
            except FhirError as exc:
                return OrdersUnavailable(effect.request, f"the eMAR could not be asked: {exc}")
            except OrderRefused as exc:
                refused.append(exc)
            else:
                held = {(o.source, o.order_id, o.action) for o in found}
                found += [o for o in emar.orders if (o.source, o.order_id, o.action) not in held]
                refused += emar.refused
        return OrdersFound(effect.request, tuple(found), tuple(refused))

    # -- Reconcile ---------------------------------------------------------------------------------
    def _container(self, admin: Administration, library: Library | None) -> ContainerFacts | ContainerRefused:
        if admin.medication is not None:
            if library is None:
                return ContainerRefused(
                    ReconCode.NOT_IN_LIBRARY,
                    admin.medication.gtin,
                    "no verified drug library to look the pack up in",
                )
            return container_from_gtin(admin.medication, library)
        if admin.label is not None:
            return container_from_label(admin.label, admin.order)
        raise ReconcileError("admin", "neither a pack nor a pharmacy label was scanned")

    def _planned(self, admin: Administration, container: ContainerFacts, library: Library | None) -> Planned:
        entry = container.entry if container.entry is not None else _entry_for(admin.order, library)
        order = admin.order
        return Planned(
            pump_id=admin.pump,
            channel=admin.channel,
            drug=entry,
            concentration=_programmed_concentration(entry, container),
            dose_rate=order.dose_rate,
            rate=order.rate,
            bolus=order.dose,
            vtbi=order.vtbi,
            duration=order.duration,
            route=order.route,
            weight=order.weight,  # no weight entry at the bedside yet: the order's (see the report)
        )

    async def _reconcile(self, effect: Reconcile) -> ReconcileDone:
        admin, library = effect.admin, self._library()
        try:
            container = self._container(admin, library)
        except ReconcileError as exc:
            return ReconcileDone(effect.request, False, str(exc))
        if isinstance(container, ContainerRefused):
            return ReconcileDone(effect.request, False, str(container))
        result = reconcile(
            admin.order,
            container,
            self._planned(admin, container, library),
            scanned_patient=admin.patient.patient_id,
            pump_patient=None,
            policy=self._reconcile_policy,
        )
        self._reconciled = admin if result.ok else None
        self._passed = None
        await self._append(
            EventType.RECONCILIATION, result.to_payload(), _refs(admin), admin.pump, admin.channel
        )
        return ReconcileDone(effect.request, result.ok, result.summary(), result.checks)

    # -- CheckDers ---------------------------------------------------------------------------------
    async def _check_ders(self, effect: CheckDers) -> DersDone:
        admin, library = effect.admin, self._library()
        if library is None:
            return DersDone(effect.request, Verdict.BLOCKED, "no verified drug library")
        container = self._container(admin, library)
        if isinstance(container, ContainerRefused):
            return DersDone(effect.request, Verdict.BLOCKED, str(container))
        planned = self._planned(admin, container, library)
        order = admin.order
        programming = Programming(
            self._care_area,
            drug=None if planned.drug is None else planned.drug.id,
            concentration=planned.concentration,
            dose_rate=order.dose_rate,
            rate=order.rate,
            vtbi=order.vtbi,
            duration=order.duration,
            bolus_dose=order.dose,
            weight=order.weight,
            bsa=order.bsa,
            container_volume=container.volume,
            concentration_confirmed=effect.concentration_confirmed,
        )
        try:
            result = evaluate(programming, library, overrides=effect.overrides)
        except PumpGwError as exc:
            return DersDone(effect.request, Verdict.BLOCKED, str(exc))
        self._passed = (admin, result) if result.verdict is Verdict.PASS else None
        refs = _refs(admin)
        await self._append(EventType.DERS_RESULT, result.as_event(), refs, admin.pump, admin.channel)
        for check in result.checks:
            o = check.override
            if o is not None and check.value is not None and check.limit is not None and check.limit_name:
                payload = {
                    "parameter": check.parameter,
                    "clinician": o.clinician,
                    "reason": o.reason,
                    "value": str(check.value),
                    "limit": str(check.limit),
                    "limit_name": check.limit_name,
                }
                await self._append(
                    EventType.DERS_OVERRIDE, payload, Refs(refs.patient, refs.order, o.clinician), admin.pump
                )
        soft = tuple(
            dict.fromkeys(
                c.parameter
                for c in result.checks
                if c.outcome in (DersOutcome.SOFT_LOW, DersOutcome.SOFT_HIGH) and c.override is None
            )
        )
        problems = [c.message for c in result.problems() if c.override is None]
        refused = [f"override of {o.parameter} refused: {why}" for o, why in result.refused_overrides]
        summary = " ".join(problems + refused) or "within the drug library's limits"
        return DersDone(effect.request, result.verdict, summary[:4000], soft, result)

    # -- Program -----------------------------------------------------------------------------------
    async def _program(self, effect: Program) -> Input:
        admin = effect.admin
        pump, channel = admin.pump, admin.channel
        refused = self._interlock(effect)
        if refused is not None:
            log.error("programming refused by the interlock: %s", refused, extra={"pump": pump})
            return ProgramSent(effect.request, False, refused)
        ready = self._readiness(pump)
        if not ready.allowed:
            return PumpNotReady(pump, "; ".join(ready.reasons))
        driver = self._drivers.get(pump)
        if driver is None:
            return ProgramSent(effect.request, False, f"pump {pump} has no driver on this gateway")
        program = self._channel_program(effect)
        if isinstance(program, str):
            return ProgramSent(effect.request, False, program)
        try:
            status = _channel(await driver.read_status(), channel)
        except DriverError as exc:
            return ProgramSent(effect.request, False, f"the pump could not be read before programming: {exc}")
        if status is None:
            return ProgramSent(effect.request, False, f"pump {pump} has no channel {channel}")
        if status.state not in PROGRAMMABLE:
            return ProgramSent(
                effect.request,
                False,
                f"channel {channel} is {status.state} (the gateway never changes a running or paused "
                "infusion): finish or clear it on the pump first",
            )
        payload = {
            "drug": program.drug,
            "concentration": _text(program.concentration),
            "rate_ml_h": str(program.rate.value),
            "vtbi_ml": str(program.vtbi.value),
            "dose_rate": _text(admin.order.dose_rate),
            "bolus": _text(admin.order.dose),
        }
        if not await self._append(EventType.PROGRAMMING_SENT, payload, _refs(admin), pump, channel):
            return ProgramSent(effect.request, False, "the event log cannot record the programming")
        polls = 0
        if self._monitor is not None and pump in self._monitor.pumps:
            polls = self._monitor.pumps[pump].polls
        said: str | None = None
        try:
            await driver.program(channel, program)
        except DeviceError as exc:
            if exc.code != READBACK_MISMATCH:
                return ProgramSent(effect.request, False, str(exc))
            # The pump took a programme and holds something else: the read-back says what (an alarm).
            said = exc.text
        except (DriverError, QuantityError) as exc:
            return ProgramSent(effect.request, False, str(exc))
        self._sent = _Sent(pump, channel, program, polls, said)
        return ProgramSent(effect.request, True)

    def _interlock(self, effect: Program) -> str | None:
        """Why ``effect`` must not be carried out, or None. Independent of the state machine: a
        programme is sent only for the administration this layer saw reconciled without a single
        failed check, with the very drug library result it saw pass."""
        if self._reconciled is None or self._reconciled != effect.admin:
            return "interlock: this administration has not passed reconciliation here"
        if self._passed is None or self._passed[0] != effect.admin or self._passed[1] is not effect.ders:
            return "interlock: this programme has not passed the drug library check here"
        return None

    def _channel_program(self, effect: Program) -> ChannelProgram | str:
        """What to send, or why nothing can be sent."""
        ders, order = effect.ders, effect.admin.order
        if ders is None or ders.rate_ml_h is None:
            return "the drug library check gave no rate to program"
        if order.vtbi is None:
            return "the order gives no volume to be infused (VTBI), and none is guessed"
        library = self._library()
        entry = None if library is None or ders.drug is None else library.drugs.get(ders.drug)
        concentration = None
        drug: str | None = None
        extra: dict[str, str] = {}
        if entry is not None:
            known = self._pump_drugs.get(entry.id)
            drug = known.name if known is not None else entry.name
            if known is not None and known.pump_drug_id is not None:
                extra["drug_id"] = known.pump_drug_id
            planned = self._concentration_of(effect.admin, library)
            if planned is None:
                return f"the concentration of {entry.display_name} to program is not known"
            concentration = _per_ml(planned)
            if concentration is None:
                return f"the concentration of {entry.display_name} cannot be written per mL exactly"
        try:
            return ChannelProgram(ders.rate_ml_h, order.vtbi.to("mL"), drug, concentration, extra)
        except QuantityError as exc:
            return f"the programme cannot be written: {exc}"

    def _concentration_of(
        self, admin: Administration, library: Library | None
    ) -> Concentration | Quantity | None:
        container = self._container(admin, library)
        if isinstance(container, ContainerRefused):
            return None
        return self._planned(admin, container, library).concentration

    # -- ReadBack ----------------------------------------------------------------------------------
    async def _read_back(self, effect: ReadBack) -> ReadBackDone:
        sent, admin = self._sent, effect.sent.admin
        if sent is None:
            return ReadBackDone(effect.request, False, ("nothing was recorded as sent",))
        driver = self._drivers[sent.pump]
        differences: list[dict[str, str | None]] = []
        try:
            status = _channel(await driver.read_status(), sent.channel)
        except DriverError as exc:
            status = None
            differences.append({"field": "status", "sent": None, "read": f"could not be read: {exc}"})
        if status is None and not differences:
            differences.append({"field": "channel", "sent": str(sent.channel), "read": None})
        if status is not None:
            differences += _differences(sent.program, status)
        if sent.driver_said:
            differences.append({"field": "driver", "sent": None, "read": sent.driver_said[:4000]})
        matches = not differences
        await self._append(
            EventType.PROGRAMMING_READ_BACK,
            {"matches": matches, "differences": differences},
            _refs(admin),
            sent.pump,
            sent.channel,
        )
        words = tuple(f"{d['field']}: sent {d['sent']}, pump holds {d['read']}" for d in differences)
        return ReadBackDone(effect.request, matches, words)

    # -- the start, as the monitor sees it ---------------------------------------------------------
    async def _watch_start(self) -> None:
        sent, monitor = self._sent, self._monitor
        if sent is None or monitor is None or sent.pump not in monitor.pumps:
            return
        if self.workflow.state not in (State.PROGRAMMED, State.READ_BACK, State.AWAITING_START_CONFIRMATION):
            return
        view = monitor.pumps[sent.pump]
        status = view.channels.get(sent.channel)
        if view.polls > sent.polls and status is not None and status.state in STARTED:
            await self._input(PumpStarted(sent.pump, sent.channel))


def _failed(effect: Effect, why: str) -> Input | None:
    """The answer that ends the sequence when carrying out ``effect`` failed unexpectedly."""
    if isinstance(effect, Reconcile):
        return ReconcileDone(effect.request, False, why)
    if isinstance(effect, CheckDers):
        return DersDone(effect.request, Verdict.BLOCKED, why)
    if isinstance(effect, Program):
        return ProgramSent(effect.request, False, why)
    if isinstance(effect, ReadBack):
        return ReadBackDone(effect.request, False, (why,))
    return None


def _refs(admin: Administration) -> Refs:
    return Refs(admin.patient.patient_id, admin.order.order_id, admin.clinician)


def _text(q: object | None) -> str | None:
    return None if q is None else str(q)


def _channel(channels: tuple[ChannelStatus, ...], number: int) -> ChannelStatus | None:
    return next((c for c in channels if c.channel == number), None)


def _entry_for(order: Order, library: Library | None) -> LibraryEntry | None:
    """The one library entry carrying the order's drug code, or None (reconciliation says why)."""
    system = library_code_system(order.drug.system)
    if library is None or system is None:
        return None
    found = [d for d in library.doc.drugs if order.drug.code in getattr(d.codes, system, ())]
    return found[0] if len(found) == 1 else None


def _programmed_concentration(
    entry: LibraryEntry | None, container: ContainerFacts
) -> Concentration | Quantity | None:
    """The concentration that will be programmed: the library entry's fixed one; for a variable
    entry (or none), the container's (which DERS then asks to be confirmed)."""
    spec = None if entry is None else entry.concentration
    if spec is not None and not spec.variable and spec.amount is not None and spec.volume is not None:
        try:
            return Concentration(spec.amount, spec.volume)
        except QuantityError:
            return None
    return container.concentration


def _per_ml(c: Concentration | Quantity | None) -> Quantity | None:
    """``2500 ug in 50 mL`` as ``50 ug/mL`` (what pumps hold), exactly, or None."""
    if c is None:
        return None
    if isinstance(c, Quantity):
        return c if c.unit.endswith("/mL") else None
    try:
        value = _EXACT.divide(c.amount.value, c.volume.to("mL").value)
    except (DecimalException, QuantityError):
        return None
    if value == value.to_integral_value():
        value = value.to_integral_value()  # 50, not 5E+1 (Decimal.normalize) nor 50.000
    return Quantity(value, f"{c.amount.unit}/mL")


def _differences(sent: ChannelProgram, status: ChannelStatus) -> list[dict[str, str | None]]:
    """Every field the channel reports that differs from what was sent.

    The rate a channel reports is what it delivers now (0 while not started, on most pumps): it is
    compared when the pump reports one above 0; the programmed rate itself is verified by the
    driver's read-back of the write (``program`` raises READBACK_MISMATCH, which counts here)."""
    found: list[dict[str, str | None]] = []
    delivering = status.rate is not None and status.rate.value != 0
    pairs: list[tuple[str, object, object]] = [
        *([("rate_ml_h", sent.rate, status.rate)] if delivering else []),
        ("vtbi_ml", sent.vtbi, status.vtbi),
        ("concentration", sent.concentration, status.concentration),
    ]
    if sent.drug is not None:
        pairs.append(("drug", sent.drug, status.drug))
    for name, want, held in pairs:
        if not _same(want, held):
            found.append({"field": name, "sent": _show(want), "read": _show(held)})
    if status.state in STARTED:
        found.append({"field": "state", "sent": "not started", "read": str(status.state)})
    return found


def _same(want: object, held: object) -> bool:
    if isinstance(want, Quantity) and isinstance(held, Quantity):
        try:
            return held.to(want.unit).value == want.value
        except QuantityError:
            return False
    return want == held


def _show(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, Quantity):
        return str(value.value) if value.unit in ("mL/h", "mL") else str(value)
    return str(value)
