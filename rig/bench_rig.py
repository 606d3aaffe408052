"""The default bench rig: emulated pumps already infusing, on real ports, for the demo and tests.

``BenchRig`` starts ``modbus_pumps`` multi-channel pumps, each on its own Modbus TCP port on
loopback (the rig's reference register map), and ``newera_pumps`` New Era syringe pumps, each on
its own pseudo-terminal pair. Every channel is programmed and started with an example infusion so
the numbers move at once. :meth:`BenchRig.endpoints` returns each pump in the shape of a
``[[pumps]]`` entry of the gateway's configuration file.

The infusions are **examples for exercising software, not clinical advice**: names and
concentrations are plausible so a screen looks familiar, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any

from pumpgw.drivers.modbus_map import load_builtin_map
from pumpgw.gateway.clock import Clock

from .modbus_pump import EmulatedModbusPump
from .modbus_server import ModbusPumpServer
from .newera_pump import EmulatedNewEraPump
from .physics import InfusionChannel
from .pty_link import PtyDeviceServer

REGISTER_MAP = "rig-multichannel-v1"


@dataclass(frozen=True)
class ExampleInfusion:
    drug: str
    concentration: Decimal | None
    concentration_unit: str
    rate_ml_h: Decimal
    vtbi_ml: Decimal


# Channel programmes the Modbus pumps start with (EXAMPLES, not clinical advice).
MODBUS_EXAMPLES = (
    ExampleInfusion("Noradrenaline", Decimal("0.08"), "mg/mL", Decimal("5"), Decimal("50")),
    ExampleInfusion("Maintenance fluid", None, "", Decimal("120"), Decimal("1000")),
)
# New Era pumps hold no drug name; a syringe pump at a typical rate.
NEWERA_EXAMPLE = ExampleInfusion("", None, "", Decimal("20"), Decimal("50"))


def _program(channel: InfusionChannel, example: ExampleInfusion, now: float) -> None:
    channel.advance(now)
    channel.program(
        example.rate_ml_h,
        example.vtbi_ml,
        drug=example.drug,
        concentration=example.concentration,
        concentration_unit=example.concentration_unit,
    )
    channel.start()


class BenchRig:
    """``async with BenchRig(clock) as rig:`` -> emulated pumps serving until the block ends."""

    def __init__(
        self, clock: Clock, *, modbus_pumps: int = 1, newera_pumps: int = 1, channels: int = 2
    ) -> None:
        self._clock = clock
        self._modbus_count = modbus_pumps
        self._newera_count = newera_pumps
        self._channels = channels
        self.modbus: list[tuple[EmulatedModbusPump, ModbusPumpServer]] = []
        self.newera: list[tuple[EmulatedNewEraPump, PtyDeviceServer]] = []

    async def start(self) -> None:
        try:
            register_map = load_builtin_map(REGISTER_MAP)
            now = self._clock.monotonic()
            for i in range(1, self._modbus_count + 1):
                pump = EmulatedModbusPump(
                    register_map,
                    manufacturer="pumpgw bench rig",
                    model="RIG-MC2",
                    serial=f"RIG-MB-{i:04d}",
                    firmware="1.0.0",
                    library_version=1,
                    library_name="example library",
                    channels=self._channels,
                )
                for n in range(1, self._channels + 1):
                    _program(pump.channel(n), MODBUS_EXAMPLES[(n - 1) % len(MODBUS_EXAMPLES)], now)
                server = ModbusPumpServer(pump, self._clock, unit_id=1)
                await server.start()
                self.modbus.append((pump, server))
            for i in range(self._newera_count):
                syringe = EmulatedNewEraPump(address=i % 100)
                syringe.keypad_program_and_run(NEWERA_EXAMPLE.rate_ml_h, NEWERA_EXAMPLE.vtbi_ml, now)
                pty = PtyDeviceServer(syringe, self._clock)
                await pty.start()
                self.newera.append((syringe, pty))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every pump server and close every PTY. Idempotent."""
        while self.newera:
            _, pty = self.newera.pop()
            await pty.stop()
        while self.modbus:
            _, server = self.modbus.pop()
            await server.stop()

    def endpoints(self) -> list[dict[str, Any]]:
        """Each pump as a ``[[pumps]]`` configuration entry."""
        out: list[dict[str, Any]] = []
        for i, (_, server) in enumerate(self.modbus, start=1):
            out.append(
                {"id": f"rig-modbus-{i}", "driver": "modbus-tcp", "host": "127.0.0.1",
                 "port": server.port, "unit_id": 1, "register_map": REGISTER_MAP}
            )  # fmt: skip
        for i, (syringe, pty) in enumerate(self.newera, start=1):
            out.append(
                {"id": f"rig-newera-{i}", "driver": "newera", "port": pty.path,
                 "address": syringe.address}
            )  # fmt: skip
        return out

    async def __aenter__(self) -> BenchRig:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
