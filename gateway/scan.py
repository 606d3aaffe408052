"""The bedside scan parser: the text a scanner sends in, a :data:`~.scan_types.Scan` out.

:func:`parse_scan` is pure and synchronous (no I/O, no state): the bedside workflow calls it for
every scan and writes ``scan.accepted`` or ``scan.rejected`` with what it returns or raises. A scan
that cannot be used raises :class:`~.scan_types.ScanRejected`, whose reason says what was scanned
and why it is not usable, in words a nurse understands. Nothing else is ever raised, whatever the
input (a property test holds it to that). GS1 decoding is done by biip (``biip.parse`` for
linear codes and Digital Link, and the GS1 message parser it uses, for element strings); this
module adds what biip leaves out: check digits of the GSRN, AI pairing rules, the lost-separator
ambiguity, and what each code means at the bedside. Facts and vectors:
``../shared/reference/barcodes.md`` (sections cited as §n).

What is read
------------
The scanner should send the AIM symbology identifier (ISO/IEC 15424: ``]d2`` GS1 DataMatrix,
``]Q3`` GS1 QR, ``]C1`` GS1-128, ``]e0`` GS1 DataBar, ``]J1`` GS1 DotCode, ``]E0``/``]E4``/``]I1``
EAN-13 and UPC-A / EAN-8 / ITF-14, ``]C0``/``]Q1``/``]d1`` plain Code 128 / QR / DataMatrix), and
GS (0x1D) for FNC1 (§2). Each GS1 code must hold exactly one of these keys (GS1 Application
Identifiers, §1):

============  ===========================  ==================================================
code          AIs                          becomes
============  ===========================  ==================================================
wristband     8018 GSRN (+ 8019 SRIN)      PatientScan: patient_id = the GSRN, or with
                                           ``patient_id_from = "ai:91"`` the value of an
                                           internal AI 90-99 (NHS DCB1077 hospital number, §3)
staff badge   8017 GSRN (+ 8019)           ClinicianScan: clinician_id = the GSRN
medication    01 GTIN (+ 17, 10, 21)       MedicationScan: GTIN-14, expiry, lot, serial
pump label    8004 GIAI                    PumpScan: the pump and channel configured for that
                                           GIAI (``[[scanning.pump_labels]]``)
============  ===========================  ==================================================

Other AIs on the same code (names, date of birth, NHRN, count...) are allowed and ignored.

- Linear EAN-13/UPC-A (``]E0``), EAN-8 (``]E4``) and ITF-14 (``]I1``) give a MedicationScan with
  the GTIN left-padded to 14 digits (§6.3); an 8-digit ``]E0`` is a UPC-E, expanded to its UPC-A.
- GS1 Digital Link URLs (``https://<any host>/01/<gtin>/10/<lot>/21/<serial>?17=<expiry>``, also
  ``/8018/``, ``/8017/``, ``/8004/``), uncompressed, are read by biip and then treated as the same
  AIs. Compressed Digital Link URLs are refused (biip cannot read them).
- A pharmacy-prepared infusion carries the pharmacy system's own label (§3, "Pharmacy-prepared
  infusions"). It is recognised by ``[scanning] label_pattern``, a regular expression with named
  groups ``order``, ``dispense`` and ``patient``, matched against the whole scan (after the
  symbology identifier, if any). The default is ``^RX-(?P<order>[A-Za-z0-9._-]{1,40})$``: a plain
  Code 128, QR or DataMatrix reading ``RX-`` and the order id (the placer order number of the PIV
  order or the MedicationRequest id). Labels are only looked for in plain (non-GS1) symbologies and
  in scans without a symbology identifier; the pattern may not match a bare EAN or GS1 string
  (checked when the configuration is loaded). ``(8018)<GSRN>(8019)<order>`` was not chosen: it is
  byte for byte a wristband with a band instance number (§5 W1), and a label must never be
  mistaken for a wristband.
- Without a symbology identifier: a GS1 Digital Link, a label, 8, 12, 13 or 14 bare digits as an
  EAN/UPC/ITF-14 (8 digits and ``8004...`` are refused as ambiguous: EAN-8 or UPC-E; a GTIN or a
  GIAI), anything else as GS1 element strings (a leading GS standing for FNC1 is dropped).

Separators
----------
GS always separates fields; ``[scanning] separator_chars`` adds the printable substitute a keyboard
wedge (HID) scanner can be set to send instead (CipherLab "Field Separator", Mindeo "FN1
substitution string"; §6.1), e.g. ``separator_chars = ["|"]``. A separator may not be a character
that can occur in GS1 data. Leading and trailing whitespace (the scanner's Enter suffix) and a
trailing separator (§2: a trailing FNC1 is not always stripped) are ignored.

A wedge scanner that drops GS produces ``...10ABC12321SN0001``: biip reads lot ``ABC12321SN0001``
and the serial is lost (§5 N1). When a scan holds no separator at all, every variable-length field
is checked for another reading: the field cut short and the rest read as further fields; if that
reading is also a valid bedside code (pairing rules met, one key, the added AI is one this parser
reads), the scan is ambiguous and refused, naming both readings and the fix (a substitute
separator in the scanner and in ``separator_chars``, or the scanner in serial/USB-COM mode). The
parser never guesses where a field ends. The price: a pack whose only variable field is its last
one (no serial) and whose lot happens to read as ``<lot>21<serial>`` or ``<lot>17<date>`` is
refused even from a well-configured scanner, since nothing in the data tells the two apart.

Refused, each with its reason
-----------------------------
empty scans; more than :data:`MAX_SCAN_CHARS` characters; control characters other than the
separators; an unknown symbology identifier; ISBT 128 (``=`` or ``&``: blood products, §6.9), HIBC
(``+``) and ISO/IEC 15434 envelopes (``[)>``); typed human-readable text with brackets; plain
barcodes that are no label; GS1 codes biip cannot read; no key or more than one key (a code names
one thing); the pairings of the GS1 syntax dictionary for the AIs read here (8019 needs 8017 or
8018; 8017 and 8018 exclude each other; 10, 17 and 21 need 01); an AI twice with different values;
a GSRN (8017/8018) or GTIN whose GS1 mod-10 check digit is wrong (§4; biip checks the GTIN, not the
GSRN); the lost-separator ambiguity; a wristband without the configured internal AI; a GIAI not in
``[[scanning.pump_labels]]``.

Not decided here
----------------
Expiry: parse_scan does not know the time. It returns the expiry (AI 17, day ``00`` = the last day
of the month) and the workflow compares it with the administration time (§6.5). biip turns the
two-digit year into a year 49 years back to 50 years ahead of the current year (GS1 General
Specifications 7.12); that window is biip's only use of the clock. Whether the patient, drug and
pump match an order is the workflow's and reconciliation's business.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import biip
from biip.checksums import gs1_standard_check_digit
from biip.gs1_element_strings import GS1ElementString
from biip.gs1_messages import GS1Message
from biip.symbology import GS1Symbology, ISOSymbology, SymbologyIdentifier
from biip.upc import Upc
from pydantic import ValidationError

from .config import ScanningSection
from .scan_types import ClinicianScan, LabelScan, MedicationScan, PatientScan, PumpScan, Scan, ScanRejected

MAX_SCAN_CHARS: Final = 512  # the largest GS1 DataMatrix a bedside code needs is far smaller
GS: Final = "\x1d"
DEFAULT_LABEL_PATTERN: Final = ScanningSection().label_pattern


@dataclass(frozen=True, slots=True)
class ScanConfig:
    """What :func:`parse_scan` needs from ``[scanning]``; build it with :meth:`from_section`.

    ``separator_chars`` always includes GS (added first if missing). ``pumps`` maps a GIAI to
    (pump id, channel or None). Invalid values raise ``ValueError`` naming the key (the same rules
    as the configuration file).
    """

    separator_chars: tuple[str, ...] = (GS,)
    label_pattern: str = DEFAULT_LABEL_PATTERN
    patient_id_from: str = "gsrn"
    pumps: Mapping[str, tuple[str, int | None]] = field(default_factory=lambda: MappingProxyType({}))
    _label: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seps = (GS, *(c for c in dict.fromkeys(self.separator_chars) if c != GS))
        pumps = MappingProxyType(dict(self.pumps))
        try:
            ScanningSection.model_validate(
                {
                    "separator_chars": list(seps),
                    "label_pattern": self.label_pattern,
                    "patient_id_from": self.patient_id_from,
                    "pump_labels": [
                        {"giai": g, "pump": p, **({"channel": c} if c is not None else {})}
                        for g, (p, c) in pumps.items()
                    ],
                }
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"scanning.{key}: {first['msg']}") from None
        object.__setattr__(self, "separator_chars", seps)
        object.__setattr__(self, "pumps", pumps)
        object.__setattr__(self, "_label", re.compile(self.label_pattern))

    @classmethod
    def from_section(cls, section: ScanningSection) -> ScanConfig:
        """The parser's view of an already validated ``[scanning]`` section."""
        return cls(
            separator_chars=tuple(section.separator_chars),
            label_pattern=section.label_pattern,
            patient_id_from=section.patient_id_from,
            pumps={p.giai: (p.pump, p.channel) for p in section.pump_labels},
        )

    @property
    def patient_ai(self) -> str | None:
        """The internal AI that holds the patient id (``"91"`` for ``ai:91``), or None for the GSRN."""
        return self.patient_id_from.removeprefix("ai:") if self.patient_id_from != "gsrn" else None


