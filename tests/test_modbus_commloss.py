"""Host supervision in the emulated Modbus pump (pump-protocols.md §6.1, system holding registers):
heartbeat (HR 0), comm timeout (HR 1), comm-loss policy (HR 2) and remote control (HR 3, B+1);
then the driver's side of it over real TCP.

Time is a FakeClock (or plain numbers for the sans-I/O pump): a comm loss happens at its deadline to
the millisecond, however late the next request comes, and nothing sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from pumpgw.drivers.base import ChannelProgram, ChannelState
from pumpgw.drivers.modbus import ModbusTcpDriver
from pumpgw.drivers.modbus_map import FieldValue, RegisterMap, decode, encode, load_builtin_map
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import DeviceError
from pumpgw.gateway.quantity import Quantity
from pumpgw.rig.modbus_pump import EmulatedModbusPump, ExceptionCode
from pumpgw.rig.modbus_server import ModbusPumpServer

T0 = 1000.0
HEARTBEAT, TIMEOUT, POLICY, REMOTE = 0, 1, 2, 3  # §6.1 HR 0-3
KEEP_RUNNING, STOP_AND_ALARM = 0, 1


@pytest.fixture
def register_map() -> RegisterMap:
    return load_builtin_map("rig-multichannel-v1")


def make_pump(register_map: RegisterMap, *, allow_remote: bool = True) -> EmulatedModbusPump:
    return EmulatedModbusPump(
        register_map,
        manufacturer="pumpgw rig",
        model="RIG-MC2",
        serial="RIG-0001",
        firmware="1.0.0",
        library_version=42,
        library_name="ICU adult",
        channels=2,
        allow_remote=allow_remote,
    )


@pytest.fixture
def pump(register_map: RegisterMap) -> EmulatedModbusPump:
    return make_pump(register_map)


def reported(pump: EmulatedModbusPump, name: str, channel: int = 1) -> FieldValue:
    field = pump.map.field(f"channel.{name}")
    registers = pump.read_input(pump.map.address(field, channel), field.count, 0.0)
    assert not isinstance(registers, ExceptionCode)
    return decode(field, registers)


def alarms(pump: EmulatedModbusPump, channel: int = 1) -> tuple[str, ...]:
    bitmap = reported(pump, "alarms", channel)
    assert isinstance(bitmap, int)
    return pump.map.bits["alarm"].decode(bitmap)


def lost(pump: EmulatedModbusPump) -> bool:
    """Whether the pump is in comm loss (a call, so the type checker does not pin the answer)."""
    return pump.comm_lost


def write(pump: EmulatedModbusPump, register: int, value: int, now: float) -> ExceptionCode | None:
    return pump.write_holding(register, [value], now)


def command(
    pump: EmulatedModbusPump, channel: int, name: str, sequence: int, now: float, **values: FieldValue
) -> str:
    """Write one command as the driver does (one FC16) and return the pump's result name."""
    m = pump.map
    values |= {"sequence": sequence, "command": m.enum("command").codes[name], "token": 0x5555}
    fields = [m.field(f"channel.{n}") for n in values]
    start = min(m.address(f, channel) for f in fields)
    registers = [0] * (max(m.address(f, channel) + f.count for f in fields) - start)
    for f in fields:
        at = m.address(f, channel) - start
        registers[at : at + f.count] = encode(f, values[f.name])
    assert pump.write_holding(start, registers, now) is None
    result = reported(pump, "last_result", channel)
    assert isinstance(result, int)
    return m.enum("result").names[result]


def program(rate: int) -> dict[str, FieldValue]:
    """The settings of an apply-program command: a continuous infusion at ``rate`` mL/h, no drug."""
    return {
        "rate_setpoint": Decimal(rate),
        "vtbi_setpoint": Decimal(0),
        "drug_id_setpoint": 0,
        "concentration_setpoint": None,
        "concentration_unit_setpoint": 0,
    }


def infuse(pump: EmulatedModbusPump, channel: int, rate: str, now: float) -> None:
    """Program and start a continuous infusion through the pump's keypad (the physics)."""
    pump.poll(now)
    pump.channel(channel).program(Decimal(rate), Decimal(0))
    pump.channel(channel).start()


def supervise(pump: EmulatedModbusPump, timeout_ms: int, policy: int, now: float) -> None:
    assert pump.write_holding(HEARTBEAT, [1, timeout_ms, policy], now) is None


# --- the sans-I/O pump --------------------------------------------------------------------------


def test_no_comm_timeout_means_no_comm_loss(pump: EmulatedModbusPump) -> None:
    infuse(pump, 1, "60", T0)
    pump.poll(T0 + 86400)  # a day of silence
    assert not lost(pump)
    assert pump.channel(1).state is ChannelState.INFUSING
    assert alarms(pump) == ()


