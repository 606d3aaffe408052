"""The Modbus RTU driver (pymodbus's serial client) against the emulated pump on a real PTY.

The device side is :class:`~pumpgw.rig.modbus_device.ModbusRtuDevice`, written from the serial-line
specification, not from pymodbus, so a framing mistake on either side shows here. Several pumps on
one line are several devices behind one PTY (:class:`~pumpgw.rig.modbus_device.RtuMultidrop`), as
on an RS-485 bus, and their drivers share one port. Pump time is a FakeClock; only the wire's own
timing (the t3.5 silence between frames) is measured in real time, because it is the driver's.
"""

from __future__ import annotations

import asyncio
import errno
import os
import termios
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from pumpgw.drivers.base import ChannelProgram, ChannelState, PumpDriver
from pumpgw.drivers.modbus import ModbusRtuDriver, rtu_gap_s, shared_serial_lines
from pumpgw.drivers.modbus_map import load_builtin_map
from pumpgw.drivers.serial_link import serial_open_error
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import DriverError, EnvironmentProblem, NoResponse
from pumpgw.gateway.quantity import Quantity
from pumpgw.rig.modbus_device import ModbusRtuDevice, RtuMultidrop, crc16_modbus
from pumpgw.rig.modbus_pump import EmulatedModbusPump
from pumpgw.rig.pty_link import PtyDeviceServer

TIMEOUT_S = 0.3
BAUD = 9600  # t3.5 = 4.01 ms: a gap big enough to measure


def make_pump(serial: str) -> EmulatedModbusPump:
    return EmulatedModbusPump(
        load_builtin_map("rig-multichannel-v1"),
        manufacturer="pumpgw rig",
        model="RIG-MC2",
        serial=serial,
        firmware="1.0.0",
        library_version=42,
        library_name="ICU adult",
        channels=2,
    )


class Wiretap:
    """A line between the PTY and the devices that notes, in real time, when each chunk of request
    bytes arrived and when each reply left."""

    def __init__(self, line: RtuMultidrop) -> None:
        self.line = line
        self.events: list[tuple[str, bytes, float]] = []  # ("in" | "out", bytes, time.monotonic())

    def receive(self, data: bytes, now: float) -> bytes:
        self.events.append(("in", data, time.monotonic()))
        reply = self.line.receive(data, now)
        if reply:
            self.events.append(("out", reply, time.monotonic()))
        return reply


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pumps() -> tuple[EmulatedModbusPump, EmulatedModbusPump]:
    return make_pump("RIG-0001"), make_pump("RIG-0002")


@pytest.fixture
async def line(
    pumps: tuple[EmulatedModbusPump, EmulatedModbusPump], clock: FakeClock
) -> AsyncIterator[tuple[PtyDeviceServer, Wiretap]]:
    """Units 1 and 2 on one serial line at 9600 baud."""
    tap = Wiretap(RtuMultidrop(*(ModbusRtuDevice(p, n, baudrate=BAUD) for n, p in enumerate(pumps, 1))))
    async with PtyDeviceServer(tap, clock) as pty:
        yield pty, tap


@pytest.fixture
async def driver(line: tuple[PtyDeviceServer, Wiretap]) -> AsyncIterator[ModbusRtuDriver]:
    d = ModbusRtuDriver("bed-3-pump", line[0].path, baudrate=BAUD, timeout_s=TIMEOUT_S)
    yield d
    await d.close()


def prog(rate: str, vtbi: str) -> ChannelProgram:
    return ChannelProgram(Quantity.of(rate, "mL/h"), Quantity.of(vtbi, "mL"))


async def test_identify_over_rtu(driver: ModbusRtuDriver) -> None:
    assert isinstance(driver, PumpDriver)
    identity = await driver.identify()
    assert (identity.protocol, identity.serial, identity.channels) == ("modbus-rtu", "RIG-0001", 2)
    assert (identity.manufacturer, identity.model, identity.library_version) == (
        "pumpgw rig",
        "RIG-MC2",
        "42",
    )


