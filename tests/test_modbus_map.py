"""The Modbus register map loader and the register codec (pure; no network)."""

from __future__ import annotations

import re
import struct
from dataclasses import replace
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pumpgw.drivers.modbus_map import (
    Field,
    RegisterMap,
    builtin_map_names,
    decode,
    encode,
    float32_to_decimal,
    load_builtin_map,
    load_map,
    parse_map,
)
from pumpgw.gateway.errors import ConfigError, QuantityError

MAP_NAME = "rig-multichannel-v1"
MAP_TEXT = resources.files("pumpgw.drivers").joinpath("maps", f"{MAP_NAME}.toml").read_text(encoding="utf-8")
ORDERS = ("big", "little")


def field(kind: str, **kwargs: object) -> Field:
    """A system input field at address 0, for codec tests."""
    return Field(name="x", scope="system", table="input", start=0, type=kind, **kwargs)  # type: ignore[arg-type]


def edit(section: str, old: str, new: str, text: str = MAP_TEXT) -> str:
    """The map text with the first ``old`` after the header ``[section]`` replaced by ``new``."""
    header = re.search(rf"^\[{re.escape(section)}\].*$", text, flags=re.M)
    assert header is not None, section
    at = text.index(old, header.end())
    return text[:at] + new + text[at + len(old) :]


def without(section: str, text: str = MAP_TEXT) -> str:
    """The map text without the table ``[section]``."""
    return re.sub(rf"\n\[{re.escape(section)}\][^\n]*\n.*?(?=\n\[|\Z)", "\n", text, count=1, flags=re.S)


def load_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_map(text, "test.toml")
    return caught.value


# --- the built-in map --------------------------------------------------------------------------


def test_builtin_map_follows_the_reference_layout() -> None:
    # Addresses from reference/pump-protocols.md §6.1 (0-based PDU addresses, B = 1000·n).
    m = load_builtin_map(MAP_NAME)
    assert MAP_NAME in builtin_map_names()
    assert (m.name, m.version, m.word_order, m.byte_order) == (MAP_NAME, 0x0100, "big", "big")
    assert m.address(m.field("system.endianness_probe")) == 0
    assert m.address(m.field("system.library_version")) == 40
    assert m.address(m.field("channel.rate"), 1) == 1010
    assert m.address(m.field("channel.drug_name"), 2) == 2032
    assert m.field("channel.drug_name").count == 16  # STRING[32]
    assert m.address(m.block("channel_command"), 3) == 3060
    assert m.address(m.field("channel.token"), 1) == 1073
    assert m.field("channel.token").fixed == 0x5555
    assert m.enum("concentration_unit").names[3] == "[iU]/mL"
    assert m.bits["alarm"].decode(1 << 5 | 1 << 20) == ("vtbi-complete", "bit-20")


def test_load_map_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "pump.toml"
    path.write_text(MAP_TEXT, encoding="utf-8")
    loaded = load_map(path)
    assert isinstance(loaded, RegisterMap)
    assert loaded.source == str(path)
    assert loaded.fields == load_builtin_map(MAP_NAME).fields


