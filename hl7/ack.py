"""HL7 v2 acknowledgements: ACK (accept and application), RRG^O16 (the PIV application answer), and
reading any acknowledgement that comes back.

- :func:`build_ack`: ``ACK^<trigger>^ACK`` for a message that was read. MSA-2 is that message's
  control id; one ERR per problem (below).
- :func:`build_rrg_o16`: the PIV application acknowledgement (``RRG^O16^RRG_O16``, MSH-15 AL,
  MSH-16 NE, MSH-21 the RRG profile), AA/AE/AR for an RGV^O15, with an ORC naming the order
  when it was read (ORC-1 ``OK`` accepted, ``UA`` unable to accept).
- :func:`nak_for_unreadable`: the answer to a frame that is not an HL7 message at all, built from
  whatever the raw MSH gives (its control id, its trigger, whether it asked for enhanced mode: CR,
  else AR), so that the sender is never left without an answer.
- :func:`read_ack`: MSA and ERR of an ACK or RRG^O16, tolerant of what the IHE examples do (empty
  MSA-2, spaces around values: ``hl7-examples/08``).

One ERR per problem (HL7 2.6 §2.15.5; IHE PCD TF-2 B.3, ``hl7-examples/08``):

- ERR-2 (location) ``segment^sequence^field[^^component]`` when the problem's element names an HL7
  position (``RXG-16``, ``RXG[2]-16``, ``TQ1-13.2``) or a domain name with one (``ordered_at`` →
  ORC-9, ``patient`` → PID-3);
- ERR-3 the HL7 table 0357 code and text (``207^Application internal error^HL70357`` for a PIV
  code, which HL7 0357 has no room for);
- ERR-4 severity ``E``;
- ERR-5 the PIV application error (``9010^Unable to match medication to drug library``) for a
  9xxx code, or the gateway's own code;
- ERR-8 the message for a person: the element and the reason, as the gateway found them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, NamedTuple

from pumpgw.gateway.errors import Hl7Error
from pumpgw.gateway.orders import HL7_APPLICATION_ERROR, Order, OrderProblem

from . import codes
from .build import Party, components, escape, message, msh, segment
from .message import Hl7Message, Segment, parse_message

__all__ = [
    "AckError",
    "AckResult",
    "build_ack",
    "build_rrg_o16",
    "nak_for_unreadable",
    "read_ack",
]

ACK_CODES: Final = codes.ACK_ACCEPT | codes.ACK_ERROR | codes.ACK_REJECT

# Versions the gateway answers in when the message it acknowledges used them (hl7apy validates
# each); anything else is answered in 2.6, the version IHE PCD is based on.
_ANSWER_VERSIONS: Final = frozenset({"2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"})
_DEFAULT_VERSION: Final = "2.6"

# Texts for ERR-5. 9010 is the TF's own wording (TF-2 Rev 9 E.2.3, hl7-examples/08); the others
# are the meanings listed in ../shared/reference/ihe-pcd.md, as the TF's table was not at hand.
PIV_ERROR_TEXT: Final[dict[str, str]] = {
    "9009": "Units do not match the drug library",
    "9010": "Unable to match medication to drug library",
    "9011": "Patient weight mismatch",
    "9012": "Patient identifier mismatch",
    "9019": "Patient weight missing",
    "9021": "Care area mismatch",
    "9022": "Stale program",
    "9024": "Hard limit exceeded",
}

# Problem elements that are domain names (check_order's) with a place in an RGV^O15.
_DOMAIN_LOCATIONS: Final[dict[str, str]] = {
    "ordered_at": "ORC-9",
    "patient": "PID-3",
    "parent_order": "ORC-8",
    "status": "ORC-5",
    "rate": "RXG-15",
}
_LOCATION = re.compile(
    r"(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<seq>\d+)\])?(?:-(?P<field>\d+)(?:\.(?P<comp>\d+))?)?", re.ASCII
)

# The longest text put in ERR-8 (TX): a reason is a sentence, never a document.
_MAX_TEXT = 1000


class AckError(NamedTuple):
    """One error an acknowledgement reports: the most specific code (ERR-5, else ERR-3) and text."""

    code: str
    text: str

    def __str__(self) -> str:
        return f"{self.text} (code {self.code})" if self.text else f"code {self.code}"


@dataclass(frozen=True, slots=True)
class AckResult:
    """What an acknowledgement says. ``code`` is MSA-1 (AA/AE/AR/CA/CE/CR), ``acked_control_id``
    MSA-2 (``""`` when the sender left it empty), ``text`` MSA-3; ``control_id`` and
    ``message_type`` are the acknowledgement's own (to acknowledge an RRG^O16 in turn)."""

    code: str
    acked_control_id: str
    errors: tuple[AckError, ...] = ()
    text: str = ""
    control_id: str = ""
    message_type: tuple[str, str, str] = ("", "", "")

    @property
    def accepted(self) -> bool:
        return self.code in codes.ACK_ACCEPT


