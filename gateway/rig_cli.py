"""``pumpgw rig``: run the bench rig, break its pumps on purpose, record and replay their links.

The rig's own code is in ``rig/``; this module is only the command line around it. A running rig
(``pumpgw rig up``) keeps its files in one directory (default ``$XDG_STATE_HOME/pumpgw/rig``):
``gateway.toml``, a gateway configuration for its pumps, and ``control.sock``, the socket the other
``pumpgw rig`` commands talk to it through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .broker import free_port
from .cli_common import EXIT_CONFIG, EXIT_FAILED, run_until_signal
from .clock import SystemClock
from .errors import ConfigError
from .rig_cli_common import DIR_OPTION, ask_rig, default_rig_dir, die
from .rig_hospital_cli import emar, epr

if TYPE_CHECKING:
    from pumpgw.rig.hospital import Hospital


@click.group()
def rig() -> None:
    """The bench rig: emulated pumps on real serial PTYs and TCP ports, with faults.

    \b
    pumpgw rig up                       start pumps, write a gateway config, wait for Ctrl-C
    pumpgw rig status                   the running rig's pumps and faults
    pumpgw rig fault PUMP KIND          break a pump (KIND clear: mend it)
    pumpgw rig record PUMP FILE         record a pump's link to FILE
    pumpgw rig replay FILE              serve a recording as a pump
    pumpgw rig emar ... / epr ...       the emulated eMAR and EPR (pumpgw rig emar --help)
    """


rig.add_command(emar)
rig.add_command(epr)


@rig.command("up")
@click.option(
    "--modbus-tcp",
    type=click.IntRange(0, 16),
    default=1,
    show_default=True,
    help="Multi-channel pumps, each on its own Modbus TCP port on 127.0.0.1.",
)
@click.option(
    "--modbus-rtu",
    type=click.IntRange(0, 16),
    default=1,
    show_default=True,
    help="The same pumps over Modbus RTU, each on its own serial PTY.",
)
@click.option(
    "--newera",
    type=click.IntRange(0, 16),
    default=1,
    show_default=True,
    help="New Era NE-1000 syringe pumps, each on its own serial PTY.",
)
@click.option(
    "--alaris",
    type=click.IntRange(0, 16),
    default=1,
    show_default=True,
    help="Alaris-style (GH/CC/Asena protocol) syringe pumps, each on its own serial PTY.",
)
@click.option(
    "--channels", type=click.IntRange(1, 4), default=2, show_default=True, help="Channels per Modbus pump."
)
@click.option(
    "--baud",
    type=click.IntRange(300, 1_000_000),
    default=None,
    help="Pace serial links at this baud rate, as a real line (default: as fast as a PTY).",
)
@click.option(
    "--hospital/--no-hospital",
    default=True,
    show_default=True,
    help="Also run the emulated eMAR and EPR (pumpgw rig emar/epr; docs/rig.md).",
)
@DIR_OPTION
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON line (pumps, config, control socket, hospital) instead of text.",
)
def rig_up(
    modbus_tcp: int,
    modbus_rtu: int,
    newera: int,
    alaris: int,
    channels: int,
    baud: int | None,
    hospital: bool,
    rig_dir: Path | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Start emulated pumps and keep them running until Ctrl-C.

    Prints each pump's endpoint, writes a gateway configuration for them to DIR/gateway.toml
    (run it with: pumpgw run --config DIR/gateway.toml) and listens for `pumpgw rig fault`,
    `record` and `status` on DIR/control.sock. Every channel starts infusing an example
    (not clinical advice).
    """
    from pumpgw.rig.bench_rig import BenchRig
    from pumpgw.rig.control import SOCKET_NAME, RigControlServer

    directory = rig_dir or default_rig_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        die(f"cannot create the rig directory {directory}: {exc}", EXIT_CONFIG)
    if modbus_tcp + modbus_rtu + newera + alaris == 0:
        die("no pumps asked for: give at least one of --modbus-tcp, --modbus-rtu, --newera, --alaris", 2)

    async def main_(stop: asyncio.Event) -> None:
        bench = BenchRig(
            SystemClock(),
            modbus_pumps=modbus_tcp,
            modbus_rtu_pumps=modbus_rtu,
            newera_pumps=newera,
            alaris_pumps=alaris,
            channels=channels,
            baudrate=baud,
        )
        hosp: Hospital | None = None
        if hospital:  # the emulated eMAR and EPR, imported only when wanted (aiohttp: ~0.4 s)
            from pumpgw.rig.hospital import Hospital

            # The gateway's PIV listener, where `pumpgw rig emar send` sends orders by default.
            hosp = Hospital(SystemClock(), gateway_piv=("127.0.0.1", free_port()))
        control_server = RigControlServer(
            bench, directory / SOCKET_NAME, delegate=hosp.handle if hosp is not None else None
        )
        async with bench, hosp or contextlib.nullcontext(), control_server as control:
            config = directory / "gateway.toml"
            config.write_text(
                gateway_config(
                    bench.endpoints(), directory / "gateway-state", hosp.endpoints() if hosp else None
                ),
                encoding="utf-8",
            )
            if as_json:
                click.echo(json.dumps({"pumps": bench.endpoints(), "config": str(config),
                                       "control": str(control.path),
                                       "hospital": hosp.endpoints() if hosp else None}))  # fmt: skip
            else:
                for pump in bench.endpoints():
                    where = pump.get("port") if "host" not in pump else f"{pump['host']}:{pump['port']}"
                    click.echo(f"{pump['id']:<18} {pump['driver']:<11} {where}")
                for line in hosp.describe_lines() if hosp is not None else []:
                    click.echo(line)
                click.echo(f"gateway config: {config}  (pumpgw run --config {config})")
                click.echo(f"control socket: {control.path}  (pumpgw rig fault PUMP KIND)")
                click.echo("Ctrl-C stops the rig.")
            sys.stdout.flush()
            await stop.wait()

    run_until_signal(main_, None)


