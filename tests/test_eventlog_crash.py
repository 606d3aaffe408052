"""Killed in the middle of a burst, the gateway loses nothing it accepted, and delivers all of it.

The control under test (HAZ-013): an event counts as accepted only once its group commit is on
disk, and the MQTT outbox resumes from the position recorded in the log. So after a SIGKILL in the
middle of a burst of concurrent appends, every event whose ``append`` had returned is in the log
with the id it was given, the hash chain verifies, and once the gateway runs again every event of
the log reaches the subscribers, those accepted before the kill but not yet delivered included.

The gateway is the real one: tests/crash_gateway.py builds :class:`~pumpgw.gateway.app.Gateway`
from a configuration and runs it as ``pumpgw run`` does, in a process of its own, printing
``accepted <seq> <id>`` after each append returns. The broker is Debian's mosquitto with
persistence (its sessions survive its own restart). Two independent subscribers, both with a
persistent session opened before the first run, receive the events: an aiomqtt client and
``mosquitto_sub`` (libmosquitto, another MQTT implementation than the gateway's paho).

The second variant stops the broker during the burst too, and starts it again only after the
gateway was restarted into the outage: the crash and the outage together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from pumpgw.gateway.broker import MosquittoBroker, die_with_parent
from pumpgw.gateway.eventlog import iter_events, open_read_only, verify_file
from pumpgw.gateway.events import Event

pytestmark = pytest.mark.hazard("HAZ-013")

TESTS = Path(__file__).resolve().parent
DRIVER = TESTS / "crash_gateway.py"
GATEWAY_ID = "gw-crash"  # as in crash_gateway.py
TOPIC = f"pumpgw/v1/{GATEWAY_ID}/events"
WRITERS = 20  # concurrent appenders: commits are grouped
ACCEPTED_BEFORE_KILL = 2_000
WAIT_S = 15.0  # the bound of every wait; each normally takes well under a second
LINE_LIMIT = 16 * 1024 * 1024  # mosquitto_sub prints a batch (up to 256 KiB of JSON) as one line


class GatewayProcess:
    """One run of tests/crash_gateway.py, its stdout read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.running = False
        self.accepted: dict[int, str] = {}  # seq -> id, printed after append returned
        self.logged: list[tuple[int, str, str]] = []  # (seq, id, type) of each event committed
        self.ended = False  # stdout closed: the process is gone
        self.changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="gateway-stdout")

    @classmethod
    async def start(cls, workdir: Path, run: str, broker: MosquittoBroker, *mode: str) -> GatewayProcess:
        stderr = workdir / f"gateway-{run}.stderr"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        }
        with stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(DRIVER), str(workdir / "state"), broker.host, str(broker.port), *mode,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=err, env=env,
                preexec_fn=die_with_parent,
            )  # fmt: skip
        return cls(proc, stderr)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            if not raw.endswith(b"\n"):
                break  # a line cut short by the kill: the append it reports had returned, but
                # the line never made it whole, so the test cannot count it either way
            word, *rest = raw.decode().split()
            if word == "running":
                self.running = True
            elif word == "accepted":
                self.accepted[int(rest[0])] = rest[1]
            elif word == "logged":
                self.logged.append((int(rest[0]), rest[1], rest[2]))
            self.changed.set()
        self.ended = True
        self.changed.set()

    def logged_types(self) -> list[str]:
        return [t for _, _, t in self.logged]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT_S):
                while not condition():
                    if self.ended:
                        raise AssertionError(f"the gateway ended before {what}")
                    self.changed.clear()
                    await self.changed.wait()
        except (AssertionError, TimeoutError):
            raise AssertionError(
                f"waited {WAIT_S:g} s for {what}; the gateway's stderr:\n{self.stderr.read_text()[-3000:]}"
            ) from None

    async def kill(self) -> None:
        """SIGKILL: no stop of any part runs, nothing is flushed or said; then read what it printed."""
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._reader

    async def terminate(self) -> int:
        """SIGTERM, as systemd stops the gateway; its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), WAIT_S)
        except TimeoutError:
            raise AssertionError(
                f"the gateway did not stop within {WAIT_S:g} s of SIGTERM:\n{self.stderr.read_text()[-3000:]}"
            ) from None
        await self._reader
        return code

    async def close(self) -> None:
        if self.proc.returncode is None:
            await self.kill()
        self._reader.cancel()
        await asyncio.wait({self._reader})


class Received:
    """What one subscriber received: each event's log record (the CloudEvent's ``data``) by the
    CloudEvent's ``id``, de-duplicated, in order of first arrival."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.first: dict[str, dict[str, Any]] = {}
        self.copies = 0  # every event received, duplicates (at least once) included
        self.id_mismatches: list[str] = []  # a CloudEvent whose id is not its record's id
        self.changed = asyncio.Event()

    def add(self, payload: bytes) -> None:
        decoded = json.loads(payload)
        for ce in decoded if isinstance(decoded, list) else [decoded]:  # a batch is a JSON array
            if ce["id"] != ce["data"]["id"]:
                self.id_mismatches.append(ce["id"])
            self.first.setdefault(ce["id"], ce["data"])
            self.copies += 1
        self.changed.set()

    async def until_has(self, ids: Iterable[str]) -> None:
        wanted = set(ids)
        try:
            async with asyncio.timeout(WAIT_S):
                while not wanted <= self.first.keys():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            missing = wanted - self.first.keys()
            raise AssertionError(
                f"{self.name}: {len(missing)} of {len(wanted)} events not received within {WAIT_S:g} s"
            ) from None


