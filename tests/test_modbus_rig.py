"""The Modbus TCP driver against the emulated pump, over real TCP on loopback, pymodbus on both sides.

Time in the pump is a FakeClock: the tests move it, so volumes are exact and nothing sleeps. Faults
are real peers too: a server that never answers, and a proxy that loses the pump's reply to a write.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator
from decimal import Decimal
from importlib import resources

import pytest

from pumpgw.drivers.base import ChannelProgram, ChannelState, PumpDriver, PumpIdentity
from pumpgw.drivers.modbus import ModbusTcpDriver
from pumpgw.drivers.modbus_map import FieldValue, RegisterMap, decode, encode, load_builtin_map, parse_map
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import (
    ConfigError,
    DeviceError,
    DriverError,
    EnvironmentProblem,
    NoResponse,
    ProtocolError,
    QuantityError,
)
from pumpgw.gateway.quantity import Quantity
from pumpgw.rig.modbus_pump import EmulatedModbusPump, ExceptionCode
from pumpgw.rig.modbus_server import ModbusPumpServer

MAP_NAME = "rig-multichannel-v1"
MAP_TEXT = resources.files("pumpgw.drivers").joinpath("maps", f"{MAP_NAME}.toml").read_text(encoding="utf-8")
TIMEOUT_S = 0.3
HEPARIN = 7


def edited_map(section: str, old: str, new: str) -> RegisterMap:
    """The built-in map with the first ``old`` after the header ``[section]`` replaced."""
    header = re.search(rf"^\[{re.escape(section)}\].*$", MAP_TEXT, flags=re.M)
    assert header is not None
    at = MAP_TEXT.index(old, header.end())
    return parse_map(MAP_TEXT[:at] + new + MAP_TEXT[at + len(old) :], f"edited {section}")


def prog(rate: str, vtbi: str, **kwargs: object) -> ChannelProgram:
    return ChannelProgram(Quantity.of(rate, "mL/h"), Quantity.of(vtbi, "mL"), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def register_map() -> RegisterMap:
    return load_builtin_map(MAP_NAME)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pump(register_map: RegisterMap) -> EmulatedModbusPump:
    return EmulatedModbusPump(
        register_map,
        manufacturer="pumpgw rig",
        model="RIG-MC2",
        serial="RIG-0001",
        firmware="1.0.0",
        library_version=42,
        library_name="ICU adult",
        channels=2,
        drug_library={HEPARIN: "heparin"},
    )


@pytest.fixture
async def server(pump: EmulatedModbusPump, clock: FakeClock) -> AsyncIterator[ModbusPumpServer]:
    async with ModbusPumpServer(pump, clock) as running:
        yield running


@pytest.fixture
async def driver(server: ModbusPumpServer) -> AsyncIterator[ModbusTcpDriver]:
    d = ModbusTcpDriver("bed-7-pump", "127.0.0.1", server.port, timeout_s=TIMEOUT_S)
    yield d
    await d.close()


def reported(pump: EmulatedModbusPump, name: str, channel: int = 1) -> FieldValue:
    """What the pump's status block says for channel field ``name``, read sans-I/O."""
    field = pump.map.field(f"channel.{name}")
    registers = pump.read_input(pump.map.address(field, channel), field.count, 0.0)
    assert not isinstance(registers, ExceptionCode)
    return decode(field, registers)


# --- identity and physics ------------------------------------------------------------------------


async def test_identify_reports_who_the_pump_is(driver: ModbusTcpDriver) -> None:
    assert isinstance(driver, PumpDriver)
    assert await driver.identify() == PumpIdentity(
        protocol="modbus-tcp",
        manufacturer="pumpgw rig",
        model="RIG-MC2",
        serial="RIG-0001",
        firmware="1.0.0",
        library_version="42",
        channels=2,
    )
    capabilities = driver.capabilities
    assert all(getattr(capabilities, name) for name in capabilities.__slots__)


