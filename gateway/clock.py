"""The injected clock: wall time for timestamps, monotonic time for scheduling.

Everything that timestamps or schedules takes a :class:`Clock` instead of calling ``time`` or
``datetime.now`` itself, so tests can run hours of pump physics in microseconds and a wall-clock
step (NTP correcting a Pi that booted without an RTC) never disturbs a poll schedule.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What the gateway needs to know about time."""

    def wall(self) -> datetime:
        """Now, as an aware UTC datetime: for timestamps only, never for intervals."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards: for intervals and schedules."""
        ...


class SystemClock:
    """The real clock."""

    def wall(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to. ``advance`` moves both wall and monotonic time."""

    def __init__(self, start: datetime | None = None, monotonic_start: float = 1000.0) -> None:
        self._wall = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._wall.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._mono = monotonic_start

    def wall(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"monotonic time cannot go backwards (advance {seconds})")
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)

    def step_wall(self, seconds: float) -> None:
        """Step only the wall clock (as NTP does), leaving monotonic time alone."""
        self._wall += timedelta(seconds=seconds)
