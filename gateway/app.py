"""Assembling the gateway from its configuration: drivers, pollers, event log, monitor, MQTT.

:class:`Gateway` builds the parts in the order the supervisor starts them (event log first, so
everything after it can write events; then the drug library, so pumps are judged against it from
their first identification; pollers last) and runs them until asked to stop.

The drug library (:class:`LibraryPart`): the active library that ``pumpgw library install`` put in
``[library] dir`` is read and verified against ``[library] trust_store`` on start and again whenever
one of those files changes (checked every :data:`LIBRARY_CHECK_S` seconds, on the local disk only).
Success writes ``library.loaded``; any problem writes ``library.unavailable`` with the reason and
the gateway goes on monitoring pumps without a library: a library problem never stops monitoring
and never touches a running infusion, it only makes auto-programming unavailable.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pumpgw.drivers.base import PumpDriver

from .clock import Clock
from .config import (
    AlarisPumpConfig,
    GatewayConfig,
    LibrarySection,
    ModbusRtuPumpConfig,
    ModbusTcpPumpConfig,
    NewEraPumpConfig,
    PumpConfig,
)
from .errors import ConfigError, EventLogError, LibraryError, PumpGwError
from .eventlog import EventLog, Retention
from .events import EventType
from .hospital_links import HospitalLinks, receiver_names
from .library_fitness import LibraryState
from .monitor import BedsideMonitor
from .mqtt import DESTINATION as MQTT_DESTINATION
from .mqtt import MqttPublisher
from .poller import PumpPoller
from .supervisor import Part, Supervisor

if TYPE_CHECKING:
    from pumpgw.drivers.modbus_map import RegisterMap

log = logging.getLogger(__name__)

EVENT_LOG_NAME = "events.sqlite3"
#: How often the library part looks whether the library, its approvals or the trust store changed.
LIBRARY_CHECK_S = 10.0


def make_driver(pump: PumpConfig) -> PumpDriver:
    """The driver for one configured pump. Raises ConfigError for a register map that is wrong."""
    if isinstance(pump, ModbusTcpPumpConfig):
        from pumpgw.drivers.modbus import ModbusTcpDriver

        return ModbusTcpDriver(
            pump.id,
            pump.host,
            pump.port,
            unit_id=pump.unit_id,
            register_map=_register_map(pump.register_map),
            timeout_s=pump.timeout_s,
        )
    if isinstance(pump, ModbusRtuPumpConfig):
        from pumpgw.drivers.modbus import ModbusRtuDriver

        return ModbusRtuDriver(
            pump.id,
            pump.port,
            baudrate=pump.baudrate,
            parity=pump.parity,
            stopbits=pump.stopbits,
            unit_id=pump.unit_id,
            register_map=_register_map(pump.register_map),
            timeout_s=pump.timeout_s,
        )
    if isinstance(pump, AlarisPumpConfig):
        from pumpgw.drivers.alaris import AlarisDriver

        return AlarisDriver(pump.id, pump.port, baudrate=pump.baudrate, timeout_s=pump.timeout_s)
    if isinstance(pump, NewEraPumpConfig):
        from pumpgw.drivers.newera import NewEraDriver

        return NewEraDriver(
            pump.id,
            pump.port,
            baudrate=pump.baudrate,
            address=pump.address,
            timeout_s=pump.timeout_s,
            safe_mode_timeout_s=pump.safe_mode_timeout_s,
        )
    raise ConfigError("config", "pumps[].driver", type(pump).__name__, "a known driver")


def _register_map(name: str) -> RegisterMap:
    """A built-in map by name, or a map file by path. Raises ConfigError for a bad map."""
    from pumpgw.drivers.modbus_map import load_builtin_map, load_map

    if "/" in name or name.endswith(".toml"):
        return load_map(Path(name))
    return load_builtin_map(name)


class EventLogPart:
    """The event log as a supervised part: opens the database, group-commits, closes on stop."""

    name = "eventlog"

    def __init__(self, events: EventLog, gateway_id: str) -> None:
        self.events = events
        self._gateway_id = gateway_id

    async def run(self, ready: asyncio.Event) -> None:
        await self.events.open()
        writer = asyncio.create_task(self.events.run(), name="eventlog:writer")
        try:
            await self.events.append(
                EventType.GATEWAY_STARTED, {"gateway": self._gateway_id, "software_version": _version()}
            )
            ready.set()
            # asyncio.wait, not "await writer": cancelling this part must not cancel the writer
            # before gateway.stopped is committed below.
            await asyncio.wait({writer})
            writer.result()  # the writer ended on its own: that is a failure, say why
        finally:
            if not writer.done():
                # Record the stop while the writer still runs, then let it drain and finish.
                try:
                    await asyncio.shield(
                        asyncio.wait_for(self.events.append(EventType.GATEWAY_STOPPED, {}), 5)
                    )
                except (PumpGwError, TimeoutError):
                    log.warning("could not record gateway.stopped")
                writer.cancel()
                await asyncio.wait({writer})
            await asyncio.shield(self.events.close())


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pumpgw")
    except PackageNotFoundError:
        return None


def _one_line(exc: BaseException) -> str:
    """An error's text on one line, for an event payload and a status line."""
    if isinstance(exc, LibraryError):
        return f"drug library {exc.source}: " + "; ".join(str(p) for p in exc.problems)
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def load_library(section: LibrarySection, directory: Path) -> LibraryState:
    """Read the trust store and the active library in ``directory`` and verify them, now.

    Blocking file I/O: call it on a thread. Never raises for a library problem: the state says why
    there is no library.
    """
    from .library_signing import parse_trust_store
    from .library_store import LibraryStore

    if section.trust_store is None:
        return LibraryState(
            None,
            "no trust store is configured ([library] trust_store), so no drug library can be verified",
            section.required,
        )
    try:
        raw = section.trust_store.read_bytes()
    except OSError as exc:
        return LibraryState(
            None,
            f"cannot read the trust store {section.trust_store} ([library] trust_store): "
            f"{exc.strerror or exc}",
            section.required,
        )
    try:
        trust = parse_trust_store(raw, str(section.trust_store))
        verified = LibraryStore(directory).load_active(trust)
    except PumpGwError as exc:
        return LibraryState(None, _one_line(exc), section.required)
    return LibraryState(verified, None, section.required)


