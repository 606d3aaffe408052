"""Delivering the event log to one destination: at least once, in order, resumable.

An :class:`Outbox` is the bookkeeping of one destination (MQTT, and each EPR receiver over HL7
or FHIR): the log records per destination the newest event the destination has
acknowledged (``outbox`` table), so delivery resumes there after a broker outage, a network loss,
a killed process or a power cut. Events go out in ``seq`` order; a destination that loses an
acknowledgement sees the same event again (at least once): every event carries its ``id`` for
de-duplication downstream.

How a destination talks is its own business (MQTT keeps a connection and a retained status; a
request/response receiver answers each message): it hands :meth:`Outbox.drain` a ``send`` function
that returns once the destination has acknowledged a batch, and reports failures with
:meth:`Outbox.failed` and success with :meth:`Outbox.succeeded`. A destination that starts
failing writes ``delivery.failed`` once, and ``delivery.restored`` when it works again, so an
outage is in the log without one event per retry. :class:`OutboxPart` runs a request/response
:class:`Destination` with capped, jittered backoff.

Status (:meth:`Outbox.status`): the backlog (events waiting), the time of the oldest waiting event
and its age, whether the destination is failing, since when and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from .backoff import Backoff
from .clock import Clock
from .errors import DeliveryError, EventLogError
from .eventlog import EventLog
from .events import Event, EventType

log = logging.getLogger(__name__)

Send = Callable[[Sequence[Event]], Awaitable[None]]


class Outbox:
    """The delivery position and health of one destination. Use from the event loop only."""

    def __init__(
        self,
        events: EventLog,
        destination: str,
        clock: Clock,
        *,
        select: Callable[[Event], bool] | None = None,
    ) -> None:
        self.events = events
        self.destination = destination
        self._clock = clock
        self._select = select
        self.wake = asyncio.Event()  # set after every commit of the log
        events.subscribe(self.wake)
        self.delivered_seq = 0  # acknowledged by the destination
        self._marked_seq = 0  # recorded in the log's outbox table
        self._loaded = False
        self._failing_since: float | None = None  # monotonic
        self._failing_since_wall: str | None = None
        self._attempts = 0
        self.last_error: str | None = None

    async def load(self) -> None:
        """Read the position recorded in the log (once, before the first drain)."""
        if not self._loaded:
            self.delivered_seq = await self.events.delivered_seq(self.destination)
            self._marked_seq = self.delivered_seq
            self._loaded = True

    async def drain(self, send: Send, *, batch: int = 100) -> int:
        """Send everything not yet acknowledged, ``batch`` events at a time; return how many.

        ``send`` returns once the destination acknowledged the batch (or raises: nothing after the
        last acknowledged batch is marked delivered). Events ``select`` declines are passed over
        (marked delivered without being sent).
        """
        await self.load()
        sent = 0
        while True:
            await self.record()
            events = await self.events.read_after(self.delivered_seq, limit=batch)
            if not events:
                return sent
            chosen = events if self._select is None else [e for e in events if self._select(e)]
            if chosen:
                await send(chosen)
                sent += len(chosen)
            self.delivered_seq = events[-1].seq

    async def record(self) -> None:
        """Write the acknowledged position to the log if it moved (the outbox never lags behind
        what the destination has: a stop between an acknowledgement and this write is caught up
        by the next drain, and in the worst case an event is sent again)."""
        if self._marked_seq < self.delivered_seq:
            await self.events.mark_delivered(self.destination, self.delivered_seq)
            self._marked_seq = self.delivered_seq

    # -- health ----------------------------------------------------------------------------------
    @property
    def attempts(self) -> int:
        """Failed attempts in the current outage (0 when delivery works)."""
        return self._attempts

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    async def failed(self, error: str) -> bool:
        """A delivery attempt failed. Writes ``delivery.failed`` on the first failure of an outage;
        True if this was that first failure (so the caller says it once in its own log too)."""
        self._attempts += 1
        self.last_error = error
        if self._failing_since is not None:
            return False
        self._failing_since = self._clock.monotonic()
        self._failing_since_wall = self._clock.wall().isoformat()
        backlog = max(0, self.events.last_seq - self.delivered_seq) if self.events.is_open else 0
        await self._event(
            EventType.DELIVERY_FAILED, {"destination": self.destination, "error": error, "backlog": backlog}
        )
        return True

    async def succeeded(self) -> bool:
        """The destination works (again). Writes ``delivery.restored`` after an outage; True then."""
        since = self._failing_since
        attempts = self._attempts
        self._failing_since = None
        self._failing_since_wall = None
        self._attempts = 0
        self.last_error = None
        if since is None:
            return False
        failed_for = max(0.0, self._clock.monotonic() - since)
        await self._event(
            EventType.DELIVERY_RESTORED,
            {
                "destination": self.destination,
                "failed_for_s": f"{failed_for:.1f}",
                "attempts": max(1, attempts),
            },
        )
        return True

    async def _event(self, type: EventType, payload: dict[str, Any]) -> None:
        try:
            await self.events.append(type, payload)
        except EventLogError:
            log.exception("event could not be written", extra={"type": str(type)})

    async def status(self) -> dict[str, Any]:
        """Backlog and health, for the gateway status (retained on MQTT, the live view)."""
        backlog = 0
        oldest: str | None = None
        age_s: float | None = None
        if self.events.is_open:
            backlog = max(0, self.events.last_seq - self.delivered_seq)
            if backlog:
                try:
                    oldest = await self.events.time_of(self.delivered_seq + 1)
                except EventLogError:
                    oldest = None
                if oldest is not None:
                    then = datetime.fromisoformat(oldest.replace("Z", "+00:00"))
                    age_s = round(max(0.0, (self._clock.wall() - then).total_seconds()), 1)
        return {
            "destination": self.destination,
            "delivered_seq": self.delivered_seq,
            "backlog": backlog,
            "oldest_undelivered_time": oldest,
            "oldest_undelivered_age_s": age_s,
            "failing": self.failing,
            "failing_since": self._failing_since_wall,
            "attempts": self._attempts,
            "last_error": self.last_error,
        }


class Destination(Protocol):
    """A request/response receiver (an EPR's HL7 or FHIR endpoint): one call per batch."""

    name: str
    max_batch: int

    async def deliver(self, events: Sequence[Event]) -> None:
        """Return once the receiver acknowledged every event. Raise DeliveryError otherwise."""
        ...


class OutboxPart:
    """A supervised part delivering the log to a :class:`Destination`, retrying with capped,
    jittered backoff. A destination being down never stops the gateway."""

    def __init__(
        self,
        destination: Destination,
        events: EventLog,
        clock: Clock,
        *,
        select: Callable[[Event], bool] | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.destination = destination
        self.name = f"outbox:{destination.name}"
        self.outbox = Outbox(events, destination.name, clock, select=select)
        self._backoff = backoff or Backoff(base_s=0.5, cap_s=30.0)
        self._sleep = sleep

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()
        try:
            await self._deliver_forever()
        finally:
            # A clean stop records what was acknowledged, so the next start does not send it again.
            with contextlib.suppress(EventLogError):
                await asyncio.shield(self.outbox.record())

    async def _deliver_forever(self) -> None:
        while True:
            self.outbox.wake.clear()
            try:
                await self.outbox.drain(self.destination.deliver, batch=self.destination.max_batch)
            except (DeliveryError, EventLogError) as exc:
                if await self.outbox.failed(str(exc)):
                    log.warning(
                        "delivery failing; events stay in the local log until it works",
                        extra={"destination": self.destination.name, "error": str(exc)},
                    )
                await self._sleep(self._backoff.next())
                continue
            except Exception as exc:
                # A bug met on what a receiver answered must not end this part: the supervisor
                # would stop the whole gateway with it, pump monitoring included. Said with its
                # traceback (it is a bug to fix), and treated as a failed delivery: retried.
                log.exception(
                    "delivery failed unexpectedly; retried", extra={"destination": self.destination.name}
                )
                await self.outbox.failed(f"unexpected {type(exc).__name__}: {exc}")
                await self._sleep(self._backoff.next())
                continue
            if self.outbox.failing and await self.outbox.succeeded():
                log.info("delivery works again", extra={"destination": self.destination.name})
            self._backoff.reset()
            await self.outbox.wake.wait()