def test_stop_and_alarm_stops_at_the_deadline_however_late_it_is_noticed(pump: EmulatedModbusPump) -> None:
    infuse(pump, 1, "60", T0)
    supervise(pump, 2000, STOP_AND_ALARM, T0)
    assert write(pump, HEARTBEAT, 2, T0 + 1.5) is None  # a new value: the timer starts again
    pump.poll(T0 + 3.4)
    assert not lost(pump)  # 1.9 s since the last heartbeat
    pump.poll(T0 + 3600)  # nobody asked for an hour
    assert lost(pump)
    assert pump.comm_losses == 1
    physics = pump.channel(1)
    assert physics.state is ChannelState.PAUSED
    assert physics.infused_ml == Decimal("0.058")  # 60 mL/h for 3.5 s, not for an hour
    assert alarms(pump, 1) == alarms(pump, 2) == ("comm-loss",)
    assert reported(pump, "priority") == pump.map.enum("priority").codes["medium"]


def test_the_same_heartbeat_value_again_is_no_heartbeat(pump: EmulatedModbusPump) -> None:
    supervise(pump, 1000, STOP_AND_ALARM, T0)
    assert write(pump, HEARTBEAT, 1, T0 + 0.9) is None  # HR 0 already holds 1
    pump.poll(T0 + 1.0)
    assert lost(pump)


def test_writing_the_timeout_restarts_the_timer(pump: EmulatedModbusPump) -> None:
    supervise(pump, 1000, STOP_AND_ALARM, T0)
    assert write(pump, TIMEOUT, 1000, T0 + 0.9) is None
    pump.poll(T0 + 1.8)
    assert not lost(pump)
    pump.poll(T0 + 1.9)
    assert lost(pump)
    assert write(pump, TIMEOUT, 0, T0 + 2) is None  # off: no new loss, but the one declared stays
    pump.poll(T0 + 100)
    assert (lost(pump), pump.comm_losses) == (True, 1)


def test_keep_running_reverts_to_local_control(pump: EmulatedModbusPump) -> None:
    infuse(pump, 1, "60", T0)
    supervise(pump, 5000, KEEP_RUNNING, T0)
    assert write(pump, REMOTE, 1, T0) is None
    assert reported(pump, "remote_granted") == 1
    pump.poll(T0 + 5)
    assert lost(pump)
    assert pump.channel(1).state is ChannelState.INFUSING  # still infusing, under local control
    assert alarms(pump) == ("comm-loss",)
    assert reported(pump, "remote_granted") == 0
    assert pump.read_holding(REMOTE, 1, T0 + 5) == [0]  # the request was withdrawn
    # Nothing but stop is accepted remotely now; stop always is.
    assert command(pump, 2, "apply-program", 1, T0 + 6, **program(5)) == "rejected-no-remote"
    assert write(pump, REMOTE, 1, T0 + 6) is None  # asking again while unheard changes nothing
    assert reported(pump, "remote_granted") == 0
    assert command(pump, 1, "stop", 1, T0 + 7) == "ok"
    assert pump.channel(1).state is ChannelState.PAUSED


def test_a_new_heartbeat_ends_the_loss_but_restarts_nothing(pump: EmulatedModbusPump) -> None:
    infuse(pump, 1, "60", T0)
    supervise(pump, 1000, STOP_AND_ALARM, T0)
    pump.poll(T0 + 10)
    assert lost(pump)
    assert write(pump, HEARTBEAT, 2, T0 + 11) is None
    assert not lost(pump)
    assert alarms(pump) == ()
    assert pump.channel(1).state is ChannelState.PAUSED  # a stopped pump waits for a new start
    assert reported(pump, "remote_granted") == 0  # and for the host to ask for control again
    assert write(pump, REMOTE, 1, T0 + 11) is None
    assert command(pump, 1, "start", 1, T0 + 11) == "ok"
    assert pump.channel(1).state is ChannelState.INFUSING
    pump.poll(T0 + 11.999)
    assert not lost(pump)
    pump.poll(T0 + 12)  # the timeout still holds: a second loss, a second count
    assert pump.comm_losses == 2


def test_remote_control_needs_the_request_and_the_local_policy(register_map: RegisterMap) -> None:
    pump = make_pump(register_map, allow_remote=False)
    assert reported(pump, "remote_granted") == 0
    assert command(pump, 1, "apply-program", 1, T0, **program(60)) == "rejected-no-remote"
    assert write(pump, REMOTE, 1, T0) is None
    assert (pump.remote_granted, reported(pump, "remote_granted")) == (False, 0)  # policy says no
    assert command(pump, 1, "apply-program", 2, T0, **program(60)) == "rejected-no-remote"
    assert pump.channel(1).rate_ml_h == 0
    pump.allow_remote = True  # the nurse allows remote control at the pump
    assert reported(pump, "remote_granted", 2) == 1
    assert command(pump, 1, "apply-program", 3, T0, **program(60)) == "ok"
    assert write(pump, REMOTE, 0, T0) is None  # the host releases control
    assert command(pump, 1, "start", 4, T0) == "rejected-no-remote"
    assert command(pump, 1, "stop", 5, T0) == "ok"  # stop needs no grant


