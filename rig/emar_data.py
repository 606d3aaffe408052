"""The emulated eMAR's data: patients and infusion orders, read from a file and checked.

The data (patients and orders) comes from a YAML or JSON file (:func:`load_emar_file`) or the
built-in example (:data:`EXAMPLE_DATA`), in this format (every key checked, the bad one named)::

    patients:
      - identifier: RIG-100001          # the wristband number (MRN); also the Patient's id
        family: Example                 # name
        given: [Alex]
        birth_date: 1961-02-01
        sex: female                     # optional: male, female, other, unknown
        weight: 82 kg                   # optional; kg (or g)
    orders:
      - id: RIG-ORD-1                   # the placer order number (ORC-2 / identifier)
        patient: RIG-100001             # a patient's identifier, from above
        drug: {code: "7512", system: rxnorm, name: noradrenaline}
        concentration: {amount: 4 mg, volume: 50 mL}   # optional (a plain fluid has none)
        dose_rate: 0.1 ug/kg/min        # a dose rate, and/or
        rate: 5 mL/h                    # a flow; at least one of the two
        vtbi: 50 mL                     # optional
        duration: 10 h                  # optional
        route: IV                       # HL7 table 0162: IV, SC, EP, IT, NG, ...
        pump: rig-modbus-1              # optional: the pump (and channel) the order is for
        channel: "1"
        ordered_at: now                 # "now", relative ("-5m", "-2h", "+30s") or ISO 8601 with offset
        ordered_by: Dr Example          # optional
        status: active                  # optional (default active)

Relative times (``now``, ``-5m``) are taken from the clock *each time the order is served or sent*,
so an order scripted as ``-5m`` is always five minutes old and one scripted as ``-20m`` is always
stale (PIV error 9022), however long the rig has been running. ``drug.system`` is the drug
library's code system name (``rxnorm``, ``gtin``, ``ndc``, ``dmd``, ``local``: ``docs/library.md``)
or a URI: HL7 carries it as written (RXG-4.3), FHIR as the system's URI (:data:`DRUG_SYSTEM_URIS`).

**The example data is for exercising software, not clinical advice.**
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.errors import ConfigError, QuantityError
from pumpgw.gateway.quantity import Quantity, unit_parts

UCUM: Final = "http://unitsofmeasure.org"
LOINC: Final = "http://loinc.org"
V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0162: Final = "http://terminology.hl7.org/CodeSystem/v2-0162"  # HL7 table 0162, route of administration
SNOMED: Final = "http://snomed.info/sct"
DOSE_RATE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/dose-rate-type"
#: Identifier systems of the rig's eMAR: the wristband number and the placer order number.
MRN_SYSTEM: Final = "urn:pumpgw:rig:mrn"
ORDER_SYSTEM: Final = "urn:pumpgw:rig:order"
#: FHIR code system URIs for the drug library's code system names (docs/library.md).
DRUG_SYSTEM_URIS: Final[Mapping[str, str]] = {
    "rxnorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "ndc": "http://hl7.org/fhir/sid/ndc",
    "gtin": "https://www.gs1.org/gtin",
    "dmd": "https://dmd.nhs.uk",
    "local": "urn:pumpgw:local-drug",
}
#: HL7 table 0162 routes the format takes, with their display text.
ROUTES: Final[Mapping[str, str]] = {
    "IV": "Intravenous",
    "SC": "Subcutaneous",
    "EP": "Epidural",
    "IT": "Intrathecal",
    "NG": "Nasogastric",
    "IO": "Intraosseous",
    "IA": "Intra-arterial",
}
# The one route given a SNOMED CT code too: "Intravenous route" as the R4 example medrx0336 codes it.
SNOMED_IV: Final = {"system": SNOMED, "code": "47625008", "display": "Intravenous route (qualifier value)"}
WEIGHT_CODE: Final = {"system": LOINC, "code": "29463-7", "display": "Body weight"}
_FHIR_ID: Final = r"^[A-Za-z0-9\-.]{1,60}$"  # FHIR id (64) less room for the "med-" prefix
_RELATIVE = re.compile(r"^([+-])(\d{1,5})(s|m|h|d)$")
_RELATIVE_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


# -- the data file ---------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _quantity(value: object, *, expected: str, check: Any) -> Quantity:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError(f"{expected}, as text")  # noqa: TRY004 - pydantic reports ValueError
    try:
        q = Quantity.parse(str(value))
    except QuantityError as exc:
        raise ValueError(f"{expected}; {value!r}: {exc.reason}") from None
    if not check(q):
        raise ValueError(f"{expected}, not {q}")
    if q.value <= 0:
        raise ValueError(f"a value above zero, not {q}")
    return q


def _text_not_number(v: object) -> object:
    """Codes and identifiers are text: a YAML number (``code: 09521234500131``) would lose its
    leading zeros, so a number here is refused rather than turned into text."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        raise ValueError(  # noqa: TRY004 - pydantic reports ValueError, not TypeError
            "text in quotes: a number loses leading zeros (a GTIN's, an MRN's)"
        )
    return v


