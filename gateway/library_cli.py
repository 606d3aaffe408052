"""``pumpgw library``: check, show, compare, convert, sign, verify and install drug libraries.

The work is done elsewhere: the format in :mod:`.library`, keys and approvals in
:mod:`.library_signing`, the installed library in :mod:`.library_store`, comparisons in
:mod:`.library_diff`, spreadsheets in :mod:`.library_csv` and :mod:`.library_toml`. This module
is the command line around them.

The life of a release: a pharmacist edits the library (or a CSV export of it and ``import``s it),
``validate``s it, ``diff``s it against the release before, ``sign``s it as author; a second
pharmacist reviews the diff and ``sign``s it as reviewer; whoever runs the gateway ``verify``s it
against the hospital's trust store and ``install``s it. Keys come from ``keygen``; the trust store
(who may sign as what) is kept with ``trust add/list/remove``. There is no default trust store:
every command that needs one is told which (``--trust``).

Exit codes: 0 success; 1 the library is not trusted (approvals missing or not valid) or the
machine is in the way (permissions); 2 bad input or usage (an invalid library, trust store, key or
CSV, a file that would be overwritten). Every failure is one clear message, never a traceback, and
never shows private key material.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from .cli_common import EXIT_CONFIG, EXIT_FAILED, fail
from .clock import SystemClock
from .errors import ConfigError, EnvironmentProblem, LibraryError, LibraryNotTrusted, PumpGwError

if TYPE_CHECKING:
    from .library import AreaRules, Drug, Library, Limits
    from .library_signing import Role, TrustStore

# The roles of library_signing.ROLES, here so that the command line starts without loading
# cryptography and pydantic (every module doing real work is imported by the command that uses it).
_ROLES: tuple[Role, ...] = ("author", "reviewer")

_FILE = click.Path(dir_okay=False, path_type=Path)
_TRUST_OPTION = click.option(
    "--trust",
    "trust_path",
    required=True,
    type=_FILE,
    help="The trust store: whose keys may approve libraries, and as what (TOML).",
)
_STORE_OPTION = click.option(
    "--store", "store_path", required=True, type=_FILE, help="The trust store file (TOML)."
)


def _die(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    click.echo(f"pumpgw library: {message}", err=True)
    sys.exit(code)


def _fail(exc: PumpGwError) -> NoReturn:
    """One message and the exit code: 1 not trusted, 2 an invalid library or configuration."""
    if isinstance(exc, LibraryNotTrusted):
        _die(f"{exc.source}: NOT TRUSTED: {exc.reason}", EXIT_FAILED)
    if isinstance(exc, LibraryError):
        _die(str(exc), EXIT_CONFIG)
    fail(exc)


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Turn a gateway error raised inside the block into its message and exit code."""
    try:
        yield
    except PumpGwError as exc:
        _fail(exc)


def _load(path: Path) -> Library:
    from .library import parse_library
    from .library_store import read_file

    return parse_library(read_file(path), str(path))


def _read_trust(path: Path) -> TrustStore:
    from .library_signing import parse_trust_store

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        expected = "an existing trust store (add keys with 'pumpgw library trust add')"
        raise ConfigError(str(path), "(file)", str(path), expected) from None
    except PermissionError:
        raise EnvironmentProblem(
            f"cannot read {path}: permission denied", f"give this user read access to {path}"
        ) from None
    except OSError as exc:
        raise ConfigError(str(path), "(file)", str(path), f"a readable file ({exc.strerror})") from None
    return parse_trust_store(raw, str(path))


def _check_parent(path: Path) -> None:
    if not path.parent.is_dir():
        _die(f"cannot write {path}: the directory {path.parent} does not exist")


def _write_new(path: Path, data: bytes, force: bool) -> None:
    """Write ``data`` to ``path`` atomically, refusing to overwrite a file unless ``force``."""
    from .library_store import write_atomic

    _check_parent(path)
    if path.exists() and not force:
        _die(f"{path} exists: refusing to overwrite it (use --force to replace it)")
    if path.is_dir():
        _die(f"{path} is a directory, not a file")
    write_atomic(path, data)


