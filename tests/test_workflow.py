"""The bedside workflow state machine (gateway/workflow.py): the happy path, every refusal, the rules
as properties over random input sequences (hypothesis stateful testing), and the rendered table.

Scans are what gateway/scan.py makes of the test vectors of ``shared/reference/barcodes.md`` §5: W1
(wristband), S1 (badge), M1 (drug pack), A1 (pump asset), E1 (linear EAN), N1 (GS dropped). W2 and
S2 are GSRNs whose check digit was computed here with the GS1 mod-10 rule of §4 ([computed]).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pumpgw.gateway.ders import Check, Code, DersResult, Outcome, Verdict
from pumpgw.gateway.events import EventType, payload_problem
from pumpgw.gateway.orders import (
    Drug,
    Order,
    OrderAction,
    OrderPolicy,
    OrderProblem,
    OrderRefused,
    OrderSource,
    PivError,
)
from pumpgw.gateway.quantity import Quantity
from pumpgw.gateway.scan_types import ClinicianScan, LabelScan, MedicationScan, PatientScan, PumpScan, Scan
from pumpgw.gateway.workflow import (
    ACTIVE,
    ANY,
    ENDED,
    MATCHED,
    ON_PUMP,
    SCANNING,
    TRANSITIONS,
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
    InputKind,
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
    WorkflowEvent,
    WorkflowPolicy,
    kind_of,
    render_table,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
W1 = PatientScan("]d28018123456789012345675\x1d8019123", "123456789012345675", "123456789012345675", "123")
W2 = PatientScan("]d28018952123450000000012", "952123450000000012", "952123450000000012")
S1 = ClinicianScan("]d28017795260646688514634", "795260646688514634")
S2 = ClinicianScan("]d28017952123450000000029", "952123450000000029")
M1 = MedicationScan(
    "]d201095212345432131727123110ABC123\x1d21SN0001",
    "09521234543213",
    date(2027, 12, 31),
    "ABC123",
    "SN0001",
)
M2 = MedicationScan("]E00311112222335", "00311112222335")  # E1: a linear NDC pack, no expiry
A1 = PumpScan("]C180049520614141234567", "pump-1", 1, "9520614141234567")
A1_CH2 = PumpScan("]C180049520614141234568", "pump-1", 2, "9520614141234568")
A2 = PumpScan("]C180049520614141239999", "pump-2", 1, "9520614141239999")
A_NO_CHANNEL = PumpScan("]C18004952061414123", "pump-1", None, "952061414123")
L1 = LabelScan("]d28018123456789012345675\x1d80191001", order_id="1001", patient_id=W1.patient_id)
L2 = LabelScan("]d28018123456789012345675\x1d80191002", order_id="1002", patient_id=W1.patient_id)
L_OTHER = LabelScan("]d28018952123450000000012\x1d80192001", order_id="2001", patient_id=W2.patient_id)
L_DISPENSE = LabelScan("]d29412345", dispense_id="12345")
N1_RAW = "010952123454321317271231" + "10ABC12321SN0001"  # N1: the GS was dropped


def order(order_id: str = "1001", *, patient: str = W1.patient_id, at: datetime | None = None,
          code: str = M1.gtin, system: str = "gtin", **changes: Any) -> Order:  # fmt: skip
    return Order(
        order_id,
        OrderSource.HL7,
        patient,
        Drug(code, system, "fentanyl 50 microgram/mL"),
        ordered_at=at or T0 - timedelta(minutes=2),
        rate=Quantity.of("2", "mL/h"),
        **changes,
    )


def ders_result(*checks: Check) -> DersResult:
    return DersResult("sha256:" + "0" * 64, 3, "icu-adult", "fentanyl-50", "fentanyl", checks, None)


def result_for(verdict: Verdict, soft: tuple[str, ...]) -> DersResult:
    """A DERS result whose checks give ``verdict`` (one soft check per parameter in ``soft``)."""
    outcome = {Verdict.BLOCKED: Outcome.HARD_HIGH, Verdict.CONFIRMATION_REQUIRED: Outcome.CONFIRM}.get(
        verdict
    )
    checks = [Check(p, Outcome.SOFT_HIGH, Code.SOFT_HIGH, "above") for p in soft]
    checks += [Check("concentration", outcome, Code.WITHIN, "checked")] if outcome else []
    result = ders_result(*checks)
    assert result.verdict is verdict
    return result


def passed(request: int) -> DersDone:
    return DersDone(request, Verdict.PASS, "every parameter within limits", result=ders_result())


E = TypeVar("E")


def one(effects: list[Effect], kind: type[E]) -> E:
    found = [e for e in effects if isinstance(e, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} in {effects}"
    return found[0]


def said(effects: list[Effect]) -> str:
    return " | ".join(e.message for e in effects if isinstance(e, Prompt))


def emitted(effects: list[Effect], type: EventType | WorkflowEvent) -> list[Emit]:
    return [e for e in effects if isinstance(e, Emit) and e.type == type]


class Bedside:
    """Drives a Workflow the way the async layer does, keeping every effect."""

    def __init__(self, policy: WorkflowPolicy | None = None, now: datetime = T0) -> None:
        self.wf = Workflow(policy)
        self.now = now
        self.effects: list[Effect] = []
        self(Tick(now))

    def __call__(self, *inputs: Input | Scan) -> list[Effect]:
        out: list[Effect] = []
        for inp in inputs:
            out += self.wf.step(ScanInput(inp) if isinstance(inp, Scan) else inp)
        self.effects += out
        return out

    def state(self) -> State:
        return self.wf.state  # a call: mypy does not narrow it across steps

    def last(self, kind: type[E]) -> E:
        return next(e for e in reversed(self.effects) if isinstance(e, kind))

    def tick(self, delta: timedelta) -> list[Effect]:
        self.now += delta
        return self(Tick(self.now))

    def scanned(self, *orders: Order) -> list[Effect]:
        """Wristband, orders found, badge, pack, pump: up to the order match."""
        self(W1)
        self(OrdersFound(self.last(FetchOrders).request, orders or (order(),)))
        return self(S1, M1, A1)

    def to_library_check(self) -> None:
        self.scanned()
        self(ReconcileDone(self.last(Reconcile).request, True, "every check matches"))

    def to_start(self) -> None:
        self.to_library_check()
        self(passed(self.last(CheckDers).request))
        self(ProgramSent(self.last(Program).request, True))
        self(ReadBackDone(self.last(ReadBack).request, True))


# -- the happy path --------------------------------------------------------------------------------


def test_happy_path_from_wristband_to_infusing() -> None:
    """W1, S1, M1, A1 in the ward's usual order; every request answered well; the nurse starts."""
    b = Bedside()
    out = b(W1)
    assert b.state() is State.PATIENT
    assert one(out, FetchOrders).patient_id == W1.patient_id
    b(OrdersFound(b.last(FetchOrders).request, (order(),)))
    assert [b(s) and b.state() for s in (S1, M1)] == [State.CLINICIAN, State.MEDICATION]
    out = b(A1)
    assert b.state() is State.ORDER_MATCHED
    admin = one(out, Reconcile).admin
    assert admin == Administration(order(), W1, S1.clinician_id, M1, None, "pump-1", 1)
    assert emitted(out, WorkflowEvent.ORDER_SELECTED)[0].payload["how"] == "only order"
    out = b(ReconcileDone(one(out, Reconcile).request, True, "every check matches"))
    assert (b.state(), one(out, CheckDers).admin) == (State.RECONCILED, admin)
    result = ders_result()
    out = b(DersDone(one(out, CheckDers).request, Verdict.PASS, "within limits", result=result))
    program = one(out, Program)
    assert (b.state(), program.admin, program.ders, program.overrides) == (
        State.PROGRAMMED,
        admin,
        result,
        (),
    )
    out = b(ProgramSent(program.request, True))
    assert (b.state(), one(out, ReadBack).sent) == (State.READ_BACK, program)
    out = b(ReadBackDone(one(out, ReadBack).request, True))
    assert b.state() is State.AWAITING_START_CONFIRMATION
    assert "press start on pump pump-1 channel 1" in said(out)
    out = b(Confirm(S1.clinician_id))
    assert emitted(out, WorkflowEvent.CONFIRMED)[0].payload == {"what": "start", "by": S1.clinician_id}
    assert b.state() is State.AWAITING_START_CONFIRMATION
    out = b(PumpStarted("pump-1", 1))
    assert b.state() is State.INFUSING
    assert emitted(out, WorkflowEvent.INFUSING)[0].refs.order == "1001"
    accepted = emitted(b.effects, EventType.SCAN_ACCEPTED)
    assert [e.payload["kind"] for e in accepted] == ["patient", "clinician", "medication", "pump"]
    assert accepted[0].payload["data"] == {"patient_id": W1.patient_id, "8018": W1.gsrn, "8019": "123"}
    assert accepted[2].payload["data"] == {"01": M1.gtin, "17": "2027-12-31", "10": "ABC123", "21": "SN0001"}
    for e in b.effects:
        if isinstance(e, Emit):  # workflow.* too: gateway/events.py has their models
            assert payload_problem(EventType(e.type.value), e.payload) is None


