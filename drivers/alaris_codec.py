"""Alaris GH / CC / Asena-style serial protocol, sans-I/O: framing, CRC, messages and numbers.

Everything here turns bytes into events and values into bytes; nothing reads a port, a clock or an
event loop (the h11 pattern, see STYLE.md). The driver (:mod:`pumpgw.drivers.alaris`) and the
emulated pump (:mod:`pumpgw.rig.alaris_pump`) both use this one framing, and the tests pin it to the
golden vectors of ``shared/reference/pump-protocols.md`` §3, so the two cannot agree on a shared
mistake.

Sources (keys of the reference): INFUPY ``infupy/backends/alaris.py`` and MDPNP ``Asena.java``; the
replies the MDPNP simulators send (``interop-lab/demo-apps/.../alaris/SingleSimAlaris.java``,
``interop-lab/demo-devices/.../neurowave/AlarisToNeurowave.java``, whose comments quote traffic
from an Alaris GH) fill in reply shapes; their CRCs check out, e.g. ``!INST_SERIALNO^8002-51740|050B``.

Wire format (reference §3):

* a frame, both directions: ``'!' message '|' CRC CR``. ``message`` is printable ASCII, fields
  separated by ``^`` ("HL7 style", INFUPY); the first field names the command, and a reply repeats
  the name of the command it answers (``!INF_RATE^5.00^ml/h|1BAA``);
* ``CRC`` is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0) of ``message``
  only, as 4 **upper-case** hex digits (MDPNP ``crc()``; INFUPY ``b'%04X'``);
* ESC (0x1B) is "premature termination": the partial frame before it is discarded (INFUPY
  ``RecvThread``). That is a sender's deliberate abort, not an error, so it raises nothing; the
  decoders count it in ``aborted``.

Choices of this module where the sources are silent:

* **CRC case.** Input is strict: a CRC in lower-case hex is refused, as INFUPY's byte-for-byte
  comparison refuses it; output is always upper-case.
* **Longest frame.** :data:`MAX_FRAME_BYTES` (256, from ``!`` to CR). The longest message the
  sources show is the ``INF`` status, under 100 bytes.
* **Bytes between frames** (before a ``!``) are line noise and are skipped silently, as the New Era
  codec does; the decoders count them in ``noise_bytes``.
* **The error reply** (:class:`ErrorCode`, :func:`encode_error`) and the **INF values**
  (:class:`InfusionMode`, :class:`Alarm`) are ours; see their definitions below.

Decoders: :class:`HostDecoder` reads what a pump sends (gives :class:`Reply` or :class:`ErrorReply`),
:class:`DeviceDecoder` reads what a host sends (gives :class:`Command`). Both are fed with
``receive_data(bytes)`` and drained with ``next_event()``, which returns an event or
:data:`NEED_DATA`. A bad frame (bad or non-hex CRC, a byte that cannot be protocol text, no CR
within :data:`MAX_FRAME_BYTES`, a new ``!`` before the CR) makes ``next_event()`` raise
:class:`~pumpgw.gateway.errors.ProtocolError` once; the decoder then drops that frame and looks for
the next ``!``, so one bad frame never wedges the stream and never swallows a good frame behind it.
The decoders raise nothing else, and hold at most one partial frame.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import Enum, StrEnum
from typing import Final, Literal

from pumpgw.gateway.errors import ProtocolError, QuantityError
from pumpgw.gateway.quantity import Quantity

START: Final = 0x21  # '!'
END: Final = 0x0D  # CR
ESC: Final = 0x1B  # premature termination (INFUPY)
CRC_SEPARATOR: Final = "|"
FIELD_SEPARATOR: Final = "^"
CRC_DIGITS: Final = 4
#: The longest frame a decoder accepts, ``!`` to CR inclusive (our choice, see the module docstring).
MAX_FRAME_BYTES: Final = 256
#: ``'!' + '|' + 4 CRC digits + CR`` around the message.
FRAME_OVERHEAD: Final = 1 + 1 + CRC_DIGITS + 1
MAX_MESSAGE_BYTES: Final = MAX_FRAME_BYTES - FRAME_OVERHEAD

#: Line settings (reference §3: INFUPY ``AlarisComm`` "These settings come from Alaris
#: documentation"; MDPNP ``getSerialProvider``): 38 400 baud, 8N1, no flow control.
BAUDRATE: Final = 38400


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): the Alaris frame CRC (reference §3)."""
    return binascii.crc_hqx(data, 0xFFFF)