def parse_scan(raw: str, config: ScanConfig) -> Scan:
    """Understand one scan, exactly as the scanner delivered it.

    Returns a PatientScan, ClinicianScan, MedicationScan, LabelScan or PumpScan, each holding
    ``raw``. Raises ScanRejected (and nothing else) naming what was scanned and why it cannot be
    used. See the module docstring for the formats and the rules.
    """
    if len(raw) > MAX_SCAN_CHARS:
        raise ScanRejected(
            raw[:MAX_SCAN_CHARS],
            f"{len(raw)} characters arrived at once, more than any bedside barcode holds "
            f"(at most {MAX_SCAN_CHARS}): several scans ran together, or this is not a scanner",
        )
    data = raw.strip()  # the scanner's Enter suffix; str.strip also removes GS (0x1D) at the ends
    if not data:
        raise ScanRejected(raw, "nothing was scanned (the scan was empty)")
    symbology, body = _split_symbology(raw, data)
    body = body.strip("".join(config.separator_chars)).strip()
    _refuse_control_characters(raw, body, config)
    if not body:
        raise ScanRejected(raw, "the scanner sent a symbology identifier and no data")
    if symbology is not None and symbology.gs1_symbology in _LINEAR:
        return _linear(raw, body, symbology)
    if symbology is not None and symbology.gs1_symbology in GS1Symbology.with_gs1_messages():
        if body.lower().startswith(("http://", "https://")):
            return _digital_link(raw, body, config)
        _refuse_foreign_formats(raw, body)
        return _gs1(raw, body, config)
    # A plain symbology, or no symbology identifier at all.
    label = _label(raw, body, config)
    if label is not None:
        return label
    if body.lower().startswith(("http://", "https://")):
        return _digital_link(raw, body, config)
    _refuse_foreign_formats(raw, body)
    if symbology is not None:
        raise ScanRejected(
            raw,
            f"a plain {_symbology_name(symbology)} barcode ({symbology.value}), which is neither a GS1 "
            "code (wristband, badge, medication, pump label) nor a pharmacy label in this hospital's "
            "format ([scanning] label_pattern)",
        )
    if body.isascii() and body.isdigit() and len(body) in (8, 12, 13, 14):
        if len(body) == 8:
            raise ScanRejected(
                raw,
                "8 digits without a symbology identifier could be an EAN-8 or a UPC-E, which give "
                "different product codes: turn on AIM symbology identifiers in the scanner",
            )
        if body.startswith("8004"):
            raise ScanRejected(
                raw,
                "without a symbology identifier this could be a product code (EAN/UPC) or a pump "
                "label (GS1 AI 8004): turn on AIM symbology identifiers in the scanner",
            )
        return _linear(raw, body, None)
    return _gs1(raw, body, config)


