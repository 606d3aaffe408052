"""The published JSON Schema of the drug library agrees with the code that reads libraries.

``docs/schema/drug-library-1.schema.json`` is what other tools (a pharmacy's editor, a CI job in
a hospital's library repository) validate against, with a validator that is not ours: here the
independent ``jsonschema`` package, Draft 2020-12. So the published file must be exactly what
``library.json_schema()`` produces, the example library must pass it, and a document with a wrong
shape must be refused by the schema *and* by :func:`parse_library`. Clinical consistency (soft
inside hard, duplicates, units that fit the dosing mode) is beyond any JSON Schema: the schema
accepts such a document and :mod:`.library_check` refuses it, with a path.
"""

from __future__ import annotations

import json
import runpy
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from pumpgw.gateway.errors import LibraryError
from pumpgw.gateway.library import json_schema, parse_library

ROOT = Path(__file__).parents[1]
PUBLISHED = ROOT / "docs" / "schema" / "drug-library-1.schema.json"
EXAMPLE = (ROOT / "gateway" / "examples" / "drug-library.example.toml").read_text(encoding="utf-8")
_REASONS_AT = EXAMPLE.index("override_reasons = [")
REASONS = EXAMPLE[_REASONS_AT : EXAMPLE.index("]\n", _REASONS_AT) + 2]  # the whole override_reasons array


def published_validator() -> Draft202012Validator:
    schema = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def as_json(value: Any) -> Any:
    """The data as a JSON parser would hand it to a validator: exact decimals become numbers."""
    if isinstance(value, Decimal):
        return float(value)  # only for the jsonschema check; the gateway never reads floats
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value


def schema_errors(text: str) -> list[str]:
    data = as_json(tomllib.loads(text, parse_float=Decimal))
    return [
        f"/{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in published_validator().iter_errors(data)
    ]


def code_problems(text: str) -> list[str]:
    try:
        parse_library(text.encode("utf-8"), "edited.toml")
    except LibraryError as exc:
        return [str(p) for p in exc.problems]
    return []


def edit(old: str, new: str) -> str:
    """The example library with the first ``old`` replaced (which must be there)."""
    assert old in EXAMPLE, old
    return EXAMPLE.replace(old, new, 1)


# --- the published file -------------------------------------------------------------------------


def test_the_published_schema_is_what_the_code_produces() -> None:
    script: dict[str, Any] = runpy.run_path(str(ROOT / "scripts" / "gen_schemas.py"))
    expected: str = script["render"](json_schema())
    assert script["SCHEMAS"]["docs/schema/drug-library-1.schema.json"] is json_schema
    assert PUBLISHED.exists(), "docs/schema/drug-library-1.schema.json is missing: run scripts/gen-schemas"
    assert PUBLISHED.read_text(encoding="utf-8") == expected, (
        "docs/schema/drug-library-1.schema.json differs from library.json_schema(): "
        "run scripts/gen-schemas and commit the result"
    )


def test_the_published_schema_is_a_valid_draft_2020_12_schema_with_its_identity() -> None:
    schema = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/drug-library-1.schema.json")
    assert schema["properties"]["format"]["const"] == "pumpgw-drug-library/1"


def test_the_example_library_validates_against_the_published_schema() -> None:
    assert schema_errors(EXAMPLE) == []
    assert code_problems(EXAMPLE) == []


def test_the_example_as_json_validates_too() -> None:
    # The same document written as JSON (what an editor would produce) passes both.
    data = tomllib.loads(EXAMPLE, parse_float=Decimal)
    text = json.dumps(data, indent=1)
    assert published_validator().is_valid(json.loads(text))
    parse_library(text.encode("utf-8"), "example.json")


# --- a wrong shape: refused by both -------------------------------------------------------------

#: Documents whose shape is wrong: (edit of the example, the path parse_library reports).
WRONG_SHAPE = {
    "unknown top-level key": (("version = 7\n", 'version = 7\ncolour = "red"\n'), "colour"),
    "misspelt limit": (
        ('hard_max = "500 mL/h" }', 'hard_mx = "500 mL/h" }'),
        "care_areas[0].basic_rate.hard_mx",
    ),
    "unknown key in a drug": (
        ("high_alert = true\n", "high_alert = true\nhigh_alarm = true\n"),
        "drugs[0].high_alarm",
    ),
    "missing dose_unit": (('dose_unit = "ug/h"\n', ""), "drugs[0].dose_unit"),
    "missing basic_infusion": (('basic_infusion = "blocked"\n', ""), "care_areas[2].basic_infusion"),
    "missing override_reasons": ((REASONS, ""), "override_reasons"),
    "quantity without a space": (('max = "5 mg/mL"', 'max = "50ug/mL"'), "drugs[7].concentration.max"),
    "quantity without a unit": (
        ('hard_max = "300 ug/h"', 'hard_max = "300"'),
        "drugs[0].care_areas.icu-adult.dose.hard_max",
    ),
    "quantity as a bare number": (('amount = "2500 ug"', "amount = 2500.5"), "drugs[0].concentration.amount"),
    "unknown format": (('format = "pumpgw-drug-library/1"', 'format = "pumpgw-drug-library/2"'), "format"),
    "version zero": (("version = 7\n", "version = 0\n"), "version"),
    "fractional version": (("version = 7\n", "version = 7.5\n"), "version"),
    "basic_infusion neither allowed nor blocked": (('"blocked"', '"maybe"'), "care_areas[2].basic_infusion"),
    "id with capitals": (('id = "fentanyl-50"', 'id = "Fentanyl-50"'), "drugs[0].id"),
    "GTIN of the wrong length": (('"09521234543213"', '"952123454"'), "drugs[0].codes.gtin[0]"),
    "GTIN as a number": (('"09521234543213"', "9521234543213"), "drugs[0].codes.gtin[0]"),
    "empty override reasons": ((REASONS, "override_reasons = []\n"), "override_reasons"),
}