def crc_text(data: bytes) -> str:
    """The CRC of ``data`` as it appears on the wire: 4 upper-case hex digits."""
    return f"{crc16_ccitt_false(data):04X}"


def security_code(serial: str) -> str:
    """The remote-control code for a pump: the CRC of its serial number, 4 upper-case hex digits.

    INFUPY ``securitycode``, MDPNP ``remoteEnable`` → ``crc(serialNumber)`` (reference §3).
    ``security_code("12345678") == "A12B"``. Raises ValueError for a serial that is not ASCII.
    """
    try:
        data = serial.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"serial number {serial!r} is not ASCII") from None
    return crc_text(data)


# -- our choices where the sources are silent: one table each ----------------------------------

#: OUR CHOICE, not Alaris's. No public source shows how an Alaris pump refuses a command (reference
#: §3: "Not in the public sources: error/NAK reply format"), so the emulator and the driver agree on
#: this one: ``!ERROR^<code>^<command>^<text>|CRC\r``, where ``<command>`` is the name of the refused
#: command (empty when the frame could not be read) and ``<text>`` says why in words. A real pump
#: will answer differently; the driver must be checked against one before clinical use.
ERROR_REPLY: Final = "ERROR"


class ErrorCode(StrEnum):
    """The code in an :data:`ERROR_REPLY` (our choice, see there)."""

    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    BAD_VALUE = "BAD_VALUE"
    NOT_REMOTE = "NOT_REMOTE"
    BAD_STATE = "BAD_STATE"
    BAD_CODE = "BAD_CODE"
    BAD_FRAME = "BAD_FRAME"

    @property
    def meaning(self) -> str:
        return _ERROR_MEANING[self]


_ERROR_MEANING: Final[Mapping[ErrorCode, str]] = {
    ErrorCode.UNKNOWN_COMMAND: "the pump does not know this command",
    ErrorCode.BAD_VALUE: "a value is malformed, has the wrong unit or is out of the pump's range",
    ErrorCode.NOT_REMOTE: "the pump is not under remote control (REMOTE_CTRL^ENABLED first)",
    ErrorCode.BAD_STATE: "not possible in the pump's present state",
    ErrorCode.BAD_CODE: "wrong remote-control code for this pump's serial number",
    ErrorCode.BAD_FRAME: "the pump could not read the frame (bad CRC or characters); nothing was done",
}


class InfusionMode(StrEnum):
    """OUR CHOICE: the values of the infusion-mode field of ``INF`` (field [3], reference §3).

    MDPNP names the field but no public source lists its values (MDPNP's simulators send ``SET``,
    meaning unknown). The driver maps these to :class:`~pumpgw.drivers.base.ChannelState` and any
    other value to ``UNKNOWN``.
    """

    INFUSING = "INFUSING"
    PAUSED = "PAUSED"  # on hold mid-programme: INF_START resumes it
    STOPPED = "STOPPED"  # nothing running
    KVO = "KVO"  # keep vein open after the VTBI (no end action in the sources selects it)
    COMPLETE = "COMPLETE"  # VTBI reached with end action STOP
    ALARM = "ALARM"  # stopped by a device alarm


class Alarm(StrEnum):
    """OUR CHOICE: names in the alarm-notification field of ``INF`` (field [2], reference §3).

    The field holds ``-`` (what MDPNP's simulators send) or nothing when no alarm is active, else the
    active alarms' names separated by ``,``. The names are ours; :attr:`label` is the name used in
    :class:`~pumpgw.drivers.base.ChannelStatus` alarms and events, shared with the other drivers
    where the alarm is the same ("vtbi-complete", "air-in-line", "battery-low").
    """

    OCCLUSION = "OCCLUSION"
    AIR_IN_LINE = "AIR_IN_LINE"
    SYRINGE_EMPTY = "SYRINGE_EMPTY"
    NEAR_EMPTY = "NEAR_EMPTY"
    VTBI_COMPLETE = "VTBI_COMPLETE"
    BATTERY_LOW = "BATTERY_LOW"
    DOOR_OPEN = "DOOR_OPEN"

    @property
    def label(self) -> str:
        return _ALARMS[self][0]

    @property
    def stops_infusion(self) -> bool:
        """Whether this alarm stops a running infusion (in the emulator; our choice)."""
        return _ALARMS[self][1]

    @property
    def meaning(self) -> str:
        return _ALARMS[self][2]

    @classmethod
    def from_label(cls, label: str) -> Alarm:
        """The alarm whose :attr:`label` is ``label``. Raises ValueError for an unknown label."""
        for alarm in cls:
            if alarm.label == label:
                return alarm
        raise ValueError(f"unknown alarm {label!r}; known: {', '.join(a.label for a in cls)}")


