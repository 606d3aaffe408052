"""Serve an :class:`~pumpgw.rig.modbus_pump.EmulatedModbusPump` over Modbus TCP.

A thin layer: :class:`~pumpgw.rig.tcp_link.TcpDeviceServer` does the TCP, and each connection gets
its own :class:`~pumpgw.rig.modbus_device.ModbusTcpDevice` (MBAP framing is per connection); every
request reaches the sans-I/O pump with the injected clock's monotonic time, so the registers a
client reads are the physics at that instant and a test's FakeClock decides how much has been
infused.

No pymodbus here: the device side is written from the Modbus specifications
(:mod:`pumpgw.rig.modbus_device`), so the driver (pymodbus) and the emulator cannot share a
mistake. The same pump can be served over RTU on a PTY with
``PtyDeviceServer(ModbusRtuDevice(pump, unit_id), clock)``.
"""

from __future__ import annotations

from types import TracebackType

from pumpgw.gateway.clock import Clock

from .faults import FaultSet, Tap
from .modbus_device import ModbusTcpDevice
from .modbus_pump import EmulatedModbusPump
from .tcp_link import TcpDeviceServer


class ModbusPumpServer:
    """A Modbus TCP server for one emulated pump at ``unit_id``. Use as ``async with``, or call
    :meth:`start` and :meth:`stop`. With ``port=0`` the system picks a free port; :attr:`port` says
    which once started (read from the listening socket, so there is no window in which another
    process could take it). :attr:`link` is the TCP server underneath (connections, fault hooks)."""

    def __init__(
        self,
        pump: EmulatedModbusPump,
        clock: Clock,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int = 1,
        faults: FaultSet | None = None,
        taps: list[Tap] | None = None,
    ) -> None:
        self.pump = pump
        self.host = host
        self.unit_id = unit_id
        self.link = TcpDeviceServer(self._device, clock, host=host, port=port, faults=faults, taps=taps)

    @property
    def port(self) -> int:
        """The TCP port: the bound one after :meth:`start`, the requested one before."""
        return self.link.port

    async def start(self) -> None:
        """Listen on ``host:port``. Raises EnvironmentProblem if the address cannot be bound and
        RuntimeError if already started."""
        if self.link.running:
            raise RuntimeError(f"Modbus pump server on {self.host}:{self.port} is already running")
        await self.link.start()

    async def stop(self) -> None:
        """Close the listener and every client connection and release the port. Idempotent."""
        await self.link.stop()

    async def __aenter__(self) -> ModbusPumpServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _device(self) -> ModbusTcpDevice:
        return ModbusTcpDevice(self.pump, self.unit_id)
