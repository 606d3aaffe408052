"""The bedside workflow as a pure state machine; its transition table is :data:`TRANSITIONS`.

Sans-I/O, like h11's ``_state.py``: :meth:`Workflow.step` takes one input (a scan, the result of work
done outside, a nurse's action, a clock tick) and returns effects (fetch orders, reconcile, check the
drug library, program, read back, emit an event, prompt the nurse, raise an alarm). It never calls
reconciliation, DERS or a pump driver, reads no clock and awaits nothing: the async layer executes
the effects and feeds each result back tagged with the ``request`` number of the effect that asked
for it. A result whose number is not the one awaited (a sequence abandoned meanwhile, a duplicate)
is ignored, so it can never move a newer sequence. There is no "start" effect: the nurse starts the
pump on the pump; the machine only hears about it (:class:`PumpStarted`).

Scan order (what the ward may do):

- the wristband first. Every wristband scan starts a new sequence: any order, container, pump and
  result held is dropped (the badge is kept: the same nurse is still at the bedside);
- the badge before the wristband (held in ``idle``) or at any point before the order is matched;
- the medication pack or its pharmacy label, and the pump channel, in either order after the wristband;
- before the order is matched, a rescan of a kind replaces the previous value. From the match on,
  what was scanned is frozen: a different container or pump is refused (cancel to change it), and a
  badge adds an identified clinician (who may override or confirm) without replacing the first.

Order matching: among the patient's active new-infusion orders (orders of another patient, inactive
orders and changes of running infusions are dropped), a pharmacy label picks the order it names; a
pack keeps the orders whose drug is not a different GTIN. No order left: blocked. Several: the
machine never guesses; it asks for the pharmacy label (which names one order) and waits. One: matched
once the badge and the pump channel are known too. The order's age (``OrderPolicy.stale_after``) and
the pack's expiry are checked at the match and again just before programming, against the latest
:class:`Tick`; without a tick the time is unknown and the sequence blocks.

Timeouts (:class:`WorkflowPolicy`): a state times out when nothing acted on in it for its timeout,
counted from the first :class:`Tick` after the last input the machine acted on (so give ticks about
every second). Any waiting state then returns to ``idle``, dropping everything, with a prompt that
says why; ``infusing``/``blocked``/``cancelled`` are cleared back to ``idle`` the same way.

What the async layer does with each effect, and answers (same ``request``):

- :class:`FetchOrders`: the patient's orders (PendingOrders, FHIR), each through ``check_order`` ->
  :class:`OrdersFound` (usable, refused) or :class:`OrdersUnavailable`;
- :class:`Reconcile`: ``reconcile(...)``, emit reconciliation.result -> :class:`ReconcileDone`;
- :class:`CheckDers`: ``ders.evaluate`` with the overrides and concentration confirmation given, emit
  ders.result -> :class:`DersDone` (``soft_params``: soft checks without an accepted override);
- :class:`Program`: readiness checked again, the channel programmed with ``ders.rate_ml_h``, emit
  programming.sent -> :class:`ProgramSent` (a timeout is answered only after reading the pump);
- :class:`ReadBack`: read the channel, compare with ``sent``, emit programming.read_back ->
  :class:`ReadBackDone`;
- :class:`Emit`: write the event; :class:`Prompt`: show it; :class:`Alarm`: raise it (an event too).

Unasked: :class:`PumpStarted` when the poller sees the channel infusing, :class:`PumpNotReady` when
readiness fails for the scanned pump (check it on the pump scan), :class:`Tick` about every second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from .ders import DersResult, Override, Verdict
from .events import EventType, Refs
from .orders import (
    HL7_APPLICATION_ERROR,
    Order,
    OrderAction,
    OrderPolicy,
    OrderProblem,
    OrderRefused,
    PivError,
)
from .scan_types import ClinicianScan, LabelScan, MedicationScan, PatientScan, PumpScan, Scan


class State(StrEnum):
    IDLE = "idle"
    PATIENT = "patient"
    CLINICIAN = "clinician"
    MEDICATION = "medication"
    PUMP_CHANNEL = "pump_channel"
    ORDER_MATCHED = "order_matched"
    RECONCILED = "reconciled"
    LIBRARY_CHECKED = "library_checked"
    PROGRAMMED = "programmed"
    READ_BACK = "read_back"
    AWAITING_START_CONFIRMATION = "awaiting_start_confirmation"
    INFUSING = "infusing"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"


MEANING: Final[Mapping[State, str]] = {
    State.IDLE: "no patient yet (a badge scanned first is held)",
    State.PATIENT: "wristband scanned; the badge is still needed",
    State.CLINICIAN: "wristband and badge scanned; container and pump channel still needed",
    State.MEDICATION: "container scanned; the pump channel still needed",
    State.PUMP_CHANNEL: "pump channel scanned; order not matched yet (container, orders or label awaited)",
    State.ORDER_MATCHED: "one order matched; reconciliation (order, container, pump) requested",
    State.RECONCILED: "reconciliation passed; drug library check (DERS) requested",
    State.LIBRARY_CHECKED: "DERS asks for overrides with reasons or a concentration confirmation",
    State.PROGRAMMED: "DERS passed; programme sent to the pump, its acknowledgement awaited",
    State.READ_BACK: "pump accepted the programme; read-back requested",
    State.AWAITING_START_CONFIRMATION: "read-back matches; the nurse starts the pump on the pump",
    State.INFUSING: "the pump reported infusing after the read-back matched (done)",
    State.BLOCKED: "stopped, with the reason (done; scan a wristband to start again)",
    State.CANCELLED: "cancelled by a nurse (done)",
}

SCANNING: Final = (State.PATIENT, State.CLINICIAN, State.MEDICATION, State.PUMP_CHANNEL)
MATCHED: Final = (State.ORDER_MATCHED, State.RECONCILED, State.LIBRARY_CHECKED)
ON_PUMP: Final = (State.PROGRAMMED, State.READ_BACK, State.AWAITING_START_CONFIRMATION)
ENDED: Final = (State.INFUSING, State.BLOCKED, State.CANCELLED)
ACTIVE: Final = SCANNING + MATCHED + ON_PUMP
ANY: Final = tuple(State)


# -- inputs ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanInput:
    scan: Scan


@dataclass(frozen=True, slots=True)
class ScanError:
    """A scan the parser refused (``gateway/scan.py`` raised ScanRejected)."""

    raw: str
    reason: str


@dataclass(frozen=True, slots=True)
class OrdersFound:
    """The patient's orders (answer to :class:`FetchOrders`); ``refused``: those check_order refused."""

    request: int
    orders: tuple[Order, ...]
    refused: tuple[OrderRefused, ...] = ()


