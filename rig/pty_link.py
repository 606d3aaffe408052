"""Serve a sans-I/O device model on a real pseudo-terminal, for drivers that open a serial port.

:class:`PtyDeviceServer` makes a PTY pair with :func:`os.openpty`, keeps the master end and hands
out the slave's path (``/dev/pts/N``) for a driver to open exactly as it would open ``/dev/ttyUSB0``.
Every chunk read from the master goes to ``device.receive(data, clock.monotonic())`` and whatever
the device returns is written back. Time comes from the injected clock, so a test advancing a
``FakeClock`` by an hour makes the emulated pump infuse for an hour.

PTY facts this relies on (Linux; checked by ``tests/test_pty_link.py``):

* The slave is put in raw mode (``tty.setraw``): otherwise the line discipline echoes what the
  driver writes back to it and turns the CR that ends a basic-mode command into LF.
* When no process holds the slave open, reading the master fails with ``EIO`` and the master stays
  readable, so a reader callback would spin at 100 % CPU while the gateway is between a close and a
  reopen. The server therefore keeps its own slave descriptor open for its whole life
  (``hold_slave_open=True``, the default): the driver may close and reopen the path at will and the
  master never sees ``EIO``. Bytes the device sends while nobody has the slave open wait in the
  slave's input queue; pyserial flushes that queue when it opens the port.
* Should ``EIO`` happen anyway (``hold_slave_open=False``), the reader is removed and re-armed
  :data:`REARM_DELAY_S` later, so the loop never spins; :attr:`PtyDeviceServer.hangups` counts
  these.

Between the PTY and the device sits a :class:`~pumpgw.rig.faults.LinkConditioner`
(:attr:`PtyDeviceServer.conditioner`): faults set on it at run time, the line's baud rate
(``baudrate``: replies leave when a real line would have carried request and reply) and recorders.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tty
from collections import deque
from types import TracebackType
from typing import Final, Self

from pumpgw.gateway.clock import Clock

from .faults import ByteDevice, Hangup, LinkConditioner

_LOG = logging.getLogger(__name__)

#: How long to leave a hung-up master alone before looking again (real time: this is I/O).
REARM_DELAY_S: Final = 0.02
_READ_SIZE: Final = 4096


class PtyDeviceServer:
    """Serves ``device`` on the master side of a fresh PTY pair. Use ``async with`` or start/stop.

    ``baudrate``: pace the line as a real one at that speed (None: as fast as the PTY goes);
    ``checksum_at``: where the last checksum byte of a reply sits, counted from its end, for the
    ``corrupt-checksum`` fault (0: this protocol has no checksum).
    """

    def __init__(
        self,
        device: ByteDevice,
        clock: Clock,
        *,
        hold_slave_open: bool = True,
        baudrate: int | None = None,
        bits_per_char: int = 10,
        checksum_at: int = 2,
    ) -> None:
        self.device = device
        self.conditioner = LinkConditioner(
            device,
            checksum_at=checksum_at,
            baudrate=baudrate,
            bits_per_char=bits_per_char,
        )
        self._clock = clock
        self._hold_slave_open = hold_slave_open
        self._master: int | None = None
        self._slave: int | None = None
        self._path: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outgoing = bytearray()
        self._writing = False
        self._rearm: asyncio.TimerHandle | None = None
        # Paced or delayed replies not yet written, in the order they leave (their times only grow).
        self._later: deque[asyncio.TimerHandle] = deque()
        self._hung_up = asyncio.Event()
        self.hangups = 0  # times the master saw EIO: nobody had the slave open
        self.bytes_received = 0

    @property
    def path(self) -> str:
        """The slave device path for the driver to open. Raises RuntimeError before ``start``."""
        if self._path is None:
            raise RuntimeError("PtyDeviceServer is not started: no PTY path yet")
        return self._path

    @property
    def running(self) -> bool:
        return self._master is not None

    async def wait_for_hangup(self) -> None:
        """Return once the master has seen the slave side closed by everyone (EIO), for tests."""
        await self._hung_up.wait()

    async def start(self) -> None:
        """Create the PTY pair and start serving. Raises RuntimeError if already started."""
        if self._master is not None:
            raise RuntimeError(f"PtyDeviceServer already serves {self._path}")
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            path = os.ttyname(slave)
            os.set_blocking(master, False)
            if not self._hold_slave_open:
                os.close(slave)
        except BaseException:
            os.close(master)
            with contextlib.suppress(OSError):
                os.close(slave)
            raise
        self._loop = loop
        self._master = master
        self._slave = slave if self._hold_slave_open else None
        self._path = path
        loop.add_reader(master, self._on_readable)

    async def stop(self) -> None:
        """Stop serving and close both ends of the PTY. Idempotent; never raises for a closed fd."""
        master, slave, loop = self._master, self._slave, self._loop
        self._master = self._slave = None
        if self._rearm is not None:
            self._rearm.cancel()
            self._rearm = None
        for handle in self._later:
            handle.cancel()
        self._later.clear()
        if master is not None and loop is not None:
            loop.remove_reader(master)
            if self._writing:
                loop.remove_writer(master)
        self._writing = False
        self._outgoing.clear()
        for fd in (master, slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

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
    def _on_readable(self) -> None:
        master, loop = self._master, self._loop
        if master is None or loop is None:
            return
        try:
            data = os.read(master, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            loop.remove_reader(master)
            if exc.errno != errno.EIO:
                # Not a hang-up: something is wrong with the PTY itself. Stop reading rather than
                # have the loop call us again and again with the same error.
                _LOG.error("PTY %s: read failed, no longer serving: %s", self._path, exc)
                return
            # Nobody holds the slave open (see the module docstring): look again later.
            self.hangups += 1
            self._hung_up.set()
            self._rearm = loop.call_later(REARM_DELAY_S, self._rearm_reader)
            return
        self._hung_up.clear()
        if not data:
            return
        self.bytes_received += len(data)
        for action in self.conditioner.incoming(data, self._clock.monotonic()):
            if isinstance(action, Hangup):
                continue  # a dead serial line: what the host sent is lost, nothing comes back
            if action.delay_s <= 0 and not self._later:
                self._send(action.data)
            else:
                self._later.append(loop.call_later(action.delay_s, self._send_later, action.data))

    def _rearm_reader(self) -> None:
        self._rearm = None
        if self._master is not None and self._loop is not None:
            self._loop.add_reader(self._master, self._on_readable)

    def _send_later(self, data: bytes) -> None:
        if self._later:
            self._later.popleft()  # this one: handles fire in the order they were scheduled
        self._send(data)

    def _send(self, data: bytes) -> None:
        self._outgoing += data
        self._flush()

    def _flush(self) -> None:
        master, loop = self._master, self._loop
        if master is None or loop is None:
            return
        while self._outgoing:
            try:
                written = os.write(master, self._outgoing)
            except BlockingIOError:
                break
            except OSError as exc:
                # The PTY is going away under us; what was not sent is lost, as on a real wire.
                _LOG.warning(
                    "PTY %s: write failed, %d bytes dropped: %s", self._path, len(self._outgoing), exc
                )
                self._outgoing.clear()
                break
            del self._outgoing[:written]
        if self._outgoing and not self._writing:
            loop.add_writer(master, self._flush)
            self._writing = True
        elif not self._outgoing and self._writing:
            loop.remove_writer(master)
            self._writing = False
