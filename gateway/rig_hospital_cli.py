"""``pumpgw rig emar`` and ``pumpgw rig epr``: drive the running rig's emulated eMAR and EPR.

Every command sends one request to the rig that ``pumpgw rig up`` runs, over its control socket
(``DIR/control.sock``, :mod:`pumpgw.rig.control`); the hospital's code (:mod:`pumpgw.rig.hospital`)
runs in the rig, so this module imports nothing heavy. Exit codes: 0 done (and, for ``emar send``,
accepted); 1 the rig is not running, the gateway could not be reached, refused the order or did
not answer in time; 2 a bad request (unknown order, bad file, bad mode).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .cli_common import EXIT_CONFIG, EXIT_FAILED
from .rig_cli_common import DIR_OPTION, ask_rig, die

# How much longer than the eMAR's own wait the command waits for the rig's answer.
_ANSWER_MARGIN_S = 15.0


def _checked(answer: dict[str, Any]) -> dict[str, Any]:
    if not answer.get("ok"):
        die(str(answer.get("error", answer)), EXIT_FAILED if answer.get("failed") else EXIT_CONFIG)
    return answer


def _older_rig(answer: dict[str, Any]) -> None:
    if "unknown op" in str(answer.get("error", "")):
        die(
            "this rig runs no eMAR or EPR (started with --no-hospital, or by an older pumpgw): "
            "restart it with pumpgw rig up"
        )


def _hospital(rig_dir: Path | None, request: dict[str, Any], *, timeout_s: float = 5.0) -> dict[str, Any]:
    answer = ask_rig(rig_dir, request, timeout_s=timeout_s)
    _older_rig(answer)
    return _checked(answer)


# -- emar ----------------------------------------------------------------------------------------------


@click.group()
def emar() -> None:
    """The rig's emulated eMAR: its patients and orders, sent to the gateway as PIV orders.

    \b
    pumpgw rig emar load FILE             replace its patients and orders (YAML or JSON)
    pumpgw rig emar orders                list the orders, and what became of each one sent
    pumpgw rig emar send ORDER --to H:P   send an order (RGV^O15) to the gateway
    """


@emar.command("load")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=False)
@click.option("--example", is_flag=True, help="Go back to the built-in example data instead.")
@DIR_OPTION
def emar_load(file: Path | None, example: bool, rig_dir: Path | None) -> None:
    """Replace the eMAR's patients and orders with FILE (format: docs/rig.md).

    The running rig reads the file; a bad file is refused with the key that is wrong, and the
    eMAR keeps what it had.
    """
    if (file is None) == (not example):
        die("give FILE, or --example for the built-in example data", EXIT_CONFIG)
    request: dict[str, Any] = {"op": "emar.load"}
    if example:
        request["example"] = True
    else:
        assert file is not None
        request["path"] = str(file.resolve())
    click.echo(_hospital(rig_dir, request)["detail"])


@emar.command("orders")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@DIR_OPTION
def emar_orders(as_json: bool, rig_dir: Path | None) -> None:
    """List the eMAR's orders and the state of the last one sent of each."""
    answer = _hospital(rig_dir, {"op": "emar.orders"})
    if as_json:
        click.echo(json.dumps({"orders": answer["orders"]}))
        return
    for o in answer["orders"]:
        where = f"{o['pump']}/{o['channel']}" if o.get("channel") else (o.get("pump") or "any pump")
        rate = o.get("dose_rate") or o.get("rate")
        conc = f" {o['concentration']}" if o.get("concentration") else ""
        vtbi = f" VTBI {o['vtbi']}" if o.get("vtbi") else ""
        sent = o.get("sent")
        state = f"  [{sent['state']}]" if sent else ""
        status = "" if o["status"] == "active" else f" ({o['status']})"
        click.echo(
            f"{o['id']:<14} {o['patient']:<11} {o['drug']}{conc} at {rate}{vtbi}, {where}{status}{state}"
        )
        click.echo(f"{'':<14} ordered at {o['ordered_at']}")
    click.echo(answer["detail"])


def _print_ack(title: str, ack: dict[str, Any]) -> None:
    head = f"{title} {ack['code']}"
    if ack.get("text"):
        head += f": {ack['text']}"
    click.echo(head)
    for error in ack.get("errors") or []:
        click.echo(f"  error: {error}")
    for line in str(ack.get("message", "")).split("\r"):
        if line:
            click.echo(f"  {line}")