_ALARMS: Final[Mapping[Alarm, tuple[str, bool, str]]] = {
    Alarm.OCCLUSION: ("occlusion", True, "occlusion: the line is blocked"),
    Alarm.AIR_IN_LINE: ("air-in-line", True, "air in the line"),
    Alarm.SYRINGE_EMPTY: ("syringe-empty", True, "the syringe is empty"),
    Alarm.NEAR_EMPTY: ("near-empty", False, "the syringe is nearly empty"),
    Alarm.VTBI_COMPLETE: ("vtbi-complete", False, "the volume to be infused has been given"),
    Alarm.BATTERY_LOW: ("battery-low", False, "the battery is low"),
    # A syringe driver cannot run with its syringe clamp or door open.
    Alarm.DOOR_OPEN: ("door-open", True, "the syringe clamp or door is open"),
}

#: The alarm field when no alarm is active: ``-`` (MDPNP's simulators) or empty.
NO_ALARM: Final = "-"
ALARM_SEPARATOR: Final = ","

# -- units and numbers -------------------------------------------------------------------------

#: Units on the wire and their UCUM codes: ``ml/h`` and ``ml`` (reference §3 vectors), ``mmHg``
#: (MDPNP's simulators, ``17.91^mmHg``).
RATE_UNITS: Final[Mapping[str, str]] = {"ml/h": "mL/h"}
VOLUME_UNITS: Final[Mapping[str, str]] = {"ml": "mL"}
PRESSURE_UNITS: Final[Mapping[str, str]] = {"mmHg": "mm[Hg]"}
RATE_UNIT: Final = "ml/h"
VOLUME_UNIT: Final = "ml"
PRESSURE_UNIT: Final = "mmHg"

#: Rates go with 2 decimals (MDPNP ``DecimalFormat("0.00")``, ``INF_RATE^5.00^ml/h``), volumes with 3
#: (``INF_VTBI^ACTIV^11.000^ml^STOP``, MDPNP ``DecimalFormat("0.000")``).
RATE_DECIMALS: Final = 2
VOLUME_DECIMALS: Final = 3
#: A reading with more digits than this is a broken wire, not a value (1200.00 mL/h has 6).
READING_MAX_DIGITS: Final = 10

_NUMBER = re.compile(r"(-?)(\d+)(?:\.(\d+))?", re.ASCII)


def _format_fixed(value: Decimal, decimals: int, unit: str) -> str:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise QuantityError(value, unit, "an Alaris number must be a finite Decimal")
    if value < 0:
        raise QuantityError(value, unit, "an Alaris number cannot be negative")
    step = Decimal(1).scaleb(-decimals)
    try:
        fixed = value.quantize(step)
    except InvalidOperation:
        raise QuantityError(value, unit, "is too large for the pump's number format") from None
    if fixed != value:
        raise QuantityError(
            value,
            unit,
            f"needs more than {decimals} decimals; the pump's format has {decimals} and the gateway "
            "does not round clinical values",
        )
    if len(fixed.as_tuple().digits) > READING_MAX_DIGITS:
        raise QuantityError(value, unit, f"has more than {READING_MAX_DIGITS} digits")
    return format(fixed, "f")


def format_rate(value: Decimal) -> str:
    """A rate in mL/h as the pump writes it, exactly: ``Decimal("5") -> "5.00"``.

    Raises :class:`QuantityError` (never rounds) for a negative or non-finite value or one that
    needs more than 2 decimals: a pump that silently got 12.34 instead of 12.345 is a dosing error.
    """
    return _format_fixed(value, RATE_DECIMALS, "mL/h")


def format_volume(value: Decimal) -> str:
    """A volume in mL as the pump writes it, exactly: ``Decimal("11") -> "11.000"``. As format_rate."""
    return _format_fixed(value, VOLUME_DECIMALS, "mL")