# --- what kind of scan -------------------------------------------------------------------------

_SYMBOLOGY_ID = re.compile(r"\][A-Za-z][0-9A-Za-z]")
_LINEAR: Final = GS1Symbology.with_gtin() | {
    GS1Symbology.EAN_TWO_DIGIT_ADD_ON,
    GS1Symbology.EAN_FIVE_DIGIT_ADD_ON,
}


def _split_symbology(raw: str, data: str) -> tuple[SymbologyIdentifier | None, str]:
    if not data.startswith("]"):
        return None, data
    if not _SYMBOLOGY_ID.match(data):
        raise ScanRejected(raw, f"starts with {data[:3]!r}, which is not a symbology identifier")
    if data.startswith("]J1"):  # GS1 DotCode: biip knows the GS1 symbology but not ISO letter J
        dotcode = SymbologyIdentifier("]J1", ISOSymbology.OTHER_BARCODE, "1", GS1Symbology.GS1_DOTCODE)
        return dotcode, data[3:]
    try:
        symbology = SymbologyIdentifier.extract(data)
    except (biip.ParseError, ValueError, IndexError):  # "]Yx": biip calls int("x")
        raise ScanRejected(
            raw, f"starts with {data[:3]!r}, which is not a symbology identifier this gateway knows"
        ) from None
    return symbology, data[len(symbology.value) :]


