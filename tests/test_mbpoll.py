"""The emulated Modbus pump read by ``mbpoll`` (libmodbus), an independent Modbus master.

Values are those the register map of reference/pump-protocols.md §6.1 documents (our own proposal,
not a vendor's map): the endianness probe IR 0-1 reads 0xAABB 0xCCDD, the float probe IR 2-3 reads
1234.5 (FLOAT32, high word first), IR 5 holds the number of channels, and channel n's current rate
is a FLOAT32 at B+10 with B = 1000·n. Addresses are 0-based PDU addresses, so every mbpoll call
here passes ``-0`` (mbpoll counts from 1 by default) and ``-B`` for big-endian word order (its
default for 32-bit values is little-endian). docs/modbus.md shows the same commands.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from pumpgw.drivers.modbus_map import load_builtin_map
from pumpgw.gateway.clock import FakeClock
from pumpgw.rig.modbus_device import ModbusRtuDevice
from pumpgw.rig.modbus_pump import EmulatedModbusPump
from pumpgw.rig.modbus_server import ModbusPumpServer
from pumpgw.rig.pty_link import PtyDeviceServer

_VALUE = re.compile(r"^\[(\d+)\]:\s+(\S+)\s*$", re.M)


@pytest.fixture
def mbpoll() -> str:
    """The mbpoll binary; a test that needs it skips locally, and a skip fails CI."""
    path = shutil.which("mbpoll")
    if path is None:
        pytest.skip("mbpoll is not installed (scripts/bootstrap installs it)")
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pump(clock: FakeClock) -> EmulatedModbusPump:
    pump = EmulatedModbusPump(
        load_builtin_map("rig-multichannel-v1"),
        manufacturer="pumpgw rig",
        model="RIG-MC2",
        serial="RIG-0001",
        firmware="1.0.0",
        library_version=42,
        library_name="ICU adult",
        channels=2,
    )
    pump.poll(clock.monotonic())
    pump.channel(1).program(Decimal("12.5"), Decimal(0))  # through the keypad, as a nurse would
    pump.channel(1).start()
    return pump


@pytest.fixture
async def tcp_port(pump: EmulatedModbusPump, clock: FakeClock) -> AsyncIterator[int]:
    async with ModbusPumpServer(pump, clock) as server:
        yield server.port


@pytest.fixture
async def pty_path(pump: EmulatedModbusPump, clock: FakeClock) -> AsyncIterator[str]:
    async with PtyDeviceServer(ModbusRtuDevice(pump, 1, baudrate=19200), clock) as pty:
        yield pty.path


async def run(mbpoll: str, *args: str, expect_exit: int = 0) -> tuple[dict[int, str], str]:
    """Run mbpoll once; its values by register number, and everything it printed."""
    process = await asyncio.create_subprocess_exec(
        mbpoll, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(10):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    assert process.returncode == expect_exit, text
    return {int(register): value for register, value in _VALUE.findall(text)}, text


def tcp(port: int, *args: str, values: tuple[str, ...] = ()) -> list[str]:
    """``mbpoll -m tcp -p PORT -a 1 -0 -1 ARGS 127.0.0.1 [VALUES]``: once, unit 1, PDU addresses."""
    return ["-m", "tcp", "-p", str(port), "-a", "1", "-0", "-1", "-o", "2", *args, "127.0.0.1", *values]


def rtu(path: str, *args: str) -> list[str]:
    """``mbpoll -m rtu -b 19200 -P none -a 1 -0 -1 ARGS PATH``: 19200 8N1 on the PTY."""
    return ["-m", "rtu", "-b", "19200", "-P", "none", "-a", "1", "-0", "-1", "-o", "2", *args, path]


async def test_mbpoll_reads_the_probes_over_tcp(mbpoll: str, tcp_port: int) -> None:
    values, _ = await run(mbpoll, *tcp(tcp_port, "-t", "3:hex", "-r", "0", "-c", "2"))
    assert values == {0: "0xAABB", 1: "0xCCDD"}
    values, _ = await run(mbpoll, *tcp(tcp_port, "-t", "3:float", "-B", "-r", "2"))
    assert values == {2: "1234.5"}


async def test_mbpoll_reads_channels_and_a_rate_over_tcp(mbpoll: str, tcp_port: int) -> None:
    values, _ = await run(mbpoll, *tcp(tcp_port, "-t", "3", "-r", "5"))
    assert values == {5: "2"}
    values, _ = await run(mbpoll, *tcp(tcp_port, "-t", "3:float", "-B", "-r", "1010", "-c", "2"))
    assert values == {1010: "12.5", 1012: "0"}  # channel 1: rate 12.5 mL/h, no VTBI left to give


async def test_mbpoll_writes_holding_registers_and_gets_the_exceptions(
    mbpoll: str, tcp_port: int, pump: EmulatedModbusPump
) -> None:
    _, text = await run(mbpoll, *tcp(tcp_port, "-t", "4", "-r", "0", values=("7", "2000")))
    assert "Written 2 references" in text  # heartbeat 7, comm timeout 2000 ms
    assert pump.read_holding(0, 2, 0.0) == [7, 2000]
    _, text = await run(mbpoll, *tcp(tcp_port, "-t", "4", "-r", "2", values=("5",)), expect_exit=1)
    assert "Illegal data value" in text  # comm-loss policy 5 does not exist
    _, text = await run(mbpoll, *tcp(tcp_port, "-t", "3", "-r", "60"), expect_exit=1)
    assert "Illegal data address" in text  # IR 60 is outside the system block


async def test_mbpoll_reads_the_probes_over_rtu(mbpoll: str, pty_path: str) -> None:
    values, text = await run(mbpoll, *rtu(pty_path, "-t", "3:hex", "-r", "0", "-c", "2"))
    assert "19200-8N1" in text
    assert values == {0: "0xAABB", 1: "0xCCDD"}
    values, _ = await run(mbpoll, *rtu(pty_path, "-t", "3:float", "-B", "-r", "2"))
    assert values == {2: "1234.5"}
    values, _ = await run(mbpoll, *rtu(pty_path, "-t", "3:float", "-B", "-r", "1010"))
    assert values == {1010: "12.5"}
