"""Building HL7 v2 messages as text, written once: escaping, timestamps, segments and the MSH.

The gateway builds messages itself (a few hundred microseconds each) instead of through hl7apy's
object model (about 20 messages a second here, ``../shared/reference/dependencies.md``); every
message type it builds is validated with hl7apy in the tests (``pumpgw.hl7.validate``).

Conventions: ``|^~\\&`` delimiters; segments end in ``\\r``; text fields pass through
:func:`escape`; a component list drops its trailing empty components and a segment its trailing
empty fields, as HL7 allows; times always carry their UTC offset (IHE PCD requires it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from pumpgw.gateway.errors import Hl7Error

from .codes import Profile

FIELD_SEP = "|"
COMPONENT_SEP = "^"
REPETITION_SEP = "~"
ESCAPE_CHAR = "\\"
SUBCOMPONENT_SEP = "&"
ENCODING_CHARACTERS = "^~\\&"

_ESCAPES = {
    "\\": "\\E\\",
    "|": "\\F\\",
    "^": "\\S\\",
    "&": "\\T\\",
    "~": "\\R\\",
    "\r": "\\X0D\\",
    "\n": "\\X0A\\",
}


def escape(text: str) -> str:
    """``text`` safe inside a field or component (HL7 2.6 §2.7): delimiters and line breaks escaped,
    every other control character as ``\\Xhh\\`` (0x0b or 0x1c in a drug name would break MLLP
    framing), and a value that is exactly ``""`` (which would read as the HL7 null) hex-escaped."""
    if text == '""':
        return "\\X22\\" + '"'
    if not any(c in _ESCAPES or c < " " or c == "\x7f" for c in text):
        return text
    return "".join(_ESCAPES.get(c, f"\\X{ord(c):02X}\\" if c < " " or c == "\x7f" else c) for c in text)


def components(*parts: str | None) -> str:
    """Join already-escaped components with ``^``; ``None`` is an empty component; trailing empties go."""
    values = ["" if p is None else p for p in parts]
    while values and values[-1] == "":
        values.pop()
    return COMPONENT_SEP.join(values)


def subcomponents(*parts: str | None) -> str:
    values = ["" if p is None else p for p in parts]
    while values and values[-1] == "":
        values.pop()
    return SUBCOMPONENT_SEP.join(values)


def segment(name: str, *fields: str | None) -> str:
    """``name|f1|f2...`` with trailing empty fields dropped. Fields must be escaped already."""
    if len(name) != 3 or not name.isalnum() or not name.isupper():
        raise Hl7Error(f"{name!r} is not a segment name (three upper-case letters or digits)")
    values = ["" if f is None else f for f in fields]
    while values and values[-1] == "":
        values.pop()
    for value in values:
        if "\r" in value or "\n" in value:
            raise Hl7Error(f"{name}: a field contains a line break (escape it with escape())")
    return FIELD_SEP.join([name, *values])


def hl7_time(moment: datetime) -> str:
    """``YYYYMMDDHHMMSS±ZZZZ`` (HL7 DTM with its offset). A time without a zone is refused."""
    offset = moment.utcoffset()
    if offset is None:
        raise Hl7Error(f"time {moment.isoformat()} has no UTC offset; HL7 PCD times must carry one")
    total = int(offset.total_seconds() // 60)
    sign = "+" if total >= 0 else "-"
    hours, minutes = divmod(abs(total), 60)
    return moment.strftime("%Y%m%d%H%M%S") + f"{sign}{hours:02d}{minutes:02d}"


def hl7_decimal(value: object) -> str:
    """A number as HL7 NM: plain decimal notation, never an exponent (``Decimal('1E+1')`` → ``10``)."""
    if not isinstance(value, (Decimal, int)) or isinstance(value, bool):
        raise Hl7Error(f"{value!r} is not an exact number (Decimal or int)")
    return format(Decimal(value), "f")


@dataclass(frozen=True, slots=True)
class Party:
    """An application and facility, as MSH-3/4 or MSH-5/6 (HD: namespace id, universal id, type)."""

    application: str
    facility: str = ""
    universal_id: str = ""
    universal_id_type: str = ""

    def application_hd(self) -> str:
        return components(escape(self.application), escape(self.universal_id), escape(self.universal_id_type))


def msh(
    *,
    sender: Party,
    receiver: Party,
    message_type: str,
    control_id: str,
    at: datetime,
    version: str = "2.6",
    accept_ack: str = "",
    application_ack: str = "",
    profile: Profile | None = None,
    processing_id: str = "P",
) -> str:
    """The MSH segment. ``message_type`` as ``ORU^R01^ORU_R01`` (always with the structure: hl7apy
    cannot tell ORU^R40 and ORU^R42 apart without it). MSH-18 is ``UNICODE UTF-8``."""
    if not control_id or len(control_id) > 199:
        raise Hl7Error(f"message control id {control_id!r} must be 1 to 199 characters")
    return segment(
        "MSH",
        ENCODING_CHARACTERS,
        sender.application_hd(),
        escape(sender.facility),
        receiver.application_hd(),
        escape(receiver.facility),
        hl7_time(at),
        "",
        message_type,
        escape(control_id),
        processing_id,
        version,
        "",
        "",
        accept_ack,
        application_ack,
        "",
        "UNICODE UTF-8",
        "",
        "",
        profile.msh21() if profile is not None else "",
    )


def message(segments: Iterable[str]) -> bytes:
    """The message as bytes: segments joined and ended by ``\\r``, UTF-8 (as MSH-18 declares)."""
    parts: Sequence[str] = list(segments)
    if not parts or not parts[0].startswith("MSH|"):
        raise Hl7Error("a message must start with its MSH segment")
    return ("\r".join(parts) + "\r").encode("utf-8")
