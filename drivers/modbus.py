"""The generic Modbus pump driver, over TCP and RTU: one class for every pump whose register map is
a TOML file, on whichever transport reaches it.

Everything pump-specific (addresses, types, word and byte order, units, code tables) comes from a
:class:`~pumpgw.drivers.modbus_map.RegisterMap`; this module knows only the protocol of
reference/pump-protocols.md §6.1: read-only status in input registers, one status block per channel
read in one FC04, and commands written as a whole command area in one FC16 with a new sequence
number and the safety token, which the pump echoes with a result code. :class:`ModbusDriver` holds
all of that; :class:`ModbusTcpDriver` and :class:`ModbusRtuDriver` only say how to reach the pump.

Rules this driver keeps (DESIGN.md, "The safety core" and "Drivers and the rig"):

- Two locks. One per driver: a command's write and its read-back are never interleaved with a poll
  of the same pump. One per *bus*: a request and its reply are never interleaved with another
  request on the same wire. On TCP the bus is the driver's own connection; on RTU it is the
  serial line, shared by every pump (unit id) on it: drivers given the same port share one pymodbus
  client and one lock (a registry keyed by the port's real path, per event loop, reference-counted;
  the port is closed when the last driver on it closes). Every driver on one line must use the
  same baud rate, parity and stop bits, or it gets a DriverError on connecting.
- The RTU inter-frame gap: at least t3.5 of silence on the line between the end of a reply and the
  next request (Modbus over Serial Line v1.02 §2.5.1.1: 3.5 character times of 11 bits, fixed
  1.75 ms above 19200 baud). pymodbus 3.16's async serial client does not wait itself (it writes a
  request the moment it is asked), so the bus does.
- pymodbus's own retries are off (``retries=0``) and so is its automatic reconnect: only this code
  decides whether to try again, and it never re-sends a write after a timeout; the next command
  reads the pump's last sequence number first, so it cannot be mistaken for the lost one.
- Every write is verified by reading back: the echoed sequence and result, then the values the pump
  now holds. A difference is a DeviceError, never silently accepted.
- Host supervision (§6.1 HR 0-3): :meth:`ModbusDriver.read_status` reads the pump first and then
  writes a new heartbeat value (so a poll still sees a comm-loss alarm raised since the last one,
  before the heartbeat ends it); a command writes one before it acts. The first heartbeat continues
  from the value the pump holds, so a restarted gateway never writes the value already there
  (which would be no heartbeat). Before any command but stop the driver requests remote control
  (HR 3 = 1) unless the channel already reports it granted (B+1); a pump whose local policy
  refuses it answers ``rejected-no-remote``, a DeviceError. The driver does not set the comm
  timeout or policy (HR 1, HR 2): that is the pump's configuration.

Errors: silence, refused or dropped connections and pymodbus I/O errors become ``NoResponse``; a
Modbus exception response or a refused command becomes ``DeviceError``; registers that cannot be
what the map says (bad probes, undecodable values, unknown codes) become ``ProtocolError``. A serial
port that cannot be opened is an ``EnvironmentProblem`` when permissions forbid it (with the fix)
and a ``DriverError`` otherwise.
"""

from __future__ import annotations

import abc
import asyncio
import os
import termios
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar, Final

import serial.serialutil
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from pumpgw.gateway.errors import (
    DeviceError,
    DriverError,
    NoResponse,
    ProtocolError,
    PumpGwError,
    QuantityError,
)
from pumpgw.gateway.quantity import Quantity

from .base import (
    READBACK_MISMATCH,
    Capabilities,
    ChannelProgram,
    ChannelState,
    ChannelStatus,
    PumpIdentity,
)
from .modbus_map import DEFAULT_MAP, Block, FieldValue, RegisterMap, decode, encode, load_builtin_map
from .serial_link import serial_open_error