@dataclass(frozen=True, slots=True)
class OrdersUnavailable:
    request: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReconcileDone:
    request: int
    ok: bool
    summary: str
    checks: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class DersDone:
    """``soft_params``: the parameters whose soft limit is crossed and not overridden."""

    request: int
    verdict: Verdict
    summary: str
    soft_params: tuple[str, ...] = ()
    result: DersResult | None = None


@dataclass(frozen=True, slots=True)
class OverrideGiven:
    parameter: str
    clinician: str
    reason: str


@dataclass(frozen=True, slots=True)
class ProgramSent:
    request: int
    ok: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ReadBackDone:
    request: int
    matches: bool
    differences: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PumpStarted:
    """The pump reports the channel infusing (the nurse pressed start on the pump)."""

    pump: str
    channel: int


@dataclass(frozen=True, slots=True)
class Confirm:
    """A clinician confirms on the gateway: the concentration (when DERS asks), or the start."""

    by: str


@dataclass(frozen=True, slots=True)
class Cancel:
    by: str


@dataclass(frozen=True, slots=True)
class Tick:
    now: datetime

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError(f"Tick needs an aware datetime, not {self.now.isoformat()}")


@dataclass(frozen=True, slots=True)
class PumpNotReady:
    """Auto-programming refused (Gateway.readiness): on ``pump``, or on every pump when None."""

    pump: str | None
    reason: str


# fmt: off
Input = (
    ScanInput | ScanError | OrdersFound | OrdersUnavailable | ReconcileDone | DersDone | OverrideGiven
    | ProgramSent | ReadBackDone | PumpStarted | Confirm | Cancel | Tick | PumpNotReady
)
# fmt: on


class InputKind(StrEnum):
    PATIENT_SCAN = "patient scan"
    CLINICIAN_SCAN = "badge scan"
    MEDICATION_SCAN = "medication scan"
    LABEL_SCAN = "label scan"
    PUMP_SCAN = "pump scan"
    SCAN_ERROR = "ScanError"
    ORDERS_FOUND = "OrdersFound"
    ORDERS_UNAVAILABLE = "OrdersUnavailable"
    RECONCILE_DONE = "ReconcileDone"
    DERS_DONE = "DersDone"
    OVERRIDE_GIVEN = "OverrideGiven"
    PROGRAM_SENT = "ProgramSent"
    READ_BACK_DONE = "ReadBackDone"
    PUMP_STARTED = "PumpStarted"
    CONFIRM = "Confirm"
    CANCEL = "Cancel"
    TICK = "Tick"
    PUMP_NOT_READY = "PumpNotReady"


_SCAN_KINDS: Final = {
    PatientScan: InputKind.PATIENT_SCAN,
    ClinicianScan: InputKind.CLINICIAN_SCAN,
    MedicationScan: InputKind.MEDICATION_SCAN,
    LabelScan: InputKind.LABEL_SCAN,
    PumpScan: InputKind.PUMP_SCAN,
}


def kind_of(inp: Input) -> InputKind:
    if isinstance(inp, ScanInput):
        return _SCAN_KINDS[type(inp.scan)]
    return InputKind(type(inp).__name__)


# -- effects ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchOrders:
    request: int
    patient_id: str


@dataclass(frozen=True, slots=True)
class Administration:
    """What the order was matched with, frozen from the match on; every later request carries it."""

    order: Order
    patient: PatientScan
    clinician: str  # the badge that started the sequence
    medication: MedicationScan | None
    label: LabelScan | None
    pump: str
    channel: int


@dataclass(frozen=True, slots=True)
class Reconcile:
    request: int
    admin: Administration


@dataclass(frozen=True, slots=True)
class CheckDers:
    request: int
    admin: Administration
    overrides: tuple[Override, ...]
    concentration_confirmed: bool


@dataclass(frozen=True, slots=True)
class Program:
    """Program ``admin.channel`` of ``admin.pump`` as DERS checked it (``ders``: its result, the rate)."""

    request: int
    admin: Administration
    ders: DersResult
    overrides: tuple[Override, ...]


@dataclass(frozen=True, slots=True)
class ReadBack:
    """Read the channel back and compare it with what ``sent`` programmed."""

    request: int
    sent: Program


@dataclass(frozen=True, slots=True)
class Emit:
    type: EventType | WorkflowEvent
    payload: dict[str, Any]
    refs: Refs
    pump: str | None = None
    channel: int | None = None


@dataclass(frozen=True, slots=True)
class Prompt:
    message: str


@dataclass(frozen=True, slots=True)
class Alarm:
    reason: str
    pump: str | None
    channel: int | None


Effect = FetchOrders | Reconcile | CheckDers | Program | ReadBack | Emit | Prompt | Alarm


class WorkflowEvent(StrEnum):
    """The workflow's own events: the ``workflow.*`` types of gateway/events.py (payload models there).
    Payloads: order_selected {order_id, drug, how}; blocked {state, reason}; cancelled {state, by};
    timed_out {state, after_s}; aborted {state, reason}; confirmed {what, by}; infusing {order_id}."""

    ORDER_SELECTED = "workflow.order_selected"
    BLOCKED = "workflow.blocked"
    CANCELLED = "workflow.cancelled"
    TIMED_OUT = "workflow.timed_out"
    ABORTED = "workflow.aborted"
    CONFIRMED = "workflow.confirmed"
    INFUSING = "workflow.infusing"


