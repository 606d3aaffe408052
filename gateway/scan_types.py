"""What a bedside scan is, once understood: the types the scan parser (``gateway/scan.py``) makes
and the bedside workflow (``gateway/workflow.py``) consumes. Data only; no parsing here.

Every scan keeps ``raw``, the text exactly as the scanner delivered it (control characters
included), for the audit trail (``scan.accepted`` / ``scan.rejected`` events).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from .errors import PumpGwError


class ScanKind(StrEnum):
    PATIENT = "patient"  # a wristband
    CLINICIAN = "clinician"  # a staff badge
    MEDICATION = "medication"  # a manufacturer's pack (GTIN)
    LABEL = "label"  # a pharmacy-prepared infusion's label (order or dispense id)
    PUMP = "pump"  # a pump (channel) asset label


@dataclass(frozen=True, slots=True)
class PatientScan:
    """A wristband. ``patient_id`` is the identifier orders name (PID-3 / Patient.identifier)."""

    raw: str
    patient_id: str
    gsrn: str | None = None  # AI 8018, check digit verified
    srin: str | None = None  # AI 8019: the band instance (episode, band)
    kind: ScanKind = ScanKind.PATIENT


@dataclass(frozen=True, slots=True)
class ClinicianScan:
    """A staff badge: ``clinician_id`` is who is acting (AI 8017 GSRN, check digit verified)."""

    raw: str
    clinician_id: str
    kind: ScanKind = ScanKind.CLINICIAN


@dataclass(frozen=True, slots=True)
class MedicationScan:
    """A manufacturer's pack: ``gtin`` (14 digits, check digit verified), and what the symbol adds."""

    raw: str
    gtin: str
    expiry: date | None = None  # AI 17 (day 00 = last day of the month)
    lot: str | None = None  # AI 10
    serial: str | None = None  # AI 21
    kind: ScanKind = ScanKind.MEDICATION


@dataclass(frozen=True, slots=True)
class LabelScan:
    """A pharmacy label for one prepared infusion: the order (or dispense) it was made for, and
    the patient when the label says so (configurable format, ``[scanning] label_pattern``)."""

    raw: str
    order_id: str | None = None
    dispense_id: str | None = None
    patient_id: str | None = None
    kind: ScanKind = ScanKind.LABEL


@dataclass(frozen=True, slots=True)
class PumpScan:
    """A pump or pump-channel asset label (AI 8004 GIAI), resolved to a configured pump/channel."""

    raw: str
    pump_id: str
    channel: int | None
    giai: str
    kind: ScanKind = ScanKind.PUMP


Scan = PatientScan | ClinicianScan | MedicationScan | LabelScan | PumpScan


class ScanRejected(PumpGwError):
    """A scan that cannot be understood: what was scanned (printable), and why, in words a nurse at
    the bedside understands. ``expected`` (what the workflow expected next) is added by the workflow."""

    def __init__(self, raw: str, reason: str, *, expected: str | None = None) -> None:
        self.raw = raw
        self.reason = reason
        self.expected = expected
        shown = raw.encode("unicode_escape").decode("ascii")
        tail = f"; expected {expected}" if expected else ""
        super().__init__(f"scan {shown!r} not accepted: {reason}{tail}")
