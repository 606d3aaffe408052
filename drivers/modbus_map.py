"""Modbus register maps as data: a TOML file per pump model, loaded into frozen dataclasses, and the
register codec that turns a field's value into 16-bit registers and back.

Pure: no I/O except reading the map file, no pymodbus. The driver (:mod:`pumpgw.drivers.modbus`)
and the emulated pump (:mod:`pumpgw.rig.modbus_pump`) both take every address from a
:class:`RegisterMap`, so an address exists once, in the file.

A map file has ``[map]`` (name, version, default word/byte order, channel geometry), ``[blocks.*]``
(the address ranges the pump answers), ``[system.*]`` and ``[channel.*]`` fields, ``[enums.*]``
and ``[bits.*]`` code tables, ``[alarm_priority]`` and ``[commands]``. The built-in map
``drivers/maps/rig-multichannel-v1.toml`` documents each key; ``reference/pump-protocols.md`` §6.1
is where its layout comes from.

Loading raises :class:`~pumpgw.gateway.errors.ConfigError` naming the file, the dotted key
(``channel.rate.type``), the bad value and what was expected. Every problem a map can have is found
at load time (overlapping registers, unknown types, missing fields, dangling enum names), never when
a pump is being programmed.
"""

from __future__ import annotations

import itertools
import math
import re
import struct
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_EVEN, Context, Decimal
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, TypeAlias, cast, get_args

from pumpgw.gateway.errors import ConfigError, QuantityError
from pumpgw.gateway.quantity import dimension_of, known_units

from .base import ChannelState

Scope: TypeAlias = Literal["system", "channel"]
Table: TypeAlias = Literal["input", "holding"]
RegisterType: TypeAlias = Literal["uint16", "uint32", "int32", "float32", "string"]
Order: TypeAlias = Literal["big", "little"]

#: What :func:`decode` returns: ``int`` for unscaled integers, ``Decimal`` for FLOAT32 and scaled
#: integers, ``str`` for strings, ``None`` for a FLOAT32 NaN ("not set", pump-protocols.md §6.1).
FieldValue: TypeAlias = int | Decimal | str | None

_TABLES: Final = frozenset(get_args(Table))
_TYPES: Final = frozenset(get_args(RegisterType))
_ORDERS: Final = frozenset(get_args(Order))
_INTS: Final[frozenset[RegisterType]] = frozenset({"uint16", "uint32", "int32"})
_NUMBERS: Final[frozenset[RegisterType]] = _INTS | {"float32"}
_STRINGS: Final[frozenset[RegisterType]] = frozenset({"string"})
_STRUCT: Final[dict[str, str]] = {"uint16": ">H", "uint32": ">I", "int32": ">i", "float32": ">f"}
_RANGE: Final[dict[str, tuple[int, int]]] = {
    "uint16": (0, 0xFFFF),
    "uint32": (0, 0xFFFF_FFFF),
    "int32": (-0x8000_0000, 0x7FFF_FFFF),
}
# A Modbus read carries at most 125 registers (Modbus Application Protocol v1.1b3 §6.4), so no
# string can be longer than 250 characters and no block longer than 125 registers.
_MAX_READ: Final = 125
_ADDRESS_SPACE: Final = 0x10000

# FLOAT32 has a 24-bit significand: 7.22 decimal digits. Every decimal number of at most 6
# significant digits survives decimal → FLOAT32 → decimal unchanged (C's FLT_DIG = 6), 7 digits do
# not always. So a FLOAT32 read from a pump is rounded to 6 significant digits: a rate programmed as
# 0.1 mL/h reads back as 0.1, not 0.100000001490116, and a value written must have at most 6
# significant digits to be read back as itself (see encode(exact=True)).
FLOAT32_DIGITS: Final = 6
# Wide enough to hold any FLOAT32 (up to 3.4E+38, down to 1.4E-45) without rounding.
_WIDE: Final = Context(prec=80, rounding=ROUND_HALF_EVEN)
_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")
_MAP_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

#: The built-in map of the bench rig's reference pump: what a driver or a config entry uses
#: when none is named.
DEFAULT_MAP: Final = "rig-multichannel-v1"