# --- loader errors name the key ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (edit("channel.rate", 'type = "float32"', 'type = "float64"'), "channel.rate.type", "one of"),
        (
            edit("channel.vtbi_remaining", "offset = 12", "offset = 11"),
            "channel.vtbi_remaining",
            "channel.rate",
        ),
        (without("channel.token"), "channel.token", "Modbus driver needs"),
        (edit("channel.rate", 'type = "float32"\n', ""), "channel.rate.type", "one of"),
        (edit("channel.rate", "offset = 10", "adress = 10"), "channel.rate.adress", "one of"),
        (edit("channel.rate", "offset = 10", "address = 10"), "channel.rate.address", "'offset' instead"),
        (edit("channel.rate", 'unit = "mL/h"', 'unit = "ml/h"'), "channel.rate.unit", "one of"),
        (edit("channel.state", 'enum = "state"', 'enum = "states"'), "channel.state.enum", "one of"),
        (edit("enums.state", '3 = "kvo"', '3 = "keep-open"'), "enums.state.3", "a channel state"),
        (
            edit("system.endianness_probe", "fixed = 0xAABBCCDD", "fixed = 0x1AABBCCDD"),
            "system.endianness_probe.fixed",
            "uint32",
        ),
        (
            edit("channel.drug_name", "offset = 32", "offset = 42"),
            "channel.concentration",
            "channel.drug_name",
        ),
        (edit("channel.last_result", "offset = 56", "offset = 57"), "channel.last_result", "block"),
        (
            edit("map", "channel_stride = 1000", "channel_stride = 50"),
            "blocks.channel_status.length",
            "stride",
        ),
        (
            MAP_TEXT.replace(
                "[blocks.system_control]",
                '[blocks.extra]\nscope = "system"\ntable = "input"\nstart = 50\nlength = 4\n\n'
                "[blocks.system_control]",
                1,
            ),
            "blocks.system_status",
            "blocks.extra",
        ),
        (edit("map", "max_channels = 16", "max_channels = 66"), "map.max_channels", "65535"),
        (edit("channel.rate", 'type = "float32"', 'type = "string"'), "channel.rate.length", "integer"),
        (edit("enums.result", '0 = "ok"', '0 = "fine"'), "enums.result", "['ok']"),
        (
            edit("alarm_priority", 'air-in-line = "high"', 'air-in-line = "urgent"'),
            "alarm_priority.air-in-line",
            "one of",
        ),
        (edit("commands", '"bolus"]', '"bolus", "reboot"]'), "commands.token_required[4]", "enums.command"),
        (
            edit("system.heartbeat", "writable = true", "writable = false"),
            "system.heartbeat.writable",
            "true",
        ),
        (
            edit("channel.state", 'table = "input"', 'table = "input"\nwritable = true'),
            "channel.state.writable",
            "holding",
        ),
        ("[map\nname = 1", "(file)", "valid TOML"),
    ],
)
def test_a_bad_map_is_refused_naming_the_key(text: str, key: str, expected: str) -> None:
    error = load_error(text)
    assert error.source == "test.toml"
    assert error.key == key
    assert expected in error.expected


def test_overlap_error_names_both_fields_and_their_registers() -> None:
    error = load_error(edit("channel.vtbi_remaining", "offset = 12", "offset = 11"))
    assert error.value == "input registers B+11–12"
    assert "channel.rate (input registers B+10–11)" in error.expected
    assert "test.toml: channel.vtbi_remaining" in str(error)


def test_unreadable_file_and_unknown_builtin_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_map(tmp_path / "missing.toml")
    assert caught.value.key == "(file)"
    with pytest.raises(ConfigError) as unknown:
        load_builtin_map("../../etc/passwd")
    assert MAP_NAME in unknown.value.expected


# --- codec: golden vectors ----------------------------------------------------------------------


def test_golden_vectors_from_the_reference() -> None:
    # reference/pump-protocols.md §6.1: IR 0–1 = 0xAABBCCDD, IR 2–3 = 1234.5 (0x449A5000), high word
    # first; NaN 0x7FC00000 = "not set".
    u32, f32 = field("uint32"), field("float32")
    assert encode(u32, 0xAABBCCDD) == [0xAABB, 0xCCDD]
    assert decode(u32, [0xAABB, 0xCCDD]) == 0xAABBCCDD
    assert encode(f32, Decimal("1234.5")) == [0x449A, 0x5000]
    assert decode(f32, [0x449A, 0x5000]) == Decimal("1234.5")
    assert encode(f32, None) == [0x7FC0, 0x0000]
    assert decode(f32, [0x7FC0, 0x0000]) is None


def test_word_and_byte_order_of_the_probe() -> None:
    assert encode(field("uint32", word_order="little"), 0xAABBCCDD) == [0xCCDD, 0xAABB]
    assert encode(field("uint32", byte_order="little"), 0xAABBCCDD) == [0xBBAA, 0xDDCC]
    assert encode(field("uint32", word_order="little", byte_order="little"), 0xAABBCCDD) == [0xDDCC, 0xBBAA]
    # The probe read with the wrong word order: what identify() must catch.
    assert decode(field("uint32", word_order="little"), [0xAABB, 0xCCDD]) == 0xCCDDAABB


def test_strings_pack_two_characters_per_register_nul_padded() -> None:
    name = field("string", length=6)
    assert encode(name, "ABC") == [0x4142, 0x4300, 0x0000]
    assert encode(replace(name, byte_order="little"), "ABC") == [0x4241, 0x0043, 0x0000]
    assert decode(name, [0x4142, 0x4300, 0x4444]) == "ABC"  # ends at the first NUL


def test_float32_reads_as_six_significant_digits() -> None:
    rate = field("float32")
    assert decode(rate, encode(rate, Decimal("0.1"))) == Decimal("0.1")
    assert str(decode(rate, encode(rate, Decimal(100)))) == "100"  # not 1E+2
    assert float32_to_decimal(struct.unpack(">f", struct.pack(">f", 0.1))[0]) == Decimal("0.1")
    # 1234.567 has 7 digits: a pump may report it (nearest FLOAT32), a driver may not send it.
    assert decode(rate, encode(rate, Decimal("1234.567"), exact=False)) == Decimal("1234.57")
    with pytest.raises(QuantityError, match=r"read back as 1234\.57"):
        encode(rate, Decimal("1234.567"))


