"""Drug-library approvals: Ed25519 keys, the trust store, signing and verifying (pure, no file I/O).

A library release is trusted when two distinct people have approved exactly that content: an
*author* (the pharmacist who built it) and a *reviewer* (a second pharmacist who checked it). Each
approval is an Ed25519 signature over the library's identity, its SHA-256 hash of the canonical form
(:func:`.library.library_hash`), so comments, key order and TOML versus JSON do not matter and any
clinical change does.

Keys
    :func:`generate_key` makes a key pair: the private key as PEM (PKCS8, unencrypted: protect the
    file with its permissions, ``pumpgw library keygen`` writes it with mode 0600) and the raw
    32-byte public key. A key is named by :func:`key_id`: ``"ed25519:"`` and the first 16 hex digits
    of the SHA-256 of the raw public key. Private key bytes never appear in any message or log.

Trust store
    A TOML file the gateway's owner keeps, listing whose keys may approve libraries, and as what::

        [[keys]]
        id = "ed25519:0123456789abcdef"
        name = "Jane Doe"                 # the person; approvals must carry this name
        roles = ["author", "reviewer"]    # what this person may sign as
        public_key = "<base64 of the raw 32-byte public key>"

    :func:`parse_trust_store` checks every entry (base64, length, the id belongs to the key,
    duplicate ids, unknown roles) and raises :class:`ConfigError` naming each bad key
    (``keys[2].public_key``). :func:`render_trust_store` writes one by hand (comments in a
    hand-edited store are not kept).

Approvals
    A JSON document kept next to the library file, as ``<library file>.approvals.json``::

        {"format": "pumpgw-library-approvals/1", "library_hash": "sha256:...", "library_version": 7,
         "approvals": [{"role": "author", "name": "Jane Doe", "key_id": "ed25519:...",
                        "signed_at": "2026-11-22T10:00:00Z", "signature": "<base64, 64 bytes>"}]}

    The signed message (:func:`approval_message`) is, in UTF-8::

        b"pumpgw-library-approval/1\\n" + role + "\\n" + library_hash + "\\n" + str(version) + "\\n"
        + name + "\\n" + signed_at

    Names may not contain control characters (so a newline cannot shift the fields); the other
    fields have fixed forms. :func:`parse_approvals` raises :class:`LibraryError` with every
    problem of a malformed document and its path (``approvals[1].signature``).

:func:`sign` adds one approval (the time is passed in: this module never reads the clock).
:func:`verify` checks a library against its approvals and a trust store and returns a
:class:`VerifiedLibrary`, or raises :class:`LibraryNotTrusted` with a reason a pharmacist
understands. The rule is: approved by two distinct people, the author and the reviewer, each with a
key the trust store allows that role, each signature valid for exactly this library version.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tomllib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal, cast, get_args

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ConfigError, LibraryError, LibraryNotTrusted, LibraryProblem
from .library import Library
from .library_toml import toml_string

Role = Literal["author", "reviewer"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

APPROVALS_FORMAT: Final = "pumpgw-library-approvals/1"
MESSAGE_PREFIX: Final = b"pumpgw-library-approval/1\n"

PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
_MAX_NAME: Final = 200

_KEY_ID_RE: Final = re.compile(r"^ed25519:[0-9a-f]{16}$")
_HASH_RE: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
_SIGNED_AT_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_PEM_PRIVATE_RE: Final = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")

_ROLES_TEXT: Final = ", ".join(ROLES)
_KEYGEN_HINT: Final = "an Ed25519 private key in PEM form, as written by 'pumpgw library keygen'"


# --- keys ---------------------------------------------------------------------------------------


def generate_key() -> tuple[bytes, bytes]:
    """A new key pair: (private key as unencrypted PKCS8 PEM, raw 32-byte public key)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, _raw_public(private.public_key())


def _raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_raw: bytes) -> str:
    """``"ed25519:" + sha256(public_raw).hexdigest()[:16]``: how a key is named everywhere."""
    return "ed25519:" + hashlib.sha256(public_raw).hexdigest()[:16]