# --- the map ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """An address range the pump answers. ``start`` is a PDU address (system scope) or an offset
    from the channel base B (channel scope). Registers in a block that no field uses read as 0."""

    name: str
    scope: Scope
    table: Table
    start: int
    length: int

    @property
    def end(self) -> int:
        """One past the last register."""
        return self.start + self.length


@dataclass(frozen=True, slots=True)
class Field:
    """One value in the map. ``start`` is a PDU address (system scope) or an offset from B
    (channel scope); ``length`` is in characters and only for strings."""

    name: str
    scope: Scope
    table: Table
    start: int
    type: RegisterType
    length: int | None = None
    word_order: Order = "big"
    byte_order: Order = "big"
    scale: Decimal = Decimal(1)
    unit: str | None = None
    unit_field: str | None = None
    enum: str | None = None
    bits: str | None = None
    fixed: int | Decimal | str | None = None
    writable: bool = False
    description: str = ""

    @property
    def key(self) -> str:
        """The dotted key of this field in the map file (``channel.rate``)."""
        return f"{self.scope}.{self.name}"

    @property
    def count(self) -> int:
        """Number of 16-bit registers the field occupies."""
        if self.type == "string":
            return ((self.length or 0) + 1) // 2
        return 1 if self.type == "uint16" else 2

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass(frozen=True, slots=True)
class EnumTable:
    """Codes of one enumerated register and their names (``names[1] == "infusing"``)."""

    name: str
    names: Mapping[int, str]
    codes: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class BitTable:
    """Bit numbers (0 = least significant) of a bitmap register and their names."""

    name: str
    names: Mapping[int, str]
    bits: Mapping[str, int]

    def decode(self, bitmap: int) -> tuple[str, ...]:
        """The names of the set bits, lowest bit first. A set bit the table does not name is
        reported as ``"bit-<n>"``: an alarm the map does not know is still an alarm, never dropped."""
        return tuple(
            self.names.get(bit, f"bit-{bit}") for bit in range(bitmap.bit_length()) if bitmap >> bit & 1
        )

    def encode(self, names: Iterable[str]) -> int:
        """The bitmap with the named bits set. Raises KeyError for a name the table lacks."""
        bitmap = 0
        for name in names:
            bitmap |= 1 << self.bits[name]
        return bitmap


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A validated register map. Build it with :func:`load_map`, :func:`parse_map` or
    :func:`load_builtin_map`; everything in it has been checked against everything else."""

    name: str
    version: int
    source: str
    word_order: Order
    byte_order: Order
    channel_base: int
    channel_stride: int
    max_channels: int
    blocks: Mapping[str, Block]
    fields: Mapping[str, Field]  # by dotted key: "system.heartbeat", "channel.rate"
    enums: Mapping[str, EnumTable]
    bits: Mapping[str, BitTable]
    alarm_priority: Mapping[str, str]  # alarm name -> name in enums.priority
    token_required: frozenset[str]  # command names that need channel.token

    def field(self, key: str) -> Field:
        """The field with dotted key ``key``. Raises KeyError naming the map."""
        try:
            return self.fields[key]
        except KeyError:
            raise KeyError(f"register map {self.name} has no field {key!r}") from None

    def has_field(self, key: str) -> bool:
        return key in self.fields

    def block(self, name: str) -> Block:
        """The block called ``name``. Raises KeyError naming the map."""
        try:
            return self.blocks[name]
        except KeyError:
            raise KeyError(f"register map {self.name} has no block {name!r}") from None

    def enum(self, name: str) -> EnumTable:
        try:
            return self.enums[name]
        except KeyError:
            raise KeyError(f"register map {self.name} has no enum table {name!r}") from None

    def base(self, channel: int) -> int:
        """B, the first address of channel ``channel`` (1-based). Raises ValueError outside
        1…max_channels."""
        if not 1 <= channel <= self.max_channels:
            raise ValueError(f"channel {channel} is outside 1…{self.max_channels} of map {self.name}")
        return self.channel_base + (channel - 1) * self.channel_stride

    def address(self, item: Field | Block, channel: int | None = None) -> int:
        """The PDU address of a field or block: as is for system scope, B + offset for channel
        scope. Raises ValueError if ``channel`` is given for a system item or missing for a channel
        item."""
        if item.scope == "system":
            if channel is not None:
                raise ValueError(f"{item.name} is a system item; it has no channel")
            return item.start
        if channel is None:
            raise ValueError(f"{item.name} is a channel item; say which channel")
        return self.base(channel) + item.start

    def fields_in(self, block: Block) -> tuple[Field, ...]:
        """The fields inside ``block``, by address."""
        return tuple(
            sorted(
                (
                    f
                    for f in self.fields.values()
                    if f.scope == block.scope
                    and f.table == block.table
                    and block.start <= f.start < block.end
                ),
                key=lambda f: f.start,
            )
        )


# --- what the generic driver needs from a map ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Need:
    block: str  # the block the driver reads or writes the field through
    types: frozenset[RegisterType]
    enum: str | None = None
    bits: str | None = None
    dimension: str | None = None
    fixed: bool = False
    unit_field: bool = False