def parse_decimal(text: str, *, peer: str = "pump", what: str = "value", signed: bool = False) -> Decimal:
    """A plain decimal number (``5.00``, ``11``; ``-50.00`` if ``signed``) as an exact Decimal.

    Raises ProtocolError for anything else: exponents, a sign, spaces, ``.5``, more than
    :data:`READING_MAX_DIGITS` digits.
    """
    match = _NUMBER.fullmatch(text)
    if match is None or (match[1] and not signed):
        raise ProtocolError(peer, f"parse {what}", text.encode(), f"{text!r} is not a plain decimal number")
    if len(match[2]) + len(match[3] or "") > READING_MAX_DIGITS:
        raise ProtocolError(
            peer, f"parse {what}", text.encode(), f"more than {READING_MAX_DIGITS} digits in a reading"
        )
    return Decimal(text)


def parse_amount(
    number: str,
    unit: str,
    units: Mapping[str, str],
    *,
    peer: str = "pump",
    what: str = "value",
    signed: bool = False,
) -> Quantity:
    """``("5.00", "ml/h")`` with :data:`RATE_UNITS` as ``Quantity(5.00, "mL/h")``, exactly.

    Raises ProtocolError for a number that is not plain decimal (signed only if ``signed``) or a
    unit not in ``units``.
    """
    if unit not in units:
        raise ProtocolError(
            peer, f"parse {what}", f"{number}^{unit}".encode(), f"unit {unit!r} is not one of {sorted(units)}"
        )
    return Quantity(parse_decimal(number, peer=peer, what=what, signed=signed), units[unit])


# -- events -------------------------------------------------------------------------------------


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"


#: ``next_event()`` returns this when the buffered bytes do not yet hold a whole frame.
NEED_DATA: Final = _Sentinel.NEED_DATA
NeedData = Literal[_Sentinel.NEED_DATA]


@dataclass(frozen=True, slots=True)
class Message:
    """One framed message: its fields, the first being the command name."""

    fields: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.fields[0]

    @property
    def args(self) -> tuple[str, ...]:
        return self.fields[1:]


@dataclass(frozen=True, slots=True)
class Command(Message):
    """A command from a host, e.g. ``Command(("INF_RATE", "5.00", "ml/h"))``."""


@dataclass(frozen=True, slots=True)
class Reply(Message):
    """A reply from a pump, e.g. ``Reply(("INF_RATE", "5.00", "ml/h"))``."""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A pump's refusal in our :data:`ERROR_REPLY` format: code, refused command, text."""

    code: ErrorCode
    command: str
    text: str


# -- encoding -----------------------------------------------------------------------------------

_FORBIDDEN_IN_FIELD: Final = frozenset("^|!")


def _check_field(field: str) -> None:
    for char in field:
        if not 0x20 <= ord(char) <= 0x7E or char in _FORBIDDEN_IN_FIELD:
            raise ValueError(f"field {field!r} holds {char!r}, which an Alaris message cannot carry")


def encode_message(fields: Sequence[str]) -> bytes:
    """The message of a frame: the fields joined with ``^``. Raises ValueError for a field with a
    character the frame cannot carry (``^``, ``|``, ``!``, a control or non-ASCII character), an
    empty command name, or a message longer than :data:`MAX_MESSAGE_BYTES`."""
    if not fields or not fields[0]:
        raise ValueError("a message needs a command name as its first field")
    for field in fields:
        _check_field(field)
    message = FIELD_SEPARATOR.join(fields).encode("ascii")
    if len(message) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message is {len(message)} bytes; a frame holds at most {MAX_MESSAGE_BYTES}")
    return message


def encode_frame(fields: Sequence[str]) -> bytes:
    """``'!' + message + '|' + CRC + CR`` for ``fields`` (reference §3). Raises ValueError as
    :func:`encode_message` does.

    ``encode_frame(["INF"]) == b"!INF|4961\\r"``.
    """
    message = encode_message(fields)
    return b"!" + message + b"|" + crc_text(message).encode("ascii") + b"\r"


def encode_error(code: ErrorCode, command: str, text: str) -> bytes:
    """Our error reply (see :data:`ERROR_REPLY`). Characters a field cannot carry are replaced."""
    clean = "".join(c if 0x20 <= ord(c) <= 0x7E and c not in _FORBIDDEN_IN_FIELD else "?" for c in text)
    name = "".join(c if 0x20 <= ord(c) <= 0x7E and c not in _FORBIDDEN_IN_FIELD else "?" for c in command)
    return encode_frame((ERROR_REPLY, code.value, name, clean))