@emar.command("send")
@click.argument("order_id")
@click.option(
    "--to", "to", metavar="HOST:PORT", default=None, help="The gateway's PIV listener ([hl7] listen_port)."
)
@click.option("--wait", is_flag=True, help="Wait for the gateway's RRG^O16 and print it.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, 300, min_open=True),
    default=30.0,
    show_default=True,
    help="With --wait: how long to wait for the RRG^O16, in seconds.",
)
@DIR_OPTION
def emar_send(order_id: str, to: str | None, wait: bool, timeout: float, rig_dir: Path | None) -> None:
    """Send ORDER_ID to the gateway as an IHE PIV RGV^O15 and print its ACK^O15.

    With --wait, also wait for the gateway's decision (RRG^O16: AA accepted, AR refused, with the
    PIV error codes) and print it. Exit code 0 only if the order was accepted (CA, and AA with
    --wait); 1 if it was refused, the gateway could not be reached, or no RRG^O16 came in time.
    """
    request: dict[str, Any] = {"op": "emar.send", "order": order_id}
    if to is not None:
        request["to"] = to
    if wait:
        request["wait"] = timeout
    answer = _hospital(rig_dir, request, timeout_s=(timeout if wait else 0) + _ANSWER_MARGIN_S)
    sent = answer["sent"]
    click.echo(answer["detail"])
    _print_ack("ACK^O15", sent["ack"])
    accepted = sent["ack"]["code"] in ("CA", "AA")
    if wait:
        result = sent.get("result")
        if result is None:
            if accepted:
                click.echo(f"no RRG^O16 within {timeout:g} s")
            accepted = False
        else:
            _print_ack("RRG^O16", result)
            accepted = accepted and result["code"] in ("AA", "CA")
    if not accepted:
        sys.exit(EXIT_FAILED)


# -- epr -----------------------------------------------------------------------------------------------


@click.group()
def epr() -> None:
    """The rig's emulated EPR: what the gateway documented, and how the EPR answers.

    \b
    pumpgw rig epr show                   what it received (FHIR and HL7), with verdicts
    pumpgw rig epr mode ok|fail|delay S|reject [--count N]
    """


@epr.command("show")
@click.option(
    "--type",
    "kind",
    metavar="TYPE|hl7",
    default=None,
    help="Only FHIR resources of TYPE (MedicationAdministration, Device, ...), or only HL7 messages.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@DIR_OPTION
def epr_show(kind: str | None, as_json: bool, rig_dir: Path | None) -> None:
    """Show what the EPR received: each FHIR request and HL7 message with its verdict, and the
    resources it stored (--json: in full, numbers exactly as sent)."""
    request: dict[str, Any] = {"op": "epr.received"}
    if kind is not None:
        request["type"] = kind
    answer = _hospital(rig_dir, request)
    if as_json:
        parts = [f'"counts":{json.dumps(answer["counts"])}', f'"mode":{json.dumps(answer["epr_mode"])}']
        if "requests" in answer:
            parts.append(f'"requests":{json.dumps(answer["requests"])}')
            # Each resource is already FHIR JSON text with exact numbers: embedded as it is.
            parts.append('"resources":[' + ",".join(answer["resources"]) + "]")
        if "hl7" in answer:
            parts.append(f'"hl7":{json.dumps(answer["hl7"])}')
        click.echo("{" + ",".join(parts) + "}")
        return
    for r in answer.get("requests", []):
        what = f"{r['type']}/{r['id']}" if r.get("id") else (r.get("type") or "")
        click.echo(f"FHIR {r['status']:<4} {r['verdict']:<11} {r['method']:<4} {r['path']:<40} {what}")
        for problem in r.get("problems") or []:
            click.echo(f"     {problem}")
    for m in answer.get("hl7", []):
        kind, control_id = m.get("type") or "?", m.get("control_id") or "-"
        click.echo(f"HL7  {m['verdict']:<16} {kind:<9} {control_id:<24} from {m['peer']}")
        for problem in m.get("problems") or []:
            click.echo(f"     {problem}")
    stored = answer["counts"]["stored"]
    if stored:
        click.echo("stored: " + ", ".join(f"{n} {t}" for t, n in sorted(stored.items())))
    click.echo(answer["detail"])


@epr.command("mode")
@click.argument("mode", type=click.Choice(["ok", "fail", "delay", "reject"]))
@click.argument("seconds", type=click.FloatRange(0, 600, min_open=True), required=False)
@click.option(
    "--count", type=click.IntRange(1), default=None, help="Only the next N requests, then ok again."
)
@click.option(
    "--on",
    type=click.Choice(["both", "fhir", "hl7"]),
    default="both",
    show_default=True,
    help="Which of the EPR's interfaces the mode applies to.",
)
@DIR_OPTION
def epr_mode(mode: str, seconds: float | None, count: int | None, on: str, rig_dir: Path | None) -> None:
    """Set how the EPR answers: ok; fail (FHIR 503, MLLP: connection closed without a reply);
    delay S (answer S seconds late); reject (FHIR 422, HL7 AR).

    Without --count the mode lasts until the next `pumpgw rig epr mode`.
    """
    if mode == "delay" and seconds is None:
        die("delay needs the seconds: pumpgw rig epr mode delay 2.5", EXIT_CONFIG)
    if mode != "delay" and seconds is not None:
        die(f"only delay takes seconds, not {mode}", EXIT_CONFIG)
    request: dict[str, Any] = {"op": "epr.mode", "mode": mode, "on": on}
    if seconds is not None:
        request["delay"] = seconds
    if count is not None:
        request["count"] = count
    click.echo(_hospital(rig_dir, request)["detail"])
