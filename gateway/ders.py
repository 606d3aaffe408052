"""Dose error reduction (DERS): check a programming against the drug library (pure, no I/O).

:func:`evaluate` takes what is about to be programmed (:class:`Programming`) and a valid
:class:`~pumpgw.gateway.library.Library`, and returns a :class:`DersResult`: one :class:`Check` per
parameter, each with its outcome (within limits, soft or hard limit low or high, needs confirmation,
not checkable), the value, the limit and the library entry that set it, a stable code
(:class:`Code`; the IHE PIV application error codes where one fits) and a sentence a nurse
understands. The result's :attr:`~DersResult.verdict` says what may happen next:

- ``pass``: every parameter is within limits;
- ``confirmation-required``: a variable concentration is within its limits and must be confirmed;
- ``override-required``: a soft limit is crossed; it may be passed only with an :class:`Override`
  naming the clinician and a reason from the library's list;
- ``blocked``: a hard limit is crossed or something could not be checked. Nothing overrides it.

The checks follow DESIGN.md "The safety core": reject, never clamp; a missing factor (weight,
concentration) makes a check *not checkable*, never defaulted; the concentration must be the
library's (fixed) or within its limits and confirmed (variable); a bolus and a loading dose are also
checked as volumes, against the bolus volume limit and the container; the mL/h to program is
rounded once at the end (:func:`pumpgw.gateway.dose.round_rate`) and the dose that rounded rate
delivers is checked again. Codes and sentences: ``docs/ders.md``.

Only :class:`~pumpgw.gateway.errors.DersError` is raised, for a programming that makes no sense as
a question (both a drug id and a drug code, an override of an unknown parameter). Every other bad
input, including a quantity in the wrong unit, is a check that blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from functools import cache
from typing import Any, Final

from .dose import DEFAULT_RATE_RESOLUTION, Concentration, MissingFactor, convert, round_rate
from .errors import DersError, QuantityError
from .library import AreaRules, CareArea, Drug, Library, Limits, canonical_number
from .quantity import Quantity, base_value, dimension_of, unit_parts


class Outcome(StrEnum):
    WITHIN = "within"
    SOFT_LOW = "soft-low"
    SOFT_HIGH = "soft-high"
    HARD_LOW = "hard-low"
    HARD_HIGH = "hard-high"
    CONFIRM = "needs-confirmation"  # a variable concentration within its limits, not yet confirmed
    NOT_CHECKABLE = "not-checkable"


_HARD: Final = frozenset({Outcome.HARD_LOW, Outcome.HARD_HIGH, Outcome.NOT_CHECKABLE})
_SOFT: Final = frozenset({Outcome.SOFT_LOW, Outcome.SOFT_HIGH})


class Verdict(StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    CONFIRMATION_REQUIRED = "confirmation-required"
    OVERRIDE_REQUIRED = "override-required"
    BLOCKED = "blocked"


class Code(StrEnum):
    """Stable codes. Four digits: the IHE PIV application error table (HL7 0533); PGW-: ours."""

    UNITS_MISMATCH = "9009"  # the dose or rate units do not fit the library entry
    NOT_IN_LIBRARY = "9010"  # no library entry (in this care area), or basic infusions not allowed
    DIFFERS_FROM_LIBRARY = "9018"  # a fixed parameter (the concentration) differs from the library
    WEIGHT_MISSING = "9019"
    CARE_AREA = "9021"  # the care area is not in the library
    HARD_LIMIT = "9024"  # a hard limit is exceeded (low or high)
    WITHIN = "PGW-100"
    SOFT_LOW = "PGW-101"
    SOFT_HIGH = "PGW-102"
    CONFIRM_CONCENTRATION = "PGW-103"
    BASIC_INFUSION = "PGW-104"  # no drug: a basic infusion, only rate and volume are checked
    VALUE_MISSING = "PGW-110"  # a value the check needs was not given (concentration, dose)
    NO_LIMITS = "PGW-111"  # the library sets no limits for this parameter (bolus, loading dose)
    AMBIGUOUS_DRUG = "PGW-112"  # a drug code matches several entries
    BSA_MISSING = "PGW-113"
    CONTAINER = "PGW-120"  # more than the container holds
    RATE_DOSE_MISMATCH = "PGW-121"  # the programmed rate does not deliver the programmed dose
    ROUNDING = "PGW-122"  # the rate as rounded for the pump crosses a hard limit


#: Parameters a check may be about; an override must name one of them.
PARAMETERS: Final = (
    "care_area",
    "drug",
    "concentration",
    "weight",
    "bsa",
    "dose",
    "rate",
    "vtbi",
    "duration",
    "bolus_dose",
    "bolus_volume",
    "bolus_rate",
    "loading_dose",
    "loading_volume",
)

_WORDS: Final = {"ug": "microgram", "[iU]": "units", "m[iU]": "milliunits", "k[iU]": "thousand units"}
_WORDS_PART: Final = {"m2": "m²", "meq": "mEq", "g{body}": "g"}


def say(q: Quantity | None) -> str:
    """A quantity in words a nurse reads without ambiguity: ``300 microgram/h``, ``80 units/kg``."""
    if q is None:
        return "(none)"
    return f"{_number(q.value)} {_unit_words(q.unit)}"


@cache
def _unit_words(unit: str) -> str:
    parts = unit.split("/")
    first = _WORDS.get(parts[0], _WORDS_PART.get(parts[0], parts[0]))
    return "/".join([first, *(_WORDS_PART.get(p, p) for p in parts[1:])])


def say_concentration(c: Concentration) -> str:
    """``2500 microgram in 50 mL`` or ``50 microgram/mL``."""
    if c.volume.value == 1 and c.volume.unit == "mL":
        return say(Quantity(c.amount.value, f"{c.amount.unit}/mL"))
    return f"{say(c.amount)} in {say(c.volume)}"


def _number(value: Decimal) -> str:
    text = canonical_number(value)
    if "." in text:
        whole, frac = text.split(".")
        if len(frac) > 4:  # 13.12500000... reads as 13.125; never shown rounded beyond 4 places
            text = f"{whole}.{frac[:4]}…"
    return text


@dataclass(frozen=True, slots=True)
class Programming:
    """What is about to be programmed, as the order, the container label and the nurse give it.

    Give the drug as a library entry id (``drug``) or a code (``drug_code``, e.g. ``("gtin",
    "09521234543213")``), or neither for a basic infusion. Every quantity carries its unit;
    ``dose_rate`` may be a dose (``ug/kg/min``) or a rate (``mL/h``); ``rate`` is the mL/h if the
    pump is programmed in mL/h alongside the dose. ``container_volume`` is what the container
    holds now, when known. A variable concentration is accepted only with
    ``concentration_confirmed``.
    """

    care_area: str
    drug: str | None = None
    drug_code: tuple[str, str] | None = None
    concentration: Quantity | Concentration | None = None
    dose_rate: Quantity | None = None
    rate: Quantity | None = None
    vtbi: Quantity | None = None
    duration: Quantity | None = None
    bolus_dose: Quantity | None = None
    bolus_rate: Quantity | None = None
    loading_dose: Quantity | None = None
    weight: Quantity | None = None
    bsa: Quantity | None = None
    container_volume: Quantity | None = None
    concentration_confirmed: bool = False


@dataclass(frozen=True, slots=True)
class Override:
    """A clinician's decision to go past a soft limit on ``parameter``, with a reason from the list."""

    parameter: str
    clinician: str
    reason: str