# Modbus exception codes in words (Modbus Application Protocol v1.1b3 §7).
_EXCEPTIONS: Final[Mapping[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge (still processing)",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# pymodbus enforces ``timeout_s`` itself; this outer guard only catches a request pymodbus never
# finishes (its internals change between minor releases, reference/dependencies.md §5).
_GUARD_S: Final = 0.5
# A pump may publish a command's result a little after acknowledging the write; re-read the status
# block (an idempotent read) this many times, this far apart, before calling it unacknowledged.
_ACK_READS: Final = 3
_ACK_PAUSE_S: Final = 0.05
_STARTED: Final = frozenset(
    {ChannelState.INFUSING, ChannelState.BOLUS, ChannelState.KVO, ChannelState.COMPLETE}
)
_RUNNING: Final = frozenset({ChannelState.INFUSING, ChannelState.BOLUS})
_PARITIES: Final = frozenset({"N", "E", "O"})
# RTU timing (Modbus over Serial Line v1.02 §2.5.1 and §2.5.1.1): a character is 11 bits; t3.5 is
# fixed at 1.75 ms above 19200 baud. The emulator computes the same from the same text on its own.
_BITS_PER_CHARACTER: Final = 11
_FIXED_TIMING_BAUD: Final = 19200
_FIXED_T35_S: Final = 0.00175

Send = Callable[[ModbusBaseClient], Awaitable[ModbusPDU]]
LinkCallback = Callable[[bool], None]  # pymodbus's trace_connect: True on connect, False on loss


def rtu_gap_s(baudrate: int) -> float:
    """t3.5, the silence an RTU line needs between frames at ``baudrate``, in seconds."""
    if baudrate > _FIXED_TIMING_BAUD:
        return _FIXED_T35_S
    return 3.5 * _BITS_PER_CHARACTER / baudrate


# --- buses ------------------------------------------------------------------------------------------


class _Bus:
    """One Modbus wire: its pymodbus client (made on first use), the lock that keeps one request
    on it at a time, and the silence it needs between frames. Callers hold :attr:`lock` around
    :meth:`open` and :meth:`request`."""

    def __init__(self, make_client: Callable[[LinkCallback], ModbusBaseClient], gap_s: float) -> None:
        self.lock = asyncio.Lock()
        self.gap_s = gap_s
        self._make_client = make_client
        self._client: ModbusBaseClient | None = None
        self._deadline: asyncio.Timeout | None = None  # of the request in flight, if any
        self._quiet_since = float("-inf")  # event-loop time the last exchange ended

    async def open(self, timeout_s: float) -> bool:
        """Connect (or open the port) unless already done. False if that failed or timed out."""
        if self._client is None:
            self._client = self._make_client(self._link_changed)
        if self._client.connected:
            return True
        try:
            async with asyncio.timeout(timeout_s + _GUARD_S):
                return await self._client.connect()
        except TimeoutError:
            return False

    async def request(self, send: Send, timeout_s: float) -> ModbusPDU:
        """One request, one reply, after the inter-frame silence. Raises what pymodbus raises and
        TimeoutError. Never retried here."""
        client = self._client
        if client is None:
            raise ConnectionException("not open")
        loop = asyncio.get_running_loop()
        wait = self._quiet_since + self.gap_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            async with asyncio.timeout(timeout_s + _GUARD_S) as self._deadline:
                return await send(client)
        finally:
            self._deadline = None
            self._quiet_since = loop.time()

    def close(self) -> None:
        """Close the connection or port. Idempotent; :meth:`open` opens it again."""
        if self._client is not None:
            self._client.close()
        self._link_changed(False)

    def _link_changed(self, connected: bool) -> None:
        """pymodbus's connect/disconnect callback. pymodbus notices a dropped connection at once
        but lets the request in flight wait for its whole timeout; end that wait now instead."""
        if not connected and self._deadline is not None:
            self._deadline.reschedule(asyncio.get_running_loop().time())


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """How a serial line is driven. Every pump on one line must agree on these."""

    baudrate: int
    parity: str
    stopbits: int

    def __str__(self) -> str:
        return f"{self.baudrate} baud 8{self.parity}{self.stopbits}"


class _SerialLine(_Bus):
    """A serial port shared by the drivers of every pump (unit id) on it."""

    def __init__(self, port: str, key: str, settings: SerialSettings) -> None:
        super().__init__(self._client_for, rtu_gap_s(settings.baudrate))
        self.port = port
        self.key = key
        self.settings = settings
        self.pumps: list[str] = []  # pump ids of the drivers using the line, in joining order
        self.configure_error: str | None = None  # why the last open failed to set the line up
        self._timeout_s = 1.0

    def _client_for(self, on_link: LinkCallback) -> ModbusBaseClient:
        # retries=0 and reconnect_delay=0: pymodbus neither repeats a request nor reopens the port
        # behind our back; the callers' poll loops own both decisions.
        return AsyncModbusSerialClient(
            self.port,
            framer=FramerType.RTU,
            baudrate=self.settings.baudrate,
            bytesize=8,
            parity=self.settings.parity,
            stopbits=self.settings.stopbits,
            name=f"serial {self.port}",
            timeout=self._timeout_s,
            retries=0,
            reconnect_delay=0,
            trace_connect=on_link,
        )

    async def open(self, timeout_s: float) -> bool:
        self._timeout_s = timeout_s
        self.configure_error = None
        try:
            return await super().open(timeout_s)
        except (termios.error, ValueError) as exc:
            # pyserial applies the settings again after opening (pymodbus sets its read timeout to
            # 0) and lets tcsetattr's error out unwrapped; pymodbus catches only OSError. A
            # device that refuses the settings (a pseudo-terminal refuses parity on some kernels)
            # ends up here; pyserial's own ValueError names a setting it cannot express.
            self.configure_error = str(exc.args[-1]) if exc.args else type(exc).__name__
            _close_abandoned_ports(exc)
            return False

    async def request(self, send: Send, timeout_s: float) -> ModbusPDU:
        # One client serves pumps whose drivers may have different timeouts: pymodbus keeps its
        # reply timeout in the transaction manager's parameters and reads it per request.
        if self._client is not None:
            self._client.ctx.comm_params.timeout_connect = timeout_s
        return await super().request(send, timeout_s)


def _close_abandoned_ports(exc: BaseException) -> None:
    """Close the port a failed open left behind. pymodbus drops its half-made transport with the
    pyserial port still open and exclusively locked, and something keeps it alive, so every later
    open of the port would fail with "Could not exclusively lock port". The port is the ``self`` of
    pyserial's own frames in the traceback."""
    traceback = exc.__traceback__
    while traceback is not None:
        port = traceback.tb_frame.f_locals.get("self")
        if isinstance(port, serial.serialutil.SerialBase) and port.is_open:
            port.close()
        traceback = traceback.tb_next


# The serial lines open in each event loop, by the port's real path (so /dev/serial/by-id/... and
# /dev/ttyUSB0 are one line). Per loop, because an asyncio.Lock and a pymodbus client belong to the
# loop they were first used in.
_LINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _SerialLine]] = (
    weakref.WeakKeyDictionary()
)


