"""An emulated syringe pump speaking the Alaris GH / CC / Asena-style protocol: "Alaris-like per
infupy/OpenICE", a sans-I/O device model for the bench rig. It is not an Alaris pump and not a
model of one: it answers what the two public drivers (INFUPY, MDPNP/OpenICE) send, in the shapes
they read, and where they are silent it does what ``docs/alaris.md`` ("Our choices") says.

``receive(data, now)`` takes the bytes a host sent and the monotonic time they arrived and returns
the bytes the pump answers; ``poll(now)`` lets time pass without traffic. No port, no clock, no
asyncio: :class:`~pumpgw.rig.pty_link.PtyDeviceServer` serves it over a real PTY, tests can also
call it directly. It speaks through :mod:`pumpgw.drivers.alaris_codec`, the framing the driver uses,
pinned to the golden vectors of ``shared/reference/pump-protocols.md`` §3.

Behaviour (reference §3; MDPNP = ``Asena.java`` and MDPNP's simulators):

* One channel. Every reply repeats the command's name; set commands answer with the resulting
  setting (``INF_RATE^5.00^ml/h``), commands without a value echo themselves (``INF_START``).
* Remote control: ``REMOTE_CTRL^ENABLED^<code>`` with ``code`` = CRC of the serial number takes it
  (reply ``REMOTE_CTRL^ENABLED^****^PERMIT^0^ms``, as an Alaris GH sent it); a wrong code is
  refused (``BAD_CODE``) and leaves the pump under local control. ``REMOTE_CTRL`` alone reports
  the state [our choice]. ``REMOTE_CFG`` is taken and given back the same way and gates nothing:
  no source says what it allows.
* Writes need remote control: ``INF_RATE`` and ``INF_VTBI`` with a value, ``INF_BOLUS``,
  ``INF_START``. ``INF_STOP`` is **always** accepted [our choice: a pump must never refuse a stop].
* Remote control lapses when no valid frame arrives for ``quiet_time_s`` (10 s, MDPNP
  ``getMaximumQuietTime``); the pump then reverts to local control and **keeps infusing** [our
  choice: losing the host must not stop a running infusion, DESIGN.md "fail safe"]; ``REMOTE_CTRL``
  reports ``DISABLED`` and :attr:`EmulatedAlarisPump.lapses` counts it.
* Rate: 0.10-1200 mL/h (MDPNP ``actualSetSpeed``), at most 2 decimals; changeable while infusing
  (MDPNP titrates a running pump). VTBI: more than 0 up to ``max_vtbi_ml``, at most 3 decimals,
  end action ``STOP`` only (the only one in the sources); refused while infusing [our choice, so
  that "VTBI left" stays unambiguous]. ``INF_VTBI`` reports the VTBI **left**.
* VTBI reached: the pump stops (no KVO), mode ``COMPLETE``, alarm ``VTBI_COMPLETE``; ``INF_START``
  is refused until a new VTBI is set or the VTBI is deactivated.
* Device alarms (:meth:`EmulatedAlarisPump.raise_alarm`): occlusion, air-in-line, syringe-empty and
  door-open stop the infusion (mode ``ALARM``; after :meth:`~EmulatedAlarisPump.clear_alarm` the
  pump is on hold and needs ``INF_START``); near-empty and battery-low only show.
* Unknown commands and malformed values are answered with our ``ERROR`` reply; a frame the pump
  cannot read (bad CRC, bad characters) with ``ERROR^BAD_FRAME^^<reason>``.

Faults for tests: append :class:`ReplyFault` values to :attr:`EmulatedAlarisPump.faults`; each one
spoils the next reply. :meth:`EmulatedAlarisPump.fail_reply_to` spoils the next reply to one
command only (the command is still executed), e.g. to lose the reply to ``INF_START``. (The rig's
generic wire faults live in :mod:`pumpgw.rig.faults`.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Final

from pumpgw.drivers.alaris_codec import (
    DISABLED,
    ENABLED,
    NEED_DATA,
    RATE_UNIT,
    REMOTE_GRANTED,
    VOLUME_UNIT,
    Alarm,
    Command,
    DeviceDecoder,
    ErrorCode,
    InfStatus,
    InfusionMode,
    encode_error,
    encode_frame,
    format_rate,
    format_volume,
    parse_decimal,
    rate_fields,
    security_code,
    vtbi_command,
    vtbi_reply,
)
from pumpgw.drivers.base import ChannelState
from pumpgw.gateway.errors import ProtocolError, QuantityError
from pumpgw.gateway.quantity import Quantity
from pumpgw.rig.physics import InfusionChannel

#: MDPNP ``Asena.getMaximumQuietTime``: 10 000 ms.
DEFAULT_QUIET_TIME_S: Final = 10.0
#: MDPNP ``actualSetSpeed`` refuses rates outside 0.1-1200 mL/h.
RATE_RANGE_ML_H: Final = (Decimal("0.1"), Decimal(1200))
_UL: Final = Decimal("0.001")
#: MDPNP's simulators answer ``COMMS_RESPONSE_MAX^4000^ms``.
RESPONSE_MAX_MS: Final = 4000

_NOISE: Final = b"\x00\xff~noise~\r"  # no '!' in it: a host must skip it silently
_ABORTED: Final = b"!INF^12345678^-^INFU\x1b"  # a frame the pump abandons with ESC (INFUPY)


class ReplyFault(StrEnum):
    """A one-shot fault applied to the next reply the emulated pump sends."""

    NO_ANSWER = "no-answer"  # the reply is not sent at all
    CORRUPT_CRC = "corrupt-crc"  # one CRC digit is changed (still hex, no longer matching)
    GARBAGE_BEFORE = "garbage-before"  # line noise without a '!' precedes a good reply
    ABORTED_BEFORE = "aborted-before"  # a frame cut off by ESC precedes a good reply


@dataclass(frozen=True, slots=True)
class _Refused:
    code: ErrorCode
    text: str


_Result = tuple[str, ...] | _Refused
_Handler = Callable[[tuple[str, ...]], _Result]

#: Commands that need remote control when they carry values (INF_START always does).
_WRITES_WITH_VALUES: Final = frozenset({"INF_RATE", "INF_VTBI", "INF_BOLUS"})


class EmulatedAlarisPump:
    """One Alaris-like syringe pump (one channel) as a sans-I/O state machine; see the module doc.

    ``serial`` is what ``INST_SERIALNO`` reports and so what the remote-control code is computed
    from; ``model`` and ``protocol_revision`` make up the ``COMMS_PROTOCOL`` reply
    (``"<model> Rev <revision>"``, the shape MDPNP's simulators send: ``Asena Rev 2.1.5``).
    ``remote_code`` is the code the pump accepts for remote control; None (the default) is the
    CRC of ``serial``, as the sources say; anything else emulates a pump whose code the host cannot
    compute (a host must then be refused). Raises ValueError for a serial or model a frame cannot
    carry, or a quiet time that is not positive.
    """

    def __init__(
        self,
        *,
        serial: str = "12345678",
        model: str = "GH-like",
        protocol_revision: str = "0.1",
        quiet_time_s: float = DEFAULT_QUIET_TIME_S,
        max_vtbi_ml: Decimal = Decimal(1000),
        remote_code: str | None = None,
    ) -> None:
        encode_frame(("INST_SERIALNO", serial))  # raises ValueError for what a frame cannot carry
        encode_frame(("COMMS_PROTOCOL", f"{model} Rev {protocol_revision}"))
        if not serial:
            raise ValueError("the serial number must not be empty")
        if not quiet_time_s > 0:
            raise ValueError(f"quiet time {quiet_time_s} s must be positive")
        self.serial = serial
        self.model = model
        self.protocol_revision = protocol_revision
        self.quiet_time_s = quiet_time_s
        self._remote_code = remote_code
        self.max_vtbi_ml = max_vtbi_ml
        self.pressure_mmhg = Decimal("0.00")
        # The only end action in the sources is STOP: no KVO.
        self.channel = InfusionChannel(number=1, kvo_at_end=False)
        self.faults: deque[ReplyFault] = deque()
        self._command_faults: dict[str, deque[ReplyFault]] = {}
        #: Every command received (its fields), oldest first, for tests; bounded.
        self.received: deque[tuple[str, ...]] = deque(maxlen=1000)
        self.lapses = 0  # times remote control lapsed for lack of traffic
        self.bolus_enabled = False
        self._rate = Decimal(0)  # programmed rate, mL/h
        self._vtbi_ml: Decimal | None = None  # programmed VTBI; None: deactivated
        self._alarms: list[Alarm] = []  # device alarms, in the order raised
        self._remote = False
        self._remote_cfg = False
        self._last_valid_at: float | None = None
        self._log_entry = 0
        self._decoder = DeviceDecoder()
        self._handlers: dict[str, _Handler] = {
            "INST_SERIALNO": self._serial_number,
            "COMMS_PROTOCOL": self._comms_protocol,
            "COMMS_RESPONSE_MAX": self._response_max,
            "REMOTE_CTRL": self._remote_ctrl,
            "REMOTE_CFG": self._remote_cfg_command,
            "INF": self._inf,
            "INF_RATE": self._inf_rate,
            "INF_VI": self._inf_vi,
            "INF_VTBI": self._inf_vtbi,
            "INF_BOLUS": self._inf_bolus,
            "INF_START": self._inf_start,
            "INF_STOP": self._inf_stop,
            "REMQUERY": self._remquery,
            "ALARM": self._alarm_query,
        }

    # -- what a test may look at ----------------------------------------------------------------
    @property
    def code(self) -> str:
        """The remote-control code this pump accepts (normally the CRC of its serial number)."""
        return security_code(self.serial) if self._remote_code is None else self._remote_code

    @property
    def remote_control(self) -> bool:
        return self._remote

    @property
    def rate_ml_h(self) -> Decimal:
        """The programmed rate."""
        return self._rate

    @property
    def vtbi_ml(self) -> Decimal | None:
        """The programmed VTBI; None when deactivated."""
        return self._vtbi_ml

    @property
    def vtbi_left_ml(self) -> Decimal | None:
        """The VTBI still to give, as ``INF_VTBI`` reports it (to 0.001 mL, the resolution of the
        volume infused); None when deactivated."""
        if self._vtbi_ml is None:
            return None
        return self.channel.vtbi_remaining_ml.quantize(_UL, rounding=ROUND_HALF_EVEN)

    @property
    def alarms(self) -> tuple[Alarm, ...]:
        """Active alarms: device alarms in the order raised, then VTBI complete."""
        done = (Alarm.VTBI_COMPLETE,) if "vtbi-complete" in self.channel.alarms else ()
        return (*self._alarms, *done)

    @property
    def mode(self) -> InfusionMode:
        if any(alarm.stops_infusion for alarm in self._alarms):
            return InfusionMode.ALARM
        return {
            ChannelState.INFUSING: InfusionMode.INFUSING,
            ChannelState.PAUSED: InfusionMode.PAUSED,
            ChannelState.KVO: InfusionMode.KVO,
            ChannelState.COMPLETE: InfusionMode.COMPLETE,
        }.get(self.channel.state, InfusionMode.STOPPED)

    def fail_reply_to(self, command: str, fault: ReplyFault) -> None:
        """Spoil the next reply to ``command`` (a name such as ``"INF_START"``) with ``fault``; the
        command itself is executed as usual."""
        self._command_faults.setdefault(command, deque()).append(fault)

    # -- the front panel and the outside world --------------------------------------------------
    def keypad_program_and_run(self, rate_ml_h: Decimal, vtbi_ml: Decimal | None, now: float) -> None:
        """What a person does on the front panel: set rate (mL/h) and VTBI (mL; None: no VTBI,
        infuse until stopped), then start.

        Goes through the same checks as the serial commands (the keypad cannot do what the
        protocol refuses) but needs no remote control and is no traffic: it neither takes remote
        control nor restarts the quiet-time timer. Raises ValueError naming the refused value.
        """
        self.poll(now)
        for fields in (rate_fields(rate_ml_h), vtbi_command(vtbi_ml), ("INF_START",)):
            result = self._handlers[fields[0]](fields[1:])
            if isinstance(result, _Refused):
                # A refused value, not a wrong type: ValueError as the docstring promises.
                raise ValueError(  # noqa: TRY004
                    f"keypad {'^'.join(fields)}: {result.code.meaning}: {result.text}"
                )

    def raise_alarm(self, name: str, now: float | None = None) -> None:
        """A device alarm starts (at monotonic ``now``; None: the caller has just polled).

        ``name`` is one of this pump's labels (``"occlusion"``, ``"air-in-line"``,
        ``"syringe-empty"``, ``"near-empty"``, ``"battery-low"``, ``"door-open"``) or a name of the
        rig's common vocabulary it reports as one of them (``"occlusion-downstream"`` and
        ``"occlusion-upstream"`` as occlusion, ``"container-empty"`` as syringe-empty). Alarms that
        stop an infusion stop it. Raises ValueError for an alarm this pump cannot report (VTBI
        complete it raises itself).
        """
        alarm = _device_alarm(name)
        if now is not None:
            self.poll(now)
        if alarm not in self._alarms:
            self._alarms.append(alarm)
            self._log_entry += 1
        if alarm.stops_infusion and self.channel.state in (ChannelState.INFUSING, ChannelState.KVO):
            self.channel.stop()

    def clear_alarm(self, name: str, now: float | None = None) -> None:
        """The cause of a device alarm is dealt with. A stopped infusion stays on hold (a pump
        never restarts by itself). Raises ValueError as :meth:`raise_alarm`."""
        alarm = _device_alarm(name)
        if now is not None:
            self.poll(now)
        if alarm in self._alarms:
            self._alarms.remove(alarm)
            self._log_entry += 1

    def clear_alarms(self, now: float | None = None) -> None:
        """Every device alarm is dealt with (VTBI complete stays until a new VTBI)."""
        if now is not None:
            self.poll(now)
        if self._alarms:
            self._alarms.clear()
            self._log_entry += 1

    # -- time and bytes -------------------------------------------------------------------------
    def poll(self, now: float) -> None:
        """Let time pass up to monotonic ``now``: infuse, and let remote control lapse after the
        quiet time. ``receive`` calls it first; a test calls it to let time pass without traffic."""
        since = self._last_valid_at
        if (self._remote or self._remote_cfg) and since is not None and now - since >= self.quiet_time_s:
            self._remote = self._remote_cfg = False
            self.lapses += 1
        self.channel.advance(now)

    def receive(self, data: bytes, now: float) -> bytes:
        """Take bytes from the host at monotonic ``now``; return the reply bytes (maybe none)."""
        self.poll(now)
        self._decoder.receive_data(data)
        out = bytearray()
        while True:
            try:
                event = self._decoder.next_event()
            except ProtocolError as exc:
                out += self._emit(encode_error(ErrorCode.BAD_FRAME, "", exc.reason))
                continue
            if event is NEED_DATA:
                return bytes(out)
            self._last_valid_at = now
            reply = self._on_command(event)
            targeted = self._command_faults.get(event.name)
            out += _spoil(reply, targeted.popleft()) if targeted else self._emit(reply)

    # -- commands -------------------------------------------------------------------------------
    def _on_command(self, command: Command) -> bytes:
        self.received.append(command.fields)
        name, args = command.name, command.args
        handler = self._handlers.get(name)
        if handler is None:
            return encode_error(ErrorCode.UNKNOWN_COMMAND, name, f"{name} is not a command of this pump")
        needs_remote = name == "INF_START" or (name in _WRITES_WITH_VALUES and bool(args))
        if needs_remote and not self._remote:
            return encode_error(ErrorCode.NOT_REMOTE, name, "take remote control first")
        result = handler(args)
        if isinstance(result, _Refused):
            return encode_error(result.code, name, result.text)
        return encode_frame(result)

    def _emit(self, reply: bytes) -> bytes:
        return _spoil(reply, self.faults.popleft()) if self.faults else reply

    def _serial_number(self, args: tuple[str, ...]) -> _Result:
        return _no_args(args) or ("INST_SERIALNO", self.serial)

    def _comms_protocol(self, args: tuple[str, ...]) -> _Result:
        return _no_args(args) or ("COMMS_PROTOCOL", f"{self.model} Rev {self.protocol_revision}")

    def _response_max(self, args: tuple[str, ...]) -> _Result:
        return _no_args(args) or ("COMMS_RESPONSE_MAX", str(RESPONSE_MAX_MS), "ms")

    def _remote_ctrl(self, args: tuple[str, ...]) -> _Result:
        result = self._remote_switch("REMOTE_CTRL", args, self._remote)
        if not isinstance(result, _Refused) and args:
            self._remote = args[0] == ENABLED
        return result

    def _remote_cfg_command(self, args: tuple[str, ...]) -> _Result:
        result = self._remote_switch("REMOTE_CFG", args, self._remote_cfg)
        if not isinstance(result, _Refused) and args:
            self._remote_cfg = args[0] == ENABLED
        return result

    def _remote_switch(self, name: str, args: tuple[str, ...], held: bool) -> _Result:
        if not args:  # a query [our choice]
            return (name, *REMOTE_GRANTED) if held else (name, DISABLED)
        if args == (DISABLED,):
            return (name, DISABLED)
        if len(args) == 2 and args[0] == ENABLED:
            if args[1] != self.code:
                return _Refused(
                    ErrorCode.BAD_CODE, f"code {args[1]} does not match this pump's serial number"
                )
            return (name, *REMOTE_GRANTED)
        return _Refused(ErrorCode.BAD_VALUE, f"expected {ENABLED} and the code, or {DISABLED}")

    def _inf(self, args: tuple[str, ...]) -> _Result:
        if refused := _no_args(args):
            return refused
        return InfStatus(
            serial=self.serial,
            alarms=tuple(alarm.value for alarm in self.alarms),
            mode=self.mode.value,
            rate=Quantity(self.channel.current_rate_ml_h, "mL/h"),
            volume_infused=Quantity(self.channel.infused_ml, "mL"),
            pressure=Quantity(self.pressure_mmhg, "mm[Hg]"),
            time_remaining=self._time_remaining(),
            log_type="EVENT",
            log_entry=str(self._log_entry),
        ).fields()

    def _time_remaining(self) -> str:
        # HH:MM:SS, and "24+" from a day on (MDPNP's AlarisToNeurowave); empty without a VTBI.
        left = self.vtbi_left_ml
        if left is None or self.channel.state is not ChannelState.INFUSING or self._rate <= 0:
            return ""
        seconds = int(left * 3600 / self._rate)
        if seconds >= 24 * 3600:
            return "24+"
        return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    def _inf_rate(self, args: tuple[str, ...]) -> _Result:
        if not args:
            return rate_fields(self._rate)
        if len(args) != 2 or args[1] != RATE_UNIT:
            return _Refused(ErrorCode.BAD_VALUE, f"expected a rate in {RATE_UNIT}")
        rate = _setpoint(args[0], format_rate)
        if isinstance(rate, _Refused):
            return rate
        low, high = RATE_RANGE_ML_H
        if not low <= rate <= high:
            return _Refused(ErrorCode.BAD_VALUE, f"rate {args[0]} ml/h is outside {low}-{high} ml/h")
        self._rate = rate
        if self.channel.state is not ChannelState.COMPLETE:
            # Takes effect at once, also while infusing; the VTBI left is kept.
            left = self.vtbi_left_ml
            self.channel.program(rate, Decimal(0) if left is None else left)
        return rate_fields(rate)

    def _inf_vi(self, args: tuple[str, ...]) -> _Result:
        return _no_args(args) or ("INF_VI", format_volume(self.channel.infused_ml), VOLUME_UNIT)

    def _inf_vtbi(self, args: tuple[str, ...]) -> _Result:
        if not args:
            return vtbi_reply(self.vtbi_left_ml)
        if self.channel.state in (ChannelState.INFUSING, ChannelState.KVO):
            return _Refused(ErrorCode.BAD_STATE, "stop the infusion before changing the VTBI")
        if args == ("DEACT",):
            self._vtbi_ml = None
            self.channel.program(self._rate, Decimal(0))
            return vtbi_reply(None)
        if len(args) != 4 or args[0] != "ACTIV" or args[2] != VOLUME_UNIT:
            return _Refused(
                ErrorCode.BAD_VALUE, f"expected ACTIV, a volume in {VOLUME_UNIT} and STOP, or DEACT"
            )
        if args[3] != "STOP":
            return _Refused(ErrorCode.BAD_VALUE, f"end action {args[3]!r}: this pump knows STOP only")
        vtbi = _setpoint(args[1], format_volume)
        if isinstance(vtbi, _Refused):
            return vtbi
        if not 0 < vtbi <= self.max_vtbi_ml:
            return _Refused(ErrorCode.BAD_VALUE, f"VTBI {args[1]} ml is outside 0-{self.max_vtbi_ml} ml")
        self._vtbi_ml = vtbi
        self.channel.program(self._rate, vtbi)
        return vtbi_reply(vtbi)

    def _inf_bolus(self, args: tuple[str, ...]) -> _Result:
        if args not in ((ENABLED,), (DISABLED,)):
            return _Refused(ErrorCode.BAD_VALUE, f"expected {ENABLED} or {DISABLED}")
        self.bolus_enabled = args[0] == ENABLED  # remembered; bolus delivery is not emulated
        return ("INF_BOLUS", args[0])

    def _inf_start(self, args: tuple[str, ...]) -> _Result:
        if refused := _no_args(args):
            return refused
        stopping = [alarm for alarm in self._alarms if alarm.stops_infusion]
        if stopping:
            return _Refused(ErrorCode.BAD_STATE, f"alarm {stopping[0].label} is active")
        state = self.channel.state
        if state is ChannelState.INFUSING:
            return ("INF_START",)
        if state is ChannelState.COMPLETE:
            return _Refused(ErrorCode.BAD_STATE, "the VTBI has been given: set a new VTBI or deactivate it")
        if self._rate <= 0:
            return _Refused(ErrorCode.BAD_STATE, "no rate is set")
        self.channel.start()
        self._log_entry += 1
        return ("INF_START",)

    def _inf_stop(self, args: tuple[str, ...]) -> _Result:
        if refused := _no_args(args):
            return refused
        if self.channel.state in (ChannelState.INFUSING, ChannelState.KVO):
            self.channel.stop()  # infusing: on hold (PAUSED), resumed by INF_START
            self._log_entry += 1
        return ("INF_STOP",)

    def _remquery(self, args: tuple[str, ...]) -> _Result:
        # The reply MDPNP's AlarisToNeurowave sends (its CRC E5C9 checks out); the meaning of
        # REMQUERY is unknown, so it changes nothing here.
        if args != ("DEACT",):
            return _Refused(ErrorCode.BAD_VALUE, "expected DEACT")
        return ("REMQUERY", "DEACT", "", "", "", "")

    def _alarm_query(self, args: tuple[str, ...]) -> _Result:
        # No alarm: "ALARM^AL_NOALM^ ^ " (MDPNP's simulators; CRC C73B checks out). One alarm per
        # reply, as MDPNP's bridge sends it; the name is ours (see Alarm).
        if refused := _no_args(args):
            return refused
        alarms = self.alarms
        return ("ALARM", alarms[0].value if alarms else "AL_NOALM", " ", " ")


#: Names of the rig's common alarm vocabulary (rig/physics.py, the Modbus map) that this pump
#: reports as one of its own alarms.
_COMMON_NAMES: Final = {
    "occlusion-downstream": Alarm.OCCLUSION,
    "occlusion-upstream": Alarm.OCCLUSION,
    "container-empty": Alarm.SYRINGE_EMPTY,
}


def _device_alarm(name: str) -> Alarm:
    if name in _COMMON_NAMES:
        return _COMMON_NAMES[name]
    alarm = Alarm.from_label(name)  # ValueError for an unknown name
    if alarm is Alarm.VTBI_COMPLETE:
        raise ValueError("vtbi-complete is raised by the pump itself when the VTBI has been given")
    return alarm


def _spoil(reply: bytes, fault: ReplyFault) -> bytes:
    if fault is ReplyFault.NO_ANSWER:
        return b""
    if fault is ReplyFault.GARBAGE_BEFORE:
        return _NOISE + reply
    if fault is ReplyFault.ABORTED_BEFORE:
        return _ABORTED + reply
    # CORRUPT_CRC: change the last CRC digit to another hex digit.
    digit = b"0" if reply[-2:-1] != b"0" else b"1"
    return reply[:-2] + digit + reply[-1:]


def _no_args(args: Sequence[str]) -> _Refused | None:
    return _Refused(ErrorCode.BAD_VALUE, "this command takes no values") if args else None


def _setpoint(text: str, fmt: Callable[[Decimal], str]) -> Decimal | _Refused:
    """A number the host sent: refused if it is not a plain decimal or needs more decimals than
    the pump holds (``fmt`` raises for that; the pump never rounds)."""
    try:
        value = parse_decimal(text, what="setpoint")
    except ProtocolError as exc:
        return _Refused(ErrorCode.BAD_VALUE, exc.reason)
    try:
        fmt(value)
    except QuantityError as exc:
        return _Refused(ErrorCode.BAD_VALUE, f"{text} {exc.reason}")
    return value