@dataclass(frozen=True, slots=True)
class Check:
    """The result for one parameter."""

    parameter: str
    outcome: Outcome
    code: Code
    message: str
    value: Quantity | None = None
    limit: Quantity | None = None
    limit_name: str | None = None  # hard_min, soft_min, soft_max, hard_max
    source: str | None = None  # where the limit is set: "fentanyl-50 / icu-adult: bolus_dose.hard_max"
    override: Override | None = None

    @property
    def blocks(self) -> bool:
        return self.outcome in _HARD

    def as_dict(self) -> dict[str, Any]:
        return {
            "parameter": self.parameter,
            "outcome": str(self.outcome),
            "code": str(self.code),
            "message": self.message,
            "value": None if self.value is None else str(self.value),
            "limit": None if self.limit is None else str(self.limit),
            "limit_name": self.limit_name,
            "source": self.source,
            "override": None
            if self.override is None
            else {"clinician": self.override.clinician, "reason": self.override.reason},
        }


@dataclass(frozen=True, slots=True)
class DersResult:
    """Every check of one programming, the verdict, and the mL/h to program when there is one."""

    library_hash: str
    library_version: int
    care_area: str
    drug: str | None
    drug_display: str | None
    checks: tuple[Check, ...]
    rate_ml_h: Quantity | None
    advisory: str | None = None
    refused_overrides: tuple[tuple[Override, str], ...] = field(default=())

    @property
    def verdict(self) -> Verdict:
        if any(c.outcome in _HARD for c in self.checks):
            return Verdict.BLOCKED
        if any(c.outcome in _SOFT and c.override is None for c in self.checks):
            return Verdict.OVERRIDE_REQUIRED
        if any(c.outcome is Outcome.CONFIRM for c in self.checks):
            return Verdict.CONFIRMATION_REQUIRED
        return Verdict.PASS

    @property
    def may_proceed(self) -> bool:
        return self.verdict is Verdict.PASS

    def problems(self) -> tuple[Check, ...]:
        """The checks that are not plainly within limits (overridden soft limits included)."""
        return tuple(c for c in self.checks if c.outcome is not Outcome.WITHIN)

    def check(self, parameter: str) -> Check | None:
        """The decisive check of ``parameter`` (the most severe one if there are several)."""
        found = [c for c in self.checks if c.parameter == parameter]
        return max(found, key=_severity, default=None)

    def as_event(self) -> dict[str, Any]:
        """The payload of the DERS-result event: everything needed to audit the decision later."""
        return {
            "library_hash": self.library_hash,
            "library_version": self.library_version,
            "care_area": self.care_area,
            "drug": self.drug,
            "verdict": str(self.verdict),
            "rate_ml_h": None if self.rate_ml_h is None else str(self.rate_ml_h.value),
            "checks": [c.as_dict() for c in self.checks],
            "overrides": [
                {"parameter": c.parameter, "clinician": c.override.clinician, "reason": c.override.reason}
                for c in self.checks
                if c.override is not None
            ],
            "refused_overrides": [
                {"parameter": o.parameter, "clinician": o.clinician, "reason": o.reason, "why": why}
                for o, why in self.refused_overrides
            ],
        }