def test_settings_the_pump_cannot_hold_are_refused(pump: EmulatedModbusPump) -> None:
    assert write(pump, POLICY, 2, T0) is ExceptionCode.ILLEGAL_VALUE  # not a policy in the map
    assert write(pump, REMOTE, 2, T0) is ExceptionCode.ILLEGAL_VALUE
    assert pump.write_holding(HEARTBEAT, [5, 100, 7], T0) is ExceptionCode.ILLEGAL_VALUE
    assert pump.read_holding(HEARTBEAT, 4, T0) == [0, 0, 0, 0]  # nothing of a refused write stays
    pump.poll(T0 + 10)
    assert not lost(pump)


# --- the driver against it, over TCP -------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(monotonic_start=T0)


@pytest.fixture
async def server(pump: EmulatedModbusPump, clock: FakeClock) -> AsyncIterator[ModbusPumpServer]:
    async with ModbusPumpServer(pump, clock) as running:
        yield running


@pytest.fixture
async def driver(server: ModbusPumpServer) -> AsyncIterator[ModbusTcpDriver]:
    d = ModbusTcpDriver("bed-7-pump", "127.0.0.1", server.port, timeout_s=0.3)
    yield d
    await d.close()


def prog(rate: str) -> ChannelProgram:
    return ChannelProgram(Quantity.of(rate, "mL/h"), Quantity.of("0", "mL"))


async def test_a_poll_beats_and_continues_from_the_pumps_heartbeat(
    driver: ModbusTcpDriver, pump: EmulatedModbusPump, clock: FakeClock
) -> None:
    assert write(pump, HEARTBEAT, 41, clock.monotonic()) is None  # left by a gateway before us
    await driver.read_status()
    assert pump.read_holding(HEARTBEAT, 1, clock.monotonic()) == [42]
    await driver.read_status()
    assert pump.read_holding(HEARTBEAT, 1, clock.monotonic()) == [43]


async def test_the_driver_asks_for_remote_control_and_reports_it(
    driver: ModbusTcpDriver, pump: EmulatedModbusPump
) -> None:
    one, two = await driver.read_status()
    assert (one.remote_control, two.remote_control) == (False, False)
    await driver.program(1, prog("60"))
    one, two = await driver.read_status()
    assert (one.remote_control, two.remote_control) == (True, True)  # granted per pump, B+1 per channel
    await driver.start(1)
    assert pump.channel(1).state is ChannelState.INFUSING


async def test_a_pump_that_refuses_remote_control_gives_a_device_error(
    driver: ModbusTcpDriver, pump: EmulatedModbusPump
) -> None:
    pump.allow_remote = False
    with pytest.raises(DeviceError) as caught:
        await driver.program(1, prog("60"))
    assert caught.value.code == "rejected-no-remote"
    assert pump.read_holding(REMOTE, 1, 0.0) == [1]  # the driver did ask
    assert pump.channel(1).rate_ml_h == 0
    infuse(pump, 1, "60", 0.0)
    await driver.stop(1)  # stopping never needs remote control
    assert pump.channel(1).state is ChannelState.PAUSED


@pytest.mark.hazard("HAZ-014")
async def test_a_poll_reports_a_comm_loss_once_then_the_heartbeat_ends_it(
    driver: ModbusTcpDriver, pump: EmulatedModbusPump, clock: FakeClock
) -> None:
    await driver.program(1, prog("60"))
    await driver.start(1)
    supervise(pump, 5000, KEEP_RUNNING, clock.monotonic())
    clock.advance(4.9)
    (one, _) = await driver.read_status()
    assert one.alarms == ()
    clock.advance(60)  # the gateway was away for a minute
    one, two = await driver.read_status()
    assert (one.alarms, two.alarms) == (("comm-loss",), ("comm-loss",))
    assert (one.state, one.remote_control) == (ChannelState.INFUSING, False)
    (one, _) = await driver.read_status()  # the heartbeat of the last poll ended the loss
    assert one.alarms == ()
    await driver.program(2, prog("5"))  # the driver asks for remote control again, and gets it
    assert pump.channel(2).rate_ml_h == 5
    assert pump.comm_losses == 1


async def test_after_a_stop_and_alarm_loss_a_command_beats_first(
    driver: ModbusTcpDriver, pump: EmulatedModbusPump, clock: FakeClock
) -> None:
    await driver.program(1, prog("60"))
    await driver.start(1)
    supervise(pump, 1000, STOP_AND_ALARM, clock.monotonic())
    clock.advance(30)
    await driver.start(1)  # no poll in between: the command's own heartbeat ends the loss
    assert pump.channel(1).state is ChannelState.INFUSING
    assert pump.channel(1).infused_ml == Decimal("0.017")  # 60 mL/h for the 1 s before the loss
