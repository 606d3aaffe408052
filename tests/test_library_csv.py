"""Spreadsheet authoring: the CSV export, the import with every problem at its line and column,
and export -> import keeping the library's hash."""

from __future__ import annotations

import csv
import importlib.util
import io
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pumpgw.gateway.errors import LibraryError
from pumpgw.gateway.library import Library, LibraryDocument, build, library_hash, parse_library
from pumpgw.gateway.library_csv import COLUMNS, export_csv, import_csv


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


def example() -> Library:
    raw = resources.files("pumpgw.gateway").joinpath("examples/drug-library.example.toml").read_bytes()
    return parse_library(raw, "example")


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def csv_of(rows: Sequence[dict[str, str]], columns: Sequence[str] = COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def problems(text: str, base: LibraryDocument | None = None) -> list[str]:
    """The problems import_csv reports, as ``"<path>: <message>"``."""
    with pytest.raises(LibraryError) as caught:
        import_csv(text, "drugs.csv", example().doc if base is None else base)
    assert caught.value.source == "drugs.csv"
    return [str(p) for p in caught.value.problems]


def edited(**changes: dict[str, str]) -> str:
    """The example's CSV with cells changed: ``edited(line2={"dose_hard_max": "1 ug/h"})``."""
    rows = rows_of(export_csv(example()))
    for key, cells in changes.items():
        rows[int(key.removeprefix("line")) - 2].update(cells)
    return csv_of(rows)


# Lines of the example's rows (the header is line 1).
FENTANYL_50, FENTANYL_10, MORPHINE_ICU, MORPHINE_WARD, PROPOFOL = 2, 3, 4, 5, 6
HEPARIN_ICU, HEPARIN_WARD, MAGNESIUM, HARTMANNS_MATERNITY = 11, 12, 18, 22


# --- the format ---------------------------------------------------------------------------------


def test_header_is_stable() -> None:
    limits = [
        f"{s}_{n}"
        for s in (
            "weight",
            "bsa",
            "dose",
            "bolus_dose",
            "bolus_rate",
            "bolus_volume",
            "loading_dose",
            "vtbi",
            "duration",
        )
        for n in ("hard_min", "soft_min", "soft_max", "hard_max")
    ]
    assert list(COLUMNS) == [
        "drug_id",
        "name",
        "display_name",
        "high_alert",
        "gtin",
        "ndc",
        "dmd",
        "rxnorm",
        "local",
        "concentration_amount",
        "concentration_volume",
        "concentration_variable",
        "concentration_min",
        "concentration_max",
        "dose_unit",
        "bolus_unit",
        "loading_unit",
        "care_area",
        "advisory",
        "weight_required",
        *limits,
    ]
    assert export_csv(example()).startswith(",".join(COLUMNS) + "\r\n")


def test_export_writes_one_row_per_entry_and_care_area() -> None:
    text = export_csv(example())
    assert text.endswith("\r\n")
    rows = rows_of(text)
    assert len(rows) == sum(len(d.care_areas) for d in example().doc.drugs) == 21
    fentanyl = rows[FENTANYL_50 - 2]
    assert {k: v for k, v in fentanyl.items() if v} == {
        "drug_id": "fentanyl-50",
        "name": "fentanyl",
        "display_name": "fentaNYL 50 microgram/mL",
        "high_alert": "true",
        "gtin": "09521234543213",
        "rxnorm": "4337",
        "concentration_amount": "2500 ug",
        "concentration_volume": "50 mL",
        "concentration_variable": "false",
        "dose_unit": "ug/h",
        "bolus_unit": "ug",
        "care_area": "icu-adult",
        "advisory": "High-alert opioid. Check the syringe concentration against the order: 50 microgram/mL.",
        "dose_soft_max": "200 ug/h",
        "dose_hard_max": "300 ug/h",
        "bolus_dose_soft_max": "50 ug",
        "bolus_dose_hard_max": "100 ug",
        "bolus_rate_hard_max": "300 mL/h",
        "bolus_volume_hard_max": "2 mL",
        "vtbi_hard_max": "50 mL",
    }
    assert [r["care_area"] for r in rows if r["drug_id"] == "heparin-50"] == ["icu-adult", "ward-adult"]
    assert rows[HEPARIN_WARD - 2]["weight_required"] == "true"
    assert rows[MAGNESIUM - 2]["loading_dose_hard_max"] == "6 g"
    dobutamine = next(r for r in rows if r["drug_id"] == "dobutamine-variable")
    assert (dobutamine["concentration_variable"], dobutamine["concentration_min"]) == ("true", "0.5 mg/mL")
    hartmanns = rows[HARTMANNS_MATERNITY - 2]
    assert hartmanns["concentration_amount"] == hartmanns["concentration_variable"] == ""
    assert hartmanns["high_alert"] == "false"


def test_example_round_trips_to_the_same_hash() -> None:
    lib = example()
    text = export_csv(lib)
    doc = import_csv(text, "drugs.csv", lib.doc)
    assert library_hash(doc) == lib.hash
    assert doc == lib.doc
    # as a file: UTF-8 bytes, read back with newline="" as the csv module asks
    again = import_csv(text.encode("utf-8").decode("utf-8"), "drugs.csv", lib.doc)
    assert library_hash(again) == lib.hash


@settings(max_examples=60, deadline=None)
@given(documents())
def test_generated_documents_round_trip_to_the_same_hash(doc: LibraryDocument) -> None:
    lib = build(doc)
    assert library_hash(import_csv(export_csv(lib), "generated.csv", lib.doc)) == lib.hash


def test_everything_but_the_drugs_comes_from_the_base() -> None:
    lib = example()
    base = lib.doc.model_copy(update={"version": 8, "name": "Next library", "drugs": []})
    doc = import_csv(export_csv(lib), "drugs.csv", base)
    assert (doc.version, doc.name) == (8, "Next library")
    assert doc.care_areas == lib.doc.care_areas
    assert doc.drugs == lib.doc.drugs


def test_a_header_alone_is_a_library_without_entries() -> None:
    doc = import_csv(",".join(COLUMNS) + "\r\n", "drugs.csv", example().doc)
    assert doc.drugs == []


def test_booleans_in_any_usual_spelling() -> None:
    text = edited(
        line2={"high_alert": "YES", "weight_required": "No"},
        line3={"high_alert": "1", "weight_required": "0"},
        line4={"high_alert": "False"},
        line5={"high_alert": "False", "weight_required": " TRUE "},
    )
    doc = import_csv(text, "drugs.csv", example().doc)
    fentanyl_50, fentanyl_10, morphine = doc.drugs[0], doc.drugs[1], doc.drugs[2]
    assert fentanyl_50.high_alert is True
    assert fentanyl_50.care_areas["icu-adult"].weight_required is False
    assert fentanyl_10.high_alert is True
    assert fentanyl_10.care_areas["icu-adult"].weight_required is False
    assert morphine.high_alert is False
    assert morphine.care_areas["ward-adult"].weight_required is True
    assert morphine.care_areas["icu-adult"].weight_required is None  # empty: not set, not false


def test_codes_are_separated_by_a_bar() -> None:
    text = edited(line2={"local": "FEN50 | pharmacy-17", "ndc": "0952-1234-01"})
    codes = import_csv(text, "drugs.csv", example().doc).drugs[0].codes
    assert codes.local == ["FEN50", "pharmacy-17"]
    assert codes.ndc == ["0952-1234-01"]
    assert codes.gtin == ["09521234543213"]


def test_a_code_with_a_bar_cannot_be_exported() -> None:
    lib = example()
    fentanyl = lib.doc.drugs[0]
    drug = fentanyl.model_copy(update={"codes": fentanyl.codes.model_copy(update={"local": ["A|B"]})})
    odd = build(lib.doc.model_copy(update={"drugs": [drug, *lib.doc.drugs[1:]]}))
    with pytest.raises(LibraryError) as caught:
        export_csv(odd)
    [problem] = caught.value.problems
    assert problem.path == "drugs[0].codes.local[0]"
    assert "'A|B'" in problem.message


def test_rows_of_one_entry_need_not_be_together() -> None:
    rows = rows_of(export_csv(example()))
    morphine_ward = rows.pop(MORPHINE_WARD - 2)
    doc = import_csv(csv_of([*rows, morphine_ward]), "drugs.csv", example().doc)
    assert library_hash(doc) == example().hash  # the order of an entry's care areas is not in the hash
    assert list(doc.drugs[2].care_areas) == ["icu-adult", "ward-adult"]


def test_entries_keep_the_order_of_their_first_rows() -> None:
    rows = rows_of(export_csv(example()))
    rows[0], rows[1] = rows[1], rows[0]
    doc = import_csv(csv_of(rows), "drugs.csv", example().doc)
    assert [d.id for d in doc.drugs[:3]] == ["fentanyl-10", "fentanyl-50", "morphine-1"]


def test_same_quantity_written_differently_on_two_rows_of_an_entry_agrees() -> None:
    text = edited(line5={"concentration_amount": "50.0 mg", "concentration_volume": "5E+1 mL"})
    assert library_hash(import_csv(text, "drugs.csv", example().doc)) == example().hash


def test_a_byte_order_mark_and_blank_rows_are_ignored() -> None:
    text = export_csv(example())
    lines = text.split("\r\n")
    lines.insert(3, "")
    lines.insert(5, "," * (len(COLUMNS) - 1))
    doc = import_csv("\ufeff" + "\r\n".join(lines), "drugs.csv", example().doc)
    assert library_hash(doc) == example().hash


# --- problems, each at its line and column ------------------------------------------------------


@pytest.mark.hazard("HAZ-011")
def test_unknown_missing_and_repeated_columns() -> None:
    text = export_csv(example())
    header, rest = text.split("\r\n", 1)
    header = header.replace(",dose_hard_max,", ",dose_hard_mx,").replace("advisory", "advisory,name")
    found = problems(header + "\r\n" + rest)
    assert found == [
        "line 1, column name: column appears twice in the header",
        "line 1, column dose_hard_mx: no such column (check the spelling; the columns are listed in "
        "docs/library.md and written by the CSV export)",
        "line 1, column dose_hard_max: required column is missing from the header",
    ]


@pytest.mark.hazard("HAZ-011")
def test_an_unparseable_quantity_is_an_error_not_an_empty_cell() -> None:
    found = problems(edited(line2={"dose_hard_max": "300ug/h"}, line3={"bolus_dose_soft_max": "50 mcg"}))
    assert len(found) == 2
    assert found[0].startswith("line 2, column dose_hard_max: '300ug/h' is not a quantity: ")
    assert found[1].startswith("line 3, column bolus_dose_soft_max: '50 mcg' is not a quantity: unknown unit")
    # not also "no hard maximum dose": that follows from the unreadable cell, reported once


@pytest.mark.hazard("HAZ-011")
def test_a_bad_boolean() -> None:
    found = problems(edited(line2={"high_alert": "Y"}, line6={"weight_required": "maybe"}))
    assert found == [
        "line 2, column high_alert: 'Y' is not a boolean (expected true/false, yes/no or 1/0)",
        "line 6, column weight_required: 'maybe' is not a boolean (expected true/false, yes/no or 1/0)",
    ]


@pytest.mark.hazard("HAZ-011")
def test_empty_required_cells() -> None:
    found = problems(
        edited(
            line2={"name": ""},
            line3={"dose_unit": " "},
            line4={"care_area": ""},
            line6={"drug_id": "", "high_alert": ""},
        )
    )
    assert found == [
        "line 2, column name: empty; a name is required on every row",
        "line 3, column dose_unit: empty; a dose_unit is required on every row",
        "line 4, column care_area: empty; a care_area is required on every row",
        "line 6, column drug_id: empty; a drug_id is required on every row",
        "line 6, column high_alert: empty; a high_alert is required on every row",
    ]


@pytest.mark.hazard("HAZ-011")
def test_rows_of_one_entry_that_disagree() -> None:
    found = problems(
        edited(
            line5={"display_name": "morPHINE 2 mg/mL", "concentration_amount": "100 mg", "gtin": ""},
            line12={"high_alert": "no"},
        )
    )
    assert found == [
        "line 5, column display_name: 'morPHINE 2 mg/mL' differs from 'morPHINE 1 mg/mL' on line 4, the first "
        "row of morphine-1 (the entry's columns must be the same on each of its rows)",
        "line 5, column gtin: '' differs from '09521234500025' on line 4, the first row of morphine-1 (the "
        "entry's columns must be the same on each of its rows)",
        "line 5, column concentration_amount: '100 mg' differs from '50 mg' on line 4, the first row of "
        "morphine-1 (the entry's columns must be the same on each of its rows)",
        "line 12, column high_alert: False differs from True on line 11, the first row of heparin-50 (the "
        "entry's columns must be the same on each of its rows)",
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_duplicated_row() -> None:
    rows = rows_of(export_csv(example()))
    rows.append(dict(rows[0], dose_hard_max="250 ug/h"))
    assert problems(csv_of(rows)) == [
        "line 23, column care_area: fentanyl-50 in icu-adult is already on line 2 (expected one row per "
        "drug entry and care area)"
    ]


@pytest.mark.hazard("HAZ-011")
def test_bad_codes() -> None:
    found = problems(edited(line2={"local": "A||B"}, line3={"gtin": "123"}))
    assert (
        found[0]
        == "line 2, column local: 'A||B' has an empty code (expected codes separated by '|': '123|456')"
    )
    assert found[1].startswith("line 3, column gtin: ")  # the document's pattern for a GTIN
    assert len(found) == 2


@pytest.mark.hazard("HAZ-011")
def test_clinical_problems_are_reported_at_the_row_and_column() -> None:
    found = problems(
        edited(
            line2={"dose_soft_max": "400 ug/h"},
            line3={"care_area": "icu-adlt"},
            line6={"weight_required": "false"},
            line18={"dose_unit": "g"},
        )
    )
    assert found == [
        "line 2, column dose_hard_max: fentanyl-50 dose: hard max 300 ug/h is below soft max 400 ug/h (soft "
        "limits must lie inside the hard ones)",
        "line 3, column care_area: fentanyl-10: care area 'icu-adlt' is not defined in care_areas",
        "line 6, column weight_required: propofol-10: dosing per kg needs the patient's weight; "
        "weight_required cannot be false",
        "line 18, column dose_unit: magnesium-40: g is not a rate (per h or per min)",
        "line 18, column dose_soft_max: magnesium-40 dose: 1 g/h is mass/time, expected mass",
        "line 18, column dose_hard_max: magnesium-40 dose: 2 g/h is mass/time, expected mass",
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_whole_limit_set_and_the_concentration_name_their_columns() -> None:
    found = problems(
        edited(
            line2={"dose_soft_max": "", "dose_hard_max": ""},
            line4={"concentration_volume": ""},
            line5={"concentration_volume": ""},
        )
    )
    assert found == [
        "line 2, column dose_*: fentanyl-50: no hard maximum dose in this care area (every entry must set "
        "dose.hard_max)",
        "line 4, column concentration_*: morphine-1: a fixed concentration needs amount and volume",
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_duplicate_entry_names_the_line_of_the_first() -> None:
    found = problems(edited(line3={"concentration_amount": "2500 ug", "gtin": "09521234543213"}))
    assert found == [
        "line 3: drug, concentration and dose unit 'fentanyl 0.05 mass/mL ug/h' is used twice (first at line 2)",
        "line 3, column gtin: fentanyl-10: gtin code 09521234543213 is also the code of fentanyl-50",
    ]


@pytest.mark.hazard("HAZ-011")
def test_problems_of_the_base_keep_their_paths() -> None:
    lib = example()
    area = lib.doc.care_areas[2].model_copy(update={"basic_infusion": "allowed"})
    base = lib.doc.model_copy(update={"care_areas": [*lib.doc.care_areas[:2], area]})
    assert problems(export_csv(lib), base) == [
        "care_areas[2].basic_rate: maternity: basic infusions are allowed, so a rate hard_max is required"
    ]


@pytest.mark.hazard("HAZ-011")
def test_every_problem_at_once() -> None:
    rows = rows_of(
        edited(
            line2={"dose_hard_max": "lots"},
            line3={"high_alert": "perhaps"},
            line5={"name": "Morphine"},
            line6={"weight_required": "false"},
            line11={"care_area": "nicu"},
        )
    )
    rows.append(dict(rows[-1]))
    found = problems(csv_of(rows))
    assert [f.split(":")[0] for f in found] == [
        "line 2, column dose_hard_max",
        "line 3, column high_alert",
        "line 5, column name",
        "line 6, column weight_required",
        "line 11, column care_area",
        "line 23, column care_area",
    ]


@pytest.mark.hazard("HAZ-011")
def test_a_cell_with_line_breaks_counts_its_lines() -> None:
    text = edited(line2={"advisory": "First line.\nSecond line.\r\nThird."}, line3={"dose_hard_max": "x"})
    found = problems(text)
    assert found[0].startswith(
        "line 5, column dose_hard_max: 'x' is not a quantity"
    )  # row 3 starts on line 5
    doc = import_csv(
        edited(line2={"advisory": "First line.\nSecond line.\r\nThird."}), "drugs.csv", example().doc
    )
    assert doc.drugs[0].care_areas["icu-adult"].advisory == "First line.\nSecond line.\r\nThird."


@pytest.mark.hazard("HAZ-011")
def test_rows_of_the_wrong_length_and_broken_quoting() -> None:
    text = export_csv(example())
    lines = text.split("\r\n")
    lines[2] = "fentanyl-10,fentanyl,short row"
    assert problems("\r\n".join(lines)) == [f"line 3: 3 cells, expected {len(COLUMNS)} as in the header"]
    lines = text.split("\r\n")
    lines[3] = lines[3].replace("morphine-1,morphine,", 'morphine-1,"morphine,', 1)
    [problem] = problems("\r\n".join(lines))
    assert problem.startswith("line 4: not valid CSV: ")


@pytest.mark.hazard("HAZ-011")
def test_an_empty_file() -> None:
    assert problems("") == ["line 1: empty file: expected the header row"]


@pytest.mark.hazard("HAZ-011")
def test_an_entry_missing_a_required_cell_does_not_hide_the_problems_of_the_others() -> None:
    found = problems(edited(line2={"display_name": ""}, line3={"dose_soft_max": "400 ug/h"}))
    assert found == [
        "line 2, column display_name: empty; a display_name is required on every row",
        "line 3, column dose_hard_max: fentanyl-10 dose: hard max 300 ug/h is below soft max 400 ug/h (soft "
        "limits must lie inside the hard ones)",
    ]
