"""Infusion orders as the gateway holds them, whichever standard brought them, and the checks every
order passes before the bedside workflow may use it.

An :class:`Order` is built by a codec at the boundary (HL7 PIV RGV^O15 in ``pumpgw.hl7.piv``, FHIR
MedicationRequest in ``pumpgw.fhir.orders``, the rig) and is the only shape the rest of the gateway
sees. It carries exactly what the order said, in exact quantities with UCUM units: a value the
order did not give stays ``None``, and is never guessed or defaulted.

:func:`check_order` is pure (time is passed in): it returns every problem it finds, each with the
IHE PIV application error code (HL7 table 0533 extension, ``../shared/reference/ihe-pcd.md``) that
an order programmer understands, so that HL7 (ERR-5), FHIR (OperationOutcome) and the event log name
the same code. :class:`PendingOrders` keeps accepted orders for the bedside workflow.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from .dose import Concentration
from .errors import PumpGwError
from .quantity import Quantity


class OrderSource(StrEnum):
    HL7 = "hl7"
    FHIR = "fhir"
    RIG = "rig"


class OrderAction(StrEnum):
    """What the order asks of the pump (PIV ORC-1: RE, XO, CH)."""

    NEW = "new"  # RE: a new container
    CHANGE = "change"  # XO: a rate or dose change of the running infusion
    BOLUS = "bolus"  # CH: a bolus from an existing infusion (parent order in ORC-8)


class PivError(StrEnum):
    """IHE PIV application error codes used by the gateway (ERR-5; PCD TF-2 B.3, codes 9001 and up).

    Only codes whose meaning is documented in ``../shared/reference/ihe-pcd.md`` are named here;
    where no PIV code fits, the gateway uses HL7 table 0357 (``207`` application internal error)
    in ERR-3 and says what was wrong in the text.
    """

    UNITS_MISMATCH = "9009"
    NOT_IN_LIBRARY = "9010"
    WEIGHT_MISMATCH = "9011"
    PATIENT_MISMATCH = "9012"
    WEIGHT_MISSING = "9019"
    CARE_AREA_MISMATCH = "9021"
    STALE = "9022"
    HARD_LIMIT = "9024"


# HL7 table 0357 (message error condition codes), for problems no PIV code names.
HL7_SEGMENT_SEQUENCE_ERROR: Final = "100"
HL7_REQUIRED_FIELD_MISSING: Final = "101"
HL7_DATA_TYPE_ERROR: Final = "102"
HL7_TABLE_VALUE_NOT_FOUND: Final = "103"
HL7_UNSUPPORTED_MESSAGE_TYPE: Final = "200"
HL7_UNKNOWN_KEY: Final = "204"
HL7_DUPLICATE_KEY: Final = "205"
HL7_APPLICATION_ERROR: Final = "207"


@dataclass(frozen=True, slots=True)
class Drug:
    """The medication as the order names it: a code in a coding system, and its display text."""

    code: str
    system: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.name or self.code} ({self.system or 'no system'} {self.code})"


@dataclass(frozen=True, slots=True)
class OrderStep:
    """One step of a multistep program (PIV repeats the RXG group; step 1 is the order itself)."""

    number: int
    dose_rate: Quantity | None = None
    rate: Quantity | None = None
    vtbi: Quantity | None = None
    duration: Quantity | None = None


@dataclass(frozen=True, slots=True)
class Order:
    """An infusion order. ``order_id`` is the placer order number (ORC-2, or the MedicationRequest's
    identifier); ``patient_id`` the patient identifier the order names (PID-3.1, or the Patient's
    identifier), which a wristband scan must match.

    ``dose_rate`` is what was ordered as a rate: a dose rate (``ug/kg/min``) or a flow (``mL/h``);
    ``rate`` is the flow in mL/h when the order gives it alongside a dose rate. ``dose`` is an
    amount (a bolus: ``mg``, ``ug/kg``). ``concentration`` comes from drug amount ÷ diluent volume
    (RXG-17/18 ÷ RXG-23/24) or the Medication's ingredient strength. ``container_volume`` is the
    diluent (bag or syringe) volume. ``pump_id``/``channel`` name the device the order is for
    (PIV OBX-18), when the order names one.
    """

    order_id: str
    source: OrderSource
    patient_id: str
    drug: Drug
    action: OrderAction = OrderAction.NEW
    status: str = "active"
    concentration: Concentration | None = None
    container_volume: Quantity | None = None
    dose_rate: Quantity | None = None
    rate: Quantity | None = None
    dose: Quantity | None = None
    vtbi: Quantity | None = None
    duration: Quantity | None = None
    route: str | None = None
    # PIV RXR-3 (HL7 table 0164: IVP infusion pump, SYR syringe pump, PCA) and RXR-4 (table 0165:
    # IV primary line, IVPB piggyback): kept as the order says them, for the workflow to match.
    pump_type: str | None = None
    line: str | None = None
    weight: Quantity | None = None
    height: Quantity | None = None
    bsa: Quantity | None = None
    pump_id: str | None = None
    channel: str | None = None
    ordered_at: datetime | None = None
    ordered_by: str | None = None
    parent_order_id: str | None = None
    encounter: str | None = None
    patient_name: str | None = None
    later_steps: tuple[OrderStep, ...] = ()
    # Where it came from, for the audit trail: the HL7 message control id or the FHIR resource URL.
    received_from: str | None = None

    @property
    def multistep(self) -> bool:
        return bool(self.later_steps)


@dataclass(frozen=True, slots=True)
class OrderProblem:
    """Why an order cannot be used: the PIV/HL7 code, the element that is wrong, and in words."""

    code: str
    element: str
    reason: str

    def __str__(self) -> str:
        return f"{self.element}: {self.reason} (code {self.code})"


class OrderRefused(PumpGwError):
    """An order that cannot be used, with every problem found."""

    def __init__(self, order_id: str | None, problems: Iterable[OrderProblem]) -> None:
        self.order_id = order_id
        self.problems = tuple(problems)
        what = f"order {order_id!r}" if order_id else "the order"
        super().__init__(f"{what} refused: " + "; ".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class OrderPolicy:
    """What the gateway accepts: orders younger than ``stale_after`` (ORC-9 / authoredOn) and not
    dated more than ``future_tolerance`` ahead of the gateway's clock; pumps and channels it has."""

    stale_after: timedelta = timedelta(minutes=15)
    future_tolerance: timedelta = timedelta(minutes=2)
    require_ordered_at: bool = True