def _severity(c: Check) -> int:
    order = {
        Outcome.WITHIN: 0,
        Outcome.CONFIRM: 1,
        Outcome.SOFT_LOW: 2,
        Outcome.SOFT_HIGH: 2,
        Outcome.HARD_LOW: 3,
        Outcome.HARD_HIGH: 3,
        Outcome.NOT_CHECKABLE: 3,
    }
    return order[c.outcome]


# -- the evaluation ------------------------------------------------------------------------------


class _Eval:
    """One evaluation: collects checks. Not reused."""

    def __init__(self, p: Programming, library: Library, resolution: Decimal) -> None:
        self.p = p
        self.library = library
        self.resolution = resolution
        self.checks: list[Check] = []
        self.drug: Drug | None = None
        self.rules: AreaRules | None = None
        self.where = p.care_area
        self.conc: Concentration | None = None
        self.rate_ml_h: Quantity | None = None

    def add(self, parameter: str, outcome: Outcome, code: Code, message: str, **facts: Any) -> None:
        self.checks.append(Check(parameter, outcome, code, message, **facts))

    def blocked(self, parameter: str, code: Code, message: str, **facts: Any) -> None:
        self.add(parameter, Outcome.NOT_CHECKABLE, code, message, **facts)

    # -- limits ---------------------------------------------------------------------------------
    def limits(self, parameter: str, what: str, value: Quantity, limits: Limits | None, key: str) -> None:
        """Compare ``value`` with a limit set (in the same dimension; checked by the caller)."""
        if limits is None:
            self.add(
                parameter, Outcome.WITHIN, Code.WITHIN, f"{what} {say(value)}: no limit set", value=value
            )
            return
        v = base_value(value)
        source = f"{self.where}: {key}"
        lo_hard, lo_soft, hi_soft, hi_hard = (
            limits.hard_min,
            limits.soft_min,
            limits.soft_max,
            limits.hard_max,
        )
        if hi_hard is not None and v > base_value(hi_hard):
            self.add(
                parameter,
                Outcome.HARD_HIGH,
                Code.HARD_LIMIT,
                f"{what} {say(value)} is above the hard maximum of {say(hi_hard)}. Blocked: reprogram.",
                value=value,
                limit=hi_hard,
                limit_name="hard_max",
                source=f"{source}.hard_max",
            )
        elif lo_hard is not None and v < base_value(lo_hard):
            self.add(
                parameter,
                Outcome.HARD_LOW,
                Code.HARD_LIMIT,
                f"{what} {say(value)} is below the hard minimum of {say(lo_hard)}. Blocked: reprogram.",
                value=value,
                limit=lo_hard,
                limit_name="hard_min",
                source=f"{source}.hard_min",
            )
        elif hi_soft is not None and v > base_value(hi_soft):
            hard = f" (hard maximum {say(hi_hard)})" if hi_hard is not None else ""
            self.add(
                parameter,
                Outcome.SOFT_HIGH,
                Code.SOFT_HIGH,
                f"{what} {say(value)} is above the soft maximum of {say(hi_soft)}{hard}. "
                "Continue only with an override and a reason, or reprogram.",
                value=value,
                limit=hi_soft,
                limit_name="soft_max",
                source=f"{source}.soft_max",
            )
        elif lo_soft is not None and v < base_value(lo_soft):
            hard = f" (hard minimum {say(lo_hard)})" if lo_hard is not None else ""
            self.add(
                parameter,
                Outcome.SOFT_LOW,
                Code.SOFT_LOW,
                f"{what} {say(value)} is below the soft minimum of {say(lo_soft)}{hard}. "
                "Continue only with an override and a reason, or reprogram.",
                value=value,
                limit=lo_soft,
                limit_name="soft_min",
                source=f"{source}.soft_min",
            )
        else:
            self.add(
                parameter, Outcome.WITHIN, Code.WITHIN, f"{what} {say(value)} is within limits", value=value
            )

    def dimension_ok(self, parameter: str, what: str, value: Quantity, expected: Iterable[str]) -> bool:
        allowed = tuple(expected)
        if value.dimension in allowed:
            return True
        self.blocked(
            parameter,
            Code.UNITS_MISMATCH,
            f"{what} is in {value.unit}, which does not fit the library entry "
            f"(expected a unit of {' or '.join(allowed)}). Blocked: reprogram in the library's units.",
            value=value,
        )
        return False

    def convert(self, parameter: str, what: str, q: Quantity, unit: str) -> Quantity | None:
        """``q`` in ``unit``, or a blocking check saying which factor was missing."""
        try:
            return convert(q, unit, concentration=self.conc, weight=self.p.weight, bsa=self.p.bsa)
        except MissingFactor as exc:
            code = {"patient weight": Code.WEIGHT_MISSING, "body surface area": Code.BSA_MISSING}.get(
                exc.factor, Code.VALUE_MISSING
            )
            self.blocked(parameter, code, f"{what} cannot be checked without the {exc.factor}.", value=q)
        except QuantityError as exc:
            self.blocked(
                parameter,
                Code.UNITS_MISMATCH,
                f"{what} in {q.unit} cannot be checked: {exc.reason}.",
                value=q,
            )
        return None

    # -- steps ------------------------------------------------------------------------------------
    def resolve(self, area: CareArea) -> bool:
        """Find the drug entry. False when evaluation cannot go on (a check says why)."""
        p, lib = self.p, self.library
        if p.drug is not None:
            drug = lib.drugs.get(p.drug)
            if drug is None:
                self.blocked(
                    "drug", Code.NOT_IN_LIBRARY, f"drug entry {p.drug!r} is not in the library ({lib.label})."
                )
                return False
        elif p.drug_code is not None:
            system, code = p.drug_code
            candidates = [d for d in lib.by_code.get((system, code), ()) if area.id in d.care_areas]
            conc = self.programmed_concentration()
            if len(candidates) > 1 and isinstance(conc, Concentration):
                candidates = [d for d in candidates if _same_concentration(d, conc)]
            if not candidates:
                self.blocked(
                    "drug",
                    Code.NOT_IN_LIBRARY,
                    f"{system} code {code} matches no library entry for {area.name} ({lib.label}).",
                )
                return False
            if len(candidates) > 1:
                names = ", ".join(d.display_name for d in candidates)
                self.blocked(
                    "drug",
                    Code.AMBIGUOUS_DRUG,
                    f"{system} code {code} matches several entries ({names}); choose the entry.",
                )
                return False
            drug = candidates[0]
        else:
            return True  # basic infusion
        rules = drug.care_areas.get(area.id)
        if rules is None:
            self.blocked(
                "drug",
                Code.NOT_IN_LIBRARY,
                f"{drug.display_name} is not in the library for {area.name}. Blocked.",
            )
            return False
        self.drug, self.rules = drug, rules
        self.where = f"{drug.id} / {area.id}"
        return True

    def programmed_concentration(self) -> Concentration | QuantityError | None:
        c = self.p.concentration
        if c is None or isinstance(c, Concentration):
            return c
        try:
            return Concentration.of(c)
        except QuantityError as exc:
            return exc

    def concentration(self, drug: Drug) -> None:
        spec = drug.concentration
        if spec is None:
            return  # dosed in volume: no concentration to check
        name = drug.display_name
        given = self.programmed_concentration()
        if given is None:
            self.blocked(
                "concentration", Code.VALUE_MISSING, f"{name}: no concentration was given; it must be stated."
            )
            return
        if isinstance(given, QuantityError):
            self.blocked(
                "concentration",
                Code.UNITS_MISMATCH,
                f"{name}: concentration {given.value} {given.unit}: {given.reason}.",
            )
            return
        if spec.variable:
            if spec.min is None or spec.max is None:  # library_check refuses such a library
                self.blocked("concentration", Code.VALUE_MISSING, f"{name}: the library entry has no limits.")
                return
            try:
                below, above = given.compare_ratio(spec.min) < 0, given.compare_ratio(spec.max) > 0
            except QuantityError:
                self.blocked(
                    "concentration",
                    Code.UNITS_MISMATCH,
                    f"{name}: concentration {say_concentration(given)} does not fit the library's "
                    f"{say(spec.min)} to {say(spec.max)}.",
                )
                return
            if below or above:
                limit, limit_name = (spec.min, "min") if below else (spec.max, "max")
                self.add(
                    "concentration",
                    Outcome.HARD_LOW if below else Outcome.HARD_HIGH,
                    Code.HARD_LIMIT,
                    f"{name}: concentration {say_concentration(given)} is {'below' if below else 'above'} "
                    "the library's "
                    f"{'minimum' if below else 'maximum'} of {say(limit)}. Blocked.",
                    limit=limit,
                    limit_name=limit_name,
                    source=f"{drug.id}: concentration.{limit_name}",
                )
                return
            self.conc = given
            if self.p.concentration_confirmed:
                self.add(
                    "concentration",
                    Outcome.WITHIN,
                    Code.WITHIN,
                    f"{name}: concentration {say_concentration(given)} confirmed, within limits",
                )
            else:
                self.add(
                    "concentration",
                    Outcome.CONFIRM,
                    Code.CONFIRM_CONCENTRATION,
                    f"{name}: variable concentration {say_concentration(given)} is within limits; "
                    "confirm it against the container label.",
                )
            return
        if spec.amount is None or spec.volume is None:  # library_check refuses such a library
            self.blocked(
                "concentration", Code.VALUE_MISSING, f"{name}: the library entry has no concentration."
            )
            return
        standard = Concentration(spec.amount, spec.volume)
        try:
            order = given.compare(standard)
        except QuantityError:
            self.blocked(
                "concentration",
                Code.UNITS_MISMATCH,
                f"{name}: concentration {say_concentration(given)} is not in the units of the library's "
                f"{say_concentration(standard)}.",
            )
            return
        if order != 0:
            self.add(
                "concentration",
                Outcome.HARD_HIGH if order > 0 else Outcome.HARD_LOW,
                Code.DIFFERS_FROM_LIBRARY,
                f"{name}: programmed concentration {say_concentration(given)} is not the library's "
                f"{say_concentration(standard)}. "
                "Blocked: a different concentration needs its own library entry.",
                source=f"{drug.id}: concentration",
            )
            return
        self.conc = standard
        self.add(
            "concentration",
            Outcome.WITHIN,
            Code.WITHIN,
            f"{name}: concentration {say_concentration(standard)} matches the library",
        )

    def patient(self, drug: Drug, rules: AreaRules) -> None:
        units = [drug.dose_unit, drug.bolus_unit if self.p.bolus_dose else None]
        units.append(drug.loading_unit if self.p.loading_dose else None)
        bases = {unit_parts(u).basis for u in units if u is not None}
        needs_weight = rules.weight_required or "kg" in bases
        if self.p.weight is None:
            if needs_weight:
                self.blocked(
                    "weight",
                    Code.WEIGHT_MISSING,
                    f"{drug.display_name}: the patient's weight is required and was not given.",
                )
        elif self.dimension_ok("weight", "patient weight", self.p.weight, ["body mass"]):
            self.limits("weight", "patient weight", self.p.weight, rules.weight, "weight")
        if self.p.bsa is None:
            if "m2" in bases:
                self.blocked(
                    "bsa",
                    Code.BSA_MISSING,
                    f"{drug.display_name}: the patient's body surface area is required.",
                )
        elif self.dimension_ok("bsa", "body surface area", self.p.bsa, ["area"]):
            self.limits("bsa", "body surface area", self.p.bsa, rules.bsa, "bsa")

    def dose(self, drug: Drug, rules: AreaRules) -> None:
        p = self.p
        dose_dim = unit_parts(drug.dose_unit)
        volume_based = dose_dim.amount_kind == "volume"
        dose: Quantity | None = None
        given_rate = p.rate
        if given_rate is not None and not self.dimension_ok("rate", "rate", given_rate, ["volume/time"]):
            return
        if p.dose_rate is not None:
            d = p.dose_rate
            if d.dimension == "volume/time" and not volume_based:
                given_rate = given_rate or d  # a dose entry programmed in mL/h
            elif not self.dimension_ok("dose", "dose", d, [dimension_of(drug.dose_unit)]):
                return
            else:
                dose = d
        if dose is None and given_rate is not None:
            dose = self.convert("dose", "dose", given_rate, drug.dose_unit)
            if dose is None:
                return
        if dose is None:
            self.blocked("dose", Code.VALUE_MISSING, f"{drug.display_name}: no dose or rate was given.")
            return
        self.limits("dose", "dose", dose, rules.dose, "dose")
        exact_rate = self.convert("rate", "rate", dose, "mL/h")
        if exact_rate is None:
            return
        try:
            rounded = round_rate(exact_rate, self.resolution)
        except QuantityError as exc:
            self.blocked("rate", Code.HARD_LIMIT, f"rate {say(exact_rate)}: {exc.reason}.", value=exact_rate)
            return
        if given_rate is not None and p.dose_rate is not None and given_rate.dimension == "volume/time":
            given_ml_h = given_rate.to("mL/h") if given_rate.unit != "mL/h" else given_rate
            if abs(given_ml_h.value - exact_rate.value) > self.resolution / 2:
                self.add(
                    "rate",
                    Outcome.HARD_HIGH if given_ml_h.value > exact_rate.value else Outcome.HARD_LOW,
                    Code.RATE_DOSE_MISMATCH,
                    f"{drug.display_name}: rate {say(given_ml_h)} does not deliver dose {say(dose)} at "
                    f"{say_concentration(self.conc) if self.conc else 'this concentration'} "
                    f"(that dose needs {say(rounded)}). Blocked: reprogram.",
                    value=given_ml_h,
                    limit=rounded,
                )
                return
        delivered = self.convert("dose", "dose", rounded, drug.dose_unit)
        if delivered is not None and rules.dose is not None:
            hi, lo = rules.dose.hard_max, rules.dose.hard_min
            v = base_value(delivered)
            crossed = (hi is not None and v > base_value(hi)) or (lo is not None and v < base_value(lo))
            already = any(c.parameter == "dose" and c.outcome in _HARD for c in self.checks)
            if crossed and not already:
                self.add(
                    "dose",
                    Outcome.HARD_HIGH if hi is not None and v > base_value(hi) else Outcome.HARD_LOW,
                    Code.ROUNDING,
                    f"{drug.display_name}: the pump rate {say(rounded)} (rounded to {self.resolution} mL/h) "
                    f"would deliver {say(delivered)}, past the hard limit. Blocked: reprogram.",
                    value=delivered,
                    limit=hi if hi is not None and v > base_value(hi) else lo,
                    source=f"{self.where}: dose",
                )
                return
        self.rate_ml_h = rounded

    def volume(self, rules: AreaRules | None, basic: CareArea | None) -> None:
        p = self.p
        limits_vtbi = basic.basic_vtbi if basic is not None else (rules.vtbi if rules else None)
        key = "basic_vtbi" if basic is not None else "vtbi"
        if p.vtbi is not None and self.dimension_ok("vtbi", "VTBI", p.vtbi, ["volume"]):
            self.limits("vtbi", "volume to be infused", p.vtbi, limits_vtbi, key)
            self.container("vtbi", "volume to be infused", p.vtbi)
        if (
            rules is not None
            and p.duration is not None
            and self.dimension_ok("duration", "duration", p.duration, ["time"])
        ):
            self.limits("duration", "duration", p.duration, rules.duration, "duration")
        elif (
            rules is not None
            and rules.duration is not None
            and p.vtbi is not None
            and p.vtbi.dimension == "volume"
            and self.rate_ml_h is not None
            and self.rate_ml_h.value > 0
        ):
            implied = Quantity(base_value(p.vtbi) / self.rate_ml_h.value, "h")
            self.limits("duration", "duration (VTBI at this rate)", implied, rules.duration, "duration")

    def container(self, parameter: str, what: str, volume: Quantity) -> None:
        held = self.p.container_volume
        if held is None:
            return
        if held.dimension != "volume":
            self.blocked(parameter, Code.UNITS_MISMATCH, f"container volume {held} is not a volume.")
            return
        if base_value(volume) > base_value(held):
            self.add(
                parameter,
                Outcome.HARD_HIGH,
                Code.CONTAINER,
                f"{what} {say(volume)} is more than the container holds ({say(held)}). Blocked: reprogram.",
                value=volume,
                limit=held,
                limit_name="container",
            )

    def amount(
        self,
        kind: str,
        drug: Drug,
        unit: str | None,
        limits: Limits | None,
        value: Quantity,
        volume_limits: Limits | None,
    ) -> None:
        """A bolus or loading dose: its dose limits, then as a volume (limit and container)."""
        what = kind.replace("_", " ")
        name = drug.display_name
        if unit is None or limits is None:
            self.blocked(
                f"{kind}_dose",
                Code.NO_LIMITS,
                f"{name}: the library sets no {what} limits for this care area, "
                f"so a {what} cannot be checked.",
                value=value,
            )
            return
        if value.dimension == "volume" and dimension_of(unit) != "volume":
            dose = self.convert(f"{kind}_dose", f"{what} dose", value, unit)
            if dose is None:
                return
        elif not self.dimension_ok(f"{kind}_dose", f"{what} dose", value, [dimension_of(unit)]):
            return
        else:
            dose = value
        self.limits(f"{kind}_dose", f"{what} dose", dose, limits, f"{kind}_dose")
        ml = self.convert(f"{kind}_volume", f"{what} volume", dose, "mL")
        if ml is None:
            return
        self.limits(f"{kind}_volume", f"{what} volume", _tidy(ml), volume_limits, f"{kind}_volume")
        self.container(f"{kind}_volume", f"{what} volume", _tidy(ml))

    def bolus_rate(self, drug: Drug, rules: AreaRules, rate: Quantity) -> None:
        limits = rules.bolus_rate
        if limits is None:
            self.add(
                "bolus_rate", Outcome.WITHIN, Code.WITHIN, f"bolus rate {say(rate)}: no limit set", value=rate
            )
            return
        ref = next(q for _, q in limits.items())
        if rate.dimension != ref.dimension:
            converted = self.convert("bolus_rate", "bolus rate", rate, ref.unit)
            if converted is None:
                return
            rate = _tidy(converted)
        self.limits("bolus_rate", "bolus rate", rate, limits, "bolus_rate")

    def basic(self, area: CareArea) -> None:
        p = self.p
        if area.basic_infusion != "allowed":
            self.blocked(
                "drug",
                Code.NOT_IN_LIBRARY,
                f"no drug was given, and infusions without a library entry are not allowed in {area.name}.",
            )
            return
        self.add(
            "drug",
            Outcome.WITHIN,
            Code.BASIC_INFUSION,
            f"basic infusion (no library entry) in {area.name}: only the rate and the volume are checked.",
        )
        for q, what in ((p.bolus_dose, "bolus"), (p.loading_dose, "loading dose")):
            if q is not None:
                self.blocked(
                    f"{what.split()[0]}_dose",
                    Code.NOT_IN_LIBRARY,
                    f"a {what} needs a library entry.",
                    value=q,
                )
        rate = p.rate or p.dose_rate
        if rate is None:
            self.blocked("rate", Code.VALUE_MISSING, "basic infusion: no rate was given.")
        elif self.dimension_ok("rate", "rate", rate, ["volume/time"]):
            if (
                p.rate is not None
                and p.dose_rate is not None
                and base_value(p.rate) != base_value(p.dose_rate)
            ):
                self.blocked(
                    "rate",
                    Code.RATE_DOSE_MISMATCH,
                    f"two different rates were given: {say(p.rate)} and {say(p.dose_rate)}.",
                )
                return
            self.where = f"{area.id}"
            self.limits("rate", "rate", rate, area.basic_rate, "basic_rate")
            try:
                self.rate_ml_h = round_rate(rate, self.resolution)
            except QuantityError as exc:
                self.blocked("rate", Code.HARD_LIMIT, f"rate {say(rate)}: {exc.reason}.", value=rate)
        self.volume(None, area)


