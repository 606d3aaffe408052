"""What the ``pumpgw rig`` commands share: the ``--dir`` option, how they fail, and how they ask the
running rig (its control socket, rig/control.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from .cli_common import EXIT_FAILED, default_state_dir


def default_rig_dir() -> Path:
    return default_state_dir("rig")


DIR_OPTION = click.option(
    "--dir",
    "rig_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The rig's directory: gateway.toml and control.sock (default: $XDG_STATE_HOME/pumpgw/rig).",
)


def die(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"pumpgw rig: {message}", err=True)
    sys.exit(code)


def ask_rig(rig_dir: Path | None, request: dict[str, Any], *, timeout_s: float = 5.0) -> dict[str, Any]:
    """The running rig's answer to ``request``; exits with a clear message when there is none."""
    from pumpgw.rig.control import SOCKET_NAME, ask

    path = (rig_dir or default_rig_dir()) / SOCKET_NAME
    try:
        return asyncio.run(ask(path, request, timeout_s=timeout_s))
    except TimeoutError:
        die(f"the rig at {path} did not answer within {timeout_s:g} s")
    except (OSError, ValueError) as exc:
        die(f"no rig answers on {path} ({exc or type(exc).__name__}); start one with: pumpgw rig up")