def _symbology_name(symbology: SymbologyIdentifier) -> str:
    return symbology.iso_symbology.name.replace("_", " ").title().replace("Qr", "QR")


def _refuse_foreign_formats(raw: str, body: str) -> None:
    if body.startswith(("=", "&")):
        raise ScanRejected(
            raw,
            "an ISBT 128 code (blood and tissue products), which this gateway does not read: "
            "check blood products by the blood transfusion procedure",
        )
    if body.startswith("+"):
        raise ScanRejected(raw, "a HIBC code (supplier labelling), which this gateway does not read")
    if body.startswith("[)>"):
        raise ScanRejected(
            raw, "an ISO/IEC 15434 code with ANSI MH10 data identifiers, not GS1: this gateway cannot read it"
        )
    if body.startswith("("):
        raise ScanRejected(
            raw,
            "text with the AIs in brackets, as printed under a barcode: scan the barcode itself "
            "(typed text is not accepted)",
        )


def _refuse_control_characters(raw: str, body: str, config: ScanConfig) -> None:
    for char in body:
        if char not in config.separator_chars and unicodedata.category(char) in ("Cc", "Cf", "Cs"):
            raise ScanRejected(
                raw,
                f"contains the control character {_shown(char)}, which no barcode this gateway reads "
                "holds (a scanner setting or a wrong keyboard layout)",
            )


def _shown(char: str) -> str:
    return f"U+{ord(char):04X}" if not char.isprintable() else repr(char)


# --- linear EAN/UPC/ITF-14 ---------------------------------------------------------------------


def _linear(raw: str, digits: str, symbology: SymbologyIdentifier | None) -> MedicationScan:
    kind = symbology.gs1_symbology if symbology is not None else None
    if kind in (GS1Symbology.EAN_TWO_DIGIT_ADD_ON, GS1Symbology.EAN_FIVE_DIGIT_ADD_ON):
        raise ScanRejected(raw, "only the add-on of an EAN/UPC (a price or issue number), not a product")
    if kind is GS1Symbology.EAN_13_WITH_ADD_ON:
        raise ScanRejected(raw, "an EAN/UPC with an add-on (a price or issue number), not a medication code")
    if not (digits.isascii() and digits.isdigit()):
        raise ScanRejected(raw, f"an EAN/UPC barcode should hold only digits, not {digits!r}")
    if kind is GS1Symbology.EAN_13 and len(digits) == 8:
        # ISO/IEC 15424: ]E0 covers UPC-E, sent as 8 digits; its GTIN is the expanded UPC-A.
        try:
            digits = Upc.parse(digits).as_upc_a()
        except biip.ParseError as exc:
            raise ScanRejected(raw, f"an 8-digit UPC-E that is not valid: {exc}") from None
    if len(digits) not in (8, 12, 13, 14):
        raise ScanRejected(
            raw, f"a product code (GTIN) has 8, 12, 13 or 14 digits; this one has {len(digits)}"
        )
    _check_gtin(raw, digits)
    try:
        result = biip.parse(symbology.value + digits if symbology is not None else digits)
    except (biip.BiipException, ValueError, IndexError) as exc:  # biip's contract is ParseError; be safe
        raise ScanRejected(raw, f"not a valid product code (GTIN): {exc}") from None
    if result.gtin is None:
        raise ScanRejected(raw, f"not a valid product code (GTIN): {result.gtin_error}")
    return MedicationScan(raw=raw, gtin=result.gtin.as_gtin_14())


def _check_gtin(raw: str, gtin: str, gtin_error: str | None = None) -> None:
    """GS1 mod-10 (§4) on a GTIN; biip's ``gtin_error`` (for AI 01) is the cue, the digit named here."""
    expected = gs1_standard_check_digit(gtin[:-1])
    if int(gtin[-1]) != expected:
        raise ScanRejected(
            raw,
            f"the product code (GTIN) {gtin} fails its check digit: the last digit is {gtin[-1]} but "
            f"should be {expected}; the label is misprinted or was misread: rescan, and do not use "
            "the pack if it happens again",
        )
    if gtin_error is not None:
        raise ScanRejected(raw, f"the product code (GTIN) {gtin} is not valid: {gtin_error}")