def _line_key(port: str) -> str:
    return port if "://" in port else os.path.realpath(port)


def _join_line(port: str, settings: SerialSettings, pump_id: str) -> _SerialLine:
    lines = _LINES.setdefault(asyncio.get_running_loop(), {})
    key = _line_key(port)
    line = lines.get(key)
    if line is None:
        line = lines[key] = _SerialLine(port, key, settings)
    elif line.settings != settings:
        raise DriverError(
            pump_id,
            "connect",
            f"serial port {port} is open at {line.settings} for pump(s) {', '.join(line.pumps)}; "
            f"this pump is configured for {settings}. Pumps on one line must use the same settings",
        )
    line.pumps.append(pump_id)
    return line


def _leave_line(line: _SerialLine, pump_id: str) -> None:
    line.pumps.remove(pump_id)
    if line.pumps:
        return
    line.close()
    lines = _LINES.get(asyncio.get_running_loop(), {})
    if lines.get(line.key) is line:
        del lines[line.key]


def shared_serial_lines() -> dict[str, tuple[str, ...]]:
    """The serial lines open in the running event loop: real port path → ids of the pumps whose
    drivers use it. For diagnostics and tests."""
    lines = _LINES.get(asyncio.get_running_loop(), {})
    return {key: tuple(line.pumps) for key, line in lines.items()}


def _serial_open_error(pump_id: str, command: str, line: _SerialLine) -> PumpGwError:
    """Why the line's port did not open. pymodbus only says *that* it did not (it logs the reason
    and returns False), so unless the settings were refused, open the port once ourselves to
    learn the errno."""
    port = line.port
    if line.configure_error is not None:
        return DriverError(
            pump_id, command, f"cannot set serial port {port} to {line.settings}: {line.configure_error}"
        )
    if "://" in port:  # a pyserial URL (socket://, rfc2217://): nothing to stat
        return DriverError(pump_id, command, f"cannot open serial port {port}")
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return serial_open_error(pump_id, command, port, exc)
    os.close(fd)
    return DriverError(
        pump_id,
        command,
        f"cannot open serial port {port}, although it exists and may be opened: another program "
        "may be using it (pyserial locks a port for one user)",
    )


# --- the driver ---------------------------------------------------------------------------------------