# -- policy and context ----------------------------------------------------------------------------

_MIN: Final = timedelta(minutes=1)
DEFAULT_TIMEOUTS: Final[Mapping[State, timedelta]] = {
    State.IDLE: 2 * _MIN,  # a badge held without a wristband
    **dict.fromkeys(SCANNING, 5 * _MIN),
    State.ORDER_MATCHED: _MIN,
    State.RECONCILED: _MIN,
    State.LIBRARY_CHECKED: 5 * _MIN,
    State.PROGRAMMED: _MIN,
    State.READ_BACK: _MIN,
    State.AWAITING_START_CONFIRMATION: 10 * _MIN,
    State.INFUSING: _MIN,
    State.BLOCKED: 10 * _MIN,
    State.CANCELLED: _MIN,
}


@dataclass(frozen=True, slots=True)
class WorkflowPolicy:
    timeouts: Mapping[State, timedelta] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    order_policy: OrderPolicy = field(default_factory=OrderPolicy)

    def __post_init__(self) -> None:
        for state in State:
            limit = self.timeouts.get(state)
            if limit is None or limit <= timedelta(0):
                raise ValueError(f"timeouts[{state.value}] = {limit}: every state needs a positive timeout")


_WAITS_FOR: Final[Mapping[State, str]] = {
    State.ORDER_MATCHED: "the check of order, container and pump",
    State.RECONCILED: "the drug library check",
    State.PROGRAMMED: "the pump to accept the programme",
    State.READ_BACK: "the programme to be read back from the pump",
}
_GTIN_SYSTEMS: Final = frozenset({"gtin", "https://www.gs1.org/gtin", "urn:oid:1.3.160"})


@dataclass
class _Context:
    """What one sequence has gathered. Replaced whole on a wristband scan, a timeout or a clear."""

    patient: PatientScan | None = None
    clinician: ClinicianScan | None = None
    identified: set[str] = field(default_factory=set)  # badges scanned in this sequence
    medication: MedicationScan | None = None
    label: LabelScan | None = None
    pump: PumpScan | None = None
    orders: tuple[Order, ...] | None = None  # None: not received yet
    refused: tuple[OrderRefused, ...] = ()
    admin: Administration | None = None  # set by the match
    verdict: Verdict | None = None
    soft_params: tuple[str, ...] = ()
    overrides: dict[str, Override] = field(default_factory=dict)
    concentration_confirmed: bool = False
    program: Program | None = None


# -- the machine -----------------------------------------------------------------------------------