#: Fields the generic Modbus driver reads or writes; a map without them cannot drive a pump.
REQUIRED_FIELDS: Final[Mapping[str, _Need]] = MappingProxyType(
    {
        "system.endianness_probe": _Need("system_status", frozenset({"uint32"}), fixed=True),
        "system.float_probe": _Need("system_status", frozenset({"float32"}), fixed=True),
        "system.channel_count": _Need("system_status", _INTS),
        "system.manufacturer": _Need("system_status", _STRINGS),
        "system.model": _Need("system_status", _STRINGS),
        "system.serial": _Need("system_status", _STRINGS),
        "system.firmware": _Need("system_status", _STRINGS),
        "system.library_version": _Need("system_status", _INTS),
        "system.heartbeat": _Need("system_control", frozenset({"uint16"})),
        "channel.state": _Need("channel_status", _INTS, enum="state"),
        "channel.remote_granted": _Need("channel_status", _INTS),
        "channel.alarms": _Need("channel_status", _INTS, bits="alarm"),
        "channel.programmed_rate": _Need("channel_status", _NUMBERS, dimension="volume/time"),
        "channel.rate": _Need("channel_status", _NUMBERS, dimension="volume/time"),
        "channel.vtbi_remaining": _Need("channel_status", _NUMBERS, dimension="volume"),
        "channel.volume_infused": _Need("channel_status", _NUMBERS, dimension="volume"),
        "channel.programmed_vtbi": _Need("channel_status", _NUMBERS, dimension="volume"),
        "channel.drug_id": _Need("channel_status", _INTS),
        "channel.drug_name": _Need("channel_status", _STRINGS),
        "channel.concentration": _Need("channel_status", _NUMBERS, unit_field=True),
        "channel.concentration_unit": _Need("channel_status", _INTS, enum="concentration_unit"),
        "channel.last_sequence": _Need("channel_status", _INTS),
        "channel.last_result": _Need("channel_status", _INTS, enum="result"),
        "channel.rate_setpoint": _Need("channel_command", _NUMBERS, dimension="volume/time"),
        "channel.vtbi_setpoint": _Need("channel_command", _NUMBERS, dimension="volume"),
        "channel.drug_id_setpoint": _Need("channel_command", _INTS),
        "channel.concentration_setpoint": _Need("channel_command", _NUMBERS, unit_field=True),
        "channel.concentration_unit_setpoint": _Need("channel_command", _INTS, enum="concentration_unit"),
        "channel.sequence": _Need("channel_command", frozenset({"uint32"})),
        "channel.command": _Need("channel_command", _INTS, enum="command"),
        "channel.token": _Need("channel_command", _INTS, fixed=True),
    }
)
#: Blocks the driver reads in one request each, with their scope and table.
REQUIRED_BLOCKS: Final[Mapping[str, tuple[Scope, Table]]] = MappingProxyType(
    {
        "system_status": ("system", "input"),
        "system_control": ("system", "holding"),
        "channel_status": ("channel", "input"),
        "channel_command": ("channel", "holding"),
    }
)
#: Names the driver sends or expects in the enum tables.
REQUIRED_ENUM_NAMES: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "command": frozenset({"apply-program", "start", "stop"}),
        "result": frozenset({"ok"}),
    }
)
_STATE_NAMES: Final = frozenset(s.value for s in ChannelState) - {ChannelState.UNKNOWN.value}

_TOP_KEYS: Final = frozenset(
    {"map", "blocks", "system", "channel", "enums", "bits", "alarm_priority", "commands"}
)
_MAP_KEYS: Final = frozenset(
    {"name", "version", "word_order", "byte_order", "channel_base", "channel_stride", "max_channels"}
)
_BLOCK_KEYS: Final = frozenset({"scope", "table", "start", "length"})
_FIELD_KEYS: Final = frozenset(
    {
        "table",
        "address",
        "offset",
        "type",
        "length",
        "word_order",
        "byte_order",
        "scale",
        "unit",
        "unit_field",
        "enum",
        "bits",
        "fixed",
        "writable",
        "description",
    }
)


# --- loading ---------------------------------------------------------------------------------------


