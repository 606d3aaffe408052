"""Reading HL7 v2 messages on the live path: tolerant of what real senders do, strict about nonsense.

This is the gateway's reader for every message that arrives over MLLP (PIV orders, acknowledgements).
It sits on python-hl7 (``hl7.parse``, about 500 to 700 messages a second here against hl7apy's 20:
``../shared/reference/dependencies.md`` §4) and adds what python-hl7 leaves to its caller:

- bytes in: UTF-8, or ISO 8859 when MSH-18 says so (or when the bytes are not UTF-8, as latin-1);
  ``\\r``, ``\\n`` or ``\\r\\n`` between segments;
- refusal, as :class:`~pumpgw.gateway.errors.Hl7Error` naming what is wrong, of what is not a
  message at all: empty input, no MSH first, control characters (binary junk, a stray MLLP byte),
  a line that is not a segment, bad encoding characters, no message type or control id. Every
  exception python-hl7 raises is mapped to Hl7Error at this boundary;
- one numbering for every segment: ``field(9)`` of MSH is MSH-9 (MSH-1 is the field separator
  itself, MSH-2 the encoding characters);
- values unescaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\``), absent parts read as ``""``, the HL7
  null ``""`` told apart by :meth:`Segment.is_null`.

What is tolerated, because the published IHE PCD examples do it (``hl7-examples/SOURCES.md``):
spaces around values (``^ 1.3.6.1...``, ``UCUM ``), which :meth:`Segment.component` strips; a space
inside a timestamp's offset (``20080101123456- 0600``), which :func:`parse_hl7_time` reads. What a
value *means* (a unit, a dose) is not this module's business: ``pumpgw.hl7.piv`` and
``pumpgw.hl7.ack`` read those and refuse what they cannot map.

The strict, slow validator (hl7apy) is ``pumpgw.hl7.validate``; it is never used on the live path.
"""

from __future__ import annotations

import codecs
import importlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final, NamedTuple

from pumpgw.gateway.errors import Hl7Error

from .build import Party

# python-hl7, by module name: run from the repository root, mypy takes this project's hl7/ folder (a
# namespace portion) for the top-level ``hl7``; at run time the installed package always wins.
_python_hl7: Any = importlib.import_module("hl7")

NULL: Final = '""'  # the HL7 null: "delete this value" (HL7 2.6 §2.5.3)

# Control characters that never belong in an HL7 message (tab is tolerated, as text).
_JUNK = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")
_MAX_SHOWN = 40  # characters of a bad value quoted in an error message


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The message's delimiters, from MSH-1 and MSH-2 (normally ``|`` and ``^~\\&``)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


class ProfileId(NamedTuple):
    """One MSH-21 repetition: EI-1 (``IHE_PCD_PIV_001``) and EI-3 (the profile OID), trimmed."""

    entity: str
    oid: str


def _shown(text: str) -> str:
    return repr(text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "...")


