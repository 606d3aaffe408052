"""IHE PCD PIV (PCD-03) orders: RGV^O15 read into an :class:`~pumpgw.gateway.orders.Order`, and
built from one (for the emulated eMAR, the Infusion Order Programmer of the rig).

Reading (:func:`read_rgv_o15`) maps what the message says and nothing else. A value the message
does not give stays ``None``; a value that cannot be mapped unambiguously refuses the whole order
with :class:`~pumpgw.gateway.orders.OrderRefused`, every problem found at once, each with the IHE
PIV or HL7 table 0357 code, the element (``RXG-16``; ``RXG[2]-16`` for the second RXG) and the
value in words. Whether the order may be *used* (its age, the pump, the patient) is
:func:`~pumpgw.gateway.orders.check_order`'s decision, not this module's: an RGV without ORC-9 (the
IHE examples' defect) reads with ``ordered_at=None``, and check_order refuses it (9022).

Field map (``../shared/reference/ihe-pcd.md``):

=============  ==========================================================================
ORC-1          RE → new container, XO → rate/dose change, CH → bolus from an existing infusion
ORC-2 / ORC-8  order id (EI-1, required) / parent order (EIP-1's first subcomponent)
ORC-5          order status: empty, IP, SC, A → active; CA, DC, CM, HD, RP, ER → not active
ORC-9 / ORC-19 ordered at (absent: None) / ordered by (XCN-1, else the name)
PID-3 / PID-5  patient id (first repetition, CX-1; required) / name as ``Family, Given Middle``
PV1-19         encounter (CX-1)
RXG-4          drug: code (CWE-1, required), name (CWE-2), system (CWE-3 or None)
RXG-5 / 7      volume to be infused
RXG-15 / 16    by the unit's dimension: a flow (mL/h; mL/min and L/h converted exactly) → rate;
               another rate (ug/kg/min, mg/h, [iU]/h) → dose_rate; an amount (mg, ug/kg) → dose
RXG-17 / 18    drug amount (with RXG-23/24: concentration = amount in volume), or a
               concentration ratio (mg/mL) on its own
RXG-23 / 24    diluent volume → container_volume (alone: a plain fluid, no concentration)
TQ1-13         duration, repetitions summed exactly in the smallest unit given (2 h + 45 min →
               165 min); a TQ1 of the ORDER group (before the first RXG) counts for step 1
RXR-1          route (CWE-1, or CWE-2 when CWE-1 is empty: ``^IV^HL70162``); RXR-3/4 are not kept
OBX 69986      pump identity, OBX-18: EI-1 (``PUMP-1`` or ``PUMP-1/2`` for channel 2), or the
               deprecated form with the id in EI-3 (``^^A0001^PUMPVENDOR``)
OBX 68063 etc  weight (kg; g read as ``g{body}``), height, body surface area; other OBX ignored
later RXGs     the later steps of a multistep program (RXG-1 is the step number)
=============  ==========================================================================

Channels: EI-1 is ``<pump id>/<channel>``, split on the one ``/`` (pump ids in the gateway's
configuration cannot contain one); without ``/`` the order names the pump and no channel.

Units (RXG-7/16/18/24, OBX-6, TQ1-13.2) are a CWE with up to two triplets, MDC or UCUM, in either
order. Each is resolved with ``pumpgw.hl7.codes.UNITS`` (MDC) or the gateway's UCUM table; MDC
context-sensitive unit codes (partition 4: ``3475`` is ``265619``) are read as such, and the IHE
examples' ``3475^ug/kg/min^UCUM^...`` (an MDC code under a UCUM label, the UCUM code as text) is
read from its text and cross-checked against the code. Two alternates that disagree, a unit the
gateway does not know, or a unit of the wrong kind refuse the order with 9009. An MDC alternate
the gateway's small MDC table lacks is not a disagreement: the UCUM alternate then decides. Numbers
must be plain decimals (``1,5``, ``10 mg``, ``1e3`` and negatives are refused, naming the field).

Codes: 9009 units; 9012 no patient identifier (the code check_order also uses, so the order
programmer sees one code for "the patient cannot be confirmed", whichever layer finds it, and ERR-2
still points at PID-3); 9011 two different weights; 100 segments missing, repeated or out of place;
101 a required field empty; 102 a malformed value; 103 a code not in its table; 200 not an
RGV^O15 (or, when required, no accepted profile OID); 207 what the gateway does not support (PCA
parameters, a multistep program that changes drug or container).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Final, TypeVar

from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.errors import Hl7Error, QuantityError
from pumpgw.gateway.orders import (
    HL7_APPLICATION_ERROR,
    HL7_DATA_TYPE_ERROR,
    HL7_REQUIRED_FIELD_MISSING,
    HL7_SEGMENT_SEQUENCE_ERROR,
    HL7_TABLE_VALUE_NOT_FOUND,
    HL7_UNSUPPORTED_MESSAGE_TYPE,
    Drug,
    Order,
    OrderAction,
    OrderProblem,
    OrderRefused,
    OrderSource,
    OrderStep,
    PivError,
)
from pumpgw.gateway.quantity import Quantity, known_units

from . import codes
from .build import Party, components, escape, hl7_decimal, hl7_time, message, msh, segment, subcomponents
from .codes import PIV_OIDS, UNIT_BY_MDC_CODE, UNIT_BY_MDC_REFID, UNIT_BY_UCUM, MdcUnit
from .message import Hl7Message, Segment, parse_hl7_time

__all__ = ["PIV_OIDS", "UnitProblem", "build_rgv_o15", "read_rgv_o15", "resolve_unit"]

T = TypeVar("T")

_ACTIONS: Final[dict[str, OrderAction]] = {
    "RE": OrderAction.NEW,
    "XO": OrderAction.CHANGE,
    "CH": OrderAction.BOLUS,
}
_ACTION_CODES: Final[dict[OrderAction, str]] = {v: k for k, v in _ACTIONS.items()}

# ORC-5 (HL7 table 0038) → Order.status (the FHIR MedicationRequest status words that check_order
# and the event log use). Only "active" may be programmed.
_STATUSES: Final[dict[str, str]] = {
    "": "active",
    "IP": "active",
    "SC": "active",
    "A": "active",
    "CA": "cancelled",
    "DC": "stopped",
    "CM": "completed",
    "HD": "on-hold",
    "RP": "replaced",
    "ER": "entered-in-error",
}
_STATUS_CODES: Final[dict[str, str]] = {
    "cancelled": "CA",
    "stopped": "DC",
    "completed": "CM",
    "on-hold": "HD",
    "replaced": "RP",
    "entered-in-error": "ER",
}

# IEEE 11073 units partition (MDC_PART_DIM = 4): a context-sensitive unit code plus 4 × 65536 is
# its context-free code (3475 → 265619 ug/kg/min in hl7-examples/03).
_UNITS_PARTITION_BASE: Final = 4 * 65536

# PCA parameters (ihe-pcd.md: 157985–157989, 158017–158019): an Order cannot carry them, and a PCA
# program must not be half-read (its lockout dropped).
_PCA_CODES: Final = frozenset({*range(157985, 157990), *range(158017, 158020)})

_OBX_BY_REFID: Final[dict[str, int]] = {
    m.refid: m.code for m in (codes.VMD, codes.PT_WEIGHT, codes.PT_HEIGHT, codes.PT_BSA)
}

# ASCII digits only: str.isdigit() and Decimal() also take "³" and "١٢", which no HL7 NM is.
# HL7 table 0085 result statuses a patient measurement may have to be used (empty: not stated, as in
# the IHE examples).
_USABLE_RESULT_STATUS: Final = frozenset({"", "F", "C", "R"})
_MAX_NUMBER_CHARS: Final = 24  # more significant digits than any pump or order carries
_PLAIN_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_DIGITS = re.compile(r"[0-9]+")


def _digits(text: str) -> bool:
    """A code or step number: ASCII digits, at most 18 (no MDC code, OBX id or step needs more; a
    longer string is not a number the gateway reads, and int() of thousands of digits is refused by
    Python itself)."""
    return len(text) <= 18 and _DIGITS.fullmatch(text) is not None


_TIME_UNITS_SMALL_FIRST: Final = ("s", "min", "h")
_AMOUNT_KINDS: Final = ("mass", "units", "substance", "equivalents", "volume")


# --- units ---------------------------------------------------------------------------------------


class UnitProblem(ValueError):
    """A unit field that names no unit the gateway knows, or names two that disagree."""


def resolve_unit(parts: Sequence[str]) -> str:
    """The UCUM code that a CWE/CE unit (its six components or subcomponents, already unescaped)
    names. Raises UnitProblem saying why when it names none the gateway knows, or two that differ.

    >>> resolve_unit(["263762", "MDC_DIM_MILLI_L", "MDC", "mL", "mL", "UCUM"])
    'mL'
    >>> resolve_unit(["3475", "ug/kg/min", "UCUM", "265619", "MDC_DIM_MICRO_G_PER_KG_PER_MIN", "MDC"])
    'ug/kg/min'
    """
    padded = [*parts, "", "", "", "", "", ""][:6]
    found: list[tuple[str, str]] = []  # (UCUM code, the triplet that said so)
    unknown: list[str] = []
    for code, text, system in (padded[0:3], padded[3:6]):
        if not code and not text:
            continue
        shown = "^".join((code, text, system)).rstrip("^")
        found.extend((ucum, shown) for ucum in _triplet_units(code, text, system.upper(), shown, unknown))
    if not found:
        raise UnitProblem("; ".join(unknown) if unknown else "no unit given")
    first_ucum, first_shown = found[0]
    for ucum, shown in found[1:]:
        if ucum != first_ucum:
            raise UnitProblem(
                f"the unit field contradicts itself: {first_shown} means {first_ucum} but {shown} "
                f"means {ucum}"
            )
    return first_ucum


def _triplet_units(code: str, text: str, system: str, shown: str, unknown: list[str]) -> Iterator[str]:
    """Every unit one triplet names (its code and its text may each name one); unknowns noted.
    Raises UnitProblem when an MDC code and an MDC reference id in it disagree."""
    if system == "MDC":
        by_code, by_refid = _mdc_code(code), UNIT_BY_MDC_REFID.get(text)
        if by_refid is not None and _digits(code) and _context_free(code) != by_refid.code:
            raise UnitProblem(f"{shown}: MDC code {code} is not {text} ({by_refid.code})")
        if by_code is not None and text.startswith("MDC_") and text != by_code.refid:
            raise UnitProblem(f"{shown}: MDC code {code} is {by_code.refid}, not {text}")
        named = [u.ucum for u in (by_code, by_refid) if u is not None]
        if not named:
            unknown.append(f"{shown} is not an MDC unit the gateway knows")
        yield from named
    elif system in ("UCUM", ""):
        if _is_ucum(code):
            yield code
        elif _digits(code) or not code:
            # hl7-examples/03: 3475^ug/kg/min^UCUM, an MDC code under the UCUM label, UCUM as text.
            by_code = _mdc_code(code)
            named = [u for u in (by_code.ucum if by_code else None, _text_unit(text)) if u is not None]
            if not named:
                unknown.append(f"{shown} is not a UCUM unit the gateway knows")
            yield from named
        else:
            unknown.append(
                f"{code!r} ({shown}) is not a UCUM unit the gateway knows (UCUM is case-sensitive)"
            )
    else:
        unknown.append(f"{shown}: the coding system {system!r} is neither MDC nor UCUM")


_KNOWN_UCUM: Final = known_units() | frozenset(UNIT_BY_UCUM)


def _is_ucum(text: str) -> bool:
    return text in _KNOWN_UCUM


def _text_unit(text: str) -> str | None:
    if _is_ucum(text):
        return text
    unit = UNIT_BY_MDC_REFID.get(text)
    return unit.ucum if unit is not None else None


def _context_free(code: str) -> int:
    number = int(code)
    return number + _UNITS_PARTITION_BASE if number < 65536 else number


def _mdc_code(code: str) -> MdcUnit | None:
    return UNIT_BY_MDC_CODE.get(_context_free(code)) if _digits(code) else None


# --- reading: values ------------------------------------------------------------------------------


class _Refuse(Exception):
    """One problem found while reading a value; collected, then raised together as OrderRefused."""

    def __init__(self, code: str, element: str, reason: str) -> None:
        super().__init__(reason)
        self.problem = OrderProblem(code, element, reason)


def _seg(seg: Segment) -> str:
    """``RXG`` for the first RXG of the message, ``RXG[2]`` for the second."""
    return seg.name if seg.index == 1 else f"{seg.name}[{seg.index}]"


def _where(seg: Segment, n: int) -> str:
    return f"{_seg(seg)}-{n}"


def _decimal(text: str, element: str, what: str) -> Decimal:
    if len(text) > _MAX_NUMBER_CHARS:
        raise _Refuse(
            HL7_DATA_TYPE_ERROR,
            element,
            f"{what} {text[:40]}... has more than {_MAX_NUMBER_CHARS} characters",
        )
    if not _PLAIN_DECIMAL.fullmatch(text):
        raise _Refuse(HL7_DATA_TYPE_ERROR, element, f"{what} {text!r} is not a plain decimal number")
    value = Decimal(text)
    if value < 0:
        raise _Refuse(HL7_DATA_TYPE_ERROR, element, f"{what} {text} is negative")
    if value == 0:
        # No quantity an order gives (a rate, a volume, an amount, a weight, a duration) can be zero.
        raise _Refuse(HL7_DATA_TYPE_ERROR, element, f"{what} {text} is zero")
    return value


def _quantity(
    value_text: str, unit_parts: list[str], value_at: str, unit_at: str, what: str
) -> Quantity | None:
    if not value_text:
        return None
    value = _decimal(value_text, value_at, what)
    if not any(unit_parts):
        raise _Refuse(
            HL7_REQUIRED_FIELD_MISSING, unit_at, f"{what} {value_text} has no unit ({unit_at} is empty)"
        )
    try:
        unit = resolve_unit(unit_parts)
        return Quantity(value, unit)
    except (UnitProblem, QuantityError) as exc:
        reason = exc.reason if isinstance(exc, QuantityError) else str(exc)
        raise _Refuse(PivError.UNITS_MISMATCH, unit_at, f"{what} {value_text}: {reason}") from None


def _field_quantity(seg: Segment, n_value: int, n_unit: int, what: str) -> Quantity | None:
    return _quantity(
        seg.component(n_value), seg.components(n_unit), _where(seg, n_value), _where(seg, n_unit), what
    )


def _of_kind(q: Quantity | None, dimension: str, element: str, what: str) -> Quantity | None:
    if q is not None and q.dimension != dimension:
        raise _Refuse(PivError.UNITS_MISMATCH, element, f"{what} {q} is not a {dimension} ({q.unit})")
    return q


def _action(orc: Segment) -> OrderAction:
    code = orc.component(1)
    if not code:
        raise _Refuse(HL7_REQUIRED_FIELD_MISSING, "ORC-1", "the order control code is empty")
    try:
        return _ACTIONS[code]
    except KeyError:
        raise _Refuse(
            HL7_TABLE_VALUE_NOT_FOUND,
            "ORC-1",
            f"order control {code!r} is not one PIV uses (RE new container, XO change, CH bolus)",
        ) from None


def _status(orc: Segment) -> str:
    code = orc.component(5)
    try:
        return _STATUSES[code]
    except KeyError:
        raise _Refuse(
            HL7_TABLE_VALUE_NOT_FOUND, "ORC-5", f"order status {code!r} is not in HL7 table 0038"
        ) from None


def _time(seg: Segment, n: int) -> datetime | None:
    text = seg.component(n, 1)
    if not text:
        return None
    try:
        return parse_hl7_time(text)
    except Hl7Error as exc:
        raise _Refuse(HL7_DATA_TYPE_ERROR, _where(seg, n), exc.detail) from None


def _drug(rxg: Segment) -> Drug:
    code = rxg.component(4, 1)
    if not code:
        raise _Refuse(HL7_REQUIRED_FIELD_MISSING, _where(rxg, 4), "the give code (the drug) is empty")
    return Drug(code=code, system=rxg.component(4, 3) or None, name=rxg.component(4, 2) or None)


def _strength(rxg: Segment) -> tuple[Concentration | None, Quantity | None]:
    """(concentration, container volume) from RXG-17/18 and RXG-23/24."""
    volume = _of_kind(
        _field_quantity(rxg, 23, 24, "diluent volume"), "volume", _where(rxg, 24), "diluent volume"
    )
    amount = _field_quantity(rxg, 17, 18, "drug amount")
    if amount is None:
        return None, volume
    at = _where(rxg, 18)
    if amount.value == 0 or (volume is not None and volume.value == 0):
        raise _Refuse(
            HL7_DATA_TYPE_ERROR,
            _where(rxg, 17 if amount.value == 0 else 23),
            f"a concentration of {amount} in {volume} is not above zero",
        )
    try:
        if amount.dimension.endswith("/volume"):
            return Concentration.of(amount), volume
        if volume is None:
            raise _Refuse(
                HL7_REQUIRED_FIELD_MISSING,
                _where(rxg, 23),
                f"drug amount {amount} is given without a diluent volume, so the concentration "
                "cannot be worked out",
            )
        return Concentration(amount, volume), volume
    except QuantityError as exc:
        raise _Refuse(
            PivError.UNITS_MISMATCH,
            at,
            f"drug amount {amount}: {exc.reason} (expected an amount of drug, "
            "such as mg, or a concentration such as mg/mL)",
        ) from None


def _rates(rxg: Segment) -> tuple[Quantity | None, Quantity | None, Quantity | None]:
    """(dose_rate, rate in mL/h, dose) from RXG-15/16, by the unit's dimension."""
    q = _field_quantity(rxg, 15, 16, "rate")
    if q is None:
        return None, None, None
    dimension = q.dimension
    if dimension == "volume/time":
        try:
            return None, q.to("mL/h"), None  # exact for a plain decimal: the factors are 60 and 1000
        except QuantityError as exc:
            raise _Refuse(PivError.UNITS_MISMATCH, _where(rxg, 16), f"{q}: {exc.reason}") from None
    if dimension.endswith("/time") and dimension.split("/")[0] in _AMOUNT_KINDS:
        return q, None, None
    if dimension.split("/")[0] in _AMOUNT_KINDS and not dimension.endswith("/volume"):
        return None, None, q
    raise _Refuse(
        PivError.UNITS_MISMATCH,
        _where(rxg, 16),
        f"{q} is not a rate, a dose rate or a dose (its unit is a {dimension})",
    )


