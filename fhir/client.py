"""An async FHIR R4 REST client (aiohttp): read, search, conditional create, update.

Retries only where a repeat cannot do harm:

- ``GET`` (read, search: idempotent) and ``PUT`` (update by id: idempotent) are retried on a
  connection error, a timeout, and HTTP 408, 429, 502, 503 and 504, up to ``retries`` times with
  capped, jittered backoff (``pumpgw.gateway.backoff``);
- a *conditional* create (``If-None-Exist: identifier=system|value``) is retried the same way: if
  the first attempt did create the resource and only the answer was lost, the retry finds it
  (``200``) instead of creating a second one;
- a plain ``POST`` is never retried: a timeout leaves it unknown whether the server applied it,
  and the error says so.
- ``401``: the credential is renewed once (:class:`SmartBackendServices` fetches a new token,
  :class:`BearerToken` re-reads its file) and the request repeated once; a server that refused it
  has not applied it.

Every failure is a :class:`~pumpgw.gateway.errors.FhirError` naming the request (``GET
Patient/123``); an HTTP error status is a :class:`FhirResponseError` carrying the status and the
OperationOutcome's issues (severity, code, expression, diagnostics) in its message. A connection
failure or timeout has ``status`` None. No credential (the token endpoint refused, the token file
cannot be read) is a :class:`FhirAuthError`: the setup's fault, not the request's.

JSON: requests and answers are ``application/fhir+json``. Answers are read with exact decimals
(:func:`loads_json`: ``4.00`` is ``Decimal("4.00")``); requests are written with :func:`dumps_json`,
which writes a Decimal digit for digit (``json.dumps`` refuses Decimals, and floats are refused
here: a clinical number must be exact).

Credentials: a token is sent only to the configured server's origin (a search ``next`` link to
another host is refused), and never logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import re
import ssl as _ssl
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self
from urllib.parse import urlencode

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from yarl import URL

from pumpgw.gateway.backoff import Backoff
from pumpgw.gateway.clock import Clock, SystemClock
from pumpgw.gateway.errors import ConfigError, FhirError

log = logging.getLogger(__name__)

FHIR_JSON: Final = "application/fhir+json"
#: Statuses after which a request that is safe to repeat is repeated.
RETRY_STATUSES: Final = frozenset({408, 429, 502, 503, 504})
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_LOCATION_ID = re.compile(r"/(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")


# -- JSON with exact decimals --------------------------------------------------------------------


def loads_json(data: bytes | str) -> Any:
    """JSON with every non-integer number as an exact ``Decimal``; NaN and Infinity refused."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    if _nesting(data) > MAX_JSON_DEPTH:
        # Refused before parsing: json.loads would raise RecursionError, and a RecursionError
        # caught in a thread leaves CPython 3.11's parser in a bad state for that thread.
        raise ValueError(f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep")
    return json.loads(data, parse_float=Decimal, parse_constant=no_constant)


#: Deeper than any FHIR resource (a Bundle of contained resources is well under 30 levels).
MAX_JSON_DEPTH: Final = 100
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _nesting(data: bytes | str) -> int:
    """The deepest nesting of arrays and objects in ``data``, outside strings (0 when there are
    too few brackets for it to matter)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot be deeper than that: the usual answer, found without a scan
    brackets = _JSON_STRING.sub(b"", raw).translate(None, delete=bytes(set(range(256)) - set(b"[]{}")))
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def dumps_json(value: Any) -> bytes:
    """Compact UTF-8 JSON; a ``Decimal`` is written as its digits (``Decimal("4.00")`` → ``4.00``).
    Raises TypeError for a float or a value JSON cannot hold, ValueError for a non-finite Decimal;
    the message names where (``$.dosage.rateQuantity.value``)."""
    out: list[str] = []
    try:
        _encode(value, out)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{_where_unsendable(value, '$') or '$'}: {exc}") from None
    return "".join(out).encode()


_quote: Final[Callable[[str], str]] = json.encoder.encode_basestring  # json's own (C) escaper


def _encode(value: Any, out: list[str]) -> None:
    # Exact types first (the common case, and fast); subclasses (a StrEnum) after.
    kind = type(value)
    if kind is str:
        out.append(_quote(value))
    elif kind is dict:
        out.append("{")
        first = True
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"key {key!r} is not text")
            if not first:
                out.append(",")
            first = False
            out.append(_quote(key))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif kind is list or kind is tuple:
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif kind is Decimal:
        if not value.is_finite():
            raise ValueError(f"{value} is not a finite number")
        out.append(str(value))
    elif value is None:
        out.append("null")
    elif value is True or value is False:
        out.append("true" if value else "false")
    elif kind is int:
        out.append(str(value))
    elif isinstance(value, str):
        out.append(_quote(str(value)))
    elif isinstance(value, float):
        raise TypeError(f"{value!r} is a binary float; clinical numbers are sent as Decimal")
    elif isinstance(value, int):
        out.append(str(int(value)))
    else:
        raise TypeError(f"{kind.__name__} is not JSON")


def _where_unsendable(value: Any, path: str) -> str | None:
    """The path of the first value :func:`_encode` refuses (only asked after it refused one)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return path
            if (found := _where_unsendable(item, f"{path}.{key}")) is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if (found := _where_unsendable(item, f"{path}[{i}]")) is not None:
                return found
        return None
    if isinstance(value, Decimal):
        return None if value.is_finite() else path
    if (
        value is None
        or isinstance(value, str | bool)
        or (isinstance(value, int) and not isinstance(value, float))
    ):
        return None
    return path


# -- errors --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome issue, as the server sent it."""

    severity: str | None
    code: str | None
    diagnostics: str | None
    expression: tuple[str, ...]

    def __str__(self) -> str:
        head = " ".join(p for p in (self.severity, self.code) if p) or "issue"
        where = f" at {', '.join(self.expression)}" if self.expression else ""
        return f"{head}{where}: {self.diagnostics or 'no details'}"


class FhirResponseError(FhirError):
    """The server answered ``status`` (an error): ``issues`` are its OperationOutcome's, if any."""

    def __init__(self, what: str, status: int, detail: str, issues: Sequence[Issue] = ()) -> None:
        self.issues = tuple(issues)
        super().__init__(what, detail, status=status)


class FhirAuthError(FhirError):
    """No credential could be had (the token endpoint refused or failed, the token file is
    unreadable): the fault of the setup, never of the request it was for. ``status`` is the token
    endpoint's answer, if it answered."""


def _issues(body: Any) -> list[Issue]:
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    found = []
    for issue in body.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
        text = issue.get("diagnostics") or (details or {}).get("text")
        where = [e for e in (issue.get("expression") or issue.get("location") or []) if isinstance(e, str)]
        found.append(
            Issue(
                severity=_str_or_none(issue.get("severity")),
                code=_str_or_none(issue.get("code")),
                diagnostics=_str_or_none(text),
                expression=tuple(where),
            )
        )
    return found


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _printable(data: bytes, limit: int = 200) -> str:
    text = data[:limit].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text + ("..." if len(data) > limit else "")


# -- authorisation -------------------------------------------------------------------------------


class Auth(Protocol):
    """Supplies the ``Authorization`` header of each request."""

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        """The header value to send now (``Bearer ...``)."""
        ...

    async def refresh(self, session: aiohttp.ClientSession, rejected: str) -> bool:
        """The server refused ``rejected`` (401): get a new credential. True if there is one."""
        ...


class BearerToken:
    """A bearer token kept in a file (written by whatever renews it), read again for every
    request so a rotated token is used at once. The token is never logged."""

    def __init__(self, token_file: Path) -> None:
        self.token_file = token_file

    def __repr__(self) -> str:
        return f"BearerToken(token_file={str(self.token_file)!r})"

    def _read(self) -> str:
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise FhirAuthError(
                "authorization", f"cannot read the token file {self.token_file}: {exc.strerror}"
            ) from None
        if not token or any(c.isspace() or not c.isprintable() for c in token):
            raise FhirAuthError("authorization", f"the token file {self.token_file} does not hold one token")
        return f"Bearer {token}"

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        return self._read()

    async def refresh(self, session: aiohttp.ClientSession, rejected: str) -> bool:
        return self._read() != rejected


class SmartBackendServices:
    """SMART Backend Services (HL7 SMART App Launch 2.x, "Backend Services"): the OAuth 2.0
    client-credentials grant, authenticated with a JWT signed by the gateway's private key
    (``private_key_jwt``: RS384 for an RSA key, ES384 for a P-384 EC key).

    The JWT is built here with ``cryptography`` (header.payload.signature, base64url): ``iss`` and
    ``sub`` the client id, ``aud`` the token URL, ``exp`` at most 5 minutes ahead, a fresh ``jti``
    every time, ``kid`` the key id the server knows the public key by. The access token is kept
    until ``refresh_margin_s`` before it expires (or until a 401), and never logged.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        private_key_file: Path,
        key_id: str,
        scope: str,
        *,
        clock: Clock | None = None,
        assertion_lifetime_s: int = 300,
        refresh_margin_s: float = 30.0,
    ) -> None:
        if not 0 < assertion_lifetime_s <= 300:
            raise ConfigError(
                "SMART backend services", "assertion_lifetime_s", assertion_lifetime_s, "1..300 seconds"
            )
        self.token_url = token_url
        self.client_id = client_id
        self.key_id = key_id
        self.scope = scope
        self._clock = clock or SystemClock()
        self._lifetime = assertion_lifetime_s
        self._margin = refresh_margin_s
        self._key, self.algorithm = _load_signing_key(private_key_file)
        self._header: str | None = None
        self._expires_at: float | None = None  # monotonic; None: until refused
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SmartBackendServices(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def client_assertion(self) -> str:
        """A fresh signed JWT for the token request."""
        now = int(self._clock.wall().timestamp())
        header = {"alg": self.algorithm, "kid": self.key_id, "typ": "JWT"}
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + self._lifetime,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        signing_input = f"{_b64(_json_bytes(header))}.{_b64(_json_bytes(claims))}".encode("ascii")
        return f"{signing_input.decode('ascii')}.{_b64(self._sign(signing_input))}"

    def _sign(self, data: bytes) -> bytes:
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(data, padding.PKCS1v15(), hashes.SHA384())
        der = self._key.sign(data, ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)  # JWS wants r || s, each 48 bytes for P-384 (RFC 7518 §3.4)
        return r.to_bytes(48, "big") + s.to_bytes(48, "big")

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        async with self._lock:
            if self._header is None or (
                self._expires_at is not None and self._clock.monotonic() >= self._expires_at
            ):
                self._header = await self._fetch(session)
            return self._header

    async def refresh(self, session: aiohttp.ClientSession, rejected: str) -> bool:
        async with self._lock:
            if self._header == rejected:  # not renewed meanwhile by another request
                self._header = await self._fetch(session)
            return self._header != rejected

    async def _fetch(self, session: aiohttp.ClientSession) -> str:
        what = f"token request to {self.token_url}"
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": self.client_assertion(),
        }
        started = self._clock.monotonic()
        try:
            async with session.post(
                self.token_url, data=form, headers={"Accept": "application/json"}
            ) as resp:
                body = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise FhirAuthError(what, _transport_failure(exc)) from None
        try:
            answer = loads_json(body)
        except ValueError:
            answer = None
        if status != 200:
            detail = _printable(body)
            if isinstance(answer, dict) and isinstance(answer.get("error"), str):
                detail = f"{answer['error']}: {answer.get('error_description') or 'no description'}"
            raise FhirAuthError(what, detail, status=status)
        if not isinstance(answer, dict):
            raise FhirAuthError(what, "the answer is not a JSON object", status=status)
        token, kind, expires_in = (
            answer.get("access_token"),
            answer.get("token_type"),
            answer.get("expires_in"),
        )
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise FhirAuthError(what, "the answer has no access_token", status=status)
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise FhirAuthError(what, f"token_type {kind!r} is not bearer", status=status)
        if expires_in is not None and (
            isinstance(expires_in, bool) or not isinstance(expires_in, int | Decimal)
        ):
            raise FhirAuthError(what, f"expires_in {expires_in!r} is not a number of seconds", status=status)
        # No expires_in: use the token until the server refuses it.
        self._expires_at = None if expires_in is None else started + float(expires_in) - self._margin
        log.info("FHIR access token obtained", extra={"token_url": self.token_url, "expires_in": expires_in})
        return f"Bearer {token}"


def _load_signing_key(path: Path) -> tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, str]:
    source = "SMART backend services"
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(
            source, "private_key_file", str(path), f"a readable PEM key file ({exc.strerror})"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            source, "private_key_file", str(path), f"an unencrypted PEM private key ({exc})"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigError(source, "private_key_file", str(path), "an RSA key of 2048 bits or more")
        return key, "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise ConfigError(source, "private_key_file", str(path), "an EC key on P-384 (for ES384)")
        return key, "ES384"
    raise ConfigError(source, "private_key_file", str(path), "an RSA (RS384) or P-384 EC (ES384) private key")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_bytes(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# -- the client ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateResult:
    """The answer to a create: ``created`` False when a conditional create found the resource
    already there (200). ``resource_id`` from the Location header (or the returned resource)."""

    status: int
    location: str | None
    resource_id: str | None
    created: bool


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


class FhirClient:
    """A FHIR R4 server at ``base_url`` (``https://epr.example/fhir``). Use as ``async with``."""

    def __init__(
        self,
        base_url: str,
        *,
        ssl: _ssl.SSLContext | None = None,
        auth: Auth | None = None,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 4.0,
        max_pages: int = 20,
        max_response_bytes: int = 16 * 1024 * 1024,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        url = URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError("FHIR client", "base_url", base_url, "an http:// or https:// URL")
        if retries < 0 or max_pages < 1 or timeout_s <= 0:
            raise ConfigError(
                "FHIR client",
                "retries/max_pages/timeout_s",
                (retries, max_pages, timeout_s),
                "retries >= 0, max_pages >= 1, timeout_s > 0",
            )
        self.base_url = url
        self._ssl = ssl
        self._auth = auth
        self._timeout_s = timeout_s
        self._retries = retries
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._max_pages = max_pages
        self._max_bytes = max_response_bytes
        self._rand = rand
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                headers={"Accept": FHIR_JSON},
                trust_env=False,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- interactions ----------------------------------------------------------------------------

    async def read(self, type: str, id: str) -> dict[str, Any]:
        """``GET [base]/type/id``. Raises FhirError (404: not found, 410: deleted, ...)."""
        _check_type(type)
        if not _ID.match(id):
            raise FhirError(f"GET {type}/{id}", "not a valid FHIR id ([A-Za-z0-9-.]{1,64})")
        what = f"GET {type}/{id}"
        answer = await self._request("GET", self.base_url / type / id, what=what, idempotent=True)
        resource = self._resource(what, answer)
        if resource.get("resourceType") != type:
            raise FhirError(
                what, f"the server returned a {resource.get('resourceType')!r}", status=answer.status
            )
        return resource

    async def search(
        self, type: str, params: Mapping[str, str] | Sequence[tuple[str, str]] = ()
    ) -> list[dict[str, Any]]:
        """``GET [base]/type?params``: every matching resource, following the Bundle's ``next``
        links (at most ``max_pages`` pages; more is an error, never a silently short list).
        Resources the server adds with ``search.mode`` include or outcome are not returned."""
        _check_type(type)
        query = list(params.items()) if isinstance(params, Mapping) else list(params)
        url: URL = (self.base_url / type).with_query(query)
        what = f"GET {type}?{urlencode(query)}" if query else f"GET {type}"
        found: list[dict[str, Any]] = []
        for page in range(1, self._max_pages + 1):
            answer = await self._request("GET", url, what=what, idempotent=True)
            bundle = self._resource(what, answer)
            if bundle.get("resourceType") != "Bundle":
                raise FhirError(
                    what, f"expected a Bundle, got {bundle.get('resourceType')!r}", status=answer.status
                )
            for entry in bundle.get("entry") or []:
                if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                    continue
                search = entry.get("search")
                mode = search.get("mode") if isinstance(search, dict) else None
                if mode in (None, "match"):
                    found.append(entry["resource"])
            next_url = _next_link(bundle)
            if next_url is None:
                return found
            try:
                url = URL(next_url, encoded=True)
                origin = url.origin()
            except ValueError as exc:
                raise FhirError(what, f"the next page link {next_url[:200]!r} is not a URL ({exc})") from None
            if origin != self.base_url.origin():
                raise FhirError(
                    what,
                    f"the next page is on another server ({url.origin()}); credentials stay with "
                    f"{self.base_url.origin()}",
                )
            what = f"GET {type} (page {page + 1})"
        raise FhirError(what, f"more than {self._max_pages} pages of results; narrow the search")

    async def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None) -> CreateResult:
        """``POST [base]/type``. With ``if_none_exist`` (``identifier=system|value``, see
        :func:`identifier_query`) a conditional create: 201 created, 200 it already existed, 412
        several matched (FhirError). The resource's ``id`` is not sent (a server assigns it, and
        some refuse a create that carries one)."""
        type = resource.get("resourceType")
        if not isinstance(type, str):
            raise FhirError("POST", "the resource has no resourceType")
        _check_type(type)
        what = f"POST {type}" + (f" If-None-Exist: {if_none_exist}" if if_none_exist else "")
        body = self._encode(what, {k: v for k, v in resource.items() if k != "id"})
        headers = {"Content-Type": FHIR_JSON}
        if if_none_exist is not None:
            headers["If-None-Exist"] = if_none_exist
        answer = await self._request(
            "POST",
            self.base_url / type,
            what=what,
            idempotent=if_none_exist is not None,
            body=body,
            headers=headers,
        )
        if answer.status == 412:
            raise self._error(what, answer, prefix="several resources match the If-None-Exist query")
        if answer.status not in (200, 201):
            raise self._error(what, answer)
        return self._write_result(type, answer, created=answer.status == 201)

    async def update(self, resource: dict[str, Any]) -> CreateResult:
        """``PUT [base]/type/id`` (update, or create with that id where the server allows it).
        Idempotent, so retried like a GET. ``created`` is True for 201."""
        type, id = resource.get("resourceType"), resource.get("id")
        if not isinstance(type, str) or not isinstance(id, str) or not _ID.match(id):
            raise FhirError("PUT", "the resource needs a resourceType and a valid id")
        _check_type(type)
        what = f"PUT {type}/{id}"
        body = self._encode(what, resource)
        answer = await self._request(
            "PUT",
            self.base_url / type / id,
            what=what,
            idempotent=True,
            body=body,
            headers={"Content-Type": FHIR_JSON},
        )
        if answer.status not in (200, 201):
            raise self._error(what, answer)
        return self._write_result(type, answer, created=answer.status == 201)

    # -- the request loop ------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: URL,
        *,
        what: str,
        idempotent: bool,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        session = self._session
        if session is None:
            raise FhirError(what, "the client is not open (use 'async with FhirClient(...)')")
        backoff = Backoff(*self._backoff, rand=self._rand)
        refreshed = False
        attempt = 0
        while True:
            sent_headers = dict(headers or {})
            credential = None
            if self._auth is not None:
                credential = await self._auth.authorization(session)
                sent_headers["Authorization"] = credential
            try:
                answer = await self._exchange(session, method, url, body, sent_headers, what)
            except (TimeoutError, aiohttp.ClientError) as exc:
                failure = _transport_failure(exc, self._timeout_s)
                # A certificate that does not verify will not verify on the next attempt either.
                lasting = isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError)
                if idempotent and not lasting and attempt < self._retries:
                    attempt += 1
                    log.info("FHIR request failed; retrying", extra={"request": what, "error": failure})
                    await self._sleep(backoff.next())
                    continue
                if not idempotent and method == "POST":
                    failure += "; not retried: a plain create is not idempotent, so it may have been applied"
                elif attempt:
                    failure += f" (after {attempt + 1} attempts)"
                raise FhirError(what, failure) from None
            if answer.status == 401 and credential is not None and not refreshed and self._auth is not None:
                refreshed = True
                if await self._auth.refresh(session, credential):
                    continue
            if idempotent and answer.status in RETRY_STATUSES and attempt < self._retries:
                attempt += 1
                log.info("FHIR server busy; retrying", extra={"request": what, "status": answer.status})
                await self._sleep(backoff.next())
                continue
            return answer

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        body: bytes | None,
        headers: dict[str, str],
        what: str,
    ) -> _Answer:
        async with session.request(method, url, data=body, headers=headers, allow_redirects=False) as resp:
            if resp.content_length is not None and resp.content_length > self._max_bytes:
                raise FhirError(what, f"answer of {resp.content_length} bytes exceeds {self._max_bytes}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > self._max_bytes:
                    raise FhirError(what, f"answer larger than {self._max_bytes} bytes")
                chunks.append(chunk)
            return _Answer(resp.status, dict(resp.headers), b"".join(chunks))

    # -- answers ---------------------------------------------------------------------------------

    def _encode(self, what: str, resource: dict[str, Any]) -> bytes:
        try:
            return dumps_json(resource)
        except (TypeError, ValueError) as exc:
            raise FhirError(what, f"the resource cannot be sent: {exc}") from None

    def _resource(self, what: str, answer: _Answer) -> dict[str, Any]:
        if answer.status != 200:
            raise self._error(what, answer)
        try:
            resource = loads_json(answer.body)
        except ValueError as exc:
            raise FhirError(what, f"the answer is not JSON: {exc}", status=answer.status) from None
        if not isinstance(resource, dict):
            raise FhirError(what, "the answer is not a JSON object", status=answer.status)
        return resource

    def _error(self, what: str, answer: _Answer, prefix: str | None = None) -> FhirResponseError:
        try:
            body = loads_json(answer.body) if answer.body else None
        except ValueError:
            body = None
        issues = _issues(body)
        if issues:
            detail = "; ".join(map(str, issues))
        elif answer.body:
            detail = _printable(answer.body)
        else:
            detail = "no details"
        return FhirResponseError(what, answer.status, f"{prefix}: {detail}" if prefix else detail, issues)

    def _write_result(self, type: str, answer: _Answer, *, created: bool) -> CreateResult:
        location = answer.headers.get("Location") or answer.headers.get("Content-Location")
        resource_id = None
        try:
            location_path = URL(location).path if location is not None else None
        except ValueError:
            location_path = None  # not a URL: the id is looked for in the body instead
        if location_path is not None and (match := _LOCATION_ID.search(location_path)) is not None:
            resource_id = match["id"] if match["type"] == type else None
        if resource_id is None and answer.body:
            try:
                body = loads_json(answer.body)
            except ValueError:
                body = None
            if (
                isinstance(body, dict)
                and body.get("resourceType") == type
                and isinstance(body.get("id"), str)
            ):
                resource_id = body["id"]
        return CreateResult(answer.status, location, resource_id, created)


def identifier_query(system: str, value: str) -> str:
    """The search query for one identifier, for ``If-None-Exist``: ``identifier=system|value``
    (reserved characters percent-encoded; ``:``, ``/`` and ``|`` kept readable)."""
    return urlencode({"identifier": f"{system}|{value}"}, safe=":/|")


def _check_type(type: str) -> None:
    if not _TYPE.match(type):
        raise FhirError(type, "not a FHIR resource type name")


def _next_link(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def _transport_failure(exc: BaseException, timeout_s: float | None = None) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s" if timeout_s is not None else "no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"the server's TLS certificate is not trusted: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    return f"{type(exc).__name__}: {exc}"
