"""diff_libraries: one readable line per clinical change, in a stable order, and [] iff same hash."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from hypothesis import assume, event, find, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pumpgw.gateway.errors import QuantityError
from pumpgw.gateway.library import (
    AreaRules,
    CareArea,
    Codes,
    Concentration,
    Drug,
    Library,
    LibraryDocument,
    Limits,
    PumpLibrary,
    build,
    canonical_number,
    document_data,
    parse_library,
)
from pumpgw.gateway.library_diff import DiffLine, diff_documents, diff_libraries
from pumpgw.gateway.library_toml import render_toml
from pumpgw.gateway.quantity import Quantity, known_units


def _sibling(name: str) -> ModuleType:
    """A helper module of the tests folder, loaded by path (the folder is not a package)."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_pumpgw_tests_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


documents: Callable[[], st.SearchStrategy[LibraryDocument]] = _sibling("library_strategies").documents

FENTANYL = "fentanyl-50 (fentaNYL 50 microgram/mL)"


def example() -> Library:
    raw = resources.files("pumpgw.gateway").joinpath("examples/drug-library.example.toml").read_bytes()
    return parse_library(raw, "example")


def q(text: str) -> Quantity:
    return Quantity.parse(text)


def with_drug(doc: LibraryDocument, drug_id: str, **update: Any) -> LibraryDocument:
    drugs = [d.model_copy(update=update) if d.id == drug_id else d for d in doc.drugs]
    return doc.model_copy(update={"drugs": drugs})


def with_rules(doc: LibraryDocument, drug_id: str, area: str, **update: Any) -> LibraryDocument:
    drug = next(d for d in doc.drugs if d.id == drug_id)
    areas = dict(drug.care_areas, **{area: drug.care_areas[area].model_copy(update=update)})
    return with_drug(doc, drug_id, care_areas=areas)


def with_area(doc: LibraryDocument, area_id: str, **update: Any) -> LibraryDocument:
    areas = [a.model_copy(update=update) if a.id == area_id else a for a in doc.care_areas]
    return doc.model_copy(update={"care_areas": areas})


def diff(old: LibraryDocument, new: LibraryDocument) -> list[str]:
    return diff_libraries(build(old), build(new))


# --- no change ----------------------------------------------------------------------------------


def test_identical_libraries_have_no_differences() -> None:
    lib = example()
    assert diff_libraries(lib, lib) == []
    assert diff_libraries(lib, example()) == []


def test_a_rewritten_file_with_the_same_content_has_no_differences() -> None:
    lib = example()
    text = render_toml(lib.doc).replace('"100 ug"', '"100.0 ug"').replace('"50 mL"', '"5E+1 mL"')
    again = parse_library(text.encode(), "rewritten")
    assert diff_libraries(lib, again) == []


def test_a_quantity_written_differently_is_not_a_change() -> None:
    doc = example().doc
    rules = doc.drugs[0].care_areas["icu-adult"]
    assert rules.vtbi is not None
    other = with_rules(
        doc, "fentanyl-50", "icu-adult", vtbi=Limits(hard_max=Quantity(Decimal("50.000"), "mL"))
    )
    assert diff(doc, other) == []


def test_the_order_of_an_entrys_care_areas_is_not_a_change() -> None:
    doc = example().doc
    morphine = doc.drugs[2]
    flipped = dict(reversed(list(morphine.care_areas.items())))
    assert diff(doc, with_drug(doc, "morphine-1", care_areas=flipped)) == []


# --- the library itself -------------------------------------------------------------------------


def test_header_changes() -> None:
    doc = example().doc
    new = doc.model_copy(update={"version": 8, "name": "Ward library", "example": False, "notice": None})
    assert diff(doc, new) == [
        'name "Example library" → "Ward library"',
        "version 7 → 8",
        "example library: yes → no",
        'notice "EXAMPLE ONLY - not clinical advice. Limits are illustrative and were not clinically '
        'reviewed." → (none)',
    ]


def test_override_reasons_added_removed_and_reordered() -> None:
    doc = example().doc
    reasons = doc.override_reasons
    new = doc.model_copy(update={"override_reasons": [reasons[1], reasons[0], reasons[2], "Pump fault"]})
    assert diff(doc, new) == [
        'removed override reason "Emergency: clinician at the bedside"',
        'added override reason "Pump fault"',
        'override reasons reordered: "Dose confirmed with the prescriber", "Patient-specific protocol", '
        '"Titration to clinical effect per order" → "Patient-specific protocol", "Dose confirmed with the '
        'prescriber", "Titration to clinical effect per order"',
    ]