def load_map(path: str | Path) -> RegisterMap:
    """Load and validate the map file at ``path``. Raises ConfigError (unreadable file, bad TOML,
    or any inconsistency, naming the key)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "(file)", source, f"a readable UTF-8 TOML file ({exc})") from exc
    return parse_map(text, source)


def builtin_map_names() -> tuple[str, ...]:
    """Names of the maps shipped in ``pumpgw.drivers`` (``maps/<name>.toml``)."""
    folder = resources.files("pumpgw.drivers").joinpath("maps")
    return tuple(sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")))


def load_builtin_map(name: str) -> RegisterMap:
    """Load a map shipped with the package, e.g. ``load_builtin_map("rig-multichannel-v1")``.
    Raises ConfigError for a name that is not shipped (listing those that are)."""
    resource = resources.files("pumpgw.drivers").joinpath("maps").joinpath(f"{name}.toml")
    if not _MAP_NAME.match(name) or not resource.is_file():
        raise ConfigError(
            "pumpgw.drivers:maps", "map", name, f"one of the built-in maps {list(builtin_map_names())}"
        )
    return parse_map(resource.read_text(encoding="utf-8"), f"pumpgw.drivers:maps/{name}.toml")


def parse_map(text: str, source: str) -> RegisterMap:
    """Parse and validate map text; ``source`` names it in errors. Raises ConfigError."""
    try:
        # Floats parse as Decimal: a scale of 0.1 or a probe of 1234.5 is exact, as written.
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(file)", str(exc), "valid TOML") from exc
    return _Loader(source).load(document)


class _Loader:
    """Validates one document; every method raises ConfigError naming the dotted key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: object, expected: str) -> ConfigError:
        return ConfigError(self.source, key, value, expected)

    # - typed getters -
    def table(
        self, parent: Mapping[str, object], name: str, key: str, *, required: bool = True
    ) -> dict[str, object]:
        value = parent.get(name)
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, value, "a table" if value is not None else "a table (it is missing)")
        return cast(dict[str, object], value)

    def only(self, table: Mapping[str, object], allowed: frozenset[str], key: str) -> None:
        for name in table:
            if name not in allowed:
                raise self.fail(f"{key}.{name}" if key else name, table[name], f"one of {sorted(allowed)}")

    def integer(self, table: Mapping[str, object], name: str, key: str, low: int, high: int) -> int:
        value = table.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{key}.{name}", value, f"an integer {low}…{high}")
        if not low <= value <= high:
            raise self.fail(f"{key}.{name}", value, f"an integer {low}…{high}")
        return value

    def text(
        self, table: Mapping[str, object], name: str, key: str, choices: Iterable[str] | None = None
    ) -> str:
        value = table.get(name)
        options = sorted(choices) if choices is not None else None
        if not isinstance(value, str) or not value or (options is not None and value not in options):
            raise self.fail(f"{key}.{name}", value, f"one of {options}" if options else "a non-empty string")
        return value

    # - the document -
    def load(self, doc: Mapping[str, object]) -> RegisterMap:
        self.only(doc, _TOP_KEYS, "")
        head = self.table(doc, "map", "map")
        self.only(head, _MAP_KEYS, "map")
        name = self.text(head, "name", "map")
        version = self.integer(head, "version", "map", 0, 0xFFFF)
        word_order = cast(Order, self.text(head, "word_order", "map", _ORDERS))
        byte_order = cast(Order, self.text(head, "byte_order", "map", _ORDERS))
        channel_base = self.integer(head, "channel_base", "map", 1, _ADDRESS_SPACE - 1)
        channel_stride = self.integer(head, "channel_stride", "map", 1, _ADDRESS_SPACE - 1)
        max_channels = self.integer(head, "max_channels", "map", 1, 255)

        enums = self.enums(self.table(doc, "enums", "enums"))
        bits = self.bit_tables(self.table(doc, "bits", "bits", required=False))
        blocks = self.blocks(self.table(doc, "blocks", "blocks"))
        fields: dict[str, Field] = {}
        for scope in ("system", "channel"):
            section = self.table(doc, scope, scope)
            for field_name in section:
                spec = self.table(section, field_name, f"{scope}.{field_name}")
                field = self.field(scope, field_name, spec, word_order, byte_order, enums, bits)
                fields[field.key] = field
        for field in fields.values():
            self.check_field_links(field, fields, enums)
        self.check_layout(blocks, fields, channel_base, channel_stride, max_channels)
        self.check_required(blocks, fields, enums)
        alarm_priority = self.alarm_priority(doc, bits, enums)
        token_required = self.commands(doc, enums)
        return RegisterMap(
            name=name,
            version=version,
            source=self.source,
            word_order=word_order,
            byte_order=byte_order,
            channel_base=channel_base,
            channel_stride=channel_stride,
            max_channels=max_channels,
            blocks=MappingProxyType(blocks),
            fields=MappingProxyType(fields),
            enums=MappingProxyType(enums),
            bits=MappingProxyType(bits),
            alarm_priority=MappingProxyType(alarm_priority),
            token_required=token_required,
        )

    def code_table(self, table: Mapping[str, object], key: str, low: int, high: int) -> dict[int, str]:
        out: dict[int, str] = {}
        seen: dict[str, str] = {}
        for code_text, value in table.items():
            entry = f"{key}.{code_text}"
            if not code_text.isdigit() or not low <= int(code_text) <= high:
                raise self.fail(entry, code_text, f"a decimal code {low}…{high} as the key")
            if not isinstance(value, str) or not value:
                raise self.fail(entry, value, "a non-empty name")
            if value in seen:
                raise self.fail(entry, value, f"a name not already used by {key}.{seen[value]}")
            seen[value] = code_text
            out[int(code_text)] = value
        if not out:
            raise self.fail(key, table, "at least one entry")
        return out

    def enums(self, section: Mapping[str, object]) -> dict[str, EnumTable]:
        tables: dict[str, EnumTable] = {}
        for name in section:
            key = f"enums.{name}"
            names = self.code_table(self.table(section, name, key), key, 0, 0xFFFF)
            tables[name] = EnumTable(
                name, MappingProxyType(names), MappingProxyType({v: k for k, v in names.items()})
            )
        if "state" in tables:
            for code, state in tables["state"].names.items():
                if state not in _STATE_NAMES:
                    raise self.fail(
                        f"enums.state.{code}", state, f"a channel state, one of {sorted(_STATE_NAMES)}"
                    )
        return tables

    def bit_tables(self, section: Mapping[str, object]) -> dict[str, BitTable]:
        tables: dict[str, BitTable] = {}
        for name in section:
            key = f"bits.{name}"
            names = self.code_table(self.table(section, name, key), key, 0, 31)
            tables[name] = BitTable(
                name, MappingProxyType(names), MappingProxyType({v: k for k, v in names.items()})
            )
        return tables

    def blocks(self, section: Mapping[str, object]) -> dict[str, Block]:
        blocks: dict[str, Block] = {}
        for name in section:
            key = f"blocks.{name}"
            spec = self.table(section, name, key)
            self.only(spec, _BLOCK_KEYS, key)
            blocks[name] = Block(
                name=name,
                scope=cast(Scope, self.text(spec, "scope", key, ("system", "channel"))),
                table=cast(Table, self.text(spec, "table", key, _TABLES)),
                start=self.integer(spec, "start", key, 0, _ADDRESS_SPACE - 1),
                length=self.integer(spec, "length", key, 1, _MAX_READ),
            )
        return blocks

    def field(
        self,
        scope: Scope,
        name: str,
        spec: Mapping[str, object],
        word_order: Order,
        byte_order: Order,
        enums: Mapping[str, EnumTable],
        bits: Mapping[str, BitTable],
    ) -> Field:
        key = f"{scope}.{name}"
        if not _NAME.match(name):
            raise self.fail(key, name, "a field name of lower-case letters, digits and _")
        self.only(spec, _FIELD_KEYS, key)
        place, other = ("address", "offset") if scope == "system" else ("offset", "address")
        if other in spec:
            why = (
                "system fields give their PDU address"
                if scope == "system"
                else "channel fields give their offset from B"
            )
            raise self.fail(f"{key}.{other}", spec[other], f"'{place}' instead ({why})")
        start = self.integer(spec, place, key, 0, _ADDRESS_SPACE - 1)
        table = cast(Table, self.text(spec, "table", key, _TABLES))
        kind = cast(RegisterType, self.text(spec, "type", key, _TYPES))

        length: int | None = None
        if kind == "string":
            length = self.integer(spec, "length", key, 1, 2 * _MAX_READ)
        elif "length" in spec:
            raise self.fail(f"{key}.length", spec["length"], "no length (only strings have one)")
        if "word_order" in spec and kind not in ("uint32", "int32", "float32"):
            raise self.fail(
                f"{key}.word_order", spec["word_order"], "no word_order (only 32-bit types have words)"
            )
        if "word_order" in spec:
            word_order = cast(Order, self.text(spec, "word_order", key, _ORDERS))
        if "byte_order" in spec:
            byte_order = cast(Order, self.text(spec, "byte_order", key, _ORDERS))

        scale = Decimal(1)
        if "scale" in spec:
            raw_scale = spec["scale"]
            if kind == "string":
                raise self.fail(f"{key}.scale", raw_scale, "no scale (strings are not numbers)")
            if isinstance(raw_scale, bool) or not isinstance(raw_scale, int | Decimal) or not raw_scale > 0:
                raise self.fail(f"{key}.scale", raw_scale, "a positive number")
            scale = Decimal(raw_scale)

        unit: str | None = None
        if "unit" in spec:
            if kind == "string":
                raise self.fail(f"{key}.unit", spec["unit"], "no unit (strings are not quantities)")
            unit = self.text(spec, "unit", key, known_units())
        unit_field: str | None = None
        if "unit_field" in spec:
            if unit is not None:
                raise self.fail(
                    f"{key}.unit_field", spec["unit_field"], "either unit or unit_field, not both"
                )
            unit_field = self.text(spec, "unit_field", key)
        enum: str | None = None
        if "enum" in spec:
            if kind not in _INTS:
                raise self.fail(f"{key}.enum", spec["enum"], "no enum (only integer types carry codes)")
            enum = self.text(spec, "enum", key, enums)
        bit_table: str | None = None
        if "bits" in spec:
            if kind not in ("uint16", "uint32"):
                raise self.fail(f"{key}.bits", spec["bits"], "no bits (only uint16/uint32 are bitmaps)")
            bit_table = self.text(spec, "bits", key, bits)
            width = 16 if kind == "uint16" else 32
            highest = max(bits[bit_table].names)
            if highest >= width:
                raise self.fail(
                    f"{key}.bits", bit_table, f"a bit table with bits below {width} (it has bit {highest})"
                )

        writable = spec.get("writable", False)
        if not isinstance(writable, bool):
            raise self.fail(f"{key}.writable", writable, "true or false")
        if writable and table != "holding":
            raise self.fail(f"{key}.writable", writable, "false (only holding registers can be written)")
        description = spec.get("description", "")
        if not isinstance(description, str):
            raise self.fail(f"{key}.description", description, "a string")

        field = Field(
            name=name,
            scope=scope,
            table=table,
            start=start,
            type=kind,
            length=length,
            word_order=word_order,
            byte_order=byte_order,
            scale=scale,
            unit=unit,
            unit_field=unit_field,
            enum=enum,
            bits=bit_table,
            writable=writable,
            description=description,
        )
        if "fixed" not in spec:
            return field
        fixed = spec["fixed"]
        if isinstance(fixed, bool) or not isinstance(fixed, int | Decimal | str):
            raise self.fail(f"{key}.fixed", fixed, f"a value of type {kind}")
        try:
            encode(field, fixed)
        except QuantityError as exc:
            raise self.fail(f"{key}.fixed", fixed, f"a value of type {kind} ({exc.reason})") from exc
        return replace(field, fixed=fixed)

    def check_field_links(
        self, field: Field, fields: Mapping[str, Field], enums: Mapping[str, EnumTable]
    ) -> None:
        if field.unit_field is None:
            return
        key = f"{field.key}.unit_field"
        target = fields.get(f"{field.scope}.{field.unit_field}")
        if target is None:
            raise self.fail(key, field.unit_field, f"the name of another {field.scope} field")
        if target.enum is None:
            raise self.fail(key, field.unit_field, "a field with an enum of UCUM units")
        for code, unit in enums[target.enum].names.items():
            if unit not in known_units():
                raise self.fail(f"enums.{target.enum}.{code}", unit, "a UCUM unit the gateway knows")

    def check_layout(
        self,
        blocks: Mapping[str, Block],
        fields: Mapping[str, Field],
        channel_base: int,
        channel_stride: int,
        max_channels: int,
    ) -> None:
        # Blocks of one scope and table must not overlap; channel blocks must fit in the stride
        # (or channel n runs into channel n+1) and the last channel must fit the address space.
        for a_name, a in blocks.items():
            for b_name, b in blocks.items():
                if (
                    a_name < b_name
                    and (a.scope, a.table) == (b.scope, b.table)
                    and a.start < b.end
                    and b.start < a.end
                ):
                    raise self.fail(
                        f"blocks.{b_name}", _span(b), f"registers not used by blocks.{a_name} ({_span(a)})"
                    )
            if a.scope == "channel":
                if a.end > channel_stride:
                    raise self.fail(
                        f"blocks.{a_name}.length",
                        a.length,
                        f"a block ending within channel_stride {channel_stride}",
                    )
                last = channel_base + (max_channels - 1) * channel_stride + a.end
                if last > _ADDRESS_SPACE:
                    raise self.fail(
                        "map.max_channels",
                        max_channels,
                        f"few enough channels to end by 65535 (ends at {last - 1})",
                    )
            elif a.end > channel_base:
                raise self.fail(
                    f"blocks.{a_name}",
                    _span(a),
                    f"a system block ending below map.channel_base {channel_base}",
                )
        # Fields of one scope and table must not overlap, and each must lie inside one block.
        ordered = sorted(fields.values(), key=lambda f: (f.scope, f.table, f.start))
        for previous, current in itertools.pairwise(ordered):
            same = (previous.scope, previous.table) == (current.scope, current.table)
            if same and current.start < previous.end:
                raise self.fail(
                    current.key, _span(current), f"registers not used by {previous.key} ({_span(previous)})"
                )
        for field in fields.values():
            if not any(
                b.scope == field.scope
                and b.table == field.table
                and b.start <= field.start
                and field.end <= b.end
                for b in blocks.values()
            ):
                raise self.fail(
                    field.key, _span(field), f"registers inside one {field.scope} {field.table} block"
                )

    def check_required(
        self, blocks: Mapping[str, Block], fields: Mapping[str, Field], enums: Mapping[str, EnumTable]
    ) -> None:
        for name, (scope, table) in REQUIRED_BLOCKS.items():
            block = blocks.get(name)
            if block is None or (block.scope, block.table) != (scope, table):
                raise self.fail(
                    f"blocks.{name}", None if block is None else _span(block), f"a {scope} {table} block"
                )
        missing = sorted(set(REQUIRED_FIELDS) - set(fields))
        if missing:
            raise self.fail(missing[0], None, f"a field; the Modbus driver needs all of {missing}")
        for key, need in REQUIRED_FIELDS.items():
            field = fields[key]
            block = blocks[need.block]
            inside = block.start <= field.start and field.end <= block.end
            if (field.scope, field.table) != (block.scope, block.table) or not inside:
                raise self.fail(key, _span(field), f"registers inside blocks.{need.block} ({_span(block)})")
            if field.type not in need.types:
                raise self.fail(f"{key}.type", field.type, f"one of {sorted(need.types)}")
            if need.enum is not None and field.enum != need.enum:
                raise self.fail(f"{key}.enum", field.enum, need.enum)
            if need.bits is not None and field.bits != need.bits:
                raise self.fail(f"{key}.bits", field.bits, need.bits)
            if need.types <= _INTS and field.scale != 1:
                raise self.fail(
                    f"{key}.scale", field.scale, "no scale (the driver reads this as a plain integer)"
                )
            if need.fixed and field.fixed is None:
                raise self.fail(f"{key}.fixed", None, "a fixed value")
            if need.unit_field and field.unit_field is None:
                raise self.fail(f"{key}.unit_field", None, "the field holding this value's unit code")
            if need.dimension is not None and (
                field.unit is None or dimension_of(field.unit) != need.dimension
            ):
                raise self.fail(f"{key}.unit", field.unit, f"a UCUM unit of {need.dimension}")
            if block.table == "holding" and not field.writable:
                raise self.fail(f"{key}.writable", field.writable, "true (the driver writes it)")
        # start and stop write sequence, command and token in one FC16 without touching the
        # setpoints, so nothing else may lie between them.
        trio = [fields[f"channel.{n}"] for n in ("sequence", "command", "token")]
        low, high = min(f.start for f in trio), max(f.end for f in trio)
        for field in fields.values():
            if field.scope == "channel" and field not in trio and low < field.end and field.start < high:
                raise self.fail(
                    field.key,
                    _span(field),
                    "registers outside channel.sequence … channel.token (written as one)",
                )
        for enum_name, names in REQUIRED_ENUM_NAMES.items():
            lacking = sorted(names - set(enums[enum_name].codes))
            if lacking:
                raise self.fail(
                    f"enums.{enum_name}", dict(enums[enum_name].names), f"entries named {lacking}"
                )

    def alarm_priority(
        self, doc: Mapping[str, object], bits: Mapping[str, BitTable], enums: Mapping[str, EnumTable]
    ) -> dict[str, str]:
        section = self.table(doc, "alarm_priority", "alarm_priority", required=False)
        if not section:
            return {}
        if "priority" not in enums:
            raise self.fail("alarm_priority", dict(section), "an [enums.priority] table to name priorities")
        alarms = bits["alarm"].bits
        for alarm in section:
            if alarm not in alarms:
                raise self.fail(
                    f"alarm_priority.{alarm}", alarm, f"an alarm named in bits.alarm {sorted(alarms)}"
                )
            self.text(section, alarm, "alarm_priority", enums["priority"].codes)
        lacking = sorted(set(alarms) - set(section))
        if lacking:
            raise self.fail(
                f"alarm_priority.{lacking[0]}", None, f"a priority for every alarm (missing {lacking})"
            )
        return {alarm: cast(str, level) for alarm, level in section.items()}

    def commands(self, doc: Mapping[str, object], enums: Mapping[str, EnumTable]) -> frozenset[str]:
        section = self.table(doc, "commands", "commands", required=False)
        self.only(section, frozenset({"token_required"}), "commands")
        names = section.get("token_required", [])
        if not isinstance(names, list):
            raise self.fail("commands.token_required", names, "a list of command names")
        for index, name in enumerate(names):
            if name not in enums["command"].codes:
                raise self.fail(
                    f"commands.token_required[{index}]",
                    name,
                    f"a name in enums.command {sorted(enums['command'].codes)}",
                )
        return frozenset(cast(list[str], names))


