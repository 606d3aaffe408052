"""Strict HL7 v2 validation with hl7apy: for tests and the emulated EPR, never the live path.

hl7apy parses and validates about 20 messages a second here (``../shared/reference/dependencies.md``
§4; a Raspberry Pi is slower still), so the gateway never calls this while receiving: its live
reader is ``pumpgw.hl7.message`` (python-hl7, tolerant). What this module is for: proving that every
message the gateway *builds* is valid against the HL7 structure of its version (STRICT level,
segments placed in their groups), and letting the rig's EPR judge what it receives.

Every hl7apy exception is mapped to :class:`Hl7ValidationError` (an Hl7Error), which lists all the
errors hl7apy reports (its ``validate`` raises only the first; the full list comes from its report)
and keeps its warnings (a value not in an HL7 table, a length exceeded) apart: warnings do not fail.

hl7apy has no ORU_R40 structure (ACM PCD-04 uses ORU^R40^ORU_R40, whose segments are those of
ORU_R01); such a message is validated against ORU_R01, which is what its structure is.

Gotcha (dependencies.md §4): hl7apy needs ``\\r`` between segments; text read in text mode has
``\\n`` and makes hl7apy parse only the MSH, or report a misleading error. This module turns
``\\r\\n`` and ``\\n`` into ``\\r`` before parsing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import ValidationError
from hl7apy.parser import parse_message as _hl7apy_parse

from pumpgw.gateway.errors import Hl7Error

__all__ = ["Hl7ValidationError", "validate_strict", "validation_report"]


class Hl7ValidationError(Hl7Error):
    """hl7apy found ``errors`` in the message (``warnings`` are kept for the reader, not counted)."""

    def __init__(self, errors: Sequence[str], warnings: Sequence[str] = (), *, control_id: str | None = None):
        self.errors = tuple(errors)
        self.warnings = tuple(warnings)
        count = len(self.errors)
        detail = f"not valid (hl7apy, STRICT): {count} error{'s' if count != 1 else ''}: " + "; ".join(
            self.errors
        )
        super().__init__(detail, control_id=control_id)


def _text(data: bytes | str) -> str:
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    else:
        text = data
    text = text.strip().replace("\r\n", "\r").replace("\n", "\r")
    head, sep, rest = text.partition("\r")
    fields = head.split("|")
    if len(fields) > 8 and fields[8].split("^")[2:3] == ["ORU_R40"]:
        fields[8] = fields[8].replace("ORU_R40", "ORU_R01")  # no ORU_R40 structure in hl7apy
        text = "|".join(fields) + sep + rest
    return text


def _control_id(text: str) -> str | None:
    fields = text.split("\r", 1)[0].split("|")
    if len(fields) <= 9:
        return None
    return fields[9].split("^")[0] or None


def validation_report(data: bytes | str) -> tuple[list[str], list[str]]:
    """(errors, warnings) that hl7apy reports for ``data`` at the STRICT level, segments in their
    groups. A message hl7apy cannot parse at all gives one error saying why. Never raises."""
    text = _text(data)
    if not text:
        return ["the message is empty"], []
    try:
        parsed = _hl7apy_parse(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    except Exception as exc:  # noqa: BLE001 - hl7apy raises its own errors, ValueError (a bad date) and worse for junk
        return [f"hl7apy cannot parse it: {type(exc).__name__}: {exc}"], []
    with tempfile.TemporaryDirectory(prefix="pumpgw-hl7apy-") as folder:
        report = Path(folder) / "report.txt"
        try:
            parsed.validate(report_file=str(report))
        except ValidationError:
            pass  # the report lists it, with every other error
        except Exception as exc:  # noqa: BLE001 - as above
            return [f"hl7apy cannot validate it: {type(exc).__name__}: {exc}"], []
        lines = report.read_text(encoding="utf-8").splitlines() if report.exists() else []
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    warnings = [line.removeprefix("Warning: ") for line in lines if line.startswith("Warning: ")]
    return errors, warnings


def validate_strict(data: bytes | str) -> None:
    """Validate ``data`` (one message, no MLLP framing) with hl7apy at the STRICT level, segments in
    their groups. Raises Hl7ValidationError listing every error hl7apy reports (warnings, such as a
    value outside an HL7 table, do not fail; they are on the exception when there is one).

    Slow (about 20 messages a second): for tests and the emulated EPR, never the gateway's live path.
    """
    errors, warnings = validation_report(data)
    if errors:
        raise Hl7ValidationError(errors, warnings, control_id=_control_id(_text(data)))