def _duration(tq1: Segment | None) -> Quantity | None:
    if tq1 is None or not tq1.repetitions(13):
        return None
    at = _where(tq1, 13)
    parts: list[Quantity] = []
    for rep in range(len(tq1.repetitions(13))):
        q = _quantity(tq1.component(13, 1, rep), tq1.subcomponents(13, 2, rep), at, f"{at}.2", "duration")
        if q is not None:
            parts.append(_of_kind(q, "time", f"{at}.2", "duration") or q)
    if not parts:
        return None
    unit = next(u for u in _TIME_UNITS_SMALL_FIRST if any(p.unit == u for p in parts))
    if len(parts) == 1:
        return parts[0]
    try:
        return Quantity(sum((p.to(unit).value for p in parts), Decimal(0)), unit)
    except QuantityError as exc:
        raise _Refuse(PivError.UNITS_MISMATCH, at, f"duration: {exc.reason}") from None


def _route(give: _Give) -> str | None:
    if not give.rxr:
        return None
    rxr = give.rxr[0]
    return rxr.component(1, 1) or rxr.component(1, 2) or None


def _rxr_code(give: _Give, n: int) -> str | None:
    """RXR-3 (pump type, table 0164) or RXR-4 (administration method, table 0165): CWE-1, or CWE-2
    when CWE-1 is empty (``^IVPB^HL70165``). PCA is refused: PCA programs are not supported."""
    if not give.rxr:
        return None
    rxr = give.rxr[0]
    code = rxr.component(n, 1) or rxr.component(n, 2) or None
    if n == 3 and code is not None and code.upper() == "PCA":
        raise _Refuse(
            HL7_APPLICATION_ERROR,
            _where(rxr, 3),
            "a PCA pump order: PCA programs are not supported by this gateway (program the pump by hand)",
        )
    return code