class Segment:
    """One segment. Fields, components and subcomponents are numbered from 1 as in the standard;
    repetitions from 0 (``rep=0`` is the first). Absent parts read as ``""``; nothing here raises
    for a field that is not there.
    """

    __slots__ = ("_charset", "_delims", "_fields", "_parts", "_raw", "_reps", "index", "name")

    def __init__(self, name: str, raw: Any, delims: Delimiters, charset: str, index: int = 1) -> None:
        self.name = name
        self.index = index  # 1 for the first segment of this name in the message, 2 for the next...
        self._raw = raw  # python-hl7's segment, turned into text one field at a time, when asked
        self._delims = delims
        self._fields: dict[int, str] = {}
        # Splits done once: a reader asks for the components of one field many times.
        self._reps: dict[int, tuple[str, ...]] = {}
        self._parts: dict[tuple[int, int], tuple[str, ...]] = {}
        self._charset = charset

    def __repr__(self) -> str:
        return f"Segment({str(self._raw)!r})"

    def __str__(self) -> str:
        return str(self._raw)

    def __len__(self) -> int:
        """The number of fields present (the highest field number)."""
        return len(self._raw) - 1

    def field(self, n: int) -> str:
        """Field ``n`` as it is on the wire: escape sequences and delimiters intact, not stripped.

        For a value, use :meth:`component` (``component(n, 1)`` for a field without components).
        """
        if n < 1:
            raise ValueError(f"HL7 fields are numbered from 1, not {n}")
        cached = self._fields.get(n)
        if cached is None:
            cached = str(self._raw[n]) if n < len(self._raw) else ""
            self._fields[n] = cached
        return cached

    def _is_encoding_field(self, n: int) -> bool:
        return self.name == "MSH" and n <= 2

    def repetitions(self, n: int) -> list[str]:
        """The repetitions of field ``n``, each as on the wire; ``[]`` for an empty field."""
        return list(self._repetitions(n))

    def _repetitions(self, n: int) -> tuple[str, ...]:
        cached = self._reps.get(n)
        if cached is None:
            raw = self.field(n)
            if not raw:
                cached = ()
            elif self._is_encoding_field(n):
                cached = (raw,)
            else:
                cached = tuple(raw.split(self._delims.repetition))
            self._reps[n] = cached
        return cached

    def _components(self, n: int, rep: int) -> tuple[str, ...]:
        cached = self._parts.get((n, rep))
        if cached is None:
            reps = self._repetitions(n)
            if rep >= len(reps):
                cached = ()
            elif self._is_encoding_field(n):
                cached = (reps[rep],)
            else:
                cached = tuple(reps[rep].split(self._delims.component))
            self._parts[(n, rep)] = cached
        return cached

    def _raw_component(self, n: int, c: int, rep: int) -> str:
        if c < 1:
            raise ValueError(f"HL7 components are numbered from 1, not {c}")
        parts = self._components(n, rep)
        return parts[c - 1] if c <= len(parts) else ""

    def component(self, n: int, c: int = 1, rep: int = 0) -> str:
        """Component ``c`` of field ``n`` (repetition ``rep``), unescaped and stripped of spaces
        around it; ``""`` when absent or the HL7 null. Subcomponents stay joined by ``&``, escaped."""
        raw = self._raw_component(n, c, rep).strip()
        if raw == NULL:
            return ""
        if self._is_encoding_field(n):
            return raw
        if self._delims.subcomponent in raw:
            return self._delims.subcomponent.join(
                self._unescape(s).strip() for s in raw.split(self._delims.subcomponent)
            )
        return self._unescape(raw)

    def components(self, n: int, rep: int = 0) -> list[str]:
        """Every component of field ``n`` (repetition ``rep``), each as :meth:`component` reads it."""
        count = len(self._components(n, rep))
        return [self.component(n, c, rep) for c in range(1, count + 1)]

    def subcomponent(self, n: int, c: int, s: int, rep: int = 0) -> str:
        """Subcomponent ``s`` of component ``c`` of field ``n``, unescaped and stripped."""
        if s < 1:
            raise ValueError(f"HL7 subcomponents are numbered from 1, not {s}")
        raw = self._raw_component(n, c, rep)
        if self._is_encoding_field(n):
            return raw if s == 1 else ""
        parts = raw.split(self._delims.subcomponent)
        value = parts[s - 1].strip() if s <= len(parts) else ""
        return "" if value == NULL else self._unescape(value)

    def subcomponents(self, n: int, c: int, rep: int = 0) -> list[str]:
        raw = self._raw_component(n, c, rep)
        count = len(raw.split(self._delims.subcomponent)) if raw else 0
        return [self.subcomponent(n, c, s, rep) for s in range(1, count + 1)]

    def is_null(self, n: int, c: int | None = None, rep: int = 0) -> bool:
        """True if field ``n`` (or its component ``c``) is the HL7 null ``""`` (delete the value),
        as opposed to absent (leave it as it is)."""
        if c is None:
            reps = self._repetitions(n)
            return rep < len(reps) and reps[rep].strip() == NULL
        return self._raw_component(n, c, rep).strip() == NULL

    def _unescape(self, text: str) -> str:
        if self._delims.escape not in text:
            return text
        return unescape(text, self._delims, self._charset)