@pytest.mark.parametrize(
    "scans",
    [(S1, W1, A1, M1), (W1, A1, M1, S1), (W1, M1, S1, A1), (S1, W1, L1, A1), (W1, A1, S1, L1)],
    ids=["badge-first-pump-first", "badge-last", "badge-between", "label", "label-last"],
)
def test_scans_in_any_order_the_ward_allows(scans: tuple[Scan, ...]) -> None:
    b = Bedside()
    for scan in scans:
        b(scan)
        if scan is W1:
            b(OrdersFound(b.last(FetchOrders).request, (order(),)))
    assert b.state() is State.ORDER_MATCHED
    admin = b.last(Reconcile).admin
    assert (admin.order.order_id, admin.clinician, admin.pump, admin.channel) == (
        "1001",
        S1.clinician_id,
        "pump-1",
        1,
    )


def test_orders_arriving_last_still_match() -> None:
    b = Bedside()
    b(W1, S1, M1, A1)
    assert b.state() is State.PUMP_CHANNEL
    assert b.wf.describe()["next"] == "wait: the patient's orders are being fetched"
    b(OrdersFound(b.last(FetchOrders).request, (order(),)))
    assert b.state() is State.ORDER_MATCHED


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan", [M1, L1, A1])
def test_nothing_but_a_badge_before_the_wristband(scan: Scan) -> None:
    b = Bedside()
    out = b(scan)
    assert b.state() is State.IDLE
    rejected = emitted(out, EventType.SCAN_REJECTED)[0].payload
    assert rejected["expected"] == "scan the patient's wristband"
    assert payload_problem(EventType.SCAN_REJECTED, rejected) is None
    assert "wristband must be scanned first" in said(out)


def test_a_new_wristband_aborts_the_sequence_and_drops_what_was_held() -> None:
    b = Bedside()
    b.to_library_check()
    old_ders = b.last(CheckDers)
    out = b(W2)
    assert b.state() is State.CLINICIAN  # the badge is kept
    assert emitted(out, WorkflowEvent.ABORTED)[0].payload["state"] == "reconciled"
    assert one(out, FetchOrders).patient_id == W2.patient_id
    d = b.wf.describe()
    assert (d["patient"], d["clinician"], d["medication"], d["pump"], d["order"]) == (
        W2.patient_id, S1.clinician_id, None, None, None
    )  # fmt: skip
    assert b(DersDone(old_ders.request, Verdict.PASS, "late answer of the old sequence")) == []
    assert b.state() is State.CLINICIAN


def test_a_new_wristband_after_programming_says_the_pump_holds_a_programme() -> None:
    b = Bedside()
    b.to_start()
    out = b(W1)
    assert b.state() is State.CLINICIAN
    assert "Pump pump-1 channel 1 may hold the programme, not started" in said(out)
    assert b(PumpStarted("pump-1", 1)) == []  # the old sequence cannot reach infusing any more


def test_a_rescan_before_the_match_replaces_the_previous_value() -> None:
    b = Bedside()
    b(W1, S1, M2)
    out = b(M1)
    assert "Medication scanned: it replaces the medication scanned before." in said(out)
    b(A1_CH2, A1)
    b(OrdersFound(b.last(FetchOrders).request, (order(),)))
    admin = b.last(Reconcile).admin
    assert (admin.medication, admin.channel) == (M1, 1)