def _span(item: Field | Block) -> str:
    last = item.end - 1
    where = f"{item.start}–{last}" if last != item.start else f"{item.start}"
    prefix = "B+" if item.scope == "channel" else ""
    return f"{item.table} registers {prefix}{where}"


# --- the codec -------------------------------------------------------------------------------------


def encode(field: Field, value: FieldValue, *, exact: bool = True) -> list[int]:
    """The registers (16-bit unsigned ints, in address order) that hold ``value`` in ``field``.

    Numbers are ``int`` or ``Decimal`` (never float) in the field's unit; ``value / scale`` must be
    a whole number for integer types. ``None`` writes NaN, "not set", and only fits FLOAT32. With
    ``exact`` (the default, for anything a driver sends) a FLOAT32 value must read back as itself,
    i.e. have at most 6 significant digits; ``exact=False`` rounds to the nearest FLOAT32, which is
    what a pump does when it reports a measured value.

    Raises QuantityError naming the field for a value of the wrong kind, out of range, not a
    multiple of the scale, not representable, or a string that is not ASCII or too long.
    """
    unit = field.unit or ""
    if field.type == "string":
        if not isinstance(value, str):
            raise QuantityError(value, unit, f"{field.key} holds text, not {type(value).__name__}")
        try:
            data = value.encode("ascii")
        except UnicodeEncodeError:
            raise QuantityError(value, unit, f"{field.key} holds ASCII text only") from None
        if len(data) > (field.length or 0) or b"\0" in data:
            raise QuantityError(value, unit, f"{field.key} holds at most {field.length} characters, no NUL")
        return _registers(data.ljust(2 * field.count, b"\0"), field.byte_order)
    if field.type == "float32":
        raw: int | float = _float_raw(field, value, exact)
    else:
        raw = _int_raw(field, value)
    words = _registers(struct.pack(_STRUCT[field.type], raw), field.byte_order)
    if field.word_order == "little":
        words.reverse()
    return words


