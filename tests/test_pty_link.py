"""PtyDeviceServer: a real PTY pair, raw mode, close/reopen by the client, and no fd left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios

import pytest

from pumpgw.gateway.clock import FakeClock
from pumpgw.rig.pty_link import REARM_DELAY_S, PtyDeviceServer


class Recorder:
    """A device that records what it got, and when, and answers ``<`` data ``>``."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.times: list[float] = []
        self.arrived = asyncio.Event()

    def receive(self, data: bytes, now: float) -> bytes:
        self.received += data
        self.times.append(now)
        self.arrived.set()
        return b"<" + data + b">"

    async def wait_for(self, size: int) -> bytes:
        async with asyncio.timeout(1):
            while len(self.received) < size:
                self.arrived.clear()
                await self.arrived.wait()
        return bytes(self.received)


def _open_client(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)


async def _read(fd: int, size: int) -> bytes:
    """Read ``size`` bytes from ``fd`` through the event loop (no sleeping, no busy-waiting)."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    try:
        async with asyncio.timeout(1):
            while len(got) < size:
                ready.clear()
                await ready.wait()
                with contextlib.suppress(BlockingIOError):  # woken, but another read took it
                    got += os.read(fd, size - len(got))
    finally:
        loop.remove_reader(fd)
    return bytes(got)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _serving(server: PtyDeviceServer) -> bool:
    # A call, not the property itself: mypy would carry the narrowing of one assert to the next.
    return server.running


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_lifecycle_leaves_no_descriptor_behind() -> None:
    before = _open_fds()
    server = PtyDeviceServer(Recorder(), FakeClock())
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.path
    assert not _serving(server)
    await server.start()
    assert _serving(server)
    master, slave = server._master, server._slave  # the two ends, to check they get closed
    assert master is not None
    assert slave is not None
    assert server.path.startswith("/dev/pts/")
    assert os.isatty(master)
    assert len(_open_fds() - before) == 2
    with pytest.raises(RuntimeError, match="already"):
        await server.start()
    await server.stop()
    assert not _serving(server)
    assert not _is_open(master)
    assert not _is_open(slave)
    assert _open_fds() == before
    await server.stop()  # idempotent
    assert _open_fds() == before


async def test_async_with_serves_and_closes() -> None:
    before = _open_fds()
    clock = FakeClock()
    device = Recorder()
    async with PtyDeviceServer(device, clock) as server:
        client = _open_client(server.path)
        try:
            os.write(client, b"AB\r\n")
            assert await device.wait_for(4) == b"AB\r\n"  # raw: CR not turned into LF
            assert await _read(client, 6) == b"<AB\r\n>"  # raw: no echo before the reply
            assert device.times == [clock.monotonic()]
            clock.advance(90)
            os.write(client, b"C")
            assert await device.wait_for(5) == b"AB\r\nC"
            assert device.times[-1] == clock.monotonic()
            assert await _read(client, 3) == b"<C>"
        finally:
            os.close(client)
    assert _open_fds() == before


async def test_slave_is_in_raw_mode() -> None:
    async with PtyDeviceServer(Recorder(), FakeClock()) as server:
        client = _open_client(server.path)
        try:
            _iflag, _oflag, _cflag, lflag, *_ = termios.tcgetattr(client)
            assert not lflag & (termios.ECHO | termios.ICANON)
        finally:
            os.close(client)


async def test_client_may_close_and_reopen_the_port() -> None:
    device = Recorder()
    async with PtyDeviceServer(device, FakeClock()) as server:
        for round_ in range(3):
            client = _open_client(server.path)
            try:
                os.write(client, b"x")
                await device.wait_for(round_ + 1)
                assert await _read(client, 3) == b"<x>"
            finally:
                os.close(client)
        assert server.hangups == 0  # the server holds the slave open: the master never sees EIO


async def test_without_holding_the_slave_a_hangup_neither_spins_nor_crashes() -> None:
    # Nobody holds the slave open: reading the master fails with EIO until a client opens it.
    device = Recorder()
    before = _open_fds()
    async with PtyDeviceServer(device, FakeClock(), hold_slave_open=False) as server:
        async with asyncio.timeout(1):
            await server.wait_for_hangup()
        client = _open_client(server.path)
        try:
            os.write(client, b"hello")
            await device.wait_for(5)  # read once the reader is re-armed, REARM_DELAY_S later
            assert await _read(client, 7) == b"<hello>"
        finally:
            os.close(client)
        async with asyncio.timeout(1):
            await server.wait_for_hangup()
        # A reader left armed on a hung-up master is called back continuously (thousands of
        # times in these milliseconds); re-arming after REARM_DELAY_S keeps it to a handful.
        assert 1 <= server.hangups < 1 / REARM_DELAY_S
    assert _open_fds() == before


async def test_stop_while_a_client_has_the_port_open() -> None:
    before = _open_fds()
    server = PtyDeviceServer(Recorder(), FakeClock())
    await server.start()
    client = _open_client(server.path)
    await server.stop()
    try:
        assert os.read(client, 1) == b""  # Linux: end of file on the slave once the master is gone
        with pytest.raises(OSError, match="Input/output error"):
            os.write(client, b"x")
    finally:
        os.close(client)
    assert _open_fds() == before


async def test_a_paced_line_is_never_faster_than_its_baud_rate() -> None:
    # 9600 baud, 10 bits a character: 10 characters in and 12 out take at least 22.9 ms, twice.
    # Only the lower bound is asserted: a busy machine may be slower, never faster than the wire.
    recorder = Recorder()
    async with PtyDeviceServer(recorder, FakeClock(), baudrate=9600) as server:
        fd = _open_client(server.path)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            os.write(fd, b"0123456789")
            first = await _read(fd, 12)
            os.write(fd, b"abcdefghij")
            second = await _read(fd, 12)
            elapsed = loop.time() - started
        finally:
            os.close(fd)
    assert (first, second) == (b"<0123456789>", b"<abcdefghij>")
    assert elapsed >= 2 * (10 + 12) * 10 / 9600 * 0.99
