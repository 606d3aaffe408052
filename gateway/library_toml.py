"""Write a drug library document as readable TOML, in the layout of the example library (pure).

:func:`render_toml` is the inverse of :func:`.library.parse_library` for TOML: parsing what it
writes gives a document with the same canonical form, so the same :func:`.library.library_hash`.
The layout is the one a pharmacist reads in ``examples/drug-library.example.toml``: the header keys,
the override reasons one per line, ``[[pump_libraries]]``, ``[[care_areas]]`` with their limits as
inline tables, then each ``[[drugs]]`` entry followed by one ``[drugs.care_areas.<id>]`` table per
care area. Every quantity is written as its canonical text (``"0.05 ug/kg/min"``, never
``"0.050 ug/kg/min"`` or ``"5E-2 ..."``), and keys that only repeat a default (``high_alert = false``,
``example = false``, empty code lists) are left out.

Written by hand rather than with a TOML writer library: the layout is part of what is reviewed, and
the subset of TOML needed (strings, integers, booleans, string arrays, inline tables, table headers)
is small. Strings are TOML basic strings: ``"`` and ``\\`` escaped, control characters written as
escapes, every other character (``µ``, ``–``, ``é``) kept as UTF-8.
"""

from __future__ import annotations

import re
from typing import Final

from .library import (
    AREA_LIMIT_SETS,
    AreaRules,
    CareArea,
    Concentration,
    Drug,
    LibraryDocument,
    Limits,
    PumpLibrary,
    quantity_text,
)
from .quantity import Quantity

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_SHORT_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    """``key`` bare if TOML allows it (``icu-adult``), quoted otherwise (``"icu.adult"``)."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def _quantity(q: Quantity) -> str:
    return toml_string(quantity_text(q))


def _inline(pairs: list[tuple[str, str]]) -> str:
    """An inline table from already rendered values: ``{ soft_max = "2 mL", hard_max = "4 mL" }``."""
    if not pairs:
        return "{}"
    return "{ " + ", ".join(f"{toml_key(k)} = {v}" for k, v in pairs) + " }"


def _limits(limits: Limits) -> str:
    return _inline([(name, _quantity(q)) for name, q in limits.items()])


def _strings(values: list[str]) -> str:
    return "[" + ", ".join(toml_string(v) for v in values) + "]"


def _concentration(conc: Concentration) -> str:
    pairs: list[tuple[str, str]] = []
    if conc.variable:
        pairs.append(("variable", "true"))
    for name, q in (("amount", conc.amount), ("volume", conc.volume), ("min", conc.min), ("max", conc.max)):
        if q is not None:
            pairs.append((name, _quantity(q)))
    return _inline(pairs)


def _pump_library(p: PumpLibrary) -> list[str]:
    return ["[[pump_libraries]]", f"model = {toml_string(p.model)}", f"version = {toml_string(p.version)}"]


def _care_area(area: CareArea) -> list[str]:
    lines = [
        "[[care_areas]]",
        f"id = {toml_string(area.id)}",
        f"name = {toml_string(area.name)}",
        f"basic_infusion = {toml_string(area.basic_infusion)}",
    ]
    if area.basic_rate is not None:
        lines.append(f"basic_rate = {_limits(area.basic_rate)}")
    if area.basic_vtbi is not None:
        lines.append(f"basic_vtbi = {_limits(area.basic_vtbi)}")
    return lines


def _area_rules(rules: AreaRules) -> list[str]:
    lines = []
    if rules.advisory is not None:
        lines.append(f"advisory = {toml_string(rules.advisory)}")
    if rules.weight_required is not None:
        lines.append(f"weight_required = {'true' if rules.weight_required else 'false'}")
    for name in AREA_LIMIT_SETS:
        limits: Limits | None = getattr(rules, name)
        if limits is not None:
            lines.append(f"{name} = {_limits(limits)}")
    return lines


def _drug(drug: Drug) -> list[str]:
    lines = [
        "[[drugs]]",
        f"id = {toml_string(drug.id)}",
        f"name = {toml_string(drug.name)}",
        f"display_name = {toml_string(drug.display_name)}",
    ]
    if drug.high_alert:
        lines.append("high_alert = true")
    codes = [(system, _strings(values)) for system, values in drug.codes if values]
    if codes:
        lines.append(f"codes = {_inline(codes)}")
    if drug.concentration is not None:
        lines.append(f"concentration = {_concentration(drug.concentration)}")
    lines.append(f"dose_unit = {toml_string(drug.dose_unit)}")
    if drug.bolus_unit is not None:
        lines.append(f"bolus_unit = {toml_string(drug.bolus_unit)}")
    if drug.loading_unit is not None:
        lines.append(f"loading_unit = {toml_string(drug.loading_unit)}")
    if not drug.care_areas:
        lines.append("care_areas = {}")  # an entry in no care area (invalid, but written as it is)
    for area_id, rules in drug.care_areas.items():
        lines += ["", f"[drugs.care_areas.{toml_key(area_id)}]", *_area_rules(rules)]
    return lines


def render_toml(doc: LibraryDocument) -> str:
    """``doc`` as TOML text in the example library's layout; parses back to the same hash."""
    lines = [
        "# Drug library. Format: docs/library.md; JSON Schema: docs/schema/drug-library-1.schema.json.",
        "# Every clinical number carries its UCUM unit.",
        "",
        f"format = {toml_string(doc.format)}",
        f"name = {toml_string(doc.name)}",
        f"version = {doc.version}",
    ]
    if doc.example:
        lines.append("example = true")
    if doc.notice is not None:
        lines.append(f"notice = {toml_string(doc.notice)}")
    lines.append("")
    if doc.override_reasons:
        lines += ["override_reasons = [", *(f"  {toml_string(r)}," for r in doc.override_reasons), "]"]
    else:
        lines.append("override_reasons = []")
    # Empty arrays of tables have no [[...]] header to stand for them: write them as plain keys,
    # which must come before the first table header.
    if not doc.care_areas:
        lines.append("care_areas = []")
    if not doc.drugs:
        lines.append("drugs = []")
    for block in (
        *(_pump_library(p) for p in doc.pump_libraries),
        *(_care_area(a) for a in doc.care_areas),
        *(_drug(d) for d in doc.drugs),
    ):
        lines += ["", *block]
    return "\n".join(lines) + "\n"