def _tidy(q: Quantity) -> Quantity:
    """Drop the trailing zeros a 34-digit division leaves (2.000... mL reads 2 mL)."""
    return Quantity(q.value.normalize() if q.value == q.value.to_integral_value() else q.value, q.unit)


def _same_concentration(drug: Drug, conc: Concentration) -> bool:
    spec = drug.concentration
    if spec is None or spec.variable or spec.amount is None or spec.volume is None:
        return False
    try:
        return Concentration(spec.amount, spec.volume).compare(conc) == 0
    except QuantityError:
        return False


def evaluate(
    programming: Programming,
    library: Library,
    *,
    overrides: Sequence[Override] = (),
    rate_resolution: Decimal = DEFAULT_RATE_RESOLUTION,
) -> DersResult:
    """Check ``programming`` against ``library``; see the module docstring for what is checked.

    ``overrides`` pass soft limits: each must name a parameter whose check is a soft limit, a
    clinician, and a reason from the library's ``override_reasons``; any other override is refused
    and listed in :attr:`DersResult.refused_overrides` (it never passes a hard limit).
    Raises DersError only for a meaningless question (both ``drug`` and ``drug_code``, an override
    of a parameter that does not exist, a non-positive rate resolution).
    """
    p = programming
    if p.drug is not None and p.drug_code is not None:
        raise DersError("programming", "give the drug as an entry id or as a code, not both")
    if not rate_resolution > 0:
        raise DersError("rate_resolution", f"{rate_resolution} must be above zero")
    for o in overrides:
        if o.parameter not in PARAMETERS:
            raise DersError("override", f"unknown parameter {o.parameter!r} (one of {', '.join(PARAMETERS)})")
    e = _Eval(p, library, rate_resolution)
    area = library.care_areas.get(p.care_area)
    if area is None:
        e.blocked(
            "care_area",
            Code.CARE_AREA,
            f"care area {p.care_area!r} is not in the library ({library.label}). Blocked.",
        )
    elif e.resolve(area):
        drug, rules = e.drug, e.rules
        if drug is None or rules is None:
            e.basic(area)
        else:
            e.concentration(drug)
            e.patient(drug, rules)
            e.dose(drug, rules)
            e.volume(rules, None)
            if p.bolus_dose is not None:
                e.amount("bolus", drug, drug.bolus_unit, rules.bolus_dose, p.bolus_dose, rules.bolus_volume)
            if p.bolus_rate is not None:
                e.bolus_rate(drug, rules, p.bolus_rate)
            if p.loading_dose is not None:
                e.amount("loading", drug, drug.loading_unit, rules.loading_dose, p.loading_dose, None)
    checks, refused = _apply_overrides(e.checks, overrides, library)
    return DersResult(
        library_hash=library.hash,
        library_version=library.version,
        care_area=p.care_area,
        drug=None if e.drug is None else e.drug.id,
        drug_display=None if e.drug is None else e.drug.display_name,
        checks=tuple(checks),
        rate_ml_h=e.rate_ml_h if not any(c.outcome in _HARD for c in checks) else None,
        advisory=None if e.rules is None else e.rules.advisory,
        refused_overrides=tuple(refused),
    )


