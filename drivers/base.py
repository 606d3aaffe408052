"""The pump driver interface: what the gateway may ask of any pump, whatever its wire protocol.

A driver knows the wire format, not clinical meaning: it reports what the pump says (rate, volume,
drug name and concentration as the pump holds them) as exact quantities, and raises the typed
errors of :mod:`pumpgw.gateway.errors` (``NoResponse``, ``DeviceError``, ``ProtocolError``). It never
decides whether a value is clinically acceptable; that is the safety core's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol, runtime_checkable

from pumpgw.gateway.errors import QuantityError
from pumpgw.gateway.quantity import Quantity

#: The DeviceError code every driver uses when what the pump holds after a write is not what was
#: sent (or a start or stop did not take): one code, so the workflow can treat them alike.
READBACK_MISMATCH: Final = "readback-mismatch"


class ChannelState(StrEnum):
    """The state of one pump channel, common to every protocol."""

    IDLE = "idle"  # stopped, nothing running
    INFUSING = "infusing"
    PAUSED = "paused"
    KVO = "kvo"  # keep vein open after VTBI reached
    BOLUS = "bolus"
    ALARM = "alarm"
    COMPLETE = "complete"  # VTBI reached and stopped
    PRIMING = "priming"
    STANDBY = "standby"
    OFF = "off"
    UNKNOWN = "unknown"  # the pump reported a state this driver does not know


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What this pump lets the gateway do remotely. A False here is a fact, not an error."""

    remote_program: bool
    remote_start: bool
    remote_stop: bool
    reports_drug: bool
    reports_library_version: bool
    reports_battery: bool


@dataclass(frozen=True, slots=True)
class PumpIdentity:
    """Who the pump says it is."""

    protocol: str  # "modbus-tcp", "modbus-rtu", "newera", ...
    manufacturer: str
    model: str
    serial: str | None  # None: this protocol does not report one
    firmware: str
    library_version: str | None  # None: this pump does not report one
    channels: int


def _require_unit(name: str, q: Quantity | None, unit: str) -> None:
    if q is not None and q.unit != unit:
        raise QuantityError(q.value, q.unit, f"{name} must be in {unit}")


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """One channel as read from the pump. ``None`` means the pump does not report that value."""

    channel: int  # 1-based
    state: ChannelState
    rate: Quantity | None = None  # mL/h
    vtbi: Quantity | None = None  # mL, remaining
    volume_infused: Quantity | None = None  # mL
    drug: str | None = None
    concentration: Quantity | None = None
    dose_rate: Quantity | None = None
    alarms: tuple[str, ...] = ()
    battery_percent: int | None = None
    remote_control: bool | None = None

    def __post_init__(self) -> None:
        if self.channel < 1:
            raise ValueError(f"channel numbers start at 1, got {self.channel}")
        _require_unit("rate", self.rate, "mL/h")
        _require_unit("vtbi", self.vtbi, "mL")
        _require_unit("volume_infused", self.volume_infused, "mL")


@dataclass(frozen=True, slots=True)
class ChannelProgram:
    """What to program on a channel. Rate in mL/h and VTBI in mL; drug fields where supported."""

    rate: Quantity
    vtbi: Quantity
    drug: str | None = None
    concentration: Quantity | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require_unit("rate", self.rate, "mL/h")
        _require_unit("vtbi", self.vtbi, "mL")


@runtime_checkable
class PumpDriver(Protocol):
    """One pump, on one link. Methods raise DriverError subclasses; they never return None on error.

    ``connect`` opens the link (idempotent after ``close``); ``identify`` and ``read_status`` are
    idempotent reads; ``program``, ``start`` and ``stop`` are writes that are verified by reading
    back and are never re-sent blindly after a timeout.
    """

    @property
    def pump_id(self) -> str:
        """The configured id of this pump (not its serial number)."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def identify(self) -> PumpIdentity: ...

    async def read_status(self) -> tuple[ChannelStatus, ...]: ...

    async def program(self, channel: int, program: ChannelProgram) -> None: ...

    async def start(self, channel: int) -> None: ...

    async def stop(self, channel: int) -> None: ...
