"""Whether a pump may be auto-programmed as far as the drug library goes (pure, no I/O).

Two things are judged here, from facts passed in:

- :class:`LibraryState`: the drug library this gateway has in use (a :class:`VerifiedLibrary`), or
  why it has none. Without a verified library nothing is auto-programmed; pumps are still monitored.
- :func:`pump_fitness`: one pump, from the identity it reported, against that library. A pump whose
  own (pump-side) drug library is not the version the gateway's library names for its model is
  running limits nobody approved for this release (HAZ-003): it is not fit.

The rules, in order (each :class:`Fitness` has a ``code`` an engineer can look up and a ``reason``
a nurse or biomed can read):

=========================== ===== =============================================================
code                        fit   when
=========================== ===== =============================================================
``no-library``              no    the gateway has no verified drug library
``pump-not-identified``     no    the pump has not said who it is yet (model, library version)
``library-current``         yes   the pump's library version is the one the library names for
                                  its model
``library-outdated``        no    the pump reports another version than the one named
``library-unknown-model``   no    the pump reports a version, but the library names none for
                                  its model: it cannot be checked (fail safe)
``pump-reports-no-library`` yes   the pump does not report a library version (its protocol
                                  cannot): the gateway's own dose checking is the only library
                                  check for it
=========================== ===== =============================================================

Versions are compared as the text the pump reports and the library names (``"7"``), exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from pumpgw.drivers.base import PumpIdentity

from .library import Library
from .library_signing import VerifiedLibrary

NO_LIBRARY: Final = "no-library"
NOT_IDENTIFIED: Final = "pump-not-identified"
CURRENT: Final = "library-current"
OUTDATED: Final = "library-outdated"
UNKNOWN_MODEL: Final = "library-unknown-model"
NOT_REPORTED: Final = "pump-reports-no-library"

NO_LIBRARY_REASON: Final = "no verified drug library is installed on this gateway"


@dataclass(frozen=True, slots=True)
class Fitness:
    """Whether a pump is fit to be auto-programmed with respect to the drug library, and why."""

    fit: bool
    code: str  # one of the codes above
    reason: str  # in words a nurse or biomed understands
    reported: str | None = None  # the pump's drug library version, as it reports it
    expected: str | None = None  # the version the gateway's library names for the pump's model

    def as_json(self) -> dict[str, Any]:
        return {
            "fit": self.fit,
            "code": self.code,
            "reason": self.reason,
            "reported": self.reported,
            "expected": self.expected,
        }


def library_title(library: Library) -> str:
    """``"Example library v7"``: the library as named in a sentence."""
    return f"{library.doc.name} v{library.version}"


def _which_way(reported: str, expected: str) -> str:
    """What to do about a mismatch, when both versions are whole numbers and say which is older."""
    if reported.isdigit() and expected.isdigit():
        if int(reported) < int(expected):
            return "the pump's drug library is older: update the pump's library before auto-programming it"
        if int(reported) > int(expected):
            return (
                "the pump's drug library is newer than the one this gateway expects: install the "
                "matching library release on the gateway"
            )
    return "the versions differ: the pump and the gateway must carry the same library release"


def pump_fitness(identity: PumpIdentity | None, library: Library | None) -> Fitness:
    """Whether the pump that reported ``identity`` is fit to be auto-programmed under ``library``.

    ``identity`` is None until the pump has been identified; ``library`` is None when the gateway
    has no verified library. Pure: the same inputs always give the same answer.
    """
    if library is None:
        return Fitness(False, NO_LIBRARY, NO_LIBRARY_REASON)
    if identity is None:
        return Fitness(
            False,
            NOT_IDENTIFIED,
            "the pump has not been identified yet, so its model and drug library version are unknown",
        )
    title = library_title(library)
    reported = identity.library_version
    expected = library.pump_library_version(identity.model)
    if reported is None:
        return Fitness(
            True,
            NOT_REPORTED,
            f"this pump ({identity.model}) does not report a drug library version; the gateway's own "
            f"dose checking against {title} is the only drug library check for it",
            None,
            expected,
        )
    if expected is None:
        return Fitness(
            False,
            UNKNOWN_MODEL,
            f"pump reports drug library version {reported}, but this gateway's library ({title}) names "
            f"no pump library version for {identity.model}, so the pump's library cannot be checked",
            reported,
            None,
        )
    if reported.strip() != expected.strip():
        return Fitness(
            False,
            OUTDATED,
            f"pump reports drug library version {reported}; this gateway's library ({title}) expects "
            f"{expected} for {identity.model}: {_which_way(reported.strip(), expected.strip())}",
            reported,
            expected,
        )
    return Fitness(
        True,
        CURRENT,
        f"pump drug library version {reported} is the one this gateway's library ({title}) expects "
        f"for {identity.model}",
        reported,
        expected,
    )


@dataclass(frozen=True, slots=True)
class LibraryState:
    """The drug library this gateway uses (``verified``), or why it has none (``reason``)."""

    verified: VerifiedLibrary | None
    reason: str | None = None  # set when verified is None
    required: bool = True  # [library] required: a missing library is a fault, not a choice

    @property
    def library(self) -> Library | None:
        return None if self.verified is None else self.verified.library

    def as_json(self) -> dict[str, Any]:
        """The gateway-level library status (retained MQTT gateway status)."""
        if self.verified is None:
            return {"available": False, "required": self.required, "reason": self.reason}
        lib = self.verified.library
        return {
            "available": True,
            "required": self.required,
            "name": lib.doc.name,
            "version": lib.version,
            "hash": lib.hash,
            "label": lib.label,
            "example": lib.doc.example,
            "author": self.verified.author,
            "reviewer": self.verified.reviewer,
        }

    def loaded_payload(self) -> dict[str, Any]:
        """The payload of ``library.loaded``. Raises ValueError when no library is loaded."""
        if self.verified is None:
            raise ValueError("no library is loaded")
        lib = self.verified.library
        return {
            "name": lib.doc.name,
            "version": lib.version,
            "hash": lib.hash,
            "example": lib.doc.example,
            "author": self.verified.author,
            "author_key_id": self.verified.author_key_id,
            "reviewer": self.verified.reviewer,
            "reviewer_key_id": self.verified.reviewer_key_id,
            "pump_libraries": [{"model": p.model, "version": p.version} for p in lib.doc.pump_libraries],
        }

    def unavailable_payload(self) -> dict[str, Any]:
        """The payload of ``library.unavailable``."""
        return {"reason": self.reason or NO_LIBRARY_REASON, "required": self.required}

    def summary(self) -> str:
        """One line for people: the library in use, or why there is none."""
        if self.verified is None:
            why = self.reason or NO_LIBRARY_REASON
            if self.required:
                return f"drug library: NONE - auto-programming unavailable ({why})"
            return f"drug library: none (not required here: monitoring only; {why})"
        lib = self.verified.library
        example = " - EXAMPLE, not clinical advice" if lib.doc.example else ""
        return (
            f"drug library: {lib.label}{example}; approved by {self.verified.author} (author) and "
            f"{self.verified.reviewer} (reviewer)"
        )


#: Before the gateway has looked for its library.
NOT_LOADED: Final = LibraryState(None, "the drug library has not been loaded yet")
