"""Benchmarks of the event log and its delivery: durable accepts per second, MQTT delivery, draining a
backlog after an outage, and bytes on disk per event.

Run from the repository root after scripts/bootstrap:   .venv/bin/python bench/eventlog.py [--runs N]

1. Durable accept rate with grouped commits: ``WRITERS`` concurrent tasks each ``await
   EventLog.append(...)`` (the call returns once the event is committed with WAL and
   ``synchronous=FULL``) on a fresh log in ``--dir`` → accepted events/s, and the average number of
   events per commit. Goals: at least 5,000 events/s on this machine, and at least half the raw
   batched rate. Baselines, same run, same disk, same rows, same settings (WAL, ``synchronous=FULL``),
   plain ``sqlite3`` with nothing else: (a) one transaction per event, (b) one transaction per batch
   of the log's average group size. ``EventStore.append`` called directly in batches of that size
   (no asyncio, no thread hop, no payload validation) splits what the store costs from what the
   asyncio face costs. For scale, one ``write`` + ``fsync`` of 4 KiB on the same disk.
   Payload validation (``payload_problem`` and the JSON check ``EventLog.append`` does on the event
   loop) is timed alone and shown as a share of the time per accepted event.
2. Delivery to a local mosquitto (started here, persistence off, as the demo's): a log pre-filled
   with ``DELIVERY_EVENTS`` events, :class:`~pumpgw.gateway.mqtt.MqttPublisher` with the default
   ``[mqtt]`` settings, until an independent subscriber (an aiomqtt client in its own process,
   QoS 1) has every event → events/s. Goal: at least 2,000 events/s. Baseline: a plain aiomqtt
   QoS 1 publish loop (each ``publish`` awaits its PUBACK, as the publisher's do) of the same number
   of single-event messages, each the CloudEvent JSON of one of the same events, until the same
   subscriber has them all.
3. Draining a backlog of ``BACKLOG_EVENTS`` after an outage: the log pre-filled, the broker
   started, then the publisher, until the subscriber has every event → seconds. Goal: under 60 s.
   Also shown in (2): the publisher with ``batch_max_events = 1`` (one event per message, as when
   events come one at a time), against the same plain loop.
   The plain loop's time for the same count is estimated from its rate in (2) (measuring it takes
   half a minute or more per run), unless ``--full-baseline`` measures it.
4. Bytes on disk per event: the log file (after close, so the WAL is checkpointed into it) divided
   by its events, for the typical mix below, and what ``max_events = 2,000,000`` comes to.
   SQLite does not shrink a file when retention deletes rows (no ``auto_vacuum``): pages are
   reused, so the file stays at its high-water mark.

The typical mix (:data:`MIX`): what a bedside gateway writes most, cycled in equal parts: channel
state changes, infusion starts and rate changes with the pump's readings, alarms raised and cleared,
a link lost and restored, and a DERS result, with pump, channel and patient/order/clinician
references where the gateway sets them.

These are measurements, not tests: shared machines are noisy, so every figure is the median of
``--runs`` runs, shown with its spread; nothing fails on a number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from pumpgw.gateway.broker import find_mosquitto, free_port, write_mosquitto_conf
from pumpgw.gateway.clock import SystemClock
from pumpgw.gateway.config import MqttSection
from pumpgw.gateway.eventlog import EventLog, EventStore, Retention, canonical_json
from pumpgw.gateway.events import EventType, NewEvent, Refs, payload_problem
from pumpgw.gateway.mqtt import DESTINATION, MqttPublisher, cloudevent

GATEWAY = "bench"
WRITERS = 50
PER_WRITER = 200  # 10,000 events per grouped run
DELIVERY_EVENTS = 20_000
UNBATCHED_EVENTS = 2_000  # batch_max_events=1: one message, one read and one commit per event
BACKLOG_EVENTS = 100_000
MAX_EVENTS = 2_000_000  # the configuration's default cap (gateway/config.py EventLogSection)
ACCEPT_GOAL = 5_000.0  # events/s
DELIVERY_GOAL = 2_000.0  # events/s
DRAIN_GOAL_S = 60.0
WAIT_S = 600.0  # a delivery that takes longer than this is broken, not slow
PREFILL_BATCH = 500

_INFUSION: dict[str, Any] = {
    "state": "infusing",
    "rate_ml_h": "4.00",
    "vtbi_ml": "50",
    "volume_infused_ml": "12.5",
    "drug": "fentaNYL",
    "concentration": "50 ug/mL",
    "dose_rate": "200 ug/h",
}
_REFS = Refs(patient="MRN-0012345", order="ORD-2026-000123", clinician="RN-4711")
#: (type, payload, pump, channel, refs): the typical mix, cycled.
MIX: tuple[tuple[EventType, dict[str, Any], str | None, int | None, Refs], ...] = (
    (EventType.CHANNEL_STATE,
     {"from": "idle", "to": "infusing", "rate_ml_h": "4.00", "volume_infused_ml": "0.0", "drug": "fentaNYL"},
     "icu-bed-12-a", 1, _REFS),
    (EventType.INFUSION_STARTED, _INFUSION, "icu-bed-12-a", 1, _REFS),
    (EventType.INFUSION_RATE_CHANGED, {**_INFUSION, "rate_ml_h": "6.00", "previous_rate_ml_h": "4.00"},
     "icu-bed-12-a", 1, _REFS),
    (EventType.ALARM_RAISED, {"alarm": "occlusion-downstream"}, "icu-bed-12-a", 2, _REFS),
    (EventType.ALARM_CLEARED, {"alarm": "occlusion-downstream"}, "icu-bed-12-a", 2, _REFS),
    (EventType.LINK_LOST, {"error": "no response after 3 polls"}, "icu-bed-12-b", None, Refs()),
    (EventType.LINK_RESTORED, {}, "icu-bed-12-b", None, Refs()),
    (EventType.DERS_RESULT, {
        "library_hash": "sha256:" + "b" * 64, "library_version": 7, "care_area": "icu-adult",
        "drug": "fentanyl-50", "verdict": "pass", "rate_ml_h": "4.00",
        "checks": [{"parameter": "dose", "outcome": "within", "code": "PGW-100", "message": "within limits",
                    "value": "200 ug/h", "limit": None, "limit_name": None, "source": "fentanyl-50/icu-adult",
                    "override": None}],
        "overrides": [], "refused_overrides": []}, "icu-bed-12-a", 1, _REFS),
)  # fmt: skip

_COLUMNS = (
    "seq, id, time, gateway, type, pump, channel, patient, order_ref, clinician, payload, prev_hash, hash"
)
#: The log's table (gateway/eventlog.py), for the raw baselines.
_RAW_TABLE = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, time TEXT NOT NULL, gateway TEXT NOT NULL,
    type TEXT NOT NULL, pump TEXT, channel INTEGER, patient TEXT, order_ref TEXT, clinician TEXT,
    payload TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
)"""
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"

