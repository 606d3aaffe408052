"""Benchmarks of the event log and its delivery over MQTT.

Run from the repository root after scripts/bootstrap:   .venv/bin/python bench/events.py [--runs N]

Each figure is printed with a baseline measured in the same run, the ratio to it, and the goal of
the event-log issue. Medians over ``--runs``; these are measurements, not tests (shared machines
are noisy), so nothing here fails on a number.

1. Durable accept rate: many concurrent writers ``await EventLog.append(...)`` (each returns once
   its event is committed with WAL + synchronous=FULL; the log groups commits), versus raw sqlite3
   inserts into the same table with the same settings, (a) one transaction per event and (b) one
   transaction per group of the size the EventLog actually formed. Goal: >= 5,000 events/s and at
   least half of (b).
2. Delivery rate to a local mosquitto: a pre-filled log drained by MqttPublisher (batched while a
   backlog drains) until an independent subscriber has every event, versus a plain aiomqtt QoS 1
   publish loop of the same number of single-event messages of the same size. Goal: >= 2,000/s.
3. A backlog of 100,000 events after an outage, drained by MqttPublisher. Goal: < 60 s.
4. Bytes on disk per event (file size after a checkpoint / events), to size ``max_events``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import aiomqtt

from pumpgw.gateway.broker import MosquittoBroker, find_mosquitto
from pumpgw.gateway.clock import SystemClock
from pumpgw.gateway.config import MqttSection
from pumpgw.gateway.eventlog import EventLog, EventStore, canonical_json
from pumpgw.gateway.events import EventType, NewEvent
from pumpgw.gateway.mqtt import MqttPublisher, cloudevent

WRITERS = 50
PAYLOAD = {
    "from": "idle",
    "to": "infusing",
    "rate_ml_h": "4.00",
    "volume_infused_ml": "12.5",
    "drug": "fentaNYL",
}


def new_event(i: int) -> NewEvent:
    return NewEvent(EventType.CHANNEL_STATE, dict(PAYLOAD), pump=f"pump-{i % 8}", channel=1 + i % 2)


# -- 1. durable accept rate ----------------------------------------------------------------------


async def grouped_rate(directory: Path, n: int) -> tuple[float, float]:
    """events/s through EventLog with WRITERS concurrent writers; and the mean group size."""
    log = EventLog(directory / "grouped.sqlite3", "gw", SystemClock())
    ready = asyncio.Event()
    writer = asyncio.create_task(log.run(ready))
    await ready.wait()
    per_writer = n // WRITERS

    async def write(w: int) -> None:
        for i in range(per_writer):
            await log.append(EventType.CHANNEL_STATE, dict(PAYLOAD), pump=f"pump-{w % 8}", channel=1 + i % 2)

    commits = 0
    original = log.store._commit

    def counting(*args: object, **kwargs: object) -> None:
        nonlocal commits
        commits += 1
        original(*args, **kwargs)  # type: ignore[arg-type]

    log.store._commit = counting  # type: ignore[method-assign]
    start = time.perf_counter()
    await asyncio.gather(*(write(w) for w in range(WRITERS)))
    elapsed = time.perf_counter() - start
    writer.cancel()
    await asyncio.wait({writer})
    await log.close()
    done = per_writer * WRITERS
    return done / elapsed, done / max(1, commits)


def raw_rate(directory: Path, n: int, group: int) -> float:
    """events/s of plain INSERTs of the same rows (canonical JSON, hashes as text), ``group`` per
    transaction, WAL + synchronous=FULL."""
    path = directory / f"raw-{group}.sqlite3"
    store = EventStore(path, "gw", SystemClock())  # the same table and indexes
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    payload = canonical_json(PAYLOAD)
    rows = [
        (i + 1, f"id-{i}", "2026-11-22T03:00:00.000Z", "gw", "channel.state_changed", f"pump-{i % 8}",
         1 + i % 2, None, None, None, payload, "0" * 64, f"{i:064x}")
        for i in range(n)
    ]  # fmt: skip
    start = time.perf_counter()
    for at in range(0, n, group):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO events (seq, id, time, gateway, type, pump, channel, patient, order_ref, "
            "clinician, payload, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows[at : at + group],
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return n / elapsed


def disk_bytes_per_event(directory: Path, n: int) -> float:
    path = directory / "size.sqlite3"
    store = EventStore(path, "gw", SystemClock())
    for at in range(0, n, 1000):
        store.append([new_event(i) for i in range(at, min(n, at + 1000))])
    store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path.stat().st_size / n


# -- 2, 3. delivery ------------------------------------------------------------------------------


def prefill(path: Path, n: int) -> None:
    store = EventStore(path, "gw", SystemClock())
    for at in range(0, n, 1000):
        store.append([new_event(i) for i in range(at, min(n, at + 1000))])
    store.close()


class Subscriber:
    """An independent client counting the events that arrive (single or batched)."""

    def __init__(self, broker: MosquittoBroker, topic: str, want: int) -> None:
        self.broker, self.topic, self.want = broker, topic, want
        self.got = 0
        self.ready = asyncio.Event()
        self.done = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port, identifier="bench-sub") as client:
            await client.subscribe(self.topic, qos=1)
            self.ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                decoded = json.loads(message.payload)
                self.got += len(decoded) if isinstance(decoded, list) else 1
                if self.got >= self.want:
                    self.done.set()
                    return


async def publisher_rate(directory: Path, broker: MosquittoBroker, n: int) -> float:
    path = directory / f"deliver-{n}.sqlite3"
    prefill(path, n)
    sub = Subscriber(broker, "pumpgw/v1/gw/events", n)
    sub_task = asyncio.create_task(sub.run())
    await sub.ready.wait()
    log = EventLog(path, "gw", SystemClock())
    ready = asyncio.Event()
    writer = asyncio.create_task(log.run(ready))
    await ready.wait()
    pub = MqttPublisher(
        MqttSection(enabled=True, host=broker.host, port=broker.port), "gw", log, SystemClock()
    )
    start = time.perf_counter()
    pub_task = asyncio.create_task(pub.run(asyncio.Event()))
    await asyncio.wait_for(sub.done.wait(), 600)
    elapsed = time.perf_counter() - start
    for task in (pub_task, writer, sub_task):
        task.cancel()
    await asyncio.gather(pub_task, writer, sub_task, return_exceptions=True)
    await log.close()
    return n / elapsed


async def plain_loop_rate(directory: Path, broker: MosquittoBroker, n: int) -> float:
    """A plain aiomqtt QoS 1 loop: one message per event, each awaited (PUBACK)."""
    path = directory / f"plain-{n}.sqlite3"
    prefill(path, n)
    store = EventStore(path, "gw", SystemClock())
    messages = [json.dumps(cloudevent(e)).encode() for e in store.read_after(0, limit=n)]
    store.close()
    sub = Subscriber(broker, "bench/plain", n)
    sub_task = asyncio.create_task(sub.run())
    await sub.ready.wait()
    start = time.perf_counter()
    async with aiomqtt.Client(broker.host, broker.port, identifier="bench-plain") as client:
        for payload in messages:
            await client.publish("bench/plain", payload, qos=1)
    await asyncio.wait_for(sub.done.wait(), 600)
    elapsed = time.perf_counter() - start
    sub_task.cancel()
    await asyncio.gather(sub_task, return_exceptions=True)
    return n / elapsed


def line(name: str, value: float, unit: str, baseline: float | None = None, goal: str = "") -> None:
    ratio = "" if baseline is None else f"  baseline {baseline:,.0f} {unit}  ratio {value / baseline:.2f}"
    print(f"{name:<44} {value:>12,.1f} {unit}{ratio}  {goal}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=10_000, help="events per accept-rate run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pumpgw-bench-") as tmp:
        root = Path(tmp)
        grouped, groups, per_event, per_group = [], [], [], []
        for run in range(args.runs):
            d = root / f"accept-{run}"
            d.mkdir()
            rate, group = await grouped_rate(d, args.events)
            grouped.append(rate)
            groups.append(group)
            per_event.append(raw_rate(d, min(args.events, 1000), 1))
            per_group.append(raw_rate(d, args.events, max(1, round(group))))
        g, size = statistics.median(grouped), statistics.median(groups)
        print(f"durable accept ({WRITERS} concurrent writers, WAL + synchronous=FULL, {args.events} events)")
        line("  EventLog.append, grouped commits", g, "events/s", None, "goal >= 5,000/s")
        line("  mean group size formed", size, "events/commit")
        line("  vs raw INSERT, one transaction per event", g, "events/s", statistics.median(per_event))
        line(
            f"  vs raw INSERT, {round(size)} per transaction",
            g,
            "events/s",
            statistics.median(per_group),
            "goal ratio >= 0.50",
        )
        line("disk per event (typical channel event)", disk_bytes_per_event(root, 20_000), "bytes")
        if find_mosquitto() is None:
            print("mosquitto is not installed: delivery benchmarks skipped (scripts/bootstrap installs it)")
            return
        async with MosquittoBroker(root / "broker") as broker:
            n = 20_000
            delivered, plain = [], []
            for run in range(args.runs):
                d = root / f"deliver-{run}"
                d.mkdir()
                delivered.append(await publisher_rate(d, broker, n))
                plain.append(await plain_loop_rate(d, broker, n))
            print(f"delivery to a local mosquitto ({n} events, QoS 1)")
            line("  MqttPublisher (batched while draining)", statistics.median(delivered), "events/s",
                 statistics.median(plain), "goal >= 2,000/s")  # fmt: skip
            (root / "backlog").mkdir()
            big = 100_000
            rate = await publisher_rate(root / "backlog", broker, big)
            line(f"backlog of {big:,} events drained in", big / rate, "s", None, "goal < 60 s")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