def test_after_the_match_the_scans_are_frozen() -> None:
    b = Bedside()
    b.scanned()
    out = b(A2)
    assert b.wf.describe()["pump"] == "pump-1"
    assert "cancel and start again" in emitted(out, EventType.SCAN_REJECTED)[0].payload["reason"]
    b(M2, L2)
    assert (b.wf.describe()["medication"], b.wf.describe()["label"]) == (M1.gtin, None)
    out = b(M1)
    assert "Already scanned" in said(out)
    assert emitted(out, EventType.SCAN_ACCEPTED)
    assert b.state() is State.ORDER_MATCHED


def test_no_active_order_blocks_and_says_why_the_others_were_refused() -> None:
    """An order refused at intake (stale, 9022) is named; there is nothing to match."""
    b = Bedside()
    b(W1)
    stale = OrderRefused("1001", [OrderProblem(PivError.STALE, "ordered_at", "made 40 min ago")])
    out = b(OrdersFound(b.last(FetchOrders).request, (), (stale,)))
    assert b.state() is State.BLOCKED
    assert "no active infusion order for patient" in said(out)
    assert "9022" in (b.wf.describe()["reason"] or "")


def test_an_order_of_another_patient_is_never_matched() -> None:
    b = Bedside()
    b(W1)
    out = b(OrdersFound(b.last(FetchOrders).request, (order(patient=W2.patient_id),)))
    assert b.state() is State.BLOCKED
    assert f"code {PivError.PATIENT_MISMATCH}" in said(out)
    assert emitted(out, WorkflowEvent.BLOCKED)


@pytest.mark.parametrize(
    "bad",
    [order(status="discontinued"), order(action=OrderAction.CHANGE), order(patient=W2.patient_id)],
    ids=["inactive", "change-of-running", "other-patient"],
)
def test_unusable_orders_are_dropped_beside_a_usable_one(bad: Order) -> None:
    b = Bedside()
    b.scanned(replace(bad, order_id="0999"), order())
    assert b.state() is State.ORDER_MATCHED
    assert b.last(Reconcile).admin.order.order_id == "1001"


def test_a_label_for_another_patient_blocks() -> None:
    b = Bedside()
    b(W1, S1)
    out = b(L_OTHER)
    assert b.state() is State.BLOCKED
    assert "for patient 952123450000000012, the wristband is patient 123456789012345675" in said(out)
    assert emitted(out, EventType.SCAN_REJECTED)


def test_a_label_for_a_refused_order_blocks_with_that_reason() -> None:
    b = Bedside()
    b(W1, S1, L1, A1)
    stale = OrderRefused("1001", [OrderProblem(PivError.STALE, "ordered_at", "made 40 min ago")])
    b(OrdersFound(b.last(FetchOrders).request, (order("1003"),), (stale,)))
    assert b.state() is State.BLOCKED
    assert "made 40 min ago (code 9022)" in (b.wf.describe()["reason"] or "")


def test_a_pack_no_order_is_for_blocks() -> None:
    b = Bedside()
    out = b.scanned(order(code="00311112222335"))
    assert b.state() is State.BLOCKED
    assert "is for this medication (GTIN 09521234543213)" in said(out)


def test_several_orders_that_fit_are_never_guessed_between() -> None:
    """Two orders whose drug code is not a GTIN: the pack cannot tell them apart; the label can."""
    b = Bedside()
    snomed = {"system": "http://snomed.info/sct", "code": "764003004"}
    out = b.scanned(order("1001", **snomed), order("1002", **snomed))  # type: ignore[arg-type]
    assert b.state() is State.PUMP_CHANNEL
    assert not [e for e in b.effects if isinstance(e, Reconcile)]
    assert "2 orders fit" in said(out)
    assert "will not guess" in said(out)
    assert b.wf.describe()["next"] == "scan the pharmacy label, to choose between the orders that fit"
    b(L2)
    assert b.state() is State.ORDER_MATCHED
    assert b.last(Reconcile).admin.order.order_id == "1002"
    assert emitted(b.effects, WorkflowEvent.ORDER_SELECTED)[0].payload["how"] == "label"


def test_a_label_naming_only_a_dispense_matches_like_a_pack() -> None:
    b = Bedside()
    b(W1)
    b(OrdersFound(b.last(FetchOrders).request, (order(),)))
    b(S1, L_DISPENSE, A1)
    assert b.state() is State.ORDER_MATCHED
    assert b.last(Reconcile).admin.label == L_DISPENSE


def test_orders_unavailable_blocks() -> None:
    b = Bedside()
    b(W1)
    out = b(OrdersUnavailable(b.last(FetchOrders).request, "FHIR server timed out"))
    assert b.state() is State.BLOCKED
    assert "could not be fetched (FHIR server timed out)" in said(out)


def test_a_stale_order_is_refused_at_the_match() -> None:
    b = Bedside()
    out = b.scanned(order(at=T0 - timedelta(minutes=16)))
    assert b.state() is State.BLOCKED
    assert "stale (code 9022)" in said(out)


def test_an_order_gone_stale_is_refused_just_before_programming() -> None:
    """Fresh at the match, stale 14 minutes later when DERS passes: never programmed. (Timeouts are
    set long here: a slow library check, not the timeout, is the subject.)"""
    b = Bedside(WorkflowPolicy(timeouts=dict.fromkeys(State, timedelta(hours=1))))
    b.to_library_check()
    b.tick(timedelta(minutes=14))
    assert b.state() is State.RECONCILED
    out = b(passed(b.last(CheckDers).request))
    assert b.state() is State.BLOCKED
    assert not [e for e in out if isinstance(e, Program)]
    assert "stale (code 9022)" in said(out)


def test_without_the_time_nothing_is_matched() -> None:
    b = Bedside()
    b.wf = Workflow()  # no Tick yet
    out = b.scanned()
    assert b.state() is State.BLOCKED
    assert "has not been given the time" in said(out)


def test_an_expired_pack_is_refused() -> None:
    b = Bedside(now=datetime(2028, 1, 1, 9, 0, tzinfo=UTC))
    out = b.scanned(order(at=b.now - timedelta(minutes=1)))
    assert b.state() is State.BLOCKED
    assert "expired on 2027-12-31" in said(out)


