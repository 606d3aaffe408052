"""NewEraDriver against EmulatedNewEraPump over a real PTY and real pyserial-asyncio-fast.

No mocks: the driver opens the slave end of a PTY pair exactly as it would open /dev/ttyUSB0, and
the emulated pump answers on the master end. Time on the pump is a FakeClock, so a minute of
infusion takes milliseconds; the only real-time waits are reply timeouts the tests ask for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import pytest

from pumpgw.drivers.base import ChannelProgram, ChannelState, ChannelStatus, PumpDriver
from pumpgw.drivers.newera import NEWERA_CAPABILITIES, NewEraDriver
from pumpgw.drivers.newera_codec import (
    NEED_DATA,
    Alarm,
    CommandError,
    HostDecoder,
    Mode,
    Prompt,
    encode_command,
)
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import (
    ConfigError,
    DeviceError,
    DriverError,
    NoResponse,
    ProtocolError,
    QuantityError,
)
from pumpgw.gateway.quantity import Quantity
from pumpgw.rig.newera_pump import EmulatedNewEraPump, ReplyFault
from pumpgw.rig.pty_link import PtyDeviceServer

ML_H = "mL/h"


@dataclass
class Rig:
    clock: FakeClock
    pump: EmulatedNewEraPump
    server: PtyDeviceServer
    driver: NewEraDriver

    async def status(self) -> ChannelStatus:
        (channel,) = await self.driver.read_status()
        return channel

    async def poll_for(self, seconds: int, every: int = 1) -> ChannelStatus:
        """Advance the clock ``seconds``, reading status every ``every`` s, as the gateway polls."""
        status = await self.status()
        for _ in range(seconds // every):
            self.clock.advance(every)
            status = await self.status()
        return status


def _program(rate: str, vtbi: str) -> ChannelProgram:
    return ChannelProgram(rate=Quantity.of(rate, ML_H), vtbi=Quantity.of(vtbi, "mL"))


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock()
    pump = EmulatedNewEraPump()
    async with PtyDeviceServer(pump, clock) as server:
        driver = NewEraDriver("ne-1", server.path, timeout_s=0.5)
        await driver.connect()
        try:
            rig = Rig(clock, pump, server, driver)
            # The first poll reports the power-up alarm that connecting acknowledged (see below).
            assert (await rig.status()).alarms == ("power-reset",)
            yield rig
        finally:
            await driver.close()


# -- connect and identify -------------------------------------------------------------------------


async def test_connect_sets_safe_mode_and_reports_the_power_up_alarm_once() -> None:
    pump = EmulatedNewEraPump()
    async with PtyDeviceServer(pump, FakeClock()) as server:
        driver = NewEraDriver("ne-1", server.path, timeout_s=0.5)
        assert isinstance(driver, PumpDriver)
        await driver.connect()
        try:
            assert driver.mode is Mode.SAFE
            assert pump.mode is Mode.SAFE
            assert pump.safe_timeout_s == 10
            assert pump.alarm is None  # A?R was the reply to the first SAF, which acknowledged it
            (first,) = await driver.read_status()
            assert first.state is ChannelState.ALARM
            assert first.alarms == ("power-reset",)
            (second,) = await driver.read_status()
            assert second.state is ChannelState.IDLE
            assert second.alarms == ()
        finally:
            await driver.close()


async def test_identify(rig: Rig) -> None:
    identity = await rig.driver.identify()
    assert identity.protocol == "newera"
    assert identity.model == "NE-1000"
    assert identity.firmware == "3.928"
    assert identity.serial is None
    assert identity.library_version is None
    assert identity.channels == 1
    assert rig.driver.capabilities == NEWERA_CAPABILITIES
    assert not rig.driver.capabilities.reports_drug


@pytest.mark.parametrize(("pump_saf", "driver_saf", "mode"), [(0, 10, Mode.SAFE), (10, 0, Mode.BASIC)])
async def test_connect_whatever_mode_the_pump_powered_up_in(
    pump_saf: int, driver_saf: int, mode: Mode
) -> None:
    clock = FakeClock()
    pump = EmulatedNewEraPump(safe_timeout_s=pump_saf)
    async with PtyDeviceServer(pump, clock) as server:
        driver = NewEraDriver("ne-1", server.path, timeout_s=0.5, safe_mode_timeout_s=driver_saf)
        await driver.connect()
        try:
            assert pump.mode is mode
            assert driver.mode is mode
            assert (await driver.identify()).model == "NE-1000"
            (status,) = await driver.read_status()
            assert status.alarms == ("power-reset",)
        finally:
            await driver.close()


async def test_close_and_connect_again(rig: Rig) -> None:
    await rig.driver.close()
    await rig.driver.close()  # idempotent
    with pytest.raises(DriverError, match="not connected"):
        await rig.driver.read_status()
    await rig.driver.connect()
    await rig.driver.connect()  # no-op when connected
    status = await rig.status()
    assert status.alarms == ()  # the pump was not powered off: nothing new to report
    assert status.state is ChannelState.IDLE


async def test_the_port_going_away_is_a_driver_error_not_a_hang(rig: Rig) -> None:
    await rig.server.stop()  # the master end closes: the USB adapter was pulled, say
    with pytest.raises(DriverError) as caught:
        await rig.driver.read_status()
    assert type(caught.value) is DriverError  # not NoResponse: the port is gone, not silent
    assert "closed" in str(caught.value)
    with pytest.raises(DriverError, match="cannot open serial port"):
        await rig.driver.connect()  # a lost port is opened afresh, and here it no longer exists


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigError, match="address"):
        NewEraDriver("ne-1", "/dev/null", address=100)
    with pytest.raises(ConfigError, match="safe_mode_timeout_s"):
        NewEraDriver("ne-1", "/dev/null", safe_mode_timeout_s=256)


async def test_a_port_that_does_not_exist() -> None:
    driver = NewEraDriver("ne-1", "/dev/pumpgw-no-such-port")
    with pytest.raises(DriverError, match="cannot open serial port"):
        await driver.connect()


# -- programming and infusing ---------------------------------------------------------------------


async def test_program_start_and_infuse_one_millilitre_in_a_minute(rig: Rig) -> None:
    await rig.driver.program(1, _program("60", "5"))
    assert rig.pump.dispensed_ml == 0
    await rig.driver.start(1)
    status = await rig.poll_for(60)
    assert status.state is ChannelState.INFUSING
    assert status.rate == Quantity(Decimal(60), ML_H)
    assert status.volume_infused is not None
    assert status.volume_infused.value == Decimal("1.000")
    assert str(status.volume_infused) == "1.000 mL"
    assert status.vtbi == Quantity(Decimal("4.000"), "mL")
    assert rig.pump.channel.infused_ml == Decimal("1.000")


async def test_the_pump_stops_when_the_volume_is_reached(rig: Rig) -> None:
    await rig.driver.program(1, _program("60", "0.5"))
    await rig.driver.start(1)
    status = await rig.poll_for(40, every=5)  # 0.5 mL at 60 mL/h takes 30 s
    assert rig.pump.prompt is Prompt.STOPPED
    assert status.state is ChannelState.COMPLETE
    assert status.volume_infused == Quantity(Decimal("0.500"), "mL")
    assert status.vtbi is not None
    assert status.vtbi.value == 0


async def test_stop_pauses_and_start_resumes(rig: Rig) -> None:
    await rig.driver.program(1, _program("120", "10"))
    await rig.driver.start(1)
    rig.clock.advance(5)
    await rig.driver.stop(1)
    assert (await rig.status()).state is ChannelState.PAUSED
    rig.clock.advance(5)  # paused: nothing flows
    await rig.driver.start(1)
    status = await rig.poll_for(5)
    assert status.volume_infused == Quantity(Decimal("0.333"), "mL")  # 10 s at 120 mL/h


async def test_program_reads_back_what_the_pump_holds(rig: Rig) -> None:
    await rig.driver.program(1, _program("0.125", "1000"))
    assert rig.pump.rate_ml_h == Decimal("0.125")
    assert rig.pump.volume_ml == Decimal(1000)
    status = await rig.status()
    assert status.rate == Quantity(Decimal("0.125"), ML_H)
    assert status.vtbi == Quantity(Decimal(1000), "mL")


async def test_an_out_of_range_rate_is_the_pumps_error_with_its_code(rig: Rig) -> None:
    with pytest.raises(DeviceError) as caught:
        await rig.driver.program(1, _program("2000", "5"))  # above the emulated 1500 mL/h
    assert caught.value.code == "?OOR"
    assert caught.value.text == "data out of range"
    assert caught.value.command == "RAT2000MH"


@pytest.mark.hazard("HAZ-012")
async def test_a_rate_the_format_cannot_hold_is_refused_before_sending(rig: Rig) -> None:
    sent = rig.server.bytes_received
    with pytest.raises(QuantityError, match="at most 3"):
        await rig.driver.program(1, _program("12.3456", "5"))
    with pytest.raises(QuantityError, match="at most 4"):
        await rig.driver.program(1, _program("12345", "5"))
    assert rig.server.bytes_received == sent


async def test_programming_while_infusing_is_refused_without_a_partial_change(rig: Rig) -> None:
    await rig.driver.program(1, _program("60", "5"))
    await rig.driver.start(1)
    with pytest.raises(DeviceError) as caught:
        await rig.driver.program(1, _program("90", "5"))
    assert caught.value.code == "?NA"
    assert rig.pump.rate_ml_h == 60


async def test_channel_two_does_not_exist(rig: Rig) -> None:
    with pytest.raises(DriverError, match="channel 2"):
        await rig.driver.start(2)


async def test_start_without_a_rate_is_refused(rig: Rig) -> None:
    with pytest.raises(DeviceError) as caught:
        await rig.driver.start(1)
    assert caught.value.code == "?NA"


# -- faults ---------------------------------------------------------------------------------------


async def test_a_pump_that_never_answers_is_no_response_within_the_timeout() -> None:
    clock = FakeClock()
    pump = EmulatedNewEraPump(address=0)
    async with PtyDeviceServer(pump, clock) as server:
        # Address 5 is not this pump's: it stays silent, as a pump on a network would.
        driver = NewEraDriver("ne-5", server.path, address=5, timeout_s=0.1)
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(NoResponse) as caught:
            await driver.connect()
        elapsed = loop.time() - began
        assert caught.value.timeout_s == 0.1
        assert caught.value.command == "SAF10"
        assert 0.1 <= elapsed < 0.5
        assert driver.mode is None
        await driver.close()


async def test_a_lost_reply_is_no_response_and_the_next_exchange_works() -> None:
    pump = EmulatedNewEraPump()
    async with PtyDeviceServer(pump, FakeClock()) as server:
        driver = NewEraDriver("ne-1", server.path, timeout_s=0.1)
        await driver.connect()
        try:
            pump.faults.append(ReplyFault.NO_ANSWER)
            with pytest.raises(NoResponse) as caught:
                await driver.identify()
            assert caught.value.command == "VER"
            assert (await driver.identify()).model == "NE-1000"
        finally:
            await driver.close()


@pytest.mark.parametrize("fault", [ReplyFault.CORRUPT_CRC, ReplyFault.BAD_LENGTH])
async def test_a_corrupt_reply_is_a_protocol_error_and_the_next_exchange_works(
    rig: Rig, fault: ReplyFault
) -> None:
    rig.pump.faults.append(fault)
    with pytest.raises(ProtocolError) as caught:
        await rig.driver.identify()
    assert caught.value.command == "VER"
    assert caught.value.pump == "ne-1"
    assert (await rig.driver.identify()).model == "NE-1000"


async def test_a_broken_frame_is_a_protocol_error_and_the_reply_behind_it_is_not_taken_later(
    rig: Rig,
) -> None:
    rig.pump.faults.append(ReplyFault.BROKEN_FRAME_BEFORE)
    with pytest.raises(ProtocolError):
        await rig.driver.identify()
    # The good VER reply that followed the broken frame is stale now; were it kept, the status
    # query below would take it, and every reply after would be one behind (RAT getting the
    # status reply, and so on).
    status = await rig.status()
    assert status.state is ChannelState.IDLE
    assert (await rig.driver.identify()).firmware == "3.928"


async def test_line_noise_before_a_reply_is_skipped(rig: Rig) -> None:
    rig.pump.faults.append(ReplyFault.GARBAGE_BEFORE)
    assert (await rig.driver.identify()).model == "NE-1000"


async def test_safe_mode_timeout_stops_the_pump_when_the_host_goes_quiet(rig: Rig) -> None:
    await rig.driver.program(1, _program("60", "5"))
    await rig.driver.start(1)  # the last packet: the pump's 10 s timer starts here
    rig.clock.advance(11)
    rig.pump.poll(rig.clock.monotonic())
    assert rig.pump.channel.state is ChannelState.IDLE
    assert rig.pump.alarm is Alarm.COMMS_TIMEOUT
    assert rig.pump.channel.infused_ml == Decimal("0.167")  # 10 s at 60 mL/h, then it stopped
    status = await rig.status()
    assert status.state is ChannelState.ALARM
    assert status.alarms == ("comms-timeout",)
    assert status.volume_infused == Quantity(Decimal("0.167"), "mL")
    status = await rig.poll_for(60, every=5)  # a minute later: still stopped, alarm reported once
    assert status.state is ChannelState.IDLE
    assert status.alarms == ()
    assert status.volume_infused == Quantity(Decimal("0.167"), "mL")


@pytest.mark.hazard("HAZ-014")
async def test_polling_every_half_timeout_keeps_the_pump_running(rig: Rig) -> None:
    await rig.driver.program(1, _program("60", "5"))
    await rig.driver.start(1)
    status = await rig.poll_for(60, every=5)
    assert status.state is ChannelState.INFUSING
    assert status.alarms == ()


# -- the emulated pump on its own (sans-I/O) ------------------------------------------------------


def _ask(pump: EmulatedNewEraPump, command: str, argument: str = "", now: float = 0.0) -> tuple[object, ...]:
    decoder = HostDecoder(mode=None)
    decoder.receive_data(pump.receive(encode_command(0, command, argument, mode=Mode.SAFE), now))
    reply = decoder.next_event()
    assert reply is not NEED_DATA
    assert decoder.next_event() is NEED_DATA
    return (reply.prompt or reply.alarm, reply.error, reply.data)


def test_emulated_pump_commands() -> None:
    pump = EmulatedNewEraPump(safe_timeout_s=0)  # basic mode: no comms timeout while time jumps
    assert _ask(pump, "VER") == (Alarm.RESET, None, "")  # power-up alarm first; VER not executed
    assert _ask(pump, "VER") == (Prompt.STOPPED, None, "NE1000V3.928")
    assert _ask(pump, "DIA") == (Prompt.STOPPED, None, "26.59")
    assert _ask(pump, "VOL") == (Prompt.STOPPED, None, "0.000ML")  # > 14 mm: mL (§2.5)
    assert _ask(pump, "FOO") == (Prompt.STOPPED, CommandError.NOT_RECOGNISED, "")
    assert _ask(pump, "RAT", "12.345MH") == (Prompt.STOPPED, CommandError.OUT_OF_RANGE, "")
    assert _ask(pump, "RAT", "0MH") == (Prompt.STOPPED, CommandError.OUT_OF_RANGE, "")
    assert _ask(pump, "DIA", "99") == (Prompt.STOPPED, CommandError.OUT_OF_RANGE, "")
    assert _ask(pump, "SAF", "256") == (Prompt.STOPPED, CommandError.OUT_OF_RANGE, "")
    assert _ask(pump, "RAT", "100UM") == (Prompt.STOPPED, None, "")
    assert _ask(pump, "RAT") == (Prompt.STOPPED, None, "100.0UM")
    assert pump.rate_ml_h == Decimal(6)
    assert _ask(pump, "RUN") == (Prompt.INFUSING, None, "")
    assert _ask(pump, "RAT", "5MH") == (Prompt.INFUSING, CommandError.NOT_APPLICABLE, "")  # units
    assert _ask(pump, "RAT", "200") == (Prompt.INFUSING, None, "")  # value: takes effect at once
    assert _ask(pump, "STP", now=60.0) == (Prompt.PAUSED, None, "")
    assert _ask(pump, "DIS", now=60.0) == (Prompt.PAUSED, None, "I0.200W0.000ML")  # 60 s at 12 mL/h
    assert _ask(pump, "STP", now=60.0) == (Prompt.STOPPED, None, "")
    assert _ask(pump, "CLD", "INF", now=60.0) == (Prompt.STOPPED, None, "")
    assert _ask(pump, "DIS", now=60.0) == (Prompt.STOPPED, None, "I0.000W0.000ML")
    assert _ask(pump, "SAF", now=60.0) == (Prompt.STOPPED, None, "0")
    assert _ask(pump, "SAF", "5", now=60.0) == (Prompt.STOPPED, None, "")
    assert pump.mode is Mode.SAFE


def test_emulated_pump_packet_rules() -> None:
    pump = EmulatedNewEraPump()
    packet = encode_command(0, "VER", mode=Mode.SAFE)
    corrupt = packet[:-2] + bytes((packet[-2] ^ 1,)) + packet[-1:]
    decoder = HostDecoder(mode=Mode.SAFE)
    decoder.receive_data(pump.receive(corrupt, 0.0))
    reply = decoder.next_event()
    assert reply is not NEED_DATA
    assert reply.error is CommandError.BAD_PACKET
    assert pump.alarm is Alarm.RESET  # a bad packet is not a valid command: nothing acknowledged
    assert pump.receive(b"0VER\r", 0.0) == b""  # basic line in safe mode: not a packet
    assert pump.receive(encode_command(7, "VER", mode=Mode.SAFE), 0.0) == b""  # another address
    assert pump.receive(packet[:5], 0.0) == b""  # half a packet ...
    assert pump.receive(packet, 1.0) != b""  # ... discarded after 0.5 s without a byte (§2.3)


def test_emulated_pump_in_basic_mode_answers_basic_lines() -> None:
    pump = EmulatedNewEraPump(safe_timeout_s=0)
    assert pump.receive(b"0VER\r", 0.0) == b"\x0200A?R\x03"
    assert pump.receive(b" 0 ver\r", 0.0) == b"\x0200SNE1000V3.928\x03"


def test_keypad_programming_runs_without_starting_the_safe_mode_timer() -> None:
    pump = EmulatedNewEraPump()
    pump.keypad_program_and_run(Decimal("20"), Decimal("5"), now=0.0)
    pump.poll(3600.0)  # an hour without a packet: no comms timeout, the timer never started
    assert pump.alarm is None
    assert pump.dispensed_ml == Decimal("5.000")  # ran to its volume: 20 mL/h for 15 min


def test_keypad_refuses_what_the_protocol_refuses() -> None:
    pump = EmulatedNewEraPump(max_rate_ml_h=Decimal(100))
    with pytest.raises(ValueError, match="keypad RAT 200MH"):
        pump.keypad_program_and_run(Decimal("200"), Decimal("5"), now=0.0)