class Workflow:
    """One bedside's workflow. ``step(input) -> effects``; ``state``; ``describe()`` for status/CLI."""

    def __init__(self, policy: WorkflowPolicy | None = None) -> None:
        self.policy = policy or WorkflowPolicy()
        self._state = State.IDLE
        self._ctx = _Context()
        self._last_request = 0
        self._orders_request: int | None = None  # FetchOrders runs while the nurse scans
        self._pending: int | None = None  # the one request awaited after the match
        self._now: datetime | None = None  # the latest Tick
        self._since: datetime | None = None  # the first Tick since the last input acted on
        self._reason: str | None = None
        self._prompt: str | None = None
        self._out: list[Effect] = []

    @property
    def state(self) -> State:
        return self._state

    def step(self, inp: Input) -> list[Effect]:
        before = self._state
        self._out = []
        self._state = TRANSITIONS[(before, kind_of(inp))].handler(self, inp)
        out, self._out = self._out, []
        if self._state is not before or (out and not isinstance(inp, Tick)):
            self._since = None  # the timeout counts again from the next tick
        return out

    def describe(self) -> dict[str, str | None]:
        c = self._ctx
        return {
            "state": self._state.value,
            "patient": c.patient.patient_id if c.patient else None,
            "clinician": c.clinician.clinician_id if c.clinician else None,
            "medication": c.medication.gtin if c.medication else None,
            "label": (c.label.order_id or c.label.dispense_id) if c.label else None,
            "pump": c.pump.pump_id if c.pump else None,
            "channel": str(c.pump.channel) if c.pump else None,
            "order": c.admin.order.order_id if c.admin else None,
            "reason": self._reason,
            "next": self._expected(),
            "prompt": self._prompt,
        }

    # -- helpers of the handlers -----------------------------------------------------------------
    def _request(self) -> int:
        self._last_request += 1
        return self._last_request

    def _say(self, message: str) -> None:
        self._prompt = message
        self._out.append(Prompt(message))

    def _emit(self, type: EventType | WorkflowEvent, payload: dict[str, Any]) -> None:
        c = self._ctx
        refs = Refs(
            c.patient.patient_id if c.patient else None,
            c.admin.order.order_id if c.admin else None,
            c.clinician.clinician_id if c.clinician else None,
        )
        self._out.append(Emit(type, payload, refs, *self._pump_ids()))

    def _alarm(self, reason: str) -> None:
        self._out.append(Alarm(reason, *self._pump_ids()))

    def _pump_ids(self) -> tuple[str | None, int | None]:
        p = self._ctx.pump
        return (p.pump_id, p.channel) if p else (None, None)

    def _pump_words(self) -> str:
        p = self._ctx.pump
        return f"pump {p.pump_id} channel {p.channel}" if p else "the pump"

    def _ours(self, pump: str | None, channel: int | None = None) -> bool:
        p = self._ctx.pump
        return p is not None and p.pump_id == pump and channel in (None, p.channel)

    def _reject_scan(self, raw: str, reason: str) -> None:
        shown, expected = _printable(raw), self._expected()
        payload = {"raw": shown[:4000], "reason": reason, "expected": expected, "scanner": None}
        self._emit(EventType.SCAN_REJECTED, payload)
        self._say(f'Scan "{shown}" not used: {reason}. Next: {expected}.')

    def _accept_scan(self, scan: Scan) -> None:
        kind = "order-label" if isinstance(scan, LabelScan) else scan.kind.value
        self._emit(EventType.SCAN_ACCEPTED, {"kind": kind, "data": _scan_data(scan), "scanner": None})

    def _left_on_pump(self) -> str:
        if self._state not in ON_PUMP:
            return ""
        return (
            f" {self._pump_words().capitalize()} may hold the programme, not started: clear it on the pump."
        )

    def _block(self, reason: str) -> State:
        self._reason = reason
        self._pending = self._orders_request = None
        self._emit(WorkflowEvent.BLOCKED, {"state": self._state.value, "reason": reason})
        self._say(f"Stopped: {reason}.{self._left_on_pump()} Scan a wristband to start again.")
        return State.BLOCKED

    def _scanning_state(self) -> State:
        c = self._ctx
        if c.clinician is None:
            return State.PATIENT
        if c.pump is not None:
            return State.PUMP_CHANNEL
        return State.MEDICATION if (c.medication or c.label) else State.CLINICIAN

    def _expected(self) -> str:
        """What the nurse should do next, in words."""
        c, s = self._ctx, self._state
        if s is State.IDLE or s in ENDED:
            return "scan the patient's wristband"
        if s in SCANNING:
            wanted = (
                ("your staff badge", c.clinician),
                ("the medication or its pharmacy label", c.medication or c.label),
                ("the pump channel's label", c.pump),
            )
            missing = [what for what, have in wanted if have is None]
            if missing:
                return "scan " + " and ".join(
                    [", ".join(missing[:-1]), missing[-1]] if missing[1:] else missing
                )
            if c.orders is None:
                return "wait: the patient's orders are being fetched"
            return "scan the pharmacy label, to choose between the orders that fit"
        if s is State.LIBRARY_CHECKED:
            if c.verdict is Verdict.CONFIRMATION_REQUIRED:
                return "an identified clinician confirms the concentration"
            todo = ", ".join(p for p in c.soft_params if p not in c.overrides)
            return f"an identified clinician overrides {todo} with a reason"
        if s is State.AWAITING_START_CONFIRMATION:
            return f"check the pump display, then press start on {self._pump_words()}"
        return f"wait for {_WAITS_FOR[s]}"

    def _time_problem(self, order: Order) -> str | None:
        """Why the order (or the pack) must not be used now: stale, dated ahead, expired."""
        now, policy = self._now, self.policy.order_policy
        if now is None:
            return "the gateway has not been given the time, so the order's age cannot be checked"
        if order.ordered_at is None or order.ordered_at.tzinfo is None:
            return f"order {order.order_id} does not say when it was made (code {PivError.STALE})"
        age = now - order.ordered_at
        if age > policy.stale_after:
            return (
                f"order {order.order_id} was made {_minutes(age)} ago; orders older than "
                f"{_minutes(policy.stale_after)} are stale (code {PivError.STALE}): ask for it to be renewed"
            )
        if -age > policy.future_tolerance:
            return f"order {order.order_id} is dated {_minutes(-age)} ahead of this gateway's clock"
        med = self._ctx.medication
        if med is not None and med.expiry is not None and med.expiry < now.date():
            return f"the medication (lot {med.lot or 'not given'}) expired on {med.expiry.isoformat()}"
        return None

    def _candidates(self, orders: tuple[Order, ...], pid: str) -> tuple[list[Order], str]:
        """The orders the container fits, or none and why. Never picks one of several."""
        c = self._ctx
        if c.label is not None and c.label.order_id is not None:
            wanted = c.label.order_id
            hit = [o for o in orders if o.order_id == wanted]
            refused = [r for r in c.refused if r.order_id == wanted]
            if hit or not refused:
                return hit, f"the pharmacy label is for order {wanted}, not an active order of patient {pid}"
            return [], f"the pharmacy label is for {refused[0]}"
        if c.medication is None:
            return list(orders), ""
        gtin = c.medication.gtin
        listed = "; ".join(f"{o.order_id}: {o.drug}" for o in orders)
        why = f"no active order of patient {pid} is for this medication (GTIN {gtin}); orders: {listed}"
        return [o for o in orders if not _other_gtin(o, gtin)], why

    def _advance(self, note: str) -> State:
        """After something was gathered: match the order once all is known, else say what is next."""
        c = self._ctx
        if c.patient is not None and c.orders is not None and (c.medication or c.label):
            found, why = self._candidates(c.orders, c.patient.patient_id)
            if not found:
                return self._block(why)
            if len(found) > 1:
                listed = "; ".join(f"{o.order_id}: {o.drug}" for o in found)
                self._say(
                    f"{note}{len(found)} orders fit this medication ({listed}). The gateway will not "
                    "guess: scan the pharmacy label of this container, or cancel."
                )
                return self._scanning_state()
            if c.clinician is not None and c.pump is not None and c.pump.channel is not None:
                how = "label" if c.label and c.label.order_id else "only order"
                return self._match(
                    Administration(
                        found[0],
                        c.patient,
                        c.clinician.clinician_id,
                        c.medication,
                        c.label,
                        c.pump.pump_id,
                        c.pump.channel,
                    ),
                    how,
                )
            note += f"Order {found[0].order_id}: {found[0].drug}. "
        self._say(f"{note}Next: {self._expected()}.")
        return self._scanning_state()

    def _match(self, admin: Administration, how: str) -> State:
        order = admin.order
        problem = self._time_problem(order)
        if problem:
            return self._block(problem)
        self._ctx.admin = admin
        self._emit(
            WorkflowEvent.ORDER_SELECTED, {"order_id": order.order_id, "drug": str(order.drug), "how": how}
        )
        self._pending = self._request()
        self._out.append(Reconcile(self._pending, admin))
        self._say(
            f"Order {order.order_id} matched, {order.drug}, for {self._pump_words()}: checking order, "
            "container and pump against each other."
        )
        return State.ORDER_MATCHED

    def _check_ders(self, note: str) -> State:
        c = self._ctx
        assert c.admin is not None
        self._pending = self._request()
        self._out.append(
            CheckDers(self._pending, c.admin, tuple(c.overrides.values()), c.concentration_confirmed)
        )
        self._say(f"{note}Checking the drug library.")
        return State.RECONCILED

    def _program(self, ders: DersResult) -> State:
        c = self._ctx
        assert c.admin is not None
        problem = self._time_problem(c.admin.order)  # again, just before programming (HAZ-017)
        if problem:
            return self._block(problem)
        self._pending = self._request()
        c.program = Program(self._pending, c.admin, ders, tuple(c.overrides.values()))
        self._out.append(c.program)
        self._say(f"Drug library check passed. Programming {self._pump_words()}: do not start it yet.")
        return State.PROGRAMMED