def test_pump_libraries() -> None:
    doc = example().doc
    new = doc.model_copy(update={"pump_libraries": [PumpLibrary(model="RIG-MC2", version="8")]})
    assert diff(doc, new) == ['pump library for model "RIG-MC2": version "7" → "8"']
    other = doc.model_copy(update={"pump_libraries": [PumpLibrary(model="RIG-NE", version="3")]})
    assert diff(doc, other) == [
        'removed pump library for model "RIG-MC2" (was version "7")',
        'added pump library for model "RIG-NE": version "3"',
    ]


# --- care areas ---------------------------------------------------------------------------------


def test_care_area_changes() -> None:
    doc = example().doc
    new = with_area(doc, "ward-adult", basic_infusion="blocked", name="Adult ward")
    new = with_area(new, "icu-adult", basic_rate=Limits(soft_max=q("250 mL/h"), hard_max=q("400 mL/h")))
    assert diff(doc, new) == [
        "care area icu-adult: basic rate hard max 500 mL/h → 400 mL/h",
        'care area ward-adult: name "Adult general ward" → "Adult ward"',
        "care area ward-adult: basic infusion allowed → blocked",
    ]


def test_care_areas_added_removed_and_reordered() -> None:
    doc = example().doc
    nicu = CareArea(id="nicu", name="Neonatal ICU", basic_infusion="blocked")
    icu, ward, maternity = doc.care_areas
    new = doc.model_copy(update={"care_areas": [ward, icu, nicu]})
    assert diff(doc, new) == [
        'removed care area maternity ("Maternity")',
        'added care area nicu ("Neonatal ICU"): basic infusion blocked',
        "care areas reordered: icu-adult, ward-adult, maternity → ward-adult, icu-adult, nicu",
    ]
    assert diff(doc, doc.model_copy(update={"care_areas": [icu, ward, maternity]})) == []


# --- drug entries -------------------------------------------------------------------------------


def test_a_limit_changed() -> None:
    doc = example().doc
    new = with_rules(
        doc, "fentanyl-50", "icu-adult", bolus_dose=Limits(soft_max=q("50 ug"), hard_max=q("50 ug"))
    )
    assert diff(doc, new) == [f"{FENTANYL}, icu-adult: bolus dose hard max 100 ug → 50 ug"]


def test_a_limit_added_and_removed() -> None:
    doc = example().doc
    old = with_rules(doc, "fentanyl-50", "icu-adult", dose=Limits(hard_max=q("300 ug/h")))
    assert diff(old, doc) == [f"{FENTANYL}, icu-adult: dose soft max (none) → 200 ug/h"]
    assert diff(doc, old) == [f"{FENTANYL}, icu-adult: dose soft max 200 ug/h → (none)"]
    no_rate = with_rules(doc, "fentanyl-50", "icu-adult", bolus_rate=None, duration=Limits(hard_max=q("1 h")))
    assert diff(doc, no_rate) == [
        f"{FENTANYL}, icu-adult: bolus rate hard max 300 mL/h → (none)",
        f"{FENTANYL}, icu-adult: duration hard max (none) → 1 h",
    ]


def test_the_same_amount_in_another_unit_is_shown_as_such() -> None:
    doc = example().doc
    new = with_rules(
        doc, "fentanyl-50", "icu-adult", bolus_dose=Limits(soft_max=q("50 ug"), hard_max=q("0.1 mg"))
    )
    assert diff(doc, new) == [
        f"{FENTANYL}, icu-adult: bolus dose hard max 100 ug → 0.1 mg (same amount, other unit)"
    ]


def test_concentration_changes() -> None:
    doc = example().doc
    weaker = with_drug(
        doc, "fentanyl-50", concentration=Concentration(amount=q("1000 ug"), volume=q("50 mL"))
    )
    assert diff(doc, weaker) == [f"{FENTANYL}: concentration 2500 ug in 50 mL → 1000 ug in 50 mL"]
    in_mg = with_drug(doc, "fentanyl-50", concentration=Concentration(amount=q("2.5 mg"), volume=q("50 mL")))
    assert diff(doc, in_mg) == [
        f"{FENTANYL}: concentration 2500 ug in 50 mL → 2.5 mg in 50 mL (same amounts, other units)"
    ]
    dobutamine = "dobutamine-variable (DOBUTamine (variable concentration))"
    wider = with_drug(
        doc,
        "dobutamine-variable",
        concentration=Concentration(variable=True, min=q("0.5 mg/mL"), max=q("8 mg/mL")),
    )
    assert diff(doc, wider) == [
        f"{dobutamine}: concentration variable 0.5 mg/mL to 5 mg/mL → variable 0.5 mg/mL to 8 mg/mL"
    ]
    assert diff(doc, with_drug(doc, "fentanyl-50", concentration=None)) == [
        f"{FENTANYL}: concentration 2500 ug in 50 mL → (none)"
    ]