class ModbusDriver(abc.ABC):
    """A pump speaking the register map ``register_map`` (default: the rig's reference pump) as
    unit ``unit_id``. Implements :class:`~pumpgw.drivers.base.PumpDriver`; use
    :class:`ModbusTcpDriver` or :class:`ModbusRtuDriver`, which say how the pump is reached.

    Every method raises NoResponse, DeviceError or ProtocolError as described in the module
    docstring; ``program`` also raises QuantityError for a value the map cannot carry exactly and
    DriverError for a channel the pump does not have or a drug without a library id.
    """

    protocol: ClassVar[str] = "modbus"

    def __init__(
        self, pump_id: str, *, unit_id: int, register_map: RegisterMap | None, timeout_s: float
    ) -> None:
        self._pump_id = pump_id
        self.unit_id = unit_id
        self.map = register_map if register_map is not None else load_builtin_map(DEFAULT_MAP)
        self.timeout_s = timeout_s
        self._lock = asyncio.Lock()  # one poll or command of this pump at a time
        self._heartbeat: int | None = None  # the last value written; None: read the pump's first

    # --- how the pump is reached (subclasses) -----------------------------------------------------
    @abc.abstractmethod
    def _bus(self) -> _Bus:
        """The bus this driver's requests go on. May raise DriverError."""

    @abc.abstractmethod
    def _open_failed(self, command: str) -> PumpGwError:
        """The error for a connection or port that would not open."""

    # --- PumpDriver -----------------------------------------------------------------------------
    @property
    def pump_id(self) -> str:
        return self._pump_id

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            remote_program=True,
            remote_start=True,
            remote_stop=True,
            reports_drug=True,
            reports_library_version=True,
            reports_battery=self.map.has_field("system.battery_percent"),
        )

    async def connect(self) -> None:
        """Open the connection or port (no-op if open). Raises NoResponse if a TCP connection
        cannot be opened, EnvironmentProblem or DriverError if a serial port cannot."""
        async with self._lock:
            bus = self._bus()
            async with bus.lock:
                if not await bus.open(self.timeout_s):
                    raise self._open_failed("connect")

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection (RTU: leave the line; the last driver on it closes the port).
        Idempotent; :meth:`connect` may open it again."""

    async def identify(self) -> PumpIdentity:
        """Read the system block once: check both probes, then report who the pump is.
        Raises ProtocolError if a probe is wrong (the map's word or byte order is not the pump's)."""
        async with self._lock:
            values = await self._read_system("identify")
        version = _integer(values, "library_version")
        return PumpIdentity(
            protocol=self.protocol,
            manufacturer=_text(values, "manufacturer"),
            model=_text(values, "model"),
            serial=_text(values, "serial"),
            firmware=_text(values, "firmware"),
            library_version=str(version),
            channels=_integer(values, "channel_count"),
        )

    async def read_status(self) -> tuple[ChannelStatus, ...]:
        """Read the system block (probes, channel count, battery), then each channel's status
        block in one FC04 apiece, then write the host heartbeat (module docstring)."""
        async with self._lock:
            system = await self._read_system("read_status")
            battery = system.get("battery_percent")
            statuses = []
            for channel in range(1, _integer(system, "channel_count") + 1):
                values, raw = await self._read_channel("read_status", channel)
                statuses.append(
                    self._status(channel, values, raw, battery if isinstance(battery, int) else None)
                )
            await self._beat("read_status")
        return tuple(statuses)

    async def program(self, channel: int, program: ChannelProgram) -> None:
        """Send ``program`` as one apply-program command and verify it by reading back rate, VTBI,
        drug id, concentration (and drug name, if ``program.drug`` is given).

        The drug is selected by its library id, ``program.extra["drug_id"]`` (decimal); ``drug``
        alone cannot be sent. Values are checked and encoded before anything is sent.
        """
        command = f"program channel {channel}"
        settings = self._program_registers(command, program)
        async with self._lock:
            await self._check_channel(command, channel)
            after, raw = await self._command(command, channel, "apply-program", settings)
            self._verify_program(command, program, after, raw)

    async def start(self, channel: int) -> None:
        """Start ``channel`` and verify that it is running."""
        command = f"start channel {channel}"
        async with self._lock:
            await self._check_channel(command, channel)
            after, _ = await self._command(command, channel, "start", {})
        state = self._state(after)
        if state not in _STARTED:
            raise DeviceError(
                self._pump_id, command, READBACK_MISMATCH, f"start accepted but state is {state}"
            )

    async def stop(self, channel: int) -> None:
        """Stop ``channel`` and verify that it is no longer delivering."""
        command = f"stop channel {channel}"
        async with self._lock:
            await self._check_channel(command, channel)
            after, _ = await self._command(command, channel, "stop", {})
        state = self._state(after)
        if state in _RUNNING:
            raise DeviceError(
                self._pump_id, command, READBACK_MISMATCH, f"stop accepted but state is {state}"
            )

    # --- transport ------------------------------------------------------------------------------
    async def _call(self, command: str, send: Send) -> ModbusPDU:
        """One request, one reply, holding the bus. Never retried here."""
        bus = self._bus()
        async with bus.lock:
            if not await bus.open(self.timeout_s):
                raise self._open_failed(command)
            try:
                response = await bus.request(send, self.timeout_s)
            except (TimeoutError, ConnectionException, ModbusIOException) as exc:
                raise NoResponse(self._pump_id, command, self.timeout_s) from exc
            except ModbusException as exc:
                raise ProtocolError(self._pump_id, command, b"", f"pymodbus: {exc}") from exc
        if response.isError():
            code = response.exception_code
            text = _EXCEPTIONS.get(code, "unknown exception code")
            raise DeviceError(
                self._pump_id, command, f"modbus-exception-{code}", f"{text} (Modbus exception {code})"
            )
        return response

    async def _read_block(self, command: str, block: Block, channel: int | None) -> list[int]:
        address = self.map.address(block, channel)
        what = f"{command}: FC04 {block.table} {address}+{block.length}"
        response = await self._call(
            what,
            lambda c: c.read_input_registers(address, count=block.length, device_id=self.unit_id),
        )
        registers = list(response.registers)
        if len(registers) != block.length:
            raise ProtocolError(
                self._pump_id, what, _wire(registers), f"{len(registers)} registers instead of {block.length}"
            )
        return registers

    async def _write(self, command: str, address: int, registers: list[int]) -> None:
        what = f"{command}: FC16 holding {address}+{len(registers)}"
        await self._call(what, lambda c: c.write_registers(address, registers, device_id=self.unit_id))

    async def _write_one(self, command: str, address: int, value: int) -> None:
        what = f"{command}: FC06 holding {address}"
        await self._call(what, lambda c: c.write_register(address, value, device_id=self.unit_id))

    # --- reading --------------------------------------------------------------------------------
    def _decode(
        self, command: str, block: Block, registers: list[int], names: tuple[str, ...] | None = None
    ) -> dict[str, FieldValue]:
        values: dict[str, FieldValue] = {}
        for field in self.map.fields_in(block):
            if names is not None and field.name not in names:
                continue
            offset = field.start - block.start
            try:
                values[field.name] = decode(field, registers[offset : offset + field.count])
            except ValueError as exc:
                raise ProtocolError(self._pump_id, command, _wire(registers), f"{field.key}: {exc}") from exc
        return values

    async def _read_system(self, command: str) -> dict[str, FieldValue]:
        block = self.map.block("system_status")
        registers = await self._read_block(command, block, None)
        # The probes first: with the wrong word or byte order every other value is garbage too.
        probes = self._decode(command, block, registers, ("endianness_probe", "float_probe"))
        for name in ("endianness_probe", "float_probe"):
            expected = self.map.field(f"system.{name}").fixed
            if probes[name] != expected:
                shown = f"{probes[name]:#010x}" if isinstance(probes[name], int) else repr(probes[name])
                raise ProtocolError(
                    self._pump_id,
                    command,
                    _wire(registers),
                    f"{name} reads {shown}, expected {expected!r}: the map {self.map.name} has the wrong "
                    "word or byte order for this pump",
                )
        values = self._decode(command, block, registers)
        channels = _integer(values, "channel_count")
        if not 1 <= channels <= self.map.max_channels:
            raise ProtocolError(
                self._pump_id,
                command,
                _wire(registers),
                f"channel count {channels} outside 1…{self.map.max_channels}",
            )
        return values

    async def _read_channel(self, command: str, channel: int) -> tuple[dict[str, FieldValue], list[int]]:
        block = self.map.block("channel_status")
        registers = await self._read_block(command, block, channel)
        return self._decode(command, block, registers), registers

    async def _beat(self, command: str) -> None:
        """Write a new heartbeat value (§6.1 HR 0): any new value will do, and a counter also
        shows in a capture how many polls ran. The first one continues from the pump's value."""
        field = self.map.field("system.heartbeat")
        address = self.map.address(field)
        if self._heartbeat is None:
            what = f"{command}: heartbeat: FC03 holding {address}"
            response = await self._call(
                what, lambda c: c.read_holding_registers(address, count=1, device_id=self.unit_id)
            )
            registers = list(response.registers)
            if len(registers) != 1:
                raise ProtocolError(
                    self._pump_id, what, _wire(registers), f"{len(registers)} registers, not 1"
                )
            self._heartbeat = registers[0]
        beat = (self._heartbeat + 1) % 0x10000
        await self._write_one(f"{command}: heartbeat", address, beat)
        self._heartbeat = beat

    async def _request_remote(self, command: str) -> None:
        """Ask for remote control (§6.1 HR 3 = 1). Whether the pump grants it shows in B+1 and,
        if not, in the command's result (rejected-no-remote)."""
        field = self.map.field("system.remote_request")
        await self._write_one(
            f"{command}: remote-control request", self.map.address(field), encode(field, 1)[0]
        )

    def _status(
        self, channel: int, values: Mapping[str, FieldValue], raw: list[int], battery: int | None
    ) -> ChannelStatus:
        command = f"read_status channel {channel}"
        vtbi_programmed = self._quantity(command, values, raw, "programmed_vtbi", "mL")
        drug = _text(values, "drug_name")
        return ChannelStatus(
            channel=channel,
            state=self._state(values),
            rate=self._quantity(command, values, raw, "rate", "mL/h"),
            # A programmed VTBI of 0 means a continuous infusion: there is no VTBI to report.
            vtbi=None
            if vtbi_programmed is not None and vtbi_programmed.value == 0
            else self._quantity(command, values, raw, "vtbi_remaining", "mL"),
            volume_infused=self._quantity(command, values, raw, "volume_infused", "mL"),
            drug=drug or None,
            concentration=self._concentration(command, values, raw, "concentration"),
            alarms=self.map.bits["alarm"].decode(_integer(values, "alarms")),
            battery_percent=battery,
            remote_control=bool(_integer(values, "remote_granted")),
        )

    def _state(self, values: Mapping[str, FieldValue]) -> ChannelState:
        name = self.map.enum("state").names.get(_integer(values, "state"))
        return ChannelState(name) if name is not None else ChannelState.UNKNOWN

    def _quantity(
        self, command: str, values: Mapping[str, FieldValue], raw: list[int], name: str, unit: str
    ) -> Quantity | None:
        value = values.get(name)
        if value is None:
            return None
        field = self.map.field(f"channel.{name}")
        if not isinstance(value, int | Decimal) or field.unit is None:
            raise ProtocolError(
                self._pump_id, command, _wire(raw), f"{field.key} is not a quantity: {value!r}"
            )
        return Quantity(Decimal(value), field.unit).to(unit)

    def _concentration(
        self, command: str, values: Mapping[str, FieldValue], raw: list[int], name: str
    ) -> Quantity | None:
        value = values.get(name)
        field = self.map.field(f"channel.{name}")
        code = _integer(values, field.unit_field or "")
        if value is None or code == 0:
            return None
        unit = self.map.enum("concentration_unit").names.get(code)
        if unit is None or not isinstance(value, int | Decimal):
            raise ProtocolError(
                self._pump_id, command, _wire(raw), f"{field.key}: {value!r} with unknown unit code {code}"
            )
        return Quantity(Decimal(value), unit)

    # --- commands -------------------------------------------------------------------------------
    async def _check_channel(self, command: str, channel: int) -> None:
        system = await self._read_system(command)
        count = _integer(system, "channel_count")
        if not 1 <= channel <= count:
            raise DriverError(self._pump_id, command, f"the pump has channels 1…{count}, not {channel}")

    def _program_registers(self, command: str, program: ChannelProgram) -> dict[str, FieldValue]:
        """The command-area values for ``program``, in the map's units. Checked before any I/O."""
        drug_text = program.extra.get("drug_id", "0")
        if not drug_text.isdigit():
            raise DriverError(
                self._pump_id, command, f"extra['drug_id'] must be a library id, not {drug_text!r}"
            )
        if program.drug and "drug_id" not in program.extra:
            raise DriverError(
                self._pump_id,
                command,
                "this pump selects a drug by library id: give it as ChannelProgram.extra['drug_id']",
            )
        settings: dict[str, FieldValue] = {
            "rate_setpoint": self._in_unit("rate_setpoint", program.rate),
            "vtbi_setpoint": self._in_unit("vtbi_setpoint", program.vtbi),
            "drug_id_setpoint": int(drug_text),
            "concentration_setpoint": None,
            "concentration_unit_setpoint": 0,
        }
        if program.concentration is not None:
            units = self.map.enum("concentration_unit").codes
            if program.concentration.unit not in units:
                raise QuantityError(
                    program.concentration.value,
                    program.concentration.unit,
                    f"register map {self.map.name} has no code for this unit; it knows {sorted(units)}",
                )
            settings["concentration_setpoint"] = program.concentration.value
            settings["concentration_unit_setpoint"] = units[program.concentration.unit]
        for name, value in settings.items():
            encode(self.map.field(f"channel.{name}"), value)  # QuantityError now, not half-way through
        return settings

    def _in_unit(self, name: str, quantity: Quantity) -> Decimal:
        unit = self.map.field(f"channel.{name}").unit
        return quantity.value if unit is None else quantity.to(unit).value

    async def _command(
        self, command: str, channel: int, name: str, settings: Mapping[str, FieldValue]
    ) -> tuple[dict[str, FieldValue], list[int]]:
        """Beat, request remote control if the channel lacks it (not for stop), write ``settings``
        plus sequence, command code and token in one FC16, then read the status block until the
        pump echoes the sequence. Returns that status (decoded and raw); raises DeviceError if the
        pump refused the command or never echoed it."""
        before, _ = await self._read_channel(command, channel)
        await self._beat(command)
        # A pump in comm loss has just withdrawn remote control; the heartbeat above ended the loss.
        needs_remote = name != "stop" and self.map.has_field("system.remote_request")
        if needs_remote and not _integer(before, "remote_granted"):
            await self._request_remote(command)
        # Continue from the pump's own counter: after a restart of the gateway, or a write whose
        # reply was lost, a sequence number of ours could otherwise equal one already executed.
        last = _integer(before, "last_sequence")
        sequence = last + 1 if last < 0xFFFF_FFFF else 1
        values: dict[str, FieldValue] = dict(settings)
        values["sequence"] = sequence
        values["command"] = self.map.enum("command").codes[name]
        values["token"] = self.map.field("channel.token").fixed
        fields = [self.map.field(f"channel.{n}") for n in values]
        start = min(self.map.address(f, channel) for f in fields)
        end = max(self.map.address(f, channel) + f.count for f in fields)
        registers = [0] * (end - start)  # reserved registers in between are written as 0
        for field in fields:
            offset = self.map.address(field, channel) - start
            registers[offset : offset + field.count] = encode(field, values[field.name])
        await self._write(command, start, registers)
        for attempt in range(_ACK_READS):
            after, raw = await self._read_channel(command, channel)
            if _integer(after, "last_sequence") == sequence:
                break
            if attempt + 1 < _ACK_READS:
                await asyncio.sleep(_ACK_PAUSE_S)
        else:
            raise DeviceError(
                self._pump_id,
                command,
                "not-acknowledged",
                f"{name} (sequence {sequence}) written, but the pump still reports sequence "
                f"{_integer(after, 'last_sequence')}",
            )
        code = _integer(after, "last_result")
        result = self.map.enum("result").names.get(code, f"unknown result {code}")
        if result != "ok":
            raise DeviceError(
                self._pump_id,
                command,
                result,
                f"{name} (sequence {sequence}) refused: {result} (result code {code})",
            )
        return after, raw

    def _verify_program(
        self, command: str, program: ChannelProgram, after: Mapping[str, FieldValue], raw: list[int]
    ) -> None:
        """Compare what the pump now holds with what was sent; raise DeviceError listing every
        difference."""
        held_rate = self._quantity(command, after, raw, "programmed_rate", "mL/h")
        held_vtbi = self._quantity(command, after, raw, "programmed_vtbi", "mL")
        held_concentration = self._concentration(command, after, raw, "concentration")
        checks: list[tuple[str, object, object]] = [
            ("rate", program.rate, held_rate),
            ("VTBI", program.vtbi, held_vtbi),
            ("drug id", int(program.extra.get("drug_id", "0")), _integer(after, "drug_id")),
            ("concentration", program.concentration, held_concentration),
        ]
        if program.drug:
            checks.append(("drug", program.drug, _text(after, "drug_name")))
        differences = [
            f"{what}: sent {_show(sent)}, pump holds {_show(held)}"
            for what, sent, held in checks
            if not _same(sent, held)
        ]
        if differences:
            raise DeviceError(self._pump_id, command, READBACK_MISMATCH, "; ".join(differences))


