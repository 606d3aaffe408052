"""``pumpgw library``: the command line for checking, signing, verifying and installing libraries."""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pumpgw.gateway.library_cli import library
from pumpgw.gateway.library_signing import parse_approvals, parse_trust_store
from pumpgw.gateway.library_store import approvals_path

EXAMPLE = Path(__file__).resolve().parents[1] / "gateway" / "examples" / "drug-library.example.toml"
PUMPGW = Path(sys.executable).parent / "pumpgw"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(library, [str(a) for a in args])


def copy_example(directory: Path, name: str = "lib.toml", version: int = 7) -> Path:
    path = directory / name
    text = re.sub(r"(?m)^version = 7$", f"version = {version}", EXAMPLE.read_text(), count=1)
    path.write_text(text)
    return path


def pem_body(key_file: Path) -> str:
    """The secret part of a PEM private key file: its base64 lines, joined."""
    return "".join(key_file.read_text().splitlines()[1:-1])


def keygen(directory: Path, name: str, file: str) -> tuple[Path, str]:
    """A key for ``name``: (private key file, public key base64)."""
    out = directory / file
    result = run("keygen", "--name", name, "--out", out)
    assert result.exit_code == 0, result.output
    match = re.search(r"^public key: (\S+)$", result.stdout, re.M)
    assert match is not None
    return out, match.group(1)


@pytest.fixture
def team(tmp_path: Path) -> dict[str, Path]:
    """An author (Alice) and a reviewer (Bob) with keys in a trust store."""
    alice, alice_pub = keygen(tmp_path, "Alice Author", "alice.pem")
    bob, bob_pub = keygen(tmp_path, "Bob Reviewer", "bob.pem")
    store = tmp_path / "trust.toml"
    for name, roles, pub in (("Alice Author", "author", alice_pub), ("Bob Reviewer", "reviewer", bob_pub)):
        result = run("trust", "add", "--store", store, "--name", name, "--roles", roles, "--public-key", pub)
        assert result.exit_code == 0, result.output
    return {"alice": alice, "bob": bob, "store": store}


def approve(path: Path, team: dict[str, Path]) -> None:
    for who, role, name in (("alice", "author", "Alice Author"), ("bob", "reviewer", "Bob Reviewer")):
        result = run("sign", path, "--key", team[who], "--role", role, "--name", name)
        assert result.exit_code == 0, result.output


# --- validate and show --------------------------------------------------------------------------


def test_validate_says_what_the_library_is(tmp_path: Path) -> None:
    result = run("validate", EXAMPLE)
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        rf"{re.escape(str(EXAMPLE))}: valid: Example library v7 \(sha256:[0-9a-f]{{12}}\), 15 drugs in 3 care areas\n",
        result.stdout,
    )


def test_validate_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        EXAMPLE.read_text()
        .replace(
            'dose = { soft_max = "200 ug/h", hard_max = "300 ug/h" }',
            'dose = { soft_max = "400 ug/h", hard_max = "300 ug/h" }',
            1,
        )
        .replace('gtin = ["09521234500018"]', 'gtin = ["09521234500019"]', 1)
    )
    result = run("validate", bad)
    assert result.exit_code == 2
    assert "2 problems" in result.stderr
    assert "drugs[0].care_areas.icu-adult.dose.hard_max" in result.stderr
    assert "drugs[1].codes.gtin: fentanyl-10: GTIN 09521234500019 has a wrong check digit" in result.stderr
    assert "Traceback" not in result.output
    missing = run("validate", tmp_path / "nope.toml")
    assert missing.exit_code == 2
    assert "nope.toml" in missing.stderr
    assert "no such file" in missing.stderr