def _dose_rate_unit(q: Quantity) -> bool:
    try:
        parts = unit_parts(q.unit)
    except QuantityError:
        return False
    return parts.per_time is not None and parts.amount_kind != "volume"


def _flow_unit(q: Quantity) -> bool:
    return q.dimension == "volume/time"


class ConcentrationData(_Strict):
    amount: str
    volume: str

    @field_validator("amount")
    @classmethod
    def _amount(cls, v: str) -> str:
        _quantity(v, expected="a drug amount (e.g. '4 mg')", check=lambda q: q.dimension in _DRUG_KINDS)
        return v

    @field_validator("volume")
    @classmethod
    def _volume(cls, v: str) -> str:
        _quantity(v, expected="a volume (e.g. '50 mL')", check=lambda q: q.dimension == "volume")
        return v

    def concentration(self) -> Concentration:
        return Concentration(Quantity.parse(self.amount), Quantity.parse(self.volume))


_DRUG_KINDS: Final = frozenset({"mass", "units", "substance", "equivalents"})


class DrugData(_Strict):
    code: Annotated[str, Field(pattern=r"^[A-Za-z0-9.\-]{1,40}$")]
    system: str
    name: Annotated[str, Field(min_length=1, max_length=120)]

    _code = field_validator("code", mode="before")(_text_not_number)

    @field_validator("system")
    @classmethod
    def _system(cls, v: str) -> str:
        if v in DRUG_SYSTEM_URIS or re.match(r"^(https?://|urn:)\S+$", v):
            return v
        raise ValueError(f"one of {', '.join(DRUG_SYSTEM_URIS)}, or a URI (http(s)://..., urn:...)")

    @property
    def fhir_system(self) -> str:
        return DRUG_SYSTEM_URIS.get(self.system, self.system)