# --- pharmacy labels ---------------------------------------------------------------------------


def _label(raw: str, body: str, config: ScanConfig) -> LabelScan | None:
    match = config._label.fullmatch(body)
    if match is None:
        return None
    fields = {k: v for k, v in match.groupdict().items() if v}
    if "order" not in fields and "dispense" not in fields:
        raise ScanRejected(raw, "a pharmacy label without an order or dispense number")
    return LabelScan(
        raw=raw,
        order_id=fields.get("order"),
        dispense_id=fields.get("dispense"),
        patient_id=fields.get("patient"),
    )


# --- GS1 element strings and Digital Link ------------------------------------------------------

_NAMES: Final = {
    "00": "shipping container code (SSCC)",
    "01": "product code (GTIN)",
    "02": "product code of contained goods",
    "10": "lot",
    "11": "production date",
    "17": "expiry date",
    "21": "serial number",
    "253": "document code (GDTI)",
    "414": "location code (GLN)",
    "8004": "asset number (GIAI)",
    "8017": "staff number (GSRN, AI 8017)",
    "8018": "patient number (GSRN, AI 8018)",
    "8019": "service relation instance (SRIN, AI 8019)",
}

# The keys this parser reads: a bedside code holds exactly one.
_KEYS: Final = ("8018", "8017", "01", "8004")

# Pairing rules of the GS1 syntax dictionary (github.com/gs1/gs1-syntax-dictionary, req= and ex=)
# for the AIs a bedside code carries; 7250 from barcodes.md §1.
_TRADE_ITEM: Final = frozenset({"01", "02", "8006", "8026"})
_PERSON: Final = frozenset({"8017", "8018"})
_REQUIRES: Final[Mapping[str, frozenset[str]]] = {
    "10": _TRADE_ITEM,
    "11": _TRADE_ITEM,
    "13": _TRADE_ITEM,
    "15": _TRADE_ITEM,
    "16": _TRADE_ITEM,
    "17": _TRADE_ITEM | {"255"},
    "21": frozenset({"01", "8006"}),
    "7003": frozenset({"01", "02"}),
    "8019": _PERSON,
    "7241": _PERSON,
    "7242": _PERSON,
    "7250": frozenset({"8018"}),
}
_EXCLUDES: Final[Mapping[str, frozenset[str]]] = {
    "01": frozenset({"02", "255", "37"}),
    "21": frozenset({"235"}),
    "8017": frozenset({"8018"}),
    "8018": frozenset({"8017"}),
}


def _name(ai: str) -> str:
    return _NAMES.get(ai, f"AI {ai}")


def _gs1(raw: str, body: str, config: ScanConfig) -> Scan:
    _refuse_non_ascii(raw, body)
    parse_config = biip.ParseConfig(separator_chars=config.separator_chars)
    # The GS1 message parser that biip.parse runs for GS1 symbologies, called directly: the
    # symbology identifier is already off, and without one biip.parse would also try the scan as
    # a bare GTIN, SSCC and UPC, which parse_scan has ruled out or refused by now.
    try:
        message = GS1Message.parse(body, config=parse_config)
    except (biip.BiipException, ValueError, IndexError) as exc:  # biip's contract is ParseError; be safe
        raise ScanRejected(raw, _unreadable(body, str(exc), config)) from None
    elements = list(message.element_strings)
    if not any(sep in body for sep in config.separator_chars):
        _refuse_lost_separator(raw, body, elements, config, parse_config)
    return _scan_from(raw, elements, config)


def _unreadable(body: str, detail: str, config: ScanConfig) -> str:
    reason = f"not a GS1 code this gateway can read ({detail})"
    strange = sorted({c for c in body if not _is_cset82(c) and c not in config.separator_chars})
    if strange:
        shown = ", ".join(_shown(c) for c in strange)
        return (
            f"{reason}; it contains {shown}, which GS1 data never holds: if the scanner sends it for the "
            "group separator, add it to [scanning] separator_chars"
        )
    if not any(sep in body for sep in config.separator_chars):
        return (
            f"{reason}; if this code holds several fields, the scanner may be dropping the group "
            "separator (GS) between them: " + _SEPARATOR_FIX
        )
    return reason