SUBSCRIBER = """
import asyncio, json, sys
import aiomqtt

async def main(host, port, topic, expected):
    seen = set()
    async with aiomqtt.Client(host, port, identifier="bench-subscriber") as c:
        await c.subscribe(topic, qos=1)
        print("subscribed", flush=True)
        async for message in c.messages:
            decoded = json.loads(message.payload)
            for ce in decoded if isinstance(decoded, list) else [decoded]:
                seen.add(ce["id"])
            if len(seen) >= expected:
                print("done", len(seen), flush=True)
                return

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
"""


def new_event(i: int) -> NewEvent:
    type_, payload, pump, channel, refs = MIX[i % len(MIX)]
    return NewEvent(type_, payload, pump, channel, refs)


def check_mix() -> None:
    for type_, payload, *_ in MIX:
        if (problem := payload_problem(type_, payload)) is not None:
            raise SystemExit(
                f"bench/eventlog.py: the {type_} payload of MIX no longer fits its schema: {problem}"
            )


# --- statistics and printing -------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: str) -> str:
    return f"min {min(values):{fmt}}, max {max(values):{fmt}}, n={len(values)}"


def figure(name: str, values: Sequence[float], unit: str, fmt: str = ",.0f", *, target: str = "") -> None:
    tail = f"  target {target}" if target else ""
    print(f"{name:<34} {med(values):>10{fmt}} {unit:<9} ({spread(values, fmt)}){tail}")