def _name(pid: Segment) -> str | None:
    family = pid.subcomponent(5, 1, 1)
    rest = " ".join(p for p in (pid.component(5, 2), pid.component(5, 3)) if p)
    if family and rest:
        return f"{family}, {rest}"
    return family or rest or None


def _ordered_by(orc: Segment) -> str | None:
    ident = orc.component(19, 1)
    if ident:
        return ident
    name = " ".join(p for p in (orc.component(19, 3), orc.subcomponent(19, 2, 1)) if p)
    return name or None


@dataclass
class _Give:
    """One GIVE group: an RXG and the TQ1, RXR and OBX segments after it."""

    rxg: Segment
    tq1: list[Segment] = field(default_factory=list)
    rxr: list[Segment] = field(default_factory=list)
    obx: list[Segment] = field(default_factory=list)


@dataclass
class _Step:
    dose_rate: Quantity | None
    rate: Quantity | None
    dose: Quantity | None
    vtbi: Quantity | None
    duration: Quantity | None


def _give_values(give: _Give, order_tq1: Segment | None) -> _Step:
    rxg = give.rxg
    problems: list[OrderProblem] = []
    vtbi = _collect(
        problems,
        lambda: _of_kind(
            _field_quantity(rxg, 5, 7, "volume to be infused"),
            "volume",
            _where(rxg, 7),
            "volume to be infused",
        ),
    )
    rates = _collect(problems, lambda: _rates(rxg))
    own = give.tq1[0] if give.tq1 else None
    duration = _collect(problems, lambda: _duration(own))
    if order_tq1 is not None:
        early = _collect(problems, lambda: _duration(order_tq1))
        if early is not None and duration is not None and early != duration:
            problems.append(
                OrderProblem(
                    HL7_SEGMENT_SEQUENCE_ERROR,
                    _where(order_tq1, 13),
                    f"the order's TQ1 says {early} and the give's TQ1 says {duration}",
                )
            )
        duration = duration if duration is not None else early
    if problems:
        raise _Many(problems)
    dose_rate, rate, dose = rates or (None, None, None)
    return _Step(dose_rate, rate, dose, vtbi, duration)