def hospital_sections(hospital: dict[str, Any]) -> dict[str, Any]:
    """The gateway's ``[hl7]``, ``[fhir]`` and ``[epr]`` sections for the rig's eMAR and EPR
    (``Hospital.endpoints()``): PIV orders from the eMAR, documentation to the EPR over HL7 and FHIR."""
    emar, epr = hospital["emar"], hospital["epr"]
    sections: dict[str, Any] = {
        "fhir": {"enabled": True, "base_url": emar["fhir_base"], "mrn_system": emar["mrn_system"]},
        "epr": {
            "hl7": [{"name": "rig-epr-hl7", "host": epr["mllp_host"], "port": epr["mllp_port"],
                     "messages": ["ipec", "acm", "ras"]}],
            "fhir": [{"name": "rig-epr-fhir", "base_url": epr["fhir_base"]}],
        },
    }  # fmt: skip
    if emar.get("gateway_piv"):
        host, _, port = str(emar["gateway_piv"]).rpartition(":")
        sections["hl7"] = {
            "enabled": True,
            "listen_host": host,
            "listen_port": int(port),
            "order_programmer_host": emar["rrg_host"],
            "order_programmer_port": emar["rrg_port"],
        }
    return sections


def gateway_config(
    pumps: list[dict[str, Any]], state_dir: Path, hospital: dict[str, Any] | None = None
) -> str:
    """A gateway configuration file (TOML) for ``pumps`` (and the rig's eMAR and EPR), MQTT off."""
    lines = [
        "# Written by `pumpgw rig up` for the pumps it is running; see docs/configuration.md.",
        "[gateway]",
        'id = "rig-gateway"',
        f"state_dir = {_toml(str(state_dir))}",
        "",
        "[mqtt]",
        "enabled = false",
    ]
    if hospital is not None:
        sections = hospital_sections(hospital)
        for name in ("hl7", "fhir"):
            if name in sections:
                lines += ["", f"[{name}]"] + [f"{k} = {_toml(v)}" for k, v in sections[name].items()]
        for kind in ("hl7", "fhir"):
            for receiver in sections["epr"][kind]:
                lines += ["", f"[[epr.{kind}]]"] + [f"{k} = {_toml(v)}" for k, v in receiver.items()]
    for pump in pumps:
        lines += ["", "[[pumps]]"] + [f"{key} = {_toml(value)}" for key, value in pump.items()]
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _ask(rig_dir: Path | None, request: dict[str, Any]) -> dict[str, Any]:
    answer = ask_rig(rig_dir, request)
    if not answer.get("ok"):
        die(str(answer.get("error", answer)), EXIT_CONFIG)
    return answer


