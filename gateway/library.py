"""The drug library document: its format, parsing, validation and canonical form (pure, no I/O).

A library is a TOML (or JSON) document a pharmacist can read and review (``docs/library.md``,
JSON Schema in ``docs/schema/drug-library-1.schema.json``): care areas, drug entries, and per care
area the hard and soft limits each entry allows. :func:`parse_library` turns the bytes of one into a
:class:`Library` or raises :class:`LibraryError` listing *every* problem at once, each with its path
in the document (``drugs[3].care_areas.icu.dose.soft_max``): first the shape (unknown keys, missing
keys, malformed quantities), then, once the shape is right, the clinical consistency
(:mod:`.library_check`: soft inside hard, units that fit the dosing mode, duplicates, ...).

Every clinical number is a :class:`Quantity` written with its UCUM unit (``"50 ug/mL"``), never a
bare number whose unit lives elsewhere: the document is read by people.

A library version is identified by the SHA-256 of its canonical form (:func:`canonical_bytes`):
JSON with sorted keys, no insignificant whitespace, every quantity written as its plain decimal
without trailing zeros and its unit. Comments, key order, TOML versus JSON and ``"100.0 mL"``
versus ``"100 mL"`` do not change the hash; any clinical change does.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
)

from .errors import LibraryError, LibraryProblem, QuantityError
from .quantity import Quantity

LIBRARY_FORMAT: Final = "pumpgw-drug-library/1"

_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_QUANTITY_PATTERN: Final = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)? +\S+$"
_QUANTITY_RE: Final = re.compile(_QUANTITY_PATTERN)


def canonical_number(value: Decimal) -> str:
    """``Decimal("100.0")`` -> ``"100"``, ``Decimal("0.50")`` -> ``"0.5"``: plain, no trailing zeros."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "+0") else text


def quantity_text(q: Quantity) -> str:
    """The canonical text of a quantity: ``"2500 ug"``."""
    return f"{canonical_number(q.value)} {q.unit}"


def _to_quantity(value: Any) -> Quantity:
    # ValueError (not TypeError) on purpose: pydantic reports it as a problem with its path.
    if isinstance(value, Quantity):
        return value
    if not isinstance(value, str):
        raise ValueError(  # noqa: TRY004
            f"expected text such as '50 ug/mL' (a number, a space, a UCUM unit), not {value!r}"
        )
    if not _QUANTITY_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a quantity: expected a number, a space and a UCUM unit ('50 ug/mL')"
        )
    try:
        return Quantity.parse(value)
    except QuantityError as exc:
        raise ValueError(f"{value!r}: {exc.reason}") from None


#: A quantity written as text in the document: ``"50 ug/mL"``.
Q = Annotated[
    Quantity,
    PlainValidator(_to_quantity),
    PlainSerializer(quantity_text, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _QUANTITY_PATTERN, "examples": ["50 ug/mL", "2 mL/h"]}),
]
Id = Annotated[str, Field(pattern=_ID_PATTERN)]
Text = Annotated[str, Field(min_length=1, max_length=500)]


class _Doc(BaseModel):
    # strict: "no" is not a boolean and "7" is not a version; what the published schema refuses,
    # the parser refuses too (tests/test_library_schema.py).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


