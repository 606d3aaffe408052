"""One poller per pump: reads status on a schedule and fans it out to listeners.

Rules (after Home Assistant's DataUpdateCoordinator and ModbusHub, shared/STYLE.md):

- the next poll is scheduled after the previous one ends, so polls never overlap;
- a failure is logged once when the pump starts failing and once when it recovers, not every poll;
- the link is declared lost only after ``failures_to_lose`` consecutive failures; then the driver is
  closed and reconnected with capped, jittered backoff;
- only reads happen here, and reads are safe to repeat.

Listeners are told about identity, status and link changes; one failing listener is logged and
does not stop the polling or the other listeners.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from pumpgw.drivers.base import ChannelStatus, PumpDriver, PumpIdentity

from .backoff import Backoff
from .clock import Clock
from .errors import DriverError, LinkLost
from .supervisor import raise_if_cancelling

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class PollListener(Protocol):
    async def on_identity(self, pump: str, identity: PumpIdentity) -> None: ...

    async def on_status(self, pump: str, channels: tuple[ChannelStatus, ...], at: float) -> None: ...

    async def on_link(self, pump: str, up: bool, error: DriverError | None) -> None: ...


class PumpPoller:
    """A supervised part polling one pump until cancelled."""

    def __init__(
        self,
        driver: PumpDriver,
        clock: Clock,
        listeners: Sequence[PollListener],
        *,
        interval_s: float = 1.0,
        failures_to_lose: int = 3,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.driver = driver
        self.name = f"poller:{driver.pump_id}"
        self._clock = clock
        self._listeners = list(listeners)
        self._interval = interval_s
        self._failures_to_lose = failures_to_lose
        self._backoff = backoff or Backoff(base_s=min(1.0, interval_s), cap_s=30.0)
        self._sleep = sleep
        self.connected = False
        self._identified = False
        self.link_up: bool | None = None  # None until the first poll settles it
        self.failures = 0
        self.polls = 0

    async def run(self, ready: asyncio.Event) -> None:
        # A pump that is off or unplugged is a normal bedside state, not a start-up failure.
        ready.set()
        try:
            while True:
                ok = await self.poll_once()
                raise_if_cancelling()
                if ok or self.link_up is not False:
                    await self._sleep(self._interval)
                else:
                    await self._sleep(self._backoff.next())
        finally:
            await asyncio.shield(self._close())

    async def poll_once(self) -> bool:
        """Connect if needed and read status once. Returns True on success; never raises DriverError."""
        pump = self.driver.pump_id
        try:
            if not self.connected:
                await self.driver.connect()
                self.connected = True  # so that a failing identify() closes the link again
                self._identified = False
                identity = await self.driver.identify()
                self._identified = True
                await self._tell("on_identity", pump, identity)
            channels = await self.driver.read_status()
        except DriverError as exc:
            await self._failed(exc)
            return False
        except Exception as exc:
            if self.failures == 0:
                log.exception("driver raised an unexpected error", extra={"pump": pump})
            await self._failed(DriverError(pump, "poll", f"unexpected {type(exc).__name__}: {exc}"))
            return False
        self.polls += 1
        if self.failures:
            log.info("pump answering again", extra={"pump": pump, "after_failures": self.failures})
        self.failures = 0
        self._backoff.reset()
        if self.link_up is not True:
            self.link_up = True
            await self._tell("on_link", pump, True, None)
        await self._tell("on_status", pump, channels, self._clock.monotonic())
        return True

    async def _failed(self, exc: DriverError) -> None:
        pump = self.driver.pump_id
        self.failures += 1
        if self.failures == 1:
            log.warning("pump poll failed", extra={"pump": pump, "error": str(exc)})
        if self.failures >= self._failures_to_lose and self.link_up is not False:
            self.link_up = False
            lost = LinkLost(pump, self.failures, exc)
            log.error("pump link lost", extra={"pump": pump, "error": str(lost)})
            await self._tell("on_link", pump, False, lost)
        if self.failures >= self._failures_to_lose or not self._identified:
            # Start the next attempt from a fresh connection (and a fresh identify).
            await self._close()

    async def _close(self) -> None:
        if self.connected:
            self.connected = False
            try:
                await self.driver.close()
            except DriverError as exc:
                log.debug("closing driver failed", extra={"pump": self.driver.pump_id, "error": str(exc)})

    async def _tell(self, method: str, *args: object) -> None:
        for listener in self._listeners:
            try:
                await getattr(listener, method)(*args)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("listener failed", extra={"listener": type(listener).__name__, "call": method})
