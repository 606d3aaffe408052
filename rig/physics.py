"""Physics of one emulated infusion channel, advanced by an injected clock (sans-I/O).

Volume infused integrates the rate over time; when the programmed VTBI is reached the channel goes
to KVO (keep vein open, at ``kvo_rate``) or stops, as configured. Time comes in as monotonic seconds
passed to :meth:`InfusionChannel.advance`; nothing here reads a clock or does I/O, so the same
channel runs in real time in the demo and in microseconds in tests.

Volumes are ``Decimal`` mL quantized to 0.001 mL (1 uL), the resolution the emulated pumps report.

Alarms a real channel raises by itself or that the rig injects (:meth:`InfusionChannel.raise_alarm`):
the names are the rig's common vocabulary (the Modbus map's alarm bits use the same names). Those
in :data:`STOPPING_ALARMS` halt delivery at once (state ``alarm``); the others are advisories. A
container of known volume (``container_ml``) runs empty: delivery stops at the last microlitre
with ``container-empty``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

from pumpgw.drivers.base import ChannelState

_UL = Decimal("0.001")
_SECONDS_PER_HOUR = Decimal(3600)

#: Alarms that stop delivery (a pump never infuses through an occlusion or air in the line).
STOPPING_ALARMS: Final = frozenset(
    {
        "occlusion-downstream",
        "occlusion-upstream",
        "air-in-line",
        "door-open",
        "container-empty",
        "battery-depleted",
        "motor-stall",
        "system-error",
    }
)
#: Alarms that only advise; delivery goes on.
ADVISORY_ALARMS: Final = frozenset({"battery-low", "near-empty", "comm-loss", "vtbi-complete"})


@dataclass
class InfusionChannel:
    """One channel's programme and progress. Mutated only through its methods."""

    number: int
    rate_ml_h: Decimal = Decimal(0)
    vtbi_ml: Decimal = Decimal(0)  # programmed volume to be infused; 0 = continuous
    infused_ml: Decimal = Decimal(0)
    drug: str = ""
    concentration: Decimal | None = None
    concentration_unit: str = ""
    kvo_rate_ml_h: Decimal = Decimal("1")
    kvo_at_end: bool = True
    state: ChannelState = ChannelState.IDLE
    alarms: set[str] = field(default_factory=set)
    container_ml: Decimal | None = None  # what is left in the syringe or bag; None: not known
    _last: float | None = None
    _delivered_towards_vtbi: Decimal = Decimal(0)
    _infused_exact: Decimal = Decimal(0)  # unrounded sum behind infused_ml (see _add)

    # -- time ---------------------------------------------------------------------------------
    def advance(self, now: float) -> None:
        """Integrate delivery up to monotonic time ``now`` (seconds)."""
        if self._last is None or now <= self._last:
            self._last = now if self._last is None else max(self._last, now)
            return
        elapsed = Decimal(repr(now - self._last))
        self._last = now
        rate = self.current_rate_ml_h
        empty_after: Decimal | None = None
        if self.container_ml is not None and rate > 0:
            # Time until the container runs dry at this rate (a VTBI end within it only slows
            # delivery to KVO, which the container check below catches on the next advance).
            empty_after = self.container_ml * _SECONDS_PER_HOUR / rate
        if empty_after is not None and elapsed >= empty_after:
            elapsed = empty_after
        before = self._infused_exact
        if self.state is ChannelState.INFUSING:
            self._deliver_infusing(elapsed)
        elif self.state is ChannelState.KVO:
            self._add(self.kvo_rate_ml_h * elapsed / _SECONDS_PER_HOUR)
        if self.container_ml is not None:
            self.container_ml = max(Decimal(0), self.container_ml - (self._infused_exact - before))
            if self.container_ml <= 0 and self.state in (ChannelState.INFUSING, ChannelState.KVO):
                self.raise_alarm("container-empty")

    def _deliver_infusing(self, elapsed: Decimal) -> None:
        volume = self.rate_ml_h * elapsed / _SECONDS_PER_HOUR
        if self.vtbi_ml > 0:
            remaining = self.vtbi_ml - self._delivered_towards_vtbi
            if volume >= remaining:
                # Deliver what was left, then spend the rest of the interval in KVO (or stopped).
                self._add(remaining)
                self._delivered_towards_vtbi = self.vtbi_ml
                leftover = elapsed - (remaining * _SECONDS_PER_HOUR / self.rate_ml_h)
                self.alarms.add("vtbi-complete")
                if self.kvo_at_end:
                    self.state = ChannelState.KVO
                    self._add(self.kvo_rate_ml_h * leftover / _SECONDS_PER_HOUR)
                else:
                    self.state = ChannelState.COMPLETE
                return
            self._delivered_towards_vtbi += volume
        self._add(volume)

    def _add(self, volume: Decimal) -> None:
        # Sum unrounded and round only what is reported. Rounding the running total at every tick
        # drifts: 60 mL/h advanced once a second adds 0.017 mL per tick instead of 0.01666... mL,
        # 1.020 mL after a minute instead of 1.000. If infused_ml was set from outside, start there.
        if self._infused_exact.quantize(_UL, rounding=ROUND_HALF_EVEN) != self.infused_ml:
            self._infused_exact = self.infused_ml
        self._infused_exact += volume
        self.infused_ml = self._infused_exact.quantize(_UL, rounding=ROUND_HALF_EVEN)

    # -- commands -----------------------------------------------------------------------------
    def program(
        self,
        rate_ml_h: Decimal,
        vtbi_ml: Decimal,
        drug: str = "",
        concentration: Decimal | None = None,
        concentration_unit: str = "",
    ) -> None:
        """Set a new programme. Allowed when not infusing; the rate alone may change while running."""
        if rate_ml_h < 0 or vtbi_ml < 0:
            raise ValueError(f"rate {rate_ml_h} mL/h and VTBI {vtbi_ml} mL must not be negative")
        self.rate_ml_h = rate_ml_h
        self.vtbi_ml = vtbi_ml
        self.drug = drug
        self.concentration = concentration
        self.concentration_unit = concentration_unit
        self._delivered_towards_vtbi = Decimal(0)
        self.alarms.discard("vtbi-complete")
        if self.state in (ChannelState.KVO, ChannelState.COMPLETE):
            self.state = ChannelState.IDLE

    def start(self) -> None:
        if self.rate_ml_h <= 0:
            raise ValueError("cannot start with a rate of 0 mL/h")
        stopping = sorted(self.alarms & STOPPING_ALARMS)
        if stopping:
            raise ValueError(f"cannot start while alarming: {', '.join(stopping)}")
        self.state = ChannelState.INFUSING

    def raise_alarm(self, name: str) -> None:
        """Raise ``name`` (advance to the alarm's time first). A stopping alarm halts delivery."""
        if name not in STOPPING_ALARMS | ADVISORY_ALARMS:
            raise ValueError(f"unknown alarm {name!r}: one of {sorted(STOPPING_ALARMS | ADVISORY_ALARMS)}")
        self.alarms.add(name)
        if name in STOPPING_ALARMS and self.state in (
            ChannelState.INFUSING,
            ChannelState.KVO,
            ChannelState.BOLUS,
        ):
            self.state = ChannelState.ALARM

    def clear_alarms(self) -> None:
        """The nurse dealt with the cause and silenced the pump: alarms go; a halted channel waits
        paused for a new start (a pump never restarts by itself)."""
        self.alarms.clear()
        if self.state is ChannelState.ALARM:
            self.state = ChannelState.PAUSED

    def stop(self) -> None:
        if self.state is ChannelState.ALARM:
            return  # already not delivering; the alarm stays until cleared
        self.state = ChannelState.PAUSED if self.state is ChannelState.INFUSING else ChannelState.IDLE

    @property
    def vtbi_remaining_ml(self) -> Decimal:
        if self.vtbi_ml <= 0:
            return Decimal(0)
        return max(Decimal(0), self.vtbi_ml - self._delivered_towards_vtbi)

    @property
    def current_rate_ml_h(self) -> Decimal:
        if self.state is ChannelState.INFUSING:
            return self.rate_ml_h
        if self.state is ChannelState.KVO:
            return self.kvo_rate_ml_h
        return Decimal(0)