# -- handlers: (workflow, input) -> next state; their effects go to wf._out ------------------------


def _new_sequence(wf: Workflow, inp: ScanInput) -> State:
    assert isinstance(inp.scan, PatientScan)
    pid, warning = inp.scan.patient_id, ""
    if wf.state in ACTIVE:
        wf._emit(WorkflowEvent.ABORTED, {"state": wf.state.value, "reason": f"wristband of {pid} scanned"})
        warning = f"Previous administration abandoned.{wf._left_on_pump()} "
    badge = wf._ctx.clinician
    wf._ctx = _Context(inp.scan, badge, {badge.clinician_id} if badge else set())
    wf._pending, wf._reason = None, None
    wf._orders_request = wf._request()
    wf._accept_scan(inp.scan)
    wf._out.append(FetchOrders(wf._orders_request, pid))
    wf._state = wf._scanning_state()  # so that _expected() speaks of the new sequence
    wf._say(f"{warning}Patient {pid}. Next: {wf._expected()}.")
    return wf._state


def _hold_badge(wf: Workflow, inp: ScanInput) -> State:
    assert isinstance(inp.scan, ClinicianScan)
    wf._ctx, wf._reason = _Context(clinician=inp.scan, identified={inp.scan.clinician_id}), None
    wf._accept_scan(inp.scan)
    wf._say(f"{inp.scan.clinician_id} identified. Next: scan the patient's wristband.")
    return State.IDLE


def _gather(wf: Workflow, inp: ScanInput) -> State:
    c, scan = wf._ctx, inp.scan
    old: Scan | None = None
    if isinstance(scan, PumpScan) and scan.channel is None:
        wf._reject_scan(
            scan.raw, f"this label names pump {scan.pump_id} but no channel; scan the channel's label"
        )
        return wf.state
    if isinstance(scan, LabelScan) and c.patient and scan.patient_id not in (None, c.patient.patient_id):
        wf._reject_scan(scan.raw, "the label is for another patient")
        return wf._block(
            f"the pharmacy label is for patient {scan.patient_id}, the wristband is patient "
            f"{c.patient.patient_id} (code {PivError.PATIENT_MISMATCH})"
        )
    if isinstance(scan, ClinicianScan):
        old, c.clinician, c.identified = c.clinician, scan, {scan.clinician_id}
    elif isinstance(scan, MedicationScan):
        old, c.medication = c.medication, scan
    elif isinstance(scan, LabelScan):
        old, c.label = c.label, scan
    elif isinstance(scan, PumpScan):
        old, c.pump = c.pump, scan
    wf._accept_scan(scan)
    what = _KIND_WORDS[type(scan)]
    replaced = old is not None and old != scan
    return wf._advance(
        f"{what.capitalize()} scanned" + (f": it replaces the {what} scanned before. " if replaced else ". ")
    )


def _add_clinician(wf: Workflow, inp: ScanInput) -> State:
    assert isinstance(inp.scan, ClinicianScan)
    wf._ctx.identified.add(inp.scan.clinician_id)
    wf._accept_scan(inp.scan)
    wf._say(f"{inp.scan.clinician_id} identified. Next: {wf._expected()}.")
    return wf.state


def _frozen(wf: Workflow, inp: ScanInput) -> State:
    c, scan = wf._ctx, inp.scan
    if scan == {MedicationScan: c.medication, LabelScan: c.label, PumpScan: c.pump}.get(type(scan)):
        wf._accept_scan(scan)
        wf._say(f"Already scanned: nothing changes. Next: {wf._expected()}.")
    else:
        order = c.admin.order.order_id if c.admin else ""
        wf._reject_scan(
            scan.raw,
            f"order {order} is already matched with what was scanned before; to change "
            f"the {_KIND_WORDS[type(scan)]}, cancel and start again",
        )
    return wf.state


def _wristband_first(wf: Workflow, inp: ScanInput) -> State:
    wf._reject_scan(inp.scan.raw, "the patient's wristband must be scanned first")
    return wf.state


def _scan_error(wf: Workflow, inp: ScanError) -> State:
    wf._reject_scan(inp.raw, inp.reason)
    return wf.state


def _orders_found(wf: Workflow, inp: OrdersFound) -> State:
    c = wf._ctx
    if inp.request != wf._orders_request or c.patient is None:
        return wf.state
    wf._orders_request = None
    pid, usable, refused = c.patient.patient_id, [], list(inp.refused)
    for o in inp.orders:
        problem = _unusable(o, pid)
        if problem is None:
            usable.append(o)
        else:
            refused.append(OrderRefused(o.order_id, [problem]))
    c.orders, c.refused = tuple(usable), tuple(refused)
    if not usable:
        why = "; ".join(str(r) for r in refused)
        return wf._block(f"no active infusion order for patient {pid}" + (f" ({why})" if why else ""))
    return wf._advance(f"{len(usable)} active order(s) for patient {pid}. ")


def _unusable(o: Order, pid: str) -> OrderProblem | None:
    """Why an order the source sent for this patient is not one to match (the source should have
    refused it already; the workflow does not rely on that)."""
    if o.patient_id != pid:
        why = f"the order is for patient {o.patient_id}, the wristband is {pid}"
        return OrderProblem(PivError.PATIENT_MISMATCH, "patient", why)
    if o.status != "active":
        return OrderProblem(HL7_APPLICATION_ERROR, "status", f"the order is {o.status!r}, not active")
    if o.action is not OrderAction.NEW:
        why = f"a {o.action.value} of a running infusion is not programmed from the bedside"
        return OrderProblem(HL7_APPLICATION_ERROR, "action", why)
    return None