#: The limits of one limit set, from lowest to highest.
LIMIT_NAMES: Final = ("hard_min", "soft_min", "soft_max", "hard_max")
#: The limit sets of a care-area rule, in the order :class:`AreaRules` declares them.
AREA_LIMIT_SETS: Final = (
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
#: The code systems of :class:`Codes`, in the order it declares them.
CODE_SYSTEMS: Final = ("gtin", "ndc", "dmd", "rxnorm", "local")


class Limits(_Doc):
    """Low and high limits, hard and soft. Each is optional; soft limits lie inside hard ones."""

    hard_min: Q | None = None
    soft_min: Q | None = None
    soft_max: Q | None = None
    hard_max: Q | None = None

    def items(self) -> list[tuple[str, Quantity]]:
        """The limits that are set, as ``(name, quantity)`` from lowest to highest."""
        named = [(n, getattr(self, n)) for n in LIMIT_NAMES]
        return [(n, q) for n, q in named if q is not None]


class Concentration(_Doc):
    """Fixed (``amount`` in ``volume``: 2500 ug in 50 mL) or ``variable`` within ``min``..``max``.

    A fixed concentration is kept as amount and volume, not divided out, so that no conversion
    ever has to round a concentration such as 100 mg in 30 mL.
    """

    amount: Q | None = None
    volume: Q | None = None
    variable: bool = False
    min: Q | None = None
    max: Q | None = None


class Codes(_Doc):
    """Product and concept codes that identify this entry: scanned (GTIN) or sent in orders."""

    gtin: list[Annotated[str, Field(pattern=r"^\d{8}$|^\d{12,14}$")]] = []
    ndc: list[Annotated[str, Field(pattern=r"^[0-9-]{10,13}$")]] = []
    dmd: list[Annotated[str, Field(pattern=r"^\d{6,18}$")]] = []
    rxnorm: list[Annotated[str, Field(pattern=r"^\d{1,10}$")]] = []
    local: list[Annotated[str, Field(min_length=1, max_length=64)]] = []


class AreaRules(_Doc):
    """What one drug entry allows in one care area."""

    advisory: Text | None = None
    weight_required: bool | None = None  # implied true when any unit of the entry is per kg
    weight: Limits | None = None
    bsa: Limits | None = None
    dose: Limits | None = None  # continuous dose or rate, in the entry's dose_unit
    bolus_dose: Limits | None = None  # in bolus_unit
    bolus_rate: Limits | None = None  # mL/h, or the bolus amount per time
    bolus_volume: Limits | None = None  # mL
    loading_dose: Limits | None = None  # in loading_unit
    vtbi: Limits | None = None  # mL
    duration: Limits | None = None  # min or h


class Drug(_Doc):
    """One drug entry: one drug in one concentration (or concentration range)."""

    id: Id
    name: Text  # generic name as ordered, e.g. "fentanyl"
    display_name: Text  # as shown to the nurse, with tall-man lettering: "fentaNYL"
    codes: Codes = Codes()
    concentration: Concentration | None = None  # absent only when dosing in volume (mL/h)
    dose_unit: str  # the dosing mode: ug/kg/min, mg/h, [iU]/h, mmol/h, mL/h, ...
    bolus_unit: str | None = None  # ug, ug/kg, [iU], [iU]/kg, mL, ...
    loading_unit: str | None = None
    high_alert: bool = False
    care_areas: dict[str, AreaRules]


class CareArea(_Doc):
    """A care area (profile): the limits of every entry are set per care area."""

    id: Id
    name: Text
    # Infusions without a library entry ("basic infusion"): allowed within rate/VTBI limits, or not.
    basic_infusion: Literal["allowed", "blocked"]
    basic_rate: Limits | None = None  # mL/h
    basic_vtbi: Limits | None = None  # mL


class PumpLibrary(_Doc):
    """The pump-side library version that goes with this release, for one pump model."""

    model: Text  # as the pump reports it when identified
    version: Annotated[str, Field(min_length=1, max_length=64)]


class LibraryDocument(_Doc):
    """The whole document, as written."""

    format: Literal["pumpgw-drug-library/1"]
    name: Text
    version: Annotated[int, Field(ge=1)]  # release number: each approved release is higher
    example: bool = False  # an example, not clinical advice: shown wherever the library is shown
    notice: Text | None = None
    override_reasons: Annotated[list[Text], Field(min_length=1)]
    pump_libraries: list[PumpLibrary] = []
    care_areas: Annotated[list[CareArea], Field(min_length=1)]
    drugs: list[Drug]


@dataclass(frozen=True, slots=True)
class Library:
    """A valid library with its identity (``hash``) and the indexes DERS looks things up in."""

    doc: LibraryDocument
    hash: str  # "sha256:<hex>" of the canonical form
    drugs: dict[str, Drug] = field(repr=False)
    by_code: dict[tuple[str, str], tuple[Drug, ...]] = field(repr=False)  # ("gtin", "0952...")
    care_areas: dict[str, CareArea] = field(repr=False)

    @property
    def version(self) -> int:
        return self.doc.version

    @property
    def label(self) -> str:
        """``"Example library v7 (sha256:1a2b3c4d5e6f)"``: how the library is named to people."""
        return f"{self.doc.name} v{self.doc.version} ({self.hash[:19]})"

    def pump_library_version(self, model: str) -> str | None:
        """The pump-side library version this release expects on ``model``, if it names one."""
        return next((p.version for p in self.doc.pump_libraries if p.model == model), None)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _shape_problems(exc: ValidationError) -> list[LibraryProblem]:
    problems = []
    for e in exc.errors():
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "no such key (check the spelling; see docs/library.md)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["type"] not in ("value_error",):
            msg = f"{msg} (got {e['input']!r})"
        problems.append(LibraryProblem(_dotted(tuple(e["loc"])), msg))
    return problems


def load_document(data: dict[str, Any], source: str) -> Library:
    """Validate parsed TOML/JSON data. Raises LibraryError with every problem and its path."""
    from .library_check import check_document

    try:
        doc = LibraryDocument.model_validate(data)
    except ValidationError as exc:
        raise LibraryError(source, _shape_problems(exc)) from None
    problems = check_document(doc)
    if problems:
        raise LibraryError(source, problems)
    return build(doc)


def build(doc: LibraryDocument) -> Library:
    """Index a document that :func:`library_check.check_document` found valid."""
    by_code: dict[tuple[str, str], tuple[Drug, ...]] = {}
    for drug in doc.drugs:
        for system, codes in drug.codes:
            for code in codes:
                by_code[(system, code)] = (*by_code.get((system, code), ()), drug)
    return Library(
        doc=doc,
        hash=library_hash(doc),
        drugs={d.id: d for d in doc.drugs},
        by_code=by_code,
        care_areas={a.id: a for a in doc.care_areas},
    )


def parse_library(raw: bytes, source: str) -> Library:
    """Parse a library from TOML or JSON bytes (JSON if the first non-blank byte is ``{``).

    Numbers are read as exact decimals (TOML floats and JSON numbers never become binary floats).
    Raises LibraryError naming ``source`` and every problem.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LibraryError(
            source, [LibraryProblem("(file)", f"not UTF-8 text at byte {exc.start}")]
        ) from None
    try:
        if text.lstrip().startswith("{"):
            data = json.loads(text, parse_float=Decimal)
        else:
            data = tomllib.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        problem = LibraryProblem(f"(syntax, line {exc.lineno})", f"not valid JSON: {exc.msg}")
        raise LibraryError(source, [problem]) from None
    except tomllib.TOMLDecodeError as exc:
        raise LibraryError(source, [LibraryProblem("(syntax)", f"not valid TOML: {exc}")]) from None
    if not isinstance(data, dict):
        raise LibraryError(source, [LibraryProblem("(top level)", "expected a table/object")])
    return load_document(data, source)


def document_data(doc: LibraryDocument) -> dict[str, Any]:
    """The document as plain data (quantities as canonical text, unset optional keys left out)."""
    data: dict[str, Any] = doc.model_dump(mode="json", exclude_none=True)
    return data


def canonical_bytes(doc: LibraryDocument) -> bytes:
    """The canonical form the hash and signatures are computed over (see the module docstring)."""
    return json.dumps(document_data(doc), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def library_hash(doc: LibraryDocument) -> str:
    """``"sha256:<64 hex>"`` of the canonical form: the identity of a library version."""
    return "sha256:" + hashlib.sha256(canonical_bytes(doc)).hexdigest()


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the document format, as published in ``docs/schema/``."""
    schema = LibraryDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://pumpgw.invalid/schema/drug-library-1.schema.json"
    schema["title"] = "pumpgw drug library, format 1"
    return schema