def test_drug_added_and_removed() -> None:
    doc = example().doc
    ketamine = Drug(
        id="ketamine-10",
        name="ketamine",
        display_name="ketAMINE 10 mg/mL",
        concentration=Concentration(amount=q("500 mg"), volume=q("50 mL")),
        dose_unit="mg/kg/h",
        care_areas={
            "ward-adult": AreaRules(dose=Limits(hard_max=q("1 mg/kg/h"))),
            "icu-adult": AreaRules(dose=Limits(hard_max=q("2 mg/kg/h"))),
        },
    )
    new = doc.model_copy(update={"drugs": [*doc.drugs[1:], ketamine]})
    assert diff(doc, new) == [
        f"removed drug {FENTANYL}",
        "added drug ketamine-10 (ketAMINE 10 mg/mL) in icu-adult, ward-adult",
    ]


def test_care_areas_of_an_entry() -> None:
    doc = example().doc
    morphine = doc.drugs[2]
    label = "morphine-1 (morPHINE 1 mg/mL)"
    icu_only = {"icu-adult": morphine.care_areas["icu-adult"]}
    assert diff(doc, with_drug(doc, "morphine-1", care_areas=icu_only)) == [
        f"{label}: no longer in ward-adult"
    ]
    more = dict(morphine.care_areas, maternity=morphine.care_areas["ward-adult"])
    assert diff(doc, with_drug(doc, "morphine-1", care_areas=more)) == [f"{label}: now in maternity"]


def test_codes_added_removed_and_reordered() -> None:
    doc = example().doc
    codes = Codes(gtin=["09521234543213"], rxnorm=["4337", "1"], local=["FEN50"])
    assert diff(doc, with_drug(doc, "fentanyl-50", codes=codes)) == [
        f"{FENTANYL}: added rxnorm code 1",
        f"{FENTANYL}: added local code FEN50",
    ]
    two = Codes(gtin=["09521234543213", "09521234500018"], rxnorm=["4337"])
    old = with_drug(doc, "fentanyl-50", codes=two)
    swapped = with_drug(
        doc, "fentanyl-50", codes=Codes(gtin=["09521234500018", "09521234543213"], rxnorm=["4337"])
    )
    assert diff(old, doc) == [f"{FENTANYL}: removed gtin code 09521234500018"]
    assert diff(old, swapped) == [
        f"{FENTANYL}: gtin codes reordered: 09521234543213, 09521234500018 → 09521234500018, 09521234543213"
    ]


def test_advisory_and_weight_required() -> None:
    doc = example().doc
    new = with_rules(doc, "fentanyl-50", "icu-adult", advisory="Check the syringe.", weight_required=True)
    assert diff(doc, new) == [
        f'{FENTANYL}, icu-adult: advisory "High-alert opioid. Check the syringe concentration against the order: '
        '50 microgram/mL." → "Check the syringe."',
        f"{FENTANYL}, icu-adult: weight required (not set) → yes",
    ]
    gone = with_rules(doc, "fentanyl-50", "icu-adult", advisory=None)
    assert diff(doc, gone)[0].endswith('50 microgram/mL." → (none)')
    line_break = with_rules(doc, "fentanyl-50", "icu-adult", advisory="Two\nlines")
    assert diff(doc, line_break)[0].endswith('→ "Two\\nlines"')  # still one line


def test_entry_fields() -> None:
    doc = example().doc
    new = with_drug(
        doc,
        "fentanyl-50",
        name="fentanyl citrate",
        display_name="fentaNYL 50 mcg/mL",
        high_alert=False,
        dose_unit="ug/kg/h",
        bolus_unit=None,
        loading_unit="ug",
    )
    label = "fentanyl-50 (fentaNYL 50 mcg/mL)"
    assert diff(doc, new) == [
        f'{label}: name "fentanyl" → "fentanyl citrate"',
        f'{label}: display name "fentaNYL 50 microgram/mL" → "fentaNYL 50 mcg/mL"',
        f"{label}: high alert yes → no",
        f"{label}: dose unit ug/h → ug/kg/h",
        f"{label}: bolus unit ug → (none)",
        f"{label}: loading unit (none) → ug",
    ]


def test_drug_entries_reordered() -> None:
    doc = example().doc
    new = doc.model_copy(update={"drugs": [doc.drugs[1], doc.drugs[0], *doc.drugs[2:]]})
    assert diff(doc, new) == ["drug entries reordered (the order they are listed in; no clinical effect)"]


def test_lines_come_in_a_stable_order_library_care_areas_then_drugs_by_id() -> None:
    doc = example().doc
    new = doc.model_copy(update={"version": 8})
    new = with_rules(new, "morphine-1", "icu-adult", vtbi=Limits(hard_max=q("60 mL")))
    new = with_rules(new, "dopamine-1600", "icu-adult", vtbi=Limits(hard_max=q("200 mL")))
    new = with_area(new, "maternity", name="Obstetrics")
    lines = diff_documents(doc, new)
    assert [(line.section, line.key) for line in lines] == [
        ("library", ""),
        ("care_area", "maternity"),
        ("drug", "dopamine-1600"),
        ("drug", "morphine-1"),
    ]
    assert [str(line) for line in lines] == diff(doc, new)
    assert diff(doc, new) == diff(doc, new)
    assert isinstance(lines[0], DiffLine)