def test_show_prints_each_entry_with_its_limits_per_care_area() -> None:
    result = run("show", EXAMPLE)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "name: Example library\nversion: 7\nhash: sha256:" in out
    assert "EXAMPLE LIBRARY: NOT CLINICAL ADVICE" in out
    assert (
        "fentaNYL 50 microgram/mL [fentanyl-50]  2500 ug in 50 mL  dose ug/h  bolus ug  HIGH-ALERT\n" in out
    )
    assert (
        "  icu-adult: dose soft max 200 ug/h, hard max 300 ug/h; bolus dose soft max 50 ug, hard max 100 ug; "
        "bolus rate hard max 300 mL/h; bolus volume hard max 2 mL; VTBI hard max 50 mL\n"
    ) in out
    assert "DOBUTamine (variable concentration) [dobutamine-variable]  variable 0.5 mg/mL to 5 mg/mL" in out
    assert "Hartmann's solution 1000 mL [hartmanns-1000]  no concentration (volume only)  dose mL/h" in out
    assert "weight required" in out  # propofol in mg/kg/h
    assert "    advisory: Central line only." in out
    assert "drugs: 15" in out


def test_show_filters_by_care_area_and_drug_and_refuses_unknown_ids() -> None:
    ward = run("show", EXAMPLE, "--care-area", "ward-adult").stdout
    assert "  ward-adult: dose soft max 4 mg/h, hard max 8 mg/h" in ward  # morphine
    assert "icu-adult:" not in ward
    assert "fentanyl-50" not in ward  # not in the ward
    one = run("show", EXAMPLE, "--drug", "heparin-50").stdout
    assert "[heparin-50]" in one
    assert "[insulin-1]" not in one
    assert "  icu-adult: dose soft max 25 [iU]/kg/h, hard max 40 [iU]/kg/h" in one
    for args, needle in (
        (("--care-area", "nicu"), "--care-area 'nicu' is not a care area"),
        (("--drug", "fentanil"), "--drug 'fentanil' is not a drug entry"),
        (
            ("--drug", "magnesium-40", "--care-area", "icu-adult"),
            "magnesium-40 has no limits in care area icu-adult",
        ),
    ):
        result = run("show", EXAMPLE, *args)
        assert result.exit_code == 2
        assert needle in result.stderr


# --- keys and trust -----------------------------------------------------------------------------


def test_keygen_writes_a_private_file_and_never_prints_the_key(tmp_path: Path) -> None:
    out = tmp_path / "k.pem"
    pub = tmp_path / "k.pub"
    result = run("keygen", "--name", "Alice Author", "--out", out, "--public-out", pub)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pem_body(out) not in result.output
    b64 = pub.read_text().strip()
    assert f"public key: {b64}" in result.stdout
    assert re.search(r"key id: ed25519:[0-9a-f]{16}", result.stdout)
    # The snippet printed is a valid trust store entry.
    snippet = result.stdout[result.stdout.index("[[keys]]") :]
    store = parse_trust_store(snippet.encode(), "snippet")
    assert store.keys[0].name == "Alice Author"
    assert store.keys[0].public_key_text == b64

    again = run("keygen", "--name", "Alice Author", "--out", out)
    assert again.exit_code == 2
    assert "refusing to overwrite" in again.stderr
    assert out.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert run("keygen", "--name", " ", "--out", tmp_path / "x.pem").exit_code == 2
    assert not (tmp_path / "x.pem").exists()


def test_trust_add_list_remove(tmp_path: Path) -> None:
    store = tmp_path / "trust.toml"
    key, pub = keygen(tmp_path, "Alice Author", "a.pem")
    pub_file = tmp_path / "a.pub"
    pub_file.write_text(pub + "\n")
    added = run(
        "trust",
        "add",
        "--store",
        store,
        "--name",
        "Alice Author",
        "--roles",
        "author,reviewer",
        "--public-key",
        pub_file,
    )
    assert added.exit_code == 0, added.output
    listed = run("trust", "list", "--store", store)
    assert re.search(r"ed25519:[0-9a-f]{16}  Alice Author  author, reviewer", listed.stdout)
    kid = parse_trust_store(store.read_bytes(), "s").keys[0].id

    dup = run("trust", "add", "--store", store, "--name", "A", "--roles", "author", "--public-key", pub)
    assert dup.exit_code == 2
    assert "not already in the store" in dup.stderr
    bad_role = run(
        "trust", "add", "--store", store, "--name", "A", "--roles", "author,boss", "--public-key", pub
    )
    assert bad_role.exit_code == 2
    assert "--roles 'author,boss'" in bad_role.stderr
    secret = run("trust", "add", "--store", store, "--name", "A", "--roles", "author", "--public-key", key)
    assert secret.exit_code == 2
    assert "private key" in secret.stderr
    assert pem_body(key) not in secret.output
    garbage = run("trust", "add", "--store", store, "--name", "A", "--roles", "author", "--public-key", "xyz")
    assert garbage.exit_code == 2
    assert "'xyz'" in garbage.stderr

    removed = run("trust", "remove", "--store", store, kid)
    assert removed.exit_code == 0, removed.output
    assert "no longer verify" in removed.stdout
    assert run("trust", "list", "--store", store).stdout.endswith(": no keys\n")
    unknown = run("trust", "remove", "--store", store, kid)
    assert unknown.exit_code == 2
    assert kid in unknown.stderr
    nostore = run("trust", "list", "--store", tmp_path / "none.toml")
    assert nostore.exit_code == 2
    assert "none.toml" in nostore.stderr


