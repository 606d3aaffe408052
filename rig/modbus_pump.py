"""The rig's emulated multi-channel Modbus infusion pump: a sans-I/O device behind a register map.

Requests come in as (address, count or values, now) and replies go out as register lists or a
Modbus exception code; no sockets, no asyncio, no pymodbus (:mod:`pumpgw.rig.modbus_server` is the
thin asyncio layer). Every address comes from the :class:`~pumpgw.drivers.modbus_map.RegisterMap`,
so the emulator and the driver cannot disagree about where a value lives, only about what it means.

Input registers are rendered from the physics (:class:`~pumpgw.rig.physics.InfusionChannel`)
advanced to ``now`` on every request; holding registers are plain memory. A write that covers a
channel's ``command`` register with a ``sequence`` number the channel has not executed yet runs the
command, and the channel echoes the sequence and the result in its status block
(reference/pump-protocols.md §6.1: "the pump acts when it sees B+72 with a new B+70–71"). Writing
the same sequence again does nothing, which makes a retried command harmless.

Implemented commands: apply-program, start, stop. Any other code answers ``unsupported-command``.

Time passes only through :meth:`EmulatedModbusPump.poll`, which every read and write calls first
with its ``now``; call it directly to let time pass without traffic. Host supervision, from the
system holding registers of §6.1, is enforced there:

* **Heartbeat and comm loss** (HR 0, HR 1, HR 2). While the comm timeout (HR 1, ms) is not 0, the
  host must write a *new* value to the heartbeat (HR 0) at least that often; the timer runs from
  the last change of the heartbeat or the last write of HR 1, whichever is later (writing the same
  heartbeat value again is not a heartbeat). When it runs out the pump declares comm loss *at that
  deadline*, however late the next request comes: every channel gets the ``comm-loss`` alarm,
  remote control is withdrawn (HR 3 is reset to 0), and with policy 1 (``stop-and-alarm``, HR 2)
  every delivering channel stops at the deadline; with policy 0 (``keep-running``) the channels
  keep running under local control. The alarm stays until the host is heard again (a new
  heartbeat value); a channel that was stopped stays stopped. The driver reads status before it
  writes its heartbeat, so a poll reports a loss that happened since the previous one.
* **Remote control** (HR 3, B+1). The pump grants remote control (B+1 = 1 on every channel) while
  HR 3 = 1, its local policy allows it (``allow_remote``, the pump's own setting, like a keypad
  lock) and it is not in comm loss. Without the grant every command but stop is refused with
  result ``rejected-no-remote``; stop is always obeyed, so stopping can never be refused.
* A write of a value HR 2 or HR 3 cannot hold (a policy code the map does not name, a request other
  than 0 or 1) is refused with exception 3 (illegal data value) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from enum import IntEnum
from typing import Final

from pumpgw.drivers.base import ChannelState
from pumpgw.drivers.modbus_map import Block, Field, FieldValue, RegisterMap, Table, decode, encode
from pumpgw.gateway.errors import ConfigError
from pumpgw.gateway.quantity import Quantity

from .physics import InfusionChannel

_MAX_REGISTERS: Final = 125  # per read (Modbus Application Protocol v1.1b3 §6.4)
_MAX_WRITE: Final = 123  # per FC16 write (same document, §6.12)
_SECONDS_PER_HOUR: Final = Decimal(3600)
# Result names this emulator answers with; the map must have a code for each.
_RESULTS: Final = frozenset(
    {"ok", "rejected-range", "rejected-state", "rejected-no-remote", "bad-token", "unsupported-command"}
)
# What the pump does on comm loss, by name in the map's comm_loss_policy table (§6.1 HR 2).
_KEEP_RUNNING: Final = "keep-running"
_POLICIES: Final = frozenset({_KEEP_RUNNING, "stop-and-alarm"})
_COMM_LOSS: Final = "comm-loss"
_DELIVERING: Final = frozenset({ChannelState.INFUSING, ChannelState.KVO})
# States the physics can be in; the map's state table must have a code for each.
_PHYSICS_STATES: Final = frozenset(
    {ChannelState.IDLE, ChannelState.INFUSING, ChannelState.PAUSED, ChannelState.KVO, ChannelState.COMPLETE}
)


class ExceptionCode(IntEnum):
    """Modbus exception codes (Modbus Application Protocol v1.1b3 §7) this pump answers with."""

    ILLEGAL_FUNCTION = 1
    ILLEGAL_ADDRESS = 2
    ILLEGAL_VALUE = 3
    DEVICE_FAILURE = 4


@dataclass
class _ChannelExtras:
    """What a channel holds beyond the physics."""

    drug_id: int = 0
    last_sequence: int = 0
    last_result: int = 0


@dataclass(frozen=True, slots=True)
class _Instance:
    """One block placed at its absolute addresses (a channel block exists once per channel)."""

    block: Block
    channel: int | None
    start: int
    fields: tuple[tuple[int, Field], ...]  # (absolute address, field)

    @property
    def end(self) -> int:
        return self.start + self.block.length


class EmulatedModbusPump:
    """A multi-channel infusion pump that speaks the registers of ``register_map``.

    ``allow_remote`` is the pump's local policy on remote control (see the module docstring); it
    is an attribute too, so a test can change it as a nurse would at the pump.

    Raises ConfigError if the map has an input field this emulator cannot render, or lacks a state,
    result, alarm or policy name it needs; ValueError if ``channels`` is outside the map's
    1…max_channels; QuantityError if an identity string does not fit its register field.
    """

    def __init__(
        self,
        register_map: RegisterMap,
        *,
        manufacturer: str,
        model: str,
        serial: str,
        firmware: str,
        library_version: int,
        library_name: str,
        channels: int,
        drug_library: Mapping[int, str] | None = None,
        battery_percent: int = 100,
        allow_remote: bool = True,
    ) -> None:
        if not 1 <= channels <= register_map.max_channels:
            raise ValueError(f"channels must be 1…{register_map.max_channels} for map {register_map.name}")
        self.map = register_map
        self.drug_library: Mapping[int, str] = dict(drug_library or {})
        self.battery_percent = battery_percent
        self.allow_remote = allow_remote
        self.comm_losses = 0  # how many times the host went silent for the comm timeout
        self._comm_lost = False
        self._heard_at: float | None = None  # when the host last showed it is alive (see poll)
        self._identity: dict[str, FieldValue] = {
            "manufacturer": manufacturer,
            "model": model,
            "serial": serial,
            "firmware": firmware,
            "library_version": library_version,
            "library_name": library_name,
        }
        self._channels = [InfusionChannel(number=n) for n in range(1, channels + 1)]
        self._epoch: float | None = None
        self._now = 0.0
        self._system: dict[str, Callable[[], FieldValue]] = self._system_renderers()
        self._channel: dict[str, Callable[[int], FieldValue]] = self._channel_renderers()
        self._check_map()
        self._extras = [_ChannelExtras(last_result=self._result("ok")) for _ in range(channels)]
        self._instances = self._place_blocks(channels)
        self._holding: dict[int, int] = {}
        for instance in self._instances:
            if instance.block.table == "holding":
                self._holding.update(dict.fromkeys(range(instance.start, instance.end), 0))
                for address, field in instance.fields:
                    initial = encode(field, None) if field.type == "float32" else [0] * field.count
                    self._holding.update(zip(range(address, address + field.count), initial, strict=True))
            else:
                self._render(instance)  # fails now, not on the first read, if a value does not fit

    # --- public ---------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return len(self._channels)

    def channel(self, number: int) -> InfusionChannel:
        """Channel ``number`` (1-based). Raises ValueError for a channel the pump does not have."""
        if not 1 <= number <= len(self._channels):
            raise ValueError(f"channel {number} is outside 1…{len(self._channels)}")
        return self._channels[number - 1]

    @property
    def library_version(self) -> int:
        """The drug library version the pump reports (IR 40-41)."""
        version = self._identity["library_version"]
        return version if isinstance(version, int) else 0

    @library_version.setter
    def library_version(self, version: int) -> None:
        """Load another drug library version (as a pharmacy update, or an old one, would). Raises
        QuantityError if the map's register cannot hold it."""
        encode(self.map.field("system.library_version"), version)
        self._identity["library_version"] = version

    @property
    def comm_lost(self) -> bool:
        """True from a comm-loss deadline until the host writes a new heartbeat."""
        return self._comm_lost

    @property
    def remote_granted(self) -> bool:
        """Whether the pump accepts remote commands other than stop now (B+1)."""
        return self._remote_granted()

    def poll(self, now: float) -> None:
        """Let time pass up to monotonic ``now``: advance the physics and, if the host's comm
        timeout ran out on the way, declare comm loss at its deadline (see the module docstring).
        Every read and write calls this first. A ``now`` earlier than one already seen changes
        nothing."""
        if self._epoch is None:
            self._epoch = now
        deadline = self._comm_deadline()
        if deadline is not None and deadline <= now:
            self._advance(deadline)
            self._lose_comm()
        self._advance(now)

    def address_ranges(self, table: Table) -> tuple[range, ...]:
        """The address ranges this pump answers in ``table``, one per block (and channel)."""
        return tuple(range(i.start, i.end) for i in self._instances if i.block.table == table)

    def read_input(self, address: int, count: int, now: float) -> list[int] | ExceptionCode:
        """FC04: ``count`` input registers from ``address``, rendered at monotonic time ``now``.
        ILLEGAL_VALUE for a count outside 1…125, ILLEGAL_ADDRESS unless the range lies in one block."""
        return self._read("input", address, count, now)

    def read_holding(self, address: int, count: int, now: float) -> list[int] | ExceptionCode:
        """FC03: ``count`` holding registers from ``address`` (what was last written, or the
        initial 0 / NaN). Same exception codes as :meth:`read_input`."""
        return self._read("holding", address, count, now)

    def write_holding(self, address: int, values: list[int], now: float) -> ExceptionCode | None:
        """FC06/FC16: store ``values`` from ``address``; run a channel command if the write covers
        its command register with a new sequence number. ``None`` means the write was accepted.

        ILLEGAL_VALUE for an empty or oversized write, a value outside 0…65535, or a system setting
        the pump cannot hold (a comm-loss policy the map does not name, a remote-control request
        other than 0 or 1); ILLEGAL_ADDRESS if the range is not inside one holding block, touches a
        read-only field, or splits a multi-register field (32-bit values must be written whole, in
        one FC16: §6.1).
        """
        self.poll(now)
        if not 1 <= len(values) <= _MAX_WRITE or any(not 0 <= v <= 0xFFFF for v in values):
            return ExceptionCode.ILLEGAL_VALUE
        instance = self._find("holding", address, len(values))
        if instance is None:
            return ExceptionCode.ILLEGAL_ADDRESS
        end = address + len(values)
        written = dict(zip(range(address, end), values, strict=True))
        touched: dict[str, FieldValue] = {}
        for start, field in instance.fields:
            if start < end and address < start + field.count:
                if not field.writable or start < address or end < start + field.count:
                    return ExceptionCode.ILLEGAL_ADDRESS
                registers = [written[a] for a in range(start, start + field.count)]
                if instance.channel is None and not self._holdable(field, registers):
                    return ExceptionCode.ILLEGAL_VALUE
                # System settings were just checked to decode; channel fields are read when executed.
                touched[field.name] = decode(field, registers) if instance.channel is None else None
        beat_before = self._control("heartbeat")
        self._holding.update(written)
        if instance.channel is None:
            if "heartbeat" in touched and touched["heartbeat"] != beat_before:
                self._heard(self._now)
            if touched.get("comm_timeout_ms"):
                self._heard_at = self._now  # the timer starts when the timeout is set
        elif "command" in touched:
            self._execute(instance.channel)
        return None

    # --- reading --------------------------------------------------------------------------------
    def _read(self, table: Table, address: int, count: int, now: float) -> list[int] | ExceptionCode:
        self.poll(now)
        if not 1 <= count <= _MAX_REGISTERS:
            return ExceptionCode.ILLEGAL_VALUE
        instance = self._find(table, address, count)
        if instance is None:
            return ExceptionCode.ILLEGAL_ADDRESS
        if table == "holding":
            return [self._holding[a] for a in range(address, address + count)]
        registers = self._render(instance)
        offset = address - instance.start
        return registers[offset : offset + count]

    def _advance(self, now: float) -> None:
        self._now = max(self._now, now)
        for channel in self._channels:
            channel.advance(now)

    # --- host supervision (§6.1 HR 0-3) -----------------------------------------------------------
    def _control(self, name: str) -> int:
        """System holding register ``name`` as an integer; 0 if the map does not have it."""
        key = f"system.{name}"
        if not self.map.has_field(key):
            return 0
        field = self.map.field(key)
        value = decode(field, self._holding_of(field, None))
        return value if isinstance(value, int) else 0

    def _holdable(self, field: Field, registers: list[int]) -> bool:
        """Whether a system setting may take this value (module docstring)."""
        try:
            value = decode(field, registers)
        except ValueError:
            return False
        if field.name == "remote_request":
            return value in (0, 1)
        if field.enum is not None:
            return isinstance(value, int) and value in self.map.enum(field.enum).names
        return True

    def _comm_deadline(self) -> float | None:
        timeout_ms = self._control("comm_timeout_ms")
        if self._comm_lost or self._heard_at is None or timeout_ms == 0:
            return None
        return self._heard_at + timeout_ms / 1000

    def _lose_comm(self) -> None:
        self._comm_lost = True
        self.comm_losses += 1
        keep_running = True  # a map without HR 2 has §6.1's default, 0
        if self.map.has_field("system.comm_loss_policy"):
            field = self.map.field("system.comm_loss_policy")
            names = self.map.enum(field.enum).names if field.enum is not None else {}
            # Only named codes can be written (_holdable); should another appear, stop: fail safe.
            keep_running = names.get(self._control("comm_loss_policy")) == _KEEP_RUNNING
        for channel in self._channels:
            # An advisory alarm: it changes no state by itself, so it goes straight into the set
            # the status block renders (and leaves it the same way, in _heard).
            channel.alarms.add(_COMM_LOSS)
            if not keep_running and channel.state in _DELIVERING:
                channel.stop()
        if self.map.has_field("system.remote_request"):
            field = self.map.field("system.remote_request")
            address = self.map.address(field)
            self._holding.update(zip(range(address, address + field.count), encode(field, 0), strict=True))

    def _heard(self, now: float) -> None:
        self._heard_at = now
        if self._comm_lost:
            self._comm_lost = False
            for channel in self._channels:
                channel.alarms.discard(_COMM_LOSS)

    def _find(self, table: Table, address: int, count: int) -> _Instance | None:
        for instance in self._instances:
            if (
                instance.block.table == table
                and instance.start <= address
                and address + count <= instance.end
            ):
                return instance
        return None

    def _render(self, instance: _Instance) -> list[int]:
        registers = [0] * instance.block.length  # reserved registers read as 0
        for address, field in instance.fields:
            if instance.channel is None:
                value = self._system[field.name]()
            else:
                value = self._channel[field.name](instance.channel)
            # exact=False: a measured volume such as 1234.567 mL is sent as the nearest FLOAT32,
            # as a real pump would; the reader sees it to 6 significant digits.
            offset = address - instance.start
            registers[offset : offset + field.count] = encode(field, value, exact=False)
        return registers

    def _system_renderers(self) -> dict[str, Callable[[], FieldValue]]:
        m = self.map
        fixed = {name: m.field(f"system.{name}").fixed for name in ("endianness_probe", "float_probe")}
        renderers: dict[str, Callable[[], FieldValue]] = {
            "endianness_probe": lambda: fixed["endianness_probe"],
            "float_probe": lambda: fixed["float_probe"],
            "map_version": lambda: m.version,
            "channel_count": lambda: len(self._channels),
            "battery_percent": lambda: self.battery_percent,
            "uptime": lambda: int(self._now - self._epoch) if self._epoch is not None else 0,
        }
        for name in self._identity:
            renderers[name] = self._identity_of(name)
        return renderers

    def _identity_of(self, name: str) -> Callable[[], FieldValue]:
        return lambda: self._identity[name]

    def _channel_renderers(self) -> dict[str, Callable[[int], FieldValue]]:
        def ch(n: int) -> InfusionChannel:
            return self._channels[n - 1]

        def extras(n: int) -> _ChannelExtras:
            return self._extras[n - 1]

        return {
            "state": lambda n: self.map.enum("state").codes[ch(n).state.value],
            "remote_granted": lambda n: int(self._remote_granted()),
            "alarms": lambda n: self.map.bits["alarm"].encode(ch(n).alarms),
            "priority": lambda n: self._priority(ch(n)),
            "programmed_rate": lambda n: self._in("channel.programmed_rate", ch(n).rate_ml_h, "mL/h"),
            "rate": lambda n: self._in("channel.rate", ch(n).current_rate_ml_h, "mL/h"),
            "vtbi_remaining": lambda n: self._in("channel.vtbi_remaining", ch(n).vtbi_remaining_ml, "mL"),
            "volume_infused": lambda n: self._in("channel.volume_infused", ch(n).infused_ml, "mL"),
            "programmed_vtbi": lambda n: self._in("channel.programmed_vtbi", ch(n).vtbi_ml, "mL"),
            "time_remaining": lambda n: self._in("channel.time_remaining", self._seconds_left(ch(n)), "s"),
            "drug_id": lambda n: extras(n).drug_id,
            "drug_name": lambda n: ch(n).drug,
            "concentration": lambda n: ch(n).concentration,
            "concentration_unit": lambda n: self._unit_code(ch(n).concentration_unit),
            "last_sequence": lambda n: extras(n).last_sequence,
            "last_result": lambda n: extras(n).last_result,
        }

    def _in(self, key: str, value: Decimal, unit: str) -> Decimal:
        """``value`` (in the physics' ``unit``) in the unit the map gives the field."""
        target = self.map.field(key).unit
        return value if target in (None, unit) else Quantity(value, unit).to(target).value

    def _remote_granted(self) -> bool:
        if not self.allow_remote or self._comm_lost:
            return False
        return not self.map.has_field("system.remote_request") or self._control("remote_request") == 1

    def _priority(self, channel: InfusionChannel) -> int:
        if not channel.alarms or "priority" not in self.map.enums:
            return 0
        codes = self.map.enum("priority").codes
        return max(codes[self.map.alarm_priority[alarm]] for alarm in channel.alarms)

    @staticmethod
    def _seconds_left(channel: InfusionChannel) -> Decimal:
        rate = channel.current_rate_ml_h
        if channel.state is not ChannelState.INFUSING or channel.vtbi_ml <= 0 or rate <= 0:
            return Decimal(0)
        seconds = channel.vtbi_remaining_ml * _SECONDS_PER_HOUR / rate
        return seconds.to_integral_value(rounding=ROUND_CEILING)

    def _unit_code(self, unit: str) -> int:
        return 0 if not unit else self.map.enum("concentration_unit").codes[unit]

    # --- commands -------------------------------------------------------------------------------
    def _holding_of(self, field: Field, channel: int | None) -> list[int]:
        address = self.map.address(field, channel)
        return [self._holding[a] for a in range(address, address + field.count)]

    def _setpoint(self, name: str, channel: int) -> FieldValue:
        field = self.map.field(f"channel.{name}")
        return decode(field, self._holding_of(field, channel))

    def _result(self, name: str) -> int:
        return self.map.enum("result").codes[name]

    def _execute(self, channel: int) -> None:
        extras = self._extras[channel - 1]
        sequence = self._setpoint("sequence", channel)
        if sequence == extras.last_sequence:
            return  # already executed: a repeated write is not a second command
        code = self._setpoint("command", channel)
        name = self.map.enum("command").names.get(code) if isinstance(code, int) else None
        token = self._setpoint("token", channel)
        handlers: dict[str, Callable[[int], str]] = {
            "apply-program": self._apply_program,
            "start": self._start,
            "stop": self._stop,
        }
        if name is None or name not in handlers:
            result = "unsupported-command"
        elif name != "stop" and not self._remote_granted():
            result = "rejected-no-remote"
        elif name in self.map.token_required and token != self.map.field("channel.token").fixed:
            result = "bad-token"
        else:
            result = handlers[name](channel)
        extras.last_sequence = int(sequence) if isinstance(sequence, int) else 0
        extras.last_result = self._result(result)

    def _apply_program(self, channel: int) -> str:
        physics = self.channel(channel)
        try:
            rate = self._setpoint("rate_setpoint", channel)
            vtbi = self._setpoint("vtbi_setpoint", channel)
            drug_id = self._setpoint("drug_id_setpoint", channel)
            concentration = self._setpoint("concentration_setpoint", channel)
            unit_code = self._setpoint("concentration_unit_setpoint", channel)
        except ValueError:
            return "rejected-range"  # an infinite FLOAT32: no number at all
        if not isinstance(rate, Decimal) or not isinstance(vtbi, Decimal) or rate < 0 or vtbi < 0:
            return "rejected-range"  # NaN ("not set") or negative
        if not isinstance(drug_id, int) or (drug_id != 0 and drug_id not in self.drug_library):
            return "rejected-range"
        conc: Decimal | None = None
        unit = ""
        if concentration is not None:
            units = self.map.enum("concentration_unit").names
            if not isinstance(concentration, Decimal) or concentration <= 0:
                return "rejected-range"
            if not isinstance(unit_code, int) or unit_code not in units:
                return "rejected-range"  # a concentration without a known unit is no concentration
            conc, unit = concentration, units[unit_code]
        if physics.state in (ChannelState.INFUSING, ChannelState.BOLUS):
            return "rejected-state"  # titration while running comes with a later issue
        physics.program(
            self._from("channel.rate_setpoint", rate, "mL/h"),
            self._from("channel.vtbi_setpoint", vtbi, "mL"),
            drug=self.drug_library.get(drug_id, ""),
            concentration=conc,
            concentration_unit=unit,
        )
        self._extras[channel - 1].drug_id = drug_id
        return "ok"

    def _from(self, key: str, value: Decimal, unit: str) -> Decimal:
        """``value`` (in the map's unit for the field) in the physics' ``unit``."""
        source = self.map.field(key).unit
        return value if source in (None, unit) else Quantity(value, source or unit).to(unit).value

    def _start(self, channel: int) -> str:
        physics = self.channel(channel)
        if physics.rate_ml_h <= 0:
            return "rejected-state"  # nothing to start: no rate programmed
        physics.start()
        return "ok"

    def _stop(self, channel: int) -> str:
        self.channel(channel).stop()
        return "ok"

    # --- set-up ---------------------------------------------------------------------------------
    def _place_blocks(self, channels: int) -> list[_Instance]:
        instances: list[_Instance] = []
        for block in self.map.blocks.values():
            for channel in [None] if block.scope == "system" else range(1, channels + 1):
                fields = tuple((self.map.address(f, channel), f) for f in self.map.fields_in(block))
                instances.append(_Instance(block, channel, self.map.address(block, channel), fields))
        return instances

    def _check_map(self) -> None:
        m = self.map
        for field in m.fields.values():
            known = self._system if field.scope == "system" else self._channel
            if field.table == "input" and field.name not in known:
                raise ConfigError(
                    m.source, field.key, field.name, f"a field the emulator renders: {sorted(known)}"
                )
        lacking = sorted(_RESULTS - set(m.enum("result").codes))
        if lacking:
            raise ConfigError(
                m.source, "enums.result", dict(m.enum("result").names), f"entries named {lacking}"
            )
        states = sorted(s.value for s in _PHYSICS_STATES - {ChannelState(v) for v in m.enum("state").codes})
        if states:
            raise ConfigError(m.source, "enums.state", dict(m.enum("state").names), f"entries named {states}")
        if m.has_field("system.comm_timeout_ms") and _COMM_LOSS not in m.bits["alarm"].bits:
            raise ConfigError(
                m.source, "bits.alarm", dict(m.bits["alarm"].names), f"an alarm named {_COMM_LOSS!r}"
            )
        if m.has_field("system.comm_loss_policy"):
            policy = m.field("system.comm_loss_policy")
            names = set(m.enum(policy.enum).codes) if policy.enum is not None else set()
            if not names >= _POLICIES:
                raise ConfigError(
                    m.source,
                    "system.comm_loss_policy.enum",
                    policy.enum,
                    f"a table naming {sorted(_POLICIES)}",
                )
