"""FHIR R4 MedicationRequest → the gateway's :class:`~pumpgw.gateway.orders.Order`, and back again
as an OperationOutcome when it cannot be used.

:func:`medication_request_to_order` first validates the request (and the Medication, Patient and
Observations it is given) with the fhir.resources R4B models, then reads the raw JSON, element by
element, into an :class:`Order`. Every element that cannot be read exactly and unambiguously
becomes an :class:`~pumpgw.gateway.orders.OrderProblem` naming the element as a FHIRPath-like path
(``MedicationRequest.dosageInstruction[0].doseAndRate[0].rateQuantity.unit``), its value and what
was expected; all of them are raised together as :class:`~pumpgw.gateway.orders.OrderRefused`.
Nothing is guessed or defaulted: what the request does not say stays ``None``.

What each Order field comes from:

- ``order_id``: the value of the request's identifier that has a ``system`` (of several, the one
  with ``use`` official); without any such identifier, the resource ``id``. (The value alone: the
  HL7 side keys orders by the placer order number the same way.)
- ``status``: ``status``, as written (``check_order`` refuses anything but ``active``). An
  ``intent`` that is not an order (``proposal``, ``plan``, ``option``) and ``doNotPerform`` true
  are refused here: neither asks for a drug to be given.
- ``patient_id``: the identifier a wristband is matched against, so never a server's resource id.
  From the Patient (given as ``patient``, or contained): its identifier with the configured
  ``mrn_system``, else the one typed ``MR`` (v2-0203 medical record number), else ``PI``; from
  ``subject.identifier`` when no Patient is given. A subject that is only a reference
  (``Patient/pat1``) is refused: fetch the Patient and pass it.
- ``drug``: the Medication's ``code`` (or ``medicationCodeableConcept``): its first coding with
  both ``system`` and ``code``; name from ``text``, else that coding's ``display``. A Medication
  without a code is named by its one drug ingredient (the R4 example ``medrx0336`` does this).
- ``concentration``: the strength (a Ratio: drug amount / volume) of the Medication's one drug
  ingredient. Drug ingredients are those with ``isActive`` true when any says so, otherwise all
  but the diluents: ``isActive`` false, or an item coded in :data:`DILUENTS` (an explicit table of
  codes; never a guess from a name). More than one drug ingredient with a strength is ambiguous.
- ``container_volume``: ``Medication.amount`` (numerator in a volume, denominator absent or 1)
  or ``dispenseRequest.quantity`` in a volume; both given and different is ambiguous.
- ``dose``, ``dose_rate``, ``duration``, ``route``: from ``dosageInstruction`` (all entries must
  agree): ``doseAndRate.doseQuantity`` → dose; ``doseAndRate.rateQuantity`` → dose_rate
  (``4 ug/kg/min`` as ordered), or ``rate`` when it is a plain flow (``50 mL/h``, where a PIV
  order puts it too); ``doseAndRate.rateRatio`` → the same, converted
  exactly (50 mL / 1 h → 50 mL/h; 100 mL / 30 min → 200 mL/h) or refused; ``timing.repeat.duration``
  with ``durationUnit`` s, min, h (or d, as exact hours); ``route``: the HL7 table 0162 code
  where a coding has one (``IV``, as a PIV order's RXR-1), else the first coding's display, else
  its code, else the text. Ranges (``doseRange``, ``rateRange``, ``durationMax``) are refused: the
  gateway programs one value.
- ``weight``: a body-weight Observation (LOINC 29463-7 or 3141-9, status final, amended or
  corrected, in kg) that ``supportingInformation`` references, contained or passed in
  ``supporting``. The gateway does not fetch: a reference it is not given (the example's
  ``Observation/example``) leaves the weight unknown, and DERS asks for it where a dose needs it.
  (R4 has no standard extension for a weight on a MedicationRequest; none is read.)
- ``ordered_at``: ``authoredOn`` with its offset. A date without a time (``2015-01-15``) says the
  day, not when: it gives ``None`` (``check_order`` then refuses the order as possibly stale).
  R4 requires an offset on a time, so the R4B model refuses a time without one.
- ``ordered_by``: the requester's display and reference (``Patrick Pump (Practitioner/f007)``).
- ``encounter``: the encounter reference (or identifier value); ``patient_name``: the Patient's
  name, else ``subject.display``.

Units (:data:`UNIT_ALIASES`): a quantity's UCUM ``code`` is read when present (it needs a UCUM
``system``: FHIR rule qty-3), otherwise its ``unit`` text; each must be one of the gateway's UCUM
codes (``pumpgw.gateway.quantity.known_units``) or an entry of the explicit alias table, and a
``unit`` that names a different known unit than the ``code`` is refused. Numbers must be exact:
JSON read with ``parse_float=Decimal`` (``pumpgw.fhir.client.loads_json`` does); a binary float is
refused. Zero and negative amounts are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, Inexact, InvalidOperation, localcontext
from typing import Any, Final

from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from pydantic import BaseModel, ValidationError

from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.errors import QuantityError
from pumpgw.gateway.orders import (
    HL7_APPLICATION_ERROR,
    HL7_DATA_TYPE_ERROR,
    HL7_DUPLICATE_KEY,
    HL7_REQUIRED_FIELD_MISSING,
    HL7_TABLE_VALUE_NOT_FOUND,
    HL7_UNKNOWN_KEY,
    Drug,
    Order,
    OrderProblem,
    OrderRefused,
    OrderSource,
    PivError,
)
from pumpgw.gateway.quantity import Quantity, UnitParts, is_flow, known_units, unit_parts

UCUM: Final = "http://unitsofmeasure.org"
V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0162: Final = "http://terminology.hl7.org/CodeSystem/v2-0162"  # HL7 route of administration
LOINC: Final = "http://loinc.org"
V2_0357: Final = "http://terminology.hl7.org/CodeSystem/v2-0357"  # HL7 message error condition codes
# The IHE PCD PIV application error codes (TF-2 B.3, 9001 and up) have no published code system
# URI that we know of; OperationOutcome names them in the gateway's own namespace.
PIV_ERROR_SYSTEM: Final = "urn:pumpgw:piv-error"

#: Non-canonical unit spellings that real servers send, each with the gateway's UCUM code. Nothing
#: outside this table and ``known_units()`` is accepted; extend it only with spellings whose
#: meaning is certain.
UNIT_ALIASES: Final[dict[str, str]] = {
    # UCUM itself: "l" and "L" are both the litre (case-sensitive UCUM has both atoms).
    "l": "L",
    "ml": "mL",
    "ul": "uL",
    "ml/h": "mL/h",
    "ml/min": "mL/min",
    "mg/ml": "mg/mL",
    "ug/ml": "ug/mL",
    "ng/ml": "ng/mL",
    "g/ml": "g/mL",
    "mmol/ml": "mmol/mL",
    "meq/ml": "meq/mL",
    "[iU]/ml": "[iU]/mL",
    # "hr" for hour (not UCUM: UCUM's hour is "h").
    "mL/hr": "mL/h",
    "ml/hr": "mL/h",
    "mg/hr": "mg/h",
    "mg/kg/hr": "mg/kg/h",
    "[iU]/hr": "[iU]/h",
    # "mcg" for microgram (not UCUM, but what ISMP asks labels to print; UCUM's is "ug").
    "mcg": "ug",
    "mcg/kg": "ug/kg",
    "mcg/h": "ug/h",
    "mcg/hr": "ug/h",
    "mcg/min": "ug/min",
    "mcg/kg/h": "ug/kg/h",
    "mcg/kg/hr": "ug/kg/h",
    "mcg/kg/min": "ug/kg/min",
    "mcg/mL": "ug/mL",
    "mcg/ml": "ug/mL",
}

#: Diluent ingredients, by (coding system, code): an ingredient coded so is not a drug. Only codes
#: seen in real orders, with where they come from; a hospital passes its own with ``diluents=``.
DILUENTS: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        # "Dextrose 5% injection USP": the D5W of the R4 example medrx0336.
        ("http://hl7.org/fhir/sid/ndc", "0264751010"),
    }
)

#: MedicationRequest.intent values that ask for the drug to be given.
ORDER_INTENTS: Final = frozenset(
    {"order", "original-order", "reflex-order", "filler-order", "instance-order"}
)
_WEIGHT_CODES: Final = frozenset({"29463-7", "3141-9"})  # LOINC body weight, body weight measured
_FINAL_STATUSES: Final = frozenset({"final", "amended", "corrected"})
_DURATION_UNITS: Final[dict[str, tuple[str, Decimal]]] = {
    "s": ("s", Decimal(1)),
    "min": ("min", Decimal(1)),
    "h": ("h", Decimal(1)),
    "d": ("h", Decimal(24)),  # a day is exactly 24 h (UCUM d); Quantity has no per-day units
}
_RATIO_TIME_S: Final[dict[str, int]] = {"s": 1, "min": 60, "h": 3600, "d": 86400}
_REFERENCE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)
_ISSUE_TYPE: Final[dict[str, str]] = {
    HL7_REQUIRED_FIELD_MISSING: "required",
    HL7_DATA_TYPE_ERROR: "value",
    HL7_TABLE_VALUE_NOT_FOUND: "code-invalid",
    HL7_UNKNOWN_KEY: "not-found",
    HL7_DUPLICATE_KEY: "duplicate",
}


def medication_request_to_order(
    request: dict[str, Any],
    *,
    medication: dict[str, Any] | None = None,
    patient: dict[str, Any] | None = None,
    supporting: Sequence[dict[str, Any]] = (),
    received_from: str | None = None,
    mrn_system: str | None = None,
    diluents: Collection[tuple[str, str]] = DILUENTS,
) -> Order:
    """The :class:`Order` that ``request`` (an R4 MedicationRequest as JSON) makes.

    ``medication`` is the Medication a ``medicationReference`` points at (when not contained),
    ``patient`` the subject's Patient, ``supporting`` resources its ``supportingInformation``
    references (a body-weight Observation), all as fetched by the caller. ``received_from`` is
    kept for the audit trail (the resource's URL). ``mrn_system`` is the hospital's identifier
    system of the number on the wristband, when configured.

    Raises OrderRefused with every problem found (see the module's docstring for each element).
    """
    m = _Mapper(diluents=frozenset(diluents), mrn_system=mrn_system)
    root = m.validated(request, "MedicationRequest", MedicationRequest)
    med = None if medication is None else m.validated(medication, "Medication", Medication)
    pat = None if patient is None else m.validated(patient, "Patient", Patient)
    extra = [m.validated(s, _resource_type(s), _model(s)) for s in supporting]
    if root is None or m.problems:
        raise OrderRefused(_best_effort_id(request), m.problems)
    resolved = [n for n in extra if n is not None]
    order = m.order(root, med, pat, resolved, received_from)
    if order is None or m.problems:
        raise OrderRefused(m.order_id or _best_effort_id(request), m.problems)
    return order


def operation_outcome(problems: Iterable[OrderProblem]) -> dict[str, Any]:
    """An R4 OperationOutcome with one ``error`` issue per problem: ``expression`` the element,
    ``details`` the problem's code (HL7 table 0357, or the IHE PIV error code) and reason."""
    issues = []
    for p in problems:
        system = PIV_ERROR_SYSTEM if p.code.startswith("9") else V2_0357
        issues.append(
            {
                "severity": "error",
                "code": _ISSUE_TYPE.get(p.code, "processing"),
                "details": {"coding": [{"system": system, "code": p.code}], "text": p.reason},
                "diagnostics": str(p),
                "expression": [p.element],
            }
        )
    if not issues:
        raise ValueError("an OperationOutcome needs at least one problem")
    return {"resourceType": "OperationOutcome", "issue": issues}


def fhir_quantity(quantity: dict[str, Any], element: str = "Quantity") -> Quantity:
    """A FHIR Quantity (JSON) as a :class:`Quantity`, units read as the module docstring says.
    Raises OrderRefused naming ``element`` and its parts when it cannot be read exactly."""
    m = _Mapper()
    q = m.quantity(_Node(quantity, element), expected="a quantity", accept=lambda _: True)
    if q is None:
        raise OrderRefused(None, m.problems)
    return q


def ratio_rate(ratio: dict[str, Any], element: str = "Ratio") -> Quantity:
    """A FHIR rate Ratio (50 mL / 1 h) as one rate Quantity (50 mL/h), converted exactly or
    refused (OrderRefused naming ``element``)."""
    m = _Mapper()
    q = m.ratio_rate(_Node(ratio, element))
    if q is None:
        raise OrderRefused(None, m.problems)
    return q


# -- reading JSON with paths ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    """A JSON value and its FHIRPath-like element name."""

    value: Any
    path: str

    def get(self, key: str) -> _Node | None:
        """The child ``key``, or None when absent or empty (FHIR has no empty elements)."""
        if not isinstance(self.value, dict):
            return None
        child = self.value.get(key)
        if child is None or (isinstance(child, str | list | dict) and not child):
            return None
        return _Node(child, f"{self.path}.{key}")

    def items(self, key: str) -> list[_Node]:
        child = self.get(key)
        if child is None:
            return []
        if not isinstance(child.value, list):
            return [child]
        return [_Node(v, f"{child.path}[{i}]") for i, v in enumerate(child.value) if v is not None]


@dataclass(frozen=True, slots=True)
class _Dosage:
    dose: Quantity | None
    dose_rate: Quantity | None  # an amount per time (ug/kg/min, mg/h)
    rate: Quantity | None  # a flow (mL/h)
    duration: Quantity | None
    route: str | None


@dataclass(frozen=True, slots=True)
class _Ingredient:
    node: _Node
    active: bool | None
    diluent: bool
    strength: _Node | None


class _Mapper:
    """One mapping: collects every problem instead of stopping at the first."""

    def __init__(
        self, *, diluents: frozenset[tuple[str, str]] = DILUENTS, mrn_system: str | None = None
    ) -> None:
        self.problems: list[OrderProblem] = []
        self.order_id: str | None = None
        self._diluents = diluents
        self._mrn_system = mrn_system
        self._contained: list[_Node] = []

    def problem(self, code: str, element: str, reason: str) -> None:
        self.problems.append(OrderProblem(code, element, reason))

    # -- validation with the R4B models ----------------------------------------------------------

    def validated(self, resource: Any, kind: str, model: type[BaseModel] | None) -> _Node | None:
        if not isinstance(resource, dict):
            self.problem(HL7_DATA_TYPE_ERROR, kind, f"expected a JSON object, not {type(resource).__name__}")
            return None
        if model is None:
            self.problem(
                HL7_DATA_TYPE_ERROR,
                f"{kind}.resourceType",
                f"{resource.get('resourceType')!r} is not a resource the gateway reads here",
            )
            return None
        try:
            model.model_validate(resource)
        except ValidationError as exc:
            for error in exc.errors():
                path = _error_path(kind, error["loc"])
                code = HL7_REQUIRED_FIELD_MISSING if error["type"] == "missing" else HL7_DATA_TYPE_ERROR
                self.problem(code, path, f"not valid R4: {error['msg']} (value {_short(error.get('input'))})")
            return None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # fhir.resources lets some malformed input escape as plain Python errors (a contained
            # resource of an unknown type raises KeyError): still not a valid resource.
            self.problem(HL7_DATA_TYPE_ERROR, kind, f"not a valid R4 {kind}: {type(exc).__name__}: {exc}")
            return None
        return _Node(resource, kind)

    # -- the order -------------------------------------------------------------------------------

    def order(
        self,
        root: _Node,
        medication: _Node | None,
        patient: _Node | None,
        supporting: list[_Node],
        received_from: str | None,
    ) -> Order | None:
        self._contained = root.items("contained")
        self.order_id = self._order_id(root)
        status = self.text(root, "status")
        intent = self.text(root, "intent")
        if intent is not None and intent not in ORDER_INTENTS:
            self.problem(
                HL7_APPLICATION_ERROR,
                f"{root.path}.intent",
                f"intent {intent!r} does not ask for the drug to be given (expected one of "
                f"{', '.join(sorted(ORDER_INTENTS))})",
            )
        if self.boolean(root, "doNotPerform") is True:
            self.problem(
                HL7_APPLICATION_ERROR,
                f"{root.path}.doNotPerform",
                "the request says NOT to give this drug (doNotPerform is true)",
            )
        patient_id, patient_name = self._patient(root, patient)
        drug, concentration, container = self._medication(root, medication)
        dosage = self._dosage(root)
        weight = self._weight(root, supporting)
        ordered_at = self._authored_on(root)
        if self.order_id is None or status is None or patient_id is None or drug is None or self.problems:
            if not self.problems:  # pragma: no cover - each None above comes with its problem
                self.problem(HL7_APPLICATION_ERROR, root.path, "the request could not be read")
            return None
        return Order(
            order_id=self.order_id,
            source=OrderSource.FHIR,
            patient_id=patient_id,
            drug=drug,
            status=status,
            concentration=concentration,
            container_volume=container,
            # A plain flow (mL/h) is the order's rate, as an HL7 PIV order gives it (Order.rate);
            # a dose rate (ug/kg/min, mg/h) is its dose_rate.
            dose_rate=dosage.dose_rate if dosage else None,
            rate=dosage.rate if dosage else None,
            dose=dosage.dose if dosage else None,
            duration=dosage.duration if dosage else None,
            route=dosage.route if dosage else None,
            weight=weight,
            ordered_at=ordered_at,
            ordered_by=self._who(root.get("requester")),
            encounter=self._who(root.get("encounter"), with_display=False),
            patient_name=patient_name,
            received_from=received_from,
        )

    def _order_id(self, root: _Node) -> str | None:
        with_system = []
        for ident in root.items("identifier"):
            value, system = self.text(ident, "value"), self.text(ident, "system")
            if value is not None and system is not None:
                with_system.append((ident, value))
        values = {v for _, v in with_system}
        if len(values) == 1:
            return values.pop()
        if len(values) > 1:
            official = {v for ident, v in with_system if self.text(ident, "use") == "official"}
            if len(official) == 1:
                return official.pop()
            self.problem(
                HL7_DUPLICATE_KEY,
                f"{root.path}.identifier",
                f"{len(values)} identifiers with a system ({', '.join(sorted(values))}) and not exactly "
                "one official: which is the order number is ambiguous",
            )
            return None
        resource_id = self.text(root, "id")
        if resource_id is None:
            self.problem(
                HL7_REQUIRED_FIELD_MISSING,
                f"{root.path}.identifier",
                "no identifier with a system and no id: the order cannot be named",
            )
        return resource_id

    # -- patient ---------------------------------------------------------------------------------

    def _patient(self, root: _Node, given: _Node | None) -> tuple[str | None, str | None]:
        subject = root.get("subject")
        where = f"{root.path}.subject"
        if subject is None:
            self.problem(PivError.PATIENT_MISMATCH, where, "the request names no patient (subject)")
            return None, None
        display = self.text(subject, "display")
        kind = self.text(subject, "type")
        reference = self.text(subject, "reference")
        parsed = _parse_reference(reference) if reference and not reference.startswith("#") else None
        if (kind is not None and kind != "Patient") or (parsed is not None and parsed[0] != "Patient"):
            self.problem(
                PivError.PATIENT_MISMATCH,
                where,
                f"the subject is {reference or kind!r}, not a Patient: an infusion is for one patient",
            )
            return None, None
        ident = subject.get("identifier")
        resource = given
        if reference is not None and reference.startswith("#"):
            resource = self._contained_resource(f"{where}.reference", reference, "Patient")
            if resource is None:
                return None, None
        elif given is not None and not self._is_subject(subject, parsed, given):
            self.problem(
                PivError.PATIENT_MISMATCH,
                where,
                f"the Patient given ({self.text(given, 'id') or 'no id'}) is not the request's subject "
                f"({reference or self._identifier_text(ident)})",
            )
            return None, None
        if resource is not None:
            return self._patient_identifier(resource), _patient_name(resource) or display
        if ident is not None:
            value = self.text(ident, "value")
            system = self.text(ident, "system")
            if value is None:
                self.problem(PivError.PATIENT_MISMATCH, f"{ident.path}.value", "the identifier has no value")
                return None, None
            if self._mrn_system is not None and system is not None and system != self._mrn_system:
                self.problem(
                    PivError.PATIENT_MISMATCH,
                    f"{ident.path}.system",
                    f"the subject is identified in {system!r}, not by the wristband number "
                    f"({self._mrn_system!r})",
                )
                return None, None
            return value, display
        if reference is not None:
            self.problem(
                PivError.PATIENT_MISMATCH,
                f"{where}.reference",
                f"the subject is only a reference ({reference}): the wristband is matched against an "
                "identifier, so fetch that Patient and pass it (or send subject.identifier)",
            )
        else:
            self.problem(
                PivError.PATIENT_MISMATCH, where, "the subject has neither a reference nor an identifier"
            )
        return None, None

    def _is_subject(self, subject: _Node, parsed: tuple[str, str] | None, patient: _Node) -> bool:
        if parsed is not None:
            return parsed[1] == self.text(patient, "id")
        ident = subject.get("identifier")
        if ident is None:
            return False
        wanted = (self.text(ident, "system"), self.text(ident, "value"))
        return any(
            (self.text(i, "system"), self.text(i, "value")) == wanted
            or (wanted[0] is None and self.text(i, "value") == wanted[1])
            for i in patient.items("identifier")
        )

    def _patient_identifier(self, patient: _Node) -> str | None:
        idents = [(i, self.text(i, "value")) for i in patient.items("identifier")]
        if self._mrn_system is not None:
            chosen = {v for i, v in idents if v is not None and self.text(i, "system") == self._mrn_system}
            what = f"with system {self._mrn_system!r}"
        else:
            chosen = set()
            what = "typed MR or PI (v2-0203)"
            for code in ("MR", "PI"):
                chosen = {v for i, v in idents if v is not None and self._typed(i, code)}
                if chosen:
                    what = f"typed {code}"
                    break
        if len(chosen) == 1:
            return chosen.pop()
        if chosen:
            self.problem(
                PivError.PATIENT_MISMATCH,
                f"{patient.path}.identifier",
                f"{len(chosen)} identifiers {what} ({', '.join(sorted(chosen))}): which one the "
                "wristband carries is ambiguous",
            )
        else:
            self.problem(
                PivError.PATIENT_MISMATCH,
                f"{patient.path}.identifier",
                f"the Patient has no identifier {what} to match the wristband against",
            )
        return None

    def _typed(self, ident: _Node, code: str) -> bool:
        kind = ident.get("type")
        if kind is None:
            return False
        return any(
            self.text(c, "system") == V2_0203 and self.text(c, "code") == code for c in kind.items("coding")
        )

    # -- medication ------------------------------------------------------------------------------

    def _medication(
        self, root: _Node, given: _Node | None
    ) -> tuple[Drug | None, Concentration | None, Quantity | None]:
        concept = root.get("medicationCodeableConcept")
        dispensed = self._dispensed_volume(root)
        if concept is not None:
            return self._coded_drug(concept, required=True), None, dispensed
        ref = root.get("medicationReference")
        if ref is None:
            self.problem(
                HL7_REQUIRED_FIELD_MISSING, f"{root.path}.medication[x]", "the request names no drug"
            )
            return None, None, None
        medication = self._referenced_medication(ref, given)
        if medication is None:
            return None, None, None
        before = len(self.problems)
        drug_ingredient, concentration = self._ingredients(medication)
        code = medication.get("code")
        if code is not None:
            drug = self._coded_drug(code, required=True)
        elif drug_ingredient is not None:
            drug = self._ingredient_drug(drug_ingredient)
        elif len(self.problems) > before:  # the ingredients are already refused: say it once
            drug = None
        else:
            self.problem(
                HL7_REQUIRED_FIELD_MISSING,
                f"{medication.path}.code",
                "the Medication has no code and no single drug ingredient to name it",
            )
            drug = None
        container = self._container_volume(medication, dispensed)
        return drug, concentration, container

    def _referenced_medication(self, ref: _Node, given: _Node | None) -> _Node | None:
        reference = self.text(ref, "reference")
        if reference is not None and reference.startswith("#"):
            return self._contained_resource(f"{ref.path}.reference", reference, "Medication")
        if given is None:
            self.problem(
                HL7_REQUIRED_FIELD_MISSING,
                ref.path,
                f"the drug is a reference ({reference or 'by identifier'}) and that Medication was not "
                "given: fetch it and pass it",
            )
            return None
        parsed = _parse_reference(reference) if reference is not None else None
        if parsed is not None and (parsed[0] != "Medication" or parsed[1] != self.text(given, "id")):
            self.problem(
                HL7_UNKNOWN_KEY,
                f"{ref.path}.reference",
                f"the Medication given ({self.text(given, 'id') or 'no id'}) is not {reference!r}",
            )
            return None
        return given

    def _contained_resource(self, element: str, reference: str, kind: str) -> _Node | None:
        wanted = reference[1:]
        found = [c for c in self._contained if isinstance(c.value, dict) and c.value.get("id") == wanted]
        if len(found) != 1:
            self.problem(
                HL7_UNKNOWN_KEY,
                element,
                f"{reference!r} names {'no' if not found else len(found)} contained resources (expected one)",
            )
            return None
        resource = found[0]
        if resource.value.get("resourceType") != kind:
            self.problem(
                HL7_DATA_TYPE_ERROR,
                element,
                f"{reference!r} is a {resource.value.get('resourceType')}, not a {kind}",
            )
            return None
        return resource

    def _coded_drug(self, concept: _Node, *, required: bool) -> Drug | None:
        for coding in concept.items("coding"):
            system, code = self.text(coding, "system"), self.text(coding, "code")
            if system is not None and code is not None:
                name = self.text(concept, "text") or self.text(coding, "display")
                return Drug(code=code, system=system, name=name)
        if required:
            self.problem(
                HL7_REQUIRED_FIELD_MISSING,
                f"{concept.path}.coding",
                "no coding with both a system and a code: the drug library is matched on a code, "
                f"never on a name (text: {self.text(concept, 'text')!r})",
            )
        return None

    def _ingredient_drug(self, ingredient: _Ingredient) -> Drug | None:
        item = ingredient.node.get("itemCodeableConcept")
        if item is None:
            self.problem(
                HL7_REQUIRED_FIELD_MISSING,
                f"{ingredient.node.path}.itemCodeableConcept",
                "the drug ingredient is not coded here (an itemReference is not followed)",
            )
            return None
        return self._coded_drug(item, required=True)

    def _ingredients(self, medication: _Node) -> tuple[_Ingredient | None, Concentration | None]:
        ingredients = []
        for node in medication.items("ingredient"):
            active = self.boolean(node, "isActive")
            codes = {
                (self.text(c, "system"), self.text(c, "code"))
                for item in [node.get("itemCodeableConcept")]
                if item is not None
                for c in item.items("coding")
            }
            diluent = active is False or (active is None and any(code in self._diluents for code in codes))
            ingredients.append(_Ingredient(node, active, diluent, node.get("strength")))
        if any(i.active for i in ingredients):
            drugs = [i for i in ingredients if i.active]
        else:
            drugs = [i for i in ingredients if not i.diluent]
        with_strength = [i for i in drugs if i.strength is not None]
        if len(with_strength) > 1:
            self.problem(
                HL7_APPLICATION_ERROR,
                f"{medication.path}.ingredient",
                f"{len(with_strength)} drug ingredients have a strength "
                f"({', '.join(i.node.path.rsplit('.', 1)[-1] for i in with_strength)}): which one is the "
                "concentration is ambiguous (mark the drug isActive and the diluent isActive false)",
            )
            return None, None
        for chosen in with_strength:  # exactly one
            if chosen.strength is not None:
                return chosen, self._concentration(chosen.strength)
        return (drugs[0] if len(drugs) == 1 else None), None

    def _concentration(self, strength: _Node) -> Concentration | None:
        num = self.quantity(
            strength.get("numerator"),
            required=f"{strength.path}.numerator",
            expected="a drug amount",
            accept=_is_drug_amount,
        )
        den = self.quantity(
            strength.get("denominator"),
            required=f"{strength.path}.denominator",
            expected="a volume",
            accept=_is_volume,
        )
        if num is None or den is None:
            return None
        try:
            return Concentration(num, den)
        except QuantityError as exc:  # pragma: no cover - units and signs are checked above
            self.problem(HL7_DATA_TYPE_ERROR, strength.path, f"not a concentration: {exc}")
            return None

    def _container_volume(self, medication: _Node, dispensed: Quantity | None) -> Quantity | None:
        amount = medication.get("amount")
        volume = None
        if amount is not None:
            numerator = amount.get("numerator")
            unit = self._unit(numerator, quiet=True) if numerator is not None else None
            if numerator is not None and unit is not None and _is_volume(unit):
                volume = self.quantity(numerator, expected="a volume", accept=_is_volume)
                denominator = amount.get("denominator")
                per = self.number(denominator, "value") if denominator is not None else Decimal(1)
                if per is not None and per != 1:
                    self.problem(
                        HL7_DATA_TYPE_ERROR,
                        f"{amount.path}.denominator.value",
                        f"the package amount is per {per}, not per one container",
                    )
                    return None
        if volume is not None and dispensed is not None and volume != dispensed:
            self.problem(
                HL7_APPLICATION_ERROR,
                f"{medication.path}.amount",
                f"the container is {volume} here but the dispense quantity says {dispensed}: ambiguous",
            )
            return None
        return volume if volume is not None else dispensed

    def _dispensed_volume(self, root: _Node) -> Quantity | None:
        dispense = root.get("dispenseRequest")
        q = dispense.get("quantity") if dispense is not None else None
        if q is None:
            return None
        unit = self._unit(q, quiet=True)
        if unit is None or not _is_volume(unit):
            return None  # a count of bags or vials: not a volume, so not a container volume
        return self.quantity(q, expected="a volume", accept=_is_volume)

    # -- dosage ----------------------------------------------------------------------------------

    def _dosage(self, root: _Node) -> _Dosage | None:
        instructions = root.items("dosageInstruction")
        before = len(self.problems)
        mapped = [self._instruction(i) for i in instructions]
        if len(self.problems) > before or not mapped:
            return None
        distinct = list(dict.fromkeys(mapped))
        if len(distinct) > 1:
            self.problem(
                HL7_APPLICATION_ERROR,
                f"{root.path}.dosageInstruction",
                f"{len(instructions)} dosage instructions say different things "
                f"({'; '.join(_describe(d) for d in distinct)}): the gateway programs one",
            )
            return None
        return distinct[0]

    def _instruction(self, instruction: _Node) -> _Dosage:
        doses: dict[Quantity, str] = {}
        rates: dict[Quantity, str] = {}
        for entry in instruction.items("doseAndRate"):
            label = self._entry_label(entry)
            if (r := entry.get("doseRange")) is not None:
                self.problem(HL7_APPLICATION_ERROR, r.path, "a dose range: the gateway programs one dose")
            if (r := entry.get("rateRange")) is not None:
                self.problem(HL7_APPLICATION_ERROR, r.path, "a rate range: the gateway programs one rate")
            if (q := entry.get("doseQuantity")) is not None:
                dose = self.quantity(q, expected="a dose (an amount, not a rate)", accept=_is_dose)
                if dose is not None:
                    doses.setdefault(dose, label)
            if (q := entry.get("rateQuantity")) is not None:
                rate = self.quantity(q, expected="a rate (an amount per time)", accept=_is_rate)
                if rate is not None:
                    rates.setdefault(rate, label)
            if (r := entry.get("rateRatio")) is not None:
                rate = self.ratio_rate(r)
                if rate is not None:
                    rates.setdefault(rate, label)
        # A dose rate ordered with the flow it comes to ("ordered" 4 ug/kg/min and "calculated"
        # 12 mL/h) is one order, as a PIV order carries both; two dose rates, or two flows, are not.
        flows = {q: t for q, t in rates.items() if is_flow(q)}
        dose_rates = {q: t for q, t in rates.items() if not is_flow(q)}
        for name, found in (("doses", doses), ("dose rates", dose_rates), ("rates", flows)):
            if len(found) > 1:
                self.problem(
                    HL7_APPLICATION_ERROR,
                    f"{instruction.path}.doseAndRate",
                    f"{len(found)} different {name} ({', '.join(f'{q} ({t})' for q, t in found.items())}): "
                    "which one to program is ambiguous",
                )
        return _Dosage(
            dose=next(iter(doses), None) if len(doses) == 1 else None,
            dose_rate=next(iter(dose_rates), None) if len(dose_rates) == 1 else None,
            rate=next(iter(flows), None) if len(flows) == 1 else None,
            duration=self._duration(instruction),
            route=self._route(instruction),
        )

    def _entry_label(self, entry: _Node) -> str:
        kind = entry.get("type")
        codes = [self.text(c, "code") for c in kind.items("coding")] if kind is not None else []
        return next((c for c in codes if c), entry.path.rsplit(".", 1)[-1])

    def ratio_rate(self, ratio: _Node) -> Quantity | None:
        num = self.quantity(
            ratio.get("numerator"), required=f"{ratio.path}.numerator", expected="an amount", accept=_is_dose
        )
        den_node = ratio.get("denominator")
        if den_node is None:
            self.problem(HL7_REQUIRED_FIELD_MISSING, f"{ratio.path}.denominator", "a rate needs a time")
            return None
        den_value = self.number(den_node, "value")
        den_unit = self._unit(den_node, extra=frozenset(_RATIO_TIME_S))
        if num is None or den_value is None or den_unit is None:
            return None
        if den_unit not in _RATIO_TIME_S:
            self.problem(
                HL7_DATA_TYPE_ERROR,
                f"{den_node.path}.code",
                f"the denominator is in {den_unit!r}, not a time (s, min, h, d)",
            )
            return None
        if den_value <= 0:
            self.problem(HL7_DATA_TYPE_ERROR, f"{den_node.path}.value", f"{den_value} is not above zero")
            return None
        for per in dict.fromkeys((den_unit, "h", "min")):
            unit = f"{num.unit}/{per}"
            if unit not in known_units() or per not in _RATIO_TIME_S:
                continue
            value = _exact_div(num.value * _RATIO_TIME_S[per], den_value * _RATIO_TIME_S[den_unit])
            if value is not None:
                return Quantity(value, unit)
        self.problem(
            HL7_DATA_TYPE_ERROR,
            ratio.path,
            f"{num} per {den_value} {den_unit} is not a rate the gateway can state exactly "
            "(in a known unit per s, min or h)",
        )
        return None

    def _duration(self, instruction: _Node) -> Quantity | None:
        timing = instruction.get("timing")
        repeat = timing.get("repeat") if timing is not None else None
        if repeat is None or repeat.get("duration") is None:
            return None
        if (r := repeat.get("durationMax")) is not None:
            self.problem(
                HL7_APPLICATION_ERROR, r.path, "a duration with a maximum: the gateway programs one duration"
            )
            return None
        value = self.number(repeat, "duration")
        unit = self.text(repeat, "durationUnit")
        if unit is None:
            self.problem(HL7_REQUIRED_FIELD_MISSING, f"{repeat.path}.durationUnit", "a duration needs a unit")
            return None
        if unit not in _DURATION_UNITS:
            self.problem(
                HL7_DATA_TYPE_ERROR,
                f"{repeat.path}.durationUnit",
                f"{unit!r} is not a fixed length of time the gateway reads (s, min, h, d)",
            )
            return None
        if value is None:
            return None
        if value <= 0:
            self.problem(HL7_DATA_TYPE_ERROR, f"{repeat.path}.duration", f"{value} is not above zero")
            return None
        target, factor = _DURATION_UNITS[unit]
        exact = _exact_mul(value, factor)
        if exact is None:
            self.problem(HL7_DATA_TYPE_ERROR, f"{repeat.path}.duration", f"{value} d has no exact value in h")
            return None
        return Quantity(exact, target)

    def _route(self, instruction: _Node) -> str | None:
        route = instruction.get("route")
        if route is None:
            return None
        for coding in route.items("coding"):  # HL7 table 0162 first: the code a PIV order has (RXR-1)
            if self.text(coding, "system") == V2_0162 and (code := self.text(coding, "code")) is not None:
                return code
        for coding in route.items("coding"):
            if (text := self.text(coding, "display") or self.text(coding, "code")) is not None:
                return text
        return self.text(route, "text")

    # -- weight ----------------------------------------------------------------------------------

    def _weight(self, root: _Node, supporting: list[_Node]) -> Quantity | None:
        weights: dict[Quantity, str] = {}
        for ref in root.items("supportingInformation"):
            observation = self._supporting(ref, supporting)
            if observation is None or not self._is_body_weight(observation):
                continue
            status = self.text(observation, "status")
            if status not in _FINAL_STATUSES:
                self.problem(
                    PivError.WEIGHT_MISMATCH,
                    f"{observation.path}.status",
                    f"the body weight is {status!r}, not final: it cannot be used to dose",
                )
                continue
            value = observation.get("valueQuantity")
            if value is None:
                self.problem(
                    PivError.WEIGHT_MISSING,
                    f"{observation.path}.valueQuantity",
                    "the body weight has no value",
                )
                continue
            weight = self.quantity(value, expected="a body weight in kg", accept=lambda u: u == "kg")
            if weight is not None:
                weights.setdefault(weight, observation.path)
        if len(weights) > 1:
            self.problem(
                PivError.WEIGHT_MISMATCH,
                f"{root.path}.supportingInformation",
                f"{len(weights)} different body weights ({', '.join(map(str, weights))}): ambiguous",
            )
            return None
        return next(iter(weights), None)

    def _supporting(self, ref: _Node, supporting: list[_Node]) -> _Node | None:
        reference = self.text(ref, "reference")
        if reference is None:
            return None
        if reference.startswith("#"):
            found = [
                c for c in self._contained if isinstance(c.value, dict) and c.value.get("id") == reference[1:]
            ]
            return (
                found[0] if len(found) == 1 and found[0].value.get("resourceType") == "Observation" else None
            )
        parsed = _parse_reference(reference)
        if parsed is None or parsed[0] != "Observation":
            return None
        matches = [
            s
            for s in supporting
            if s.value.get("resourceType") == "Observation" and s.value.get("id") == parsed[1]
        ]
        return matches[0] if len(matches) == 1 else None

    def _is_body_weight(self, observation: _Node) -> bool:
        code = observation.get("code")
        return code is not None and any(
            self.text(c, "system") == LOINC and self.text(c, "code") in _WEIGHT_CODES
            for c in code.items("coding")
        )

    # -- who and when ----------------------------------------------------------------------------

    def _authored_on(self, root: _Node) -> datetime | None:
        text = self.text(root, "authoredOn")
        if text is None or "T" not in text:
            return None  # no time of day: the order's age cannot be known
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            self.problem(HL7_DATA_TYPE_ERROR, f"{root.path}.authoredOn", f"{text!r} is not a date and time")
            return None

    def _who(self, ref: _Node | None, *, with_display: bool = True) -> str | None:
        if ref is None:
            return None
        ident = ref.get("identifier")
        key = self.text(ref, "reference") or (self.text(ident, "value") if ident is not None else None)
        display = self.text(ref, "display") if with_display else None
        if display is not None and key is not None:
            return f"{display} ({key})"
        return display or key

    def _identifier_text(self, ident: _Node | None) -> str:
        if ident is None:
            return "no identifier"
        return f"{self.text(ident, 'system') or '(no system)'}|{self.text(ident, 'value')}"

    # -- typed values ----------------------------------------------------------------------------

    def text(self, node: _Node, key: str) -> str | None:
        child = node.get(key)
        if child is None:
            return None
        if not isinstance(child.value, str):
            self.problem(HL7_DATA_TYPE_ERROR, child.path, f"expected text, not {_short(child.value)}")
            return None
        return child.value

    def boolean(self, node: _Node, key: str) -> bool | None:
        child = node.get(key)
        if child is None:
            return None
        if not isinstance(child.value, bool):
            self.problem(
                HL7_DATA_TYPE_ERROR, child.path, f"expected true or false, not {_short(child.value)}"
            )
            return None
        return child.value

    def number(self, node: _Node, key: str) -> Decimal | None:
        child = node.get(key)
        if child is None:
            self.problem(HL7_REQUIRED_FIELD_MISSING, f"{node.path}.{key}", "no value")
            return None
        value = child.value
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            why = (
                "a binary floating-point number: read the JSON with exact decimals (parse_float=Decimal)"
                if isinstance(value, float)
                else f"expected a JSON number, not {_short(value)}"
            )
            self.problem(HL7_DATA_TYPE_ERROR, child.path, why)
            return None
        number = Decimal(value)
        if not number.is_finite():
            self.problem(HL7_DATA_TYPE_ERROR, child.path, f"{value} is not a finite number")
            return None
        return number

    def quantity(
        self,
        node: _Node | None,
        *,
        expected: str,
        accept: Callable[[str], bool],
        required: str | None = None,
    ) -> Quantity | None:
        """``node`` (a FHIR Quantity) in the gateway's units, if ``accept(unit)``; else a problem."""
        if node is None:
            if required is not None:
                self.problem(HL7_REQUIRED_FIELD_MISSING, required, f"expected {expected}")
            return None
        if (comparator := self.text(node, "comparator")) is not None:
            self.problem(
                HL7_DATA_TYPE_ERROR,
                f"{node.path}.comparator",
                f"{comparator!r}: a bound, not a value (expected {expected})",
            )
            return None
        value = self.number(node, "value")
        unit = self._unit(node)
        if value is None or unit is None:
            return None
        if not accept(unit):
            self.problem(HL7_DATA_TYPE_ERROR, self._unit_path(node), f"{value} {unit} is not {expected}")
            return None
        if value <= 0:
            self.problem(HL7_DATA_TYPE_ERROR, f"{node.path}.value", f"{value} {unit} is not above zero")
            return None
        return Quantity(value, unit)

    def _unit_path(self, node: _Node) -> str:
        return f"{node.path}.{'code' if node.get('code') is not None else 'unit'}"

    def _unit(self, node: _Node, *, quiet: bool = False, extra: frozenset[str] = frozenset()) -> str | None:
        """The gateway's UCUM code for the quantity ``node``'s unit (``code``, else ``unit``)."""
        before = len(self.problems)
        system, code, unit = self.text(node, "system"), self.text(node, "code"), self.text(node, "unit")
        if len(self.problems) > before:
            if quiet:
                del self.problems[before:]
            return None

        def fail(code_: str, element: str, reason: str) -> None:
            if not quiet:
                self.problem(code_, element, reason)

        if code is not None:
            if system is None:
                fail(
                    HL7_REQUIRED_FIELD_MISSING,
                    f"{node.path}.system",
                    f"unit code {code!r} without a system (FHIR qty-3): expected {UCUM}",
                )
                return None
            if system != UCUM:
                fail(
                    HL7_TABLE_VALUE_NOT_FOUND,
                    f"{node.path}.system",
                    f"units from {system!r} are not read: expected UCUM ({UCUM})",
                )
                return None
            resolved = _ucum(code, extra)
            if resolved is None:
                fail(HL7_TABLE_VALUE_NOT_FOUND, f"{node.path}.code", _unknown_unit(code))
                return None
            if unit is not None and (shown := _ucum(unit, extra)) is not None and shown != resolved:
                fail(
                    HL7_APPLICATION_ERROR,
                    f"{node.path}.unit",
                    f"the unit shown ({unit!r}) is not the unit coded ({code!r})",
                )
                return None
            return resolved
        if unit is not None:
            if system is not None and system != UCUM:
                fail(
                    HL7_TABLE_VALUE_NOT_FOUND,
                    f"{node.path}.system",
                    f"units from {system!r} are not read: expected UCUM ({UCUM})",
                )
                return None
            resolved = _ucum(unit, extra)
            if resolved is None:
                fail(HL7_TABLE_VALUE_NOT_FOUND, f"{node.path}.unit", _unknown_unit(unit))
            return resolved
        fail(HL7_REQUIRED_FIELD_MISSING, f"{node.path}.code", "no unit (neither code nor unit)")
        return None


# -- helpers -------------------------------------------------------------------------------------


def _ucum(text: str, extra: frozenset[str] = frozenset()) -> str | None:
    if text in known_units() or text in extra:
        return text
    return UNIT_ALIASES.get(text)


def _unknown_unit(text: str) -> str:
    return (
        f"{text!r} is neither one of the gateway's UCUM units nor in its alias table "
        "(pumpgw.fhir.orders.UNIT_ALIASES)"
    )


def _parts_or_none(unit: str) -> UnitParts | None:
    try:
        return unit_parts(unit)
    except QuantityError:
        return None


def _is_rate(unit: str) -> bool:
    parts = _parts_or_none(unit)
    return parts is not None and parts.per_time is not None


def _is_dose(unit: str) -> bool:
    parts = _parts_or_none(unit)
    return parts is not None and parts.per_time is None


def _is_drug_amount(unit: str) -> bool:
    parts = _parts_or_none(unit)
    return (
        parts is not None and parts.per_time is None and parts.basis is None and parts.amount_kind != "volume"
    )


def _is_volume(unit: str) -> bool:
    parts = _parts_or_none(unit)
    return (
        parts is not None and parts.amount_kind == "volume" and parts.basis is None and parts.per_time is None
    )


def _exact_div(a: Decimal, b: Decimal) -> Decimal | None:
    with localcontext() as ctx:
        ctx.prec = 34
        ctx.traps[Inexact] = True
        try:
            return a / b
        except (Inexact, InvalidOperation):
            return None


def _exact_mul(a: Decimal, b: Decimal) -> Decimal | None:
    with localcontext() as ctx:
        ctx.prec = 34
        ctx.traps[Inexact] = True
        try:
            return a * b
        except (Inexact, InvalidOperation):
            return None


def _parse_reference(reference: str) -> tuple[str, str] | None:
    match = _REFERENCE.search(reference)
    return None if match is None else (match["type"], match["id"])


def _patient_name(patient: _Node) -> str | None:
    names = patient.items("name")
    preferred = [
        n for n in names if isinstance(n.value, dict) and n.value.get("use") in ("official", "usual")
    ]
    for name in preferred or names:
        if not isinstance(name.value, dict):
            continue
        text = name.value.get("text")
        if isinstance(text, str) and text.strip():
            return text
        given = [g for g in name.value.get("given") or [] if isinstance(g, str)]
        family = name.value.get("family")
        parts = [*given, *([family] if isinstance(family, str) else [])]
        if parts:
            return " ".join(parts)
    return None


def _describe(d: _Dosage) -> str:
    parts = [
        f"{label} {q}"
        for label, q in (("dose", d.dose), ("dose rate", d.dose_rate), ("rate", d.rate), ("for", d.duration))
        if q
    ]
    if d.route:
        parts.append(f"route {d.route}")
    return ", ".join(parts) or "nothing"


def _error_path(kind: str, loc: tuple[int | str, ...]) -> str:
    path = kind
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("root", "resource_type") and not part.startswith(("function-", "model-")):
            path += f".{part}"
        elif part == "resource_type":
            path += ".resourceType"
    return path


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _best_effort_id(request: Any) -> str | None:
    if not isinstance(request, dict):
        return None
    resource_id = request.get("id")
    return resource_id if isinstance(resource_id, str) else None


def _resource_type(resource: Any) -> str:
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    return kind if isinstance(kind, str) and kind.isalpha() else "Resource"


def _model(resource: Any) -> type[BaseModel] | None:
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    return Observation if kind == "Observation" else None
