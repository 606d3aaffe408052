"""A small FHIR R4 server for the client and destination tests: real aiohttp on 127.0.0.1, port 0.

It keeps resources in memory and implements what the gateway uses: read, search by identifier
(paged, with ``next`` links), create and conditional create (``If-None-Exist: identifier=s|v``:
0 matches → 201, 1 → 200, several → 412), update (PUT). It can also:

- answer scripted responses first (:meth:`FhirTestServer.then`): a status and body, or hang until
  the test ends (a timeout), optionally only for requests that ``match``;
- refuse resources with 422 and an OperationOutcome (``reject``);
- require a bearer token, issued by its SMART token endpoint (``/token``), which verifies the
  client's JWT assertion with the public key it is given and records the verified claims.

Every request is recorded (method, path, query, headers, body) for the tests to inspect, and
``changed`` (an asyncio.Event) is set when a request arrives and again when it has been handled.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body, parse_float=Decimal)


@dataclass
class Scripted:
    """One scripted answer: ``status`` with ``body`` (JSON) or ``raw`` bytes; or ``hang`` until the
    server closes; or ``apply`` the request normally and then answer ``status`` (a lost answer)."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    apply: bool = False
    match: Callable[[web.Request], bool] | None = None


def outcome(diagnostics: str, expression: str | None = None, code: str = "processing") -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression is not None:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_jwt(token: str, public_key: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a compact JWS signed RS384 or ES384; raises InvalidSignature."""
    head, payload, signature = token.split(".")
    header = json.loads(_b64decode(head))
    signed = f"{head}.{payload}".encode("ascii")
    raw = _b64decode(signature)
    if header["alg"] == "RS384":
        assert isinstance(public_key, rsa.RSAPublicKey)
        public_key.verify(raw, signed, padding.PKCS1v15(), hashes.SHA384())
    elif header["alg"] == "ES384":
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        if len(raw) != 96:
            raise InvalidSignature("an ES384 signature is 96 bytes (r || s)")
        der = encode_dss_signature(int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big"))
        public_key.verify(der, signed, ec.ECDSA(hashes.SHA384()))
    else:
        raise InvalidSignature(f"alg {header['alg']!r}")
    return header, json.loads(_b64decode(payload))


class FhirTestServer:
    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        public_key: Any = None,
        client_id: str = "pumpgw-test",
        token_expires_in: int | None = 300,
        page_size: int = 50,
    ) -> None:
        self.ssl_context = ssl_context
        self.public_key = public_key  # the client's key: the token endpoint verifies assertions with it
        self.client_id = client_id
        self.token_expires_in = token_expires_in
        self.page_size = page_size
        self.store: dict[str, dict[str, dict[str, Any]]] = {}
        self.requests: list[Seen] = []
        self.script: list[Scripted] = []
        self.reject: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda resource: None
        self.tokens: set[str] | None = None  # None: no authorisation required
        self.assertions: list[tuple[dict[str, Any], dict[str, Any]]] = []  # verified (header, claims)
        self.changed = asyncio.Event()
        self._ids = itertools.count(1)
        self._token_ids = itertools.count(1)
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- life ------------------------------------------------------------------------------------

    async def start(self) -> FhirTestServer:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_route("*", "/fhir/{tail:.*}", self._fhir)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FhirTestServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def origin(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/fhir"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/token"

    def then(self, *answers: Scripted) -> None:
        """Answer the next matching requests with these, in order, before normal handling."""
        self.script.extend(answers)

    async def until(self, condition: Callable[[], bool], timeout_s: float = 10) -> None:
        """Wait until ``condition()`` holds, re-checking whenever a request arrives or is handled."""
        async with asyncio.timeout(timeout_s):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    def fhir_requests(self, method: str | None = None) -> list[Seen]:
        return [
            r for r in self.requests if r.path.startswith("/fhir") and (method is None or r.method == method)
        ]

    # -- the token endpoint ----------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self._record(request, json.dumps({k: str(v) for k, v in form.items()}).encode())
        if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return web.json_response({"error": "invalid_request"}, status=400)
        try:
            header, claims = verify_jwt(str(form.get("client_assertion")), self.public_key)
        except (InvalidSignature, ValueError, KeyError, AssertionError):
            return web.json_response(
                {"error": "invalid_client", "error_description": "signature does not verify"}, status=401
            )
        self.assertions.append((header, claims))
        token = f"token-{next(self._token_ids)}"
        if self.tokens is None:
            self.tokens = set()
        self.tokens.add(token)
        answer: dict[str, Any] = {"access_token": token, "token_type": "bearer", "scope": form.get("scope")}
        if self.token_expires_in is not None:
            answer["expires_in"] = self.token_expires_in
        return web.json_response(answer)

    # -- FHIR ------------------------------------------------------------------------------------

    def _record(self, request: web.Request, body: bytes) -> None:
        self.requests.append(
            Seen(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        self.changed.set()

    async def _fhir(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self._record(request, body)
        try:
            return await self._answer(request, body)
        finally:
            self.changed.set()  # again, now that the store holds what the request did

    async def _answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if (
            self.tokens is not None
            and request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.tokens
        ):
            return self._json(401, outcome("not authorised", code="login"))
        for i, scripted in enumerate(self.script):
            if scripted.match is None or scripted.match(request):
                del self.script[i]
                if scripted.hang:
                    await self._release.wait()
                if scripted.apply:
                    self._handle(request, body)
                if scripted.raw is not None:
                    return web.Response(status=scripted.status, body=scripted.raw, content_type="text/html")
                return self._json(scripted.status, scripted.body, scripted.headers)
        return self._handle(request, body)

    def _handle(self, request: web.Request, body: bytes) -> web.Response:
        parts = [p for p in request.match_info["tail"].split("/") if p]
        if request.method == "GET" and len(parts) == 2:
            return self._read(*parts)
        if request.method == "GET" and len(parts) == 1:
            return self._search(request, parts[0])
        if request.method == "POST" and len(parts) == 1:
            return self._create(request, parts[0], body)
        if request.method == "PUT" and len(parts) == 2:
            return self._update(parts[0], parts[1], body)
        return self._json(404, outcome(f"no route for {request.method} {request.path}", code="not-supported"))

    def _read(self, type: str, id: str) -> web.Response:
        resource = self.store.get(type, {}).get(id)
        if resource is None:
            return self._json(404, outcome(f"{type}/{id} is not known", code="not-found"))
        return self._json(200, resource)

    def _matching(self, type: str, query: str) -> list[dict[str, Any]]:
        params = dict(parse_qsl(query))
        wanted = params.get("identifier")
        found = list(self.store.get(type, {}).values())
        if wanted is not None:
            system, _, value = wanted.rpartition("|")
            found = [
                r for r in found
                if any(i.get("value") == value and (not system or i.get("system") == system) for i in r.get("identifier", []))
            ]  # fmt: skip
        return found

    def _search(self, request: web.Request, type: str) -> web.Response:
        query = {k: v for k, v in request.query.items() if k != "_page"}
        found = self._matching(type, "&".join(f"{k}={v}" for k, v in query.items()))
        page = int(request.query.get("_page", "1"))
        chunk = found[(page - 1) * self.page_size : page * self.page_size]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in chunk],
        }
        if page * self.page_size < len(found):
            url = request.url.with_query({**query, "_page": str(page + 1)})
            bundle["link"] = [{"relation": "next", "url": str(url)}]
        return self._json(200, bundle)

    def _create(self, request: web.Request, type: str, body: bytes) -> web.Response:
        resource = json.loads(body, parse_float=Decimal)
        if (refused := self.reject(resource)) is not None:
            return self._json(422, refused)
        condition = request.headers.get("If-None-Exist")
        if condition is not None:
            matches = self._matching(type, condition)
            if len(matches) > 1:
                return self._json(
                    412, outcome(f"{len(matches)} resources match {condition}", code="duplicate")
                )
            if matches:
                return self._json(
                    200, matches[0], {"Location": f"{self.base_url}/{type}/{matches[0]['id']}/_history/1"}
                )
        id = str(next(self._ids))
        self.store.setdefault(type, {})[id] = {**resource, "id": id}
        return self._json(201, self.store[type][id], {"Location": f"{self.base_url}/{type}/{id}/_history/1"})

    def _update(self, type: str, id: str, body: bytes) -> web.Response:
        resource = json.loads(body, parse_float=Decimal)
        if (refused := self.reject(resource)) is not None:
            return self._json(422, refused)
        created = id not in self.store.get(type, {})
        self.store.setdefault(type, {})[id] = resource
        return self._json(201 if created else 200, resource)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        text = None if body is None else dumps_with_decimals(body)
        return web.Response(status=status, text=text, content_type=FHIR_JSON, headers=headers)


def dumps_with_decimals(value: Any) -> str:
    """JSON with each Decimal written as its digits (independently of pumpgw's own writer):
    Decimals become placeholder strings for ``json.dumps``, then the placeholders the digits."""
    decimals: list[str] = []

    def swap(v: Any) -> Any:
        if isinstance(v, Decimal):
            decimals.append(str(v))
            return f"@@decimal{len(decimals) - 1}@@"
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    text = json.dumps(swap(value))
    for i, digits in enumerate(decimals):
        text = text.replace(f'"@@decimal{i}@@"', digits, 1)
    return text