class ModbusTcpDriver(ModbusDriver):
    """A pump reached over Modbus TCP at ``host:port``, unit ``unit_id``. See :class:`ModbusDriver`."""

    protocol: ClassVar[str] = "modbus-tcp"

    def __init__(
        self,
        pump_id: str,
        host: str,
        port: int,
        *,
        unit_id: int = 1,
        register_map: RegisterMap | None = None,
        timeout_s: float = 1.0,
    ) -> None:
        super().__init__(pump_id, unit_id=unit_id, register_map=register_map, timeout_s=timeout_s)
        self.host = host
        self.port = port
        self._connection = _Bus(self._client_for, gap_s=0.0)  # TCP needs no silence between frames

    def _client_for(self, on_link: LinkCallback) -> ModbusBaseClient:
        # retries=0 and reconnect_delay=0: pymodbus neither repeats a request nor reconnects
        # behind our back; the caller's poll loop owns both decisions.
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=f"pump {self._pump_id}",
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
            trace_connect=on_link,
        )

    def _bus(self) -> _Bus:
        return self._connection

    def _open_failed(self, command: str) -> PumpGwError:
        return NoResponse(self._pump_id, command, self.timeout_s)

    async def close(self) -> None:
        """Close the TCP connection. Idempotent; :meth:`connect` may open it again."""
        self._connection.close()