# -- parsing ------------------------------------------------------------------------------------

_NAME = re.compile(rb"[A-Z][A-Z0-9_]*", re.ASCII)
_HEX_UPPER = re.compile(rb"[0-9A-F]{4}", re.ASCII)
_HEX_ANY = re.compile(rb"[0-9A-Fa-f]{4}", re.ASCII)


def _printable(byte: int) -> bool:
    return 0x20 <= byte <= 0x7E


def parse_message(message: bytes, *, peer: str = "peer") -> tuple[str, ...]:
    """The fields of a message (the bytes between ``!`` and ``|``). Raises ProtocolError if it holds
    a byte that is not printable ASCII, a ``|`` or ``!``, or no command name
    (``[A-Z][A-Z0-9_]*``) in its first field."""

    def bad(reason: str) -> ProtocolError:
        return ProtocolError(peer, "parse message", message, reason)

    for byte in message:
        if not _printable(byte):
            raise bad(f"byte 0x{byte:02X} in a message: messages are printable ASCII")
        if byte in b"|!":
            raise bad(f"{chr(byte)!r} inside a message")
    fields = tuple(message.decode("ascii").split(FIELD_SEPARATOR))
    if _NAME.fullmatch(fields[0].encode("ascii")) is None:
        raise bad(f"{fields[0]!r} is not a command name (upper-case letters, digits, '_')")
    return fields


def parse_frame(frame: bytes, *, peer: str = "peer") -> tuple[str, ...]:
    """The fields of one whole frame ``!message|CRC\\r``. Raises ProtocolError if it is not one,
    or the CRC is not 4 upper-case hex digits or does not match the message."""

    def bad(reason: str) -> ProtocolError:
        return ProtocolError(peer, "receive", frame, reason)

    if len(frame) < FRAME_OVERHEAD or frame[0] != START or frame[-1] != END:
        raise bad("a frame is '!', a message, '|', 4 hex digits of CRC and CR")
    if len(frame) > MAX_FRAME_BYTES:
        raise bad(f"frame is {len(frame)} bytes; at most {MAX_FRAME_BYTES} are accepted")
    if frame[-2 - CRC_DIGITS] != ord(CRC_SEPARATOR):
        raise bad("no '|' and 4-digit CRC before the CR")
    crc = frame[-1 - CRC_DIGITS : -1]
    if _HEX_UPPER.fullmatch(crc) is None:
        if _HEX_ANY.fullmatch(crc) is not None:
            raise bad(f"CRC {crc.decode()!r} is in lower case; the protocol writes upper-case hex")
        raise bad(f"CRC {crc!r} is not 4 hex digits")
    message = frame[1 : -2 - CRC_DIGITS]
    expected = crc16_ccitt_false(message)
    if int(crc, 16) != expected:
        raise bad(f"CRC {crc.decode()} does not match the message (CRC-16/CCITT-FALSE {expected:04X})")
    try:
        return parse_message(message, peer=peer)
    except ProtocolError as exc:
        raise bad(exc.reason) from None


def parse_error(fields: Sequence[str], *, peer: str = "pump") -> ErrorReply:
    """An :data:`ERROR_REPLY`'s fields as an ErrorReply. Raises ProtocolError if malformed."""
    data = FIELD_SEPARATOR.join(fields).encode("ascii", "replace")
    if len(fields) != 4 or fields[0] != ERROR_REPLY:
        raise ProtocolError(peer, "parse ERROR", data, "an error reply is ERROR^<code>^<command>^<text>")
    try:
        code = ErrorCode(fields[1])
    except ValueError:
        raise ProtocolError(peer, "parse ERROR", data, f"unknown error code {fields[1]!r}") from None
    return ErrorReply(code, fields[2], fields[3])


# -- framing (written once, used by both decoders) -----------------------------------------------