def decode(field: Field, registers: Sequence[int]) -> FieldValue:
    """The value ``registers`` hold in ``field`` (see :data:`FieldValue`).

    FLOAT32 is rounded to 6 significant digits (see FLOAT32_DIGITS) and NaN means ``None``;
    strings end at the first NUL. Raises ValueError if the registers cannot be that field: wrong
    count, a register outside 0…65535, non-ASCII text, or an infinite FLOAT32.
    """
    if len(registers) != field.count:
        raise ValueError(f"{field.key} takes {field.count} registers, got {len(registers)}")
    if any(not 0 <= r <= 0xFFFF for r in registers):
        raise ValueError(f"{field.key}: registers must be 0…65535, got {list(registers)}")
    if field.type == "string":
        data = _bytes(registers, field.byte_order)[: field.length]
        return data.split(b"\0", 1)[0].decode("ascii")
    words = list(registers)
    if field.word_order == "little":
        words.reverse()
    (raw,) = struct.unpack(_STRUCT[field.type], _bytes(words, field.byte_order))
    if field.type == "float32":
        if math.isnan(raw):
            return None
        if math.isinf(raw):
            raise ValueError(f"{field.key}: FLOAT32 is infinite")
        number = float32_to_decimal(raw)
    elif field.scale == 1:
        return int(raw)
    else:
        number = Decimal(int(raw))
    return number if field.scale == 1 else number * field.scale


