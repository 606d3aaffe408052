"""What every ``pumpgw`` subcommand shares: exit codes, default state directories, running an
asyncio main until a signal, and turning a gateway error into one line and an exit code.

Exit codes: 0 success, including a stop by Ctrl-C or SIGTERM; 1 the gateway or a check failed
while running; 2 bad configuration or bad usage.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import click

from .errors import ConfigError, PartFailed, PumpGwError

EXIT_FAILED = 1
EXIT_CONFIG = 2


def default_state_dir(name: str) -> Path:
    """``$XDG_STATE_HOME/pumpgw/NAME`` (``~/.local/state/pumpgw/NAME``): where the demo and the
    rig keep their files when not told otherwise."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pumpgw" / name


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]], duration: float | None) -> None:
    """Run ``main(stop)`` on a new event loop; SIGINT, SIGTERM or ``duration`` set ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if duration is not None:
            loop.call_later(duration, stop.set)
        await main(stop)

    try:
        asyncio.run(runner())
    except PumpGwError as exc:
        fail(exc)


def fail(exc: PumpGwError) -> NoReturn:
    """Say what went wrong in one line and exit: 2 for a configuration problem, 1 otherwise."""
    if isinstance(exc, PartFailed) and isinstance(exc.cause, ConfigError):
        exc = exc.cause  # the part could not start because of its configuration
    if isinstance(exc, ConfigError):
        click.echo(f"pumpgw: configuration error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(f"pumpgw: {exc}", err=True)
    sys.exit(EXIT_FAILED)
