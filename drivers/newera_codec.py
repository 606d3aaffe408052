"""New Era NE-500/1000 serial protocol, sans-I/O: framing, CRC, replies and numbers.

Everything here turns bytes into events and values into bytes; nothing reads a port, a clock or
an event loop (the h11 pattern, see STYLE.md). The driver (:mod:`pumpgw.drivers.newera`) and the
emulated pump (:mod:`pumpgw.rig.newera_pump`) both use this one framing, so a framing mistake
cannot hide behind a matching mistake on the other side; the tests pin it to the golden vectors of
``shared/reference/pump-protocols.md`` §2.6.

Wire format (reference §2.2, §2.3; NE-M §10.2):

* safe mode, both directions: ``STX <len> <data> <CRC hi> <CRC lo> ETX`` with ``len = len(data) + 4``
  (the number of bytes remaining in the packet including the length byte itself) and the CRC being
  CRC-16/XMODEM of ``data`` (``binascii.crc_hqx(data, 0)``);
* basic mode, host to pump: ``<data> CR``; pump to host: ``STX <data> ETX``;
* reply data: ``<address, 2 digits><prompt>[<data>]``, or ``<address>A?<alarm>`` when the pump
  reports an alarm, where ``<data>`` may be a command error ``?``, ``?NA``, ``?OOR``, ``?COM``,
  ``?IGN`` (reference §2.4).

Decoders: :class:`HostDecoder` reads what a pump sends (gives :class:`Reply`), :class:`DeviceDecoder`
reads what a host sends (gives :class:`Command`). Both are fed with ``receive_data(bytes)`` and
drained with ``next_event()``, which returns an event or :data:`NEED_DATA`. A bad frame (bad length,
bad CRC, missing ETX, bytes that cannot be protocol text) makes ``next_event()`` raise
:class:`~pumpgw.gateway.errors.ProtocolError` once; the decoder then drops only the frame's STX and
looks for the next STX, so one bad frame never wedges the stream and never swallows a good frame
that followed it. Bytes before an STX are line noise and are skipped silently.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from enum import Enum, StrEnum
from typing import Final, Literal

from pumpgw.gateway.errors import ProtocolError, QuantityError
from pumpgw.gateway.quantity import Quantity

STX: Final = 0x02
ETX: Final = 0x03
CR: Final = 0x0D

#: Safe-mode length byte: len(data) + 4 counts itself, the two CRC bytes and ETX (reference §2.3).
SAFE_OVERHEAD: Final = 4
#: The length byte is one byte, so a safe packet carries at most 255 - 4 bytes of data.
MAX_SAFE_DATA: Final = 0xFF - SAFE_OVERHEAD
#: A basic-mode frame longer than this without its terminator is noise, not a frame. The longest
#: reply or command a gateway exchanges is well under 32 bytes (reference §2.5).
MAX_BASIC_DATA: Final = 128


class Mode(StrEnum):
    """Framing of the link (reference §2.2, §2.3)."""

    BASIC = "basic"  # commands end with CR, replies are STX data ETX, no CRC
    SAFE = "safe"  # STX len data CRC16 ETX in both directions


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0, no reflection): the New Era safe-mode CRC (§2.3)."""
    return binascii.crc_hqx(data, 0)


# -- status, alarms, errors: one table each, with their meaning in words (reference §2.4) ----------


class Prompt(StrEnum):
    """The prompt character after the address: what the Pumping Program is doing."""

    INFUSING = "I"
    WITHDRAWING = "W"
    STOPPED = "S"
    PAUSED = "P"
    PAUSE_PHASE = "T"
    USER_WAIT = "U"
    PURGING = "X"

    @property
    def meaning(self) -> str:
        return _PROMPT_MEANING[self]


class Alarm(StrEnum):
    """The alarm type after ``A?``. Every one of them stops the Pumping Program (NE-M §10.2)."""

    RESET = "R"
    MOTOR_STALLED = "S"
    COMMS_TIMEOUT = "T"
    PROGRAM_ERROR = "E"
    PHASE_OUT_OF_RANGE = "O"

    @property
    def meaning(self) -> str:
        return _ALARM_MEANING[self][1]

    @property
    def label(self) -> str:
        """A stable name for events and :class:`~pumpgw.drivers.base.ChannelStatus` alarms."""
        return _ALARM_MEANING[self][0]


