"""Driver for New Era NE-500/1000 syringe pumps on a serial port (RS-232), in safe mode.

The wire format lives in :mod:`pumpgw.drivers.newera_codec`; this module is the thin asyncio layer
around it: one serial port through pyserial-asyncio-fast, one request at a time, a reply timeout,
and the mapping of what goes wrong to the gateway's errors:

* no reply within ``timeout_s`` → :class:`~pumpgw.gateway.errors.NoResponse`;
* a reply with a command error (``?``, ``?NA``, ``?OOR``, ``?COM``, ``?IGN``) →
  :class:`~pumpgw.gateway.errors.DeviceError` with that code and its meaning in words;
* a frame with a bad CRC or length, or text that is not a reply →
  :class:`~pumpgw.gateway.errors.ProtocolError`.

Alarms. A New Era pump reports an alarm (``A?R`` power reset, ``A?S`` motor stalled, ``A?T``
comms timeout, ...) *instead of* acting on the next valid command, and that report is what
acknowledges the alarm (reference §2.3, ``shared/reference/pump-protocols.md``). So the driver cannot
read status without acknowledging: it keeps every alarm it was told about, sends the command again
(the pump did not act on it), and reports the alarms once, in the next :meth:`NewEraDriver.read_status`
(state ``ALARM``, alarm labels such as ``"comms-timeout"``). The gateway must record them then: the
pump will not report them a second time.

Keep-alive. Safe mode stops the pump with alarm ``A?T`` when no valid packet arrives for
``safe_mode_timeout_s`` seconds (reference §2.3); that is its point, a pump left alone by a crashed
host stops. Whoever owns this driver must therefore exchange a packet at least every
``safe_mode_timeout_s / 2`` seconds (NESP's heartbeat interval, §2.3); any call does, the cheapest
is :meth:`NewEraDriver.read_status`. The gateway's poller reads every pump at least once a second,
so this driver sends no keep-alive of its own (a later issue may add one). :meth:`NewEraDriver.close`
does not switch safe mode off: a pump whose gateway stays away longer than the timeout stops.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from pumpgw.drivers.base import (
    READBACK_MISMATCH,
    Capabilities,
    ChannelProgram,
    ChannelState,
    ChannelStatus,
    PumpIdentity,
)
from pumpgw.drivers.newera_codec import (
    NEED_DATA,
    RATE_UNITS,
    VOLUME_UNITS,
    Alarm,
    HostDecoder,
    Mode,
    Prompt,
    Reply,
    encode_command,
    format_number,
    parse_amount,
    parse_dispensed,
    parse_firmware,
)
from pumpgw.drivers.serial_link import SerialLink, open_link
from pumpgw.gateway.errors import (
    ConfigError,
    DeviceError,
    DriverError,
    NoResponse,
    ProtocolError,
)
from pumpgw.gateway.quantity import Quantity

_LOG = logging.getLogger(__name__)

NEWERA_CAPABILITIES: Final = Capabilities(
    remote_program=True,
    remote_start=True,
    remote_stop=True,
    reports_drug=False,
    reports_library_version=False,
    reports_battery=False,
)

#: After an alarm report the command is sent again. Twice: an alarm packet the pump sent by itself
#: (Auto-Alarm, §2.3) can arrive just before the alarm reply to the command.
_ALARM_RESENDS: Final = 2

_STATE_OF_PROMPT: Final = {
    Prompt.INFUSING: ChannelState.INFUSING,
    # Withdrawing draws fluid back into the syringe. The common states have no such state and the
    # gateway never asks for it (it always sends DIR INF), so it shows as unknown.
    Prompt.WITHDRAWING: ChannelState.UNKNOWN,
    Prompt.STOPPED: ChannelState.IDLE,
    Prompt.PAUSED: ChannelState.PAUSED,
    Prompt.PAUSE_PHASE: ChannelState.PAUSED,
    Prompt.USER_WAIT: ChannelState.PAUSED,
    Prompt.PURGING: ChannelState.PRIMING,
}


_Link = SerialLink[Reply]


class NewEraDriver:
    """One New Era NE-500/1000 pump on one serial port (one channel). See the module docstring.

    ``port`` is a device path (``/dev/ttyUSB0``, ``/dev/pts/5``) or a pyserial URL; ``address`` the
    pump's network address (0-99, §2.1); ``timeout_s`` how long to wait for each reply;
    ``safe_mode_timeout_s`` the ``SAF`` value set on connect (1-255 s; 0 switches the pump to basic
    mode, without CRC or timeout). Raises ConfigError for a value outside those ranges.
    """

    def __init__(
        self,
        pump_id: str,
        port: str,
        *,
        baudrate: int = 19200,
        address: int = 0,
        timeout_s: float = 1.0,
        safe_mode_timeout_s: int = 10,
    ) -> None:
        source = f"NewEraDriver({pump_id!r})"
        if not 0 <= address <= 99:
            raise ConfigError(source, "address", address, "a New Era network address, 0-99 (§2.1)")
        if not 0 <= safe_mode_timeout_s <= 255:
            raise ConfigError(source, "safe_mode_timeout_s", safe_mode_timeout_s, "0-255 s (§2.3)")
        if not timeout_s > 0:
            raise ConfigError(source, "timeout_s", timeout_s, "a positive number of seconds")
        self._pump_id = pump_id
        self._port = port
        self._baudrate = baudrate
        self._address = address
        self._timeout_s = timeout_s
        self._safe_mode_timeout_s = safe_mode_timeout_s
        self._lock = asyncio.Lock()  # one request at a time: the pump answers one at a time (§2.2)
        self._link: _Link | None = None
        self._mode: Mode | None = None
        self._alarms: list[Alarm] = []

    @property
    def pump_id(self) -> str:
        return self._pump_id

    @property
    def capabilities(self) -> Capabilities:
        return NEWERA_CAPABILITIES

    @property
    def port(self) -> str:
        return self._port

    @property
    def mode(self) -> Mode | None:
        """The framing in use once connected; None before ``connect``."""
        return self._mode

    # -- link -------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the port and set safe mode (``SAF<n>``). No-op when connected; reopens a lost port.

        Raises EnvironmentProblem when the port exists but may not be opened (permissions),
        DriverError when it cannot be opened at all, and NoResponse, ProtocolError or DeviceError
        when the pump does not accept ``SAF``; the port is closed again in every failure.
        """
        async with self._lock:
            if self._link is not None and not self._link.lost:
                return
            self._link = self._mode = None  # a port that went away: open it afresh
            # The pump's mode is unknown until it answers: it keeps the mode it had before power-off
            # (§2.3). Read either framing until then.
            decoder = HostDecoder(mode=None, peer=self._pump_id)
            link = _Link(decoder, NEED_DATA)
            await open_link(self._pump_id, self._port, self._baudrate, link)
            self._link = link
            target = Mode.SAFE if self._safe_mode_timeout_s > 0 else Mode.BASIC
            # SAF always goes in safe framing, whatever mode the pump is in, and the pump answers
            # in the framing of the mode it is in after the command (NESP, reference §2.3). The
            # reply to this first command may be the power-up reset alarm A?R: like NESP
            # (`alarm_ignore` on its first SAF), _transact takes the alarm report as the
            # acknowledgement it is and sends SAF again; the alarm is kept for read_status.
            packet = encode_command(self._address, "SAF", str(self._safe_mode_timeout_s), mode=Mode.SAFE)
            try:
                await self._transact(f"SAF{self._safe_mode_timeout_s}", packet)
            except BaseException:
                self._link = None
                await link.close()
                raise
            decoder.mode = target
            self._mode = target

    async def close(self) -> None:
        """Close the port (idempotent). Safe mode stays on: see the module docstring."""
        async with self._lock:
            link, self._link, self._mode = self._link, None, None
        if link is not None:
            await link.close()

    # -- PumpDriver -------------------------------------------------------------------------------
    async def identify(self) -> PumpIdentity:
        """Model and firmware from ``VER``. New Era reports no serial number and no drug library."""
        async with self._lock:
            reply = await self._exchange("VER")
        model, firmware = parse_firmware(reply.data, peer=self._pump_id)
        return PumpIdentity(
            protocol="newera",
            manufacturer="New Era Pump Systems",
            model=model,
            serial=None,
            firmware=firmware,
            library_version=None,
            channels=1,
        )

    async def read_status(self) -> tuple[ChannelStatus, ...]:
        """The one channel: state, rate (mL/h), VTBI remaining and volume infused (mL), alarms.

        Sends a status query (which collects any pending alarm), ``RAT``, ``VOL`` and ``DIS``.
        Volume infused is ``DIS``'s infused volume; VTBI remaining is ``VOL`` minus that (``None``
        for ``VOL 0``, continuous pumping). Rate is the programmed rate, exact, converted from the
        pump's unit. Raises NoResponse, ProtocolError or DeviceError.
        """
        async with self._lock:
            await self._exchange("")
            rat = await self._exchange("RAT")
            vol = await self._exchange("VOL")
            dis = await self._exchange("DIS")
            rate = parse_amount(rat.data, RATE_UNITS, peer=self._pump_id, what="RAT").to("mL/h")
            target = parse_amount(vol.data, VOLUME_UNITS, peer=self._pump_id, what="VOL").to("mL")
            infused = parse_dispensed(dis.data, peer=self._pump_id)[0].to("mL")
            alarms, self._alarms = tuple(self._alarms), []
        # VOL 0 means no volume target (§2.5). VOL - DIS is what is left because program() clears
        # DIS with CLD INF; on a pump programmed from its keypad it can even be negative.
        vtbi = None if target.value == 0 else Quantity(target.value - infused.value, "mL")
        prompt = dis.prompt or Prompt.STOPPED  # never None: _exchange returns no alarm replies
        state = _STATE_OF_PROMPT[prompt]
        if state is ChannelState.IDLE and target.value > 0 and infused.value >= target.value:
            state = ChannelState.COMPLETE
        if alarms and state in (ChannelState.IDLE, ChannelState.COMPLETE, ChannelState.PAUSED):
            state = ChannelState.ALARM  # every New Era alarm stops the Pumping Program (§2.3)
        return (
            ChannelStatus(
                channel=1,
                state=state,
                rate=rate,
                vtbi=vtbi,
                volume_infused=infused,
                alarms=tuple(alarm.label for alarm in alarms),
            ),
        )

    async def program(self, channel: int, program: ChannelProgram) -> None:
        """Set rate (mL/h) and VTBI (mL), infuse direction, clear DIS; then read back RAT and VOL.

        Raises QuantityError before anything is sent when the rate or VTBI cannot be written
        exactly in the pump's format (4 digits, 3 decimals: values are never rounded);
        DeviceError when the pump refuses a command (``?OOR`` out of range, ``?NA`` while pumping)
        or reads back something else than was sent (``READBACK_MISMATCH``); NoResponse,
        ProtocolError. Drug and concentration are not sent: a New Era pump cannot hold them.
        """
        self._check_channel(channel, "program")
        rate_text = format_number(program.rate.value, unit=program.rate.unit)
        volume_text = format_number(program.vtbi.value, unit=program.vtbi.unit)
        async with self._lock:
            # The commands a pump may refuse while pumping come first, so that a refusal leaves
            # nothing half-changed.
            await self._exchange("VOL", "ML")  # units on their own, as NE-B says (§2.5)
            await self._exchange("VOL", volume_text)
            await self._exchange("RAT", rate_text + "MH")
            await self._exchange("DIR", "INF")
            await self._exchange("CLD", "INF")  # DIS counts from here: VTBI remaining = VOL - DIS
            rat = await self._exchange("RAT")
            vol = await self._exchange("VOL")
        rate = parse_amount(rat.data, RATE_UNITS, peer=self._pump_id, what="RAT").to("mL/h")
        vtbi = parse_amount(vol.data, VOLUME_UNITS, peer=self._pump_id, what="VOL").to("mL")
        for name, sent, read in (("rate", program.rate, rate), ("VTBI", program.vtbi, vtbi)):
            if read.value != sent.value:
                raise DeviceError(
                    self._pump_id,
                    "program",
                    READBACK_MISMATCH,
                    f"{name} read back as {read}, programmed {sent}",
                )

    async def start(self, channel: int) -> None:
        """``RUN``. Raises DeviceError if the pump refuses or its reply does not show it infusing."""
        self._check_channel(channel, "start")
        async with self._lock:
            reply = await self._exchange("RUN")
        if reply.prompt is not Prompt.INFUSING:
            shown = reply.prompt or Prompt.STOPPED
            raise DeviceError(
                self._pump_id, "RUN", shown.value, f"the pump did not start: it shows '{shown.meaning}'"
            )

    async def stop(self, channel: int) -> None:
        """``STP`` (pauses a running program). Raises DeviceError if the pump still shows pumping."""
        self._check_channel(channel, "stop")
        async with self._lock:
            reply = await self._exchange("STP")
        if reply.prompt in (Prompt.INFUSING, Prompt.WITHDRAWING, Prompt.PURGING):
            shown = reply.prompt
            raise DeviceError(
                self._pump_id, "STP", shown.value, f"the pump did not stop: it shows '{shown.meaning}'"
            )

    # -- exchanges --------------------------------------------------------------------------------
    def _check_channel(self, channel: int, command: str) -> None:
        if channel != 1:
            raise DriverError(
                self._pump_id, command, f"channel {channel} does not exist: a New Era pump has channel 1 only"
            )

    async def _exchange(self, command: str, argument: str = "") -> Reply:
        """One command in the current mode's framing; the caller holds the lock."""
        if self._mode is None:
            raise DriverError(self._pump_id, command or "status", f"not connected to {self._port}")
        packet = encode_command(self._address, command, argument, mode=self._mode)
        return await self._transact(f"{command}{argument}" or "status", packet)

    async def _transact(self, label: str, packet: bytes) -> Reply:
        """Send ``packet``, return the pump's reply; resend after an alarm report (see module doc)."""
        link = self._link
        if link is None or link.transport is None:
            raise DriverError(self._pump_id, label, f"not connected to {self._port}")
        if link.lost:
            raise DriverError(self._pump_id, label, f"serial port {self._port} closed: {link.lost_reason}")
        alarm: Alarm | None = None
        for _ in range(1 + _ALARM_RESENDS):
            self._drop_stale(link)
            link.transport.write(packet)
            try:
                async with asyncio.timeout(self._timeout_s):
                    item = await link.next_item()
            except TimeoutError:
                raise NoResponse(self._pump_id, label, self._timeout_s) from None
            if item is None:
                raise DriverError(
                    self._pump_id, label, f"serial port {self._port} closed: {link.lost_reason}"
                )
            if isinstance(item, ProtocolError):
                raise ProtocolError(self._pump_id, label, item.data, item.reason) from item
            if item.address != self._address:
                raise ProtocolError(
                    self._pump_id,
                    label,
                    packet,
                    f"reply from address {item.address:02d}, expected {self._address:02d}",
                )
            if item.alarm is not None:
                # The pump reported an alarm instead of acting on the command; the report itself
                # acknowledged the alarm (§2.3). Keep it for read_status and send the command again.
                alarm = item.alarm
                self._note_alarm(alarm)
                continue
            if item.error is not None:
                raise DeviceError(self._pump_id, label, item.error.value, item.error.meaning)
            return item
        # Only alarm replies get here, every time; alarm is set.
        code = f"A?{alarm.value}" if alarm is not None else "A?"
        meaning = alarm.meaning if alarm is not None else "alarm"
        raise DeviceError(
            self._pump_id,
            label,
            code,
            f"{meaning}; the pump kept reporting alarms instead of acting on the command",
        )

    def _drop_stale(self, link: _Link) -> None:
        # The pump only speaks when spoken to, or to report an alarm (Auto-Alarm, §2.3). Whatever
        # is waiting before a request is a late reply to an earlier one or such an alarm packet.
        items, partial = link.take_stale()
        for item in items:
            if isinstance(item, Reply) and item.alarm is not None:
                self._note_alarm(item.alarm)
            _LOG.debug("pump %s: dropped before a request: %r", self._pump_id, item)
        if partial:
            _LOG.debug("pump %s: dropped a partial frame: %r", self._pump_id, partial)

    def _note_alarm(self, alarm: Alarm) -> None:
        if alarm not in self._alarms:
            self._alarms.append(alarm)
