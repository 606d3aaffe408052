"""The live terminal view: every channel of every pump, redrawn as polls arrive.

On a terminal the table is redrawn in place at most a few times a second; when the output is not
a terminal (a pipe, a log file, a test) a table is printed at most every ``plain_every_s`` seconds
so a log stays readable, and once more when the view stops. :func:`render` is pure, so it is
tested without a terminal.

The LIBRARY column says, per pump, whether its drug library matches the gateway's
(:mod:`.library_fitness`); :func:`library_line` is the gateway's own library, for a header.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TextIO

from .clock import Clock
from .library_fitness import (
    CURRENT,
    NO_LIBRARY,
    NOT_IDENTIFIED,
    NOT_REPORTED,
    OUTDATED,
    UNKNOWN_MODEL,
    Fitness,
    LibraryState,
)
from .monitor import PumpView

_COLUMNS = ("PUMP", "LINK", "CH", "STATE", "DRUG", "CONCENTRATION", "RATE mL/h", "VTBI mL",
            "INFUSED mL", "ALARMS", "LIBRARY")  # fmt: skip


def fitness_cell(f: Fitness) -> str:
    """A pump's drug-library fitness in a few words (the reason is in the MQTT status)."""
    if f.code == CURRENT:
        return f"v{f.reported} ok"
    if f.code == OUTDATED:
        return f"OUTDATED v{f.reported}, expected v{f.expected}"
    if f.code == UNKNOWN_MODEL:
        return f"v{f.reported} UNCHECKED: model not in library"
    if f.code == NOT_REPORTED:
        return "not reported by pump"
    if f.code == NO_LIBRARY:
        return "NO LIBRARY"
    if f.code == NOT_IDENTIFIED:
        return "-"
    return f.code


def library_line(state: LibraryState) -> str:
    """The gateway's drug library (or why it has none), on one line."""
    return state.summary()


def render(pumps: Sequence[PumpView], header: str, footer: str = "") -> str:
    """The table as text: one row per channel, or one row per pump that has not reported any."""
    rows: list[tuple[str, ...]] = [_COLUMNS]
    for view in pumps:
        link = view.link if view.link != "lost" else "LOST"
        library = fitness_cell(view.fitness)
        if not view.channels:
            rows.append((view.pump, link, "-", "-", "", "", "", "", "", view.last_error or "", library))
            continue
        for i, (number, c) in enumerate(sorted(view.channels.items())):
            rows.append(
                (
                    view.pump,
                    link,
                    str(number),
                    str(c.state),
                    c.drug or "-",
                    "-" if c.concentration is None else str(c.concentration),
                    "-" if c.rate is None else str(c.rate.value),
                    "-" if c.vtbi is None else str(c.vtbi.value),
                    "-" if c.volume_infused is None else str(c.volume_infused.value),
                    ", ".join(c.alarms) or "-",
                    library if i == 0 else "",  # a pump's library, on its first row
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = [header]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if footer:
        lines.append(footer)
    return "\n".join(lines) + "\n"


class TerminalView:
    """A supervised part that draws :func:`render` on ``stream`` whenever the monitor changes."""

    name = "view"

    def __init__(
        self,
        pumps: Callable[[], Sequence[PumpView]],
        header: Callable[[], str],
        footer: Callable[[], str],
        stream: TextIO,
        clock: Clock,
        *,
        tty: bool,
        plain_every_s: float = 5.0,
    ) -> None:
        self._pumps = pumps
        self._header = header
        self._footer = footer
        self._stream = stream
        self._clock = clock
        self._tty = tty
        self._min_gap = 0.25 if tty else plain_every_s
        self._changed = asyncio.Event()
        self._last_draw: float | None = None

    def changed(self) -> None:
        self._changed.set()

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()
        try:
            while True:
                await self._changed.wait()
                if self._last_draw is not None:
                    wait = self._last_draw + self._min_gap - self._clock.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)  # throttle: many polls, one redraw
                self._changed.clear()
                self.draw()
        finally:
            if self._tty:
                self._stream.write("\x1b[?25h")  # show the cursor again
                self._stream.flush()
            else:
                self.draw()  # the last state, for whoever reads the log afterwards

    def draw(self) -> None:
        text = render(self._pumps(), self._header(), self._footer())
        if self._tty:
            # Home, clear to end of screen, hide cursor: redraw in place without flicker.
            text = "\x1b[H\x1b[J\x1b[?25l" + text
        self._stream.write(text)
        self._stream.flush()
        self._last_draw = self._clock.monotonic()