# --- sign, verify, install ----------------------------------------------------------------------


def test_sign_and_verify(tmp_path: Path, team: dict[str, Path]) -> None:
    lib = copy_example(tmp_path)
    unsigned = run("verify", lib, "--trust", team["store"])
    assert unsigned.exit_code == 1
    assert "NOT TRUSTED" in unsigned.stderr
    assert "no approvals file" in unsigned.stderr

    first = run("sign", lib, "--key", team["alice"], "--role", "author", "--name", "Alice Author")
    assert first.exit_code == 0, first.output
    assert "approved Example library v7" in first.stdout
    assert "still needs a reviewer approval" in first.stdout
    half = run("verify", lib, "--trust", team["store"])
    assert half.exit_code == 1
    assert "not approved by a reviewer" in half.stderr

    second = run("sign", lib, "--key", team["bob"], "--role", "reviewer", "--name", "Bob Reviewer")
    assert second.exit_code == 0, second.output
    approvals = parse_approvals(approvals_path(lib).read_bytes(), "a")
    assert [(a.role, a.name) for a in approvals.approvals] == [
        ("author", "Alice Author"),
        ("reviewer", "Bob Reviewer"),
    ]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", approvals.approvals[0].signed_at)

    ok = run("verify", lib, "--trust", team["store"])
    assert ok.exit_code == 0, ok.output
    assert re.match(
        r"verified: Example library v7 \(sha256:[0-9a-f]{12}\), authored by Alice Author, reviewed by Bob Reviewer\n",
        ok.stdout,
    )
    for key in ("alice", "bob"):
        body = pem_body(team[key])
        assert body not in first.output + second.output + ok.output


def test_a_library_changed_after_signing_fails_verification_naming_both_hashes(
    tmp_path: Path, team: dict[str, Path]
) -> None:
    lib = copy_example(tmp_path)
    approve(lib, team)
    signed_hash = parse_approvals(approvals_path(lib).read_bytes(), "a").library_hash
    lib.write_text(
        lib.read_text().replace(
            'bolus_dose = { soft_max = "50 ug", hard_max = "100 ug" }',
            'bolus_dose = { soft_max = "50 ug", hard_max = "50 ug" }',
            1,
        )
    )
    result = run("verify", lib, "--trust", team["store"])
    assert result.exit_code == 1
    assert signed_hash in result.stderr
    new_hash = re.search(r"this library is (sha256:[0-9a-f]{64})", result.stderr)
    assert new_hash is not None
    assert new_hash.group(1) != signed_hash
    # Signing the changed file on top of the old approvals is refused too.
    again = run("sign", lib, "--key", team["bob"], "--role", "reviewer", "--name", "Bob Reviewer")
    assert again.exit_code == 2
    assert "changed after it was approved" in again.stderr


def test_one_person_cannot_sign_both_roles(tmp_path: Path, team: dict[str, Path]) -> None:
    lib = copy_example(tmp_path)
    assert (
        run("sign", lib, "--key", team["alice"], "--role", "author", "--name", "Alice Author").exit_code == 0
    )
    result = run("sign", lib, "--key", team["alice"], "--role", "reviewer", "--name", "Alice Author")
    assert result.exit_code == 2
    assert "two distinct people" in result.stderr
    twice = run("sign", lib, "--key", team["bob"], "--role", "author", "--name", "Bob Reviewer")
    assert twice.exit_code == 2
    assert "already approved as author by Alice Author" in twice.stderr