class CommandError(StrEnum):
    """A command error in the reply data: the pump understood the packet but not the command."""

    NOT_RECOGNISED = "?"
    NOT_APPLICABLE = "?NA"
    OUT_OF_RANGE = "?OOR"
    BAD_PACKET = "?COM"
    IGNORED = "?IGN"

    @property
    def meaning(self) -> str:
        return _ERROR_MEANING[self]


_PROMPT_MEANING: Final[Mapping[Prompt, str]] = {
    Prompt.INFUSING: "infusing",
    Prompt.WITHDRAWING: "withdrawing",
    Prompt.STOPPED: "Pumping Program stopped",
    Prompt.PAUSED: "Pumping Program paused",
    Prompt.PAUSE_PHASE: "in a timed pause phase",
    Prompt.USER_WAIT: "waiting for an operational trigger (user wait)",
    Prompt.PURGING: "purging",
}

_ALARM_MEANING: Final[Mapping[Alarm, tuple[str, str]]] = {
    Alarm.RESET: ("power-reset", "the pump was reset (power was interrupted)"),
    Alarm.MOTOR_STALLED: ("motor-stalled", "the motor stalled"),
    Alarm.COMMS_TIMEOUT: ("comms-timeout", "safe-mode communications timeout: no valid packet in time"),
    Alarm.PROGRAM_ERROR: ("program-error", "Pumping Program error"),
    Alarm.PHASE_OUT_OF_RANGE: ("phase-out-of-range", "a Program Phase is out of range"),
}

_ERROR_MEANING: Final[Mapping[CommandError, str]] = {
    CommandError.NOT_RECOGNISED: "command not recognised",
    CommandError.NOT_APPLICABLE: "command not applicable now",
    CommandError.OUT_OF_RANGE: "data out of range",
    CommandError.BAD_PACKET: "invalid communications packet",
    CommandError.IGNORED: "command ignored because a new Phase started at the same time",
}

# Longest first, so "?OOR" is not read as "?" followed by data.
_ERRORS_BY_LENGTH: Final = sorted(CommandError, key=lambda e: len(e.value), reverse=True)


# -- events -------------------------------------------------------------------------------------


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"


