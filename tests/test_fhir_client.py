"""The FHIR REST client (fhir/client.py) against a real aiohttp FHIR server on 127.0.0.1, port 0
(tests/fhir_server.py): retries only where safe, OperationOutcome errors, conditional create, TLS,
bearer tokens and SMART Backend Services with a JWT verified here with cryptography."""

from __future__ import annotations

import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhir_server import FhirTestServer, Scripted, outcome, verify_jwt
from hypothesis import given
from hypothesis import strategies as st
from part_harness import Sleeps
from tls_certs import make_pki

from pumpgw.fhir.client import (
    BearerToken,
    CreateResult,
    FhirAuthError,
    FhirClient,
    FhirResponseError,
    SmartBackendServices,
    dumps_json,
    identifier_query,
    loads_json,
)
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import ConfigError, FhirError

EVENT = "urn:pumpgw:event"


@pytest.fixture
async def server() -> AsyncIterator[FhirTestServer]:
    async with FhirTestServer() as s:
        yield s


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def client_for(server: FhirTestServer, sleeps: Sleeps, **kwargs: Any) -> FhirClient:
    kwargs.setdefault("timeout_s", 2.0)
    return FhirClient(server.base_url, sleep=sleeps, rand=lambda: 1.0, **kwargs)


def administration(event_id: str = "e1", rate: str = "4.00") -> dict[str, Any]:
    return {
        "resourceType": "MedicationAdministration",
        "id": event_id,
        "identifier": [{"system": EVENT, "value": event_id}],
        "status": "in-progress",
        "medicationCodeableConcept": {"text": "fentaNYL"},
        "subject": {"identifier": {"value": "MRN-1"}},
        "effectiveDateTime": "2026-11-22T03:19:16.123Z",
        "dosage": {
            "rateQuantity": {
                "value": Decimal(rate),
                "unit": "mL/h",
                "system": "http://unitsofmeasure.org",
                "code": "mL/h",
            }
        },
    }


# -- JSON ----------------------------------------------------------------------------------------


def test_decimals_are_written_digit_for_digit_and_floats_refused() -> None:
    assert (
        dumps_json({"v": Decimal("4.00"), "n": [1, True, None], "t": "µg"})
        == '{"v":4.00,"n":[1,true,null],"t":"µg"}'.encode()
    )
    assert loads_json(b'{"v": 4.00}')["v"].as_tuple() == Decimal("4.00").as_tuple()
    with pytest.raises(TypeError, match=r"\$\.dosage\.rate: 4\.0 is a binary float"):
        dumps_json({"dosage": {"rate": 4.0}})
    with pytest.raises(ValueError, match="not a finite number"):
        dumps_json({"v": Decimal("NaN")})
    with pytest.raises(ValueError, match="NaN is not a JSON number"):
        loads_json(b'{"v": NaN}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.decimals(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)  # fmt: skip


@given(json_values)
def test_json_round_trips_exactly(value: Any) -> None:
    back = loads_json(dumps_json(value))
    assert back == value
    assert json.loads(dumps_json(value)) is not None or value is None  # plain JSON for any reader


def test_identifier_query_keeps_the_token_readable_and_escapes_the_rest() -> None:
    assert identifier_query(EVENT, "0193-ab") == "identifier=urn:pumpgw:event|0193-ab"
    assert identifier_query("http://x/y", "a&b c") == "identifier=http://x/y|a%26b+c"


# -- reads, searches, creates --------------------------------------------------------------------


async def test_read_returns_the_resource_with_exact_decimals(server: FhirTestServer, sleeps: Sleeps) -> None:
    server.store["MedicationAdministration"] = {"e1": administration()}
    async with client_for(server, sleeps) as client:
        resource = await client.read("MedicationAdministration", "e1")
    value = resource["dosage"]["rateQuantity"]["value"]
    assert isinstance(value, Decimal)
    assert str(value) == "4.00"
    [seen] = server.fhir_requests()
    assert seen.method == "GET"
    assert seen.path == "/fhir/MedicationAdministration/e1"
    assert seen.headers["Accept"] == "application/fhir+json"


async def test_read_of_a_missing_resource_names_the_request_and_the_server_s_words(
    server: FhirTestServer, sleeps: Sleeps
) -> None:
    async with client_for(server, sleeps) as client:
        with pytest.raises(FhirResponseError) as caught:
            await client.read("Patient", "nope")
    assert caught.value.status == 404
    assert str(caught.value) == "FHIR GET Patient/nope (HTTP 404): error not-found: Patient/nope is not known"
    assert sleeps.delays == []  # a 404 is an answer, not a failure to retry


async def test_an_invalid_id_is_refused_before_anything_is_sent(
    server: FhirTestServer, sleeps: Sleeps
) -> None:
    async with client_for(server, sleeps) as client:
        with pytest.raises(FhirError, match="not a valid FHIR id"):
            await client.read("Patient", "../admin")
    assert server.requests == []


async def test_create_sends_fhir_json_without_the_id_and_reads_the_location(
    server: FhirTestServer, sleeps: Sleeps
) -> None:
    async with client_for(server, sleeps) as client:
        result = await client.create(administration())
    assert result == CreateResult(
        201, f"{server.base_url}/MedicationAdministration/1/_history/1", "1", created=True
    )
    [seen] = server.fhir_requests("POST")
    assert seen.headers["Content-Type"] == "application/fhir+json"
    assert b'"value":4.00' in seen.body  # the Decimal digit for digit, not 4.0 or "4.00"
    assert "id" not in seen.json()
    assert "If-None-Exist" not in seen.headers


async def test_conditional_create_answers_201_then_200_and_keeps_one_copy(
    server: FhirTestServer, sleeps: Sleeps
) -> None:
    query = identifier_query(EVENT, "e1")
    async with client_for(server, sleeps) as client:
        first = await client.create(administration(), if_none_exist=query)
        second = await client.create(administration(), if_none_exist=query)
    assert (first.status, first.created) == (201, True)
    assert (second.status, second.created) == (200, False)
    assert second.resource_id == first.resource_id == "1"
    assert len(server.store["MedicationAdministration"]) == 1
    assert server.fhir_requests("POST")[0].headers["If-None-Exist"] == "identifier=urn:pumpgw:event|e1"


async def test_conditional_create_matching_several_is_an_error(
    server: FhirTestServer, sleeps: Sleeps
) -> None:
    server.store["MedicationAdministration"] = {"a": administration("e1"), "b": administration("e1")}
    async with client_for(server, sleeps) as client:
        with pytest.raises(FhirResponseError) as caught:
            await client.create(administration(), if_none_exist=identifier_query(EVENT, "e1"))
    assert caught.value.status == 412
    assert "several resources match the If-None-Exist query" in str(caught.value)


async def test_a_422_operation_outcome_becomes_a_clear_message(
    server: FhirTestServer, sleeps: Sleeps
) -> None:
    server.reject = lambda resource: outcome(
        "Patient with identifier MRN-1 is not known", "MedicationAdministration.subject"
    )
    async with client_for(server, sleeps) as client:
        with pytest.raises(FhirResponseError) as caught:
            await client.create(administration(), if_none_exist=identifier_query(EVENT, "e1"))
    error = caught.value
    assert error.status == 422
    assert str(error) == (
        "FHIR POST MedicationAdministration If-None-Exist: identifier=urn:pumpgw:event|e1 (HTTP 422): "
        "error processing at MedicationAdministration.subject: Patient with identifier MRN-1 is not known"
    )
    assert [i.expression for i in error.issues] == [("MedicationAdministration.subject",)]
    assert len(server.fhir_requests()) == 1  # a refusal is not retried


async def test_an_error_page_that_is_not_fhir_is_quoted(server: FhirTestServer, sleeps: Sleeps) -> None:
    server.then(Scripted(500, raw=b"<html><body>Internal\x00 error</body></html>"))
    async with client_for(server, sleeps) as client:
        with pytest.raises(
            FhirResponseError, match=r"\(HTTP 500\): <html><body>Internal  error</body></html>"
        ):
            await client.create(administration())


async def test_answers_our_code_cannot_read_are_fhir_errors_not_crashes(
    server: FhirTestServer, sleeps: Sleeps
) -> None:
    """Found in review: an error body nested 100,000 deep (RecursionError) and a Location that is
    not a URL (yarl's ValueError) escaped as non-FHIR errors, which ended the EPR's outbox part."""
    server.then(Scripted(422, raw=b"[" * 100_000 + b"]" * 100_000))
    async with client_for(server, sleeps) as client:
        with pytest.raises(FhirResponseError, match=r"HTTP 422"):
            await client.create(administration())
    server.then(Scripted(201, body={"resourceType": "MedicationAdministration", "id": "m1"},
                         headers={"Location": "http://[::1/broken"}))  # fmt: skip
    async with client_for(server, sleeps) as client:
        result = await client.create(administration())
    assert (result.status, result.resource_id) == (201, "m1")  # the id from the body instead


# -- retries: only where safe --------------------------------------------------------------------


async def test_a_get_is_retried_after_503_with_capped_backoff(server: FhirTestServer, sleeps: Sleeps) -> None:
    server.store["Patient"] = {"p1": {"resourceType": "Patient", "id": "p1"}}
    server.then(Scripted(503, outcome("busy")), Scripted(502))
    async with client_for(server, sleeps, retries=2, backoff_base_s=0.25, backoff_cap_s=0.3) as client:
        patient = await client.read("Patient", "p1")
    assert patient["id"] == "p1"
    assert len(server.fhir_requests("GET")) == 3
    assert sleeps.delays == [0.25, 0.3]  # doubling, capped (rand pinned to the ceiling)


async def test_a_get_gives_up_after_its_retries(server: FhirTestServer, sleeps: Sleeps) -> None:
    server.then(*[Scripted(503, outcome("overloaded")) for _ in range(3)])
    async with client_for(server, sleeps, retries=2) as client:
        with pytest.raises(FhirResponseError) as caught:
            await client.read("Patient", "p1")
    assert caught.value.status == 503
    assert "overloaded" in str(caught.value)
    assert len(server.fhir_requests("GET")) == 3


async def test_a_get_that_times_out_is_retried(server: FhirTestServer, sleeps: Sleeps) -> None:
    server.store["Patient"] = {"p1": {"resourceType": "Patient", "id": "p1"}}
    server.then(Scripted(hang=True))
    async with client_for(server, sleeps, timeout_s=0.2, retries=1) as client:
        assert (await client.read("Patient", "p1"))["id"] == "p1"
    assert len(server.fhir_requests("GET")) == 2


async def test_a_get_that_keeps_timing_out_says_so(server: FhirTestServer, sleeps: Sleeps) -> None:
    server.then(Scripted(hang=True), Scripted(hang=True))
    async with client_for(server, sleeps, timeout_s=0.2, retries=1) as client:
        with pytest.raises(FhirError) as caught:
            await client.read("Patient", "p1")
    assert caught.value.status is None
    assert str(caught.value) == "FHIR GET Patient/p1: no answer within 0.2 s (after 2 attempts)"


async def test_a_plain_post_is_never_retried(server: FhirTestServer, sleeps: Sleeps) -> None:
    server.then(Scripted(503), Scripted(hang=True))
    async with client_for(server, sleeps, timeout_s=0.2, retries=3) as client:
        with pytest.raises(FhirResponseError) as busy:
            await client.create(administration())
        with pytest.raises(FhirError) as timed_out:
            await client.create(administration())
    assert busy.value.status == 503
    assert "may have been applied" in str(timed_out.value)
    assert len(server.fhir_requests("POST")) == 2  # one each: no retries
    assert sleeps.delays == []


async def test_a_conditional_create_whose_answer_was_lost_is_retried_and_not_duplicated(
    server: FhirTestServer, sleeps: Sleeps
) -> None:
    # The server creates the resource, then the answer is lost (a 502 from a proxy).
    server.then(Scripted(502, apply=True))
    async with client_for(server, sleeps) as client:
        result = await client.create(administration(), if_none_exist=identifier_query(EVENT, "e1"))
    assert (result.status, result.created) == (200, False)  # the retry found the first one
    assert len(server.fhir_requests("POST")) == 2
    assert len(server.store["MedicationAdministration"]) == 1


async def test_connection_refused_is_reported_with_the_address(sleeps: Sleeps) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with FhirClient(f"http://127.0.0.1:{port}/fhir", sleep=sleeps, retries=1) as client:
        with pytest.raises(FhirError, match=rf"cannot connect to 127\.0\.0\.1:{port}.*\(after 2 attempts\)"):
            await client.read("Patient", "p1")


def test_a_bad_base_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        FhirClient("ftp://epr/fhir")


# -- search --------------------------------------------------------------------------------------


async def test_search_follows_next_links(sleeps: Sleeps) -> None:
    async with FhirTestServer(page_size=2) as server:
        server.store["Observation"] = {
            str(i): {"resourceType": "Observation", "id": str(i)} for i in range(5)
        }
        async with client_for(server, sleeps) as client:
            found = await client.search("Observation", {"status": "final"})
    assert [r["id"] for r in found] == ["0", "1", "2", "3", "4"]
    pages = server.fhir_requests("GET")
    assert len(pages) == 3
    assert pages[0].query == {"status": "final"}
    assert pages[2].query == {"status": "final", "_page": "3"}


async def test_search_is_bounded(sleeps: Sleeps) -> None:
    async with FhirTestServer(page_size=1) as server:
        server.store["Observation"] = {
            str(i): {"resourceType": "Observation", "id": str(i)} for i in range(5)
        }
        async with client_for(server, sleeps, max_pages=2) as client:
            with pytest.raises(FhirError, match="more than 2 pages"):
                await client.search("Observation")
    assert len(server.fhir_requests("GET")) == 2


async def test_search_leaves_out_included_resources_and_never_follows_another_origin(
    server: FhirTestServer, sleeps: Sleeps
) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "MedicationRequest", "id": "m1"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Patient", "id": "p1"}, "search": {"mode": "include"}},
        ],
    }
    server.then(Scripted(200, bundle))
    server.then(
        Scripted(200, {**bundle, "link": [{"relation": "next", "url": "http://elsewhere.invalid/fhir?p=2"}]})
    )
    async with client_for(server, sleeps) as client:
        assert [r["id"] for r in await client.search("MedicationRequest")] == ["m1"]
        with pytest.raises(FhirError, match="the next page is on another server"):
            await client.search("MedicationRequest")