class _Many(Exception):
    def __init__(self, problems: list[OrderProblem]) -> None:
        super().__init__(problems)
        self.problems = problems


def _collect(problems: list[OrderProblem], fn: Callable[[], T]) -> T | None:
    """``fn()``, or None with its problems added to ``problems``."""
    try:
        return fn()
    except _Refuse as refuse:
        problems.append(refuse.problem)
    except _Many as many:
        problems.extend(many.problems)
    return None


@dataclass
class _Attributes:
    """What the OBX segments say: the pump and the patient's measurements (one value each)."""

    pump: tuple[str, str | None] | None = None
    weight: Quantity | None = None
    height: Quantity | None = None
    bsa: Quantity | None = None
    _seen: dict[str, str] = field(default_factory=dict)

    def read(self, obx: Segment) -> None:
        code_text = obx.component(3, 1)
        code = int(code_text) if _digits(code_text) else _OBX_BY_REFID.get(obx.component(3, 2))
        if code in _PCA_CODES:
            raise _Refuse(
                HL7_APPLICATION_ERROR,
                _where(obx, 3),
                f"PCA parameter {code_text} {obx.component(3, 2)}: PCA programs are not supported by "
                "this gateway (program the pump by hand)",
            )
        if code == codes.VMD.code:
            self._keep("pump", _pump(obx), obx)
            return
        measurement = code in (codes.PT_WEIGHT.code, codes.PT_HEIGHT.code, codes.PT_BSA.code)
        status = obx.component(11)
        if measurement and status not in _USABLE_RESULT_STATUS:
            # HL7 table 0085: D deleted, W wrong (replaced), X cannot be obtained, P preliminary ...
            raise _Refuse(
                PivError.WEIGHT_MISMATCH if code == codes.PT_WEIGHT.code else HL7_DATA_TYPE_ERROR,
                _where(obx, 11),
                f"the measurement {obx.component(3, 2) or code_text} has result status {status!r}: "
                "only a final (F), corrected (C) or entered (R) value, or none, is used",
            )
        if code == codes.PT_WEIGHT.code:
            weight = _obx_quantity(obx, "weight")
            if weight is not None and weight.unit == "g":
                weight = Quantity(weight.value, "g{body}")  # a patient's mass, not a drug's
            self._keep("weight", _of_kind(weight, "body mass", _where(obx, 6), "weight"), obx)
        elif code == codes.PT_HEIGHT.code:
            self._keep(
                "height", _of_kind(_obx_quantity(obx, "height"), "length", _where(obx, 6), "height"), obx
            )
        elif code == codes.PT_BSA.code:
            self._keep(
                "bsa",
                _of_kind(
                    _obx_quantity(obx, "body surface area"), "area", _where(obx, 6), "body surface area"
                ),
                obx,
            )

    def _keep(self, name: str, value: object, obx: Segment) -> None:
        if value is None:
            return
        before = getattr(self, name)
        if before is not None and before != value:
            code = PivError.WEIGHT_MISMATCH if name == "weight" else HL7_SEGMENT_SEQUENCE_ERROR
            raise _Refuse(
                code,
                _where(obx, 18 if name == "pump" else 5),
                f"the order gives two different values for the {name}: {_shown(before)} "
                f"({self._seen[name]}) and {_shown(value)}",
            )
        setattr(self, name, value)
        self._seen.setdefault(name, _seg(obx))


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return "/".join(p for p in value if p)
    return str(value)


