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
Remote-control grant is reported (B+1 follows HR 3) but not enforced, and the heartbeat and
comm-loss registers are stored but not acted on; a later issue adds both.
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
_RESULTS: Final = frozenset({"ok", "rejected-range", "rejected-state", "bad-token", "unsupported-command"})
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

    Raises ConfigError if the map has an input field this emulator cannot render, or lacks a state
    or result code it needs; ValueError if ``channels`` is outside the map's 1…max_channels;
    QuantityError if an identity string does not fit its register field.
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
    ) -> None:
        if not 1 <= channels <= register_map.max_channels:
            raise ValueError(f"channels must be 1…{register_map.max_channels} for map {register_map.name}")
        self.map = register_map
        self.drug_library: Mapping[int, str] = dict(drug_library or {})
        self.battery_percent = battery_percent
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

        ILLEGAL_VALUE for an empty or oversized write or a value outside 0…65535; ILLEGAL_ADDRESS
        if the range is not inside one holding block, touches a read-only field, or splits a
        multi-register field (32-bit values must be written whole, in one FC16: §6.1).
        """
        if not 1 <= len(values) <= _MAX_WRITE or any(not 0 <= v <= 0xFFFF for v in values):
            return ExceptionCode.ILLEGAL_VALUE
        self._tick(now)
        instance = self._find("holding", address, len(values))
        if instance is None:
            return ExceptionCode.ILLEGAL_ADDRESS
        end = address + len(values)
        touched: set[str] = set()
        for start, field in instance.fields:
            if start < end and address < start + field.count:
                if not field.writable or start < address or end < start + field.count:
                    return ExceptionCode.ILLEGAL_ADDRESS
                touched.add(field.name)
        self._holding.update(zip(range(address, end), values, strict=True))
        if instance.channel is not None and "command" in touched:
            self._execute(instance.channel)
        return None

    # --- reading --------------------------------------------------------------------------------
    def _read(self, table: Table, address: int, count: int, now: float) -> list[int] | ExceptionCode:
        if not 1 <= count <= _MAX_REGISTERS:
            return ExceptionCode.ILLEGAL_VALUE
        self._tick(now)
        instance = self._find(table, address, count)
        if instance is None:
            return ExceptionCode.ILLEGAL_ADDRESS
        if table == "holding":
            return [self._holding[a] for a in range(address, address + count)]
        registers = self._render(instance)
        offset = address - instance.start
        return registers[offset : offset + count]

    def _tick(self, now: float) -> None:
        if self._epoch is None:
            self._epoch = now
        self._now = max(self._now, now)
        for channel in self._channels:
            channel.advance(now)

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
        for name, value in self._identity.items():
            renderers[name] = _constant(value)
        return renderers

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
        if not self.map.has_field("system.remote_request"):
            return True
        field = self.map.field("system.remote_request")
        return decode(field, self._holding_of(field, None)) == 1

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
        elif name in self.map.token_required and token != self.map.field("channel.token").fixed:
            result = "bad-token"
        else:
            result = handlers[name](channel)
        extras.last_sequence = int(sequence) if isinstance(sequence, int) else 0
        extras.last_result = self._result(result)

    def _apply_program(self, channel: int) -> str:
        physics = self.channel(channel)
        rate = self._setpoint("rate_setpoint", channel)
        vtbi = self._setpoint("vtbi_setpoint", channel)
        drug_id = self._setpoint("drug_id_setpoint", channel)
        concentration = self._setpoint("concentration_setpoint", channel)
        unit_code = self._setpoint("concentration_unit_setpoint", channel)
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


def _constant(value: FieldValue) -> Callable[[], FieldValue]:
    return lambda: value