def float32_to_decimal(value: float) -> Decimal:
    """A FLOAT32 value as the Decimal of at most 6 significant digits it stands for.

    ``Decimal(value)`` is the exact binary value (a FLOAT32 widened to a Python float loses
    nothing); rounding that once, half-even, avoids the double rounding of going through
    ``repr``. Trailing zeros are dropped without switching to exponent notation (100, not 1E+2).
    """
    exact = Decimal(value)
    if exact.is_zero():
        return Decimal(0)
    quantum = Decimal(1).scaleb(exact.adjusted() - FLOAT32_DIGITS + 1, _WIDE)
    rounded = exact.quantize(quantum, context=_WIDE).normalize(_WIDE)
    exponent = rounded.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        rounded = rounded.quantize(Decimal(1), context=_WIDE)
    return rounded


def _float_raw(field: Field, value: FieldValue, exact: bool) -> float:
    unit = field.unit or ""
    if value is None:
        return math.nan
    number = _number(field, value)
    raw = float(number / field.scale)
    try:
        packed = struct.pack(">f", raw)
    except OverflowError:
        raise QuantityError(value, unit, f"{field.key}: beyond the FLOAT32 range") from None
    if exact:
        back = float32_to_decimal(struct.unpack(">f", packed)[0])
        back = back if field.scale == 1 else back * field.scale
        if back != number:
            raise QuantityError(
                value,
                unit,
                f"{field.key}: not exact in FLOAT32 ({FLOAT32_DIGITS} significant digits); "
                f"would read back as {back}",
            )
    return raw


