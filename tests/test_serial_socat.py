"""The New Era driver across a serial line made by socat, as a bench wires a USB-serial adapter.

socat joins a new pseudo-terminal (the gateway's "serial port") to the emulated pump's PTY, byte
for byte, with its own buffering and timing: a second, independent implementation of the line
between driver and pump, so the driver is not tested only against our own PTY server.
"""

from __future__ import annotations

import asyncio
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from pumpgw.drivers.base import ChannelProgram, ChannelState
from pumpgw.drivers.newera import NewEraDriver
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.quantity import Quantity
from pumpgw.rig.newera_pump import EmulatedNewEraPump
from pumpgw.rig.pty_link import PtyDeviceServer


async def test_program_and_read_back_through_socat(tmp_path: Path) -> None:
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed (scripts/bootstrap installs it)")
    clock = FakeClock()
    pump = EmulatedNewEraPump()
    link = tmp_path / "ttyGW"
    async with PtyDeviceServer(pump, clock) as server:
        proc = await asyncio.create_subprocess_exec(
            socat, "-d", "-d", f"pty,raw,echo=0,link={link}", f"{server.path},raw,echo=0",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            # socat says "starting data transfer loop" once both ends are open.
            while b"starting data transfer loop" not in await asyncio.wait_for(proc.stderr.readline(), 10):
                pass
            driver = NewEraDriver("ne-socat", str(link), timeout_s=1.0)
            await driver.connect()
            try:
                identity = await driver.identify()
                assert identity.model.startswith("NE-1000")
                await driver.read_status()  # reports (and so clears) the power-up alarm
                program = ChannelProgram(rate=Quantity.of("60", "mL/h"), vtbi=Quantity.of("5", "mL"))
                await driver.program(1, program)
                await driver.start(1)
                for _ in range(60):  # poll every (fake) second, as the gateway does: keeps safe mode alive
                    clock.advance(1)
                    (status,) = await driver.read_status()
                assert status.state is ChannelState.INFUSING
                assert status.rate == Quantity.of("60", "mL/h")
                assert status.volume_infused == Quantity(Decimal("1.000"), "mL")
            finally:
                await driver.close()
        finally:
            proc.terminate()
            await proc.wait()