def check_order(
    order: Order,
    *,
    now: datetime,
    policy: OrderPolicy,
    pumps: dict[str, frozenset[str]],
) -> list[OrderProblem]:
    """Every reason ``order`` cannot be used now, or an empty list. Pure.

    ``pumps`` maps each pump id this gateway serves to its channel ids. An order naming no pump is
    acceptable (the nurse scans the pump channel at the bedside); an order naming a pump or channel
    this gateway does not have is refused, so that the order programmer can send it where it
    belongs.
    """
    problems: list[OrderProblem] = []
    if not order.patient_id.strip():
        problems.append(
            OrderProblem(PivError.PATIENT_MISMATCH, "patient", "the order names no patient identifier")
        )
    if order.status != "active":
        problems.append(
            OrderProblem(HL7_APPLICATION_ERROR, "status", f"the order is {order.status!r}, not active")
        )
    if order.ordered_at is None:
        if policy.require_ordered_at:
            problems.append(
                OrderProblem(
                    PivError.STALE,
                    "ordered_at",
                    "the order does not say when it was made (ORC-9 / authoredOn), so it cannot be "
                    "shown not to be stale",
                )
            )
    else:
        if order.ordered_at.tzinfo is None:
            problems.append(
                OrderProblem(PivError.STALE, "ordered_at", "the order time has no time zone offset")
            )
        else:
            age = now - order.ordered_at
            if age > policy.stale_after:
                problems.append(
                    OrderProblem(
                        PivError.STALE,
                        "ordered_at",
                        f"the order was made at {order.ordered_at.isoformat()}, "
                        f"{_minutes(age)} ago; orders older than {_minutes(policy.stale_after)} are stale",
                    )
                )
            elif -age > policy.future_tolerance:
                problems.append(
                    OrderProblem(
                        PivError.STALE,
                        "ordered_at",
                        f"the order is dated {order.ordered_at.isoformat()}, {_minutes(-age)} ahead of "
                        "this gateway's clock: one of the two clocks is wrong",
                    )
                )
    if order.pump_id is not None:
        if order.pump_id not in pumps:
            known = ", ".join(sorted(pumps)) or "none"
            problems.append(
                OrderProblem(
                    HL7_UNKNOWN_KEY,
                    "pump",
                    f"pump {order.pump_id!r} is not served by this gateway (it serves: {known})",
                )
            )
        elif order.channel is not None and order.channel not in pumps[order.pump_id]:
            known = ", ".join(sorted(pumps[order.pump_id])) or "none"
            problems.append(
                OrderProblem(
                    HL7_UNKNOWN_KEY,
                    "channel",
                    f"pump {order.pump_id!r} has no channel {order.channel!r} (it has: {known})",
                )
            )
    if order.action is OrderAction.BOLUS and order.parent_order_id is None:
        problems.append(
            OrderProblem(
                HL7_REQUIRED_FIELD_MISSING,
                "parent_order",
                "a bolus from an existing infusion must name the running order (ORC-8)",
            )
        )
    given = [q for q in (order.dose_rate, order.rate, order.dose) if q is not None]
    if order.action is OrderAction.NEW and not given:
        problems.append(
            OrderProblem(
                HL7_REQUIRED_FIELD_MISSING, "rate", "the order gives no dose, dose rate or rate to program"
            )
        )
    named = {
        "dose_rate": order.dose_rate,
        "rate": order.rate,
        "dose": order.dose,
        "vtbi": order.vtbi,
        "duration": order.duration,
        "weight": order.weight,
        "container_volume": order.container_volume,
    }
    for element, q in named.items():
        if q is not None and q.value <= 0:
            problems.append(OrderProblem(HL7_DATA_TYPE_ERROR, element, f"{element} {q} is not above zero"))
    return problems


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