def _int_raw(field: Field, value: FieldValue) -> int:
    unit = field.unit or ""
    number = _number(field, value)
    scaled = number / field.scale
    if scaled != scaled.to_integral_value():
        raise QuantityError(value, unit, f"{field.key}: not a whole multiple of the scale {field.scale}")
    raw = int(scaled)
    low, high = _RANGE[field.type]
    if not low <= raw <= high:
        raise QuantityError(value, unit, f"{field.key}: raw value {raw} outside {field.type} {low}…{high}")
    return raw


def _number(field: Field, value: FieldValue) -> Decimal:
    unit = field.unit or ""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise QuantityError(
            value, unit, f"{field.key} holds a number (int or Decimal), not {type(value).__name__}"
        )
    number = Decimal(value)
    if not number.is_finite():
        raise QuantityError(value, unit, f"{field.key}: not a finite number")
    return number


def _registers(data: bytes, byte_order: Order) -> list[int]:
    """Bytes (most significant first) to registers; ``little`` byte order swaps each pair."""
    pairs = [data[i : i + 2] for i in range(0, len(data), 2)]
    return [int.from_bytes(pair, "big" if byte_order == "big" else "little") for pair in pairs]


def _bytes(registers: Sequence[int], byte_order: Order) -> bytes:
    return b"".join(r.to_bytes(2, "big" if byte_order == "big" else "little") for r in registers)