def _obx_quantity(obx: Segment, what: str) -> Quantity | None:
    return _field_quantity(obx, 5, 6, what)


def _pump(obx: Segment) -> tuple[str, str | None] | None:
    ident = obx.component(18, 1) or obx.component(18, 3)  # EI-1, or EI-3 in the deprecated form
    if not ident:
        return None
    pump, slash, channel = ident.partition("/")
    if not pump or (slash and (not channel or "/" in channel)):
        raise _Refuse(
            HL7_DATA_TYPE_ERROR,
            _where(obx, 18),
            f"pump identity {ident!r} is not '<pump>' or '<pump>/<channel>'",
        )
    return pump, channel or None


# --- reading: the message ------------------------------------------------------------------------


@dataclass
class _Structure:
    orc: Segment | None = None
    pid: Segment | None = None
    pv1: Segment | None = None
    order_tq1: Segment | None = None
    groups: list[_Give] = field(default_factory=list)


def _structure(msg: Hl7Message, problems: list[OrderProblem]) -> _Structure:
    """The segments of an RGV^O15 in their groups; what is missing, repeated or misplaced noted.
    Segments PIV does not use (SFT, NTE, AL1, PV2, RXO, RXE, RXC, TQ2...) are passed over, and so
    are the TQ1 and RXR of an order detail (RXO) or encoding (RXE) group before the first RXG."""
    found = _Structure()
    in_detail = False  # after an RXO or RXE, before the first RXG: its TQ1/RXR are not the give's

    def misplaced(seg: Segment, why: str) -> None:
        problems.append(OrderProblem(HL7_SEGMENT_SEQUENCE_ERROR, _seg(seg), why))

    for seg in msg.segments_in_order[1:]:
        name = seg.name
        if name == "PID":
            if found.pid is not None or found.orc is not None:
                misplaced(seg, "a second PID, or a PID after the ORC: an RGV^O15 carries one patient")
            else:
                found.pid = seg
        elif name == "PV1":
            if found.pid is None or found.pv1 is not None or found.orc is not None:
                misplaced(seg, "a PV1 belongs after the PID and before the ORC, once")
            else:
                found.pv1 = seg
        elif name == "ORC":
            if found.orc is not None:
                misplaced(seg, "more than one ORC: an RGV^O15 carries one order")
            else:
                found.orc = seg
        elif name == "RXG":
            if found.orc is None:
                misplaced(seg, "an RXG before the ORC")
            found.groups.append(_Give(seg))
        elif name in ("RXO", "RXE"):
            in_detail = not found.groups
        elif name in ("TQ1", "RXR", "OBX"):
            if in_detail and not found.groups and name != "OBX":
                continue
            if found.groups:
                group = found.groups[-1]
                kept = {"TQ1": group.tq1, "RXR": group.rxr, "OBX": group.obx}[name]
                if kept and name != "OBX":
                    misplaced(seg, f"a second {name} after {_seg(group.rxg)}: which one applies is ambiguous")
                kept.append(seg)
            elif name == "TQ1" and found.orc is not None and found.order_tq1 is None:
                found.order_tq1 = seg
            else:
                misplaced(seg, f"a {name} before the first RXG")
    if found.orc is None:
        problems.append(OrderProblem(HL7_SEGMENT_SEQUENCE_ERROR, "ORC", "the message has no ORC segment"))
    if not found.groups:
        problems.append(
            OrderProblem(HL7_SEGMENT_SEQUENCE_ERROR, "RXG", "the message has no RXG: nothing to give")
        )
    return found