def _orders_unavailable(wf: Workflow, inp: OrdersUnavailable) -> State:
    if inp.request != wf._orders_request:
        return wf.state
    return wf._block(f"the patient's orders could not be fetched ({inp.reason})")


def _reconciled(wf: Workflow, inp: ReconcileDone) -> State:
    if inp.request != wf._pending:
        return wf.state
    wf._pending = None
    if not inp.ok:
        return wf._block(f"order, container and pump do not match: {inp.summary}")
    return wf._check_ders("Order, container and pump match. ")


def _ders_done(wf: Workflow, inp: DersDone) -> State:
    c = wf._ctx
    if inp.request != wf._pending:
        return wf.state
    wf._pending, c.verdict = None, inp.verdict
    if inp.result is not None and inp.result.verdict is not inp.verdict:
        return wf._block(f"the drug library check is inconsistent ({inp.result.verdict} vs {inp.verdict})")
    if inp.verdict is Verdict.PASS:
        if inp.result is None:
            return wf._block("the drug library check passed but gave no result to program from")
        return wf._program(inp.result)
    if inp.verdict is Verdict.BLOCKED:
        return wf._block(f"the drug library check stops this programme: {inp.summary}")
    if inp.verdict is Verdict.OVERRIDE_REQUIRED:
        if not inp.soft_params:
            return wf._block("the drug library check asks for an override but names no parameter")
        c.soft_params = inp.soft_params
        for p in inp.soft_params:  # asked again: an earlier override of it was not accepted
            c.overrides.pop(p, None)
        wf._say(
            f"{inp.summary}. Soft limit crossed for {', '.join(inp.soft_params)}. To go on, a clinician "
            "scans their badge and overrides each with a reason; or cancel and reprogram."
        )
        return State.LIBRARY_CHECKED
    if c.concentration_confirmed:
        return wf._block("the drug library check asks again for the concentration already confirmed")
    wf._say(f"{inp.summary}. Confirm the concentration on the container, or cancel.")
    return State.LIBRARY_CHECKED


def _unidentified(wf: Workflow, who: str) -> bool:
    if who in wf._ctx.identified:
        return False
    wf._say(f"{who} has not scanned a badge in this administration: scan it first.")
    return True


def _override(wf: Workflow, inp: OverrideGiven) -> State:
    c = wf._ctx
    if c.verdict is not Verdict.OVERRIDE_REQUIRED or inp.parameter not in c.soft_params:
        wf._say(f"No override is asked for {inp.parameter!r}. Next: {wf._expected()}.")
    elif _unidentified(wf, inp.clinician):
        pass
    elif not inp.reason.strip():
        wf._say(f"The override of {inp.parameter} needs a reason.")
    else:
        c.overrides[inp.parameter] = Override(inp.parameter, inp.clinician, inp.reason.strip())
        if all(p in c.overrides for p in c.soft_params):
            return wf._check_ders(f"Overrides recorded for {', '.join(c.soft_params)}. ")
        wf._say(f"Override of {inp.parameter} recorded. Next: {wf._expected()}.")
    return wf.state


def _confirm_concentration(wf: Workflow, inp: Confirm) -> State:
    c = wf._ctx
    if c.verdict is not Verdict.CONFIRMATION_REQUIRED:
        wf._say(f"Nothing to confirm yet. Next: {wf._expected()}.")
    elif not _unidentified(wf, inp.by):
        c.concentration_confirmed = True
        wf._emit(WorkflowEvent.CONFIRMED, {"what": "concentration", "by": inp.by})
        return wf._check_ders(f"Concentration confirmed by {inp.by}. ")
    return wf.state


def _program_sent(wf: Workflow, inp: ProgramSent) -> State:
    program = wf._ctx.program
    if inp.request != wf._pending or program is None:
        return wf.state
    if not inp.ok:
        return wf._block(f"the pump did not accept the programme ({inp.error or 'no reason given'})")
    wf._pending = wf._request()
    wf._out.append(ReadBack(wf._pending, program))
    wf._say("Programme sent: reading it back from the pump to verify it. Do not start yet.")
    return State.READ_BACK


def _read_back(wf: Workflow, inp: ReadBackDone) -> State:
    if inp.request != wf._pending:
        return wf.state
    wf._pending = None
    if not inp.matches:
        diffs = "; ".join(inp.differences) or "the pump did not say which"
        wf._alarm(f"read-back mismatch on {wf._pump_words()}: {diffs}")
        return wf._block(f"the pump holds something other than what was sent ({diffs}): do not start it")
    wf._state = State.AWAITING_START_CONFIRMATION  # so that _expected() speaks of it
    wf._say(f"The pump holds exactly the programme sent. Next: {wf._expected()}.")
    return wf._state


def _confirm_start(wf: Workflow, inp: Confirm) -> State:
    if not _unidentified(wf, inp.by):
        wf._emit(WorkflowEvent.CONFIRMED, {"what": "start", "by": inp.by})
        wf._say(f"Confirmed by {inp.by}: press start on {wf._pump_words()}.")
    return wf.state


def _pump_started(wf: Workflow, inp: PumpStarted) -> State:
    if not wf._ours(inp.pump, inp.channel):
        wf._say(
            f"Pump {inp.pump} channel {inp.channel} started; this administration is on {wf._pump_words()}."
        )
        return wf.state
    order = wf._ctx.admin.order if wf._ctx.admin else None
    wf._emit(WorkflowEvent.INFUSING, {"order_id": order.order_id if order else None})
    wf._say(f"Infusing on {wf._pump_words()}: {order.drug if order else ''}. Done.")
    return State.INFUSING


def _started_unverified(wf: Workflow, inp: PumpStarted) -> State:
    if not wf._ours(inp.pump, inp.channel):
        return wf.state
    wf._alarm(f"{wf._pump_words()} was started before its programme was read back and verified")
    return wf._block("the pump was started before the gateway verified its programme: check the pump now")