def _name(name: str, option: str = "--name") -> str:
    from .library_signing import name_problem

    problem = name_problem(name)
    if problem is not None:
        _die(f"{option} {name!r} is not valid: expected {problem}")
    return " ".join(name.split())


@click.group()
def library() -> None:
    """Drug libraries: check, compare, sign and install.

    \b
    pumpgw library validate FILE                  check a library, list every problem
    pumpgw library show FILE                      the entries and limits, readable
    pumpgw library diff OLD NEW                   the clinical changes between two libraries
    pumpgw library export FILE --csv OUT          a spreadsheet of the limits
    pumpgw library import CSV --base LIB --out F  a library from an edited spreadsheet
    pumpgw library keygen --name N --out KEY      a signing key for one person
    pumpgw library trust add|list|remove          who may approve libraries, as what
    pumpgw library sign FILE --key KEY --role R --name N   approve as author or reviewer
    pumpgw library verify FILE --trust STORE      check the approvals
    pumpgw library install FILE --trust STORE --state-dir DIR   make it the active library
    """


# --- checking and reading -------------------------------------------------------------------------


@library.command("validate")
@click.argument("path", metavar="FILE", type=_FILE)
def validate_cmd(path: Path) -> None:
    """Check a library file (TOML or JSON); list every problem with its place in the file."""
    with _reported():
        lib = _load(path)
    click.echo(f"{path}: valid: {lib.label}, {len(lib.drugs)} drugs in {len(lib.care_areas)} care areas")


_PARAMETERS: tuple[tuple[str, str], ...] = (
    ("dose", "dose"),
    ("bolus_dose", "bolus dose"),
    ("bolus_rate", "bolus rate"),
    ("bolus_volume", "bolus volume"),
    ("loading_dose", "loading dose"),
    ("vtbi", "VTBI"),
    ("duration", "duration"),
    ("weight", "patient weight"),
    ("bsa", "body surface area"),
)


def _limits_text(limits: Limits) -> str:
    from .library import quantity_text

    return ", ".join(f"{name.replace('_', ' ')} {quantity_text(q)}" for name, q in limits.items())


def _concentration_text(drug: Drug) -> str:
    from .library import quantity_text

    conc = drug.concentration
    if conc is None:
        return "no concentration (volume only)"
    if conc.variable and conc.min is not None and conc.max is not None:
        return f"variable {quantity_text(conc.min)} to {quantity_text(conc.max)}"
    if conc.amount is not None and conc.volume is not None:
        return f"{quantity_text(conc.amount)} in {quantity_text(conc.volume)}"
    return "concentration not set"  # pragma: no cover - a valid library has one of the above


def _weight_required(drug: Drug, rules: AreaRules) -> bool:
    from .quantity import unit_parts

    if rules.weight_required is not None:
        return rules.weight_required
    units = [u for u in (drug.dose_unit, drug.bolus_unit, drug.loading_unit) if u is not None]
    return any(unit_parts(u).basis == "kg" for u in units)


def _area_text(area_id: str, drug: Drug, rules: AreaRules) -> list[str]:
    from .library import Limits

    parts = []
    for key, label in _PARAMETERS:
        limits = getattr(rules, key)
        if isinstance(limits, Limits) and limits.items():
            parts.append(f"{label} {_limits_text(limits)}")
    head = f"  {area_id}: " + ("; ".join(parts) or "no limits")
    if _weight_required(drug, rules):
        head += "; weight required"
    lines = [head]
    if rules.advisory:
        lines.append(f"    advisory: {rules.advisory}")
    return lines


def _drug_head(drug: Drug) -> str:
    head = f"{drug.display_name} [{drug.id}]  {_concentration_text(drug)}  dose {drug.dose_unit}"
    if drug.bolus_unit:
        head += f"  bolus {drug.bolus_unit}"
    if drug.loading_unit:
        head += f"  loading {drug.loading_unit}"
    if drug.high_alert:
        head += "  HIGH-ALERT"
    return head


