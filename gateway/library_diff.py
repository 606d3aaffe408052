"""What changed between two versions of a drug library, in words a pharmacist reviews (pure).

:func:`diff_libraries` lists the changes one line each, in a stable order: the library's own keys
(name, version, example flag, notice, override reasons, pump libraries), then the care areas by id,
then the drug entries by id. For example::

    version 7 → 8
    added override reason "Pump fault: manual programming"
    pump library for model "RIG-MC2": version "7" → "8"
    care area ward-adult: basic infusion allowed → blocked
    care area icu-adult: basic rate hard max 500 mL/h → 400 mL/h
    added drug ketamine-10 (ketAMINE 10 mg/mL) in icu-adult, ward-adult
    removed drug dopamine-1600 (DOPamine 1600 microgram/mL)
    fentanyl-50 (fentaNYL 50 microgram/mL): concentration 2500 ug in 50 mL → 1000 ug in 50 mL
    fentanyl-50 (fentaNYL 50 microgram/mL): added gtin code 09521234500018
    fentanyl-50 (fentaNYL 50 microgram/mL): no longer in ward-adult
    fentanyl-50 (fentaNYL 50 microgram/mL), icu-adult: bolus dose hard max 100 ug → 50 ug
    fentanyl-50 (fentaNYL 50 microgram/mL), icu-adult: dose soft max (none) → 200 ug/h
    fentanyl-50 (fentaNYL 50 microgram/mL), icu-adult: advisory "Old text." → "New text."

Every line about a drug entry names it by id and (new, or for a removed entry old) display name.
Texts (names, advisories, reasons, pump models and versions) are shown quoted, with line breaks and
other control characters escaped, so that each change stays on one line; ``(none)`` is a value
that is not set. :func:`diff_documents` gives the same lines as :class:`DiffLine` (section and id
too), for callers that group them.

What counts as a change: exactly what changes the library's identity (:func:`.library.library_hash`),
so ``diff_libraries(a, b) == []`` if and only if ``a.hash == b.hash``. Consequently:

- a quantity written differently with the same value and unit (``"100 mL"`` and ``"100.0 mL"``) is
  not a change: both have the same canonical text;
- the same amount in another unit (``"0.1 mg"`` → ``"100 ug"``) *is* a change of the document and is
  listed, with ``(same amount, other unit)`` after it, so a reviewer sees at once that the limit
  itself did not move. The same holds for a concentration whose amount and volume are each the same
  amount in other units;
- a change in the order of care areas, drug entries, override reasons, pump libraries or codes is
  listed (``drug entries reordered``), because the order is part of the document, although it has no
  clinical effect. The order of the care areas inside one drug entry is not part of it.

Added entries and care areas are one line each (with the care areas an added entry is in); their
limits are reviewed in the entry itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from .library import (
    CODE_SYSTEMS,
    LIMIT_NAMES,
    AreaRules,
    CareArea,
    Concentration,
    Drug,
    Library,
    LibraryDocument,
    Limits,
    quantity_text,
)
from .quantity import Quantity, base_value

ARROW: Final = "→"
NONE: Final = "(none)"

#: How each limit set of a care-area rule is named in a diff line.
LIMIT_SET_NAMES: Final = {
    "weight": "weight",
    "bsa": "BSA",
    "dose": "dose",
    "bolus_dose": "bolus dose",
    "bolus_rate": "bolus rate",
    "bolus_volume": "bolus volume",
    "loading_dose": "loading dose",
    "vtbi": "VTBI",
    "duration": "duration",
}

Section = Literal["library", "care_area", "drug"]


@dataclass(frozen=True, slots=True)
class DiffLine:
    """One change: the ``section`` it belongs to, the care-area or drug id it is about (``key``, empty
    for the library itself) and the ``text`` shown to people."""

    section: Section
    key: str
    text: str

    def __str__(self) -> str:
        return self.text


# --- how values are shown -----------------------------------------------------------------------


def _text(value: str | None) -> str:
    """A text value on one line: ``"Check glucose hourly."`` (JSON quoting), or ``(none)``."""
    return NONE if value is None else json.dumps(value, ensure_ascii=False)


def _qty(q: Quantity | None) -> str:
    return NONE if q is None else quantity_text(q)


def _same_amount(old: Quantity | None, new: Quantity | None) -> bool:
    """Both set, in the same dimension, with the same value in its base unit."""
    return (
        old is not None
        and new is not None
        and old.dimension == new.dimension
        and base_value(old) == base_value(new)
    )


def _quantity_change(old: Quantity | None, new: Quantity | None) -> str | None:
    """``"100 ug → 50 ug"``, or None if the two have the same canonical text."""
    if _qty(old) == _qty(new):
        return None
    note = " (same amount, other unit)" if _same_amount(old, new) else ""
    return f"{_qty(old)} {ARROW} {_qty(new)}{note}"


def _flag(value: bool | None) -> str:
    return "(not set)" if value is None else ("yes" if value else "no")


def _concentration(conc: Concentration | None) -> str:
    """``2500 ug in 50 mL``, ``variable 0.5 mg/mL to 5 mg/mL``, or ``(none)``.

    Shows every key that is set, so that two different concentrations never read the same (even
    ones that the clinical checks would refuse).
    """
    if conc is None:
        return NONE
    pieces = []
    if conc.amount is not None or conc.volume is not None:
        pieces.append(f"{_qty(conc.amount)} in {_qty(conc.volume)}")
    ranged = conc.min is not None or conc.max is not None
    span = f" {_qty(conc.min)} to {_qty(conc.max)}" if ranged else ""
    if conc.variable:
        pieces.append(f"variable{span}")
    elif ranged:
        pieces.append(f"{span.strip()} (not marked variable)")
    return "; ".join(pieces) or "(empty)"


def _concentration_quantities(conc: Concentration | None) -> list[Quantity | None]:
    return [] if conc is None else [conc.amount, conc.volume, conc.min, conc.max]


def _concentration_change(old: Concentration | None, new: Concentration | None) -> str | None:
    before, after = _concentration(old), _concentration(new)
    if before == after:
        return None
    pairs = list(zip(_concentration_quantities(old), _concentration_quantities(new), strict=False))
    same = (
        old is not None
        and new is not None
        and old.variable == new.variable
        and all((a is None and b is None) or _same_amount(a, b) for a, b in pairs)
    )
    return f"concentration {before} {ARROW} {after}" + (" (same amounts, other units)" if same else "")


def _limit_changes(what: str, old: Limits | None, new: Limits | None) -> list[str]:
    """``["bolus dose hard max 100 ug → 50 ug", ...]`` for one limit set."""
    out = []
    for name in LIMIT_NAMES:
        change = _quantity_change(
            None if old is None else getattr(old, name), None if new is None else getattr(new, name)
        )
        if change is not None:
            out.append(f"{what} {name.replace('_', ' ')} {change}")
    if not out and (old is None) != (new is None):
        # A limit set with no limit in it, where the other side has none at all (never valid).
        before, after = ("(empty)", NONE) if new is None else (NONE, "(empty)")
        out.append(f"{what} limits {before} {ARROW} {after}")
    return out


def _list_changes(what: str, old: Sequence[str], new: Sequence[str], show: Callable[[str], str]) -> list[str]:
    """Removed, added, then reordered members of a list of texts (``what`` names one member)."""
    removed = [v for v in old if v not in new]
    added = [v for v in new if v not in old]
    out = [f"removed {what} {show(v)}" for v in removed] + [f"added {what} {show(v)}" for v in added]
    kept_old = [v for v in old if v in new]
    kept_new = [v for v in new if v in old]
    if kept_old != kept_new:
        out.append(
            f"{what}s reordered: {', '.join(map(show, kept_old))} {ARROW} {', '.join(map(show, kept_new))}"
        )
    return out


def _order_changed(old: Sequence[str], new: Sequence[str]) -> bool:
    """True if the members present in both come in another order."""
    return [k for k in old if k in new] != [k for k in new if k in old]


# --- sections -----------------------------------------------------------------------------------


def _library_lines(old: LibraryDocument, new: LibraryDocument) -> list[str]:
    out = []  # format: one value only (a new format is a new document model)
    if old.name != new.name:
        out.append(f"name {_text(old.name)} {ARROW} {_text(new.name)}")
    if old.version != new.version:
        out.append(f"version {old.version} {ARROW} {new.version}")
    if old.example != new.example:
        out.append(f"example library: {_flag(old.example)} {ARROW} {_flag(new.example)}")
    if old.notice != new.notice:
        out.append(f"notice {_text(old.notice)} {ARROW} {_text(new.notice)}")
    out += _list_changes("override reason", old.override_reasons, new.override_reasons, _text)
    old_pumps = {p.model: p.version for p in old.pump_libraries}
    new_pumps = {p.model: p.version for p in new.pump_libraries}
    for model in old_pumps.keys() - new_pumps.keys():
        out.append(f"removed pump library for model {_text(model)} (was version {_text(old_pumps[model])})")
    for model in new_pumps.keys() - old_pumps.keys():
        out.append(f"added pump library for model {_text(model)}: version {_text(new_pumps[model])}")
    for model in old_pumps.keys() & new_pumps.keys():
        if old_pumps[model] != new_pumps[model]:
            change = f"{_text(old_pumps[model])} {ARROW} {_text(new_pumps[model])}"
            out.append(f"pump library for model {_text(model)}: version {change}")
    old_models = [p.model for p in old.pump_libraries]
    new_models = [p.model for p in new.pump_libraries]
    if _order_changed(old_models, new_models) or len(old_models) != len(old_pumps):
        out.append("pump libraries reordered")
    return out


def _area_lines(old: CareArea | None, new: CareArea | None) -> list[str]:
    if new is None:
        return [] if old is None else [f"removed care area {old.id} ({_text(old.name)})"]
    if old is None:
        return [f"added care area {new.id} ({_text(new.name)}): basic infusion {new.basic_infusion}"]
    prefix = f"care area {new.id}: "
    out = []
    if old.name != new.name:
        out.append(f"name {_text(old.name)} {ARROW} {_text(new.name)}")
    if old.basic_infusion != new.basic_infusion:
        out.append(f"basic infusion {old.basic_infusion} {ARROW} {new.basic_infusion}")
    out += _limit_changes("basic rate", old.basic_rate, new.basic_rate)
    out += _limit_changes("basic VTBI", old.basic_vtbi, new.basic_vtbi)
    return [prefix + line for line in out]


def _rules_lines(old: AreaRules, new: AreaRules) -> list[str]:
    out = []
    if old.advisory != new.advisory:
        out.append(f"advisory {_text(old.advisory)} {ARROW} {_text(new.advisory)}")
    if old.weight_required != new.weight_required:
        out.append(f"weight required {_flag(old.weight_required)} {ARROW} {_flag(new.weight_required)}")
    for name, what in LIMIT_SET_NAMES.items():
        out += _limit_changes(what, getattr(old, name), getattr(new, name))
    return out


def drug_label(drug: Drug) -> str:
    """``fentanyl-50 (fentaNYL 50 microgram/mL)``: how a diff line names a drug entry."""
    return f"{drug.id} ({drug.display_name})"


def _drug_lines(old: Drug | None, new: Drug | None) -> list[str]:
    if new is None:
        return [] if old is None else [f"removed drug {drug_label(old)}"]
    if old is None:
        return [f"added drug {drug_label(new)} in {', '.join(sorted(new.care_areas)) or NONE}"]
    label = drug_label(new)
    out = []
    if old.name != new.name:
        out.append(f"name {_text(old.name)} {ARROW} {_text(new.name)}")
    if old.display_name != new.display_name:
        out.append(f"display name {_text(old.display_name)} {ARROW} {_text(new.display_name)}")
    if old.high_alert != new.high_alert:
        out.append(f"high alert {_flag(old.high_alert)} {ARROW} {_flag(new.high_alert)}")
    for system in CODE_SYSTEMS:
        out += _list_changes(f"{system} code", getattr(old.codes, system), getattr(new.codes, system), str)
    conc = _concentration_change(old.concentration, new.concentration)
    if conc is not None:
        out.append(conc)
    for key, what in (
        ("dose_unit", "dose unit"),
        ("bolus_unit", "bolus unit"),
        ("loading_unit", "loading unit"),
    ):
        before, after = getattr(old, key), getattr(new, key)
        if before != after:
            out.append(f"{what} {before or NONE} {ARROW} {after or NONE}")
    out += [f"no longer in {a}" for a in sorted(old.care_areas.keys() - new.care_areas.keys())]
    out += [f"now in {a}" for a in sorted(new.care_areas.keys() - old.care_areas.keys())]
    lines = [f"{label}: {line}" for line in out]
    for area in sorted(old.care_areas.keys() & new.care_areas.keys()):
        lines += [
            f"{label}, {area}: {line}" for line in _rules_lines(old.care_areas[area], new.care_areas[area])
        ]
    return lines


def diff_documents(old: LibraryDocument, new: LibraryDocument) -> list[DiffLine]:
    """Every change from ``old`` to ``new`` (see the module docstring), as structured lines."""
    out = [DiffLine("library", "", text) for text in _library_lines(old, new)]
    old_areas = {a.id: a for a in old.care_areas}
    new_areas = {a.id: a for a in new.care_areas}
    for area_id in sorted(old_areas.keys() | new_areas.keys()):
        lines = _area_lines(old_areas.get(area_id), new_areas.get(area_id))
        out += [DiffLine("care_area", area_id, text) for text in lines]
    old_ids, new_ids = [a.id for a in old.care_areas], [a.id for a in new.care_areas]
    if _order_changed(old_ids, new_ids) or len(old_ids) != len(old_areas) or len(new_ids) != len(new_areas):
        out.append(
            DiffLine(
                "care_area", "", f"care areas reordered: {', '.join(old_ids)} {ARROW} {', '.join(new_ids)}"
            )
        )
    old_drugs = {d.id: d for d in old.drugs}
    new_drugs = {d.id: d for d in new.drugs}
    for drug_id in sorted(old_drugs.keys() | new_drugs.keys()):
        lines = _drug_lines(old_drugs.get(drug_id), new_drugs.get(drug_id))
        out += [DiffLine("drug", drug_id, text) for text in lines]
    old_ids, new_ids = [d.id for d in old.drugs], [d.id for d in new.drugs]
    if _order_changed(old_ids, new_ids) or len(old_ids) != len(old_drugs) or len(new_ids) != len(new_drugs):
        out.append(
            DiffLine("drug", "", "drug entries reordered (the order they are listed in; no clinical effect)")
        )
    return out


def diff_libraries(old: Library, new: Library) -> list[str]:
    """Every change from ``old`` to ``new``, one readable line each; ``[]`` iff the hashes are equal."""
    return [line.text for line in diff_documents(old.doc, new.doc)]
