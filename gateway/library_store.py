"""The installed drug library: one verified library is *active*; installs are atomic and kept.

A :class:`LibraryStore` owns one directory (``<state dir>/library``)::

    active.toml                        the active library, byte for byte as it was signed
    active.toml.approvals.json         its approvals
    history/7-1a2b3c4d5e6f.toml        every library ever installed: <version>-<12 hex of its hash>
    history/7-1a2b3c4d5e6f.toml.approvals.json
    .lock                              held while an install runs

Approvals always sit next to their library as ``<library file>.approvals.json``
(:func:`approvals_path`), here too, so ``pumpgw library verify`` and ``show`` work on the active and
the historic files as they are. The library file keeps its original bytes, TOML or JSON (the parser
tells them apart by content), whatever its name says.

:meth:`LibraryStore.install` reads a library and its approvals, parses and verifies them against the
trust store, and refuses a lower version than the active one (unless ``allow_downgrade``) and a
*different* library with a version number already used (active or in the history: a changed
library needs a new number). Installing the active library again changes nothing. Each file is
written atomically (a temporary file in the same directory, fsync, ``os.replace``, fsync of the
directory), in this order: the history copy, the active approvals, the active library. A crash
between the last two leaves approvals that do not match the library: :meth:`load_active` then
refuses it (a library is never used unverified) and running the install again repairs it.

:meth:`LibraryStore.load_active` re-reads and re-verifies the active library every time it is
called: nothing on disk is trusted because it was trusted once.

Errors: a missing or corrupt file is a :class:`LibraryError` naming it; approvals that do not verify
(or are missing) are :class:`LibraryNotTrusted`; a permission problem or a full disk is an
:class:`EnvironmentProblem` with the fix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from .errors import EnvironmentProblem, LibraryError, LibraryNotTrusted, LibraryProblem
from .library import Library, parse_library
from .library_signing import TrustStore, VerifiedLibrary, parse_approvals, verify

log = logging.getLogger(__name__)

APPROVALS_SUFFIX: Final = ".approvals.json"
ACTIVE_NAME: Final = "active.toml"
HISTORY_DIR: Final = "history"
_LOCK_NAME: Final = ".lock"


def approvals_path(library_path: Path) -> Path:
    """Where the approvals of the library at ``library_path`` are kept: ``<file>.approvals.json``."""
    return library_path.with_name(library_path.name + APPROVALS_SUFFIX)


def read_file(path: Path) -> bytes:
    """The bytes of ``path``. Raises LibraryError naming it when it is missing or unreadable, and
    EnvironmentProblem when this user may not read it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise LibraryError(str(path), [LibraryProblem("(file)", "no such file")]) from None
    except PermissionError:
        raise EnvironmentProblem(
            f"cannot read {path}: permission denied",
            f"run as a user who may read {path}, or give this user read access to it",
        ) from None
    except OSError as exc:
        raise LibraryError(str(path), [LibraryProblem("(file)", f"cannot be read: {exc.strerror}")]) from None


