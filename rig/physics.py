"""Physics of one emulated infusion channel, advanced by an injected clock (sans-I/O).

Volume infused integrates the rate over time; when the programmed VTBI is reached the channel goes
to KVO (keep vein open, at ``kvo_rate``) or stops, as configured. Time comes in as monotonic seconds
passed to :meth:`InfusionChannel.advance`; nothing here reads a clock or does I/O, so the same
channel runs in real time in the demo and in microseconds in tests.

Volumes are ``Decimal`` mL quantized to 0.001 mL (1 uL), the resolution the emulated pumps report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from pumpgw.drivers.base import ChannelState

_UL = Decimal("0.001")
_SECONDS_PER_HOUR = Decimal(3600)


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
        if self.state is ChannelState.INFUSING:
            self._deliver_infusing(elapsed)
        elif self.state is ChannelState.KVO:
            self._add(self.kvo_rate_ml_h * elapsed / _SECONDS_PER_HOUR)

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
        self.state = ChannelState.INFUSING

    def stop(self) -> None:
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