def test_sign_refuses_bad_keys_and_invalid_libraries(tmp_path: Path, team: dict[str, Path]) -> None:
    lib = copy_example(tmp_path)
    not_a_key = run("sign", lib, "--key", lib, "--role", "author", "--name", "Alice Author")
    assert not_a_key.exit_code == 2
    assert "Ed25519 private key" in not_a_key.stderr
    missing = run("sign", lib, "--key", tmp_path / "nokey.pem", "--role", "author", "--name", "A")
    assert missing.exit_code == 2
    assert "nokey.pem" in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('"2500 ug"', '"2500 microgram"'))
    invalid = run("sign", bad, "--key", team["alice"], "--role", "author", "--name", "Alice Author")
    assert invalid.exit_code == 2
    assert "drugs[0].concentration.amount" in invalid.stderr
    assert not approvals_path(bad).exists()
    assert run("sign", lib, "--key", team["alice"], "--role", "pharmacist", "--name", "A").exit_code == 2

    os.chmod(team["alice"], 0o644)
    loose = run("sign", lib, "--key", team["alice"], "--role", "author", "--name", "Alice Author")
    assert loose.exit_code == 0, loose.output
    assert "is open to other users (mode 0644)" in loose.stderr


def test_verify_fails_for_unknown_keys_and_wrong_roles(tmp_path: Path, team: dict[str, Path]) -> None:
    lib = copy_example(tmp_path)
    approve(lib, team)
    _, carol_pub = keygen(tmp_path, "Carol", "carol.pem")
    other = tmp_path / "other.toml"
    assert (
        run(
            "trust",
            "add",
            "--store",
            other,
            "--name",
            "Carol",
            "--roles",
            "author",
            "--public-key",
            carol_pub,
        ).exit_code
        == 0
    )
    unknown = run("verify", lib, "--trust", other)
    assert unknown.exit_code == 1
    assert "the key is not in the trust store" in unknown.stderr

    wrong_roles = tmp_path / "roles.toml"
    text = team["store"].read_text().replace('roles = ["reviewer"]', 'roles = ["author"]')
    wrong_roles.write_text(text)
    result = run("verify", lib, "--trust", wrong_roles)
    assert result.exit_code == 1
    assert "sign as author only, not as reviewer" in result.stderr

    no_store = run("verify", lib, "--trust", tmp_path / "missing.toml")
    assert no_store.exit_code == 2
    assert "missing.toml" in no_store.stderr
    assert run("verify", lib).exit_code == 2  # --trust is required: no silent default


def test_install_replace_downgrade_and_reinstall(tmp_path: Path, team: dict[str, Path]) -> None:
    v7 = copy_example(tmp_path, "v7.toml", 7)
    v8 = copy_example(tmp_path, "v8.toml", 8)
    approve(v7, team)
    approve(v8, team)
    state = tmp_path / "state"

    first = run("install", v7, "--trust", team["store"], "--state-dir", state)
    assert first.exit_code == 0, first.output
    assert "installed Example library v7" in first.stdout
    assert "authored by Alice Author, reviewed by Bob Reviewer" in first.stdout
    assert "replaced: nothing" in first.stdout
    assert (state / "library" / "active.toml").read_bytes() == v7.read_bytes()

    second = run("install", v8, "--trust", team["store"], "--state-dir", state)
    assert second.exit_code == 0, second.output
    assert "installed Example library v8" in second.stdout
    assert "replaced: Example library v7" in second.stdout

    down = run("install", v7, "--trust", team["store"], "--state-dir", state)
    assert down.exit_code == 2
    assert "lower than the installed Example library v8" in down.stderr
    assert (state / "library" / "active.toml").read_bytes() == v8.read_bytes()

    allowed = run("install", v7, "--trust", team["store"], "--state-dir", state, "--allow-downgrade")
    assert allowed.exit_code == 0, allowed.output
    assert "DOWNGRADE: version 8 -> 7" in allowed.stdout

    same = run("install", v7, "--trust", team["store"], "--state-dir", state)
    assert same.exit_code == 0, same.output
    assert "already installed: Example library v7" in same.stdout
    assert "nothing changed" in same.stdout

    different = copy_example(tmp_path, "v7b.toml", 7)
    different.write_text(different.read_text().replace('"300 ug/h"', '"250 ug/h"', 1))
    approve(different, team)
    clash = run("install", different, "--trust", team["store"], "--state-dir", state)
    assert clash.exit_code == 2
    assert "version 7 is already installed with other content" in clash.stderr

    unsigned = copy_example(tmp_path, "v9.toml", 9)
    refused = run("install", unsigned, "--trust", team["store"], "--state-dir", state)
    assert refused.exit_code == 1
    assert "NOT TRUSTED" in refused.stderr


