"""The bench rig: emulated pumps already infusing, on real ports, with faults and recording.

``BenchRig`` starts, by protocol:

* ``modbus-tcp``: multi-channel pumps, each on its own Modbus TCP port on loopback (the rig's
  reference register map);
* ``modbus-rtu``: the same pumps over Modbus RTU, each on its own pseudo-terminal pair;
* ``newera``: New Era NE-1000 syringe pumps, each on its own pseudo-terminal pair;
* ``alaris``: Alaris-style (GH/CC/Asena protocol, as infupy and OpenICE drive it) syringe pumps,
  each on its own pseudo-terminal pair.

Every channel is programmed and started with an example infusion so the numbers move at once.
:meth:`BenchRig.endpoints` returns each pump in the shape of a ``[[pumps]]`` entry of the gateway's
configuration file. Serial links can be paced at a real baud rate (``baudrate``).

At run time (``pumpgw rig fault``, through :mod:`pumpgw.rig.control`) each pump takes faults:
wire faults (:class:`~pumpgw.rig.faults.FaultKind`) on its link, and pump faults here: an old drug
library version reported (pumps that report one), and device alarms on a channel
(:data:`~pumpgw.rig.physics.STOPPING_ALARMS` and advisories, as far as the pump's protocol can
tell them). Each link can be recorded to a file (:mod:`pumpgw.rig.recording`).

The infusions are **examples for exercising software, not clinical advice**: names and
concentrations are plausible so a screen looks familiar, nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from pumpgw.drivers.modbus_map import DEFAULT_MAP, load_builtin_map
from pumpgw.gateway.clock import Clock

from .alaris_pump import EmulatedAlarisPump
from .faults import Fault, FaultError, FaultKind, FaultSet, Tap
from .modbus_device import ModbusRtuDevice
from .modbus_pump import EmulatedModbusPump
from .modbus_server import ModbusPumpServer
from .newera_pump import EmulatedNewEraPump
from .physics import ADVISORY_ALARMS, STOPPING_ALARMS, InfusionChannel
from .pty_link import PtyDeviceServer
from .recording import Recorder

REGISTER_MAP: Final = DEFAULT_MAP  # the rig's reference pump speaks the drivers' default map
PROTOCOLS: Final = ("modbus-tcp", "modbus-rtu", "newera", "alaris")
#: Pump faults (not wire faults): what each does.
PUMP_FAULTS: Final[Mapping[str, str]] = {
    "old-library": "the pump reports an older drug library version (pumps that report one)",
    **dict.fromkeys(sorted(STOPPING_ALARMS), "device alarm on a channel (--channel); stops delivery"),
    **dict.fromkeys(sorted(ADVISORY_ALARMS), "device advisory on a channel (--channel)"),
}
#: The drug library version the rig's pumps report, and the one ``old-library`` makes them report.
LIBRARY_VERSION: Final = 7
OLD_LIBRARY_VERSION: Final = 6
#: What the Modbus pump's battery register reads under a battery alarm.
_BATTERY_PERCENT: Final = {"battery-low": 15, "battery-depleted": 2}


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
# The syringe pumps hold no drug name; a syringe pump at a typical rate.
SYRINGE_EXAMPLE = ExampleInfusion("", None, "", Decimal("20"), Decimal("50"))


@dataclass
class RigPump:
    """One emulated pump as the rig runs it."""

    id: str
    protocol: str
    endpoint: dict[str, Any]
    faults: FaultSet
    taps: list[Tap]
    model: EmulatedModbusPump | EmulatedNewEraPump | EmulatedAlarisPump
    settings: dict[str, Any] = field(default_factory=dict)  # for a recording's header
    recorder: Recorder | None = None
    pump_faults: set[str] = field(default_factory=set)

    def channel(self, number: int) -> InfusionChannel:
        model = self.model
        if isinstance(model, EmulatedModbusPump):
            if not 1 <= number <= model.channels:
                raise FaultError(f"pump {self.id} has channels 1-{model.channels}, not {number}")
            return model.channel(number)
        if number != 1:
            raise FaultError(f"pump {self.id} has one channel, not {number}")
        return model.channel


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
        self,
        clock: Clock,
        *,
        modbus_pumps: int = 1,
        newera_pumps: int = 1,
        channels: int = 2,
        modbus_rtu_pumps: int = 0,
        alaris_pumps: int = 0,
        baudrate: int | None = None,
    ) -> None:
        self._clock = clock
        self._counts = {
            "modbus-tcp": modbus_pumps,
            "modbus-rtu": modbus_rtu_pumps,
            "newera": newera_pumps,
            "alaris": alaris_pumps,
        }
        self._channels = channels
        self.baudrate = baudrate
        self.pumps: list[RigPump] = []
        self._servers: list[ModbusPumpServer | PtyDeviceServer] = []

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            now = self._clock.monotonic()
            for i in range(1, self._counts["modbus-tcp"] + 1):
                await self._start_modbus_tcp(i, now)
            for i in range(1, self._counts["modbus-rtu"] + 1):
                await self._start_modbus_rtu(i, now)
            for i in range(1, self._counts["newera"] + 1):
                await self._start_newera(i, now)
            for i in range(1, self._counts["alaris"] + 1):
                await self._start_alaris(i, now)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every pump server, close every PTY and recording. Idempotent."""
        for pump in self.pumps:
            self.stop_recording(pump.id)
        while self._servers:
            await self._servers.pop().stop()
        self.pumps.clear()

    async def __aenter__(self) -> BenchRig:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- what the rig offers ----------------------------------------------------------------------
    def endpoints(self) -> list[dict[str, Any]]:
        """Each pump as a ``[[pumps]]`` configuration entry."""
        return [dict(p.endpoint) for p in self.pumps]

    def pump(self, pump_id: str) -> RigPump:
        """The pump called ``pump_id``. Raises FaultError listing the rig's pumps if none is."""
        for pump in self.pumps:
            if pump.id == pump_id:
                return pump
        raise FaultError(f"no pump {pump_id!r} on this rig; it has {', '.join(p.id for p in self.pumps)}")

    def set_fault(
        self,
        pump_id: str,
        kind: str,
        *,
        count: int | None = None,
        seconds: float | None = None,
        delay_s: float = 0.0,
        channel: int = 1,
    ) -> str:
        """Apply a wire fault or a pump fault; return what was done, in words.
        Raises FaultError naming what is wrong (unknown pump or kind, a fault the pump cannot have)."""
        pump = self.pump(pump_id)
        now = self._clock.monotonic()
        if kind in FaultKind.__members__.values():
            wire = FaultKind(kind)
            pump.faults.set(Fault(wire, count=count, duration_s=seconds, delay_s=delay_s), now)
            scope = _scope(count, seconds)
            return f"{pump.id}: {wire.value} on its {pump.protocol} link {scope}"
        if kind == "old-library":
            model = pump.model
            if not isinstance(model, EmulatedModbusPump):
                raise FaultError(f"old-library: pump {pump.id} ({pump.protocol}) reports no drug library")
            model.library_version = OLD_LIBRARY_VERSION
            pump.pump_faults.add(kind)
            return (
                f"{pump.id}: now reports drug library version {OLD_LIBRARY_VERSION} "
                f"(current: {LIBRARY_VERSION})"
            )
        if kind in STOPPING_ALARMS | ADVISORY_ALARMS:
            model = pump.model
            try:
                if isinstance(model, EmulatedNewEraPump):
                    model.raise_alarm(kind, now)
                elif isinstance(model, EmulatedAlarisPump):
                    model.poll(now)
                    model.raise_alarm(kind)
                else:
                    target = pump.channel(channel)
                    target.advance(now)
                    target.raise_alarm(kind)
                    if kind in _BATTERY_PERCENT:  # the battery register says it too
                        model.battery_percent = _BATTERY_PERCENT[kind]
            except ValueError as exc:
                raise FaultError(f"{pump.id}: {exc}") from exc
            pump.pump_faults.add(kind)
            return f"{pump.id}: alarm {kind} raised on channel {channel}"
        known = sorted([k.value for k in FaultKind] + list(PUMP_FAULTS))
        raise FaultError(f"unknown fault {kind!r}: one of {', '.join(known)}")

    def clear_faults(self, pump_id: str) -> str:
        """End every fault on a pump: wire faults, the old library, and device alarms."""
        pump = self.pump(pump_id)
        now = self._clock.monotonic()
        pump.faults.clear()
        model = pump.model
        if isinstance(model, EmulatedModbusPump):
            model.library_version = LIBRARY_VERSION
            model.battery_percent = 100
            for n in range(1, model.channels + 1):
                model.channel(n).advance(now)
                model.channel(n).clear_alarms()
        elif isinstance(model, EmulatedNewEraPump):
            model.poll(now)
            model.channel.clear_alarms()
        else:
            model.poll(now)
            model.clear_alarms()
        pump.pump_faults.clear()
        return f"{pump.id}: faults cleared"

    def describe(self) -> list[dict[str, Any]]:
        """Each pump: id, protocol, endpoint, faults in force."""
        now = self._clock.monotonic()
        out = []
        for pump in self.pumps:
            wire = [
                {"kind": f.kind.value, "count": f.count, "seconds": f.duration_s}
                for f in pump.faults.active(now)
            ]
            out.append(
                {
                    "id": pump.id,
                    "protocol": pump.protocol,
                    "endpoint": pump.endpoint,
                    "faults": wire + [{"kind": k} for k in sorted(pump.pump_faults)],
                    "recording": str(pump.recorder.path) if pump.recorder is not None else None,
                }
            )
        return out

    def start_recording(self, pump_id: str, path: Path) -> str:
        """Record the pump's link to ``path`` (replacing a recording in progress)."""
        pump = self.pump(pump_id)
        self.stop_recording(pump_id)
        try:
            recorder = Recorder(
                path,
                pump=pump.id,
                protocol=pump.protocol,
                started=self._clock.wall(),
                clock_start=_wire_now(),
                settings=pump.settings,
            )
        except OSError as exc:
            raise FaultError(f"cannot write a recording to {path}: {exc}") from exc
        pump.recorder = recorder
        pump.taps.append(recorder)
        return f"{pump.id}: recording its link to {path}"

    def stop_recording(self, pump_id: str) -> str:
        pump = self.pump(pump_id)
        recorder, pump.recorder = pump.recorder, None
        if recorder is None:
            return f"{pump.id}: was not recording"
        pump.taps.remove(recorder)
        recorder.close()
        return f"{pump.id}: recording stopped, {recorder.chunks} chunks in {recorder.path}"

    # -- one protocol each ------------------------------------------------------------------------
    def _modbus_pump(self, i: int, protocol: str, now: float) -> EmulatedModbusPump:
        pump = EmulatedModbusPump(
            load_builtin_map(REGISTER_MAP),
            manufacturer="pumpgw bench rig",
            model="RIG-MC2",
            serial=f"RIG-{'MB' if protocol == 'modbus-tcp' else 'RT'}-{i:04d}",
            firmware="1.0.0",
            library_version=LIBRARY_VERSION,
            library_name="example library",
            channels=self._channels,
        )
        for n in range(1, self._channels + 1):
            _program(pump.channel(n), MODBUS_EXAMPLES[(n - 1) % len(MODBUS_EXAMPLES)], now)
        return pump

    async def _start_modbus_tcp(self, i: int, now: float) -> None:
        pump = self._modbus_pump(i, "modbus-tcp", now)
        faults = FaultSet(checksummed=False)
        taps: list[Tap] = []
        server = ModbusPumpServer(pump, self._clock, unit_id=1, faults=faults, taps=taps)
        await server.start()
        self._servers.append(server)
        endpoint: dict[str, Any] = {
            "id": f"rig-modbus-{i}",
            "driver": "modbus-tcp",
            "host": "127.0.0.1",
            "port": server.port,
            "unit_id": 1,
            "register_map": REGISTER_MAP,
        }
        self.pumps.append(RigPump(endpoint["id"], "modbus-tcp", endpoint, faults, taps, pump, {"unit_id": 1}))

    async def _start_modbus_rtu(self, i: int, now: float) -> None:
        pump = self._modbus_pump(i, "modbus-rtu", now)
        baud = self.baudrate or 19200
        # Modbus RTU frames end with the CRC, low byte first: the last byte is the CRC's high byte.
        pty = PtyDeviceServer(
            ModbusRtuDevice(pump, unit_id=1, baudrate=baud),
            self._clock,
            baudrate=self.baudrate,  # 8N1, as the endpoint says: 10 bits per character
            checksum_at=1,
        )
        await self._serve_pty(pty)
        endpoint = {
            "id": f"rig-modbus-rtu-{i}",
            "driver": "modbus-rtu",
            "port": pty.path,
            "baudrate": baud,
            # No parity: Linux pseudo-terminals refuse PARENB (EINVAL), so a PTY cannot be 8E1,
            # the serial-line spec's default for a real line (docs/modbus.md).
            "parity": "N",
            "stopbits": 1,
            "unit_id": 1,
            "register_map": REGISTER_MAP,
        }
        self._add_serial(endpoint, "modbus-rtu", pty, pump, {"unit_id": 1, "baudrate": baud})

    async def _start_newera(self, i: int, now: float) -> None:
        syringe = EmulatedNewEraPump(address=(i - 1) % 100)
        syringe.keypad_program_and_run(SYRINGE_EXAMPLE.rate_ml_h, SYRINGE_EXAMPLE.vtbi_ml, now)
        pty = PtyDeviceServer(syringe, self._clock, baudrate=self.baudrate, checksum_at=2)
        await self._serve_pty(pty)
        endpoint: dict[str, Any] = {
            "id": f"rig-newera-{i}",
            "driver": "newera",
            "port": pty.path,
            "address": syringe.address,
        }
        if self.baudrate is not None:
            endpoint["baudrate"] = self.baudrate
        self._add_serial(endpoint, "newera", pty, syringe, {"address": syringe.address})

    async def _start_alaris(self, i: int, now: float) -> None:
        syringe = EmulatedAlarisPump(serial=f"{12345677 + i:08d}")
        syringe.keypad_program_and_run(SYRINGE_EXAMPLE.rate_ml_h, SYRINGE_EXAMPLE.vtbi_ml, now)
        pty = PtyDeviceServer(syringe, self._clock, baudrate=self.baudrate, checksum_at=2)
        await self._serve_pty(pty)
        endpoint: dict[str, Any] = {"id": f"rig-alaris-{i}", "driver": "alaris", "port": pty.path}
        if self.baudrate is not None:
            endpoint["baudrate"] = self.baudrate
        self._add_serial(endpoint, "alaris", pty, syringe, {})

    async def _serve_pty(self, pty: PtyDeviceServer) -> None:
        await pty.start()
        self._servers.append(pty)

    def _add_serial(
        self,
        endpoint: dict[str, Any],
        protocol: str,
        pty: PtyDeviceServer,
        model: EmulatedModbusPump | EmulatedNewEraPump | EmulatedAlarisPump,
        settings: dict[str, Any],
    ) -> None:
        link = pty.conditioner
        self.pumps.append(
            RigPump(endpoint["id"], protocol, endpoint, link.faults, link.taps, model, settings)
        )


def _scope(count: int | None, seconds: float | None) -> str:
    parts = []
    if count is not None:
        parts.append(f"for {count} repl{'y' if count == 1 else 'ies'}")
    if seconds is not None:
        parts.append(f"for {seconds:g} s")
    return " or ".join(parts) if parts else "until cleared (pumpgw rig fault PUMP clear)"


def _wire_now() -> float:
    return time.monotonic()  # the links' pacing clock (faults.LinkConditioner's wire_clock)
