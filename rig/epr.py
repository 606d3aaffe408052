"""The emulated EPR: where the gateway documents administrations, over FHIR R4 and HL7 v2 (MLLP).

:class:`EmulatedEpr` is what an integration engineer points the gateway's ``[epr]`` receivers at on
the bench. It is strict where a real EPR is strict, and it keeps everything it was sent, with its
verdict, for a test or a person to inspect.

FHIR R4 (aiohttp, ``fhir_base`` = ``http://127.0.0.1:PORT``, port chosen by the system):

===============================  =====================================================================
``POST /{type}``                 validate (fhir.resources R4B) and store with a new id: ``201 Created``,
                                 ``Location: {base}/{type}/{id}/_history/1``, the stored resource
``POST`` + ``If-None-Exist``     conditional create, ``identifier=system|value``: one match → ``200``
                                 with the stored resource and nothing stored; none → created as above;
                                 several → ``412``
``PUT /{type}/{id}``             create (``201``) or update (``200``, version + 1); the body's id must
                                 be the URL's
``PUT /{type}?identifier=...``   conditional update: none → ``201``, one → ``200``, several → ``412``
``GET /{type}/{id}``             the stored resource, or ``404``
``GET /{type}[?identifier=]``    a ``searchset`` Bundle of the stored resources of that type
``GET /metadata``                a CapabilityStatement
===============================  =====================================================================

A resource that is not valid R4B gets ``422`` and an OperationOutcome with one issue per problem,
each naming the element as a FHIRPath (``MedicationAdministration.dosage.rateRatio.numerator.value``)
and the value it holds. Not JSON, or a ``resourceType`` that is not the URL's: ``400``. An unknown
resource type: ``404``. Every error body is an OperationOutcome; nothing a client sends stops the
server. Numbers are kept exactly as sent (``4.00`` stays ``4.00``).

HL7 v2 over MLLP (:class:`~pumpgw.hl7.mllp_io.MllpServer`, port chosen by the system): every message
is checked with :func:`~pumpgw.hl7.validate.validate_strict` (hl7apy, strict) and answered with an
ACK: ``AA``; ``AE`` with one ERR naming the problem when it is readable but not valid; ``AR`` when
it cannot be read at all, or is a type the EPR does not take (it takes ``ORU^R01``, ``ORU^R40``,
``ORU^R42`` and ``RAS^O17``). Bytes that are not MLLP are dropped by the server and the
connection goes on.

Modes, settable while it runs (:meth:`EmulatedEpr.set_mode`, ``pumpgw rig epr mode``), for the next
``count`` requests or until changed, on FHIR, HL7 or both:

=========  ==================================================================================
``ok``      answer as above
``fail``    FHIR: ``503`` with an OperationOutcome; MLLP: the connection is closed without a reply
``delay``   answer as above, ``delay_s`` seconds late
``reject``  FHIR: ``422`` (business rule); HL7: ``AR``; for valid input too, and nothing is stored
=========  ==================================================================================

Every request is recorded with its verdict (:meth:`~EmulatedEpr.fhir_requests`,
:meth:`~EmulatedEpr.hl7_messages`), even one the mode failed or rejected.

The small FHIR-over-HTTP helpers at the bottom (:func:`fhir_response`, :func:`operation_outcome`,
:func:`fhir_problems`) are shared with the emulated eMAR (:mod:`pumpgw.rig.emar`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import parse_qsl

from aiohttp import web
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from pumpgw.fhir.client import dumps_json
from pumpgw.gateway.clock import Clock
from pumpgw.gateway.errors import ConfigError, Hl7Error
from pumpgw.gateway.orders import HL7_APPLICATION_ERROR, HL7_UNSUPPORTED_MESSAGE_TYPE, OrderProblem
from pumpgw.hl7.ack import build_ack, nak_for_unreadable
from pumpgw.hl7.build import Party
from pumpgw.hl7.message import parse_message
from pumpgw.hl7.mllp_io import CloseConnection, MllpServer, Peer
from pumpgw.hl7.validate import validate_strict

log = logging.getLogger(__name__)

FHIR_JSON: Final = "application/fhir+json"
#: The messages the EPR takes (MSH-9 message code and trigger): IHE PCD DEC, ACM, IPEC and RAS^O17.
ACCEPTED_MESSAGES: Final = frozenset({("ORU", "R01"), ("ORU", "R40"), ("ORU", "R42"), ("RAS", "O17")})
#: HL7 table 0357 code for a message the EPR refuses on purpose (``reject`` mode).
_REJECTED_CODE: Final = HL7_APPLICATION_ERROR
_ID_RE: Final = r"[A-Za-z0-9\-.]{1,64}"  # FHIR R4 id
_TYPE_RE: Final = r"[A-Z][A-Za-z]{1,63}"
_EPR_PARTY: Final = Party("RIG_EPR", "RIG")


class EprMode(StrEnum):
    OK = "ok"
    FAIL = "fail"
    DELAY = "delay"
    REJECT = "reject"


Channel = Literal["fhir", "hl7"]
_SCOPES: Final = ("both", "fhir", "hl7")


@dataclass
class _Behaviour:
    mode: EprMode = EprMode.OK
    delay_s: float = 0.0
    remaining: int | None = None  # requests still affected; None: until changed
    on: str = "both"


@dataclass(frozen=True, slots=True)
class FhirRequest:
    """One FHIR request the EPR answered: what was asked, what it said, and why."""

    at: datetime
    method: str
    path: str
    resource_type: str | None
    resource_id: str | None
    status: int
    verdict: str  # created, updated, exists, read, searched, invalid, rejected, failed, bad-request, ...
    problems: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "method": self.method,
            "path": self.path,
            "type": self.resource_type,
            "id": self.resource_id,
            "status": self.status,
            "verdict": self.verdict,
            "problems": list(self.problems),
        }


@dataclass(frozen=True, slots=True)
class Hl7Received:
    """One HL7 message the EPR received, and its verdict: ``AA``, ``AE``, ``AR``, or ``dropped``
    (``fail`` mode: the connection was closed without a reply)."""

    at: datetime
    peer: str
    message: bytes
    message_type: str | None
    control_id: str | None
    verdict: str
    problems: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "peer": self.peer,
            "type": self.message_type,
            "control_id": self.control_id,
            "verdict": self.verdict,
            "problems": list(self.problems),
            "message": self.message.decode("utf-8", "replace"),
        }


@dataclass
class _Stored:
    resource: dict[str, Any]
    version: int


def _problem_text(problem: OrderProblem) -> str:
    where = f"{problem.element}: " if problem.element else ""
    return f"{where}{problem.reason} (code {problem.code})"


class HospitalServer:
    """What the rig's eMAR and EPR share: a FHIR endpoint on ``host``:``fhir_port`` started by
    ``start`` and stopped by ``close``, as an async context manager."""

    host: str
    fhir_port: int

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def fhir_base(self) -> str:
        return f"http://{self.host}:{self.fhir_port}"


class EmulatedEpr(HospitalServer):
    """A FHIR endpoint and an MLLP receiver that keep what they receive. Use ``async with``.

    ``fhir_port`` and ``mllp_port`` are 0 by default: the system picks; read them after start."""

    def __init__(
        self, clock: Clock, *, host: str = "127.0.0.1", fhir_port: int = 0, mllp_port: int = 0
    ) -> None:
        self.clock = clock
        self.host = host
        self.fhir_port = fhir_port
        self.mllp_port = mllp_port
        self._behaviour = _Behaviour()
        self._store: dict[str, dict[str, _Stored]] = {}
        self._next_id = 1
        self._fhir_log: list[FhirRequest] = []
        self._hl7_log: list[Hl7Received] = []
        self._runner: web.AppRunner | None = None
        self._mllp: MllpServer | None = None
        self._problems: list[str] = []
        self._validating = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen for FHIR and MLLP. Raises EnvironmentProblem (MLLP) or OSError if a port is taken."""
        try:
            self._runner, self.fhir_port = await serve_http(self._app(), self.host, self.fhir_port)
            self._mllp = MllpServer(
                self._handle_hl7,
                host=self.host,
                port=self.mllp_port,
                on_problem=lambda peer, text: self._problems.append(f"{peer}: {text}"),
            )
            await self._mllp.start()
            self.mllp_port = self._mllp.port
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop both servers. Idempotent."""
        mllp, self._mllp = self._mllp, None
        if mllp is not None:
            await mllp.close(grace_s=1.0)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- modes -------------------------------------------------------------------------------------
    def set_mode(
        self, mode: str, *, delay_s: float | None = None, count: int | None = None, on: str = "both"
    ) -> str:
        """Set how the EPR answers from now on; return it in words. Raises ConfigError naming the bad
        argument: an unknown mode or scope, ``delay`` without a positive ``delay_s``, a count below 1."""
        try:
            chosen = EprMode(mode)
        except ValueError:
            raise ConfigError("epr mode", "mode", mode, "one of ok, fail, delay, reject") from None
        if on not in _SCOPES:
            raise ConfigError("epr mode", "on", on, "fhir, hl7 or both")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ConfigError("epr mode", "count", count, "a whole number of requests, 1 or more")
        if chosen is EprMode.DELAY:
            if delay_s is None or not 0 < delay_s <= 600:
                raise ConfigError("epr mode", "delay", delay_s, "seconds, above 0 and at most 600")
        elif delay_s is not None:
            raise ConfigError("epr mode", "delay", delay_s, f"nothing: only delay takes seconds, not {mode}")
        self._behaviour = _Behaviour(
            chosen,
            delay_s or 0.0,
            None if chosen is EprMode.OK else count,
            "both" if chosen is EprMode.OK else on,
        )
        return self.describe_mode()

    def describe_mode(self) -> str:
        b = self._behaviour
        if b.mode is EprMode.OK:
            return "epr: ok (answers normally)"
        what = f"{b.mode.value} {b.delay_s:g} s" if b.mode is EprMode.DELAY else b.mode.value
        scope = "FHIR and HL7" if b.on == "both" else b.on.upper()
        span = "until changed" if b.remaining is None else f"for the next {b.remaining} request(s)"
        return f"epr: {what} on {scope} {span}"

    def mode(self) -> dict[str, Any]:
        b = self._behaviour
        return {"mode": b.mode.value, "delay_s": b.delay_s, "remaining": b.remaining, "on": b.on}

    def _take(self, channel: Channel, *, write: bool = True) -> tuple[EprMode, float]:
        """The behaviour for one request on ``channel``; a counted mode uses up one request.
        ``reject`` concerns what is sent to the EPR: a read passes (and uses up nothing)."""
        b = self._behaviour
        if b.mode is EprMode.OK or b.on not in ("both", channel) or (b.mode is EprMode.REJECT and not write):
            return EprMode.OK, 0.0
        if b.remaining is not None:
            b.remaining -= 1
            if b.remaining <= 0:
                self._behaviour = _Behaviour()
        return b.mode, b.delay_s

    # -- what was received -------------------------------------------------------------------------
    def resources(self, resource_type: str | None = None) -> list[dict[str, Any]]:
        """The stored resources (of ``resource_type``, or all), oldest first, as stored."""
        types = [resource_type] if resource_type is not None else list(self._store)
        return [s.resource for t in types for s in self._store.get(t, {}).values()]

    def fhir_requests(self) -> list[FhirRequest]:
        return list(self._fhir_log)

    def hl7_messages(self) -> list[Hl7Received]:
        return list(self._hl7_log)

    def link_problems(self) -> list[str]:
        """What the MLLP server reported about its connections (garbage, timeouts, ...)."""
        return list(self._problems)

    def counts(self) -> dict[str, Any]:
        return {
            "stored": {t: len(s) for t, s in self._store.items()},
            "fhir_requests": dict(Counter(r.verdict for r in self._fhir_log)),
            "hl7_messages": dict(Counter(m.verdict for m in self._hl7_log)),
        }

    def clear(self) -> None:
        """Forget everything received (the mode stays)."""
        self._store.clear()
        self._fhir_log.clear()
        self._hl7_log.clear()
        self._problems.clear()

    # -- HL7 ---------------------------------------------------------------------------------------
    async def _handle_hl7(self, data: bytes, peer: Peer) -> bytes | None:
        mode, delay_s = self._take("hl7")
        if mode is EprMode.DELAY:
            await asyncio.sleep(delay_s)
        now = self.clock.wall()
        try:
            message = parse_message(data)
        except Hl7Error as exc:
            message, unreadable = None, exc
        if mode is EprMode.FAIL:
            kind = None if message is None else "^".join(message.message_type[:2])
            self._record_hl7(
                data, peer, kind, message.control_id if message else None, "dropped", ["epr mode fail"]
            )
            log.info("rig EPR in fail mode: connection from %s closed without a reply", peer)
            raise CloseConnection("the rig's EPR is in fail mode")
        if message is None:
            self._record_hl7(data, peer, None, None, "AR", [unreadable.detail])
            return nak_for_unreadable(data, unreadable.detail, at=now, sender=_EPR_PARTY)
        code, trigger, _structure = message.message_type
        kind = f"{code}^{trigger}"
        verdict, problems = "AA", list[OrderProblem]()
        if (code, trigger) not in ACCEPTED_MESSAGES:
            takes = ", ".join(f"{c}^{t}" for c, t in sorted(ACCEPTED_MESSAGES))
            verdict = "AR"
            problems = [
                OrderProblem(HL7_UNSUPPORTED_MESSAGE_TYPE, "MSH-9", f"this EPR takes {takes}, not {kind}")
            ]
        else:
            try:
                # hl7apy takes tens of milliseconds a message: off the loop the rig's pumps run on,
                # one at a time (hl7apy keeps module-level state).
                async with self._validating:
                    await asyncio.to_thread(validate_strict, data)
            except Hl7Error as exc:
                verdict, problems = "AE", validation_problems(exc)
        if verdict == "AA" and mode is EprMode.REJECT:
            verdict = "AR"
            problems = [OrderProblem(_REJECTED_CODE, "", "rejected by the rig's EPR (epr mode reject)")]
        self._record_hl7(data, peer, kind, message.control_id, verdict, [_problem_text(p) for p in problems])
        return build_ack(
            message,
            verdict,
            at=now,
            sender=_EPR_PARTY,
            trigger=trigger or None,
            errors=problems,
            text=problems[0].reason if problems else "",
        )

    def _record_hl7(
        self,
        data: bytes,
        peer: Peer,
        kind: str | None,
        control_id: str | None,
        verdict: str,
        problems: Iterable[str],
    ) -> None:
        self._hl7_log.append(
            Hl7Received(
                self.clock.wall(), str(peer), data, kind, control_id or None, verdict, tuple(problems)
            )
        )

    # -- FHIR --------------------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(middlewares=[fhir_errors])
        app.router.add_get("/metadata", self._metadata)
        app.router.add_route("*", f"/{{type:{_TYPE_RE}}}", self._on_type)
        app.router.add_route("*", f"/{{type:{_TYPE_RE}}}/{{id:{_ID_RE}}}", self._on_instance)
        return app

    async def _metadata(self, request: web.Request) -> web.Response:
        interactions = ["create", "update", "read", "search-type"]
        types = ("MedicationAdministration", "Device", "Observation", "AuditEvent", "Patient")
        return fhir_response(
            capability_statement(self.clock.wall(), "pumpgw rig EPR", dict.fromkeys(types, interactions))
        )

    async def _on_type(self, request: web.Request) -> web.StreamResponse:
        resource_type = request.match_info["type"]
        if request.method not in ("GET", "POST", "PUT"):
            return self._answer(
                request, resource_type, None, 405, "bad-request", [f"{request.method} is not supported here"]
            )
        mode, delay_s = self._take("fhir", write=request.method != "GET")
        answer = await self._moded(request, resource_type, None, mode, delay_s)
        if answer is not None:
            return answer
        if not _known_type(resource_type):
            return self._answer(
                request,
                resource_type,
                None,
                404,
                "unknown-type",
                [f"{resource_type} is not an R4B resource type"],
            )
        if request.method == "GET":
            return self._search(request, resource_type)
        resource = await self._body(request, resource_type, None)
        if isinstance(resource, web.Response):
            return resource
        if mode is EprMode.REJECT:
            return self._reject(request, resource_type)
        if request.method == "POST":
            criteria = request.headers.get("If-None-Exist")
            if criteria is None:
                return self._create(request, resource_type, resource)
            matches = self._matching(request, resource_type, criteria)
            if isinstance(matches, web.Response):
                return matches
            if not matches:
                return self._create(request, resource_type, resource)
            if len(matches) == 1:
                stored = matches[0]
                rid = str(stored.resource["id"])
                self._log(request, resource_type, rid, 200, "exists")
                return fhir_response(
                    stored.resource, status=200, headers=self._location(resource_type, rid, stored.version)
                )
            return self._answer(
                request,
                resource_type,
                None,
                412,
                "ambiguous",
                [f"If-None-Exist {criteria!r} matches {len(matches)} resources"],
            )
        # PUT /{type}?identifier=...: conditional update
        criteria = request.query_string
        if not criteria:
            return self._answer(
                request,
                resource_type,
                None,
                400,
                "bad-request",
                ["PUT needs an id in the URL or search criteria"],
            )
        matches = self._matching(request, resource_type, criteria)
        if isinstance(matches, web.Response):
            return matches
        if len(matches) > 1:
            return self._answer(
                request,
                resource_type,
                None,
                412,
                "ambiguous",
                [f"{criteria!r} matches {len(matches)} resources"],
            )
        if not matches:
            return self._create(request, resource_type, resource)
        return self._update(request, resource_type, str(matches[0].resource["id"]), resource)

    async def _on_instance(self, request: web.Request) -> web.StreamResponse:
        resource_type, rid = request.match_info["type"], request.match_info["id"]
        if request.method not in ("GET", "PUT"):
            return self._answer(
                request, resource_type, rid, 405, "bad-request", [f"{request.method} is not supported here"]
            )
        mode, delay_s = self._take("fhir", write=request.method != "GET")
        answer = await self._moded(request, resource_type, rid, mode, delay_s)
        if answer is not None:
            return answer
        if not _known_type(resource_type):
            return self._answer(
                request,
                resource_type,
                rid,
                404,
                "unknown-type",
                [f"{resource_type} is not an R4B resource type"],
            )
        if request.method == "GET":
            stored = self._store.get(resource_type, {}).get(rid)
            if stored is None:
                return self._answer(
                    request, resource_type, rid, 404, "not-found", [f"no {resource_type}/{rid} here"]
                )
            self._log(request, resource_type, rid, 200, "read")
            return fhir_response(stored.resource)
        resource = await self._body(request, resource_type, rid)
        if isinstance(resource, web.Response):
            return resource
        if resource.get("id") != rid:
            return self._answer(
                request,
                resource_type,
                rid,
                400,
                "bad-request",
                [f"the body's id {resource.get('id')!r} is not the URL's {rid!r}"],
            )
        if mode is EprMode.REJECT:
            return self._reject(request, resource_type)
        if rid in self._store.get(resource_type, {}):
            return self._update(request, resource_type, rid, resource)
        return self._create(request, resource_type, resource, rid=rid)

    async def _moded(
        self, request: web.Request, resource_type: str, rid: str | None, mode: EprMode, delay_s: float
    ) -> web.Response | None:
        if mode is EprMode.DELAY:
            await asyncio.sleep(delay_s)
        if mode is EprMode.FAIL:
            return self._answer(
                request,
                resource_type,
                rid,
                503,
                "failed",
                ["the rig's EPR is in fail mode (pumpgw rig epr mode ok)"],
                code="transient",
            )
        return None

    def _reject(self, request: web.Request, resource_type: str) -> web.Response:
        return self._answer(
            request,
            resource_type,
            None,
            422,
            "rejected",
            ["rejected by the rig's EPR (epr mode reject)"],
            code="business-rule",
        )

    async def _body(
        self, request: web.Request, resource_type: str, rid: str | None
    ) -> dict[str, Any] | web.Response:
        """The request's resource, valid R4B and of ``resource_type``, or the error answer."""
        try:
            text = await request.text()
            resource = json.loads(text, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._answer(
                request,
                resource_type,
                rid,
                400,
                "bad-request",
                [f"the body is not JSON: {exc}"],
                code="structure",
            )
        if not isinstance(resource, dict):
            return self._answer(
                request,
                resource_type,
                rid,
                400,
                "bad-request",
                ["the body is not a JSON object"],
                code="structure",
            )
        if resource.get("resourceType") != resource_type:
            return self._answer(
                request, resource_type, rid, 400, "bad-request",
                [f"resourceType {resource.get('resourceType')!r} is not {resource_type!r} (the URL's)"],
                code="structure",
            )  # fmt: skip
        problems = fhir_problems(resource)
        if problems:
            return self._answer(
                request, resource_type, rid, 422, "invalid", problems, expressions=_expressions(problems)
            )
        return resource

    def _create(
        self, request: web.Request, resource_type: str, resource: dict[str, Any], *, rid: str | None = None
    ) -> web.Response:
        if rid is None:
            rid = str(self._next_id)
            self._next_id += 1
        stored = dict(resource, id=rid, meta=self._meta(resource, 1))
        self._store.setdefault(resource_type, {})[rid] = _Stored(stored, 1)
        self._log(request, resource_type, rid, 201, "created")
        return fhir_response(stored, status=201, headers=self._location(resource_type, rid, 1))

    def _update(
        self, request: web.Request, resource_type: str, rid: str, resource: dict[str, Any]
    ) -> web.Response:
        version = self._store[resource_type][rid].version + 1
        stored = dict(resource, id=rid, meta=self._meta(resource, version))
        self._store[resource_type][rid] = _Stored(stored, version)
        self._log(request, resource_type, rid, 200, "updated")
        return fhir_response(stored, status=200, headers=self._location(resource_type, rid, version))

    def _meta(self, resource: Mapping[str, Any], version: int) -> dict[str, Any]:
        meta = dict(resource.get("meta") or {})
        meta.update(versionId=str(version), lastUpdated=self.clock.wall().isoformat())
        return meta

    def _location(self, resource_type: str, rid: str, version: int) -> dict[str, str]:
        return {
            "Location": f"{self.fhir_base}/{resource_type}/{rid}/_history/{version}",
            "ETag": f'W/"{version}"',
        }

    def _matching(
        self, request: web.Request, resource_type: str, criteria: str
    ) -> list[_Stored] | web.Response:
        params = parse_qsl(criteria, keep_blank_values=True)
        if len(params) != 1 or params[0][0] != "identifier":
            return self._answer(
                request, resource_type, None, 400, "bad-request",
                [f"criteria {criteria!r}: the rig's EPR matches on one identifier=system|value only"],
            )  # fmt: skip
        token = params[0][1]
        return [
            s for s in self._store.get(resource_type, {}).values() if identifier_matches(s.resource, token)
        ]

    def _search(self, request: web.Request, resource_type: str) -> web.Response:
        stored = list(self._store.get(resource_type, {}).values())
        if request.query_string:
            matches = self._matching(request, resource_type, request.query_string)
            if isinstance(matches, web.Response):
                return matches
            stored = matches
        self._log(request, resource_type, None, 200, "searched")
        return fhir_response(searchset([s.resource for s in stored], self.fhir_base))

    def _answer(
        self,
        request: web.Request,
        resource_type: str | None,
        rid: str | None,
        status: int,
        verdict: str,
        problems: list[str],
        *,
        code: str | None = None,
        expressions: list[list[str]] | None = None,
    ) -> web.Response:
        self._log(request, resource_type, rid, status, verdict, problems)
        issue_code = code or {
            400: "structure",
            404: "not-found",
            405: "not-supported",
            412: "duplicate",
            422: "invalid",
        }.get(status, "exception")
        return fhir_response(
            operation_outcome(problems, code=issue_code, expressions=expressions), status=status
        )

    def _log(
        self,
        request: web.Request,
        resource_type: str | None,
        rid: str | None,
        status: int,
        verdict: str,
        problems: Iterable[str] = (),
    ) -> None:
        self._fhir_log.append(
            FhirRequest(
                self.clock.wall(),
                request.method,
                request.path_qs,
                resource_type,
                rid,
                status,
                verdict,
                tuple(problems),
            )
        )


# -- helpers for the HL7 side -------------------------------------------------------------------------

_FIELD_RE: Final = re.compile(r"\b([A-Z][A-Z0-9]{2})_(\d+)\b")  # hl7apy's PID_3: PID-3
_SEGMENT_RE: Final = re.compile(r"\.([A-Z][A-Z0-9]{2})\b")  # ORU_R01_PATIENT.PID: the PID segment


def validation_problems(exc: Hl7Error) -> list[OrderProblem]:
    """One problem per error hl7apy reported, each with the element it names (``PID-3``, ``PID``,
    for ERR-2) and an HL7 table 0357 code: 100 a segment missing or misplaced, 101 a required
    field missing, 102 a malformed value (the default)."""
    errors = getattr(exc, "errors", None) or (exc.detail,)
    problems = []
    for text in errors:
        field = _FIELD_RE.search(text)
        segment = _SEGMENT_RE.search(text)
        missing = "missing required" in text.lower()
        if field is not None:
            element, code = f"{field.group(1)}-{field.group(2)}", "101" if missing else "102"
        elif segment is not None:
            element, code = segment.group(1), "100" if missing else "102"
        else:
            element, code = "", "102"
        problems.append(OrderProblem(code, element, f"not valid HL7 (hl7apy, STRICT): {text}"))
    return problems


# -- FHIR over HTTP, shared with the eMAR -------------------------------------------------------------


def fhir_response(
    resource: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``resource`` as an ``application/fhir+json`` response; Decimal numbers written digit for digit."""
    return web.Response(
        body=dumps_json(resource), status=status, content_type=FHIR_JSON, charset="utf-8", headers=headers
    )


def operation_outcome(
    problems: Iterable[str], *, code: str = "invalid", expressions: list[list[str]] | None = None
) -> dict[str, Any]:
    """An OperationOutcome with one error issue per problem (``expressions[i]`` for issue i, if given)."""
    issues = []
    for i, text in enumerate(problems):
        issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": text}
        if expressions is not None and i < len(expressions) and expressions[i]:
            issue["expression"] = expressions[i]
        issues.append(issue)
    if not issues:
        issues = [{"severity": "error", "code": code, "diagnostics": "(no detail)"}]
    return {"resourceType": "OperationOutcome", "issue": issues}


def fhir_problems(resource: Mapping[str, Any]) -> list[str]:
    """Why ``resource`` is not a valid R4B resource, one line per problem, each starting with the
    element as a FHIRPath (``Type.element[0].child``) and a colon; empty when it is valid."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not _known_type(resource_type):
        return [f"resourceType: {resource_type!r} is not an R4B resource type"]
    model = get_fhir_model_class(resource_type)
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        return [_problem(resource_type, e) for e in exc.errors()]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # fhir.resources lets some malformed input escape as plain Python errors (a contained
        # resource of an unknown type raises KeyError): still not a valid resource.
        return [f"{resource_type}: not valid R4B: {type(exc).__name__}: {exc}"]
    return []


def _problem(resource_type: str, error: Any) -> str:
    path = resource_type
    for part in error.get("loc", ()):
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    value = error.get("input")
    shown = "" if error.get("type") == "missing" else f" (value {_short(value)})"
    return f"{path}: {error.get('msg', 'invalid')}{shown}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _expressions(problems: list[str]) -> list[list[str]]:
    return [[p.split(":", 1)[0]] for p in problems]


def _known_type(resource_type: str) -> bool:
    try:
        get_fhir_model_class(resource_type)
    except (ValueError, KeyError, ImportError, AttributeError):
        return False
    return True


def identifier_matches(resource: Mapping[str, Any], token: str) -> bool:
    """FHIR token search on ``identifier``: ``system|value``, ``|value`` (no system), ``value``
    (any system) or ``system|`` (any value in that system)."""
    if "|" in token:
        system, value = token.split("|", 1)
        want_system: str | None = system
    else:
        want_system, value = None, token
    identifiers = resource.get("identifier") or []
    if isinstance(identifiers, dict):
        identifiers = [identifiers]
    for ident in identifiers:
        if not isinstance(ident, dict):
            continue
        if want_system is not None:
            if want_system == "" and ident.get("system") is not None:
                continue
            if want_system and ident.get("system") != want_system:
                continue
        if value == "" or ident.get("value") == value:
            return True
    return False


def searchset(resources: Iterable[Mapping[str, Any]], base: str) -> dict[str, Any]:
    """A ``searchset`` Bundle of ``resources`` (each with its ``fullUrl`` under ``base``)."""
    entries = [
        {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": dict(r), "search": {"mode": "match"}}
        for r in resources
    ]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


def capability_statement(at: datetime, name: str, resources: Mapping[str, list[str]]) -> dict[str, Any]:
    """A CapabilityStatement for ``resources`` (type -> interaction codes)."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": at.isoformat(),
        "kind": "instance",
        "software": {"name": name},
        "implementation": {"description": f"{name} (bench rig emulation, not a clinical system)"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": t, "interaction": [{"code": c} for c in codes]} for t, codes in resources.items()
                ],
            }
        ],
    }


@web.middleware
async def fhir_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error answer is an OperationOutcome: unknown paths, wrong methods, our own bugs."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return fhir_response(
            operation_outcome(
                [f"{request.method} {request.path}: {exc.reason}"],
                code="not-found" if exc.status == 404 else "exception",
            ),
            status=exc.status,
        )
    except Exception as exc:  # a bug of the rig must cost one request, never the server
        log.exception("rig FHIR server: %s %s failed", request.method, request.path)
        return fhir_response(
            operation_outcome([f"internal error: {type(exc).__name__}: {exc}"], code="exception"), status=500
        )
    return response


async def serve_http(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: the system picks); return the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound = int(sock.getsockname()[1])
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return runner, bound