def test_scale_is_exact_and_rejects_what_does_not_fit() -> None:
    tenths = field("uint16", scale=Decimal("0.1"), unit="mL/h")
    assert encode(tenths, Decimal("12.3")) == [123]
    assert decode(tenths, [123]) == Decimal("12.3")
    with pytest.raises(QuantityError, match="multiple of the scale"):
        encode(tenths, Decimal("12.34"))


@pytest.mark.parametrize(
    ("kind", "kwargs", "value", "reason"),
    [
        ("uint16", {}, 70000, "outside uint16"),
        ("uint16", {}, -1, "outside uint16"),
        ("int32", {}, 2**31, "outside int32"),
        ("uint32", {}, 1.5, "not float"),
        ("uint32", {}, True, "not bool"),
        ("uint32", {}, None, "not NoneType"),
        ("float32", {}, Decimal("1E+39"), "FLOAT32 range"),
        ("float32", {}, Decimal("NaN"), "finite"),
        ("string", {"length": 4}, "ABCDE", "at most 4"),
        ("string", {"length": 4}, "µg", "ASCII"),
        ("string", {"length": 4}, 12, "text"),
    ],
)
def test_encode_refuses_what_the_field_cannot_hold(
    kind: str, kwargs: dict[str, object], value: object, reason: str
) -> None:
    with pytest.raises(QuantityError, match=reason):
        encode(field(kind, **kwargs), value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "registers", "reason"),
    [
        ("uint32", [1], "takes 2 registers"),
        ("uint16", [0x10000], "0…65535"),
        ("float32", [0x7F80, 0x0000], "infinite"),
    ],
)
def test_decode_refuses_registers_that_cannot_be_the_field(
    kind: str, registers: list[int], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        decode(field(kind), registers)


def test_decode_refuses_non_ascii_text() -> None:
    with pytest.raises(ValueError, match="ascii"):
        decode(field("string", length=2), [0xC2B5])


# --- codec: properties --------------------------------------------------------------------------

orders = st.sampled_from(ORDERS)


@given(st.integers(0, 0xFFFF), orders)
def test_uint16_round_trips(value: int, byte_order: str) -> None:
    f = field("uint16", byte_order=byte_order)
    assert decode(f, encode(f, value)) == value


@given(st.integers(0, 0xFFFF_FFFF), orders, orders)
def test_uint32_round_trips(value: int, word_order: str, byte_order: str) -> None:
    f = field("uint32", word_order=word_order, byte_order=byte_order)
    registers = encode(f, value)
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode(f, registers) == value


@given(st.integers(-(2**31), 2**31 - 1), orders, orders)
def test_int32_round_trips(value: int, word_order: str, byte_order: str) -> None:
    f = field("int32", word_order=word_order, byte_order=byte_order)
    assert decode(f, encode(f, value)) == value


six_digit_decimals = st.builds(
    lambda digits, exponent: Decimal(digits).scaleb(exponent),
    st.integers(-999_999, 999_999),
    st.integers(-30, 30),
)


@given(six_digit_decimals, orders, orders)
def test_float32_round_trips_every_six_digit_decimal(
    value: Decimal, word_order: str, byte_order: str
) -> None:
    f = field("float32", word_order=word_order, byte_order=byte_order)
    assert decode(f, encode(f, value)) == value


# Normal FLOAT32 bit patterns. Zero, subnormals (fewer digits) and the smallest normals (which may
# round into the subnormals) are outside the 6-digit guarantee; inf and NaN are tested elsewhere.
normal_float32_bits = st.builds(
    lambda sign, exponent, mantissa: sign << 31 | exponent << 23 | mantissa,
    st.integers(0, 1),
    st.integers(2, 0xFE),
    st.integers(0, 2**23 - 1),
)


@given(normal_float32_bits, orders)
def test_float32_decoding_is_stable(bits: int, word_order: str) -> None:
    # Any normal FLOAT32 a pump sends reads as a Decimal that survives being written back.
    f = field("float32", word_order=word_order)
    registers = encode(field("uint32", word_order=word_order), bits)
    value = decode(f, registers)
    assert isinstance(value, Decimal)
    assert decode(f, encode(f, value)) == value


@given(st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=32), orders)
def test_strings_round_trip(text: str, byte_order: str) -> None:
    f = field("string", length=32, byte_order=byte_order)
    registers = encode(f, text)
    assert len(registers) == 16
    assert decode(f, registers) == text
