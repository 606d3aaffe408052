"""What the gateway knows of each pump right now, and the events that changes of it produce.

:class:`BedsideMonitor` listens to the pollers. It keeps the latest identity, link state and
channel status of every pump (the live terminal view and the retained MQTT status read it), and
writes an event to the log whenever something a clinician or engineer cares about changes: a pump
identified, a link lost or restored, a channel's state, an alarm raised or cleared, and the
clinical reading of a channel change (``infusion.started``, ``rate_changed``, ``bolus``, ``paused``,
``resumed``, ``completed``, ``stopped``: :func:`infusion_events`). Every poll is not an event; a
change is.

It also judges every pump against the gateway's drug library (:func:`.library_fitness.pump_fitness`)
when the pump is identified (on every connection) and when the library changes, and writes
``pump.library_outdated`` when a pump's library stops matching (once per change: a reconnection
that reports the same versions writes nothing) and ``pump.library_current`` when it is back in line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pumpgw.drivers.base import ChannelState, ChannelStatus, PumpIdentity

from .clock import Clock
from .errors import DriverError, EventLogError
from .eventlog import EventLog
from .events import EventType
from .library_fitness import NOT_LOADED, OUTDATED, UNKNOWN_MODEL, Fitness, LibraryState, pump_fitness
from .quantity import Quantity

log = logging.getLogger(__name__)

# A retained pump status is republished at least this often while values move (volume infused),
# and at once on a change of link, state, alarms, drug or rate.
STATUS_REFRESH_S = 10.0


@dataclass
class PumpView:
    pump: str
    driver: str
    link: Literal["connecting", "up", "lost"] = "connecting"
    identity: PumpIdentity | None = None
    channels: dict[int, ChannelStatus] = field(default_factory=dict)
    polls: int = 0
    first_poll_at: float | None = None
    last_poll_at: float | None = None
    last_error: str | None = None
    fitness: Fitness = field(default_factory=lambda: pump_fitness(None, None))


def _q(q: Quantity | None) -> str | None:
    return None if q is None else str(q)


def _num(q: Quantity | None) -> str | None:
    return None if q is None else str(q.value)


def channel_json(c: ChannelStatus) -> dict[str, Any]:
    return {
        "channel": c.channel,
        "state": str(c.state),
        "rate_ml_h": _num(c.rate),
        "vtbi_ml": _num(c.vtbi),
        "volume_infused_ml": _num(c.volume_infused),
        "drug": c.drug,
        "concentration": _q(c.concentration),
        "dose_rate": _q(c.dose_rate),
        "alarms": list(c.alarms),
        "battery_percent": c.battery_percent,
        "remote_control": c.remote_control,
    }


_RUNNING = frozenset({ChannelState.INFUSING, ChannelState.BOLUS})
_UNDER_WAY = _RUNNING | {ChannelState.PAUSED, ChannelState.KVO}
_STOPPED = frozenset({ChannelState.IDLE, ChannelState.STANDBY, ChannelState.OFF})


def infusion_json(c: ChannelStatus) -> dict[str, Any]:
    """The payload common to every ``infusion.*`` event: what the pump reports now."""
    return {
        "state": str(c.state),
        "rate_ml_h": _num(c.rate),
        "vtbi_ml": _num(c.vtbi),
        "volume_infused_ml": _num(c.volume_infused),
        "drug": c.drug,
        "concentration": _q(c.concentration),
        "dose_rate": _q(c.dose_rate),
    }


def infusion_events(
    before: ChannelStatus | None, now: ChannelStatus
) -> list[tuple[EventType, dict[str, Any]]]:
    """The clinical reading of one channel change, as ``infusion.*`` events (with extra payload keys).

    Pure. The first status of a channel (``before`` is None) says nothing about what happened: an
    infusion already running when the gateway starts is recorded by ``channel.state_changed`` with
    ``from: null``, not as started. ``alarm`` is not a change of the infusion (the alarm events say
    it); the ``channel.state_changed`` record keeps every transition as the pump reported it.
    """
    if before is None:
        return []
    was, state = before.state, now.state
    if state == was:
        if state == ChannelState.INFUSING and before.rate != now.rate:
            return [(EventType.INFUSION_RATE_CHANGED, {"previous_rate_ml_h": _num(before.rate)})]
        return []
    if state == ChannelState.BOLUS:
        return [(EventType.INFUSION_BOLUS, {})]
    if state == ChannelState.INFUSING:
        if was == ChannelState.PAUSED:
            return [(EventType.INFUSION_RESUMED, {})]
        if was in (ChannelState.BOLUS, ChannelState.ALARM):
            return []  # a bolus ended, or an alarm cleared: the infusion goes on
        return [(EventType.INFUSION_STARTED, {})]
    if state == ChannelState.PAUSED and was in _RUNNING | {ChannelState.ALARM}:
        return [(EventType.INFUSION_PAUSED, {})]
    if state in (ChannelState.COMPLETE, ChannelState.KVO) and was in _RUNNING | {ChannelState.ALARM}:
        return [(EventType.INFUSION_COMPLETED, {})]
    if state in _STOPPED and was in _UNDER_WAY | {ChannelState.ALARM, ChannelState.COMPLETE}:
        if was == ChannelState.COMPLETE:
            return []  # completed already said it
        return [(EventType.INFUSION_STOPPED, {})]
    return []


def _significant(c: ChannelStatus) -> tuple[object, ...]:
    return (c.state, c.alarms, c.drug, c.rate, c.concentration)


class BedsideMonitor:
    """A poll listener: keeps :attr:`pumps` current and writes change events to the log."""

    def __init__(
        self,
        events: EventLog,
        pumps: dict[str, str],
        clock: Clock,
        *,
        publish: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self._events = events
        self._clock = clock
        self._publish = publish
        self._on_change: list[Callable[[], None]] = []
        self.library: LibraryState = NOT_LOADED
        self.pumps: dict[str, PumpView] = {p: PumpView(p, d) for p, d in pumps.items()}
        self._published_at: dict[str, float] = {}
        # Per pump, the (reported, expected, library hash) last announced as outdated, if any.
        self._outdated: dict[str, tuple[str | None, str | None, str]] = {}

    def fitness(self, pump: str) -> Fitness:
        """Whether ``pump`` may be auto-programmed as far as the drug library goes, as last judged."""
        return self.pumps[pump].fitness

    async def set_library(self, state: LibraryState) -> None:
        """The gateway's library changed (loaded, replaced or gone): judge every pump again."""
        self.library = state
        for pump in self.pumps:
            if await self._judge(pump):
                self._changed(pump, significant=True)

    async def on_identity(self, pump: str, identity: PumpIdentity) -> None:
        self.pumps[pump].identity = identity
        await self._event(EventType.PUMP_IDENTIFIED, asdict(identity), pump=pump)
        await self._judge(pump)
        self._changed(pump, significant=True)

    async def _judge(self, pump: str) -> bool:
        """Recompute the pump's fitness; write the library events it calls for. True if it changed."""
        view = self.pumps[pump]
        library = self.library.library
        before = view.fitness
        view.fitness = fitness = pump_fitness(view.identity, library)
        if library is not None and view.identity is not None:
            announced = self._outdated.get(pump)
            if fitness.code == OUTDATED:
                key = (fitness.reported, fitness.expected, library.hash)
                if key != announced:
                    self._outdated[pump] = key
                    await self._library_event(EventType.PUMP_LIBRARY_OUTDATED, pump, fitness)
                    log.warning(
                        "pump drug library is not the version this gateway's library expects",
                        extra={"pump": pump, "reason": fitness.reason},
                    )
            elif fitness.fit and announced is not None:
                del self._outdated[pump]
                await self._library_event(EventType.PUMP_LIBRARY_CURRENT, pump, fitness)
                log.info("pump drug library back in line", extra={"pump": pump, "reason": fitness.reason})
            elif fitness.code == UNKNOWN_MODEL and before.code != UNKNOWN_MODEL:
                log.warning(
                    "pump drug library cannot be checked", extra={"pump": pump, "reason": fitness.reason}
                )
        return fitness != before

    async def _library_event(self, type: EventType, pump: str, fitness: Fitness) -> None:
        view = self.pumps[pump]
        library = self.library.library
        await self._event(
            type,
            {
                "model": None if view.identity is None else view.identity.model,
                "serial": None if view.identity is None else view.identity.serial,
                "reported": fitness.reported,
                "expected": fitness.expected,
                "library_version": None if library is None else library.version,
                "library_hash": None if library is None else library.hash,
                "reason": fitness.reason,
            },
            pump=pump,
        )

    async def on_link(self, pump: str, up: bool, error: DriverError | None) -> None:
        view = self.pumps[pump]
        was = view.link
        view.link = "up" if up else "lost"
        view.last_error = None if error is None else str(error)
        if up and was == "lost":
            await self._event(EventType.LINK_RESTORED, {}, pump=pump)
        elif not up:
            await self._event(EventType.LINK_LOST, {"error": view.last_error}, pump=pump)
        self._changed(pump, significant=True)

    async def on_status(self, pump: str, channels: tuple[ChannelStatus, ...], at: float) -> None:
        view = self.pumps[pump]
        significant = False
        for status in channels:
            before = view.channels.get(status.channel)
            if before is None or _significant(before) != _significant(status):
                significant = True
            if before is None or before.state != status.state:
                await self._event(
                    EventType.CHANNEL_STATE,
                    {
                        "from": None if before is None else str(before.state),
                        "to": str(status.state),
                        "rate_ml_h": _num(status.rate),
                        "volume_infused_ml": _num(status.volume_infused),
                        "drug": status.drug,
                    },
                    pump=pump,
                    channel=status.channel,
                )
            for type_, extra in infusion_events(before, status):
                await self._event(
                    type_, {**infusion_json(status), **extra}, pump=pump, channel=status.channel
                )
            old_alarms = set() if before is None else set(before.alarms)
            for alarm in sorted(set(status.alarms) - old_alarms):
                await self._event(EventType.ALARM_RAISED, {"alarm": alarm}, pump=pump, channel=status.channel)
            for alarm in sorted(old_alarms - set(status.alarms)):
                await self._event(
                    EventType.ALARM_CLEARED, {"alarm": alarm}, pump=pump, channel=status.channel
                )
            view.channels[status.channel] = status
        view.polls += 1
        view.last_poll_at = at
        if view.first_poll_at is None:
            view.first_poll_at = at
            log.info("first poll of pump complete", extra={"pump": pump, "channels": len(channels)})
            if all(v.first_poll_at is not None for v in self.pumps.values()):
                log.info("all pumps polled", extra={"pumps": len(self.pumps)})
        self._changed(pump, significant=significant)

    def status_json(self, pump: str) -> dict[str, Any]:
        view = self.pumps[pump]
        return {
            "gateway_time": self._clock.wall().isoformat(),
            "pump": pump,
            "driver": view.driver,
            "link": view.link,
            "identity": None if view.identity is None else asdict(view.identity),
            "channels": [channel_json(c) for _, c in sorted(view.channels.items())],
            "last_error": view.last_error,
            "library": view.fitness.as_json(),
        }

    def _changed(self, pump: str, *, significant: bool) -> None:
        if self._publish is not None:
            now = self._clock.monotonic()
            last = self._published_at.get(pump)
            if significant or last is None or now - last >= STATUS_REFRESH_S:
                self._published_at[pump] = now
                self._publish(pump, self.status_json(pump))
        for callback in self._on_change:
            callback()

    def add_change_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (synchronously, so keep it cheap) after every update."""
        self._on_change.append(callback)

    async def _event(self, type: EventType, payload: dict[str, Any], **where: Any) -> None:
        try:
            await self._events.append(type, payload, **where)
        except EventLogError:
            # Never let a full disk stop the monitoring of running infusions; say it loudly.
            log.exception("event could not be written", extra={"type": str(type)})