def test_a_reconciliation_mismatch_blocks() -> None:
    b = Bedside()
    b.scanned()
    out = b(
        ReconcileDone(b.last(Reconcile).request, False, "concentration: 10 ug/mL on the pack, 50 ordered")
    )
    assert b.state() is State.BLOCKED
    assert "concentration: 10 ug/mL on the pack" in said(out)
    assert not [e for e in out if isinstance(e, CheckDers)]


def test_a_hard_limit_blocks() -> None:
    b = Bedside()
    b.to_library_check()
    out = b(DersDone(b.last(CheckDers).request, Verdict.BLOCKED, "rate 900 mL/h above the hard maximum"))
    assert b.state() is State.BLOCKED
    assert not [e for e in out if isinstance(e, Program)]


def test_a_pass_without_its_result_blocks() -> None:
    b = Bedside()
    b.to_library_check()
    out = b(DersDone(b.last(CheckDers).request, Verdict.PASS, "within limits"))
    assert b.state() is State.BLOCKED
    assert "gave no result to program from" in said(out)


def test_a_result_that_contradicts_its_verdict_blocks() -> None:
    b = Bedside()
    b.to_library_check()
    hard = Check("rate", Outcome.HARD_HIGH, Code.HARD_LIMIT, "above the hard maximum")
    b(DersDone(b.last(CheckDers).request, Verdict.PASS, "within limits", result=ders_result(hard)))
    assert b.state() is State.BLOCKED


def test_soft_limits_need_an_identified_clinician_and_a_reason_for_each() -> None:
    b = Bedside()
    b.to_library_check()
    b(DersDone(b.last(CheckDers).request, Verdict.OVERRIDE_REQUIRED, "above soft maxima", ("rate", "vtbi")))
    assert b.state() is State.LIBRARY_CHECKED
    assert "overrides rate, vtbi" in (b.wf.describe()["next"] or "")
    out = b(OverrideGiven("rate", S2.clinician_id, "post-op pain"))
    assert "has not scanned a badge" in said(out)
    out = b(OverrideGiven("rate", S1.clinician_id, "  "))
    assert "needs a reason" in said(out)
    out = b(OverrideGiven("dose", S1.clinician_id, "x"))
    assert "No override is asked for 'dose'" in said(out)
    b(OverrideGiven("rate", S1.clinician_id, "post-op pain"), S2)  # the doctor scans a badge
    assert b.state() is State.LIBRARY_CHECKED
    out = b(OverrideGiven("vtbi", S2.clinician_id, "longer run"))
    assert b.state() is State.RECONCILED
    check = one(out, CheckDers)
    assert {(o.parameter, o.clinician, o.reason) for o in check.overrides} == {
        ("rate", S1.clinician_id, "post-op pain"), ("vtbi", S2.clinician_id, "longer run")
    }  # fmt: skip
    out = b(passed(check.request))
    assert one(out, Program).overrides == check.overrides


def test_an_override_the_library_refused_is_asked_again() -> None:
    b = Bedside()
    b.to_library_check()
    b(DersDone(b.last(CheckDers).request, Verdict.OVERRIDE_REQUIRED, "soft", ("rate",)))
    b(OverrideGiven("rate", S1.clinician_id, "not in the library's list"))
    out = b(DersDone(b.last(CheckDers).request, Verdict.OVERRIDE_REQUIRED, "reason not accepted", ("rate",)))
    assert b.state() is State.LIBRARY_CHECKED
    assert not [e for e in out if isinstance(e, CheckDers | Program)]
    b(OverrideGiven("rate", S1.clinician_id, "post-op pain"))
    assert b.last(CheckDers).overrides[0].reason == "post-op pain"


def test_a_variable_concentration_needs_a_confirmation() -> None:
    b = Bedside()
    b.to_library_check()
    b(DersDone(b.last(CheckDers).request, Verdict.CONFIRMATION_REQUIRED, "variable concentration"))
    assert "has not scanned a badge" in said(b(Confirm(S2.clinician_id)))
    assert b.state() is State.LIBRARY_CHECKED
    assert "No override is asked for 'rate'" in said(b(OverrideGiven("rate", S1.clinician_id, "x")))
    out = b(Confirm(S1.clinician_id))
    assert one(out, CheckDers).concentration_confirmed
    out = b(DersDone(b.last(CheckDers).request, Verdict.CONFIRMATION_REQUIRED, "again"))
    assert b.state() is State.BLOCKED


def test_a_refused_programme_blocks() -> None:
    b = Bedside()
    b.to_library_check()
    b(passed(b.last(CheckDers).request))
    out = b(ProgramSent(b.last(Program).request, False, "device error 12: door open"))
    assert b.state() is State.BLOCKED
    assert "door open" in said(out)
    assert "may hold the programme" in said(out)
    assert not [e for e in out if isinstance(e, ReadBack)]


def test_a_read_back_mismatch_raises_an_alarm_and_stops() -> None:
    b = Bedside()
    b.to_library_check()
    b(passed(b.last(CheckDers).request))
    b(ProgramSent(b.last(Program).request, True))
    out = b(ReadBackDone(b.last(ReadBack).request, False, ("rate: sent 2 mL/h, read 20 mL/h",)))
    assert b.state() is State.BLOCKED
    expected = "read-back mismatch on pump pump-1 channel 1: rate: sent 2 mL/h, read 20 mL/h"
    assert one(out, Alarm) == Alarm(expected, "pump-1", 1)
    assert "Do not start" in said(out) or "do not start" in said(out)
    assert b(PumpStarted("pump-1", 1)) == []
    assert b.state() is State.BLOCKED


def test_a_pump_started_before_its_read_back_raises_an_alarm() -> None:
    b = Bedside()
    b.to_library_check()
    b(passed(b.last(CheckDers).request))
    out = b(PumpStarted("pump-1", 1))
    assert b.state() is State.BLOCKED
    assert "before its programme was read back" in one(out, Alarm).reason


def test_only_our_channel_starting_counts() -> None:
    b = Bedside()
    b.to_start()
    out = b(PumpStarted("pump-1", 2))
    assert b.state() is State.AWAITING_START_CONFIRMATION
    assert "this administration is on pump pump-1 channel 1" in said(out)


