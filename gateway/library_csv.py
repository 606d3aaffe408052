"""Spreadsheet authoring of the drug entries of a library: CSV export and import (pure, no I/O).

Pharmacists build and review a 2,000-entry library in a spreadsheet. The CSV holds the drug entries
only, one row per (drug entry, care area) pair; the header of the library (name, version, notice,
...), its override reasons, pump libraries and care areas come from a *base* library document.

Columns, in this order (the header row is stable; :data:`COLUMNS`)::

    drug_id, name, display_name, high_alert,            the entry (repeated on each of its rows)
    gtin, ndc, dmd, rxnorm, local,                      codes, several separated by "|"
    concentration_amount, concentration_volume,         fixed: "2500 ug" in "50 mL"
    concentration_variable,                             true for a variable concentration ...
    concentration_min, concentration_max,               ... from "0.5 mg/mL" to "5 mg/mL"
    dose_unit, bolus_unit, loading_unit,                "ug/kg/min", "ug/kg", "g"
    care_area, advisory, weight_required,               the care area of this row and its rules
    weight_hard_min, weight_soft_min, weight_soft_max, weight_hard_max,
    bsa_..., dose_..., bolus_dose_..., bolus_rate_..., bolus_volume_...,
    loading_dose_..., vtbi_..., duration_...            four limit columns for each limit set

Cells:

- a quantity is its number, a space and its UCUM unit (``"300 ug/h"``), or empty for no limit;
- a boolean is ``true``/``false``, ``yes``/``no`` or ``1``/``0`` (any case). ``high_alert`` is
  required; an empty ``weight_required`` means "not set" (implied by per-kg units), which is not the
  same as ``false``; ``concentration_variable`` is ``true`` for a variable concentration and empty
  or ``false`` otherwise. There is a concentration when any concentration cell is filled in;
- text (``name``, ``display_name``, ``advisory``) is taken exactly as written, spaces included; an
  empty ``advisory`` means none. Ids, units, booleans, quantities and codes may have spaces around
  them. Required: ``drug_id``, ``name``, ``display_name``, ``high_alert``, ``dose_unit``,
  ``care_area``;
- codes are separated by ``|`` (``"FEN50|FEN50-B"``); a code that contains ``|`` or has spaces
  around it cannot be written, and :func:`export_csv` refuses it (LibraryError) rather than change it;
- the columns of the entry (``drug_id`` to ``loading_unit``) must say the same on every row of the
  entry. The rows of one entry need not be next to each other; entries keep the order of their
  first rows.

:func:`import_csv` never guesses: a cell it cannot read is an error, not an empty cell. It reports
every problem at once, each at ``line 14, column dose_hard_max`` (the physical line of the file on
which the row starts), in the order of the file: what the CSV itself shows (header, unreadable
cells, disagreeing rows, duplicate rows), and what the validation of the whole document finds
(:mod:`.library_check`), mapped back to the line of the entry's row where it concerns one (an
entry's own columns: its first row). Problems outside the entries (from the base) keep their
document paths and come last. A problem that follows from a cell already reported as unreadable
is not reported again, and an entry with an empty or unreadable required cell is left out of the
validation (so that it does not stop the checks of every other entry).

Cells are written as they are, for an exact round trip (``import_csv(export_csv(lib), ...,
lib.doc)`` has ``lib``'s hash): a text that starts with ``=``, ``+``, ``-`` or ``@`` may be taken for
a formula by a spreadsheet that opens the file, so open it as text (the import reads it back exactly).

The text is expected as read with ``newline=""`` (as the :mod:`csv` module asks), so that line ends
inside quoted cells survive. A leading byte-order mark, as spreadsheets write, is ignored.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from .errors import LibraryError, LibraryProblem, QuantityError
from .library import (
    AREA_LIMIT_SETS,
    CODE_SYSTEMS,
    LIMIT_NAMES,
    AreaRules,
    Drug,
    Library,
    LibraryDocument,
    Limits,
    document_data,
    load_document,
    quantity_text,
)
from .quantity import Quantity

CODE_SEPARATOR: Final = "|"

#: The columns that describe the drug entry; the same on every row of one entry.
DRUG_COLUMNS: Final = (
    "drug_id",
    "name",
    "display_name",
    "high_alert",
    *CODE_SYSTEMS,
    "concentration_amount",
    "concentration_volume",
    "concentration_variable",
    "concentration_min",
    "concentration_max",
    "dose_unit",
    "bolus_unit",
    "loading_unit",
)
#: The columns of one care area of the entry.
AREA_COLUMNS: Final = (
    "care_area",
    "advisory",
    "weight_required",
    *(f"{s}_{n}" for s in AREA_LIMIT_SETS for n in LIMIT_NAMES),
)
#: The header row, in the order :func:`export_csv` writes it.
COLUMNS: Final = (*DRUG_COLUMNS, *AREA_COLUMNS)

_REQUIRED: Final = frozenset({"drug_id", "name", "display_name", "high_alert", "dose_unit", "care_area"})
_REQUIRED_FIELDS: Final = frozenset({"id", "name", "display_name", "dose_unit"})
_TRUE: Final = frozenset({"true", "yes", "1"})
_FALSE: Final = frozenset({"false", "no", "0"})
_CONCENTRATION_QUANTITIES: Final = ("amount", "volume", "min", "max")
_DRUG_FIELD_COLUMNS: Final = {
    "id": "drug_id",
    "name": "name",
    "display_name": "display_name",
    "high_alert": "high_alert",
    "dose_unit": "dose_unit",
    "bolus_unit": "bolus_unit",
    "loading_unit": "loading_unit",
    "care_areas": "care_area",
}


# --- export -------------------------------------------------------------------------------------


def _q(q: Quantity | None) -> str:
    return "" if q is None else quantity_text(q)


def _codes_cell(drug: Drug, index: int, system: str, problems: list[LibraryProblem]) -> str:
    codes: list[str] = getattr(drug.codes, system)
    for j, code in enumerate(codes):
        if CODE_SEPARATOR in code or code != code.strip() or not code:
            problems.append(
                LibraryProblem(
                    f"drugs[{index}].codes.{system}[{j}]",
                    f"{drug.id}: {system} code {code!r} cannot be written to CSV "
                    f"(expected no {CODE_SEPARATOR!r}, the code separator, and no spaces around it)",
                )
            )
    return CODE_SEPARATOR.join(codes)


def _drug_cells(drug: Drug, index: int, problems: list[LibraryProblem]) -> list[str]:
    conc = drug.concentration
    cells = [drug.id, drug.name, drug.display_name, "true" if drug.high_alert else "false"]
    cells += [_codes_cell(drug, index, system, problems) for system in CODE_SYSTEMS]
    if conc is None:
        cells += ["", "", "", "", ""]
    else:
        variable = "true" if conc.variable else "false"
        cells += [_q(conc.amount), _q(conc.volume), variable, _q(conc.min), _q(conc.max)]
    cells += [drug.dose_unit, drug.bolus_unit or "", drug.loading_unit or ""]
    return cells


def _area_cells(area_id: str, rules: AreaRules) -> list[str]:
    required = "" if rules.weight_required is None else ("true" if rules.weight_required else "false")
    cells = [area_id, rules.advisory or "", required]
    for name in AREA_LIMIT_SETS:
        limits: Limits | None = getattr(rules, name)
        cells += [_q(None if limits is None else getattr(limits, n)) for n in LIMIT_NAMES]
    return cells


def export_csv(library: Library) -> str:
    """The drug entries of ``library`` as CSV text: the header row, then one row per entry and care area.

    RFC 4180 quoting and ``\\r\\n`` line ends (the :mod:`csv` defaults); write it out as UTF-8.
    Raises LibraryError if a code cannot be written (it contains ``|``, the code separator).
    """
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    problems: list[LibraryProblem] = []
    for index, drug in enumerate(library.doc.drugs):
        drug_cells = _drug_cells(drug, index, problems)
        if not drug.care_areas:  # not in a valid library; written so that nothing is dropped silently
            writer.writerow(drug_cells + [""] * len(AREA_COLUMNS))
        for area_id, rules in drug.care_areas.items():
            writer.writerow(drug_cells + _area_cells(area_id, rules))
    if problems:
        raise LibraryError(library.label, problems)
    return out.getvalue()


# --- import -------------------------------------------------------------------------------------


class _Bad:
    """A cell that could not be read (already reported)."""


_BAD: Final = _Bad()


@dataclass
class _Entry:
    """One drug entry being assembled from its rows."""

    index: int  # in the document's drugs
    line: int  # of its first row
    values: dict[str, object]  # column -> the normalised value of the first row (or _BAD)
    data: dict[str, Any]  # the Drug as data for the model
    area_lines: dict[str, int] = field(default_factory=dict)


def _where(line: int, column: str | None = None) -> str:
    return f"line {line}" if column is None else f"line {line}, column {column}"


class _Importer:
    def __init__(self) -> None:
        self.problems: list[LibraryProblem] = []
        # (drug index, care area or None, field): parts left out because a cell was unreadable.
        self.tainted: set[tuple[int, str | None, str]] = set()
        self.entries: dict[str, _Entry] = {}
        self.in_document: list[_Entry] = []  # the entries validated, in the document's order

    def document_drugs(self) -> list[dict[str, Any]]:
        """The entries as drug data, but those lacking a required cell (they cannot be built, and
        validating them would only stop the clinical checks of every other entry)."""
        incomplete = {i for i, area, key in self.tainted if area is None and key in _REQUIRED_FIELDS}
        self.in_document = [e for e in self.entries.values() if e.index not in incomplete]
        return [e.data for e in self.in_document]

    def add(self, line: int, column: str | None, message: str) -> None:
        self.problems.append(LibraryProblem(_where(line, column), message))

    # -- cells ---------------------------------------------------------------------------------

    def boolean(self, line: int, column: str, text: str) -> bool | _Bad | None:
        word = text.strip().lower()
        if not word:
            return None
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        self.add(line, column, f"{text!r} is not a boolean (expected true/false, yes/no or 1/0)")
        return _BAD

    def quantity(self, line: int, column: str, text: str) -> Quantity | _Bad | None:
        if not text.strip():
            return None
        try:
            return Quantity.parse(text)
        except QuantityError as exc:
            hint = (
                ""
                if "expected" in exc.reason
                else " (expected a number, a space and a UCUM unit: '300 ug/h')"
            )
            self.add(line, column, f"{text!r} is not a quantity: {exc.reason}{hint}")
            return _BAD

    def codes(self, line: int, column: str, text: str) -> tuple[str, ...] | _Bad:
        if not text.strip():
            return ()
        codes = tuple(piece.strip() for piece in text.split(CODE_SEPARATOR))
        if not all(codes):
            self.add(
                line,
                column,
                f"{text!r} has an empty code (expected codes separated by {CODE_SEPARATOR!r}: '123|456')",
            )
            return _BAD
        return codes

    # -- rows ----------------------------------------------------------------------------------

    def drug_values(self, line: int, cells: dict[str, str]) -> dict[str, object]:
        """The entry columns of one row, read and normalised (``_BAD`` where unreadable)."""
        values: dict[str, object] = {}
        for column in DRUG_COLUMNS:
            text = cells[column]
            value: object
            if column in ("name", "display_name"):
                value = text  # exactly as written
            elif column in ("drug_id", "dose_unit", "bolus_unit", "loading_unit"):
                value = text.strip()
            elif column in ("high_alert", "concentration_variable"):
                value = self.boolean(line, column, text)
            elif column in CODE_SYSTEMS:
                value = self.codes(line, column, text)
            else:
                value = self.quantity(line, column, text)
            if column in _REQUIRED and value in ("", None):
                self.add(line, column, f"empty; a {column} is required on every row")
                value = _BAD
            values[column] = value
        return values

    def drug_data(self, index: int, values: dict[str, object]) -> dict[str, Any]:
        """The Drug as model data, leaving out (and marking tainted) what could not be read."""
        data: dict[str, Any] = {"care_areas": {}}
        for key, column in _DRUG_FIELD_COLUMNS.items():
            if column not in values:
                continue
            value = values[column]
            if value is _BAD:
                self.tainted.add((index, None, key))
            elif value not in ("", None):
                data[key] = value
        codes: dict[str, list[str]] = {}
        for system in CODE_SYSTEMS:
            value = values[system]
            if isinstance(value, tuple):
                codes[system] = list(value)
            else:
                self.tainted.add((index, None, f"codes.{system}"))
        data["codes"] = codes
        conc: dict[str, Any] = {}
        bad = False
        for name in _CONCENTRATION_QUANTITIES:
            value = values[f"concentration_{name}"]
            bad |= value is _BAD
            if isinstance(value, Quantity):
                conc[name] = value
        variable = values["concentration_variable"]
        bad |= variable is _BAD
        if variable is True:
            conc["variable"] = True
        if bad:
            self.tainted.add((index, None, "concentration"))
        if conc:
            data["concentration"] = conc
        return data

    def area_data(self, index: int, area_id: str, line: int, cells: dict[str, str]) -> dict[str, Any]:
        rules: dict[str, Any] = {}
        if cells["advisory"]:
            rules["advisory"] = cells["advisory"]
        required = self.boolean(line, "weight_required", cells["weight_required"])
        if isinstance(required, bool):
            rules["weight_required"] = required
        elif required is _BAD:
            self.tainted.add((index, area_id, "weight_required"))
        for name in AREA_LIMIT_SETS:
            limits: dict[str, Quantity] = {}
            for limit in LIMIT_NAMES:
                q = self.quantity(line, f"{name}_{limit}", cells[f"{name}_{limit}"])
                if isinstance(q, Quantity):
                    limits[limit] = q
                elif q is _BAD:
                    self.tainted.add((index, area_id, name))
            if limits:
                rules[name] = limits
        return rules

    def row(self, line: int, cells: dict[str, str]) -> None:
        values = self.drug_values(line, cells)
        drug_id = values["drug_id"]
        area_id = cells["care_area"].strip()
        if not area_id:
            self.add(line, "care_area", "empty; a care_area is required on every row")
        if not isinstance(drug_id, str) or not area_id:
            return  # reported as empty required cells; the row cannot be placed
        entry = self.entries.get(drug_id)
        if entry is None:
            index = len(self.entries)
            entry = _Entry(index, line, values, self.drug_data(index, values))
            self.entries[drug_id] = entry
        else:
            for column in DRUG_COLUMNS:
                here, there = values[column], entry.values[column]
                if here is not _BAD and there is not _BAD and here != there:
                    self.add(
                        line,
                        column,
                        f"{_show(here)} differs from {_show(there)} on line {entry.line}, the first row of "
                        f"{drug_id} (the entry's columns must be the same on each of its rows)",
                    )
        if area_id in entry.area_lines:
            self.add(
                line,
                "care_area",
                f"{drug_id} in {area_id} is already on line {entry.area_lines[area_id]} "
                "(expected one row per drug entry and care area)",
            )
            return
        entry.area_lines[area_id] = line
        entry.data["care_areas"][area_id] = self.area_data(entry.index, area_id, line, cells)

    # -- document problems ---------------------------------------------------------------------

    def locate(self, problem: LibraryProblem) -> LibraryProblem | None:
        """A document problem at its CSV line and column, or None if an unreadable cell caused it."""
        message = _DRUG_REF.sub(self._line_of_ref, problem.message)
        match = _DRUG_PATH.fullmatch(problem.path)
        if match is None or int(match[1]) >= len(self.in_document):
            return LibraryProblem(problem.path, message)
        entry = self.in_document[int(match[1])]
        rest = match[2] or ""
        if rest.startswith("care_areas."):
            after = rest.removeprefix("care_areas.")
            area = max(
                (a for a in entry.area_lines if after == a or after.startswith(a + ".")),
                key=len,
                default=None,
            )
            if area is not None:
                key = after[len(area) + 1 :]
                field_name = key.split(".")[0]
                if (entry.index, area, field_name) in self.tainted:
                    return None
                column = _area_column(key)
                where = _where(entry.area_lines[area], column)
                return LibraryProblem(where if column else f"{where} ({problem.path})", message)
        key = re.sub(r"\[\d+\]$", "", rest)
        field_name = key.split(".")[0] if not key.startswith("codes.") else key
        if (entry.index, None, field_name) in self.tainted:
            return None
        if key and _drug_column(key) is None:
            return LibraryProblem(f"{_where(entry.line)} ({problem.path})", message)
        return LibraryProblem(_where(entry.line, _drug_column(key)), message)

    def _line_of_ref(self, match: re.Match[str]) -> str:
        index = int(match[1])
        return f"line {self.in_document[index].line}" if index < len(self.in_document) else match[0]


_DRUG_PATH: Final = re.compile(r"drugs\[(\d+)\](?:\.(.+))?", re.DOTALL)
_DRUG_REF: Final = re.compile(r"\bdrugs\[(\d+)\]")


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return repr(CODE_SEPARATOR.join(value))
    if isinstance(value, Quantity):
        return repr(quantity_text(value))
    if value is None:
        return "(empty)"
    return repr(value)


def _area_column(key: str) -> str | None:
    """``dose.soft_max`` -> ``dose_soft_max``; ``dose`` -> ``dose_*``; ``""`` -> ``care_area``."""
    if not key:
        return "care_area"
    parts = key.split(".")
    if parts[0] in AREA_LIMIT_SETS:
        return f"{parts[0]}_{parts[1]}" if len(parts) > 1 and parts[1] in LIMIT_NAMES else f"{parts[0]}_*"
    return parts[0] if parts[0] in AREA_COLUMNS else None


def _drug_column(key: str) -> str | None:
    """``concentration.amount`` -> ``concentration_amount``, ``codes.gtin`` -> ``gtin``, ..."""
    if not key:
        return None
    parts = key.split(".")
    if parts[0] == "codes":
        return parts[1] if len(parts) > 1 and parts[1] in CODE_SYSTEMS else "gtin..local"
    if parts[0] == "concentration":
        return f"concentration_{parts[1]}" if len(parts) > 1 else "concentration_*"
    return _DRUG_FIELD_COLUMNS.get(parts[0])


class _CsvSyntax(Exception):
    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(f"line {line}: {reason}")


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line, cells)`` of each CSV record. Raises _CsvSyntax on bad quoting."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    start = 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            noticed = f", noticed on line {reader.line_num}" if reader.line_num > start else ""
            raise _CsvSyntax(start, f"{exc} (in the row that starts here{noticed})") from None
        yield start, record
        start = reader.line_num + 1


def _header(columns: list[str], problems: list[LibraryProblem]) -> bool:
    """Check the header row; True if every column is there (so the rows can be read)."""
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            problems.append(LibraryProblem(_where(1, column), "column appears twice in the header"))
        elif column not in COLUMNS:
            problems.append(
                LibraryProblem(
                    _where(1, column or "(empty)"),
                    "no such column (check the spelling; the columns are listed in docs/library.md "
                    "and written by the CSV export)",
                )
            )
        seen.add(column)
    missing = [c for c in COLUMNS if c not in seen]
    problems += [LibraryProblem(_where(1, c), "required column is missing from the header") for c in missing]
    return not missing


def import_csv(text: str, source: str, base: LibraryDocument) -> LibraryDocument:
    """The library ``base`` with its drug entries replaced by those of the CSV ``text``.

    Validates the whole document (shape and :mod:`.library_check`). Raises LibraryError naming
    ``source`` and every problem, at its CSV line and column where it has one.
    """
    imp = _Importer()
    records = _records(text)
    try:
        first = next(records, None)
        if first is None:
            raise LibraryError(source, [LibraryProblem(_where(1), "empty file: expected the header row")])
        columns = [c.strip() for c in first[1]]
        if not _header(columns, imp.problems):
            raise LibraryError(source, imp.problems)
        for line, record in records:
            if not any(cell.strip() for cell in record):
                continue  # a blank line, or a spreadsheet's empty row
            if len(record) != len(columns):
                imp.add(line, None, f"{len(record)} cells, expected {len(columns)} as in the header")
                continue
            cells = dict(zip(columns, record, strict=True))
            imp.row(line, {c: cells[c] for c in COLUMNS})
    except _CsvSyntax as exc:
        imp.add(exc.line, None, f"not valid CSV: {exc.reason}")
        raise LibraryError(source, imp.problems) from None
    data = document_data(base)
    data["drugs"] = imp.document_drugs()
    try:
        library = load_document(data, source)
    except LibraryError as exc:
        located = (imp.locate(p) for p in exc.problems)
        imp.problems += [p for p in located if p is not None]
        raise LibraryError(source, sorted(imp.problems, key=_by_line)) from None
    if imp.problems:
        raise LibraryError(source, sorted(imp.problems, key=_by_line))
    return library.doc


def _by_line(problem: LibraryProblem) -> tuple[int, int]:
    """Problems at a CSV line in the order of the file (stable within a line), then the others."""
    found = re.match(r"line (\d+)\b", problem.path)
    return (0, int(found[1])) if found else (1, 0)