class ModbusRtuDriver(ModbusDriver):
    """A pump reached over Modbus RTU on serial ``port`` (a device path or a pyserial URL) as unit
    ``unit_id`` (1…247), 8 data bits, ``parity`` ``"N"``, ``"E"`` or ``"O"``, ``stopbits`` 1 or 2.
    Pumps on one port share it (module docstring). See :class:`ModbusDriver`.

    Raises ValueError for settings no serial line can have.
    """

    protocol: ClassVar[str] = "modbus-rtu"

    def __init__(
        self,
        pump_id: str,
        port: str,
        *,
        baudrate: int = 19200,
        parity: str = "N",
        stopbits: int = 1,
        unit_id: int = 1,
        register_map: RegisterMap | None = None,
        timeout_s: float = 1.0,
    ) -> None:
        if not 1 <= unit_id <= 247:
            raise ValueError(f"an RTU unit id is 1…247 (Modbus over Serial Line §2.2), got {unit_id}")
        if parity not in _PARITIES:
            raise ValueError(f"parity must be one of {sorted(_PARITIES)}, got {parity!r}")
        if stopbits not in (1, 2):
            raise ValueError(f"stop bits must be 1 or 2, got {stopbits}")
        if baudrate <= 0:
            raise ValueError(f"baud rate must be positive, got {baudrate}")
        super().__init__(pump_id, unit_id=unit_id, register_map=register_map, timeout_s=timeout_s)
        self.port = port
        self.settings = SerialSettings(baudrate, parity, stopbits)
        self._line: _SerialLine | None = None

    @property
    def baudrate(self) -> int:
        return self.settings.baudrate

    def _bus(self) -> _Bus:
        if self._line is None:
            self._line = _join_line(self.port, self.settings, self._pump_id)
        return self._line

    def _open_failed(self, command: str) -> PumpGwError:
        line = self._line
        if line is None:  # closed meanwhile; nothing to diagnose
            return DriverError(self._pump_id, command, f"serial port {self.port} is closed")
        return _serial_open_error(self._pump_id, command, line)

    async def close(self) -> None:
        """Leave the serial line; the last driver on it closes the port. Idempotent; :meth:`connect`
        joins it again."""
        line, self._line = self._line, None
        if line is not None:
            _leave_line(line, self._pump_id)


def _same(sent: object, held: object) -> bool:
    if isinstance(sent, Quantity) and isinstance(held, Quantity):
        return sent.unit == held.unit and sent.value == held.value  # Decimal: 5.50 == 5.5
    return sent == held


def _show(value: object) -> str:
    return "nothing" if value is None else str(value)


def _integer(values: Mapping[str, FieldValue], name: str) -> int:
    value = values.get(name)
    if not isinstance(value, int):
        raise TypeError(f"register map field {name} decoded to {value!r}, not an integer")
    return value


def _text(values: Mapping[str, FieldValue], name: str) -> str:
    value = values.get(name)
    if not isinstance(value, str):
        raise TypeError(f"register map field {name} decoded to {value!r}, not text")
    return value


def _wire(registers: list[int]) -> bytes:
    """Registers as the bytes that travelled (big-endian per register, as Modbus sends them)."""
    return b"".join(r.to_bytes(2, "big") for r in registers)