class _Framer:
    """Splits a byte stream into frames (see the module docstring for what it rejects)."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self._buf = bytearray()
        self.noise_bytes = 0  # bytes skipped outside frames
        self.aborted = 0  # partial frames discarded on ESC

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> bytes:
        """Drop whatever is buffered (a partial frame) and return it."""
        dropped = bytes(self._buf)
        self._buf.clear()
        return dropped

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self) -> tuple[str, ...] | NeedData:
        buf = self._buf
        while buf:
            if buf[0] != START:
                start = buf.find(START)
                skipped = len(buf) if start < 0 else start
                self.noise_bytes += skipped
                del buf[:skipped]
                continue
            for i in range(1, min(len(buf), MAX_FRAME_BYTES)):
                byte = buf[i]
                if byte == END:
                    frame = bytes(buf[: i + 1])
                    del buf[: i + 1]
                    return parse_frame(frame, peer=self.peer)
                if byte == ESC:
                    # Premature termination (INFUPY): the sender abandoned this frame on purpose.
                    self.aborted += 1
                    del buf[: i + 1]
                    break
                if byte == START:
                    # A frame started before this one ended: bytes were lost. Report the stub, keep
                    # the new frame.
                    stub = bytes(buf[:i])
                    del buf[:i]
                    raise ProtocolError(self.peer, "receive", stub, "a new '!' arrived before the CR")
                if not _printable(byte):
                    raise self._reject(i + 1, f"byte 0x{byte:02X} inside a frame")
            else:
                if len(buf) >= MAX_FRAME_BYTES:
                    raise self._reject(MAX_FRAME_BYTES, f"no CR within {MAX_FRAME_BYTES} bytes of '!'")
                return NEED_DATA
        return NEED_DATA

    def _reject(self, length: int, reason: str) -> ProtocolError:
        # Drop only the '!' that started the bad frame; what follows is skipped as noise up to the
        # next '!', which may start a good frame.
        bad = bytes(self._buf[:length])
        del self._buf[:1]
        return ProtocolError(self.peer, "receive", bad, reason)


class _Decoder:
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self._framer = _Framer(peer)

    def receive_data(self, data: bytes) -> None:
        """Buffer received bytes. Never raises; problems surface in ``next_event``."""
        self._framer.feed(data)

    def clear(self) -> bytes:
        """Discard a partial frame (returned)."""
        return self._framer.clear()

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of an event."""
        return self._framer.buffered

    @property
    def noise_bytes(self) -> int:
        """How many bytes were skipped outside frames so far (line noise)."""
        return self._framer.noise_bytes

    @property
    def aborted(self) -> int:
        """How many partial frames were discarded on ESC so far."""
        return self._framer.aborted


class HostDecoder(_Decoder):
    """Decodes what a pump sends: feed bytes, pull :class:`Reply` and :class:`ErrorReply` events.

    ``next_event()`` raises :class:`ProtocolError` for a bad frame or a malformed error reply, and
    can be called again afterwards: the stream is resynchronised on the next ``!``.
    """

    def __init__(self, *, peer: str = "pump") -> None:
        super().__init__(peer)

    def next_event(self) -> Reply | ErrorReply | NeedData:
        """The next reply, or NEED_DATA. Raises ProtocolError (only) for a bad frame."""
        fields = self._framer.next_frame()
        if fields is NEED_DATA:
            return NEED_DATA
        if fields[0] == ERROR_REPLY:
            return parse_error(fields, peer=self.peer)
        return Reply(fields)


class DeviceDecoder(_Decoder):
    """Decodes what a host sends: feed bytes, pull :class:`Command` events."""

    def __init__(self, *, peer: str = "host") -> None:
        super().__init__(peer)

    def next_event(self) -> Command | NeedData:
        """The next command, or NEED_DATA. Raises ProtocolError (only) for a bad frame."""
        fields = self._framer.next_frame()
        if fields is NEED_DATA:
            return NEED_DATA
        return Command(fields)


# -- the INF status -----------------------------------------------------------------------------

#: ``INF`` reply fields after the name (MDPNP ``pumpStatus`` reads [1]..[13], reference §3).
INF_FIELDS: Final = 13


