"""What the tests of supervised parts share: start a part and wait until it is ready, stop it, an
injected sleep that records the backoff delays, and a wait for an outbox's recorded position."""

from __future__ import annotations

import asyncio
from typing import Protocol

from pumpgw.gateway.eventlog import EventLog


class _Part(Protocol):
    async def run(self, ready: asyncio.Event) -> None: ...


class Sleeps:
    """An injected sleep: records the delays asked for and yields without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


async def run(part: _Part) -> asyncio.Task[None]:
    """Start ``part`` and return its task once it says it is ready."""
    ready = asyncio.Event()
    task = asyncio.create_task(part.run(ready))
    await ready.wait()
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task})


async def until_delivered(log: EventLog, destination: str, seq: int) -> None:
    """Poll the outbox's recorded position (the log writes no event for it), at most 10 s."""
    for _ in range(1000):
        if await log.delivered_seq(destination) >= seq:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{destination} never recorded delivery up to {seq}")