async def test_volume_infused_follows_the_clock_exactly(driver: ModbusTcpDriver, clock: FakeClock) -> None:
    await driver.program(1, prog("60", "100"))
    await driver.start(1)
    clock.advance(60)
    one, two = await driver.read_status()
    assert one.state is ChannelState.INFUSING
    assert one.volume_infused == Quantity.of("1.000", "mL")  # 60 mL/h for 60 s
    assert one.rate == Quantity.of("60", "mL/h")
    assert one.vtbi == Quantity.of("99", "mL")
    assert (two.state, two.volume_infused, two.vtbi) == (ChannelState.IDLE, Quantity.of("0", "mL"), None)
    clock.advance(30)
    (one, _) = await driver.read_status()
    assert one.volume_infused == Quantity.of("1.5", "mL")
    # 100 mL is reached at 6000 s; a minute later the channel has given 1/60 mL at the KVO rate.
    clock.advance(6000 - 90 + 60)
    (one, _) = await driver.read_status()
    assert (one.state, one.alarms, one.rate) == (
        ChannelState.KVO,
        ("vtbi-complete",),
        Quantity.of("1", "mL/h"),
    )
    assert one.volume_infused == Quantity.of("100.017", "mL")
    assert one.vtbi == Quantity.of("0", "mL")
    await driver.stop(1)
    (one, _) = await driver.read_status()
    assert one.state is ChannelState.IDLE


@pytest.mark.hazard("HAZ-015")
async def test_a_program_is_written_once_and_read_back(
    driver: ModbusTcpDriver, pump: EmulatedModbusPump
) -> None:
    concentration = Quantity.of("100", "[iU]/mL")
    await driver.program(
        2, prog("5.5", "250", drug="heparin", concentration=concentration, extra={"drug_id": str(HEPARIN)})
    )
    physics = pump.channel(2)
    assert (physics.rate_ml_h, physics.vtbi_ml, physics.drug) == (Decimal("5.5"), Decimal(250), "heparin")
    (_, two) = await driver.read_status()
    assert (two.drug, two.concentration, two.vtbi) == ("heparin", concentration, Quantity.of("250", "mL"))
    assert reported(pump, "last_sequence", 2) == 1


@pytest.mark.hazard("HAZ-015")
async def test_a_readback_difference_is_a_device_error(driver: ModbusTcpDriver) -> None:
    with pytest.raises(DeviceError) as caught:
        await driver.program(1, prog("5", "50", drug="Heparin", extra={"drug_id": str(HEPARIN)}))
    assert caught.value.code == "readback-mismatch"
    assert caught.value.text == "drug: sent Heparin, pump holds heparin"


# --- refusals -----------------------------------------------------------------------------------


async def test_a_wrong_token_is_refused_with_the_facts(
    server: ModbusPumpServer, pump: EmulatedModbusPump
) -> None:
    misconfigured = edited_map("channel.token", "fixed = 0x5555", "fixed = 0x5556")
    d = ModbusTcpDriver(
        "bed-7-pump", "127.0.0.1", server.port, register_map=misconfigured, timeout_s=TIMEOUT_S
    )
    try:
        with pytest.raises(DeviceError) as caught:
            await d.program(1, prog("60", "100"))
    finally:
        await d.close()
    error = caught.value
    assert (error.pump, error.command, error.code) == ("bed-7-pump", "program channel 1", "bad-token")
    assert error.text == "apply-program (sequence 1) refused: bad-token (result code 6)"
    assert pump.channel(1).rate_ml_h == 0


async def test_an_out_of_range_rate_is_refused(driver: ModbusTcpDriver, pump: EmulatedModbusPump) -> None:
    with pytest.raises(DeviceError) as caught:
        await driver.program(1, prog("-1", "100"))
    assert caught.value.code == "rejected-range"
    assert pump.channel(1).rate_ml_h == 0


async def test_start_without_a_rate_is_refused(driver: ModbusTcpDriver) -> None:
    with pytest.raises(DeviceError) as caught:
        await driver.start(1)
    assert (caught.value.code, caught.value.command) == ("rejected-state", "start channel 1")


