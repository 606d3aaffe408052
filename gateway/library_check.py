"""Clinical consistency of a drug library document: every problem, each with its path (pure).

Run on a document whose shape is already valid (:mod:`.library`). It never stops at the first
problem: a pharmacist fixing a 2,000-entry spreadsheet needs the whole list in one go. What it
checks:

- limits: every entry sets a hard maximum dose in each care area; soft inside hard
  (``hard_min <= soft_min <= soft_max <= hard_max``), one dimension per limit set and the one its
  parameter needs, no negative values, maxima above zero;
- dosing mode: the dose unit is a rate (per h or per min); an amount-based dose needs a
  concentration of the same amount kind (mass with mass, units with units); bolus and loading
  units are amounts of that kind; per-kg units need weight (``weight_required`` may not say
  otherwise); per-m2 units need the body surface area at the bedside (DERS blocks without it);
- concentrations: fixed (amount and volume, both above zero) or variable (min and max, min <= max),
  never both;
- references: every care area an entry names exists;
- duplicates: care area ids, drug ids, a code used by two entries, the same drug name and
  concentration twice, override reasons, pump models;
- impossible values: a weight range outside 0.2..650 kg, a BSA outside 0.05..5 m2.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from itertools import pairwise

from .dose import Concentration as ExactConcentration
from .errors import LibraryProblem, QuantityError
from .library import Concentration, Drug, LibraryDocument, Limits, canonical_number
from .quantity import Quantity, base_value, dimension_of, unit_parts

# Outside these a patient value is not plausible: a typo, or grams for kilograms.
_WEIGHT_RANGE = (Quantity(Decimal("0.2"), "kg"), Quantity(Decimal(650), "kg"))
_BSA_RANGE = (Quantity(Decimal("0.05"), "m2"), Quantity(Decimal(5), "m2"))


#: Codes that identify one product (one concentration): no two entries may share one. An RxNorm
#: code may name an ingredient (fentanyl, 4337) and so be shared by every concentration of it.
UNIQUE_CODE_SYSTEMS = frozenset({"gtin", "ndc", "dmd", "local"})


def gs1_check_digit_ok(digits: str) -> bool:
    """GS1 mod-10 (GTIN-8/12/13/14): weights 3,1,3,... from the rightmost digit of the body."""
    body, check = digits[:-1], int(digits[-1])
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


class _Checker:
    def __init__(self) -> None:
        self.problems: list[LibraryProblem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(LibraryProblem(path, message))

    def limits(self, path: str, limits: Limits | None, dimensions: Iterable[str], what: str) -> None:
        """Check one limit set: its dimension, signs and order."""
        if limits is None:
            return
        allowed = set(dimensions)
        if not allowed:
            return  # the unit these limits would be in is itself wrong, and reported once, there
        items = limits.items()
        if not items:
            self.add(
                path, f"{what}: no limit set (give at least one of hard_min, soft_min, soft_max, hard_max)"
            )
            return
        good: list[tuple[str, Quantity]] = []
        for name, q in items:
            if q.dimension not in allowed:
                self.add(
                    f"{path}.{name}",
                    f"{what}: {q} is {q.dimension}, expected {' or '.join(sorted(allowed))}",
                )
                continue
            if q.value < 0:
                self.add(f"{path}.{name}", f"{what}: {q} is negative")
                continue
            if name.endswith("_max") and q.value == 0:
                self.add(f"{path}.{name}", f"{what}: a maximum of {q} allows nothing")
                continue
            good.append((name, q))
        if len({q.dimension for _, q in good}) > 1:
            self.add(path, f"{what}: limits in different dimensions ({', '.join(str(q) for _, q in good)})")
            return
        for (lo_name, lo), (hi_name, hi) in pairwise(good):
            if base_value(lo) > base_value(hi):
                self.add(
                    f"{path}.{hi_name}",
                    f"{what}: {hi_name.replace('_', ' ')} {hi} is below {lo_name.replace('_', ' ')} {lo}"
                    + (" (soft limits must lie inside the hard ones)" if "soft" in lo_name + hi_name else ""),
                )

    def in_range(
        self, path: str, limits: Limits | None, bounds: tuple[Quantity, Quantity], what: str
    ) -> None:
        if limits is None:
            return
        lo, hi = bounds
        for name, q in limits.items():
            if q.dimension != lo.dimension:
                continue  # reported by limits()
            if not base_value(lo) <= base_value(q) <= base_value(hi):
                self.add(f"{path}.{name}", f"{what}: {q} is not a plausible value (expected {lo} to {hi})")


def _unit_problem(unit: str) -> str | None:
    try:
        unit_parts(unit)
    except QuantityError as exc:
        return exc.reason
    return None


def _concentration_kind(conc: Concentration) -> str | None:
    for q in (conc.amount, conc.min, conc.max):
        if q is not None:
            dim = q.dimension
            return dim.split("/")[0]
    return None


def _check_concentration(c: _Checker, path: str, drug: Drug, kind: str | None) -> None:
    conc = drug.concentration
    if conc is None:
        if kind not in (None, "volume"):
            c.add(
                f"{path}.concentration",
                f"{drug.id}: dosing in {drug.dose_unit} needs a concentration to convert to mL/h",
            )
        return
    fixed = conc.amount is not None or conc.volume is not None
    if fixed and conc.variable:
        c.add(
            f"{path}.concentration",
            f"{drug.id}: a concentration is either fixed (amount, volume) or variable (min, max), not both",
        )
        return
    if not conc.variable:
        if conc.amount is None or conc.volume is None:
            c.add(f"{path}.concentration", f"{drug.id}: a fixed concentration needs amount and volume")
            return
        if conc.min is not None or conc.max is not None:
            c.add(
                f"{path}.concentration",
                f"{drug.id}: min and max belong to a variable concentration (variable = true)",
            )
        amount_dim = conc.amount.dimension
        if amount_dim not in ("mass", "units", "substance", "equivalents"):
            c.add(
                f"{path}.concentration.amount",
                f"{drug.id}: {conc.amount} is not a drug amount (mass, units, mmol or meq)",
            )
        elif kind not in (None, "volume", amount_dim):
            c.add(
                f"{path}.concentration.amount",
                f"{drug.id}: {conc.amount} ({amount_dim}) does not fit "
                f"the dose unit {drug.dose_unit} ({kind})",
            )
        if conc.volume.dimension != "volume":
            c.add(f"{path}.concentration.volume", f"{drug.id}: {conc.volume} is not a volume")
        for name, q in (("amount", conc.amount), ("volume", conc.volume)):
            if q.value <= 0:
                c.add(f"{path}.concentration.{name}", f"{drug.id}: {q} must be above zero")
        return
    if conc.min is None or conc.max is None:
        c.add(f"{path}.concentration", f"{drug.id}: a variable concentration needs min and max")
        return
    conc_kind = _concentration_kind(conc)
    for name, q in (("min", conc.min), ("max", conc.max)):
        if not q.dimension.endswith("/volume") or q.dimension == "volume/volume":
            c.add(
                f"{path}.concentration.{name}", f"{drug.id}: {q} is not a concentration (amount per volume)"
            )
            return
        if q.value <= 0:
            c.add(f"{path}.concentration.{name}", f"{drug.id}: {q} must be above zero")
    if conc.min.dimension != conc.max.dimension:
        c.add(
            f"{path}.concentration", f"{drug.id}: min {conc.min} and max {conc.max} are different dimensions"
        )
    elif base_value(conc.min) > base_value(conc.max):
        c.add(f"{path}.concentration.max", f"{drug.id}: max {conc.max} is below min {conc.min}")
    if kind not in (None, "volume") and conc_kind != kind:
        c.add(
            f"{path}.concentration",
            f"{drug.id}: a {conc_kind} concentration does not fit the dose unit {drug.dose_unit}",
        )


def _check_drug(c: _Checker, i: int, drug: Drug, areas: set[str]) -> None:
    path = f"drugs[{i}]"
    kind: str | None = None
    bases: set[str] = set()
    problem = _unit_problem(drug.dose_unit)
    if problem:
        c.add(f"{path}.dose_unit", f"{drug.id}: {drug.dose_unit!r}: {problem}")
    else:
        parts = unit_parts(drug.dose_unit)
        kind = parts.amount_kind
        if parts.per_time is None:
            c.add(f"{path}.dose_unit", f"{drug.id}: {drug.dose_unit} is not a rate (per h or per min)")
        if parts.basis:
            bases.add(parts.basis)
    for key, unit in (("bolus_unit", drug.bolus_unit), ("loading_unit", drug.loading_unit)):
        if unit is None:
            continue
        problem = _unit_problem(unit)
        if problem:
            c.add(f"{path}.{key}", f"{drug.id}: {unit!r}: {problem}")
            continue
        parts = unit_parts(unit)
        if parts.per_time is not None:
            c.add(
                f"{path}.{key}",
                f"{drug.id}: {unit} is a rate; a {key.split('_')[0]} is an amount (ug, ug/kg, mL)",
            )
        elif kind is not None and parts.amount_kind not in (kind, "volume"):
            c.add(
                f"{path}.{key}",
                f"{drug.id}: {unit} ({parts.amount_kind}) does not fit "
                f"the dose unit {drug.dose_unit} ({kind})",
            )
        if parts.basis:
            bases.add(parts.basis)
    _check_concentration(c, path, drug, kind)

    dose_dims = [dimension_of(drug.dose_unit)] if kind else []
    bolus_dims = (
        [dimension_of(drug.bolus_unit)] if drug.bolus_unit and not _unit_problem(drug.bolus_unit) else []
    )
    loading_dims = (
        [dimension_of(drug.loading_unit)]
        if drug.loading_unit and not _unit_problem(drug.loading_unit)
        else []
    )
    bolus_rate_dims = ["volume/time"]
    if kind:
        bolus_rate_dims += [f"{kind}/time", f"{kind}/body mass/time"]
    if not drug.care_areas:
        c.add(f"{path}.care_areas", f"{drug.id}: the entry is in no care area")
    for area_id, rules in drug.care_areas.items():
        ap = f"{path}.care_areas.{area_id}"
        if area_id not in areas:
            c.add(ap, f"{drug.id}: care area {area_id!r} is not defined in care_areas")
        c.limits(f"{ap}.dose", rules.dose, dose_dims, f"{drug.id} dose")
        if rules.bolus_dose is not None and drug.bolus_unit is None:
            c.add(f"{ap}.bolus_dose", f"{drug.id}: bolus limits need the entry's bolus_unit")
        c.limits(f"{ap}.bolus_dose", rules.bolus_dose, bolus_dims, f"{drug.id} bolus dose")
        c.limits(f"{ap}.bolus_rate", rules.bolus_rate, bolus_rate_dims, f"{drug.id} bolus rate")
        c.limits(f"{ap}.bolus_volume", rules.bolus_volume, ["volume"], f"{drug.id} bolus volume")
        if rules.loading_dose is not None and drug.loading_unit is None:
            c.add(f"{ap}.loading_dose", f"{drug.id}: loading dose limits need the entry's loading_unit")
        c.limits(f"{ap}.loading_dose", rules.loading_dose, loading_dims, f"{drug.id} loading dose")
        c.limits(f"{ap}.vtbi", rules.vtbi, ["volume"], f"{drug.id} VTBI")
        c.limits(f"{ap}.duration", rules.duration, ["time"], f"{drug.id} duration")
        c.limits(f"{ap}.weight", rules.weight, ["body mass"], f"{drug.id} patient weight")
        c.in_range(f"{ap}.weight", rules.weight, _WEIGHT_RANGE, f"{drug.id} patient weight")
        c.limits(f"{ap}.bsa", rules.bsa, ["area"], f"{drug.id} body surface area")
        c.in_range(f"{ap}.bsa", rules.bsa, _BSA_RANGE, f"{drug.id} body surface area")
        if "kg" in bases and rules.weight_required is False:
            c.add(
                f"{ap}.weight_required",
                f"{drug.id}: dosing per kg needs the patient's weight; weight_required cannot be false",
            )
        if rules.dose is None or rules.dose.hard_max is None:
            c.add(
                f"{ap}.dose",
                f"{drug.id}: no hard maximum dose in this care area (every entry must set dose.hard_max)",
            )


def _duplicates(c: _Checker, path: str, values: Iterable[tuple[int, str]], what: str) -> None:
    seen: dict[str, int] = {}
    for i, value in values:
        if value in seen:
            c.add(f"{path}[{i}]", f"{what} {value!r} is used twice (first at {path}[{seen[value]}])")
        else:
            seen[value] = i


def _concentration_key(drug: Drug) -> str:
    conc = drug.concentration
    if conc is None:
        return "-"
    if conc.variable:
        if conc.min is None or conc.max is None:
            return "?"
        return f"variable {canonical_number(base_value(conc.min))}..{canonical_number(base_value(conc.max))}"
    if conc.amount is None or conc.volume is None:
        return "?"
    try:
        fixed = ExactConcentration(conc.amount, conc.volume)
    except QuantityError:
        return "?"  # reported by _check_concentration
    # Per mL in base units, so 2500 ug in 50 mL and 50 ug in 1 mL are the same concentration.
    return f"{canonical_number(fixed.per_ml())} {fixed.kind}/mL"


def check_document(doc: LibraryDocument) -> list[LibraryProblem]:
    """Every clinical consistency problem of ``doc`` (an empty list when it is valid)."""
    c = _Checker()
    _duplicates(c, "care_areas", ((i, a.id) for i, a in enumerate(doc.care_areas)), "care area id")
    _duplicates(c, "drugs", ((i, d.id) for i, d in enumerate(doc.drugs)), "drug id")
    _duplicates(
        c, "override_reasons", enumerate(r.strip().lower() for r in doc.override_reasons), "override reason"
    )
    _duplicates(c, "pump_libraries", ((i, p.model) for i, p in enumerate(doc.pump_libraries)), "pump model")
    _duplicates(
        c,
        "drugs",
        ((i, f"{d.name.lower()} {_concentration_key(d)} {d.dose_unit}") for i, d in enumerate(doc.drugs)),
        "drug, concentration and dose unit",
    )
    code_owner: dict[tuple[str, str], str] = {}
    for i, drug in enumerate(doc.drugs):
        for system, codes in drug.codes:
            for code in codes:
                if system == "gtin" and not gs1_check_digit_ok(code):
                    c.add(f"drugs[{i}].codes.gtin", f"{drug.id}: GTIN {code} has a wrong check digit")
                if system not in UNIQUE_CODE_SYSTEMS:
                    continue
                owner = code_owner.setdefault((system, code), drug.id)
                if owner != drug.id:
                    c.add(
                        f"drugs[{i}].codes.{system}",
                        f"{drug.id}: {system} code {code} is also the code of {owner}",
                    )
    areas = {a.id for a in doc.care_areas}
    for i, area in enumerate(doc.care_areas):
        c.limits(
            f"care_areas[{i}].basic_rate", area.basic_rate, ["volume/time"], f"{area.id} basic infusion rate"
        )
        c.limits(f"care_areas[{i}].basic_vtbi", area.basic_vtbi, ["volume"], f"{area.id} basic infusion VTBI")
        if area.basic_infusion == "allowed" and (area.basic_rate is None or area.basic_rate.hard_max is None):
            c.add(
                f"care_areas[{i}].basic_rate",
                f"{area.id}: basic infusions are allowed, so a rate hard_max is required",
            )
    for i, drug in enumerate(doc.drugs):
        _check_drug(c, i, drug, areas)
    return c.problems
