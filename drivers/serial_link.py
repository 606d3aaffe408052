"""The asyncio side of a serial pump link, shared by the serial drivers (New Era, Alaris-style).

:func:`open_serial` opens a port through pyserial-asyncio-fast; :class:`SerialLink` is the port's
protocol object: bytes in → the protocol's sans-I/O host decoder → a queue of replies and typed
errors. A protocol object (rather than ``open_serial_connection``'s StreamReader) lets the driver
see exactly what arrived before it sends a request, and throw that away: a late reply to a request
that timed out, or an alarm packet the pump sent by itself, must never be taken as the answer to
the next request.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import deque
from typing import Final, Generic, Protocol, TypeVar, cast

import serial
import serial_asyncio_fast

from pumpgw.gateway.errors import DriverError, EnvironmentProblem, ProtocolError, PumpGwError

_LOG = logging.getLogger(__name__)

PERMISSION_FIX: Final = "add the gateway's user to the group that owns the port (dialout on Debian)"

#: How long close() waits for pyserial-asyncio-fast to close the port in its executor thread.
CLOSE_TIMEOUT_S: Final = 2.0

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class HostDecoder(Protocol[T_co]):
    """What a protocol's sans-I/O host-side decoder offers (``newera_codec``, ``alaris_codec``)."""

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> T_co | object:
        """The next decoded reply, or the codec's NEED_DATA sentinel; raises ProtocolError."""
        ...

    def clear(self) -> bytes: ...


async def open_serial(port: str, baudrate: int, protocol: asyncio.Protocol) -> asyncio.Transport:
    """Open ``port`` (a device path or a pyserial URL) 8N1 and attach ``protocol`` to it.

    A typed wrapper around ``serial_asyncio_fast.create_serial_connection``. Raises
    ``serial.SerialException`` (an ``OSError``) when the port cannot be opened.
    """
    loop = asyncio.get_running_loop()
    transport, _ = await serial_asyncio_fast.create_serial_connection(
        loop, lambda: protocol, port, baudrate=baudrate
    )
    return cast(asyncio.Transport, transport)


def serial_open_error(pump_id: str, command: str, port: str, exc: OSError) -> PumpGwError:
    """The gateway's error for an OSError opening ``port``: EACCES or EPERM is the machine's
    (EnvironmentProblem, with the fix), anything else a DriverError naming the port and reason."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return EnvironmentProblem(f"no permission to open serial port {port}", PERMISSION_FIX)
    return DriverError(pump_id, command, f"cannot open serial port {port}: {exc.strerror or exc}")


async def open_link(pump_id: str, port: str, baudrate: int, link: SerialLink[T]) -> None:
    """Open ``port`` for ``link``; raise EnvironmentProblem or DriverError (never an OSError or
    pyserial's ValueError for a setting the port refuses) naming the port."""
    try:
        link.transport = await open_serial(port, baudrate, link)
    except serial.SerialException as exc:
        raise serial_open_error(pump_id, "open", port, exc) from exc
    except (OSError, ValueError) as exc:
        raise DriverError(pump_id, "open", f"cannot open serial port {port}: {exc}") from exc


class SerialLink(asyncio.Protocol, Generic[T]):
    """One open serial port: decoded items (``T`` or ProtocolError) queue up until taken.

    ``need_data`` is the decoder's "no complete frame yet" sentinel.
    """

    def __init__(self, decoder: HostDecoder[T], need_data: object) -> None:
        self.decoder = decoder
        self._need_data = need_data
        self.transport: asyncio.Transport | None = None
        self.items: deque[T | ProtocolError] = deque()
        self.lost = False
        self.lost_reason: Exception | None = None
        self._arrived = asyncio.Event()
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        while True:
            try:
                event = self.decoder.next_event()
            except ProtocolError as exc:
                self.items.append(exc)
                continue
            if event is self._need_data:
                break
            self.items.append(cast(T, event))
        if self.items:
            self._arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_reason = exc
        self._arrived.set()
        if not self._closed.done():
            self._closed.set_result(None)

    async def next_item(self) -> T | ProtocolError | None:
        """The next reply or bad frame; None once the port is closed."""
        while not self.items:
            if self.lost:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        return self.items.popleft()

    def take_stale(self) -> tuple[list[T | ProtocolError], bytes]:
        """Everything received so far and not yet taken, and any partial frame (both dropped)."""
        items = list(self.items)
        self.items.clear()
        return items, self.decoder.clear()

    async def close(self) -> None:
        """Close the port and wait until pyserial has closed its file descriptor."""
        if self.transport is not None and not self.lost:
            self.transport.close()
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await asyncio.shield(self._closed)
            except TimeoutError:
                _LOG.warning("serial port did not close within %s s", CLOSE_TIMEOUT_S)