def test_a_confirmation_needs_an_identified_clinician() -> None:
    b = Bedside()
    b.to_start()
    out = b(Confirm("someone"))
    assert "someone has not scanned a badge" in said(out)
    assert not emitted(out, WorkflowEvent.CONFIRMED)
    assert "Nothing asks for a confirmation" in said(Bedside()(Confirm(S1.clinician_id)))


def test_cancel_after_programming_never_stops_the_pump_and_says_so() -> None:
    b = Bedside()
    b.to_start()
    out = b(Cancel(S1.clinician_id))
    assert b.state() is State.CANCELLED
    assert emitted(out, WorkflowEvent.CANCELLED)[0].payload == {
        "state": "awaiting_start_confirmation", "by": S1.clinician_id
    }  # fmt: skip
    assert "may hold the programme, not started: clear it on the pump" in said(out)
    assert all(isinstance(e, Emit | Prompt) for e in out)
    b(Cancel(S1.clinician_id))
    assert b.state() is State.IDLE


def reach(b: Bedside, state: State) -> None:
    """Bring ``b`` to ``state`` by the shortest way."""
    scans: dict[State, tuple[Input | Scan, ...]] = {
        State.PATIENT: (W1,),
        State.CLINICIAN: (W1, S1),
        State.MEDICATION: (W1, S1, M1),
        State.PUMP_CHANNEL: (W1, S1, A1),
        State.BLOCKED: (W1, L_OTHER),
        State.CANCELLED: (W1, Cancel(S1.clinician_id)),
    }
    if state in scans:
        b(*scans[state])
    elif state is State.ORDER_MATCHED:
        b.scanned()
    elif state in (State.AWAITING_START_CONFIRMATION, State.INFUSING):
        b.to_start()
        if state is State.INFUSING:
            b(PumpStarted("pump-1", 1))
    else:
        b.to_library_check()
        if state is State.LIBRARY_CHECKED:
            b(DersDone(b.last(CheckDers).request, Verdict.OVERRIDE_REQUIRED, "soft", ("rate",)))
        elif state in (State.PROGRAMMED, State.READ_BACK):
            b(passed(b.last(CheckDers).request))
            if state is State.READ_BACK:
                b(ProgramSent(b.last(Program).request, True))
    assert b.state() is state


@pytest.mark.parametrize("state", [s for s in State if s is not State.IDLE])
def test_every_state_times_out_to_idle_with_a_reason(state: State) -> None:
    b = Bedside()
    reach(b, state)
    limit = b.wf.policy.timeouts[state]
    assert b.tick(timedelta(seconds=1)) == []  # the timer starts
    assert b.tick(limit - timedelta(seconds=1)) == []
    assert b.state() is state
    out = b.tick(timedelta(seconds=1))
    assert b.state() is State.IDLE
    assert said(out)
    assert bool(emitted(out, WorkflowEvent.TIMED_OUT)) is (state in ACTIVE)
    if state in ON_PUMP:
        assert "may hold the programme, not started" in said(out)
    d = b.wf.describe()
    assert (d["patient"], d["clinician"], d["pump"]) == (None, None, None)


def test_a_held_badge_times_out() -> None:
    b = Bedside()
    b(S1)
    b.tick(timedelta(seconds=1))
    out = b.tick(timedelta(minutes=2))
    assert "The badge scanned was dropped" in said(out)
    assert b.wf.describe()["clinician"] is None


def test_activity_restarts_the_timeout() -> None:
    b = Bedside()
    b(W1)
    b.tick(timedelta(seconds=1))
    b.tick(timedelta(minutes=4))
    b(S1)
    b.tick(timedelta(seconds=1))
    b.tick(timedelta(minutes=4))
    assert b.state() is State.CLINICIAN


def test_a_scan_error_says_what_was_scanned_and_what_is_next() -> None:
    """N1: a pack scanned through a wedge scanner that dropped the GS."""
    b = Bedside()
    b(W1, S1)
    out = b(ScanError(N1_RAW, "lot 10 runs into the serial: the scanner dropped the GS separator"))
    assert b.state() is State.CLINICIAN
    payload = emitted(out, EventType.SCAN_REJECTED)[0].payload
    assert payload_problem(EventType.SCAN_REJECTED, payload) is None
    assert payload["expected"] == "scan the medication or its pharmacy label and the pump channel's label"
    assert N1_RAW in said(out)
    assert "Next: scan the medication" in said(out)
    out = b(ScanError("]d2\x1d\x00", "not a GS1 element string"))
    assert "\\x1d\\x00" in said(out)


def test_a_pump_label_without_a_channel_is_refused() -> None:
    b = Bedside()
    b(W1, S1)
    out = b(A_NO_CHANNEL)
    assert b.wf.describe()["pump"] is None
    assert "no channel" in emitted(out, EventType.SCAN_REJECTED)[0].payload["reason"]


def test_a_pump_not_ready_is_dropped_while_scanning() -> None:
    b = Bedside()
    b(W1, S1, A1)
    out = b(PumpNotReady("pump-1", "drug library version 3 on the pump, 4 published"))
    assert b.state() is State.CLINICIAN
    assert "Pump pump-1 channel 1 cannot be auto-programmed: drug library version 3" in said(out)
    assert b(PumpNotReady("pump-9", "link down")) == []
    b(PumpNotReady(None, "the event log is full"))
    assert b.state() is State.BLOCKED


@pytest.mark.parametrize("programmed", [False, True])
def test_a_pump_not_ready_after_the_match_blocks(programmed: bool) -> None:
    b = Bedside()
    if programmed:
        b.to_start()
    else:
        b.scanned()
    out = b(PumpNotReady("pump-1", "link down"))
    assert b.state() is State.BLOCKED
    assert bool([e for e in out if isinstance(e, Alarm)]) is programmed


def test_answers_to_other_requests_are_ignored() -> None:
    b = Bedside()
    b.scanned()
    request = b.last(Reconcile).request
    assert b(ReconcileDone(request + 1, True, "someone else's")) == []
    assert b(DersDone(request, Verdict.PASS, "not asked yet")) == []
    assert b.state() is State.ORDER_MATCHED
    b(ReconcileDone(request, True, "ok"))
    assert b(ReconcileDone(request, False, "a duplicate")) == []
    assert b.state() is State.RECONCILED
    assert b(DersDone(request, Verdict.PASS, "the number of the reconciliation")) == []
    assert b(DersDone(b.last(CheckDers).request + 1, Verdict.PASS, "a number not given yet")) == []
    assert b.state() is State.RECONCILED