def read_rgv_o15(
    msg: Hl7Message, *, require_profile_oid: bool = False, accepted_oids: frozenset[str] = PIV_OIDS
) -> Order:
    """The order that ``msg`` (a PCD-03 RGV^O15) carries. Raises OrderRefused with every problem
    found when the message is not an order or a value cannot be mapped unambiguously.

    ``require_profile_oid``: refuse a message whose MSH-21 names none of ``accepted_oids`` (the IHE
    examples name none; the setting is ``hl7.require_profile_oid``). OIDs are compared trimmed.
    """
    kind = msg.message_type
    if kind[:2] != ("RGV", "O15"):
        shown = "^".join(p for p in kind if p)
        raise OrderRefused(
            None,
            [
                OrderProblem(
                    HL7_UNSUPPORTED_MESSAGE_TYPE,
                    "MSH-9",
                    f"the message is of type {shown}, not an RGV^O15 infusion order (IHE PCD-03)",
                )
            ],
        )
    problems: list[OrderProblem] = []
    if require_profile_oid:
        oids = [p.oid for p in msg.profile_ids() if p.oid]
        if not any(oid in accepted_oids for oid in oids):
            problems.append(
                OrderProblem(
                    HL7_UNSUPPORTED_MESSAGE_TYPE,
                    "MSH-21",
                    f"MSH-21 names profile OID {', '.join(oids) or 'none'}; this gateway accepts "
                    f"{', '.join(sorted(accepted_oids))}",
                )
            )
    found = _structure(msg, problems)
    orc, pid = found.orc, found.pid
    order_id = orc.component(2, 1) if orc is not None else ""
    if orc is not None and not order_id:
        problems.append(OrderProblem(HL7_REQUIRED_FIELD_MISSING, "ORC-2", "the placer order number is empty"))
    patient_id = pid.component(3, 1) if pid is not None else ""
    if not patient_id:
        problems.append(
            OrderProblem(
                PivError.PATIENT_MISMATCH,
                "PID-3" if pid is not None else "PID",
                "the order names no patient identifier, so the patient cannot be confirmed",
            )
        )
    action = status = ordered_at = None
    if orc is not None:
        action = _collect(problems, lambda: _action(orc))
        status = _collect(problems, lambda: _status(orc))
        ordered_at = _collect(problems, lambda: _time(orc, 9))
    drug: Drug | None = None
    strength: tuple[Concentration | None, Quantity | None] | None = None
    first: _Step | None = None
    later: list[OrderStep] = []
    attributes = _Attributes()
    pump_type: str | None = None
    groups = found.groups
    for number, give in enumerate(groups):
        if number == 0:
            drug = _collect(problems, partial(_drug, give.rxg))
            strength = _collect(problems, partial(_strength, give.rxg))
            first = _collect(problems, partial(_give_values, give, found.order_tq1))
            _collect(problems, partial(_step_number, give.rxg, None))
            pump_type = _collect(problems, partial(_rxr_code, give, 3))
        else:
            _collect(problems, partial(_same_as_first, give.rxg, drug, strength))
            step = _collect(problems, partial(_later_step, give, groups[number - 1].rxg))
            if step is not None:
                later.append(step)
        for obx in give.obx:
            _collect(problems, partial(attributes.read, obx))
    if problems or orc is None or action is None or status is None or drug is None or first is None:
        raise OrderRefused(order_id or None, problems)
    concentration, container = strength or (None, None)
    pump, channel = attributes.pump or (None, None)
    pv1 = found.pv1
    return Order(
        order_id=order_id,
        source=OrderSource.HL7,
        patient_id=patient_id,
        drug=drug,
        action=action,
        status=status,
        concentration=concentration,
        container_volume=container,
        dose_rate=first.dose_rate,
        rate=first.rate,
        dose=first.dose,
        vtbi=first.vtbi,
        duration=first.duration,
        route=_route(groups[0]),
        pump_type=pump_type,
        line=_rxr_code(groups[0], 4),
        weight=attributes.weight,
        height=attributes.height,
        bsa=attributes.bsa,
        pump_id=pump,
        channel=channel,
        ordered_at=ordered_at,
        ordered_by=_ordered_by(orc),
        parent_order_id=orc.subcomponent(8, 1, 1) or None,
        encounter=(pv1.component(19, 1) or None) if pv1 is not None else None,
        patient_name=_name(pid) if pid is not None else None,
        later_steps=tuple(later),
        received_from=msg.control_id,
    )