@dataclass(frozen=True, slots=True)
class InfStatus:
    """The ``INF`` status reply. Field numbers as MDPNP reads them; names [inferred] there.

    ``mode`` is kept as sent (see :class:`InfusionMode`); ``alarms`` are the alarm names as sent
    (see :class:`Alarm`). ``rate`` is the rate being delivered now (MDPNP publishes it as
    ``DEV_STATUS_INFRATE_ACTUAL``), 0 when stopped.
    """

    serial: str  # [1]
    alarms: tuple[str, ...]  # [2]
    mode: str  # [3]
    rate: Quantity  # [4] number, [5] unit
    volume_infused: Quantity  # [7] number, [8] unit
    pressure: Quantity | None  # [9] number, [10] unit; None when empty
    time_remaining: str  # [11] HH:MM:SS, "24+" beyond a day (MDPNP's bridge), "" with no VTBI
    log_type: str  # [12]
    log_entry: str  # [13]
    unused: str = ""  # [6]: empty in every source (MDPNP's bridge guesses "drug name")

    @property
    def infusion_mode(self) -> InfusionMode | None:
        """The mode if it is one of :class:`InfusionMode`, else None."""
        try:
            return InfusionMode(self.mode)
        except ValueError:
            return None

    def fields(self) -> tuple[str, ...]:
        """The whole reply, name first, ready for :func:`encode_frame`."""
        pressure = ("", "") if self.pressure is None else (_fixed2(self.pressure.value), PRESSURE_UNIT)
        return (
            "INF",
            self.serial,
            ALARM_SEPARATOR.join(self.alarms) if self.alarms else NO_ALARM,
            self.mode,
            format_rate(self.rate.to("mL/h").value),
            RATE_UNIT,
            self.unused,
            format_volume(self.volume_infused.to("mL").value),
            VOLUME_UNIT,
            *pressure,
            self.time_remaining,
            self.log_type,
            self.log_entry,
        )


def _fixed2(value: Decimal) -> str:
    return format(value.quantize(Decimal("0.01")), "f")


_ALARM_NAME = re.compile(r"[A-Z][A-Z0-9_]*", re.ASCII)


def parse_alarms(text: str, *, peer: str = "pump") -> tuple[str, ...]:
    """The alarm-notification field: ``()`` for ``-`` or empty, else the names. Raises
    ProtocolError for a name that is not ``[A-Z][A-Z0-9_]*`` (it may be unknown: see the driver)."""
    if text in ("", NO_ALARM):
        return ()
    names = tuple(text.split(ALARM_SEPARATOR))
    for name in names:
        if _ALARM_NAME.fullmatch(name) is None:
            raise ProtocolError(peer, "parse INF", text.encode(), f"{name!r} is not an alarm name")
    return names


def parse_inf(args: Sequence[str], *, peer: str = "pump") -> InfStatus:
    """The fields after ``INF`` as an :class:`InfStatus`. Raises ProtocolError when there are not
    exactly 13 or a number or unit is malformed."""
    if len(args) != INF_FIELDS:
        raise ProtocolError(
            peer,
            "parse INF",
            FIELD_SEPARATOR.join(args).encode("ascii", "replace"),
            f"INF carries {INF_FIELDS} fields after its name, not {len(args)}",
        )
    pressure = None
    if args[8] or args[9]:
        # Signed: MDPNP's bridge sends -50.00 mmHg.
        pressure = parse_amount(args[8], args[9], PRESSURE_UNITS, peer=peer, what="INF pressure", signed=True)
    return InfStatus(
        serial=args[0],
        alarms=parse_alarms(args[1], peer=peer),
        mode=args[2],
        rate=parse_amount(args[3], args[4], RATE_UNITS, peer=peer, what="INF rate"),
        unused=args[5],
        volume_infused=parse_amount(args[6], args[7], VOLUME_UNITS, peer=peer, what="INF volume"),
        pressure=pressure,
        time_remaining=args[10],
        log_type=args[11],
        log_entry=args[12],
    )


# -- VTBI and rate replies ----------------------------------------------------------------------

VTBI_ACTIVE: Final = "ACTIV"
VTBI_INACTIVE: Final = "DEACT"
#: The only end action in the sources (MDPNP ``INF_VTBI^ACTIV^11.000^ml^STOP``).
END_ACTION_STOP: Final = "STOP"


def vtbi_command(vtbi_ml: Decimal | None) -> tuple[str, ...]:
    """Set the VTBI with end action STOP, ``INF_VTBI^ACTIV^<v>^ml^STOP``, or deactivate it,
    ``INF_VTBI^DEACT`` (MDPNP; both [verified] vectors). Raises QuantityError as format_volume."""
    if vtbi_ml is None:
        return ("INF_VTBI", VTBI_INACTIVE)
    return ("INF_VTBI", VTBI_ACTIVE, format_volume(vtbi_ml), VOLUME_UNIT, END_ACTION_STOP)