def unescape(text: str, delims: Delimiters = Delimiters(), charset: str = "utf-8") -> str:
    """``text`` with HL7 escape sequences replaced (HL7 2.6 §2.7): ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``
    give the delimiters, ``\\Xhh..\\`` the bytes ``hh..`` in the message's character set,
    ``\\.br\\`` a line break; highlighting (``\\H\\``, ``\\N\\``) is dropped. A sequence it does not
    know, or one left open, is kept as it is (never guessed at)."""
    esc = delims.escape
    out: list[str] = []
    i = 0
    while True:
        start = text.find(esc, i)
        if start < 0:
            out.append(text[i:])
            break
        end = text.find(esc, start + 1)
        if end < 0:
            out.append(text[i:])
            break
        out.append(text[i:start])
        out.append(_escape_value(text[start + 1 : end], text[start : end + 1], delims, charset))
        i = end + 1
    return "".join(out)


def _escape_value(seq: str, whole: str, delims: Delimiters, charset: str) -> str:
    simple = {
        "F": delims.field,
        "S": delims.component,
        "T": delims.subcomponent,
        "R": delims.repetition,
        "E": delims.escape,
        "H": "",
        "N": "",
        ".br": "\n",
    }
    if seq in simple:
        return simple[seq]
    if seq[:1] == "X" and len(seq) > 1 and len(seq) % 2 == 1:
        try:
            raw = bytes.fromhex(seq[1:])
        except ValueError:
            return whole
        try:
            return raw.decode(charset)
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    return whole


class Hl7Message:
    """A message read by :func:`parse_message`. Header values are read once, here."""

    __slots__ = (
        "_by_name",
        "charset",
        "control_id",
        "delimiters",
        "message_type",
        "msh",
        "segments_in_order",
        "text",
        "version",
    )

    def __init__(
        self, text: str, delimiters: Delimiters, segments: tuple[Segment, ...], charset: str
    ) -> None:
        self.text = text
        self.delimiters = delimiters
        self.segments_in_order = segments
        self.charset = charset
        self.msh = segments[0]
        self._by_name: dict[str, list[Segment]] = {}
        for seg in segments:
            self._by_name.setdefault(seg.name, []).append(seg)
        self.control_id = self.msh.component(10)
        self.message_type: tuple[str, str, str] = (
            self.msh.component(9, 1),
            self.msh.component(9, 2),
            self.msh.component(9, 3),
        )
        self.version = self.msh.component(12)

    def __repr__(self) -> str:
        kind = "^".join(p for p in self.message_type if p)
        return f"<Hl7Message {kind} control id {self.control_id!r}, {len(self.segments_in_order)} segments>"

    @property
    def accept_ack(self) -> str:
        """MSH-15: when the receiver must send an accept (commit) acknowledgement (AL, ER, NE, SU)."""
        return self.msh.component(15)

    @property
    def app_ack(self) -> str:
        """MSH-16: when the receiver must send an application acknowledgement."""
        return self.msh.component(16)

    @property
    def sender(self) -> Party:
        """MSH-3 and MSH-4: application (HD-1, with its universal id HD-2/3) and facility (HD-1)."""
        return self._party(3, 4)

    @property
    def receiver(self) -> Party:
        """MSH-5 and MSH-6."""
        return self._party(5, 6)

    def _party(self, app: int, facility: int) -> Party:
        return Party(
            application=self.msh.component(app, 1),
            facility=self.msh.component(facility, 1),
            universal_id=self.msh.component(app, 2),
            universal_id_type=self.msh.component(app, 3),
        )

    def profile_ids(self) -> tuple[ProfileId, ...]:
        """The message profiles of MSH-21, one per repetition, EI-1 and EI-3 trimmed."""
        return tuple(
            ProfileId(self.msh.component(21, 1, rep), self.msh.component(21, 3, rep))
            for rep in range(len(self.msh.repetitions(21)))
        )

    def segments(self, name: str) -> list[Segment]:
        """Every segment called ``name``, in message order (``[]`` if there is none)."""
        return list(self._by_name.get(name, ()))

    def segment(self, name: str) -> Segment | None:
        """The first segment called ``name``, or None."""
        found = self._by_name.get(name)
        return found[0] if found else None