def baseline(
    name: str, values: Sequence[float], unit: str, against: Sequence[float], fmt: str = ",.0f"
) -> None:
    """A baseline line: its value, and the ratio of the figure above to it."""
    ratio = med(against) / med(values)
    print(
        f"  baseline: {name:<24} {med(values):>10{fmt}} {unit:<9} ({spread(values, fmt)})  ratio {ratio:.2f}"
    )


def filesystem_of(path: Path) -> str:
    """``/dev/vda ext4 mounted on /``: the mount ``path`` is on (the longest mount point above it)."""
    best = ("", "?", "?")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "?"
    resolved = str(path.resolve())
    for line in mounts:
        device, point, kind, *_ = line.split()
        if (resolved == point or resolved.startswith(point.rstrip("/") + "/")) and len(point) > len(best[0]):
            best = (point, device, kind)
    return f"{best[1]} {best[2]} mounted on {best[0]}"


# --- 1. durable accepts ------------------------------------------------------------------------


@dataclass
class Grouped:
    rate: float  # events/s
    commits: int
    events: int

    @property
    def group(self) -> float:
        return self.events / self.commits


async def grouped_run(path: Path, writers: int, per_writer: int) -> Grouped:
    log = EventLog(
        path, GATEWAY, SystemClock(), retention=Retention(max_events=MAX_EVENTS, destinations=(DESTINATION,))
    )
    ready = asyncio.Event()
    writer_task = asyncio.create_task(log.run(ready), name="eventlog:writer")
    await ready.wait()
    store = log.store
    original = store.append
    sizes: list[int] = []

    def counting(batch: Sequence[NewEvent], *, check: bool = True) -> Any:
        sizes.append(len(batch))  # on the log's thread, once per commit
        return original(batch, check=check)

    setattr(store, "append", counting)  # noqa: B010 - instrumenting one instance, for this bench only

    async def write(w: int) -> None:
        for i in range(per_writer):
            new = new_event(w + i)
            await log.append(new.type, new.payload, pump=new.pump, channel=new.channel, refs=new.refs)

    start = time.perf_counter()
    await asyncio.gather(*(write(w) for w in range(writers)))
    elapsed = time.perf_counter() - start
    writer_task.cancel()
    await asyncio.wait({writer_task})
    await log.close()
    total = writers * per_writer
    return Grouped(total / elapsed, len(sizes), sum(sizes))


def stored_rows(path: Path) -> list[tuple[Any, ...]]:
    """The rows of a log as stored (for the raw baselines: the very same bytes)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq").fetchall()
    finally:
        db.close()


def raw_run(path: Path, rows: Sequence[tuple[Any, ...]], batch: int) -> float:
    """Plain sqlite3, WAL, synchronous=FULL: ``batch`` rows per transaction → rows/s."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(_RAW_TABLE)
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(_INSERT, rows[i : i + batch])
            db.execute("COMMIT")
        return len(rows) / (time.perf_counter() - start)
    finally:
        db.close()


def store_run(path: Path, events: int, batch: int) -> float:
    """EventStore.append directly (no asyncio, no thread, no validation) in batches → events/s."""
    store = EventStore(path, GATEWAY, SystemClock())
    try:
        news = [new_event(i) for i in range(events)]
        start = time.perf_counter()
        for i in range(0, events, batch):
            store.append(news[i : i + batch], check=False)
        return events / (time.perf_counter() - start)
    finally:
        store.close()


def fsync_ms(directory: Path, count: int = 200) -> float:
    """Median time of one 4 KiB write + fsync in ``directory``."""
    path = directory / "fsync.probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"x" * 4096
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return med(times) * 1000


def validation_us(count: int = 20_000) -> float:
    """The checks EventLog.append makes of a payload on the event loop before queueing it (plain
    JSON, then the type's schema), µs per event."""
    news = [new_event(i) for i in range(count)]
    start = time.perf_counter()
    for new in news:
        canonical_json(new.payload).encode()
        payload_problem(new.type, new.payload)
    return (time.perf_counter() - start) / count * 1e6