def _cancel(wf: Workflow, inp: Cancel) -> State:
    wf._emit(WorkflowEvent.CANCELLED, {"state": wf.state.value, "by": inp.by})
    wf._pending = wf._orders_request = None
    wf._reason = f"cancelled by {inp.by}"
    wf._say(f"Cancelled by {inp.by}.{wf._left_on_pump()} Scan a wristband to start again.")
    return State.CANCELLED


def _clear(wf: Workflow, inp: Cancel) -> State:
    had = wf._ctx.clinician is not None or wf.state is not State.IDLE
    wf._ctx, wf._reason = _Context(), None
    wf._say("Cleared. Next: scan the patient's wristband." if had else "Nothing to cancel.")
    return State.IDLE


def _tick(wf: Workflow, inp: Tick) -> State:
    wf._now = inp.now
    if wf._since is None or inp.now < wf._since:
        wf._since = inp.now
        return wf.state
    limit = wf.policy.timeouts[wf.state]
    if inp.now - wf._since < limit or (wf.state is State.IDLE and wf._ctx.clinician is None):
        return wf.state
    if wf.state in ENDED:
        wf._say(f"Screen cleared after {_minutes(limit)}. Next: scan the patient's wristband.")
    else:
        wf._emit(
            WorkflowEvent.TIMED_OUT, {"state": wf.state.value, "after_s": str(int(limit.total_seconds()))}
        )
        what = "badge scanned" if wf.state is State.IDLE else "administration"
        wf._say(
            f"Timed out: nothing happened for {_minutes(limit)} (expected: {wf._expected()}). The {what} "
            f"was dropped.{wf._left_on_pump()} Scan the wristband to start again."
        )
    wf._ctx, wf._pending, wf._orders_request, wf._reason = _Context(), None, None, None
    return State.IDLE


def _drop_pump(wf: Workflow, inp: PumpNotReady) -> State:
    if inp.pump is None:
        return wf._block(f"auto-programming is not possible now ({inp.reason})")
    if not wf._ours(inp.pump):
        return wf.state
    words, wf._ctx.pump = wf._pump_words(), None
    wf._say(
        f"{words.capitalize()} cannot be auto-programmed: {inp.reason}. Scan a channel of another pump, "
        "or cancel and program by hand."
    )
    return wf._scanning_state()


def _not_ready(wf: Workflow, inp: PumpNotReady) -> State:
    if inp.pump is not None and not wf._ours(inp.pump):
        return wf.state
    if wf.state in ON_PUMP:
        wf._alarm(f"{wf._pump_words()} not ready after programming: {inp.reason}")
    return wf._block(f"{wf._pump_words()} cannot be auto-programmed now ({inp.reason})")


def _not_now(wf: Workflow, inp: OverrideGiven | Confirm) -> State:
    what = "an override" if isinstance(inp, OverrideGiven) else "a confirmation"
    wf._say(f"Nothing asks for {what} now. Next: {wf._expected()}.")
    return wf.state


def _ignore(wf: Workflow, inp: Input) -> State:
    return wf.state


# -- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """What an input does in a state: its handler, where it may lead (besides staying), in words."""

    handler: Callable[[Workflow, Any], State]
    goes_to: frozenset[State]
    says: str


def _row(
    states: tuple[State, ...],
    kinds: tuple[InputKind, ...],
    handler: Callable[[Workflow, Any], State],
    goes_to: tuple[State, ...],
    says: str,
) -> tuple[tuple[State, ...], tuple[InputKind, ...], Rule]:
    return states, kinds, Rule(handler, frozenset(goes_to), says)


K, S = InputKind, State
_WAITING: Final = (S.IDLE, *ENDED)  # waiting for a wristband
_CONTAINER_OR_PUMP: Final = (K.MEDICATION_SCAN, K.LABEL_SCAN, K.PUMP_SCAN)
_RESULTS: Final = (
    K.ORDERS_FOUND,
    K.ORDERS_UNAVAILABLE,
    K.RECONCILE_DONE,
    K.DERS_DONE,
    K.PROGRAM_SENT,
    K.READ_BACK_DONE,
)
_IGNORED: Final = "ignored: not awaited here (a stale or duplicate answer, another pump)"