_Signature = tuple[tuple[int, int, int] | None, ...]


class LibraryPart:
    """The drug library as a supervised part: loads it on start and again when its files change.

    Ready once the first load is done (whatever its outcome), so pollers start with the library
    known. Each change of state writes one event (``library.loaded`` or ``library.unavailable``)
    and makes the monitor judge every pump again.
    """

    name = "library"

    def __init__(
        self,
        section: LibrarySection,
        directory: Path,
        events: EventLog,
        monitor: BedsideMonitor,
        *,
        publish: Callable[[dict[str, Any]], None] | None = None,
        check_every_s: float = LIBRARY_CHECK_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._section = section
        self._directory = directory
        self._events = events
        self._monitor = monitor
        self._publish = publish
        self._check_every_s = check_every_s
        self._sleep = sleep
        self._seen: _Signature | None = None
        self._announced: dict[str, Any] | None = None
        self.state: LibraryState | None = None  # None until the first load

    async def run(self, ready: asyncio.Event) -> None:
        await self._check_safely(force=True)
        ready.set()
        while True:
            await self._sleep(self._check_every_s)
            await self._check_safely()

    async def _check_safely(self, *, force: bool = False) -> None:
        # Whatever goes wrong here is a bug to log, never a reason to stop monitoring the pumps.
        try:
            await self.check(force=force)
        except Exception:
            log.exception("checking the drug library failed unexpectedly")

    def _paths(self) -> list[Path]:
        from .library_store import ACTIVE_NAME, approvals_path

        active = self._directory / ACTIVE_NAME
        paths = [active, approvals_path(active)]
        if self._section.trust_store is not None:
            paths.append(self._section.trust_store)
        return paths

    def _signature(self) -> _Signature:
        """What changes when a file is replaced or edited: (mtime, size, inode), None if missing."""
        out: list[tuple[int, int, int] | None] = []
        for path in self._paths():
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    async def check(self, *, force: bool = False) -> bool:
        """Load the library again if its files changed (or ``force``). True if it was loaded again."""
        signature = await asyncio.to_thread(self._signature)
        if not force and signature == self._seen:
            return False
        self._seen = signature  # taken before loading: a change during the load is seen next time
        try:
            state = await asyncio.to_thread(load_library, self._section, self._directory)
        except Exception as exc:
            # A bug, not a library problem; still never a reason to stop monitoring pumps.
            log.exception("loading the drug library failed unexpectedly")
            state = LibraryState(
                None,
                f"unexpected error while loading the drug library: {type(exc).__name__}: {exc}",
                self._section.required,
            )
        await self._apply(state)
        return True

    async def _apply(self, state: LibraryState) -> None:
        self.state = state
        status = state.as_json()
        said = state.loaded_payload() if state.verified is not None else state.unavailable_payload()
        if said != self._announced:
            self._announced = said
            if state.verified is not None:
                lib = state.verified.library
                await self._event(EventType.LIBRARY_LOADED, said)
                log.info(
                    "drug library loaded",
                    extra={
                        "library": lib.label,
                        "author": state.verified.author,
                        "reviewer": state.verified.reviewer,
                    },
                )
                if lib.doc.example:
                    log.warning("the drug library in use is an EXAMPLE, not clinical advice")
            else:
                await self._event(EventType.LIBRARY_UNAVAILABLE, said)
                if state.required:
                    log.error(
                        "no verified drug library: pumps are monitored, auto-programming is unavailable",
                        extra={"reason": state.reason},
                    )
                else:
                    log.info(
                        "no drug library (not required: monitoring only)", extra={"reason": state.reason}
                    )
            if self._publish is not None:
                self._publish({"library": status})
        await self._monitor.set_library(state)

    async def _event(self, type: EventType, payload: dict[str, Any]) -> None:
        try:
            await self._events.append(type, payload)
        except EventLogError:
            log.exception("event could not be written", extra={"type": str(type)})


@dataclass(frozen=True)
class Readiness:
    allowed: bool
    reasons: tuple[str, ...]


#: How often the gateway status (event log, backlog, readiness) is recomputed and, if it changed,
#: republished.
STATUS_EVERY_S = 5.0


class StatusPart:
    """Recomputes the gateway status every :data:`STATUS_EVERY_S` s; publishes it when it changed
    and logs when auto-programming becomes unavailable or available again (with the reasons)."""

    name = "status"

    def __init__(
        self,
        gateway: Gateway,
        *,
        every_s: float = STATUS_EVERY_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._gateway = gateway
        self._every_s = every_s
        self._sleep = sleep
        self._reasons: tuple[str, ...] | None = None
        self.latest: dict[str, Any] = {}

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()
        while True:
            try:
                await self.update()
            except Exception:
                log.exception("computing the gateway status failed unexpectedly")
            await self._sleep(self._every_s)

    async def update(self) -> dict[str, Any]:
        gw = self._gateway
        self.latest = status = await gw.status_json()
        reasons = tuple(status["auto_programming"]["reasons"])
        if reasons != self._reasons and self._reasons is not None:
            if reasons:
                log.warning("auto-programming unavailable", extra={"reasons": "; ".join(reasons)})
            else:
                log.info("auto-programming available again")
        self._reasons = reasons
        if gw.mqtt is not None:
            gw.mqtt.set_gateway_fields(status)
        return status


class Gateway:
    """Everything the gateway runs, built from a validated configuration."""

    def __init__(self, config: GatewayConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        state_dir = config.gateway.state_dir
        retention = Retention(
            max_events=config.eventlog.max_events,
            warn_percent=config.eventlog.warn_percent,
            destinations=((MQTT_DESTINATION,) if config.mqtt.enabled else ()) + receiver_names(config),
        )
        self.events = EventLog(state_dir / EVENT_LOG_NAME, config.gateway.id, clock, retention=retention)
        self.mqtt: MqttPublisher | None = None
        if config.mqtt.enabled:
            self.mqtt = MqttPublisher(config.mqtt, config.gateway.id, self.events, clock)
        self.monitor = BedsideMonitor(
            self.events,
            {p.id: p.driver for p in config.pumps},
            clock,
            publish=None if self.mqtt is None else self.mqtt.set_pump_status,
        )
        self.library = LibraryPart(
            config.library,
            config.library_dir,
            self.events,
            self.monitor,
            publish=None if self.mqtt is None else self.mqtt.set_gateway_fields,
        )
        self.pollers = [
            PumpPoller(make_driver(p), clock, [self.monitor], interval_s=p.poll_interval_s)
            for p in config.pumps
        ]
        self.hospital = HospitalLinks(config, self.events, clock, self.pump_channels)
        self.orders = self.hospital.orders
        self.status = StatusPart(self)

    def pump_channels(self) -> dict[str, frozenset[str]]:
        """Each configured pump and the channels it has reported (none yet before its first poll)."""
        return {
            pump: frozenset(str(c) for c in (view.channels if view is not None else {}))
            for pump, view in ((p.id, self.monitor.pumps.get(p.id)) for p in self.config.pumps)
        }

    def readiness(self, pump: str | None = None) -> Readiness:
        """Whether the gateway may auto-program now (``pump``: that pump too), and if not, why.

        Never about running infusions: those are left alone whatever this says.
        """
        reasons: list[str] = []
        health = self.events.health
        if not health.ok:
            reasons.append(
                f"the event log cannot record what is done ({health.reason}); "
                "auto-programming needs its audit trail"
            )
        state = self.library.state
        if state is None:
            reasons.append("the drug library has not been loaded yet")
        elif state.verified is None:
            reasons.append(f"no verified drug library ({state.reason})")
        if pump is not None:
            view = self.monitor.pumps.get(pump)
            if view is None:
                reasons.append(f"pump {pump!r} is not configured on this gateway")
            else:
                if view.link != "up":
                    reasons.append(f"pump {pump} link is {view.link}")
                if not view.fitness.fit:
                    reasons.append(f"pump {pump}: {view.fitness.reason}")
        return Readiness(not reasons, tuple(reasons))

    async def status_json(self) -> dict[str, Any]:
        """The gateway-level status: event log, deliveries, auto-programming (retained on MQTT)."""
        status: dict[str, Any] = {}
        if self.events.is_open:
            try:
                status["eventlog"] = await self.events.stats()
            except EventLogError as exc:
                status["eventlog"] = {"health": {"ok": False, "reason": str(exc)}}
        delivery = {}
        if self.mqtt is not None:
            delivery[MQTT_DESTINATION] = {**await self.mqtt.outbox.status(), "connected": self.mqtt.connected}
        delivery.update(await self.hospital.delivery_status())
        status["delivery"] = delivery
        status["orders"] = self.hospital.orders_status()
        ready = self.readiness()
        status["auto_programming"] = {"available": ready.allowed, "reasons": list(ready.reasons)}
        return status

    def parts(self, extra: Sequence[Part] = ()) -> list[Part]:
        parts: list[Part] = [EventLogPart(self.events, self.config.gateway.id), self.library, self.status]
        if self.mqtt is not None:
            parts.append(self.mqtt)
        parts.extend(self.hospital.parts)
        parts.extend(self.pollers)
        parts.extend(extra)
        return parts

    async def run(self, stop: asyncio.Event, extra: Sequence[Part] = ()) -> None:
        """Run until ``stop`` is set. Raises PartFailed if a part fails."""
        await Supervisor(self.parts(extra)).run(stop)
