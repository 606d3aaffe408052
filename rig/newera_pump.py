"""An emulated New Era NE-1000 syringe pump: a sans-I/O device model for the bench rig.

``receive(data, now)`` takes the bytes a host sent and the monotonic time they arrived and returns
the bytes the pump answers; ``poll(now)`` lets time pass without traffic. No port, no clock, no
asyncio: :class:`~pumpgw.rig.pty_link.PtyDeviceServer` serves it over a real PTY, tests can also
call it directly. It speaks through :mod:`pumpgw.drivers.newera_codec`, the same framing the driver
uses, and the tests pin that framing to the golden vectors of the reference, so the two cannot
agree on a shared mistake.

Behaviour, from ``shared/reference/pump-protocols.md`` §2 (NE-M = the NE-1000 user manual):

* Power-up: the reset alarm ``A?R`` is pending and is what the first valid command gets as its
  reply (§2.3). The pump powers up in the mode stored before power-off: ``safe_timeout_s > 0``
  (the default, 10 s) is safe mode in "Auto-Alarm only" state, whose timeout timer starts only on
  the first valid packet (§2.3); ``safe_timeout_s=0`` is a pump in basic mode.
* A pending alarm is acknowledged by reporting it in reply to a valid command (``00A?T``); that
  command is not executed ("the alarm must be acknowledged before data changes or a start", §2.3).
* Safe mode: if no valid packet arrives for ``SAF`` seconds, the pump and the Pumping Program stop
  and alarm ``A?T`` is raised (§2.3). A packet with a bad CRC or length is answered ``?COM`` and does
  not restart the timer. A basic-mode command line is not a packet and is ignored [inferred].
* Replies are framed in the mode the pump is in *after* the command: the reply to ``SAF0`` is basic,
  the reply to ``SAF10`` is safe (NESP, §2.3).
* Commands: status query (no command), ``VER``, ``RAT``, ``VOL``, ``DIR``, ``DIA``, ``RUN``, ``STP``,
  ``DIS``, ``CLD``, ``SAF`` (§2.5). Anything else is ``?``; a number that does not fit the format
  (4 digits, 3 decimals) or the pump's limits is ``?OOR``; changing rate units, volume or
  diameter while pumping is ``?NA`` (NE-500 §5.4.1 for the rate units; [emulator choice] for the
  others, to keep the dispensed-volume arithmetic below unambiguous).
* ``STP`` pauses a running program (``P``); a second ``STP`` stops it (``S``) [inferred, §2.5].
* The volume target ``VOL`` counts against the infused volume of ``DIS`` since the last
  ``CLD INF``; when it is reached the pump stops with prompt ``S`` (no KVO on a New Era).
  ``VOL 0`` pumps continuously (§2.5).
* Not emulated here (a later issue): withdrawal (``RUN`` in ``WDR`` is ``?NA``), phases, purge,
  the network address commands, auto-sent alarm packets, syringe-dependent rate limits (a fixed
  ``max_rate_ml_h`` stands in for them).

Faults for tests: append :class:`ReplyFault` values to :attr:`EmulatedNewEraPump.faults`; each one
spoils the next reply the pump sends.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from enum import StrEnum
from typing import Final

from pumpgw.drivers.base import ChannelState
from pumpgw.drivers.newera_codec import (
    NEED_DATA,
    RATE_UNITS,
    VOLUME_UNITS,
    Alarm,
    Command,
    CommandError,
    DeviceDecoder,
    Mode,
    Prompt,
    encode_reply,
    format_number,
    format_reading,
    parse_number,
)
from pumpgw.gateway.errors import ProtocolError, QuantityError
from pumpgw.gateway.quantity import Quantity
from pumpgw.rig.physics import InfusionChannel

#: An incomplete packet is discarded after 0.5 s without a byte (reference §2.3).
INTER_BYTE_TIMEOUT_S: Final = 0.5
#: NESP's limits for ``SAF`` (0-255 s) and ``DIA`` (0.1-80.0 mm), reference §2.3 and §2.5.
MAX_SAFE_TIMEOUT_S: Final = 255
DIAMETER_RANGE_MM: Final = (Decimal("0.1"), Decimal("80.0"))
#: Volume units default to uL up to 14.00 mm syringe diameter, mL above (NE-500 quick start, §2.5).
UL_DIAMETER_LIMIT_MM: Final = Decimal("14.00")

_COMMAND = re.compile(r"(\*)?(\d{1,2})?([A-Z]{3})?(.*)", re.ASCII)
_RATE_ARGUMENT = re.compile(r"(\d+\.?\d*|\.\d+)(UM|MM|UH|MH)?", re.ASCII)
_NOISE: Final = b"\x00\xff\x7f~noise~"  # no STX in it: a host must skip it silently
_BROKEN: Final = b"\x0201"  # an STX, then what no frame can hold before the next STX

#: Injected alarms this pump reports, all as a motor stall.
_STALL_ALARMS: Final = frozenset({"motor-stall", "occlusion-downstream", "occlusion-upstream"})

_Result = tuple[CommandError | None, str]
_OK: Final[_Result] = (None, "")


class ReplyFault(StrEnum):
    """A one-shot fault applied to the next reply the emulated pump sends."""

    NO_ANSWER = "no-answer"  # the reply is not sent at all
    CORRUPT_CRC = "corrupt-crc"  # the low CRC byte is flipped (basic mode: a data byte is spoiled)
    BAD_LENGTH = "bad-length"  # the length byte is one short (basic mode: a data byte is spoiled)
    GARBAGE_BEFORE = "garbage-before"  # line noise without an STX precedes a good reply
    BROKEN_FRAME_BEFORE = "broken-frame-before"  # noise with an STX: a frame that breaks, then the reply


class EmulatedNewEraPump:
    """One NE-1000 with one channel, as a sans-I/O state machine (see the module docstring)."""

    def __init__(
        self,
        *,
        address: int = 0,
        firmware: str = "NE1000V3.928",
        diameter_mm: Decimal = Decimal("26.59"),
        safe_timeout_s: int = 10,
        max_rate_ml_h: Decimal = Decimal(1500),
    ) -> None:
        if not 0 <= address <= 99:
            raise ValueError(f"New Era address {address} is outside 0-99")
        if not 0 <= safe_timeout_s <= MAX_SAFE_TIMEOUT_S:
            raise ValueError(f"safe-mode timeout {safe_timeout_s} s is outside 0-{MAX_SAFE_TIMEOUT_S}")
        self.address = address
        self.firmware = firmware
        self.diameter_mm = diameter_mm
        self.max_rate_ml_h = max_rate_ml_h
        # A New Era stops when the volume target is reached: no KVO.
        self.channel = InfusionChannel(number=1, kvo_at_end=False)
        self.faults: deque[ReplyFault] = deque()
        self._safe_timeout_s = safe_timeout_s
        self._alarm: Alarm | None = Alarm.RESET  # power-up reset, reported on the first reply
        self._timer_since: float | None = None  # safe-mode timer; None: not running
        self._last_byte_at: float | None = None
        self._decoder = DeviceDecoder()
        self._rate = Decimal(0)
        self._rate_units = "MH"
        self._volume = Decimal(0)
        self._volume_units = "UL" if diameter_mm <= UL_DIAMETER_LIMIT_MM else "ML"
        self._direction = "INF"
        self._dispensed_offset_ml = Decimal(0)  # infused_ml at the last CLD INF
        self._handlers: dict[str, Callable[[str], _Result]] = {
            "": self._status,
            "VER": self._ver,
            "DIA": self._dia,
            "RAT": self._rat,
            "VOL": self._vol,
            "DIR": self._dir,
            "RUN": self._run,
            "STP": self._stp,
            "DIS": self._dis,
            "CLD": self._cld,
            "SAF": self._saf,
        }

    # -- what a test may look at ----------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return Mode.SAFE if self._safe_timeout_s > 0 else Mode.BASIC

    @property
    def safe_timeout_s(self) -> int:
        return self._safe_timeout_s

    @property
    def alarm(self) -> Alarm | None:
        """The alarm waiting to be reported (and so acknowledged), if any."""
        return self._alarm

    @property
    def prompt(self) -> Prompt:
        state = self.channel.state
        if state is ChannelState.INFUSING:
            return Prompt.INFUSING
        if state is ChannelState.PAUSED:
            return Prompt.PAUSED
        return Prompt.STOPPED

    @property
    def dispensed_ml(self) -> Decimal:
        """Volume infused since the last ``CLD INF``, as ``DIS`` reports it (before formatting)."""
        return self.channel.infused_ml - self._dispensed_offset_ml

    @property
    def rate_ml_h(self) -> Decimal:
        return Quantity(self._rate, RATE_UNITS[self._rate_units]).to("mL/h").value

    @property
    def volume_ml(self) -> Decimal:
        return Quantity(self._volume, VOLUME_UNITS[self._volume_units]).to("mL").value

    # -- the front panel -------------------------------------------------------------------------
    def keypad_program_and_run(self, rate_ml_h: Decimal, volume_ml: Decimal, now: float) -> None:
        """What a person does on the keypad: set rate (mL/h) and volume (mL), then RUN.

        Goes through the same checks as the RS-232 commands (so the keypad cannot do what the
        protocol refuses) but starts no safe-mode timer: that runs only from the first valid packet
        (shared/reference/pump-protocols.md §2.3, "Auto-Alarm only" after power-up). Raises
        ValueError naming the refused value.
        """
        self.poll(now)
        self._alarm = None  # a key press acknowledges a pending alarm (NE-M "Command Errors and Alarms")
        for command, argument in (
            ("RAT", format_number(rate_ml_h) + "MH"),
            ("VOL", "ML"),
            ("VOL", format_number(volume_ml)),
            ("DIR", "INF"),
            ("RUN", ""),
        ):
            error, _ = self._handlers[command](argument)
            if error is not None:
                raise ValueError(f"keypad {command} {argument}: {error.meaning}")

    def raise_alarm(self, name: str, now: float) -> None:
        """A fault the rig injects. A New Era pump has one alarm for a blocked line: the motor
        stalls (``A?S``, NE-M §10.2); occlusions and a stall all raise it, and it stops the program.
        Raises ValueError for an alarm this pump cannot report."""
        if name not in _STALL_ALARMS:
            raise ValueError(
                f"a New Era pump cannot report {name!r}: it reports a blocked line as a motor stall "
                f"({', '.join(sorted(_STALL_ALARMS))})"
            )
        self.poll(now)
        self._stop_program()
        self._alarm = Alarm.MOTOR_STALLED

    # -- time and bytes -------------------------------------------------------------------------
    def poll(self, now: float) -> None:
        """Let time pass up to monotonic ``now``: infuse, and apply the safe-mode timeout (§2.3).

        ``receive`` calls it first; a test or the bench calls it to let time pass without traffic
        (PtyDeviceServer only calls ``receive``).
        """
        since = self._timer_since
        if since is not None and now - since >= self._safe_timeout_s:
            lapsed_at = since + self._safe_timeout_s
            self.channel.advance(lapsed_at)
            self._stop_program()
            self._alarm = Alarm.COMMS_TIMEOUT
            self._timer_since = None  # runs again from the next valid packet
        self.channel.advance(now)

    def receive(self, data: bytes, now: float) -> bytes:
        """Take bytes from the host at monotonic ``now``; return the pump's reply bytes (maybe none)."""
        if (
            self._last_byte_at is not None
            and now - self._last_byte_at > INTER_BYTE_TIMEOUT_S
            and self._decoder.buffered
        ):
            self._decoder.clear()
        self._last_byte_at = now
        self.poll(now)
        self._decoder.receive_data(data)
        out = bytearray()
        while True:
            try:
                event = self._decoder.next_event()
            except ProtocolError:
                out += self._reply(error=CommandError.BAD_PACKET)
                continue
            if event is NEED_DATA:
                return bytes(out)
            out += self._on_command(event, now)

    # -- commands -------------------------------------------------------------------------------
    def _on_command(self, command: Command, now: float) -> bytes:
        if command.mode is Mode.BASIC and self.mode is Mode.SAFE:
            return b""
        # The pump strips spaces and control characters and upper-cases its input (§2.2).
        text = "".join(c for c in command.data.decode("ascii", "replace") if c.isprintable() and c != " ")
        match = _COMMAND.fullmatch(text.upper())
        if match is None:  # pragma: no cover - the pattern's last group matches anything
            return self._reply(error=CommandError.NOT_RECOGNISED)
        system, address, name, argument = match[1], match[2], match[3] or "", match[4]
        if address is not None and int(address) != self.address:
            return b""  # for another pump on the network: stay silent
        if self._alarm is not None:
            alarm, self._alarm = self._alarm, None
            self._restart_timer(now)
            return self._emit(encode_reply(self.address, alarm, mode=self.mode))
        handler = None if system else self._handlers.get(name)
        result: _Result = (CommandError.NOT_RECOGNISED, "") if handler is None else handler(argument)
        self._restart_timer(now)
        return self._reply(error=result[0], data=result[1])

    def _restart_timer(self, now: float) -> None:
        self._timer_since = now if self.mode is Mode.SAFE else None

    def _reply(self, *, error: CommandError | None = None, data: str = "") -> bytes:
        return self._emit(encode_reply(self.address, self.prompt, error=error, data=data, mode=self.mode))

    def _emit(self, reply: bytes) -> bytes:
        if not self.faults:
            return reply
        fault = self.faults.popleft()
        if fault is ReplyFault.NO_ANSWER:
            return b""
        if fault is ReplyFault.GARBAGE_BEFORE:
            return _NOISE + reply
        if fault is ReplyFault.BROKEN_FRAME_BEFORE:
            return _BROKEN + reply
        if self.mode is Mode.BASIC:
            return reply[:1] + b"\x00" + reply[2:]  # no CRC or length to spoil: spoil the text
        if fault is ReplyFault.CORRUPT_CRC:
            return reply[:-2] + bytes((reply[-2] ^ 0xFF,)) + reply[-1:]
        return reply[:1] + bytes((reply[1] - 1,)) + reply[2:]  # BAD_LENGTH

    @property
    def _running(self) -> bool:
        return self.channel.state is ChannelState.INFUSING

    def _stop_program(self) -> None:
        while self.channel.state in (ChannelState.INFUSING, ChannelState.PAUSED):
            self.channel.stop()

    def _reprogram(self) -> None:
        # The physics channel counts its VTBI from when it is programmed; give it what is left of
        # VOL after what DIS already shows, so that "VOL reached" means "DIS infused == VOL".
        volume = self.volume_ml
        if volume > 0:
            remaining = volume - self.dispensed_ml
            if remaining <= 0:
                return  # nothing left: RUN leaves the program stopped
        else:
            remaining = Decimal(0)  # VOL 0: pump continuously (§2.5)
        self.channel.program(self.rate_ml_h, remaining)

    def _status(self, argument: str) -> _Result:
        return (CommandError.NOT_RECOGNISED, "") if argument else _OK

    def _ver(self, argument: str) -> _Result:
        return (CommandError.NOT_RECOGNISED, "") if argument else (None, self.firmware)

    def _dia(self, argument: str) -> _Result:
        if not argument:
            return None, format_reading(self.diameter_mm)
        value = _setpoint(argument)
        if isinstance(value, CommandError):
            return value, ""
        if self._running:
            return CommandError.NOT_APPLICABLE, ""
        if not DIAMETER_RANGE_MM[0] <= value <= DIAMETER_RANGE_MM[1]:
            return CommandError.OUT_OF_RANGE, ""
        self.diameter_mm = value
        return _OK

    def _rat(self, argument: str) -> _Result:
        if not argument:
            return None, format_reading(self._rate) + self._rate_units
        match = _RATE_ARGUMENT.fullmatch(argument)
        if match is None:
            return CommandError.NOT_RECOGNISED, ""
        value = _setpoint(match[1])
        if isinstance(value, CommandError):
            return value, ""
        units = match[2] or self._rate_units
        if self._running and units != self._rate_units:
            return CommandError.NOT_APPLICABLE, ""  # NE-500 §5.4.1
        rate_ml_h = Quantity(value, RATE_UNITS[units]).to("mL/h").value
        if not 0 < rate_ml_h <= self.max_rate_ml_h:
            return CommandError.OUT_OF_RANGE, ""
        self._rate, self._rate_units = value, units
        self._reprogram()  # while pumping the new rate takes effect at once (NE-500 §5.4.1)
        return _OK

    def _vol(self, argument: str) -> _Result:
        if not argument:
            return None, format_reading(self._volume) + self._volume_units
        if self._running:
            return CommandError.NOT_APPLICABLE, ""
        if argument in VOLUME_UNITS:
            self._volume_units = argument  # units alone, as NE-B says to send them
            self._reprogram()
            return _OK
        value = _setpoint(argument)
        if isinstance(value, CommandError):
            return value, ""
        self._volume = value
        self._reprogram()
        return _OK

    def _dir(self, argument: str) -> _Result:
        if not argument:
            return None, self._direction
        if argument == "REV":
            new = "WDR" if self._direction == "INF" else "INF"
        elif argument in ("INF", "WDR"):
            new = argument
        else:
            return CommandError.NOT_RECOGNISED, ""  # STK (sticky direction) is not emulated
        if self._running and new != self._direction and self._volume != 0:
            return CommandError.NOT_APPLICABLE, ""  # NE-500 §5.4.1
        self._direction = new
        return _OK

    def _run(self, argument: str) -> _Result:
        if argument:
            return CommandError.NOT_APPLICABLE, ""  # phases are not emulated
        if self._running:
            return _OK
        if self._direction != "INF" or self._rate == 0:
            return CommandError.NOT_APPLICABLE, ""  # withdrawal is not emulated; nothing to run
        if self.volume_ml > 0 and self.dispensed_ml >= self.volume_ml:
            return _OK  # the volume target is already reached: the program stays stopped
        if self.channel.state is not ChannelState.PAUSED:
            self._reprogram()
        self.channel.start()
        return _OK

    def _stp(self, argument: str) -> _Result:
        if argument:
            return CommandError.NOT_RECOGNISED, ""
        self.channel.stop()
        return _OK

    def _dis(self, argument: str) -> _Result:
        if argument:
            return CommandError.NOT_RECOGNISED, ""
        unit = VOLUME_UNITS[self._volume_units]
        infused = Quantity(self.dispensed_ml, "mL").to(unit).value
        try:
            text = f"I{format_reading(infused)}W{format_reading(Decimal(0))}{self._volume_units}"
        except QuantityError:
            return CommandError.OUT_OF_RANGE, ""  # 10000 uL or more cannot be shown in UL
        return None, text

    def _cld(self, argument: str) -> _Result:
        if argument not in ("INF", "WDR"):
            return CommandError.NOT_RECOGNISED, ""
        if self._running:
            return CommandError.NOT_APPLICABLE, ""
        if argument == "INF":
            self._dispensed_offset_ml = self.channel.infused_ml
            self._reprogram()
        return _OK

    def _saf(self, argument: str) -> _Result:
        if not argument:
            return None, str(self._safe_timeout_s)
        if not argument.isdigit():
            return CommandError.NOT_RECOGNISED, ""
        seconds = int(argument)
        if seconds > MAX_SAFE_TIMEOUT_S:
            return CommandError.OUT_OF_RANGE, ""
        self._safe_timeout_s = seconds
        return _OK


def _setpoint(text: str) -> Decimal | CommandError:
    """A number the host sent: ``?`` if it is not a number, ``?OOR`` if it breaks the format."""
    try:
        value = parse_number(text)
    except ValueError:
        return CommandError.NOT_RECOGNISED
    try:
        format_number(value)
    except QuantityError:
        return CommandError.OUT_OF_RANGE
    return value