def _step_number(rxg: Segment, previous: Segment | None) -> int | None:
    text = rxg.component(1)
    if not text:
        if previous is None:
            return None  # a single-step order may leave it out
        raise _Refuse(
            HL7_REQUIRED_FIELD_MISSING, _where(rxg, 1), "a later step of a program needs its number"
        )
    if not _digits(text) or int(text) < 1:
        raise _Refuse(HL7_DATA_TYPE_ERROR, _where(rxg, 1), f"step number {text!r} is not a positive integer")
    number = int(text)
    if previous is not None:
        before = previous.component(1)
        if _digits(before) and number <= int(before):
            raise _Refuse(
                HL7_SEGMENT_SEQUENCE_ERROR,
                _where(rxg, 1),
                f"step {number} comes after step {before}: steps must be in increasing order",
            )
    return number


def _same_as_first(
    rxg: Segment, drug: Drug | None, strength: tuple[Concentration | None, Quantity | None] | None
) -> None:
    """A later step may repeat the drug and container, never change them (an Order has one)."""
    if rxg.component(4, 1) and drug is not None:
        this = _drug(rxg)
        if (this.code, this.system) != (drug.code, drug.system):
            raise _Refuse(
                HL7_APPLICATION_ERROR,
                _where(rxg, 4),
                f"step changes the drug from {drug} to {this}: a multistep program gives one drug",
            )
    own = _strength(rxg)
    if own != (None, None) and strength is not None and own != strength:
        raise _Refuse(
            HL7_APPLICATION_ERROR,
            _where(rxg, 17),
            "step changes the concentration or container: a multistep program runs from one container",
        )


def _later_step(give: _Give, previous: Segment) -> OrderStep:
    problems: list[OrderProblem] = []
    number = _collect(problems, lambda: _step_number(give.rxg, previous))
    values = _collect(problems, partial(_give_values, give, None))
    if values is not None and values.dose is not None:
        problems.append(
            OrderProblem(
                HL7_APPLICATION_ERROR,
                _where(give.rxg, 16),
                f"a later step of a program gives a dose ({values.dose}), not a rate",
            )
        )
    if problems or number is None or values is None:
        raise _Many(problems)
    return OrderStep(
        number=number,
        dose_rate=values.dose_rate,
        rate=values.rate,
        vtbi=values.vtbi,
        duration=values.duration,
    )


# --- building --------------------------------------------------------------------------------------


def _unit_cwe(unit: str, sep: Callable[..., str] = components) -> str:
    """A unit as CWE: MDC first with the UCUM alternate when the MDC table has it, else UCUM only."""
    mdc = UNIT_BY_UCUM.get("g" if unit == "g{body}" else unit)
    if mdc is not None:
        return sep(str(mdc.code), mdc.refid, codes.MDC_SYSTEM, escape(mdc.ucum), escape(mdc.ucum), "UCUM")
    return sep(escape(unit), escape(unit), "UCUM")


def _number(q: Quantity | None) -> str:
    return hl7_decimal(q.value) if q is not None else ""


def _unit(q: Quantity | None) -> str:
    return _unit_cwe(q.unit) if q is not None else ""


def _strength_fields(order: Order) -> tuple[Quantity | None, str, Quantity | None]:
    """(RXG-17 value, RXG-18 unit, RXG-23 volume) for the order's concentration and container."""
    conc, container = order.concentration, order.container_volume
    if conc is None:
        return None, "", container
    if container is not None and container == conc.volume:
        return conc.amount, conc.amount.unit, container
    if conc.volume.value == 1:
        ratio = f"{conc.amount.unit}/{conc.volume.unit}"
        return Quantity(conc.amount.value, ratio), ratio, container
    raise Hl7Error(
        f"order {order.order_id}: concentration {conc} with container {container} cannot be written "
        "in RXG-17/23 (the container must be the concentration's volume, or the concentration per 1 mL)"
    )


def _rxg(order: Order, number: int, *, vtbi: Quantity | None, rate: Quantity | None) -> str:
    amount, amount_unit, volume = _strength_fields(order)
    fields = [""] * 24
    fields[0] = str(number)
    fields[3] = components(
        escape(order.drug.code), escape(order.drug.name or ""), escape(order.drug.system or "")
    )
    fields[4], fields[6] = _number(vtbi), _unit(vtbi)
    fields[14], fields[15] = _number(rate), _unit(rate)
    fields[16], fields[17] = _number(amount), _unit_cwe(amount_unit) if amount_unit else ""
    fields[22], fields[23] = _number(volume), _unit(volume)
    return segment("RXG", *fields)


