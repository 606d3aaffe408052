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

from pumpgw.gateway.backoff import Backoff
from pumpgw.gateway.broker import MosquittoBroker
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.config import MqttSection
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.events import EventType
from pumpgw.gateway.mqtt import MqttPublisher


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
        self.messages: list[dict[str, Any]] = []
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
                        self.messages.append(json.loads(message.payload))
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


async def test_events_arrive_in_order_with_retained_gateway_and_pump_status(
    broker: MosquittoBroker, eventlog: EventLog
) -> None:
    pub = publisher(broker, eventlog)
    pub.set_pump_status("pump-a", {"pump": "pump-a", "link": "up"})
    for i in range(5):
        await eventlog.append(EventType.CHANNEL_STATE, {"i": i}, pump="pump-a", channel=1)
    collector = Collector(broker, pub.events_topic)
    ctask = asyncio.create_task(collector.run())
    await collector.subscribed.wait()
    ptask = await start(pub)
    try:
        await collector.wait_for(5)
        assert [m["seq"] for m in collector.messages] == [1, 2, 3, 4, 5]
        assert [m["payload"]["i"] for m in collector.messages] == [0, 1, 2, 3, 4]
        assert all(m["gateway"] == "gw-test" and m["id"] for m in collector.messages)
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


@pytest.mark.hazard("HAZ-013")
async def test_nothing_is_lost_across_a_broker_outage(broker: MosquittoBroker, eventlog: EventLog) -> None:
    pub = publisher(broker, eventlog)
    collector = Collector(broker, pub.events_topic)
    ctask = asyncio.create_task(collector.run())
    await collector.subscribed.wait()
    ptask = await start(pub)
    try:
        for i in range(3):
            await eventlog.append(EventType.CHANNEL_STATE, {"i": i})
        await collector.wait_for(3)
        await broker.stop()
        # The broker is down: events are still accepted (committed locally) and wait.
        for i in range(3, 8):
            await eventlog.append(EventType.CHANNEL_STATE, {"i": i})
        assert eventlog.last_seq == 8 - 0
        assert await eventlog.delivered_seq("mqtt") <= 3
        await broker.start()  # same port, persistent sessions restored
        await collector.wait_for(8)
        seqs = [m["seq"] for m in collector.messages]
        # At least once, in order: duplicates allowed only as re-sends of what came before.
        assert sorted(set(seqs)) == list(range(1, 9))
        firsts = list(dict.fromkeys(seqs))
        assert firsts == list(range(1, 9))
    finally:
        await stop(ptask, ctask)


async def test_broker_down_at_start_does_not_stop_the_gateway(tmp_path: Path, eventlog: EventLog) -> None:
    cfg = MqttSection(enabled=True, host="127.0.0.1", port=1, keepalive_s=5)  # nothing listens on port 1
    pub = MqttPublisher(cfg, "gw-test", eventlog, FakeClock(), backoff=fast())
    task = await start(pub)  # ready at once
    event = await eventlog.append(EventType.GATEWAY_STARTED, {})
    assert event.seq == 1
    assert pub.connected is False
    await stop(task)


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