def public_key_text(public_raw: bytes) -> str:
    """The base64 text of a raw public key, as the trust store holds it (44 characters)."""
    return base64.b64encode(public_raw).decode("ascii")


def load_private_key(private_pem: bytes, source: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``private_pem`` (unencrypted PEM, PKCS8 or OpenSSH's PEM form).

    Raises ConfigError naming ``source`` (the key file) and what was expected; the key bytes never
    appear in the message.
    """
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except TypeError:
        # cryptography: "Password was not given but private key is encrypted"
        raise ConfigError(
            source, "(file)", "(an encrypted private key)", f"{_KEYGEN_HINT} (unencrypted)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        what = "(not a PEM private key; contents not shown)"
        if b"-----BEGIN PUBLIC KEY-----" in private_pem or _looks_like_base64_public(private_pem):
            what = "(a public key)"
        elif b"-----BEGIN CERTIFICATE-----" in private_pem:
            what = "(a certificate)"
        raise ConfigError(source, "(file)", what, _KEYGEN_HINT) from None
    if not isinstance(key, Ed25519PrivateKey):
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "")
        raise ConfigError(source, "(file)", f"(a {kind or 'non-Ed25519'} private key)", _KEYGEN_HINT)
    return key


def _looks_like_base64_public(data: bytes) -> bool:
    try:
        return len(base64.b64decode(data.strip(), validate=True)) == PUBLIC_KEY_BYTES
    except (binascii.Error, ValueError):
        return False


def public_key_of(private_pem: bytes, source: str) -> bytes:
    """The raw public key that goes with a private key (see :func:`load_private_key`)."""
    return _raw_public(load_private_key(private_pem, source).public_key())


def parse_public_key(text: str, source: str) -> bytes:
    """A public key given as base64 of the raw 32 bytes, or as a PEM ``PUBLIC KEY`` block.

    Raises ConfigError naming ``source``. A private key given by mistake is refused without
    showing it.
    """
    data = text.strip()
    if _looks_private(data):
        raise ConfigError(
            source, "public_key", _PRIVATE_SHOWN, "the PUBLIC key (keep the private key secret)"
        )
    if data.startswith("-----BEGIN PUBLIC KEY-----"):
        try:
            key = serialization.load_pem_public_key(data.encode("ascii"))
        except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError):
            raise ConfigError(source, "public_key", "(unreadable PEM)", "an Ed25519 public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(source, "public_key", f"(a {type(key).__name__} key)", "an Ed25519 public key")
        return _raw_public(key)
    problem = _public_key_problem(data)
    if problem is not None:
        raise ConfigError(source, "public_key", _shown_key_value(data), problem)
    return base64.b64decode(data, validate=True)


_PRIVATE_SHOWN: Final = "(a private key; contents not shown)"
# The base64 of every unencrypted PKCS8 Ed25519 private key starts so (its DER header).
_PKCS8_ED25519_B64: Final = "MC4CAQAwBQYDK2VwBCIEI"


def _looks_private(text: str) -> bool:
    return bool(_PEM_PRIVATE_RE.search(text.encode("utf-8", "replace"))) or _PKCS8_ED25519_B64 in text


def _shown_key_value(text: str) -> str:
    """A public key value fit for an error message: never a private key, never a screenful."""
    if _looks_private(text):
        return _PRIVATE_SHOWN
    return text if len(text) <= 60 else f"{text[:12]}... ({len(text)} characters)"


def _public_key_problem(text: str) -> str | None:
    """Why ``text`` is not the base64 of a 32-byte Ed25519 public key, or None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return "base64 of a raw 32-byte Ed25519 public key (44 characters); this is not valid base64"
    if len(raw) != PUBLIC_KEY_BYTES:
        return f"base64 of a raw 32-byte Ed25519 public key; this decodes to {len(raw)} bytes"
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return "a valid Ed25519 public key"
    return None


# --- names --------------------------------------------------------------------------------------


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a signer's name (empty, too long, control characters), or None."""
    if not name.strip():
        return "a person's name (not empty)"
    if len(name) > _MAX_NAME:
        return f"a person's name of at most {_MAX_NAME} characters"
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        return "a person's name on one line (no control characters)"
    return None


def same_person(a: str, b: str) -> bool:
    """Names compared as people read them: case-insensitive, runs of spaces as one."""
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


# --- trust store --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """One key in the trust store: whose it is and what it may sign as."""

    id: str
    name: str
    roles: tuple[Role, ...]
    public_key: bytes  # raw, 32 bytes

    @property
    def public_key_text(self) -> str:
        return public_key_text(self.public_key)


@dataclass(frozen=True, slots=True)
class TrustStore:
    """The keys allowed to approve libraries, in file order."""

    keys: tuple[TrustedKey, ...] = ()

    def get(self, kid: str) -> TrustedKey | None:
        return next((k for k in self.keys if k.id == kid), None)

    def with_key(self, key: TrustedKey, source: str = "trust store") -> TrustStore:
        """A store with ``key`` added at the end. Raises ConfigError if its id is already there."""
        existing = self.get(key.id)
        if existing is not None:
            raise ConfigError(
                source,
                "keys",
                key.id,
                f"a key not already in the store (it is there as {existing.name}, "
                f"{', '.join(existing.roles)}; remove it first to change it)",
            )
        return TrustStore((*self.keys, key))

    def without(self, kid: str, source: str = "trust store") -> TrustStore:
        """A store without the key ``kid``. Raises ConfigError if it is not there."""
        if self.get(kid) is None:
            known = ", ".join(k.id for k in self.keys) or "none: the store is empty"
            raise ConfigError(source, "keys", kid, f"the id of a key in the store ({known})")
        return TrustStore(tuple(k for k in self.keys if k.id != kid))


def make_trusted_key(name: str, roles: Iterable[str], public_raw: bytes, source: str) -> TrustedKey:
    """A trust-store entry, checked as :func:`parse_trust_store` checks one. Raises ConfigError."""
    problem = name_problem(name)
    if problem:
        raise ConfigError(source, "name", name, problem)
    role_list = list(roles)
    problem = _roles_problem(role_list)
    if problem:
        raise ConfigError(source, "roles", role_list, problem)
    problem = _public_key_problem(public_key_text(public_raw))
    if problem:
        raise ConfigError(source, "public_key", public_key_text(public_raw), problem)
    return TrustedKey(key_id(public_raw), name.strip(), _ordered_roles(role_list), public_raw)


def _roles_problem(roles: Any) -> str | None:
    expected = f"a list of roles, each one of {_ROLES_TEXT}, at least one, none twice"
    if not isinstance(roles, list) or not roles:
        return expected
    if any(r not in ROLES for r in roles) or len(set(roles)) != len(roles):
        return expected
    return None


def _ordered_roles(roles: Iterable[str]) -> tuple[Role, ...]:
    wanted = set(roles)
    return tuple(r for r in ROLES if r in wanted)


def parse_trust_store(raw: bytes, source: str) -> TrustStore:
    """Parse a trust store (TOML). Raises ConfigError with every problem, each with its key path."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "(file)", raw[exc.start : exc.end], "UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(syntax)", str(exc), "valid TOML") from None
    problems: list[tuple[str, Any, str]] = []
    problems += [
        (top, data[top], "no such key (a trust store holds only [[keys]] tables)")
        for top in data
        if top != "keys"
    ]
    entries = data.get("keys", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problems.append(("keys", entries, "[[keys]] tables (id, name, roles, public_key)"))
        entries = []
    keys: list[TrustedKey] = []
    first_index: dict[str, int] = {}
    for i, entry in enumerate(entries):
        key = _parse_trusted_key(f"keys[{i}]", entry, problems)
        if key is None:
            continue
        if key.id in first_index:
            problems.append(
                (f"keys[{i}].id", key.id, f"a key listed once (it is also keys[{first_index[key.id]}])")
            )
            continue
        first_index[key.id] = i
        keys.append(key)
    if problems:
        errors = [ConfigError(source, path, value, expected) for path, value, expected in problems]
        raise ConfigError(source, *problems[0], also=tuple(errors[1:]))
    return TrustStore(tuple(keys))


def _parse_trusted_key(
    path: str, entry: dict[str, Any], problems: list[tuple[str, Any, str]]
) -> TrustedKey | None:
    before = len(problems)
    problems += [
        (f"{path}.{extra}", entry[extra], "no such key (id, name, roles, public_key)")
        for extra in sorted(set(entry) - {"id", "name", "roles", "public_key"})
    ]
    kid, name, roles, public = (entry.get(k) for k in ("id", "name", "roles", "public_key"))
    public_raw: bytes | None = None
    if not isinstance(public, str):
        problems.append(
            (f"{path}.public_key", public, "base64 of a raw 32-byte Ed25519 public key (required)")
        )
    else:
        problem = _public_key_problem(public.strip())
        if problem:
            problems.append((f"{path}.public_key", _shown_key_value(public), problem))
        else:
            public_raw = base64.b64decode(public.strip(), validate=True)
    if not isinstance(kid, str) or not _KEY_ID_RE.match(kid):
        problems.append((f"{path}.id", kid, "the key id, 'ed25519:' and 16 hex digits (required)"))
    elif public_raw is not None and kid != key_id(public_raw):
        problems.append((f"{path}.id", kid, f"{key_id(public_raw)}, the id of this public_key"))
    if not isinstance(name, str):
        problems.append((f"{path}.name", name, "a person's name (required)"))
    elif (problem := name_problem(name)) is not None:
        problems.append((f"{path}.name", name, problem))
    if (problem := _roles_problem(roles)) is not None:
        problems.append((f"{path}.roles", roles, problem))
    if len(problems) > before or public_raw is None:
        return None
    return TrustedKey(
        cast(str, kid), cast(str, name).strip(), _ordered_roles(cast(list[str], roles)), public_raw
    )


def render_trust_store(store: TrustStore) -> str:
    """The store as TOML, in the form :func:`parse_trust_store` reads."""
    lines = [
        "# pumpgw drug-library trust store: whose keys may approve libraries, and as what.",
        "# Roles: author (builds a library release), reviewer (checks it). A release needs both,",
        "# from two distinct people. Add and remove keys with 'pumpgw library trust add/remove'.",
    ]
    for key in store.keys:
        lines += ["", render_key_entry(key).rstrip("\n")]
    return "\n".join(lines) + "\n"


def render_key_entry(key: TrustedKey) -> str:
    """One ``[[keys]]`` table of a trust store, as TOML."""
    lines = [
        "[[keys]]",
        f"id = {toml_string(key.id)}",
        f"name = {toml_string(key.name)}",
        f"roles = [{', '.join(toml_string(r) for r in key.roles)}]",
        f"public_key = {toml_string(key.public_key_text)}",
    ]
    return "\n".join(lines) + "\n"


# --- approvals ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Approval:
    """One person's signed approval of one library version in one role."""

    role: Role
    name: str
    key_id: str
    signed_at: str  # "2026-11-22T10:00:00Z"
    signature: bytes  # 64 bytes


@dataclass(frozen=True, slots=True)
class Approvals:
    """The approvals of one library version (its hash and version number)."""

    library_hash: str
    library_version: int
    approvals: tuple[Approval, ...] = ()

    def by_role(self, role: Role) -> Approval | None:
        return next((a for a in self.approvals if a.role == role), None)


@dataclass(frozen=True, slots=True)
class VerifiedLibrary:
    """A library whose approvals verified: who authored it and who reviewed it, with which keys."""

    library: Library
    author: str
    reviewer: str
    author_key_id: str
    reviewer_key_id: str


def approval_message(role: str, library_hash: str, version: int, name: str, signed_at: str) -> bytes:
    """The exact bytes an approval signs (see the module docstring)."""
    return MESSAGE_PREFIX + f"{role}\n{library_hash}\n{version}\n{name}\n{signed_at}".encode()


def signed_at_problem(signed_at: str) -> str | None:
    """Why ``signed_at`` is not a UTC time such as ``2026-11-22T10:00:00Z``, or None."""
    expected = "a UTC time such as 2026-11-22T10:00:00Z"
    if not _SIGNED_AT_RE.match(signed_at):
        return expected
    try:
        datetime.strptime(signed_at, "%Y-%m-%dT%H:%M:%SZ")  # noqa: DTZ007 - the Z is checked above
    except ValueError:
        return expected + " (this is not a real date and time)"
    return None


def _sig_text(signature: bytes) -> str:
    return base64.b64encode(signature).decode("ascii")


def render_approvals(approvals: Approvals) -> str:
    """The approvals document as JSON text (2-space indent, newline at the end)."""
    doc = {
        "format": APPROVALS_FORMAT,
        "library_hash": approvals.library_hash,
        "library_version": approvals.library_version,
        "approvals": [
            {
                "role": a.role,
                "name": a.name,
                "key_id": a.key_id,
                "signed_at": a.signed_at,
                "signature": _sig_text(a.signature),
            }
            for a in approvals.approvals
        ],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def parse_approvals(raw: bytes, source: str) -> Approvals:
    """Parse an approvals document. Raises LibraryError with every problem and its path.

    Only the form is checked here; whether the signatures are good is :func:`verify`'s job.
    """
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise LibraryError(
            source, [LibraryProblem("(file)", f"not UTF-8 text at byte {exc.start}")]
        ) from None
    except json.JSONDecodeError as exc:
        problem = LibraryProblem(f"(syntax, line {exc.lineno})", f"not valid JSON: {exc.msg}")
        raise LibraryError(source, [problem]) from None
    if not isinstance(data, dict):
        raise LibraryError(source, [LibraryProblem("(top level)", "expected a JSON object")])
    problems: list[LibraryProblem] = []

    def bad(path: str, message: str) -> None:
        problems.append(LibraryProblem(path, message))

    for extra in sorted(set(data) - {"format", "library_hash", "library_version", "approvals"}):
        bad(extra, "no such key (format, library_hash, library_version, approvals)")
    if data.get("format") != APPROVALS_FORMAT:
        bad("format", f"expected {APPROVALS_FORMAT!r}, got {data.get('format')!r}")
    library_hash = data.get("library_hash")
    if not isinstance(library_hash, str) or not _HASH_RE.match(library_hash):
        bad("library_hash", f"expected 'sha256:' and 64 hex digits, got {library_hash!r}")
    version = data.get("library_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        bad("library_version", f"expected a whole number of 1 or more, got {version!r}")
    entries = data.get("approvals")
    if not isinstance(entries, list):
        bad("approvals", f"expected a list of approvals, got {entries!r}")
        entries = []
    approvals: list[Approval] = []
    seen_roles: dict[str, int] = {}
    for i, entry in enumerate(entries):
        approval = _parse_approval(f"approvals[{i}]", entry, bad)
        if approval is None:
            continue
        if approval.role in seen_roles:
            first = seen_roles[approval.role]
            bad(
                f"approvals[{i}].role", f"a second {approval.role} approval (the first is approvals[{first}])"
            )
            continue
        seen_roles[approval.role] = i
        approvals.append(approval)
    if problems:
        raise LibraryError(source, problems)
    return Approvals(cast(str, library_hash), cast(int, version), tuple(approvals))


def _parse_approval(path: str, entry: Any, bad: Any) -> Approval | None:
    if not isinstance(entry, dict):
        bad(path, f"expected an object (role, name, key_id, signed_at, signature), got {entry!r}")
        return None
    count = 0

    def problem(key: str, message: str) -> None:
        nonlocal count
        count += 1
        bad(f"{path}.{key}", message)

    for extra in sorted(set(entry) - {"role", "name", "key_id", "signed_at", "signature"}):
        problem(extra, "no such key (role, name, key_id, signed_at, signature)")
    role, name, kid, signed_at, sig = (
        entry.get(k) for k in ("role", "name", "key_id", "signed_at", "signature")
    )
    if role not in ROLES:
        problem("role", f"expected one of {_ROLES_TEXT}, got {role!r}")
    if not isinstance(name, str):
        problem("name", f"expected a person's name, got {name!r}")
    elif (why := name_problem(name)) is not None:
        problem("name", f"expected {why}, got {name!r}")
    if not isinstance(kid, str) or not _KEY_ID_RE.match(kid):
        problem("key_id", f"expected 'ed25519:' and 16 hex digits, got {kid!r}")
    if not isinstance(signed_at, str):
        problem("signed_at", f"expected a UTC time such as 2026-11-22T10:00:00Z, got {signed_at!r}")
    elif (why := signed_at_problem(signed_at)) is not None:
        problem("signed_at", f"expected {why}, got {signed_at!r}")
    signature = b""
    if not isinstance(sig, str):
        problem("signature", f"expected base64 of a {SIGNATURE_BYTES}-byte Ed25519 signature, got {sig!r}")
    else:
        try:
            signature = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            problem("signature", "expected base64 of an Ed25519 signature; this is not valid base64")
        else:
            if len(signature) != SIGNATURE_BYTES:
                problem(
                    "signature",
                    f"expected {SIGNATURE_BYTES} bytes (an Ed25519 signature), got {len(signature)}",
                )
    if count:
        return None
    return Approval(cast(Role, role), cast(str, name), cast(str, kid), cast(str, signed_at), signature)


def _refuse(source: str, reason: str) -> LibraryError:
    return LibraryError(source, [LibraryProblem("(approvals)", reason)])


def sign(
    library: Library,
    private_pem: bytes,
    role: str,
    name: str,
    signed_at: str,
    approvals: Approvals | None = None,
    *,
    source: str = "library",
    key_source: str = "private key",
) -> Approvals:
    """``approvals`` (or new, empty ones) with this person's approval of ``library`` in ``role`` added.

    Pure: ``signed_at`` is passed in. Raises LibraryError (naming ``source``, the library) for an
    unknown role, a bad name or time, approvals of another library version, a role already
    approved, or the same key or person approving both roles; ConfigError (naming ``key_source``)
    for a private key that cannot be used.
    """
    if role not in ROLES:
        raise _refuse(source, f"role {role!r} is not a role: expected one of {_ROLES_TEXT}")
    the_role: Role = "author" if role == "author" else "reviewer"
    if (problem := name_problem(name)) is not None:
        raise _refuse(source, f"name {name!r} is not valid: expected {problem}")
    name = name.strip()
    if (problem := signed_at_problem(signed_at)) is not None:
        raise _refuse(source, f"signed_at {signed_at!r} is not valid: expected {problem}")
    private = load_private_key(private_pem, key_source)
    kid = key_id(_raw_public(private.public_key()))
    if approvals is None:
        approvals = Approvals(library.hash, library.version)
    if approvals.library_hash != library.hash or approvals.library_version != library.version:
        raise _refuse(
            source,
            f"the existing approvals are for another library (v{approvals.library_version}, "
            f"{approvals.library_hash}), not this one (v{library.version}, {library.hash}): the library "
            "changed after it was approved; delete the old approvals file and sign this version again "
            "(author and reviewer)",
        )
    existing = approvals.by_role(the_role)
    if existing is not None:
        raise _refuse(
            source,
            f"this library is already approved as {the_role} by {existing.name} (key {existing.key_id}) "
            f"on {existing.signed_at}; each role is signed once",
        )
    for other in approvals.approvals:
        if other.key_id == kid or same_person(other.name, name):
            raise _refuse(
                source,
                f"{name} (key {kid}) cannot approve as {the_role}: {other.name} (key {other.key_id}) "
                f"already approved as {other.role}, and a library must be approved by two distinct people",
            )
    message = approval_message(the_role, library.hash, library.version, name, signed_at)
    approval = Approval(the_role, name, kid, signed_at, private.sign(message))
    ordered = sorted((*approvals.approvals, approval), key=lambda a: ROLES.index(a.role))
    return replace(approvals, approvals=tuple(ordered))


def verify(library: Library, approvals: Approvals, trust: TrustStore, source: str) -> VerifiedLibrary:
    """Check that ``library`` is approved by an author and a reviewer who are two distinct people.

    Raises LibraryNotTrusted(source, reason) for: approvals of another library (hash or version),
    a missing role, a key not in ``trust`` or not allowed its role, a name that is not the trust
    store's name for the key, a bad signature, or one person (or key) in both roles.
    """
    if approvals.library_hash != library.hash:
        raise LibraryNotTrusted(
            source,
            f"the library changed after it was approved: the approvals are for {approvals.library_hash} "
            f"(v{approvals.library_version}), this library is {library.hash} (v{library.version}); "
            "it must be signed again by an author and a reviewer",
        )
    if approvals.library_version != library.version:
        raise LibraryNotTrusted(
            source,
            f"the approvals are for version {approvals.library_version}, this library is version "
            f"{library.version}",
        )
    for approval in approvals.approvals:
        _verify_one(library, approval, trust, source)
    author, reviewer = approvals.by_role("author"), approvals.by_role("reviewer")
    missing = [r for r, a in (("author", author), ("reviewer", reviewer)) if a is None]
    if author is None or reviewer is None:
        present = "; ".join(f"{a.role}: {a.name}" for a in approvals.approvals) or "none"
        raise LibraryNotTrusted(
            source,
            f"not approved by {' and '.join(f'an {m}' if m == 'author' else f'a {m}' for m in missing)} "
            f"(approvals so far: {present}); a library needs an author and a reviewer, two distinct people",
        )
    if author.key_id == reviewer.key_id:
        raise LibraryNotTrusted(
            source,
            f"the author and the reviewer used the same key ({author.key_id}, {author.name}): a library "
            "must be approved by two distinct people",
        )
    if same_person(author.name, reviewer.name):
        raise LibraryNotTrusted(
            source,
            f"the author and the reviewer are the same person ({author.name}): a library must be approved "
            "by two distinct people",
        )
    return VerifiedLibrary(library, author.name, reviewer.name, author.key_id, reviewer.key_id)


def _verify_one(library: Library, approval: Approval, trust: TrustStore, source: str) -> None:
    who = f"the {approval.role} approval by {approval.name} (key {approval.key_id})"
    trusted = trust.get(approval.key_id)
    if trusted is None:
        raise LibraryNotTrusted(source, f"{who}: the key is not in the trust store")
    if approval.role not in trusted.roles:
        raise LibraryNotTrusted(
            source,
            f"{who}: the trust store allows this key to sign as {', '.join(trusted.roles)} only, "
            f"not as {approval.role}",
        )
    if not same_person(approval.name, trusted.name):
        raise LibraryNotTrusted(
            source, f"{who}: the trust store gives this key to {trusted.name}, not to {approval.name}"
        )
    message = approval_message(
        approval.role, library.hash, library.version, approval.name, approval.signed_at
    )
    try:
        Ed25519PublicKey.from_public_bytes(trusted.public_key).verify(approval.signature, message)
    except InvalidSignature:
        raise LibraryNotTrusted(
            source,
            f"{who}: the signature is not valid (the approvals file was altered, or the signature "
            "was not made with this key for this library)",
        ) from None
