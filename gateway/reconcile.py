"""Reconciliation: the order, the scanned container and what is about to be programmed agree (pure).

:func:`reconcile` compares three things at the bedside, before DERS checks the programming against
the drug library and before anything is sent to a pump:

- the **order** (:class:`~pumpgw.gateway.orders.Order`, from HL7 PIV or FHIR);
- the **container** the nurse scanned (:class:`ContainerFacts`): a manufacturer's pack resolved
  through the library by its GTIN (:func:`container_from_gtin`), or a pharmacy label that names
  the order it was made for (:func:`container_from_label`: its drug, concentration and volume are
  that order's own, flagged as *from the label*);
- the **programming** (:class:`Planned`): the library entry, concentration, dose, rate, VTBI,
  duration, bolus, route and weight that will be programmed on the scanned pump channel.

It returns a :class:`Reconciliation` with one :class:`ReconCheck` per check, always the same
checks in the same order (:data:`CHECKS`), each with its outcome (``match``, ``mismatch``,
``not-checkable``), the expected value and the value found *with their units*, a code an engineer
looks up and a sentence a nurse understands. :attr:`Reconciliation.ok` is true only when every
check matches. No check is skipped: one that cannot be made is a failed check that says why
(``not-checkable``), never a pass. :meth:`Reconciliation.to_payload` is the
``reconciliation.result`` event payload (``gateway/events.py`` ReconciliationResult).

The checks (DESIGN.md "The safety core"; issue 7):

``patient``
    the wristband = the order's patient = the patient the pump channel is associated with (when
    it is) = the patient a pharmacy label names (when it does). Identifiers compare exactly.
``pump``
    the pump (and channel) the order names, when it names one (PIV OBX-18), = the one scanned.
``drug``
    the container's drug = the order's drug, and the library entry to program is the container's
    (a GTIN names one product, so one entry) or, for a label, carries the order's code. Compared
    **by code only**: the order's code and system (a library system name in any case, the FHIR
    system URI, or the OID; :func:`library_code_system`) against the entry's ``codes``. A drug
    that matches only by name, or whose code system is unknown or absent, is *not verifiable*.
``concentration``
    container = order = programmed, exactly, through
    :meth:`~pumpgw.gateway.dose.Concentration.compare` (2500 ug in 50 mL = 50 ug/mL = 0.05 mg/mL;
    never a rounded per-mL value). This is the check that stops the fentanyl incidents.
``dose``, ``rate``, ``bolus``, ``vtbi``, ``duration``
    the order = the programming, within :attr:`ReconcilePolicy.tolerance_percent` of the ordered
    value (default 0: exact). A value in another dimension (a bolus in mL for one ordered in ug)
    is a units mismatch, never converted into agreement. ``dose`` is a dose rate (``ug/kg/min``),
    ``rate`` a flow (``mL/h``), ``bolus`` an amount (the order's ``dose``). When the order gives a
    dose rate and the programming gives the dose too, a mL/h on only one side is not compared: the
    pump is programmed by the dose, DERS derives the mL/h and checks that it delivers the dose; the
    ``rate`` check says so.
``route``
    the order's route = the route to program (HL7 table 0162 codes, compared case-insensitively).
``weight``
    the order's weight = the weight the nurse entered, within
    :attr:`ReconcilePolicy.weight_tolerance_percent` (default 0). When any dose is per kg both must
    be there: one missing is *not checkable* (9019). When no dose is per kg, a weight on one side
    only is reported and passes; two that differ still fail (another patient's data).
``container``
    the container's volume >= the VTBI, and >= the bolus as a volume (through the container's
    concentration, and the weight for a per-kg bolus). An unknown container volume with a VTBI or
    bolus to program is *not checkable*.
``steps`` (only for a multistep order)
    *not checkable*: only a program's first step is reconciled, so a multistep order is refused.

**A value one side states and the other does not.** The order states it, the programming does
not: a mismatch (``PGW-206``); the programming would not do what was ordered. The programming
states it, the order does not: a mismatch (``PGW-205``), except for the parameters in
:attr:`ReconcilePolicy.not_ordered_ok`, by default ``vtbi`` and ``duration`` (an order for a
continuous infusion rarely states a VTBI; the nurse sets one, and the container check and DERS
bound it). The **route** is not in that default: an order that states no route fails the route
check unless the ward's policy adds ``"route"``.

Codes (IHE PIV application error codes where one fits, ``../shared/reference/ihe-pcd.md``;
otherwise ``PGW-2xx``, this module's own; DERS uses ``PGW-1xx``):

========  =====================================================================================
9009      units mismatch: two values of different dimensions, or a value in the wrong one
9010      the scanned GTIN is in no library entry (:func:`container_from_gtin`)
9011      weight mismatch: the order's weight and the entered one differ
9012      patient mismatch, or a patient identifier missing
9019      weight missing for a per-kg dose
PGW-200   match
PGW-201   drug mismatch: the container's, the order's or the programmed entry's drug differ
PGW-202   drug not verifiable: no code, an unknown code system, no code of that system to compare
          with, or no library entry to program (a basic infusion)
PGW-203   concentration mismatch
PGW-204   a programmed value differs from the ordered one beyond the tolerance
PGW-205   a value is programmed that the order does not state (and the policy does not allow)
PGW-206   a value the order states is not programmed
PGW-207   route mismatch
PGW-208   more than the container holds (VTBI or bolus volume)
PGW-209   a value the check needs is not known (a concentration, the container's volume)
PGW-210   pump or channel mismatch: the order names another pump
PGW-211   the pharmacy label was made for another order
PGW-212   the scanned GTIN is in several library entries (:func:`container_from_gtin`)
PGW-213   a pharmacy label that names no order (:func:`container_from_label`)
PGW-214   a multistep order: only the first step would be reconciled
========  =====================================================================================

Only :class:`ReconcileError` is raised: for a policy that makes no sense, or a label paired with
an order it does not name (a caller's mistake). Every bad clinical input is a failed check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Context, Decimal, DecimalException, Inexact, localcontext
from enum import StrEnum
from typing import Final

from .ders import say, say_concentration
from .dose import Concentration, MissingFactor, convert
from .errors import PumpGwError, QuantityError
from .library import CODE_SYSTEMS, Library, canonical_number
from .library import Drug as LibraryEntry
from .orders import Drug as OrderedDrug
from .orders import Order, PivError
from .quantity import Quantity, base_value, is_flow, unit_parts
from .scan_types import LabelScan, MedicationScan


class ReconcileError(PumpGwError):
    """Reconciliation was asked something meaningless (``what``: the argument; ``detail``: why)."""

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        self.detail = detail
        super().__init__(f"reconciliation: {what}: {detail}")


class Outcome(StrEnum):
    """The outcomes of ``gateway/events.py`` ReconciliationResult.ReconCheck."""

    MATCH = "match"
    MISMATCH = "mismatch"
    NOT_CHECKABLE = "not-checkable"


class Code(StrEnum):
    """Stable codes (see the module docstring). Four digits: IHE PIV; ``PGW-2xx``: ours."""

    UNITS_MISMATCH = PivError.UNITS_MISMATCH.value
    NOT_IN_LIBRARY = PivError.NOT_IN_LIBRARY.value
    WEIGHT_MISMATCH = PivError.WEIGHT_MISMATCH.value
    PATIENT_MISMATCH = PivError.PATIENT_MISMATCH.value
    WEIGHT_MISSING = PivError.WEIGHT_MISSING.value
    MATCH = "PGW-200"
    DRUG_MISMATCH = "PGW-201"
    DRUG_UNVERIFIABLE = "PGW-202"
    CONCENTRATION_MISMATCH = "PGW-203"
    DIFFERS = "PGW-204"
    NOT_ORDERED = "PGW-205"
    NOT_PROGRAMMED = "PGW-206"
    ROUTE_MISMATCH = "PGW-207"
    CONTAINER_TOO_SMALL = "PGW-208"
    VALUE_UNKNOWN = "PGW-209"
    PUMP_MISMATCH = "PGW-210"
    LABEL_OTHER_ORDER = "PGW-211"
    AMBIGUOUS_GTIN = "PGW-212"
    LABEL_WITHOUT_ORDER = "PGW-213"
    MULTISTEP = "PGW-214"


#: The checks of every reconciliation, in order (``steps`` is added for a multistep order only).
CHECKS: Final = (
    "patient",
    "pump",
    "drug",
    "concentration",
    "dose",
    "rate",
    "bolus",
    "vtbi",
    "duration",
    "route",
    "weight",
    "container",
)

#: Parameters a policy may allow to be programmed when the order does not state them.
NOT_ORDERED_CHOICES: Final = frozenset({"vtbi", "duration", "route"})

# How an order names the code system of its drug code -> the library's system name (docs/library.md).
# The library's own names are matched in any case (HL7 v2 RXG-4.3 carries a name as written: RXNORM,
# NDC); the URIs are those FHIR uses (the same as rig/emar_data.py DRUG_SYSTEM_URIS, which a test
# keeps in step) and are matched exactly; the OIDs are RxNorm's and NDC's (HL7 terminology,
# NamingSystem v3-rxNorm / v3-ndc), bare or as urn:oid:.
_SYSTEM_URIS: Final[Mapping[str, str]] = {
    "http://www.nlm.nih.gov/research/umls/rxnorm": "rxnorm",
    "http://hl7.org/fhir/sid/ndc": "ndc",
    "https://www.gs1.org/gtin": "gtin",
    "https://dmd.nhs.uk": "dmd",
    "urn:pumpgw:local-drug": "local",
    "2.16.840.1.113883.6.88": "rxnorm",
    "urn:oid:2.16.840.1.113883.6.88": "rxnorm",
    "2.16.840.1.113883.6.69": "ndc",
    "urn:oid:2.16.840.1.113883.6.69": "ndc",
}

# Tolerances and comparisons are computed exactly; this context is wide enough for any clinical
# number and traps Inexact, so a comparison that could not be exact says so instead of rounding.
_EXACT: Final = Context(prec=200, traps=[Inexact])
_DISPLAY: Final = Context(prec=34)


def library_code_system(system: str | None) -> str | None:
    """The library's name (``rxnorm``, ``gtin``, ``ndc``, ``dmd``, ``local``) for the code system an
    order names: the name in any case, its FHIR URI or its OID; None for anything else."""
    if system is None:
        return None
    text = system.strip()
    if text.casefold() in CODE_SYSTEMS:
        return text.casefold()
    return _SYSTEM_URIS.get(text)


# -- the three things compared -------------------------------------------------------------------


class ContainerSource(StrEnum):
    GTIN = "gtin"  # a manufacturer's pack, resolved through the drug library
    LABEL = "label"  # a pharmacy-prepared container: the order's own facts, from the label


@dataclass(frozen=True, slots=True)
class ContainerFacts:
    """What the scanned container is. Build it with :func:`container_from_gtin` or
    :func:`container_from_label`.

    ``entry`` is the library entry of a GTIN pack; ``labelled_drug``, ``order_id`` and
    ``patient_id`` are the order (and patient) a pharmacy label was made for. ``concentration``
    and ``volume`` are None when the source does not give them (a variable-concentration entry, an
    order without a container volume); the checks that need them then cannot pass.
    """

    source: ContainerSource
    identifier: str  # the GTIN (14 digits), or the label's order id
    description: str  # how the nurse knows it: "fentaNYL 50 microgram/mL (GTIN 09521234543213)"
    concentration: Concentration | None
    volume: Quantity | None
    entry: LibraryEntry | None = None
    labelled_drug: OrderedDrug | None = None
    order_id: str | None = None
    patient_id: str | None = None
    lot: str | None = None
    expiry: date | None = None
    serial: str | None = None

    @property
    def from_label(self) -> bool:
        return self.source is ContainerSource.LABEL


@dataclass(frozen=True, slots=True)
class ContainerRefused:
    """A scan that names no container the gateway can reconcile: the code, the scan and why."""

    code: Code
    scanned: str
    reason: str

    def __str__(self) -> str:
        return f"{self.reason} (code {self.code})"


def _gtin14(code: str) -> str:
    # GTIN-8/12/13 are left-padded with zeros to 14 digits for lookup (barcodes.md §6.3).
    return code.zfill(14)


def container_from_gtin(scan: MedicationScan, library: Library) -> ContainerFacts | ContainerRefused:
    """The library entry whose ``codes.gtin`` holds the scanned GTIN (compared as GTIN-14), with its
    fixed concentration and, as the container's volume, the volume that concentration is written
    in (a library writes a pack's strength as its content: 2500 ug in 50 mL).

    Refused (not raised) when no entry has the GTIN (9010), or several do (PGW-212; a valid
    library never has that). A variable-concentration entry gives no concentration or volume.
    """
    wanted = _gtin14(scan.gtin)
    entries = [d for d in library.doc.drugs if any(_gtin14(g) == wanted for g in d.codes.gtin)]
    if not entries:
        return ContainerRefused(
            Code.NOT_IN_LIBRARY,
            scan.gtin,
            f"the pack scanned (GTIN {scan.gtin}) is not in the drug library ({library.label}): "
            "it cannot be checked against the order",
        )
    if len(entries) > 1:
        names = ", ".join(d.id for d in entries)
        return ContainerRefused(
            Code.AMBIGUOUS_GTIN,
            scan.gtin,
            f"GTIN {scan.gtin} is in several library entries ({names}): the library must be corrected",
        )
    entry = entries[0]
    spec = entry.concentration
    concentration: Concentration | None = None
    volume: Quantity | None = None
    if spec is not None and not spec.variable and spec.amount is not None and spec.volume is not None:
        try:
            concentration = Concentration(spec.amount, spec.volume)
        except QuantityError:  # library_check refuses such an entry; unknown, never guessed
            concentration = None
        else:
            volume = spec.volume
    return ContainerFacts(
        source=ContainerSource.GTIN,
        identifier=wanted,
        description=f"{entry.display_name} (GTIN {wanted})",
        concentration=concentration,
        volume=volume,
        entry=entry,
        lot=scan.lot,
        expiry=scan.expiry,
        serial=scan.serial,
    )


def container_from_label(label: LabelScan, labelled_order: Order) -> ContainerFacts | ContainerRefused:
    """A pharmacy-prepared container: the drug, concentration and container volume of the order
    the label names (``labelled_order``, which the caller looked up by ``label.order_id``), and the
    patient the label names, if any.

    Refused (PGW-213) when the label names no order (a dispense id alone cannot be resolved here).
    Raises ReconcileError when ``labelled_order`` is not the order the label names.
    """
    if label.order_id is None:
        return ContainerRefused(
            Code.LABEL_WITHOUT_ORDER,
            label.raw,
            "the pharmacy label names no order, so what the container holds is not known",
        )
    if label.order_id != labelled_order.order_id:
        raise ReconcileError(
            "labelled_order",
            f"the label names order {label.order_id!r}, not {labelled_order.order_id!r}",
        )
    return ContainerFacts(
        source=ContainerSource.LABEL,
        identifier=label.order_id,
        description=f"pharmacy-prepared {_ordered_name(labelled_order.drug)} (label for order "
        f"{label.order_id})",
        concentration=labelled_order.concentration,
        volume=labelled_order.container_volume,
        labelled_drug=labelled_order.drug,
        order_id=labelled_order.order_id,
        patient_id=label.patient_id,
    )


@dataclass(frozen=True, slots=True)
class Planned:
    """What will be programmed: on which pump channel, which library entry (None: a basic infusion,
    no entry), and the values, each with its unit.

    ``dose_rate`` is a dose rate (``ug/kg/min``) or a flow (``mL/h``) as :class:`Order` has it;
    ``rate`` the mL/h when given alongside a dose rate; ``bolus`` the amount to give (the
    counterpart of :attr:`Order.dose`: a bolus, or the amount of an intermittent dose).
    ``weight`` is the weight the nurse entered. ``channel`` is the scanned channel (PumpScan's int,
    or text); it is compared with the order's as text (``2`` = ``"2"``).
    """

    pump_id: str
    channel: str | int | None
    drug: LibraryEntry | None
    concentration: Concentration | Quantity | None = None
    dose_rate: Quantity | None = None
    rate: Quantity | None = None
    bolus: Quantity | None = None
    vtbi: Quantity | None = None
    duration: Quantity | None = None
    route: str | None = None
    weight: Quantity | None = None


@dataclass(frozen=True, slots=True)
class ReconcilePolicy:
    """What the ward allows. ``tolerance_percent`` (dose, rate, bolus, VTBI, duration) and
    ``weight_tolerance_percent``: how far, in percent of the ordered value, the programmed value
    may lie (inclusive); 0 is exact. ``not_ordered_ok``: parameters (``vtbi``, ``duration``,
    ``route``) that may be programmed when the order does not state them.
    ``unqualified_code_system``: the code system of drug codes that an order gives without one
    (an HL7 feed whose RXG-4 carries no coding system); None refuses such codes as unverifiable.

    Raises ReconcileError for a tolerance that is not a Decimal from 0 to 100, an unknown
    parameter or an unknown code system.
    """

    tolerance_percent: Decimal = Decimal(0)
    weight_tolerance_percent: Decimal = Decimal(0)
    not_ordered_ok: frozenset[str] = frozenset({"vtbi", "duration"})
    unqualified_code_system: str | None = None

    def __post_init__(self) -> None:
        for name in ("tolerance_percent", "weight_tolerance_percent"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite() or not 0 <= value <= 100:
                raise ReconcileError(name, f"{value!r} must be a Decimal from 0 to 100 (percent)")
        unknown = set(self.not_ordered_ok) - NOT_ORDERED_CHOICES
        if unknown:
            raise ReconcileError(
                "not_ordered_ok",
                f"{', '.join(sorted(unknown))} not one of {', '.join(sorted(NOT_ORDERED_CHOICES))}",
            )
        if self.unqualified_code_system is not None and self.unqualified_code_system not in CODE_SYSTEMS:
            raise ReconcileError(
                "unqualified_code_system",
                f"{self.unqualified_code_system!r} is not one of {', '.join(CODE_SYSTEMS)}",
            )


# -- the result ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReconCheck:
    """One check: ``expected`` is the order's value, ``actual`` what the container or the
    programming has (each with its unit, as text), ``detail`` the sentence for the nurse."""

    check: str
    outcome: Outcome
    code: Code
    expected: str | None
    actual: str | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.MATCH

    def to_payload(self) -> dict[str, object]:
        reason = f"{self.detail} (code {self.code})"
        if len(reason) > 4000:  # the payload's Text limit; the code stays visible at the end
            reason = f"{self.detail[: 4000 - len(self.code) - 10]}… (code {self.code})"
        return {
            "check": self.check,
            "outcome": self.outcome.value,
            "expected": self.expected,
            "found": self.actual,
            "reason": reason,
        }


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """Every check of one reconciliation. ``ok`` only when every check matches."""

    order_id: str
    checks: tuple[ReconCheck, ...]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failures(self) -> tuple[ReconCheck, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def summary(self) -> str:
        """The failed checks in one line for the nurse's screen (empty when every check matches)."""
        return " ".join(f"{c.detail} (code {c.code})" for c in self.failures())

    def check(self, name: str) -> ReconCheck:
        """The check called ``name``. Raises KeyError if there is none."""
        for c in self.checks:
            if c.check == name:
                return c
        raise KeyError(name)

    def to_payload(self) -> dict[str, object]:
        """The ``reconciliation.result`` event payload (gateway/events.py ReconciliationResult)."""
        return {
            "verdict": "matched" if self.ok else "mismatch",
            "checks": [c.to_payload() for c in self.checks],
        }


# -- the checks ----------------------------------------------------------------------------------


def _match(check: str, expected: str | None, actual: str | None, detail: str) -> ReconCheck:
    return ReconCheck(check, Outcome.MATCH, Code.MATCH, expected, actual, detail)


def _mismatch(check: str, code: Code, expected: str | None, actual: str | None, detail: str) -> ReconCheck:
    return ReconCheck(check, Outcome.MISMATCH, code, expected, actual, detail)


def _unknown(check: str, code: Code, expected: str | None, actual: str | None, detail: str) -> ReconCheck:
    return ReconCheck(check, Outcome.NOT_CHECKABLE, code, expected, actual, f"Not checkable: {detail}")


def _text(q: Quantity | Concentration | None) -> str | None:
    return None if q is None else str(q)


def _num(value: Decimal) -> str:
    text = canonical_number(_DISPLAY.plus(value))
    if "." in text:
        whole, frac = text.split(".")
        if len(frac) > 4:
            text = f"{whole}.{frac[:4]}…"
    return text


def _say_conc(c: Concentration) -> str:
    """``2500 microgram in 50 mL (50 microgram/mL)``: as written, and per mL (never silently rounded:
    a per-mL value with more than four decimals is cut and marked with an ellipsis)."""
    written = say_concentration(c)
    if c.volume.value == 1 and c.volume.unit == "mL":
        return written
    per_ml = _DISPLAY.divide(c.amount.value, base_value(c.volume))
    return f"{written} ({say(Quantity(per_ml, f'{c.amount.unit}/mL'))})"


def _ordered_name(drug: OrderedDrug) -> str:
    return drug.name or f"drug {drug.code}"


def _patient(order: Order, container: ContainerFacts, scanned: str, pump_patient: str | None) -> ReconCheck:
    expected = order.patient_id
    sides = [("wristband", scanned)]
    if pump_patient is not None:
        sides.append(("pump channel", pump_patient))
    if container.patient_id is not None:
        sides.append(("pharmacy label", container.patient_id))
    actual = "; ".join(f"{where} {who}" for where, who in sides)
    if not expected.strip():
        return _unknown(
            "patient", Code.PATIENT_MISMATCH, expected, actual, "the order names no patient identifier."
        )
    blank = [where for where, who in sides if not who.strip()]
    if blank:
        return _unknown(
            "patient",
            Code.PATIENT_MISMATCH,
            expected,
            actual,
            f"the {' and the '.join(blank)} gave no patient identifier.",
        )
    wrong = [(where, who) for where, who in sides if who != expected]
    if wrong:
        found = "; ".join(f"the {where} is patient {who}" for where, who in wrong)
        return _mismatch(
            "patient",
            Code.PATIENT_MISMATCH,
            expected,
            actual,
            f"Wrong patient: the order is for patient {expected}, but {found}. Stop: do not program.",
        )
    where = ", ".join(w for w, _ in sides)
    return _match(
        "patient", expected, actual, f"The order and the {where} are the same patient ({expected})."
    )


def _pump(order: Order, planned: Planned) -> ReconCheck:
    channel = None if planned.channel is None else str(planned.channel).strip()
    actual = planned.pump_id + (f"/{channel}" if channel is not None else "")
    if order.pump_id is None:
        return _match(
            "pump", None, actual, f"The order names no pump; it is to run on the pump scanned ({actual})."
        )
    expected = order.pump_id + (f"/{order.channel}" if order.channel is not None else "")
    same = order.pump_id == planned.pump_id and (order.channel is None or order.channel.strip() == channel)
    if not same:
        return _mismatch(
            "pump",
            Code.PUMP_MISMATCH,
            expected,
            actual,
            f"The order was sent for pump {expected}, but pump {actual} was scanned. "
            "Use that pump, or have the order sent for this one.",
        )
    return _match("pump", expected, actual, f"The pump scanned ({actual}) is the one the order names.")


def _order_code(drug: OrderedDrug, policy: ReconcilePolicy) -> tuple[str, str] | str:
    """(library system name, code), or why the order's drug cannot be identified by code."""
    if not drug.code.strip():
        return f"the order gives no drug code (only {drug.name!r})" if drug.name else "no drug code"
    if drug.system is None or not drug.system.strip():
        if policy.unqualified_code_system is not None:
            return (policy.unqualified_code_system, drug.code.strip())
        return (
            f"the order's drug code {drug.code} names no code system, and a drug is never matched by "
            "its name alone"
        )
    system = library_code_system(drug.system)
    if system is None:
        return f"the order's drug code system {drug.system!r} is not one the drug library uses"
    return (system, drug.code.strip())


def _same_code(system: str, a: str, b: str) -> bool:
    return _gtin14(a) == _gtin14(b) if system == "gtin" else a == b


def _entry_has(entry: LibraryEntry, key: tuple[str, str]) -> bool | None:
    """Whether ``entry`` carries the code; None when it has no code of that system to compare."""
    system, code = key
    codes: list[str] = getattr(entry.codes, system)
    if not codes:
        return None
    return any(_same_code(system, code, c) for c in codes)


def _drug(order: Order, container: ContainerFacts, planned: Planned, policy: ReconcilePolicy) -> ReconCheck:
    ordered = order.drug
    key = _order_code(ordered, policy)
    expected = f"{ordered.system}|{ordered.code}" if ordered.system else ordered.code
    entry = planned.drug
    actual = f"container {container.description}; to program: " + (
        f"library entry {entry.id}" if entry else "no library entry"
    )
    name = _ordered_name(ordered)
    if isinstance(key, str):
        return _unknown("drug", Code.DRUG_UNVERIFIABLE, expected, actual, f"{key}.")
    system, code = key
    # The container against the order.
    if container.source is ContainerSource.LABEL:
        if container.order_id != order.order_id:
            return _mismatch(
                "drug",
                Code.LABEL_OTHER_ORDER,
                expected,
                actual,
                f"The pharmacy label is for order {container.order_id}, not for this order "
                f"({order.order_id}). Do not use this container.",
            )
        labelled = container.labelled_drug
        labelled_key = None if labelled is None else _order_code(labelled, policy)
        if not isinstance(labelled_key, tuple) or labelled_key[0] != system:
            return _unknown(
                "drug",
                Code.DRUG_UNVERIFIABLE,
                expected,
                actual,
                "the pharmacy label's drug has no code in the order's code system.",
            )
        if not _same_code(system, labelled_key[1], code):
            return _mismatch(
                "drug",
                Code.DRUG_MISMATCH,
                expected,
                actual,
                f"The container is {container.description}, but the order is for {name} "
                f"({system} {code}). Do not use this container.",
            )
    else:
        if container.entry is None:
            return _unknown(
                "drug", Code.DRUG_UNVERIFIABLE, expected, actual, "the container has no library entry."
            )
        has = _entry_has(container.entry, (system, code))
        if has is None:
            return _unknown(
                "drug",
                Code.DRUG_UNVERIFIABLE,
                expected,
                actual,
                f"the order names the drug by its {system} code {code}, and the library entry of the "
                f"container ({container.entry.id}) has no {system} code to compare it with.",
            )
        if not has:
            return _mismatch(
                "drug",
                Code.DRUG_MISMATCH,
                expected,
                actual,
                f"Wrong drug: the container is {container.description}, but the order is for {name} "
                f"({system} {code}). Do not use this container.",
            )
    # The library entry to program against the container and the order.
    if entry is None:
        return _unknown(
            "drug",
            Code.DRUG_UNVERIFIABLE,
            expected,
            actual,
            f"no library entry is to be programmed (a basic infusion), so {name} cannot be verified "
            "on the pump. Choose the library entry.",
        )
    if container.entry is not None and entry.id != container.entry.id:
        return _mismatch(
            "drug",
            Code.DRUG_MISMATCH,
            expected,
            actual,
            f"The container is {container.description}, but the library entry to program is "
            f"{entry.display_name} ({entry.id}). Choose the container's entry.",
        )
    has = _entry_has(entry, (system, code))
    if has is None:
        return _unknown(
            "drug",
            Code.DRUG_UNVERIFIABLE,
            expected,
            actual,
            f"the library entry to program ({entry.id}) has no {system} code to compare with the "
            f"order's {code}.",
        )
    if not has:
        return _mismatch(
            "drug",
            Code.DRUG_MISMATCH,
            expected,
            actual,
            f"The library entry to program is {entry.display_name} ({entry.id}), but the order is for "
            f"{name} ({system} {code}).",
        )
    return _match(
        "drug",
        expected,
        actual,
        f"The container ({container.description}) and the library entry {entry.id} are the drug "
        f"ordered ({name}, {system} {code}).",
    )


def _planned_concentration(c: Concentration | Quantity | None) -> Concentration | str | None:
    if c is None or isinstance(c, Concentration):
        return c
    try:
        return Concentration.of(c)
    except QuantityError as exc:
        return f"the concentration to program, {c}, {exc.reason}"


def _concentration(order: Order, container: ContainerFacts, planned: Planned) -> ReconCheck:
    ordered = order.concentration
    held = container.concentration
    programmed = _planned_concentration(planned.concentration)
    label = " (from the pharmacy label: the order's own)" if container.from_label else ""
    expected = _text(ordered)
    shown_programmed = programmed if isinstance(programmed, str) else _text(programmed)
    actual = f"container: {_text(held)}{label}; to program: {shown_programmed}"
    if isinstance(programmed, str):
        return _unknown("concentration", Code.UNITS_MISMATCH, expected, actual, f"{programmed}.")
    if ordered is None or held is None or programmed is None:
        return _concentration_missing(ordered, held, programmed, container, planned, expected, actual)
    problems: list[str] = []
    code = Code.CONCENTRATION_MISMATCH
    container_differs = False
    for what, c in ((f"the container{label}", held), ("the concentration to program", programmed)):
        try:
            order_ = c.compare(ordered)
        except QuantityError:
            code = Code.UNITS_MISMATCH
            problems.append(f"{what} is {_say_conc(c)}, not the same kind of amount as ordered")
            container_differs = container_differs or c is held
            continue
        if order_ != 0:
            problems.append(f"{what} is {_say_conc(c)}")
            container_differs = container_differs or c is held
    if problems:
        return _mismatch(
            "concentration",
            code,
            expected,
            actual,
            f"Concentration mismatch: the order is {_say_conc(ordered)}, but {' and '.join(problems)}. "
            + (
                "Do not program: use the container the order is for, or have the order corrected."
                if container_differs
                else "Do not program this: program the ordered concentration."
            ),
        )
    return _match(
        "concentration",
        expected,
        actual,
        f"The order, the container and the programming are all {_say_conc(ordered)}.",
    )


def _concentration_missing(
    ordered: Concentration | None,
    held: Concentration | None,
    programmed: Concentration | None,
    container: ContainerFacts,
    planned: Planned,
    expected: str | None,
    actual: str,
) -> ReconCheck:
    """The concentration check when one side (or every side) states no concentration."""
    entries = [e for e in (planned.drug, container.entry) if e is not None]
    if ordered is None and held is None and programmed is None:
        if entries and all(e.concentration is None for e in entries):
            return _match(
                "concentration", None, actual, "No concentration on any side: the drug is dosed by volume."
            )
        return _unknown(
            "concentration",
            Code.VALUE_UNKNOWN,
            None,
            actual,
            "neither the order, the container nor the programming states a concentration.",
        )
    spec = container.entry.concentration if container.entry is not None else None
    variable = (
        " (its library entry has a variable concentration)" if spec is not None and spec.variable else ""
    )
    sides = (
        ("the order", ordered, ""),
        ("the container", held, variable),
        ("the programming", programmed, ""),
    )
    said = "; ".join(f"{what} states none{why}" for what, c, why in sides if c is None)
    return _unknown(
        "concentration",
        Code.VALUE_UNKNOWN,
        expected,
        actual,
        f"the concentration must be the same on the order, the container and the pump, and {said}.",
    )


def _exact_base(q: Quantity) -> Decimal:
    with localcontext(_EXACT):
        return base_value(q)


def _within(
    check: str,
    ordered: Quantity,
    planned: Quantity,
    tolerance: Decimal,
    differs: Code,
    *,
    theirs: str,
    ours: str,
) -> ReconCheck:
    """``planned`` within ``tolerance`` percent of ``ordered``, exactly (inclusive). ``theirs`` and
    ``ours`` name the two values in the sentence (``the dose ordered``, ``the dose to program``)."""
    expected, actual = str(ordered), str(planned)
    if ordered.dimension != planned.dimension:
        return _mismatch(
            check,
            Code.UNITS_MISMATCH,
            expected,
            actual,
            f"Units mismatch: {theirs} is {say(ordered)} ({ordered.dimension}), {ours} is {say(planned)} "
            f"({planned.dimension}). Use the units of the order.",
        )
    try:
        with localcontext(_EXACT):
            o, p = base_value(ordered), base_value(planned)
            diff = abs(p - o)
            ok = diff * 100 <= tolerance * abs(o)
    except DecimalException:
        # Inexact (or an overflow) in a 200-digit context: no clinical number gets here.
        return _unknown(
            check,
            Code.VALUE_UNKNOWN,
            expected,
            actual,
            f"{ours}, {say(planned)}, cannot be compared exactly with {theirs}, {say(ordered)}.",
        )
    allowed = "exactly" if tolerance == 0 else f"within {_num(tolerance)} %"
    if ok:
        return _match(
            check,
            expected,
            actual,
            f"{_cap(ours)}, {say(planned)}, is {theirs} ({say(ordered)}"
            + (")." if diff == 0 else f"; allowed: {allowed})."),
        )
    # Display only (34 digits, cut at 4 decimals with an ellipsis); the decision above was exact.
    by = "" if o == 0 else f", {_num(_DISPLAY.divide(_DISPLAY.multiply(diff, 100), abs(o)))} % off"
    return _mismatch(
        check,
        differs,
        expected,
        actual,
        f"{_cap(ours)}, {say(planned)}, is not {theirs}, {say(ordered)}{by} (it must match {allowed}). "
        "Program what was ordered, or have the order corrected.",
    )


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _compare(
    check: str,
    what: str,
    ordered: Quantity | None,
    planned: Quantity | None,
    policy: ReconcilePolicy,
) -> ReconCheck:
    if ordered is None and planned is None:
        return _match(check, None, None, f"Neither the order nor the programming gives a {what}.")
    if planned is None:
        return _mismatch(
            check,
            Code.NOT_PROGRAMMED,
            _text(ordered),
            None,
            f"The order gives a {what} of {say(ordered)}, and none is to be programmed. Program it.",
        )
    if ordered is None:
        if check in policy.not_ordered_ok:
            return _match(
                check,
                None,
                str(planned),
                f"The order gives no {what}; {say(planned)} is to be programmed (bounded by the "
                "container and the drug library).",
            )
        return _mismatch(
            check,
            Code.NOT_ORDERED,
            None,
            str(planned),
            f"A {what} of {say(planned)} is to be programmed, but the order gives none.",
        )
    return _within(
        check,
        ordered,
        planned,
        policy.tolerance_percent,
        Code.DIFFERS,
        theirs=f"the {what} ordered",
        ours=f"the {what} to program",
    )


def _split(dose_rate: Quantity | None, rate: Quantity | None) -> tuple[Quantity | None, Quantity | None]:
    """(dose rate, flow) of one side: ``dose_rate`` may itself be a flow (an order by mL/h)."""
    dose = None if dose_rate is None or is_flow(dose_rate) else dose_rate
    flow = rate if rate is not None else (dose_rate if is_flow(dose_rate) else None)
    return dose, flow


def _two_flows(dose_rate: Quantity | None, rate: Quantity | None) -> bool:
    """Whether one side gives two different flows (a dose_rate in mL/h and a rate)."""
    if dose_rate is None or rate is None or not (is_flow(dose_rate) and is_flow(rate)):
        return False
    return _exact_base(dose_rate) != _exact_base(rate)


def _rates(order: Order, planned: Planned, policy: ReconcilePolicy) -> list[ReconCheck]:
    o_dose, o_flow = _split(order.dose_rate, order.rate)
    p_dose, p_flow = _split(planned.dose_rate, planned.rate)
    checks: list[ReconCheck] = []
    if o_dose is None and o_flow is None and order.dose is None:
        checks.append(
            _unknown(
                "dose", Code.VALUE_UNKNOWN, None, _text(p_dose), "the order gives no dose, rate or bolus."
            )
        )
    else:
        checks.append(_compare("dose", "dose", o_dose, p_dose, policy))
    for side, d, r in (
        ("order", order.dose_rate, order.rate),
        ("programming", planned.dose_rate, planned.rate),
    ):
        if _two_flows(d, r):
            checks.append(
                _unknown(
                    "rate",
                    Code.VALUE_UNKNOWN,
                    _text(o_flow),
                    _text(p_flow),
                    f"the {side} gives two different rates, {say(d)} and {say(r)}.",
                )
            )
            return checks
    if o_dose is not None and p_dose is not None and (o_flow is None) != (p_flow is None):
        # Programmed by the dose: DERS derives the mL/h and checks that it delivers the dose.
        if p_flow is not None:
            detail = (
                f"The rate to program, {say(p_flow)}, comes from the dose; the order gives the dose "
                "only. The drug library check confirms that it delivers the dose."
            )
        else:
            detail = (
                f"The order's rate of {say(o_flow)} is given alongside its dose; the pump is programmed "
                "by the dose, and the drug library check works out the rate."
            )
        checks.append(_match("rate", _text(o_flow), _text(p_flow), detail))
    else:
        checks.append(_compare("rate", "rate", o_flow, p_flow, policy))
    return checks


def _route(order: Order, planned: Planned, policy: ReconcilePolicy) -> ReconCheck:
    ordered, programmed = order.route, planned.route
    ordered = ordered.strip() if ordered and ordered.strip() else None
    programmed = programmed.strip() if programmed and programmed.strip() else None
    if ordered is None:
        if "route" in policy.not_ordered_ok:
            return _match(
                "route", None, programmed, "The order states no route; the ward's policy allows that."
            )
        return _mismatch(
            "route",
            Code.NOT_ORDERED,
            None,
            programmed,
            "The order states no route of administration. Have the order completed.",
        )
    if programmed is None:
        return _mismatch(
            "route",
            Code.NOT_PROGRAMMED,
            ordered,
            None,
            f"The order is for route {ordered}, and no route is given for the programming.",
        )
    if ordered.casefold() != programmed.casefold():
        return _mismatch(
            "route",
            Code.ROUTE_MISMATCH,
            ordered,
            programmed,
            f"Wrong route: the order is for {ordered}, the programming is for {programmed}.",
        )
    return _match("route", ordered, programmed, f"The route is {ordered}, as ordered.")


def _per_kg(quantities: Iterable[Quantity | None], units: Iterable[str | None]) -> bool:
    for unit in [*(q.unit for q in quantities if q is not None), *(u for u in units if u is not None)]:
        try:
            if unit_parts(unit).basis == "kg":
                return True
        except QuantityError:
            continue  # not a dose unit (a weight, a volume): not per kg
    return False


def _weight(order: Order, planned: Planned, policy: ReconcilePolicy) -> ReconCheck:
    ordered, entered = order.weight, planned.weight
    entry = planned.drug
    per_kg = _per_kg(
        (order.dose_rate, order.rate, order.dose, planned.dose_rate, planned.rate, planned.bolus),
        (entry.dose_unit, entry.bolus_unit) if entry is not None else (),
    )
    expected, actual = _text(ordered), _text(entered)
    for what, w in (("the order's weight", ordered), ("the weight entered", entered)):
        if w is not None and w.dimension != "body mass":
            return _mismatch(
                "weight", Code.UNITS_MISMATCH, expected, actual, f"{what}, {w}, is not a body weight (kg)."
            )
    if ordered is None or entered is None:
        if per_kg:
            missing = {
                (True, True): "the order gives no weight and none was entered",
                (True, False): "the order gives no weight",
                (False, True): "no weight was entered",
            }[(ordered is None, entered is None)]
            return _unknown(
                "weight",
                Code.WEIGHT_MISSING,
                expected,
                actual,
                f"the dose is per kg of body weight, and {missing}. Enter the weight the order gives, "
                "or have the weight added to the order.",
            )
        given = ordered if ordered is not None else entered
        detail = (
            "No weight on either side; no dose is per kg."
            if given is None
            else f"Weight {say(given)} on one side only; no dose is per kg, so it is not needed."
        )
        return _match("weight", expected, actual, detail)
    result = _within(
        "weight",
        ordered,
        entered,
        policy.weight_tolerance_percent,
        Code.WEIGHT_MISMATCH,
        theirs="the order's weight",
        ours="the weight entered",
    )
    if result.outcome is Outcome.MISMATCH and result.code is Code.WEIGHT_MISMATCH:
        return _mismatch(
            "weight",
            Code.WEIGHT_MISMATCH,
            expected,
            actual,
            f"Weight mismatch: {result.detail[:1].lower()}{result.detail[1:]} Check the patient's weight.",
        )
    return result


def _bolus_ml(bolus: Quantity, container: ContainerFacts, planned: Planned) -> Quantity | ReconCheck:
    if bolus.dimension == "volume":
        return bolus
    volume = _text(container.volume)
    try:
        return convert(bolus, "mL", concentration=container.concentration, weight=planned.weight)
    except MissingFactor as exc:
        code = Code.WEIGHT_MISSING if exc.factor == "patient weight" else Code.VALUE_UNKNOWN
        return _unknown(
            "container",
            code,
            volume,
            f"bolus {bolus}",
            f"the bolus of {say(bolus)} cannot be worked out as a volume without the {exc.factor}.",
        )
    except QuantityError as exc:
        return _unknown(
            "container",
            Code.UNITS_MISMATCH,
            volume,
            f"bolus {bolus}",
            f"the bolus of {say(bolus)} cannot be worked out as a volume: {exc.reason}.",
        )


def _container(container: ContainerFacts, planned: Planned) -> ReconCheck:
    held = container.volume
    expected = _text(held)
    parts: list[tuple[str, Quantity]] = []
    if planned.vtbi is not None:
        parts.append(("volume to be infused", planned.vtbi))
    if planned.bolus is not None:
        ml = _bolus_ml(planned.bolus, container, planned)
        if isinstance(ml, ReconCheck):
            return ml
        parts.append(("bolus", ml))
    actual = "; ".join(f"{'VTBI' if w.startswith('volume') else w} {q}" for w, q in parts) or None
    if not parts:
        return _match(
            "container",
            expected,
            None,
            "No VTBI or bolus to program: the pump runs until the container is empty or stopped.",
        )
    if held is None:
        return _unknown(
            "container",
            Code.VALUE_UNKNOWN,
            None,
            actual,
            f"the volume of the container ({container.description}) is not known, so it cannot be shown "
            "to hold what is to be programmed.",
        )
    if held.dimension != "volume":
        return _mismatch(
            "container",
            Code.UNITS_MISMATCH,
            expected,
            actual,
            f"The container volume, {held}, is not a volume.",
        )
    bad_units = [(w, q) for w, q in parts if q.dimension != "volume"]
    if bad_units:
        w, q = bad_units[0]
        return _mismatch(
            "container", Code.UNITS_MISMATCH, expected, actual, f"The {w}, {q}, is not a volume."
        )
    try:
        too_much = [(w, q) for w, q in parts if _exact_base(q) > _exact_base(held)]
    except DecimalException:
        return _unknown(
            "container", Code.VALUE_UNKNOWN, expected, actual, "the volumes cannot be compared exactly."
        )
    if too_much:
        said = " and ".join(f"the {w} ({say(q)})" for w, q in too_much)
        return _mismatch(
            "container",
            Code.CONTAINER_TOO_SMALL,
            expected,
            actual,
            f"The container holds {say(held)}: {said} is more than that. Check the dose and the "
            "concentration, and reprogram.",
        )
    said = " and ".join(f"the {w} ({say(q)})" for w, q in parts)
    return _match("container", expected, actual, f"The container holds {say(held)}, enough for {said}.")


def reconcile(
    order: Order,
    container: ContainerFacts,
    planned: Planned,
    *,
    scanned_patient: str,
    pump_patient: str | None,
    policy: ReconcilePolicy,
) -> Reconciliation:
    """Compare ``order``, ``container`` and ``planned``; one check each of :data:`CHECKS` (and
    ``steps`` for a multistep order). ``scanned_patient`` is the wristband's patient id,
    ``pump_patient`` the patient the pump channel is associated with (None when it is not).
    Pure; raises nothing for bad clinical values (they are failed checks)."""
    checks = [
        _patient(order, container, scanned_patient, pump_patient),
        _pump(order, planned),
        _drug(order, container, planned, policy),
        _concentration(order, container, planned),
        *_rates(order, planned, policy),
        _compare("bolus", "bolus", order.dose, planned.bolus, policy),
        _compare("vtbi", "VTBI", order.vtbi, planned.vtbi, policy),
        _compare("duration", "duration", order.duration, planned.duration, policy),
        _route(order, planned, policy),
        _weight(order, planned, policy),
        _container(container, planned),
    ]
    if order.multistep:
        checks.append(
            _unknown(
                "steps",
                Code.MULTISTEP,
                f"{len(order.later_steps) + 1} steps",
                "step 1",
                "the order is a multistep program; only a single-step program is reconciled. Program "
                "it by hand, with a second check.",
            )
        )
    return Reconciliation(order.order_id, tuple(checks))
