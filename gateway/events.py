"""The event vocabulary: every event type the gateway writes to its log, defined in one place.

This is the first slice of the vocabulary (gateway lifecycle, pump links, channel state and
alarms, the drug library in use and the library version on each pump); the event-log issue adds
scans, orders, DERS results and deliveries and publishes the whole vocabulary as a versioned JSON
Schema. A type not listed here cannot be written.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = "0.1"


class EventType(StrEnum):
    GATEWAY_STARTED = "gateway.started"
    GATEWAY_STOPPED = "gateway.stopped"
    PUMP_IDENTIFIED = "pump.identified"  # payload: identity as the pump reports it
    LINK_LOST = "pump.link_lost"  # payload: error (names the consecutive failures)
    LINK_RESTORED = "pump.link_restored"  # payload: none
    CHANNEL_STATE = "channel.state_changed"  # payload: from, to, rate_ml_h, volume_infused_ml, drug
    ALARM_RAISED = "channel.alarm_raised"  # payload: alarm
    ALARM_CLEARED = "channel.alarm_cleared"  # payload: alarm
    DELIVERY_FAILED = "delivery.failed"  # payload: destination, error
    # payload: name, version, hash, example, author, author_key_id, reviewer, reviewer_key_id,
    # pump_libraries ([{model, version}]: the pump-side versions this release expects)
    LIBRARY_LOADED = "library.loaded"
    LIBRARY_UNAVAILABLE = "library.unavailable"  # payload: reason (the error, in words), required
    # payload: model, serial, reported, expected, library_version, library_hash, reason
    PUMP_LIBRARY_OUTDATED = "pump.library_outdated"
    PUMP_LIBRARY_CURRENT = "pump.library_current"  # payload: as pump.library_outdated


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event not yet written: the log adds id, seq, time and the hash chain."""

    type: EventType
    payload: dict[str, Any]
    pump: str | None = None
    channel: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """An event as committed to the log."""

    seq: int
    id: str  # UUIDv7: globally unique and time-ordered
    time: str  # wall clock, ISO 8601 UTC, millisecond resolution
    gateway: str
    type: str
    pump: str | None
    channel: int | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "seq": self.seq,
            "id": self.id,
            "time": self.time,
            "gateway": self.gateway,
            "type": self.type,
            "pump": self.pump,
            "channel": self.channel,
            "payload": self.payload,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }
