"""Drug-library keys, trust store, approvals: signing and verifying (pumpgw.gateway.library_signing)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pumpgw.gateway.errors import ConfigError, LibraryError, LibraryNotTrusted
from pumpgw.gateway.library import Library, parse_library
from pumpgw.gateway.library_signing import (
    Approval,
    Approvals,
    TrustedKey,
    TrustStore,
    approval_message,
    generate_key,
    key_id,
    load_private_key,
    make_trusted_key,
    parse_approvals,
    parse_public_key,
    parse_trust_store,
    public_key_of,
    public_key_text,
    render_approvals,
    render_trust_store,
    sign,
    verify,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "gateway" / "examples" / "drug-library.example.toml"
T1 = "2026-11-22T10:00:00Z"
T2 = "2026-11-22T11:30:00Z"


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    pem: bytes
    public: bytes

    @property
    def kid(self) -> str:
        return key_id(self.public)


def person(name: str) -> Person:
    pem, public = generate_key()
    return Person(name, pem, public)


@pytest.fixture(scope="module")
def alice() -> Person:
    return person("Alice Author")


@pytest.fixture(scope="module")
def bob() -> Person:
    return person("Bob Reviewer")


@pytest.fixture(scope="module")
def lib() -> Library:
    return parse_library(EXAMPLE.read_bytes(), str(EXAMPLE))


def store_of(*entries: tuple[Person, tuple[str, ...]]) -> TrustStore:
    return TrustStore(tuple(make_trusted_key(p.name, roles, p.public, "test") for p, roles in entries))


@pytest.fixture(scope="module")
def trust(alice: Person, bob: Person) -> TrustStore:
    return store_of((alice, ("author",)), (bob, ("reviewer",)))


def approve(lib: Library, author: Person, reviewer: Person) -> Approvals:
    approvals = sign(lib, author.pem, "author", author.name, T1)
    return sign(lib, reviewer.pem, "reviewer", reviewer.name, T2, approvals)


def raw_approval(lib: Library, p: Person, role: str, name: str | None = None) -> Approval:
    """An approval made directly with the key, bypassing sign()'s own refusals."""
    name = name or p.name
    key = serialization.load_pem_private_key(p.pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    sig = key.sign(approval_message(role, lib.hash, lib.version, name, T1))
    return Approval("author" if role == "author" else "reviewer", name, p.kid, T1, sig)


def reason(exc: pytest.ExceptionInfo[LibraryNotTrusted]) -> str:
    return exc.value.reason


# --- keys ---------------------------------------------------------------------------------------


def test_generated_key_is_pkcs8_pem_and_raw_public_key(alice: Person) -> None:
    assert alice.pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert len(alice.public) == 32
    assert public_key_of(alice.pem, "k") == alice.public
    assert alice.kid == "ed25519:" + hashlib.sha256(alice.public).hexdigest()[:16]
    assert re.fullmatch(r"ed25519:[0-9a-f]{16}", alice.kid)
    assert person("x").kid != alice.kid


def test_a_file_that_is_not_a_private_key_is_refused_without_showing_it(alice: Person) -> None:
    secret_looking = b"-----BEGIN PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ConfigError) as exc:
        load_private_key(secret_looking, "key.pem")
    assert "key.pem" in str(exc.value)
    assert "TOPSECRETMATERIAL" not in str(exc.value)
    assert "Ed25519 private key in PEM form" in str(exc.value)

    with pytest.raises(ConfigError, match="a public key"):
        load_private_key(public_key_text(alice.public).encode(), "alice.pub")


def test_an_encrypted_or_non_ed25519_key_is_refused_clearly() -> None:
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(ConfigError) as exc:
        load_private_key(encrypted, "enc.pem")
    assert "encrypted" in str(exc.value)
    assert encrypted.decode().splitlines()[1] not in str(exc.value)

    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ConfigError) as exc2:
        load_private_key(ec_pem, "ec.pem")
    assert "Ed25519" in str(exc2.value)
    assert ec_pem.decode().splitlines()[1] not in str(exc2.value)


def test_public_key_from_base64_or_pem_and_never_from_a_private_key(alice: Person) -> None:
    assert parse_public_key(public_key_text(alice.public) + "\n", "x") == alice.public
    pem = (
        Ed25519PublicKey.from_public_bytes(alice.public)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert parse_public_key(pem, "x") == alice.public
    with pytest.raises(ConfigError) as exc:
        parse_public_key(alice.pem.decode(), "alice.pem")
    assert "private key" in str(exc.value)
    assert alice.pem.decode().splitlines()[1] not in str(exc.value)
    with pytest.raises(ConfigError, match="decodes to 3 bytes"):
        parse_public_key("AAAA", "x")
    with pytest.raises(ConfigError, match="not valid base64"):
        parse_public_key("not base64!", "x")


# --- trust store --------------------------------------------------------------------------------


def test_trust_store_round_trips_through_toml(alice: Person, bob: Person) -> None:
    odd = person('Zoë "Q" O\'Brien \\ Ünal')
    store = store_of((alice, ("author", "reviewer")), (bob, ("reviewer",)), (odd, ("author",)))
    text = render_trust_store(store)
    assert text.startswith("#")
    again = parse_trust_store(text.encode(), "trust.toml")
    assert again == store
    assert again.get(odd.kid) is not None
    assert again.get(odd.kid).name == odd.name  # type: ignore[union-attr]
    assert again.get("ed25519:0000000000000000") is None


def _store_text(entries: list[dict[str, str]]) -> bytes:
    out = []
    for e in entries:
        out.append("[[keys]]")
        out += [f"{k} = {v}" for k, v in e.items()]
    return "\n".join(out).encode()


def _entry(p: Person, **over: str) -> dict[str, str]:
    entry = {
        "id": f'"{p.kid}"',
        "name": f'"{p.name}"',
        "roles": '["author"]',
        "public_key": f'"{public_key_text(p.public)}"',
    }
    entry.update(over)
    return entry


def test_trust_store_problems_name_the_key_path(alice: Person, bob: Person) -> None:
    carol = person("Carol")
    raw = _store_text(
        [
            _entry(alice),
            _entry(bob, public_key='"not-base64!"'),
            _entry(carol, public_key='"AAAA"'),
            _entry(person("Dan"), id='"ed25519:0123456789abcdef"'),
            _entry(alice, name='"Alice again"'),
            _entry(carol, roles='["author", "pharmacist"]'),
        ]
    )
    with pytest.raises(ConfigError) as exc:
        parse_trust_store(raw, "trust.toml")
    problems = {exc.value.key: exc.value} | {p.key: p for p in exc.value.also}
    assert set(problems) == {
        "keys[1].public_key",
        "keys[2].public_key",
        "keys[3].id",
        "keys[4].id",
        "keys[5].roles",
    }
    assert "not valid base64" in problems["keys[1].public_key"].expected
    assert "decodes to 3 bytes" in problems["keys[2].public_key"].expected
    assert problems["keys[3].id"].value == "ed25519:0123456789abcdef"
    assert "the id of this public_key" in problems["keys[3].id"].expected
    assert "also keys[0]" in problems["keys[4].id"].expected
    assert problems["keys[5].roles"].value == ["author", "pharmacist"]
    message = str(exc.value)
    assert message.startswith("trust.toml: keys[1].public_key")
    assert "keys[5].roles" in message


def test_trust_store_refuses_unknown_keys_and_bad_toml(alice: Person) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_trust_store(b'owner = "x"\n' + _store_text([_entry(alice, colour='"red"')]), "t.toml")
    keys = {exc.value.key, *(p.key for p in exc.value.also)}
    assert keys == {"owner", "keys[0].colour"}
    with pytest.raises(ConfigError, match="valid TOML"):
        parse_trust_store(b"[[keys]\n", "t.toml")
    assert parse_trust_store(b"", "empty.toml") == TrustStore()


def test_trust_store_add_and_remove(alice: Person, bob: Person) -> None:
    store = store_of((alice, ("author",)))
    entry = make_trusted_key(bob.name, ["reviewer"], bob.public, "t")
    bigger = store.with_key(entry)
    assert [k.id for k in bigger.keys] == [alice.kid, bob.kid]
    with pytest.raises(ConfigError, match="a key not already in the store"):
        bigger.with_key(entry)
    assert bigger.without(alice.kid).keys == (entry,)
    with pytest.raises(ConfigError, match="the id of a key in the store"):
        bigger.without("ed25519:ffffffffffffffff")
    with pytest.raises(ConfigError, match="roles"):
        make_trusted_key("X", ["boss"], bob.public, "t")
    with pytest.raises(ConfigError, match="name"):
        make_trusted_key("Line\nbreak", ["author"], bob.public, "t")


# --- approvals document ------------------------------------------------------------------------


def test_signed_message_is_exactly_the_documented_bytes(lib: Library, alice: Person) -> None:
    msg = approval_message("author", lib.hash, 7, "Alice Author", T1)
    assert msg == (
        b"pumpgw-library-approval/1\nauthor\n"
        + lib.hash.encode()
        + b"\n7\nAlice Author\n2026-11-22T10:00:00Z"
    )
    approvals = sign(lib, alice.pem, "author", "Alice Author", T1)
    (approval,) = approvals.approvals
    # An independent check with the library's public key and the documented message.
    Ed25519PublicKey.from_public_bytes(alice.public).verify(approval.signature, msg)


def test_approvals_round_trip_through_json(lib: Library, alice: Person, bob: Person) -> None:
    approvals = approve(lib, alice, bob)
    text = render_approvals(approvals)
    assert '"format": "pumpgw-library-approvals/1"' in text
    assert parse_approvals(text.encode(), "a.json") == approvals
    assert [a.role for a in approvals.approvals] == ["author", "reviewer"]
    assert approvals.library_hash == lib.hash
    assert approvals.library_version == 7


def test_malformed_approvals_list_every_problem_with_its_path(lib: Library, alice: Person) -> None:
    good = render_approvals(sign(lib, alice.pem, "author", alice.name, T1))
    bad = (
        good.replace('"pumpgw-library-approvals/1"', '"something/2"')
        .replace('"role": "author"', '"role": "boss"')
        .replace(T1, "22/11/2026 10:00")
    )
    with pytest.raises(LibraryError) as exc:
        parse_approvals(bad.encode(), "lib.toml.approvals.json")
    paths = {p.path for p in exc.value.problems}
    assert paths == {"format", "approvals[0].role", "approvals[0].signed_at"}
    assert exc.value.source == "lib.toml.approvals.json"

    sig = re.search(r'"signature": "([^"]+)"', good)
    assert sig is not None
    with pytest.raises(LibraryError) as exc2:
        parse_approvals(good.replace(sig.group(1), "!!").encode(), "a.json")
    assert [p.path for p in exc2.value.problems] == ["approvals[0].signature"]

    data = json.loads(good)
    data["approvals"].append(dict(data["approvals"][0]))
    with pytest.raises(LibraryError, match=r"approvals\[1\].role: a second author approval"):
        parse_approvals(json.dumps(data).encode(), "a.json")
    with pytest.raises(LibraryError, match="not valid JSON"):
        parse_approvals(b"{", "a.json")


# --- signing ------------------------------------------------------------------------------------


def test_sign_refuses_a_second_approval_of_one_role(lib: Library, alice: Person, bob: Person) -> None:
    approvals = sign(lib, alice.pem, "author", alice.name, T1)
    with pytest.raises(LibraryError, match="already approved as author by Alice Author"):
        sign(lib, bob.pem, "author", bob.name, T2, approvals)


def test_sign_refuses_approvals_of_another_library(lib: Library, alice: Person, bob: Person) -> None:
    approvals = sign(lib, alice.pem, "author", alice.name, T1)
    other = dataclasses.replace(approvals, library_hash="sha256:" + "0" * 64)
    with pytest.raises(LibraryError, match="another library"):
        sign(lib, bob.pem, "reviewer", bob.name, T2, other)


def test_sign_refuses_one_person_in_both_roles(lib: Library, alice: Person) -> None:
    approvals = sign(lib, alice.pem, "author", alice.name, T1)
    with pytest.raises(LibraryError, match="two distinct people"):
        sign(lib, alice.pem, "reviewer", "Someone Else", T2, approvals)  # same key
    other_key = person("x")
    with pytest.raises(LibraryError, match="two distinct people"):
        sign(lib, other_key.pem, "reviewer", "alice   AUTHOR", T2, approvals)  # same person, other key


@pytest.mark.parametrize(
    ("role", "name", "signed_at", "match"),
    [
        ("boss", "A", T1, "not a role"),
        ("author", "", T1, "name"),
        ("author", "A\nreviewer", T1, "one line"),
        ("author", "A", "2026-11-22 10:00", "UTC time"),
        ("author", "A", "2026-02-30T10:00:00Z", "not a real date"),
    ],
)
def test_sign_refuses_bad_fields(
    lib: Library, alice: Person, role: str, name: str, signed_at: str, match: str
) -> None:
    with pytest.raises(LibraryError, match=match):
        sign(lib, alice.pem, role, name, signed_at)


# --- verifying ----------------------------------------------------------------------------------


def test_verify_names_author_and_reviewer(
    lib: Library, alice: Person, bob: Person, trust: TrustStore
) -> None:
    verified = verify(lib, approve(lib, alice, bob), trust, "lib.toml")
    assert verified.library is lib
    assert (verified.author, verified.reviewer) == (alice.name, bob.name)
    assert (verified.author_key_id, verified.reviewer_key_id) == (alice.kid, bob.kid)


@pytest.mark.hazard("HAZ-004")
def test_a_changed_limit_after_signing_names_both_hashes(
    lib: Library, alice: Person, bob: Person, trust: TrustStore
) -> None:
    approvals = approve(lib, alice, bob)
    text = EXAMPLE.read_text()
    changed = text.replace(
        'bolus_dose = { soft_max = "50 ug", hard_max = "100 ug" }',
        'bolus_dose = { soft_max = "50 ug", hard_max = "90 ug" }',
        1,
    )
    assert changed != text
    tampered = parse_library(changed.encode(), "lib.toml")
    with pytest.raises(LibraryNotTrusted) as exc:
        verify(tampered, approvals, trust, "lib.toml")
    assert lib.hash in reason(exc)
    assert tampered.hash in reason(exc)
    assert lib.hash != tampered.hash
    assert "changed after it was approved" in reason(exc)
    assert exc.value.source == "lib.toml"


def test_comments_and_layout_do_not_change_what_was_approved(
    lib: Library, alice: Person, bob: Person, trust: TrustStore
) -> None:
    approvals = approve(lib, alice, bob)
    reformatted = "# reviewed copy\n" + EXAMPLE.read_text().replace('"2500 ug"', '"2500.0 ug"')
    verify(parse_library(reformatted.encode(), "copy.toml"), approvals, trust, "copy.toml")


@pytest.mark.hazard("HAZ-004")
def test_a_flipped_signature_byte_is_a_bad_signature(
    lib: Library, alice: Person, bob: Person, trust: TrustStore
) -> None:
    approvals = approve(lib, alice, bob)
    reviewer = approvals.approvals[1]
    sig = bytearray(reviewer.signature)
    sig[10] ^= 0x01
    bad = dataclasses.replace(
        approvals, approvals=(approvals.approvals[0], dataclasses.replace(reviewer, signature=bytes(sig)))
    )
    # Through the file form too: the tampered signature is still well-formed base64.
    again = parse_approvals(render_approvals(bad).encode(), "a.json")
    with pytest.raises(LibraryNotTrusted) as exc:
        verify(lib, again, trust, "lib.toml")
    assert "reviewer approval by Bob Reviewer" in reason(exc)
    assert "signature is not valid" in reason(exc)


@pytest.mark.hazard("HAZ-004")
def test_an_edited_name_breaks_the_signature(lib: Library, alice: Person, bob: Person) -> None:
    approvals = approve(lib, alice, bob)
    # Bob's key is trusted under another spelling: the name passes the store check, the signature does not.
    store = store_of((alice, ("author",)), (bob, ("reviewer",)))
    renamed = dataclasses.replace(approvals.approvals[1], name="BOB REVIEWER")
    with pytest.raises(LibraryNotTrusted, match="signature is not valid"):
        verify(lib, dataclasses.replace(approvals, approvals=(approvals.approvals[0], renamed)), store, "l")


@pytest.mark.hazard("HAZ-004")
def test_one_person_in_both_roles_is_not_trusted(lib: Library, alice: Person) -> None:
    store = store_of((alice, ("author", "reviewer")))
    same_key = Approvals(
        lib.hash, lib.version, (raw_approval(lib, alice, "author"), raw_approval(lib, alice, "reviewer"))
    )
    with pytest.raises(LibraryNotTrusted, match=r"same key .*two distinct people"):
        verify(lib, same_key, store, "l")

    # Two keys, one person (a new laptop): still one person.
    second = Person(alice.name.upper(), *generate_key())
    store2 = store_of((alice, ("author",)), (second, ("reviewer",)))
    two_keys = Approvals(
        lib.hash, lib.version, (raw_approval(lib, alice, "author"), raw_approval(lib, second, "reviewer"))
    )
    with pytest.raises(LibraryNotTrusted) as exc:
        verify(lib, two_keys, store2, "l")
    assert "same person" in reason(exc)
    assert "two distinct people" in reason(exc)


@pytest.mark.hazard("HAZ-004")
def test_a_key_not_in_the_trust_store_is_not_trusted(lib: Library, alice: Person, bob: Person) -> None:
    approvals = approve(lib, alice, bob)
    with pytest.raises(LibraryNotTrusted) as exc:
        verify(lib, approvals, store_of((alice, ("author",))), "lib.toml")
    assert f"Bob Reviewer (key {bob.kid}): the key is not in the trust store" in reason(exc)


@pytest.mark.hazard("HAZ-004")
def test_a_key_lacking_the_role_is_not_trusted(lib: Library, alice: Person, bob: Person) -> None:
    approvals = approve(lib, alice, bob)
    store = store_of((alice, ("author",)), (bob, ("author",)))
    with pytest.raises(LibraryNotTrusted) as exc:
        verify(lib, approvals, store, "lib.toml")
    assert "allows this key to sign as author only, not as reviewer" in reason(exc)


def test_a_name_other_than_the_trust_stores_is_not_trusted(lib: Library, alice: Person, bob: Person) -> None:
    approvals = approve(lib, alice, bob)
    impostor = TrustStore(
        (
            make_trusted_key(alice.name, ["author"], alice.public, "t"),
            TrustedKey(bob.kid, "Mallory", ("reviewer",), bob.public),
        )
    )
    with pytest.raises(LibraryNotTrusted, match="gives this key to Mallory, not to Bob Reviewer"):
        verify(lib, approvals, impostor, "lib.toml")


@pytest.mark.hazard("HAZ-004")
def test_a_missing_reviewer_or_author_is_not_trusted(
    lib: Library, alice: Person, bob: Person, trust: TrustStore
) -> None:
    only_author = sign(lib, alice.pem, "author", alice.name, T1)
    with pytest.raises(
        LibraryNotTrusted, match=r"not approved by a reviewer \(approvals so far: author: Alice Author\)"
    ):
        verify(lib, only_author, trust, "l")
    only_reviewer = sign(lib, bob.pem, "reviewer", bob.name, T1)
    with pytest.raises(LibraryNotTrusted, match="not approved by an author"):
        verify(lib, only_reviewer, trust, "l")
    with pytest.raises(LibraryNotTrusted, match="not approved by an author and a reviewer"):
        verify(lib, Approvals(lib.hash, lib.version), trust, "l")


@pytest.mark.hazard("HAZ-004")
def test_approvals_for_another_version_number_are_not_trusted(
    lib: Library, alice: Person, bob: Person, trust: TrustStore
) -> None:
    approvals = dataclasses.replace(approve(lib, alice, bob), library_version=8)
    with pytest.raises(LibraryNotTrusted, match="approvals are for version 8, this library is version 7"):
        verify(lib, approvals, trust, "l")


def test_no_message_ever_contains_private_key_material(lib: Library, alice: Person, bob: Person) -> None:
    body = b"".join(alice.pem.splitlines()[1:-1]).decode()
    messages: list[str] = []
    for attempt in (
        lambda: load_private_key(alice.pem[:-40], "k"),
        lambda: parse_public_key(alice.pem.decode(), "k"),
        lambda: sign(lib, alice.pem, "boss", alice.name, T1),
        lambda: sign(lib, alice.pem[:60] + b"!" + alice.pem[61:], "author", alice.name, T1),
        lambda: verify(lib, approve(lib, alice, bob), TrustStore(), "l"),
    ):
        with pytest.raises((ConfigError, LibraryError)) as exc:
            attempt()
        messages.append(str(exc.value))
    for message in messages:
        assert body not in message
        assert body[:20] not in message


def test_a_private_key_pasted_into_the_trust_store_is_not_echoed(alice: Person) -> None:
    body = "".join(alice.pem.decode().splitlines()[1:-1])
    with pytest.raises(ConfigError) as exc:
        parse_trust_store(_store_text([_entry(alice, public_key=f'"{body}"')]), "trust.toml")
    assert exc.value.key == "keys[0].public_key"
    assert "private key" in str(exc.value)
    assert body not in str(exc.value)
    assert body[-20:] not in str(exc.value)
    with pytest.raises(ConfigError) as exc2:
        parse_public_key(body, "--public-key")
    assert body not in str(exc2.value)