def test_the_library_group_is_a_pumpgw_command() -> None:
    from pumpgw.gateway.cli import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = CliRunner().invoke(main, ["library", "--help"])
    finally:  # main configures logging onto the runner's stream: put it back
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
    assert result.exit_code == 0
    assert "Drug libraries: check, compare, sign and install." in result.output
    for command in (
        "validate",
        "show",
        "diff",
        "export",
        "import",
        "keygen",
        "trust",
        "sign",
        "verify",
        "install",
    ):
        assert re.search(rf"^  {command}\b", result.output, re.M), command


@pytest.mark.slow
def test_the_installed_console_script_end_to_end(tmp_path: Path) -> None:
    """keygen -> trust add -> sign (author) -> sign (reviewer) -> verify -> install, with the real
    ``pumpgw`` executable, on the example library copied to tmp_path."""
    assert PUMPGW.is_file(), f"{PUMPGW} is missing: run scripts/bootstrap"
    lib = tmp_path / "drug-library.toml"
    shutil.copy(EXAMPLE, lib)
    outputs: list[str] = []

    def pumpgw(*args: str | Path, code: int = 0) -> str:
        proc = subprocess.run(
            [str(PUMPGW), "library", *map(str, args)], capture_output=True, text=True, timeout=60, check=False
        )
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == code, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        return proc.stdout

    store = tmp_path / "trust.toml"
    for name, file, role in (
        ("Alice Author", "alice.pem", "author"),
        ("Bob Reviewer", "bob.pem", "reviewer"),
    ):
        out = pumpgw(
            "keygen", "--name", name, "--out", tmp_path / file, "--public-out", tmp_path / f"{file}.pub"
        )
        assert stat.S_IMODE((tmp_path / file).stat().st_mode) == 0o600
        assert "key id: ed25519:" in out
        pumpgw(
            "trust",
            "add",
            "--store",
            store,
            "--name",
            name,
            "--roles",
            role,
            "--public-key",
            tmp_path / f"{file}.pub",
        )
    pumpgw("verify", lib, "--trust", store, code=1)
    pumpgw("sign", lib, "--key", tmp_path / "alice.pem", "--role", "author", "--name", "Alice Author")
    pumpgw("sign", lib, "--key", tmp_path / "bob.pem", "--role", "reviewer", "--name", "Bob Reviewer")
    out = pumpgw("verify", lib, "--trust", store)
    assert "verified: Example library v7" in out
    assert "authored by Alice Author, reviewed by Bob Reviewer" in out
    out = pumpgw("install", lib, "--trust", store, "--state-dir", tmp_path / "state")
    assert "installed Example library v7" in out
    active = tmp_path / "state" / "library" / "active.toml"
    assert active.read_bytes() == EXAMPLE.read_bytes()
    out = pumpgw("verify", active, "--trust", store)  # the installed copy verifies as it is
    assert "verified: Example library v7" in out
    for key in ("alice.pem", "bob.pem"):
        body = pem_body(tmp_path / key)
        assert all(body not in text for text in outputs)


def test_the_cli_roles_are_the_signing_roles() -> None:
    from pumpgw.gateway import library_cli, library_signing

    assert library_cli._ROLES == library_signing.ROLES


# --- diff, export, import (the work is library_diff's and library_csv's; this is the wiring) -----