def _show_lines(lib: Library, care_area: str | None, drug_id: str | None) -> list[str]:
    doc = lib.doc
    lines = [f"name: {doc.name}", f"version: {doc.version}", f"hash: {lib.hash}"]
    if doc.example:
        lines.append("EXAMPLE LIBRARY: NOT CLINICAL ADVICE (example = true)")
    if doc.notice:
        lines.append(f"notice: {doc.notice}")
    lines += [f"pump library: {pump.model} version {pump.version}" for pump in doc.pump_libraries]
    lines.append("care areas:")
    for area in doc.care_areas:
        if care_area is not None and area.id != care_area:
            continue
        text = f"  {area.id}: {area.name}; basic infusions {area.basic_infusion}"
        if area.basic_rate is not None and area.basic_rate.items():
            text += f"; basic rate {_limits_text(area.basic_rate)}"
        if area.basic_vtbi is not None and area.basic_vtbi.items():
            text += f"; basic VTBI {_limits_text(area.basic_vtbi)}"
        lines.append(text)
    lines.append("override reasons: " + "; ".join(doc.override_reasons))
    drugs = [d for d in doc.drugs if drug_id is None or d.id == drug_id]
    drugs = [d for d in drugs if care_area is None or care_area in d.care_areas]
    lines.append(f"drugs: {len(drugs)}" + (f" in {care_area}" if care_area else ""))
    for drug in drugs:
        lines += ["", _drug_head(drug)]
        for area_id, rules in drug.care_areas.items():
            if care_area is None or area_id == care_area:
                lines += _area_text(area_id, drug, rules)
    return lines


@library.command("show")
@click.argument("path", metavar="FILE", type=_FILE)
@click.option("--care-area", default=None, metavar="ID", help="Only this care area.")
@click.option("--drug", "drug_id", default=None, metavar="ID", help="Only this drug entry.")
def show_cmd(path: Path, care_area: str | None, drug_id: str | None) -> None:
    """Show a library as text: care areas, and per drug entry its concentration, units and limits."""
    with _reported():
        lib = _load(path)
    if care_area is not None and care_area not in lib.care_areas:
        known = ", ".join(lib.care_areas)
        _die(f"--care-area {care_area!r} is not a care area of {path}: expected one of {known}")
    if drug_id is not None and drug_id not in lib.drugs:
        _die(f"--drug {drug_id!r} is not a drug entry of {path}: expected one of {', '.join(lib.drugs)}")
    if care_area is not None and drug_id is not None and care_area not in lib.drugs[drug_id].care_areas:
        areas = ", ".join(lib.drugs[drug_id].care_areas)
        _die(f"{drug_id} has no limits in care area {care_area} (it has: {areas})")
    click.echo("\n".join(_show_lines(lib, care_area, drug_id)))


@library.command("diff")
@click.argument("old_path", metavar="OLD", type=_FILE)
@click.argument("new_path", metavar="NEW", type=_FILE)
def diff_cmd(old_path: Path, new_path: Path) -> None:
    """The clinical changes from OLD to NEW, one per line (exit 0 either way)."""
    from .library_diff import diff_libraries

    with _reported():
        old, new = _load(old_path), _load(new_path)
    click.echo(f"{old.label} → {new.label}")
    changes = diff_libraries(old, new)
    if not changes:
        click.echo("no clinical changes")
    for line in changes:
        click.echo(line)


