"""Streaming over MQTT against a real mosquitto, checked by independent subscribers.

The broker is Debian's mosquitto started by the test on a free loopback port; one subscriber is
``mosquitto_sub`` (another MQTT implementation than ours), the other a second aiomqtt client.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from pumpgw.gateway.backoff import Backoff
from pumpgw.gateway.broker import MosquittoBroker, free_port
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.config import MqttSection
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.events import Event, EventType, json_schema
from pumpgw.gateway.mqtt import MqttPublisher, encode_batches


def fast() -> Backoff:
    return Backoff(base_s=0.05, cap_s=0.2)


@pytest.fixture
async def broker(tmp_path: Path, require_mosquitto: str) -> AsyncIterator[MosquittoBroker]:
    async with MosquittoBroker(tmp_path / "broker", persistence=True) as b:
        yield b


def publisher(broker: MosquittoBroker, log: EventLog) -> MqttPublisher:
    cfg = MqttSection(enabled=True, host=broker.host, port=broker.port, keepalive_s=5)
    return MqttPublisher(cfg, "gw-test", log, FakeClock(), backoff=fast())


def mosquitto_sub(broker: MosquittoBroker, topic: str, count: int) -> list[str]:
    sub = shutil.which("mosquitto_sub")
    if sub is None:
        pytest.skip("mosquitto_sub is not installed (Debian package mosquitto-clients)")
    proc = subprocess.run(
        [sub, "-h", broker.host, "-p", str(broker.port), "-t", topic, "-q", "1", "-C", str(count),
         "-W", "10"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


class Collector:
    """A second client with a persistent session: it misses nothing while it or the broker is away."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.messages: list[dict[str, Any]] = []  # the log records (CloudEvents "data"), flattened
        self.raw: list[Any] = []  # each MQTT message as decoded: one CloudEvent, or a list (a batch)
        self.subscribed = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Event]] = []  # (distinct seqs wanted, event)

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host, self.broker.port, identifier="collector", clean_session=False
                ) as client:
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        decoded = json.loads(message.payload)
                        self.raw.append(decoded)
                        for ce in decoded if isinstance(decoded, list) else [decoded]:
                            self.messages.append(ce["data"])
                        for n, event in self._waiters:
                            if len(self.distinct()) >= n:
                                event.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)  # broker restarting: try again

    def distinct(self) -> set[int]:
        return {m["seq"] for m in self.messages}

    async def wait_for(self, n: int) -> None:
        """Wait until ``n`` distinct events have arrived (at least once: duplicates may come too)."""
        event = asyncio.Event()
        self._waiters.append((n, event))
        if len(self.distinct()) >= n:
            event.set()
        try:
            await asyncio.wait_for(event.wait(), 15)
        except TimeoutError:
            seqs = [m["seq"] for m in self.messages]
            raise AssertionError(f"waited for {n} messages, got {len(seqs)}: {seqs}") from None