def test_describe_says_where_the_sequence_is() -> None:
    b = Bedside()
    b.scanned()
    d = b.wf.describe()
    assert d == d | {"state": "order_matched", "patient": W1.patient_id, "clinician": S1.clinician_id,
                     "medication": M1.gtin, "pump": "pump-1", "channel": "1", "order": "1001",
                     "next": "wait for the check of order, container and pump"}  # fmt: skip
    assert "Order 1001" in (d["prompt"] or "")


def test_policy_and_tick_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="every state needs a positive timeout"):
        WorkflowPolicy(timeouts={State.IDLE: timedelta(minutes=1)})
    with pytest.raises(ValueError, match="aware"):
        Tick(datetime(2026, 3, 2, 9, 0))  # noqa: DTZ001 - the point of the test


# -- the table -------------------------------------------------------------------------------------


def test_the_table_has_a_rule_for_every_state_and_input() -> None:
    assert set(TRANSITIONS) == {(s, k) for s in State for k in InputKind}
    assert set(ANY) == set(SCANNING + MATCHED + ON_PUMP + ENDED + (State.IDLE,))
    # Only these reach infusing, and only from awaiting_start_confirmation:
    assert [(s, k) for (s, k), r in TRANSITIONS.items() if State.INFUSING in r.goes_to] == [
        (State.AWAITING_START_CONFIRMATION, InputKind.PUMP_STARTED)
    ]
    # The machine has no way to start a pump: no effect names a start.
    assert {t.__name__ for t in typing.get_args(Effect)} == {
        "FetchOrders", "Reconcile", "CheckDers", "Program", "ReadBack", "Emit", "Prompt", "Alarm"
    }  # fmt: skip


def test_the_workflow_events_are_in_the_vocabulary() -> None:
    assert {e.value for e in WorkflowEvent} <= {t.value for t in EventType}


def test_the_rendered_table_shows_every_rule() -> None:
    text = render_table()
    for each in {id(r): r for r in TRANSITIONS.values()}.values():
        assert each.says in text
    for s in State:
        assert f"| `{s.value}` |" in text
    assert "| Tick | any | timed out: drop everything; prompt why | `idle` or stays |" in text


def test_docs_workflow_md_matches_the_table() -> None:
    doc = Path(__file__).resolve().parents[1] / "docs" / "workflow.md"
    if not doc.exists():
        pytest.skip("docs/workflow.md is not written yet: generate its table with render_table()")
    assert render_table() in doc.read_text(encoding="utf-8")


# -- the rules, over random input sequences ---------------------------------------------------------


@dataclass
class Audit:
    """What one sequence (since the last wristband) was given, kept apart from the machine."""

    patient: str | None = None
    fetch: int | None = None
    orders: list[Order] = field(default_factory=list)
    reconciles: dict[int, Reconcile] = field(default_factory=dict)
    reconciled_ok: list[Administration] = field(default_factory=list)
    ders: dict[int, CheckDers] = field(default_factory=dict)
    soft: set[str] = field(default_factory=set)


CONTAINERS = (M1, M2, L1, L2, L_OTHER, L_DISPENSE)
PUMPS = (A1, A1_CH2, A2, A_NO_CHANNEL)
PARAMS = ("rate", "vtbi", "dose")
CLINICIAN_IDS = (S1.clinician_id, S2.clinician_id, "never-scanned")
MOSTLY = st.sampled_from((True,) * 9 + (False,))
GOOD = st.sampled_from((True,) * 4 + (False,))
ORDER_SETS = ("one",) * 8 + ("ageing",) * 4 + ("two-same-drug", "two-drugs", "other", "stale", "none")
VERDICTS = (
    (Verdict.PASS,) * 4 + (Verdict.OVERRIDE_REQUIRED,) * 4 + (Verdict.CONFIRMATION_REQUIRED, Verdict.BLOCKED)
)
STEPS = (
    timedelta(0),
    timedelta(seconds=1),
    timedelta(seconds=1),
    timedelta(seconds=30),
    timedelta(seconds=61),
)