@library.command("export")
@click.argument("path", metavar="FILE", type=_FILE)
@click.option("--csv", "out", type=_FILE, default=None, help="Write the CSV here (default: standard output).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def export_cmd(path: Path, out: Path | None, force: bool) -> None:
    """Export the limits of a library as CSV (one row per drug entry and care area)."""
    from .library_csv import export_csv

    with _reported():
        text = export_csv(_load(path))
        if out is None:
            click.echo(text, nl=False)
            return
        _write_new(out, text.encode("utf-8"), force)
    click.echo(f"wrote {out}", err=True)


@library.command("import")
@click.argument("csv_path", metavar="CSV", type=_FILE)
@click.option("--base", "base_path", required=True, type=_FILE, help="The library the CSV was exported from.")
@click.option("--out", "out", required=True, type=_FILE, help="The library file to write (TOML).")
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    default=None,
    help="The release number of the new library (default: the one import gives, the base's).",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def import_cmd(csv_path: Path, base_path: Path, out: Path, version: int | None, force: bool) -> None:
    """Build a library from BASE and the drug entries in an edited CSV; write it to OUT (unsigned)."""
    from .library import parse_library
    from .library_csv import import_csv
    from .library_store import read_file
    from .library_toml import render_toml

    with _reported():
        base = _load(base_path)
        raw = read_file(csv_path)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            _die(f"{csv_path}: not UTF-8 text at byte {exc.start} (save the spreadsheet as 'CSV UTF-8')")
        doc = import_csv(text, str(csv_path), base.doc)
        if version is not None:
            doc = doc.model_copy(update={"version": version})
        toml_text = render_toml(doc)
        lib = parse_library(toml_text.encode("utf-8"), str(out))  # what is written must read back
        _write_new(out, toml_text.encode("utf-8"), force)
    click.echo(
        f"wrote {out}: {lib.label}, {len(lib.drugs)} drugs in {len(lib.care_areas)} care areas "
        "(not approved yet: compare it with 'pumpgw library diff', then sign it as author and reviewer)"
    )
    if lib.version == base.version and lib.hash != base.hash:
        click.echo(
            f"note: it has the base's version number ({base.version}) but other content; give it a new "
            "one (--version) before it is signed: an installed library is never replaced by another "
            "with the same number",
            err=True,
        )


# --- keys and the trust store ---------------------------------------------------------------------


def _roles(text: str) -> list[str]:
    roles = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in roles if r not in _ROLES]
    if bad or not roles:
        _die(f"--roles {text!r} is not valid: expected a comma-separated list of {', '.join(_ROLES)}")
    return roles


def _create_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; never replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        _die(f"{path} exists: refusing to overwrite a key file (choose another --out)")
    except OSError as exc:
        _die(f"cannot create {path}: {exc.strerror}", EXIT_FAILED)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        _die(f"cannot write {path}: {exc.strerror}", EXIT_FAILED)


@library.command("keygen")
@click.option(
    "--name", required=True, help="The person the key belongs to, as the trust store will name them."
)
@click.option("--out", "out", required=True, type=_FILE, help="The private key file to create (mode 0600).")
@click.option(
    "--public-out", type=_FILE, default=None, help="Also write the public key (base64) to this file."
)
@click.option(
    "--roles",
    "roles_text",
    default="author,reviewer",
    show_default=True,
    help="The roles to suggest for the trust store (whoever keeps the store decides).",
)
def keygen_cmd(name: str, out: Path, public_out: Path | None, roles_text: str) -> None:
    """Make a signing key for one person: the private key file, and the public key for the trust store."""
    from .library_signing import generate_key, key_id, make_trusted_key, public_key_text, render_key_entry
    from .library_store import write_atomic

    name = _name(name)
    roles = _roles(roles_text)
    for path in (out, public_out):
        if path is not None:
            _check_parent(path)
            if path.exists() or path.is_symlink():
                _die(f"{path} exists: refusing to overwrite it (choose another file)")
    private_pem, public_raw = generate_key()
    _create_private(out, private_pem)
    b64 = public_key_text(public_raw)
    if public_out is not None:
        with _reported():
            write_atomic(public_out, (b64 + "\n").encode("ascii"))
    with _reported():
        entry = make_trusted_key(name, roles, public_raw, "--name/--roles")
    click.echo(
        f"wrote the private key to {out} (mode 0600): keep it secret; it signs drug libraries as {name}"
    )
    if public_out is not None:
        click.echo(f"wrote the public key to {public_out}")
    click.echo(f"key id: {key_id(public_raw)}")
    click.echo(f"public key: {b64}")
    click.echo("\nTo trust it, whoever keeps the trust store runs:")
    click.echo(
        f"  pumpgw library trust add --store STORE --name {shlex.quote(name)} "
        f"--roles {','.join(entry.roles)} --public-key {b64}"
    )
    click.echo("or adds this to the trust store file:\n")
    click.echo(render_key_entry(entry), nl=False)


