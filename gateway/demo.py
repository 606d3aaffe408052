"""``pumpgw demo``: the gateway against its own bench rig, with no configuration at all.

It starts the bench rig in a child process (``pumpgw rig up``: one emulated pump per protocol, on
TCP and on PTY pairs),
a local mosquitto on a free loopback port when one is installed, and the gateway against both, and
shows every channel live. Ctrl-C (or ``--duration``) stops everything in reverse order; the
children are also tied to this process's life by the kernel, so nothing is left behind.

The demo's gateway uses a verified drug library like any other: :func:`prepare_demo_library` makes
two DEMO keys in the state directory (``demo author`` and ``demo reviewer``, reused on the next
run), a trust store of just those two, signs the packaged example library (NOT clinical advice)
with both, and installs it with :class:`.library_store.LibraryStore`. Those keys are for the demo
only: a hospital's trust store never holds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Final, TextIO

from .app import EVENT_LOG_NAME, Gateway
from .broker import MosquittoBroker, die_with_parent, find_mosquitto, stop_child
from .clock import Clock
from .config import parse_config
from .errors import EnvironmentProblem, LibraryError, LibraryNotTrusted, PumpGwError
from .rig_cli import hospital_sections
from .view import TerminalView, library_line

log = logging.getLogger(__name__)

DEMO_AUTHOR: Final = "demo author"
DEMO_REVIEWER: Final = "demo reviewer"
DEMO_KEYS_DIR: Final = "demo-keys"  # demo-author.key, demo-reviewer.key (mode 0600)
DEMO_TRUST_STORE: Final = "demo-trust-store.toml"
DEMO_SIGNED_DIR: Final = "demo-library"  # the signed copy of the example, before it is installed
EXAMPLE_LIBRARY: Final = "drug-library.example.toml"


def example_library_bytes() -> bytes:
    """The packaged example library (``pumpgw.gateway/examples``): NOT clinical advice."""
    return resources.files("pumpgw.gateway").joinpath("examples", EXAMPLE_LIBRARY).read_bytes()


def prepare_demo_library(state_dir: Path, signed_at: str) -> Path:
    """Sign the example library with the demo keys and install it in ``state_dir/library``.

    Makes (or reuses) the two demo keys and the demo trust store in ``state_dir``; returns the
    trust store's path. ``signed_at`` is the approvals' time (``2026-11-22T10:00:00Z``). Blocking
    file I/O. Raises PumpGwError (ConfigError for an unreadable key file, LibraryError,
    EnvironmentProblem) when it cannot.
    """
    from .library import parse_library
    from .library_signing import (
        TrustStore,
        generate_key,
        make_trusted_key,
        public_key_of,
        render_approvals,
        render_trust_store,
        sign,
    )
    from .library_store import LibraryStore, approvals_path, write_atomic

    keys_dir = state_dir / DEMO_KEYS_DIR
    try:
        keys_dir.mkdir(parents=True, exist_ok=True)
        keys_dir.chmod(0o700)
        (state_dir / DEMO_SIGNED_DIR).mkdir(exist_ok=True)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot create {keys_dir}: {exc.strerror}", f"make {state_dir} writable for this user"
        ) from None
    private: dict[str, bytes] = {}
    trusted = []
    for role, name in (("author", DEMO_AUTHOR), ("reviewer", DEMO_REVIEWER)):
        key_path = keys_dir / f"demo-{role}.key"
        if key_path.exists():
            pem = key_path.read_bytes()
            public = public_key_of(pem, str(key_path))
        else:
            pem, public = generate_key()
            write_atomic(key_path, pem, mode=0o600)
        private[role] = pem
        trusted.append(make_trusted_key(name, [role], public, str(key_path)))
    trust = TrustStore(tuple(trusted))
    trust_path = state_dir / DEMO_TRUST_STORE
    write_atomic(trust_path, render_trust_store(trust).encode())

    raw = example_library_bytes()
    signed = state_dir / DEMO_SIGNED_DIR / EXAMPLE_LIBRARY
    library = parse_library(raw, str(signed))
    approvals = sign(library, private["author"], "author", DEMO_AUTHOR, signed_at, source=str(signed))
    approvals = sign(
        library, private["reviewer"], "reviewer", DEMO_REVIEWER, signed_at, approvals, source=str(signed)
    )
    write_atomic(signed, raw)
    write_atomic(approvals_path(signed), render_approvals(approvals).encode())

    store = LibraryStore(state_dir / "library")
    try:
        # The demo's library directory is the demo's own: going back to an older example is fine.
        store.install(signed, trust, allow_downgrade=True)
    except LibraryNotTrusted:
        raise
    except LibraryError as exc:
        # The example changed under the same version number (a development checkout): start the
        # demo's library history afresh rather than refuse to run.
        log.info("replacing the demo's library history", extra={"reason": str(exc.problems[0])})
        shutil.rmtree(store.directory, ignore_errors=True)
        store.install(signed, trust)
    return trust_path


class RigProcess:
    """The bench rig (``pumpgw rig up``) as a child process; ``start`` returns its pump endpoints."""

    name = "rig"

    def __init__(self, args: list[str], logfile: Path, start_timeout_s: float = 20.0) -> None:
        self._args = args
        self._logfile = logfile
        self._start_timeout_s = start_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self.hospital: dict[str, Any] | None = None  # the eMAR's and EPR's endpoints, once started

    async def start(self) -> list[dict[str, Any]]:
        # The rig's log goes to a file: on a terminal it would tear the live table.
        with self._logfile.open("ab") as err:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pumpgw.gateway.cli", "rig", "up", "--json", *self._args,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=err,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops the rig in order
                preexec_fn=die_with_parent,
            )  # fmt: skip
        stdout = self._proc.stdout
        if stdout is None:  # pragma: no cover - PIPE was asked for just above
            raise RuntimeError("rig stdout is not a pipe")
        try:
            line = await asyncio.wait_for(stdout.readline(), self._start_timeout_s)
        except TimeoutError:
            await self.stop()
            raise EnvironmentProblem(
                f"the bench rig did not report its pumps within {self._start_timeout_s:g} s",
                f"see {self._logfile}",
            ) from None
        try:
            started = json.loads(line)
            endpoints: list[dict[str, Any]] = started["pumps"]
            self.hospital = started.get("hospital")
        except (ValueError, KeyError, TypeError):
            await self.stop()
            raise EnvironmentProblem(
                f"the bench rig did not start (it printed {line[:200]!r})",
                f"see {self._logfile}",
            ) from None
        return endpoints

    async def run(self, ready: asyncio.Event) -> None:
        """Supervised watch: fails if the rig dies while the demo runs."""
        if self._proc is None:
            raise RuntimeError("RigProcess.run before start")
        ready.set()
        code = await self._proc.wait()
        raise EnvironmentProblem(f"the bench rig exited with code {code}", f"see {self._logfile}")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_child(proc, "rig")


class BrokerWatch:
    """Supervised watch of the demo's mosquitto: fails the demo if the broker dies."""

    name = "broker"

    def __init__(self, broker: MosquittoBroker) -> None:
        self._broker = broker

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()
        code = await self._broker.wait()
        raise EnvironmentProblem(
            f"mosquitto exited with code {code}", f"see {self._broker.workdir / 'mosquitto.log'}"
        )