def parse_message(data: bytes | str) -> Hl7Message:
    """Read one HL7 v2 message (no MLLP framing). Raises Hl7Error saying what is wrong with it."""
    text, charset = _decode(data)
    text = text.strip(" \t\r\n").removeprefix("\ufeff")  # a byte order mark some editors add
    if not text:
        raise Hl7Error("the message is empty")
    junk = _JUNK.search(text)
    if junk is not None:
        raise Hl7Error(
            f"the message holds control character 0x{ord(junk.group()):02X} at offset {junk.start()}: "
            "it is not HL7 text (binary data, or MLLP framing bytes left in)"
        )
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    lines = [line for line in text.split("\r") if line.strip()]
    if not lines:
        raise Hl7Error("the message is empty (only white space)")
    delims = _delimiters(lines[0])
    control_id = _peek_control_id(lines[0], delims)
    for number, line in enumerate(lines, start=1):
        name = line[:3]
        if not _SEGMENT_NAME.fullmatch(name) or (len(line) > 3 and line[3] != delims.field):
            raise Hl7Error(
                f"segment {number} begins {_shown(line[:12])}: not a segment name (three upper-case "
                f"letters or digits) followed by {delims.field!r}",
                control_id=control_id,
            )
    normalized = "\r".join(lines)
    try:
        parsed = _python_hl7.parse(normalized)
        counts: dict[str, int] = {}
        found: list[Segment] = []
        for seg in parsed:
            name = str(seg[0])
            counts[name] = counts.get(name, 0) + 1
            found.append(Segment(name, seg, delims, charset, counts[name]))
        segments = tuple(found)
    except Exception as exc:  # python-hl7 raises ParseException, IndexError, ValueError...: map them all
        raise Hl7Error(f"python-hl7 cannot parse the message: {type(exc).__name__}: {exc}") from exc
    if len(segments) != len(lines) or segments[0].name != "MSH":
        raise Hl7Error(
            f"python-hl7 read {len(segments)} segments where there are {len(lines)}", control_id=control_id
        )
    message = Hl7Message(normalized, delims, segments, charset)
    if not message.message_type[0]:
        raise Hl7Error("MSH-9 (message type) is empty", control_id=control_id)
    if not message.control_id:
        raise Hl7Error(
            f"MSH-10 (message control id) is empty in a {'^'.join(message.message_type).rstrip('^')} message"
        )
    return message


def _delimiters(first: str) -> Delimiters:
    if not first.startswith("MSH"):
        raise Hl7Error(f"the message begins {_shown(first[:12])}, not with an MSH segment")
    if len(first) < 8:
        raise Hl7Error(f"the MSH segment {_shown(first)} is too short to hold its delimiters")
    field = first[3]
    end = first.find(field, 4)
    encoding = first[4:] if end < 0 else first[4:end]
    chars = field + encoding
    if (
        len(encoding) not in (4, 5)  # 5: HL7 2.7 adds the truncation character
        or len(set(chars)) != len(chars)
        or any(c.isalnum() or c.isspace() for c in chars)
    ):
        raise Hl7Error(
            f"MSH-1/MSH-2 {_shown(chars)} are not valid delimiters: expected a field separator and four "
            "distinct encoding characters such as |^~\\&"
        )
    return Delimiters(field, encoding[0], encoding[1], encoding[2], encoding[3])


def _peek_control_id(msh: str, delims: Delimiters) -> str | None:
    fields = msh.split(delims.field)
    # fields[0] is "MSH" and fields[1] is MSH-2: MSH-n is fields[n - 1].
    if len(fields) <= 9:
        return None
    return fields[9].split(delims.component)[0].strip() or None


