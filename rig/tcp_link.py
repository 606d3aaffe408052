"""Serve a sans-I/O device model on a real TCP port, for drivers that connect to a host and port.

:class:`TcpDeviceServer` listens on ``host:port`` (port 0: the system picks a free one, and
:attr:`TcpDeviceServer.port` says which once started) and gives every accepted connection its own
device from ``device_factory()``, as a Modbus TCP device keeps framing state per connection. Every
chunk read from a connection goes to ``device.receive(data, clock.monotonic())`` and whatever the
device returns is written back on that connection. Time comes from the injected clock, so a test
advancing a ``FakeClock`` by an hour makes the emulated pump infuse for an hour.

It is the TCP twin of :class:`~pumpgw.rig.pty_link.PtyDeviceServer`. TCP facts this relies on
(checked by ``tests/test_modbus_device.py``):

* A connection is an :class:`asyncio.Protocol`, not a task: there is no handler coroutine to
  cancel on stop (cancelling a ``start_server`` handler makes asyncio 3.11 log a spurious error).
* :meth:`TcpDeviceServer.stop` closes the listener *and* every client connection.
  ``Server.close()`` only stops accepting and leaves accepted connections open (Python 3.13 added
  ``close_clients()`` for that; this project supports 3.11), so the server keeps its own set of
  connections and closes them itself.
* :meth:`TcpDeviceServer.drop_connections` aborts the current connections (replies not yet sent
  are discarded; the client sees its connection end, as when a pump reboots) and keeps listening,
  so the client can reconnect: for fault injection.
* Bytes the peer sends after a connection was closed are not read; a reply to a request in flight
  is lost, as on a real wire.

Each connection has a :class:`~pumpgw.rig.faults.LinkConditioner`; they share the server's
:class:`~pumpgw.rig.faults.FaultSet` (:attr:`TcpDeviceServer.faults`) and taps, so a fault set on
the pump affects every connection to it. While a ``disconnect`` fault lasts, connections are
aborted as soon as they are made or speak.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Self, cast

from pumpgw.gateway.clock import Clock
from pumpgw.gateway.errors import EnvironmentProblem

from .faults import ByteDevice, FaultSet, Hangup, LinkConditioner, Tap


class _Connection(asyncio.Protocol):
    """One accepted client connection and the device that serves it."""

    def __init__(self, server: TcpDeviceServer, link: LinkConditioner) -> None:
        self.server = server
        self.link = link
        self.transport: asyncio.Transport | None = None

    @property
    def device(self) -> ByteDevice:
        return self.link.device

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server's transports are
        if self.server.faults.dead(self.server._clock.monotonic()):
            self.transport.abort()  # the pump is "unplugged": refuse, as a reset would
            return
        self.server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.server._on_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server._connections.discard(self)


class TcpDeviceServer:
    """Serves a fresh ``device_factory()`` on each TCP connection to ``host:port``. Use
    ``async with`` or start/stop."""

    def __init__(
        self,
        device_factory: Callable[[], ByteDevice],
        clock: Clock,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultSet | None = None,
        taps: list[Tap] | None = None,
    ) -> None:
        self.device_factory = device_factory
        self.faults = faults if faults is not None else FaultSet(checksummed=False)
        self.taps: list[Tap] = taps if taps is not None else []
        self.host = host
        self._clock = clock
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self.accepted = 0  # connections accepted since start
        self.bytes_received = 0

    @property
    def port(self) -> int:
        """The TCP port: the bound one after :meth:`start`, the requested one before."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def connections(self) -> int:
        """How many client connections are open now."""
        return len(self._connections)

    async def start(self) -> None:
        """Listen on ``host:port``. Raises EnvironmentProblem if the address cannot be bound and
        RuntimeError if already started."""
        if self._server is not None:
            raise RuntimeError(f"TcpDeviceServer on {self.host}:{self._port} is already running")
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(self._accept, self.host, self._port)
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot listen on TCP {self.host}:{self._port} ({exc.strerror or exc})",
                "choose a free port, or port 0 to let the system pick one",
            ) from exc
        self._port = int(server.sockets[0].getsockname()[1])
        self._server = server

    async def stop(self) -> None:
        """Stop listening and close every client connection. Idempotent; the port is free again
        when it returns."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        self._connections.clear()
        if server is not None:
            await server.wait_closed()

    def drop_connections(self) -> int:
        """Abort every client connection now (the listener stays open). Returns how many."""
        dropped = list(self._connections)
        for connection in dropped:
            if connection.transport is not None:
                connection.transport.abort()
        self._connections.clear()
        return len(dropped)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- event-loop callbacks -------------------------------------------------------------------
    def _accept(self) -> _Connection:
        self.accepted += 1
        link = LinkConditioner(
            self.device_factory(), faults=self.faults, checksum_at=0, taps=self.taps, conn=self.accepted
        )
        return _Connection(self, link)

    def _on_data(self, connection: _Connection, data: bytes) -> None:
        """Bytes in from one connection → its conditioner and device → the reply out on the same
        connection (later, if a fault delays it)."""
        self.bytes_received += len(data)
        for action in connection.link.incoming(data, self._clock.monotonic()):
            transport = connection.transport
            if transport is None:
                return  # the peer left; the reply is lost
            if isinstance(action, Hangup):
                self.drop_connections()
                return
            if action.delay_s <= 0:
                transport.write(action.data)
            else:
                asyncio.get_running_loop().call_later(action.delay_s, _write_if_open, connection, action.data)


def _write_if_open(connection: _Connection, data: bytes) -> None:
    if connection.transport is not None and not connection.transport.is_closing():
        connection.transport.write(data)
