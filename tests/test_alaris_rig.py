"""AlarisDriver against EmulatedAlarisPump over a real PTY and real pyserial-asyncio-fast.

No mocks: the driver opens the slave end of a PTY pair exactly as it would open /dev/ttyUSB0, and
the emulated pump answers on the master end. Time on the pump is a FakeClock, so a minute of
infusion takes milliseconds; the only real-time waits are reply timeouts the tests ask for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import pytest

from pumpgw.drivers.alaris import ALARIS_CAPABILITIES, AlarisDriver
from pumpgw.drivers.alaris_codec import (
    NEED_DATA,
    Alarm,
    Command,
    DeviceDecoder,
    ErrorCode,
    ErrorReply,
    HostDecoder,
    InfusionMode,
    Reply,
    encode_frame,
    parse_inf,
)
from pumpgw.drivers.base import ChannelProgram, ChannelState, ChannelStatus, PumpDriver
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
from pumpgw.rig.alaris_pump import EmulatedAlarisPump, ReplyFault
from pumpgw.rig.pty_link import PtyDeviceServer

ML_H = "mL/h"


@dataclass
class Rig:
    clock: FakeClock
    pump: EmulatedAlarisPump
    server: PtyDeviceServer
    driver: AlarisDriver

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

    def now(self) -> float:
        return self.clock.monotonic()

    def sent(self) -> list[tuple[str, ...]]:
        return list(self.pump.received)


# Read through a call, so that mypy does not narrow a property across the awaits that change it.
def _unsettled(driver: AlarisDriver) -> str | None:
    return driver.unsettled_write


def _remote(pump: EmulatedAlarisPump) -> bool:
    return pump.remote_control


def _program(rate: str, vtbi: str) -> ChannelProgram:
    return ChannelProgram(rate=Quantity.of(rate, ML_H), vtbi=Quantity.of(vtbi, "mL"))


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock()
    pump = EmulatedAlarisPump()
    async with PtyDeviceServer(pump, clock) as server:
        driver = AlarisDriver("al-1", server.path, timeout_s=0.5)
        await driver.connect()
        try:
            yield Rig(clock, pump, server, driver)
        finally:
            await driver.close()


# -- connect, identify, status --------------------------------------------------------------------


async def test_connect_reads_the_protocol_and_the_serial_number(rig: Rig) -> None:
    assert isinstance(rig.driver, PumpDriver)
    assert rig.sent() == [("COMMS_PROTOCOL",), ("INST_SERIALNO",)]
    assert rig.driver.serial == "12345678"
    assert rig.driver.comms_protocol == "GH-like Rev 0.1"


async def test_identify(rig: Rig) -> None:
    identity = await rig.driver.identify()
    assert identity.protocol == "alaris"
    assert identity.manufacturer == "Alaris-style (GH/CC/Asena protocol)"
    assert identity.model == "GH-like"
    assert identity.serial == "12345678"
    assert identity.firmware == "unknown"
    assert identity.library_version is None
    assert identity.channels == 1
    assert rig.driver.capabilities == ALARIS_CAPABILITIES
    assert ALARIS_CAPABILITIES.remote_program
    assert ALARIS_CAPABILITIES.remote_start
    assert ALARIS_CAPABILITIES.remote_stop
    assert not ALARIS_CAPABILITIES.reports_drug
    assert not ALARIS_CAPABILITIES.reports_battery
    assert not ALARIS_CAPABILITIES.reports_library_version


async def test_read_status_of_an_idle_pump(rig: Rig) -> None:
    status = await rig.status()
    assert status == ChannelStatus(
        channel=1,
        state=ChannelState.IDLE,
        rate=Quantity(Decimal("0.00"), ML_H),
        vtbi=None,
        volume_infused=Quantity(Decimal("0.000"), "mL"),
        alarms=(),
        remote_control=False,
    )
    assert rig.sent()[-3:] == [("INF",), ("INF_VTBI",), ("REMOTE_CTRL",)]
    assert not rig.pump.remote_control  # reading never takes remote control


# -- programming and infusing ---------------------------------------------------------------------


@pytest.mark.hazard("HAZ-015")
async def test_program_takes_remote_control_and_reads_back(rig: Rig) -> None:
    before = len(rig.sent())
    await rig.driver.program(1, _program("60", "5"))
    assert rig.sent()[before:] == [
        ("REMOTE_CTRL", "ENABLED", "A12B"),  # the CRC of serial 12345678 (reference §3)
        ("INF_VTBI", "ACTIV", "5.000", "ml", "STOP"),
        ("INF_RATE", "60.00", "ml/h"),
        ("INF_RATE",),
        ("INF_VTBI",),
    ]
    assert rig.pump.rate_ml_h == 60
    assert rig.pump.vtbi_ml == 5
    status = await rig.status()
    assert status.state is ChannelState.IDLE
    assert status.vtbi == Quantity(Decimal("5.000"), "mL")
    assert status.remote_control is True


async def test_start_and_the_volume_grows_with_the_clock(rig: Rig) -> None:
    await rig.driver.program(1, _program("60", "5"))
    await rig.driver.start(1)
    assert rig.pump.mode is InfusionMode.INFUSING
    status = await rig.poll_for(60)
    assert status.state is ChannelState.INFUSING
    assert status.rate == Quantity(Decimal(60), ML_H)
    assert status.volume_infused == Quantity(Decimal("1.000"), "mL")
    assert status.vtbi == Quantity(Decimal("4.000"), "mL")
    assert status.remote_control is True  # polling once a second keeps it (quiet time 10 s)
    assert rig.pump.lapses == 0


async def test_stop_holds_and_start_resumes(rig: Rig) -> None:
    await rig.driver.program(1, _program("120", "10"))
    await rig.driver.start(1)
    rig.clock.advance(5)
    await rig.driver.stop(1)
    status = await rig.status()
    assert status.state is ChannelState.PAUSED
    assert status.rate == Quantity(Decimal("0.00"), ML_H)  # the rate delivered now
    rig.clock.advance(5)  # on hold: nothing flows
    await rig.driver.start(1)
    status = await rig.poll_for(5)
    assert status.volume_infused == Quantity(Decimal("0.333"), "mL")  # 10 s at 120 mL/h
    assert status.vtbi == Quantity(Decimal("9.667"), "mL")


async def test_vtbi_reached_stops_with_complete_and_an_alarm(rig: Rig) -> None:
    await rig.driver.program(1, _program("60", "0.5"))
    await rig.driver.start(1)
    status = await rig.poll_for(40, every=5)  # 0.5 mL at 60 mL/h takes 30 s
    assert status.state is ChannelState.COMPLETE
    assert status.alarms == ("vtbi-complete",)
    assert status.volume_infused == Quantity(Decimal("0.500"), "mL")
    assert status.vtbi == Quantity(Decimal("0.000"), "mL")
    with pytest.raises(DeviceError) as caught:
        await rig.driver.start(1)
    assert caught.value.code == "BAD_STATE"
    await rig.driver.program(1, _program("60", "1"))  # a new VTBI clears it
    status = await rig.status()
    assert status.state is ChannelState.IDLE
    assert status.alarms == ()


async def test_a_vtbi_of_zero_is_a_continuous_infusion(rig: Rig) -> None:
    await rig.driver.program(1, _program("10", "0"))
    assert ("INF_VTBI", "DEACT") in rig.sent()
    assert rig.pump.vtbi_ml is None
    await rig.driver.start(1)
    status = await rig.poll_for(360, every=10)
    assert status.vtbi is None
    assert status.volume_infused == Quantity(Decimal("1.000"), "mL")
    assert status.state is ChannelState.INFUSING


@pytest.mark.hazard("HAZ-012")
async def test_a_value_the_format_cannot_hold_is_refused_before_sending(rig: Rig) -> None:
    sent = rig.server.bytes_received
    with pytest.raises(QuantityError, match="more than 2 decimals"):
        await rig.driver.program(1, _program("12.345", "5"))
    with pytest.raises(QuantityError, match="more than 3 decimals"):
        await rig.driver.program(1, _program("12", "5.0001"))
    assert rig.server.bytes_received == sent


async def test_an_out_of_range_rate_is_the_pumps_error_with_its_code(rig: Rig) -> None:
    with pytest.raises(DeviceError) as caught:
        await rig.driver.program(1, _program("1500", "5"))  # MDPNP's limit: 1200 mL/h
    assert caught.value.code == ErrorCode.BAD_VALUE
    assert caught.value.command == "INF_RATE^1500.00^ml/h"
    assert "1200" in caught.value.text
    assert _unsettled(rig.driver) is None  # a refusal is a known outcome


async def test_programming_while_infusing_is_refused_without_a_partial_change(rig: Rig) -> None:
    await rig.driver.program(1, _program("60", "5"))
    await rig.driver.start(1)
    with pytest.raises(DeviceError) as caught:
        await rig.driver.program(1, _program("90", "5"))
    assert caught.value.code == "BAD_STATE"
    assert rig.pump.rate_ml_h == 60  # the VTBI goes first, so the rate was never sent


async def test_channel_two_does_not_exist(rig: Rig) -> None:
    sent = rig.server.bytes_received
    for call in (rig.driver.start(2), rig.driver.stop(2), rig.driver.program(2, _program("1", "1"))):
        with pytest.raises(DriverError, match="channel 2"):
            await call
    assert rig.server.bytes_received == sent


# -- remote control -------------------------------------------------------------------------------


async def test_a_wrong_code_is_refused_and_nothing_changes() -> None:
    clock = FakeClock()
    pump = EmulatedAlarisPump(remote_code="0000")  # not the CRC of its serial: the host cannot know it
    pump.keypad_program_and_run(Decimal(30), Decimal(10), clock.monotonic())
    async with PtyDeviceServer(pump, clock) as server:
        driver = AlarisDriver("al-1", server.path, timeout_s=0.5)
        await driver.connect()
        try:
            with pytest.raises(DeviceError) as caught:
                await driver.program(1, _program("60", "5"))
            assert caught.value.code == "BAD_CODE"
            assert caught.value.command == "REMOTE_CTRL^ENABLED^****"  # the code is not logged
            assert pump.rate_ml_h == 30
            with pytest.raises(DeviceError, match="BAD_CODE"):
                await driver.start(1)
            # A stop is never refused for want of remote control.
            await driver.stop(1)
            (status,) = await driver.read_status()
            assert status.state is ChannelState.PAUSED
            assert status.remote_control is False
        finally:
            await driver.close()


async def test_remote_control_lapses_after_the_quiet_time_and_the_pump_keeps_infusing(rig: Rig) -> None:
    await rig.driver.program(1, _program("60", "10"))
    await rig.driver.start(1)
    rig.clock.advance(9)
    assert (await rig.status()).remote_control is True  # traffic within 10 s restarts the timer
    rig.clock.advance(10)  # the gateway went quiet
    status = await rig.status()
    assert status.remote_control is False
    assert status.state is ChannelState.INFUSING  # back under local control, still infusing
    assert status.volume_infused == Quantity(Decimal("0.317"), "mL")  # 19 s at 60 mL/h
    assert rig.pump.lapses == 1
    await rig.driver.stop(1)  # the next write takes remote control again
    assert (await rig.status()).remote_control is True


async def test_the_emulated_pump_refuses_writes_without_remote_control() -> None:
    pump = EmulatedAlarisPump()
    for fields in [
        ("INF_START",),
        ("INF_RATE", "5.00", "ml/h"),
        ("INF_VTBI", "DEACT"),
        ("INF_BOLUS", "ENABLED"),
    ]:
        assert _ask(pump, fields) == ErrorReply(ErrorCode.NOT_REMOTE, fields[0], "take remote control first")
    assert _ask(pump, ("INF_STOP",)) == Reply(("INF_STOP",))  # stop: always
    assert _ask(pump, ("INF_RATE",)) == Reply(("INF_RATE", "0.00", "ml/h"))  # reads: always
    assert _ask(pump, ("REMOTE_CTRL", "ENABLED", "FFFF")) == ErrorReply(
        ErrorCode.BAD_CODE, "REMOTE_CTRL", "code FFFF does not match this pump's serial number"
    )
    assert not _remote(pump)


# -- device alarms --------------------------------------------------------------------------------


async def test_an_occlusion_stops_the_infusion_and_shows_in_status(rig: Rig) -> None:
    await rig.driver.program(1, _program("60", "10"))
    await rig.driver.start(1)
    await rig.poll_for(30)
    rig.pump.raise_alarm("occlusion", rig.now())
    status = await rig.poll_for(30)
    assert status.state is ChannelState.ALARM
    assert status.alarms == ("occlusion",)
    assert status.volume_infused == Quantity(Decimal("0.500"), "mL")  # nothing after the alarm
    with pytest.raises(DeviceError) as caught:
        await rig.driver.start(1)
    assert caught.value.code == "BAD_STATE"
    assert "occlusion" in caught.value.text
    rig.pump.clear_alarm("occlusion", rig.now())
    status = await rig.status()
    assert status.state is ChannelState.PAUSED  # a pump never restarts by itself
    await rig.driver.start(1)
    assert (await rig.poll_for(30)).volume_infused == Quantity(Decimal("1.000"), "mL")


@pytest.mark.parametrize(
    ("name", "label", "stops"),
    [
        ("air-in-line", "air-in-line", True),
        ("syringe-empty", "syringe-empty", True),
        ("container-empty", "syringe-empty", True),  # the rig's common name
        ("occlusion-downstream", "occlusion", True),
        ("door-open", "door-open", True),
        ("battery-low", "battery-low", False),
        ("near-empty", "near-empty", False),
    ],
)
async def test_device_alarms(rig: Rig, name: str, label: str, stops: bool) -> None:
    await rig.driver.program(1, _program("60", "10"))
    await rig.driver.start(1)
    rig.pump.raise_alarm(name, rig.now())
    status = await rig.poll_for(60, every=5)
    assert status.alarms == (label,)
    assert status.state is (ChannelState.ALARM if stops else ChannelState.INFUSING)
    assert status.volume_infused == Quantity(Decimal("0.000" if stops else "1.000"), "mL")
    rig.pump.clear_alarms(rig.now())
    assert (await rig.status()).alarms == ()


def test_alarms_the_pump_cannot_report() -> None:
    pump = EmulatedAlarisPump()
    for name in ("vtbi-complete", "motor-stall", "fire"):
        with pytest.raises(ValueError, match=name):
            pump.raise_alarm(name, 0.0)


# -- faults ---------------------------------------------------------------------------------------


async def test_a_pump_that_never_answers_is_no_response_within_the_timeout() -> None:
    pump = EmulatedAlarisPump()
    pump.faults.extend([ReplyFault.NO_ANSWER] * 2)  # the read and its one retry
    async with PtyDeviceServer(pump, FakeClock()) as server:
        driver = AlarisDriver("al-1", server.path, timeout_s=0.1)
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(NoResponse) as caught:
            await driver.connect()
        elapsed = loop.time() - began
        assert caught.value.timeout_s == 0.1
        assert caught.value.command == "COMMS_PROTOCOL"
        assert 0.2 <= elapsed < 0.8
        assert list(pump.received) == [("COMMS_PROTOCOL",)] * 2
        assert driver.comms_protocol is None
        with pytest.raises(DriverError, match="not connected"):
            await driver.read_status()  # the port was closed again
        await driver.connect()  # and the pump answers now
        assert driver.serial == "12345678"
        await driver.close()


async def test_a_lost_reply_to_a_read_is_asked_again(rig: Rig) -> None:
    rig.pump.faults.append(ReplyFault.NO_ANSWER)
    assert (await rig.driver.identify()).serial == "12345678"
    assert rig.sent()[2:] == [("COMMS_PROTOCOL",), ("COMMS_PROTOCOL",), ("INST_SERIALNO",)]


@pytest.mark.hazard("HAZ-014")
@pytest.mark.hazard("HAZ-015")
async def test_a_write_is_never_sent_twice_and_the_next_write_reads_the_pump_first(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    await rig.driver.program(1, _program("60", "5"))
    rig.pump.fail_reply_to("INF_START", ReplyFault.NO_ANSWER)  # the pump starts; its reply is lost
    with pytest.raises(NoResponse) as caught:
        await rig.driver.start(1)
    assert caught.value.command == "INF_START"
    assert rig.sent().count(("INF_START",)) == 1
    assert _unsettled(rig.driver) == "INF_START"
    assert rig.pump.mode is InfusionMode.INFUSING  # it did start
    before = len(rig.sent())
    with (
        caplog.at_level(logging.WARNING, logger="pumpgw.drivers.alaris"),
        pytest.raises(DeviceError) as refused,
    ):
        await rig.driver.program(1, _program("90", "5"))
    assert refused.value.code == "BAD_STATE"  # the VTBI cannot change while infusing
    assert rig.sent()[before:] == [
        ("INF",),  # the state first ...
        ("INF_VTBI",),
        ("REMOTE_CTRL",),
        ("REMOTE_CTRL", "ENABLED", "A12B"),  # ... then the write
        ("INF_VTBI", "ACTIV", "5.000", "ml", "STOP"),
    ]
    assert "outcome of INF_START was unknown; the pump now shows infusing" in caplog.text
    assert _unsettled(rig.driver) is None
    assert rig.sent().count(("INF_START",)) == 1


@pytest.mark.hazard("HAZ-015")
async def test_a_status_read_settles_an_unknown_write(rig: Rig) -> None:
    await rig.driver.program(1, _program("60", "5"))
    rig.pump.fail_reply_to("INF_START", ReplyFault.CORRUPT_CRC)
    with pytest.raises(ProtocolError):
        await rig.driver.start(1)
    assert _unsettled(rig.driver) == "INF_START"  # a corrupt reply: the outcome is unknown
    assert (await rig.status()).state is ChannelState.INFUSING
    assert _unsettled(rig.driver) is None
    before = len(rig.sent())
    await rig.driver.stop(1)
    assert rig.sent()[before] == ("REMOTE_CTRL", "ENABLED", "A12B")  # no second read first


async def test_a_corrupt_crc_is_a_protocol_error_and_the_next_exchange_works(rig: Rig) -> None:
    rig.pump.faults.append(ReplyFault.CORRUPT_CRC)
    with pytest.raises(ProtocolError) as caught:
        await rig.driver.identify()
    assert caught.value.command == "COMMS_PROTOCOL"
    assert caught.value.pump == "al-1"
    assert "does not match" in caught.value.reason
    assert (await rig.driver.identify()).model == "GH-like"


@pytest.mark.parametrize("fault", [ReplyFault.GARBAGE_BEFORE, ReplyFault.ABORTED_BEFORE])
async def test_noise_and_an_aborted_frame_before_a_reply_are_skipped(rig: Rig, fault: ReplyFault) -> None:
    rig.pump.faults.append(fault)
    assert (await rig.driver.identify()).model == "GH-like"


async def test_a_late_reply_is_not_taken_for_the_next_one() -> None:
    # A reply that comes after its request timed out must not answer the next request.
    clock = FakeClock()
    pump = _LateReplies(EmulatedAlarisPump())
    async with PtyDeviceServer(pump, clock) as server:
        driver = AlarisDriver("al-1", server.path, timeout_s=0.2, read_retries=0)
        await driver.connect()
        try:
            pump.hold_next = True
            with pytest.raises(NoResponse):
                await driver.identify()  # COMMS_PROTOCOL's reply is held back ...
            pump.release_with_next = True  # ... and sent just before the next reply
            status = await driver.read_status()
            assert status[0].state is ChannelState.IDLE
        finally:
            await driver.close()


class _LateReplies:
    """Wraps a pump: holds one reply back and sends it in front of a later one."""

    def __init__(self, pump: EmulatedAlarisPump) -> None:
        self.pump = pump
        self.hold_next = False
        self.release_with_next = False
        self._held = b""

    def receive(self, data: bytes, now: float) -> bytes:
        reply = self.pump.receive(data, now)
        if self.hold_next and reply:
            self.hold_next, self._held = False, reply
            return b""
        if self.release_with_next and reply:
            self.release_with_next, held, self._held = False, self._held, b""
            return held + reply
        return reply


async def test_another_pump_on_the_port_is_not_reported_as_this_one(rig: Rig) -> None:
    rig.pump.serial = "87654321"  # swapped for another pump while connected
    with pytest.raises(DriverError, match="another pump"):
        await rig.driver.read_status()
    assert (await rig.driver.identify()).serial == "87654321"  # identify learns the new one
    assert (await rig.status()).state is ChannelState.IDLE
    await rig.driver.program(1, _program("5", "1"))  # with the new pump's code
    assert ("REMOTE_CTRL", "ENABLED", "9B4D") in rig.sent()


# -- the link -------------------------------------------------------------------------------------


async def test_close_gives_remote_control_back_and_connect_again_works(rig: Rig) -> None:
    await rig.driver.program(1, _program("60", "5"))
    assert _remote(rig.pump)
    await rig.driver.close()
    assert rig.sent()[-2:] == [("REMOTE_CTRL", "DISABLED"), ("REMOTE_CFG", "DISABLED")]
    assert not _remote(rig.pump)
    await rig.driver.close()  # idempotent
    with pytest.raises(DriverError, match="not connected"):
        await rig.driver.read_status()
    await rig.driver.connect()
    await rig.driver.connect()  # no-op when connected
    status = await rig.status()
    assert status.vtbi == Quantity(Decimal("5.000"), "mL")
    assert status.remote_control is False


async def test_close_is_bounded_when_the_pump_is_silent(rig: Rig) -> None:
    rig.pump.faults.extend([ReplyFault.NO_ANSWER] * 2)
    async with asyncio.timeout(3):
        await rig.driver.close()  # two unanswered commands, 0.5 s each, never raises
    with pytest.raises(DriverError, match="not connected"):
        await rig.driver.read_status()


async def test_the_port_going_away_is_a_driver_error_not_a_hang(rig: Rig) -> None:
    await rig.server.stop()  # the master end closes: the USB adapter was pulled, say
    with pytest.raises(DriverError) as caught:
        await rig.driver.read_status()
    assert type(caught.value) is DriverError  # not NoResponse: the port is gone, not silent
    assert "closed" in str(caught.value)
    with pytest.raises(DriverError, match="cannot open serial port"):
        await rig.driver.connect()


async def test_a_port_that_does_not_exist() -> None:
    driver = AlarisDriver("al-1", "/dev/pumpgw-no-such-port")
    with pytest.raises(DriverError, match="cannot open serial port"):
        await driver.connect()
    await driver.close()


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        AlarisDriver("al-1", "/dev/null", timeout_s=0)
    with pytest.raises(ConfigError, match="read_retries"):
        AlarisDriver("al-1", "/dev/null", read_retries=-1)


# -- the emulated pump on its own (sans-I/O) ------------------------------------------------------


def _ask(pump: EmulatedAlarisPump, fields: tuple[str, ...], now: float = 0.0) -> Reply | ErrorReply:
    decoder = HostDecoder()
    decoder.receive_data(pump.receive(encode_frame(fields), now))
    reply = decoder.next_event()
    assert reply is not NEED_DATA
    assert decoder.next_event() is NEED_DATA
    return reply


def test_the_emulator_answers_as_mdpnps_captures_show() -> None:
    # Replies quoted by MDPNP's simulators from an Alaris GH, byte for byte (tests/test_alaris_codec.py).
    pump = EmulatedAlarisPump(serial="8002-51740", model="Asena", protocol_revision="2.1.5")
    assert pump.receive(b"!INST_SERIALNO|457D\r", 0.0) == b"!INST_SERIALNO^8002-51740|050B\r"
    assert pump.receive(b"!COMMS_PROTOCOL|E8DA\r", 0.0) == b"!COMMS_PROTOCOL^Asena Rev 2.1.5|661A\r"
    assert pump.receive(encode_frame(("COMMS_RESPONSE_MAX",)), 0.0) == b"!COMMS_RESPONSE_MAX^4000^ms|DFDF\r"
    # The reference's verified REMOTE_CTRL^ENABLED^3CC1 is this pump's code.
    assert (
        pump.receive(b"!REMOTE_CTRL^ENABLED^3CC1|B1F1\r", 0.0)
        == b"!REMOTE_CTRL^ENABLED^****^PERMIT^0^ms|7BB0\r"
    )
    assert _remote(pump)
    assert pump.receive(encode_frame(("ALARM",)), 0.0) == b"!ALARM^AL_NOALM^ ^ |C73B\r"
    assert pump.receive(b"!REMQUERY^DEACT|F295\r", 0.0) == b"!REMQUERY^DEACT^^^^|E5C9\r"
    assert pump.receive(b"!INF_RATE^5.00^ml/h|1BAA\r", 0.0) == b"!INF_RATE^5.00^ml/h|1BAA\r"
    assert (
        pump.receive(b"!INF_VTBI^ACTIV^11.000^ml^STOP|4433\r", 0.0)
        == b"!INF_VTBI^ACTIV^11.000^ml^STOP|4433\r"
    )
    assert pump.receive(b"!INF_START|38F3\r", 0.0) == b"!INF_START|38F3\r"
    assert pump.receive(b"!INF_STOP|CD57\r", 0.0) == b"!INF_STOP|CD57\r"
    assert pump.receive(b"!REMOTE_CTRL^DISABLED|EF95\r", 0.0) == b"!REMOTE_CTRL^DISABLED|EF95\r"


def test_emulated_pump_commands() -> None:
    pump = EmulatedAlarisPump()
    assert _ask(pump, ("FOO",)) == ErrorReply(
        ErrorCode.UNKNOWN_COMMAND, "FOO", "FOO is not a command of this pump"
    )
    assert _ask(pump, ("REMOTE_CTRL",)) == Reply(("REMOTE_CTRL", "DISABLED"))
    assert _ask(pump, ("REMOTE_CTRL", "ENABLED", "A12B")) == Reply(
        ("REMOTE_CTRL", "ENABLED", "****", "PERMIT", "0", "ms")
    )
    assert _ask(pump, ("REMOTE_CTRL",)) == Reply(("REMOTE_CTRL", "ENABLED", "****", "PERMIT", "0", "ms"))
    assert _ask(pump, ("INST_SERIALNO", "x")) == ErrorReply(
        ErrorCode.BAD_VALUE, "INST_SERIALNO", "this command takes no values"
    )
    for rate in ("0.05", "1200.01", "5.123", "5e1", "-1"):
        reply = _ask(pump, ("INF_RATE", rate, "ml/h"))
        assert isinstance(reply, ErrorReply)
        assert reply.code is ErrorCode.BAD_VALUE, rate
    assert _ask(pump, ("INF_RATE", "5", "ml/min")) == ErrorReply(
        ErrorCode.BAD_VALUE, "INF_RATE", "expected a rate in ml/h"
    )
    assert _ask(pump, ("INF_RATE", "0.1", "ml/h")) == Reply(("INF_RATE", "0.10", "ml/h"))  # MDPNP sends 0.1
    assert _ask(pump, ("INF_BOLUS", "ENABLED")) == Reply(("INF_BOLUS", "ENABLED"))
    assert pump.bolus_enabled  # remembered; bolus delivery is not emulated
    assert _ask(pump, ("INF_START",)) == Reply(("INF_START",))
    for fields in [("INF_VTBI", "ACTIV", "5", "ml", "KVO"), ("INF_VTBI", "ACTIV", "0", "ml", "STOP")]:
        assert isinstance(_ask(pump, fields), ErrorReply)
    reply = _ask(pump, ("INF_VTBI", "ACTIV", "5", "ml", "STOP"))
    assert reply == ErrorReply(ErrorCode.BAD_STATE, "INF_VTBI", "stop the infusion before changing the VTBI")
    assert _ask(pump, ("INF_RATE", "120", "ml/h"), now=1.0) == Reply(
        ("INF_RATE", "120.00", "ml/h")
    )  # titrate
    assert _ask(pump, ("INF_VI",), now=31.0) == Reply(("INF_VI", "1.000", "ml"))  # 1 s at 0.1 + 30 s at 120
    inf = _ask(pump, ("INF",), now=31.0)
    assert isinstance(inf, Reply)
    status = parse_inf(inf.args)
    assert status.infusion_mode is InfusionMode.INFUSING
    assert status.rate == Quantity(Decimal("120.00"), ML_H)
    assert status.time_remaining == ""  # no VTBI
    assert not _remote(pump)  # 30 s without a frame: remote control lapsed


def test_a_frame_the_pump_cannot_read_is_answered_bad_frame() -> None:
    pump = EmulatedAlarisPump()
    reply = pump.receive(b"!INF|4962\r", 0.0)
    decoder = HostDecoder()
    decoder.receive_data(reply)
    event = decoder.next_event()
    assert isinstance(event, ErrorReply)
    assert event.code is ErrorCode.BAD_FRAME
    assert event.command == ""
    assert "does not match" in event.text
    assert pump.receive(b"!INF_START^1\x1b", 0.0) == b""  # aborted with ESC: ignored, no reply
    assert list(pump.received) == []


def test_time_remaining_in_status() -> None:
    pump = EmulatedAlarisPump()
    pump.keypad_program_and_run(Decimal(1), Decimal(30), 0.0)
    inf = _ask(pump, ("INF",), now=0.0)
    assert isinstance(inf, Reply)
    assert parse_inf(inf.args).time_remaining == "24+"  # 30 h
    inf = _ask(pump, ("INF",), now=8 * 3600.0)
    assert isinstance(inf, Reply)
    assert parse_inf(inf.args).time_remaining == "22:00:00"


def test_remote_control_lapses_without_traffic_and_the_keypad_is_not_traffic() -> None:
    pump = EmulatedAlarisPump(quiet_time_s=10)
    assert isinstance(_ask(pump, ("REMOTE_CTRL", "ENABLED", "A12B"), now=0.0), Reply)
    assert isinstance(_ask(pump, ("REMOTE_CFG", "ENABLED", "A12B"), now=0.0), Reply)
    pump.keypad_program_and_run(Decimal(60), Decimal(5), now=9.0)
    pump.poll(9.9)
    assert _remote(pump)
    pump.poll(10.0)
    assert not _remote(pump)
    assert pump.lapses == 1
    assert pump.mode is InfusionMode.INFUSING  # local control: it keeps infusing
    assert _ask(pump, ("REMOTE_CFG",), now=10.0) == Reply(("REMOTE_CFG", "DISABLED"))


def test_keypad_programming_runs_the_pump() -> None:
    pump = EmulatedAlarisPump()
    pump.keypad_program_and_run(Decimal("20"), Decimal("5"), now=0.0)
    assert not _remote(pump)  # the front panel needs no remote control and takes none
    pump.poll(3600.0)
    assert pump.channel.infused_ml == Decimal("5.000")  # ran to its VTBI: 20 mL/h for 15 min
    assert pump.mode is InfusionMode.COMPLETE
    assert pump.alarms == (Alarm.VTBI_COMPLETE,)


def test_keypad_refuses_what_the_protocol_refuses() -> None:
    pump = EmulatedAlarisPump()
    with pytest.raises(ValueError, match=r"keypad INF_RATE\^2000.00"):
        pump.keypad_program_and_run(Decimal("2000"), Decimal("5"), now=0.0)
    with pytest.raises(ValueError, match="more than 2 decimals"):
        pump.keypad_program_and_run(Decimal("1.005"), Decimal("5"), now=0.0)


def test_the_emulator_never_answers_garbage_with_an_exception() -> None:
    pump = EmulatedAlarisPump()
    decoder = DeviceDecoder()
    junk = b"!\x00!!\r|^^\x1b!A|0000\r!INF^" + b"9" * 300 + b"\r!INF|4961\r"
    reply = pump.receive(junk, 0.0)
    decoder.receive_data(junk)
    assert reply.endswith(b"\r")
    events = []
    while True:
        try:
            event = decoder.next_event()
        except ProtocolError:
            continue
        if event is NEED_DATA:
            break
        events.append(event)
    assert events == [Command(("INF",))]


def test_the_emulator_refuses_a_serial_a_frame_cannot_carry() -> None:
    with pytest.raises(ValueError):
        EmulatedAlarisPump(serial="12^34")
    with pytest.raises(ValueError):
        EmulatedAlarisPump(serial="")
    with pytest.raises(ValueError):
        EmulatedAlarisPump(quiet_time_s=0)