_CSET82: Final = frozenset(
    "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
)
_SEPARATOR_FIX: Final = (
    "ask IT or biomedical engineering to set the scanner to send a substitute character for GS "
    "(e.g. '|') and add it to [scanning] separator_chars, or to connect the scanner in serial/USB-COM "
    "mode"
)


def _is_cset82(char: str) -> bool:
    return char in _CSET82


def _refuse_non_ascii(raw: str, body: str) -> None:
    # biip matches numeric fields with \d, which takes any Unicode digit: refuse before it does.
    strange = next((c for c in body if not c.isascii()), None)
    if strange is not None:
        raise ScanRejected(
            raw,
            f"contains {_shown(strange)}, which GS1 codes never hold: the scanner may be set to another "
            "keyboard layout than the computer",
        )


def _digital_link(raw: str, url: str, config: ScanConfig) -> Scan:
    _refuse_non_ascii(raw, url)
    try:
        result = biip.parse(url, config=biip.ParseConfig(separator_chars=config.separator_chars))
    except (biip.BiipException, ValueError, IndexError) as exc:  # biip's contract is ParseError; be safe
        raise ScanRejected(
            raw, f"a web address that is not a GS1 Digital Link this gateway reads ({exc})"
        ) from None
    link = result.gs1_digital_link_uri
    if link is None:
        raise ScanRejected(
            raw,
            "a web address that is not a GS1 Digital Link this gateway reads (compressed links are not "
            f"supported): {result.gs1_digital_link_uri_error}",
        )
    return _scan_from(raw, list(link.element_strings), config)


def _double_problem(fields: Iterable[tuple[str, str]]) -> str | None:
    """The first AI given twice with different values (``fields``: AI and value), or None."""
    seen: dict[str, str] = {}
    for ai, value in fields:
        if seen.setdefault(ai, value) != value:
            return f"holds two different {_name(ai)}s, {seen[ai]!r} and {value!r}; a code cannot mean both"
    return None


def _pairing_problem(ais: Iterable[str]) -> str | None:
    """The first broken pairing rule of the GS1 syntax dictionary among ``ais``, or None."""
    present = set(ais)
    if present >= _PERSON:
        return (
            "holds both a patient number (8018) and a staff number (8017); a code identifies one "
            "person, and GS1 forbids the pair"
        )
    for ai in sorted(present):
        clash = _EXCLUDES.get(ai, frozenset()) & present
        if clash:
            return f"holds a {_name(ai)} together with {_name(min(clash))}, which GS1 forbids"
        needed = _REQUIRES.get(ai)
        if needed is not None and not needed & present:
            if "01" in needed:
                owner = "a product code (GTIN, AI 01)"
            elif needed <= _PERSON:
                owner = " or ".join(f"a {_name(a)}" for a in sorted(needed, reverse=True))
            else:
                owner = "AI " + " or ".join(sorted(needed))
            return f"holds a {_name(ai)} without {owner}, which GS1 requires with it"
    return None


def _key_problem(ais: Iterable[str]) -> str | None:
    present = set(ais)
    keys = [k for k in _KEYS if k in present]
    if len(keys) > 1:
        return (
            f"holds both a {_name(keys[0])} and a {_name(keys[1])}; a bedside code identifies one "
            "thing (a patient, a clinician, a medication or a pump)"
        )
    if not keys:
        found = ", ".join(_name(a) for a in sorted(present)) or "nothing"
        return (
            f"a GS1 code holding {found}, but none of what the bedside uses: a wristband (8018), a "
            "staff badge (8017), a medication pack (01) or a pump label (8004)"
        )
    return None