@library.group("trust")
def trust() -> None:
    """The trust store: whose keys may approve libraries, and as author or reviewer."""


def _public_key_arg(value: str) -> bytes:
    from .library_signing import parse_public_key
    from .library_store import read_file

    path = Path(value)
    if path.is_file():
        raw = read_file(path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                str(path), "(file)", "(binary data)", "a public key as base64 text or PEM"
            ) from None
        return parse_public_key(text, str(path))
    try:
        return parse_public_key(value, "--public-key")
    except ConfigError as exc:
        raise ConfigError(
            "--public-key",
            "public_key",
            exc.value,
            f"{exc.expected}; or a file holding the key (no such file)",
        ) from None


@trust.command("add")
@_STORE_OPTION
@click.option("--name", required=True, help="The person the key belongs to.")
@click.option(
    "--roles",
    "roles_text",
    required=True,
    help="What the key may sign as: author, reviewer or author,reviewer.",
)
@click.option(
    "--public-key",
    "public_key",
    required=True,
    metavar="BASE64_OR_FILE",
    help="The public key, or a file holding it.",
)
def trust_add(store_path: Path, name: str, roles_text: str, public_key: str) -> None:
    """Trust a key: add it to the store (the store is created if it does not exist)."""
    from .library_signing import TrustStore, make_trusted_key, render_trust_store
    from .library_store import write_atomic

    name = _name(name)
    roles = _roles(roles_text)
    with _reported():
        store = _read_trust(store_path) if store_path.exists() else TrustStore()
        entry = make_trusted_key(name, roles, _public_key_arg(public_key), str(store_path))
        new = store.with_key(entry, str(store_path))
        _check_parent(store_path)
        write_atomic(store_path, render_trust_store(new).encode("utf-8"))
    click.echo(f"added {entry.id} ({entry.name}: {', '.join(entry.roles)}) to {store_path}")


@trust.command("list")
@_STORE_OPTION
def trust_list(store_path: Path) -> None:
    """List the trusted keys: id, person, roles."""
    with _reported():
        store = _read_trust(store_path)
    if not store.keys:
        click.echo(f"{store_path}: no keys")
        return
    click.echo(f"{store_path}: {len(store.keys)} key{'s' if len(store.keys) != 1 else ''}")
    for key in store.keys:
        click.echo(f"  {key.id}  {key.name}  {', '.join(key.roles)}")


@trust.command("remove")
@_STORE_OPTION
@click.argument("kid", metavar="KEY_ID")
def trust_remove(store_path: Path, kid: str) -> None:
    """Stop trusting a key. Libraries it approved no longer verify (an installed one included)."""
    from .library_signing import render_trust_store
    from .library_store import write_atomic

    with _reported():
        store = _read_trust(store_path)
        key = store.get(kid)
        new = store.without(kid, str(store_path))
        write_atomic(store_path, render_trust_store(new).encode("utf-8"))
    name = key.name if key is not None else "?"
    click.echo(f"removed {kid} ({name}) from {store_path}; libraries approved with this key no longer verify")


# --- approvals and installing ---------------------------------------------------------------------


def _read_key(path: Path) -> bytes:
    from .library_signing import load_private_key

    try:
        mode = path.stat().st_mode
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            str(path), "(file)", str(path), "an existing private key file (from 'pumpgw library keygen')"
        ) from None
    except PermissionError:
        raise EnvironmentProblem(
            f"cannot read {path}: permission denied", f"run as the key's owner, who may read {path}"
        ) from None
    except OSError as exc:
        raise ConfigError(str(path), "(file)", str(path), f"a readable file ({exc.strerror})") from None
    load_private_key(raw, str(path))  # a file that is not a key is not worth a warning about its mode
    if stat.S_IMODE(mode) & 0o077:
        click.echo(
            f"pumpgw library: warning: {path} is open to other users (mode {stat.S_IMODE(mode):04o}); "
            f"make it private: chmod 600 {shlex.quote(str(path))}",
            err=True,
        )
    return raw