def _apply_overrides(
    checks: list[Check], overrides: Sequence[Override], library: Library
) -> tuple[list[Check], list[tuple[Override, str]]]:
    reasons = {r.strip().casefold() for r in library.doc.override_reasons}
    refused: list[tuple[Override, str]] = []
    out = list(checks)
    for o in overrides:
        targets = [i for i, c in enumerate(out) if c.parameter == o.parameter]
        soft = [i for i in targets if out[i].outcome in _SOFT]
        if not o.clinician.strip():
            refused.append((o, "an override must name the clinician"))
        elif o.reason.strip().casefold() not in reasons:
            refused.append((o, f"reason {o.reason!r} is not one of the library's override reasons"))
        elif any(out[i].outcome in _HARD for i in targets):
            refused.append(
                (o, f"{o.parameter} is at a hard limit or not checkable; hard limits cannot be overridden")
            )
        elif not soft:
            refused.append((o, f"{o.parameter} is not at a soft limit; there is nothing to override"))
        else:
            for i in soft:
                c = out[i]
                out[i] = Check(
                    c.parameter,
                    c.outcome,
                    c.code,
                    f"{c.message} Overridden by {o.clinician}: {o.reason}.",
                    c.value,
                    c.limit,
                    c.limit_name,
                    c.source,
                    o,
                )
    return out, refused
