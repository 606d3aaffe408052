"""The ``pumpgw`` command.

Exit codes: 0 success, including a stop by Ctrl-C or SIGTERM; 1 the gateway or a check failed
while running; 2 bad configuration or bad usage (the message names the file, the key, the bad
value and what was expected).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

import click

from .cli_common import EXIT_CONFIG, EXIT_FAILED, default_state_dir, fail, run_until_signal
from .clock import SystemClock
from .errors import ConfigError, EventLogError, PumpGwError
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
    """Read the local event log: verify its hash chain, export it, follow it."""


_F = TypeVar("_F", bound=Callable[..., Any])


def _log_options(fn: _F) -> _F:
    """``--state-dir`` or ``--log``: where the event log is."""
    fn = click.option(
        "--log",
        "log_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The event log file itself (instead of --state-dir).",
    )(fn)
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The gateway's state directory, holding events.sqlite3 "
        "(default: the demo's, $XDG_STATE_HOME/pumpgw/demo).",
    )(fn)


def _log_path(state_dir: Path | None, log_file: Path | None) -> Path:
    from .app import EVENT_LOG_NAME

    if state_dir is not None and log_file is not None:
        _usage("give --state-dir or --log, not both")
    if log_file is not None:
        return log_file
    return (state_dir or default_state_dir("demo")) / EVENT_LOG_NAME


def _usage(message: str) -> NoReturn:
    click.echo(f"pumpgw: {message}", err=True)
    sys.exit(EXIT_CONFIG)


def _bad_option(exc: ConfigError) -> NoReturn:
    _usage(f"{exc.key} {exc.value!r} is not valid: expected {exc.expected}")


def _no_log(path: Path) -> NoReturn:
    _usage(f"no event log at {path} (check --state-dir or --log; the gateway creates it when it starts)")


def _quiet_stdout() -> None:
    """After a broken pipe (``... | head``): point stdout at /dev/null so the exit flush is silent."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@contextlib.contextmanager
def _stdout_utf8() -> Iterator[TextIO]:
    """Standard output as UTF-8 text with no newline translation, whatever the locale says."""
    sys.stdout.flush()
    stream = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
    try:
        yield stream
        stream.flush()
    finally:
        stream.detach()


_TIME_HELP = "ISO 8601 with a zone (2026-11-22T03:00:00Z, 2026-11-22T04:00:00+01:00) or a date (00:00 UTC)"


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


@events.command("export")
@_log_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv", "fhir"]),
    default="jsonl",
    show_default=True,
    help="jsonl: one event record per line (the published JSON Schema); csv: one row per event, "
    "for spreadsheets; fhir: NDJSON of the FHIR resources of the clinical events.",
)
@click.option("--since", metavar="TIME", help=f"Only events at or after TIME: {_TIME_HELP}.")
@click.option("--until", metavar="TIME", help="Only events before TIME (exclusive); as --since.")
@click.option("--pump", "pumps", multiple=True, metavar="ID", help="Only events of this pump (repeatable).")
@click.option(
    "--patient", "patients", multiple=True, metavar="ID", help="Only events about this patient (repeatable)."
)
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="TYPE",
    help="Only events of this type (infusion.started) or family (infusion.*) (repeatable).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to FILE (replaced whole when the export is complete; mode 0600). Default: standard output.",
)
def events_export(
    state_dir: Path | None,
    log_file: Path | None,
    fmt: str,
    since: str | None,
    until: str | None,
    pumps: tuple[str, ...],
    patients: tuple[str, ...],
    types: tuple[str, ...],
    output: Path | None,
) -> None:
    """Export events, oldest first, to a file or standard output.

    Reads the log read-only: safe while the gateway runs. The filters combine: an event is exported
    when it matches every option given, and any of the values of a repeated option. Prints a
    one-line summary to standard error.
    """
    from .eventlog import open_read_only
    from .events import Event
    from .events_export import (
        Span,
        atomic_output,
        parse_filter,
        read_events,
        write_csv,
        write_fhir,
        write_jsonl,
    )

    path = _log_path(state_dir, log_file)
    try:
        wanted = parse_filter(since, until, pumps, patients, types)
    except ConfigError as exc:
        _bad_option(exc)
    if output is not None:
        log_files = {path.resolve().with_name(path.name + s) for s in ("", "-wal", "-shm", ".lock")}
        if output.resolve() in log_files:
            _usage(f"--output {output} is the event log itself: choose another file")
        if not output.parent.is_dir():
            _usage(f"--output {output}: the directory {output.parent} does not exist")
    if not path.exists():
        _no_log(path)
    writers: dict[str, Callable[[Iterable[Event], TextIO], int]] = {
        "jsonl": write_jsonl,
        "csv": write_csv,
        "fhir": lambda events, out: write_fhir(events, out, source=str(path)),
    }
    span = Span()
    try:
        db = open_read_only(path)
        try:
            selected = span.through(read_events(db, str(path), wanted))
            if output is None:
                with _stdout_utf8() as out:
                    written = writers[fmt](selected, out)
            else:
                with atomic_output(output) as out:
                    written = writers[fmt](selected, out)
        finally:
            db.close()
    except PumpGwError as exc:
        fail(exc)
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(EXIT_FAILED)
    what = f"{span}" if fmt != "fhir" else f"{span} as {written} FHIR resource{'' if written == 1 else 's'}"
    click.echo(f"pumpgw: exported {what} to {'standard output' if output is None else output}", err=True)