def _location(element: str) -> str:
    """ERR-2 (ERL) for a problem's element, or ``""`` when it names no position in the message."""
    match = _LOCATION.fullmatch(_DOMAIN_LOCATIONS.get(element, element))
    if match is None:
        return ""
    comp = match["comp"]
    return components(match["seg"], match["seq"] or "1", match["field"], "1" if comp else None, comp)


def _err(problem: OrderProblem) -> str:
    code = str(problem.code)
    if code in codes.TABLE_0357_TEXT:
        hl7_code, app = code, ""
    else:
        hl7_code = HL7_APPLICATION_ERROR
        app = components(escape(code), escape(PIV_ERROR_TEXT.get(code, "")))
    text = f"{problem.element}: {problem.reason}" if problem.element else problem.reason
    return segment(
        "ERR",
        "",
        _location(problem.element),
        components(hl7_code, escape(codes.TABLE_0357_TEXT[hl7_code]), "HL70357"),
        "E",
        app,
        "",
        "",
        escape(text[:_MAX_TEXT]),
    )


def _new_control_id() -> str:
    return uuid.uuid4().hex[:20]  # 80 random bits; 20 characters fit MSH-10 in every version


def build_ack(
    msg: Hl7Message,
    code: str,
    *,
    at: datetime,
    sender: Party,
    trigger: str | None = None,
    errors: Sequence[OrderProblem] = (),
    text: str = "",
    control_id: str | None = None,
) -> bytes:
    """``ACK^<trigger>^ACK`` acknowledging ``msg``: MSA-1 ``code``, MSA-2 ``msg``'s control id, one
    ERR per problem. ``trigger`` defaults to ``msg``'s (MSH-9.2); the receiver is ``msg``'s sender;
    the version is ``msg``'s when it is one the gateway knows, else 2.6. ``control_id`` defaults to a
    random one. Raises Hl7Error for a code that is not an acknowledgement code."""
    if code not in ACK_CODES:
        raise Hl7Error(f"{code!r} is not an acknowledgement code ({', '.join(sorted(ACK_CODES))})")
    event = msg.message_type[1] if trigger is None else trigger
    lines = [
        msh(
            sender=sender,
            receiver=msg.sender,
            message_type=f"ACK^{escape(event)}^ACK",
            control_id=control_id or _new_control_id(),
            at=at,
            version=msg.version if msg.version in _ANSWER_VERSIONS else _DEFAULT_VERSION,
        ),
        segment("MSA", code, escape(msg.control_id), escape(text[:_MAX_TEXT])),
        *(_err(p) for p in errors),
    ]
    return message(lines)


def build_rrg_o16(
    order_message: Hl7Message,
    order: Order | None,
    code: str,
    *,
    control_id: str,
    at: datetime,
    sender: Party,
    receiver: Party,
    errors: Sequence[OrderProblem] = (),
) -> bytes:
    """The PIV application acknowledgement of the RGV^O15 ``order_message``: ``RRG^O16^RRG_O16``
    v2.6, MSH-15 AL, MSH-16 NE, MSH-21 the RRG profile OID; MSA-1 ``code`` (AA, AE or AR), MSA-2
    the RGV's control id; one ERR per problem; an ORC (ORC-1 OK or UA, ORC-2 the order) when the
    order was read.

    Raises Hl7Error for another code, for AA with errors, or AE/AR without any (a refusal says why).
    """
    if code not in ("AA", "AE", "AR"):
        raise Hl7Error(f"an RRG^O16 answers AA, AE or AR, not {code!r}")
    if code == "AA" and errors:
        raise Hl7Error("an RRG^O16 that accepts the order (AA) cannot carry errors")
    if code != "AA" and not errors:
        raise Hl7Error(f"an RRG^O16 that refuses the order ({code}) must say why (no errors given)")
    lines = [
        msh(
            sender=sender,
            receiver=receiver,
            message_type="RRG^O16^RRG_O16",
            control_id=control_id,
            at=at,
            accept_ack="AL",
            application_ack="NE",
            profile=codes.PCD_03_RRG,
        ),
        segment("MSA", code, escape(order_message.control_id)),
        *(_err(p) for p in errors),
    ]
    if order is not None:
        # The RESPONSE group with its ORDER only: a PID would need the patient's name (PID-5 is
        # required), and the order programmer matches on MSA-2 and ORC-2.
        lines.append(segment("ORC", "OK" if code == "AA" else "UA", escape(order.order_id)))
    return message(lines)


