"""One driver conformance suite, run unchanged against every emulated pump of the bench rig.

Each protocol's pump runs in a :class:`~pumpgw.rig.bench_rig.BenchRig` on its real transport (a
PTY pair for New Era, Alaris-style and Modbus RTU, TCP for Modbus TCP), and its driver is built by
the gateway from the rig's own ``[[pumps]]`` entry, exactly as ``pumpgw demo`` builds it. Then:
what every driver must do (identify, read, program and read back, start, stop, refuse what cannot
be), what every wire fault of the rig does to it (a typed error, never another exception), how it
recovers when the fault ends, and that a poller over a faulty link keeps the gateway up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from pumpgw.drivers.base import ChannelProgram, ChannelState, ChannelStatus, PumpDriver, PumpIdentity
from pumpgw.gateway.app import make_driver
from pumpgw.gateway.backoff import Backoff
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.config import parse_config
from pumpgw.gateway.errors import DriverError, NoResponse, ProtocolError, QuantityError
from pumpgw.gateway.poller import PumpPoller
from pumpgw.gateway.quantity import Quantity
from pumpgw.rig.bench_rig import SYRINGE_EXAMPLE, BenchRig, RigPump
from pumpgw.rig.faults import FaultError

PROTOCOLS = ["modbus-tcp", "modbus-rtu", "newera", "alaris"]
TIMEOUT_S = 0.3


@dataclass
class UnderTest:
    protocol: str
    rig: BenchRig
    pump: RigPump
    driver: PumpDriver
    clock: FakeClock


def _endpoint_config(endpoint: dict[str, Any]) -> dict[str, Any]:
    entry = dict(endpoint, timeout_s=TIMEOUT_S, poll_interval_s=1.0)
    if entry["driver"] == "newera":
        entry["safe_mode_timeout_s"] = 30  # FakeClock time only moves when a test says so
    return entry


@pytest.fixture(params=PROTOCOLS)
async def under_test(request: pytest.FixtureRequest) -> AsyncIterator[UnderTest]:
    protocol: str = request.param
    clock = FakeClock()
    counts = dict.fromkeys(("modbus_pumps", "modbus_rtu_pumps", "newera_pumps", "alaris_pumps"), 0)
    counts[
        {"modbus-tcp": "modbus_pumps", "modbus-rtu": "modbus_rtu_pumps"}.get(protocol, f"{protocol}_pumps")
    ] = 1
    async with BenchRig(clock, **counts) as rig:
        (pump,) = rig.pumps
        config = parse_config(
            {"gateway": {"id": "gw-test"}, "pumps": [_endpoint_config(pump.endpoint)]}, "test"
        )
        driver = make_driver(config.pumps[0])
        await driver.connect()
        try:
            yield UnderTest(protocol, rig, pump, driver, clock)
        finally:
            await driver.close()


def _ml_h(text: str) -> Quantity:
    return Quantity(Decimal(text), "mL/h")


def _ml(text: str) -> Quantity:
    return Quantity(Decimal(text), "mL")


# --- what every driver does ---------------------------------------------------------------------
async def test_identify_says_who_the_pump_is_and_matches_its_capabilities(under_test: UnderTest) -> None:
    driver = under_test.driver
    identity = await driver.identify()
    assert isinstance(driver, PumpDriver)
    assert identity.protocol == under_test.protocol
    assert identity.channels >= 1
    assert identity.model
    assert (identity.library_version is not None) == driver.capabilities.reports_library_version


async def test_status_has_every_channel_infusing_the_rig_example(under_test: UnderTest) -> None:
    identity = await under_test.driver.identify()
    channels = await under_test.driver.read_status()
    assert [c.channel for c in channels] == list(range(1, identity.channels + 1))
    assert all(c.state is ChannelState.INFUSING for c in channels)
    rates = [c.rate for c in channels]
    if under_test.protocol in ("newera", "alaris"):
        assert rates == [_ml_h(str(SYRINGE_EXAMPLE.rate_ml_h))]


async def test_volume_infused_follows_the_clock(under_test: UnderTest) -> None:
    (before, *_) = await under_test.driver.read_status()
    # 18 s at 20 mL/h (syringes) or 5 mL/h (Modbus channel 1): exact to the reported 0.001 mL, and
    # within the New Era safe-mode timeout (30 s here), past which that pump stops by design.
    under_test.clock.advance(18)
    (after, *_) = await under_test.driver.read_status()
    assert before.volume_infused is not None
    assert after.volume_infused is not None
    assert before.rate is not None
    grown = after.volume_infused.value - before.volume_infused.value
    assert grown == before.rate.value * 18 / 3600


async def test_program_is_read_back_and_start_stop_are_verified(under_test: UnderTest) -> None:
    driver = under_test.driver
    await driver.stop(1)
    (stopped, *_) = await driver.read_status()
    assert stopped.state not in (ChannelState.INFUSING, ChannelState.BOLUS)
    if under_test.protocol == "newera":
        await driver.stop(1)  # New Era: the first STP pauses, the second stops (docs/rig.md)
    await driver.program(1, ChannelProgram(rate=_ml_h("12.5"), vtbi=_ml("10")))
    (programmed, *_) = await driver.read_status()
    assert programmed.rate in (None, _ml_h("0"), _ml_h("12.5"))  # a stopped pump may report 0
    await driver.start(1)
    (running, *_) = await driver.read_status()
    assert running.state is ChannelState.INFUSING
    assert running.rate == _ml_h("12.5")
    await driver.stop(1)


async def test_a_channel_the_pump_does_not_have_is_refused_before_anything_is_sent(
    under_test: UnderTest,
) -> None:
    identity = await under_test.driver.identify()
    with pytest.raises(DriverError, match="channel"):
        await under_test.driver.start(identity.channels + 1)


@pytest.mark.hazard("HAZ-012")
async def test_an_impossible_programme_is_refused_not_rounded(under_test: UnderTest) -> None:
    await under_test.driver.stop(1)
    if under_test.protocol == "newera":
        await under_test.driver.stop(1)
    # Refused by the driver (a value its wire format cannot carry: QuantityError) or by the pump
    # (DeviceError): either way a typed error, and nothing half-programmed.
    with pytest.raises((DriverError, QuantityError)):
        await under_test.driver.program(1, ChannelProgram(rate=_ml_h("99999999"), vtbi=_ml("10")))


# --- wire faults: a typed error while they last, recovery after ----------------------------------
async def _recovered(under_test: UnderTest) -> tuple[ChannelStatus, ...]:
    """Read status until it works (a fault may leave one late reply or a half frame behind), and
    at most a few times."""
    last: Exception | None = None
    for _ in range(4):
        try:
            return await under_test.driver.read_status()
        except DriverError as exc:
            last = exc
            if isinstance(exc, NoResponse) or "closed" in str(exc) or "not connected" in str(exc):
                await under_test.driver.close()
                await under_test.driver.connect()
    raise AssertionError(f"{under_test.protocol}: no recovery after the fault: {last}")


@pytest.mark.parametrize("kind", ["no-answer", "truncate", "corrupt-checksum", "garbage"])
async def test_a_spoilt_reply_is_a_typed_error_and_the_next_poll_recovers(
    under_test: UnderTest, kind: str
) -> None:
    if kind == "corrupt-checksum" and under_test.protocol == "modbus-tcp":
        # Modbus TCP frames carry no checksum: the rig refuses the fault and says so.
        with pytest.raises(FaultError, match="no checksum"):
            under_test.rig.set_fault(under_test.pump.id, kind, count=1)
        return
    (before, *_) = await under_test.driver.read_status()
    # Until cleared: a driver may retry a read (reads are safe to repeat), so a one-reply fault
    # could be absorbed; the fault must show as a typed error while it lasts.
    under_test.rig.set_fault(under_test.pump.id, kind)
    outcome: object
    try:
        outcome = await under_test.driver.read_status()
    except DriverError as exc:
        outcome = exc
    if kind in ("no-answer", "truncate"):
        assert isinstance(outcome, NoResponse | ProtocolError), outcome
    elif kind == "corrupt-checksum":
        assert isinstance(outcome, ProtocolError | NoResponse), outcome  # Modbus RTU: pymodbus drops it
    else:
        # Noise before a good reply: a decoder may skip it (then the values must be the pump's,
        # not something read out of the noise) or report it as a typed error.
        if isinstance(outcome, tuple):
            assert (outcome[0].state, outcome[0].rate) == (before.state, before.rate)
        else:
            assert isinstance(outcome, DriverError), outcome
    under_test.rig.clear_faults(under_test.pump.id)
    channels = await _recovered(under_test)
    assert channels[0].rate is not None


async def test_a_reply_later_than_the_timeout_is_never_taken_for_the_next_one(under_test: UnderTest) -> None:
    driver = under_test.driver
    (before, *_) = await driver.read_status()
    # Later than a read and its one retry (the Alaris-style driver retries a read once; a late
    # reply to the same query is a valid, slightly older, answer to the retry).
    under_test.rig.set_fault(under_test.pump.id, "delay", delay_s=TIMEOUT_S * 3)
    with pytest.raises(NoResponse):
        await driver.read_status()
    under_test.rig.clear_faults(under_test.pump.id)
    await asyncio.sleep(TIMEOUT_S * 3)  # the late replies arrive in the meantime (real time)
    under_test.clock.advance(18)
    channels = await _recovered(under_test)
    assert channels[0].volume_infused is not None
    assert before.volume_infused is not None
    assert channels[0].volume_infused.value > before.volume_infused.value  # fresh, not the late one


@pytest.mark.hazard("HAZ-014")
async def test_a_disconnect_is_no_response_and_the_link_comes_back_after_it(under_test: UnderTest) -> None:
    under_test.rig.set_fault(under_test.pump.id, "disconnect", seconds=10)
    with pytest.raises(DriverError):
        await under_test.driver.read_status()
    under_test.clock.advance(10)
    channels = await _recovered(under_test)
    assert channels[0].state is ChannelState.INFUSING


async def test_frozen_values_stop_moving_then_catch_up(under_test: UnderTest) -> None:
    under_test.rig.set_fault(under_test.pump.id, "frozen", seconds=20)
    (a, *_) = await under_test.driver.read_status()
    under_test.clock.advance(10)
    (b, *_) = await under_test.driver.read_status()
    assert a.volume_infused == b.volume_infused  # a frozen pump: no error, values stand still
    under_test.clock.advance(15)
    (c, *_) = await under_test.driver.read_status()
    assert c.volume_infused is not None
    assert b.volume_infused is not None
    assert c.volume_infused.value > b.volume_infused.value


async def test_a_device_alarm_shows_in_status_and_stops_delivery(under_test: UnderTest) -> None:
    alarm = "motor-stall" if under_test.protocol == "newera" else "occlusion-downstream"
    under_test.rig.set_fault(under_test.pump.id, alarm)
    (channel, *_) = await under_test.driver.read_status()
    assert channel.state is not ChannelState.INFUSING
    assert channel.alarms, channel


# --- the gateway stays up ------------------------------------------------------------------------
class Seen:
    def __init__(self) -> None:
        self.links: list[bool] = []
        self.statuses = 0
        self.changed = asyncio.Event()

    async def on_identity(self, pump: str, identity: PumpIdentity) -> None:
        return None

    async def on_status(self, pump: str, channels: tuple[ChannelStatus, ...], at: float) -> None:
        self.statuses += 1
        self.changed.set()

    async def on_link(self, pump: str, up: bool, error: DriverError | None) -> None:
        self.links.append(up)
        self.changed.set()


async def test_a_poller_over_a_dead_link_declares_it_lost_and_recovers_when_it_returns(
    under_test: UnderTest,
) -> None:
    seen = Seen()
    poller = PumpPoller(
        under_test.driver,
        under_test.clock,
        [seen],
        interval_s=0.01,
        failures_to_lose=3,
        backoff=Backoff(base_s=0.01, cap_s=0.02),
    )
    task = asyncio.create_task(poller.run(asyncio.Event()))

    async def until(condition: Any) -> None:
        async with asyncio.timeout(10):
            while not condition():
                seen.changed.clear()
                await seen.changed.wait()

    try:
        await until(lambda: seen.statuses >= 1)
        under_test.rig.set_fault(under_test.pump.id, "disconnect", seconds=5)
        await until(lambda: seen.links[-1:] == [False])
        assert not task.done()  # the gateway's part is still running
        under_test.clock.advance(5)
        count = seen.statuses
        await until(lambda: seen.links[-1:] == [True] and seen.statuses > count)
    finally:
        task.cancel()
        await asyncio.wait({task})
    assert seen.links == [True, False, True]
