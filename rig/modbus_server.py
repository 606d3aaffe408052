"""Serve an :class:`~pumpgw.rig.modbus_pump.EmulatedModbusPump` over Modbus TCP with pymodbus.

A thin asyncio layer: pymodbus does the framing and the TCP; every request is handed to the
sans-I/O pump with the injected clock's monotonic time, so the registers a client reads are the
physics at that instant and a test's FakeClock decides how much has been infused.

pymodbus 3.16 is driven through its SimDevice/SimData API (the older ModbusDeviceContext and
ModbusSequentialDataBlock are deprecated and log a warning on every use, reference/dependencies.md
§5). The SimData blocks only tell pymodbus which addresses exist, taken from the pump's register
map; the ``action=`` callback renders the live values into pymodbus's register list before each
reply and hands each write to the pump, whose answer (accept, or a Modbus exception code) is what
the client gets.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Final

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import DataType, SimData, SimDevice

from pumpgw.gateway.clock import Clock
from pumpgw.gateway.errors import EnvironmentProblem

from .modbus_pump import EmulatedModbusPump, ExceptionCode

# Function codes that address holding registers (read, write single, write multiple, mask write,
# read/write multiple) and input registers. Anything else (coils, discrete inputs) is refused.
_HOLDING_CODES: Final = frozenset({3, 6, 16, 22, 23})
_INPUT_CODE: Final = 4


class ModbusPumpServer:
    """A Modbus TCP server for one emulated pump at ``unit_id``. Use as ``async with``, or call
    :meth:`start` and :meth:`stop`. With ``port=0`` the system picks a free port; :attr:`port` says
    which once started (read from the listening socket, so there is no window in which another
    process could take it)."""

    def __init__(
        self,
        pump: EmulatedModbusPump,
        clock: Clock,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_id: int = 1,
    ) -> None:
        self.pump = pump
        self.host = host
        self.unit_id = unit_id
        self._clock = clock
        self._port = port
        self._server: ModbusTcpServer | None = None

    @property
    def port(self) -> int:
        """The TCP port: the bound one after :meth:`start`, the requested one before."""
        return self._port

    async def start(self) -> None:
        """Listen on ``host:port``. Raises EnvironmentProblem if the address cannot be bound and
        RuntimeError if already started."""
        if self._server is not None:
            raise RuntimeError(f"Modbus pump server on {self.host}:{self._port} is already running")
        server = ModbusTcpServer(self._device(), address=(self.host, self._port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus's way of saying the listen() failed
            ModbusBaseServer.active_server = None
            raise EnvironmentProblem(
                f"cannot listen for Modbus TCP on {self.host}:{self._port} ({exc})",
                "choose a free port, or port 0 to let the system pick one",
            ) from exc
        listener = server.transport
        if not isinstance(listener, asyncio.base_events.Server) or not listener.sockets:
            await server.shutdown()  # type: ignore[no-untyped-call]
            raise RuntimeError("pymodbus listened but exposes no socket; has its transport changed?")
        self._port = int(listener.sockets[0].getsockname()[1])
        self._server = server

    async def stop(self) -> None:
        """Close the listener and every client connection and release the port. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        listener = server.transport
        await server.shutdown()  # type: ignore[no-untyped-call]
        if isinstance(listener, asyncio.base_events.Server):
            await listener.wait_closed()
        if server.reconnect_task is not None:  # a re-listen task, should pymodbus have started one
            server.reconnect_task.cancel()
        # pymodbus keeps the last server created in a class attribute; drop ours so it can be freed.
        if ModbusBaseServer.active_server is server:
            ModbusBaseServer.active_server = None

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

    # --- pymodbus glue --------------------------------------------------------------------------
    def _device(self) -> SimDevice:
        # Non-shared blocks: holding and input registers are separate address spaces, as in the map.
        # pymodbus needs at least one entry in every list, so coils and discrete inputs get a
        # placeholder; the action refuses their function codes anyway (the map has no coils).
        placeholder = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        holding = [
            SimData(r.start, count=len(r), datatype=DataType.REGISTERS)
            for r in self.pump.address_ranges("holding")
        ]
        inputs = [
            SimData(r.start, count=len(r), datatype=DataType.REGISTERS)
            for r in self.pump.address_ranges("input")
        ]
        return SimDevice(
            id=self.unit_id, simdata=(placeholder, list(placeholder), holding, inputs), action=self._action
        )

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Answer one request from the pump. ``current_registers`` is pymodbus's whole register
        list for the table (index 0 is ``start_address``); values rendered into it are the reply."""
        now = self._clock.monotonic()
        if function_code in _HOLDING_CODES and set_values is not None:
            reply = self.pump.write_holding(address, [int(v) for v in set_values], now)
            return None if reply is None else ExcCodes(int(reply))
        if function_code in _HOLDING_CODES:
            result = self.pump.read_holding(address, count, now)
        elif function_code == _INPUT_CODE:
            result = self.pump.read_input(address, count, now)
        else:
            return ExcCodes.ILLEGAL_FUNCTION
        if isinstance(result, ExceptionCode):
            return ExcCodes(int(result))
        offset = address - start_address
        current_registers[offset : offset + count] = result
        return None