# -- TLS -----------------------------------------------------------------------------------------


async def test_tls_with_the_hospital_ca(tmp_path: Path, sleeps: Sleeps) -> None:
    pki = make_pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    async with FhirTestServer(ssl_context=server_ctx) as server:
        server.store["Patient"] = {"p1": {"resourceType": "Patient", "id": "p1"}}
        trusted = ssl.create_default_context(cafile=str(pki.ca_cert))
        async with client_for(server, sleeps, ssl=trusted) as client:
            assert (await client.read("Patient", "p1"))["id"] == "p1"
        wrong_ca = ssl.create_default_context(cafile=str(pki.other_ca_cert))
        async with client_for(server, sleeps, ssl=wrong_ca, retries=2) as client:
            with pytest.raises(FhirError, match="TLS certificate is not trusted") as caught:
                await client.read("Patient", "p1")
    assert caught.value.status is None
    assert sleeps.delays == []  # a certificate that does not verify is not retried
    assert server.base_url.startswith("https://")


# -- bearer token in a file ----------------------------------------------------------------------


async def test_a_bearer_token_file_is_read_for_every_request(
    server: FhirTestServer, sleeps: Sleeps, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text("alpha-secret\n")
    server.store["Patient"] = {"p1": {"resourceType": "Patient", "id": "p1"}}
    server.tokens = {"alpha-secret"}
    auth = BearerToken(token_file)
    async with client_for(server, sleeps, auth=auth) as client:
        await client.read("Patient", "p1")
        token_file.write_text("beta-secret")  # rotated by whatever renews it
        server.tokens = {"beta-secret"}
        await client.read("Patient", "p1")
        server.tokens = {"gamma-secret"}  # the server moved on; the file did not
        with pytest.raises(FhirResponseError) as caught:
            await client.read("Patient", "p1")
    sent = [r.headers["Authorization"] for r in server.fhir_requests()]
    assert sent == ["Bearer alpha-secret", "Bearer beta-secret", "Bearer beta-secret"]  # 401 not repeated
    assert caught.value.status == 401
    assert "secret" not in str(caught.value)
    assert "secret" not in caplog.text
    assert "secret" not in repr(auth)


async def test_a_missing_token_file_is_named_not_shown(
    server: FhirTestServer, sleeps: Sleeps, tmp_path: Path
) -> None:
    async with client_for(server, sleeps, auth=BearerToken(tmp_path / "absent")) as client:
        with pytest.raises(FhirAuthError, match=r"cannot read the token file .*absent: No such file"):
            await client.read("Patient", "p1")
    assert server.requests == []


# -- SMART Backend Services ----------------------------------------------------------------------


def write_key(path: Path, algorithm: str) -> Any:
    key: Any = (
        ec.generate_private_key(ec.SECP384R1())
        if algorithm == "ES384"
        else rsa.generate_private_key(65537, 2048)
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return key.public_key()


@pytest.fixture(params=["ES384", "RS384"])
async def smart(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[FhirTestServer, SmartBackendServices, FakeClock]]:
    public_key = write_key(tmp_path / "key.pem", request.param)
    clock = FakeClock()
    async with FhirTestServer(public_key=public_key) as server:
        server.tokens = set()  # a token is required
        server.store["Patient"] = {"p1": {"resourceType": "Patient", "id": "p1"}}
        auth = SmartBackendServices(
            server.token_url,
            "pumpgw-test",
            tmp_path / "key.pem",
            "key-1",
            "system/MedicationAdministration.write",
            clock=clock,
        )
        assert auth.algorithm == request.param
        yield server, auth, clock


async def test_smart_client_assertion_verifies_and_has_the_required_claims(
    smart: tuple[FhirTestServer, SmartBackendServices, FakeClock], sleeps: Sleeps
) -> None:
    server, auth, clock = smart
    async with client_for(server, sleeps, auth=auth) as client:
        await client.read("Patient", "p1")
    [token_request] = [r for r in server.requests if r.path == "/token"]
    form = json.loads(token_request.body)
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == "system/MedicationAdministration.write"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    # Verified here with the public key (cryptography), independently of the server's acceptance.
    header, claims = verify_jwt(form["client_assertion"], server.public_key)
    assert header == {"alg": auth.algorithm, "kid": "key-1", "typ": "JWT"}
    now = int(clock.wall().timestamp())
    assert claims["iss"] == claims["sub"] == "pumpgw-test"
    assert claims["aud"] == server.token_url
    assert now < claims["exp"] <= now + 300
    assert len(claims["jti"]) >= 16
    # A tampered assertion does not verify.
    head, payload, signature = form["client_assertion"].split(".")
    forged = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    with pytest.raises(InvalidSignature):
        verify_jwt(f"{head}.{forged}.{signature}", server.public_key)
    assert server.fhir_requests()[0].headers["Authorization"] == "Bearer token-1"


async def test_smart_token_is_cached_then_renewed_before_it_expires(
    smart: tuple[FhirTestServer, SmartBackendServices, FakeClock], sleeps: Sleeps
) -> None:
    server, auth, clock = smart
    async with client_for(server, sleeps, auth=auth) as client:
        await client.read("Patient", "p1")
        await client.read("Patient", "p1")
        clock.advance(300 - 30 - 1)
        await client.read("Patient", "p1")
        assert len(server.assertions) == 1  # one token for all three
        clock.advance(1)  # within the refresh margin of expiry
        await client.read("Patient", "p1")
    assert len(server.assertions) == 2
    assert len({claims["jti"] for _, claims in server.assertions}) == 2  # a fresh jti each time
    sent = [r.headers["Authorization"] for r in server.fhir_requests()]
    assert sent == ["Bearer token-1"] * 3 + ["Bearer token-2"]


async def test_smart_401_fetches_a_new_token_once_and_repeats_the_request(
    smart: tuple[FhirTestServer, SmartBackendServices, FakeClock], sleeps: Sleeps
) -> None:
    server, auth, _ = smart
    async with client_for(server, sleeps, auth=auth) as client:
        await client.read("Patient", "p1")
        assert server.tokens is not None
        server.tokens.clear()  # revoked by the server
        assert (await client.create(administration())).created  # even a plain POST: a 401 applied nothing
    sent = [(r.method, r.headers["Authorization"]) for r in server.fhir_requests()]
    assert sent == [("GET", "Bearer token-1"), ("POST", "Bearer token-1"), ("POST", "Bearer token-2")]
    assert len(server.store["MedicationAdministration"]) == 1


async def test_smart_token_refused_is_a_clear_error_without_secrets(tmp_path: Path, sleeps: Sleeps) -> None:
    write_key(tmp_path / "key.pem", "ES384")
    other = write_key(tmp_path / "other.pem", "ES384")  # the server knows another key
    async with FhirTestServer(public_key=other) as server:
        auth = SmartBackendServices(
            server.token_url, "pumpgw-test", tmp_path / "key.pem", "k", "system/*.read"
        )
        async with client_for(server, sleeps, auth=auth) as client:
            with pytest.raises(FhirAuthError) as caught:
                await client.read("Patient", "p1")
    assert caught.value.status == 401
    assert str(caught.value) == (
        f"FHIR token request to {server.token_url} (HTTP 401): invalid_client: signature does not verify"
    )
    assert server.fhir_requests() == []


def test_smart_refuses_a_key_that_cannot_sign_es384_or_rs384(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "p256.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match="P-384"):
        SmartBackendServices("https://x/token", "c", tmp_path / "p256.pem", "k", "s")
    with pytest.raises(ConfigError, match="assertion_lifetime_s"):
        SmartBackendServices(
            "https://x/token", "c", tmp_path / "p256.pem", "k", "s", assertion_lifetime_s=600
        )