@dataclass
class PendingOrders:
    """Accepted orders waiting for the bedside workflow.

    Kept per (source, order id, action): a PIV rate change (XO) or bolus (CH) carries the order
    number of the infusion it changes, and must not replace the new-container order (RE) it
    refers to; an HL7 and a FHIR order with the same number are different orders. A newer version
    of the same (source, id, action) replaces the older one.

    In memory: every order is also in the event log (``order.received``), which is the record; after
    a restart the order programmer re-sends, or the workflow fetches over FHIR on the patient scan.
    """

    _orders: dict[tuple[OrderSource, str, OrderAction], Order] = field(default_factory=dict)

    def put(self, order: Order) -> Order | None:
        """Keep ``order``; return the one it replaces (same source, order id and action), if any."""
        key = (order.source, order.order_id, order.action)
        previous = self._orders.pop(key, None)
        self._orders[key] = order
        return previous

    def find(self, order_id: str, action: OrderAction = OrderAction.NEW) -> list[Order]:
        """Every held order with ``order_id`` and ``action``, whatever its source."""
        return [o for (_, oid, act), o in self._orders.items() if oid == order_id and act is action]

    def get(
        self, order_id: str, action: OrderAction = OrderAction.NEW, source: OrderSource | None = None
    ) -> Order | None:
        """The held order; with no ``source``, only when exactly one source holds that number (two
        systems using one number is ambiguous, and the caller must say which)."""
        if source is not None:
            return self._orders.get((source, order_id, action))
        found = self.find(order_id, action)
        return found[0] if len(found) == 1 else None

    def remove(
        self, order_id: str, action: OrderAction = OrderAction.NEW, source: OrderSource | None = None
    ) -> Order | None:
        order = self.get(order_id, action, source)
        if order is not None:
            del self._orders[(order.source, order.order_id, order.action)]
        return order

    def for_patient(self, patient_id: str) -> list[Order]:
        return [o for o in self._orders.values() if o.patient_id == patient_id]

    def __iter__(self) -> Iterator[Order]:
        return iter(list(self._orders.values()))

    def __len__(self) -> int:
        return len(self._orders)


def received_payload(order: Order) -> dict[str, object]:
    """The ``order.received`` event payload for ``order`` (gateway/events.py OrderReceived)."""
    concentration = (
        f"{order.concentration.amount} in {order.concentration.volume}"
        if order.concentration is not None
        else None
    )
    return {
        "source": order.source.value,
        "order_id": order.order_id,
        "status": order.status,
        "drug": order.drug.name or order.drug.code,
        "drug_code": f"{order.drug.system}|{order.drug.code}" if order.drug.system else order.drug.code,
        "dose": str(order.dose) if order.dose is not None else None,
        "rate": str(order.dose_rate or order.rate) if (order.dose_rate or order.rate) else None,
        "concentration": concentration,
        "vtbi": str(order.vtbi) if order.vtbi is not None else None,
        "duration": str(order.duration) if order.duration is not None else None,
        "route": order.route,
        "ordered_at": order.ordered_at.isoformat() if order.ordered_at and order.ordered_at.tzinfo else None,
    }


def rejected_payload(
    source: OrderSource, order_id: str | None, problems: Iterable[OrderProblem]
) -> dict[str, object]:
    """The ``order.rejected`` payload: the first problem's code, every problem in the reason."""
    found = list(problems)
    if not found:
        raise ValueError("an order.rejected event needs at least one problem")
    return {
        "source": source.value,
        "order_id": order_id,
        "code": str(found[0].code),
        "reason": "; ".join(str(p) for p in found)[:4000],
    }