def _refuse_lost_separator(
    raw: str,
    body: str,
    elements: Sequence[GS1ElementString],
    config: ScanConfig,
    parse_config: biip.ParseConfig,
) -> None:
    """Refuse when a field may have swallowed the next one because the scanner dropped GS (§5 N1).

    Called only when the scan holds no separator. For each variable-length field, every cut of
    its value is tried: if the rest of the scan after the cut reads as GS1 fields, starting with
    one this parser reads, and the whole new reading is itself a valid bedside code, the scan can
    be read two ways and is refused.
    """
    readable = {"01", "10", "11", "17", "21", "8004", "8017", "8018", "8019"}
    if config.patient_ai is not None:
        readable.add(config.patient_ai)
    offset = 0
    for index, element in enumerate(elements):
        ai, value = element.ai.ai, element.value
        start = offset + len(ai)
        offset = start + len(value)
        if body[start - len(ai) : offset] != ai + value:
            return  # the elements do not tile the scan (cannot happen without separators): no reading
        if ".." not in element.ai.format:
            continue  # fixed length: cannot swallow a neighbour
        for cut in range(1, len(value)):
            rest = body[start + cut :]
            if not rest.startswith(tuple(readable)):
                continue
            try:
                tail = list(GS1Message.parse(rest, config=parse_config).element_strings)
            except (biip.BiipException, ValueError, IndexError):
                continue
            if tail[0].ai.ai not in readable:
                continue  # e.g. "1012..." starts with "10" but is AI 101x? (biip decides the AI)
            head = value[:cut]
            fields = [*((e.ai.ai, e.value) for e in elements[:index]), (ai, head)]
            fields += [(e.ai.ai, e.value) for e in tail]
            alternative = [a for a, _ in fields]
            if (
                _double_problem(fields) is None
                and _pairing_problem(alternative) is None
                and _key_problem(alternative) is None
            ):
                added = ", ".join(f"{_name(e.ai.ai)} {e.value!r}" for e in tail)
                raise ScanRejected(
                    raw,
                    f"reads as {_name(ai)} {value!r}, but could as well be {_name(ai)} {head!r} "
                    f"followed by {added}: the scanner seems to drop the group separator (GS) that "
                    "ends a field, and the gateway will not guess where the field ends; " + _SEPARATOR_FIX,
                )


def _scan_from(raw: str, elements: Sequence[GS1ElementString], config: ScanConfig) -> Scan:
    problem = _double_problem((e.ai.ai, e.value) for e in elements)
    by_ai = {e.ai.ai: e for e in elements}
    problem = problem or _pairing_problem(by_ai) or _key_problem(by_ai)
    if problem is not None:
        raise ScanRejected(raw, problem)
    if "8018" in by_ai:
        gsrn = _check_gsrn(raw, by_ai["8018"].value, "this wristband's patient number")
        srin = by_ai["8019"].value if "8019" in by_ai else None
        patient_ai = config.patient_ai
        if patient_ai is None:
            return PatientScan(raw=raw, patient_id=gsrn, gsrn=gsrn, srin=srin)
        if patient_ai not in by_ai:
            raise ScanRejected(
                raw,
                f"a wristband without the hospital number (AI {patient_ai}) this gateway is set to use "
                f"([scanning] patient_id_from = {config.patient_id_from!r}); the band may be of another "
                "hospital or an old format: get a new band printed",
            )
        return PatientScan(raw=raw, patient_id=by_ai[patient_ai].value, gsrn=gsrn, srin=srin)
    if "8017" in by_ai:
        gsrn = _check_gsrn(raw, by_ai["8017"].value, "this badge's staff number")
        return ClinicianScan(raw=raw, clinician_id=gsrn)
    if "01" in by_ai:
        element = by_ai["01"]
        _check_gtin(raw, element.value, element.gtin_error)
        expiry = by_ai["17"].date if "17" in by_ai else None
        lot = by_ai["10"].value if "10" in by_ai else None
        serial = by_ai["21"].value if "21" in by_ai else None
        return MedicationScan(raw=raw, gtin=element.value, expiry=expiry, lot=lot, serial=serial)
    giai = by_ai["8004"].value
    target = config.pumps.get(giai)
    if target is None:
        raise ScanRejected(
            raw,
            f"this pump label is not known to this gateway: GIAI {giai} (it belongs to another bedside, "
            "or is missing from [[scanning.pump_labels]])",
        )
    return PumpScan(raw=raw, pump_id=target[0], channel=target[1], giai=giai)


def _check_gsrn(raw: str, gsrn: str, what: str) -> str:
    """GS1 mod-10 on an 18-digit GSRN (§4); biip does not check the GSRN in 8017/8018 (§6.7)."""
    expected = gs1_standard_check_digit(gsrn[:-1])
    if int(gsrn[-1]) != expected:
        raise ScanRejected(
            raw,
            f"{what} (GSRN {gsrn}) fails its check digit: the last digit is {gsrn[-1]} but should be "
            f"{expected}; the code is misprinted or was misread: rescan, and replace it if it happens again",
        )
    return gsrn