async def test_program_start_poll_stop_over_rtu(
    driver: ModbusRtuDriver, pumps: tuple[EmulatedModbusPump, EmulatedModbusPump], clock: FakeClock
) -> None:
    await driver.program(1, prog("60", "100"))
    assert (pumps[0].channel(1).rate_ml_h, pumps[0].channel(1).vtbi_ml) == (Decimal(60), Decimal(100))
    await driver.start(1)
    clock.advance(60)
    one, two = await driver.read_status()
    assert (one.state, one.rate, one.volume_infused) == (
        ChannelState.INFUSING,
        Quantity.of("60", "mL/h"),
        Quantity.of("1.000", "mL"),
    )
    assert one.remote_control is True
    assert two.state is ChannelState.IDLE
    await driver.stop(1)
    assert pumps[0].channel(1).state is ChannelState.PAUSED
    assert pumps[1].channel(1).rate_ml_h == 0  # unit 2 heard it all and did nothing


def one_frame_per_request(events: list[tuple[str, bytes, float]]) -> list[int]:
    """The unit id of each request, checking that requests and replies strictly alternate and
    that every request arrived as exactly one frame with a valid CRC."""
    units = []
    pending = b""
    for direction, data, _ in events:
        if direction == "in":
            pending += data
            continue
        assert crc16_modbus(pending) == 0, f"not one frame: {pending.hex(' ')}"
        assert data[0] == pending[0]  # the reply came from the unit asked
        units.append(pending[0])
        pending = b""
    assert pending == b""
    return units


async def test_two_pumps_share_one_line_without_interleaving(
    line: tuple[PtyDeviceServer, Wiretap], pumps: tuple[EmulatedModbusPump, EmulatedModbusPump]
) -> None:
    pty, tap = line
    first = ModbusRtuDriver("bed-3-a", pty.path, baudrate=BAUD, unit_id=1, timeout_s=TIMEOUT_S)
    second = ModbusRtuDriver("bed-3-b", pty.path, baudrate=BAUD, unit_id=2, timeout_s=TIMEOUT_S)
    try:
        await asyncio.gather(first.connect(), second.connect())
        assert list(shared_serial_lines().values()) == [("bed-3-a", "bed-3-b")]  # one port, one client
        for _ in range(3):
            a, b = await asyncio.gather(first.read_status(), second.read_status())
            assert len(a) == len(b) == 2
        identities = await asyncio.gather(first.identify(), second.identify())
        assert [i.serial for i in identities] == ["RIG-0001", "RIG-0002"]
    finally:
        await asyncio.gather(first.close(), second.close())
    assert shared_serial_lines() == {}
    units = one_frame_per_request(tap.events)
    assert set(units) == {1, 2}
    assert pumps[0].read_holding(0, 1, 0.0) == pumps[1].read_holding(0, 1, 0.0) == [3]  # 3 heartbeats each
    # The driver leaves t3.5 of silence after each reply before the next request (Modbus over
    # Serial Line v1.02 §2.5.1.1); pymodbus alone would send at once.
    outs = [t for d, _, t in tap.events if d == "out"]
    ins = [t for d, _, t in tap.events if d == "in"]
    gaps = [nxt - out for out, nxt in zip(outs, ins[1:], strict=False)]
    assert min(gaps) >= rtu_gap_s(BAUD) == pytest.approx(0.00401, abs=1e-5)


async def test_a_unit_that_does_not_answer_is_no_response(
    line: tuple[PtyDeviceServer, Wiretap], driver: ModbusRtuDriver
) -> None:
    absent = ModbusRtuDriver("bed-3-x", line[0].path, baudrate=BAUD, unit_id=5, timeout_s=TIMEOUT_S)
    loop = asyncio.get_running_loop()
    try:
        began = loop.time()
        with pytest.raises(NoResponse) as caught:
            await absent.identify()
        assert TIMEOUT_S <= loop.time() - began < TIMEOUT_S + 0.2
        assert caught.value.command == "identify: FC04 input 0+52"
        # The line is fine for the pump that is there.
        assert (await driver.identify()).serial == "RIG-0001"
    finally:
        await absent.close()


async def test_close_and_reconnect(driver: ModbusRtuDriver, line: tuple[PtyDeviceServer, Wiretap]) -> None:
    await driver.read_status()
    assert list(shared_serial_lines().values()) == [("bed-3-pump",)]
    await driver.close()
    await driver.close()  # idempotent
    assert shared_serial_lines() == {}  # the last driver on the line closed the port
    await driver.read_status()  # opens it again
    await driver.connect()
    assert list(shared_serial_lines().values()) == [("bed-3-pump",)]