class WorkflowRules(RuleBasedStateMachine):
    """Random sequences of every input. Answers mostly go to the request awaited, with outcomes
    mostly good, so that sequences get as far as programming and the start; some answers carry the
    number of another request (stale or made up)."""

    def __init__(self) -> None:
        super().__init__()
        self.wf = Workflow()
        self.now = T0
        self.audit = Audit()
        self.badges: set[str] = set()
        self.issued: dict[type, list[int]] = {}
        self.latest: FetchOrders | Reconcile | CheckDers | Program | ReadBack | None = None
        self.answered: set[int] = set()
        self.ticked = False

    @initialize(tick=MOSTLY)
    def start(self, tick: bool) -> None:
        if tick:  # without one, the machine does not know the time: nothing may be matched
            self.step(Tick(self.now))

    def request(self, data: st.DataObject, kind: type) -> int:
        ids = self.issued.get(kind, [])
        return data.draw(st.sampled_from([*ids, 999]), label="request")

    def orders_for(self, which: str) -> tuple[Order, ...]:
        pid, fresh = self.audit.patient or W1.patient_id, self.now - timedelta(minutes=1)
        snomed: dict[str, Any] = {"system": "http://snomed.info/sct", "code": "764003004"}
        other = W2.patient_id if pid == W1.patient_id else W1.patient_id
        return {
            "one": (order("1001", patient=pid, at=fresh),),
            "two-same-drug": (order("1001", patient=pid, at=fresh, **snomed),
                              order("1002", patient=pid, at=fresh, **snomed)),
            "two-drugs": (order("1001", patient=pid, at=fresh),
                          order("1002", patient=pid, at=fresh, code=M2.gtin)),
            "other": (order("2001", patient=other, at=fresh),),
            "stale": (order("1001", patient=pid, at=self.now - timedelta(minutes=20)),),
            "ageing": (order("1001", patient=pid, at=self.now - timedelta(minutes=14, seconds=50)),),
            "none": (),
        }[which]  # fmt: skip

    # -- inputs -----------------------------------------------------------------------------------
    @rule(scan=st.sampled_from((W1, W2, S1, S2, *CONTAINERS, *PUMPS)))
    def scan(self, scan: Scan) -> None:
        self.step(ScanInput(scan))

    @rule(patient=st.sampled_from((W1, W2)), rest=st.permutations((S1, M1, A1)), label=st.booleans())
    def bedside_round(self, patient: PatientScan, rest: list[Scan], label: bool) -> None:
        """A whole round of scans, the way a nurse does it, in some order."""
        self.step(ScanInput(patient))
        for scan in rest:
            self.step(ScanInput(L1 if label and scan is M1 else scan))

    def latest_of(self, answer: type) -> int | None:
        asked = {
            OrdersFound: FetchOrders, OrdersUnavailable: FetchOrders, ReconcileDone: Reconcile,
            DersDone: CheckDers, ProgramSent: Program, ReadBackDone: ReadBack,
        }[answer]  # fmt: skip
        ids = self.issued.get(asked)
        return ids[-1] if ids else None

    def awaited(self) -> bool:
        e = self.latest
        return e is not None and e.request not in self.answered

    @precondition(lambda self: self.awaited() or self.wf.state in (State.LIBRARY_CHECKED, *ON_PUMP))
    @rule(data=st.data(), times=st.integers(1, 8))
    def progress(self, data: st.DataObject, times: int) -> None:
        """What the async layer and the nurse do next, ``times`` times over: answer the latest request
        (mostly with its number and a good outcome), override or confirm, start the pump; now and
        then something out of turn (the pump started early, another scan, time passing)."""
        for _ in range(times):
            e, good = self.latest, data.draw(GOOD, label="good")
            aside = data.draw(st.sampled_from(("",) * 6 + ("start", "scan", "wait", "wait")), label="aside")
            if aside == "start" and self.wf.describe()["channel"]:
                d = self.wf.describe()
                self.step(PumpStarted(d["pump"] or "", int(d["channel"] or 0)))
            elif aside == "scan":
                self.step(ScanInput(data.draw(st.sampled_from(CONTAINERS + PUMPS), label="rescan")))
            elif aside == "wait":
                self.now += timedelta(seconds=30)
                self.step(Tick(self.now))
            if e is None or not self.awaited():
                if self.wf.state is State.LIBRARY_CHECKED:
                    who = data.draw(st.sampled_from((S1.clinician_id,) * 3 + CLINICIAN_IDS), label="who")
                    for param in PARAMS:
                        self.step(OverrideGiven(param, who, "post-op pain" if good else " "))
                    self.step(Confirm(who))
                elif self.wf.state is State.AWAITING_START_CONFIRMATION:
                    d = self.wf.describe()
                    self.step(PumpStarted(d["pump"] or "", int(d["channel"] or 0)))
                continue
            r = e.request if data.draw(MOSTLY, label="right request") else self.request(data, type(e))
            if isinstance(e, FetchOrders):
                which = data.draw(st.sampled_from(ORDER_SETS), label="orders")
                self.step(OrdersFound(r, self.orders_for(which)) if good else OrdersUnavailable(r, "down"))
            elif isinstance(e, Reconcile):
                self.step(ReconcileDone(r, good, "checks"))
            elif isinstance(e, CheckDers):
                again = bool(e.overrides) or e.concentration_confirmed  # a second look: mostly passes
                verdict = data.draw(st.sampled_from(VERDICTS), label="verdict")
                verdict = Verdict.PASS if again and good else verdict
                soft = data.draw(st.sets(st.sampled_from(PARAMS), min_size=1), label="soft")
                named = tuple(sorted(soft)) if verdict is Verdict.OVERRIDE_REQUIRED else ()
                result = result_for(verdict, named) if good or verdict is not Verdict.PASS else None
                self.step(DersDone(r, verdict, "ders", named, result))
            elif isinstance(e, Program):
                self.step(ProgramSent(r, good, None if good else "refused"))
            else:
                self.step(ReadBackDone(r, good, () if good else ("rate: sent 2 mL/h, read 20 mL/h",)))

    @rule(data=st.data(), kind=st.sampled_from((FetchOrders, Reconcile, CheckDers, Program, ReadBack)))
    def stray_answer(self, data: st.DataObject, kind: type) -> None:
        """An answer to any request made so far, or to none: stale, duplicate or made up."""
        r, ok = self.request(data, kind), data.draw(st.booleans(), label="ok")
        if kind is FetchOrders:
            self.step(OrdersFound(r, self.orders_for(data.draw(st.sampled_from(ORDER_SETS), label="orders"))))
        elif kind is Reconcile:
            self.step(ReconcileDone(r, ok, "checks"))
        elif kind is CheckDers:
            self.step(DersDone(r, data.draw(st.sampled_from(Verdict), label="verdict"), "ders", ("rate",)))
        else:
            self.step(ProgramSent(r, ok) if kind is Program else ReadBackDone(r, ok))

    @rule(
        data=st.data(), what=st.sampled_from(("override", "confirm", "start", "cancel", "error", "not-ready"))
    )
    def nurse(self, data: st.DataObject, what: str) -> None:
        """Anything else a nurse, a clinician or a pump may do, at any time."""
        who = data.draw(st.sampled_from(CLINICIAN_IDS), label="who")
        if what == "override":
            reason = data.draw(st.sampled_from(("post-op pain", "", "  ")), label="reason")
            self.step(OverrideGiven(data.draw(st.sampled_from(PARAMS), label="param"), who, reason))
        elif what == "confirm":
            self.step(Confirm(who))
        elif what == "start":
            d, pump = self.wf.describe(), data.draw(st.sampled_from(PUMPS[:3]), label="pump")
            ours = data.draw(st.booleans(), label="ours") and d["pump"] and d["channel"]
            self.step(PumpStarted(d["pump"], int(d["channel"])) if ours else PumpStarted(pump.pump_id, 1))  # type: ignore[arg-type]
        elif what == "cancel":
            self.step(Cancel(who))
        elif what == "error":
            self.step(ScanError(data.draw(st.sampled_from((N1_RAW, "]d2\x1d", ""))), "not understood"))
        else:
            self.step(
                PumpNotReady(data.draw(st.sampled_from(("pump-1", "pump-2", None))), "library outdated")
            )

    @rule(delta=st.sampled_from(STEPS))
    def tick(self, delta: timedelta) -> None:
        self.now += delta
        self.step(Tick(self.now))

    @rule(go=st.integers(0, 4))
    def walk_away(self, go: int) -> None:
        """Liveness: whatever the state, an hour without input ends at idle (one draw in five)."""
        if go == 0:
            for _ in range(2):
                self.now += timedelta(hours=1)
                self.step(Tick(self.now))
            assert self.wf.state is State.IDLE

    # -- the checks of every step -----------------------------------------------------------------
    def step(self, inp: Input) -> None:
        before, seen = self.wf.state, self.wf.describe()
        self.ticked |= isinstance(inp, Tick)
        request = getattr(inp, "request", None)
        first_answer = request not in self.answered
        out = self.wf.step(inp)
        after, now = self.wf.state, self.wf.describe()
        if request is not None and (not first_answer or request != self.latest_of(type(inp))):
            assert (out, after) == ([], before), "an answer to no current request changed something"
        rule_ = TRANSITIONS[(before, kind_of(inp))]
        assert after is before or after in rule_.goes_to, (
            f"{before} --{kind_of(inp)}--> {after} not in the table"
        )
        assert all(isinstance(e, typing.get_args(Effect)) for e in out)
        assert all(e.message for e in out if isinstance(e, Prompt))
        for e in out:
            if isinstance(e, Emit):
                assert payload_problem(EventType(e.type.value), e.payload) is None, e
        self.watch_inputs(inp, first_answer)
        for e in out:
            self.watch_effect(e, inp)
        if hasattr(inp, "request"):
            self.answered.add(inp.request)
        # never infusing but by the pump starting our channel after the read-back matched
        if after is State.INFUSING and before is not State.INFUSING:
            assert before is State.AWAITING_START_CONFIRMATION
            assert isinstance(inp, PumpStarted)
            assert (inp.pump, str(inp.channel)) == (
                seen["pump"],
                seen["channel"],
            )
        if isinstance(inp, ScanInput) and isinstance(inp.scan, PatientScan):  # a new sequence
            assert after in (State.PATIENT, State.CLINICIAN)
            assert (now["patient"], now["medication"], now["label"], now["pump"], now["order"]) == (
                inp.scan.patient_id, None, None, None, None
            )  # fmt: skip
            assert now["clinician"] == seen["clinician"]
            assert one(out, FetchOrders).patient_id == inp.scan.patient_id
        if isinstance(inp, ScanInput) and before in SCANNING and after is not State.BLOCKED:
            s = inp.scan
            if isinstance(s, MedicationScan):
                assert now["medication"] == s.gtin
            if isinstance(s, PumpScan) and s.channel is not None:
                assert (now["pump"], now["channel"]) == (s.pump_id, str(s.channel))
        if (
            isinstance(inp, ScanInput)
            and before in MATCHED + ON_PUMP
            and not isinstance(inp.scan, PatientScan)
        ):
            assert (now["medication"], now["label"], now["pump"], now["channel"]) == (
                seen["medication"], seen["label"], seen["pump"], seen["channel"]
            )  # fmt: skip
        mismatch = isinstance(inp, ReadBackDone) and not inp.matches and first_answer
        if mismatch and before is State.READ_BACK and getattr(inp, "request", 0) == self.issued[ReadBack][-1]:
            assert after is State.BLOCKED
            assert [e for e in out if isinstance(e, Alarm)]
        if isinstance(inp, Tick) and after is not before:
            assert after is State.IDLE
            assert said(out)
            assert bool(emitted(out, WorkflowEvent.TIMED_OUT)) is (before in ACTIVE)
        if isinstance(inp, ScanError):
            assert after is before
            assert f'"{inp.raw.encode("unicode_escape").decode("ascii")}"' in said(out)
            assert emitted(out, EventType.SCAN_REJECTED)[0].payload["expected"] == now["next"]

    def watch_inputs(self, inp: Input, first: bool) -> None:
        a = self.audit
        if isinstance(inp, ScanInput) and isinstance(inp.scan, PatientScan):
            self.audit = Audit(patient=inp.scan.patient_id)
        elif isinstance(inp, ScanInput) and isinstance(inp.scan, ClinicianScan):
            self.badges.add(inp.scan.clinician_id)
        elif isinstance(inp, OrdersFound) and first and inp.request == a.fetch:
            a.orders += inp.orders
        elif isinstance(inp, ReconcileDone) and first and inp.ok and inp.request in a.reconciles:
            a.reconciled_ok.append(a.reconciles[inp.request].admin)
        elif isinstance(inp, DersDone) and first and inp.request in a.ders:
            a.soft |= set(inp.soft_params) if inp.verdict is Verdict.OVERRIDE_REQUIRED else set()

    def watch_effect(self, e: Effect, inp: Input) -> None:
        a = self.audit
        if isinstance(e, FetchOrders | Reconcile | CheckDers | Program | ReadBack):
            self.issued.setdefault(type(e), []).append(e.request)
            self.latest = e
        if isinstance(e, FetchOrders):
            a.fetch = e.request
        elif isinstance(e, Reconcile):
            a.reconciles[e.request] = e
        elif isinstance(e, CheckDers):
            a.ders[e.request] = e
        elif isinstance(e, Program):
            # (a) an order for the scanned patient, delivered for this sequence's fetch, not stale
            assert e.admin.order.patient_id == e.admin.patient.patient_id == a.patient
            assert e.admin.order in a.orders
            assert self.ticked
            assert e.admin.order.ordered_at is not None
            assert self.now - e.admin.order.ordered_at <= OrderPolicy().stale_after
            # (b) reconciled OK for exactly this order, container, pump and channel
            assert e.admin in a.reconciled_ok
            # (c) DERS passed for it, every soft limit seen overridden by a scanned clinician with a reason
            assert isinstance(inp, DersDone)
            assert inp.verdict is Verdict.PASS
            assert e.ders is inp.result
            check = a.ders[inp.request]
            assert check.admin == e.admin
            assert check.overrides == e.overrides
            given = {o.parameter: o for o in check.overrides}
            for param in a.soft:
                assert param in given
                assert given[param].clinician in self.badges
                assert given[param].reason.strip()

    @invariant()
    def describable(self) -> None:
        d = self.wf.describe()
        assert d["state"] == self.wf.state.value
        assert d["next"]


TestWorkflowRules = WorkflowRules.TestCase
TestWorkflowRules.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