async def start(part: Any) -> asyncio.Task[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(part.run(ready))
    await ready.wait()
    return task


async def stop(*tasks: asyncio.Task[Any]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.wait(set(tasks))


async def test_events_arrive_in_order_as_cloudevents_with_retained_status(
    broker: MosquittoBroker, eventlog: EventLog
) -> None:
    pub = publisher(broker, eventlog)
    pub.set_pump_status("pump-a", {"pump": "pump-a", "link": "up"})
    collector = Collector(broker, pub.events_topic)
    ctask = asyncio.create_task(collector.run())
    await collector.subscribed.wait()
    ptask = await start(pub)
    try:
        await pub_connected(pub)
        for i in range(5):
            await eventlog.append(EventType.ALARM_RAISED, {"alarm": f"a{i}"}, pump="pump-a", channel=1)
        await collector.wait_for(5)
        assert [m["seq"] for m in collector.messages] == [1, 2, 3, 4, 5]
        assert [m["payload"]["alarm"] for m in collector.messages] == ["a0", "a1", "a2", "a3", "a4"]
        validator = Draft202012Validator(json_schema())
        for record in collector.messages:
            validator.validate(record)  # the published schema, checked by an independent validator
        first = collector.raw[0] if isinstance(collector.raw[0], dict) else collector.raw[0][0]
        assert first["specversion"] == "1.0"
        assert first["type"] == "org.pumpgw.channel.alarm_raised"
        assert first["source"] == "urn:pumpgw:gateway:gw-test"
        assert first["id"] == first["data"]["id"]
        assert first["subject"] == "pump-a/1"
        assert first["sequence"] == "1"
        # Retained messages, read by another MQTT implementation that connects afterwards.
        status = await asyncio.to_thread(mosquitto_sub, broker, pub.status_topic, 1)
        assert json.loads(status[0])["state"] == "online"
        pump = await asyncio.to_thread(mosquitto_sub, broker, "pumpgw/v1/gw-test/pumps/+/status", 1)
        assert json.loads(pump[0]) == {"pump": "pump-a", "link": "up"}
        assert await eventlog.delivered_seq("mqtt") == 5
    finally:
        await stop(ptask, ctask)
    # A clean stop says offline itself (the will is only for unclean ends).
    status = await asyncio.to_thread(mosquitto_sub, broker, "pumpgw/v1/gw-test/status", 1)
    assert json.loads(status[0])["state"] == "offline"


async def pub_connected(pub: MqttPublisher) -> None:
    for _ in range(500):
        if pub.connected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the publisher did not connect")


@pytest.mark.hazard("HAZ-013")
async def test_nothing_is_lost_across_a_broker_outage(broker: MosquittoBroker, eventlog: EventLog) -> None:
    pub = publisher(broker, eventlog)
    collector = Collector(broker, pub.events_topic)
    ctask = asyncio.create_task(collector.run())
    await collector.subscribed.wait()
    ptask = await start(pub)
    try:
        for i in range(3):
            await eventlog.append(EventType.ALARM_RAISED, {"alarm": f"a{i}"})
        await collector.wait_for(3)
        await broker.stop()
        # The broker is down: events are still accepted (committed locally) and wait.
        for i in range(3, 300):
            await eventlog.append(EventType.ALARM_RAISED, {"alarm": f"a{i}"})
        assert await eventlog.delivered_seq("mqtt") <= 3
        await broker.start()  # same port, persistent sessions restored
        await collector.wait_for(eventlog.last_seq)
        while await eventlog.delivered_seq("mqtt") < eventlog.last_seq:  # delivery.restored is last
            await collector.wait_for(eventlog.last_seq)
        seqs = [m["seq"] for m in collector.messages]
        # At least once, in order: duplicates allowed only as re-sends of what came before.
        assert sorted(set(seqs)) == list(range(1, eventlog.last_seq + 1))
        assert list(dict.fromkeys(seqs)) == list(range(1, eventlog.last_seq + 1))
        types = [m["type"] for m in {m["seq"]: m for m in collector.messages}.values()]
        # The outage is in the log once, however many reconnection attempts it took.
        assert types.count("delivery.failed") == 1
        assert types.count("delivery.restored") == 1
        assert types.count("channel.alarm_raised") == 300
        # The backlog drained in batches (JSON arrays), not one message per event.
        assert any(isinstance(m, list) and len(m) > 1 for m in collector.raw)
    finally:
        await stop(ptask, ctask)


async def test_broker_down_at_start_does_not_stop_the_gateway(tmp_path: Path, eventlog: EventLog) -> None:
    port = free_port()  # nothing listens there
    cfg = MqttSection(enabled=True, host="127.0.0.1", port=port, keepalive_s=5)
    pub = MqttPublisher(cfg, "gw-test", eventlog, FakeClock(), backoff=fast())
    task = await start(pub)  # ready at once
    event = await eventlog.append(EventType.GATEWAY_STARTED, {"gateway": "gw-test"})
    assert event.seq == 1
    for _ in range(500):
        if pub.outbox.attempts >= 3:
            break
        await asyncio.sleep(0.01)
    assert pub.connected is False
    status = await pub.outbox.status()
    assert status["failing"] is True
    assert "refused the connection" in status["last_error"]
    assert f"127.0.0.1:{port}" in status["last_error"]
    assert status["backlog"] == eventlog.last_seq
    assert status["oldest_undelivered_time"] == event.time
    assert task.done() is False
    await stop(task)
    types = [e.type for e in await eventlog.read_after(0)]
    assert types.count("delivery.failed") == 1


def ev(seq: int, payload: dict[str, Any]) -> Event:
    return Event(seq, f"0193{seq:04x}-0000-7000-8000-000000000000", "2026-11-22T03:00:00.000Z", "gw",
                 "channel.alarm_raised", "p1", 1, None, None, None, payload, "0" * 64, "1" * 64)  # fmt: skip


@given(st.lists(st.text(min_size=1, max_size=300), min_size=1, max_size=40), st.integers(4096, 20000))
def test_batches_keep_every_event_in_order_within_the_size_limit(alarms: list[str], max_bytes: int) -> None:
    events = [ev(i + 1, {"alarm": a * 20}) for i, a in enumerate(alarms)]
    batches = encode_batches(events, max_bytes)
    seen: list[int] = []
    for payload, last in batches:
        decoded = json.loads(payload)
        items = decoded if isinstance(decoded, list) else [decoded]
        if len(items) > 1:
            assert len(payload) <= max_bytes
        seen += [int(ce["sequence"]) for ce in items]
        assert int(items[-1]["sequence"]) == last
    assert seen == [e.seq for e in events]


LAST_WILL_SCRIPT = """
import asyncio, sys
from pathlib import Path
from pumpgw.gateway.clock import SystemClock
from pumpgw.gateway.config import MqttSection
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.mqtt import MqttPublisher

async def main():
    log = EventLog(Path(sys.argv[3]), "gw-will", SystemClock())
    ready = asyncio.Event()
    asyncio.create_task(log.run(ready))
    await ready.wait()
    pub = MqttPublisher(MqttSection(enabled=True, host=sys.argv[1], port=int(sys.argv[2])),
                        "gw-will", log, SystemClock())
    asyncio.create_task(pub.run(asyncio.Event()))
    while not pub.connected:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # the online status is published right after connecting
    print("connected", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_last_will_marks_a_killed_gateway_offline(tmp_path: Path, broker: MosquittoBroker) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LAST_WILL_SCRIPT, broker.host, str(broker.port), str(tmp_path / "w.db"),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"connected"
        status = await asyncio.to_thread(mosquitto_sub, broker, "pumpgw/v1/gw-will/status", 1)
        assert json.loads(status[0])["state"] == "online"
        proc.kill()  # SIGKILL: no chance to say goodbye, so the broker must say it (last will)
        await proc.wait()
        for _ in range(50):
            status = await asyncio.to_thread(mosquitto_sub, broker, "pumpgw/v1/gw-will/status", 1)
            if json.loads(status[0])["state"] == "offline":
                break
            await asyncio.sleep(0.1)  # the broker publishes the will when it notices the socket close
        assert json.loads(status[0])["state"] == "offline"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