@library.command("sign")
@click.argument("path", metavar="FILE", type=_FILE)
@click.option("--key", "key_path", required=True, type=_FILE, help="Your private key file (from keygen).")
@click.option(
    "--role", required=True, type=click.Choice(_ROLES), help="Sign as the author or as the reviewer."
)
@click.option("--name", required=True, help="Your name, as the trust store names you.")
def sign_cmd(path: Path, key_path: Path, role: str, name: str) -> None:
    """Approve a library as author or reviewer: adds your signature to FILE.approvals.json."""
    from .library_signing import key_id, parse_approvals, public_key_of, render_approvals, sign
    from .library_store import approvals_path, read_file, write_atomic

    name = _name(name)
    ap = approvals_path(path)
    with _reported():
        lib = _load(path)
        existing = parse_approvals(read_file(ap), str(ap)) if ap.exists() else None
        key = _read_key(key_path)
        signed_at = SystemClock().wall().strftime("%Y-%m-%dT%H:%M:%SZ")
        approvals = sign(
            lib, key, role, name, signed_at, existing, source=str(path), key_source=str(key_path)
        )
        write_atomic(ap, render_approvals(approvals).encode("utf-8"))
        kid = key_id(public_key_of(key, str(key_path)))
    click.echo(f"{path}: approved {lib.label} as {role} by {name} (key {kid}) at {signed_at}")
    missing = [r for r in _ROLES if approvals.by_role(r) is None]
    if missing:
        click.echo(f"{ap}: still needs a {' and a '.join(missing)} approval, by another person")
    else:
        click.echo(f"{ap}: author and reviewer have signed; check it with 'pumpgw library verify'")


@library.command("verify")
@click.argument("path", metavar="FILE", type=_FILE)
@_TRUST_OPTION
def verify_cmd(path: Path, trust_path: Path) -> None:
    """Check FILE's approvals against a trust store: two distinct people, valid signatures."""
    from .library_store import read_approved

    with _reported():
        store = _read_trust(trust_path)
        verified, _, _ = read_approved(path, store)
    click.echo(
        f"verified: {verified.library.label}, authored by {verified.author}, reviewed by {verified.reviewer}"
    )
    if verified.library.doc.example:
        click.echo("(an EXAMPLE library: not clinical advice)")


@library.command("install")
@click.argument("path", metavar="FILE", type=_FILE)
@_TRUST_OPTION
@click.option(
    "--state-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The gateway's state directory; the library goes into its library/ folder.",
)
@click.option("--allow-downgrade", is_flag=True, help="Allow a lower version than the installed one.")
def install_cmd(path: Path, trust_path: Path, state_dir: Path, allow_downgrade: bool) -> None:
    """Verify FILE and make it the gateway's active library (the old one is kept in history/)."""
    from .library_store import LibraryStore

    store = LibraryStore(state_dir / "library")
    with _reported():
        trust_store = _read_trust(trust_path)
        try:
            previous = store.current()
        except LibraryError:
            previous = None
        verified = store.install(path, trust_store, allow_downgrade=allow_downgrade)
    lib = verified.library
    who = f"authored by {verified.author}, reviewed by {verified.reviewer}"
    if previous is not None and previous.hash == lib.hash:
        click.echo(f"already installed: {lib.label}, {who}; nothing changed")
        return
    click.echo(f"installed {lib.label}, {who}, in {store.directory}")
    if previous is None:
        click.echo("replaced: nothing (no library was installed before)")
    else:
        click.echo(f"replaced: {previous.label}")
        if lib.version < previous.version:
            click.echo(f"DOWNGRADE: version {previous.version} -> {lib.version} (--allow-downgrade)")
