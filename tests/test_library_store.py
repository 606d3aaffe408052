"""The installed drug library (pumpgw.gateway.library_store): verified installs, history, refusals."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from pumpgw.gateway import library_store
from pumpgw.gateway.errors import EnvironmentProblem, LibraryError, LibraryNotTrusted
from pumpgw.gateway.library import parse_library
from pumpgw.gateway.library_signing import (
    TrustStore,
    generate_key,
    make_trusted_key,
    render_approvals,
    sign,
)
from pumpgw.gateway.library_store import LibraryStore, approvals_path

EXAMPLE = Path(__file__).resolve().parents[1] / "gateway" / "examples" / "drug-library.example.toml"
KEYS = {"Alice Author": generate_key(), "Bob Reviewer": generate_key()}


@pytest.fixture(scope="module")
def trust() -> TrustStore:
    return TrustStore(
        (
            make_trusted_key("Alice Author", ["author"], KEYS["Alice Author"][1], "t"),
            make_trusted_key("Bob Reviewer", ["reviewer"], KEYS["Bob Reviewer"][1], "t"),
        )
    )


def release(directory: Path, name: str, version: int = 7, *, edit: str = "", approve: bool = True) -> Path:
    """The example library as ``name`` with ``version`` (and an optional extra comment/limit edit),
    signed by the author and the reviewer unless ``approve`` is false."""
    text = re.sub(r"(?m)^version = 7$", f"version = {version}", EXAMPLE.read_text(), count=1)
    if edit:
        text = text.replace('dose = { soft_max = "200 ug/h", hard_max = "300 ug/h" }', edit, 1)
    path = directory / name
    path.write_text(text)
    if approve:
        lib = parse_library(path.read_bytes(), str(path))
        approvals = sign(lib, KEYS["Alice Author"][0], "author", "Alice Author", "2026-11-22T10:00:00Z")
        approvals = sign(
            lib, KEYS["Bob Reviewer"][0], "reviewer", "Bob Reviewer", "2026-11-22T11:00:00Z", approvals
        )
        approvals_path(path).write_text(render_approvals(approvals))
    return path


def test_install_writes_active_library_approvals_and_history(tmp_path: Path, trust: TrustStore) -> None:
    src = release(tmp_path, "lib-v7.toml")
    store = LibraryStore(tmp_path / "state" / "library")
    verified = store.install(src, trust)
    assert verified.author == "Alice Author"
    assert verified.reviewer == "Bob Reviewer"
    assert verified.library.version == 7

    assert store.active_path.read_bytes() == src.read_bytes()  # the original bytes, comments and all
    assert approvals_path(store.active_path).read_bytes() == approvals_path(src).read_bytes()
    assert approvals_path(store.active_path).name == "active.toml.approvals.json"
    hist = store.history_dir / f"7-{verified.library.hash.removeprefix('sha256:')[:12]}.toml"
    assert hist.read_bytes() == src.read_bytes()
    assert approvals_path(hist).read_bytes() == approvals_path(src).read_bytes()
    assert not list(store.directory.glob(".*.tmp"))  # no temporary files left behind

    active = store.load_active(trust)
    assert active.library.hash == verified.library.hash
    assert active.reviewer == "Bob Reviewer"
    current = store.current()
    assert current is not None
    assert current.hash == verified.library.hash


def test_reinstalling_the_same_library_changes_nothing(tmp_path: Path, trust: TrustStore) -> None:
    store = LibraryStore(tmp_path / "library")
    store.install(release(tmp_path, "a.toml"), trust)
    before = (store.active_path.stat().st_ino, approvals_path(store.active_path).stat().st_ino)
    # The same content under another name, with other comments: the same library.
    again = release(tmp_path, "b.toml")
    again.write_text("# copy\n" + again.read_text())
    verified = store.install(again, trust)
    assert verified.library.version == 7
    after = (store.active_path.stat().st_ino, approvals_path(store.active_path).stat().st_ino)
    assert after == before  # not rewritten
    assert len(list(store.history_dir.glob("*.toml"))) == 1


@pytest.mark.hazard("HAZ-018")
def test_upgrade_then_downgrade_is_refused_unless_allowed(tmp_path: Path, trust: TrustStore) -> None:
    store = LibraryStore(tmp_path / "library")
    v7 = release(tmp_path, "v7.toml", 7)
    v8 = release(tmp_path, "v8.toml", 8)
    store.install(v7, trust)
    store.install(v8, trust)
    assert store.load_active(trust).library.version == 8

    with pytest.raises(LibraryError) as exc:
        store.install(v7, trust)
    assert "version 7 is lower than the installed Example library v8" in str(exc.value)
    assert "downgrade" in str(exc.value)
    assert store.load_active(trust).library.version == 8  # unchanged

    assert store.install(v7, trust, allow_downgrade=True).library.version == 7
    assert store.load_active(trust).library.version == 7
    assert len(list(store.history_dir.glob("*.toml"))) == 2


@pytest.mark.hazard("HAZ-018")
@pytest.mark.hazard("HAZ-004")
def test_other_content_under_the_active_version_number_is_refused(tmp_path: Path, trust: TrustStore) -> None:
    store = LibraryStore(tmp_path / "library")
    first = store.install(release(tmp_path, "a.toml"), trust)
    other = release(tmp_path, "b.toml", edit='dose = { soft_max = "150 ug/h", hard_max = "300 ug/h" }')
    for allow in (False, True):
        with pytest.raises(LibraryError) as exc:
            store.install(other, trust, allow_downgrade=allow)
        assert "version 7 is already installed with other content" in str(exc.value)
        assert first.library.hash in str(exc.value)
    assert store.load_active(trust).library.hash == first.library.hash


@pytest.mark.hazard("HAZ-018")
def test_a_version_number_used_before_cannot_be_reused(tmp_path: Path, trust: TrustStore) -> None:
    store = LibraryStore(tmp_path / "library")
    store.install(release(tmp_path, "v7.toml", 7), trust)
    store.install(release(tmp_path, "v8.toml", 8), trust)
    other7 = release(tmp_path, "v7b.toml", 7, edit='dose = { soft_max = "150 ug/h", hard_max = "300 ug/h" }')
    with pytest.raises(LibraryError, match="version 7 was installed before with other content"):
        store.install(other7, trust, allow_downgrade=True)
    assert store.load_active(trust).library.version == 8


@pytest.mark.hazard("HAZ-004")
def test_an_unapproved_or_untrusted_library_is_never_installed(tmp_path: Path, trust: TrustStore) -> None:
    store = LibraryStore(tmp_path / "library")
    unsigned = release(tmp_path, "u.toml", approve=False)
    with pytest.raises(LibraryNotTrusted, match="no approvals file"):
        store.install(unsigned, trust)
    with pytest.raises(LibraryNotTrusted, match="not in the trust store"):
        store.install(release(tmp_path, "s.toml"), TrustStore())
    tampered = release(tmp_path, "t.toml")
    tampered.write_text(tampered.read_text().replace('"300 ug/h"', '"3000 ug/h"', 1))
    with pytest.raises(LibraryNotTrusted, match="changed after it was approved"):
        store.install(tampered, trust)
    assert not store.active_path.exists()
    with pytest.raises(LibraryError, match="no library installed: run pumpgw library install"):
        store.load_active(trust)


@pytest.mark.hazard("HAZ-004")
def test_load_active_verifies_again_every_time(tmp_path: Path, trust: TrustStore) -> None:
    store = LibraryStore(tmp_path / "library")
    store.install(release(tmp_path, "a.toml"), trust)
    text = store.active_path.read_text()
    store.active_path.write_text(text.replace('"300 ug/h"', '"3000 ug/h"', 1))
    with pytest.raises(LibraryNotTrusted) as exc:
        store.load_active(trust)
    assert exc.value.source == str(store.active_path)
    store.active_path.write_text(text)
    assert store.load_active(trust).library.version == 7
    with pytest.raises(LibraryNotTrusted, match="not in the trust store"):
        store.load_active(TrustStore())  # a key removed from the store: the active library stops verifying
    store.active_path.write_text("not = [valid")
    with pytest.raises(LibraryError) as exc2:
        store.load_active(trust)
    assert exc2.value.source == str(store.active_path)
    assert "not valid TOML" in str(exc2.value)


@pytest.mark.hazard("HAZ-004")
def test_a_crash_between_the_two_writes_fails_safe_and_a_new_install_repairs_it(
    tmp_path: Path, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LibraryStore(tmp_path / "library")
    store.install(release(tmp_path, "v7.toml", 7), trust)
    real_write = library_store.write_atomic

    def crash_on_library(path: Path, data: bytes, mode: int = 0o644) -> None:
        if path == store.active_path:
            raise OSError("power cut")
        real_write(path, data, mode)

    monkeypatch.setattr(library_store, "write_atomic", crash_on_library)
    v8 = release(tmp_path, "v8.toml", 8)
    with pytest.raises(OSError, match="power cut"):
        store.install(v8, trust)
    monkeypatch.undo()
    # The approvals are v8's, the library still v7's: refused, never used unverified.
    with pytest.raises(LibraryNotTrusted, match="changed after it was approved"):
        store.load_active(trust)
    assert store.install(v8, trust).library.version == 8
    assert store.load_active(trust).library.version == 8


def test_a_corrupt_active_library_is_replaced_only_when_told(tmp_path: Path, trust: TrustStore) -> None:
    store = LibraryStore(tmp_path / "library")
    store.install(release(tmp_path, "v7.toml", 7), trust)
    store.active_path.write_bytes(b"\xff\xfe garbage")
    v8 = release(tmp_path, "v8.toml", 8)
    with pytest.raises(LibraryError, match="cannot be checked against its version"):
        store.install(v8, trust)
    assert store.install(v8, trust, allow_downgrade=True).library.version == 8


def test_file_problems_name_the_file_and_permission_problems_say_what_to_do(
    tmp_path: Path, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LibraryStore(tmp_path / "library")
    with pytest.raises(LibraryError) as exc:
        store.install(tmp_path / "missing.toml", trust)
    assert exc.value.source == str(tmp_path / "missing.toml")
    assert "no such file" in str(exc.value)

    src = release(tmp_path, "a.toml")
    approvals_path(src).write_text("{")
    with pytest.raises(LibraryError) as exc2:
        store.install(src, trust)
    assert exc2.value.source == str(approvals_path(src))

    def denied(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(EnvironmentProblem) as exc3:
        store.install(release(tmp_path, "b.toml"), trust)
    assert str(store.directory) in str(exc3.value)
    assert "permission denied" in str(exc3.value).lower()
    assert "gateway's user" in exc3.value.fix

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EnvironmentProblem, match="cannot write"):
        LibraryStore(blocker / "library").install(release(tmp_path, "c.toml"), trust)