# --- the property: a line for every change, and none without one ---------------------------------

Path_ = tuple[str | int, ...]


def _paths(data: Any, path: Path_ = ()) -> list[Path_]:
    """Every path in plain document data (to containers and to leaves)."""
    out = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += _paths(value, (*path, i))
    return out


def _other_units(q: Quantity) -> list[str]:
    """Units of ``q``'s dimension that hold its value exactly."""
    out = []
    for unit in sorted(known_units()):
        try:
            out.append(f"{canonical_number(q.to(unit).value)} {unit}")
        except QuantityError:
            continue
    return out


@st.composite
def mutated(draw: st.DrawFn, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with one to three small edits, some of which change nothing in the canonical form."""
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)[1:]))
        parent: Any = data
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        value = parent[key]
        if isinstance(value, bool):
            parent[key] = draw(st.booleans())
        elif isinstance(value, int):
            parent[key] = value + draw(st.integers(0, 2))
        elif isinstance(value, str):
            try:
                quantity: Quantity | None = Quantity.parse(value)
            except QuantityError:
                quantity = None
            if quantity is not None:
                number = canonical_number(quantity.value)
                parent[key] = draw(
                    st.sampled_from(
                        [
                            f"{number}.0 {quantity.unit}"
                            if "." not in number
                            else f"{number}0 {quantity.unit}",
                            f"{quantity.value.normalize():E} {quantity.unit}",
                            f"{quantity.value + 1} {quantity.unit}",
                            *_other_units(quantity),
                        ]
                    )
                )
            elif value in ("allowed", "blocked"):
                parent[key] = draw(st.sampled_from(["allowed", "blocked"]))
            elif value.isdigit():
                parent[key] = value[:-1] + draw(st.sampled_from("0123456789"))
            else:
                parent[key] = value + draw(st.sampled_from(["", "x", "-2"]))
        elif isinstance(value, list) and value:
            how = draw(st.sampled_from(["reverse", "drop", "shuffle"]))
            if how == "drop":
                value.pop(draw(st.integers(0, len(value) - 1)))
            else:
                parent[key] = draw(st.permutations(value)) if how == "shuffle" else value[::-1]
        elif isinstance(value, dict) and value:
            how = draw(st.sampled_from(["reverse", "drop"]))
            if how == "drop":
                del value[draw(st.sampled_from(sorted(value)))]
            else:
                parent[key] = dict(reversed(list(value.items())))
    return data


def _library(data: dict[str, Any]) -> Library | None:
    """The (possibly clinically invalid) library of ``data``, if it has the document's shape."""
    try:
        return build(LibraryDocument.model_validate(data))
    except ValidationError:
        return None


EXAMPLE_DATA = document_data(example().doc)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_no_lines_if_and_only_if_the_hash_is_the_same(data: st.DataObject) -> None:
    old = _library(data.draw(mutated(EXAMPLE_DATA)) if data.draw(st.booleans()) else EXAMPLE_DATA)
    new = _library(data.draw(mutated(EXAMPLE_DATA)))
    assume(old is not None and new is not None)
    assert old is not None
    assert new is not None
    lines = diff_libraries(old, new)
    event("same hash" if old.hash == new.hash else "different hash")
    assert (lines == []) == (old.hash == new.hash), lines
    assert all("\n" not in line for line in lines)
    assert (diff_libraries(new, old) == []) == (lines == [])


@settings(max_examples=30, deadline=None)
@given(documents(), documents())
def test_generated_libraries(a: LibraryDocument, b: LibraryDocument) -> None:
    assert diff(a, a) == []
    assert (diff(a, b) == []) == (build(a).hash == build(b).hash)


def test_the_mutations_make_both_equal_and_different_libraries() -> None:
    """The property above is not vacuous: its edits give equal-hash and different-hash libraries."""
    original = example().hash

    def equal_but_rewritten(data: dict[str, Any]) -> bool:
        lib = _library(data)
        return lib is not None and lib.hash == original and data != EXAMPLE_DATA

    def different(data: dict[str, Any]) -> bool:
        lib = _library(data)
        return lib is not None and lib.hash != original

    rewritten = find(mutated(EXAMPLE_DATA), equal_but_rewritten, settings=settings(database=None))
    lib = _library(rewritten)
    assert lib is not None
    assert diff_libraries(example(), lib) == []
    changed = _library(find(mutated(EXAMPLE_DATA), different, settings=settings(database=None)))
    assert changed is not None
    assert diff_libraries(example(), changed) != []