@pytest.mark.parametrize("case", WRONG_SHAPE)
@pytest.mark.hazard("HAZ-011")
def test_a_wrong_shape_is_refused_by_the_schema_and_by_parse_library(case: str) -> None:
    (old, new), path = WRONG_SHAPE[case]
    text = edit(old, new)
    assert schema_errors(text), f"{case}: the published schema accepts it"
    problems = code_problems(text)
    assert problems, f"{case}: parse_library accepts it"
    assert any(p.startswith(f"{path}: ") for p in problems), problems


#: Shapes pydantic's lax mode and Quantity.parse's split() would accept; the document models are
#: strict and the parser enforces the schema's quantity pattern, so both refuse them.
DISAGREEMENTS = {
    "a boolean written as text": ("high_alert = true", 'high_alert = "no"'),
    "a boolean written as 0": ("high_alert = true", "high_alert = 0"),
    "the version written as text": ("version = 7\n", 'version = "7"\n'),
    "a quantity with spaces around it": ('hard_max = "300 ug/h"', 'hard_max = " 300 ug/h "'),
    "a quantity with a tab": ('hard_max = "300 ug/h"', 'hard_max = "300\\tug/h"'),
}


@pytest.mark.parametrize("case", DISAGREEMENTS)
def test_what_the_schema_refuses_parse_library_refuses_too(case: str) -> None:
    old, new = DISAGREEMENTS[case]
    text = edit(old, new)
    assert schema_errors(text), f"{case}: the published schema accepts it"
    assert code_problems(text), f"{case}: parse_library accepts it"


# --- beyond the schema: clinical consistency ----------------------------------------------------

#: Schema-valid documents that library_check refuses: (edit, the path it reports, words it says).
BEYOND_THE_SCHEMA = {
    "soft max above hard max": (
        (
            'dose = { soft_max = "200 ug/h", hard_max = "300 ug/h" }',
            'dose = { soft_max = "400 ug/h", hard_max = "300 ug/h" }',
        ),
        "drugs[0].care_areas.icu-adult.dose.hard_max",
        "soft limits must lie inside the hard ones",
    ),
    "a dose limit in the wrong dimension": (
        ('hard_max = "300 ug/h"', 'hard_max = "300 ug/kg/h"'),
        "drugs[0].care_areas.icu-adult.dose.hard_max",
        "expected mass/time",
    ),
    "a duplicated drug id": (('id = "fentanyl-10"', 'id = "fentanyl-50"'), "drugs[1]", "used twice"),
    "a GTIN with a wrong check digit": (
        ('"09521234543213"', '"09521234543214"'),
        "drugs[0].codes.gtin",
        "check digit",
    ),
    "an undefined care area": (
        ("[drugs.care_areas.icu-adult]", "[drugs.care_areas.icu-adults]"),
        "drugs[0].care_areas.icu-adults",
        "not defined",
    ),
    "an empty limit set": (
        ('bolus_volume = { hard_max = "2 mL" }', "bolus_volume = {}"),
        "drugs[0].care_areas.icu-adult.bolus_volume",
        "no limit set",
    ),
}


@pytest.mark.parametrize("case", BEYOND_THE_SCHEMA)
@pytest.mark.hazard("HAZ-011")
def test_clinical_consistency_is_beyond_the_schema_and_refused_with_a_path(case: str) -> None:
    (old, new), path, words = BEYOND_THE_SCHEMA[case]
    text = edit(old, new)
    assert schema_errors(text) == []  # the schema cannot say this: docs/library.md explains
    problems = code_problems(text)
    assert any(p.startswith(f"{path}: ") and words in p for p in problems), problems


def test_an_unknown_unit_is_refused_by_parse_library() -> None:
    # The schema's quantity pattern checks the form (number, space, unit), not the unit table.
    text = edit('amount = "2500 ug"', 'amount = "2500 mcg"')
    assert code_problems(text) == [
        "drugs[0].concentration.amount: '2500 mcg': unknown unit (not in the gateway's UCUM table)"
    ]