@rig.command("status")
@DIR_OPTION
def rig_status(rig_dir: Path | None) -> None:
    """List the running rig's pumps, their endpoints and the faults in force."""
    answer = _ask(rig_dir, {"op": "status"})
    for pump in answer.get("pumps", []):
        faults = ", ".join(f["kind"] for f in pump["faults"]) or "no faults"
        recording = f", recording to {pump['recording']}" if pump.get("recording") else ""
        click.echo(f"{pump['id']:<18} {pump['protocol']:<11} {faults}{recording}")


def _fault_help() -> str:
    from pumpgw.rig.bench_rig import PUMP_FAULTS
    from pumpgw.rig.faults import FAULT_MEANINGS

    rows = [f"{k.value}: {v}" for k, v in FAULT_MEANINGS.items()] + [
        f"{k}: {v}" for k, v in PUMP_FAULTS.items()
    ]
    return "\n".join(rows)


@rig.command("fault", epilog="\b\nKINDS\n" + _fault_help() + "\nclear: end every fault on the pump")
@click.argument("pump")
@click.argument("kind")
@click.option("--count", type=click.IntRange(1), default=None, help="Affect this many replies, then stop.")
@click.option(
    "--for",
    "seconds",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Last this many seconds (disconnect needs it).",
)
@click.option(
    "--delay",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="For delay: how late each reply leaves, in seconds.",
)
@click.option(
    "--channel",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="For device alarms: which channel.",
)
@DIR_OPTION
def rig_fault(
    pump: str,
    kind: str,
    count: int | None,
    seconds: float | None,
    delay: float | None,
    channel: int,
    rig_dir: Path | None,
) -> None:  # fmt: skip
    """Break PUMP with fault KIND on the running rig (KIND clear mends it).

    Without --count or --for a fault lasts until cleared.
    """
    request: dict[str, Any] = {"op": "fault", "pump": pump, "kind": kind, "channel": channel}
    options = {"count": count, "seconds": seconds, "delay": delay}
    request |= {key: value for key, value in options.items() if value is not None}
    click.echo(_ask(rig_dir, request)["detail"])


@rig.command("record")
@click.argument("pump")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--stop", is_flag=True, help="Stop recording PUMP.")
@DIR_OPTION
def rig_record(pump: str, file: Path | None, stop: bool, rig_dir: Path | None) -> None:
    """Record every byte on PUMP's link, with timestamps, to FILE (JSON Lines, docs/rig.md).

    The running rig writes the file; it records until `pumpgw rig record PUMP --stop` or until it
    stops. Replay the file with `pumpgw rig replay FILE`.
    """
    if stop:
        click.echo(_ask(rig_dir, {"op": "record-stop", "pump": pump})["detail"])
        return
    if file is None:
        die("give the FILE to record to (or --stop)", EXIT_CONFIG)
    click.echo(_ask(rig_dir, {"op": "record", "pump": pump, "path": str(file.resolve())})["detail"])


@rig.command("replay")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--baud",
    type=click.IntRange(300, 1_000_000),
    default=None,
    help="Pace the replayed serial line at this baud rate.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the endpoint as one JSON line.")
def rig_replay(file: Path, baud: int | None, as_json: bool) -> None:
    """Serve a recording as a pump, for a driver (or your own software) to talk to.

    Prints the endpoint as a gateway [[pumps]] entry. The replay answers exactly what the recorded
    pump answered, as long as the host sends exactly what the recorded host sent; at the first
    difference it falls silent and, on Ctrl-C, says where. Exit code 0: the host went through the
    whole recording without a difference; 1 otherwise.
    """
    from pumpgw.rig.recording import Replayer, load_recording
    from pumpgw.rig.replay import serve_replay

    try:
        recording = load_recording(file)
    except ConfigError as exc:
        die(f"bad recording: {exc}", EXIT_CONFIG)
    replayer = Replayer(recording)

    async def main_(stop: asyncio.Event) -> None:
        async with serve_replay(replayer, SystemClock(), baudrate=baud) as endpoint:
            if as_json:
                click.echo(json.dumps({"pumps": [endpoint]}))
            else:
                click.echo(f"replaying {file} ({len(replayer.exchanges)} exchanges) as {endpoint}")
            sys.stdout.flush()
            await stop.wait()

    run_until_signal(main_, None)
    if replayer.divergence is not None:
        click.echo(f"replay diverged: {replayer.divergence}", err=True)
        sys.exit(EXIT_FAILED)
    if not replayer.finished:
        click.echo(f"replay incomplete: {replayer.position} of {len(replayer.exchanges)} exchanges", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"replay complete: all {len(replayer.exchanges)} exchanges matched", err=True)