def vtbi_reply(vtbi_ml: Decimal | None) -> tuple[str, ...]:
    """The ``INF_VTBI`` reply: ``INF_VTBI^ACTIV^<v>^ml^STOP`` or ``INF_VTBI^DEACT^^^``, the VTBI in
    field [2], empty when none, as MDPNP reads it. That a reply has the set command's shape, and that
    ``<v>`` is the VTBI *left*, is our choice. Raises QuantityError as :func:`format_volume`."""
    if vtbi_ml is None:
        return ("INF_VTBI", VTBI_INACTIVE, "", "", "")
    return vtbi_command(vtbi_ml)


def parse_vtbi(args: Sequence[str], *, peer: str = "pump") -> Quantity | None:
    """An ``INF_VTBI`` reply's fields after the name: the VTBI, or None when deactivated.

    Raises ProtocolError for any other shape or an end action other than STOP.
    """
    data = FIELD_SEPARATOR.join(args).encode("ascii", "replace")
    if len(args) == 4 and args[0] == VTBI_INACTIVE and not any(args[1:]):
        return None
    if len(args) == 4 and args[0] == VTBI_ACTIVE:
        if args[3] != END_ACTION_STOP:
            raise ProtocolError(peer, "parse INF_VTBI", data, f"end action {args[3]!r} is not STOP")
        return parse_amount(args[1], args[2], VOLUME_UNITS, peer=peer, what="INF_VTBI")
    raise ProtocolError(peer, "parse INF_VTBI", data, "expected ACTIV^<volume>^ml^STOP or DEACT^^^")


def rate_fields(rate_ml_h: Decimal) -> tuple[str, ...]:
    """``INF_RATE^<r>^ml/h``: the set command (reference §3) and the reply to a query or a set
    (MDPNP's simulators). Raises QuantityError as :func:`format_rate`."""
    return ("INF_RATE", format_rate(rate_ml_h), RATE_UNIT)


def parse_rate(args: Sequence[str], *, peer: str = "pump") -> Quantity:
    """An ``INF_RATE`` reply's fields after the name as mL/h. Raises ProtocolError."""
    if len(args) != 2:
        raise ProtocolError(
            peer, "parse INF_RATE", FIELD_SEPARATOR.join(args).encode("ascii", "replace"), "expected <r>^ml/h"
        )
    return parse_amount(args[0], args[1], RATE_UNITS, peer=peer, what="INF_RATE")


def parse_volume(args: Sequence[str], *, peer: str = "pump", what: str = "INF_VI") -> Quantity:
    """``<v>^ml`` (the ``INF_VI`` reply after its name) as mL. Raises ProtocolError."""
    if len(args) != 2:
        raise ProtocolError(
            peer, f"parse {what}", FIELD_SEPARATOR.join(args).encode("ascii", "replace"), "expected <v>^ml"
        )
    return parse_amount(args[0], args[1], VOLUME_UNITS, peer=peer, what=what)


# -- remote control -----------------------------------------------------------------------------

ENABLED: Final = "ENABLED"
DISABLED: Final = "DISABLED"
#: The reply to ``REMOTE_CTRL^ENABLED^<code>`` after the name, as an Alaris GH sent it (quoted in
#: MDPNP's ``AlarisToNeurowave`` and ``SingleSimAlaris``: ``!REMOTE_CTRL^ENABLED^****^PERMIT^0^ms|7BB0``;
#: "pumps just send asterisks"). What ``PERMIT^0^ms`` means is not known.
REMOTE_GRANTED: Final = (ENABLED, "****", "PERMIT", "0", "ms")


def remote_fields(command: Literal["REMOTE_CTRL", "REMOTE_CFG"], code: str | None) -> tuple[str, ...]:
    """``<command>^ENABLED^<code>`` to take remote control with ``code``, or ``<command>^DISABLED``
    (``code`` None) to give it back (reference §3)."""
    return (command, DISABLED) if code is None else (command, ENABLED, code)


def parse_remote(args: Sequence[str], *, peer: str = "pump", what: str = "REMOTE_CTRL") -> bool:
    """Whether a ``REMOTE_CTRL``/``REMOTE_CFG`` reply says remote control is held. ProtocolError."""
    if args and args[0] == ENABLED:
        return True
    if args and args[0] == DISABLED:
        return False
    raise ProtocolError(
        peer,
        f"parse {what}",
        FIELD_SEPARATOR.join(args).encode("ascii", "replace"),
        "expected ENABLED or DISABLED",
    )