class PatientData(_Strict):
    identifier: Annotated[str, Field(pattern=_FHIR_ID)]
    family: Annotated[str, Field(min_length=1, max_length=80)]
    given: list[Annotated[str, Field(min_length=1, max_length=80)]] = []
    birth_date: date
    sex: Literal["male", "female", "other", "unknown"] | None = None
    weight: str | None = None

    _identifier = field_validator("identifier", mode="before")(_text_not_number)

    @field_validator("given", mode="before")
    @classmethod
    def _given(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("weight")
    @classmethod
    def _weight(cls, v: str | None) -> str | None:
        if v is not None:
            _quantity(v, expected="a body weight in kg (e.g. '82 kg')", check=lambda q: q.unit in ("kg", "g"))
        return v

    @property
    def display_name(self) -> str:
        return " ".join([*self.given, self.family])

    def weight_quantity(self) -> Quantity | None:
        if self.weight is None:
            return None
        q = Quantity.parse(self.weight)
        return q if q.unit == "kg" else Quantity(q.value, "g{body}")


class OrderData(_Strict):
    id: Annotated[str, Field(pattern=_FHIR_ID)]
    patient: str
    drug: DrugData
    concentration: ConcentrationData | None = None
    dose_rate: str | None = None
    rate: str | None = None
    vtbi: str | None = None
    duration: str | None = None
    route: str
    pump: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] | None = None
    channel: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,8}$")] | None = None
    ordered_at: str | datetime
    ordered_by: Annotated[str, Field(min_length=1, max_length=120)] | None = None
    status: Literal["active", "on-hold", "cancelled", "completed", "stopped", "entered-in-error"] = "active"

    _ids = field_validator("id", "patient", mode="before")(_text_not_number)

    @field_validator("channel", mode="before")
    @classmethod
    def _channel(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("dose_rate")
    @classmethod
    def _dose_rate(cls, v: str | None) -> str | None:
        if v is not None:
            _quantity(
                v, expected="a dose rate (an amount per time, e.g. '0.1 ug/kg/min')", check=_dose_rate_unit
            )
        return v

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is not None:
            _quantity(v, expected="a flow (a volume per time, e.g. '5 mL/h')", check=_flow_unit)
        return v

    @field_validator("vtbi")
    @classmethod
    def _vtbi(cls, v: str | None) -> str | None:
        if v is not None:
            _quantity(v, expected="a volume (e.g. '50 mL')", check=lambda q: q.dimension == "volume")
        return v

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            _quantity(v, expected="a time (e.g. '10 h')", check=lambda q: q.dimension == "time")
        return v

    @field_validator("route")
    @classmethod
    def _route(cls, v: str) -> str:
        if v not in ROUTES:
            raise ValueError(f"an HL7 table 0162 route: one of {', '.join(ROUTES)}")
        return v

    @field_validator("ordered_at", mode="before")
    @classmethod
    def _ordered_at(cls, v: object) -> object:
        if isinstance(v, datetime):
            if v.tzinfo is None:
                raise ValueError("a time with its UTC offset (e.g. 2026-01-01T10:00:00+00:00)")
            return v
        if not isinstance(v, str):
            raise ValueError(  # noqa: TRY004 - pydantic reports ValueError, not TypeError
                "'now', a relative time ('-5m', '-2h') or an ISO 8601 time with offset"
            )
        if v == "now" or _RELATIVE.match(v):
            return v
        try:
            moment = datetime.fromisoformat(v)
        except ValueError:
            raise ValueError(
                "'now', a relative time ('-5m', '-2h', '+30s') or an ISO 8601 time with offset"
            ) from None
        if moment.tzinfo is None:
            raise ValueError("a time with its UTC offset (e.g. 2026-01-01T10:00:00+00:00)")
        return moment

    @model_validator(mode="after")
    def _something_to_program(self) -> OrderData:
        if self.dose_rate is None and self.rate is None:
            raise ValueError("dose_rate or rate (or both): an order needs something to program")
        if self.channel is not None and self.pump is None:
            raise ValueError("pump as well: channel is given without it")
        return self

    def ordered_at_from(self, now: datetime) -> datetime:
        """The order time: absolute as written, or relative to ``now`` (to the whole second, as
        HL7 writes it)."""
        if isinstance(self.ordered_at, datetime):
            return self.ordered_at
        now = now.replace(microsecond=0)
        if self.ordered_at == "now":
            return now
        match = _RELATIVE.match(self.ordered_at)
        assert match is not None  # the validator admitted only these forms
        sign, amount, unit = match.groups()
        delta = timedelta(**{_RELATIVE_UNITS[unit]: int(amount)})
        return now + delta if sign == "+" else now - delta


class EmarData(_Strict):
    patients: list[PatientData] = []
    orders: list[OrderData] = []

    @model_validator(mode="after")
    def _references(self) -> EmarData:
        seen: set[str] = set()
        for i, p in enumerate(self.patients):
            if p.identifier in seen:
                raise ValueError(
                    f"unique identifiers: patients[{i}].identifier {p.identifier!r} is used twice"
                )
            seen.add(p.identifier)
        ids: set[str] = set()
        for i, o in enumerate(self.orders):
            if o.id in ids:
                raise ValueError(f"unique ids: orders[{i}].id {o.id!r} is used twice")
            ids.add(o.id)
            if o.patient not in seen:
                known = ", ".join(sorted(seen)) or "none"
                raise ValueError(f"orders[{i}].patient to be a patient here ({known}), not {o.patient!r}")
        return self


def parse_emar_data(data: object, source: str) -> EmarData:
    """Validate already-parsed data. Raises ConfigError naming every bad key (``orders[1].rate``)."""
    try:
        return EmarData.model_validate(data)
    except ValidationError as exc:
        problems = [
            ConfigError(
                source, _dotted(e["loc"]), None if e["type"] == "missing" else e.get("input"), _expected(e)
            )
            for e in exc.errors()
        ]
        first = problems[0]
        raise ConfigError(source, first.key, first.value, first.expected, tuple(problems[1:])) from None


def load_emar_file(path: Path) -> EmarData:
    """Read an eMAR data file: JSON (``.json``) or YAML (anything else; needs PyYAML installed).
    Raises ConfigError naming the file and the bad key."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "(file)", source, f"a readable file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "(file)", repr(exc.object[exc.start : exc.end]), "UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(source, f"(line {exc.lineno})", exc.msg, "valid JSON") from None
    else:
        data = _load_yaml(text, source)
    return parse_emar_data(data, source)


def _load_yaml(text: str, source: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"(line {mark.line + 1})" if mark is not None else "(syntax)"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, where, problem, "valid YAML") from None


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _expected(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "no such key (check the spelling; see docs/rig.md)"
    if error["type"] == "missing":
        return "a value: this key is required"
    msg = str(error["msg"]).removeprefix("Value error, ")
    return msg[0].lower() + msg[1:] if msg else "a valid value"


#: The eMAR the rig starts with: two patients and orders that match the example drug library
#: (gateway/examples/drug-library.example.toml) and the rig's pumps. EXAMPLES, not clinical advice.
EXAMPLE_DATA: Final[dict[str, Any]] = {
    "patients": [
        {
            "identifier": "RIG-100001",
            "family": "Example",
            "given": ["Alex"],
            "birth_date": "1961-02-01",
            "sex": "female",
            "weight": "82 kg",
        },
        {
            "identifier": "RIG-100002",
            "family": "Sample",
            "given": ["Sam"],
            "birth_date": "1975-07-14",
            "sex": "male",
            "weight": "70 kg",
        },
    ],
    "orders": [
        {
            "id": "RIG-ORD-1",
            "patient": "RIG-100001",
            "drug": {"code": "7512", "system": "rxnorm", "name": "noradrenaline"},
            "concentration": {"amount": "4 mg", "volume": "50 mL"},
            "dose_rate": "0.1 ug/kg/min",
            "vtbi": "50 mL",
            "route": "IV",
            "pump": "rig-modbus-1",
            "channel": "1",
            "ordered_at": "-2m",
            "ordered_by": "Dr Example",
        },
        {
            "id": "RIG-ORD-2",
            "patient": "RIG-100001",
            "drug": {"code": "09521234500131", "system": "gtin", "name": "Hartmann's solution"},
            "rate": "100 mL/h",
            "vtbi": "1000 mL",
            "duration": "10 h",
            "route": "IV",
            "pump": "rig-modbus-1",
            "channel": "2",
            "ordered_at": "-1m",
            "ordered_by": "Dr Example",
        },
        {
            "id": "RIG-ORD-3",
            "patient": "RIG-100002",
            "drug": {"code": "09521234543213", "system": "gtin", "name": "fentanyl"},
            "concentration": {"amount": "2500 ug", "volume": "50 mL"},
            "dose_rate": "50 ug/h",
            "vtbi": "50 mL",
            "route": "IV",
            "ordered_at": "now",
            "ordered_by": "Dr Example",
        },
        {  # made too long ago on purpose: the gateway must refuse it as stale (PIV 9022)
            "id": "RIG-ORD-STALE",
            "patient": "RIG-100002",
            "drug": {"code": "7052", "system": "rxnorm", "name": "morphine"},
            "concentration": {"amount": "50 mg", "volume": "50 mL"},
            "dose_rate": "2 mg/h",
            "vtbi": "50 mL",
            "route": "IV",
            "ordered_at": "-20m",
            "ordered_by": "Dr Example",
        },
    ],
}


def example_data() -> EmarData:
    return parse_emar_data(EXAMPLE_DATA, "built-in example eMAR data")