def _tq1(duration: Quantity | None) -> str:
    if duration is None:
        return segment("TQ1", "1")
    return segment(
        "TQ1", "1", *[""] * 11, components(_number(duration), _unit_cwe(duration.unit, subcomponents))
    )


def _rxr(order: Order) -> str:
    if order.route is None:
        raise Hl7Error(f"order {order.order_id} has no route: RXR-1 is required in an RGV^O15")
    # RXR-3 the pump type when the order has one; RXR-4 (administration method, CP-PCD-159) the
    # order's line, IV (primary) when it says none.
    pump_type = components(escape(order.pump_type), "", "HL70164") if order.pump_type else ""
    return segment(
        "RXR",
        components(escape(order.route), "", "HL70162"),
        "",
        pump_type,
        components(escape(order.line or "IV"), "", "HL70165"),
    )


def _obx(set_id: int, code: codes.Mdc, value: Quantity) -> str:
    return segment(
        "OBX", str(set_id), "NM", code.cwe(), "", _number(value), _unit(value), "", "", "", "", "F"
    )


def _pump_obx(set_id: int, order: Order) -> str:
    if order.pump_id is None:
        raise Hl7Error(f"order {order.order_id} names channel {order.channel} but no pump")
    ident = order.pump_id if order.channel is None else f"{order.pump_id}/{order.channel}"
    fields = [""] * 18
    fields[0], fields[2], fields[10], fields[17] = str(set_id), codes.VMD.cwe(), "X", escape(ident)
    return segment("OBX", *fields)


def _observations(order: Order) -> list[str]:
    """The OBX segments of a GIVE group: the pump identity, then the patient's measurements."""
    found: list[str] = []
    if order.pump_id is not None or order.channel is not None:
        found.append(_pump_obx(1, order))
    measured = [(codes.PT_WEIGHT, order.weight), (codes.PT_HEIGHT, order.height), (codes.PT_BSA, order.bsa)]
    for code, value in measured:
        if value is not None:
            found.append(_obx(len(found) + 1, code, value))
    if not found:
        raise Hl7Error(
            f"order {order.order_id} names no pump and no patient measurement: an RGV^O15 needs an OBX"
        )
    return found


def _single_rate(order: Order) -> Quantity | None:
    given = [q for q in (order.dose_rate, order.rate, order.dose) if q is not None]
    if len(given) > 1:
        raise Hl7Error(
            f"order {order.order_id} gives {' and '.join(map(str, given))}: RXG-15 holds one of them"
        )
    return given[0] if given else None


def build_rgv_o15(order: Order, *, control_id: str, at: datetime, sender: Party, receiver: Party) -> bytes:
    """A PCD-03 RGV^O15 for ``order`` (v2.6, MSH-15/16 AL, MSH-21 the PIV profile with its OID,
    ORC-9 from ``order.ordered_at``, RXR-4, the pump identity in OBX-18 EI-1), as the eMAR sends it.

    Raises Hl7Error for an order the message cannot express: no ``ordered_at`` (or one without a
    zone), no route, more than one of dose_rate/rate/dose, a channel without a pump, a concentration
    that is neither "amount in the container's volume" nor "amount per 1 mL".
    """
    if order.ordered_at is None:
        raise Hl7Error(f"order {order.order_id} has no ordered_at: ORC-9 is required in an RGV^O15")
    family, _, given = (order.patient_name or "").partition(", ")
    lines = [
        msh(
            sender=sender,
            receiver=receiver,
            message_type="RGV^O15^RGV_O15",
            control_id=control_id,
            at=at,
            accept_ack="AL",
            application_ack="AL",
            profile=codes.PCD_03_PIV,
        ),
        # PID-5 is required: the HL7 null when the order gives no name (read back as None).
        segment(
            "PID", "", "", escape(order.patient_id), "", components(escape(family), escape(given)) or '""'
        ),
    ]
    if order.encounter is not None:
        lines.append(segment("PV1", "", "U", *[""] * 16, escape(order.encounter)))
    orc = [""] * 19
    orc[0], orc[1] = _ACTION_CODES[order.action], escape(order.order_id)
    if order.status != "active":
        try:
            orc[4] = _STATUS_CODES[order.status]
        except KeyError:
            raise Hl7Error(f"order status {order.status!r} has no ORC-5 code") from None
    orc[7] = escape(order.parent_order_id or "")
    orc[8] = hl7_time(order.ordered_at)
    orc[18] = escape(order.ordered_by or "")
    lines.append(segment("ORC", *orc))
    lines += [
        _rxg(order, 1, vtbi=order.vtbi, rate=_single_rate(order)),
        _tq1(order.duration),
        _rxr(order),
    ]
    observations = _observations(order)
    lines += observations
    previous = 1
    for step in order.later_steps:
        if step.number <= previous:
            raise Hl7Error(f"order {order.order_id}: step {step.number} after step {previous}")
        previous = step.number
        rates = [q for q in (step.dose_rate, step.rate) if q is not None]
        if len(rates) > 1:
            raise Hl7Error(f"order {order.order_id} step {step.number} gives both a dose rate and a rate")
        lines += [
            _rxg(order, step.number, vtbi=step.vtbi, rate=rates[0] if rates else None),
            _tq1(step.duration),
            _rxr(order),
            # Every GIVE group needs an observation (HL7 2.6 RGV_O15): the same ones again, which
            # the reader checks agree with the first.
            *observations,
        ]
    return message(lines)
