"""The emulated eMAR: patients and infusion orders, served over FHIR R4 and sent as IHE PIV orders.

:class:`EmulatedEmar` plays the hospital's electronic medication administration record on the bench:

- a **FHIR R4 server** (aiohttp, ``fhir_base`` = ``http://127.0.0.1:PORT``, port chosen by the
  system) that the gateway pulls orders from on a patient scan:

  ================================================  ==================================================
  ``GET /Patient/{id}``                             the Patient (identifier typed ``MR``)
  ``GET /Patient?identifier=[system|]value``        a ``searchset`` Bundle
  ``GET /MedicationRequest/{id}``                   the order, with its Medication and the patient's
                                                    body weight (Observation) contained
  ``GET /MedicationRequest?patient=...&status=...`` a ``searchset`` Bundle; ``patient`` is
                                                    ``Patient/{id}``, ``{id}``, or an identifier token
                                                    (``patient.identifier`` also works)
  ``GET /Medication/{id}``                          the order's Medication (``med-{order id}``)
  ``GET /metadata``                                 a CapabilityStatement
  ================================================  ==================================================

  Unknown ids get ``404`` with an OperationOutcome. Every resource served is built here and is
  valid R4B (the tests validate each one).

- the **PIV Infusion Order Programmer** (IHE PCD-03, ``../shared/reference/ihe-pcd.md``):
  :meth:`EmulatedEmar.send_order` builds the order's RGV^O15 (``pumpgw.hl7.piv.build_rgv_o15``),
  sends it over MLLP to the gateway and records the ACK^O15 (``CA``/``CE``/``CR``); an MLLP server
  of its own (``rrg_port``) takes the gateway's RRG^O16, answers ACK^O16 ``AA``, matches it to the
  order sent (its MSA-2 is our MSH-10) and records the result (``AA``/``AE``/``AR`` and each ERR).
  :meth:`EmulatedEmar.wait_for_result` waits for it.

The data (patients and orders) and its file format are in :mod:`pumpgw.rig.emar_data`.

**The example data is for exercising software, not clinical advice.**
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from pumpgw.gateway.clock import Clock
from pumpgw.gateway.errors import ConfigError, Hl7Error, MllpError
from pumpgw.gateway.orders import Drug, Order, OrderSource
from pumpgw.gateway.quantity import Quantity
from pumpgw.hl7.ack import build_ack, nak_for_unreadable, read_ack
from pumpgw.hl7.build import Party
from pumpgw.hl7.message import parse_message
from pumpgw.hl7.mllp_io import MllpClient, MllpServer, Peer
from pumpgw.hl7.piv import build_rgv_o15

from .emar_data import (
    DOSE_RATE_TYPE,
    MRN_SYSTEM,
    ORDER_SYSTEM,
    ROUTES,
    SNOMED_IV,
    UCUM,
    V2_0162,
    V2_0203,
    WEIGHT_CODE,
    EmarData,
    OrderData,
    PatientData,
    example_data,
    load_emar_file,
)
from .epr import (
    HospitalServer,
    capability_statement,
    fhir_errors,
    fhir_response,
    identifier_matches,
    operation_outcome,
    searchset,
    serve_http,
)

log = logging.getLogger(__name__)

EMAR_PARTY: Final = Party("RIG_EMAR", "RIG")
GATEWAY_PARTY: Final = Party("PUMPGW")


# -- orders sent and their results -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckSeen:
    """An acknowledgement as the eMAR saw it: code, the control id it acknowledges, ERR codes."""

    code: str
    acked_control_id: str | None
    errors: tuple[str, ...]
    text: str | None
    control_id: str | None  # the acknowledgement's own MSH-10
    at: datetime
    message: str

    def describe(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "acked_control_id": self.acked_control_id,
            "errors": list(self.errors),
            "text": self.text,
            "control_id": self.control_id,
            "at": self.at.isoformat(),
            "message": self.message,
        }


@dataclass
class SentOrder:
    """One RGV^O15 the eMAR sent: its control id (MSH-10), the ACK^O15, and later the RRG^O16."""

    order_id: str
    control_id: str
    to: str
    sent_at: datetime
    message: str
    ack: AckSeen | None = None
    send_error: str | None = None
    result: AckSeen | None = None
    #: Set once nothing more will come: the RRG^O16 arrived, the order was refused on receipt, or
    #: it could not be delivered.
    decided: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def state(self) -> str:
        if self.send_error is not None:
            return "not delivered"
        if self.result is not None:
            return f"result {self.result.code}"
        if self.ack is not None:
            return f"acknowledged {self.ack.code}, awaiting result"
        return "sent"

    def describe(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "control_id": self.control_id,
            "to": self.to,
            "sent_at": self.sent_at.isoformat(),
            "state": self.state,
            "ack": None if self.ack is None else self.ack.describe(),
            "send_error": self.send_error,
            "result": None if self.result is None else self.result.describe(),
            "message": self.message,
        }


def _seen(data: bytes, at: datetime) -> AckSeen:
    """Read an acknowledgement (ACK^O15, RRG^O16). Raises Hl7Error when it is not one."""
    ack = read_ack(data)
    return AckSeen(
        ack.code,
        ack.acked_control_id or None,
        tuple(str(e) for e in ack.errors),
        ack.text or None,
        ack.control_id or None,
        at,
        data.decode("utf-8", "replace"),
    )


# -- the eMAR ----------------------------------------------------------------------------------------


class EmulatedEmar(HospitalServer):
    """Patients and orders over FHIR, and the PIV order programmer. Use ``async with``."""

    def __init__(
        self,
        clock: Clock,
        data: EmarData | None = None,
        *,
        host: str = "127.0.0.1",
        fhir_port: int = 0,
        rrg_port: int = 0,
        reply_timeout_s: float = 10.0,
    ) -> None:
        self.clock = clock
        self.host = host
        self.fhir_port = fhir_port
        self.rrg_port = rrg_port
        self.reply_timeout_s = reply_timeout_s
        self.data = data if data is not None else example_data()
        self.source = "built-in example" if data is None else "given"
        self._sent: dict[str, SentOrder] = {}  # by our MSH-10
        self._latest: dict[str, SentOrder] = {}  # by order id: the last one sent
        self._unmatched: list[AckSeen] = []  # RRG^O16s that match nothing we sent
        self._control_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._rrg: MllpServer | None = None
        self._started_at = clock.wall()

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            self._runner, self.fhir_port = await serve_http(self._app(), self.host, self.fhir_port)
            self._rrg = MllpServer(self._handle_rrg, host=self.host, port=self.rrg_port)
            await self._rrg.start()
            self.rrg_port = self._rrg.port
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        rrg, self._rrg = self._rrg, None
        if rrg is not None:
            await rrg.close(grace_s=1.0)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- data --------------------------------------------------------------------------------------
    def load(self, data: EmarData, source: str = "given") -> str:
        """Replace the patients and orders (what was sent is kept)."""
        self.data = data
        self.source = source
        return f"emar: {len(data.patients)} patient(s), {len(data.orders)} order(s) from {source}"

    def load_file(self, path: Path) -> str:
        """Load a data file (:func:`load_emar_file`). Raises ConfigError; the old data stays then."""
        return self.load(load_emar_file(path), str(path))

    def order_data(self, order_id: str) -> OrderData:
        """The order called ``order_id``. Raises ConfigError listing the orders if there is none."""
        for o in self.data.orders:
            if o.id == order_id:
                return o
        known = ", ".join(o.id for o in self.data.orders) or "none"
        raise ConfigError("emar", "order", order_id, f"an order of this eMAR (orders: {known})")

    def patient_data(self, identifier: str) -> PatientData:
        for p in self.data.patients:
            if p.identifier == identifier:
                return p
        raise ConfigError("emar", "patient", identifier, "a patient of this eMAR")

    def order(self, order_id: str, *, now: datetime | None = None) -> Order:
        """The domain Order for ``order_id``, with relative times taken from ``now`` (the clock)."""
        o = self.order_data(order_id)
        patient = self.patient_data(o.patient)
        at = now or self.clock.wall()
        dose_rate = Quantity.parse(o.dose_rate) if o.dose_rate else None
        rate = Quantity.parse(o.rate) if o.rate else None
        return Order(
            order_id=o.id,
            source=OrderSource.RIG,
            patient_id=patient.identifier,
            drug=Drug(o.drug.code, o.drug.system, o.drug.name),
            status=o.status,
            concentration=o.concentration.concentration() if o.concentration else None,
            container_volume=Quantity.parse(o.concentration.volume) if o.concentration else None,
            # PIV carries one rate (RXG-15/16): the dose rate when there is one, else the flow.
            dose_rate=dose_rate,
            rate=rate if dose_rate is None else None,
            vtbi=Quantity.parse(o.vtbi) if o.vtbi else None,
            duration=Quantity.parse(o.duration) if o.duration else None,
            route=o.route,
            line="IV",  # the rig's orders run on the primary line (PIV RXR-4)
            weight=patient.weight_quantity(),
            pump_id=o.pump,
            channel=o.channel,
            ordered_at=o.ordered_at_from(at),
            ordered_by=o.ordered_by,
            patient_name=f"{patient.family}, {' '.join(patient.given)}".rstrip(", "),
        )

    def describe_orders(self) -> list[dict[str, Any]]:
        """Each order, with its patient and what became of the last time it was sent."""
        now = self.clock.wall()
        out = []
        for o in self.data.orders:
            sent = self._latest.get(o.id)
            out.append(
                {
                    "id": o.id,
                    "patient": o.patient,
                    "drug": o.drug.name,
                    "dose_rate": o.dose_rate,
                    "rate": o.rate,
                    "vtbi": o.vtbi,
                    "concentration": f"{o.concentration.amount} in {o.concentration.volume}"
                    if o.concentration
                    else None,
                    "route": o.route,
                    "pump": o.pump,
                    "channel": o.channel,
                    "status": o.status,
                    "ordered_at": o.ordered_at_from(now).isoformat(),
                    "sent": None if sent is None else sent.describe(),
                }
            )
        return out

    # -- PIV: sending orders ---------------------------------------------------------------------
    def sent(self, order_id: str) -> SentOrder | None:
        """The last RGV^O15 sent for ``order_id``, if any."""
        return self._latest.get(order_id)

    def unmatched_results(self) -> list[AckSeen]:
        """RRG^O16s received whose MSA-2 names nothing this eMAR sent."""
        return list(self._unmatched)

    async def send_order(self, order_id: str, gateway_host: str, gateway_port: int) -> SentOrder:
        """Send ``order_id`` as RGV^O15 to the gateway and record its ACK^O15.

        Returns the SentOrder (its ``ack`` set). Raises ConfigError for an unknown order, MllpError
        when the gateway cannot be reached or does not answer (recorded as ``send_error``), and
        Hl7Error when its answer is not an acknowledgement.
        """
        now = self.clock.wall()
        order = self.order(order_id, now=now)
        # Unique across rig restarts (a gateway ignores a control id it has seen: a re-send), and
        # within the 20 characters HL7 before 2.6 allows MSH-10.
        control_id = f"EM{self._started_at:%y%m%d%H%M%S}-{next(self._control_ids):04d}"
        message = build_rgv_o15(
            order, control_id=control_id, at=now, sender=EMAR_PARTY, receiver=GATEWAY_PARTY
        )
        sent = SentOrder(order_id, control_id, f"{gateway_host}:{gateway_port}", now, message.decode("utf-8"))
        # Registered before sending: the RRG^O16 may arrive before our ACK^O15 is read.
        self._sent[control_id] = sent
        self._latest[order_id] = sent
        try:
            async with MllpClient(
                gateway_host,
                gateway_port,
                connect_timeout_s=self.reply_timeout_s,
                reply_timeout_s=self.reply_timeout_s,
            ) as client:
                reply = await client.request(message)
        except MllpError as exc:
            sent.send_error = str(exc)
            sent.decided.set()
            raise
        try:
            sent.ack = _seen(reply, self.clock.wall())
        except Hl7Error as exc:
            sent.send_error = f"the answer is not an acknowledgement: {exc}"
            sent.decided.set()
            raise
        if sent.ack.acked_control_id not in (None, control_id):
            log.warning("ACK^O15 acknowledges %s, not %s", sent.ack.acked_control_id, control_id)
        if sent.ack.code in ("CE", "CR", "AE", "AR"):
            sent.decided.set()  # refused on receipt: no RRG^O16 will follow
        return sent

    async def wait_for_result(self, order_id: str, timeout: float) -> SentOrder:  # noqa: ASYNC109
        """Wait until the last RGV^O15 sent for ``order_id`` is decided: its RRG^O16 arrived, or it
        was refused on receipt, or it could not be delivered. Raises ConfigError if it was never
        sent, TimeoutError if nothing happens within ``timeout`` seconds."""
        sent = self._latest.get(order_id)
        if sent is None:
            raise ConfigError("emar", "order", order_id, "an order sent with emar send first")
        async with asyncio.timeout(timeout):
            await sent.decided.wait()
        return sent

    async def _handle_rrg(self, data: bytes, peer: Peer) -> bytes | None:
        """The gateway's RRG^O16 (or any message): answer ACK (AA), record it against our order."""
        now = self.clock.wall()
        try:
            message = parse_message(data)
        except Hl7Error as exc:
            log.warning("eMAR: unreadable message from %s: %s", peer, exc)
            return nak_for_unreadable(data, exc.detail, at=now, sender=EMAR_PARTY)
        code, trigger, _ = message.message_type
        try:
            seen = _seen(data, now)
        except Hl7Error as exc:
            log.warning(
                "eMAR: %s^%s from %s is not an application acknowledgement: %s", code, trigger, peer, exc
            )
            return build_ack(
                message, "AR", at=now, sender=EMAR_PARTY, trigger=trigger or None, text=exc.detail
            )
        sent = self._sent.get(seen.acked_control_id or "")
        if sent is None:
            self._unmatched.append(seen)
            log.warning(
                "eMAR: %s^%s names %r, which this eMAR did not send", code, trigger, seen.acked_control_id
            )
        else:
            sent.result = seen
            sent.decided.set()
        return build_ack(message, "AA", at=now, sender=EMAR_PARTY, trigger=trigger or "O16")

    # -- FHIR ------------------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(middlewares=[fhir_errors])
        app.router.add_get("/metadata", self._metadata)
        app.router.add_get("/Patient", self._search_patients)
        app.router.add_get(r"/Patient/{id}", self._read_patient)
        app.router.add_get("/MedicationRequest", self._search_requests)
        app.router.add_get(r"/MedicationRequest/{id}", self._read_request)
        app.router.add_get(r"/Medication/{id}", self._read_medication)
        return app

    async def _metadata(self, request: web.Request) -> web.Response:
        types = {t: ["read", "search-type"] for t in ("Patient", "MedicationRequest")} | {
            "Medication": ["read"]
        }
        return fhir_response(capability_statement(self.clock.wall(), "pumpgw rig eMAR", types))

    async def _read_patient(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        for p in self.data.patients:
            if p.identifier == rid:
                return fhir_response(patient_resource(p))
        return _not_found("Patient", rid)

    async def _search_patients(self, request: web.Request) -> web.Response:
        unknown = set(request.query) - {"identifier", "_id"}
        if unknown:
            return _bad_search("Patient", unknown, "identifier, _id")
        found = [patient_resource(p) for p in self.data.patients]
        if "_id" in request.query:
            found = [r for r in found if r["id"] == request.query["_id"]]
        if "identifier" in request.query:
            found = [r for r in found if identifier_matches(r, request.query["identifier"])]
        return fhir_response(searchset(found, self.fhir_base))

    async def _read_request(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        for o in self.data.orders:
            if o.id == rid:
                return fhir_response(self.medication_request(o.id))
        return _not_found("MedicationRequest", rid)

    async def _search_requests(self, request: web.Request) -> web.Response:
        allowed = {
            "patient",
            "subject",
            "patient.identifier",
            "subject.identifier",
            "status",
            "identifier",
            "_id",
        }
        unknown = set(request.query) - allowed
        if unknown:
            return _bad_search("MedicationRequest", unknown, ", ".join(sorted(allowed)))
        now = self.clock.wall()
        found = []
        for o in self.data.orders:
            if not self._matches(o, request.query):
                continue
            found.append(self.medication_request(o.id, now=now))
        return fhir_response(searchset(found, self.fhir_base))

    def _matches(self, o: OrderData, query: Mapping[str, str]) -> bool:
        patient = self.patient_data(o.patient)
        for key in ("patient", "subject"):
            if key in query:
                wanted = query[key].removeprefix("Patient/")
                if wanted != patient.identifier:
                    return False
            if f"{key}.identifier" in query and not identifier_matches(
                patient_resource(patient), query[f"{key}.identifier"]
            ):
                return False
        if "status" in query and o.status not in query["status"].split(","):
            return False
        if "_id" in query and o.id != query["_id"]:
            return False
        return not (
            "identifier" in query and not identifier_matches(_order_identifier_holder(o), query["identifier"])
        )

    async def _read_medication(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        for o in self.data.orders:
            if f"med-{o.id}" == rid:
                return fhir_response(medication_resource(o))
        return _not_found("Medication", rid)

    def medication_request(self, order_id: str, *, now: datetime | None = None) -> dict[str, Any]:
        """The order as an R4 MedicationRequest (JSON-ready, numbers as Decimal)."""
        o = self.order_data(order_id)
        return medication_request_resource(o, self.patient_data(o.patient), now or self.clock.wall())


def _not_found(resource_type: str, rid: str) -> web.Response:
    return fhir_response(
        operation_outcome([f"no {resource_type}/{rid} in this eMAR"], code="not-found"), status=404
    )


def _bad_search(resource_type: str, unknown: set[str], supported: str) -> web.Response:
    return fhir_response(
        operation_outcome(
            [f"{resource_type} search: {', '.join(sorted(unknown))} not supported (supported: {supported})"],
            code="not-supported",
        ),
        status=400,
    )


# -- the resources ---------------------------------------------------------------------------------


def _fhir_quantity(q: Quantity) -> dict[str, Any]:
    return {"value": q.value, "unit": q.unit, "system": UCUM, "code": q.unit}


def patient_resource(p: PatientData) -> dict[str, Any]:
    """The patient as an R4 Patient: ``id`` and the ``MR`` identifier are the wristband number."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": p.identifier,
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": V2_0203, "code": "MR", "display": "Medical record number"}]},
                "system": MRN_SYSTEM,
                "value": p.identifier,
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": p.family, **({"given": list(p.given)} if p.given else {})}],
        "birthDate": p.birth_date.isoformat(),
    }
    if p.sex is not None:
        resource["gender"] = p.sex
    return resource


def medication_resource(o: OrderData, *, resource_id: str | None = None) -> dict[str, Any]:
    """The order's drug as an R4 Medication: the drug's code, and its concentration as the strength
    of its one ingredient (``isActive``), the container volume as ``amount``."""
    coding = {"system": o.drug.fhir_system, "code": o.drug.code, "display": o.drug.name}
    resource: dict[str, Any] = {
        "resourceType": "Medication",
        "id": resource_id or f"med-{o.id}",
        "code": {"coding": [coding], "text": o.drug.name},
    }
    if o.concentration is not None:
        c = o.concentration.concentration()
        resource["amount"] = {"numerator": _fhir_quantity(c.volume), "denominator": {"value": Decimal(1)}}
        resource["ingredient"] = [
            {
                "itemCodeableConcept": {"coding": [coding], "text": o.drug.name},
                "isActive": True,
                "strength": {"numerator": _fhir_quantity(c.amount), "denominator": _fhir_quantity(c.volume)},
            }
        ]
    return resource


def _order_identifier_holder(o: OrderData) -> dict[str, Any]:
    return {"identifier": [{"system": ORDER_SYSTEM, "value": o.id}]}


def medication_request_resource(o: OrderData, patient: PatientData, now: datetime) -> dict[str, Any]:
    """The order as an R4 MedicationRequest: Medication and body weight contained, the patient
    referenced by id and by its MR identifier, the ordered rate as one ``rateQuantity`` (the dose
    rate when there is one, else the flow), ``authoredOn`` from the clock for relative times."""
    resource: dict[str, Any] = {"resourceType": "MedicationRequest", "id": o.id}
    contained: list[dict[str, Any]] = [medication_resource(o, resource_id="med")]
    weight = patient.weight_quantity()
    if weight is not None:
        contained.append(
            {
                "resourceType": "Observation",
                "id": "weight",
                "status": "final",
                "code": {"coding": [WEIGHT_CODE], "text": "Body weight"},
                "subject": {"reference": f"Patient/{patient.identifier}"},
                "valueQuantity": _fhir_quantity(Quantity.parse(patient.weight or "")),
            }
        )
    resource["contained"] = contained
    resource["identifier"] = [{"use": "official", "system": ORDER_SYSTEM, "value": o.id}]
    resource["status"] = o.status
    resource["intent"] = "order"
    resource["medicationReference"] = {"reference": "#med", "display": o.drug.name}
    resource["subject"] = {
        "reference": f"Patient/{patient.identifier}",
        "identifier": {"system": MRN_SYSTEM, "value": patient.identifier},
        "display": patient.display_name,
    }
    if weight is not None:
        resource["supportingInformation"] = [{"reference": "#weight"}]
    resource["authoredOn"] = o.ordered_at_from(now).isoformat()
    if o.ordered_by is not None:
        resource["requester"] = {"display": o.ordered_by}
    instruction: dict[str, Any] = {"sequence": 1, "text": _instruction_text(o)}
    if o.duration is not None:
        d = Quantity.parse(o.duration)
        instruction["timing"] = {"repeat": {"duration": d.value, "durationUnit": d.unit}}
    route: dict[str, Any] = {"coding": [{"system": V2_0162, "code": o.route, "display": ROUTES[o.route]}]}
    if o.route == "IV":
        route["coding"].append(SNOMED_IV)
    route["text"] = ROUTES[o.route]
    instruction["route"] = route
    ordered = Quantity.parse(o.dose_rate or o.rate or "")
    instruction["doseAndRate"] = [
        {
            "type": {"coding": [{"system": DOSE_RATE_TYPE, "code": "ordered", "display": "Ordered"}]},
            "rateQuantity": _fhir_quantity(ordered),
        }
    ]
    resource["dosageInstruction"] = [instruction]
    # The volume to be infused has no FHIR R4 element: it travels in PIV (RXG-5) and in the text.
    return resource


def _instruction_text(o: OrderData) -> str:
    parts = [o.drug.name]
    if o.concentration is not None:
        parts.append(f"{o.concentration.amount} in {o.concentration.volume}")
    parts.append(f"at {o.dose_rate or o.rate}")
    if o.rate and o.dose_rate:
        parts.append(f"({o.rate})")
    if o.vtbi:
        parts.append(f"VTBI {o.vtbi}")
    if o.duration:
        parts.append(f"over {o.duration}")
    return " ".join(parts) + f", {o.route}"
