"""render_toml: the example's layout, TOML string escaping, and parse(render(doc)) keeps the hash."""

from __future__ import annotations

import importlib.util
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st

from pumpgw.gateway.library import LibraryDocument, document_data, library_hash, load_document, parse_library
from pumpgw.gateway.library_toml import render_toml, toml_key, toml_string


def example_doc() -> LibraryDocument:
    raw = resources.files("pumpgw.gateway").joinpath("examples/drug-library.example.toml").read_bytes()
    return parse_library(raw, "example").doc


def roundtrip(doc: LibraryDocument) -> LibraryDocument:
    return parse_library(render_toml(doc).encode("utf-8"), "rendered").doc


def _sibling(name: str) -> ModuleType:
    """A helper module of the tests folder, loaded by path (the folder is not a package)."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_pumpgw_tests_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


strategies = _sibling("library_strategies")
documents: Callable[[], st.SearchStrategy[LibraryDocument]] = strategies.documents


# --- tests --------------------------------------------------------------------------------------


def test_example_round_trips_to_the_same_hash() -> None:
    doc = example_doc()
    assert library_hash(roundtrip(doc)) == library_hash(doc)
    assert document_data(roundtrip(doc)) == document_data(doc)


def test_example_is_written_in_the_example_layout() -> None:
    text = render_toml(example_doc())
    lines = text.splitlines()
    assert 'format = "pumpgw-drug-library/1"' in lines
    assert "version = 7" in lines
    assert "example = true" in lines
    assert (
        lines.index("override_reasons = [")
        < lines.index("[[pump_libraries]]")
        < lines.index("[[care_areas]]")
    )
    assert lines.index("[[care_areas]]") < lines.index("[[drugs]]")
    assert '  "Patient-specific protocol",' in lines
    assert 'basic_rate = { soft_max = "250 mL/h", hard_max = "500 mL/h" }' in lines
    fentanyl = lines.index('id = "fentanyl-50"')
    assert lines[fentanyl - 1] == "[[drugs]]"
    assert lines[fentanyl + 3 : fentanyl + 7] == [
        "high_alert = true",
        'codes = { gtin = ["09521234543213"], rxnorm = ["4337"] }',
        'concentration = { amount = "2500 ug", volume = "50 mL" }',
        'dose_unit = "ug/h"',
    ]
    assert lines[fentanyl + 9 : fentanyl + 12] == [
        "[drugs.care_areas.icu-adult]",
        'advisory = "High-alert opioid. Check the syringe concentration against the order: 50 microgram/mL."',
        'dose = { soft_max = "200 ug/h", hard_max = "300 ug/h" }',
    ]
    assert 'concentration = { variable = true, min = "0.5 mg/mL", max = "5 mg/mL" }' in lines
    assert "high_alert = false" not in text  # defaults are left out
    assert "ndc" not in text  # empty code lists are left out
    assert text.endswith("\n")
    assert not text.endswith("\n\n")


def test_odd_quantity_notations_round_trip() -> None:
    data = document_data(example_doc())
    rules = data["drugs"][0]["care_areas"]["icu-adult"]
    rules["dose"] = {"soft_max": "0.200E+3 ug/h", "hard_max": "3.000E2 ug/h"}
    rules["vtbi"] = {"hard_max": "1E+1 mL"}
    rules["bolus_volume"] = {"hard_max": "0.050 mL"}
    data["drugs"][0]["concentration"] = {"amount": "2500.000 ug", "volume": "+50. mL"}
    doc = load_document(data, "odd").doc
    text = render_toml(doc)
    assert 'dose = { soft_max = "200 ug/h", hard_max = "300 ug/h" }' in text
    assert 'vtbi = { hard_max = "10 mL" }' in text
    assert 'bolus_volume = { hard_max = "0.05 mL" }' in text
    assert 'concentration = { amount = "2500 ug", volume = "50 mL" }' in text
    assert library_hash(roundtrip(doc)) == library_hash(doc)


def test_toml_string_escapes() -> None:
    assert toml_string('say "hi"') == '"say \\"hi\\""'
    assert toml_string("C:\\drugs") == '"C:\\\\drugs"'
    assert toml_string("a\nb\tc\rd\be\ff") == '"a\\nb\\tc\\rd\\be\\ff"'
    assert toml_string("\x00\x1f\x7f") == '"\\u0000\\u001F\\u007F"'
    assert toml_string("µg – é ✓ 𝛼") == '"µg – é ✓ 𝛼"'  # non-ASCII kept as it is


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8")))
def test_toml_string_parses_back_to_the_same_text(text: str) -> None:
    assert tomllib.loads(f"v = {toml_string(text)}")["v"] == text
    assert tomllib.loads(f"{toml_key(text)} = 1") == {text: 1}


def test_toml_key_is_bare_only_when_toml_allows() -> None:
    assert toml_key("icu-adult") == "icu-adult"
    assert toml_key("icu_2") == "icu_2"
    assert toml_key("icu.adult") == '"icu.adult"'
    assert toml_key("") == '""'
    assert toml_key("ünit") == '"ünit"'
    assert toml_key("icu\n") == '"icu\\n"'  # "$" would match before a final newline


def test_care_area_id_with_a_dot_is_quoted_in_the_table_header() -> None:
    data = document_data(example_doc())
    data["care_areas"][2]["id"] = "maternity.v2"
    for d in data["drugs"]:
        if "maternity" in d["care_areas"]:
            d["care_areas"]["maternity.v2"] = d["care_areas"].pop("maternity")
    doc = load_document(data, "dotted").doc
    text = render_toml(doc)
    assert '[drugs.care_areas."maternity.v2"]' in text
    assert library_hash(roundtrip(doc)) == library_hash(doc)


def test_odd_characters_in_texts_round_trip() -> None:
    data = document_data(example_doc())
    data["name"] = 'Lib "quoted" \\ back\tslash\nnew line \x01 µ'
    data["notice"] = "\u2028 line separator, \x85 NEL, \x7f DEL"
    data["drugs"][0]["display_name"] = "fentaNYL 50 µg/mL 'single' \"double\""
    doc = load_document(data, "odd").doc
    assert roundtrip(doc) == doc


def test_empty_lists_are_written_so_that_they_parse() -> None:
    doc = example_doc().model_copy(update={"drugs": [], "pump_libraries": []})
    text = render_toml(doc)
    assert "drugs = []" in text
    assert "[[pump_libraries]]" not in text
    assert library_hash(roundtrip(doc)) == library_hash(doc)


def test_defaults_are_left_out_and_explicit_values_kept() -> None:
    doc = example_doc()
    propofol = doc.drugs[3]
    assert propofol.id == "propofol-10"
    assert not propofol.high_alert
    text = render_toml(doc)
    block = text[text.index('id = "propofol-10"') : text.index('id = "midazolam-1"')]
    assert "high_alert" not in block
    assert "weight_required = true" in block
    unset = doc.drugs[0].care_areas["icu-adult"]
    assert unset.weight_required is None  # not set is not false: it is left out, and stays unset
    assert roundtrip(doc).drugs[0].care_areas["icu-adult"].weight_required is None


@settings(max_examples=100, deadline=None)
@given(documents())
def test_generated_documents_round_trip_to_the_same_hash(doc: LibraryDocument) -> None:
    again = roundtrip(doc)
    assert library_hash(again) == library_hash(doc)
    assert render_toml(again) == render_toml(doc)