#: ``next_event()`` returns this when the buffered bytes do not yet hold a whole frame.
NEED_DATA: Final = _Sentinel.NEED_DATA
NeedData = Literal[_Sentinel.NEED_DATA]


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply from a pump. Exactly one of ``prompt`` and ``alarm`` is set."""

    address: int
    prompt: Prompt | None
    alarm: Alarm | None
    error: CommandError | None
    data: str  # what follows the prompt when it is not a command error; "" for a status reply


@dataclass(frozen=True, slots=True)
class Command:
    """One command from a host, as framed on the wire (``data`` is not yet cleaned up)."""

    data: bytes
    mode: Mode  # the framing it arrived in


@dataclass(frozen=True, slots=True)
class _Frame:
    data: bytes
    mode: Mode


# -- encoding -----------------------------------------------------------------------------------


def encode_safe(data: bytes) -> bytes:
    """``STX len data CRC_hi CRC_lo ETX``. Raises ValueError for more than 251 bytes of data."""
    if len(data) > MAX_SAFE_DATA:
        raise ValueError(f"safe-mode data is {len(data)} bytes; the length byte allows {MAX_SAFE_DATA}")
    crc = crc16_xmodem(data)
    return bytes((STX, len(data) + SAFE_OVERHEAD)) + data + crc.to_bytes(2, "big") + bytes((ETX,))


def encode_basic_command(data: bytes) -> bytes:
    """A basic-mode command, host to pump: ``data CR`` (reference §2.2)."""
    return data + bytes((CR,))


def encode_basic_reply(data: bytes) -> bytes:
    """A basic-mode reply, pump to host: ``STX data ETX`` (reference §2.2)."""
    return bytes((STX,)) + data + bytes((ETX,))


def command_data(address: int, command: str = "", argument: str = "") -> bytes:
    """The data of a command: ``<address><command><argument>``, e.g. ``b"0RAT5MH"``.

    An empty command is a status query. Spaces are left out: the pump ignores them (§2.2) and the
    golden vectors of §2.6 have none. Raises ValueError for an address outside 0-99 (§2.1).
    """
    if not 0 <= address <= 99:
        raise ValueError(f"New Era address {address} is outside 0-99")
    return f"{address}{command}{argument}".encode("ascii")


def encode_command(address: int, command: str = "", argument: str = "", *, mode: Mode) -> bytes:
    """A whole command packet, host to pump, in ``mode`` framing."""
    data = command_data(address, command, argument)
    return encode_safe(data) if mode is Mode.SAFE else encode_basic_command(data)


def reply_data(
    address: int,
    status: Prompt | Alarm,
    *,
    error: CommandError | None = None,
    data: str = "",
) -> bytes:
    """The data of a reply: ``00S``, ``00I5.000MH``, ``00S?OOR`` or ``00A?T`` (reference §2.4)."""
    if not 0 <= address <= 99:
        raise ValueError(f"New Era address {address} is outside 0-99")
    if isinstance(status, Alarm):
        if error is not None or data:
            raise ValueError("an alarm reply carries no error and no data")
        return f"{address:02d}A?{status.value}".encode("ascii")
    if error is not None and data:
        raise ValueError("a reply carries either a command error or data, not both")
    tail = error.value if error is not None else data
    return f"{address:02d}{status.value}{tail}".encode("ascii")


def encode_reply(
    address: int,
    status: Prompt | Alarm,
    *,
    error: CommandError | None = None,
    data: str = "",
    mode: Mode,
) -> bytes:
    """A whole reply packet, pump to host, in ``mode`` framing."""
    payload = reply_data(address, status, error=error, data=data)
    return encode_safe(payload) if mode is Mode.SAFE else encode_basic_reply(payload)


_REPLY = re.compile(rb"(\d\d)([\x20-\x7e])([\x20-\x7e]*)")


# -- reply parsing ------------------------------------------------------------------------------


def parse_reply(data: bytes, *, peer: str = "pump") -> Reply:
    """Parse reply data (the part inside the frame). Raises ProtocolError if it is not a reply."""

    def bad(reason: str) -> ProtocolError:
        return ProtocolError(peer, "parse reply", data, reason)

    match = _REPLY.fullmatch(data)
    if match is None:
        raise bad("a reply is 2 address digits, a prompt and printable ASCII data")
    address = int(match[1])
    status, rest = match[2].decode("ascii"), match[3].decode("ascii")
    if status == "A":
        if len(rest) != 2 or rest[0] != "?":
            raise bad(f"an alarm is 'A?' and one letter, not {'A' + rest!r}")
        try:
            alarm = Alarm(rest[1])
        except ValueError:
            raise bad(f"unknown alarm type {rest[1]!r}") from None
        return Reply(address, None, alarm, None, "")
    try:
        prompt = Prompt(status)
    except ValueError:
        raise bad(f"unknown prompt {status!r}") from None
    if rest.startswith("?"):
        for error in _ERRORS_BY_LENGTH:
            if rest == error.value:
                return Reply(address, prompt, None, error, "")
        raise bad(f"unknown command error {rest!r}")
    return Reply(address, prompt, None, None, rest)


# -- framing (written once, used by both decoders) -----------------------------------------------


def _is_digit(byte: int) -> bool:
    return 0x30 <= byte <= 0x39


def _printable(byte: int) -> bool:
    # Protocol text is ASCII: the pump strips control characters from what it gets (§2.2) and
    # answers with digits, letters, '.', '?'. A control byte inside a frame's data therefore means
    # the length byte was wrong or the frame is not a frame; reject early instead of waiting for
    # bytes that may never come.
    return 0x20 <= byte <= 0x7E


class _Framer:
    """Splits a byte stream into frames.

    ``basic`` is the basic framing to accept: ``"stx-etx"`` (from a pump), ``"cr"`` (from a host) or
    ``None``. An STX starts a safe packet, except with ``"stx-etx"`` where it starts a basic reply
    if ``safe`` is off, or if the byte after it is a digit (an address, not a length byte).
    """

    def __init__(self, peer: str, *, safe: bool, basic: Literal["stx-etx", "cr"] | None) -> None:
        self.peer = peer
        self.safe = safe
        self.basic = basic
        self._buf = bytearray()

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

    def next_frame(self) -> _Frame | NeedData:
        buf = self._buf
        while buf:
            if buf[0] != STX:
                if self.basic == "cr":
                    line = self._cr_line()
                    if line is None:
                        continue  # a partial line gave way to an STX: look again
                    return line
                start = buf.find(STX)
                if start < 0:
                    buf.clear()
                    return NEED_DATA
                del buf[:start]
            if self.basic == "stx-etx" and (not self.safe or (len(buf) > 1 and _is_digit(buf[1]))):
                return self._stx_etx_frame()
            return self._safe_frame()
        return NEED_DATA

    def _reject(self, length: int, reason: str) -> ProtocolError:
        # Resynchronise: drop only the STX that started the bad frame. The bytes after it may hold
        # the start of a good frame (a false STX in noise "swallows" a real frame that follows).
        bad = bytes(self._buf[:length])
        del self._buf[:1]
        return ProtocolError(self.peer, "receive", bad, reason)

    def _safe_frame(self) -> _Frame | NeedData:
        buf = self._buf
        if len(buf) < 2:
            return NEED_DATA
        length = buf[1]
        if length < SAFE_OVERHEAD:
            raise self._reject(2, f"safe-mode length byte {length} is below the minimum {SAFE_OVERHEAD}")
        total = 1 + length  # STX plus the bytes the length byte counts
        n = length - SAFE_OVERHEAD
        for i in range(2, min(len(buf), 2 + n)):
            if not _printable(buf[i]):
                raise self._reject(
                    i + 1, f"byte 0x{buf[i]:02X} inside the data: the length byte {length} is wrong"
                )
        if len(buf) < total:
            return NEED_DATA
        if buf[total - 1] != ETX:
            raise self._reject(total, f"no ETX where the length byte {length} says the packet ends")
        data = bytes(buf[2 : 2 + n])
        received = int.from_bytes(buf[2 + n : 4 + n], "big")
        expected = crc16_xmodem(data)
        if received != expected:
            raise self._reject(
                total, f"CRC 0x{received:04X} does not match the data (CRC-16/XMODEM 0x{expected:04X})"
            )
        del buf[:total]
        return _Frame(data, Mode.SAFE)

    def _stx_etx_frame(self) -> _Frame | NeedData:
        buf = self._buf
        for i in range(1, len(buf)):
            if buf[i] == ETX:
                data = bytes(buf[1:i])
                del buf[: i + 1]
                return _Frame(data, Mode.BASIC)
            if not _printable(buf[i]):
                raise self._reject(i + 1, f"byte 0x{buf[i]:02X} before the ETX of a basic-mode reply")
            if i > MAX_BASIC_DATA:
                raise self._reject(i + 1, f"no ETX within {MAX_BASIC_DATA} bytes of an STX")
        return NEED_DATA

    def _cr_line(self) -> _Frame | NeedData | None:
        buf = self._buf
        cr = buf.find(CR)
        stx = buf.find(STX)
        if stx >= 0 and (cr < 0 or stx < cr):
            # A safe packet started before this line ended: the partial line was noise (the
            # manual's inter-byte timeout would have discarded it too, §2.3).
            del buf[:stx]
            return None
        if cr < 0:
            if len(buf) > MAX_BASIC_DATA:
                bad = bytes(buf)
                buf.clear()
                raise ProtocolError(self.peer, "receive", bad, f"no CR within {MAX_BASIC_DATA} bytes")
            return NEED_DATA
        data = bytes(buf[:cr])
        del buf[: cr + 1]
        return _Frame(data, Mode.BASIC)


class HostDecoder:
    """Decodes what a pump sends: feed bytes, pull :class:`Reply` events.

    ``mode`` says which framing to expect: the pump answers in the framing of the mode it is in
    after the command (reference §2.3: the reply to ``SAF0`` comes in basic framing). Set it to
    ``None`` while that mode is unknown (when connecting): a frame whose second byte is a digit is
    then read as a basic reply (``STX 0 0 ...``), anything else as a safe packet. That is unambiguous
    for every reply shorter than 44 bytes of data, which covers every reply a gateway asks for.

    ``next_event()`` raises :class:`ProtocolError` for a bad frame or a frame that is not a reply,
    and can be called again afterwards: the stream is resynchronised on the next STX.
    """

    def __init__(self, *, mode: Mode | None = Mode.SAFE, peer: str = "pump") -> None:
        self.peer = peer
        self._framer = _Framer(peer, safe=True, basic="stx-etx")
        self.mode = mode

    @property
    def mode(self) -> Mode | None:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode | None) -> None:
        self._mode = mode
        self._framer.safe = mode is not Mode.BASIC
        self._framer.basic = None if mode is Mode.SAFE else "stx-etx"

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the pump. Never raises; problems surface in ``next_event``."""
        self._framer.feed(data)

    def next_event(self) -> Reply | NeedData:
        """The next reply, or NEED_DATA. Raises ProtocolError for a bad frame or a non-reply."""
        frame = self._framer.next_frame()
        if frame is NEED_DATA:
            return NEED_DATA
        return parse_reply(frame.data, peer=self.peer)

    def clear(self) -> bytes:
        """Discard a partial frame (returned), as the pump's 0.5 s inter-byte timeout does (§2.3)."""
        return self._framer.clear()

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of an event."""
        return self._framer.buffered


class DeviceDecoder:
    """Decodes what a host sends: feed bytes, pull :class:`Command` events.

    It accepts both framings at once, whatever mode the pump is in: a packet that starts with STX is
    a safe packet, anything else is a basic line ended by CR. A pump must read a safe ``SAF`` packet
    even in basic mode, since that is how a host switches it to safe mode (NESP always sends ``SAF``
    in safe framing, reference §2.3); what the pump *does* with a command in the wrong framing is the
    pump's business, not the decoder's.
    """

    def __init__(self, *, peer: str = "host") -> None:
        self.peer = peer
        self._framer = _Framer(peer, safe=True, basic="cr")

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the host. Never raises; problems surface in ``next_event``."""
        self._framer.feed(data)

    def next_event(self) -> Command | NeedData:
        """The next command, or NEED_DATA. Raises ProtocolError for a bad safe packet."""
        frame = self._framer.next_frame()
        if frame is NEED_DATA:
            return NEED_DATA
        return Command(frame.data, frame.mode)

    def clear(self) -> bytes:
        """Discard a partial frame (returned), as the pump's 0.5 s inter-byte timeout does (§2.3)."""
        return self._framer.clear()

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of an event."""
        return self._framer.buffered


# -- numbers ------------------------------------------------------------------------------------

# "Maximum of 4 digits plus 1 decimal point. Maximum of 3 digits to the right of the decimal
# point" (NE-M p.38, reference §2.5).
MAX_DIGITS: Final = 4
MAX_DECIMALS: Final = 3

_NUMBER = re.compile(r"(\d+)(?:\.(\d*))?|\.(\d+)", re.ASCII)
_AMOUNT = re.compile(r"(\d+\.?\d*|\.\d+)([A-Z]+)", re.ASCII)
_DISPENSED = re.compile(r"I(\d+\.?\d*|\.\d+)W(\d+\.?\d*|\.\d+)([A-Z]+)", re.ASCII)
_FIRMWARE = re.compile(r"NE(\d+)V(\d+\.\d+)", re.ASCII)

#: Rate units on the wire and their UCUM codes (reference §2.5, ``RAT``).
RATE_UNITS: Final[Mapping[str, str]] = {"UM": "uL/min", "MM": "mL/min", "UH": "uL/h", "MH": "mL/h"}
#: Volume units on the wire and their UCUM codes (reference §2.5, ``VOL``, ``DIS``).
VOLUME_UNITS: Final[Mapping[str, str]] = {"UL": "uL", "ML": "mL"}


def format_number(value: Decimal, *, unit: str = "") -> str:
    """The wire text of a value the host sends (``60``, ``0.125``, ``1000``), exactly.

    Raises :class:`QuantityError` (never rounds) for a value that the pump's number format cannot
    hold: negative, not finite, more than 3 decimals or more than 4 digits. A rate or a volume is a
    clinical value: a pump that silently got 12.34 instead of 12.345 is a dosing error.
    """
    if not isinstance(value, Decimal) or not value.is_finite():
        raise QuantityError(value, unit, "a New Era number must be a finite Decimal")
    if value < 0:
        raise QuantityError(value, unit, "a New Era number cannot be negative")
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    whole, _, fraction = text.partition(".")
    if len(fraction) > MAX_DECIMALS:
        raise QuantityError(
            value,
            unit,
            f"has {len(fraction)} decimals; a New Era pump takes at most {MAX_DECIMALS} "
            "(NE-M p.38) and the gateway does not round clinical values",
        )
    if len(whole) + len(fraction) > MAX_DIGITS:
        raise QuantityError(
            value,
            unit,
            f"has {len(whole) + len(fraction)} digits; a New Era pump takes at most {MAX_DIGITS} "
            "(NE-M p.38) and the gateway does not round clinical values",
        )
    return text


def format_reading(value: Decimal, *, unit: str = "") -> str:
    """The wire text of a value a pump reports: 4 digits and a decimal point (``60.00``, ``1000.``).

    For the emulated pump. Digits beyond the fourth are cut off (toward zero), as the pump's display
    of 4 digits can show no more [inferred: the manual gives the format, not the rounding]. Raises
    QuantityError for a negative value or one of 10000 or more, which the format cannot hold.
    """
    if not value.is_finite() or value < 0 or value >= 10**MAX_DIGITS:
        raise QuantityError(value, unit, "a New Era reading is 0 to 9999.")
    whole_digits = len(str(int(value)))
    decimals = min(MAX_DECIMALS, MAX_DIGITS - whole_digits)
    cut = value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_DOWN)
    text = format(cut, "f")
    return text if decimals else text + "."


def parse_number(text: str) -> Decimal:
    """``"60.00"``, ``"1000."``, ``".5"`` as an exact Decimal. Raises ValueError for anything else."""
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{text!r} is not a New Era number")
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid literals
        raise ValueError(f"{text!r} is not a New Era number") from None


# The manual allows 4 digits (NE-M p.38); allow some slack for firmware variants, but refuse
# absurd readings before they reach exact arithmetic (a 40-digit rate is a broken wire, not a rate).
READING_MAX_DIGITS = 8


def _reading(number: str, text: str, peer: str, what: str) -> Decimal:
    if sum(c.isdigit() for c in number) > READING_MAX_DIGITS:
        raise ProtocolError(
            peer, f"parse {what}", text.encode(), f"more than {READING_MAX_DIGITS} digits in a reading"
        )
    try:
        return parse_number(number)
    except ValueError as exc:
        raise ProtocolError(peer, f"parse {what}", text.encode(), str(exc)) from None


def parse_amount(text: str, units: Mapping[str, str], *, peer: str = "pump", what: str = "value") -> Quantity:
    """``"5.000MH"`` with ``RATE_UNITS`` as ``Quantity(5.000, "mL/h")``, exactly.

    Raises ProtocolError if the text is not a number (of at most READING_MAX_DIGITS digits)
    followed by one of ``units``.
    """
    match = _AMOUNT.fullmatch(text)
    if match is None or match[2] not in units:
        raise ProtocolError(
            peer, f"parse {what}", text.encode(), f"expected a number and one of {sorted(units)}"
        )
    return Quantity(_reading(match[1], text, peer, what), units[match[2]])


def parse_dispensed(text: str, *, peer: str = "pump") -> tuple[Quantity, Quantity]:
    """``"I1.000W0.000ML"`` (the ``DIS`` reply) as (infused, withdrawn). Raises ProtocolError."""
    match = _DISPENSED.fullmatch(text)
    if match is None or match[3] not in VOLUME_UNITS:
        raise ProtocolError(peer, "parse DIS", text.encode(), "expected I<number>W<number><UL|ML>")
    unit = VOLUME_UNITS[match[3]]
    infused = _reading(match[1], text, peer, "DIS")
    return Quantity(infused, unit), Quantity(_reading(match[2], text, peer, "DIS"), unit)


def parse_firmware(text: str, *, peer: str = "pump") -> tuple[str, str]:
    """``"NE1000V3.928"`` (the ``VER`` reply) as (``"NE-1000"``, ``"3.928"``). Raises ProtocolError."""
    match = _FIRMWARE.fullmatch(text)
    if match is None:
        raise ProtocolError(peer, "parse VER", text.encode(), "expected NE<model>V<major>.<minor>")
    return f"NE-{match[1]}", match[2]