# MSH-18 values (HL7 table 0211) and the Python codec for each that the gateway reads.
_CHARSETS: Final[dict[str, str]] = {
    "": "utf-8",
    "ASCII": "utf-8",  # a subset: decoding as UTF-8 is exact, and tolerant of a sender's slip
    "UNICODE UTF-8": "utf-8",
    "8859/1": "latin-1",
    "8859/2": "iso8859_2",
    "8859/3": "iso8859_3",
    "8859/4": "iso8859_4",
    "8859/5": "iso8859_5",
    "8859/6": "iso8859_6",
    "8859/7": "iso8859_7",
    "8859/8": "iso8859_8",
    "8859/9": "iso8859_9",
    "8859/15": "iso8859_15",
}


def _decode(data: bytes | str) -> tuple[str, str]:
    """The text of ``data`` and the codec that decoded it."""
    if isinstance(data, str):
        return data, "utf-8"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise Hl7Error(f"expected bytes or text, not {type(data).__name__}")
    data = bytes(data)
    declared = _declared_charset(data)
    codec = _CHARSETS.get(declared, "utf-8")
    if codec != "utf-8":
        codecs.lookup(codec)  # every name in the table exists; this documents it
        try:
            return data.decode(codec), codec
        except UnicodeDecodeError as exc:
            raise Hl7Error(
                f"MSH-18 declares {declared!r}, but byte 0x{data[exc.start]:02X} at offset {exc.start} "
                "is not a character of that set"
            ) from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        # Not UTF-8: latin-1 decodes any byte, and is what the senders that forget MSH-18 mean.
        return data.decode("latin-1"), "latin-1"


def _declared_charset(data: bytes) -> str:
    """MSH-18 (first repetition, first component) read from the raw bytes, or ``""``."""
    start = data.lstrip(b" \t\r\n").removeprefix(b"\xef\xbb\xbf")
    if not start.startswith(b"MSH") or len(start) < 4:
        return ""
    end = len(start)
    for stop in (b"\r", b"\n"):
        found = start.find(stop)
        if 0 <= found < end:
            end = found
    fields = start[:end].split(start[3:4])
    if len(fields) <= 17:
        return ""
    value = fields[17].split(b"~")[0].split(b"^")[0].strip()
    return value.decode("latin-1").upper()


# YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]; the offset may have spaces around its sign
# (``20080101123456- 0600`` in the IHE PCD examples).
_TIME = re.compile(
    r"(?P<digits>\d{4}(?:\d{2}){0,5})(?:\.(?P<fraction>\d{1,4}))?"
    r"(?:\s*(?P<sign>[+-])\s*(?P<oh>\d{2})(?P<om>\d{2}))?",
    re.ASCII,  # \d is 0-9 only: int() would also read "١٢"
)


def parse_hl7_time(text: str) -> datetime:
    """An HL7 DTM/TS value as a datetime: timezone-aware if it carries an offset, naive if it does
    not (the caller decides what a time without a zone is worth). Precision may stop at any field
    (``2008``, ``200801011234``); the fraction of a second needs the seconds. Raises Hl7Error naming
    the value when it is not a time (month 13, minute 61, letters, an offset beyond ±14 h)."""
    value = text.strip()
    match = _TIME.fullmatch(value)
    if match is None:
        raise Hl7Error(f"{value!r} is not an HL7 time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    digits = match["digits"]
    if match["fraction"] is not None and len(digits) != 14:
        raise Hl7Error(f"{value!r}: a fraction of a second needs the seconds before it")
    parts = [int(digits[i : i + 2]) for i in range(4, len(digits), 2)]
    year = int(digits[:4])
    month, day, hour, minute, second = (parts + [1, 1, 0, 0, 0][len(parts) :])[:5]
    micro = int((match["fraction"] or "0").ljust(6, "0")) if match["fraction"] else 0
    tz: timezone | None = None
    if match["sign"] is not None:
        oh, om = int(match["oh"]), int(match["om"])
        if om >= 60 or oh * 60 + om > 14 * 60:
            raise Hl7Error(f"{value!r}: {match['sign']}{match['oh']}{match['om']} is not a UTC offset")
        delta = timedelta(hours=oh, minutes=om)
        tz = timezone(-delta if match["sign"] == "-" else delta)
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError as exc:
        raise Hl7Error(f"{value!r} is not a valid time: {exc}") from None