# The table. A row applies its rule to every (state, input) pair it names that no earlier row named,
# so the last rows are the defaults. "leads to" lists where the rule may go besides staying put.
# fmt: off
_SPEC: Final = (
    _row(ANY, (K.PATIENT_SCAN,), _new_sequence, (S.PATIENT, S.CLINICIAN),
         "new sequence: drop all but the badge; FetchOrders"),
    _row(_WAITING, (K.CLINICIAN_SCAN,), _hold_badge, (S.IDLE,), "hold the badge until a wristband"),
    _row(SCANNING, (K.CLINICIAN_SCAN, *_CONTAINER_OR_PUMP), _gather, (*SCANNING, S.ORDER_MATCHED, S.BLOCKED),
         "keep it (a rescan replaces); match the order once all is known; Reconcile"),
    _row(MATCHED + ON_PUMP, (K.CLINICIAN_SCAN,), _add_clinician, (),
         "add an identified clinician (who may override or confirm)"),
    _row(_WAITING, _CONTAINER_OR_PUMP, _wristband_first, (), "refused: the wristband comes first"),
    _row(MATCHED + ON_PUMP, _CONTAINER_OR_PUMP, _frozen, (), "refused unless the same: frozen once matched"),
    _row(ANY, (K.SCAN_ERROR,), _scan_error, (), "scan.rejected; prompt what was scanned and what is next"),
    _row(SCANNING, (K.ORDERS_FOUND,), _orders_found, (*SCANNING, S.ORDER_MATCHED, S.BLOCKED),
         "keep the patient's active new orders; none: block; match if all is known"),
    _row(SCANNING, (K.ORDERS_UNAVAILABLE,), _orders_unavailable, (S.BLOCKED,), "block: no orders to match"),
    _row((S.ORDER_MATCHED,), (K.RECONCILE_DONE,), _reconciled, (S.RECONCILED, S.BLOCKED),
         "ok: CheckDers; mismatch: block"),
    _row((S.RECONCILED,), (K.DERS_DONE,), _ders_done, (S.PROGRAMMED, S.LIBRARY_CHECKED, S.BLOCKED),
         "pass: order age checked again, Program; override or confirmation: ask; blocked: block"),
    _row((S.LIBRARY_CHECKED,), (K.OVERRIDE_GIVEN,), _override, (S.RECONCILED,),
         "kept if by an identified clinician with a reason; all given: CheckDers again"),
    _row((S.LIBRARY_CHECKED,), (K.CONFIRM,), _confirm_concentration, (S.RECONCILED,),
         "by an identified clinician: concentration confirmed, CheckDers again"),
    _row((S.PROGRAMMED,), (K.PROGRAM_SENT,), _program_sent, (S.READ_BACK, S.BLOCKED),
         "ok: ReadBack; failed: block"),
    _row((S.READ_BACK,), (K.READ_BACK_DONE,), _read_back, (S.AWAITING_START_CONFIRMATION, S.BLOCKED),
         "match: the nurse starts it on the pump; mismatch: Alarm and block"),
    _row((S.AWAITING_START_CONFIRMATION,), (K.CONFIRM,), _confirm_start, (),
         "by an identified clinician: recorded (the start is on the pump)"),
    _row((S.AWAITING_START_CONFIRMATION,), (K.PUMP_STARTED,), _pump_started, (S.INFUSING,),
         "our channel: infusing"),
    _row((S.PROGRAMMED, S.READ_BACK), (K.PUMP_STARTED,), _started_unverified, (S.BLOCKED,),
         "our channel, started before the read-back: Alarm and block"),
    _row(ACTIVE, (K.CANCEL,), _cancel, (S.CANCELLED,), "cancel (the gateway never stops a pump)"),
    _row(_WAITING, (K.CANCEL,), _clear, (S.IDLE,), "clear (drop a held badge)"),
    _row(ANY, (K.TICK,), _tick, (S.IDLE,), "timed out: drop everything; prompt why"),
    _row(SCANNING, (K.PUMP_NOT_READY,), _drop_pump, (*SCANNING, S.BLOCKED),
         "the scanned pump: drop it, ask for another; every pump: block"),
    _row(MATCHED + ON_PUMP, (K.PUMP_NOT_READY,), _not_ready, (S.BLOCKED,),
         "our pump or every pump: block (and Alarm once programmed)"),
    _row(ANY, (K.OVERRIDE_GIVEN, K.CONFIRM), _not_now, (), "prompt: nothing asks for it now"),
    _row(ANY, (*_RESULTS, K.PUMP_STARTED, K.PUMP_NOT_READY), _ignore, (), _IGNORED),
)
_AI: Final = {"gsrn": "8018", "srin": "8019", "clinician_id": "8017", "gtin": "01", "expiry": "17",
              "lot": "10", "serial": "21", "giai": "8004"}  # scan field -> GS1 AI, for scan.accepted
# fmt: on


def _build() -> dict[tuple[State, InputKind], Rule]:
    """First match wins (later rows of _SPEC are defaults); every (state, input) pair gets a rule."""
    table: dict[tuple[State, InputKind], Rule] = {}
    for states, kinds, rule in _SPEC:
        for s in states:
            for k in kinds:
                table.setdefault((s, k), rule)
    missing = [(s.value, k.value) for s in State for k in InputKind if (s, k) not in table]
    if missing:
        raise AssertionError(f"workflow table has no rule for {missing}")
    return table


TRANSITIONS: Final[Mapping[tuple[State, InputKind], Rule]] = _build()


def render_table() -> str:
    """The states and the transition table as markdown (docs/workflow.md is generated from this)."""
    lines = ["| state | meaning |", "| --- | --- |", *(f"| `{s.value}` | {MEANING[s]} |" for s in State)]
    lines += ["", "| input | in states | does | leads to |", "| --- | --- | --- | --- |"]
    rules = {id(rule): (rule, declared) for declared, _, rule in _SPEC}
    rows: dict[tuple[int, tuple[State, ...]], list[InputKind]] = {}
    for kind in InputKind:
        by_rule: dict[int, list[State]] = {}
        for state in State:
            by_rule.setdefault(id(TRANSITIONS[(state, kind)]), []).append(state)
        for rid, states in by_rule.items():
            rows.setdefault((rid, tuple(states)), []).append(kind)
    kinds_order = list(InputKind)
    for (rid, where), kinds in sorted(
        rows.items(), key=lambda row: (kinds_order.index(row[1][0]), rules[row[0][0]][1] == ANY)
    ):
        rule, declared = rules[rid]
        shown = (
            "any" if where == ANY else "any other" if declared == ANY else ", ".join(f"`{s}`" for s in where)
        )
        to = ", ".join(f"`{s.value}`" for s in State if s in rule.goes_to)
        what = ", ".join(k.value for k in kinds)
        lines.append(f"| {what} | {shown} | {rule.says} | {to + ' or stays' if to else 'stays'} |")
    return "\n".join(lines) + "\n"


# -- small pure helpers ----------------------------------------------------------------------------

_KIND_WORDS: Final[Mapping[type, str]] = {
    ClinicianScan: "badge",
    MedicationScan: "medication",
    LabelScan: "pharmacy label",
    PumpScan: "pump channel",
}


def _scan_data(scan: Scan) -> dict[str, str]:
    """The ``scan.accepted`` data: GS1 AI (or field name) to value, for the fields the scan has."""
    data: dict[str, str] = {}
    for f in fields(scan):
        value = getattr(scan, f.name)
        if f.name not in ("raw", "kind") and value is not None:
            data[_AI.get(f.name, f.name)] = value.isoformat() if isinstance(value, date) else str(value)
    return data


def _other_gtin(order: Order, gtin: str) -> bool:
    system = (order.drug.system or "").lower()
    return system in _GTIN_SYSTEMS and order.drug.code.zfill(14) != gtin


def _printable(raw: str) -> str:
    return raw.encode("unicode_escape").decode("ascii")


def _minutes(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"
