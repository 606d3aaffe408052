"""Driver for syringe pumps speaking the Alaris GH / CC / Asena-style serial protocol (RS-232).

The wire format lives in :mod:`pumpgw.drivers.alaris_codec`; this module is the thin asyncio layer
around it: one serial port (38 400 baud 8N1, reference §3) through pyserial-asyncio-fast, one
request at a time under one lock, a reply timeout, and the mapping of what goes wrong to the
gateway's errors:

* no reply within ``timeout_s`` → :class:`~pumpgw.gateway.errors.NoResponse`;
* the pump's refusal (our ``ERROR`` reply, see the codec) → :class:`~pumpgw.gateway.errors.DeviceError`
  with its code (``NOT_REMOTE``, ``BAD_CODE``, ``BAD_VALUE``, ...) and its meaning in words;
* a frame with a bad CRC, or a reply of the wrong shape → :class:`~pumpgw.gateway.errors.ProtocolError`;
* the port going away or failing to open → :class:`~pumpgw.gateway.errors.DriverError`, or
  :class:`~pumpgw.gateway.errors.EnvironmentProblem` when the gateway may not open it.

Every reply repeats its command's name, so a late reply to an earlier request is recognised and
skipped instead of being taken as the answer; whatever waits in the buffer before a request is
dropped (logged at debug).

Retries and writes (DESIGN.md, "Only idempotent reads are retried blindly"):

* A read (a query without values) is sent once more after a timeout (``read_retries``, default 1,
  as INFUPY and MDPNP do): at most ``(1 + read_retries) * timeout_s`` per read.
* A write (``INF_VTBI``/``INF_RATE`` with values, ``INF_START``, ``INF_STOP``) is never sent again
  by the driver. When its outcome is unknown (timeout, corrupt reply, the pump could not read a
  frame, cancellation) the driver notes it (:attr:`AlarisDriver.unsettled_write`), and the next
  write operation first reads the pump's state (``INF``, ``INF_VTBI``, ``REMOTE_CTRL``) and logs what
  it found, unless a ``read_status`` has done so in between; no write goes out until that read
  succeeds. ``stop`` is the exception: it tries that
  read but sends its stop whatever the read gives, because nothing may stand in the way of a stop.
* ``program`` reads back the rate and the VTBI; ``start`` and ``stop`` read the status back; a
  difference is ``DeviceError`` code ``"readback-mismatch"``.

Remote control and keep-alive (reference §3). Writes need remote control, which the driver takes
with ``REMOTE_CTRL^ENABLED^<code>`` just before each write (MDPNP style), ``<code>`` being the CRC of
the serial number read at connect. The pump gives remote control back when no valid frame arrives
for its quiet time (10 s in MDPNP). The gateway's poller calls :meth:`AlarisDriver.read_status`
about once a second, and any valid frame restarts that timer, so the driver sends no keep-alive of
its own (INFUPY re-sends ``REMOTE_CTRL^ENABLED`` every second instead). If the gateway goes away,
remote control lapses and the pump reverts to local control; the emulated pump keeps infusing
(what a real pump does is not in the public sources). :meth:`AlarisDriver.close` gives remote
control back (``REMOTE_CTRL^DISABLED``, ``REMOTE_CFG^DISABLED``, as INFUPY does on shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Final, cast

from pumpgw.drivers.alaris_codec import (
    BAUDRATE,
    NEED_DATA,
    Alarm,
    ErrorCode,
    ErrorReply,
    HostDecoder,
    InfStatus,
    InfusionMode,
    Reply,
    encode_frame,
    parse_inf,
    parse_rate,
    parse_remote,
    parse_vtbi,
    rate_fields,
    remote_fields,
    security_code,
    vtbi_command,
)
from pumpgw.drivers.base import (
    READBACK_MISMATCH,
    Capabilities,
    ChannelProgram,
    ChannelState,
    ChannelStatus,
    PumpIdentity,
)
from pumpgw.drivers.serial_link import SerialLink, open_link
from pumpgw.gateway.errors import (
    ConfigError,
    DeviceError,
    DriverError,
    NoResponse,
    ProtocolError,
)

_LOG = logging.getLogger(__name__)

ALARIS_CAPABILITIES: Final = Capabilities(
    remote_program=True,
    remote_start=True,
    remote_stop=True,
    reports_drug=False,  # no drug command in the public sources (reference §3)
    reports_library_version=False,
    reports_battery=False,
)


#: Our infusion-mode values (see the codec) as common states; any other value is UNKNOWN.
_STATE_OF_MODE: Final = {
    InfusionMode.INFUSING: ChannelState.INFUSING,
    InfusionMode.PAUSED: ChannelState.PAUSED,
    InfusionMode.STOPPED: ChannelState.IDLE,
    InfusionMode.KVO: ChannelState.KVO,
    InfusionMode.COMPLETE: ChannelState.COMPLETE,
    InfusionMode.ALARM: ChannelState.ALARM,
}
#: What ``start`` accepts as started, and what ``stop`` does not accept as stopped.
_STARTED: Final = frozenset({ChannelState.INFUSING, ChannelState.KVO})
_RUNNING: Final = frozenset({ChannelState.INFUSING, ChannelState.KVO, ChannelState.BOLUS})

#: ``COMMS_PROTOCOL`` answers e.g. ``Asena Rev 2.1.5`` (MDPNP's simulators): model, then revision
#: [inferred].
_COMMS_PROTOCOL = re.compile(r"(.+?) Rev (\S+)", re.ASCII)

_Item = Reply | ErrorReply | ProtocolError


_Link = SerialLink[Reply | ErrorReply]


def _label(fields: tuple[str, ...]) -> str:
    """The command as it appears in errors and logs, the remote-control code masked as the pump
    masks it in its reply (``****``)."""
    if fields[0] in ("REMOTE_CTRL", "REMOTE_CFG") and len(fields) == 3:
        fields = (*fields[:2], "****")
    return "^".join(fields)


def _alarm_label(name: str) -> str:
    """The ChannelStatus label of an alarm name; an unknown name is shown, never dropped."""
    try:
        return Alarm(name).label
    except ValueError:
        return name.lower().replace("_", "-")


class AlarisDriver:
    """One Alaris GH/CC/Asena-style syringe pump on one serial port (one channel); see the module
    docstring.

    ``port`` is a device path (``/dev/ttyUSB0``, ``/dev/pts/5``) or a pyserial URL; ``timeout_s`` how
    long to wait for each reply (MDPNP waits 500 ms); ``read_retries`` how often a read is sent again
    after a timeout. Raises ConfigError for a timeout that is not positive or a negative retry count.
    """

    def __init__(
        self,
        pump_id: str,
        port: str,
        *,
        baudrate: int = BAUDRATE,
        timeout_s: float = 1.0,
        read_retries: int = 1,
    ) -> None:
        source = f"AlarisDriver({pump_id!r})"
        if not timeout_s > 0:
            raise ConfigError(source, "timeout_s", timeout_s, "a positive number of seconds")
        if not 0 <= read_retries <= 5:
            raise ConfigError(source, "read_retries", read_retries, "0-5 retries of a read after a timeout")
        self._pump_id = pump_id
        self._port = port
        self._baudrate = baudrate
        self._timeout_s = timeout_s
        self._read_retries = read_retries
        self._lock = asyncio.Lock()  # one request at a time; a write and its read-back together
        self._link: _Link | None = None
        self._serial: str | None = None
        self._code: str | None = None
        self._comms_protocol: str | None = None
        self._unsettled: str | None = None

    @property
    def pump_id(self) -> str:
        return self._pump_id

    @property
    def capabilities(self) -> Capabilities:
        return ALARIS_CAPABILITIES

    @property
    def port(self) -> str:
        return self._port

    @property
    def serial(self) -> str | None:
        """The pump's serial number from ``INST_SERIALNO``; None before ``connect``."""
        return self._serial

    @property
    def comms_protocol(self) -> str | None:
        """The pump's ``COMMS_PROTOCOL`` text (e.g. ``Asena Rev 2.1.5``); None before ``connect``."""
        return self._comms_protocol

    @property
    def unsettled_write(self) -> str | None:
        """The write whose outcome is unknown (see the module docstring), or None."""
        return self._unsettled

    # -- link -------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the port, send ``COMMS_PROTOCOL`` and read ``INST_SERIALNO`` (whose CRC is the
        remote-control code). No-op when connected; reopens a lost port.

        Raises EnvironmentProblem when the port exists but may not be opened (permissions),
        DriverError when it cannot be opened at all, and NoResponse, ProtocolError or DeviceError
        when the pump does not answer; the port is closed again in every failure.
        """
        async with self._lock:
            if self._link is not None and not self._link.lost:
                return
            self._link = None
            link = _Link(HostDecoder(peer=self._pump_id), NEED_DATA)
            await open_link(self._pump_id, self._port, self._baudrate, link)
            self._link = link
            try:
                await self._read_identity()
            except BaseException:
                self._link = None
                await link.close()
                raise

    async def close(self) -> None:
        """Give remote control back (best effort, each bounded by ``timeout_s``), then close the
        port. Idempotent; never raises a DriverError."""
        async with self._lock:
            link = self._link
            try:
                if link is not None and not link.lost:
                    for fields in (remote_fields("REMOTE_CTRL", None), remote_fields("REMOTE_CFG", None)):
                        try:
                            await self._exchange(fields)
                        except DriverError as exc:
                            _LOG.debug("pump %s: %s on close failed: %s", self._pump_id, _label(fields), exc)
            finally:
                self._link = None
                if link is not None:
                    await link.close()

    # -- PumpDriver -------------------------------------------------------------------------------
    async def identify(self) -> PumpIdentity:
        """Serial number (``INST_SERIALNO``) and model (from ``COMMS_PROTOCOL``, "unknown" if its
        text is not ``<model> Rev <revision>``). Firmware and drug library: not in the protocol."""
        async with self._lock:
            await self._read_identity()
        match = _COMMS_PROTOCOL.fullmatch(self._comms_protocol or "")
        return PumpIdentity(
            protocol="alaris",
            manufacturer="Alaris-style (GH/CC/Asena protocol)",
            model=match[1] if match else "unknown",
            serial=self._serial,
            firmware="unknown",
            library_version=None,
            channels=1,
        )

    async def read_status(self) -> tuple[ChannelStatus, ...]:
        """The one channel from ``INF`` (state, rate being delivered, volume infused, alarms),
        ``INF_VTBI`` (the VTBI left; None when deactivated) and ``REMOTE_CTRL`` (remote control).
        Raises NoResponse, ProtocolError, DeviceError, or DriverError when the pump's serial number
        changed (another pump on this port)."""
        async with self._lock:
            status = await self._status()
            self._settled(status)  # a write whose outcome was unknown: now the state is known
        return (status,)

    async def program(self, channel: int, program: ChannelProgram) -> None:
        """Take remote control, set the VTBI (0: none, ``INF_VTBI^DEACT``) and then the rate, and read
        both back.

        The VTBI goes first because the pump refuses a new VTBI while infusing but takes a new
        rate: that refusal then leaves nothing half-changed. Raises QuantityError before anything is sent
        for a rate needing more than 2 decimals or a VTBI needing more than 3 (values are never
        rounded); DeviceError for the pump's refusal or a read-back that differs
        ("readback-mismatch"); NoResponse, ProtocolError. Drug and concentration are not sent: the
        public protocol has no command for them.
        """
        self._check_channel(channel, "program")
        vtbi = program.vtbi.value if program.vtbi.value != 0 else None
        vtbi_command_fields = vtbi_command(vtbi)  # QuantityError before sending
        rate_command = rate_fields(program.rate.value)
        async with self._lock:
            await self._settle()
            await self._take_remote()
            await self._write(vtbi_command_fields)
            await self._write(rate_command)
            rate = parse_rate((await self._read(("INF_RATE",))).args, peer=self._pump_id)
            held = parse_vtbi((await self._read(("INF_VTBI",))).args, peer=self._pump_id)
        differences = []
        if rate.value != program.rate.value:
            differences.append(f"rate read back as {rate}, programmed {program.rate}")
        if (held is None) != (vtbi is None) or (held is not None and held.value != vtbi):
            shown = "none" if held is None else str(held)
            differences.append(f"VTBI read back as {shown}, programmed {program.vtbi}")
        if differences:
            raise DeviceError(self._pump_id, "program", READBACK_MISMATCH, "; ".join(differences))

    async def start(self, channel: int) -> None:
        """Take remote control, ``INF_START``, and read the status back. Raises DeviceError if the
        pump refuses or does not show the channel infusing ("readback-mismatch")."""
        self._check_channel(channel, "start")
        async with self._lock:
            await self._settle()
            await self._take_remote()
            await self._write(("INF_START",))
            status = await self._status()
        if status.state not in _STARTED:
            raise DeviceError(
                self._pump_id, "INF_START", READBACK_MISMATCH, f"start accepted but state is {status.state}"
            )

    async def stop(self, channel: int) -> None:
        """``INF_STOP`` and read the status back. Taking remote control first is tried but its
        failure does not hold the stop back. Raises DeviceError if the pump still shows delivering
        ("readback-mismatch"); NoResponse, ProtocolError."""
        self._check_channel(channel, "stop")
        async with self._lock:
            try:
                await self._settle()
                await self._take_remote()
            except DriverError as exc:
                _LOG.warning("pump %s: stopping anyway after: %s", self._pump_id, exc)
            await self._write(("INF_STOP",))
            status = await self._status()
            self._settled(status)  # if the read before the stop failed
        if status.state in _RUNNING:
            raise DeviceError(
                self._pump_id, "INF_STOP", READBACK_MISMATCH, f"stop accepted but state is {status.state}"
            )

    # -- steps (the caller holds the lock) --------------------------------------------------------
    def _check_channel(self, channel: int, command: str) -> None:
        if channel != 1:
            raise DriverError(
                self._pump_id, command, f"channel {channel} does not exist: this pump has channel 1 only"
            )

    async def _read_identity(self) -> None:
        protocol = await self._read(("COMMS_PROTOCOL",))
        if len(protocol.args) != 1:
            raise ProtocolError(
                self._pump_id, "COMMS_PROTOCOL", "^".join(protocol.fields).encode(), "expected one field"
            )
        reply = await self._read(("INST_SERIALNO",))
        if len(reply.args) != 1 or not reply.args[0]:
            raise ProtocolError(
                self._pump_id, "INST_SERIALNO", "^".join(reply.fields).encode(), "expected the serial number"
            )
        serial_number = reply.args[0]
        if self._serial is not None and serial_number != self._serial:
            _LOG.warning(
                "pump %s: serial number changed from %s to %s: another pump on %s",
                self._pump_id,
                self._serial,
                serial_number,
                self._port,
            )
        self._comms_protocol = protocol.args[0]
        self._serial = serial_number
        self._code = security_code(serial_number)

    async def _status(self) -> ChannelStatus:
        inf = await self._inf()
        vtbi = parse_vtbi((await self._read(("INF_VTBI",))).args, peer=self._pump_id)
        remote = parse_remote((await self._read(("REMOTE_CTRL",))).args, peer=self._pump_id)
        mode = inf.infusion_mode
        return ChannelStatus(
            channel=1,
            state=ChannelState.UNKNOWN if mode is None else _STATE_OF_MODE[mode],
            rate=inf.rate,
            vtbi=vtbi,
            volume_infused=inf.volume_infused,
            alarms=tuple(_alarm_label(name) for name in inf.alarms),
            remote_control=remote,
        )

    async def _inf(self) -> InfStatus:
        inf = parse_inf((await self._read(("INF",))).args, peer=self._pump_id)
        if inf.serial and self._serial is not None and inf.serial != self._serial:
            # Field [1] holds the serial number (MDPNP reads it as InstSerial). Another pump on
            # this port must not have its status reported as this one's.
            raise DriverError(
                self._pump_id,
                "INF",
                f"the pump reports serial number {inf.serial}, connected to {self._serial}: "
                "another pump on this port; reconnect",
            )
        return inf

    async def _settle(self) -> None:
        """If a write's outcome is unknown, read the pump's state before any further write."""
        if self._unsettled is not None:
            self._settled(await self._status())

    def _settled(self, status: ChannelStatus) -> None:
        if self._unsettled is None:
            return
        _LOG.warning(
            "pump %s: the outcome of %s was unknown; the pump now shows %s, rate %s, VTBI left %s",
            self._pump_id,
            self._unsettled,
            status.state,
            status.rate,
            status.vtbi,
        )
        self._unsettled = None

    async def _take_remote(self) -> None:
        if self._code is None:
            raise DriverError(self._pump_id, "REMOTE_CTRL", f"not connected to {self._port}")
        reply = await self._exchange(remote_fields("REMOTE_CTRL", self._code))
        if not parse_remote(reply.args, peer=self._pump_id):
            raise DeviceError(self._pump_id, "REMOTE_CTRL^ENABLED", "DISABLED", "the pump kept local control")

    async def _read(self, fields: tuple[str, ...]) -> Reply:
        """A query: sent again after a timeout, ``read_retries`` times."""
        retries = self._read_retries
        while True:
            try:
                return await self._exchange(fields)
            except NoResponse:
                if retries <= 0:
                    raise
                retries -= 1
                _LOG.debug("pump %s: no answer to %s, asking again", self._pump_id, _label(fields))

    async def _write(self, fields: tuple[str, ...]) -> Reply:
        """A write: sent once. Unless it succeeded or the pump refused it, its outcome is unknown."""
        label = _label(fields)
        self._require_link(label)
        known = False
        try:
            reply = await self._exchange(fields)
            known = True
        except DeviceError as exc:
            # A refusal of this command is certain; "could not read a frame" may be about another.
            known = exc.code != ErrorCode.BAD_FRAME
            raise
        finally:
            if not known:
                self._unsettled = label
        return reply

    def _require_link(self, label: str) -> _Link:
        link = self._link
        if link is None or link.transport is None:
            raise DriverError(self._pump_id, label, f"not connected to {self._port}")
        if link.lost:
            raise DriverError(self._pump_id, label, f"serial port {self._port} closed: {link.lost_reason}")
        return link

    async def _exchange(self, fields: tuple[str, ...]) -> Reply:
        """Send one frame and return the reply to it. Replies to other commands are skipped."""
        label = _label(fields)
        link = self._require_link(label)
        transport = cast(asyncio.Transport, link.transport)
        self._drop_stale(link)
        transport.write(encode_frame(fields))
        name = fields[0]
        try:
            async with asyncio.timeout(self._timeout_s):
                while True:
                    item = await link.next_item()
                    if item is None:
                        raise DriverError(
                            self._pump_id, label, f"serial port {self._port} closed: {link.lost_reason}"
                        )
                    if isinstance(item, ProtocolError):
                        raise ProtocolError(self._pump_id, label, item.data, item.reason) from item
                    if isinstance(item, ErrorReply):
                        if item.command == name or item.code is ErrorCode.BAD_FRAME:
                            raise DeviceError(
                                self._pump_id, label, item.code.value, f"{item.code.meaning}: {item.text}"
                            )
                    elif item.name == name:
                        return item
                    _LOG.debug("pump %s: skipped a reply that is not for %s: %r", self._pump_id, name, item)
        except TimeoutError:
            raise NoResponse(self._pump_id, label, self._timeout_s) from None

    def _drop_stale(self, link: _Link) -> None:
        # The pump only speaks when spoken to: whatever waits before a request is a late reply to
        # an earlier one (or noise), never the answer to this one.
        items, partial = link.take_stale()
        for item in items:
            _LOG.debug("pump %s: dropped before a request: %r", self._pump_id, item)
        if partial:
            _LOG.debug("pump %s: dropped a partial frame: %r", self._pump_id, partial)
