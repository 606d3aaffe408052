"""The ``pumpgw`` command.

Exit codes: 0 success, including a stop by Ctrl-C or SIGTERM; 1 the gateway or a check failed
while running; 2 bad configuration or bad usage (the message names the file, the key, the bad
value and what was expected).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from .cli_common import EXIT_CONFIG, default_state_dir, fail, run_until_signal
from .clock import SystemClock
from .errors import ConfigError, PumpGwError
from .library_cli import library
from .logs import setup_logging
from .rig_cli import rig

log = logging.getLogger("pumpgw")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Log level (default: info, or the config file's [log] level).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="text for people (default), json for journald and log shippers.",
)
@click.pass_context
def main(ctx: click.Context, log_level: str | None, log_format: str | None) -> None:
    """Vendor-neutral bedside infusion-pump gateway."""
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level
    ctx.obj["log_format"] = log_format
    setup_logging(log_level or "info", "json" if log_format == "json" else "text")


@main.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop by itself after this many seconds (default: run until Ctrl-C).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the demo keeps its event log and broker files "
    "(default: $XDG_STATE_HOME/pumpgw/demo, i.e. ~/.local/state/pumpgw/demo).",
)
@click.option("--no-mqtt", is_flag=True, help="Do not start a local mosquitto broker.")
@click.pass_context
def demo(ctx: click.Context, duration: float | None, state_dir: Path | None, no_mqtt: bool) -> None:
    """Run the gateway against the bench rig, with no configuration.

    Starts emulated pumps (one per protocol: Modbus TCP, Modbus RTU, New Era and Alaris-style, the
    serial ones on PTY pairs), a local mosquitto on a free loopback port if it is installed, and the
    gateway, and shows every channel live. Ctrl-C stops everything.
    """
    from .demo import run_demo

    state = state_dir or default_state_dir("demo")
    tty = sys.stdout.isatty()
    if tty:
        # Log lines would tear the live table: send them to a file and say where.
        state.mkdir(parents=True, exist_ok=True)
        logfile = (state / "gateway.log").open("a", encoding="utf-8")
        setup_logging(ctx.obj["log_level"] or "info", ctx.obj["log_format"] or "text", logfile)
        click.echo(f"pumpgw demo: logging to {state / 'gateway.log'}", err=True)
    log.info("demo starting", extra={"state_dir": str(state)})
    run_until_signal(
        lambda stop: run_demo(
            state_dir=state,
            clock=SystemClock(),
            stop=stop,
            stream=sys.stdout,
            tty=tty,
            use_mqtt=not no_mqtt,
        ),
        duration,
    )
    log.info("demo stopped")


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The gateway's TOML configuration (see docs/configuration.md).",
)
@click.pass_context
def run(ctx: click.Context, config_path: Path) -> None:
    """Run the gateway for a real deployment, from a TOML configuration file."""
    from .app import Gateway
    from .config import check_files, load_config

    try:
        config = load_config(config_path)
        check_files(config, str(config_path))
    except ConfigError as exc:
        fail(exc)
    setup_logging(ctx.obj["log_level"] or config.log.level, ctx.obj["log_format"] or config.log.format)
    log.info("gateway starting", extra={"config": str(config_path), "pumps": len(config.pumps)})

    async def main_(stop: asyncio.Event) -> None:
        await Gateway(config, SystemClock()).run(stop)

    run_until_signal(main_, None)
    log.info("gateway stopped")


main.add_command(rig)
main.add_command(library)


@main.group()
def config() -> None:
    """Check configuration files."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def config_check(path: Path) -> None:
    """Validate a configuration file and say what it configures."""
    from .config import load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        fail(exc)
    click.echo(
        f"{path}: valid; gateway {cfg.gateway.id}, {len(cfg.pumps)} pump(s), "
        f"MQTT {'on' if cfg.mqtt.enabled else 'off'}, state in {cfg.gateway.state_dir}"
    )


@main.group()
def events() -> None:
    """Read the local event log."""


@events.command("verify")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The gateway's state directory (default: the demo's).",
)
def events_verify(state_dir: Path | None) -> None:
    """Check the event log's hash chain; name the first bad event if there is one."""
    from .app import EVENT_LOG_NAME
    from .eventlog import verify_file

    path = (state_dir or default_state_dir("demo")) / EVENT_LOG_NAME
    if not path.exists():
        click.echo(f"pumpgw: no event log at {path}", err=True)
        sys.exit(EXIT_CONFIG)
    try:
        result = verify_file(path)
    except PumpGwError as exc:
        fail(exc)
    click.echo(
        f"{path}: {result.count} events, hash chain intact; last event seq {result.last_seq}, "
        f"hash {result.last_hash}\n(deleting the newest events leaves a valid chain: compare the last "
        "seq and hash with the copy delivered upstream)"
    )


def _entry() -> None:  # pragma: no cover - python -m pumpgw.gateway.cli
    main(prog_name="pumpgw")


if __name__ == "__main__":  # pragma: no cover
    _entry()