def _write_problem(path: Path, exc: OSError) -> EnvironmentProblem:
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EnvironmentProblem(
            f"cannot write {path}: {exc.strerror}",
            f"run as the user that owns {path.parent} (the gateway's user), or give this user write access",
        )
    return EnvironmentProblem(
        f"cannot write {path}: {exc.strerror}",
        f"check that the file system holding {path.parent} is writable and has free space",
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically: a reader sees the old file or the new one, whole.

    Writes a temporary file in the same directory, fsyncs it, renames it over ``path`` and fsyncs the
    directory. Raises EnvironmentProblem (with the fix) when it cannot.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_problem(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _write_problem(path, exc) from None


def read_approved(library_path: Path, trust: TrustStore) -> tuple[VerifiedLibrary, bytes, bytes]:
    """Read, parse and verify the library at ``library_path`` and its approvals file.

    Returns the verified library and the bytes of both files. Raises LibraryError (the library or
    the approvals file is missing or not valid), LibraryNotTrusted (no approvals file, or the
    approvals do not verify) or EnvironmentProblem.
    """
    raw = read_file(library_path)
    library = parse_library(raw, str(library_path))
    ap = approvals_path(library_path)
    if not ap.exists():
        raise LibraryNotTrusted(
            str(library_path),
            f"not approved: there is no approvals file {ap} (an author and a reviewer sign it with "
            "'pumpgw library sign')",
        )
    approvals_raw = read_file(ap)
    approvals = parse_approvals(approvals_raw, str(ap))
    return verify(library, approvals, trust, str(library_path)), raw, approvals_raw


class LibraryStore:
    """The installed libraries in ``directory``: the active one and the history (module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def active_path(self) -> Path:
        return self.directory / ACTIVE_NAME

    @property
    def history_dir(self) -> Path:
        return self.directory / HISTORY_DIR

    def history_path(self, library: Library) -> Path:
        """``history/<version>-<first 12 hex of the hash>.toml``."""
        return self.history_dir / f"{library.version}-{library.hash.removeprefix('sha256:')[:12]}.toml"

    def current(self) -> Library | None:
        """The active library as parsed, *not verified* (None if none is installed).

        For saying what an install replaces and for its version checks; anything that uses the
        library calls :meth:`load_active`. Raises LibraryError if the file is there but not valid.
        """
        if not self.active_path.exists():
            return None
        return parse_library(read_file(self.active_path), str(self.active_path))

    def load_active(self, trust: TrustStore) -> VerifiedLibrary:
        """The active library, read and verified again now.

        Raises LibraryError when none is installed or a file is not valid, LibraryNotTrusted when
        its approvals do not verify against ``trust``, EnvironmentProblem when it cannot be read.
        """
        if not self.active_path.exists():
            raise LibraryError(
                str(self.directory),
                [
                    LibraryProblem(
                        "(active)",
                        "no library installed: run pumpgw library install FILE --trust STORE "
                        f"--state-dir DIR (this is {self.directory})",
                    )
                ],
            )
        verified, _, _ = read_approved(self.active_path, trust)
        return verified

    def install(
        self, library_path: Path, trust: TrustStore, *, allow_downgrade: bool = False
    ) -> VerifiedLibrary:
        """Verify the library at ``library_path`` and make it the active one (module docstring).

        Returns the verified library, as re-read from the store. Installing the active library again
        changes nothing. Raises LibraryError (invalid library, a downgrade, a version number reused
        for other content), LibraryNotTrusted (approvals do not verify) or EnvironmentProblem.
        """
        verified, raw, approvals_raw = read_approved(library_path, trust)
        new = verified.library
        source = str(library_path)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.history_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise _write_problem(self.history_dir, exc) from None
        with self._lock():
            try:
                current = self.current()
            except LibraryError as exc:
                if not allow_downgrade:
                    raise LibraryError(
                        source,
                        [
                            LibraryProblem(
                                "(install)",
                                f"the installed library {self.active_path} is not valid ({exc.problems[0]}), "
                                "so this install cannot be checked against its version; replace it "
                                "explicitly with --allow-downgrade",
                            )
                        ],
                    ) from None
                current = None
            if current is not None and current.hash == new.hash and self._active_verifies(trust):
                log.info("drug library already installed", extra={"library": new.label})
                return verified
            self._check_version(new, current, source, allow_downgrade)
            hist = self.history_path(new)
            for path, data in ((hist, raw), (approvals_path(hist), approvals_raw)):
                if not path.exists() or read_file(path) != data:
                    write_atomic(path, data)
            write_atomic(approvals_path(self.active_path), approvals_raw)
            write_atomic(self.active_path, raw)
            log.info(
                "drug library installed",
                extra={
                    "library": new.label,
                    "author": verified.author,
                    "reviewer": verified.reviewer,
                    "replaced": current.label if current is not None else None,
                },
            )
            return self.load_active(trust)

    def _active_verifies(self, trust: TrustStore) -> bool:
        try:
            self.load_active(trust)
        except LibraryError:
            return False
        return True

    def _check_version(
        self, new: Library, current: Library | None, source: str, allow_downgrade: bool
    ) -> None:
        if current is not None and current.hash != new.hash:
            if new.version == current.version:
                raise LibraryError(
                    source,
                    [
                        LibraryProblem(
                            "version",
                            f"version {new.version} is already installed with other content "
                            f"(installed: {current.hash}; this file: {new.hash}): a changed library needs "
                            "a new version number",
                        )
                    ],
                )
            if new.version < current.version and not allow_downgrade:
                raise LibraryError(
                    source,
                    [
                        LibraryProblem(
                            "version",
                            f"version {new.version} is lower than the installed {current.label}: refusing "
                            "a downgrade (use --allow-downgrade if going back is intended)",
                        )
                    ],
                )
        expected = self.history_path(new).name
        for old in sorted(self.history_dir.glob(f"{new.version}-*.toml")):
            if old.name != expected:
                raise LibraryError(
                    source,
                    [
                        LibraryProblem(
                            "version",
                            f"version {new.version} was installed before with other content ({old}; this "
                            f"file is {new.hash}): a changed library needs a new version number",
                        )
                    ],
                )

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        path = self.directory / _LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _write_problem(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