@events.command("tail")
@_log_options
@click.option(
    "-n",
    "--lines",
    "n",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Print the last N events (of those the filters let through) first.",
)
@click.option(
    "--follow", "-f", is_flag=True, help="Then print new events as they are committed, until Ctrl-C."
)
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="TYPE",
    help="Only events of this type (infusion.started) or family (infusion.*) (repeatable).",
)
@click.option("--pump", "pumps", multiple=True, metavar="ID", help="Only events of this pump (repeatable).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "jsonl"]),
    default="text",
    show_default=True,
    help="text: one readable line per event; jsonl: one event record per line.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=0.5,
    show_default=True,
    metavar="S",
    help="With --follow: look for new events every S seconds.",
)
def events_tail(
    state_dir: Path | None,
    log_file: Path | None,
    n: int,
    follow: bool,
    types: tuple[str, ...],
    pumps: tuple[str, ...],
    fmt: str,
    interval: float,
) -> None:
    """Print the newest events; with --follow, keep printing events as they are committed.

    Reads the log read-only: safe while the gateway runs. With --follow, a log that does not exist
    yet is waited for. Ctrl-C stops.
    """
    from .events_export import follow_events, jsonl_line, parse_filter, tail_events, text_line

    path = _log_path(state_dir, log_file)
    try:
        wanted = parse_filter(pumps=pumps, types=types)
    except ConfigError as exc:
        _bad_option(exc)
    line = text_line if fmt == "text" else jsonl_line
    source = str(path)
    try:
        db = _open_for_tail(path, follow, interval)
        try:
            recent, head = tail_events(db, source, wanted, n)
            for e in recent:
                click.echo(line(e))
            if follow:
                for e in follow_events(db, source, wanted, head, interval):
                    click.echo(line(e))
        finally:
            db.close()
    except PumpGwError as exc:
        fail(exc)
    except KeyboardInterrupt:
        return  # Ctrl-C is how --follow is meant to end
    except BrokenPipeError:
        _quiet_stdout()  # the reader went away (| head): nothing more to do


#: How long tail --follow waits for a log file that has just appeared to become readable (the
#: gateway creates the file, then its tables, within moments).
_CREATE_GRACE_S = 5.0


def _open_for_tail(path: Path, follow: bool, interval: float) -> sqlite3.Connection:
    """Open the log read-only; with ``follow``, wait for it to be created. Raises EventLogError."""
    from .eventlog import open_read_only

    if path.exists():
        return open_read_only(path)
    if not follow:
        _no_log(path)
    click.echo(f"pumpgw: no event log at {path} yet; waiting for it to be created (Ctrl-C to stop)", err=True)
    while not path.exists():
        time.sleep(interval)
    deadline = time.monotonic() + _CREATE_GRACE_S
    while True:
        try:
            return open_read_only(path)
        except EventLogError:
            if time.monotonic() > deadline:
                raise
            time.sleep(min(interval, 0.1))


def _entry() -> None:  # pragma: no cover - python -m pumpgw.gateway.cli
    main(prog_name="pumpgw")


if __name__ == "__main__":  # pragma: no cover
    _entry()