async def run_demo(
    *,
    state_dir: Path,
    clock: Clock,
    stop: asyncio.Event,
    stream: TextIO,
    tty: bool,
    use_mqtt: bool = True,
    rig_args: list[str] | None = None,
) -> None:
    """Run the demo until ``stop`` is set. Raises PartFailed or EnvironmentProblem on failure."""
    await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    library: dict[str, Any] = {}
    try:
        signed_at = clock.wall().strftime("%Y-%m-%dT%H:%M:%SZ")
        trust_path = await asyncio.to_thread(prepare_demo_library, state_dir, signed_at)
        library = {"trust_store": str(trust_path)}
    except PumpGwError as exc:
        # The gateway then runs without a library and says why (library.unavailable), as a real
        # one would: monitoring never depends on the library.
        log.warning("could not prepare the demo's drug library", extra={"error": str(exc)})
    async with contextlib.AsyncExitStack() as stack:
        rig = RigProcess(["--dir", str(state_dir / "rig"), *(rig_args or [])], state_dir / "rig.log")
        stack.push_async_callback(rig.stop)
        endpoints = await rig.start()
        extra: list[Any] = [rig]

        mqtt: dict[str, Any] = {"enabled": False}
        if use_mqtt and find_mosquitto() is not None:
            broker = MosquittoBroker(state_dir / "mosquitto")
            stack.push_async_callback(broker.stop)
            await broker.start()
            mqtt = {"enabled": True, "host": broker.host, "port": broker.port}
            extra.append(BrokerWatch(broker))
        elif use_mqtt:
            log.warning(
                "mosquitto is not installed: events stay in the local log "
                "(apt-get install mosquitto, or run scripts/bootstrap, to stream them over MQTT)"
            )
        # The rig's eMAR sends PIV orders to the gateway, which documents to the rig's EPR.
        hospital = hospital_sections(rig.hospital) if rig.hospital else {}
        config = parse_config(
            {
                "gateway": {"id": "demo", "state_dir": str(state_dir)},
                "mqtt": mqtt,
                "library": library,
                "pumps": endpoints,
                **hospital,
            },
            "(demo configuration)",
        )
        gateway = Gateway(config, clock)
        mqtt_where = f"{mqtt['host']}:{mqtt['port']}" if mqtt["enabled"] else ""

        def header() -> str:
            n = sum(len(v.channels) for v in gateway.monitor.pumps.values())
            return (
                f"pumpgw demo - bench rig, {len(endpoints)} emulated pumps, {n} channels"
                f" - {clock.wall().strftime('%H:%M:%S')} UTC\n{library_line(gateway.monitor.library)}"
            )

        def footer() -> str:
            seq = gateway.events.last_seq if gateway.events.is_open else 0
            status = gateway.status.latest  # recomputed every few seconds
            if gateway.mqtt is None:
                upstream = "MQTT off: events stay in the local log"
            else:
                state = "connected" if gateway.mqtt.connected else "NOT CONNECTED"
                upstream = f"MQTT {mqtt_where} {state}, delivered up to #{gateway.mqtt.delivered_seq}"
                waiting = status.get("delivery", {}).get("mqtt", {})
                if waiting.get("backlog"):
                    upstream += (
                        f", {waiting['backlog']} waiting (oldest {waiting['oldest_undelivered_age_s']} s)"
                    )
            line = f"events: {seq} in {state_dir / EVENT_LOG_NAME} | {upstream} | Ctrl-C stops"
            epr = [
                f"{name} {'FAILING' if d.get('failing') else 'ok'}, {d.get('backlog', 0)} waiting"
                for name, d in status.get("delivery", {}).items()
                if name != "mqtt"
            ]
            if epr:
                orders = status.get("orders", {})
                line += f"\nEPR: {'; '.join(epr)} | orders pending: {orders.get('pending', 0)}"
                if rig.hospital and rig.hospital["emar"].get("gateway_piv"):
                    line += " (send one: pumpgw rig emar send RIG-ORD-1 --dir " + str(state_dir / "rig") + ")"
            health = gateway.events.health
            if not health.ok:
                line += f"\nEVENT LOG CANNOT WRITE: {health.reason} ({health.refused} events refused)"
            reasons = status.get("auto_programming", {}).get("reasons", [])
            if reasons:
                line += "\nauto-programming unavailable: " + "; ".join(reasons)
            return line

        view = TerminalView(
            lambda: list(gateway.monitor.pumps.values()), header, footer, stream, clock, tty=tty
        )
        gateway.monitor.add_change_callback(view.changed)
        extra.append(view)
        await gateway.run(stop, extra=extra)