def bench_accept(workdir: Path, runs: int) -> None:
    grouped: list[Grouped] = []
    per_event: list[float] = []
    batched: list[float] = []
    direct: list[float] = []
    for run in range(runs):
        g = asyncio.run(grouped_run(workdir / f"grouped-{run}.sqlite3", WRITERS, PER_WRITER))
        grouped.append(g)
        rows = stored_rows(workdir / f"grouped-{run}.sqlite3")
        batch = max(1, round(g.group))
        per_event.append(raw_run(workdir / f"raw1-{run}.sqlite3", rows, 1))
        batched.append(raw_run(workdir / f"rawb-{run}.sqlite3", rows, batch))
        direct.append(store_run(workdir / f"store-{run}.sqlite3", len(rows), batch))
    rates = [g.rate for g in grouped]
    groups = [g.group for g in grouped]
    fsync = fsync_ms(workdir)
    check_us = validation_us()
    print(
        f"\n## 1. Durable accepts: {WRITERS} concurrent writers x {PER_WRITER} events, WAL, synchronous=FULL"
    )
    print(f"   disk: {workdir} ({filesystem_of(workdir)}); one 4 KiB write+fsync: {fsync:.3f} ms (median)")
    figure("EventLog.append, grouped commits", rates, "events/s", target=f">= {ACCEPT_GOAL:,.0f} events/s")
    figure("  events per commit (average)", groups, "events", ",.1f")
    figure("  commits per second", [g.rate / g.group for g in grouped], "commits/s")
    baseline("raw, 1 event/transaction", per_event, "events/s", rates)
    baseline("raw, batch = avg group", batched, "events/s", rates)
    baseline("EventStore.append direct", direct, "events/s", rates)
    half = med(batched) / 2
    meets = "meets" if med(rates) >= half else "BELOW"
    print(f"   goal: >= half the raw batched rate ({half:,.0f} events/s): {meets}")
    share = check_us * med(rates) / 1e6 * 100
    print(f"   payload validation on the event loop: {check_us:.1f} µs/event = {share:.0f} % of the time per "
          f"accepted event at the grouped rate")  # fmt: skip


# --- 2 and 3. delivery ------------------------------------------------------------------------


def prefill(path: Path, events: int) -> None:
    store = EventStore(path, GATEWAY, SystemClock())
    try:
        for i in range(0, events, PREFILL_BATCH):
            store.append([new_event(j) for j in range(i, min(events, i + PREFILL_BATCH))], check=False)
    finally:
        store.close()  # the last connection: the WAL is checkpointed into the file and removed