class AiomqttSubscriber(Received):
    """An aiomqtt client with a persistent session (clean_session=False), reconnecting while the
    broker is down, so it misses nothing published while it or the broker was away."""

    def __init__(self, broker: MosquittoBroker) -> None:
        super().__init__("aiomqtt subscriber")
        self.broker = broker
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host, self.broker.port, identifier="crash-collector", clean_session=False
                ) as client:
                    await client.subscribe(TOPIC, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        self.add(message.payload)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)  # the broker is down: the retry interval, not a synchronisation


class MosquittoSubscriber(Received):
    """``mosquitto_sub`` with a persistent session (``-c``); libmosquitto reconnects by itself."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        super().__init__("mosquitto_sub")
        self.proc = proc
        self._reader = asyncio.create_task(self._read(), name="mosquitto_sub-stdout")

    @classmethod
    async def start(cls, broker: MosquittoBroker, workdir: Path) -> MosquittoSubscriber:
        binary = shutil.which("mosquitto_sub")
        if binary is None:
            pytest.skip("mosquitto_sub is not installed (Debian package mosquitto-clients)")
        args = ["-h", broker.host, "-p", str(broker.port), "-t", TOPIC, "-q", "1", "-c", "-i", "crash-sub"]
        # -E: subscribe, then exit. Once it has, the broker keeps the session and queues every
        # event for it, so the long-running subscriber started next cannot miss the first ones.
        first = await asyncio.create_subprocess_exec(binary, *args, "-E")
        assert await asyncio.wait_for(first.wait(), WAIT_S) == 0
        with (workdir / "mosquitto_sub.stderr").open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                binary, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=err, limit=LINE_LIMIT, preexec_fn=die_with_parent,
            )  # fmt: skip
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.add(line)

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        await asyncio.wait({self._reader})


def read_log(path: Path) -> list[Event]:
    """Every event of the log, read-only (no lock needed: a gateway may still be running)."""
    db = open_read_only(path)
    try:
        return list(iter_events(db, str(path)))
    finally:
        db.close()


@contextlib.asynccontextmanager
async def subscribed(
    broker: MosquittoBroker, workdir: Path
) -> AsyncIterator[tuple[AiomqttSubscriber, MosquittoSubscriber]]:
    collector = AiomqttSubscriber(broker)
    task = asyncio.create_task(collector.run(), name="collector")
    sub: MosquittoSubscriber | None = None
    try:
        await asyncio.wait_for(collector.subscribed.wait(), WAIT_S)
        sub = await MosquittoSubscriber.start(broker, workdir)
        yield collector, sub
    finally:
        task.cancel()
        await asyncio.wait({task})
        if sub is not None:
            await sub.close()


async def crash_and_restart(workdir: Path, *, outage: bool) -> None:
    """The scenario; ``outage``: the broker is also stopped during the burst and started again only
    after the gateway has been restarted (and has found it down)."""
    log_path = workdir / "state" / "events.sqlite3"
    broker = MosquittoBroker(workdir / "broker", persistence=True)
    gateways: list[GatewayProcess] = []
    async with broker, subscribed(broker, workdir) as (collector, sub):
        try:
            # -- first run: a burst of concurrent appends, killed in the middle -------------------
            first = await GatewayProcess.start(workdir, "1", broker, "--burst", str(WRITERS))
            gateways.append(first)
            if outage:
                await first.until(lambda: len(first.accepted) >= ACCEPTED_BEFORE_KILL // 2, "half the burst")
                await broker.stop()  # events go on being accepted while the broker is away
            await first.until(lambda: len(first.accepted) >= ACCEPTED_BEFORE_KILL, "the burst")
            await first.kill()
            assert len(first.accepted) >= ACCEPTED_BEFORE_KILL

            # -- after the kill: everything accepted is there, the chain verifies -----------------
            verified = verify_file(log_path)  # raises ChainBroken at the first bad event
            before = read_log(log_path)
            by_seq = {e.seq: e.id for e in before}
            lost = {seq: id_ for seq, id_ in first.accepted.items() if by_seq.get(seq) != id_}
            assert lost == {}, f"{len(lost)} accepted events are not in the log as accepted"
            assert verified.last_seq == before[-1].seq
            types = [e.type for e in before]
            assert types.count("gateway.started") == 1
            assert "gateway.stopped" not in types  # killed: nothing ran on the way out
            recorded = verified.destinations.get("mqtt", 0)
            if outage:
                assert types.count("delivery.failed") == 1
                # Accepted while the broker was away: waiting in the log for the next run to send.
                assert recorded < max(first.accepted)

            # -- second run: the same state directory, the same broker ----------------------------
            second = await GatewayProcess.start(workdir, "2", broker, "--watch-from", str(verified.last_seq))
            gateways.append(second)
            await second.until(lambda: second.running, "the restarted gateway to be running")
            # Its start is in the log, right after the killed run's last event.
            assert second.logged[0][0] == verified.last_seq + 1
            assert second.logged_types()[:2] == ["gateway.started", "library.unavailable"]
            if outage:
                # The outage outlived the gateway: the new run finds the broker down, says so once...
                await second.until(lambda: "delivery.failed" in second.logged_types(), "delivery.failed")
                await broker.start()  # same port; its persistence brings back both sessions
                # ... and once it is back, delivers the backlog and says that too.
                await second.until(lambda: "delivery.restored" in second.logged_types(), "delivery.restored")
            wanted = [e.id for e in before] + [id_ for _, id_, _ in second.logged]
            await collector.until_has(wanted)
            await sub.until_has(wanted)
            assert await second.terminate() == 0  # a clean stop on SIGTERM, as under systemd
        finally:
            for gateway in gateways:
                await gateway.close()

    # -- the log after both runs ------------------------------------------------------------------
    final = verify_file(log_path)
    events = read_log(log_path)
    assert [(e.seq, e.hash) for e in events[: len(before)]] == [(e.seq, e.hash) for e in before]
    # The second run's events as it reported them, then the gateway.stopped of its clean stop
    # (written after the watching part had stopped).
    assert [(e.seq, e.id, e.type) for e in events[len(before) : -1]] == second.logged
    types = [e.type for e in events]
    started = [e.seq for e in events if e.type == "gateway.started"]
    assert started == [1, len(before) + 1]  # the second run starts right after the killed one
    assert types.count("gateway.stopped") == 1  # only the clean stop, none for the kill
    assert types[-1] == "gateway.stopped"
    if outage:
        assert types[len(before) :].count("delivery.failed") == 1
        assert types[len(before) :].count("delivery.restored") == 1
    # gateway.stopped is written after the MQTT part has stopped (parts stop in reverse order):
    # the position recorded is the event before it, so the next start sends it first.
    assert final.destinations["mqtt"] == final.last_seq - 1

    # -- what each subscriber received --------------------------------------------------------------
    sent = events[:-1]
    for received in (collector, sub):
        assert received.id_mismatches == [], received.name
        # Every event, at least once; de-duplicated by id, in the order of the log.
        assert list(received.first) == [e.id for e in sent], received.name
        assert [(r["seq"], r["hash"]) for r in received.first.values()] == [(e.seq, e.hash) for e in sent]
        assert received.copies >= len(sent)


async def test_nothing_accepted_is_lost_when_the_gateway_is_killed_mid_burst(
    tmp_path: Path, require_mosquitto: str
) -> None:
    await crash_and_restart(tmp_path, outage=False)


async def test_nothing_is_lost_when_the_broker_is_down_and_the_gateway_killed(
    tmp_path: Path, require_mosquitto: str
) -> None:
    await crash_and_restart(tmp_path, outage=True)
