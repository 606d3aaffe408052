"""Hypothesis strategies for valid drug library documents, shared by the library tests.

Not a test module: ``tests/test_library_*.py`` load it by path (the tests folder is not a package
and pytest runs with ``--import-mode=importlib``), with :func:`load`-style code of their own.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from pumpgw.gateway.library import LibraryDocument, canonical_number, load_document
from pumpgw.gateway.library_check import gs1_check_digit_ok

# --- valid documents, generated -----------------------------------------------------------------
# Odd but valid: texts with quotes, backslashes, control characters and non-ASCII; quantities written
# as "0.050", "1E+1", "+5", "5." ...; care area ids with dots (quoted in TOML table headers).

ODD_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
KINDS: dict[str, dict[str, list[Any]]] = {
    "mass": {
        "dose": ["ug/h", "mg/h", "ug/kg/min", "mg/kg/h", "ng/kg/min", "mg/m2/h"],
        "bolus": [None, "ug", "mg/kg", "mL"],
        "loading": [None, "g", "mg/kg"],
        "amount": ["ug", "mg", "g"],
        "conc": ["mg/mL", "ug/mL", "mg/L"],
    },
    "units": {
        "dose": ["[iU]/h", "[iU]/kg/h", "m[iU]/min"],
        "bolus": [None, "[iU]", "[iU]/kg"],
        "loading": [None, "k[iU]"],
        "amount": ["[iU]", "k[iU]"],
        "conc": ["[iU]/mL"],
    },
    "substance": {
        "dose": ["mmol/h", "umol/kg/min"],
        "bolus": [None, "mmol"],
        "loading": [None],
        "amount": ["mmol"],
        "conc": ["mmol/L", "umol/mL"],
    },
    "volume": {"dose": ["mL/h"], "bolus": [None, "mL"], "loading": [None], "amount": [], "conc": []},
}


@st.composite
def number_text(draw: st.DrawFn, value: Decimal) -> str:
    """``value`` written one of several ways that all mean the same number."""
    plain = canonical_number(value)
    forms = [
        plain,
        plain + ("0" if "." in plain else ".0"),
        format(value.normalize(), "E"),
        "+" + plain,
        "0" + plain,
        str(value),
    ]
    if "." not in plain:
        forms.append(plain + ".")
    return draw(st.sampled_from(forms))


@st.composite
def limits(
    draw: st.DrawFn,
    units: list[str],
    low: str = "0.001",
    high: str = "100000",
    places: int = 3,
    hard_max: bool = False,
) -> dict[str, str]:
    """1 to 4 limits in order (hard_min <= soft_min <= soft_max <= hard_max), all in one unit."""
    names = draw(
        st.lists(
            st.sampled_from(["hard_min", "soft_min", "soft_max", "hard_max"]),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    if hard_max and "hard_max" not in names:
        names.append("hard_max")
    names.sort(key=["hard_min", "soft_min", "soft_max", "hard_max"].index)
    values = draw(
        st.lists(
            st.decimals(min_value=Decimal(low), max_value=Decimal(high), places=places),
            min_size=len(names),
            max_size=len(names),
        )
    )
    unit = draw(st.sampled_from(units))
    return {n: f"{draw(number_text(v))} {unit}" for n, v in zip(names, sorted(values), strict=True)}


def with_check_digit(body: str) -> str:
    return next(body + d for d in "0123456789" if gs1_check_digit_ok(body + d))


@st.composite
def codes(draw: st.DrawFn, i: int) -> dict[str, list[str]]:
    digits = st.text("0123456789", min_size=5, max_size=5)
    out: dict[str, list[str]] = {}
    for system in draw(st.lists(st.sampled_from(["gtin", "ndc", "dmd", "rxnorm", "local"]), unique=True)):
        n = draw(st.integers(1, 2))
        if system == "gtin":
            out[system] = [with_check_digit(f"952{i:03d}{j:02d}{draw(digits)}") for j in range(n)]
        elif system == "ndc":
            out[system] = [f"{i:04d}-{j:02d}-{draw(digits)}" for j in range(n)]
        elif system == "dmd":
            out[system] = [f"{i:03d}{j:02d}{draw(digits)}" for j in range(n)]
        elif system == "rxnorm":
            out[system] = [draw(digits) for _ in range(n)]
        else:
            texts = st.text(st.characters(codec="utf-8", exclude_characters="|"), max_size=8)
            out[system] = [f"L{i}.{j} {draw(texts)}".strip() for j in range(n)]
    return out


@st.composite
def area_rules(
    draw: st.DrawFn, dose_unit: str, bolus_unit: str | None, loading_unit: str | None
) -> dict[str, Any]:
    per_kg = any("/kg" in (u or "") for u in (dose_unit, bolus_unit, loading_unit))
    rules: dict[str, Any] = {"dose": draw(limits([dose_unit], hard_max=True))}
    if draw(st.booleans()):
        rules["advisory"] = draw(ODD_TEXT)
    required = draw(st.sampled_from([None, True] if per_kg else [None, True, False]))
    if required is not None:
        rules["weight_required"] = required
    optional: dict[str, Any] = {
        "weight": limits(["kg"], "0.2", "650", 1),
        "bsa": limits(["m2"], "0.05", "5", 2),
        "bolus_rate": limits(["mL/h"]),
        "bolus_volume": limits(["mL"]),
        "vtbi": limits(["mL", "L"]),
        "duration": limits(["min", "h"]),
    }
    if bolus_unit is not None:
        optional["bolus_dose"] = limits([bolus_unit])
    if loading_unit is not None:
        optional["loading_dose"] = limits([loading_unit])
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=4)):
        rules[key] = draw(optional[key])
    return rules


@st.composite
def drug(draw: st.DrawFn, i: int, drug_id: str, area_ids: list[str]) -> dict[str, Any]:
    kind = KINDS[draw(st.sampled_from(sorted(KINDS)))]
    dose_unit = draw(st.sampled_from(kind["dose"]))
    bolus_unit = draw(st.sampled_from(kind["bolus"]))
    loading_unit = draw(st.sampled_from(kind["loading"]))
    data: dict[str, Any] = {
        "id": drug_id,
        "name": draw(ODD_TEXT) + f" #{i}",  # unique: no two entries with one name and concentration
        "display_name": draw(ODD_TEXT),
        "dose_unit": dose_unit,
        "codes": draw(codes(i)),
    }
    if draw(st.booleans()):
        data["high_alert"] = draw(st.booleans())
    if bolus_unit is not None:
        data["bolus_unit"] = bolus_unit
    if loading_unit is not None:
        data["loading_unit"] = loading_unit
    if kind["amount"]:
        if draw(st.booleans()):
            amount = draw(st.decimals(Decimal("0.01"), Decimal(5000), places=2))
            volume = draw(st.decimals(Decimal(1), Decimal(1000), places=1))
            data["concentration"] = {
                "amount": f"{draw(number_text(amount))} {draw(st.sampled_from(kind['amount']))}",
                "volume": f"{draw(number_text(volume))} {draw(st.sampled_from(['mL', 'L']))}",
            }
        else:
            span = sorted(
                draw(st.lists(st.decimals(Decimal("0.01"), Decimal(100), places=2), min_size=2, max_size=2))
            )
            unit = draw(st.sampled_from(kind["conc"]))
            data["concentration"] = {
                "variable": True,
                "min": f"{draw(number_text(span[0]))} {unit}",
                "max": f"{draw(number_text(span[1]))} {unit}",
            }
    chosen = draw(st.lists(st.sampled_from(area_ids), min_size=1, unique=True))
    data["care_areas"] = {a: draw(area_rules(dose_unit, bolus_unit, loading_unit)) for a in chosen}
    return data


IDS = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,8}", fullmatch=True)


@st.composite
def documents(draw: st.DrawFn) -> LibraryDocument:
    """A small document that passes every check of the library format."""
    area_ids = draw(st.lists(IDS, min_size=1, max_size=3, unique=True))
    areas = []
    for area_id in area_ids:
        area: dict[str, Any] = {"id": area_id, "name": draw(ODD_TEXT)}
        area["basic_infusion"] = draw(st.sampled_from(["allowed", "blocked"]))
        if area["basic_infusion"] == "allowed":
            area["basic_rate"] = {"hard_max": f"{draw(number_text(Decimal(500)))} mL/h"}
        elif draw(st.booleans()):
            area["basic_vtbi"] = draw(limits(["mL"]))
        areas.append(area)
    drug_ids = draw(st.lists(IDS, max_size=3, unique=True))
    data: dict[str, Any] = {
        "format": "pumpgw-drug-library/1",
        "name": draw(ODD_TEXT),
        "version": draw(st.integers(1, 10**6)),
        "override_reasons": [
            f"{t} {n}" for n, t in enumerate(draw(st.lists(ODD_TEXT, min_size=1, max_size=3)))
        ],
        "pump_libraries": [
            {"model": f"{m} {n}", "version": draw(ODD_TEXT)}
            for n, m in enumerate(draw(st.lists(ODD_TEXT, max_size=2)))
        ],
        "care_areas": areas,
        "drugs": [draw(drug(i, d, area_ids)) for i, d in enumerate(drug_ids)],
    }
    if draw(st.booleans()):
        data["example"] = draw(st.booleans())
    if draw(st.booleans()):
        data["notice"] = draw(ODD_TEXT)
    return load_document(data, "generated").doc