def test_diff_prints_each_change_or_says_there_is_none(tmp_path: Path) -> None:
    old = copy_example(tmp_path, "old.toml", 7)
    new = copy_example(tmp_path, "new.toml", 8)
    new.write_text(
        new.read_text().replace(
            'bolus_dose = { soft_max = "50 ug", hard_max = "100 ug" }',
            'bolus_dose = { soft_max = "50 ug", hard_max = "50 ug" }',
            1,
        )
    )
    result = run("diff", old, new)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.fullmatch(
        r"Example library v7 \(sha256:[0-9a-f]{12}\) → Example library v8 \(sha256:[0-9a-f]{12}\)", lines[0]
    )
    assert any(
        "fentanyl-50" in line
        and "icu-adult" in line
        and "bolus dose hard max" in line
        and "100 ug" in line
        and "50 ug" in line
        for line in lines[1:]
    )
    assert not any("fentanyl-10" in line for line in lines[1:])
    same = run("diff", old, old)
    assert same.exit_code == 0
    assert same.stdout.splitlines()[1:] == ["no clinical changes"]
    broken = run("diff", old, tmp_path / "missing.toml")
    assert broken.exit_code == 2
    assert "missing.toml" in broken.stderr


def test_export_then_import_gives_the_same_library_back(tmp_path: Path) -> None:
    csv_file = tmp_path / "lib.csv"
    exported = run("export", EXAMPLE, "--csv", csv_file)
    assert exported.exit_code == 0, exported.output
    assert csv_file.read_text().startswith("drug_id,")
    to_stdout = run("export", EXAMPLE)
    assert to_stdout.stdout_bytes == csv_file.read_bytes()
    assert run("export", EXAMPLE, "--csv", csv_file).exit_code == 2  # exists
    assert run("export", EXAMPLE, "--csv", csv_file, "--force").exit_code == 0

    out = tmp_path / "round.toml"
    imported = run("import", csv_file, "--base", EXAMPLE, "--out", out)
    assert imported.exit_code == 0, imported.output
    assert "note:" not in imported.stderr
    original = run("validate", EXAMPLE).stdout.split(": valid: ")[1]
    assert run("validate", out).stdout.split(": valid: ")[1] == original  # same label: same hash

    again = run("import", csv_file, "--base", EXAMPLE, "--out", out)
    assert again.exit_code == 2
    assert "refusing to overwrite" in again.stderr


def test_import_of_an_edited_csv_with_a_new_version(tmp_path: Path) -> None:
    csv_file = tmp_path / "lib.csv"
    assert run("export", EXAMPLE, "--csv", csv_file).exit_code == 0
    text = csv_file.read_bytes().decode()
    csv_file.write_bytes(text.replace("200 ug/h,300 ug/h", "200 ug/h,250 ug/h", 1).encode())
    out = tmp_path / "v8.toml"
    same_number = run("import", csv_file, "--base", EXAMPLE, "--out", tmp_path / "v7.toml")
    assert same_number.exit_code == 0, same_number.output
    assert "note: it has the base's version number (7)" in same_number.stderr
    result = run("import", csv_file, "--base", EXAMPLE, "--out", out, "--version", "8")
    assert result.exit_code == 0, result.output
    assert "Example library v8" in result.stdout
    diff = run("diff", EXAMPLE, out).stdout
    assert "fentanyl-50" in diff
    assert "300 ug/h" in diff
    assert "250 ug/h" in diff

    bad = tmp_path / "bad.csv"
    bad.write_bytes(text.replace("200 ug/h,300 ug/h", "200 ug/h,lots", 1).encode())
    refused = run("import", bad, "--base", EXAMPLE, "--out", tmp_path / "bad.toml")
    assert refused.exit_code == 2
    assert "lots" in refused.stderr
    assert not (tmp_path / "bad.toml").exists()
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(text.encode("utf-8").replace(b"fentaNYL", b"fenta\xd1YL", 1))
    undecodable = run("import", latin1, "--base", EXAMPLE, "--out", tmp_path / "x.toml")
    assert undecodable.exit_code == 2
    assert "not UTF-8" in undecodable.stderr
