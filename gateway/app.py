"""Assembling the gateway from its configuration: drivers, pollers, event log, monitor, MQTT.

:class:`Gateway` builds the parts in the order the supervisor starts them (event log first, so
everything after it can write events; pollers last) and runs them until asked to stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pumpgw.drivers.base import PumpDriver

from .clock import Clock
from .config import (
    AlarisPumpConfig,
    GatewayConfig,
    ModbusRtuPumpConfig,
    ModbusTcpPumpConfig,
    NewEraPumpConfig,
    PumpConfig,
)
from .errors import ConfigError, PumpGwError
from .eventlog import EventLog
from .events import EventType
from .monitor import BedsideMonitor
from .mqtt import MqttPublisher
from .poller import PumpPoller
from .supervisor import Part, Supervisor

if TYPE_CHECKING:
    from pumpgw.drivers.modbus_map import RegisterMap

log = logging.getLogger(__name__)

EVENT_LOG_NAME = "events.sqlite3"


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
            await self.events.append(EventType.GATEWAY_STARTED, {"gateway": self._gateway_id})
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


class Gateway:
    """Everything the gateway runs, built from a validated configuration."""

    def __init__(self, config: GatewayConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        state_dir = config.gateway.state_dir
        self.events = EventLog(state_dir / EVENT_LOG_NAME, config.gateway.id, clock)
        self.mqtt: MqttPublisher | None = None
        if config.mqtt.enabled:
            self.mqtt = MqttPublisher(config.mqtt, config.gateway.id, self.events, clock)
        self.monitor = BedsideMonitor(
            self.events,
            {p.id: p.driver for p in config.pumps},
            clock,
            publish=None if self.mqtt is None else self.mqtt.set_pump_status,
        )
        self.pollers = [
            PumpPoller(make_driver(p), clock, [self.monitor], interval_s=p.poll_interval_s)
            for p in config.pumps
        ]

    def parts(self, extra: Sequence[Part] = ()) -> list[Part]:
        parts: list[Part] = [EventLogPart(self.events, self.config.gateway.id)]
        if self.mqtt is not None:
            parts.append(self.mqtt)
        parts.extend(self.pollers)
        parts.extend(extra)
        return parts

    async def run(self, stop: asyncio.Event, extra: Sequence[Part] = ()) -> None:
        """Run until ``stop`` is set. Raises PartFailed if a part fails."""
        await Supervisor(self.parts(extra)).run(stop)
