"""The EPR over HL7 v2: an outbox :class:`~pumpgw.gateway.outbox.Destination` that sends each event's
IHE PCD messages (:mod:`pumpgw.hl7.pcd`) over one MLLP connection and waits for each ACK.

What each answer means, and what happens:

======================================  ==========================================================
the receiver answers                    then
======================================  ==========================================================
``AA`` / ``CA`` naming our MSH-10       the message is delivered; the next one goes
``AE`` / ``AR`` / ``CE`` / ``CR``       the receiver read it and refused it: resending the same
                                        message cannot help, so it is **not retried**. It is
                                        reported to ``on_rejected(event, code, reason)`` (the
                                        gateway writes ``delivery.rejected``) and delivery moves on
an ACK naming another MSH-10            :class:`DeliveryError`: the reply is not for this message
                                        (a late reply on a confused connection); the connection is
                                        closed and the batch is retried
no reply, connection lost, refused,     :class:`DeliveryError`; the :class:`OutboxPart` retries
garbage that is not an ACK              with capped, jittered backoff
======================================  ==========================================================

At least once, in order, de-duplicable: MSH-10 is a function of the event id and the message
(:func:`pumpgw.hl7.pcd.control_id`), so a resend after a lost ACK or a crash carries the same
MSH-10 and the receiver can drop the copy. Within one process, a message the receiver already
acknowledged is not sent again when the outbox retries its batch after a later message of the
batch failed. An event that cannot be written as HL7 at all (the builder refuses it, naming the
field) is reported like a rejection, with code :data:`BUILD_FAILED`, and skipped: it would fail the
same way for ever.

Related events: a RAS needs the ``infusion.started`` that a completion ends, and an ACM end the
``channel.alarm_raised`` it ends (:func:`pumpgw.hl7.pcd.related_wanted`). The destination remembers
the newest of those per pump channel as events pass through it, and otherwise reads back through
the log (``history``, the event log's ``read_after``) up to ``history_limit`` events, so a restart
between the two events does not lose the link.

The MLLP connection is opened on the first message and kept; :class:`~pumpgw.hl7.mllp_io.MllpClient`
reconnects on the next message after it dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

from pumpgw.gateway.clock import Clock
from pumpgw.gateway.errors import DeliveryError, Hl7Error, MllpError
from pumpgw.gateway.events import Event

from .ack import read_ack
from .codes import ACK_ACCEPT
from .pcd import PcdConfig, PcdMessage, Related, Wanted, build_messages, related_wanted

__all__ = ["BUILD_FAILED", "History", "Hl7EprDestination", "OnRejected", "Requester"]

log = logging.getLogger(__name__)

#: ``delivery.rejected`` code for an event the gateway cannot write as HL7 (never sent).
BUILD_FAILED: Final = "PGW-HL7-BUILD"
_REASON_MAX = 4000  # delivery.rejected ``reason`` is at most 4,000 characters (gateway/events.py)
_HISTORY_PAGE = 500

OnRejected = Callable[[Event, str, str], Awaitable[None]]
"""``(event, code, reason)``: the receiver refused a message of ``event`` (code ``AE``, ``AR``,
``CE``, ``CR``), or the gateway could not build one (:data:`BUILD_FAILED`). An exception from it
fails the batch (it is retried: nothing is lost, and the refusal is reported again)."""

History = Callable[[int, int], Awaitable[Sequence[Event]]]
"""``read_after(seq, limit)`` of the event log: events after ``seq``, oldest first, at most ``limit``."""


class Requester(Protocol):
    """What the destination needs of an MLLP client (:class:`~pumpgw.hl7.mllp_io.MllpClient`)."""

    async def request(self, message: bytes) -> bytes: ...

    async def close(self) -> None: ...


class Hl7EprDestination:
    """Delivers events to one EPR (or interface engine) as IHE PCD messages over MLLP."""

    def __init__(
        self,
        name: str,
        client: Requester,
        config: PcdConfig,
        clock: Clock,
        *,
        on_rejected: OnRejected,
        history: History | None = None,
        history_limit: int = 10_000,
        max_batch: int = 20,
    ) -> None:
        if max_batch < 1 or history_limit < 0:
            raise ValueError(
                f"max_batch must be >= 1 and history_limit >= 0, not {max_batch}, {history_limit}"
            )
        self.name = name
        self.max_batch = max_batch
        self.config = config
        self._client = client
        self._clock = clock
        self._on_rejected = on_rejected
        self._history = history
        self._history_limit = history_limit
        # Messages of the current batch already answered (acknowledged, refused, or unbuildable):
        # not sent again when the outbox retries the batch. Cleared once the whole batch is done.
        self._done: set[str] = set()
        # The newest event of each kind the related lookups want, per (kind, gateway, pump, channel
        # [, alarm]), as events pass through.
        self._recent: dict[tuple[object, ...], Event] = {}
        self._seen_upto = -1  # seq of the last event that went through deliver
        self.sent = 0  # messages acknowledged (AA/CA)
        self.rejected = 0  # messages refused by the receiver, or not buildable

    async def deliver(self, events: Sequence[Event]) -> None:
        """Send every message of ``events`` in order; return when each is answered.

        Raises DeliveryError when the receiver cannot be reached, does not answer, or answers
        something that is not the ACK of the message sent.
        """
        for event in events:
            if event.seq != self._seen_upto + 1:
                # Not the event after the last one seen (a restart, a retried batch, events passed
                # over by a select): the remembered events may not be the newest any more.
                self._recent.clear()
            await self._deliver_one(event)
            self._remember(event)
        self._done.clear()

    async def close(self) -> None:
        """Close the connection (a later delivery opens it again)."""
        await self._client.close()

    # -- one event -------------------------------------------------------------------------------

    async def _deliver_one(self, event: Event) -> None:
        build_key = f"{event.id}-build"
        if build_key in self._done:
            return
        related = await self._related(event)
        try:
            plan = build_messages(event, self.config, at=self._clock.wall(), related=related)
        except Hl7Error as exc:
            log.warning(
                "event cannot be written as HL7; it is recorded as rejected and skipped",
                extra={"destination": self.name, "event_seq": event.seq, "error": str(exc)},
            )
            await self._reject(event, BUILD_FAILED, str(exc))
            self._done.add(build_key)
            return
        for skipped in plan.skipped:
            log.debug(
                "event not sent as %s: %s",
                skipped.kind,
                skipped.reason,
                extra={"destination": self.name, "event_seq": event.seq, "event_type": event.type},
            )
        for message in plan.messages:
            if message.control_id not in self._done:
                await self._send(event, message)
                self._done.add(message.control_id)

    async def _send(self, event: Event, message: PcdMessage) -> None:
        try:
            reply = await self._client.request(message.data)
        except MllpError as exc:
            raise DeliveryError(self.name, f"{message.kind} message {message.control_id}: {exc}") from exc
        except Hl7Error as exc:  # a message that cannot be framed: a bug of the builder, never sent
            await self._reject(event, BUILD_FAILED, f"{message.kind} message {message.control_id}: {exc}")
            return
        try:
            ack = read_ack(reply)
        except Hl7Error as exc:
            await self._client.close()  # whatever came back, the stream cannot be trusted now
            raise DeliveryError(
                self.name,
                f"{message.kind} message {message.control_id}: the reply is not an HL7 ACK ({exc}); "
                f"received {reply[:80]!r}",
            ) from exc
        if not ack.acked_control_id:
            # An empty MSA-2 (a known defect of real receivers, and of IHE example 08's kind):
            # one message is outstanding on this connection at a time, and the client drops the
            # connection after any failure, so this reply can only be to this message. Taken, and
            # said, rather than retried for ever behind one event.
            log.warning(
                "the EPR's ACK has an empty MSA-2; taken as the answer to the one message outstanding",
                extra={"destination": self.name, "control_id": message.control_id},
            )
        elif ack.acked_control_id != message.control_id:
            await self._client.close()  # a late reply to something else: start clean
            named = repr(ack.acked_control_id)
            raise DeliveryError(
                self.name,
                f"{message.kind} message {message.control_id}: the ACK names {named} in MSA-2, not this "
                "message (the receiver must echo MSH-10)",
            )
        if ack.code in ACK_ACCEPT:
            self.sent += 1
            return
        # AE/AR/CE/CR (read_ack accepts no other code): read and refused; a resend cannot help.
        reason = "; ".join(str(part) for part in (ack.text, *ack.errors) if part) or "no reason given"
        log.warning(
            "EPR refused a message; recorded, not retried",
            extra={
                "destination": self.name,
                "event_seq": event.seq,
                "control_id": message.control_id,
                "code": ack.code,
                "reason": reason,
            },
        )
        await self._reject(event, ack.code, f"{message.kind} message {message.control_id}: {reason}")

    async def _reject(self, event: Event, code: str, reason: str) -> None:
        self.rejected += 1
        await self._on_rejected(event, code, reason[:_REASON_MAX])

    # -- related events --------------------------------------------------------------------------

    async def _related(self, event: Event) -> Related:
        wanted = related_wanted(event, self.config)
        if wanted is None:
            return Related()
        found = self._recent.get(_key(wanted, event))
        if found is None or not wanted.matches(found, event):
            found = await self._search(wanted, event)
        if wanted.slot == "infusion_start":
            return Related(infusion_start=found)
        return Related(alarm_start=found)

    def _remember(self, event: Event) -> None:
        self._seen_upto = event.seq
        for kind, types, alarm in _REMEMBERED:
            if event.type in types:
                name = event.payload.get("alarm") if alarm else None
                self._recent[(kind, event.gateway, event.pump, event.channel, name)] = event

    async def _search(self, wanted: Wanted, event: Event) -> Event | None:
        """The newest event before ``event`` that ``wanted`` matches, read back from the log."""
        if self._history is None:
            return None
        upto = event.seq - 1
        scanned = 0
        while upto > 0 and scanned < self._history_limit:
            start = max(0, upto - _HISTORY_PAGE)
            page = await self._history(start, upto - start)
            for candidate in reversed(page):
                if candidate.seq <= upto and wanted.matches(candidate, event):
                    return candidate
            scanned += upto - start
            upto = start
        return None


_REMEMBERED: Final = (
    ("infusion", frozenset({"infusion.started", "infusion.completed", "infusion.stopped"}), False),
    ("alarm", frozenset({"channel.alarm_raised", "channel.alarm_cleared"}), True),
)


def _key(wanted: Wanted, event: Event) -> tuple[object, ...]:
    kind = "infusion" if wanted.slot == "infusion_start" else "alarm"
    return (kind, event.gateway, event.pump, event.channel, wanted.alarm)