def read_ack(data: bytes | str | Hl7Message) -> AckResult:
    """MSA and ERR of an acknowledgement (ACK, RRG^O16, any message with an MSA). Raises Hl7Error
    when it is not HL7, has no MSA, or MSA-1 is not an acknowledgement code."""
    msg = data if isinstance(data, Hl7Message) else parse_message(data)
    msa = msg.segment("MSA")
    if msa is None:
        kind = "^".join(p for p in msg.message_type if p)
        raise Hl7Error(
            f"the {kind} message has no MSA segment: it is not an acknowledgement", control_id=msg.control_id
        )
    code = msa.component(1).upper()
    if code not in ACK_CODES:
        raise Hl7Error(
            f"MSA-1 {msa.component(1)!r} is not an acknowledgement code ({', '.join(sorted(ACK_CODES))})",
            control_id=msg.control_id,
        )
    return AckResult(
        code=code,
        acked_control_id=msa.component(2),
        errors=tuple(_read_err(err) for err in msg.segments("ERR")),
        text=msa.component(3),
        control_id=msg.control_id,
        message_type=msg.message_type,
    )


def _read_err(err: Segment) -> AckError:
    # ERR-5 (application error), else ERR-3 (HL7 0357), else ERR-1.4 (the v2.4 ELD form).
    for n in (5, 3):
        if err.component(n, 1) or err.component(n, 2):
            code, text = err.component(n, 1), err.component(n, 2)
            break
    else:
        code, text = err.subcomponent(1, 4, 1), err.subcomponent(1, 4, 2)
    return AckError(code, err.component(8) or text)


def nak_for_unreadable(
    data: bytes, reason: str, *, at: datetime, sender: Party, enhanced: bool | None = None
) -> bytes:
    """A negative acknowledgement for ``data``, a frame that could not be read as HL7 at all.

    Best effort from the raw bytes: if they hold an MSH, its control id goes to MSA-2, its trigger
    to MSH-9.2 and its sender becomes the receiver, and MSH-15 decides the mode (enhanced: CR,
    original: AR) unless ``enhanced`` says it; without an MSH, MSA-2 is empty and the code AR (CR
    when ``enhanced``). ERR-3 is 100 (no MSH first) or
    102 (an MSH, but not readable), ERR-8 ``reason``. Never raises for any ``data``.
    """
    header = _raw_msh(data)
    starts_with_msh = data.lstrip(b" \t\r\n").startswith(b"MSH")

    def get(n: int, c: int = 1) -> str:
        return header[n][c - 1] if header is not None and n < len(header) and c <= len(header[n]) else ""

    # enhanced: the caller knows the mode (a PIV consumer always answers CA/CE/CR); None: MSH-15 decides.
    code = "CR" if (enhanced if enhanced is not None else bool(get(15))) else "AR"
    problem = OrderProblem("102" if starts_with_msh else "100", "", reason)
    receiver = Party(get(3), get(4), get(3, 2), get(3, 3))
    lines = [
        msh(
            sender=sender,
            receiver=receiver,
            message_type=f"ACK^{escape(get(9, 2))}^ACK",
            control_id=_new_control_id(),
            at=at,
            version=get(12) if get(12) in _ANSWER_VERSIONS else _DEFAULT_VERSION,
        ),
        segment("MSA", code, escape(get(10))),
        _err(problem),
    ]
    return message(lines)


_SAFE_VALUE = re.compile(r"[\x20-\x7e]{1,64}")


def _raw_msh(data: bytes) -> list[list[str]] | None:
    """MSH-n's components as ``header[n]`` (n ≥ 3), read from raw bytes without trusting them: a
    value that is not short printable ASCII is dropped. None when there is no MSH."""
    start = data.find(b"MSH")
    if start < 0 or len(data) < start + 8:
        return None
    line = data[start:].split(b"\r")[0].split(b"\n")[0].decode("latin-1")
    if len(line) < 5:
        return None
    field_sep = line[3]
    if field_sep.isalnum() or field_sep.isspace():
        return None
    component_sep = line[4] if len(line) > 4 else "^"
    fields = line.split(field_sep)
    header: list[list[str]] = [[], [field_sep], [fields[1] if len(fields) > 1 else ""]]
    for raw in fields[2:]:
        parts = [p.strip() for p in raw.split(component_sep)]
        header.append([p if _SAFE_VALUE.fullmatch(p) and "\\" not in p else "" for p in parts])
    return header
