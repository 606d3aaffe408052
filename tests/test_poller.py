"""The poll coordinator: no overlapping polls, failures logged once, link lost after N, recovery.

The driver here is a scripted in-memory pump: the poller's logic is under test, not a protocol
(the protocols are tested against their emulators over real PTYs and sockets).
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import pytest

from pumpgw.drivers.base import Capabilities, ChannelState, ChannelStatus, PumpIdentity
from pumpgw.gateway.backoff import Backoff
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.errors import DriverError, LinkLost, NoResponse
from pumpgw.gateway.poller import PumpPoller
from pumpgw.gateway.quantity import Quantity

IDENTITY = PumpIdentity("test", "Acme", "P1", "SN1", "1.0", None, 1)


class ScriptedDriver:
    """Answers read_status from a script: a ChannelStatus tuple, or an exception to raise."""

    def __init__(self, script: list[object]) -> None:
        self.script = script
        self.calls: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def pump_id(self) -> str:
        return "p1"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(False, False, False, False, False, False)

    async def connect(self) -> None:
        self.calls.append("connect")

    async def close(self) -> None:
        self.calls.append("close")

    async def identify(self) -> PumpIdentity:
        self.calls.append("identify")
        return IDENTITY

    async def read_status(self) -> tuple[ChannelStatus, ...]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            item = self.script.pop(0)
            self.calls.append("read")
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, tuple)
            return item
        finally:
            self.in_flight -= 1

    async def program(self, channel: int, program: object) -> None:
        raise NotImplementedError

    async def start(self, channel: int) -> None:
        raise NotImplementedError

    async def stop(self, channel: int) -> None:
        raise NotImplementedError


def status(ml: str) -> tuple[ChannelStatus, ...]:
    return (ChannelStatus(1, ChannelState.INFUSING, volume_infused=Quantity(Decimal(ml), "mL")),)


class Listener:
    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    async def on_identity(self, pump: str, identity: PumpIdentity) -> None:
        self.seen.append(("identity", identity.serial))

    async def on_status(self, pump: str, channels: tuple[ChannelStatus, ...], at: float) -> None:
        vol = channels[0].volume_infused
        self.seen.append(("status", None if vol is None else str(vol.value)))

    async def on_link(self, pump: str, up: bool, error: DriverError | None) -> None:
        self.seen.append(("link", (up, type(error).__name__ if error else None)))


class BrokenListener(Listener):
    async def on_status(self, pump: str, channels: tuple[ChannelStatus, ...], at: float) -> None:
        raise RuntimeError("listener bug")


def timeout() -> NoResponse:
    return NoResponse("p1", "read", 1.0)


async def run_script(script: list[object], caplog: pytest.LogCaptureFixture, **kw: object):  # type: ignore[no-untyped-def]
    driver = ScriptedDriver(script)
    listener = Listener()
    sleeps: list[float] = []
    done = asyncio.Event()

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if not driver.script:
            done.set()
            await asyncio.Event().wait()  # park until cancelled

    poller = PumpPoller(
        driver,
        FakeClock(),
        [BrokenListener(), listener],
        interval_s=1.0,
        failures_to_lose=3,
        backoff=Backoff(base_s=1.0, cap_s=8.0, rand=lambda: 1.0),
        sleep=sleep,
        **kw,
    )
    task = asyncio.create_task(poller.run(asyncio.Event()))
    await done.wait()
    task.cancel()
    await asyncio.wait({task})
    return driver, listener, sleeps, poller


async def test_status_fans_out_and_a_broken_listener_does_not_stop_polling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver, listener, sleeps, poller = await run_script([status("0.1"), status("0.2")], caplog)
    assert listener.seen == [
        ("identity", "SN1"),
        ("link", (True, None)),
        ("status", "0.1"),
        ("status", "0.2"),
    ]
    assert driver.calls == ["connect", "identify", "read", "read", "close"]
    assert sleeps == [1.0, 1.0]
    assert driver.max_in_flight == 1
    assert poller.polls == 2
    assert sum("listener failed" in r.message for r in caplog.records) == 2


async def test_failures_are_logged_once_link_lost_after_three_and_recovery_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pumpgw.gateway.poller")
    script: list[object] = [status("1"), timeout(), timeout(), timeout(), timeout(), status("2")]
    driver, listener, sleeps, _ = await run_script(script, caplog)
    assert listener.seen == [
        ("identity", "SN1"),
        ("link", (True, None)),
        ("status", "1"),
        ("link", (False, "LinkLost")),
        # Every reconnect identifies the pump again (it may have been swapped while away); the
        # fourth timeout came right after the first reconnect.
        ("identity", "SN1"),
        ("identity", "SN1"),
        ("link", (True, None)),
        ("status", "2"),
    ]
    # Interval while failing but not yet lost, then jittered backoff once lost (rand=1: ceiling).
    assert sleeps == [1.0, 1.0, 1.0, 1.0, 2.0, 1.0]
    # Reconnected from scratch after the link was declared lost.
    assert driver.calls.count("connect") == 3
    assert driver.calls.count("close") >= 2
    messages = [r.message for r in caplog.records if r.name == "pumpgw.gateway.poller"]
    assert messages.count("pump poll failed") == 1
    assert messages.count("pump link lost") == 1
    assert messages.count("pump answering again") == 1


def test_link_lost_carries_the_facts() -> None:
    err = LinkLost("p1", 3, timeout())
    assert err.failures == 3
    assert err.pump == "p1"
    assert "3 consecutive failures" in str(err)
    assert "no answer within 1 s" in str(err)


async def test_an_unexpected_driver_error_is_a_failed_poll_not_a_dead_gateway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One pump's driver bug (any exception outside our hierarchy) must not stop the other pumps.
    script: list[object] = [status("1"), RuntimeError("bug in a driver"), status("2")]
    _, listener, _, poller = await run_script(script, caplog)
    assert ("status", "2") in listener.seen
    assert poller.polls == 2
    assert sum("driver raised an unexpected error" in r.message for r in caplog.records) == 1
