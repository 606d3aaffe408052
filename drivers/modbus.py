"""The generic Modbus TCP pump driver: one class for every pump whose register map is a TOML file.

Everything pump-specific (addresses, types, word and byte order, units, code tables) comes from a
:class:`~pumpgw.drivers.modbus_map.RegisterMap`; this module knows only the protocol of
reference/pump-protocols.md §6.1: read-only status in input registers, one status block per channel
read in one FC04, and commands written as a whole command area in one FC16 with a new sequence
number and the safety token, which the pump echoes with a result code.

Rules this driver keeps (DESIGN.md, "The safety core" and "Drivers and the rig"):

- One asyncio lock per driver, i.e. per TCP connection: a command's write and its read-back are
  never interleaved with a poll.
- pymodbus's own retries are off (``retries=0``) and so is its automatic reconnect: only this code
  decides whether to try again, and it never re-sends a write after a timeout; the next command
  reads the pump's last sequence number first, so it cannot be mistaken for the lost one.
- Every write is verified by reading back: the echoed sequence and result, then the values the pump
  now holds. A difference is a DeviceError, never silently accepted.

Errors: silence, refused or dropped connections and pymodbus I/O errors become ``NoResponse``; a
Modbus exception response or a refused command becomes ``DeviceError``; registers that cannot be
what the map says (bad probes, undecodable values, unknown codes) become ``ProtocolError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Final

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from pumpgw.gateway.errors import DeviceError, DriverError, NoResponse, ProtocolError, QuantityError
from pumpgw.gateway.quantity import Quantity

from .base import Capabilities, ChannelProgram, ChannelState, ChannelStatus, PumpIdentity
from .modbus_map import Block, FieldValue, RegisterMap, decode, encode, load_builtin_map

DEFAULT_MAP: Final = "rig-multichannel-v1"
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


class ModbusTcpDriver:
    """A pump reached over Modbus TCP at ``host:port``, unit ``unit_id``, with ``register_map``
    (default: the rig's reference pump). Implements :class:`~pumpgw.drivers.base.PumpDriver`.

    Every method raises NoResponse, DeviceError or ProtocolError as described in the module
    docstring; ``program`` also raises QuantityError for a value the map cannot carry exactly and
    DriverError for a channel the pump does not have or a drug without a library id.
    """

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
        self._pump_id = pump_id
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.map = register_map if register_map is not None else load_builtin_map(DEFAULT_MAP)
        self.timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | None = None
        self._heartbeat = 0
        self._deadline: asyncio.Timeout | None = None  # of the request in flight, if any

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
        """Open the TCP connection (no-op if open). Raises NoResponse if it cannot be opened."""
        async with self._lock:
            await self._connected("connect")

    async def close(self) -> None:
        """Close the TCP connection. Idempotent; :meth:`connect` may open it again."""
        if self._client is not None:
            self._client.close()

    async def identify(self) -> PumpIdentity:
        """Read the system block once: check both probes, then report who the pump is.
        Raises ProtocolError if a probe is wrong (the map's word or byte order is not the pump's)."""
        async with self._lock:
            values = await self._read_system("identify")
        version = _integer(values, "library_version")
        return PumpIdentity(
            protocol="modbus-tcp",
            manufacturer=_text(values, "manufacturer"),
            model=_text(values, "model"),
            serial=_text(values, "serial"),
            firmware=_text(values, "firmware"),
            library_version=str(version),
            channels=_integer(values, "channel_count"),
        )

    async def read_status(self) -> tuple[ChannelStatus, ...]:
        """Write the host heartbeat, read the system block (probes, channel count, battery), then
        each channel's status block in one FC04 apiece."""
        async with self._lock:
            await self._beat()
            system = await self._read_system("read_status")
            battery = system.get("battery_percent")
            statuses = []
            for channel in range(1, _integer(system, "channel_count") + 1):
                values, raw = await self._read_channel("read_status", channel)
                statuses.append(
                    self._status(channel, values, raw, battery if isinstance(battery, int) else None)
                )
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
                self._pump_id, command, "readback-mismatch", f"start accepted but state is {state}"
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
                self._pump_id, command, "readback-mismatch", f"stop accepted but state is {state}"
            )

    # --- transport ------------------------------------------------------------------------------
    async def _connected(self, command: str) -> AsyncModbusTcpClient:
        if self._client is None:
            # retries=0 and reconnect_delay=0: pymodbus neither repeats a request nor reconnects
            # behind our back; the caller's poll loop owns both decisions.
            self._client = AsyncModbusTcpClient(
                self.host,
                port=self.port,
                name=f"pump {self._pump_id}",
                timeout=self.timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_connect=self._link_changed,
            )
        if self._client.connected:
            return self._client
        try:
            async with asyncio.timeout(self.timeout_s + _GUARD_S):
                opened = await self._client.connect()
        except TimeoutError:
            opened = False
        if not opened:
            raise NoResponse(self._pump_id, command, self.timeout_s)
        return self._client

    async def _call(
        self, command: str, send: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        """One request, one reply. Never retried here."""
        client = await self._connected(command)
        try:
            async with asyncio.timeout(self.timeout_s + _GUARD_S) as self._deadline:
                response = await send(client)
        except (TimeoutError, ConnectionException, ModbusIOException) as exc:
            raise NoResponse(self._pump_id, command, self.timeout_s) from exc
        except ModbusException as exc:
            raise ProtocolError(self._pump_id, command, b"", f"pymodbus: {exc}") from exc
        finally:
            self._deadline = None
        if response.isError():
            code = response.exception_code
            text = _EXCEPTIONS.get(code, "unknown exception code")
            raise DeviceError(
                self._pump_id, command, f"modbus-exception-{code}", f"{text} (Modbus exception {code})"
            )
        return response

    def _link_changed(self, connected: bool) -> None:
        """pymodbus's connect/disconnect callback. pymodbus notices a dropped connection at once
        but lets the request in flight wait for its whole timeout; end that wait now instead."""
        if not connected and self._deadline is not None:
            self._deadline.reschedule(asyncio.get_running_loop().time())

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

    async def _beat(self) -> None:
        # Any new value will do (§6.1 HR 0); a counter also shows in a capture how many polls ran.
        self._heartbeat = (self._heartbeat + 1) % 0x10000
        field = self.map.field("system.heartbeat")
        address = self.map.address(field)
        what = f"heartbeat: FC06 holding {address}"
        await self._call(what, lambda c: c.write_register(address, self._heartbeat, device_id=self.unit_id))

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
        """Write ``settings`` plus sequence, command code and token in one FC16, then read the
        status block until the pump echoes the sequence. Returns that status (decoded and raw);
        raises DeviceError
        if the pump refused the command or never echoed it."""
        before, _ = await self._read_channel(command, channel)
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
            raise DeviceError(self._pump_id, command, "readback-mismatch", "; ".join(differences))


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