class Broker:
    """mosquitto on a free loopback port, persistence off (as the demo's), started and stopped here."""

    def __init__(self, workdir: Path) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise SystemExit("bench/eventlog.py: mosquitto is not installed (apt-get install mosquitto)")
        self.host = "127.0.0.1"
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        conf = write_mosquitto_conf(workdir, self.host, self.port)
        # A subscriber that falls more than 1,000 messages behind would lose messages (mosquitto's
        # max_queued_messages default, mosquitto.conf(5)); the plain loop's 20,000 single messages
        # must not be cut for that.
        with conf.open("a") as f:
            f.write("max_queued_messages 1000000\n")
        self._log = (workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((self.host, self.port), 0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"bench/eventlog.py: mosquitto did not start; see {workdir}") from None
                time.sleep(0.02)  # start-up poll: mosquitto gives no readiness signal

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


class Subscriber:
    """The independent subscriber: its own process, an aiomqtt client at QoS 1 on ``topic``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, broker: Broker, topic: str, expected: int) -> Subscriber:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SUBSCRIBER, broker.host, str(broker.port), topic, str(expected),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line.strip() != b"subscribed":
            raise SystemExit(f"bench/eventlog.py: the subscriber did not subscribe ({line!r})")
        return cls(proc)

    async def done(self) -> int:
        """Wait until it has every event; the number of distinct events it received."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), WAIT_S)
        await self.proc.wait()
        word, count = line.split()
        assert word == b"done"
        return int(count)


async def publisher_run(
    broker: Broker, log_path: Path, events: int, run: str, batch_max_events: int | None = None
) -> float:
    """The gateway's publisher drains a pre-filled log until the subscriber has it all → seconds."""
    gateway = f"{GATEWAY}-{run}"  # its own topic: nothing from an earlier run can be counted
    config = MqttSection(enabled=True, host=broker.host, port=broker.port)
    if batch_max_events is not None:
        config = config.model_copy(update={"batch_max_events": batch_max_events})
    topic = f"{config.topic_prefix}/{gateway}/events"
    log = EventLog(log_path, GATEWAY, SystemClock())
    ready = asyncio.Event()
    writer = asyncio.create_task(log.run(ready), name="eventlog:writer")
    await ready.wait()
    subscriber = await Subscriber.start(broker, topic, events)
    publisher = MqttPublisher(config, gateway, log, SystemClock())
    start = time.perf_counter()
    task = asyncio.create_task(publisher.run(asyncio.Event()), name="mqtt")
    received = await subscriber.done()
    elapsed = time.perf_counter() - start
    task.cancel()
    await asyncio.wait({task})
    writer.cancel()
    await asyncio.wait({writer})
    await log.close()
    if received < events:
        raise SystemExit(f"bench/eventlog.py: the subscriber got {received} of {events} events")
    return elapsed


def single_messages(log_path: Path, gateway: str) -> list[bytes]:
    """Each event of the log as the one-event MQTT message the publisher sends when live."""
    store = EventStore(log_path, GATEWAY, SystemClock())
    try:
        out: list[bytes] = []
        while batch := store.read_after(len(out), limit=5_000):
            for event in batch:
                ce = cloudevent(event)
                ce["source"] = f"urn:pumpgw:gateway:{gateway}"
                out.append(json.dumps(ce, ensure_ascii=False, separators=(",", ":")).encode())
        return out
    finally:
        store.close()


async def plain_loop_run(broker: Broker, messages: Sequence[bytes], run: str) -> float:
    """The baseline: one QoS 1 publish per event, each awaiting its PUBACK → seconds until received."""
    topic = f"bench/plain-{run}/events"
    subscriber = await Subscriber.start(broker, topic, len(messages))
    start = time.perf_counter()
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"bench-plain-{run}") as client:
        for payload in messages:
            await client.publish(topic, payload, qos=1)
    received = await subscriber.done()
    elapsed = time.perf_counter() - start
    if received != len(messages):
        raise SystemExit(f"bench/eventlog.py: the subscriber got {received} of {len(messages)} messages")
    return elapsed