@pytest.mark.hazard("HAZ-012")
async def test_values_the_map_cannot_carry_are_refused_before_sending(
    driver: ModbusTcpDriver, pump: EmulatedModbusPump
) -> None:
    with pytest.raises(QuantityError, match="not exact in FLOAT32"):
        await driver.program(1, prog("1234.567", "100"))
    with pytest.raises(QuantityError, match="no code for this unit"):
        await driver.program(1, prog("1", "100", concentration=Quantity.of("1", "g/L")))
    with pytest.raises(DriverError, match="library id"):
        await driver.program(1, prog("1", "100", drug="heparin"))
    with pytest.raises(DriverError, match="channels 1…2, not 3"):
        await driver.start(3)
    assert reported(pump, "last_sequence") == 0


async def test_a_modbus_exception_is_a_device_error(server: ModbusPumpServer) -> None:
    # The driver's map says the status block is 60 registers; the pump answers 57.
    longer = edited_map("blocks.channel_status", "length = 57", "length = 60")
    d = ModbusTcpDriver("bed-7-pump", "127.0.0.1", server.port, register_map=longer, timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(DeviceError) as caught:
            await d.read_status()
    finally:
        await d.close()
    assert caught.value.code == "modbus-exception-2"
    assert caught.value.command == "read_status: FC04 input 1000+60"
    assert "illegal data address" in caught.value.text


async def test_a_wrong_word_order_fails_identify(server: ModbusPumpServer) -> None:
    swapped = edited_map("map", 'word_order = "big"', 'word_order = "little"')
    d = ModbusTcpDriver("bed-7-pump", "127.0.0.1", server.port, register_map=swapped, timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(ProtocolError) as caught:
            await d.identify()
    finally:
        await d.close()
    assert caught.value.reason.startswith("endianness_probe reads 0xccddaabb, expected 2864434397")
    assert caught.value.data[:4] == bytes.fromhex("AABBCCDD")


# --- silence --------------------------------------------------------------------------------------


async def test_a_stopped_server_gives_no_response_within_the_timeout(
    server: ModbusPumpServer, driver: ModbusTcpDriver
) -> None:
    await driver.identify()
    await server.stop()
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(NoResponse) as caught:
        await driver.read_status()
    # Refused, or dropped while in flight: either way known at once, not after the timeout.
    assert loop.time() - began < TIMEOUT_S / 2
    assert caught.value.timeout_s == TIMEOUT_S


class SilentPump:
    """A TCP peer that accepts connections and reads requests but never answers."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[object]] = set()

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await finish(self._handlers)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.add(current_task())
        self._writers.append(writer)
        while frame := await read_frame(reader):
            self.frames.append(frame)
            self.arrived.set()


def current_task() -> asyncio.Task[object]:
    task = asyncio.current_task()
    assert task is not None
    return task


async def finish(handlers: set[asyncio.Task[object]]) -> None:
    """Let connection handlers end on their own once their sockets are closed (cancelling a
    start_server handler makes asyncio 3.11 log a spurious error)."""
    if handlers:
        _, pending = await asyncio.wait(handlers, timeout=1.0)
        for task in pending:
            task.cancel()


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One Modbus TCP frame (MBAP header + PDU), or None at end of stream."""
    try:
        header = await reader.readexactly(7)
        return header + await reader.readexactly(int.from_bytes(header[4:6], "big") - 1)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def test_a_silent_pump_gives_no_response_and_is_not_asked_twice() -> None:
    silent = SilentPump()
    async with silent as port:
        d = ModbusTcpDriver("bed-7-pump", "127.0.0.1", port, timeout_s=TIMEOUT_S)
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            with pytest.raises(NoResponse) as caught:
                await d.identify()
        finally:
            await d.close()
        elapsed = loop.time() - began
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 0.2
    assert caught.value.command == "identify: FC04 input 0+52"
    assert silent.arrived.is_set()
    assert len(silent.frames) == 1  # pymodbus retries are off: one request, no repeat


class LosingProxy:
    """A TCP proxy in front of the pump server that loses the pump's replies to one function code,
    as a broken cable would after the request got through."""

    def __init__(self, target_port: int, lose_function: int) -> None:
        self.target_port = target_port
        self.lose_function: int | None = lose_function
        self.requests: list[int] = []  # function codes, in order
        self.lost = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[object]] = set()

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await finish(self._handlers)  # they end when the client (already closed) and server part
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.add(current_task())
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            await asyncio.gather(self._requests(reader, up_writer), self._replies(up_reader, writer))
        finally:
            writer.close()
            up_writer.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while frame := await read_frame(reader):
            self.requests.append(frame[7])
            writer.write(frame)
        writer.close()

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while frame := await read_frame(reader):
            if frame[7] & 0x7F == self.lose_function:
                self.lost.set()
                continue
            writer.write(frame)
        writer.close()


@pytest.mark.hazard("HAZ-014")
@pytest.mark.hazard("HAZ-015")
async def test_a_write_whose_reply_is_lost_is_not_sent_again(
    server: ModbusPumpServer, pump: EmulatedModbusPump
) -> None:
    proxy = LosingProxy(server.port, lose_function=16)
    async with proxy as port:
        d = ModbusTcpDriver("bed-7-pump", "127.0.0.1", port, timeout_s=TIMEOUT_S)
        try:
            with pytest.raises(NoResponse):
                await d.program(1, prog("60", "100"))
            assert proxy.lost.is_set()
            assert proxy.requests.count(16) == 1  # written once, never re-sent
            # The pump did act on it; only the reply was lost. The next command continues from the
            # pump's own sequence number, so it cannot be taken for the lost one.
            assert pump.channel(1).rate_ml_h == 60
            proxy.lose_function = None
            await d.start(1)
        finally:
            await d.close()
    assert reported(pump, "last_sequence") == 2
    assert pump.channel(1).state is ChannelState.INFUSING


# --- housekeeping -----------------------------------------------------------------------------------


async def test_normal_operation_logs_no_pymodbus_warning(
    driver: ModbusTcpDriver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await driver.connect()
    await driver.identify()
    await driver.program(1, prog("10", "5"))
    await driver.start(1)
    clock.advance(10)
    await driver.read_status()
    await driver.stop(1)
    await driver.close()
    await driver.connect()  # a closed driver opens again
    await driver.read_status()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_server_start_stop_and_port(pump: EmulatedModbusPump, clock: FakeClock) -> None:
    server = ModbusPumpServer(pump, clock)
    await server.start()
    port = server.port
    assert port != 0
    with pytest.raises(RuntimeError, match="already running"):
        await server.start()
    # Another server cannot take a port that is in use.
    with pytest.raises(EnvironmentProblem):
        await ModbusPumpServer(pump, clock, port=port).start()
    await server.stop()
    await server.stop()  # idempotent
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # released


# --- the emulator without a network ----------------------------------------------------------------


def command(m: RegisterMap, channel: int, **values: FieldValue) -> tuple[int, list[int]]:
    """Address and registers of one write covering the named command-area fields."""
    fields = [m.field(f"channel.{name}") for name in values]
    start = min(m.address(f, channel) for f in fields)
    registers = [0] * (max(m.address(f, channel) + f.count for f in fields) - start)
    for f in fields:
        at = m.address(f, channel) - start
        registers[at : at + f.count] = encode(f, values[f.name])
    return start, registers


def request_remote(pump: EmulatedModbusPump) -> None:
    """Ask for remote control as the driver does (§6.1 HR 3 = 1): commands other than stop need it."""
    field = pump.map.field("system.remote_request")
    assert pump.write_holding(pump.map.address(field), [1], 0.0) is None


def test_emulator_answers_only_inside_its_blocks(pump: EmulatedModbusPump) -> None:
    assert pump.read_input(1057, 1, 0.0) is ExceptionCode.ILLEGAL_ADDRESS  # after B+56
    assert pump.read_input(1050, 10, 0.0) is ExceptionCode.ILLEGAL_ADDRESS  # runs off the block
    assert pump.read_input(3000, 1, 0.0) is ExceptionCode.ILLEGAL_ADDRESS  # channel 3 of 2
    assert pump.read_input(0, 0, 0.0) is ExceptionCode.ILLEGAL_VALUE
    assert pump.read_input(1004, 2, 0.0) == [0, 0]  # reserved registers inside a block read 0
    assert pump.write_holding(1061, [0, 0], 0.0) is ExceptionCode.ILLEGAL_ADDRESS  # half of two floats
    assert pump.write_holding(5, [1], 0.0) is ExceptionCode.ILLEGAL_ADDRESS
    assert pump.address_ranges("holding") == (range(4), range(1060, 1074), range(2060, 2074))


def test_emulator_executes_each_sequence_once(pump: EmulatedModbusPump, register_map: RegisterMap) -> None:
    m, codes = register_map, register_map.enum("command").codes
    request_remote(pump)
    program = command(
        m,
        1,
        rate_setpoint=Decimal(60),
        vtbi_setpoint=Decimal(0),
        drug_id_setpoint=0,
        concentration_setpoint=None,
        concentration_unit_setpoint=0,
        sequence=1,
        command=codes["apply-program"],
        token=0x5555,
    )
    assert pump.write_holding(*program, 0.0) is None
    assert pump.write_holding(*command(m, 1, sequence=2, command=codes["start"], token=0x5555), 0.0) is None
    # Stop needs no token: stopping can never be refused for a missing one.
    assert pump.write_holding(*command(m, 1, sequence=3, command=codes["stop"], token=0), 0.0) is None
    assert pump.channel(1).state is ChannelState.PAUSED
    # The same sequence again is the same command, not a new one.
    assert pump.write_holding(*command(m, 1, sequence=3, command=codes["start"], token=0x5555), 1.0) is None
    assert pump.channel(1).state is ChannelState.PAUSED
    assert (reported(pump, "last_sequence"), reported(pump, "last_result")) == (3, 0)
    assert pump.write_holding(*command(m, 1, sequence=4, command=codes["bolus"], token=0x5555), 1.0) is None
    assert reported(pump, "last_result") == m.enum("result").codes["unsupported-command"]


def test_emulator_refuses_a_rate_that_is_not_set(pump: EmulatedModbusPump, register_map: RegisterMap) -> None:
    codes = register_map.enum("command").codes
    request_remote(pump)
    write = command(
        register_map, 1, rate_setpoint=None, sequence=1, command=codes["apply-program"], token=0x5555
    )
    assert pump.write_holding(*write, 0.0) is None
    assert reported(pump, "last_result") == register_map.enum("result").codes["rejected-range"]


def make_pump(register_map: RegisterMap) -> EmulatedModbusPump:
    return EmulatedModbusPump(
        register_map,
        manufacturer="pumpgw rig",
        model="RIG-MC2",
        serial="RIG-0001",
        firmware="1.0.0",
        library_version=42,
        library_name="ICU adult",
        channels=2,
    )


def test_emulator_needs_the_comm_loss_alarm_and_both_policies() -> None:
    renamed = MAP_TEXT.replace('8 = "comm-loss"', '8 = "comm-lost"').replace("comm-loss =", "comm-lost =")
    with pytest.raises(ConfigError) as caught:
        make_pump(parse_map(renamed, "renamed alarm"))
    assert caught.value.key == "bits.alarm"
    with pytest.raises(ConfigError) as caught:
        make_pump(edited_map("enums.comm_loss_policy", '1 = "stop-and-alarm"', '1 = "stop"'))
    assert caught.value.key == "system.comm_loss_policy.enum"


async def test_a_new_library_version_shows_at_once(driver: ModbusTcpDriver, pump: EmulatedModbusPump) -> None:
    assert (await driver.identify()).library_version == "42"
    pump.library_version = 43
    assert (await driver.identify()).library_version == "43"
    with pytest.raises(QuantityError):
        pump.library_version = 2**32  # UINT32 (IR 40-41) cannot hold it
    assert pump.library_version == 43