async def test_one_driver_closing_leaves_the_line_to_the_other(
    line: tuple[PtyDeviceServer, Wiretap], tmp_path: Path
) -> None:
    # Another name for the same port (as /dev/serial/by-id/... is for /dev/ttyUSB0): one line.
    alias = tmp_path / "ttyRIG"
    alias.symlink_to(line[0].path)
    first = ModbusRtuDriver("bed-3-a", line[0].path, baudrate=BAUD, unit_id=1, timeout_s=TIMEOUT_S)
    second = ModbusRtuDriver("bed-3-b", str(alias), baudrate=BAUD, unit_id=2, timeout_s=TIMEOUT_S)
    try:
        await first.read_status()
        await second.read_status()
        assert shared_serial_lines() == {line[0].path: ("bed-3-a", "bed-3-b")}
        await first.close()
        assert (await second.identify()).serial == "RIG-0002"
    finally:
        await second.close()
        await first.close()
    assert shared_serial_lines() == {}


async def test_pumps_on_one_line_must_agree_on_its_settings(
    driver: ModbusRtuDriver, line: tuple[PtyDeviceServer, Wiretap]
) -> None:
    await driver.connect()
    other = ModbusRtuDriver("bed-3-b", line[0].path, baudrate=19200, parity="E", unit_id=2)
    with pytest.raises(DriverError) as caught:
        await other.connect()
    assert "open at 9600 baud 8N1 for pump(s) bed-3-pump" in str(caught.value)
    assert "configured for 19200 baud 8E1" in str(caught.value)


async def test_a_port_that_cannot_be_opened(tmp_path: Path) -> None:
    missing = ModbusRtuDriver("bed-3-pump", str(tmp_path / "ttyNONE"), timeout_s=TIMEOUT_S)
    with pytest.raises(DriverError, match=r"cannot open serial port .*ttyNONE: No such file"):
        await missing.connect()
    await missing.close()
    assert shared_serial_lines() == {}


def test_permission_errors_name_the_fix() -> None:
    # Tests run as root here, where no file refuses to open, so the mapping is checked directly.
    for code in (errno.EACCES, errno.EPERM):
        error = serial_open_error("p", "connect", "/dev/ttyUSB0", OSError(code, "Permission denied"))
        assert isinstance(error, EnvironmentProblem)
        assert "dialout" in error.fix
    other = serial_open_error("p", "connect", "/dev/ttyUSB0", OSError(errno.EBUSY, "Device or resource busy"))
    assert isinstance(other, DriverError)
    assert str(other) == "pump p: connect: cannot open serial port /dev/ttyUSB0: Device or resource busy"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unit_id": 0}, "1…247"),
        ({"unit_id": 248}, "1…247"),
        ({"parity": "X"}, "parity"),
        ({"stopbits": 3}, "stop bits"),
        ({"baudrate": 0}, "positive"),
    ],
)
def test_impossible_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModbusRtuDriver("p", "/dev/ttyUSB0", **kwargs)  # type: ignore[arg-type]


def test_rtu_gap_follows_the_serial_line_spec() -> None:
    assert rtu_gap_s(19200) == pytest.approx(0.002005, abs=1e-6)
    assert rtu_gap_s(115200) == 0.00175
    assert Decimal(str(rtu_gap_s(9600))).quantize(Decimal("0.00001")) == Decimal("0.00401")


def pty_takes_parity(path: str) -> bool:
    """Whether this kernel's pseudo-terminals accept a parity setting (some refuse it: EINVAL)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        attributes = termios.tcgetattr(fd)
        attributes[2] |= termios.PARENB
        termios.tcsetattr(fd, termios.TCSANOW, attributes)
    except termios.error:
        return False
    finally:
        os.close(fd)
    return True


async def test_settings_the_port_refuses_are_a_driver_error(line: tuple[PtyDeviceServer, Wiretap]) -> None:
    path = line[0].path
    even = ModbusRtuDriver("bed-3-pump", path, baudrate=BAUD, parity="E", timeout_s=TIMEOUT_S)
    try:
        if pty_takes_parity(path):  # a PTY carries no parity bit either way: the pump still answers
            assert (await even.identify()).protocol == "modbus-rtu"
            return
        for _ in range(2):  # the failed open leaves nothing behind (no lock on the port)
            with pytest.raises(DriverError) as caught:
                await even.connect()
            assert str(caught.value) == (
                f"pump bed-3-pump: connect: cannot set serial port {path} to 9600 baud 8E1: Invalid argument"
            )
    finally:
        await even.close()
    plain = ModbusRtuDriver("bed-3-pump", path, baudrate=BAUD, timeout_s=TIMEOUT_S)
    try:
        assert (await plain.identify()).serial == "RIG-0001"
    finally:
        await plain.close()