def bench_delivery(workdir: Path, runs: int, full_baseline: bool) -> None:
    broker = Broker(workdir / "broker")
    try:
        template = workdir / "delivery.sqlite3"
        prefill(template, DELIVERY_EVENTS)
        messages = single_messages(template, f"{GATEWAY}-plain")
        small = workdir / "unbatched.sqlite3"
        prefill(small, UNBATCHED_EVENTS)
        backlog = workdir / "backlog.sqlite3"
        prefill(backlog, BACKLOG_EVENTS)
        delivery: list[float] = []
        unbatched: list[float] = []
        plain: list[float] = []
        drain: list[float] = []
        plain_full: list[float] = []
        big: list[bytes] = []
        if full_baseline:
            big = single_messages(backlog, f"{GATEWAY}-plain")
        for run in range(runs):
            copy = workdir / f"delivery-{run}.sqlite3"
            shutil.copyfile(template, copy)
            delivery.append(
                DELIVERY_EVENTS / asyncio.run(publisher_run(broker, copy, DELIVERY_EVENTS, f"d{run}"))
            )
            plain.append(len(messages) / asyncio.run(plain_loop_run(broker, messages, f"d{run}")))
            copy = workdir / f"unbatched-{run}.sqlite3"
            shutil.copyfile(small, copy)
            elapsed = asyncio.run(
                publisher_run(broker, copy, UNBATCHED_EVENTS, f"u{run}", batch_max_events=1)
            )
            unbatched.append(UNBATCHED_EVENTS / elapsed)
            copy = workdir / f"backlog-{run}.sqlite3"
            shutil.copyfile(backlog, copy)
            drain.append(asyncio.run(publisher_run(broker, copy, BACKLOG_EVENTS, f"b{run}")))
            copy.unlink()
            if full_baseline:
                plain_full.append(asyncio.run(plain_loop_run(broker, big, f"b{run}")))
    finally:
        broker.stop()
    size = statistics.mean(len(m) for m in messages)
    print(
        f"\n## 2. Delivery to a local mosquitto: {DELIVERY_EVENTS:,} events pre-filled, subscriber at QoS 1"
    )
    defaults = MqttSection()
    print(f"   one event as a CloudEvent: {size:,.0f} bytes on average; [mqtt] defaults (batch_max_events "
          f"{defaults.batch_max_events}, batch_max_bytes {defaults.batch_max_bytes:,})")  # fmt: skip
    figure("MqttPublisher, batched backlog", delivery, "events/s", target=f">= {DELIVERY_GOAL:,.0f} events/s")
    baseline("plain loop, 1 event/msg", plain, "events/s", delivery)
    figure(f"  batch_max_events=1 ({UNBATCHED_EVENTS:,} events)", unbatched, "events/s")
    ratio = med(unbatched) / med(plain)
    print(f"   (one event per message, as when live; ratio to the plain loop {ratio:.2f}: each message "
          "also reads the log and records its delivery, one commit each)")  # fmt: skip
    print(f"\n## 3. Draining a backlog of {BACKLOG_EVENTS:,} events after an outage")
    figure("MqttPublisher, until all received", drain, "s", ",.2f", target=f"< {DRAIN_GOAL_S:g} s")
    print(f"   = {BACKLOG_EVENTS / med(drain):,.0f} events/s")
    if full_baseline:
        print(f"  baseline: {'plain loop, 1 event/msg':<24} {med(plain_full):>10,.2f} s         "
              f"({spread(plain_full, ',.2f')})  ratio {med(drain) / med(plain_full):.2f}")  # fmt: skip
    else:
        estimate = BACKLOG_EVENTS / med(plain)
        print(f"  baseline: {'plain loop, 1 event/msg':<24} {estimate:>10,.2f} s         (ESTIMATED from the "
              f"plain loop's rate in 2, not measured; --full-baseline measures it)  "
              f"ratio {med(drain) / estimate:.2f}")  # fmt: skip


# --- 4. bytes on disk ------------------------------------------------------------------------


def bench_size(workdir: Path) -> None:
    print("\n## 4. Bytes on disk per event (typical mix; file after close, WAL checkpointed)")
    payload = statistics.mean(len(json.dumps(p, separators=(",", ":"))) for _, p, *_ in MIX)
    print(f"   payload JSON: {payload:,.0f} bytes on average over the mix")
    for events in (DELIVERY_EVENTS, BACKLOG_EVENTS):
        path = workdir / f"size-{events}.sqlite3"
        prefill(path, events)
        size = path.stat().st_size
        per_event = size / events
        print(f"   {events:>9,} events: {size / 1e6:8.1f} MB  = {per_event:6.0f} bytes/event")
    projected = per_event * MAX_EVENTS  # the larger log: its fixed overhead weighs least
    print(f"   max_events = {MAX_EVENTS:,} (the default cap): about {projected / 1e9:.2f} GB "
          f"({per_event:.0f} bytes x {MAX_EVENTS:,}); undelivered events can exceed the cap")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each figure (default 3)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the logs go (default: a temporary directory)"
    )
    parser.add_argument(
        "--full-baseline", action="store_true", help=f"also time the plain loop for {BACKLOG_EVENTS:,} events"
    )
    parser.add_argument("--only", choices=("accept", "delivery", "size"), help="run one section only")
    args = parser.parse_args()
    check_mix()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pumpgw-bench-eventlog-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        print(f"# pumpgw event log bench: python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
              f"{os.cpu_count()} CPUs, runs={args.runs}")  # fmt: skip
        sections: dict[str, Callable[[], None]] = {
            "accept": lambda: bench_accept(workdir, args.runs),
            "delivery": lambda: bench_delivery(workdir, args.runs, args.full_baseline),
            "size": lambda: bench_size(workdir),
        }
        for name, section in sections.items():
            if args.only in (None, name):
                section()


if __name__ == "__main__":
    main()
